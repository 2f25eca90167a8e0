//! The store: the only code that knows sled. Owns the on-disk layout (trees, keys, bincode
//! values) and durability. Everything else sees typed records and methods that say what they
//! do, so another engine can replace sled without touching the rest.
//!
//! # Layout
//!
//! | tree | key | value |
//! | --- | --- | --- |
//! | `users` | user id (12 bytes) | [`User`] |
//! | `identities` | `p:+1415…` / `e:ann@…` | user id |
//! | `otp` | purpose ‖ `0` ‖ identity key | [`OtpChallenge`] |
//! | `sessions` | session id (16 bytes) | [`Session`] |
//! | `refresh` | SHA-256 of a refresh token | session id |
//! | `chat` | `m` ‖ conversation id (both user ids, sorted) ‖ seq (u64 BE) | [`Message`](crate::domain::Message) |
//! | `chat` | `d` ‖ sender ‖ client_msg_id | the message's key without its `m` |
//! | `chat` | `c` ‖ user ‖ peer | seq and time of the last message |
//! | `chat` | `f` / `w` ‖ … | forwarding jobs and windows (see `forwarding.rs`) |
//! | `read_markers` | reader ‖ peer | last seq read (u64 BE) |
//!
//! Messages, their dedupe entries and the conversations index share one tree (`chat`, told
//! apart by the key's first byte) so that a batch of messages is one atomic
//! [`sled::Tree::apply_batch`]: sled's multi-tree transactions cost several times as much per
//! key (measured in BENCHMARKS.md). Stores made before this layout kept the three in trees of
//! their own; [`Store::open`] moves them over once.
//!
//! # Durability
//!
//! [`Store::durable`] is sled's `flush()`, which returns once what was written before it is on
//! the device: sled 0.34 wrote with `sync_file_range` on Linux and never fsynced (sled issue
//! #1452); the vendored sled `fdatasync`s its file at the end of every flush
//! (`vendor/sled/PATCHES.md`, patch 3, and its test in `tests/sled.rs`).

mod auth;
mod forwarding;
mod health;
mod messages;
mod users;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

pub use auth::{OtpChallenge, Session};
pub use forwarding::{Channel, Channels, Job, JobState, NewJobs, Sent, SentWhat};
pub use health::Probe;
pub use messages::{ConversationSummary, Page};
pub use users::{AttachError, User};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    #[error("storage I/O error at {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("corrupt record in {tree}: {detail}")]
    Corrupt { tree: &'static str, detail: String },
}

impl StoreError {
    /// The store cannot write right now (a full disk, an I/O error): `unavailable`, not a bug.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Sled(sled::Error::Io(_)) | StoreError::Io { .. }
        )
    }
}

/// A cheap handle to the database; clone it freely.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    /// The database directory.
    path: PathBuf,
    health: health::Health,
    users: sled::Tree,
    identities: sled::Tree,
    otp: sled::Tree,
    sessions: sled::Tree,
    refresh: sled::Tree,
    chat: sled::Tree,
    read_markers: sled::Tree,
    /// Who forwards where (users with a channel on only); written under this lock together
    /// with the user's record.
    forwarding: RwLock<HashMap<crate::domain::UserId, Channels>>,
}

impl Store {
    /// Opens (creating if missing) the database in `path`, with a page cache of `cache_bytes`.
    pub fn open(path: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        if !path.exists() {
            // Everyone's messages live here: only the server's user may read them.
            let mut builder = std::fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            builder.create(path).map_err(|source| StoreError::Io {
                path: path.to_owned(),
                source,
            })?;
        }
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .open()?;
        let users = db.open_tree("users")?;
        let forwarding = RwLock::new(Self::load_forwarding_channels(&users)?);
        Ok(Self {
            inner: Arc::new(Inner {
                users,
                forwarding,
                identities: db.open_tree("identities")?,
                otp: db.open_tree("otp")?,
                sessions: db.open_tree("sessions")?,
                refresh: db.open_tree("refresh")?,
                chat: messages::open_chat(&db)?,
                read_markers: db.open_tree("read_markers")?,
                db,
                path: path.to_owned(),
                health: health::Health::default(),
            }),
        })
    }

    /// Makes every write so far durable: sled's flush, which ends in an `fdatasync` of its
    /// file. Blocks; from async code call it through `spawn_blocking` (see
    /// [`Store::durable_async`]).
    pub fn durable(&self) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let flushed = self.inner.db.flush().map(|_| ()).map_err(StoreError::from);
        crate::metrics::METRICS.fsync.observe(started.elapsed());
        self.watch(flushed)
    }

    /// [`Store::durable`] off the async worker threads.
    pub async fn durable_async(&self) -> Result<(), StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.durable())
            .await
            .expect("the durability task does not panic")
    }
}

/// bincode 2, standard config: the one on-disk encoding, kept here so it can be migrated.
fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .expect("in-memory records always encode")
}

fn decode<T: serde::de::DeserializeOwned>(
    tree: &'static str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map(|(value, _)| value)
        .map_err(|e| StoreError::Corrupt {
            tree,
            detail: e.to_string(),
        })
}

/// The big-endian u64 under `key` (0 when there is none).
fn u64_at(tree: &sled::Tree, key: impl AsRef<[u8]>) -> Result<u64, StoreError> {
    Ok(tree
        .get(key)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map_or(0, u64::from_be_bytes))
}

/// A transaction's error as the store's.
fn flatten(e: sled::transaction::TransactionError<StoreError>) -> StoreError {
    match e {
        sled::transaction::TransactionError::Abort(e) => e,
        sled::transaction::TransactionError::Storage(e) => StoreError::Sled(e),
    }
}
