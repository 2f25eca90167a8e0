//! The relay: outbox commands in, durable messages and inbox events out. It runs on its own
//! thread and is the only writer of messages. Connections parse and rate-limit commands before
//! they queue them (so that work spreads over every core), queue all the commands of one read
//! at once (so that the queue's room is shared fairly among connections), and hold at most a
//! few hundred in the relay at once (a place per command, given back when its batch is done).
//! The relay takes whatever queued up while the previous batch was being made durable (group
//! commit, no timer), and for each batch:
//!
//! 1. **admits** each command ([`policy`]: recipient known, not a retry of a stored message)
//!    and hands each new message the next `seq` of its conversation ([`seqs`]);
//! 2. **commits**: stores the batch's messages, dedupe entries, conversation index and
//!    forwarding jobs ([`forwarding_jobs`]) as one atomic write and `fdatasync`s once;
//! 3. only then **publishes** the batch's events through its own link to the router
//!    ([`events`]). A `message` event is therefore never out before its message is on disk.
//!
//! When the store fails, nothing of the batch is stored, its seqs are handed out again, and
//! every sender of the batch gets an `unavailable` error instead of its event.

mod events;
mod policy;
mod seqs;

use std::collections::HashMap;
use std::thread::JoinHandle;

use rumqttd::Notification;
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use crate::broker::Broker;
use crate::domain::{ClientMsgId, Message, MessageId, UserId};
use crate::forward::Wakeup;
use crate::gateway::Presence;
use crate::metrics::METRICS;
use crate::payloads::{Command, CommandError, ErrorCode};
use crate::store::{Channel, Job, JobState, NewJobs, Store, StoreError};
use events::{Events, Reply};
use policy::{Policy, Verdict};
use seqs::Seqs;
use std::sync::atomic::Ordering;

/// Commands waiting for the relay; a full queue holds the publishing connections back.
const QUEUE: usize = 4096;
/// The most commands in one batch (one write, one fsync).
const MAX_BATCH: usize = 1024;

/// One outbox command from an authenticated user, parsed and rate-limited by its connection
/// (which answers refusals itself: they never reach the relay).
#[derive(Debug)]
pub struct Submission {
    pub from: UserId,
    pub command: Command,
    /// The connection's hold on one of its places in the relay (see
    /// `gateway::packets::IN_RELAY`): given back once the command's batch is durable and its
    /// events are out.
    pub place: Option<OwnedSemaphorePermit>,
    /// When the gateway read it (`tidings_message_delivery_seconds`).
    pub received: std::time::Instant,
}

pub type RelaySender = mpsc::Sender<Submission>;

/// What the relay needs to write forwarding jobs with the messages.
pub struct Forwarding {
    pub presence: Presence,
    /// `forwarding.delay_secs`.
    pub delay: std::time::Duration,
    pub wakeup: Wakeup,
}

/// Starts the relay thread. It stops when every [`RelaySender`] is dropped, after finishing
/// what was queued.
pub fn spawn(
    store: Store,
    broker: &Broker,
    forwarding: Forwarding,
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
        policy: Policy::new(store.clone()),
        seqs: Seqs::default(),
        events: Events::new(link_tx),
        store,
        forwarding,
    };
    let handle = std::thread::Builder::new()
        .name("relay".into())
        .spawn(move || relay.run(rx))?;
    Ok((tx, handle))
}

struct Relay {
    store: Store,
    policy: Policy,
    seqs: Seqs,
    events: Events,
    forwarding: Forwarding,
}

/// What one batch makes: its new messages, and what to tell whom once they are durable.
#[derive(Default)]
struct Batch {
    fresh: Vec<Message>,
    replies: Vec<Reply>,
    /// Sends new in this batch, by sender and client_msg_id: a retry within the batch.
    in_batch: HashMap<(UserId, ClientMsgId), usize>,
}

impl Relay {
    /// The batching loop: block for one command, take what else is queued, process.
    fn run(mut self, mut rx: mpsc::Receiver<Submission>) {
        let mut queued = Vec::with_capacity(MAX_BATCH);
        let mut places = Vec::with_capacity(MAX_BATCH);
        // When each send of the batch was read, for the delivery histogram.
        let mut sends = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = rx.blocking_recv() {
            queued.push(first);
            while queued.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(next) => queued.push(next),
                    Err(_) => break,
                }
            }
            let mut batch = Batch::default();
            let now_ms = crate::clock::unix_now_ms();
            // A store that failed a write fails every write until it is reopened: answer at
            // once, and leave it alone (the store says it in the log, once per interval).
            let healthy = self.store.healthy();
            for mut submission in queued.drain(..) {
                places.extend(submission.place.take());
                if let Command::Send { .. } = submission.command {
                    sends.push(submission.received);
                }
                if healthy {
                    self.admit(submission, now_ms, &mut batch);
                } else {
                    batch.replies.push(refusal(&submission));
                }
            }
            let committed = healthy.then(|| self.commit(&batch));
            // Observed before the events go out, so that whoever sees an event sees it counted;
            // one clock read for the batch.
            let answered = std::time::Instant::now();
            for received in sends.drain(..) {
                METRICS
                    .delivery
                    .observe(answered.saturating_duration_since(received));
            }
            match committed {
                None => self.events.publish(&[], batch.replies),
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "relay: storing a batch of {}", batch.fresh.len());
                    self.seqs.forget(&batch.fresh);
                    let replies = events::unavailable(&batch.fresh, batch.replies);
                    self.events.publish(&[], replies);
                }
                Some(Ok(())) => {
                    METRICS
                        .messages_stored
                        .fetch_add(batch.fresh.len() as u64, Ordering::Relaxed);
                    self.events.publish(&batch.fresh, batch.replies);
                }
            }
            // The batch's commands are answered: their connections may queue more.
            places.clear();
        }
        tracing::debug!("relay stopped");
    }

    fn admit(&mut self, submission: Submission, now_ms: u64, batch: &mut Batch) {
        let Submission { from, command, .. } = submission;
        let reply = match command {
            Command::Send {
                to,
                body,
                client_msg_id,
            } => {
                let message = Message {
                    id: MessageId::random(),
                    from,
                    to,
                    body,
                    seq: 0,
                    sent_at_ms: now_ms,
                    client_msg_id,
                };
                match self.admit_send(message, batch) {
                    Ok(reply) => reply,
                    Err(e) => {
                        tracing::error!(error = %e, "relay: checking a send");
                        Reply::Error(from, unavailable(None))
                    }
                }
            }
            Command::Read {
                peer,
                seq,
                client_msg_id,
            } => match self.store.mark_read(&from, &peer, seq) {
                Ok(Some(seq)) => Reply::Read {
                    reader: from,
                    peer,
                    seq,
                    client_msg_id,
                },
                Ok(None) => return,
                Err(e) => {
                    tracing::error!(error = %e, "relay: moving a read marker");
                    Reply::Error(
                        from,
                        unavailable(client_msg_id.map(|id| id.as_str().to_owned())),
                    )
                }
            },
        };
        batch.replies.push(reply);
    }

    /// A new message gets its seq and joins the batch; a retry gets the original's event.
    fn admit_send(&mut self, mut message: Message, batch: &mut Batch) -> Result<Reply, StoreError> {
        let key = (message.from, message.client_msg_id.clone());
        if let Some(&i) = batch.in_batch.get(&key) {
            return Ok(match policy::same_send(&batch.fresh[i], &message) {
                Ok(()) => Reply::Fresh {
                    index: i,
                    to_both: false,
                },
                Err(error) => Reply::Error(message.from, error),
            });
        }
        match self.policy.check_send(&message)? {
            Verdict::Refused(error) => Ok(Reply::Error(message.from, error)),
            Verdict::Retry(original) => Ok(Reply::Stored(original)),
            Verdict::New => {
                message.seq = self.seqs.next(&self.store, &message.conversation())?;
                batch.in_batch.insert(key, batch.fresh.len());
                batch.fresh.push(message);
                Ok(Reply::Fresh {
                    index: batch.fresh.len() - 1,
                    to_both: true,
                })
            }
        }
    }

    /// Stores the batch's new messages in one atomic write, then makes everything durable
    /// (read markers moved by the batch included).
    fn commit(&mut self, batch: &Batch) -> Result<(), StoreError> {
        let jobs = forwarding_jobs(&self.store, &self.forwarding, &batch.fresh);
        if !batch.fresh.is_empty() {
            self.store.append_messages(&batch.fresh, &jobs)?;
        }
        self.store.durable()?;
        self.seqs.trim();
        if !jobs.is_empty() {
            self.forwarding.wakeup.jobs(&jobs);
        }
        Ok(())
    }
}

/// The forwarding jobs of a batch's new messages: one per channel the recipient forwards to.
/// With no delay, none for a recipient who has a connection subscribed now (contract §4); with
/// a delay, presence starts watching for the device's PUBACK (before the event goes out).
fn forwarding_jobs(store: &Store, forwarding: &Forwarding, messages: &[Message]) -> NewJobs {
    let mut jobs = NewJobs::new();
    let delay = forwarding.delay;
    for message in messages {
        let channels = store.forwarding_channels(&message.to);
        if !channels.any() {
            continue;
        }
        if delay.is_zero() {
            if forwarding.presence.is_subscribed(&message.to) {
                continue;
            }
        } else {
            // Watched a little past the delay: the forwarder asks once it is over.
            let window = delay + std::time::Duration::from_secs(60);
            forwarding
                .presence
                .watch(&message.to, message.id.clone(), window);
        }
        let state = JobState {
            due_ms: message.sent_at_ms + delay.as_millis() as u64,
            ..JobState::default()
        };
        for channel in [Channel::Sms, Channel::Email] {
            if channels.has(channel) {
                jobs.push((Job::of(channel, message), state));
            }
        }
    }
    jobs
}

/// A command's `unavailable` error, given without looking at the store.
fn refusal(submission: &Submission) -> Reply {
    Reply::Error(
        submission.from,
        unavailable(submission.command.client_msg_id()),
    )
}

/// The error a sender gets when the store cannot take its command.
pub(crate) fn unavailable(client_msg_id: Option<String>) -> CommandError {
    CommandError::new(
        client_msg_id,
        ErrorCode::Unavailable,
        "the server cannot store messages right now; nothing was stored, retry later",
    )
}
