//! `/v1/me` (the caller's profile) and `/v1/users/lookup` (find a user by phone or email).

use axum::extract::{Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::extract::Authed;
use super::{ApiError, AppState};
use crate::domain::{Email, Identity, PhoneNumber, UserId};
use crate::store::User;

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
    Authed(_): Authed,
    query: Result<Query<LookupQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Found>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let identity = match (query.phone, query.email) {
        (Some(phone), None) => {
            // An unescaped `+` in a query string arrives as a space: `?phone=+1415...`.
            let phone = match phone.strip_prefix(' ') {
                Some(rest) => format!("+{rest}"),
                None => phone,
            };
            Identity::Phone(
                PhoneNumber::parse(&phone)
                    .map_err(|e| ApiError::bad_request("invalid_phone", e.to_string()))?,
            )
        }
        (None, Some(email)) => Identity::Email(
            Email::parse(&email)
                .map_err(|e| ApiError::bad_request("invalid_email", e.to_string()))?,
        ),
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
