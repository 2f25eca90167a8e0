//! The clock, in the units the contract and the store use: Unix seconds (token expiry, code
//! deadlines) and Unix milliseconds (a message's `sent_at`), and the monotonic instant at which
//! a wall-clock deadline falls (for timers).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch (0 if the system clock is set before it).
pub fn unix_now() -> u64 {
    since_epoch().as_secs()
}

/// Milliseconds since the Unix epoch.
pub fn unix_now_ms() -> u64 {
    since_epoch().as_millis() as u64
}

/// The monotonic instant of Unix time `unix_secs` (now, if that is past).
pub fn instant_of_unix(unix_secs: u64) -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(unix_secs.saturating_sub(unix_now()))
}

fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}
