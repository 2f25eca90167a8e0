//! `/v1/auth/*`: request a code, verify it, refresh, log out.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;

use super::extract::{Authed, ClientIp, JsonBody};
use super::{ApiError, AppState};
use crate::domain::Identity;

/// `{"phone": ...}` or `{"email": ...}`, exactly one, as requests name an identity.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityBody {
    phone: Option<String>,
    email: Option<String>,
}

impl IdentityBody {
    pub fn parse(&self) -> Result<Identity, ApiError> {
        match (&self.phone, &self.email) {
            (Some(phone), None) => super::me::parse_phone(phone),
            (None, Some(email)) => super::me::parse_email(email),
            _ => Err(ApiError::invalid_json(
                "give exactly one of \"phone\" or \"email\"",
            )),
        }
    }
}

pub async fn request_code(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    JsonBody(body): JsonBody<IdentityBody>,
) -> Result<impl IntoResponse, ApiError> {
    let identity = body.parse()?;
    let sent = state.auth.request_login_code(&identity, ip)?;
    Ok((StatusCode::ACCEPTED, Json(sent)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyBody {
    phone: Option<String>,
    email: Option<String>,
    code: String,
}

pub async fn verify(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<VerifyBody>,
) -> Result<impl IntoResponse, ApiError> {
    let identity = IdentityBody {
        phone: body.phone,
        email: body.email,
    }
    .parse()?;
    let tokens = state.auth.verify_login(&identity, body.code.trim()).await?;
    Ok(Json(tokens))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshBody {
    refresh_token: String,
}

pub async fn refresh(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<RefreshBody>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(state.auth.refresh(&body.refresh_token).await?))
}

pub async fn logout(
    State(state): State<AppState>,
    Authed(claims): Authed,
) -> Result<StatusCode, ApiError> {
    state.auth.logout(&claims).await?;
    Ok(StatusCode::NO_CONTENT)
}
