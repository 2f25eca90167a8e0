//! The `smtp` email provider, on lettre's async SMTP transport (plain, STARTTLS or implicit TLS,
//! optional AUTH).

use lettre::message::header::{ContentType, Header, HeaderName, HeaderValue};
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::{BoxFuture, EmailSender, Mail, SendError, PROVIDER_TIMEOUT};
use crate::config::{SmtpSettings, SmtpTls};

pub struct SmtpEmail {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    /// The whole exchange's deadline: lettre's own timeout does not cover a server that
    /// accepts the connection and never greets.
    timeout: std::time::Duration,
}

impl SmtpEmail {
    pub fn new(settings: &SmtpSettings) -> anyhow::Result<Self> {
        Self::with_timeout(settings, PROVIDER_TIMEOUT)
    }

    /// As [`SmtpEmail::new`], with another limit on each SMTP command.
    pub fn with_timeout(
        settings: &SmtpSettings,
        timeout: std::time::Duration,
    ) -> anyhow::Result<Self> {
        let builder = match settings.tls {
            SmtpTls::None => {
                AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&settings.host)
            }
            SmtpTls::Starttls => {
                AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&settings.host)?
            }
            SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&settings.host)?,
        };
        let mut builder = builder.port(settings.port).timeout(Some(timeout));
        if !settings.username.is_empty() {
            builder = builder.credentials(Credentials::new(
                settings.username.clone(),
                settings.password.expose().to_owned(),
            ));
        }
        Ok(Self {
            transport: builder.build(),
            from: settings.from.parse()?,
            timeout,
        })
    }
}

impl EmailSender for SmtpEmail {
    fn send<'a>(&'a self, mail: &'a Mail) -> BoxFuture<'a, Result<(), SendError>> {
        Box::pin(async move {
            let to: Mailbox = mail
                .to
                .as_str()
                .parse()
                .map_err(|e| SendError::Permanent(format!("bad recipient: {e}")))?;
            let mut builder = Message::builder()
                .from(self.from.clone())
                .to(to)
                .subject(&mail.subject)
                .date_now()
                .message_id(None)
                .header(ContentType::TEXT_PLAIN);
            if let Some(url) = &mail.unsubscribe {
                builder = builder
                    .header(ListUnsubscribe(format!("<{url}>")))
                    .header(ListUnsubscribePost);
            }
            let message = builder
                .body(mail.body.clone())
                .map_err(|e| SendError::Permanent(format!("cannot build email: {e}")))?;
            match tokio::time::timeout(self.timeout, self.transport.send(message)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) if e.is_permanent() => Err(SendError::Permanent(format!("smtp: {e}"))),
                Ok(Err(e)) => Err(SendError::Transient(format!("smtp: {e}"))),
                Err(_) => Err(SendError::Transient(format!(
                    "smtp: no answer within {:?}",
                    self.timeout
                ))),
            }
        })
    }
}

/// `List-Unsubscribe: <https://...>` (RFC 2369).
#[derive(Clone)]
struct ListUnsubscribe(String);

impl Header for ListUnsubscribe {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("List-Unsubscribe")
    }

    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Self(s.to_owned()))
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), self.0.clone())
    }
}

/// `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058).
#[derive(Clone)]
struct ListUnsubscribePost;

impl Header for ListUnsubscribePost {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("List-Unsubscribe-Post")
    }

    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Self)
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), "List-Unsubscribe=One-Click".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::config::Secret;

    #[tokio::test]
    async fn a_server_that_does_not_greet_is_a_transient_failure_after_the_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let settings = SmtpSettings {
            host: "127.0.0.1".into(),
            port,
            username: String::new(),
            password: Secret::default(),
            from: "tidings <codes@tidings.test>".into(),
            tls: SmtpTls::None,
        };
        let email = SmtpEmail::with_timeout(&settings, Duration::from_millis(300)).unwrap();
        let mail = Mail {
            to: crate::domain::Email::parse("ann@example.com").unwrap(),
            subject: "subject".into(),
            body: "body".into(),
            unsubscribe: None,
        };
        let started = Instant::now();
        let result = email.send(&mail).await;
        assert!(matches!(result, Err(SendError::Transient(_))), "{result:?}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
