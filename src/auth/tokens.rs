//! Access tokens (HS256 JWT: `sub` user id, `sid` session id, `iat`, `exp`) and refresh tokens
//! (32 random bytes, base64url; stored only as SHA-256).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::clock::unix_now;
use crate::domain::{SessionId, UserId};

/// A verified access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub user_id: UserId,
    pub sid: SessionId,
    /// Unix seconds when the token expires (the gateway closes connections then).
    pub expires_at: u64,
}

/// The JWT body as it is on the wire.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct JwtClaims {
    sub: String,
    sid: String,
    iat: u64,
    exp: u64,
}

impl Claims {
    pub(super) fn new(user_id: UserId, sid: SessionId, now: u64, ttl: u64) -> Self {
        Self {
            user_id,
            sid,
            expires_at: now + ttl,
        }
    }

    pub(super) fn to_jwt(&self) -> JwtClaims {
        JwtClaims {
            sub: self.user_id.to_string(),
            sid: URL_SAFE_NO_PAD.encode(self.sid.as_bytes()),
            iat: unix_now(),
            exp: self.expires_at,
        }
    }

    pub(super) fn from_jwt(jwt: JwtClaims) -> Option<Self> {
        let user_id = UserId::parse(&jwt.sub).ok()?;
        let sid = SessionId::from_slice(&URL_SAFE_NO_PAD.decode(jwt.sid).ok()?)?;
        Some(Self {
            user_id,
            sid,
            expires_at: jwt.exp,
        })
    }
}

/// A new refresh token and the hash it is stored under.
pub(super) fn new_refresh_token() -> (String, [u8; 32]) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = URL_SAFE_NO_PAD.encode(bytes);
    let hash = hash_refresh_token(&token);
    (token, hash)
}

pub(super) fn hash_refresh_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}
