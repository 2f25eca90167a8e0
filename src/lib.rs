//! tidings: a backend for private 1:1 chat apps. Users log in with a one-time code sent by SMS
//! or email, then send and receive messages over MQTT; history is kept in sled.
//!
//! # Layout
//!
//! - [`config`]: typed settings from `broker.toml` and `TIDINGS_*` environment variables.
//! - [`startup`]: `Application`, which binds everything, runs, and shuts down in order.
//! - [`shutdown`]: the shutdown trigger, its listeners, and the one drain timeout.
//! - [`clock`]: Unix seconds and milliseconds, and the instant of a wall-clock deadline.
//! - [`topics`]: the MQTT topic scheme, `users/{id}/inbox` and `users/{id}/outbox`.
//! - [`domain`]: `PhoneNumber`, `Email`, `UserId`, `Identity`, `SessionId`, `Message`,
//!   `ConversationId`: inputs parsed once, trusted after.
//! - [`auth`]: one-time codes, access tokens (JWT), sessions and refresh rotation.
//! - [`store`]: the only code that knows sled; durability (flush + fdatasync).
//! - [`api`]: the HTTP API (axum), its error mapping and extractors.
//! - [`gateway`]: the MQTT front door: CONNECT auth, topic ACL, connection caps, presence, one
//!   router link per connection.
//! - [`broker`]: the embedded rumqttd router (QoS 1 delivery, sessions, fan-out), patched in
//!   `vendor/rumqttd` (see its `PATCHES.md`).
//! - [`relay`]: outbox commands → validate → store → fsync → inbox events (group commit).
//! - [`payloads`]: the JSON of outbox commands and inbox events.
//! - [`notify`]: SMS and email providers (`console`, `twilio`, `smtp`).
//! - [`forward`]: forwarding by SMS and email of messages no device received in time (jobs
//!   written by the relay with the message; folding, caps, retries, exactly once).
//! - [`limits`]: in-memory sliding-window rate limits.
//!
//! The external contract (HTTP, MQTT, config) is documented in `README.md` and `topics.md`.

pub mod api;
pub mod auth;
pub mod broker;
pub mod clock;
pub mod config;
pub mod domain;
pub mod forward;
pub mod gateway;
pub mod limits;
pub mod metrics;
pub mod notify;
pub mod payloads;
pub mod relay;
pub mod shutdown;
pub mod startup;
pub mod store;
pub mod tls;
pub mod topics;
