//! `/v1/conversations` (the caller's conversations, most recent first, with unread counts) and
//! `/v1/conversations/{peer_id}/messages` (a conversation's history, page by page, so a client
//! fills any gap it sees in `seq`).

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::extract::Authed;
use super::{ApiError, AppState};
use crate::domain::ConversationId;
use crate::domain::UserId;
use crate::payloads::MessageEvent;
use crate::store::Page;

const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 200;

/// One row of `GET /v1/conversations`.
#[derive(Serialize)]
struct ConversationRow<'a> {
    peer_id: UserId,
    display_name: Option<String>,
    last_message: Option<MessageEvent<'a>>,
    /// The peer's messages after the caller's read marker.
    unread: u64,
}

pub async fn list(
    State(state): State<AppState>,
    Authed(claims): Authed,
) -> Result<Response, ApiError> {
    let me = claims.user_id;
    ApiError::unless_store_healthy(&state.store)?;
    let mut summaries = state.store.conversations(&me)?;
    summaries.sort_by_key(|s| std::cmp::Reverse((s.last_at_ms, s.last_seq)));
    let mut last_messages = Vec::with_capacity(summaries.len());
    for summary in &summaries {
        last_messages.push(
            state
                .store
                .message(&ConversationId::of(&me, &summary.peer), summary.last_seq)?,
        );
    }
    let mut rows = Vec::with_capacity(summaries.len());
    for (summary, last) in summaries.iter().zip(&last_messages) {
        rows.push(ConversationRow {
            peer_id: summary.peer,
            display_name: state
                .store
                .user(&summary.peer)?
                .and_then(|u| u.display_name),
            last_message: last.as_ref().map(MessageEvent::from),
            unread: state.store.unread(&me, &summary.peer)?,
        });
    }
    #[derive(Serialize)]
    struct Conversations<'a> {
        conversations: Vec<ConversationRow<'a>>,
    }
    // Serialised here, while the rows still borrow the messages.
    Ok(Json(&Conversations {
        conversations: rows,
    })
    .into_response())
}

#[derive(Deserialize)]
pub struct HistoryQuery {
    before: Option<u64>,
    after: Option<u64>,
    limit: Option<usize>,
}

#[derive(Serialize)]
pub struct HistoryPage<'a> {
    messages: Vec<MessageEvent<'a>>,
    has_more: bool,
}

pub async fn messages(
    State(state): State<AppState>,
    Authed(claims): Authed,
    Path(peer): Path<String>,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    ApiError::unless_store_healthy(&state.store)?;
    let peer = UserId::parse(&peer).map_err(|_| ApiError::not_found("no user has that id"))?;
    if state.store.user(&peer)?.is_none() {
        return Err(ApiError::not_found("no user has that id"));
    }
    let limit = match query.limit {
        None => DEFAULT_LIMIT,
        Some(0) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                "limit must be 1 to 200",
            ))
        }
        Some(n) => n.min(MAX_LIMIT),
    };
    let page = Page {
        before: query.before,
        after: query.after,
        limit,
    };
    let (messages, has_more) = state
        .store
        .history(&ConversationId::of(&claims.user_id, &peer), page)?;
    let body = HistoryPage {
        messages: messages.iter().map(MessageEvent::from).collect(),
        has_more,
    };
    Ok(Json(&body).into_response())
}
