//! The README's walk-through, run as written: its ```sh blocks, from "## Walk-through with curl"
//! to the next level-2 heading, in order, as one `bash -euo pipefail` script in an empty temp dir
//! (with the repository's `broker.toml`, as at the repository root). The one substitution is the
//! build: a `cargo` shim first on PATH execs the binary cargo already built for the tests, so the
//! walk-through's `cargo run --release` starts the same server at once. The walk-through uses the
//! default ports, 8080 and 1883, so the test first checks that nothing else has them.

use std::fs;
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const SECTION: &str = "## Walk-through with curl";
/// Far more than the walk-through needs (a few seconds); it waits in loops that a broken step
/// can leave spinning.
const LIMIT: Duration = Duration::from_secs(120);

/// The ```sh blocks of the README's walk-through section, joined in order.
fn walkthrough_script(readme: &str) -> String {
    let start = readme
        .find(&format!("\n{SECTION}\n"))
        .unwrap_or_else(|| panic!("README.md has no {SECTION:?} section"));
    let section = &readme[start + 1..];
    let end = section[SECTION.len()..]
        .find("\n## ")
        .map_or(section.len(), |i| i + SECTION.len());
    let (mut script, mut in_block, mut blocks) = (String::new(), false, 0);
    for line in section[..end].lines() {
        if in_block {
            if line.trim_end() == "```" {
                in_block = false;
            } else {
                script.push_str(line);
                script.push('\n');
            }
        } else if line.trim_end() == "```sh" {
            in_block = true;
            blocks += 1;
        }
    }
    assert!(!in_block, "a ```sh block of the walk-through is not closed");
    assert!(
        blocks >= 3,
        "only {blocks} ```sh blocks in the walk-through"
    );
    script
}

/// Fails with a clear message when something listens on `port` or it cannot be bound.
fn assert_port_free(port: u16, what: &str) {
    let listening = ("localhost", port)
        .to_socket_addrs()
        .unwrap()
        .any(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok());
    let bindable = TcpListener::bind(("127.0.0.1", port)).is_ok();
    assert!(
        !listening && bindable,
        "the README walk-through needs port {port} ({what}) free, as on a fresh machine, and it \
         is in use: stop what listens there (`ss -ltnp 'sport = :{port}'` names it; a system \
         Mosquitto on 1883: `sudo systemctl disable --now mosquitto`) and run the test again"
    );
}

/// The `cargo` the walk-through finds first on PATH: `cargo run --release [-- ARGS]` execs the
/// test build of `tidings` with ARGS; anything else is an error.
fn write_cargo_shim(bin_dir: &Path) {
    let shim = format!(
        r#"#!/bin/sh
# The README walk-through's `cargo run --release`, served by the binary already built.
[ "${{1:-}}" = run ] || {{ echo "cargo shim: only 'cargo run' is expected, got: $*" >&2; exit 101; }}
for arg in "$@"; do
  shift
  case $arg in run|--release|--) ;; *) set -- "$@" "$arg" ;; esac
done
exec "{bin}" "$@"
"#,
        bin = env!("CARGO_BIN_EXE_tidings")
    );
    let path = bin_dir.join("cargo");
    fs::write(&path, shim).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// The script's process group, killed when the test ends however it ends (a step that fails
/// leaves the server and the listeners it started in the background).
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        let pgid = self.0.id() as libc::pid_t;
        // SAFETY: kill only sends a signal, to the group this test made.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

/// The JSON lines of a `mosquitto_sub -d` output (the others are the protocol exchange).
fn events(path: &Path) -> Vec<Value> {
    read(path)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn the_readme_walkthrough_runs_as_written() {
    let readme = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let script = walkthrough_script(&readme);
    assert_port_free(8080, "HTTP");
    assert_port_free(1883, "MQTT");

    let dir = tempfile::tempdir().unwrap();
    let (bin_dir, root) = (dir.path().join("bin"), dir.path().join("root"));
    fs::create_dir_all(&bin_dir).unwrap();
    fs::create_dir_all(&root).unwrap();
    write_cargo_shim(&bin_dir);
    fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("broker.toml"),
        root.join("broker.toml"),
    )
    .unwrap();
    let script_path = dir.path().join("walkthrough.sh");
    fs::write(&script_path, &script).unwrap();
    let out_path = dir.path().join("output.txt");
    let out = fs::File::create(&out_path).unwrap();

    let mut command = Command::new("bash");
    command
        .args(["-euo", "pipefail"])
        .arg(&script_path)
        .current_dir(&root)
        .env(
            "PATH",
            format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap()),
        )
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .process_group(0);
    // As on a fresh machine: no tidings settings from this environment.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("TIDINGS_") {
            command.env_remove(key);
        }
    }
    let started = Instant::now();
    let mut group = Group(command.spawn().expect("bash runs"));
    let status = loop {
        if let Some(status) = group.0.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > LIMIT {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let report = || {
        format!(
            "--- the walk-through's output\n{}\n--- tidings.log\n{}\n--- bob-inbox.txt\n{}\n--- ann-inbox.txt\n{}",
            read(&out_path),
            read(&root.join("tidings.log")),
            read(&root.join("bob-inbox.txt")),
            read(&root.join("ann-inbox.txt")),
        )
    };
    match status {
        None => panic!("the walk-through still ran after {LIMIT:?}\n{}", report()),
        Some(status) => assert!(
            status.success(),
            "the walk-through failed ({status}): the last command run is the last one in its \
             output\n{}",
            report()
        ),
    }
    eprintln!("the walk-through took {:?}", started.elapsed());

    // Bob's phone got Ann's message; Ann's phone got it too (her acknowledgement), then Bob's
    // read receipt.
    let bob = events(&root.join("bob-inbox.txt"));
    assert_eq!(bob.len(), 1, "one event for Bob\n{}", report());
    let message = &bob[0];
    assert_eq!(message["type"], "message", "Bob's event\n{}", report());
    assert_eq!(message["body"], "hello", "Bob's event\n{}", report());
    assert_eq!(message["seq"], 1, "Bob's event\n{}", report());
    assert_eq!(
        message["client_msg_id"],
        "c-0001",
        "Bob's event\n{}",
        report()
    );
    let (ann_id, bob_id) = (&message["from"], &message["to"]);
    let ann = events(&root.join("ann-inbox.txt"));
    assert_eq!(ann.len(), 2, "two events for Ann\n{}", report());
    assert_eq!(&ann[0], message, "Ann's first event\n{}", report());
    assert_eq!(ann[1]["type"], "read", "Ann's second event\n{}", report());
    assert_eq!(
        (&ann[1]["by"], &ann[1]["peer"], &ann[1]["seq"]),
        (bob_id, ann_id, &Value::from(1)),
        "Bob's read receipt\n{}",
        report()
    );

    // What the curl steps printed: Ann's new name in /v1/me and in Bob's lookup, the message
    // in the history, the read marker in Ann's conversations, and the logout's 204.
    let output = read(&out_path);
    let printed: Vec<Value> = output
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let shown = |what: &str, check: &dyn Fn(&Value) -> bool| {
        assert!(
            printed.iter().any(check),
            "the output does not show {what}\n{}",
            report()
        );
    };
    shown("Ann's name in /v1/me", &|v| {
        v["user_id"] == *ann_id && v["display_name"] == "Ann" && v["forward_sms"] == true
    });
    shown("Ann's name in Bob's lookup", &|v| {
        *v == serde_json::json!({"user_id": ann_id, "display_name": "Ann"})
    });
    shown("the message in the history", &|v| {
        *v == serde_json::json!({"messages": [message], "has_more": false})
    });
    shown("Bob's read marker in Ann's conversations", &|v| {
        let c = &v["conversations"][0];
        c["peer_id"] == *bob_id && c["peer_read_seq"] == 1 && c["unread"] == 0
    });
    assert!(
        output.lines().any(|l| l == "204"),
        "no 204 from the logout\n{}",
        report()
    );

    // The last step stopped the server cleanly (the script waited for its exit 0), so the
    // ports are free again.
    assert!(
        read(&root.join("tidings.log")).contains("shutting down"),
        "the server was not stopped\n{}",
        report()
    );
    assert!(TcpListener::bind(("127.0.0.1", 8080)).is_ok());
    assert!(TcpListener::bind(("127.0.0.1", 1883)).is_ok());
}
