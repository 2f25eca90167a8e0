//! End-to-end benchmark: tidings against plain Mosquitto, same machine, same run, same clients.
//!
//! `PAIRS` senders each send messages (QoS 1, a 200-byte body) to their own receiver, keeping at
//! most `WINDOW` unacknowledged; every receiver counts what arrives and how long each message
//! took from publish to arrival. Two phases: as fast as the senders can (throughput; latency
//! there is queueing), then paced at `PACED_RATE` messages/s in all (latency under a steady load).
//!
//! - tidings: the real binary (release), login over HTTP, `send` commands to the outbox; a
//!   message arrives once it is fsync'd and published to the inbox (the full path).
//! - Mosquitto: the sender publishes the same bytes straight to the receiver's topic; nothing is
//!   stored (Mosquitto's default), no authentication, no ACL.
//!
//! Run with `scripts/bench` (it builds in release and installs mosquitto if missing). Figures go
//! to stdout; nothing is asserted.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

const PAIRS: usize = 16;
const MESSAGES: usize = 2_000;
const WINDOW: usize = 64;
const PACED_RATE: f64 = 5_000.0;
const PACED_MESSAGES: usize = 500;
/// A receiver that sees nothing for this long stops counting.
const IDLE: Duration = Duration::from_secs(3);
const BODY: usize = 200;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let tidings_bin = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/release/tidings".into());
    println!("{PAIRS} sender→receiver pairs, QoS 1, {BODY} B bodies, window {WINDOW}");

    let mosquitto = Broker::mosquitto()?;
    let mosquitto_flat = run(&Target::Mosquitto(mosquitto.addr), None, MESSAGES).await?;
    let mosquitto_paced = run(
        &Target::Mosquitto(mosquitto.addr),
        Some(PACED_RATE),
        PACED_MESSAGES,
    )
    .await?;
    let mosquitto_rss = mosquitto.peak_rss_mib();
    drop(mosquitto);

    let tidings = Broker::tidings(&tidings_bin)?;
    let users = tidings.login_pairs(PAIRS).await?;
    let target = Target::Tidings(tidings.addr, users);
    let tidings_flat = run(&target, None, MESSAGES).await?;
    let tidings_paced = run(&target, Some(PACED_RATE), PACED_MESSAGES).await?;
    let tidings_rss = tidings.peak_rss_mib();
    drop(tidings);

    for (title, base, ours) in [
        (
            format!("flat out, {MESSAGES} messages a pair"),
            &mosquitto_flat,
            &tidings_flat,
        ),
        (
            format!("paced at {PACED_RATE} msg/s in all, {PACED_MESSAGES} a pair"),
            &mosquitto_paced,
            &tidings_paced,
        ),
    ] {
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

/// A broker process, killed on drop.
struct Broker {
    addr: SocketAddr,
    http: Option<SocketAddr>,
    log: Arc<Mutex<Vec<String>>>,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Broker {
    /// Mosquitto without persistence, and without its default cap of 1000 queued messages a
    /// client (past which it drops QoS 1 messages for a slow receiver).
    fn mosquitto() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(&conf, format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\n"))?;
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
            addr,
            http: None,
            log: Arc::default(),
            child,
            _dir: dir,
        })
    }

    fn tidings(bin: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut child = Command::new(bin)
            .arg("--config")
            .arg(dir.path().join("none.toml"))
            .env("TIDINGS_HTTP__LISTEN", "127.0.0.1:0")
            .env("TIDINGS_MQTT__LISTEN", "127.0.0.1:0")
            .env("TIDINGS_STORAGE__PATH", dir.path().join("data"))
            .env("TIDINGS_LIMITS__OTP_RESEND_SECS", "0")
            .env("TIDINGS_LIMITS__OTP_PER_IDENTITY_PER_HOUR", "0")
            .env("TIDINGS_LIMITS__OTP_PER_IP_PER_HOUR", "0")
            .env("TIDINGS_LIMITS__SENDS_PER_USER_PER_MINUTE", "0")
            .env("RUST_LOG", "warn,tidings=info")
            .stderr(Stdio::piped())
            .spawn()?;
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().expect("piped");
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("tidings ready") {
                    let _ = ready_tx.send(line.clone());
                }
                lines.lock().unwrap().push(line);
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
            addr: field("mqtt=")?,
            http: Some(field("http=")?),
            log,
            child,
            _dir: dir,
        })
    }

    /// Logs in two users per pair over HTTP, reading the codes from the console SMS log.
    async fn login_pairs(&self, pairs: usize) -> anyhow::Result<Vec<(Login, Login)>> {
        let http = reqwest::Client::new();
        let base = format!("http://{}", self.http.expect("tidings has HTTP"));
        let mut logins = Vec::new();
        for n in 0..pairs * 2 {
            let phone = format!("+1415555{:04}", 1000 + n);
            http.post(format!("{base}/v1/auth/otp"))
                .json(&serde_json::json!({"phone": phone}))
                .send()
                .await?
                .error_for_status()?;
            let code = loop {
                let found = self
                    .log
                    .lock()
                    .unwrap()
                    .iter()
                    .rev()
                    .find(|l| l.contains(&format!("SMS to {phone}:")))
                    .cloned();
                if let Some(line) = found {
                    break line
                        .split("code is ")
                        .nth(1)
                        .map(|s| s[..6].to_owned())
                        .unwrap_or_default();
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            };
            let tokens: serde_json::Value = http
                .post(format!("{base}/v1/auth/verify"))
                .json(&serde_json::json!({"phone": phone, "code": code}))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            logins.push(Login {
                user_id: tokens["user_id"].as_str().unwrap_or_default().to_owned(),
                token: tokens["access_token"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            });
        }
        Ok(logins
            .chunks(2)
            .map(|p| (p[0].clone(), p[1].clone()))
            .collect())
    }
}

impl Broker {
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
