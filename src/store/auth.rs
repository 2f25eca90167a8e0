//! One-time-code challenges and login sessions (with their rotating refresh tokens).

use serde::{Deserialize, Serialize};
use sled::transaction::ConflictableTransactionError;
use sled::Transactional;

use super::{decode, encode, flatten, Store, StoreError};
use crate::domain::{SessionId, UserId};

/// A code sent to a phone or email, stored only as a keyed hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OtpChallenge {
    /// HMAC-SHA256 of the code under the server's OTP key.
    pub code_hash: [u8; 32],
    /// Unix seconds after which the code is dead.
    pub expires_at: u64,
    /// Wrong codes tried so far.
    pub attempts: u32,
    /// Unix seconds when it was sent. Kept for the on-disk format and for reading the store;
    /// the resend cooldown goes by the identity's own record ([`Store::code_sent_at`]), which
    /// covers every purpose.
    pub sent_at: u64,
}

/// A login on one device: what an access token's `sid` points at, and what its refresh token
/// rotates. Deleting it revokes both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub id: SessionId,
    pub user_id: UserId,
    /// SHA-256 of the current refresh token.
    pub refresh_hash: [u8; 32],
    /// Unix seconds when the current refresh token dies.
    pub refresh_expires_at: u64,
    pub created_at: u64,
}

/// The `otp` tree's "purpose" under which an identity's wrong codes per day are counted.
const FAILURES: &str = "failures";
/// ... and the one under which the time of its last code (any purpose) is kept.
const SENT: &str = "sent";

/// The count in a failures record (day u32 BE ‖ count u32 BE), if it is for `day`.
fn failures_on(value: &[u8], day: u32) -> u32 {
    match (value.get(..4), value.get(4..8)) {
        (Some(d), Some(n)) if d == day.to_be_bytes() => {
            u32::from_be_bytes(n.try_into().expect("four bytes"))
        }
        _ => 0,
    }
}

fn otp_key(purpose: &str, identity_key: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(purpose.len() + 1 + identity_key.len());
    key.extend_from_slice(purpose.as_bytes());
    key.push(0);
    key.extend_from_slice(identity_key.as_bytes());
    key
}

impl Store {
    pub fn otp(
        &self,
        purpose: &str,
        identity_key: &str,
    ) -> Result<Option<OtpChallenge>, StoreError> {
        self.inner
            .otp
            .get(otp_key(purpose, identity_key))?
            .map(|bytes| decode("otp", &bytes))
            .transpose()
    }

    /// Stores `challenge`, replacing any earlier one for the same purpose and identity.
    pub fn put_otp(
        &self,
        purpose: &str,
        identity_key: &str,
        challenge: &OtpChallenge,
    ) -> Result<(), StoreError> {
        self.inner
            .otp
            .insert(otp_key(purpose, identity_key), encode(challenge))?;
        Ok(())
    }

    /// Atomically replaces the challenge with `f(current)` (`None` deletes it). `f` may run more
    /// than once under contention, so it must only compute; the last run's result is stored.
    pub fn update_otp<F>(
        &self,
        purpose: &str,
        identity_key: &str,
        mut f: F,
    ) -> Result<(), StoreError>
    where
        F: FnMut(Option<OtpChallenge>) -> Option<OtpChallenge>,
    {
        let mut corrupt = None;
        self.inner
            .otp
            .fetch_and_update(otp_key(purpose, identity_key), |old| {
                let current = match old.map(|b| decode::<OtpChallenge>("otp", b)).transpose() {
                    Ok(current) => current,
                    Err(e) => {
                        corrupt = Some(e);
                        None
                    }
                };
                f(current).map(|c| encode(&c))
            })?;
        match corrupt {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// When a code was last sent to `identity_key`, for any purpose (Unix seconds; 0: never).
    pub fn code_sent_at(&self, identity_key: &str) -> Result<u64, StoreError> {
        super::u64_at(&self.inner.otp, otp_key(SENT, identity_key))
    }

    /// Notes that a code is being sent to `identity_key` now.
    pub fn note_code_sent(&self, identity_key: &str, at: u64) -> Result<(), StoreError> {
        self.inner
            .otp
            .insert(otp_key(SENT, identity_key), &at.to_be_bytes()[..])?;
        Ok(())
    }

    /// Wrong codes entered for `identity_key` on `day` (days since the Unix epoch, UTC), across
    /// all its codes and purposes.
    pub fn otp_failures(&self, identity_key: &str, day: u32) -> Result<u32, StoreError> {
        let stored = self.inner.otp.get(otp_key(FAILURES, identity_key))?;
        Ok(stored.map_or(0, |v| failures_on(&v, day)))
    }

    /// Counts one more wrong code for `identity_key` on `day`.
    pub fn add_otp_failure(&self, identity_key: &str, day: u32) -> Result<(), StoreError> {
        self.inner
            .otp
            .fetch_and_update(otp_key(FAILURES, identity_key), |old| {
                let count = old.map_or(0, |v| failures_on(v, day)) + 1;
                let mut value = day.to_be_bytes().to_vec();
                value.extend_from_slice(&count.to_be_bytes());
                Some(value)
            })?;
        Ok(())
    }

    pub fn create_session(&self, session: &Session) -> Result<(), StoreError> {
        (&self.inner.sessions, &self.inner.refresh)
            .transaction(|(sessions, refresh)| {
                sessions.insert(session.id.as_bytes().as_slice(), encode(session))?;
                refresh.insert(
                    session.refresh_hash.as_slice(),
                    session.id.as_bytes().as_slice(),
                )?;
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(flatten)
    }

    pub fn session(&self, id: &SessionId) -> Result<Option<Session>, StoreError> {
        self.inner
            .sessions
            .get(id.as_bytes())?
            .map(|bytes| decode("sessions", &bytes))
            .transpose()
    }

    /// Swaps the session's refresh token `old_hash` for `new_hash`, atomically and once: of two
    /// refreshes with one token, one wins. `None` when no live session has that token.
    pub fn rotate_refresh(
        &self,
        old_hash: &[u8; 32],
        new_hash: [u8; 32],
        new_expires_at: u64,
        now: u64,
    ) -> Result<Option<Session>, StoreError> {
        (&self.inner.sessions, &self.inner.refresh)
            .transaction(|(sessions, refresh)| {
                let Some(sid) = refresh.get(old_hash.as_slice())? else {
                    return Ok(None);
                };
                let Some(bytes) = sessions.get(&sid)? else {
                    refresh.remove(old_hash.as_slice())?;
                    return Ok(None);
                };
                let mut session: Session =
                    decode("sessions", &bytes).map_err(ConflictableTransactionError::Abort)?;
                refresh.remove(old_hash.as_slice())?;
                if session.refresh_hash != *old_hash || session.refresh_expires_at <= now {
                    return Ok(None);
                }
                session.refresh_hash = new_hash;
                session.refresh_expires_at = new_expires_at;
                sessions.insert(session.id.as_bytes().as_slice(), encode(&session))?;
                refresh.insert(new_hash.as_slice(), session.id.as_bytes().as_slice())?;
                Ok(Some(session))
            })
            .map_err(flatten)
    }

    /// Revokes a session: its access and refresh tokens stop working.
    pub fn delete_session(&self, id: &SessionId) -> Result<Option<Session>, StoreError> {
        (&self.inner.sessions, &self.inner.refresh)
            .transaction(|(sessions, refresh)| {
                let Some(bytes) = sessions.remove(id.as_bytes().as_slice())? else {
                    return Ok(None);
                };
                let session: Session =
                    decode("sessions", &bytes).map_err(ConflictableTransactionError::Abort)?;
                refresh.remove(session.refresh_hash.as_slice())?;
                Ok(Some(session))
            })
            .map_err(flatten)
    }
}
