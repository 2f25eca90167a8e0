//! The client examples of `examples/clients/` (Python with paho-mqtt, Node with mqtt.js) as
//! real processes against the real server: Ann in Python, Bob in Node, chatting, through a token
//! refresh, and Bob away and back. The test reads what each prints and feeds their stdin, as a
//! user would; their dependencies are what `scripts/install-test-deps` installs (a venv and
//! `node_modules` in the examples' folders), and the test fails, never skips, without them.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::*;

const ANN: &str = "+14155550101";
const BOB: &str = "+14155550102";
/// How long a client may take to print what the test waits for.
const WAIT: Duration = Duration::from_secs(20);

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/clients")
}

/// The venv's Python, checked to have paho-mqtt 2.
fn python() -> PathBuf {
    let python = examples().join("python/.venv/bin/python");
    let ok = Command::new(&python)
        .args([
            "-c",
            "import paho.mqtt; assert paho.mqtt.__version__.startswith('2.')",
        ])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{} with paho-mqtt 2 is missing: run scripts/install-test-deps",
        python.display()
    );
    python
}

/// `node`, with the example's `node_modules` in place.
fn node() -> &'static str {
    let mqtt = examples().join("js/node_modules/mqtt/package.json");
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()) && mqtt.exists(),
        "node or {} is missing: install Node 18+ and run scripts/install-test-deps",
        mqtt.display()
    );
    "node"
}

/// One example client: its stdin, and every line it printed so far (stdout and stderr).
struct Client {
    name: &'static str,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Client {
    fn spawn(name: &'static str, mut command: Command) -> Self {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{name} starts: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        for (out, prefix) in [
            (Box::new(stdout) as Box<dyn std::io::Read + Send>, ""),
            (Box::new(stderr), "stderr: "),
        ] {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(format!("{prefix}{line}"));
                }
            });
        }
        Self {
            name,
            stdin: child.stdin.take(),
            child,
            lines,
        }
    }

    fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Types `line` (a message, or the login code).
    fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Waits for a line containing `needle` after line `from`; its index.
    async fn wait_for_after(&self, needle: &str, from: usize) -> usize {
        let deadline = Instant::now() + WAIT;
        loop {
            let found = {
                let lines = self.lines.lock().unwrap();
                lines[from.min(lines.len())..]
                    .iter()
                    .position(|l| l.contains(needle))
            };
            if let Some(i) = found {
                return from + i;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not print {needle:?} within {WAIT:?}; it printed:\n{}",
                self.name,
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_for(&self, needle: &str) -> usize {
        self.wait_for_after(needle, 0).await
    }

    /// How many lines are exactly `line`.
    fn count(&self, line: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| *l == line)
            .count()
    }

    /// Ends the input (Ctrl-D) and waits for a clean exit.
    async fn quit(mut self) -> String {
        drop(self.stdin.take());
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "{} exited with {status}:\n{}",
                    self.name,
                    self.output()
                );
                return self.output();
            }
            assert!(
                Instant::now() < deadline,
                "{} did not quit:\n{}",
                self.name,
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- {} printed:\n{}", self.name, self.output());
        }
    }
}

/// An example's command, with the settings its README documents.
fn example(app: &TestApp, program: impl AsRef<std::ffi::OsStr>, script: &str) -> Command {
    let mut command = Command::new(program);
    command
        .arg(script)
        .current_dir(examples())
        .env("CHAT_API", format!("http://{}", app.http))
        .env("CHAT_MQTT", format!("mqtt://{}", app.mqtt))
        .env_remove("CHAT_CODE");
    command
}

#[tokio::test]
async fn the_python_and_node_examples_chat_with_each_other() {
    let (python, node) = (python(), node());
    // Access tokens of 6 s: the clients refresh them at 80 %, and reconnect, during the test.
    let app = TestApp::spawn_with(Options::default().env("TIDINGS_AUTH__ACCESS_TTL_SECS", 6)).await;
    let (ann_state, bob_state) = (
        app.dir.path().join("ann.state"),
        app.dir.path().join("bob.state"),
    );

    // Ann (Python) asks for a code herself and reads it from stdin, as a user types it.
    let mut command = example(&app, &python, "python/chat.py");
    command
        .env("CHAT_PHONE", "+1 415 555 0101")
        .env("CHAT_PEER", "+1 415 555 0102")
        .env("CHAT_STATE", &ann_state);
    let mut ann = Client::spawn("Ann (Python)", command);
    let code = app.twilio.code(ANN, 1).await;
    ann.type_line(&code);
    // Bob (Node) gets a code he asked for already, in CHAT_CODE.
    let code = app.phone_code(BOB, BOB).await;
    let mut command = example(&app, node, "js/chat.mjs");
    command
        .env("CHAT_PHONE", BOB)
        .env("CHAT_PEER", ANN)
        .env("CHAT_STATE", &bob_state)
        .env("CHAT_CODE", &code);
    let mut bob = Client::spawn("Bob (Node)", command);
    ann.wait_for("online").await;
    bob.wait_for("online").await;

    // A message each way: each sees its own (stored) and the other's, and a read receipt.
    ann.type_line("hello Bob, from Python");
    bob.wait_for("[1] peer: hello Bob, from Python").await;
    ann.wait_for("[1] me: hello Bob, from Python").await;
    ann.wait_for("read: peer has read up to 1").await;
    bob.type_line("hi Ann, from Node");
    ann.wait_for("[2] peer: hi Ann, from Node").await;
    bob.wait_for("[2] me: hi Ann, from Node").await;
    bob.wait_for("read: peer has read up to 2").await;

    // Both refresh their token before it expires and reconnect with the new one; the chat goes
    // on past the first token's expiry.
    for client in [&ann, &bob] {
        let refreshed = client.wait_for("token refreshed; reconnecting").await;
        client.wait_for_after("online", refreshed).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    ann.type_line("after the refresh");
    bob.wait_for("[3] peer: after the refresh").await;
    ann.wait_for("read: peer has read up to 3").await;

    // Bob quits; Ann writes while he is away; Bob comes back (his refresh token from his state
    // file, no code) and sees what he missed, once, although his kept MQTT session may bring it
    // too, then reads it.
    let first_run = bob.quit().await;
    ann.type_line("while you were away");
    ann.wait_for("[4] me: while you were away").await;
    let mut command = example(&app, node, "js/chat.mjs");
    command
        .env("CHAT_PHONE", BOB)
        .env("CHAT_PEER", ANN)
        .env("CHAT_STATE", &bob_state);
    let bob = Client::spawn("Bob (Node), again", command);
    bob.wait_for("online").await;
    bob.wait_for("[4] peer: while you were away").await;
    ann.wait_for("read: peer has read up to 4").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        bob.count("[4] peer: while you were away"),
        1,
        "{}",
        bob.output()
    );
    assert!(
        !bob.output().contains("[3]"),
        "only what he missed:\n{}",
        bob.output()
    );
    let second_run = bob.quit().await;
    let ann_output = ann.quit().await;
    assert_eq!(app.sms_count(BOB), 1, "Bob came back without a new code");

    // What the server has: the four messages in order, from the right users, and both read
    // markers (as any device of Ann's would see them), with Ann's kept refresh token.
    let user_id = |output: &str| {
        output
            .lines()
            .find_map(|l| Some(l.split_once("logged in as ")?.1))
            .expect("logged in")
            .to_owned()
    };
    let (ann_id, bob_id) = (user_id(&ann_output), user_id(&first_run));
    assert_eq!(user_id(&second_run), bob_id);
    let state: Value = serde_json::from_str(&std::fs::read_to_string(&ann_state).unwrap()).unwrap();
    let refreshed = app
        .post(
            "/v1/auth/refresh",
            json!({"refresh_token": state["refresh_token"]}),
        )
        .await;
    assert_eq!(refreshed.status, 200, "{refreshed:?}");
    assert_eq!(refreshed.body["user_id"], ann_id.as_str());
    let token = refreshed.body["access_token"].as_str().unwrap();
    let history = app
        .get(&format!("/v1/conversations/{bob_id}/messages"), token)
        .await;
    let messages: Vec<(u64, &str, &str)> = history.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["seq"].as_u64().unwrap(),
                m["from"].as_str().unwrap(),
                m["body"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        messages,
        [
            (1, ann_id.as_str(), "hello Bob, from Python"),
            (2, bob_id.as_str(), "hi Ann, from Node"),
            (3, ann_id.as_str(), "after the refresh"),
            (4, ann_id.as_str(), "while you were away"),
        ]
    );
    let conversations = app.get("/v1/conversations", token).await;
    let conversation = &conversations.body["conversations"][0];
    assert_eq!(conversation["peer_id"], bob_id.as_str());
    assert_eq!(
        (&conversation["read_seq"], &conversation["peer_read_seq"]),
        (&json!(2), &json!(4)),
        "{conversations:?}"
    );
}
