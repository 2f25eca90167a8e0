//! `SessionId`: 128 random bits naming one login on one device. It is the access token's
//! `sid`, the key of the stored session, and what logout revokes.

use rand::RngCore;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId([u8; SessionId::BYTES]);

impl SessionId {
    pub const BYTES: usize = 16;

    pub fn random() -> Self {
        let mut bytes = [0u8; Self::BYTES];
        rand::rng().fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// `None` unless `bytes` is exactly [`SessionId::BYTES`] long.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    pub fn as_bytes(&self) -> &[u8; Self::BYTES] {
        &self.0
    }
}
