//! Who may connect: at most `mqtt.max_connections` MQTT connections in all and
//! `mqtt.max_connections_per_user` per user, so that no account can take the slots everyone
//! else needs. A connection holds a [`Ticket`] for as long as it lives.
//!
//! A device that reconnects with its own client id while its old connection is still open (a
//! takeover) is admitted past both caps: the old connection is about to leave, so the slot is
//! the same, and refusing it would lock a device out of its own session.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::domain::UserId;
use crate::metrics::METRICS;
use std::sync::atomic::Ordering;

pub(super) struct Admission {
    max_total: usize,
    max_per_user: usize,
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    /// Only users with a connection have an entry.
    per_user: HashMap<UserId, usize>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// `mqtt.max_connections` reached.
    ServerFull,
    /// `mqtt.max_connections_per_user` reached for this user.
    UserFull,
}

/// One admitted connection; its slot is free again when this is dropped.
pub(super) struct Ticket {
    admission: Arc<Admission>,
    user: UserId,
}

impl Admission {
    pub(super) fn new(max_total: usize, max_per_user: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_user,
            counts: Mutex::default(),
        })
    }

    /// A slot for a new connection of `user`; `takeover` when it replaces an open connection
    /// with the same client id.
    pub(super) fn admit(self: &Arc<Self>, user: UserId, takeover: bool) -> Result<Ticket, Refusal> {
        let mut counts = self
            .counts
            .lock()
            .expect("admission lock is never poisoned");
        let mine = counts.per_user.get(&user).copied().unwrap_or(0);
        if !takeover {
            if counts.total >= self.max_total {
                return Err(Refusal::ServerFull);
            }
            if mine >= self.max_per_user {
                return Err(Refusal::UserFull);
            }
        }
        counts.total += 1;
        counts.per_user.insert(user, mine + 1);
        METRICS.mqtt_connections.fetch_add(1, Ordering::Relaxed);
        Ok(Ticket {
            admission: self.clone(),
            user,
        })
    }

    /// Open connections in all.
    pub(super) fn total(&self) -> usize {
        self.counts
            .lock()
            .expect("admission lock is never poisoned")
            .total
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut counts = self
            .admission
            .counts
            .lock()
            .expect("admission lock is never poisoned");
        counts.total -= 1;
        METRICS.mqtt_connections.fetch_sub(1, Ordering::Relaxed);
        if let Some(mine) = counts.per_user.get_mut(&self.user) {
            *mine -= 1;
            if *mine == 0 {
                counts.per_user.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_user_and_in_all() {
        let admission = Admission::new(3, 2);
        let (ann, bob, cid) = (UserId::random(), UserId::random(), UserId::random());
        let a1 = admission.admit(ann, false).unwrap();
        let _a2 = admission.admit(ann, false).unwrap();
        assert_eq!(admission.admit(ann, false).err(), Some(Refusal::UserFull));
        let _b1 = admission.admit(bob, false).unwrap();
        assert_eq!(admission.admit(cid, false).err(), Some(Refusal::ServerFull));
        // A takeover gets in past both caps.
        let takeover = admission.admit(ann, true).unwrap();
        assert_eq!(admission.total(), 4);
        drop(takeover);
        drop(a1);
        let _c1 = admission.admit(cid, false).unwrap();
        assert_eq!(admission.total(), 3);
    }

    #[test]
    fn slots_are_given_back() {
        let admission = Admission::new(1, 1);
        let user = UserId::random();
        for _ in 0..3 {
            let ticket = admission.admit(user, false).unwrap();
            drop(ticket);
        }
        assert_eq!(admission.total(), 0);
        assert!(admission.counts.lock().unwrap().per_user.is_empty());
    }
}
