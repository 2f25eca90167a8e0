//! The JSON on the MQTT topics: outbox commands in (`send`, `read`), inbox events out
//! (`message`, `read`, `error`). Parsing turns a payload into domain types or into the error
//! event the contract names; nothing else looks at raw payloads.

use std::borrow::Cow;

use serde::Serialize;
use serde_json::Value;
use time::format_description::well_known::Rfc3339;

use crate::domain::{Body, ClientMsgId, InvalidBody, Message, MessageId, UserId};

/// An outbox command, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Send {
        to: UserId,
        body: Body,
        client_msg_id: ClientMsgId,
    },
    Read {
        peer: UserId,
        seq: u64,
        /// Optional: given back in the command's `error` event, if it gets one.
        client_msg_id: Option<ClientMsgId>,
    },
}

impl Command {
    /// The command's `client_msg_id`, for its error event.
    pub fn client_msg_id(&self) -> Option<String> {
        match self {
            Command::Send { client_msg_id, .. } => Some(client_msg_id.as_str().to_owned()),
            Command::Read { client_msg_id, .. } => {
                client_msg_id.as_ref().map(|id| id.as_str().to_owned())
            }
        }
    }
}

/// Why a command was refused: the `error` event's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandError {
    pub client_msg_id: Option<String>,
    pub code: ErrorCode,
    pub message: String,
    /// Seconds until a retry can succeed (`rate_limited` only).
    pub retry_after: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidPayload,
    BodyTooLarge,
    UnknownRecipient,
    RateLimited,
    /// The same `client_msg_id` came with another `to` or `body`.
    ClientMsgIdReused,
    /// The server cannot store right now; nothing was stored.
    Unavailable,
}

impl CommandError {
    pub fn new(client_msg_id: Option<String>, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            client_msg_id,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// `rate_limited`, with the whole seconds (at least 1) until a send is allowed again.
    pub fn rate_limited(client_msg_id: Option<String>, wait: std::time::Duration) -> Self {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let secs = secs.max(1);
        Self {
            retry_after: Some(secs),
            ..Self::new(
                client_msg_id,
                ErrorCode::RateLimited,
                format!("too many messages; retry in {secs} s"),
            )
        }
    }
}

impl Command {
    /// Parses an outbox payload. The error keeps the `client_msg_id` when there is a readable
    /// one, so the sending device can match the error to its message.
    pub fn parse(payload: &[u8]) -> Result<Self, CommandError> {
        let invalid = |cmid: Option<String>, why: &str| {
            CommandError::new(cmid, ErrorCode::InvalidPayload, why)
        };
        let value: Value = serde_json::from_slice(payload)
            .map_err(|e| invalid(None, &format!("not JSON: {e}")))?;
        let Value::Object(fields) = value else {
            return Err(invalid(None, "a command is a JSON object"));
        };
        let cmid = fields
            .get("client_msg_id")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let text = |name: &str| -> Result<String, CommandError> {
            match fields.get(name) {
                Some(Value::String(s)) => Ok(s.clone()),
                _ => Err(invalid(
                    cmid.clone(),
                    &format!("\"{name}\" must be a string"),
                )),
            }
        };
        match fields.get("type").and_then(Value::as_str) {
            Some("send") => {
                let client_msg_id = ClientMsgId::parse(text("client_msg_id")?)
                    .map_err(|e| invalid(cmid.clone(), &e.to_string()))?;
                let to = UserId::parse(&text("to")?).map_err(|_| {
                    CommandError::new(
                        cmid.clone(),
                        ErrorCode::UnknownRecipient,
                        "\"to\" is not a user id",
                    )
                })?;
                let body = Body::parse(text("body")?).map_err(|e| match e {
                    InvalidBody::Empty => invalid(cmid.clone(), &e.to_string()),
                    InvalidBody::TooLarge(_) => {
                        CommandError::new(cmid.clone(), ErrorCode::BodyTooLarge, e.to_string())
                    }
                })?;
                Ok(Command::Send {
                    to,
                    body,
                    client_msg_id,
                })
            }
            Some("read") => {
                let client_msg_id = match fields.get("client_msg_id") {
                    None | Some(Value::Null) => None,
                    Some(_) => Some(
                        ClientMsgId::parse(text("client_msg_id")?)
                            .map_err(|e| invalid(cmid.clone(), &e.to_string()))?,
                    ),
                };
                let peer = UserId::parse(&text("peer")?)
                    .map_err(|_| invalid(cmid.clone(), "\"peer\" is not a user id"))?;
                let seq = fields
                    .get("seq")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| invalid(cmid.clone(), "\"seq\" must be a whole number"))?;
                Ok(Command::Read {
                    peer,
                    seq,
                    client_msg_id,
                })
            }
            Some(other) => Err(invalid(cmid, &format!("unknown command type {other:?}"))),
            None => Err(invalid(cmid, "\"type\" must be \"send\" or \"read\"")),
        }
    }
}

/// A message as the `message` event and the history endpoint show it.
#[derive(Debug, Serialize)]
pub struct MessageEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    from: UserId,
    to: UserId,
    body: &'a str,
    seq: u64,
    sent_at: Cow<'a, str>,
    client_msg_id: &'a str,
}

impl<'a> MessageEvent<'a> {
    /// `sent_at` is `message.sent_at_ms` spelled by [`rfc3339_millis`], passed in so that a
    /// batch of messages stored in the same millisecond spells it once.
    pub fn new(m: &'a Message, sent_at: Cow<'a, str>) -> Self {
        Self {
            kind: "message",
            id: m.id.as_str(),
            from: m.from,
            to: m.to,
            body: m.body.as_str(),
            seq: m.seq,
            sent_at,
            client_msg_id: m.client_msg_id.as_str(),
        }
    }
}

impl<'a> From<&'a Message> for MessageEvent<'a> {
    fn from(m: &'a Message) -> Self {
        Self::new(m, Cow::Owned(rfc3339_millis(m.sent_at_ms)))
    }
}

pub fn message_event(message: &Message) -> Vec<u8> {
    message_event_at(message, &rfc3339_millis(message.sent_at_ms))
}

/// [`message_event`] with `sent_at` already spelled.
pub fn message_event_at(message: &Message, sent_at: &str) -> Vec<u8> {
    // Room for the fixed fields (~190 bytes) and the body.
    let mut event = Vec::with_capacity(256 + message.body.as_str().len());
    serde_json::to_writer(
        &mut event,
        &MessageEvent::new(message, Cow::Borrowed(sent_at)),
    )
    .expect("events serialise");
    event
}

/// The id and recipient of a `message` event, read from the fixed order in which
/// [`message_event`] writes its first fields (`type`, `id`, `from`, `to`) rather than by
/// parsing the JSON: the gateway does this for every event it forwards. `None` for any other
/// payload.
pub fn message_event_head(event: &[u8]) -> Option<(MessageId, UserId)> {
    let rest = event.strip_prefix(br#"{"type":"message","id":""#)?;
    let (id, rest) = rest.split_at_checked(MessageId::LEN)?;
    let rest = rest.strip_prefix(br#"","from":""#)?;
    let (_from, rest) = rest.split_at_checked(2 * UserId::BYTES)?;
    let rest = rest.strip_prefix(br#"","to":""#)?;
    let (to, rest) = rest.split_at_checked(2 * UserId::BYTES)?;
    if !rest.starts_with(b"\"") {
        return None;
    }
    let id = MessageId::parse(std::str::from_utf8(id).ok()?)?;
    let to = UserId::parse(std::str::from_utf8(to).ok()?).ok()?;
    Some((id, to))
}

pub fn error_event(error: &CommandError) -> Vec<u8> {
    #[derive(Serialize)]
    struct ErrorEvent<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        client_msg_id: Option<&'a str>,
        code: ErrorCode,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after: Option<u64>,
        message: &'a str,
    }
    let event = ErrorEvent {
        kind: "error",
        client_msg_id: error.client_msg_id.as_deref(),
        code: error.code,
        retry_after: error.retry_after,
        message: &error.message,
    };
    serde_json::to_vec(&event).expect("events serialise")
}

pub fn read_event(by: &UserId, peer: &UserId, seq: u64) -> Vec<u8> {
    #[derive(Serialize)]
    struct ReadEvent<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        by: &'a UserId,
        peer: &'a UserId,
        seq: u64,
    }
    serde_json::to_vec(&ReadEvent {
        kind: "read",
        by,
        peer,
        seq,
    })
    .expect("events serialise")
}

/// `2026-11-24T10:00:00.123Z`
pub fn rfc3339_millis(ms: u64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let text = at.format(&Rfc3339).expect("UTC times format as RFC 3339");
    // Rfc3339 prints as many fraction digits as needed; the contract shows exactly three.
    let (seconds, _) = text.split_once(['.', 'Z']).unwrap_or((&text, ""));
    format!("{seconds}.{:03}Z", ms % 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_have_milliseconds() {
        assert_eq!(
            rfc3339_millis(1_795_514_400_123),
            "2026-11-24T10:00:00.123Z"
        );
        assert_eq!(
            rfc3339_millis(1_795_514_400_000),
            "2026-11-24T10:00:00.000Z"
        );
    }

    #[test]
    fn the_head_of_a_message_event_reads_without_parsing() {
        let message = Message {
            id: MessageId::random(),
            from: UserId::random(),
            to: UserId::random(),
            body: Body::parse("\"tricky\",\"to\":\"x".into()).unwrap(),
            seq: 3,
            sent_at_ms: 1_795_514_400_123,
            client_msg_id: ClientMsgId::parse("c-1".into()).unwrap(),
        };
        let event = message_event(&message);
        assert_eq!(
            message_event_head(&event),
            Some((message.id.clone(), message.to))
        );
        assert_eq!(
            message_event_head(&read_event(&message.from, &message.to, 3)),
            None
        );
        assert_eq!(message_event_head(&event[..40]), None);
        assert_eq!(message_event_head(b"{\"type\":\"message\"}"), None);
    }

    #[test]
    fn send_parses_and_errors_keep_the_client_msg_id() {
        let to = UserId::random();
        let ok = format!(r#"{{"type":"send","to":"{to}","body":"hi","client_msg_id":"c-1"}}"#);
        assert!(matches!(
            Command::parse(ok.as_bytes()),
            Ok(Command::Send { .. })
        ));
        let big = format!(
            r#"{{"type":"send","to":"{to}","body":"{}","client_msg_id":"c-2"}}"#,
            "x".repeat(4097)
        );
        let err = Command::parse(big.as_bytes()).unwrap_err();
        assert_eq!(
            (err.code, err.client_msg_id.as_deref()),
            (ErrorCode::BodyTooLarge, Some("c-2"))
        );
        let err =
            Command::parse(br#"{"type":"send","to":"nobody","body":"x","client_msg_id":"c-3"}"#)
                .unwrap_err();
        assert_eq!(err.code, ErrorCode::UnknownRecipient);
        for bad in [
            &b"nope"[..],
            b"[]",
            b"{}",
            br#"{"type":"shout"}"#,
            br#"{"type":"send","body":"x"}"#,
        ] {
            assert_eq!(
                Command::parse(bad).unwrap_err().code,
                ErrorCode::InvalidPayload,
                "{bad:?}"
            );
        }
    }
}
