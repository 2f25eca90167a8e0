//! End-to-end benchmark: tidings against plain Mosquitto, same machine, same run, same clients.
//!
//! `bench [--smoke] [--scenario NAME[,NAME...]] [TIDINGS_BINARY]` (default binary
//! `target/release/tidings`, default scenarios: all). `--smoke` runs every scenario at a tiny
//! size, so that the whole run takes seconds (a check that the bench works, not a measurement);
//! `--size N` sets every memory scenario to N connections, users or cycles instead.
//!
//! Throughput and latency:
//!
//! - `chat`: `PAIRS` senders each send messages (QoS 1, a 200-byte body) to their own receiver
//!   as fast as they can, keeping at most `WINDOW` unacknowledged; every receiver counts what
//!   arrives and how long each message took from publish to arrival (latency there is queueing).
//! - `paced`: the same at `PACED_RATE` messages/s in all (latency under a steady load).
//!
//! Memory (the server's resident memory, VmRSS, read from /proc; each scenario starts fresh
//! servers; clients are minimal raw MQTT 3.1.1 sockets, keep-alive off, so nothing pings):
//!
//! - `idle`: `IDLE_CONNECTIONS` distinct users, each connected and subscribed (QoS 1) to its
//!   own inbox; RSS per connection = (RSS with all connected − RSS before) / connections.
//! - `churn`: `CHURN_USERS` distinct users each connect, subscribe, get one message from a
//!   sender, acknowledge it, disconnect and leave, `CHURN_IN_FLIGHT` at a time. The store's
//!   cache is accounted for like this: tidings runs with `storage.cache_bytes` =
//!   `CHURN_STORE_CACHE`, and a control phase first sends one message to as many users who are
//!   offline (never connected): the same writes to the store with no connection work, which
//!   fills the cache and shows the store's share. Reported: the growth over the visits against
//!   RSS after the control, in MiB and in % (the target: within 10 %), with nothing
//!   subtracted: what the visits write to the store again is in it. Both servers start after a
//!   short warm-up churn.
//! - `fresh-ids`: one user connects, subscribes and disconnects `FRESH_IDS` times, each with a
//!   new (128-byte) client id and a clean session, at most `PER_USER_CAP` at a time (tidings
//!   refuses a user's 11th connection); RSS growth over the cycles, after a warm-up.
//! - `many`: `MANY_CONNECTIONS` distinct users connected and subscribed to their inboxes: the
//!   time to connect and subscribe them all, and RSS. Two machine limits apply: client sockets
//!   come from several loopback addresses (127.0.0.1 to 127.0.0.16: one has only ~28 000
//!   ephemeral ports), and this process and the servers need a file descriptor per connection:
//!   the bench raises its soft RLIMIT_NOFILE to the hard limit (the servers inherit it) and,
//!   where even that is too low, runs fewer connections and says so.
//!
//! - tidings: the real binary, login over HTTP (email, the code read from the console log),
//!   `send` commands to the outbox; a message arrives once it is fsync'd and published to the
//!   inbox (the full path).
//! - Mosquitto: the same clients with topics `bench/...`; nothing is stored (Mosquitto's
//!   default), no authentication, no ACL.
//!
//! Run with `scripts/bench` (it builds in release and installs mosquitto if missing). Figures go
//! to stdout, progress to stderr; nothing is asserted.

use std::collections::HashMap;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::BytesMut;
use rumqttc::mqttbytes::v4 as wire;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

const PAIRS: usize = 16;
const MESSAGES: usize = 2_000;
const WINDOW: usize = 64;
const PACED_RATE: f64 = 5_000.0;
const PACED_MESSAGES: usize = 500;
/// A receiver that sees nothing for this long stops counting.
const IDLE: Duration = Duration::from_secs(3);
const BODY: usize = 200;

const IDLE_CONNECTIONS: usize = 10_000;
const CHURN_USERS: usize = 20_000;
const FRESH_IDS: usize = 10_000;
const MANY_CONNECTIONS: usize = 50_000;
/// Cycles before the first reading in `churn` and `fresh-ids`: first-use allocations (thread
/// caches, pools, the store's first pages) are not what these scenarios look for.
const WARM_UP: usize = 100;
/// tidings' store cache (`storage.cache_bytes`) in the churn scenario: small, so that the
/// control phase fills it and the store's memory stops growing with the data.
const CHURN_STORE_CACHE: u64 = 8 * 1024 * 1024;
/// Concurrency: HTTP logins, connections being opened, churn visits.
const LOGINS_IN_FLIGHT: usize = 64;
const CONNECTS_IN_FLIGHT: usize = 128;
const CHURN_IN_FLIGHT: usize = 100;
/// tidings' `mqtt.max_connections_per_user` (its default), and so the `fresh-ids` concurrency.
const PER_USER_CAP: usize = 10;
/// Pause before each memory reading, for the servers to finish what is under way.
const SETTLE: Duration = Duration::from_secs(2);
/// File descriptors a process needs besides one per MQTT connection (tidings keeps 512 apart).
const SPARE_FILES: u64 = 1_000;
/// Client sockets are bound to 127.0.0.1 ..= 127.0.0.SOURCE_ADDRESSES, in turn.
const SOURCE_ADDRESSES: usize = 16;
/// Longest wait for one answer from a server.
const ANSWER: Duration = Duration::from_secs(30);

const SCENARIOS: [&str; 6] = ["chat", "paced", "idle", "churn", "fresh-ids", "many"];

/// How big each scenario runs.
struct Sizes {
    messages: usize,
    paced_messages: usize,
    idle: usize,
    churn: usize,
    fresh: usize,
    warm_up: usize,
    many: usize,
}

impl Sizes {
    fn full() -> Self {
        Self {
            messages: MESSAGES,
            paced_messages: PACED_MESSAGES,
            idle: IDLE_CONNECTIONS,
            churn: CHURN_USERS,
            fresh: FRESH_IDS,
            warm_up: WARM_UP,
            many: MANY_CONNECTIONS,
        }
    }

    fn smoke() -> Self {
        Self {
            messages: 50,
            paced_messages: 20,
            idle: 50,
            churn: 50,
            fresh: 100,
            warm_up: 10,
            many: 50,
        }
    }
}

struct Args {
    smoke: bool,
    /// `--size N`: N connections, users or cycles in every memory scenario.
    size: Option<usize>,
    scenarios: Vec<&'static str>,
    tidings_bin: String,
}

impl Args {
    fn parse() -> anyhow::Result<Self> {
        let usage = format!(
            "usage: bench [--smoke] [--size N] [--scenario NAME[,NAME...]] [TIDINGS_BINARY]\nscenarios: {} (default: all)",
            SCENARIOS.join(", ")
        );
        let mut smoke = false;
        let mut size = None;
        let mut names: Vec<String> = Vec::new();
        let mut bin = None;
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            if arg == "--smoke" {
                smoke = true;
            } else if arg == "--size" {
                let value = args
                    .next()
                    .and_then(|v| v.replace(['_', ' '], "").parse().ok())
                    .filter(|n| *n > 0)
                    .ok_or_else(|| anyhow::anyhow!("--size needs a number above 0\n{usage}"))?;
                size = Some(value);
            } else if arg == "--scenario" || arg == "--scenarios" {
                let value = args
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--scenario needs a value\n{usage}"))?;
                names.extend(value.split(',').map(str::to_owned));
            } else if let Some(value) = arg
                .strip_prefix("--scenario=")
                .or_else(|| arg.strip_prefix("--scenarios="))
            {
                names.extend(value.split(',').map(str::to_owned));
            } else if arg == "-h" || arg == "--help" {
                println!("{usage}");
                std::process::exit(0);
            } else if arg.starts_with('-') || bin.is_some() {
                anyhow::bail!("unexpected argument {arg:?}\n{usage}");
            } else {
                bin = Some(arg);
            }
        }
        let mut scenarios = Vec::new();
        for name in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
            let known = SCENARIOS
                .iter()
                .find(|s| **s == name)
                .ok_or_else(|| anyhow::anyhow!("unknown scenario {name:?}\n{usage}"))?;
            if !scenarios.contains(known) {
                scenarios.push(*known);
            }
        }
        if scenarios.is_empty() {
            scenarios = SCENARIOS.to_vec();
        }
        // Run in the order of SCENARIOS, whatever the order given.
        scenarios.sort_by_key(|s| SCENARIOS.iter().position(|k| k == s));
        Ok(Self {
            smoke,
            size,
            scenarios,
            tidings_bin: bin.unwrap_or_else(|| "target/release/tidings".into()),
        })
    }

    fn has(&self, scenario: &str) -> bool {
        self.scenarios.contains(&scenario)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse()?;
    let bin = args.tidings_bin.clone();
    let open_files = raise_open_files_limit();
    let mut sizes = if args.smoke {
        Sizes::smoke()
    } else {
        Sizes::full()
    };
    if let Some(n) = args.size {
        (sizes.idle, sizes.churn, sizes.fresh, sizes.many) = (n, n, n, n);
    }

    // Each connection is a descriptor in this process and one in the server.
    let mut notes = Vec::new();
    let fits = open_files.limit.saturating_sub(SPARE_FILES) as usize;
    for (name, n) in [("idle", &mut sizes.idle), ("many", &mut sizes.many)] {
        if args.has(name) && *n > fits {
            let reduced = if fits >= 10_000 {
                fits / 1_000 * 1_000
            } else {
                fits
            };
            notes.push(format!(
                "{name}: {} is {}, so {} connections instead of {}",
                open_files.describe(),
                open_files.limit,
                thousands(reduced),
                thousands(*n)
            ));
            *n = reduced.max(1);
        }
    }

    println!(
        "machine: {} CPUs ({}), {} {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model(),
        open_files.describe(),
        open_files.limit
    );
    let mut used = Vec::new();
    for s in &args.scenarios {
        used.push(match *s {
            "chat" => format!("chat {PAIRS} pairs × {} messages, flat out", sizes.messages),
            "paced" => format!(
                "paced {PAIRS} pairs × {} messages at {PACED_RATE} msg/s",
                sizes.paced_messages
            ),
            "idle" => format!("idle {} connections", thousands(sizes.idle)),
            "churn" => format!(
                "churn {} users (+{} warm-up)",
                thousands(sizes.churn),
                sizes.warm_up
            ),
            "fresh-ids" => format!(
                "fresh-ids {} cycles (+{} warm-up)",
                thousands(sizes.fresh),
                sizes.warm_up
            ),
            "many" => format!("many {} connections", thousands(sizes.many)),
            _ => unreachable!(),
        });
    }
    println!(
        "sizes{}: {}",
        if args.smoke { " (smoke)" } else { "" },
        used.join("; ")
    );
    for note in &notes {
        println!("note: {note}");
        eprintln!("note: {note}");
    }

    if args.has("chat") || args.has("paced") {
        chat(&args, &sizes, &bin).await?;
    }

    let mut rows = Vec::new();
    if args.has("idle") {
        idle(&bin, sizes.idle, &mut rows).await?;
    }
    if args.has("churn") {
        churn(&bin, sizes.churn, sizes.warm_up, &mut rows).await?;
    }
    if args.has("fresh-ids") {
        fresh_ids(&bin, sizes.fresh, sizes.warm_up, &mut rows).await?;
    }
    if args.has("many") {
        many(&bin, sizes.many, &mut rows).await?;
    }
    if !rows.is_empty() {
        print_table(&rows);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// chat and paced: throughput and latency

async fn chat(args: &Args, sizes: &Sizes, bin: &str) -> anyhow::Result<()> {
    println!("\n{PAIRS} sender→receiver pairs, QoS 1, {BODY} B bodies, window {WINDOW}");
    let (flat, paced) = (args.has("chat"), args.has("paced"));

    eprintln!("chat: mosquitto");
    let mosquitto = Broker::mosquitto()?;
    let target = Target::Mosquitto(mosquitto.addr);
    let mosquitto_flat = match flat {
        true => Some(run(&target, None, sizes.messages).await?),
        false => None,
    };
    let mosquitto_paced = match paced {
        true => Some(run(&target, Some(PACED_RATE), sizes.paced_messages).await?),
        false => None,
    };
    let mosquitto_rss = mosquitto.peak_rss_mib();
    drop(mosquitto);

    eprintln!("chat: tidings");
    let tidings = Broker::tidings(bin, 0)?;
    let users = tidings.login_many(PAIRS * 2, "chat").await?;
    let users = users
        .chunks(2)
        .map(|p| (p[0].clone(), p[1].clone()))
        .collect();
    let target = Target::Tidings(tidings.addr, users);
    let tidings_flat = match flat {
        true => Some(run(&target, None, sizes.messages).await?),
        false => None,
    };
    let tidings_paced = match paced {
        true => Some(run(&target, Some(PACED_RATE), sizes.paced_messages).await?),
        false => None,
    };
    let tidings_rss = tidings.peak_rss_mib();
    drop(tidings);

    for (title, base, ours) in [
        (
            format!("flat out, {} messages a pair", sizes.messages),
            &mosquitto_flat,
            &tidings_flat,
        ),
        (
            format!(
                "paced at {PACED_RATE} msg/s in all, {} a pair",
                sizes.paced_messages
            ),
            &mosquitto_paced,
            &tidings_paced,
        ),
    ] {
        let (Some(base), Some(ours)) = (base, ours) else {
            continue;
        };
        println!("\n{title}");
        println!(
            "{:<12} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "", "msg/s", "live", "p50 ms", "p99 ms", "max ms"
        );
        for (name, r) in [("mosquitto", base), ("tidings", ours)] {
            println!(
                "{name:<12} {:>10.0} {:>9.1}% {:>10.2} {:>10.2} {:>10.2}",
                r.throughput,
                r.delivered * 100.0,
                r.p50_ms,
                r.p99_ms,
                r.max_ms
            );
        }
        println!(
            "tidings / mosquitto: throughput ×{:.2}, p50 ×{:.2}, p99 ×{:.2}",
            ours.throughput / base.throughput,
            ours.p50_ms / base.p50_ms,
            ours.p99_ms / base.p99_ms
        );
    }
    println!("\npeak RSS: mosquitto {mosquitto_rss:.1} MiB, tidings {tidings_rss:.1} MiB");
    Ok(())
}

/// What to drive: a plain broker, or tidings with one (sender, receiver) login per pair.
enum Target {
    Mosquitto(SocketAddr),
    Tidings(SocketAddr, Vec<(Login, Login)>),
}

#[derive(Clone)]
struct Login {
    user_id: String,
    token: String,
}

struct Figures {
    /// The share of messages delivered live over MQTT.
    delivered: f64,
    /// Messages delivered per second.
    throughput: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

/// One phase: `messages` per pair, as fast as possible or at `rate` messages/s in all.
async fn run(target: &Target, rate: Option<f64>, messages: usize) -> anyhow::Result<Figures> {
    static PHASE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let phase = PHASE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(PAIRS * messages)));
    let last_arrival = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let epoch = Instant::now();
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for pair in 0..PAIRS {
        let (addr, sender, receiver, topic_out, topic_in) = match target {
            Target::Mosquitto(addr) => {
                let topic = format!("bench/{pair}");
                (*addr, None, None, topic.clone(), topic)
            }
            Target::Tidings(addr, users) => {
                let (s, r) = &users[pair];
                let out = format!("users/{}/outbox", s.user_id);
                let inbox = format!("users/{}/inbox", r.user_id);
                (*addr, Some(s.clone()), Some(r.clone()), out, inbox)
            }
        };
        let (rx_client, mut rx_loop) = client(addr, &format!("rx-{pair}"), receiver.as_ref());
        rx_client.subscribe(&topic_in, QoS::AtLeastOnce).await?;
        loop {
            if let Event::Incoming(Packet::SubAck(_)) = rx_loop.poll().await? {
                break;
            }
        }
        let latencies = latencies.clone();
        let last_arrival = last_arrival.clone();
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = seen.clone();
        receivers.push((
            seen,
            tokio::spawn(async move {
                let seen = counter;
                // Until all arrived, or none for a while: a receiver that falls further behind
                // than the broker's buffer skips events (an app fills them from history).
                while seen.load(std::sync::atomic::Ordering::Relaxed) < messages {
                    let Ok(polled) = tokio::time::timeout(IDLE, rx_loop.poll()).await else {
                        break;
                    };
                    if let Ok(Event::Incoming(Packet::Publish(p))) = polled {
                        let sent_us = sent_micros(&p.payload);
                        let now_us = epoch.elapsed().as_micros() as u64;
                        latencies
                            .lock()
                            .unwrap()
                            .push(now_us.saturating_sub(sent_us));
                        last_arrival.fetch_max(now_us, std::sync::atomic::Ordering::Relaxed);
                        seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                drop(rx_client);
            }),
        ));
        let recipient = receiver.map(|r| r.user_id);
        let (tx_client, mut tx_loop) = client(addr, &format!("tx-{pair}"), sender.as_ref());
        senders.push(tokio::spawn(async move {
            let acks = tokio::spawn(async move { while tx_loop.poll().await.is_ok() {} });
            let mut pace = rate.map(|r| tokio::time::interval(Duration::from_secs_f64(PAIRS as f64 / r)));
            for i in 0..messages {
                if let Some(pace) = pace.as_mut() {
                    pace.tick().await;
                }
                let stamp = format!("{:020}", epoch.elapsed().as_micros());
                let body = format!("{stamp}{}", "x".repeat(BODY - stamp.len()));
                let payload = match &recipient {
                    Some(to) => serde_json::json!({"type": "send", "to": to, "body": body, "client_msg_id": format!("p{phase}-{pair}-{i}")}).to_string(),
                    None => serde_json::json!({"body": body}).to_string(),
                };
                tx_client.publish(&topic_out, QoS::AtLeastOnce, false, payload).await.unwrap();
            }
            (tx_client, acks)
        }));
    }
    let started_us = epoch.elapsed().as_micros() as u64;
    let mut keep = Vec::new();
    for s in senders {
        keep.push(s.await?);
    }
    let name = match target {
        Target::Mosquitto(_) => "mosquitto",
        Target::Tidings(..) => "tidings",
    };
    for (_, r) in receivers {
        if tokio::time::timeout(Duration::from_secs(300), r)
            .await
            .is_err()
        {
            anyhow::bail!("{name}, phase {phase}: a receiver is stuck");
        }
    }
    let elapsed =
        (last_arrival.load(std::sync::atomic::Ordering::Relaxed) - started_us) as f64 / 1e6;
    drop(keep);
    let mut lat = latencies.lock().unwrap().clone();
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] as f64 / 1000.0;
    Ok(Figures {
        delivered: lat.len() as f64 / (PAIRS * messages) as f64,
        throughput: lat.len() as f64 / elapsed,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_ms: *lat.last().unwrap() as f64 / 1000.0,
    })
}

/// The send time the sender wrote at the start of the body.
fn sent_micros(payload: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(payload);
    let at = text.find("\"body\":\"").map_or(0, |i| i + 8);
    text.get(at..at + 20)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn client(addr: SocketAddr, id: &str, login: Option<&Login>) -> (AsyncClient, rumqttc::EventLoop) {
    let mut options = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(60));
    options.set_inflight(WINDOW as u16);
    if let Some(login) = login {
        options.set_credentials(&login.user_id, &login.token);
    }
    AsyncClient::new(options, WINDOW)
}

// ---------------------------------------------------------------------------------------------
// Memory scenarios

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Mosquitto,
    Tidings,
}

impl Kind {
    const BOTH: [Kind; 2] = [Kind::Mosquitto, Kind::Tidings];

    fn name(self) -> &'static str {
        match self {
            Kind::Mosquitto => "mosquitto",
            Kind::Tidings => "tidings",
        }
    }

    /// A fresh server of this kind, for up to `connections` MQTT connections.
    fn start(self, bin: &str, connections: usize) -> anyhow::Result<Broker> {
        match self {
            Kind::Mosquitto => Broker::mosquitto(),
            Kind::Tidings => Broker::tidings(bin, connections),
        }
    }
}

/// One line of the memory table. Figures are (mosquitto, tidings).
struct Row {
    scenario: &'static str,
    measure: String,
    mosquitto: Option<f64>,
    tidings: Option<f64>,
    decimals: usize,
    /// Whether tidings / mosquitto means something for this measure.
    ratio: bool,
}

impl Row {
    fn new(scenario: &'static str, measure: impl Into<String>, figures: [Option<f64>; 2]) -> Self {
        Self {
            scenario,
            measure: measure.into(),
            mosquitto: figures[0],
            tidings: figures[1],
            decimals: 1,
            ratio: true,
        }
    }

    fn decimals(mut self, decimals: usize) -> Self {
        self.decimals = decimals;
        self
    }

    fn no_ratio(mut self) -> Self {
        self.ratio = false;
        self
    }
}

fn print_table(rows: &[Row]) {
    let measure_width = rows
        .iter()
        .map(|r| r.measure.chars().count())
        .max()
        .unwrap_or(0);
    println!("\nmemory (server RSS from /proc/PID/status; MiB = 1024 KiB)");
    println!(
        "{:<10} | {:<measure_width$} | {:>10} | {:>10} | {:>8}",
        "scenario", "measure", "tidings", "mosquitto", "ratio"
    );
    println!(
        "{}-|-{}-|-{}-|-{}-|-{}",
        "-".repeat(10),
        "-".repeat(measure_width),
        "-".repeat(10),
        "-".repeat(10),
        "-".repeat(8)
    );
    let show = |v: Option<f64>, d: usize| v.map_or("—".to_owned(), |v| format!("{v:.d$}"));
    for r in rows {
        let ratio = match (r.ratio, r.tidings, r.mosquitto) {
            // Not against a figure that shows as 0 (noise) or below.
            (true, Some(t), Some(m)) if m >= 0.5 / 10f64.powi(r.decimals as i32) && t >= 0.0 => {
                format!("×{:.2}", t / m)
            }
            _ => "—".to_owned(),
        };
        println!(
            "{:<10} | {:<measure_width$} | {:>10} | {:>10} | {:>8}",
            r.scenario,
            r.measure,
            show(r.tidings, r.decimals),
            show(r.mosquitto, r.decimals),
            ratio
        );
    }
}

fn mib(kib: i64) -> f64 {
    kib as f64 / 1024.0
}

/// Who connects in a memory scenario: a tidings user (its own inbox, client id "bench"), or an
/// anonymous Mosquitto client (topic `bench/{name}`, client id `c-{name}`).
#[derive(Clone)]
enum Who {
    User(Login),
    Anon(String),
}

impl Who {
    /// `n` clients for `broker`: logged in over HTTP for tidings.
    async fn many(broker: &Broker, n: usize, tag: &str) -> anyhow::Result<Vec<Who>> {
        Ok(match broker.kind {
            Kind::Tidings => broker
                .login_many(n, tag)
                .await?
                .into_iter()
                .map(Who::User)
                .collect(),
            Kind::Mosquitto => (0..n).map(|i| Who::Anon(format!("{tag}{i}"))).collect(),
        })
    }

    fn client_id(&self) -> String {
        match self {
            Who::User(_) => "bench".into(),
            Who::Anon(name) => format!("c-{name}"),
        }
    }

    fn login(&self) -> Option<&Login> {
        match self {
            Who::User(login) => Some(login),
            Who::Anon(_) => None,
        }
    }

    fn topic(&self) -> String {
        match self {
            Who::User(login) => format!("users/{}/inbox", login.user_id),
            Who::Anon(name) => format!("bench/{name}"),
        }
    }

    /// Connects with `client_id`, or [`Who::client_id`], and subscribes (QoS 1).
    async fn connect(&self, addr: SocketAddr, client_id: Option<&str>) -> anyhow::Result<Raw> {
        let id = client_id.map_or_else(|| self.client_id(), str::to_owned);
        let mut raw = Raw::open(addr, &id, self.login())
            .await
            .context("CONNECT")?
            .map_err(|code| anyhow::anyhow!("CONNACK {code:?}"))?;
        raw.subscribe(&self.topic()).await.context("SUBSCRIBE")?;
        Ok(raw)
    }
}

/// Connects and subscribes `n` clients and keeps them: RSS before and after, and the time it took.
struct Held {
    before_kib: i64,
    after_kib: i64,
    connect_secs: f64,
}

async fn hold(kind: Kind, bin: &str, n: usize, scenario: &str) -> anyhow::Result<Held> {
    let label = format!("{scenario}: {}", kind.name());
    eprintln!("{label}: starting, {} connections", thousands(n));
    let broker = kind.start(bin, n)?;
    let clients = Arc::new(Who::many(&broker, n, scenario).await?);
    tokio::time::sleep(SETTLE).await;
    let before_kib = broker.rss_kib()?;
    let started = Instant::now();
    let addr = broker.addr;
    let held = concurrently(
        &format!("{label}: connect+subscribe"),
        n,
        CONNECTS_IN_FLIGHT,
        move |i| {
            let clients = clients.clone();
            async move { clients[i].connect(addr, None).await }
        },
    )
    .await?;
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(SETTLE).await;
    let after_kib = broker.rss_kib()?;
    drop(held);
    drop(broker);
    Ok(Held {
        before_kib,
        after_kib,
        connect_secs,
    })
}

async fn idle(bin: &str, n: usize, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let mut held = Vec::new();
    for kind in Kind::BOTH {
        held.push(hold(kind, bin, n, "idle").await?);
    }
    let each = |f: &dyn Fn(&Held) -> f64| [Some(f(&held[0])), Some(f(&held[1]))];
    let n_text = thousands(n);
    rows.push(Row::new(
        "idle",
        "RSS before connecting (MiB)",
        each(&|h| mib(h.before_kib)),
    ));
    rows.push(Row::new(
        "idle",
        format!("RSS with {n_text} connected (MiB)"),
        each(&|h| mib(h.after_kib)),
    ));
    rows.push(
        Row::new(
            "idle",
            "RSS per connection (KiB)",
            each(&|h| (h.after_kib - h.before_kib) as f64 / n as f64),
        )
        .decimals(2),
    );
    Ok(())
}

async fn many(bin: &str, n: usize, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let mut held = Vec::new();
    for kind in Kind::BOTH {
        held.push(hold(kind, bin, n, "many").await?);
    }
    let each = |f: &dyn Fn(&Held) -> f64| [Some(f(&held[0])), Some(f(&held[1]))];
    let n_text = thousands(n);
    rows.push(
        Row::new(
            "many",
            format!("time to connect+subscribe {n_text} (s)"),
            each(&|h| h.connect_secs),
        )
        .decimals(2),
    );
    rows.push(Row::new(
        "many",
        format!("RSS with {n_text} connected (MiB)"),
        each(&|h| mib(h.after_kib)),
    ));
    rows.push(
        Row::new(
            "many",
            "RSS per connection (KiB)",
            each(&|h| (h.after_kib - h.before_kib) as f64 / n as f64),
        )
        .decimals(2),
    );
    Ok(())
}

/// `who` connects, subscribes, gets one message from `sender`, acknowledges it and leaves.
async fn visit(
    addr: SocketAddr,
    who: &Who,
    sender: &Publisher,
    client_msg_id: &str,
) -> anyhow::Result<()> {
    let mut raw = who.connect(addr, None).await?;
    sender.send(who, client_msg_id).await?;
    let received = match tokio::time::timeout(ANSWER, raw.receive()).await {
        Ok(received) => received,
        Err(_) => Err(anyhow::anyhow!("no message within {ANSWER:?}")),
    };
    let publish = received.map_err(|e| {
        let stored = match sender.user {
            Some(_) if sender.has_confirmed(client_msg_id) => {
                ": the sender got its message event, so it is stored"
            }
            Some(_) => ": the sender did not get its message event either",
            None => "",
        };
        e.context(format!("waiting for message {client_msg_id}{stored}"))
    })?;
    if who.login().is_some() {
        let event: serde_json::Value = serde_json::from_slice(&publish).unwrap_or_default();
        if event["type"] != "message" {
            anyhow::bail!("expected a message event, got {event}");
        }
    }
    raw.close().await;
    Ok(())
}

/// Visits by `visitors`, `CHURN_IN_FLIGHT` at a time.
async fn visits(
    label: &str,
    addr: SocketAddr,
    visitors: Vec<Who>,
    sender: &Arc<Publisher>,
    tag: &str,
) -> anyhow::Result<()> {
    let visitors = Arc::new(visitors);
    let (sender, tag) = (sender.clone(), tag.to_owned());
    concurrently(label, visitors.len(), CHURN_IN_FLIGHT, move |i| {
        let (visitors, sender) = (visitors.clone(), sender.clone());
        let client_msg_id = format!("{tag}{i}");
        async move { visit(addr, &visitors[i], &sender, &client_msg_id).await }
    })
    .await?;
    Ok(())
}

async fn churn(bin: &str, n: usize, warm_up: usize, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    // mosquitto: warm-up, then n visits.
    let label = "churn: mosquitto";
    eprintln!("{label}: starting, {} visits", thousands(n));
    let broker = Kind::Mosquitto.start(bin, 0)?;
    let sender = Arc::new(Publisher::connect(broker.addr, None).await?);
    let warm = Who::many(&broker, warm_up, "w").await?;
    visits(
        &format!("{label}: warm-up"),
        broker.addr,
        warm,
        &sender,
        "w",
    )
    .await?;
    let visitors = Who::many(&broker, n, "v").await?;
    tokio::time::sleep(SETTLE).await;
    let m_before = broker.rss_kib()?;
    visits(
        &format!("{label}: visits"),
        broker.addr,
        visitors,
        &sender,
        "v",
    )
    .await?;
    tokio::time::sleep(SETTLE).await;
    let m_after = broker.rss_kib()?;
    drop(sender);
    drop(broker);

    // tidings: the sender, warm-up visitors, set A (offline, control) and set B (visitors).
    let label = "churn: tidings";
    eprintln!("{label}: starting, {} visits", thousands(n));
    // The store's page cache bounded (and filled by the control phase below), so that what the
    // visits add is theirs and not the store's cache growing with the data.
    let cache = [(
        "TIDINGS_STORAGE__CACHE_BYTES",
        CHURN_STORE_CACHE.to_string(),
    )];
    let broker = Broker::tidings_with(bin, 0, &cache)?;
    let mut users = Who::many(&broker, 1 + warm_up + 2 * n, "churn").await?;
    let set_b = users.split_off(1 + warm_up + n);
    let set_a = users.split_off(1 + warm_up);
    let warm = users.split_off(1);
    let Who::User(sender_login) = &users[0] else {
        unreachable!("tidings clients are users")
    };
    let sender = Arc::new(Publisher::connect(broker.addr, Some(sender_login)).await?);
    visits(
        &format!("{label}: warm-up"),
        broker.addr,
        warm,
        &sender,
        "w",
    )
    .await?;
    sender.wait_confirmed(warm_up).await?;
    tokio::time::sleep(SETTLE).await;
    let rss0 = broker.rss_kib()?;
    // Control: the same writes to the store, to users who are offline.
    eprintln!(
        "{label}: control, {} messages to offline users",
        thousands(n)
    );
    let control_started = Instant::now();
    for (i, who) in set_a.iter().enumerate() {
        sender.wait_window(warm_up + i).await?;
        sender.send(who, &format!("a{i}")).await?;
    }
    sender.wait_confirmed(warm_up + n).await?;
    eprintln!(
        "{label}: control: {n}/{n} stored in {:.1} s",
        control_started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(SETTLE).await;
    let rss1 = broker.rss_kib()?;
    visits(
        &format!("{label}: visits"),
        broker.addr,
        set_b,
        &sender,
        "b",
    )
    .await?;
    sender.wait_confirmed(warm_up + 2 * n).await?;
    tokio::time::sleep(SETTLE).await;
    let rss2 = broker.rss_kib()?;
    let refused = sender.refused.load(Ordering::Relaxed);
    if refused > 0 {
        eprintln!("{label}: {refused} sends refused with an error event");
    }
    drop(sender);
    drop(broker);

    let n_text = thousands(n);
    rows.push(
        Row::new(
            "churn",
            "RSS after warm-up (MiB)",
            [Some(mib(m_before)), Some(mib(rss0))],
        )
        .no_ratio(),
    );
    rows.push(
        Row::new(
            "churn",
            "tidings' store cache, storage.cache_bytes (MiB)",
            [None, Some(CHURN_STORE_CACHE as f64 / (1024.0 * 1024.0))],
        )
        .no_ratio(),
    );
    rows.push(
        Row::new(
            "churn",
            format!("store share: {n_text} sends to offline users (MiB)"),
            [None, Some(mib(rss1 - rss0))],
        )
        .no_ratio(),
    );
    rows.push(Row::new(
        "churn",
        "RSS before the visits (MiB)",
        [Some(mib(m_before)), Some(mib(rss1))],
    ));
    rows.push(Row::new(
        "churn",
        format!("growth over {n_text} visits (MiB)"),
        [Some(mib(m_after - m_before)), Some(mib(rss2 - rss1))],
    ));
    rows.push(
        Row::new(
            "churn",
            "growth over the visits (% of RSS before)",
            [
                Some((m_after - m_before) as f64 * 100.0 / m_before as f64),
                Some((rss2 - rss1) as f64 * 100.0 / rss1 as f64),
            ],
        )
        .no_ratio(),
    );
    Ok(())
}

async fn fresh_ids(
    bin: &str,
    cycles: usize,
    warm_up: usize,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let mut figures = Vec::new();
    for kind in Kind::BOTH {
        let label = format!("fresh-ids: {}", kind.name());
        eprintln!("{label}: starting, {} cycles", thousands(cycles));
        let broker = kind.start(bin, 0)?;
        let who = Arc::new(Who::many(&broker, 1, "fresh-ids").await?.remove(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let addr = broker.addr;
        let cycle = {
            let refused = refused.clone();
            move |i: usize| {
                let (who, refused) = (who.clone(), refused.clone());
                async move {
                    // The longest client id tidings allows, new each time.
                    let id = format!("{i:0128}");
                    let mut raw = loop {
                        match Raw::open(addr, &id, who.login()).await? {
                            Ok(raw) => break raw,
                            // The per-user cap, while a connection that just said DISCONNECT
                            // is still counted: try again.
                            Err(wire::ConnectReturnCode::ServiceUnavailable) => {
                                refused.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                            Err(code) => anyhow::bail!("CONNACK {code:?}"),
                        }
                    };
                    raw.subscribe(&who.topic()).await?;
                    raw.close().await;
                    Ok(())
                }
            }
        };
        let cycle = Arc::new(cycle);
        let warm = cycle.clone();
        concurrently(
            &format!("{label}: warm-up"),
            warm_up,
            PER_USER_CAP,
            move |i| warm(i),
        )
        .await?;
        tokio::time::sleep(SETTLE).await;
        let before = broker.rss_kib()?;
        concurrently(
            &format!("{label}: cycles"),
            cycles,
            PER_USER_CAP,
            move |i| cycle(warm_up + i),
        )
        .await?;
        tokio::time::sleep(SETTLE).await;
        let after = broker.rss_kib()?;
        let refused = refused.load(Ordering::Relaxed);
        if refused > 0 {
            eprintln!("{label}: {refused} CONNACK 3 (per-user cap) retried");
        }
        figures.push((before, after));
    }
    let each = |f: &dyn Fn(i64, i64) -> f64| {
        [
            Some(f(figures[0].0, figures[0].1)),
            Some(f(figures[1].0, figures[1].1)),
        ]
    };
    rows.push(Row::new(
        "fresh-ids",
        "RSS after warm-up (MiB)",
        each(&|b, _| mib(b)),
    ));
    rows.push(Row::new(
        "fresh-ids",
        format!("growth over {} fresh client ids (MiB)", thousands(cycles)),
        each(&|b, a| mib(a - b)),
    ));
    Ok(())
}

/// The sender of `churn`: a rumqttc client. For tidings it is a user subscribed to its own
/// inbox, where the `message` event of each of its sends comes back once stored (counted in
/// `confirmed`); for Mosquitto it publishes straight to the receiver's topic.
struct Publisher {
    client: AsyncClient,
    /// tidings: the sender's user id.
    user: Option<String>,
    body: String,
    confirmed: Arc<AtomicUsize>,
    /// The client_msg_ids of the message events that came back (tidings).
    confirmed_ids: Arc<Mutex<std::collections::HashSet<String>>>,
    refused: Arc<AtomicUsize>,
    failed: Arc<AtomicBool>,
    notify: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    async fn connect(addr: SocketAddr, login: Option<&Login>) -> anyhow::Result<Self> {
        let (client, mut eventloop) = client(addr, "sender", login);
        let user = login.map(|l| l.user_id.clone());
        if let Some(user) = &user {
            client
                .subscribe(format!("users/{user}/inbox"), QoS::AtLeastOnce)
                .await?;
        }
        loop {
            match tokio::time::timeout(ANSWER, eventloop.poll()).await?? {
                Event::Incoming(Packet::SubAck(_)) => break,
                Event::Incoming(Packet::ConnAck(_)) if user.is_none() => break,
                _ => {}
            }
        }
        let confirmed = Arc::new(AtomicUsize::new(0));
        let confirmed_ids: Arc<Mutex<std::collections::HashSet<String>>> = Arc::default();
        let refused = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicBool::new(false));
        let notify = Arc::new(Notify::new());
        let task = tokio::spawn({
            let (confirmed, confirmed_ids, refused, failed, notify) = (
                confirmed.clone(),
                confirmed_ids.clone(),
                refused.clone(),
                failed.clone(),
                notify.clone(),
            );
            let user = user.clone();
            async move {
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            let event: serde_json::Value =
                                serde_json::from_slice(&p.payload).unwrap_or_default();
                            match event["type"].as_str() {
                                Some("message") if event["from"].as_str() == user.as_deref() => {
                                    if let Some(id) = event["client_msg_id"].as_str() {
                                        confirmed_ids.lock().unwrap().insert(id.to_owned());
                                    }
                                    confirmed.fetch_add(1, Ordering::Relaxed);
                                }
                                Some("error") => {
                                    let before = refused.fetch_add(1, Ordering::Relaxed);
                                    if before < 5 {
                                        eprintln!("sender: refused: {event}");
                                    }
                                }
                                _ => {}
                            }
                            notify.notify_waiters();
                        }
                        Ok(_) => {}
                        Err(e) => {
                            eprintln!("sender: connection lost: {e}");
                            failed.store(true, Ordering::Relaxed);
                            notify.notify_waiters();
                            break;
                        }
                    }
                }
            }
        });
        Ok(Self {
            client,
            user,
            body: "x".repeat(BODY),
            confirmed,
            confirmed_ids,
            refused,
            failed,
            notify,
            task,
        })
    }

    /// One message to `to`: a `send` command for tidings, a publish to its topic for Mosquitto.
    async fn send(&self, to: &Who, client_msg_id: &str) -> anyhow::Result<()> {
        let (topic, payload) = match (&self.user, to) {
            (Some(user), Who::User(login)) => (
                format!("users/{user}/outbox"),
                serde_json::json!({"type": "send", "to": login.user_id, "body": self.body, "client_msg_id": client_msg_id}),
            ),
            _ => (
                to.topic(),
                serde_json::json!({"body": self.body, "client_msg_id": client_msg_id}),
            ),
        };
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.to_string())
            .await?;
        Ok(())
    }

    fn has_confirmed(&self, client_msg_id: &str) -> bool {
        self.confirmed_ids.lock().unwrap().contains(client_msg_id)
    }

    /// Waits until `sent` sends leave fewer than `WINDOW` unconfirmed: tidings keeps a bounded
    /// buffer per inbox, and a sender that ran far ahead would miss its own confirmations.
    async fn wait_window(&self, sent: usize) -> anyhow::Result<()> {
        self.wait_until(sent.saturating_sub(WINDOW - 1)).await
    }

    /// Waits until `total` sends are confirmed (tidings; at once for Mosquitto).
    async fn wait_confirmed(&self, total: usize) -> anyhow::Result<()> {
        self.wait_until(total).await
    }

    async fn wait_until(&self, total: usize) -> anyhow::Result<()> {
        if self.user.is_none() {
            return Ok(());
        }
        loop {
            let notified = self.notify.notified();
            let done =
                self.confirmed.load(Ordering::Relaxed) + self.refused.load(Ordering::Relaxed);
            if done >= total {
                return Ok(());
            }
            if self.failed.load(Ordering::Relaxed) {
                anyhow::bail!("the sender's connection is lost");
            }
            if tokio::time::timeout(ANSWER, notified).await.is_err() {
                anyhow::bail!(
                    "the sender waits for its message events: {done} of {total} after {ANSWER:?} without one"
                );
            }
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs `f(0)` .. `f(n - 1)`, `width` at a time, and returns their results in order; the first
/// error stops all. Progress goes to stderr every few seconds under `label`.
async fn concurrently<T, F, Fut>(
    label: &str,
    n: usize,
    width: usize,
    f: F,
) -> anyhow::Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<T>> + Send + 'static,
{
    let started = Instant::now();
    let f = Arc::new(f);
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let ticker = tokio::spawn({
        let (label, done) = (label.to_owned(), done.clone());
        async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                eprintln!(
                    "{label}: {}/{n} after {:.0} s",
                    done.load(Ordering::Relaxed),
                    started.elapsed().as_secs_f64()
                );
            }
        }
    });
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..width.min(n) {
        let (f, next, done) = (f.clone(), next.clone(), done.clone());
        workers.spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                out.push((i, f(i).await.map_err(|e| e.context(format!("#{i}")))?));
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(out)
        });
    }
    let mut all = Vec::with_capacity(n);
    let mut failure = None;
    while let Some(joined) = workers.join_next().await {
        match joined.map_err(anyhow::Error::from).and_then(|r| r) {
            Ok(out) => all.extend(out),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    ticker.abort();
    if let Some(e) = failure {
        return Err(e.context(label.to_owned()));
    }
    eprintln!(
        "{label}: {n}/{n} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    all.sort_unstable_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, t)| t).collect())
}

/// A minimal MQTT 3.1.1 client on a socket, with rumqttc's codec: cheap enough for tens of
/// thousands of connections in one process.
struct Raw {
    stream: tokio::net::TcpStream,
    buf: BytesMut,
}

impl Raw {
    /// Connects (keep-alive off, clean session) from the next loopback source address; the
    /// CONNACK's code when the server refused.
    async fn open(
        server: SocketAddr,
        client_id: &str,
        login: Option<&Login>,
    ) -> anyhow::Result<Result<Self, wire::ConnectReturnCode>> {
        static NEXT_SOURCE: AtomicUsize = AtomicUsize::new(0);
        let source = NEXT_SOURCE.fetch_add(1, Ordering::Relaxed) % SOURCE_ADDRESSES;
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from((
            Ipv4Addr::new(127, 0, 0, 1 + source as u8),
            0,
        )))?;
        let stream = tokio::time::timeout(ANSWER, socket.connect(server)).await??;
        stream.set_nodelay(true)?;
        let mut raw = Self {
            stream,
            buf: BytesMut::with_capacity(256),
        };
        let mut connect = wire::Connect::new(client_id);
        connect.keep_alive = 0;
        connect.clean_session = true;
        if let Some(login) = login {
            connect.set_login(&login.user_id, &login.token);
        }
        raw.send(|out| connect.write(out)).await?;
        match raw.next().await? {
            wire::Packet::ConnAck(ack) if ack.code == wire::ConnectReturnCode::Success => {
                Ok(Ok(raw))
            }
            wire::Packet::ConnAck(ack) => Ok(Err(ack.code)),
            other => anyhow::bail!("expected CONNACK, got {other:?}"),
        }
    }

    /// Subscribes to `topic` at QoS 1 and waits for a SUBACK that grants it.
    async fn subscribe(&mut self, topic: &str) -> anyhow::Result<()> {
        let mut subscribe = wire::Subscribe::new(topic, QoS::AtLeastOnce);
        subscribe.pkid = 1;
        self.send(|out| subscribe.write(out)).await?;
        loop {
            if let wire::Packet::SubAck(ack) = self.next().await? {
                return match ack.return_codes.first() {
                    Some(wire::SubscribeReasonCode::Success(_)) => Ok(()),
                    other => anyhow::bail!("SUBACK {other:?} for {topic}"),
                };
            }
        }
    }

    /// The payload of the next PUBLISH, acknowledged (QoS 1).
    async fn receive(&mut self) -> anyhow::Result<bytes::Bytes> {
        loop {
            if let wire::Packet::Publish(publish) = self.next().await? {
                if publish.qos == QoS::AtLeastOnce {
                    let ack = wire::PubAck::new(publish.pkid);
                    self.send(|out| ack.write(out)).await?;
                }
                return Ok(publish.payload);
            }
        }
    }

    /// DISCONNECT, then waits (briefly) for the server to close the connection.
    async fn close(mut self) {
        if self.send(|out| wire::Disconnect.write(out)).await.is_err() {
            return;
        }
        let _ = self.stream.shutdown().await;
        let mut sink = [0u8; 256];
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while matches!(self.stream.read(&mut sink).await, Ok(1..)) {}
        })
        .await;
    }

    async fn send(
        &mut self,
        encode: impl FnOnce(&mut BytesMut) -> Result<usize, rumqttc::mqttbytes::Error>,
    ) -> anyhow::Result<()> {
        let mut out = BytesMut::new();
        encode(&mut out)?;
        self.stream.write_all(&out).await?;
        Ok(())
    }

    async fn next(&mut self) -> anyhow::Result<wire::Packet> {
        loop {
            match wire::Packet::read(&mut self.buf, 1024 * 1024) {
                Ok(packet) => return Ok(packet),
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => anyhow::bail!("bad packet from the server: {e}"),
            }
            let read = tokio::time::timeout(ANSWER, self.stream.read_buf(&mut self.buf))
                .await
                .map_err(|_| anyhow::anyhow!("no answer from the server within {ANSWER:?}"))??;
            if read == 0 {
                anyhow::bail!("the server closed the connection");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The servers

/// A broker process, killed on drop.
struct Broker {
    kind: Kind,
    addr: SocketAddr,
    http: Option<SocketAddr>,
    /// Login codes read from the console email log, by address (tidings).
    codes: Arc<Mutex<HashMap<String, String>>>,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Broker {
    /// Mosquitto without persistence, without its default cap of 1000 queued messages a
    /// client (past which it drops QoS 1 messages for a slow receiver), and with TCP_NODELAY as
    /// tidings has it (Mosquitto's default leaves Nagle on, which added ~10 ms to its latency
    /// here).
    fn mosquitto() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(&conf, format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\nset_tcp_nodelay true\n"))?;
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stderr(Stdio::null())
            .spawn()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        while std::net::TcpStream::connect(addr).is_err() {
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self {
            kind: Kind::Mosquitto,
            addr,
            http: None,
            codes: Arc::default(),
            child,
            _dir: dir,
        })
    }

    /// tidings with its own temporary store, limits off, for `connections` MQTT connections
    /// (its default cap when fewer). Its warnings and errors are echoed to stderr.
    fn tidings(bin: &str, connections: usize) -> anyhow::Result<Self> {
        Self::tidings_with(bin, connections, &[])
    }

    /// As [`Broker::tidings`], with more `TIDINGS_*` settings.
    fn tidings_with(bin: &str, connections: usize, env: &[(&str, String)]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut child = Command::new(bin);
        child.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        let mut child = child
            .arg("--config")
            .arg(dir.path().join("none.toml"))
            .env("TIDINGS_HTTP__LISTEN", "127.0.0.1:0")
            .env("TIDINGS_MQTT__LISTEN", "127.0.0.1:0")
            .env("TIDINGS_STORAGE__PATH", dir.path().join("data"))
            .env(
                "TIDINGS_MQTT__MAX_CONNECTIONS",
                (connections + 100).max(100_000).to_string(),
            )
            .env(
                "TIDINGS_MQTT__MAX_CONNECTIONS_PER_USER",
                PER_USER_CAP.to_string(),
            )
            // Logging in tens of thousands of users takes minutes: no token may expire before
            // its connection is made (tidings closes a connection when its token expires).
            .env("TIDINGS_AUTH__ACCESS_TTL_SECS", "86400")
            .env("TIDINGS_LIMITS__OTP_RESEND_SECS", "0")
            .env("TIDINGS_LIMITS__OTP_PER_IDENTITY_PER_HOUR", "0")
            .env("TIDINGS_LIMITS__OTP_PER_IP_PER_HOUR", "0")
            .env("TIDINGS_LIMITS__SENDS_PER_USER_PER_MINUTE", "0")
            .env("RUST_LOG", "warn,tidings=info")
            .stderr(Stdio::piped())
            .spawn()?;
        let codes: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().expect("piped");
        let found = codes.clone();
        std::thread::spawn(move || {
            const ECHOED: usize = 3;
            let mut echoed: HashMap<String, usize> = HashMap::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("tidings ready") {
                    let _ = ready_tx.send(line.clone());
                }
                if line.contains(" WARN ") || line.contains(" ERROR ") {
                    // The first few of each kind (the line without its time and numbers).
                    let kind: String = line
                        .split_once(' ')
                        .map_or(line.as_str(), |(_, rest)| rest)
                        .chars()
                        .filter(|c| !c.is_ascii_digit())
                        .collect();
                    let count = echoed.entry(kind).or_insert(0);
                    *count += 1;
                    if *count <= ECHOED {
                        eprintln!("  tidings: {line}");
                    }
                    if *count == ECHOED {
                        eprintln!("  tidings: (more lines like this one are not shown)");
                    }
                }
                // "email to ADDRESS: SUBJECT: Your tidings code is 123456. ..."
                if let Some(rest) = line.split("email to ").nth(1) {
                    let address = rest.split(':').next().unwrap_or_default();
                    let code = rest.split("code is ").nth(1).and_then(|c| c.get(..6));
                    if let Some(code) = code {
                        found
                            .lock()
                            .unwrap()
                            .insert(address.to_owned(), code.to_owned());
                    }
                }
            }
        });
        let ready = ready_rx.recv_timeout(Duration::from_secs(30))?;
        let field = |key: &str| -> anyhow::Result<SocketAddr> {
            let value = ready
                .split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .ok_or_else(|| anyhow::anyhow!("no {key}"))?;
            Ok(value.parse()?)
        };
        Ok(Self {
            kind: Kind::Tidings,
            addr: field("mqtt=")?,
            http: Some(field("http=")?),
            codes,
            child,
            _dir: dir,
        })
    }

    /// Logs in `n` distinct users over HTTP (`{tag}{i}@bench.test`), `LOGINS_IN_FLIGHT` at a
    /// time, reading the codes from the console email log.
    async fn login_many(&self, n: usize, tag: &str) -> anyhow::Result<Vec<Login>> {
        let http = reqwest::Client::new();
        let base = format!("http://{}", self.http.expect("tidings has HTTP"));
        let codes = self.codes.clone();
        let tag = tag.to_lowercase();
        concurrently(&format!("{tag}: log in"), n, LOGINS_IN_FLIGHT, move |i| {
            let (http, base, codes) = (http.clone(), base.clone(), codes.clone());
            let email = format!("{tag}{i}@bench.test");
            async move { login(&http, &base, &codes, &email).await }
        })
        .await
    }

    /// The process's resident memory (VmRSS), in KiB.
    fn rss_kib(&self) -> anyhow::Result<i64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| anyhow::anyhow!("{} has exited (no VmRSS)", self.kind.name()))
    }

    /// The process's peak resident memory (VmHWM), in MiB.
    fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kib| kib / 1024.0)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One email login: request a code, take it from the log, verify it.
async fn login(
    http: &reqwest::Client,
    base: &str,
    codes: &Mutex<HashMap<String, String>>,
    email: &str,
) -> anyhow::Result<Login> {
    http.post(format!("{base}/v1/auth/otp"))
        .json(&serde_json::json!({"email": email}))
        .send()
        .await?
        .error_for_status()?;
    let deadline = Instant::now() + ANSWER;
    let code = loop {
        if let Some(code) = codes.lock().unwrap().remove(email) {
            break code;
        }
        if Instant::now() > deadline {
            anyhow::bail!("no login code for {email} in the log within {ANSWER:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let tokens: serde_json::Value = http
        .post(format!("{base}/v1/auth/verify"))
        .json(&serde_json::json!({"email": email, "code": code}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    match (tokens["user_id"].as_str(), tokens["access_token"].as_str()) {
        (Some(user_id), Some(token)) => Ok(Login {
            user_id: user_id.to_owned(),
            token: token.to_owned(),
        }),
        _ => anyhow::bail!("no user_id or access_token in {tokens}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The machine

/// The open-files limit this process (and the servers it starts) can use.
struct OpenFiles {
    limit: u64,
    /// Whether `limit` is the hard limit (the soft one could be raised to it).
    hard: bool,
}

impl OpenFiles {
    fn describe(&self) -> &'static str {
        if self.hard {
            "hard RLIMIT_NOFILE"
        } else {
            "RLIMIT_NOFILE (soft; raising it to the hard limit failed)"
        }
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (capped by fs.nr_open), for this process
/// and the servers it starts, which inherit it.
fn raise_open_files_limit() -> OpenFiles {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return OpenFiles {
            limit: 1024,
            hard: false,
        };
    }
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 20);
    let target = limit.rlim_max.min(nr_open);
    if limit.rlim_cur < target {
        let raised = libc::rlimit {
            rlim_cur: target,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            eprintln!(
                "raising RLIMIT_NOFILE from {} to {target}: {}",
                limit.rlim_cur,
                std::io::Error::last_os_error()
            );
            return OpenFiles {
                limit: limit.rlim_cur,
                hard: false,
            };
        }
    }
    OpenFiles {
        limit: target,
        hard: true,
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// 19000 → "19 000".
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}
