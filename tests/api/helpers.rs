//! Test harness: the real `tidings` binary on random ports with a temp data dir, a fake Twilio
//! gateway on loopback (records what it is sent, answers what it is told), and, when asked, a
//! real SMTP server (aiosmtpd) on loopback writing to a Maildir.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Form, Router};
use serde_json::{json, Value};

pub const TWILIO_SID: &str = "ACtest0000";
pub const TWILIO_TOKEN: &str = "twilio-secret-token";
pub const TWILIO_FROM: &str = "+15005550006";

/// In [`FakeTwilio::answer`]: do not answer (for two minutes).
pub const HANG: u16 = 0;

/// One SMS the fake gateway accepted or refused.
#[derive(Debug, Clone)]
pub struct SmsRequest {
    pub path: String,
    pub authorization: String,
    pub form: HashMap<String, String>,
}

/// A loopback HTTP server speaking just enough of the Twilio Messages API.
#[derive(Clone)]
pub struct FakeTwilio {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<SmsRequest>>>,
    /// Statuses to answer, first to last ([`HANG`]: none); 201 once it runs out.
    script: Arc<Mutex<VecDeque<u16>>>,
}

impl FakeTwilio {
    pub async fn start() -> Self {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(VecDeque::new()));
        let state = (requests.clone(), script.clone());
        let app = Router::new()
            .route(
                "/2010-04-01/Accounts/{sid}/Messages.json",
                post(fake_twilio_messages),
            )
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            addr,
            requests,
            script,
        }
    }

    /// The next answers, e.g. `[503, 503]` for two failures before success.
    pub fn answer(&self, statuses: &[u16]) {
        self.script.lock().unwrap().extend(statuses);
    }

    pub fn requests(&self) -> Vec<SmsRequest> {
        self.requests.lock().unwrap().clone()
    }

    /// Waits for the `n`th (1-based) SMS to `to` and returns its body.
    pub async fn nth_sms_to(&self, to: &str, n: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let bodies: Vec<String> = self
                .requests()
                .into_iter()
                .filter(|r| r.form.get("To").map(String::as_str) == Some(to))
                .map(|r| r.form.get("Body").cloned().unwrap_or_default())
                .collect();
            if bodies.len() >= n {
                return bodies[n - 1].clone();
            }
            assert!(
                Instant::now() < deadline,
                "no SMS #{n} to {to}; got {bodies:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The code in the newest SMS to `to`, waiting for SMS number `n`.
    pub async fn code(&self, to: &str, n: usize) -> String {
        extract_code(&self.nth_sms_to(to, n).await)
    }
}

type FakeState = (Arc<Mutex<Vec<SmsRequest>>>, Arc<Mutex<VecDeque<u16>>>);

async fn fake_twilio_messages(
    State((requests, script)): State<FakeState>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> (StatusCode, String) {
    requests.lock().unwrap().push(SmsRequest {
        path: uri.path().to_owned(),
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
        form,
    });
    let status = script.lock().unwrap().pop_front().unwrap_or(201);
    if status == HANG {
        // Past any client's timeout: the request is never answered in time.
        tokio::time::sleep(Duration::from_secs(120)).await;
    }
    (
        StatusCode::from_u16(status).unwrap(),
        r#"{"sid": "SMfake"}"#.to_owned(),
    )
}

/// The first six-digit run in `text`.
pub fn extract_code(text: &str) -> String {
    text.split(|c: char| !c.is_ascii_digit())
        .find(|w| w.len() == 6)
        .unwrap_or_else(|| panic!("no code in {text:?}"))
        .to_owned()
}

/// A real SMTP server (Debian's python3-aiosmtpd) on loopback, delivering into a Maildir.
pub struct SmtpServer {
    pub port: u16,
    maildir: PathBuf,
    child: Child,
}

impl SmtpServer {
    pub fn start(dir: &Path) -> Self {
        let maildir = dir.join("maildir");
        let port = free_port();
        let child = Command::new("/usr/bin/python3")
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("aiosmtpd runs (apt-get install python3-aiosmtpd; .ci/run installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "aiosmtpd did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            port,
            maildir,
            child,
        }
    }

    /// Every message delivered so far, raw.
    pub fn messages(&self) -> Vec<String> {
        let mut files: Vec<_> = std::fs::read_dir(self.maildir.join("new"))
            .map(|dir| dir.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        files
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .collect()
    }

    /// Waits for a message to `to` and returns it raw.
    pub async fn message_to(&self, to: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(m) = self
                .messages()
                .into_iter()
                .find(|m| m.contains(&format!("X-RcptTo: {to}")))
            {
                return m;
            }
            assert!(Instant::now() < deadline, "no email to {to}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How to start the app: extra environment overrides on top of the test config.
#[derive(Default, Clone)]
pub struct Options {
    pub env: Vec<(String, String)>,
    pub smtp_port: Option<u16>,
    /// The open-files limit (soft and hard) the binary starts under.
    pub open_files: Option<u64>,
}

impl Options {
    pub fn env(mut self, key: &str, value: impl ToString) -> Self {
        self.env.push((key.to_owned(), value.to_string()));
        self
    }
}

/// The real `tidings` binary, started on random ports with its own data dir.
pub struct TestApp {
    pub http: SocketAddr,
    pub mqtt: SocketAddr,
    /// MQTT over WebSocket (`ws://{ws}/mqtt`).
    pub ws: SocketAddr,
    pub twilio: FakeTwilio,
    pub client: reqwest::Client,
    pub dir: tempfile::TempDir,
    options: Options,
    child: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(Options::default()).await
    }

    pub async fn spawn_with(options: Options) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let twilio = FakeTwilio::start().await;
        let mut app = Self {
            http: "127.0.0.1:0".parse().unwrap(),
            mqtt: "127.0.0.1:0".parse().unwrap(),
            ws: "127.0.0.1:0".parse().unwrap(),
            twilio,
            client: reqwest::Client::new(),
            dir,
            options,
            child: None,
            log: Arc::default(),
        };
        app.write_config();
        app.start();
        app
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("broker.toml")
    }

    pub fn data_path(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn write_config(&self) {
        let email = match self.options.smtp_port {
            Some(port) => format!(
                "[email]\nprovider = \"smtp\"\n[email.smtp]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\nfrom = \"tidings <codes@tidings.test>\"\n"
            ),
            None => String::new(),
        };
        let config = format!(
            r#"[http]
listen = "127.0.0.1:0"
[mqtt]
listen = "127.0.0.1:0"
ws_listen = "127.0.0.1:0"
[storage]
path = "{data}"
[sms]
provider = "twilio"
[sms.twilio]
base_url = "http://{twilio}"
account_sid = "{TWILIO_SID}"
auth_token = "{TWILIO_TOKEN}"
from = "{TWILIO_FROM}"
{email}"#,
            data = self.data_path().display(),
            twilio = self.twilio.addr,
        );
        std::fs::write(self.config_path(), config).unwrap();
    }

    /// Starts the binary and waits for its "tidings ready" line.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut command = Command::new(env!("CARGO_BIN_EXE_tidings"));
        command
            .arg("--config")
            .arg(self.config_path())
            .current_dir(self.dir.path())
            .env("RUST_LOG", "info,tidings=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in &self.options.env {
            command.env(k, v);
        }
        if let Some(limit) = self.options.open_files {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe, and the closure touches nothing else.
            unsafe {
                command.pre_exec(move || {
                    let rlimit = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = command.spawn().expect("the tidings binary starts");
        let stderr = child.stderr.take().unwrap();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let log = self.log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("tidings ready") {
                    let _ = ready_tx.send(line.clone());
                }
                log.lock().unwrap().push(line);
            }
        });
        let ready = match ready_rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "tidings did not get ready; log:\n{}",
                    self.log.lock().unwrap().join("\n")
                );
            }
        };
        self.http = field(&ready, "http").parse().unwrap();
        self.mqtt = field(&ready, "mqtt").parse().unwrap();
        self.ws = field(&ready, "ws").parse().unwrap();
        self.child = Some(child);
    }

    /// SIGTERM, and the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("tidings did not stop within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Limits the size of the files the server writes (`RLIMIT_FSIZE`, as `prlimit --fsize`
    /// would): `Some(0)` fails every write to a file, as a full disk does; `None` lifts it.
    pub fn limit_file_size(&self, bytes: Option<u64>) {
        let pid = self.child.as_ref().expect("running").id() as libc::pid_t;
        let limit = libc::rlimit {
            rlim_cur: bytes.unwrap_or(libc::RLIM_INFINITY),
            rlim_max: libc::RLIM_INFINITY,
        };
        // SAFETY: prlimit reads the struct passed and writes nothing (no old-limit pointer).
        let set = unsafe { libc::prlimit(pid, libc::RLIMIT_FSIZE, &limit, std::ptr::null_mut()) };
        assert_eq!(set, 0, "prlimit: {}", std::io::Error::last_os_error());
    }

    /// Waits for the server to exit on its own; its status, or `None` if it still runs.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().expect("running").try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The SMS the gateway got for `to` that forwarded messages (login codes left out).
    pub fn forwarded_sms(&self, to: &str) -> Vec<String> {
        self.twilio
            .requests()
            .into_iter()
            .filter(|r| r.form.get("To").map(String::as_str) == Some(to))
            .map(|r| r.form.get("Body").cloned().unwrap_or_default())
            .filter(|body| !body.contains("tidings code"))
            .collect()
    }

    /// `kill -9`: no chance to flush anything.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM, exit 0, start again (on new ports, with the same data).
    pub fn restart(&mut self) {
        assert!(self.stop().success(), "exit 0 on SIGTERM");
        self.start();
    }

    /// An MQTT connection as `tokens`' user, with `client_id`, subscribed to its inbox.
    pub async fn mqtt_inbox(&self, tokens: &Tokens, client_id: &str) -> Mqtt {
        let mut mqtt = Mqtt::connect(self.mqtt, &tokens.user_id, &tokens.access, client_id, true)
            .await
            .expect("MQTT connect");
        let codes = mqtt
            .subscribe(&format!("users/{}/inbox", tokens.user_id))
            .await;
        assert_eq!(codes, vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]);
        mqtt.user_id = tokens.user_id.clone();
        mqtt
    }

    /// An address from the last "tidings ready" line (`https`, `mqtts`, `wss`, ...).
    pub fn ready_addr(&self, key: &str) -> SocketAddr {
        let log = self.log();
        let ready = log
            .lines()
            .rev()
            .find(|line| line.contains("tidings ready"))
            .expect("a ready line");
        field(ready, key).parse().unwrap()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    pub async fn post(&self, path: &str, body: Value) -> Answer {
        Answer::from(
            self.client
                .post(self.url(path))
                .json(&body)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    pub async fn post_auth(&self, path: &str, token: &str, body: Value) -> Answer {
        let request = self
            .client
            .post(self.url(path))
            .bearer_auth(token)
            .json(&body);
        Answer::from(request.send().await.unwrap()).await
    }

    pub async fn get(&self, path: &str, token: &str) -> Answer {
        Answer::from(
            self.client
                .get(self.url(path))
                .bearer_auth(token)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// The code in the newest console email to `to` (the email provider is `console` unless
    /// the test asked for SMTP), waiting for email number `n` to it.
    /// How many emails the console provider has logged to `to`.
    pub fn email_count(&self, to: &str) -> usize {
        let needle = format!("email to {to}:");
        self.log().lines().filter(|l| l.contains(&needle)).count()
    }

    pub async fn email_code(&self, to: &str, n: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let needle = format!("email to {to}:");
            let lines: Vec<String> = self
                .log
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l.contains(&needle))
                .cloned()
                .collect();
            if lines.len() >= n {
                return extract_code(lines[n - 1].split(&needle).nth(1).unwrap());
            }
            assert!(
                Instant::now() < deadline,
                "no email #{n} to {to} in the log"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `POST /v1/me/{kind}/verify` (`kind` is "email" or "phone") with `value` and `code`.
    pub async fn verify_added(&self, token: &str, kind: &str, value: &str, code: &str) -> Answer {
        let path = format!("/v1/me/{kind}/verify");
        self.post_auth(&path, token, json!({ kind: value, "code": code }))
            .await
    }

    pub async fn patch_me(&self, token: &str, body: Value) -> Answer {
        let request = self
            .client
            .patch(self.url("/v1/me"))
            .bearer_auth(token)
            .json(&body);
        Answer::from(request.send().await.unwrap()).await
    }

    /// `POST /v1/auth/verify` for a phone.
    pub async fn verify(&self, phone: &str, code: &str) -> Answer {
        self.post("/v1/auth/verify", json!({ "phone": phone, "code": code }))
            .await
    }

    /// Requests a code for `phone` and returns it, as the SMS gateway received it.
    pub async fn phone_code(&self, phone: &str, e164: &str) -> String {
        let before = self.sms_count(e164);
        let answer = self.post("/v1/auth/otp", json!({ "phone": phone })).await;
        assert_eq!(answer.status, 202, "{answer:?}");
        self.twilio.code(e164, before + 1).await
    }

    pub fn sms_count(&self, e164: &str) -> usize {
        self.twilio
            .requests()
            .iter()
            .filter(|r| r.form.get("To").map(String::as_str) == Some(e164))
            .count()
    }

    /// Logs `phone` (given in E.164) in and returns the verify answer.
    pub async fn login(&self, e164: &str) -> Tokens {
        let code = self.phone_code(e164, e164).await;
        let answer = self
            .post("/v1/auth/verify", json!({ "phone": e164, "code": code }))
            .await;
        assert_eq!(answer.status, 200, "{answer:?}");
        Tokens::from(&answer.body)
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- tidings log ---\n{}", self.log());
        }
    }
}

/// `key=value` from a log line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

#[derive(Debug, Clone)]
pub struct Tokens {
    pub user_id: String,
    pub access: String,
    pub refresh: String,
    pub new_user: bool,
}

impl From<&Value> for Tokens {
    fn from(body: &Value) -> Self {
        Self {
            user_id: body["user_id"].as_str().unwrap().to_owned(),
            access: body["access_token"].as_str().unwrap().to_owned(),
            refresh: body["refresh_token"].as_str().unwrap().to_owned(),
            new_user: body["new_user"].as_bool().unwrap(),
        }
    }
}

/// An HTTP answer, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    pub async fn from(response: reqwest::Response) -> Self {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Self {
            status,
            headers,
            body,
        }
    }

    /// The contract's error code, asserting the error shape.
    pub fn error_code(&self) -> &str {
        assert!(
            self.body["error"]["message"].is_string(),
            "not an error body: {self:?}"
        );
        self.body["error"]["code"].as_str().unwrap()
    }

    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!((self.status, self.error_code()), (status, code), "{self:?}");
    }

    /// The `Retry-After` header, in seconds; panics without one.
    pub fn retry_after(&self) -> u64 {
        self.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    }
}

use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, MqttOptions, Packet, QoS, SubscribeReasonCode,
};

/// `program` (e.g. `["mosquitto_pub"]`, or `["stdbuf", "-oL", "mosquitto_sub"]`) with the
/// options to reach `addr` as `user` at QoS 1.
pub fn mosquitto(program: &[&str], addr: SocketAddr, user: &Tokens) -> Command {
    let mut command = Command::new(program[0]);
    command
        .args(&program[1..])
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(["-u", &user.user_id, "-P", &user.access, "-q", "1"]);
    command
}

/// A real MQTT client (rumqttc) whose incoming packets are collected for the test.
pub struct Mqtt {
    pub client: AsyncClient,
    pub user_id: String,
    incoming: tokio::sync::mpsc::UnboundedReceiver<Result<Packet, String>>,
}

/// How long a test waits for something to arrive over MQTT.
pub const MQTT_WAIT: Duration = Duration::from_secs(10);

impl Mqtt {
    /// Connects; `Err` with the CONNACK code when refused (or `None` for another failure).
    pub async fn connect(
        addr: SocketAddr,
        username: &str,
        password: &str,
        client_id: &str,
        clean_session: bool,
    ) -> Result<Self, Option<ConnectReturnCode>> {
        let mut options = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
        options.set_clean_session(clean_session);
        Self::connect_with(options, username, password).await
    }

    /// Connects with `options` (e.g. over WebSocket), as `username` with `password`.
    pub async fn connect_with(
        mut options: MqttOptions,
        username: &str,
        password: &str,
    ) -> Result<Self, Option<ConnectReturnCode>> {
        options.set_credentials(username, password);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_max_packet_size(1024 * 1024, 1024 * 1024);
        let (client, mut eventloop) = AsyncClient::new(options, 1000);
        let first = tokio::time::timeout(MQTT_WAIT, eventloop.poll())
            .await
            .map_err(|_| None)?;
        match first {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {}
            Err(rumqttc::ConnectionError::ConnectionRefused(code)) => return Err(Some(code)),
            _ => return Err(None),
        }
        let (tx, incoming) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(packet)) => {
                        if tx.send(Ok(packet)).is_err() {
                            break;
                        }
                    }
                    Ok(Event::Outgoing(_)) => {}
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        break;
                    }
                }
            }
        });
        Ok(Self {
            client,
            user_id: username.to_owned(),
            incoming,
        })
    }

    /// Subscribes to `filter` and returns the SUBACK's codes.
    pub async fn subscribe(&mut self, filter: &str) -> Vec<SubscribeReasonCode> {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .unwrap();
        loop {
            match self.next_packet().await {
                Some(Packet::SubAck(ack)) => return ack.return_codes,
                Some(_) => {}
                None => panic!("connection closed before SUBACK"),
            }
        }
    }

    /// Sends `count` messages to `to` in the background, as fast as the client goes, with
    /// client_msg_ids `{prefix}{i}`; stops early when the connection drops.
    pub fn stream_sends(
        &self,
        to: &str,
        count: usize,
        prefix: &str,
    ) -> tokio::task::JoinHandle<()> {
        let client = self.client.clone();
        let topic = format!("users/{}/outbox", self.user_id);
        let (to, prefix) = (to.to_owned(), prefix.to_owned());
        tokio::spawn(async move {
            for i in 0..count {
                let command = json!({"type": "send", "to": to, "body": format!("message {i}"), "client_msg_id": format!("{prefix}{i}")});
                if client
                    .publish(&topic, QoS::AtLeastOnce, false, command.to_string())
                    .await
                    .is_err()
                {
                    break;
                }
            }
        })
    }

    /// Publishes a `send` command to the own outbox.
    pub async fn send(&self, to: &str, body: &str, client_msg_id: &str) {
        let command =
            json!({"type": "send", "to": to, "body": body, "client_msg_id": client_msg_id});
        self.publish_outbox(command.to_string()).await;
    }

    pub async fn publish_outbox(&self, payload: impl Into<Vec<u8>>) {
        let topic = format!("users/{}/outbox", self.user_id);
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }

    /// The next packet, `None` once the connection is closed. Panics after [`MQTT_WAIT`].
    pub async fn next_packet(&mut self) -> Option<Packet> {
        match tokio::time::timeout(MQTT_WAIT, self.incoming.recv()).await {
            Ok(Some(Ok(packet))) => Some(packet),
            Ok(Some(Err(_)) | None) => None,
            Err(_) => panic!("nothing arrived over MQTT within {MQTT_WAIT:?}"),
        }
    }

    /// The next inbox event, parsed.
    pub async fn event(&mut self) -> Value {
        loop {
            match self.next_packet().await {
                Some(Packet::Publish(publish)) => {
                    assert_eq!(publish.topic, format!("users/{}/inbox", self.user_id));
                    return serde_json::from_slice(&publish.payload).expect("events are JSON");
                }
                Some(_) => {}
                None => panic!("connection closed while waiting for an event"),
            }
        }
    }

    /// Nothing but acks and pings arrives for `wait`.
    pub async fn assert_no_event(&mut self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.incoming.recv()).await {
                Err(_) => return,
                Ok(Some(Ok(Packet::Publish(p)))) => {
                    panic!("unexpected event {:?}", String::from_utf8_lossy(&p.payload))
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_)) | None) => return,
            }
        }
    }

    /// Every event until the connection closes.
    pub async fn events_until_closed(&mut self) -> Vec<Value> {
        let mut events = Vec::new();
        while let Some(packet) = self.next_packet().await {
            if let Packet::Publish(publish) = packet {
                events.push(serde_json::from_slice(&publish.payload).expect("events are JSON"));
            }
        }
        events
    }

    /// Waits until the server closes the connection; panics if it stays open.
    pub async fn assert_closed(&mut self) {
        loop {
            match self.next_packet().await {
                None => return,
                Some(
                    Packet::Publish(_) | Packet::PubAck(_) | Packet::PingResp | Packet::SubAck(_),
                ) => {}
                Some(other) => panic!("unexpected {other:?} while waiting for the close"),
            }
        }
    }
}

impl TestApp {
    /// The server process's resident memory (VmRSS), in KiB.
    pub fn rss_kib(&self) -> u64 {
        let pid = self.child.as_ref().expect("running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }
}

use rumqttc::mqttbytes::v4 as raw;

/// An MQTT client made of a socket and rumqttc's packet codec, for what a client library will
/// not do: an empty client id, a connection that stops reading, acks withheld, thousands of
/// connections cheaply.
pub struct RawMqtt {
    stream: tokio::net::TcpStream,
    buf: bytes::BytesMut,
}

impl RawMqtt {
    /// Connects; the CONNACK's return code and session-present flag.
    pub async fn connect(
        addr: SocketAddr,
        client_id: &str,
        username: &str,
        password: &str,
        clean_session: bool,
    ) -> (Self, raw::ConnectReturnCode, bool) {
        let mut mqtt = Self::open(addr).await;
        let mut connect = raw::Connect::new(client_id);
        connect.keep_alive = 0;
        connect.clean_session = clean_session;
        connect.set_login(username, password);
        let mut out = bytes::BytesMut::new();
        connect.write(&mut out).unwrap();
        mqtt.write(&out).await;
        match mqtt.next().await {
            Some(raw::Packet::ConnAck(ack)) => (mqtt, ack.code, ack.session_present),
            other => panic!("expected a CONNACK, got {other:?}"),
        }
    }

    /// A bare socket to `addr`, for packets written by hand.
    pub async fn open(addr: SocketAddr) -> Self {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        Self {
            stream,
            buf: bytes::BytesMut::new(),
        }
    }

    /// Exactly `n` bytes from the server.
    pub async fn read_bytes(&mut self, n: usize) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        while self.buf.len() < n {
            let read = tokio::time::timeout(MQTT_WAIT, self.stream.read_buf(&mut self.buf))
                .await
                .expect("the server answers within MQTT_WAIT");
            assert!(matches!(read, Ok(r) if r > 0), "closed before {n} bytes");
        }
        self.buf.split_to(n).to_vec()
    }

    /// Every byte the server sends until it closes the connection.
    pub async fn read_to_end(&mut self) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        loop {
            let read = tokio::time::timeout(MQTT_WAIT, self.stream.read_buf(&mut self.buf))
                .await
                .expect("the server closes within MQTT_WAIT");
            if matches!(read, Ok(0) | Err(_)) {
                return std::mem::take(&mut self.buf).to_vec();
            }
        }
    }

    /// Subscribes at QoS 1 to `filter` without waiting for the SUBACK.
    pub async fn subscribe(&mut self, filter: &str) {
        let mut subscribe = raw::Subscribe::new(filter, rumqttc::mqttbytes::QoS::AtLeastOnce);
        subscribe.pkid = 1;
        let mut out = bytes::BytesMut::new();
        subscribe.write(&mut out).unwrap();
        self.write(&out).await;
    }

    /// Publishes each of `payloads` to `topic` at QoS 1 (packet ids 1, 2, ...), all in one
    /// write.
    pub async fn publish_all(&mut self, topic: &str, payloads: impl IntoIterator<Item = Vec<u8>>) {
        let mut out = bytes::BytesMut::new();
        for (i, payload) in payloads.into_iter().enumerate() {
            let mut publish =
                raw::Publish::new(topic, rumqttc::mqttbytes::QoS::AtLeastOnce, payload);
            publish.pkid = u16::try_from(i + 1).expect("at most 65 535 publishes");
            publish.write(&mut out).unwrap();
        }
        self.write(&out).await;
    }

    pub async fn puback(&mut self, pkid: u16) {
        let mut out = bytes::BytesMut::new();
        raw::PubAck::new(pkid).write(&mut out).unwrap();
        self.write(&out).await;
    }

    pub async fn disconnect(mut self) {
        let mut out = bytes::BytesMut::new();
        raw::Disconnect.write(&mut out).unwrap();
        self.write(&out).await;
    }

    /// The next packet from the server; `None` once it closed the connection.
    pub async fn next(&mut self) -> Option<raw::Packet> {
        use tokio::io::AsyncReadExt;
        loop {
            match raw::Packet::read(&mut self.buf, 1024 * 1024) {
                Ok(packet) => return Some(packet),
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => panic!("bad packet from the server: {e}"),
            }
            let read = tokio::time::timeout(MQTT_WAIT, self.stream.read_buf(&mut self.buf))
                .await
                .expect("the server answers within MQTT_WAIT");
            if matches!(read, Ok(0) | Err(_)) {
                return None;
            }
        }
    }

    /// The socket itself, for writes the test times.
    pub fn stream_mut(&mut self) -> &mut tokio::net::TcpStream {
        &mut self.stream
    }

    /// Writes `bytes` as they are (half a packet, say).
    pub async fn write(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await.unwrap();
    }
}

/// How many messages a forwarded SMS holds ("Ann: ..." is one, "3 new messages from Ann: ..."
/// three).
pub fn messages_in(sms: &str) -> usize {
    match sms.split_once(" new messages from ") {
        Some((n, _)) => n.parse().unwrap(),
        None => 1,
    }
}

/// Raises this test process's own open-files limit to its hard limit (tests that hold many
/// sockets).
pub fn raise_own_open_files() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
}

/// Reads from `stream` until the server closes it; what it sent, or `None` if it was still
/// open after `within`.
pub async fn read_until_closed(
    stream: &mut tokio::net::TcpStream,
    within: Duration,
) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let mut buf = [0u8; 4096];
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Runs the binary with `config` and returns (exit code, stderr).
pub fn run_with_config(config: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broker.toml");
    std::fs::write(&path, config).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .arg("--config")
        .arg(&path)
        .current_dir(dir.path())
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The one `error:` line of a failed start.
pub fn error_line(stderr: &str) -> String {
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one error line, in {stderr}");
    errors[0].to_owned()
}
