//! `UserId`: 24 lower-case hex characters (96 random bits), made by the server. Safe in an MQTT
//! topic level (no `/`, `+`, `#`), in a URL path and as a sled key.

use std::fmt;

use rand::RngCore;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId([u8; UserId::BYTES]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a user id")]
pub struct InvalidUserId;

impl UserId {
    pub const BYTES: usize = 12;

    pub fn random() -> Self {
        let mut bytes = [0u8; Self::BYTES];
        rand::rng().fill_bytes(&mut bytes);
        Self(bytes)
    }

    pub fn parse(input: &str) -> Result<Self, InvalidUserId> {
        if input.len() != Self::BYTES * 2 {
            return Err(InvalidUserId);
        }
        let mut bytes = [0u8; Self::BYTES];
        for (i, pair) in input.as_bytes().chunks(2).enumerate() {
            let hi = hex_value(pair[0]).ok_or(InvalidUserId)?;
            let lo = hex_value(pair[1]).ok_or(InvalidUserId)?;
            bytes[i] = hi << 4 | lo;
        }
        Ok(Self(bytes))
    }

    /// The raw bytes, for ordered storage keys.
    pub fn as_bytes(&self) -> &[u8; Self::BYTES] {
        &self.0
    }

    pub fn from_bytes(bytes: [u8; Self::BYTES]) -> Self {
        Self(bytes)
    }

    /// The id as text, on the stack: topics and events spell ids on the hot path, where
    /// `{:02x}` formatting per byte showed up in profiles.
    pub fn hex(&self) -> HexId {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut text = [0u8; 2 * Self::BYTES];
        for (i, b) in self.0.iter().enumerate() {
            text[2 * i] = DIGITS[usize::from(b >> 4)];
            text[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
        }
        HexId(text)
    }
}

/// A [`UserId`] spelled out (see [`UserId::hex`]).
#[derive(Clone, Copy)]
pub struct HexId([u8; 2 * UserId::BYTES]);

impl std::ops::Deref for HexId {
    type Target = str;

    fn deref(&self) -> &str {
        std::str::from_utf8(&self.0).expect("hex digits are ASCII")
    }
}

/// Lower-case hex only: one spelling per id.
fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

/// As its text everywhere (JSON and storage), so there is one spelling.
impl serde::Serialize for UserId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.hex())
    }
}

impl<'de> serde::Deserialize<'de> for UserId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        UserId::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_text() {
        let id = UserId::random();
        assert_eq!(UserId::parse(&id.to_string()), Ok(id));
    }

    #[test]
    fn rejects_other_spellings() {
        let id = UserId::random().to_string();
        assert!(UserId::parse(&id.to_uppercase()).is_err() || id == id.to_uppercase());
        for bad in [
            "",
            "abc",
            "#",
            "+",
            "zzzzzzzzzzzzzzzzzzzzzzzz",
            "0123456789abcdef012345678",
        ] {
            assert!(UserId::parse(bad).is_err(), "{bad:?}");
        }
    }
}
