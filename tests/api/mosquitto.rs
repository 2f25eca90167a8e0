//! The walk-through of the README with the real `mosquitto_pub` and `mosquitto_sub`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test]
async fn mosquitto_pub_to_mosquitto_sub() {
    let app = TestApp::spawn().await;
    let ann = app.login("+14155550101").await;
    let bob = app.login("+14155550102").await;

    // Bob listens for one event (at most 10 s); -d also prints the protocol exchange, so the
    // test can wait for the SUBACK, and the event is the line that is JSON. stdbuf makes it
    // write line by line into the pipe rather than all at exit.
    let mut sub = mosquitto(&["stdbuf", "-oL", "mosquitto_sub"], app.mqtt, &bob)
        .args([
            "-d",
            "-i",
            "bob-phone",
            "-t",
            &format!("users/{}/inbox", bob.user_id),
            "-C",
            "1",
            "-W",
            "10",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub is installed (scripts/install-test-deps)");
    let stdout = BufReader::new(sub.stdout.take().unwrap());
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let wait = Duration::from_secs(10);
    while !lines
        .recv_timeout(wait)
        .expect("mosquitto_sub subscribes")
        .contains("received SUBACK")
    {}

    let command = json!({"type": "send", "to": bob.user_id, "body": "hello from mosquitto", "client_msg_id": "m-1"});
    let status = mosquitto(&["mosquitto_pub"], app.mqtt, &ann)
        .args([
            "-i",
            "ann-phone",
            "-t",
            &format!("users/{}/outbox", ann.user_id),
            "-m",
            &command.to_string(),
        ])
        .status()
        .unwrap();
    assert!(status.success());

    let event_line = loop {
        let line = lines
            .recv_timeout(wait)
            .expect("mosquitto_sub got an event");
        if line.starts_with('{') {
            break line;
        }
    };
    assert!(tokio::task::spawn_blocking(move || sub.wait())
        .await
        .unwrap()
        .unwrap()
        .success());
    let event: Value = serde_json::from_str(&event_line).unwrap();
    assert_eq!(event["type"], "message");
    assert_eq!(event["from"], ann.user_id.as_str());
    assert_eq!(event["body"], "hello from mosquitto");
    assert_eq!(event["seq"], 1);
}

#[tokio::test]
async fn mosquitto_with_a_bad_token_is_told_not_authorised() {
    let app = TestApp::spawn().await;
    let mut ann = app.login("+14155550101").await;
    ann.access = "forged".into();
    let output = mosquitto(&["mosquitto_sub"], app.mqtt, &ann)
        .args([
            "-t",
            &format!("users/{}/inbox", ann.user_id),
            "-C",
            "1",
            "-W",
            "5",
        ])
        .output()
        .unwrap();
    // mosquitto_sub exits with the CONNACK code: 5, not authorised.
    assert_eq!(
        output.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("not authorised"));
}

#[test]
fn the_demo_script_runs_the_walk_through() {
    let output = Command::new("scripts/demo.sh")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("DEMO_BIN", env!("CARGO_BIN_EXE_tidings"))
        .env("DEMO_HTTP_PORT", free_port().to_string())
        .env("DEMO_MQTT_PORT", free_port().to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("demo: OK"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
