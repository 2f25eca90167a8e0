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
    /// The caller's read marker in this conversation (0: nothing read).
    read_seq: u64,
    /// The peer's read marker: how far the peer has read (read ticks).
    peer_read_seq: u64,
}

#[derive(Deserialize)]
pub struct ListQuery {
    /// The `sent_at` (ms) of the last conversation of the previous page.
    before: Option<u64>,
    limit: Option<usize>,
}

pub async fn list(
    State(state): State<AppState>,
    Authed(claims): Authed,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let limit = page_limit(query.limit)?;
    let me = claims.user_id;
    ApiError::unless_store_healthy(&state.store)?;
    let mut summaries = state.store.conversations(&me)?;
    if let Some(before) = query.before {
        summaries.retain(|s| s.last_at_ms < before);
    }
    summaries.sort_by_key(|s| std::cmp::Reverse((s.last_at_ms, s.last_seq)));
    let has_more = summaries.len() > limit;
    summaries.truncate(limit);
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
            read_seq: state.store.read_marker(&me, &summary.peer)?,
            peer_read_seq: state.store.read_marker(&summary.peer, &me)?,
        });
    }
    #[derive(Serialize)]
    struct Conversations<'a> {
        conversations: Vec<ConversationRow<'a>>,
        has_more: bool,
    }
    // Serialised here, while the rows still borrow the messages.
    Ok(Json(&Conversations {
        conversations: rows,
        has_more,
    })
    .into_response())
}

/// `limit`: 50 when absent, at most 200 (more is served as 200), 0 is refused.
fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(0) => Err(ApiError::bad_request(
            "invalid_query",
            "limit must be 1 to 200",
        )),
        Some(n) => Ok(n.min(MAX_LIMIT)),
    }
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
    let limit = page_limit(query.limit)?;
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
