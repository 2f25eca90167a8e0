//! Outgoing SMS and email: the `SmsSender` and `EmailSender` traits, their `console`, `twilio`
//! and `smtp` implementations, the choice between them by config, and retry with back-off.

mod console;
mod smtp;
mod twilio;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub use console::{ConsoleEmail, ConsoleSms};
pub use smtp::SmtpEmail;
pub use twilio::TwilioSms;

use crate::config::{EmailProvider, EmailSettings, SmsProvider, SmsSettings};
use crate::domain::{Email, PhoneNumber};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a message was not sent, and whether trying again can help.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The provider is down, slow or throttling (timeouts, 429, 5xx): retry later.
    #[error("temporary failure: {0}")]
    Transient(String),
    /// The provider refused this message (bad number, bad credentials): retrying will not help.
    #[error("permanent failure: {0}")]
    Permanent(String),
}

pub trait SmsSender: Send + Sync {
    fn send<'a>(
        &'a self,
        to: &'a PhoneNumber,
        body: &'a str,
    ) -> BoxFuture<'a, Result<(), SendError>>;
}

/// One plain-text email.
#[derive(Debug, Clone)]
pub struct Mail {
    pub to: Email,
    pub subject: String,
    pub body: String,
    /// The one-click unsubscribe URL (RFC 8058): sent as the `List-Unsubscribe` and
    /// `List-Unsubscribe-Post` headers.
    pub unsubscribe: Option<String>,
}

pub trait EmailSender: Send + Sync {
    fn send<'a>(&'a self, mail: &'a Mail) -> BoxFuture<'a, Result<(), SendError>>;
}

/// The SMS provider `settings` name.
pub fn sms_sender(settings: &SmsSettings) -> anyhow::Result<Arc<dyn SmsSender>> {
    Ok(match settings.provider {
        SmsProvider::Console => Arc::new(ConsoleSms),
        SmsProvider::Twilio => Arc::new(TwilioSms::new(&settings.twilio)?),
    })
}

/// The email provider `settings` name.
pub fn email_sender(settings: &EmailSettings) -> anyhow::Result<Arc<dyn EmailSender>> {
    Ok(match settings.provider {
        EmailProvider::Console => Arc::new(ConsoleEmail),
        EmailProvider::Smtp => Arc::new(SmtpEmail::new(&settings.smtp)?),
    })
}

/// How long one provider call may take before it counts as a transient failure.
pub const PROVIDER_TIMEOUT: Duration = Duration::from_secs(10);

/// Calls `attempt` until it succeeds, fails permanently, or `tries` are used up, waiting
/// `first_delay`, then twice that, and so on, between tries.
pub async fn with_retries<F, Fut>(
    tries: u32,
    first_delay: Duration,
    mut attempt: F,
) -> Result<(), SendError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), SendError>>,
{
    let mut delay = first_delay;
    let mut tried = 0;
    loop {
        tried += 1;
        match attempt().await {
            Err(SendError::Transient(why)) if tried < tries => {
                tracing::warn!(%why, retry_in = ?delay, "provider failed; retrying");
                tokio::time::sleep(delay).await;
                delay = delay.saturating_mul(2);
            }
            other => return other,
        }
    }
}
