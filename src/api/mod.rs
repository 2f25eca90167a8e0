//! The HTTP API (axum): routes, one file per area, the JSON error mapping and the extractors
//! that parse bodies and bearer tokens. Handlers are thin: they parse, call a service, answer.

mod auth;
mod conversations;
mod error;
mod extract;
mod forwarding;
mod me;
pub mod server;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

pub use error::ApiError;

use crate::auth::Auth;
use crate::store::Store;

/// Bodies larger than this get `413`.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub auth: Arc<Auth>,
    pub store: Store,
}

/// `200` while the store can write, `503 unavailable` while it cannot.
async fn healthz(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> Result<&'static str, ApiError> {
    ApiError::unless_store_healthy(&state.store)?;
    Ok("ok")
}

/// The Prometheus text format (`crate::metrics`).
async fn metrics() -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::METRICS.render(),
    )
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/auth/otp", post(auth::request_code))
        .route("/v1/auth/verify", post(auth::verify))
        .route("/v1/auth/refresh", post(auth::refresh))
        .route("/v1/auth/logout", post(auth::logout))
        .route("/v1/me", get(me::get_me).patch(me::patch_me))
        .route("/v1/me/email", post(me::add_email))
        .route("/v1/me/email/verify", post(me::verify_email))
        .route("/v1/me/phone", post(me::add_phone))
        .route("/v1/me/phone/verify", post(me::verify_phone))
        .route("/v1/conversations", get(conversations::list))
        .route("/v1/users/lookup", get(me::lookup))
        .route(
            "/v1/forwarding/unsubscribe",
            post(forwarding::unsubscribe).get(forwarding::confirm_page),
        )
        .route(
            "/v1/conversations/{peer_id}/messages",
            get(conversations::messages),
        )
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}
