//! The server's keys: the JWT signing secret (from config, or generated once and kept in the
//! storage directory with mode 0600) and the OTP hashing key derived from it.

use std::io::Write;
use std::path::Path;

use base64::Engine;
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use sha2::Sha256;

use super::Claims;
use crate::config::Secret;
use crate::domain::UserId;

const SECRET_FILE: &str = "jwt_secret";

pub struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    /// HMAC key for OTP hashes, derived from the JWT secret so there is one secret to keep.
    otp_key: [u8; 32],
    /// HMAC key for the unsubscribe links of forwarded emails, derived the same way.
    link_key: [u8; 32],
}

/// The part of a link's HMAC it carries (128 bits).
const LINK_MAC: usize = 16;

impl Keys {
    /// The configured secret, else the one kept in `storage_dir`, else a new one kept there.
    pub fn load(configured: Option<&Secret>, storage_dir: &Path) -> anyhow::Result<Self> {
        let secret = match configured {
            Some(secret) => secret.expose().as_bytes().to_vec(),
            None => load_or_create_secret(storage_dir)?,
        };
        Ok(Self::from_secret(&secret))
    }

    pub fn from_secret(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let derive = |label: &[u8]| -> [u8; 32] {
            let mut mac =
                Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
            mac.update(label);
            mac.finalize().into_bytes().into()
        };
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            otp_key: derive(b"tidings otp key v1"),
            link_key: derive(b"tidings unsubscribe link key v1"),
        }
    }

    pub fn sign(&self, claims: &Claims) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims.to_jwt(),
            &self.encoding,
        )
        .expect("HS256 signing of plain claims cannot fail")
    }

    /// The claims of a token we signed that has not expired; `None` for anything else
    /// (forged, `alg: none`, another algorithm, expired, malformed).
    pub fn verify(&self, token: &str) -> Option<Claims> {
        let data = jsonwebtoken::decode::<super::tokens::JwtClaims>(
            token,
            &self.decoding,
            &self.validation,
        )
        .ok()?;
        let claims = Claims::from_jwt(data.claims)?;
        // jsonwebtoken still accepts a token during its `exp` second; the gateway closes
        // connections at `exp`, so a token is dead from then on everywhere.
        (claims.expires_at > crate::clock::unix_now()).then_some(claims)
    }

    /// HMAC-SHA256 of a code, bound to its purpose and identity so a hash is useless elsewhere.
    pub fn otp_hash(&self, purpose: &str, identity_key: &str, code: &str) -> [u8; 32] {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.otp_key).expect("HMAC takes keys of any length");
        for part in [purpose, identity_key, code] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        mac.finalize().into_bytes().into()
    }
}

impl Keys {
    /// The token of `user`'s one-click unsubscribe link: the user id and an HMAC of it,
    /// base64url. It does not expire (RFC 8058 links must keep working); a new `jwt_secret`
    /// voids every link.
    pub fn unsubscribe_token(&self, user: &UserId) -> String {
        let mut token = user.as_bytes().to_vec();
        token.extend_from_slice(&self.link_mac(user).finalize().into_bytes()[..LINK_MAC]);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token)
    }

    /// The user an unsubscribe token names, if we made it.
    pub fn unsubscribe_user(&self, token: &str) -> Option<UserId> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .ok()?;
        if bytes.len() != UserId::BYTES + LINK_MAC {
            return None;
        }
        let (id, tag) = bytes.split_at(UserId::BYTES);
        let user = UserId::from_bytes(id.try_into().ok()?);
        // Constant time.
        self.link_mac(&user).verify_truncated_left(tag).ok()?;
        Some(user)
    }

    fn link_mac(&self, user: &UserId) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.link_key).expect("HMAC takes keys of any length");
        mac.update(b"forward_email off:");
        mac.update(user.as_bytes());
        mac
    }
}

fn load_or_create_secret(dir: &Path) -> anyhow::Result<Vec<u8>> {
    use anyhow::Context;
    let path = dir.join(SECRET_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let secret = text.trim();
            anyhow::ensure!(
                secret.len() >= 32,
                "{} is too short to be a JWT secret",
                path.display()
            );
            return Ok(secret.as_bytes().to_vec());
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(secret.as_bytes())
        .and_then(|_| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    tracing::info!(path = %path.display(), "generated a JWT secret");
    Ok(secret.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unsubscribe_token_names_its_user_and_cannot_be_forged() {
        let keys = Keys::from_secret(b"0123456789abcdef0123456789abcdef");
        let (ann, bob) = (UserId::random(), UserId::random());
        let token = keys.unsubscribe_token(&ann);
        assert_eq!(keys.unsubscribe_user(&token), Some(ann));
        // Bob's id with Ann's tag, a cut tag, another server's token, garbage.
        let mut forged = bob.as_bytes().to_vec();
        let ann_bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&token)
            .unwrap();
        forged.extend_from_slice(&ann_bytes[UserId::BYTES..]);
        let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(forged);
        assert_eq!(keys.unsubscribe_user(&forged), None);
        assert_eq!(keys.unsubscribe_user(&token[..token.len() - 2]), None);
        let other = Keys::from_secret(b"another secret, also 32 bytes long");
        assert_eq!(other.unsubscribe_user(&token), None);
        assert_eq!(keys.unsubscribe_user("not a token!"), None);
    }
}
