//! Forwarding by SMS and email to users who did not get a message in time (contract §4).
//!
//! The relay writes a job per message and channel in the message's own atomic batch (so a job
//! exists exactly when its message does) and tells the forwarder through a [`Wakeup`]. The
//! forwarder keeps a schedule of (channel, recipient) groups by the time they next need a look
//! and, for each group that is due, in a task of its own:
//!
//! 1. drops jobs whose message was delivered (a device PUBACKed its event: [`Presence`]; or the
//!    recipient's read marker reached it), and all of them if the channel was switched off;
//! 2. waits for the group's window: one SMS per sender and recipient per
//!    `sms_min_interval_secs`, one email per recipient per `email_min_interval_secs`; what
//!    arrives meanwhile is folded into the send at the window's end;
//! 3. records the attempt (durably) before it makes it, so a crash during an attempt never
//!    sends twice: such a job is logged as uncertain at the next start and not tried again;
//! 4. sends; on success deletes the jobs and starts the window, on a transient failure (timeout,
//!    429, 5xx) tries again after an exponential back-off with jitter, on a permanent one
//!    (other 4xx) gives up (logged, counted).
//!
//! Groups run concurrently (at most [`CONCURRENT_SENDS`] sends at once), so a provider that
//! hangs delays forwarding and nothing else. On start the schedule is rebuilt from the store.

mod compose;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify, Semaphore};

use crate::auth::Auth;
use crate::clock::unix_now_ms;
use crate::config::ForwardingSettings;
use crate::domain::{Message, UserId};
use crate::gateway::Presence;
use crate::notify::{EmailSender, Mail, SendError, SmsSender, PROVIDER_TIMEOUT};
use crate::shutdown::Shutdown;
use crate::store::{Channel, Channels, Job, JobState, Sent, SentWhat, Store, StoreError, User};

/// Sends in flight at once, over all recipients.
pub const CONCURRENT_SENDS: usize = 16;
/// Wake-ups queued from the relay; past it the forwarder rereads its jobs from the store.
const WAKEUPS: usize = 4096;
/// The first retry comes after 0.5–1 s, then each doubles, up to 5 min.
const FIRST_RETRY: Duration = Duration::from_secs(1);
const LONGEST_RETRY: Duration = Duration::from_secs(300);
/// A message still not forwarded this long after it was sent is given up.
const GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 3600);
const DAY_MS: u64 = 24 * 3600 * 1000;

/// A (channel, recipient) group and when it next needs a look (Unix ms).
#[derive(Debug, Clone, Copy)]
pub struct Due {
    channel: Channel,
    recipient: UserId,
    at_ms: u64,
}

/// The relay's handle: tells the forwarder about the jobs it just made durable.
#[derive(Clone)]
pub struct Wakeup {
    tx: mpsc::Sender<Due>,
    rescan: Arc<Notify>,
}

impl Wakeup {
    /// `jobs` are durable: their groups need a look when they fall due. One wake-up per group
    /// of a batch, at its earliest job.
    pub fn jobs(&self, jobs: &[(Job, JobState)]) {
        let mut groups: HashMap<Group, u64> = HashMap::new();
        for (job, state) in jobs {
            let at = groups
                .entry((job.channel, job.recipient))
                .or_insert(u64::MAX);
            *at = (*at).min(state.due_ms);
        }
        for ((channel, recipient), at_ms) in groups {
            let due = Due {
                channel,
                recipient,
                at_ms,
            };
            if self.tx.try_send(due).is_err() {
                // Full: the forwarder will find them in the store.
                self.rescan.notify_one();
                return;
            }
        }
    }
}

/// The wake-up channel: the [`Wakeup`] for the relay, the other end for [`Forwarder::new`].
pub fn queue() -> (Wakeup, Inbox) {
    let (tx, rx) = mpsc::channel(WAKEUPS);
    let rescan = Arc::new(Notify::new());
    (
        Wakeup {
            tx,
            rescan: rescan.clone(),
        },
        Inbox { rx, rescan },
    )
}

pub struct Inbox {
    rx: mpsc::Receiver<Due>,
    rescan: Arc<Notify>,
}

/// What forwarding needs to send.
pub struct Providers {
    pub sms: Arc<dyn SmsSender>,
    pub email: Arc<dyn EmailSender>,
    pub auth: Arc<Auth>,
    /// `http.public_url`, or the bound HTTP address: where unsubscribe links point.
    pub public_base: String,
}

pub struct Forwarder {
    inner: Arc<Inner>,
    inbox: Inbox,
}

struct Inner {
    store: Store,
    presence: Presence,
    providers: Providers,
    settings: ForwardingSettings,
    sends: Arc<Semaphore>,
    /// How forwarding went (`/metrics`).
    counts: &'static crate::metrics::Forwarding,
}

type Group = (Channel, UserId);

/// Holds kept before the ones whose window has opened are swept.
const MAX_HELD: usize = 10_000;

/// Groups by the time they next need a look.
#[derive(Default)]
struct Schedule {
    by_time: BTreeSet<(u64, Group)>,
    when: HashMap<Group, u64>,
}

impl Schedule {
    /// Looks at `group` at `at_ms`, or earlier if it already was to.
    fn add(&mut self, group: Group, at_ms: u64) {
        match self.when.get(&group) {
            Some(&t) if t <= at_ms => {}
            Some(&t) => {
                self.by_time.remove(&(t, group));
                self.by_time.insert((at_ms, group));
                self.when.insert(group, at_ms);
            }
            None => {
                self.by_time.insert((at_ms, group));
                self.when.insert(group, at_ms);
            }
        }
    }

    fn next(&self) -> Option<u64> {
        self.by_time.first().map(|(t, _)| *t)
    }

    fn pop_due(&mut self, now_ms: u64) -> Vec<Group> {
        let mut due = Vec::new();
        while let Some(&(t, group)) = self.by_time.first() {
            if t > now_ms {
                break;
            }
            self.by_time.pop_first();
            self.when.remove(&group);
            due.push(group);
        }
        due
    }
}

impl Forwarder {
    pub fn new(
        store: Store,
        presence: Presence,
        providers: Providers,
        settings: ForwardingSettings,
        inbox: Inbox,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                presence,
                providers,
                settings,
                sends: Arc::new(Semaphore::new(CONCURRENT_SENDS)),
                counts: &crate::metrics::METRICS.forwarding,
            }),
            inbox,
        }
    }

    /// Runs until `stop`, then lets the sends under way finish (for at most the drain timeout).
    pub async fn run(mut self, mut stop: Shutdown) {
        let mut schedule = Schedule::default();
        if let Err(e) = self.rescan(&mut schedule, &HashMap::new()) {
            tracing::error!(error = %e, "forwarding: reading pending jobs");
        }
        let mut busy: HashSet<Group> = HashSet::new();
        let mut again: HashSet<Group> = HashSet::new();
        // Groups whose window is closed until then: new jobs cannot make them send earlier,
        // so they are not looked at before (each look reads all of a group's pending jobs:
        // looking again at every batch of a chatty sender was quadratic in the window).
        let mut held: HashMap<Group, u64> = HashMap::new();
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(Group, Look)>();
        loop {
            let sleep = match schedule.next() {
                Some(at) => Duration::from_millis(at.saturating_sub(unix_now_ms())),
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                _ = stop.recv() => break,
                Some(due) = self.inbox.rx.recv() => {
                    let group = (due.channel, due.recipient);
                    schedule.add(group, not_before(&held, group, due.at_ms));
                }
                _ = self.inbox.rescan.notified() => {
                    if let Err(e) = self.rescan(&mut schedule, &held) {
                        tracing::error!(error = %e, "forwarding: reading pending jobs");
                    }
                }
                Some((group, look)) = done_rx.recv() => {
                    busy.remove(&group);
                    match look.held_until {
                        Some(until) => held.insert(group, until),
                        None => held.remove(&group),
                    };
                    if held.len() > MAX_HELD {
                        let now = unix_now_ms();
                        held.retain(|_, until| *until > now);
                    }
                    if again.remove(&group) {
                        schedule.add(group, not_before(&held, group, unix_now_ms()));
                    } else if let Some(at) = look.next {
                        schedule.add(group, at);
                    }
                }
                _ = tokio::time::sleep(sleep) => {
                    for group in schedule.pop_due(unix_now_ms()) {
                        if !busy.insert(group) {
                            again.insert(group);
                            continue;
                        }
                        let inner = self.inner.clone();
                        let done = done_tx.clone();
                        tokio::spawn(async move {
                            let look = match inner.look_at(group).await {
                                Ok(look) => look,
                                Err(e) => {
                                    tracing::error!(error = %e, channel = group.0.name(), "forwarding: store error; trying again in a minute");
                                    Look::at(Some(unix_now_ms() + 60_000))
                                }
                            };
                            let _ = done.send((group, look));
                        });
                    }
                }
            }
        }
        // Sends under way finish (and record their outcome) within the drain timeout; one cut
        // off is logged as uncertain at the next start and not sent again.
        let drained = tokio::time::timeout(crate::shutdown::DRAIN_TIMEOUT, async {
            while !busy.is_empty() {
                match done_rx.recv().await {
                    Some((group, _)) => busy.remove(&group),
                    None => break,
                };
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                sends = busy.len(),
                "forwarding: sends still under way at shutdown"
            );
        }
        tracing::debug!("forwarder stopped");
    }

    /// Schedules every group that has jobs in the store, now (or when its window opens).
    fn rescan(
        &mut self,
        schedule: &mut Schedule,
        held: &HashMap<Group, u64>,
    ) -> Result<(), StoreError> {
        // What queued so far is in the store (drained first: a job written after the scan
        // still has its wake-up queued).
        while self.inbox.rx.try_recv().is_ok() {}
        let now = unix_now_ms();
        for (job, _) in self.inner.store.forward_jobs_all()? {
            let group = (job.channel, job.recipient);
            schedule.add(group, not_before(held, group, now));
        }
        Ok(())
    }
}

/// `at`, or later if `group`'s window is closed until then.
fn not_before(held: &HashMap<Group, u64>, group: Group, at: u64) -> u64 {
    held.get(&group).map_or(at, |&until| until.max(at))
}

/// What a look at a group found: when it next needs one, and until when its window is closed
/// whatever arrives (an email digest's window: one per recipient).
#[derive(Debug, Default)]
struct Look {
    next: Option<u64>,
    held_until: Option<u64>,
}

impl Look {
    fn at(next: Option<u64>) -> Self {
        Self {
            next,
            held_until: None,
        }
    }
}

/// A job that is ready to go, with its message.
struct Ready {
    job: Job,
    state: JobState,
    message: Message,
}

impl Inner {
    /// Looks at one group's jobs: drops what needs no forwarding, sends what is due. Returns
    /// when the group next needs a look.
    async fn look_at(&self, (channel, recipient): Group) -> Result<Look, StoreError> {
        let now = unix_now_ms();
        let jobs = self.store.forward_jobs(channel, &recipient)?;
        if jobs.is_empty() {
            return Ok(Look::default());
        }
        let user = self.store.user(&recipient)?;
        let Some(user) = user.filter(|u| Channels::of(u).has(channel)) else {
            let done: Vec<Job> = jobs.iter().map(|(job, _)| *job).collect();
            tracing::info!(
                channel = channel.name(),
                messages = done.len(),
                "forwarding switched off: queued messages not forwarded"
            );
            self.write(Vec::new(), done).await?;
            return Ok(Look::default());
        };
        let mut next: Option<u64> = None;
        let mut done = Vec::new();
        let mut ready = Vec::new();
        for (job, state) in jobs {
            if state.in_flight {
                tracing::warn!(
                    channel = channel.name(),
                    "forwarding: an attempt was under way when tidings stopped; the provider \
                     may have sent it, so it is not tried again"
                );
                self.counts.uncertain.fetch_add(1, Ordering::Relaxed);
                done.push(job);
                continue;
            }
            if state.due_ms > now {
                earliest(&mut next, state.due_ms);
                continue;
            }
            let Some(message) = self.store.message(&job.conversation(), job.seq)? else {
                done.push(job);
                continue;
            };
            if self.delivered(&job, &message)? {
                self.presence.forget(&recipient, &message.id);
                done.push(job);
            } else if now.saturating_sub(message.sent_at_ms) > GIVE_UP_AFTER.as_millis() as u64 {
                tracing::warn!(
                    channel = channel.name(),
                    "forwarding: given up a day after the message was sent"
                );
                self.counts.failed.fetch_add(1, Ordering::Relaxed);
                done.push(job);
            } else {
                ready.push(Ready {
                    job,
                    state,
                    message,
                });
            }
        }
        if !done.is_empty() {
            self.write(Vec::new(), done).await?;
        }
        let after = match channel {
            Channel::Sms => Look::at(self.send_sms(&user, ready, now).await?),
            Channel::Email => self.send_email(&user, ready, now).await?,
        };
        if let Some(at) = after.next {
            earliest(&mut next, at);
        }
        Ok(Look {
            next,
            held_until: after.held_until,
        })
    }

    /// Delivered: a device of the recipient acknowledged the event, or the recipient read up to
    /// it. With no delay, only "nobody was subscribed when it was stored" counts, which the
    /// relay decided when it wrote the job.
    fn delivered(&self, job: &Job, message: &Message) -> Result<bool, StoreError> {
        if self.settings.delay_secs == 0 {
            return Ok(false);
        }
        Ok(self.presence.acknowledged(&job.recipient, &message.id)
            || self.store.read_marker(&job.recipient, &job.sender)? >= job.seq)
    }

    /// One SMS per sender whose window is open; returns when the next window opens.
    async fn send_sms(
        &self,
        user: &User,
        ready: Vec<Ready>,
        now: u64,
    ) -> Result<Option<u64>, StoreError> {
        let Some(phone) = &user.phone else {
            return Ok(None);
        };
        let interval = self.settings.sms_min_interval_secs * 1000;
        let mut next: Option<u64> = None;
        for (sender, items) in by_sender(ready) {
            // A failed send is retried with whatever of the sender's arrived since, folded.
            let opens = (self.store.last_sms(&user.id, &sender)? + interval).max(retry_at(&items));
            if now < opens {
                earliest(&mut next, opens);
                continue;
            }
            let day = now / DAY_MS;
            let cap = self.settings.sms_per_recipient_per_day;
            if cap > 0 && self.store.sms_sent_on(&user.id, day)? >= cap {
                self.counts
                    .capped
                    .fetch_add(items.len() as u64, Ordering::Relaxed);
                tracing::warn!(
                    messages = items.len(),
                    cap,
                    "forwarding: the recipient's SMS cap for today is reached; not sent by SMS"
                );
                self.write(Vec::new(), items.iter().map(|r| r.job).collect())
                    .await?;
                continue;
            }
            let name = self.name_of(&sender)?;
            let messages: Vec<&Message> = items.iter().map(|r| &r.message).collect();
            let text = compose::sms(&name, &messages);
            let sms = &self.providers.sms;
            let what = SentWhat::Sms { sender, day };
            if let Some(at) = self
                .attempt(user.id, items, what, now, sms.send(phone, &text))
                .await?
            {
                earliest(&mut next, at);
            }
        }
        Ok(next)
    }

    /// One email digest when the recipient's window is open; otherwise the group is held until
    /// it opens (one window per recipient: nothing that arrives meanwhile can open it sooner).
    async fn send_email(
        &self,
        user: &User,
        ready: Vec<Ready>,
        now: u64,
    ) -> Result<Look, StoreError> {
        let Some(email) = &user.email else {
            return Ok(Look::default());
        };
        if ready.is_empty() {
            return Ok(Look::default());
        }
        let opens = (self.store.last_email(&user.id)?
            + self.settings.email_min_interval_secs * 1000)
            .max(retry_at(&ready));
        if now < opens {
            return Ok(Look {
                next: Some(opens),
                held_until: Some(opens),
            });
        }
        let groups = by_sender(ready);
        let mut named = Vec::with_capacity(groups.len());
        for (sender, items) in &groups {
            let messages: Vec<&Message> = items.iter().map(|r| &r.message).collect();
            named.push((self.name_of(sender)?, messages));
        }
        let token = self.providers.auth.unsubscribe_token(&user.id);
        let link = format!(
            "{}/v1/forwarding/unsubscribe?token={token}",
            self.providers.public_base
        );
        let (subject, body) = compose::email(&named, &link);
        let mail = Mail {
            to: email.clone(),
            subject,
            body,
            unsubscribe: Some(link),
        };
        let items = groups.into_values().flatten().collect();
        let send = self.providers.email.send(&mail);
        let retry = self
            .attempt(user.id, items, SentWhat::Email, now, send)
            .await?;
        // Sent: the next window opens an interval from now. Failed: not before the retry.
        let until = retry.unwrap_or(now + self.settings.email_min_interval_secs * 1000);
        Ok(Look {
            next: retry,
            held_until: Some(until),
        })
    }

    /// Records the attempt, makes it, records its outcome. Returns when to try again, if so.
    async fn attempt(
        &self,
        recipient: UserId,
        items: Vec<Ready>,
        what: SentWhat,
        now: u64,
        send: impl std::future::Future<Output = Result<(), SendError>>,
    ) -> Result<Option<u64>, StoreError> {
        let _permit = self.sends.acquire().await.expect("never closed");
        let flying = with_state(&items, |state| JobState {
            in_flight: true,
            ..state
        });
        self.write(flying, Vec::new()).await?;
        let outcome = match tokio::time::timeout(PROVIDER_TIMEOUT * 2, send).await {
            Ok(outcome) => outcome,
            Err(_) => Err(SendError::Transient("no answer in time".into())),
        };
        let jobs: Vec<Job> = items.iter().map(|r| r.job).collect();
        let channel = jobs[0].channel.name();
        match outcome {
            Ok(()) => {
                let at_ms = unix_now_ms();
                self.blocking(move |store| {
                    store.forward_sent(&Sent {
                        jobs: &jobs,
                        recipient,
                        at_ms,
                        what,
                    })
                })
                .await?;
                for r in &items {
                    self.presence.forget(&recipient, &r.message.id);
                }
                self.counts.sent.fetch_add(1, Ordering::Relaxed);
                tracing::info!(channel, messages = items.len(), "forwarded");
                Ok(None)
            }
            Err(SendError::Transient(why)) => {
                let tries = items.iter().map(|r| r.state.tries).max().unwrap_or(0) + 1;
                let retry_at = now + backoff(tries).as_millis() as u64;
                let states = with_state(&items, |state| JobState {
                    tries,
                    retry_at_ms: retry_at,
                    in_flight: false,
                    ..state
                });
                self.write(states, Vec::new()).await?;
                let retrying = self.counts.retrying.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(channel, %why, tries, retrying, "forwarding: provider failed; will retry");
                Ok(Some(retry_at))
            }
            Err(SendError::Permanent(why)) => {
                self.write(Vec::new(), jobs).await?;
                let failed = self.counts.failed.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(channel, %why, failed, "forwarding: provider refused; not retried");
                Ok(None)
            }
        }
    }

    /// Writes job states and removes finished jobs, durably.
    async fn write(&self, states: Vec<(Job, JobState)>, done: Vec<Job>) -> Result<(), StoreError> {
        self.blocking(move |store| store.update_forward_jobs(&states, &done))
            .await
    }

    /// A durable store write, off the async threads (it waits for `fdatasync`).
    async fn blocking<T: Send + 'static>(
        &self,
        write: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || write(&store))
            .await
            .expect("the store does not panic")
    }

    /// How a forwarded text names a sender: display name, else phone, else email.
    fn name_of(&self, sender: &UserId) -> Result<String, StoreError> {
        let user = self.store.user(sender)?;
        Ok(user
            .and_then(|u| {
                u.display_name
                    .or_else(|| u.phone.map(|p| p.as_str().to_owned()))
                    .or_else(|| u.email.map(|e| e.as_str().to_owned()))
            })
            .unwrap_or_else(|| "someone".to_owned()))
    }
}

/// Moves `next` to `at` if that is earlier (or `next` is unset).
fn earliest(next: &mut Option<u64>, at: u64) {
    *next = Some(next.map_or(at, |n| n.min(at)));
}

/// `items` grouped by sender (in seq order within each, as the store lists jobs).
fn by_sender(items: Vec<Ready>) -> BTreeMap<UserId, Vec<Ready>> {
    let mut groups: BTreeMap<UserId, Vec<Ready>> = BTreeMap::new();
    for r in items {
        groups.entry(r.job.sender).or_default().push(r);
    }
    groups
}

/// Each item's job with the state `change` makes of its own.
fn with_state(items: &[Ready], change: impl Fn(JobState) -> JobState) -> Vec<(Job, JobState)> {
    items.iter().map(|r| (r.job, change(r.state))).collect()
}

/// When the failed ones among `items` may be tried again (0: none failed).
fn retry_at(items: &[Ready]) -> u64 {
    items.iter().map(|r| r.state.retry_at_ms).max().unwrap_or(0)
}

/// The wait before try `tries + 1`: `FIRST_RETRY` doubled per earlier failure, at most
/// `LONGEST_RETRY`, then a random half of it taken off (jitter, so that retries of many jobs
/// do not arrive together).
fn backoff(tries: u32) -> Duration {
    let full = FIRST_RETRY
        .saturating_mul(1 << tries.saturating_sub(1).min(16))
        .min(LONGEST_RETRY);
    full.mul_f64(1.0 - rand::random::<f64>() * 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        for tries in 1..30 {
            let full = FIRST_RETRY
                .saturating_mul(1 << (tries - 1).min(16))
                .min(LONGEST_RETRY);
            let wait = backoff(tries);
            assert!(wait <= full && wait >= full / 2, "{tries}: {wait:?}");
        }
        assert!(backoff(40) <= LONGEST_RETRY);
    }

    #[test]
    fn the_schedule_keeps_the_earliest_look_per_group() {
        let mut schedule = Schedule::default();
        let group = (Channel::Sms, UserId::random());
        schedule.add(group, 500);
        schedule.add(group, 900);
        schedule.add(group, 300);
        assert_eq!(schedule.next(), Some(300));
        assert!(schedule.pop_due(299).is_empty());
        assert_eq!(schedule.pop_due(300), vec![group]);
        assert_eq!(schedule.next(), None);
    }
}
