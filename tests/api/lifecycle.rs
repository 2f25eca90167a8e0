//! Start, stop and restart of the real binary; configuration errors.

use std::process::Command;

use crate::helpers::*;

#[tokio::test]
async fn sigterm_stops_cleanly_and_a_restart_keeps_accounts_and_tokens() {
    let mut app = TestApp::spawn().await;
    let tokens = app.login("+14155550101").await;
    let secret = app.data_path().join("jwt_secret");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the generated JWT secret is private");
        let mode = std::fs::metadata(app.data_path())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o700, "the data directory is private");
    }
    let started = std::time::Instant::now();
    assert!(app.stop().success(), "exit 0 on SIGTERM");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert!(app.log().contains("stopped cleanly"));

    app.start();
    // The same access token and refresh token still work: secret and session survived.
    let me = app.get("/v1/me", &tokens.access).await;
    assert_eq!(me.status, 200, "{me:?}");
    assert_eq!(me.body["user_id"], tokens.user_id.as_str());
    let answer = app
        .post(
            "/v1/auth/refresh",
            serde_json::json!({"refresh_token": tokens.refresh}),
        )
        .await;
    assert_eq!(answer.status, 200);
}

#[tokio::test]
async fn kill_9_after_login_keeps_the_account() {
    let mut app =
        TestApp::spawn_with(Options::default().env("TIDINGS_LIMITS__OTP_RESEND_SECS", 0)).await;
    let tokens = app.login("+14155550101").await;
    app.kill9();
    app.start();
    assert_eq!(app.get("/v1/me", &tokens.access).await.status, 200);
    let again = app.login("+14155550101").await;
    assert_eq!(again.user_id, tokens.user_id);
    assert!(!again.new_user);
}

#[test]
fn an_unparsable_file_names_the_file_and_line() {
    let (code, stderr) = run_with_config("[http\nlisten = 1\n", &[]);
    assert_eq!(code, Some(1));
    let line = error_line(&stderr);
    assert!(
        line.contains("broker.toml") && line.contains("line 1"),
        "{line}"
    );
}

#[test]
fn an_unknown_provider_names_the_key() {
    let (code, stderr) = run_with_config("[sms]\nprovider = \"pigeon\"\n", &[]);
    assert_eq!(code, Some(1));
    assert!(error_line(&stderr).contains("sms.provider"), "{stderr}");
    let (code, stderr) = run_with_config("", &[("TIDINGS_EMAIL__PROVIDER", "fax")]);
    assert_eq!(code, Some(1));
    assert!(error_line(&stderr).contains("email.provider"), "{stderr}");
}

#[test]
fn an_address_in_use_names_the_key_and_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, stderr) = run_with_config(&format!("[http]\nlisten = \"{addr}\"\n"), &[]);
    assert_eq!(code, Some(1));
    let line = error_line(&stderr);
    assert!(
        line.contains("http.listen") && line.contains(&addr),
        "{line}"
    );
}

#[test]
fn twilio_without_credentials_is_a_config_error() {
    let (code, stderr) = run_with_config("[sms]\nprovider = \"twilio\"\n", &[]);
    assert_eq!(code, Some(1));
    assert!(
        error_line(&stderr).contains("sms.twilio.account_sid"),
        "{stderr}"
    );
}

#[test]
fn version_help_and_bad_arguments() {
    let run = |arg: &str| {
        let output = Command::new(env!("CARGO_BIN_EXE_tidings"))
            .arg(arg)
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, out, _) = run("--version");
    assert_eq!(
        (code, out.trim()),
        (Some(0), concat!("tidings ", env!("CARGO_PKG_VERSION")))
    );
    let (code, out, _) = run("--help");
    assert_eq!(code, Some(0));
    for needed in ["--config", "TIDINGS_<SECTION>__<KEY>", "exit status", "75"] {
        assert!(out.contains(needed), "--help lacks {needed:?}:\n{out}");
    }
    let (code, _, err) = run("--bogus");
    assert_eq!(code, Some(2));
    assert!(
        err.starts_with("error: unknown argument \"--bogus\""),
        "{err}"
    );
}

#[test]
fn log_format_json_writes_one_json_object_per_line() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n[mqtt]\nlisten = \"127.0.0.1:0\"\n[storage]\npath = \"{}\"\n[log]\nformat = \"json\"\n",
        dir.path().join("data").display()
    );
    let path = dir.path().join("broker.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .arg("--config")
        .arg(&path)
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut ready = None;
    for line in stderr.lines().map_while(Result::ok) {
        let event: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(
            event["timestamp"].is_string() && event["level"].is_string(),
            "{line}"
        );
        if event["fields"]["message"] == "tidings ready" {
            ready = Some(event);
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let ready = ready.expect("a ready line");
    assert_eq!(ready["level"], "INFO");
    assert!(ready["fields"]["http"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
}
