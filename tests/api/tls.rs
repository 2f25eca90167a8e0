//! TLS (contract v1.1 `[tls]`): HTTPS checked with `curl --cacert`, MQTT over TLS with
//! `mosquitto_sub --cafile` and `mosquitto_pub --cafile`, against a certificate the test makes;
//! a certificate that cannot be read stops the server at start with one line.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::helpers::*;

/// A self-signed certificate for 127.0.0.1 and localhost (EC P-256), made with `openssl`:
/// (certificate, key).
fn make_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl is installed");
    succeeded(&made);
    (cert, key)
}

/// Asserts a command exited 0, showing its stderr if not.
fn succeeded(output: &std::process::Output) {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn tls_options(cert: &Path, key: &Path) -> Options {
    Options::default()
        .env("TIDINGS_HTTP__TLS_LISTEN", "127.0.0.1:0")
        .env("TIDINGS_MQTT__TLS_LISTEN", "127.0.0.1:0")
        .env("TIDINGS_MQTT__WSS_LISTEN", "127.0.0.1:0")
        .env("TIDINGS_TLS__CERT", cert.display())
        .env("TIDINGS_TLS__KEY", key.display())
}

#[tokio::test]
async fn https_and_mqtt_over_tls_with_curl_and_mosquitto() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = make_certificate(dir.path());
    let app = TestApp::spawn_with(tls_options(&cert, &key)).await;
    let ann = app.login("+14155550101").await;
    let bob = app.login("+14155550102").await;
    let https = app.ready_addr("https");
    let mqtts = app.ready_addr("mqtts");

    // HTTPS, the certificate checked against the one the test made.
    let curl = Command::new("curl")
        .args(["-sS", "--fail", "--cacert"])
        .arg(&cert)
        .arg(format!("https://{https}/v1/me"))
        .args(["-H", &format!("Authorization: Bearer {}", ann.access)])
        .output()
        .unwrap();
    succeeded(&curl);
    let me: Value = serde_json::from_slice(&curl.stdout).unwrap();
    assert_eq!(me["user_id"], ann.user_id.as_str());
    // Without the certificate, curl refuses the server (it is no public CA's).
    let untrusted = Command::new("curl")
        .args(["-sS", &format!("https://{https}/healthz")])
        .output()
        .unwrap();
    assert!(!untrusted.status.success());

    // Secure WebSocket: the TLS handshake, then the upgrade at /mqtt to the mqtt subprotocol.
    let wss = app.ready_addr("wss");
    let upgrade = Command::new("curl")
        .args([
            "-sS",
            "-i",
            "-N",
            "--http1.1",
            "--max-time",
            "2",
            "--cacert",
        ])
        .arg(&cert)
        .args(["-H", "Connection: Upgrade", "-H", "Upgrade: websocket"])
        .args([
            "-H",
            "Sec-WebSocket-Version: 13",
            "-H",
            "Sec-WebSocket-Protocol: mqtt",
        ])
        .args(["-H", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="])
        .arg(format!("https://{wss}/mqtt"))
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&upgrade.stdout).to_lowercase();
    assert!(answer.starts_with("http/1.1 101"), "{answer}");
    assert!(answer.contains("sec-websocket-protocol: mqtt"), "{answer}");

    // MQTT over TLS: Ann listens with mosquitto_sub, Bob sends with mosquitto_pub.
    let over_tls = |program: &str, user: &Tokens| {
        let mut command = mosquitto(&[program], mqtts, user);
        command.arg("--cafile").arg(&cert);
        command
    };
    let mut sub = over_tls("mosquitto_sub", &ann)
        .args([
            "-i",
            "ann-phone",
            "-t",
            &format!("users/{}/inbox", ann.user_id),
        ])
        .args(["-C", "1", "-W", "15"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub is installed");
    // mosquitto_sub needs a moment to subscribe: Bob sends (a new message each time) until it
    // has one and exits.
    for i in 0..30 {
        let command = json!({"type": "send", "to": ann.user_id, "body": "over TLS", "client_msg_id": format!("t-{i}")});
        let publish = over_tls("mosquitto_pub", &bob)
            .args([
                "-i",
                "bob-phone",
                "-t",
                &format!("users/{}/outbox", bob.user_id),
            ])
            .args(["-m", &command.to_string()])
            .output()
            .unwrap();
        succeeded(&publish);
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        if sub.try_wait().unwrap().is_some() {
            break;
        }
    }
    let output = tokio::task::spawn_blocking(move || sub.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    succeeded(&output);
    let event: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        (event["type"].as_str(), event["body"].as_str()),
        (Some("message"), Some("over TLS"))
    );
}

#[test]
fn a_certificate_that_cannot_be_read_is_one_line_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = |tls: &str| {
        format!(
            "[http]\nlisten = \"127.0.0.1:0\"\ntls_listen = \"127.0.0.1:0\"\n[mqtt]\nlisten = \"127.0.0.1:0\"\n{tls}"
        )
    };
    let run = |config: String| {
        let (code, stderr) = run_with_config(&config, &[]);
        (code, error_line(&stderr))
    };
    let (code, line) = run(config(
        "[tls]\ncert = \"/nonexistent/cert.pem\"\nkey = \"/nonexistent/key.pem\"\n",
    ));
    assert_eq!(code, Some(1));
    assert!(
        line.contains("tls.cert") && line.contains("/nonexistent/cert.pem"),
        "{line}"
    );
    let (code, line) = run(config(""));
    assert_eq!(code, Some(1));
    assert!(
        line.contains("tls.cert") && line.contains("must be set"),
        "{line}"
    );
    // A key that is not the certificate's.
    let (cert, _) = make_certificate(dir.path());
    let other = tempfile::tempdir().unwrap();
    let (_, key) = make_certificate(other.path());
    let (code, line) = run(config(&format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    )));
    assert_eq!(code, Some(1));
    assert!(line.contains("tls.key"), "{line}");
}

#[tokio::test]
async fn http_and_https_share_one_connection_cap() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = make_certificate(dir.path());
    let app =
        TestApp::spawn_with(tls_options(&cert, &key).env("TIDINGS_HTTP__MAX_CONNECTIONS", 2)).await;
    // Two plain connections take both slots...
    let _held = [
        tokio::net::TcpStream::connect(app.http).await.unwrap(),
        tokio::net::TcpStream::connect(app.http).await.unwrap(),
    ];
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // ...so HTTPS has none left.
    let https = app.ready_addr("https");
    let curl = Command::new("curl")
        .args(["-sS", "--max-time", "3", "--cacert"])
        .arg(&cert)
        .arg(format!("https://{https}/healthz"))
        .output()
        .unwrap();
    assert!(
        !curl.status.success(),
        "{}",
        String::from_utf8_lossy(&curl.stdout)
    );
}
