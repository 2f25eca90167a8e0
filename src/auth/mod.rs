//! Authentication: one-time codes by SMS or email, access tokens (JWT) and sessions with
//! rotating refresh tokens. [`Auth`] is the one service the HTTP API and the MQTT gateway ask
//! "who is this?"; it owns the login rules of the contract (TTL, attempts, single use, resend
//! cooldown and hourly caps, the same answer for known and unknown accounts).

mod keys;
mod otp;
mod tokens;

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

pub use keys::Keys;
pub use tokens::Claims;

use crate::clock::unix_now;
use crate::config::{AuthSettings, LimitSettings};
use crate::domain::SessionId;
use crate::domain::{Identity, UserId};
use crate::limits::{RateLimiter, Rule};
use crate::metrics::METRICS;
use crate::notify::{self, EmailSender, SmsSender};
use crate::store::{OtpChallenge, Session, Store, StoreError};

/// What `POST /v1/auth/otp` answers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CodeSent {
    pub channel: &'static str,
    pub expires_in: u64,
    pub resend_after: u64,
}

/// What verify and refresh answer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Tokens {
    pub user_id: UserId,
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
    pub refresh_token: String,
    pub new_user: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("too many requests; retry in {0:?}")]
    RateLimited(Duration),
    #[error("the code is wrong, expired or used up")]
    InvalidCode,
    #[error("the token is missing, expired, revoked or not ours")]
    Unauthorized,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The purpose under which login codes are stored.
const LOGIN: &str = "login";

/// The purpose of codes that add a phone or email to an account: a code for one account is no
/// use for another, nor for login.
/// Days since the Unix epoch, UTC.
fn utc_day(unix_secs: u64) -> u32 {
    (unix_secs / 86_400) as u32
}

fn add_purpose(user: &UserId) -> String {
    format!("add:{user}")
}

pub struct Auth {
    store: Store,
    keys: Keys,
    settings: AuthSettings,
    limits: LimitSettings,
    limiter: RateLimiter,
    sms: Arc<dyn SmsSender>,
    email: Arc<dyn EmailSender>,
    /// Sessions revoked by logout; the gateway closes their MQTT connections.
    revoked: broadcast::Sender<SessionId>,
}

impl Auth {
    pub fn new(
        store: Store,
        keys: Keys,
        settings: AuthSettings,
        limits: LimitSettings,
        sms: Arc<dyn SmsSender>,
        email: Arc<dyn EmailSender>,
    ) -> Self {
        Self {
            store,
            keys,
            settings,
            limits,
            limiter: RateLimiter::new(),
            sms,
            email,
            revoked: broadcast::channel(1024).0,
        }
    }

    /// Counts one `GET /v1/users/lookup` by `user`, or says how long until one is allowed
    /// (`limits.lookups_per_user_per_minute`): finding out who has a phone number or an email is
    /// a directory an attacker would like to walk.
    pub fn count_lookup(&self, user: &UserId) -> Result<(), AuthError> {
        let key = format!("lookup:{user}");
        self.limiter
            .try_acquire(&[Rule {
                key: &key,
                max: self.limits.lookups_per_user_per_minute,
                window: Duration::from_secs(60),
            }])
            .map_err(AuthError::RateLimited)
    }

    /// Sends a login code to `identity`, whether or not it has an account.
    pub fn request_login_code(
        &self,
        identity: &Identity,
        ip: IpAddr,
    ) -> Result<CodeSent, AuthError> {
        self.request_code(LOGIN, identity, ip)
    }

    /// Sends a code for `purpose` (login, or adding an identity to an account), after the
    /// resend cooldown and the hourly caps allow it. The code goes out in the background, with
    /// retries, so the answer neither waits on the provider nor tells whether it is a known account.
    pub fn request_code(
        &self,
        purpose: &str,
        identity: &Identity,
        ip: IpAddr,
    ) -> Result<CodeSent, AuthError> {
        let now = unix_now();
        let identity_key = identity.key();
        let sent = self.try_request_code(purpose, identity, &identity_key, ip, now);
        let counter = match &sent {
            Ok(_) => &METRICS.otp_sent,
            Err(AuthError::RateLimited(_)) => &METRICS.otp_refused,
            Err(_) => return sent,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        sent
    }

    fn try_request_code(
        &self,
        purpose: &str,
        identity: &Identity,
        identity_key: &str,
        ip: IpAddr,
        now: u64,
    ) -> Result<CodeSent, AuthError> {
        self.refuse_if_locked(identity_key, now)?;
        if self.limits.otp_resend_secs > 0 {
            // Per phone or email, whatever the purpose (logging in, or adding it to an account).
            let sent_at = self.store.code_sent_at(identity_key)?;
            let ready_at = sent_at.saturating_add(self.limits.otp_resend_secs);
            if sent_at > 0 && now < ready_at {
                return Err(AuthError::RateLimited(Duration::from_secs(ready_at - now)));
            }
        }
        let hour = Duration::from_secs(3600);
        let ip_key = format!("otp-ip:{ip}");
        let id_key = format!("otp-id:{identity_key}");
        self.limiter
            .try_acquire(&[
                Rule {
                    key: &id_key,
                    max: self.limits.otp_per_identity_per_hour,
                    window: hour,
                },
                Rule {
                    key: &ip_key,
                    max: self.limits.otp_per_ip_per_hour,
                    window: hour,
                },
            ])
            .map_err(AuthError::RateLimited)?;

        let code = otp::generate();
        let challenge = OtpChallenge {
            code_hash: self.keys.otp_hash(purpose, identity_key, &code),
            expires_at: now + self.settings.otp_ttl_secs,
            attempts: 0,
            sent_at: now,
        };
        // A new code replaces the old one.
        self.store.put_otp(purpose, identity_key, &challenge)?;
        self.store.note_code_sent(identity_key, now)?;
        self.deliver_code(identity.clone(), code);
        Ok(CodeSent {
            channel: identity.channel(),
            expires_in: self.settings.otp_ttl_secs,
            resend_after: self.limits.otp_resend_secs,
        })
    }

    fn deliver_code(&self, identity: Identity, code: String) {
        let minutes = self.settings.otp_ttl_secs.div_ceil(60);
        let text =
            format!("Your tidings code is {code}. It expires in {minutes} min. Do not share it.");
        let sms = self.sms.clone();
        let email = self.email.clone();
        tokio::spawn(async move {
            let result = notify::with_retries(4, Duration::from_secs(1), || async {
                match &identity {
                    Identity::Phone(phone) => sms.send(phone, &text).await,
                    Identity::Email(address) => {
                        let mail = notify::Mail {
                            to: address.clone(),
                            subject: "Your tidings code".into(),
                            body: text.clone(),
                            unsubscribe: None,
                        };
                        email.send(&mail).await
                    }
                }
            })
            .await;
            // The log names the channel, never the code.
            match result {
                Ok(()) => tracing::debug!(channel = identity.channel(), "login code sent"),
                Err(e) => {
                    tracing::error!(channel = identity.channel(), error = %e, "login code not sent")
                }
            }
        });
    }

    /// Sends a code to `identity` for adding it to `user`'s account (same rules as login).
    pub fn request_identity_code(
        &self,
        user: &UserId,
        identity: &Identity,
        ip: IpAddr,
    ) -> Result<CodeSent, AuthError> {
        self.request_code(&add_purpose(user), identity, ip)
    }

    /// Checks a code sent by [`Auth::request_identity_code`].
    pub fn check_identity_code(
        &self,
        user: &UserId,
        identity: &Identity,
        code: &str,
    ) -> Result<(), AuthError> {
        self.check_code(&add_purpose(user), identity, code)
    }

    /// Checks a login code; the first success for an identity creates its account.
    pub async fn verify_login(&self, identity: &Identity, code: &str) -> Result<Tokens, AuthError> {
        self.check_code(LOGIN, identity, code)?;
        let (user, new_user) = self.store.user_for_identity(identity)?;
        let tokens = self.start_session(user.id, new_user)?;
        self.store.durable_async().await?;
        Ok(tokens)
    }

    /// Consumes the code for `purpose` and `identity` if `code` is it. Wrong codes count; after
    /// `otp_max_attempts` of them, or after expiry, the code is dead, even for the right one.
    pub fn check_code(
        &self,
        purpose: &str,
        identity: &Identity,
        code: &str,
    ) -> Result<(), AuthError> {
        let identity_key = identity.key();
        let candidate = self.keys.otp_hash(purpose, &identity_key, code);
        let now = unix_now();
        if let Err(locked) = self.refuse_if_locked(&identity_key, now) {
            METRICS.otp_refused.fetch_add(1, Ordering::Relaxed);
            return Err(locked);
        }
        let max_attempts = self.settings.otp_max_attempts;
        let (mut accepted, mut guessed) = (false, false);
        self.store.update_otp(purpose, &identity_key, |current| {
            (accepted, guessed) = (false, false);
            let mut challenge = current?;
            if challenge.expires_at <= now || challenge.attempts >= max_attempts {
                // Dead: kept, never matched (the resend cooldown is the identity's own record).
                return Some(challenge);
            }
            if otp::hashes_equal(&challenge.code_hash, &candidate) {
                accepted = true;
                // Single use: spent, kept only for the cooldown.
                challenge.attempts = max_attempts;
                return Some(challenge);
            }
            guessed = true;
            challenge.attempts += 1;
            Some(challenge)
        })?;
        if accepted {
            return Ok(());
        }
        if guessed {
            METRICS.otp_failed.fetch_add(1, Ordering::Relaxed);
        }
        if guessed && self.limits.otp_failures_per_identity_per_day > 0 {
            // A wrong guess at a live code: the ones that could have found it.
            self.store.add_otp_failure(&identity_key, utc_day(now))?;
        }
        Err(AuthError::InvalidCode)
    }

    /// `RateLimited` until the end of the UTC day once `identity_key` has had
    /// `otp_failures_per_identity_per_day` wrong codes that day.
    fn refuse_if_locked(&self, identity_key: &str, now: u64) -> Result<(), AuthError> {
        let cap = self.limits.otp_failures_per_identity_per_day;
        if cap == 0 || self.store.otp_failures(identity_key, utc_day(now))? < cap {
            return Ok(());
        }
        let day_ends = (u64::from(utc_day(now)) + 1) * 86_400;
        Err(AuthError::RateLimited(Duration::from_secs(day_ends - now)))
    }

    fn start_session(&self, user_id: UserId, new_user: bool) -> Result<Tokens, AuthError> {
        let now = unix_now();
        let sid = SessionId::random();
        let (refresh_token, refresh_hash) = tokens::new_refresh_token();
        self.store.create_session(&Session {
            id: sid,
            user_id,
            refresh_hash,
            refresh_expires_at: now + self.settings.refresh_ttl_secs,
            created_at: now,
        })?;
        Ok(self.tokens_for(user_id, sid, refresh_token, new_user, now))
    }

    fn tokens_for(
        &self,
        user_id: UserId,
        sid: SessionId,
        refresh_token: String,
        new_user: bool,
        now: u64,
    ) -> Tokens {
        let claims = Claims::new(user_id, sid, now, self.settings.access_ttl_secs);
        Tokens {
            user_id,
            access_token: self.keys.sign(&claims),
            token_type: "Bearer",
            expires_in: self.settings.access_ttl_secs,
            refresh_token,
            new_user,
        }
    }

    /// Swaps a refresh token for new tokens; the old refresh token stops working.
    pub async fn refresh(&self, refresh_token: &str) -> Result<Tokens, AuthError> {
        let old_hash = tokens::hash_refresh_token(refresh_token);
        let (new_token, new_hash) = tokens::new_refresh_token();
        let now = unix_now();
        let session = self
            .store
            .rotate_refresh(
                &old_hash,
                new_hash,
                now + self.settings.refresh_ttl_secs,
                now,
            )?
            .ok_or(AuthError::Unauthorized)?;
        // A session whose account is gone is no session.
        if self.store.user(&session.user_id)?.is_none() {
            return Err(AuthError::Unauthorized);
        }
        let tokens = self.tokens_for(session.user_id, session.id, new_token, false, now);
        self.store.durable_async().await?;
        Ok(tokens)
    }

    /// Revokes the session of `claims`: its tokens stop working, its MQTT connections close.
    pub async fn logout(&self, claims: &Claims) -> Result<(), AuthError> {
        self.store.delete_session(&claims.sid)?;
        self.store.durable_async().await?;
        // Nobody listening (no gateway yet, or no connection) is fine.
        let _ = self.revoked.send(claims.sid);
        Ok(())
    }

    /// Verifies an access token: signature (HS256 only), expiry, and that its session is live.
    /// Called on every HTTP request and every MQTT CONNECT.
    /// The token of `user`'s one-click unsubscribe link (forwarded emails).
    pub fn unsubscribe_token(&self, user: &UserId) -> String {
        self.keys.unsubscribe_token(user)
    }

    /// The user an unsubscribe token names, if this server made it.
    pub fn unsubscribe_user(&self, token: &str) -> Option<UserId> {
        self.keys.unsubscribe_user(token)
    }

    pub fn authenticate(&self, access_token: &str) -> Result<Claims, AuthError> {
        let claims = self
            .keys
            .verify(access_token)
            .ok_or(AuthError::Unauthorized)?;
        match self.store.session(&claims.sid)? {
            Some(session) if session.user_id == claims.user_id => Ok(claims),
            _ => Err(AuthError::Unauthorized),
        }
    }

    /// Whether the session of already-verified `claims` is still live (not logged out).
    pub fn authenticate_session(&self, claims: &Claims) -> Result<(), AuthError> {
        match self.store.session(&claims.sid)? {
            Some(session) if session.user_id == claims.user_id => Ok(()),
            _ => Err(AuthError::Unauthorized),
        }
    }

    /// Sessions revoked from now on, as they are revoked.
    pub fn revocations(&self) -> broadcast::Receiver<SessionId> {
        self.revoked.subscribe()
    }
}
