//! Kept sessions: what the router keeps for a device that connected with
//! `clean_session = false` (5.0: a Session Expiry Interval) and went away (its subscription and
//! the QoS 1 events it missed). Each has a deadline (`mqtt.session_expiry_secs`, or a 5.0
//! client's shorter interval) and a user keeps at most
//! `mqtt.max_connections_per_user` of them, the oldest going first: otherwise a client making
//! up fresh client ids could make the router keep sessions without end.
//!
//! A session is discarded the way a device would: a clean connection with its client id,
//! which makes the router drop it, and straight away a disconnect. Never while a device is
//! connected with that id.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::link::RouterLink;
use super::Shared;
use crate::domain::UserId;

pub(super) struct KeptSessions {
    expiry: Duration,
    per_user: usize,
    /// Per user, oldest first.
    sessions: Mutex<HashMap<UserId, VecDeque<Kept>>>,
}

struct Kept {
    router_id: String,
    until: Instant,
}

impl KeptSessions {
    pub(super) fn new(expiry: Duration, per_user: usize) -> Self {
        Self {
            expiry,
            per_user,
            sessions: Mutex::default(),
        }
    }

    /// The longest a session is kept (`mqtt.session_expiry_secs`).
    pub(super) fn longest(&self) -> Duration {
        self.expiry
    }

    /// The router keeps `router_id`'s session from now, for `keep_for` (at most
    /// [`KeptSessions::longest`]); returns the one to discard if the user now has too many.
    fn add(&self, user: UserId, router_id: &str, keep_for: Duration) -> Option<String> {
        let mut sessions = self.lock();
        let mine = sessions.entry(user).or_default();
        mine.retain(|k| k.router_id != router_id);
        mine.push_back(Kept {
            router_id: router_id.to_owned(),
            until: Instant::now() + keep_for.min(self.expiry),
        });
        (mine.len() > self.per_user)
            .then(|| mine.pop_front().map(|k| k.router_id))
            .flatten()
    }

    /// A device connected with `router_id`: its session is no longer waiting.
    pub(super) fn resumed(&self, user: &UserId, router_id: &str) {
        let mut sessions = self.lock();
        if let Some(mine) = sessions.get_mut(user) {
            mine.retain(|k| k.router_id != router_id);
            if mine.is_empty() {
                sessions.remove(user);
            }
        }
    }

    /// Takes the sessions past their deadline.
    fn expired(&self, now: Instant) -> Vec<String> {
        let mut expired = Vec::new();
        self.lock().retain(|_, mine| {
            // Deadlines differ per session (5.0), so not only the oldest may be due.
            mine.retain(|k| {
                let due = k.until <= now;
                if due {
                    expired.push(k.router_id.clone());
                }
                !due
            });
            !mine.is_empty()
        });
        expired
    }

    /// Sessions waiting, in all.
    pub(super) fn len(&self) -> usize {
        self.lock().values().map(VecDeque::len).sum()
    }

    /// How often to look for expired sessions: a 5.0 client may ask for a few seconds.
    pub(super) fn check_interval(&self) -> Duration {
        (self.expiry / 4).clamp(Duration::from_millis(100), Duration::from_secs(5))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, VecDeque<Kept>>> {
        self.sessions
            .lock()
            .expect("kept sessions lock is never poisoned")
    }
}

/// Notes that the router keeps `router_id`'s session for `keep_for`, discarding the user's
/// oldest if that makes one too many.
pub(super) fn keep(shared: &Arc<Shared>, user: UserId, router_id: &str, keep_for: Duration) {
    if let Some(oldest) = shared.kept.add(user, router_id, keep_for) {
        let shared = shared.clone();
        tokio::spawn(async move { discard(&shared, oldest).await });
    }
}

/// Discards every session past its deadline.
pub(super) async fn discard_expired(shared: &Arc<Shared>) {
    for router_id in shared.kept.expired(Instant::now()) {
        discard(shared, router_id).await;
    }
}

/// Makes the router drop the session it kept for `router_id` at once (a 5.0 session resumed
/// with a Session Expiry Interval of 0 is not kept once its connection ends), unless a device
/// is connected with it by then.
pub(super) fn forget(shared: &Arc<Shared>, router_id: String) {
    let shared = shared.clone();
    tokio::spawn(async move { discard(&shared, router_id).await });
}

/// Makes the router drop `router_id`'s kept session, unless a device is connected with it.
async fn discard(shared: &Shared, router_id: String) {
    let Some(claim) = shared.takeovers.try_claim(&router_id) else {
        return;
    };
    if let Err(e) = drop_session(shared, router_id).await {
        tracing::warn!(error = %e, "discarding a kept MQTT session");
    }
    drop(claim);
}

/// Makes the router drop `router_id`'s session, the way a device would: a clean connection
/// with its client id, and straight away a disconnect. The caller holds the id's claim.
pub(super) async fn drop_session(
    shared: &Shared,
    router_id: String,
) -> Result<(), crate::broker::LinkRefused> {
    let link = shared.broker.connect(router_id, true).await?;
    RouterLink::new(link).leave();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_keeps_at_most_so_many_the_oldest_going_first() {
        let kept = KeptSessions::new(Duration::from_secs(60), 2);
        let user = UserId::random();
        let hour = Duration::from_secs(3600);
        assert_eq!(kept.add(user, "a", hour), None);
        assert_eq!(kept.add(user, "b", hour), None);
        assert_eq!(
            kept.add(user, "a", hour),
            None,
            "the same id again is one session"
        );
        assert_eq!(kept.add(user, "c", hour), Some("b".to_owned()));
        assert_eq!(kept.add(UserId::random(), "d", hour), None);
        assert_eq!(kept.len(), 3);
        kept.resumed(&user, "a");
        kept.resumed(&user, "c");
        assert_eq!(kept.len(), 1);
        assert!(!kept.lock().contains_key(&user));
    }

    #[test]
    fn sessions_expire() {
        let kept = KeptSessions::new(Duration::from_secs(60), 10);
        let user = UserId::random();
        kept.add(user, "a", Duration::from_secs(3600));
        kept.add(user, "b", Duration::from_secs(5));
        assert!(kept.expired(Instant::now()).is_empty());
        let soon = Instant::now() + Duration::from_secs(6);
        assert_eq!(
            kept.expired(soon),
            vec!["b".to_owned()],
            "a shorter 5.0 interval is due first, behind an older session"
        );
        let later = Instant::now() + Duration::from_secs(61);
        assert_eq!(
            kept.expired(later),
            vec!["a".to_owned()],
            "cut to the longest"
        );
        assert_eq!(kept.len(), 0);
    }
}
