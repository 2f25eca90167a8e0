//! The `twilio` SMS provider: the Twilio Messages API (or any server speaking it).
//! `POST {base_url}/2010-04-01/Accounts/{sid}/Messages.json`, basic auth, form `To`/`From`/`Body`.

use super::{BoxFuture, SendError, SmsSender, PROVIDER_TIMEOUT};
use crate::config::{Secret, TwilioSettings};
use crate::domain::PhoneNumber;

pub struct TwilioSms {
    client: reqwest::Client,
    url: String,
    account_sid: String,
    auth_token: Secret,
    from: String,
}

impl TwilioSms {
    pub fn new(settings: &TwilioSettings) -> anyhow::Result<Self> {
        Self::with_timeout(settings, PROVIDER_TIMEOUT)
    }

    /// As [`TwilioSms::new`], with another limit on each request.
    pub fn with_timeout(
        settings: &TwilioSettings,
        timeout: std::time::Duration,
    ) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()?;
        Ok(Self {
            client,
            url: format!(
                "{}/2010-04-01/Accounts/{}/Messages.json",
                settings.base_url.trim_end_matches('/'),
                settings.account_sid
            ),
            account_sid: settings.account_sid.clone(),
            auth_token: settings.auth_token.clone(),
            from: settings.from.clone(),
        })
    }
}

impl SmsSender for TwilioSms {
    fn send<'a>(
        &'a self,
        to: &'a PhoneNumber,
        body: &'a str,
    ) -> BoxFuture<'a, Result<(), SendError>> {
        Box::pin(async move {
            let response = self
                .client
                .post(&self.url)
                .basic_auth(&self.account_sid, Some(self.auth_token.expose()))
                .form(&[
                    ("To", to.as_str()),
                    ("From", self.from.as_str()),
                    ("Body", body),
                ])
                .send()
                .await
                .map_err(|e| SendError::Transient(format!("twilio request failed: {e}")))?;
            let status = response.status();
            if status.is_success() {
                return Ok(());
            }
            // Twilio's error bodies say why (bad number, bad credentials); they hold no secret.
            let detail: String = response
                .text()
                .await
                .unwrap_or_default()
                .chars()
                .take(300)
                .collect();
            let why = format!("twilio answered {status}: {detail}");
            if status.as_u16() == 429 || status.is_server_error() {
                Err(SendError::Transient(why))
            } else {
                Err(SendError::Permanent(why))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// A gateway that accepts connections and never answers.
    async fn silent_gateway() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn a_gateway_that_does_not_answer_is_a_transient_failure_after_the_timeout() {
        let settings = TwilioSettings {
            base_url: silent_gateway().await,
            account_sid: "AC1".into(),
            auth_token: Secret::new("t"),
            from: "+15005550006".into(),
        };
        let sms = TwilioSms::with_timeout(&settings, Duration::from_millis(300)).unwrap();
        let to = PhoneNumber::parse("+14155550101").unwrap();
        let started = Instant::now();
        let result = sms.send(&to, "hello").await;
        assert!(matches!(result, Err(SendError::Transient(_))), "{result:?}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
