//! In-memory sliding-window rate limits (login codes per IP and per identity, sends per user).
//! Counters live in memory: a restart forgets them, which errs on the side of letting users in.

use std::borrow::Borrow;
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One limit to check: at most `max` events per `window` for `key`. `max == 0` is no limit.
pub struct Rule<'a, K: ?Sized = str> {
    pub key: &'a K,
    pub max: u32,
    pub window: Duration,
}

/// Keyed by text (`otp:ip:…`) by default; by any owned key (a `UserId` for sends, so that the
/// hot path formats nothing).
pub struct RateLimiter<K = String> {
    events: Mutex<HashMap<K, VecDeque<Instant>>>,
}

impl<K> Default for RateLimiter<K> {
    fn default() -> Self {
        Self {
            events: Mutex::default(),
        }
    }
}

/// Keys kept before a sweep drops the ones whose events are all old.
const SWEEP_AT: usize = 10_000;

impl<K: Hash + Eq> RateLimiter<K> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one event under every rule if all of them allow it; otherwise records nothing
    /// and returns how long until the tightest rule allows one again.
    pub fn try_acquire<Q>(&self, rules: &[Rule<'_, Q>]) -> Result<(), Duration>
    where
        Q: ?Sized + Hash + Eq + ToOwned<Owned = K>,
        K: Borrow<Q>,
    {
        let now = Instant::now();
        let mut events = self
            .events
            .lock()
            .expect("rate limiter lock is never poisoned");
        if events.len() > SWEEP_AT {
            // Windows here are at most an hour.
            events.retain(|_, q| {
                q.back()
                    .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(3600))
            });
        }
        let mut wait = Duration::ZERO;
        for rule in rules.iter().filter(|r| r.max > 0) {
            let Some(queue) = events.get_mut(rule.key) else {
                continue;
            };
            while queue
                .front()
                .is_some_and(|t| now.duration_since(*t) >= rule.window)
            {
                queue.pop_front();
            }
            if queue.len() >= rule.max as usize {
                let oldest = queue[queue.len() - rule.max as usize];
                wait = wait.max(rule.window.saturating_sub(now.duration_since(oldest)));
            }
        }
        if !wait.is_zero() {
            return Err(wait);
        }
        for rule in rules.iter().filter(|r| r.max > 0) {
            let queue = events.entry(rule.key.to_owned()).or_default();
            queue.push_back(now);
            // Only the newest `max` matter for the check above.
            while queue.len() > rule.max as usize {
                queue.pop_front();
            }
        }
        Ok(())
    }
}

/// A token bucket for one owner (no lock): at most `burst` at once, refilled at `per_sec`.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    burst: f32,
    per_sec: f32,
    tokens: f32,
    last: Instant,
}

impl Bucket {
    pub fn new(burst: u32, per_sec: f32) -> Self {
        Self {
            burst: burst as f32,
            per_sec,
            tokens: burst as f32,
            last: Instant::now(),
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f32() * self.per_sec;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Lets a thing (a warning in the log) happen at most once per interval, and counts how many
/// times it was held back in between: a fault that repeats per message or per socket is said
/// once, with its count, not flooded.
pub struct Sometimes {
    interval_ms: u64,
    start: Instant,
    next_ms: AtomicU64,
    held: AtomicU64,
}

impl Sometimes {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval_ms: interval.as_millis() as u64,
            start: Instant::now(),
            next_ms: AtomicU64::new(0),
            held: AtomicU64::new(0),
        }
    }

    /// `Some(n)`: go ahead; `n` times were held back since the last. `None`: not yet.
    pub fn ready(&self) -> Option<u64> {
        let now = self.start.elapsed().as_millis() as u64;
        let next = self.next_ms.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now + self.interval_ms,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.held.swap(0, Ordering::Relaxed));
        }
        self.held.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_gives_its_burst_then_its_rate() {
        let mut bucket = Bucket::new(3, 20.0);
        assert!((0..3).all(|_| bucket.take()));
        assert!(!bucket.take());
        std::thread::sleep(Duration::from_millis(120));
        assert!(bucket.take() && bucket.take());
        assert!(!bucket.take());
    }

    #[test]
    fn sometimes_goes_once_per_interval_and_counts_the_rest() {
        let sometimes = Sometimes::new(Duration::from_millis(50));
        assert_eq!(sometimes.ready(), Some(0));
        assert_eq!(sometimes.ready(), None);
        assert_eq!(sometimes.ready(), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(sometimes.ready(), Some(2));
    }

    #[test]
    fn allows_max_then_refuses_with_a_wait() {
        let limiter = RateLimiter::new();
        let rule = || {
            [Rule {
                key: "k",
                max: 2,
                window: Duration::from_secs(60),
            }]
        };
        assert!(limiter.try_acquire(&rule()).is_ok());
        assert!(limiter.try_acquire(&rule()).is_ok());
        let wait = limiter.try_acquire(&rule()).unwrap_err();
        assert!(wait > Duration::from_secs(58) && wait <= Duration::from_secs(60));
    }

    #[test]
    fn a_refusal_records_nothing_and_zero_is_off() {
        let limiter = RateLimiter::new();
        let tight = Rule {
            key: "a",
            max: 1,
            window: Duration::from_secs(60),
        };
        let loose = Rule {
            key: "b",
            max: 2,
            window: Duration::from_secs(60),
        };
        assert!(limiter.try_acquire(&[tight, loose]).is_ok());
        let tight = Rule {
            key: "a",
            max: 1,
            window: Duration::from_secs(60),
        };
        let loose = Rule {
            key: "b",
            max: 2,
            window: Duration::from_secs(60),
        };
        assert!(limiter.try_acquire(&[tight, loose]).is_err());
        // "b" saw one event, not two.
        assert!(limiter
            .try_acquire(&[Rule {
                key: "b",
                max: 2,
                window: Duration::from_secs(60)
            }])
            .is_ok());
        for _ in 0..100 {
            assert!(limiter
                .try_acquire(&[Rule {
                    key: "c",
                    max: 0,
                    window: Duration::from_secs(60)
                }])
                .is_ok());
        }
    }
}
