//! Presence: which users have a connection subscribed to their inbox, and which `message`
//! events a device of the recipient acknowledged with PUBACK. It is what forwarding by SMS and
//! email asks before it sends: "is this user online?" and "did a device of theirs get message
//! M?" ([`Presence`] is a cheap handle; clone it).
//!
//! Acknowledgements are recorded only for messages someone asked about with
//! [`Presence::watch`], which must happen before the event is published, and only until the
//! watch's deadline or [`Presence::forget`]: presence holds what forwarding still needs, never a
//! record of every delivery. Past [`MAX_WATCHED_PER_USER`] pending watches, a user's further
//! messages are not watched, so they count as not acknowledged: forwarding errs towards sending.
//!
//! The gateway side: a connection holds a [`Subscribed`] guard while it is subscribed to its
//! inbox, and a [`Deliveries`] list that maps the packet ids of the `message` events it
//! forwarded to their message ids, so a PUBACK can be told apart.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::domain::{MessageId, UserId};
use crate::payloads;

/// Pending watches per user; past it, new messages of that user are not watched.
pub const MAX_WATCHED_PER_USER: usize = 10_000;
/// Locks, so that connections of different users rarely wait on each other.
const SHARDS: usize = 64;
/// Deliveries a connection remembers awaiting PUBACK; the router has at most 100 in flight.
const MAX_DELIVERIES: usize = 128;

#[derive(Clone)]
pub struct Presence {
    inner: Arc<Inner>,
}

struct Inner {
    hasher: RandomState,
    shards: Vec<Mutex<HashMap<UserId, Entry>>>,
}

/// One user; removed once it has no subscribed connection and no watch.
#[derive(Default)]
struct Entry {
    subscribed: u32,
    watched: HashMap<MessageId, Watch>,
}

struct Watch {
    acknowledged: bool,
    until: Instant,
}

impl Entry {
    fn is_empty(&self) -> bool {
        self.subscribed == 0 && self.watched.is_empty()
    }
}

impl Default for Presence {
    fn default() -> Self {
        Self {
            inner: Arc::new(Inner {
                hasher: RandomState::new(),
                shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            }),
        }
    }
}

impl Presence {
    /// Whether a connection of `user` is subscribed to its inbox now.
    pub fn is_subscribed(&self, user: &UserId) -> bool {
        self.shard(user)
            .get(user)
            .is_some_and(|entry| entry.subscribed > 0)
    }

    /// Starts recording whether a device of `user` acknowledges `message`, for `window` (or
    /// until [`Presence::forget`]). Call it before the event is published.
    pub fn watch(&self, user: &UserId, message: MessageId, window: Duration) {
        let mut shard = self.shard(user);
        let entry = shard.entry(*user).or_default();
        if entry.watched.len() < MAX_WATCHED_PER_USER {
            let until = Instant::now() + window;
            entry.watched.insert(
                message,
                Watch {
                    acknowledged: false,
                    until,
                },
            );
        }
    }

    /// Whether a device of `user` acknowledged `message` since it was watched.
    pub fn acknowledged(&self, user: &UserId, message: &MessageId) -> bool {
        self.shard(user)
            .get(user)
            .and_then(|entry| entry.watched.get(message))
            .is_some_and(|watch| watch.acknowledged)
    }

    /// Stops watching `message`.
    pub fn forget(&self, user: &UserId, message: &MessageId) {
        let mut shard = self.shard(user);
        if let Some(entry) = shard.get_mut(user) {
            entry.watched.remove(message);
            if entry.is_empty() {
                shard.remove(user);
            }
        }
    }

    /// Drops watches past their deadline (the gateway calls it now and then).
    pub fn sweep(&self) {
        let now = Instant::now();
        for shard in &self.inner.shards {
            let mut shard = shard.lock().expect("presence lock is never poisoned");
            shard.retain(|_, entry| {
                entry.watched.retain(|_, watch| watch.until > now);
                !entry.is_empty()
            });
        }
    }

    /// Marks `user` subscribed until the guard is dropped.
    pub(super) fn subscribe(&self, user: UserId) -> Subscribed {
        self.shard(&user).entry(user).or_default().subscribed += 1;
        Subscribed {
            presence: self.clone(),
            user,
        }
    }

    /// A device of `user` acknowledged `message`.
    pub(super) fn acknowledge(&self, user: &UserId, message: &MessageId) {
        let mut shard = self.shard(user);
        if let Some(watch) = shard
            .get_mut(user)
            .and_then(|entry| entry.watched.get_mut(message))
        {
            watch.acknowledged = true;
        }
    }

    fn shard(&self, user: &UserId) -> MutexGuard<'_, HashMap<UserId, Entry>> {
        let index = self.inner.hasher.hash_one(user) as usize % SHARDS;
        self.inner.shards[index]
            .lock()
            .expect("presence lock is never poisoned")
    }
}

/// A connection subscribed to its user's inbox.
pub(super) struct Subscribed {
    presence: Presence,
    user: UserId,
}

impl Drop for Subscribed {
    fn drop(&mut self) {
        let mut shard = self.presence.shard(&self.user);
        if let Some(entry) = shard.get_mut(&self.user) {
            entry.subscribed -= 1;
            if entry.is_empty() {
                shard.remove(&self.user);
            }
        }
    }
}

/// The `message` events to its own user that one connection forwarded and the device has not
/// acknowledged yet, by packet id.
#[derive(Default)]
pub(super) struct Deliveries {
    pending: VecDeque<(u16, MessageId)>,
}

impl Deliveries {
    /// Notes a publish forwarded to `user` with packet id `pkid`, if it is a `message` event
    /// addressed to `user` (not the copy of their own message a sender's devices get).
    pub(super) fn sent(&mut self, user: &UserId, pkid: u16, payload: &[u8]) {
        if pkid == 0 {
            return;
        }
        if let Some((message, to)) = payloads::message_event_head(payload) {
            if to == *user {
                if self.pending.len() == MAX_DELIVERIES {
                    self.pending.pop_front();
                }
                self.pending.push_back((pkid, message));
            }
        }
    }

    /// The message a PUBACK with `pkid` acknowledges, if it was one. Acks come in order, so
    /// this is nearly always the first entry.
    pub(super) fn acknowledged(&mut self, pkid: u16) -> Option<MessageId> {
        let at = self.pending.iter().position(|(p, _)| *p == pkid)?;
        self.pending.remove(at).map(|(_, message)| message)
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Body, ClientMsgId, Message};

    fn event(from: UserId, to: UserId) -> (MessageId, Vec<u8>) {
        let message = Message {
            id: MessageId::random(),
            from,
            to,
            body: Body::parse("hi".into()).unwrap(),
            seq: 1,
            sent_at_ms: 0,
            client_msg_id: ClientMsgId::parse("c-1".into()).unwrap(),
        };
        (message.id.clone(), payloads::message_event(&message))
    }

    /// No entry is left for any user.
    fn holds_nothing(presence: &Presence) -> bool {
        presence
            .inner
            .shards
            .iter()
            .all(|s| s.lock().unwrap().is_empty())
    }

    #[test]
    fn subscribed_while_a_guard_lives() {
        let presence = Presence::default();
        let user = UserId::random();
        assert!(!presence.is_subscribed(&user));
        let phone = presence.subscribe(user);
        let laptop = presence.subscribe(user);
        drop(phone);
        assert!(presence.is_subscribed(&user));
        drop(laptop);
        assert!(!presence.is_subscribed(&user));
        assert!(holds_nothing(&presence));
    }

    #[test]
    fn acknowledgements_of_watched_messages_only() {
        let presence = Presence::default();
        let (ann, bob) = (UserId::random(), UserId::random());
        let (watched, to_bob) = event(ann, bob);
        let (unwatched, other) = event(ann, bob);
        presence.watch(&bob, watched.clone(), Duration::from_secs(60));

        let mut deliveries = Deliveries::default();
        deliveries.sent(&bob, 7, &to_bob);
        deliveries.sent(&bob, 8, &other);
        // Ann's own copy, on her connection: not a delivery to Bob.
        let mut anns = Deliveries::default();
        anns.sent(&ann, 3, &to_bob);
        assert!(anns.is_empty());

        assert!(!presence.acknowledged(&bob, &watched));
        let acked = deliveries.acknowledged(7).unwrap();
        presence.acknowledge(&bob, &acked);
        assert!(presence.acknowledged(&bob, &watched));
        presence.acknowledge(&bob, &deliveries.acknowledged(8).unwrap());
        assert!(!presence.acknowledged(&bob, &unwatched));
        assert!(!presence.acknowledged(&ann, &watched));

        presence.forget(&bob, &watched);
        assert!(!presence.acknowledged(&bob, &watched));
        assert!(holds_nothing(&presence));
    }

    #[test]
    fn watches_expire_and_are_bounded() {
        let presence = Presence::default();
        let user = UserId::random();
        presence.watch(&user, MessageId::random(), Duration::ZERO);
        presence.sweep();
        assert!(holds_nothing(&presence));
        for _ in 0..MAX_WATCHED_PER_USER + 10 {
            presence.watch(&user, MessageId::random(), Duration::from_secs(60));
        }
        let late = MessageId::random();
        presence.watch(&user, late.clone(), Duration::from_secs(60));
        let mut deliveries = Deliveries::default();
        deliveries.sent(&user, 1, b"{\"type\":\"read\"}");
        assert!(deliveries.is_empty());
        presence.acknowledge(&user, &late);
        assert!(
            !presence.acknowledged(&user, &late),
            "past the cap: not watched"
        );
        assert_eq!(
            presence.shard(&user).get(&user).unwrap().watched.len(),
            MAX_WATCHED_PER_USER
        );
    }
}
