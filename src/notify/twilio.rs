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
        let client = reqwest::Client::builder()
            .timeout(PROVIDER_TIMEOUT)
            .connect_timeout(PROVIDER_TIMEOUT / 2)
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
