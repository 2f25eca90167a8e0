//! `/v1/forwarding/unsubscribe?token=...`: the one-click unsubscribe link of every forwarded
//! email (RFC 8058). `POST` (what mail clients send for `List-Unsubscribe-Post`) switches the
//! user's `forward_email` off; `GET` (a person opening the link from the email's text) only
//! answers a page with a button that POSTs, so that link scanners that fetch every URL in a
//! mail switch nothing off.

use axum::extract::{Query, State};
use axum::response::Html;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState};
use crate::domain::UserId;

#[derive(Deserialize)]
pub struct Link {
    token: Option<String>,
}

#[derive(Serialize)]
pub struct Unsubscribed {
    forward_email: bool,
}

pub async fn unsubscribe(
    State(state): State<AppState>,
    Query(link): Query<Link>,
) -> Result<Json<Unsubscribed>, ApiError> {
    let (_, user) = named_user(&state, link)?;
    state
        .store
        .update_user(&user, |u| u.forward_email = false)?
        .ok_or_else(invalid_token)?;
    tracing::info!("forward_email switched off by an unsubscribe link");
    Ok(Json(Unsubscribed {
        forward_email: false,
    }))
}

pub async fn confirm_page(
    State(state): State<AppState>,
    Query(link): Query<Link>,
) -> Result<Html<String>, ApiError> {
    let (token, _) = named_user(&state, link)?;
    // The token is base64url: nothing in it needs escaping in an attribute.
    Ok(Html(format!(
        "<!doctype html><meta charset=utf-8><title>Unsubscribe</title>\
         <p>Stop forwarding your messages by email?</p>\
         <form method=post action=\"?token={token}\"><button>Stop the emails</button></form>"
    )))
}

/// The link's token and the user it names, if this server made it.
fn named_user(state: &AppState, link: Link) -> Result<(String, UserId), ApiError> {
    let token = link.token.ok_or_else(invalid_token)?;
    let user = state
        .auth
        .unsubscribe_user(&token)
        .ok_or_else(invalid_token)?;
    Ok((token, user))
}

fn invalid_token() -> ApiError {
    ApiError::bad_request("invalid_token", "this unsubscribe link is not valid")
}
