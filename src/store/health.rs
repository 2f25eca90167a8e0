//! Whether the store can write, said in the open (contract v1.1: `/healthz`, `unavailable`).
//!
//! A write or a flush that fails (a full disk, an I/O error) marks the store faulted. While it
//! is, the relay answers every command `unavailable` without touching the store, `/healthz` and
//! history answer `503`, and the log says so once per [`SAY_EVERY`] with how often it happened
//! in between, not once per message.
//!
//! sled does not recover in-process: its first failed write sets an error that every later
//! write returns, until the database is opened again (`Config::global_error`). So
//! [`Store::probe`] asks the disk itself (a small file written and `fdatasync`ed beside the
//! database) whether the fault has cleared, and then sled whether it can write again. A fault
//! that cleared under a store that cannot write again is for the process to end (see
//! `startup`): a restart opens the store from what is durable, which is exactly what was
//! acknowledged.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::{Store, StoreError};
use crate::limits::Sometimes;
use crate::metrics::METRICS;

/// How often a lasting fault is said in the log.
const SAY_EVERY: Duration = Duration::from_secs(10);

pub(super) struct Health {
    faulted: AtomicBool,
    said: Sometimes,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            faulted: AtomicBool::new(false),
            said: Sometimes::new(SAY_EVERY),
        }
    }
}

/// What [`Store::probe`] found.
#[derive(Debug)]
pub enum Probe {
    /// Nothing was wrong, or the store writes again.
    Healthy,
    /// The disk still refuses writes.
    StillFailing(std::io::Error),
    /// The disk takes writes again, but the store does not: only reopening it helps.
    StoreStuck(StoreError),
}

impl Store {
    /// `false` from a failed write until [`Store::probe`] finds the store writing again.
    pub fn healthy(&self) -> bool {
        !self.inner.health.faulted.load(Ordering::Acquire)
    }

    /// Passes `result` through; a failed write marks the store faulted (and says so, once per
    /// [`SAY_EVERY`]).
    pub(super) fn watch<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(error) = &result {
            let health = &self.inner.health;
            let first = !health.faulted.swap(true, Ordering::AcqRel);
            METRICS.store_faulted.store(1, Ordering::Relaxed);
            if let Some(held) = health.said.ready() {
                tracing::error!(
                    %error,
                    failures_since_last_said = held,
                    "storage: cannot write; sends get `unavailable` and /healthz 503 until it can"
                );
            } else if first {
                tracing::error!(%error, "storage: cannot write");
            }
        }
        result
    }

    /// While faulted: has the fault cleared? First the disk (a small file beside the
    /// database, written and `fdatasync`ed), then the store (a write and a flush).
    pub fn probe(&self) -> Probe {
        if self.healthy() {
            return Probe::Healthy;
        }
        if let Err(e) = self.probe_disk() {
            if let Some(held) = self.inner.health.said.ready() {
                tracing::error!(error = %e, failures_since_last_said = held, "storage: the disk still refuses writes");
            }
            return Probe::StillFailing(e);
        }
        let written = self
            .inner
            .db
            .insert("probe", &crate::clock::unix_now_ms().to_be_bytes()[..])
            .map_err(StoreError::from)
            .and_then(|_| self.inner.db.flush().map_err(StoreError::from));
        match written {
            Ok(_) => {
                self.inner.health.faulted.store(false, Ordering::Release);
                METRICS.store_faulted.store(0, Ordering::Relaxed);
                tracing::info!("storage: writing again");
                Probe::Healthy
            }
            Err(e) => Probe::StoreStuck(e),
        }
    }

    fn probe_disk(&self) -> std::io::Result<()> {
        let path = self.inner.path.join("probe");
        let mut file = std::fs::File::create(&path)?;
        file.write_all(&[0; 64 * 1024])?;
        file.sync_data()?;
        drop(file);
        std::fs::remove_file(&path)
    }
}
