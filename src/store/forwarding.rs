//! Forwarding's durable state, in the `chat` tree so that a message's jobs are written in the
//! same atomic batch as the message:
//!
//! | key | value |
//! | --- | --- |
//! | `f` ‖ channel ‖ recipient ‖ sender ‖ seq | [`JobState`] |
//! | `w` ‖ `s` ‖ recipient ‖ sender | when the last SMS from that sender went out (ms) |
//! | `w` ‖ `e` ‖ recipient | when the last email digest went out (ms) |
//! | `w` ‖ `n` ‖ recipient | the UTC day and how many SMS went out on it |
//!
//! And an in-memory map of the users who have a forwarding channel on and the phone or email it
//! needs, kept in step with every write of a user record: the relay asks it for every message.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{decode, encode, Store, StoreError};
use crate::domain::{ConversationId, Message, UserId};

use crate::store::User;

const JOB: u8 = b'f';
const WINDOW: u8 = b'w';

/// How a message is forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    Sms,
    Email,
}

impl Channel {
    fn byte(self) -> u8 {
        match self {
            Self::Sms => b's',
            Self::Email => b'e',
        }
    }

    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            b's' => Some(Self::Sms),
            b'e' => Some(Self::Email),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Sms => "sms",
            Self::Email => "email",
        }
    }
}

/// Which channels a user forwards to: switched on, and with the phone or email it needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Channels {
    pub sms: bool,
    pub email: bool,
}

impl Channels {
    pub fn of(user: &User) -> Self {
        Self {
            sms: user.forward_sms && user.phone.is_some(),
            email: user.forward_email && user.email.is_some(),
        }
    }

    pub fn has(self, channel: Channel) -> bool {
        match channel {
            Channel::Sms => self.sms,
            Channel::Email => self.email,
        }
    }

    pub fn any(self) -> bool {
        self.sms || self.email
    }
}

/// One message to forward on one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Job {
    pub channel: Channel,
    pub recipient: UserId,
    pub sender: UserId,
    pub seq: u64,
}

const JOB_KEY: usize = 2 + 2 * UserId::BYTES + 8;

impl Job {
    pub fn of(channel: Channel, message: &Message) -> Self {
        Self {
            channel,
            recipient: message.to,
            sender: message.from,
            seq: message.seq,
        }
    }

    pub fn conversation(&self) -> ConversationId {
        ConversationId::of(&self.recipient, &self.sender)
    }

    fn key(&self) -> [u8; JOB_KEY] {
        let mut key = [0u8; JOB_KEY];
        key[0] = JOB;
        key[1] = self.channel.byte();
        let mut at = 2;
        for part in [
            self.recipient.as_bytes().as_slice(),
            self.sender.as_bytes().as_slice(),
            &self.seq.to_be_bytes(),
        ] {
            key[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        key
    }

    fn parse(key: &[u8]) -> Result<Self, StoreError> {
        let corrupt = || StoreError::Corrupt {
            tree: "chat",
            detail: "a forwarding job's key".into(),
        };
        if key.len() != JOB_KEY || key[0] != JOB {
            return Err(corrupt());
        }
        let channel = Channel::from_byte(key[1]).ok_or_else(corrupt)?;
        let (recipient, rest) = key[2..].split_at(UserId::BYTES);
        let (sender, seq) = rest.split_at(UserId::BYTES);
        Ok(Self {
            channel,
            recipient: UserId::from_bytes(recipient.try_into().map_err(|_| corrupt())?),
            sender: UserId::from_bytes(sender.try_into().map_err(|_| corrupt())?),
            seq: u64::from_be_bytes(seq.try_into().map_err(|_| corrupt())?),
        })
    }
}

/// Where a job stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobState {
    /// Not before this (the message's time plus `forwarding.delay_secs`), in Unix ms.
    pub due_ms: u64,
    /// Failed attempts so far.
    pub tries: u32,
    /// After a failure: not before this, in Unix ms.
    pub retry_at_ms: u64,
    /// An attempt started and its outcome was not recorded: after a crash, the provider may
    /// or may not have sent it, so it is never tried again.
    pub in_flight: bool,
}

/// A batch's jobs, as the relay writes them with its messages.
pub type NewJobs = Vec<(Job, JobState)>;

/// What a successful send records.
pub struct Sent<'a> {
    pub jobs: &'a [Job],
    pub recipient: UserId,
    pub at_ms: u64,
    pub what: SentWhat,
}

pub enum SentWhat {
    /// An SMS with messages from `sender`, on UTC day `day`.
    Sms {
        sender: UserId,
        day: u64,
    },
    Email,
}

fn window_key(kind: u8, recipient: &UserId, sender: Option<&UserId>) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + 2 * UserId::BYTES);
    key.extend_from_slice(&[WINDOW, kind]);
    key.extend_from_slice(recipient.as_bytes());
    if let Some(sender) = sender {
        key.extend_from_slice(sender.as_bytes());
    }
    key
}

impl Store {
    /// The channels `user` forwards to (from memory).
    pub fn forwarding_channels(&self, user: &UserId) -> Channels {
        self.inner
            .forwarding
            .read()
            .expect("forwarding map lock is never poisoned")
            .get(user)
            .copied()
            .unwrap_or_default()
    }

    /// Fills the in-memory map of who forwards where from the users tree.
    pub(super) fn load_forwarding_channels(
        users: &sled::Tree,
    ) -> Result<HashMap<UserId, Channels>, StoreError> {
        let mut map = HashMap::new();
        for row in users.iter() {
            let (_, bytes) = row?;
            let user: User = decode("users", &bytes)?;
            let channels = Channels::of(&user);
            if channels.any() {
                map.insert(user.id, channels);
            }
        }
        Ok(map)
    }

    /// Notes `user`'s channels after its record was written.
    pub(super) fn note_channels(map: &mut HashMap<UserId, Channels>, user: &User) {
        let channels = Channels::of(user);
        if channels.any() {
            map.insert(user.id, channels);
        } else {
            map.remove(&user.id);
        }
    }

    /// Every pending job (at start).
    pub fn forward_jobs_all(&self) -> Result<Vec<(Job, JobState)>, StoreError> {
        self.jobs_with_prefix(&[JOB])
    }

    /// The pending jobs of one recipient on one channel, in conversation and seq order.
    pub fn forward_jobs(
        &self,
        channel: Channel,
        recipient: &UserId,
    ) -> Result<Vec<(Job, JobState)>, StoreError> {
        let mut prefix = vec![JOB, channel.byte()];
        prefix.extend_from_slice(recipient.as_bytes());
        self.jobs_with_prefix(&prefix)
    }

    fn jobs_with_prefix(&self, prefix: &[u8]) -> Result<Vec<(Job, JobState)>, StoreError> {
        let mut jobs = Vec::new();
        for row in self.inner.chat.scan_prefix(prefix) {
            let (key, value) = row?;
            jobs.push((Job::parse(&key)?, decode("chat", &value)?));
        }
        Ok(jobs)
    }

    /// Writes the states of `jobs` (and removes `done`) in one batch, and makes it durable.
    pub fn update_forward_jobs(
        &self,
        jobs: &[(Job, JobState)],
        done: &[Job],
    ) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        Self::add_jobs(&mut batch, jobs);
        for job in done {
            batch.remove(&job.key()[..]);
        }
        self.inner.chat.apply_batch(batch)?;
        self.durable()
    }

    /// A send went out: its jobs are done and its window starts now, in one durable batch.
    pub fn forward_sent(&self, sent: &Sent<'_>) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for job in sent.jobs {
            batch.remove(&job.key()[..]);
        }
        match &sent.what {
            SentWhat::Sms { sender, day } => {
                let count = self.sms_sent_on(&sent.recipient, *day)? + 1;
                batch.insert(
                    window_key(b's', &sent.recipient, Some(sender)),
                    &sent.at_ms.to_be_bytes(),
                );
                batch.insert(
                    window_key(b'n', &sent.recipient, None),
                    encode(&(*day, count)),
                );
            }
            SentWhat::Email => batch.insert(
                window_key(b'e', &sent.recipient, None),
                &sent.at_ms.to_be_bytes(),
            ),
        }
        self.inner.chat.apply_batch(batch)?;
        self.durable()
    }

    /// When the last SMS from `sender` to `recipient` went out (0: never).
    pub fn last_sms(&self, recipient: &UserId, sender: &UserId) -> Result<u64, StoreError> {
        self.read_ms(window_key(b's', recipient, Some(sender)))
    }

    /// When the last email digest to `recipient` went out (0: never).
    pub fn last_email(&self, recipient: &UserId) -> Result<u64, StoreError> {
        self.read_ms(window_key(b'e', recipient, None))
    }

    /// How many SMS went to `recipient` on UTC day `day`.
    pub fn sms_sent_on(&self, recipient: &UserId, day: u64) -> Result<u32, StoreError> {
        let Some(bytes) = self.inner.chat.get(window_key(b'n', recipient, None))? else {
            return Ok(0);
        };
        let (on, count): (u64, u32) = decode("chat", &bytes)?;
        Ok(if on == day { count } else { 0 })
    }

    fn read_ms(&self, key: Vec<u8>) -> Result<u64, StoreError> {
        super::u64_at(&self.inner.chat, key)
    }

    /// Adds the jobs' keys to a batch of messages.
    pub(super) fn add_jobs(batch: &mut sled::Batch, jobs: &[(Job, JobState)]) {
        for (job, state) in jobs {
            batch.insert(&job.key()[..], encode(state));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_key_reads_back() {
        let (ann, bob) = (UserId::random(), UserId::random());
        for channel in [Channel::Sms, Channel::Email] {
            let job = Job {
                channel,
                recipient: bob,
                sender: ann,
                seq: 77,
            };
            assert_eq!(Job::parse(&job.key()).unwrap(), job);
        }
        assert!(Job::parse(b"f").is_err());
    }
}
