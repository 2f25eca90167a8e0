//! What `GET /metrics` shows, in the Prometheus text format (version 0.0.4): one process-wide
//! set of counters, gauges and histograms ([`METRICS`]), bumped where things happen with a
//! relaxed atomic add (no lock, no allocation), and rendered on request.
//!
//! | series | type | what |
//! | --- | --- | --- |
//! | `tidings_mqtt_connections` | gauge | MQTT connections admitted now |
//! | `tidings_http_connections` | gauge | HTTP connections open now |
//! | `tidings_messages_stored_total` | counter | messages stored (fsync'd) |
//! | `tidings_message_delivery_seconds` | histogram | a send read by the gateway → its `message` event handed to the broker (stored, fsync'd, published) |
//! | `tidings_store_fsync_seconds` | histogram | one flush + `fdatasync` of the store |
//! | `tidings_store_healthy` | gauge | 1 while the store can write, 0 while it cannot |
//! | `tidings_forwarding_{sent,failed,retrying,uncertain,capped}_total` | counter | forwarding by SMS and email |
//! | `tidings_otp_{sent,refused,failed}_total` | counter | login codes sent, requests refused by a limit, wrong codes |

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// The process's metrics.
pub static METRICS: Metrics = Metrics::new();

pub struct Metrics {
    pub mqtt_connections: AtomicI64,
    pub http_connections: AtomicI64,
    pub messages_stored: AtomicU64,
    pub delivery: Histogram,
    pub fsync: Histogram,
    pub store_faulted: AtomicU64,
    pub forwarding: Forwarding,
    pub otp_sent: AtomicU64,
    pub otp_refused: AtomicU64,
    pub otp_failed: AtomicU64,
}

/// How forwarding went since the start (also logged with each failure).
#[derive(Debug)]
pub struct Forwarding {
    pub sent: AtomicU64,
    pub failed: AtomicU64,
    pub retrying: AtomicU64,
    pub uncertain: AtomicU64,
    pub capped: AtomicU64,
}

/// Upper bounds of the histogram buckets, in µs (1 ms to 10 s).
const BOUNDS_US: [u64; 13] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000,
];

/// A latency histogram with fixed buckets ([`BOUNDS_US`]).
pub struct Histogram {
    /// Observations at or under each bound (not cumulative; summed when rendered).
    buckets: [AtomicU64; BOUNDS_US.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    const fn new() -> Self {
        Self {
            buckets: [const { AtomicU64::new(0) }; BOUNDS_US.len()],
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, took: Duration) {
        let us = took.as_micros().min(u128::from(u64::MAX)) as u64;
        if let Some(i) = BOUNDS_US.iter().position(|&bound| us <= bound) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, bucket) in BOUNDS_US.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let le = *bound as f64 / 1e6;
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

impl Metrics {
    const fn new() -> Self {
        Self {
            mqtt_connections: AtomicI64::new(0),
            http_connections: AtomicI64::new(0),
            messages_stored: AtomicU64::new(0),
            delivery: Histogram::new(),
            fsync: Histogram::new(),
            store_faulted: AtomicU64::new(0),
            forwarding: Forwarding {
                sent: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                retrying: AtomicU64::new(0),
                uncertain: AtomicU64::new(0),
                capped: AtomicU64::new(0),
            },
            otp_sent: AtomicU64::new(0),
            otp_refused: AtomicU64::new(0),
            otp_failed: AtomicU64::new(0),
        }
    }

    /// Everything, in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let gauge = |out: &mut String, name: &str, help: &str, value: i64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        };
        let counter = |out: &mut String, name: &str, help: &str, value: &AtomicU64| {
            let value = value.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        };
        gauge(
            &mut out,
            "tidings_mqtt_connections",
            "MQTT connections admitted now.",
            self.mqtt_connections.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "tidings_http_connections",
            "HTTP connections open now.",
            self.http_connections.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "tidings_messages_stored_total",
            "Messages stored and fsync'd.",
            &self.messages_stored,
        );
        self.delivery.render(
            &mut out,
            "tidings_message_delivery_seconds",
            "From a send read by the gateway to its message event handed to the broker (stored, fsync'd, published).",
        );
        self.fsync.render(
            &mut out,
            "tidings_store_fsync_seconds",
            "One flush and fdatasync of the store.",
        );
        gauge(
            &mut out,
            "tidings_store_healthy",
            "1 while the store can write, 0 while it cannot.",
            i64::from(self.store_faulted.load(Ordering::Relaxed) == 0),
        );
        let f = &self.forwarding;
        for (name, help, value) in [
            (
                "sent",
                "Forwarded SMS and emails the provider took.",
                &f.sent,
            ),
            (
                "failed",
                "Forwarding given up (a permanent refusal, or a day old).",
                &f.failed,
            ),
            (
                "retrying",
                "Forwarding attempts that failed and will be retried.",
                &f.retrying,
            ),
            (
                "uncertain",
                "Forwarding attempts cut off by a stop; never sent again.",
                &f.uncertain,
            ),
            (
                "capped",
                "Messages not forwarded by SMS: the recipient's daily cap.",
                &f.capped,
            ),
        ] {
            counter(
                &mut out,
                &format!("tidings_forwarding_{name}_total"),
                help,
                value,
            );
        }
        for (name, help, value) in [
            ("sent", "Login and verification codes sent.", &self.otp_sent),
            (
                "refused",
                "Code requests and checks refused by a limit.",
                &self.otp_refused,
            ),
            (
                "failed",
                "Wrong codes entered for a live code.",
                &self.otp_failed,
            ),
        ] {
            counter(&mut out, &format!("tidings_otp_{name}_total"), help, value);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_renders_cumulative_buckets() {
        let histogram = Histogram::new();
        histogram.observe(Duration::from_micros(800));
        histogram.observe(Duration::from_millis(30));
        histogram.observe(Duration::from_secs(60));
        let mut out = String::new();
        histogram.render(&mut out, "x_seconds", "x.");
        assert!(out.contains("x_seconds_bucket{le=\"0.001\"} 1\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"0.05\"} 2\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"10\"} 2\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_seconds_count 3\n"), "{out}");
    }
}
