//! Typed settings: the embedded defaults (`broker.toml`), overlaid by the config file, overlaid
//! by `TIDINGS_*` environment variables. Owns every config key of the contract and the checks
//! that turn a bad value into one line naming the key, before anything is bound or opened.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The defaults, kept in one place: the `broker.toml` at the repository root.
pub const DEFAULTS: &str = include_str!("../broker.toml");

/// Environment variables `TIDINGS_SECTION__KEY` override file keys (`section.key`).
pub const ENV_PREFIX: &str = "TIDINGS";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub http: HttpSettings,
    pub mqtt: MqttSettings,
    pub storage: StorageSettings,
    pub auth: AuthSettings,
    pub sms: SmsSettings,
    pub email: EmailSettings,
    pub forwarding: ForwardingSettings,
    pub limits: LimitSettings,
    pub log: LogSettings,
    #[serde(default)]
    pub tls: TlsSettings,
}

/// The certificate of every `*tls_listen` and `wss_listen`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM: the certificate chain, leaf first.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// PEM: the private key (PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// `text` (one readable line per event) or `json` (one JSON object per line).
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// `host:port`; port 0 picks a free port (tests), the bound one is logged.
    pub listen: String,
    /// How users reach the HTTP API from outside (the unsubscribe links of forwarded emails);
    /// when absent, `http://` and the bound HTTP address.
    #[serde(default)]
    pub public_url: Option<String>,
    /// HTTPS; off while absent.
    #[serde(default)]
    pub tls_listen: Option<String>,
    /// HTTP connections at once; past it, `503` and the connection closes.
    pub max_connections: usize,
    /// The head of a request must arrive within this, counted from when the server waits for
    /// it (so also how long a kept-alive connection may sit idle between requests).
    pub header_timeout_secs: u64,
    /// A request's body must arrive within this; else `408`.
    pub body_timeout_secs: u64,
    /// A connection on which no byte moves either way for this long is closed.
    pub idle_timeout_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSettings {
    pub listen: String,
    /// MQTT over WebSocket; off while absent.
    #[serde(default)]
    pub ws_listen: Option<String>,
    /// MQTT over TLS; off while absent.
    #[serde(default)]
    pub tls_listen: Option<String>,
    /// MQTT over secure WebSocket (path `/mqtt`); off while absent.
    #[serde(default)]
    pub wss_listen: Option<String>,
    /// Bytes of events the broker keeps per inbox for devices that are away or behind.
    pub inbox_buffer_bytes: usize,
    /// MQTT connections of all users together; past it, CONNACK "server unavailable".
    pub max_connections: usize,
    /// MQTT connections of one user (one per device); past it, CONNACK "server unavailable",
    /// and no more kept sessions than this either.
    pub max_connections_per_user: usize,
    /// How long a `clean_session = false` session is kept for a device that went away.
    pub session_expiry_secs: u64,
    /// Sockets that have not finished CONNECT (or the WebSocket upgrade) yet; past it a new
    /// one gets CONNACK "server unavailable" at once.
    pub max_pending_connects: usize,
    /// CONNECT (after the WebSocket upgrade, if any) must arrive within this.
    pub connect_timeout_secs: u64,
    /// Once a packet has started, the rest of it must arrive within this.
    pub packet_timeout_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSettings {
    pub path: PathBuf,
    /// The store's page cache in memory (sled's `cache_capacity`); the rest stays on disk.
    pub cache_bytes: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// When absent, generated once and kept in the storage directory.
    #[serde(default)]
    pub jwt_secret: Option<Secret>,
    pub access_ttl_secs: u64,
    pub refresh_ttl_secs: u64,
    pub otp_ttl_secs: u64,
    pub otp_max_attempts: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmsSettings {
    pub provider: SmsProvider,
    pub twilio: TwilioSettings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmsProvider {
    Console,
    Twilio,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TwilioSettings {
    pub base_url: String,
    pub account_sid: String,
    pub auth_token: Secret,
    pub from: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailSettings {
    pub provider: EmailProvider,
    pub smtp: SmtpSettings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmailProvider {
    Console,
    Smtp,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub username: String,
    pub password: Secret,
    pub from: String,
    pub tls: SmtpTls,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    None,
    Starttls,
    Tls,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardingSettings {
    /// How long a message may stay undelivered before it is forwarded.
    pub delay_secs: u64,
    /// At most one SMS per sender and recipient in this window; later ones fold into one.
    pub sms_min_interval_secs: u64,
    /// At most one email (a digest) per recipient in this window.
    pub email_min_interval_secs: u64,
    /// SMS per recipient per (UTC) day; 0: no cap.
    pub sms_per_recipient_per_day: u32,
}

/// Abuse limits; 0 switches one off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    pub otp_resend_secs: u64,
    pub otp_per_identity_per_hour: u32,
    pub otp_per_ip_per_hour: u32,
    /// Wrong codes per phone or email per UTC day, across all its codes; past it, that
    /// identity gets `429` (for codes and for verifying) until the day is over.
    pub otp_failures_per_identity_per_day: u32,
    pub sends_per_user_per_minute: u32,
    /// `GET /v1/users/lookup` per user per minute.
    pub lookups_per_user_per_minute: u32,
}

/// A string that never shows up in `Debug` output or logs.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; call only where it is used, never to log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "[redacted]"
        })
    }
}

/// A configuration that cannot be used. `Display` is one line naming the key or the file.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl Settings {
    /// Defaults, then `path` if it exists, then the process environment.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with_env(path, std::env::vars())
    }

    /// As [`Settings::load`], with the environment given (tests pass their own).
    pub fn load_with_env(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
        if path.exists() {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError(format!("cannot read config file {}: {e}", path.display()))
            })?;
            // Parse it ourselves first, so the error names the file and the line.
            if let Err(e) = text.parse::<toml::Table>() {
                return Err(ConfigError(format!(
                    "config file {} is not valid TOML: {}",
                    path.display(),
                    one_line(&e.to_string())
                )));
            }
            builder = builder.add_source(config::File::from_str(&text, config::FileFormat::Toml));
        }
        let env: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}_")))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("_")
                .separator("__")
                .source(Some(env)),
        );
        let settings: Settings = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError(format!("bad configuration: {}", one_line(&e.to_string()))))?;
        settings.check()?;
        Ok(settings)
    }

    /// The checks serde cannot express; each error names its key.
    fn check(&self) -> Result<(), ConfigError> {
        let bad =
            |key: &str, why: String| Err(ConfigError(format!("bad configuration: {key}: {why}")));
        if self.mqtt.inbox_buffer_bytes < 4096 {
            return bad("mqtt.inbox_buffer_bytes", "must be at least 4096".into());
        }
        if self.storage.cache_bytes < 1024 * 1024 {
            return bad(
                "storage.cache_bytes",
                "must be at least 1048576 (1 MiB)".into(),
            );
        }
        for (key, value) in [
            ("http.max_connections", self.http.max_connections as u64),
            ("http.header_timeout_secs", self.http.header_timeout_secs),
            ("http.body_timeout_secs", self.http.body_timeout_secs),
            ("http.idle_timeout_secs", self.http.idle_timeout_secs),
            ("mqtt.max_connections", self.mqtt.max_connections as u64),
            (
                "mqtt.max_pending_connects",
                self.mqtt.max_pending_connects as u64,
            ),
            ("mqtt.connect_timeout_secs", self.mqtt.connect_timeout_secs),
            ("mqtt.packet_timeout_secs", self.mqtt.packet_timeout_secs),
        ] {
            if value == 0 {
                return bad(key, "must be at least 1".into());
            }
        }
        if self.mqtt.max_connections_per_user == 0 {
            return bad("mqtt.max_connections_per_user", "must be at least 1".into());
        }
        if self.auth.access_ttl_secs == 0 {
            return bad("auth.access_ttl_secs", "must be at least 1".into());
        }
        if self.auth.refresh_ttl_secs == 0 {
            return bad("auth.refresh_ttl_secs", "must be at least 1".into());
        }
        if self.auth.otp_ttl_secs == 0 {
            return bad("auth.otp_ttl_secs", "must be at least 1".into());
        }
        if self.auth.otp_max_attempts == 0 {
            return bad("auth.otp_max_attempts", "must be at least 1".into());
        }
        let tls_used = [
            &self.http.tls_listen,
            &self.mqtt.tls_listen,
            &self.mqtt.wss_listen,
        ]
        .iter()
        .any(|listen| listen.is_some());
        if tls_used {
            if self.tls.cert.is_none() {
                return bad(
                    "tls.cert",
                    "must be set when http.tls_listen, mqtt.tls_listen or mqtt.wss_listen is"
                        .into(),
                );
            }
            if self.tls.key.is_none() {
                return bad(
                    "tls.key",
                    "must be set when http.tls_listen, mqtt.tls_listen or mqtt.wss_listen is"
                        .into(),
                );
            }
        }
        if let Some(secret) = &self.auth.jwt_secret {
            if secret.expose().len() < 32 {
                return bad("auth.jwt_secret", "must be at least 32 characters".into());
            }
        }
        if self.sms.provider == SmsProvider::Twilio {
            let t = &self.sms.twilio;
            for (key, value) in [
                ("sms.twilio.base_url", t.base_url.as_str()),
                ("sms.twilio.account_sid", t.account_sid.as_str()),
                ("sms.twilio.auth_token", t.auth_token.expose()),
                ("sms.twilio.from", t.from.as_str()),
            ] {
                if value.is_empty() {
                    return bad(key, "must be set when sms.provider = \"twilio\"".into());
                }
            }
            if !(t.base_url.starts_with("http://") || t.base_url.starts_with("https://")) {
                return bad(
                    "sms.twilio.base_url",
                    format!("{:?} is not an http(s) URL", t.base_url),
                );
            }
        }
        if let Err(e) = self.email.smtp.from.parse::<lettre::message::Mailbox>() {
            return bad(
                "email.smtp.from",
                format!("{:?} is not a mailbox: {e}", self.email.smtp.from),
            );
        }
        if let Some(url) = &self.http.public_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return bad("http.public_url", format!("{url:?} is not an http(s) URL"));
            }
        }
        if self.email.provider == EmailProvider::Smtp && self.email.smtp.host.is_empty() {
            return bad(
                "email.smtp.host",
                "must be set when email.provider = \"smtp\"".into(),
            );
        }
        Ok(())
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl<'de> Deserialize<'de> for SmsProvider {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = String::deserialize(deserializer)?;
        match value.as_str() {
            "console" => Ok(Self::Console),
            "twilio" => Ok(Self::Twilio),
            other => Err(serde::de::Error::custom(format!(
                "unknown value {other:?}, expected one of \"console\", \"twilio\""
            ))),
        }
    }
}

impl<'de> Deserialize<'de> for EmailProvider {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = String::deserialize(deserializer)?;
        match value.as_str() {
            "console" => Ok(Self::Console),
            "smtp" => Ok(Self::Smtp),
            other => Err(serde::de::Error::custom(format!(
                "unknown value {other:?}, expected one of \"console\", \"smtp\""
            ))),
        }
    }
}

impl<'de> Deserialize<'de> for SmtpTls {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = String::deserialize(deserializer)?;
        match value.as_str() {
            "none" => Ok(Self::None),
            "starttls" => Ok(Self::Starttls),
            "tls" => Ok(Self::Tls),
            other => Err(serde::de::Error::custom(format!(
                "unknown value {other:?}, expected one of \"none\", \"starttls\", \"tls\""
            ))),
        }
    }
}
