//! The relay: outbox commands in, durable messages and inbox events out. It runs on its own
//! thread, takes whatever commands queued up while the previous batch was being made durable
//! (group commit, no timer), parses and validates them, stores the new messages in one
//! transaction, fsyncs once, and only then publishes the batch's events through its own link
//! to the router. A `message` event is therefore never out before its message is on disk.
//!
//! It is the only writer of messages, so it hands out each conversation's next `seq` from a
//! cache it fills from the store.

use std::collections::HashMap;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use rumqttd::local::LinkTx;
use rumqttd::protocol::{Packet, Publish};
use rumqttd::Notification;
use tokio::sync::mpsc;

use crate::broker::Broker;
use crate::domain::{ClientMsgId, ConversationId, Message, MessageId, UserId};
use crate::limits::{RateLimiter, Rule};
use crate::payloads::{self, Command, CommandError, ErrorCode};
use crate::store::{Store, StoreError};

/// Commands waiting for the relay; a full queue holds the publishing connections back.
const QUEUE: usize = 4096;
/// The most commands in one batch (one transaction, one fsync).
const MAX_BATCH: usize = 1024;
/// Conversations whose last seq is cached; past this the cache starts over from the store.
const MAX_CACHED_SEQS: usize = 100_000;

/// One outbox publish, as the gateway received it from an authenticated user.
#[derive(Debug)]
pub struct Submission {
    pub from: UserId,
    pub payload: Bytes,
}

pub type RelaySender = mpsc::Sender<Submission>;

/// Starts the relay thread. It stops when every [`RelaySender`] is dropped, after finishing
/// what was queued.
pub fn spawn(
    store: Store,
    broker: &Broker,
    sends_per_minute: u32,
) -> anyhow::Result<(RelaySender, JoinHandle<()>)> {
    let (link_tx, mut link_rx) = broker
        .connect_blocking("tidings-relay")
        .map_err(|e| anyhow::anyhow!("opening the relay's link to the broker: {e}"))?;
    // The relay subscribes to nothing; its link must still answer the router's flow control.
    std::thread::Builder::new()
        .name("relay-link".into())
        .spawn(move || loop {
            match link_rx.recv() {
                Ok(Some(Notification::Unschedule)) => {
                    let _ = link_rx.ready();
                }
                Ok(_) => {}
                Err(_) => break,
            }
        })?;
    let (tx, rx) = mpsc::channel(QUEUE);
    let relay = Relay {
        store,
        link: link_tx,
        limiter: RateLimiter::new(),
        sends_per_minute,
        seqs: HashMap::new(),
    };
    let handle = std::thread::Builder::new()
        .name("relay".into())
        .spawn(move || relay.run(rx))?;
    Ok((tx, handle))
}

struct Relay {
    store: Store,
    link: LinkTx,
    limiter: RateLimiter,
    sends_per_minute: u32,
    /// Last seq handed out per conversation.
    seqs: HashMap<ConversationId, u64>,
}

/// What to tell whom once the batch is durable.
enum Reply {
    /// A new message of this batch: to both inboxes.
    Stored(usize),
    /// A retry of a stored message: the original event, to the sender.
    Replay(Message),
    /// A retry of a message new in this batch.
    ReplayFresh(usize),
    /// A read marker moved: tell the peer.
    Read {
        reader: UserId,
        peer: UserId,
        seq: u64,
    },
    Error(UserId, CommandError),
}

impl Relay {
    fn run(mut self, mut rx: mpsc::Receiver<Submission>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = rx.blocking_recv() {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            self.process(&mut batch);
        }
        tracing::debug!("relay stopped");
    }

    fn process(&mut self, batch: &mut Vec<Submission>) {
        if self.seqs.len() >= MAX_CACHED_SEQS {
            // Only between batches: then the store has every seq handed out so far.
            self.seqs.clear();
        }
        let mut fresh: Vec<Message> = Vec::new();
        let mut replies: Vec<Reply> = Vec::with_capacity(batch.len());
        let mut in_batch: HashMap<(UserId, ClientMsgId), usize> = HashMap::new();
        let now_ms = crate::clock::unix_now_ms();

        for Submission { from, payload } in batch.drain(..) {
            let reply = match Command::parse(&payload) {
                Err(error) => Reply::Error(from, error),
                Ok(Command::Send {
                    to,
                    body,
                    client_msg_id,
                }) => {
                    if let Some(&i) = in_batch.get(&(from, client_msg_id.clone())) {
                        replies.push(Reply::ReplayFresh(i));
                        continue;
                    }
                    match self.check_send(&from, &to, &client_msg_id) {
                        Ok(Some(original)) => Reply::Replay(original),
                        Ok(None) => match self.next_seq(&from, &to) {
                            Ok(seq) => {
                                in_batch.insert((from, client_msg_id.clone()), fresh.len());
                                fresh.push(Message {
                                    id: MessageId::random(),
                                    from,
                                    to,
                                    body,
                                    seq,
                                    sent_at_ms: now_ms,
                                    client_msg_id,
                                });
                                Reply::Stored(fresh.len() - 1)
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "relay: reading a conversation's seq");
                                continue;
                            }
                        },
                        Err(Refusal::Command(error)) => Reply::Error(from, error),
                        Err(Refusal::Store(e)) => {
                            tracing::error!(error = %e, "relay: checking a send");
                            continue;
                        }
                    }
                }
                Ok(Command::Read { peer, seq }) => match self.store.mark_read(&from, &peer, seq) {
                    Ok(Some(seq)) => Reply::Read {
                        reader: from,
                        peer,
                        seq,
                    },
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::error!(error = %e, "relay: moving a read marker");
                        continue;
                    }
                },
            };
            replies.push(reply);
        }

        if !fresh.is_empty() {
            if let Err(e) = self.store.append_messages(&fresh) {
                // Nothing of the batch is stored: forget the seqs it took, answer nothing;
                // the senders retry.
                tracing::error!(error = %e, "relay: storing a batch of {} messages", fresh.len());
                for message in &fresh {
                    self.seqs.remove(&message.conversation());
                }
                return;
            }
        }
        if let Err(e) = self.store.durable() {
            // Stored but maybe not on disk: no event may claim otherwise. Retries find the
            // messages by client_msg_id and get their events after a later, good fsync.
            tracing::error!(error = %e, "relay: making a batch durable");
            return;
        }
        self.publish(&fresh, replies);
    }

    /// `Ok(Some)`: a retry of a stored message. `Ok(None)`: a new message that may be sent.
    fn check_send(
        &self,
        from: &UserId,
        to: &UserId,
        client_msg_id: &ClientMsgId,
    ) -> Result<Option<Message>, Refusal> {
        if let Some(original) = self.store.message_by_client_id(from, client_msg_id)? {
            return Ok(Some(original));
        }
        let refuse = |code, message: &str| {
            Refusal::Command(CommandError::new(
                Some(client_msg_id.as_str().to_owned()),
                code,
                message,
            ))
        };
        if to == from {
            return Err(refuse(
                ErrorCode::UnknownRecipient,
                "a conversation needs another user",
            ));
        }
        if self.store.user(to)?.is_none() {
            return Err(refuse(ErrorCode::UnknownRecipient, "no user has that id"));
        }
        let key = format!("send:{from}");
        let rule = Rule {
            key: &key,
            max: self.sends_per_minute,
            window: Duration::from_secs(60),
        };
        if let Err(wait) = self.limiter.try_acquire(&[rule]) {
            return Err(refuse(
                ErrorCode::RateLimited,
                &format!("too many messages; retry in {} s", wait.as_secs() + 1),
            ));
        }
        Ok(None)
    }

    fn next_seq(&mut self, from: &UserId, to: &UserId) -> Result<u64, StoreError> {
        let conversation = ConversationId::of(from, to);
        let last = match self.seqs.get(&conversation) {
            Some(&last) => last,
            None => self.store.last_seq(&conversation)?,
        };
        self.seqs.insert(conversation, last + 1);
        Ok(last + 1)
    }

    /// Hands the batch's events to the router in one go.
    fn publish(&mut self, fresh: &[Message], replies: Vec<Reply>) {
        let mut packets: Vec<Packet> = Vec::with_capacity(replies.len() * 2);
        let mut push = |user: &UserId, payload: Vec<u8>| {
            let topic = crate::topics::inbox(user);
            packets.push(Packet::Publish(
                Publish::new(Bytes::from(topic), Bytes::from(payload), false),
                None,
            ));
        };
        for reply in replies {
            match reply {
                Reply::Stored(i) => {
                    let event = payloads::message_event(&fresh[i]);
                    push(&fresh[i].to, event.clone());
                    push(&fresh[i].from, event);
                }
                Reply::ReplayFresh(i) => push(&fresh[i].from, payloads::message_event(&fresh[i])),
                Reply::Replay(original) => push(&original.from, payloads::message_event(&original)),
                Reply::Read { reader, peer, seq } => {
                    push(&peer, payloads::read_event(&reader, seq))
                }
                Reply::Error(user, error) => push(&user, payloads::error_event(&error)),
            }
        }
        let Some(Packet::Publish(last, _)) = packets.pop() else {
            return;
        };
        self.link.buffer().extend(packets);
        // `publish` queues the last one and wakes the router once for all of them.
        if let Err(e) = self.link.publish(last.topic, last.payload) {
            tracing::error!(error = ?e, "relay: the broker refused events");
        }
    }
}

enum Refusal {
    Command(CommandError),
    Store(StoreError),
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        Refusal::Store(e)
    }
}
