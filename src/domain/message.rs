//! A chat message (`Message`, as stored, as the `message` event and the history endpoint show
//! it) and its parts: `Body` (1 to 4096 Unicode code points, kept as sent), `ClientMsgId` (1 to
//! 64 printable ASCII characters, the sender's dedupe key) and `MessageId` (made by the server).

use std::fmt;

use rand::RngCore;
use serde::{Deserialize, Serialize};

use super::{ConversationId, UserId};

/// A stored message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub id: MessageId,
    pub from: UserId,
    pub to: UserId,
    pub body: Body,
    /// 1, 2, 3… per conversation, no gaps.
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub sent_at_ms: u64,
    pub client_msg_id: ClientMsgId,
}

impl Message {
    pub fn conversation(&self) -> ConversationId {
        ConversationId::of(&self.from, &self.to)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Body(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidBody {
    #[error("the body is empty")]
    Empty,
    #[error("the body has {0} code points; at most {max} are allowed", max = Body::MAX_CHARS)]
    TooLarge(usize),
}

impl Body {
    pub const MAX_CHARS: usize = 4096;

    /// Not trimmed: what the sender typed is what the recipient sees.
    pub fn parse(text: String) -> Result<Self, InvalidBody> {
        let chars = text.chars().count();
        if chars == 0 {
            return Err(InvalidBody::Empty);
        }
        if chars > Self::MAX_CHARS {
            return Err(InvalidBody::TooLarge(chars));
        }
        Ok(Self(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClientMsgId(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("client_msg_id must be 1 to 64 printable ASCII characters")]
pub struct InvalidClientMsgId;

impl ClientMsgId {
    pub const MAX_LEN: usize = 64;

    pub fn parse(text: String) -> Result<Self, InvalidClientMsgId> {
        let printable = text.bytes().all(|b| (0x20..=0x7e).contains(&b));
        if text.is_empty() || text.len() > Self::MAX_LEN || !printable {
            return Err(InvalidClientMsgId);
        }
        Ok(Self(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// 24 lower-case hex characters (96 random bits).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageId(String);

impl MessageId {
    pub const LEN: usize = 24;

    pub fn random() -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut bytes = [0u8; Self::LEN / 2];
        rand::rng().fill_bytes(&mut bytes);
        let mut id = String::with_capacity(Self::LEN);
        for b in bytes {
            id.push(char::from(HEX[usize::from(b >> 4)]));
            id.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        Self(id)
    }

    /// 24 lower-case hex characters, as the server makes them.
    pub fn parse(text: &str) -> Option<Self> {
        let hex = text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        (text.len() == Self::LEN && hex).then(|| Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_counts_code_points_not_bytes() {
        assert!(Body::parse("é".repeat(4096)).is_ok());
        assert!(Body::parse("😀".repeat(4096)).is_ok());
        assert_eq!(
            Body::parse("a".repeat(4097)),
            Err(InvalidBody::TooLarge(4097))
        );
        assert_eq!(Body::parse(String::new()), Err(InvalidBody::Empty));
        assert_eq!(Body::parse("  hi  ".into()).unwrap().as_str(), "  hi  ");
    }

    #[test]
    fn message_ids_parse_as_made() {
        let id = MessageId::random();
        assert_eq!(MessageId::parse(id.as_str()), Some(id));
        for bad in [
            "",
            "0123456789abcdef0123456",
            "0123456789ABCDEF01234567",
            "0123456789abcdef0123456g",
        ] {
            assert_eq!(MessageId::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn client_msg_id_is_printable_ascii() {
        assert!(ClientMsgId::parse("c-0001".into()).is_ok());
        assert!(ClientMsgId::parse("x".repeat(64)).is_ok());
        for bad in [
            String::new(),
            "x".repeat(65),
            "tab\there".into(),
            "é".into(),
            "nl\n".into(),
        ] {
            assert!(ClientMsgId::parse(bad.clone()).is_err(), "{bad:?}");
        }
    }
}
