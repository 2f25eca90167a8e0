//! End-to-end benchmark: tidings against plain Mosquitto, same machine, same run, same clients.
//!
//! ```text
//! bench [--smoke] [--duration S] [--server-cpus LIST] [--size N]
//!       [--scenario NAME[,NAME...]] [TIDINGS_BINARY]
//! ```
//!
//! The default binary is the `tidings` of the bench's own build (`target/release/tidings` for
//! `target/release/examples/bench`); the default scenarios are all of them, run
//! in this order: `chat100`, `chat1000`, `paced`, `pair`, `idle`, `churn`, `fresh-ids`, `many`
//! (`chat` names both chat scenarios). Each scenario runs against a fresh Mosquitto, then a
//! fresh tidings. Progress goes to stderr. Stdout gets the machine (CPU model, CPUs, which CPUs
//! the servers and the load were pinned to, the open-files limit) and the sizes, then one table,
//! `scenario | measure | tidings | mosquitto | ratio`, ratio = tidings / mosquitto. A scenario
//! that fails (an error, a server that exits, nothing delivered in the window) is reported, the
//! others still run, and the exit status is 1.
//!
//! Pinning: both servers run on `--server-cpus` (a CPU list: `0`, `0,1`, `0-3`; default: the
//! first CPU this process may use), this process (the load generator) on the other CPUs it may
//! use, or on the same ones when none are left (the output says so: then they compete). tidings
//! sizes its runtime to its CPUs; Mosquitto is single-threaded whatever it gets. The servers
//! are started with `sched_setaffinity` and `PR_SET_PDEATHSIG` (they die with this process,
//! however it ends).
//!
//! Throughput and latency (every pair is a sender and a receiver, two distinct users for
//! tidings; QoS 1; a body of `BODY` bytes; each sender keeps at most `WINDOW` publishes
//! unacknowledged):
//!
//! - `chat100`, `chat1000`: `CHAT_PAIRS` (100 and 1 000) pairs, flat out.
//! - `paced`: `PACED_PAIRS` (100) pairs, `PACED_RATE` (10 000) msg/s in all: each sender at
//!   rate / pairs, the senders staggered over one interval.
//! - `pair`: one pair, flat out.
//!
//! With `BENCH_FORWARD=1` in the environment, every tidings user switches email forwarding on
//! and tidings waits an hour before forwarding, so every message writes a forwarding job. With
//! `BENCH_FORWARD=offline`, the same with no delay and the recipients never connecting: every
//! message is forwarded for real (the console email provider, one digest per recipient per
//! `forwarding.email_min_interval_secs`), and a message counts for tidings when a second device
//! of its sender gets the sender's `message` event.
//!
//! Each runs `WARM_UP_TIME` (2 s), then the measured window (`--duration`, default
//! `DURATION`, 10 s). Senders stop at the end of the window; the run then waits (at most
//! `DRAIN`, or until nothing arrives for `DRAIN_IDLE`) for the messages published in it.
//! Reported for each server: throughput = messages that arrived in the window / the window;
//! latency p50, p99, p99.9 over those messages (latency = the publish time the sender wrote at
//! the start of the body → the time the receiver read the message); delivered = the share of
//! the messages published in the window that arrived (should be 100 % when paced); the CPU the
//! server and this process used in the window (utime + stime from /proc/PID/stat, as a share of
//! their CPUs); what the load generator could push at 100 % of its CPUs, estimated as
//! throughput / its CPU share (a floor: a busier load reads and writes more messages per
//! system call; when it used over 90 %, the load was likely the bottleneck, and a warning says
//! so); the server's peak RSS (VmHWM).
//!
//! The clients are raw MQTT 3.1.1 sockets (rumqttc's codec only), one task per connection,
//! connected (and the receivers subscribed, QoS 1) before the clock starts. A sender flat out
//! fills its window in one write, then tops it up in one write whenever `REFILL` (16) or more
//! publishes are acknowledged, its socket waking it only once that many PUBACKs are there
//! (SO_RCVLOWAT); a paced sender writes its messages as they fall due (within the window). A
//! receiver reads into a `READ_BUF` buffer, decodes every packet, and answers a read's PUBACKs
//! in one write, at once. With one load CPU the clients run on a current-thread runtime, else
//! on a multi-thread runtime with a worker per load CPU.
//!
//! - tidings: the real binary (its limits off, `limits.sends_per_user_per_minute` = 0 among
//!   them), login over HTTP (email, the code read from the console log; concurrent, before the
//!   clock starts); a sender publishes `{"type":"send","to":..,"body":..,"client_msg_id":..}`
//!   on `users/{me}/outbox`, and a message counts once its receiver got the `message` event on
//!   `users/{them}/inbox`: stored, fsync'd and published (the full path).
//! - Mosquitto: the same payload (same length, a dummy `to`) published to the receiver's topic
//!   `bench/...`, passed on as it is: nothing is stored, no authentication, no ACL.
//!
//! Memory (the server's resident memory, VmRSS, read from /proc; clients are minimal raw MQTT
//! 3.1.1 sockets, keep-alive off, so nothing pings):
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
//!   time to connect and subscribe them all, and RSS. Client sockets come from several loopback
//!   addresses (127.0.0.1 to 127.0.0.16: one has only ~28 000 ephemeral ports).
//!
//! Every connection is a file descriptor here and one in the server: the bench raises its soft
//! RLIMIT_NOFILE to the hard limit (the servers inherit it) and, where even that is too low for
//! a scenario (`idle`, `many`, the chat scenarios), runs it with fewer connections and says so.
//!
//! `--smoke` checks that the bench works, in seconds: each throughput scenario runs 0.25 s of
//! warm-up and a 0.75 s window (a time bound; `--duration` still sets the window) with fewer
//! pairs (10, 100, 10 at 1 000 msg/s, 1), each memory scenario tens of connections or cycles
//! with short settles; it fits an open-files limit of 1024. `--size N` sets every memory
//! scenario to N connections, users or cycles.
//!
//! Run with `scripts/bench` (it builds in release and installs mosquitto if missing); CI runs
//! `--smoke` on the debug build (`scripts/test`). Nothing is asserted beyond the failures above.

use std::collections::HashMap;
use std::future::Future;
use std::io::{BufRead, BufReader, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::BytesMut;
use rumqttc::mqttbytes::v4 as wire;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

// Throughput scenarios.
const CHAT_PAIRS: [usize; 2] = [100, 1_000];
const PACED_PAIRS: usize = 100;
const PACED_RATE: f64 = 10_000.0;
/// Publishes a sender may have unacknowledged.
const WINDOW: usize = 64;
/// A sender flat out tops its window up once this many publishes are acknowledged: one write
/// for several publishes (a write on loopback costs the writer the peer's receive path too,
/// and a write per PUBACK made the load generator as busy as Mosquitto itself).
const REFILL: usize = 16;
const BODY: usize = 200;
/// The publish time at the start of each body: microseconds since the run's start, 20 digits.
const STAMP: usize = 20;
const WARM_UP_TIME: Duration = Duration::from_secs(2);
const DURATION: Duration = Duration::from_secs(10);
/// After the window, the longest wait for the messages published in it...
const DRAIN: Duration = Duration::from_secs(10);
/// ... and how long it goes on with nothing arriving.
const DRAIN_IDLE: Duration = Duration::from_secs(2);
/// What a throughput client makes room for before each read.
const READ_BUF: usize = 32 * 1024;
/// The load generator is reported as the likely bottleneck past this share of its CPUs.
const BUSY_LOAD: f64 = 0.9;

// Memory scenarios.
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
/// Pause before each memory reading, for the servers to finish what is under way.
const SETTLE: Duration = Duration::from_secs(2);

/// Concurrency: HTTP logins, connections being opened, churn visits.
const LOGINS_IN_FLIGHT: usize = 64;
const CONNECTS_IN_FLIGHT: usize = 128;
const CHURN_IN_FLIGHT: usize = 100;
/// tidings' `mqtt.max_connections_per_user` (its default), and so the `fresh-ids` concurrency.
const PER_USER_CAP: usize = 10;
/// File descriptors a process needs besides one per MQTT connection (tidings keeps 512 apart).
const SPARE_FILES: u64 = 600;
/// Client sockets are bound to 127.0.0.1 ..= 127.0.0.SOURCE_ADDRESSES, in turn.
const SOURCE_ADDRESSES: usize = 16;
/// Longest wait for one answer from a server.
const ANSWER: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scenario {
    Chat100,
    Chat1000,
    Paced,
    Pair,
    Idle,
    Churn,
    FreshIds,
    Many,
}

impl Scenario {
    /// All of them, in the order they run.
    const ALL: [Scenario; 8] = [
        Scenario::Chat100,
        Scenario::Chat1000,
        Scenario::Paced,
        Scenario::Pair,
        Scenario::Idle,
        Scenario::Churn,
        Scenario::FreshIds,
        Scenario::Many,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::Chat100 => "chat100",
            Scenario::Chat1000 => "chat1000",
            Scenario::Paced => "paced",
            Scenario::Pair => "pair",
            Scenario::Idle => "idle",
            Scenario::Churn => "churn",
            Scenario::FreshIds => "fresh-ids",
            Scenario::Many => "many",
        }
    }

    /// The scenarios `name` stands for: one, or both chat scenarios for `chat`.
    fn named(name: &str) -> Option<Vec<Scenario>> {
        if name == "chat" {
            return Some(vec![Scenario::Chat100, Scenario::Chat1000]);
        }
        let found = Self::ALL.into_iter().find(|s| s.name() == name)?;
        Some(vec![found])
    }
}

/// A throughput scenario's load: `pairs` sender→receiver pairs, flat out or at `rate` msg/s
/// in all.
#[derive(Clone, Copy)]
struct Load {
    pairs: usize,
    rate: Option<f64>,
}

impl Load {
    fn flat_out(pairs: usize) -> Self {
        Self { pairs, rate: None }
    }

    fn describe(&self) -> String {
        let pairs = match self.pairs {
            1 => "1 pair".to_owned(),
            n => format!("{} pairs", thousands(n)),
        };
        match self.rate {
            None => format!("{pairs}, flat out"),
            Some(rate) => format!("{pairs}, {} msg/s in all", thousands(rate as usize)),
        }
    }
}

/// How big each scenario runs.
struct Sizes {
    chat100: Load,
    chat1000: Load,
    paced: Load,
    pair: Load,
    idle: usize,
    churn: usize,
    fresh: usize,
    warm_up: usize,
    many: usize,
    settle: Duration,
}

impl Sizes {
    fn full() -> Self {
        Self {
            chat100: Load::flat_out(CHAT_PAIRS[0]),
            chat1000: Load::flat_out(CHAT_PAIRS[1]),
            paced: Load {
                pairs: PACED_PAIRS,
                rate: Some(PACED_RATE),
            },
            pair: Load::flat_out(1),
            idle: IDLE_CONNECTIONS,
            churn: CHURN_USERS,
            fresh: FRESH_IDS,
            warm_up: WARM_UP,
            many: MANY_CONNECTIONS,
            settle: SETTLE,
        }
    }

    fn smoke() -> Self {
        Self {
            chat100: Load::flat_out(10),
            chat1000: Load::flat_out(100),
            paced: Load {
                pairs: 10,
                rate: Some(1_000.0),
            },
            pair: Load::flat_out(1),
            idle: 50,
            churn: 50,
            fresh: 100,
            warm_up: 10,
            many: 50,
            settle: Duration::from_millis(200),
        }
    }

    fn load(&self, scenario: Scenario) -> Option<Load> {
        match scenario {
            Scenario::Chat100 => Some(self.chat100),
            Scenario::Chat1000 => Some(self.chat1000),
            Scenario::Paced => Some(self.paced),
            Scenario::Pair => Some(self.pair),
            _ => None,
        }
    }

    /// Scenario sizes cut to fit `limit` open files (a descriptor per connection, here and in
    /// the server); a note for each.
    fn fit(&mut self, scenarios: &[Scenario], open_files: &OpenFiles) -> Vec<String> {
        let fits = open_files.limit.saturating_sub(SPARE_FILES) as usize;
        let mut notes = Vec::new();
        for &scenario in scenarios {
            // The size to cut, and connections per unit of it.
            let (size, per) = match scenario {
                Scenario::Chat100 => (&mut self.chat100.pairs, 2),
                Scenario::Chat1000 => (&mut self.chat1000.pairs, 2),
                Scenario::Paced => (&mut self.paced.pairs, 2),
                Scenario::Idle => (&mut self.idle, 1),
                Scenario::Many => (&mut self.many, 1),
                _ => continue,
            };
            if *size * per <= fits {
                continue;
            }
            let mut reduced = fits / per;
            if reduced >= 10_000 {
                reduced = reduced / 1_000 * 1_000;
            }
            let reduced = reduced.max(1);
            notes.push(format!(
                "{}: {} is {}, so {} {} instead of {}",
                scenario.name(),
                open_files.describe(),
                open_files.limit,
                thousands(reduced),
                if per == 2 { "pairs" } else { "connections" },
                thousands(*size)
            ));
            *size = reduced;
        }
        notes
    }
}

/// The time line of a throughput run.
#[derive(Clone, Copy)]
struct Timing {
    warm_up: Duration,
    window: Duration,
    drain: Duration,
}

impl Timing {
    fn new(smoke: bool, duration: Option<Duration>) -> Self {
        match smoke {
            true => Self {
                warm_up: Duration::from_millis(250),
                window: duration.unwrap_or(Duration::from_millis(750)),
                drain: Duration::from_secs(2),
            },
            false => Self {
                warm_up: WARM_UP_TIME,
                window: duration.unwrap_or(DURATION),
                drain: DRAIN,
            },
        }
    }
}

struct Args {
    smoke: bool,
    /// `--size N`: N connections, users or cycles in every memory scenario.
    size: Option<usize>,
    /// `--duration S`: the measured window of each throughput scenario.
    duration: Option<Duration>,
    /// `--server-cpus LIST`.
    server_cpus: Option<String>,
    scenarios: Vec<Scenario>,
    tidings_bin: String,
}

impl Args {
    fn parse() -> anyhow::Result<Self> {
        let names: Vec<_> = Scenario::ALL.iter().map(|s| s.name()).collect();
        let usage = format!(
            "usage: bench [--smoke] [--duration S] [--server-cpus LIST] [--size N] \
             [--scenario NAME[,NAME...]] [TIDINGS_BINARY]\n\
             scenarios: {}, or chat for both chat scenarios (default: all)\n\
             --server-cpus: a CPU list such as 0, 0,1 or 0-3 (default: the first CPU)",
            names.join(", ")
        );
        let mut parsed = Self {
            smoke: false,
            size: None,
            duration: None,
            server_cpus: None,
            scenarios: Vec::new(),
            tidings_bin: default_tidings_bin(),
        };
        let (mut names, mut bin) = (Vec::new(), None);
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_owned())),
                _ => (arg.as_str(), None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .ok_or_else(|| anyhow::anyhow!("{flag} needs a value\n{usage}"))
            };
            match flag {
                "--smoke" => parsed.smoke = true,
                "--size" => {
                    let n = value()?.replace(['_', ' '], "").parse().ok();
                    let n = n.filter(|n| *n > 0);
                    parsed.size =
                        Some(n.context(format!("--size needs a number above 0\n{usage}"))?);
                }
                "--duration" => {
                    let secs = value()?
                        .parse::<f64>()
                        .ok()
                        .filter(|s| *s > 0.0 && *s < 1e6);
                    let secs =
                        secs.context(format!("--duration needs seconds above 0\n{usage}"))?;
                    parsed.duration = Some(Duration::from_secs_f64(secs));
                }
                "--server-cpus" => parsed.server_cpus = Some(value()?),
                "--scenario" | "--scenarios" => {
                    names.extend(value()?.split(',').map(str::to_owned))
                }
                "-h" | "--help" => {
                    println!("{usage}");
                    std::process::exit(0);
                }
                _ if arg.starts_with('-') || bin.is_some() => {
                    anyhow::bail!("unexpected argument {arg:?}\n{usage}")
                }
                _ => bin = Some(arg.clone()),
            }
        }
        for name in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
            let named = Scenario::named(name)
                .ok_or_else(|| anyhow::anyhow!("unknown scenario {name:?}\n{usage}"))?;
            parsed.scenarios.extend(named);
        }
        // Each once, in the order of Scenario::ALL, whatever the order given.
        let chosen = std::mem::take(&mut parsed.scenarios);
        parsed.scenarios = Scenario::ALL
            .into_iter()
            .filter(|s| chosen.is_empty() || chosen.contains(s))
            .collect();
        if let Some(bin) = bin {
            parsed.tidings_bin = bin;
        }
        Ok(parsed)
    }
}

/// `tidings` beside this build's `examples/` folder, else `target/release/tidings`.
fn default_tidings_bin() -> String {
    let exe = std::env::current_exe().ok();
    let beside = exe
        .as_deref()
        .and_then(|e| Some(e.parent()?.parent()?.join("tidings")));
    match beside.filter(|bin| bin.is_file()) {
        Some(bin) => bin.display().to_string(),
        None => "target/release/tidings".into(),
    }
}

fn main() -> std::process::ExitCode {
    match bench() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn bench() -> anyhow::Result<()> {
    let args = Args::parse()?;
    let cpus = Cpus::choose(args.server_cpus.as_deref())?;
    // Before any other thread starts: every thread of this process inherits the mask.
    set_affinity(0, &cpus.load).context("pinning the bench to its CPUs")?;
    let runtime = match cpus.load.len() {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()?,
    };
    let bench = Bench::new(args, cpus);
    // The servers are started from this thread (`block_on` polls the future here): their
    // PR_SET_PDEATHSIG fires when it ends.
    runtime.block_on(bench.run())
}

/// What every scenario needs: the sizes, the timing, the binary, the CPUs.
struct Bench {
    smoke: bool,
    scenarios: Vec<Scenario>,
    bin: String,
    sizes: Sizes,
    timing: Timing,
    cpus: Cpus,
    open_files: OpenFiles,
    /// What was cut to fit the machine.
    notes: Vec<String>,
}

impl Bench {
    fn new(args: Args, cpus: Cpus) -> Self {
        let open_files = raise_open_files_limit();
        let mut sizes = match args.smoke {
            true => Sizes::smoke(),
            false => Sizes::full(),
        };
        if let Some(n) = args.size {
            (sizes.idle, sizes.churn, sizes.fresh, sizes.many) = (n, n, n, n);
        }
        let notes = sizes.fit(&args.scenarios, &open_files);
        Self {
            smoke: args.smoke,
            timing: Timing::new(args.smoke, args.duration),
            scenarios: args.scenarios,
            bin: args.tidings_bin,
            sizes,
            cpus,
            open_files,
            notes,
        }
    }

    /// Every scenario, then the table; an error naming the scenarios that failed.
    async fn run(self) -> anyhow::Result<()> {
        self.print_header();
        let (mut rows, mut failed) = (Vec::new(), Vec::new());
        for &scenario in &self.scenarios {
            match self.scenario(scenario, &mut rows).await {
                Ok(()) => {}
                Err(e) => {
                    eprintln!("{}: FAILED: {e:#}", scenario.name());
                    failed.push(format!("{}: {e:#}", scenario.name()));
                }
            }
        }
        if !rows.is_empty() {
            print_table(&rows);
        }
        for failure in &failed {
            println!("FAILED {failure}");
        }
        match failed.is_empty() {
            true => Ok(()),
            false => anyhow::bail!(
                "{} scenario(s) failed:\n{}",
                failed.len(),
                failed.join("\n")
            ),
        }
    }

    async fn scenario(&self, scenario: Scenario, rows: &mut Vec<Row>) -> anyhow::Result<()> {
        eprintln!("== {}", scenario.name());
        match scenario {
            Scenario::Idle => idle(self, rows).await,
            Scenario::Churn => churn(self, rows).await,
            Scenario::FreshIds => fresh_ids(self, rows).await,
            Scenario::Many => many(self, rows).await,
            _ => throughput(self, scenario, rows).await,
        }
    }

    fn print_header(&self) {
        let load = match self.cpus.shared {
            true => format!(
                "the load (this bench) on {} too, shared with them",
                cpu_text(&self.cpus.load)
            ),
            false => format!("the load (this bench) on {}", cpu_text(&self.cpus.load)),
        };
        println!(
            "machine: {}, {} CPUs online; servers pinned to {}, {load}; {} {}",
            cpu_model(),
            online_cpus(),
            cpu_text(&self.cpus.server),
            self.open_files.describe(),
            self.open_files.limit
        );
        println!(
            "servers: tidings {}; {}",
            self.bin,
            mosquitto_version().unwrap_or_else(|e| format!("mosquitto: {e:#}"))
        );
        let mut used = Vec::new();
        for &s in &self.scenarios {
            used.push(match s {
                Scenario::Idle => format!("idle {} connections", thousands(self.sizes.idle)),
                Scenario::Churn => format!(
                    "churn {} users (+{} warm-up)",
                    thousands(self.sizes.churn),
                    self.sizes.warm_up
                ),
                Scenario::FreshIds => format!(
                    "fresh-ids {} cycles (+{} warm-up)",
                    thousands(self.sizes.fresh),
                    self.sizes.warm_up
                ),
                Scenario::Many => format!("many {} connections", thousands(self.sizes.many)),
                _ => format!(
                    "{} {}",
                    s.name(),
                    self.sizes.load(s).expect("load").describe()
                ),
            });
        }
        println!(
            "sizes{}: {}",
            if self.smoke { " (smoke)" } else { "" },
            used.join("; ")
        );
        if self.scenarios.iter().any(|s| self.sizes.load(*s).is_some()) {
            println!(
                "throughput: QoS 1, {BODY} B bodies, a window of {WINDOW} per sender, {} s warm-up, \
                 {} s measured; latency = publish → arrival at the receiver",
                self.timing.warm_up.as_secs_f64(),
                self.timing.window.as_secs_f64()
            );
        }
        for note in &self.notes {
            println!("note: {note}");
            eprintln!("note: {note}");
        }
    }

    /// A fresh server of `kind`, pinned to the server CPUs, for up to `connections`.
    fn start(&self, kind: Kind, connections: usize) -> anyhow::Result<Broker> {
        match kind {
            Kind::Mosquitto => Broker::mosquitto(&self.cpus.server),
            Kind::Tidings if forward_offline() => self.tidings_with(connections, &[]),
            Kind::Tidings if forward_all() => {
                // Every message gets a forwarding job (recipients switch email forwarding on
                // when they log in); the delay keeps the jobs pending through the run.
                let delay = ("TIDINGS_FORWARDING__DELAY_SECS", "3600".to_owned());
                self.tidings_with(connections, &[delay])
            }
            Kind::Tidings => self.tidings_with(connections, &[]),
        }
    }

    /// tidings, with more `TIDINGS_*` settings.
    fn tidings_with(&self, connections: usize, env: &[(&str, String)]) -> anyhow::Result<Broker> {
        Broker::tidings(&self.bin, connections, env, &self.cpus.server)
    }

    /// The pause before a memory reading.
    async fn settle(&self) {
        tokio::time::sleep(self.sizes.settle).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Throughput and latency: chat100, chat1000, paced, pair

/// Runs `scenario` on a fresh Mosquitto, then on a fresh tidings, and adds its rows (a server
/// that failed shows none); an error naming the servers that failed.
async fn throughput(bench: &Bench, scenario: Scenario, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let mut figures = Vec::new();
    for kind in Kind::BOTH {
        let label = format!("{}: {}", scenario.name(), kind.name());
        let got = measure(bench, scenario, kind, &label).await;
        figures.push(got.with_context(|| kind.name()));
    }
    let shown = [&figures[0], &figures[1]].map(|f| f.as_ref().ok());
    throughput_rows(scenario.name(), shown, &bench.cpus, rows);
    let failures: Vec<String> = figures
        .iter()
        .filter_map(|f| f.as_ref().err().map(|e| format!("{e:#}")))
        .collect();
    match failures.is_empty() {
        true => Ok(()),
        false => anyhow::bail!("{}", failures.join("; ")),
    }
}

/// `scenario` against a fresh server of `kind`.
async fn measure(
    bench: &Bench,
    scenario: Scenario,
    kind: Kind,
    label: &str,
) -> anyhow::Result<Figures> {
    let load = bench.sizes.load(scenario).expect("a throughput scenario");
    let broker = bench.start(kind, 2 * load.pairs)?;
    eprintln!(
        "{label}: {} (server pid {} on CPUs {})",
        load.describe(),
        broker.pid(),
        broker.cpus_allowed()
    );
    let got = drive(bench, &broker, load, scenario.name()).await?;
    eprintln!("{label}: {}", got.summary());
    if got.bench_cpu >= BUSY_LOAD * 100.0 {
        let warning = format!(
            "warning: {label}: the load generator used {:.0} % of its CPUs: it may be the bottleneck",
            got.bench_cpu
        );
        println!("{warning}");
        eprintln!("{warning}");
    }
    Ok(got)
}

/// One measured run against `broker`: connects the pairs, lets them send through the warm-up
/// and the window, waits for what was published in the window, and computes the figures.
async fn drive(bench: &Bench, broker: &Broker, load: Load, tag: &str) -> anyhow::Result<Figures> {
    let pairs = connect_pairs(broker, load.pairs, tag).await?;
    let run = Arc::new(Run {
        clock: Clock::new(bench.timing),
        tally: Tally::default(),
    });
    let (stop, stopped) = watch::channel(false);
    // Dropped on an early return: every client task is aborted.
    let (mut receivers, mut senders) = (JoinSet::new(), JoinSet::new());
    for (i, pair) in pairs.into_iter().enumerate() {
        receivers.spawn(receive(
            pair.receiver,
            broker.kind,
            run.clone(),
            stopped.clone(),
        ));
        let pace = load
            .rate
            .map(|rate| Pace::new(run.clock.epoch, i, load.pairs, rate));
        let sender = Sender::new(pair.sender, pair.message, pace)?;
        senders.spawn(send(sender, run.clone(), stopped.clone()));
    }
    let cpu = CpuUse::over_window(broker, &run.clock).await;
    drain(&run.tally, bench.timing.drain).await;
    let _ = stop.send(true);
    let received = join_all(receivers).await.context("a receiver")?;
    let sent = join_all(senders).await.context("a sender")?;
    anyhow::ensure!(broker.running(), "the server exited");
    let peak_rss_mib = broker.peak_rss_mib();
    let window = bench.timing.window;
    Figures::new(
        &received,
        &run.tally,
        &sent,
        window,
        cpu,
        peak_rss_mib,
        &bench.cpus,
    )
}

/// What a run's clients share: its time line and its counts.
struct Run {
    clock: Clock,
    tally: Tally,
}

/// A sender and its receiver, connected; the receiver subscribed.
struct Pair {
    sender: Raw,
    receiver: Raw,
    message: Message,
}

/// `pairs` pairs of fresh clients (for tidings: users logged in over HTTP, two a pair).
async fn connect_pairs(broker: &Broker, pairs: usize, tag: &str) -> anyhow::Result<Vec<Pair>> {
    let people = Arc::new(Who::many(broker, 2 * pairs, tag).await?);
    let addr = broker.addr;
    let label = format!("{tag}: {}: connect", broker.kind.name());
    concurrently(&label, pairs, CONNECTS_IN_FLIGHT, move |i| {
        let people = people.clone();
        async move { Pair::connect(addr, &people[2 * i], &people[2 * i + 1]).await }
    })
    .await
}

impl Pair {
    async fn connect(addr: SocketAddr, sender: &Who, receiver: &Who) -> anyhow::Result<Self> {
        let receiving = match (forward_offline(), sender) {
            // The recipient stays offline; a second device of the sender counts the message
            // when the sender's own `message` event comes (stored, fsync'd, published).
            (true, Who::User(_)) => sender.connect(addr, Some("bench-echo")).await,
            _ => receiver.connect(addr, None).await,
        }
        .context("receiver")?;
        let sending = sender.open(addr, None).await.context("sender")?;
        Ok(Self {
            sender: sending,
            receiver: receiving,
            message: Message::new(sender, receiver),
        })
    }
}

/// What a sender publishes, the same bytes for both servers: a tidings `send` command whose
/// body starts with the publish time. Mosquitto passes it on as it is; tidings stores it and
/// delivers a `message` event with the same body.
struct Message {
    topic: String,
    /// Up to the body: `{"type":"send","to":"…","body":"`.
    head: String,
    /// After the body, up to the message's number: `","client_msg_id":"m`.
    tail: String,
}

impl Message {
    fn new(sender: &Who, receiver: &Who) -> Self {
        let (topic, to) = match (sender, receiver) {
            (Who::User(from), Who::User(to)) => {
                (format!("users/{}/outbox", from.user_id), to.user_id.clone())
            }
            // Mosquitto: straight to the receiver's topic, with a `to` as long as a tidings
            // user id (24 characters).
            _ => (receiver.topic(), format!("{:0>24}", receiver.client_id())),
        };
        Self {
            topic,
            head: format!(r#"{{"type":"send","to":"{to}","body":""#),
            tail: r#"","client_msg_id":"m"#.to_owned(),
        }
    }

    /// Message `number` (from 1; its client_msg_id), published at `stamp` µs.
    fn publish(&self, stamp: u64, number: u64) -> wire::Publish {
        let mut payload = Vec::with_capacity(self.head.len() + BODY + self.tail.len() + 24);
        payload.extend_from_slice(self.head.as_bytes());
        write!(payload, "{stamp:0STAMP$}").expect("writing to a Vec");
        payload.resize(payload.len() + BODY - STAMP, b'x');
        payload.extend_from_slice(self.tail.as_bytes());
        write!(payload, "{number}\"}}").expect("writing to a Vec");
        let mut publish = wire::Publish::new(self.topic.as_str(), QoS::AtLeastOnce, payload);
        publish.pkid = ((number - 1) % u16::MAX as u64 + 1) as u16;
        publish
    }
}

/// The publish time at the start of the body (after `"body":"`), in µs.
fn stamp_of(payload: &[u8]) -> Option<u64> {
    const KEY: &[u8] = br#""body":""#;
    let at = payload.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    std::str::from_utf8(payload.get(at..at + STAMP)?)
        .ok()?
        .parse()
        .ok()
}

/// A run's time line, in µs since `epoch` (what the stamps count): the warm-up, then the
/// measured window `[start, end)`.
struct Clock {
    epoch: Instant,
    start: u64,
    end: u64,
}

impl Clock {
    fn new(timing: Timing) -> Self {
        let start = timing.warm_up.as_micros() as u64;
        Self {
            epoch: Instant::now(),
            start,
            end: start + timing.window.as_micros() as u64,
        }
    }

    fn micros(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_micros() as u64
    }

    fn now(&self) -> u64 {
        self.micros(Instant::now())
    }

    fn at(&self, micros: u64) -> tokio::time::Instant {
        (self.epoch + Duration::from_micros(micros)).into()
    }

    fn in_window(&self, micros: u64) -> bool {
        (self.start..self.end).contains(&micros)
    }
}

/// When a paced sender's messages are due: one every `interval` from `first`.
struct Pace {
    first: Instant,
    interval: Duration,
    sent: u64,
}

impl Pace {
    /// Sender `i` of `pairs`, at `rate` / `pairs` msg/s; the senders' first messages are spread
    /// over one interval, so that they do not all publish at once.
    fn new(epoch: Instant, i: usize, pairs: usize, rate: f64) -> Self {
        let interval = Duration::from_secs_f64(pairs as f64 / rate);
        Self {
            first: epoch + interval.mul_f64(i as f64 / pairs as f64),
            interval,
            sent: 0,
        }
    }

    /// Messages due by `now` and not yet sent.
    fn due(&self, now: Instant) -> usize {
        let Some(since) = now.checked_duration_since(self.first) else {
            return 0;
        };
        let due = (since.as_nanos() / self.interval.as_nanos()) as u64 + 1;
        due.saturating_sub(self.sent) as usize
    }

    fn next(&self) -> tokio::time::Instant {
        let after = self.interval.as_nanos() as u64 * self.sent;
        (self.first + Duration::from_nanos(after)).into()
    }
}

/// Counts shared by a run's clients, for the drain.
#[derive(Default)]
struct Tally {
    /// Messages published in the window.
    sent: AtomicU64,
    /// Of those, the ones that arrived.
    delivered: AtomicU64,
    /// Every message that arrived, in the window or not.
    arrived: AtomicU64,
}

/// A sender: publishes flat out, or as its pace allows, at most `WINDOW` unacknowledged, until
/// the window ends; then it only reads, and keeps its connection until `stop`.
async fn send(
    mut sender: Sender,
    run: Arc<Run>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<u64> {
    let end = tokio::time::sleep_until(run.clock.at(run.clock.end));
    tokio::pin!(end);
    let mut sending = true;
    loop {
        if sending {
            sender.publish_due(&run).await?;
        }
        let paced = sending && sender.pace.is_some();
        let wake = sender.wake().unwrap_or_else(|| run.clock.at(run.clock.end));
        tokio::select! {
            biased;
            _ = stop.changed() => return Ok(sender.in_window),
            _ = &mut end, if sending => sending = false,
            read = sender.raw.read_more() => {
                read?;
                let acks = sender.raw.acks()?;
                let unacked = sender.unacked.checked_sub(acks);
                sender.unacked = unacked.context("more PUBACKs than publishes")?;
            }
            _ = tokio::time::sleep_until(wake), if paced => {}
        }
    }
}

/// One sender's connection and counts.
struct Sender {
    raw: Raw,
    message: Message,
    pace: Option<Pace>,
    /// Publishes not acknowledged yet.
    unacked: usize,
    /// The last message's number.
    number: u64,
    /// Messages published in the window.
    in_window: u64,
}

impl Sender {
    /// Flat out, the socket wakes the sender only once a refill's PUBACKs (4 bytes each) are
    /// there (SO_RCVLOWAT): otherwise it would wake for each, as Mosquitto writes them one by
    /// one.
    fn new(raw: Raw, message: Message, pace: Option<Pace>) -> anyhow::Result<Self> {
        if pace.is_none() {
            raw.set_receive_low_water(4 * REFILL)?;
        }
        Ok(Self {
            raw,
            message,
            pace,
            unacked: 0,
            number: 0,
            in_window: 0,
        })
    }

    /// Publishes what the window and the pace allow, in one write, stamped now: flat out, a
    /// full window at first and then `REFILL` or more at a time.
    async fn publish_due(&mut self, run: &Run) -> anyhow::Result<()> {
        let now = Instant::now();
        let room = WINDOW - self.unacked;
        let n = match &self.pace {
            Some(pace) => pace.due(now).min(room),
            None if room >= REFILL || self.unacked == 0 => room,
            None => 0,
        };
        if n == 0 {
            return Ok(());
        }
        let stamp = run.clock.micros(now);
        for _ in 0..n {
            self.number += 1;
            let publish = self.message.publish(stamp, self.number);
            self.raw.queue(|out| publish.write(out))?;
        }
        if run.clock.in_window(stamp) {
            run.tally.sent.fetch_add(n as u64, Ordering::Relaxed);
            self.in_window += n as u64;
        }
        if let Some(pace) = self.pace.as_mut() {
            pace.sent += n as u64;
        }
        self.unacked += n;
        self.raw.flush().await
    }

    /// When the next paced message is due, if paced and the window has room.
    fn wake(&self) -> Option<tokio::time::Instant> {
        let pace = self.pace.as_ref().filter(|_| self.unacked < WINDOW)?;
        Some(pace.next())
    }
}

/// What a receiver saw.
#[derive(Default)]
struct Received {
    /// The latency (µs) of each message that arrived in the window.
    latencies: Vec<u32>,
    /// Messages that arrived, in the window or not.
    arrived: u64,
    /// Messages published in the window that arrived (whenever).
    delivered: u64,
    /// PUBLISHes that were no message (tidings: another event).
    other: u64,
}

impl Received {
    /// A PUBLISH read at `now` (µs).
    fn note(&mut self, payload: &[u8], kind: Kind, now: u64, clock: &Clock) {
        let message = kind == Kind::Mosquitto || payload.starts_with(br#"{"type":"message""#);
        let Some(sent) = stamp_of(payload).filter(|_| message) else {
            self.other += 1;
            return;
        };
        self.arrived += 1;
        if clock.in_window(now) {
            let latency = now.saturating_sub(sent).min(u32::MAX as u64);
            self.latencies.push(latency as u32);
        }
        if clock.in_window(sent) {
            self.delivered += 1;
        }
    }
}

/// A receiver: acknowledges every PUBLISH (all of a read's PUBACKs in one write) and notes
/// each message, until `stop`.
async fn receive(
    mut raw: Raw,
    kind: Kind,
    run: Arc<Run>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Received> {
    let mut got = Received::default();
    loop {
        let now = run.clock.now();
        let (arrived, delivered) = (got.arrived, got.delivered);
        while let Some(packet) = raw.packet()? {
            let wire::Packet::Publish(publish) = packet else {
                continue;
            };
            if publish.qos != QoS::AtMostOnce {
                let ack = wire::PubAck::new(publish.pkid);
                raw.queue(|out| ack.write(out))?;
            }
            got.note(&publish.payload, kind, now, &run.clock);
        }
        raw.flush().await?;
        let new = got.arrived - arrived;
        run.tally.arrived.fetch_add(new, Ordering::Relaxed);
        let new = got.delivered - delivered;
        run.tally.delivered.fetch_add(new, Ordering::Relaxed);
        tokio::select! {
            biased;
            _ = stop.changed() => return Ok(got),
            read = raw.read_more() => read?,
        }
    }
}

/// After the window: until every message published in it arrived, or none arrived for
/// `DRAIN_IDLE`, or `longest` passed.
async fn drain(tally: &Tally, longest: Duration) {
    let deadline = Instant::now() + longest;
    let mut last = (tally.arrived.load(Ordering::Relaxed), Instant::now());
    loop {
        // Also lets the senders' last writes of the window count.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = Instant::now();
        let (sent, delivered) = (&tally.sent, &tally.delivered);
        if delivered.load(Ordering::Relaxed) >= sent.load(Ordering::Relaxed) || now >= deadline {
            return;
        }
        let arrived = tally.arrived.load(Ordering::Relaxed);
        if arrived != last.0 {
            last = (arrived, now);
        } else if now - last.1 >= DRAIN_IDLE {
            return;
        }
    }
}

/// The results of tasks, in no particular order; the first error, or a task still running
/// `ANSWER` after it was asked to stop.
async fn join_all<T: 'static>(mut tasks: JoinSet<anyhow::Result<T>>) -> anyhow::Result<Vec<T>> {
    let mut out = Vec::with_capacity(tasks.len());
    loop {
        match tokio::time::timeout(ANSWER, tasks.join_next()).await {
            Ok(Some(joined)) => out.push(joined??),
            Ok(None) => return Ok(out),
            Err(_) => anyhow::bail!("{} still running {ANSWER:?} after the end", tasks.len()),
        }
    }
}

/// CPU time over the window, in seconds: this process (the load) and the server.
struct CpuUse {
    bench: f64,
    server: f64,
    wall: f64,
}

impl CpuUse {
    async fn over_window(broker: &Broker, clock: &Clock) -> Self {
        let server = broker.pid().to_string();
        let sample = || (cpu_seconds("self"), cpu_seconds(&server), Instant::now());
        tokio::time::sleep_until(clock.at(clock.start)).await;
        let before = sample();
        tokio::time::sleep_until(clock.at(clock.end)).await;
        let after = sample();
        Self {
            bench: after.0 - before.0,
            server: after.1 - before.1,
            wall: (after.2 - before.2).as_secs_f64(),
        }
    }
}

/// One server's figures in a throughput scenario.
struct Figures {
    /// Messages that arrived in the window, per second.
    throughput: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    /// % of the messages published in the window that arrived.
    delivered: f64,
    /// What the slowest sender published in the window, as a % of what the median one did:
    /// 100 when the server serves every connection alike.
    slowest_sender: f64,
    /// % of the CPUs they run on.
    server_cpu: f64,
    bench_cpu: f64,
    /// What the load could push at 100 % of its CPUs, at the same cost per message: a floor,
    /// since a busier load reads and writes more messages per system call.
    capacity: f64,
    peak_rss_mib: f64,
    /// PUBLISHes that were no message.
    other: u64,
}

impl Figures {
    fn new(
        received: &[Received],
        tally: &Tally,
        sent: &[u64],
        window: Duration,
        cpu: CpuUse,
        peak_rss_mib: f64,
        cpus: &Cpus,
    ) -> anyhow::Result<Self> {
        let mut latencies: Vec<u32> = received
            .iter()
            .flat_map(|r| r.latencies.iter().copied())
            .collect();
        anyhow::ensure!(
            !latencies.is_empty(),
            "nothing arrived in the measured window"
        );
        latencies.sort_unstable();
        let at = |share: f64| {
            let i = ((latencies.len() as f64 * share) as usize).min(latencies.len() - 1);
            latencies[i] as f64 / 1000.0
        };
        let throughput = latencies.len() as f64 / window.as_secs_f64();
        let mut per_sender = sent.to_vec();
        per_sender.sort_unstable();
        let median = per_sender.get(per_sender.len() / 2).copied().unwrap_or(0);
        let slowest = per_sender.first().copied().unwrap_or(0);
        let sent = tally.sent.load(Ordering::Relaxed) as f64;
        let bench_share = cpu.bench / cpu.wall / cpus.load.len() as f64;
        Ok(Self {
            throughput,
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            p999_ms: at(0.999),
            delivered: tally.delivered.load(Ordering::Relaxed) as f64 * 100.0 / sent,
            slowest_sender: slowest as f64 * 100.0 / median.max(1) as f64,
            server_cpu: cpu.server / cpu.wall / cpus.server.len() as f64 * 100.0,
            bench_cpu: bench_share * 100.0,
            capacity: throughput / bench_share,
            peak_rss_mib,
            other: received.iter().map(|r| r.other).sum(),
        })
    }

    /// One line for the progress log.
    fn summary(&self) -> String {
        let mut line = format!(
            "{:.0} msg/s, p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, delivered {:.1} %, slowest sender {:.0} % of the median, server CPU {:.0} %, bench CPU {:.0} %",
            self.throughput, self.p50_ms, self.p99_ms, self.p999_ms, self.delivered, self.slowest_sender, self.server_cpu, self.bench_cpu
        );
        if self.other > 0 {
            line += &format!(", {} other events", self.other);
        }
        line
    }
}

/// A throughput scenario's rows. `figures`: (mosquitto, tidings), none for a server that
/// failed.
fn throughput_rows(
    name: &'static str,
    figures: [Option<&Figures>; 2],
    cpus: &Cpus,
    rows: &mut Vec<Row>,
) {
    let each = |f: fn(&Figures) -> f64| figures.map(|figures| figures.map(f));
    let of = |cpus: &[usize]| match cpus.len() {
        1 => "1 CPU".to_owned(),
        n => format!("{n} CPUs"),
    };
    rows.extend([
        Row::new(name, "throughput (msg/s)", each(|f| f.throughput)).decimals(0),
        Row::new(name, "latency p50 (ms)", each(|f| f.p50_ms)).decimals(2),
        Row::new(name, "latency p99 (ms)", each(|f| f.p99_ms)).decimals(2),
        Row::new(name, "latency p99.9 (ms)", each(|f| f.p999_ms)).decimals(2),
        Row::new(
            name,
            "delivered (% of sent in the window)",
            each(|f| f.delivered),
        )
        .no_ratio(),
        Row::new(
            name,
            "slowest sender (% of the median's messages)",
            each(|f| f.slowest_sender),
        )
        .decimals(0)
        .no_ratio(),
        Row::new(
            name,
            format!("server CPU (% of {})", of(&cpus.server)),
            each(|f| f.server_cpu),
        )
        .decimals(0)
        .no_ratio(),
        Row::new(
            name,
            format!("bench CPU (% of {})", of(&cpus.load)),
            each(|f| f.bench_cpu),
        )
        .decimals(0)
        .no_ratio(),
        Row::new(
            name,
            "bench at 100 % CPU, est. floor (msg/s)",
            each(|f| f.capacity),
        )
        .decimals(0)
        .no_ratio(),
        Row::new(name, "server peak RSS (MiB)", each(|f| f.peak_rss_mib)),
    ]);
}

// ---------------------------------------------------------------------------------------------
// Clients and scenarios' shared parts

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
}

fn mib(kib: i64) -> f64 {
    kib as f64 / 1024.0
}

/// A tidings user, logged in.
#[derive(Clone)]
struct Login {
    user_id: String,
    token: String,
}

/// Who connects: a tidings user (its own inbox, client id "bench"), or an
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
        let mut raw = self.open(addr, client_id).await?;
        raw.subscribe(&self.topic()).await.context("SUBSCRIBE")?;
        Ok(raw)
    }

    /// Connects with `client_id`, or [`Who::client_id`].
    async fn open(&self, addr: SocketAddr, client_id: Option<&str>) -> anyhow::Result<Raw> {
        let id = client_id.map_or_else(|| self.client_id(), str::to_owned);
        Raw::open(addr, &id, self.login())
            .await
            .context("CONNECT")?
            .map_err(|code| anyhow::anyhow!("CONNACK {code:?}"))
    }
}

// ---------------------------------------------------------------------------------------------
// Memory scenarios

/// Connects and subscribes `n` clients and keeps them: RSS before and after, and the time it took.
struct Held {
    before_kib: i64,
    after_kib: i64,
    connect_secs: f64,
}

async fn hold(bench: &Bench, kind: Kind, n: usize, scenario: &str) -> anyhow::Result<Held> {
    let label = format!("{scenario}: {}", kind.name());
    eprintln!("{label}: starting, {} connections", thousands(n));
    let broker = bench.start(kind, n)?;
    let clients = Arc::new(Who::many(&broker, n, scenario).await?);
    bench.settle().await;
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
    bench.settle().await;
    let after_kib = broker.rss_kib()?;
    drop(held);
    drop(broker);
    Ok(Held {
        before_kib,
        after_kib,
        connect_secs,
    })
}

async fn idle(bench: &Bench, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let n = bench.sizes.idle;
    let mut held = Vec::new();
    for kind in Kind::BOTH {
        held.push(hold(bench, kind, n, "idle").await?);
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

async fn many(bench: &Bench, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let n = bench.sizes.many;
    let mut held = Vec::new();
    for kind in Kind::BOTH {
        held.push(hold(bench, kind, n, "many").await?);
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

async fn churn(bench: &Bench, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let (n, warm_up) = (bench.sizes.churn, bench.sizes.warm_up);
    // mosquitto: warm-up, then n visits.
    let label = "churn: mosquitto";
    eprintln!("{label}: starting, {} visits", thousands(n));
    let broker = bench.start(Kind::Mosquitto, 0)?;
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
    bench.settle().await;
    let m_before = broker.rss_kib()?;
    visits(
        &format!("{label}: visits"),
        broker.addr,
        visitors,
        &sender,
        "v",
    )
    .await?;
    bench.settle().await;
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
    let broker = bench.tidings_with(0, &cache)?;
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
    bench.settle().await;
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
    bench.settle().await;
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
    bench.settle().await;
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

async fn fresh_ids(bench: &Bench, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let (cycles, warm_up) = (bench.sizes.fresh, bench.sizes.warm_up);
    let mut figures = Vec::new();
    for kind in Kind::BOTH {
        let label = format!("fresh-ids: {}", kind.name());
        eprintln!("{label}: starting, {} cycles", thousands(cycles));
        let broker = bench.start(kind, 0)?;
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
        bench.settle().await;
        let before = broker.rss_kib()?;
        concurrently(
            &format!("{label}: cycles"),
            cycles,
            PER_USER_CAP,
            move |i| cycle(warm_up + i),
        )
        .await?;
        bench.settle().await;
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

/// A rumqttc client (the churn scenario's sender).
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
// Connections

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
/// thousands of connections in one process, and for the throughput scenarios' load.
struct Raw {
    stream: tokio::net::TcpStream,
    /// Read and not yet decoded.
    buf: BytesMut,
    /// Encoded and not yet written.
    out: BytesMut,
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
            out: BytesMut::new(),
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

    /// Encodes one packet and writes it.
    async fn send(
        &mut self,
        encode: impl FnOnce(&mut BytesMut) -> Result<usize, rumqttc::mqttbytes::Error>,
    ) -> anyhow::Result<()> {
        self.queue(encode)?;
        self.flush().await
    }

    /// Encodes one packet, to be written by the next [`Raw::flush`].
    fn queue(
        &mut self,
        encode: impl FnOnce(&mut BytesMut) -> Result<usize, rumqttc::mqttbytes::Error>,
    ) -> anyhow::Result<()> {
        encode(&mut self.out)?;
        Ok(())
    }

    /// Writes every queued packet, in one write when the socket takes it.
    async fn flush(&mut self) -> anyhow::Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// The next packet, read as needed: an error after `ANSWER` without one.
    async fn next(&mut self) -> anyhow::Result<wire::Packet> {
        loop {
            if let Some(packet) = self.packet()? {
                return Ok(packet);
            }
            let read = tokio::time::timeout(ANSWER, self.stream.read_buf(&mut self.buf))
                .await
                .map_err(|_| anyhow::anyhow!("no answer from the server within {ANSWER:?}"))??;
            if read == 0 {
                anyhow::bail!("the server closed the connection");
            }
        }
    }

    /// Reads whatever the server sent (at least a byte), into room for `READ_BUF` bytes.
    async fn read_more(&mut self) -> anyhow::Result<()> {
        self.buf.reserve(READ_BUF);
        if self.stream.read_buf(&mut self.buf).await? == 0 {
            anyhow::bail!("the server closed the connection");
        }
        Ok(())
    }

    /// The next whole packet already read, if any.
    fn packet(&mut self) -> anyhow::Result<Option<wire::Packet>> {
        match wire::Packet::read(&mut self.buf, 1024 * 1024) {
            Ok(packet) => Ok(Some(packet)),
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
            Err(e) => anyhow::bail!("bad packet from the server: {e}"),
        }
    }

    /// Readable (for reads and readiness) only once `bytes` have arrived: SO_RCVLOWAT.
    fn set_receive_low_water(&self, bytes: usize) -> anyhow::Result<()> {
        use std::os::fd::AsRawFd;
        let value = bytes as libc::c_int;
        // SAFETY: setsockopt reads an int from a pointer to one, on a socket this owns.
        let set = unsafe {
            libc::setsockopt(
                self.stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVLOWAT,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        match set {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()).context("SO_RCVLOWAT"),
        }
    }

    /// How many PUBACKs are among the packets already read (the others are dropped).
    fn acks(&mut self) -> anyhow::Result<usize> {
        let mut acks = 0;
        while let Some(packet) = self.packet()? {
            acks += usize::from(matches!(packet, wire::Packet::PubAck(_)));
        }
        Ok(acks)
    }
}

// ---------------------------------------------------------------------------------------------
// The servers

/// A server process on the server CPUs, killed on drop (and when this process ends).
struct Broker {
    kind: Kind,
    addr: SocketAddr,
    http: Option<SocketAddr>,
    /// Login codes read from the console email log, by address (tidings).
    codes: Arc<Mutex<HashMap<String, String>>>,
    /// Before `_dir`: the process goes before its files.
    child: Killed,
    _dir: tempfile::TempDir,
}

impl Broker {
    /// Mosquitto without persistence, without its default cap of 1000 queued messages a
    /// client (past which it drops QoS 1 messages for a slow receiver), and with TCP_NODELAY as
    /// tidings has it (Mosquitto's default leaves Nagle on, which added ~10 ms to its latency
    /// here). `user root`: started as root, it would otherwise switch to the mosquitto user,
    /// and a change of user clears PR_SET_PDEATHSIG (it has no effect when not root).
    fn mosquitto(cpus: &[usize]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(&conf, format!("listener {port} 127.0.0.1\nallow_anonymous true\nuser root\npersistence false\nmax_queued_messages 0\nset_tcp_nodelay true\n"))?;
        let mut command = Command::new(mosquitto_binary());
        command.arg("-c").arg(&conf).stderr(Stdio::null());
        let mut child = Killed::spawn(command, cpus).context("starting mosquitto")?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let deadline = Instant::now() + ANSWER;
        while std::net::TcpStream::connect(addr).is_err() {
            if let Some(status) = child.0.try_wait()? {
                anyhow::bail!("mosquitto exited at start: {status}");
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "mosquitto does not listen on {addr}"
            );
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

    /// tidings with its own temporary store, limits off (`sends_per_user_per_minute` among
    /// them), for `connections` MQTT connections (its default cap when fewer), with more
    /// `TIDINGS_*` settings from `env`. Its warnings and errors are echoed to stderr.
    fn tidings(
        bin: &str,
        connections: usize,
        env: &[(&str, String)],
        cpus: &[usize],
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut command = Command::new(bin);
        command.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        command
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
            .stderr(Stdio::piped());
        let mut child = Killed::spawn(command, cpus).with_context(|| format!("starting {bin}"))?;
        let codes: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stderr = child.0.stderr.take().expect("piped");
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
        let ready = ready_rx
            .recv_timeout(ANSWER)
            .map_err(|_| anyhow::anyhow!("{bin} was not ready within {ANSWER:?} (see above)"))?;
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

    fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// The CPUs the process may run on, as the kernel has them.
    fn cpus_allowed(&self) -> String {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()));
        let status = status.unwrap_or_default();
        let list = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"));
        list.map_or_else(|| "?".to_owned(), |l| l.trim().to_owned())
    }

    /// Whether the process is still there (not exited, not a zombie).
    fn running(&self) -> bool {
        self.rss_kib().is_ok()
    }

    /// The process's resident memory (VmRSS), in KiB.
    fn rss_kib(&self) -> anyhow::Result<i64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| anyhow::anyhow!("{} has exited (no VmRSS)", self.kind.name()))
    }

    /// The process's peak resident memory (VmHWM), in MiB.
    fn peak_rss_mib(&self) -> f64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kib| kib / 1024.0)
    }
}

/// A child process, killed on drop. It runs on the given CPUs and gets SIGKILL when the
/// thread that started it ends (`PR_SET_PDEATHSIG`): start servers from the main thread only.
struct Killed(Child);

impl Killed {
    fn spawn(mut command: Command, cpus: &[usize]) -> std::io::Result<Self> {
        let set = cpu_set(cpus);
        // SAFETY: the closure runs between fork and exec, and makes only async-signal-safe
        // system calls on values it owns.
        unsafe {
            let parent = libc::getpid();
            command.pre_exec(move || {
                if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0
                    || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent already gone: PR_SET_PDEATHSIG came too late.
                if libc::getppid() != parent {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        command.spawn().map(Self)
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One email login: request a code, take it from the log, verify it.
/// `BENCH_FORWARD=1` or `offline`: every tidings user forwards by email, so every message
/// writes a forwarding job in its batch (BENCHMARKS.md, "Forwarding on").
fn forward_all() -> bool {
    std::env::var("BENCH_FORWARD").is_ok_and(|v| v == "1" || v == "offline")
}

/// `BENCH_FORWARD=offline`: the recipients never connect, so every message is forwarded (with
/// no delay, one email digest per recipient per window); a message counts when the sender's
/// second device gets its `message` event.
fn forward_offline() -> bool {
    std::env::var("BENCH_FORWARD").is_ok_and(|v| v == "offline")
}

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
    if let (true, Some(token)) = (forward_all(), tokens["access_token"].as_str()) {
        http.patch(format!("{base}/v1/me"))
            .bearer_auth(token)
            .json(&serde_json::json!({"forward_email": true}))
            .send()
            .await?
            .error_for_status()?;
    }
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

/// Which CPUs the servers and the load run on.
struct Cpus {
    server: Vec<usize>,
    load: Vec<usize>,
    /// No CPU was left for the load alone: it runs on the servers' CPUs too.
    shared: bool,
}

impl Cpus {
    /// The servers on `server` (a CPU list; default: the first CPU this process may use), the
    /// load on the others this process may use, or on all of them when none is left.
    fn choose(server: Option<&str>) -> anyhow::Result<Self> {
        let allowed = affinity()?;
        let server = match server {
            Some(list) => parse_cpu_list(list)?,
            None => vec![allowed[0]],
        };
        if let Some(cpu) = server.iter().find(|cpu| !allowed.contains(cpu)) {
            anyhow::bail!(
                "--server-cpus: CPU {cpu} is not one this process may use ({})",
                cpu_text(&allowed)
            );
        }
        let mut load: Vec<usize> = allowed
            .iter()
            .copied()
            .filter(|c| !server.contains(c))
            .collect();
        let shared = load.is_empty();
        if shared {
            load = allowed;
        }
        Ok(Self {
            server,
            load,
            shared,
        })
    }
}

/// "0,2-3" → [0, 2, 3].
fn parse_cpu_list(list: &str) -> anyhow::Result<Vec<usize>> {
    let bad = || anyhow::anyhow!("bad CPU list {list:?} (expected e.g. 0, 0,1 or 0-3)");
    let mut cpus = Vec::new();
    for part in list.split(',').map(str::trim) {
        let (first, last) = part.split_once('-').unwrap_or((part, part));
        let first: usize = first.trim().parse().map_err(|_| bad())?;
        let last: usize = last.trim().parse().map_err(|_| bad())?;
        anyhow::ensure!(first <= last && last < libc::CPU_SETSIZE as usize, bad());
        cpus.extend(first..=last);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// [0] → "CPU 0", [0, 1] → "CPUs 0,1".
fn cpu_text(cpus: &[usize]) -> String {
    let list: Vec<String> = cpus.iter().map(usize::to_string).collect();
    match cpus.len() {
        1 => format!("CPU {}", list[0]),
        _ => format!("CPUs {}", list.join(",")),
    }
}

fn cpu_set(cpus: &[usize]) -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is a plain bit mask; all zeroes is the empty set, and CPU_SET stays
    // within it (parse_cpu_list keeps CPUs below CPU_SETSIZE).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        set
    }
}

/// The CPUs this process may run on.
fn affinity() -> anyhow::Result<Vec<usize>> {
    // SAFETY: sched_getaffinity writes at most size_of::<cpu_set_t>() bytes into the set.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(std::io::Error::last_os_error()).context("sched_getaffinity");
        }
        set
    };
    // SAFETY: CPU_ISSET reads the set within its size.
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect();
    anyhow::ensure!(!cpus.is_empty(), "sched_getaffinity: no CPU");
    Ok(cpus)
}

/// Pins the calling thread (pid 0), and so the threads it starts afterwards, to `cpus`.
fn set_affinity(pid: libc::pid_t, cpus: &[usize]) -> std::io::Result<()> {
    let set = cpu_set(cpus);
    // SAFETY: sched_setaffinity only reads the set.
    match unsafe { libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

fn online_cpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize
}

/// User + system CPU time of process `pid` ("self" for this one), all its threads, in
/// seconds; NaN when it cannot be read.
fn cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // After "(comm)": state is field 3, utime 14 and stime 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => (user + system) / per_second,
        _ => f64::NAN,
    }
}

/// `mosquitto` from PATH, else from /usr/sbin or /usr/local/sbin (not on every PATH).
fn mosquitto_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let sbin = ["/usr/sbin", "/usr/local/sbin"].map(PathBuf::from);
    std::env::split_paths(&path)
        .chain(sbin)
        .map(|dir| dir.join("mosquitto"))
        .find(|bin| bin.is_file())
        .unwrap_or_else(|| "mosquitto".into())
}

/// "mosquitto version 2.0.11 (/usr/sbin/mosquitto)".
fn mosquitto_version() -> anyhow::Result<String> {
    let bin = mosquitto_binary();
    // `mosquitto -h` prints its version first, and exits with status 3.
    let help = Command::new(&bin).arg("-h").output().context("not found")?;
    let text = String::from_utf8_lossy(&help.stdout);
    let version = text.lines().next().unwrap_or("mosquitto, version unknown");
    Ok(format!("{} ({})", version.trim(), bin.display()))
}

// ---------------------------------------------------------------------------------------------
// The table

/// One line of the table. Figures are (mosquitto, tidings).
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

/// The one table: every row of every scenario that ran.
fn print_table(rows: &[Row]) {
    let measure_width = rows
        .iter()
        .map(|r| r.measure.chars().count())
        .max()
        .unwrap_or(0);
    println!("\nratio = tidings / mosquitto; memory is the server's RSS from /proc/PID/status; MiB = 1024 KiB");
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

/// A figure with `decimals`; whole numbers from 10 000 with thousands apart; "—" for none.
fn show(figure: Option<f64>, decimals: usize) -> String {
    match figure {
        Some(v) if v.is_finite() && decimals == 0 && v >= 9_999.5 => thousands(v.round() as usize),
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "—".to_owned(),
    }
}
