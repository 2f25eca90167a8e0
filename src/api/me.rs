//! `/v1/me` (the caller's profile, and adding a second phone or email to it) and
//! `/v1/users/lookup` (find a user by phone or email).

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Deserializer, Serialize};

use super::extract::{Authed, ClientIp, JsonBody};
use super::{ApiError, AppState};
use crate::domain::{Email, Identity, PhoneNumber, UserId};
use crate::store::{AttachError, User};

/// The `/v1/me` answer; unset fields are `null`.
#[derive(Serialize)]
pub struct Me {
    user_id: UserId,
    phone: Option<PhoneNumber>,
    email: Option<Email>,
    display_name: Option<String>,
    forward_sms: bool,
    forward_email: bool,
}

impl From<User> for Me {
    fn from(user: User) -> Self {
        Self {
            user_id: user.id,
            phone: user.phone,
            email: user.email,
            display_name: user.display_name,
            forward_sms: user.forward_sms,
            forward_email: user.forward_email,
        }
    }
}

pub async fn get_me(
    State(state): State<AppState>,
    Authed(claims): Authed,
) -> Result<Json<Me>, ApiError> {
    let user = state
        .store
        .user(&claims.user_id)?
        .ok_or_else(ApiError::unauthorized)?;
    Ok(Json(user.into()))
}

/// `PATCH /v1/me`: any of the fields; `"display_name": null` clears the name.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MePatch {
    #[serde(default, deserialize_with = "present")]
    display_name: Option<Option<String>>,
    forward_sms: Option<bool>,
    forward_email: Option<bool>,
}

/// Tells a field that is `null` (`Some(None)`) from one that is absent (`None`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(deserializer).map(Some)
}

/// A display name: trimmed, 1 to 64 characters, no control characters.
fn parse_display_name(name: &str) -> Result<String, ApiError> {
    let name = name.trim();
    let chars = name.chars().count();
    if chars == 0 || chars > 64 || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_display_name",
            "a display name has 1 to 64 characters (after trimming) and no control characters",
        ));
    }
    Ok(name.to_owned())
}

pub async fn patch_me(
    State(state): State<AppState>,
    Authed(claims): Authed,
    JsonBody(patch): JsonBody<MePatch>,
) -> Result<Json<Me>, ApiError> {
    let display_name = match patch.display_name {
        Some(Some(name)) => Some(Some(parse_display_name(&name)?)),
        other => other,
    };
    let user = state
        .store
        .update_user(&claims.user_id, |user| {
            if let Some(name) = &display_name {
                user.display_name = name.clone();
            }
            if let Some(on) = patch.forward_sms {
                user.forward_sms = on;
            }
            if let Some(on) = patch.forward_email {
                user.forward_email = on;
            }
        })?
        .ok_or_else(ApiError::unauthorized)?;
    state.store.durable_async().await?;
    Ok(Json(user.into()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailBody {
    email: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhoneBody {
    phone: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailCodeBody {
    email: String,
    code: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhoneCodeBody {
    phone: String,
    code: String,
}

pub fn parse_email(email: &str) -> Result<Identity, ApiError> {
    Email::parse(email)
        .map(Identity::Email)
        .map_err(|e| ApiError::bad_request("invalid_email", e.to_string()))
}

pub fn parse_phone(phone: &str) -> Result<Identity, ApiError> {
    PhoneNumber::parse(phone)
        .map(Identity::Phone)
        .map_err(|e| ApiError::bad_request("invalid_phone", e.to_string()))
}

pub async fn add_email(
    State(state): State<AppState>,
    Authed(claims): Authed,
    ClientIp(ip): ClientIp,
    JsonBody(body): JsonBody<EmailBody>,
) -> Result<impl IntoResponse, ApiError> {
    let identity = parse_email(&body.email)?;
    let sent = state
        .auth
        .request_identity_code(&claims.user_id, &identity, ip)?;
    Ok((StatusCode::ACCEPTED, Json(sent)))
}

pub async fn add_phone(
    State(state): State<AppState>,
    Authed(claims): Authed,
    ClientIp(ip): ClientIp,
    JsonBody(body): JsonBody<PhoneBody>,
) -> Result<impl IntoResponse, ApiError> {
    let identity = parse_phone(&body.phone)?;
    let sent = state
        .auth
        .request_identity_code(&claims.user_id, &identity, ip)?;
    Ok((StatusCode::ACCEPTED, Json(sent)))
}

pub async fn verify_email(
    State(state): State<AppState>,
    Authed(claims): Authed,
    JsonBody(body): JsonBody<EmailCodeBody>,
) -> Result<Json<Me>, ApiError> {
    attach(
        &state,
        &claims.user_id,
        parse_email(&body.email)?,
        &body.code,
    )
    .await
}

pub async fn verify_phone(
    State(state): State<AppState>,
    Authed(claims): Authed,
    JsonBody(body): JsonBody<PhoneCodeBody>,
) -> Result<Json<Me>, ApiError> {
    attach(
        &state,
        &claims.user_id,
        parse_phone(&body.phone)?,
        &body.code,
    )
    .await
}

/// Checks the code, then makes the identity the caller's (`409` if another account owns it).
async fn attach(
    state: &AppState,
    user: &UserId,
    identity: Identity,
    code: &str,
) -> Result<Json<Me>, ApiError> {
    state
        .auth
        .check_identity_code(user, &identity, code.trim())?;
    let user = state
        .store
        .attach_identity(user, &identity)
        .map_err(|e| match e {
            AttachError::Taken => ApiError::new(
                StatusCode::CONFLICT,
                "already_taken",
                "another account has this phone or email",
            ),
            AttachError::NoUser => ApiError::unauthorized(),
            AttachError::Store(e) => ApiError::from(e),
        })?;
    state.store.durable_async().await?;
    Ok(Json(user.into()))
}

#[derive(Deserialize)]
pub struct LookupQuery {
    phone: Option<String>,
    email: Option<String>,
}

#[derive(Serialize)]
pub struct Found {
    user_id: UserId,
    display_name: Option<String>,
}

pub async fn lookup(
    State(state): State<AppState>,
    Authed(claims): Authed,
    query: Result<Query<LookupQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Found>, ApiError> {
    state.auth.count_lookup(&claims.user_id)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let identity = match (query.phone, query.email) {
        (Some(phone), None) => {
            // An unescaped `+` in a query string arrives as a space: `?phone=+1415...`.
            let phone = match phone.strip_prefix(' ') {
                Some(rest) => format!("+{rest}"),
                None => phone,
            };
            parse_phone(&phone)?
        }
        (None, Some(email)) => parse_email(&email)?,
        _ => {
            return Err(ApiError::bad_request(
                "invalid_query",
                "give exactly one of phone= or email=",
            ))
        }
    };
    let user = match state.store.user_id_by_identity(&identity)? {
        Some(id) => state.store.user(&id)?,
        None => None,
    };
    let user = user.ok_or_else(|| ApiError::not_found("no user has that phone or email"))?;
    Ok(Json(Found {
        user_id: user.id,
        display_name: user.display_name,
    }))
}
