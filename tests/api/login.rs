//! Login by phone (through the real twilio provider) and by email (through the real smtp
//! provider), and the one-time-code rules.

use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn phone_login_through_the_twilio_provider() {
    let app = TestApp::spawn().await;
    let answer = app
        .post("/v1/auth/otp", json!({"phone": "+1 415 555 0101"}))
        .await;
    assert_eq!(answer.status, 202, "{answer:?}");
    assert_eq!(
        answer.body,
        json!({"channel": "sms", "expires_in": 600, "resend_after": 60})
    );

    let sms = app.twilio.nth_sms_to("+14155550101", 1).await;
    let request = &app.twilio.requests()[0];
    assert_eq!(
        request.path,
        format!("/2010-04-01/Accounts/{TWILIO_SID}/Messages.json")
    );
    let expected_auth = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("{TWILIO_SID}:{TWILIO_TOKEN}")
        )
    );
    assert_eq!(request.authorization, expected_auth);
    assert_eq!(request.form["From"], TWILIO_FROM);
    let code = extract_code(&sms);
    assert!(!app.log().contains(&code), "the code leaked into the log");

    let answer = app.verify("+14155550101", &code).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let body = &answer.body;
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    assert_eq!(body["new_user"], true);
    let tokens = Tokens::from(body);

    let me = app.get("/v1/me", &tokens.access).await;
    assert_eq!(me.status, 200);
    assert_eq!(
        me.body,
        json!({"user_id": tokens.user_id, "phone": "+14155550101", "email": null,
               "display_name": null, "forward_sms": false, "forward_email": false})
    );
}

#[tokio::test]
async fn email_login_through_the_smtp_provider() {
    let dir = tempfile::tempdir().unwrap();
    let smtp = SmtpServer::start(dir.path());
    let app = TestApp::spawn_with(Options {
        smtp_port: Some(smtp.port),
        ..Options::default()
    })
    .await;

    let answer = app
        .post("/v1/auth/otp", json!({"email": "Ann@Example.com"}))
        .await;
    assert_eq!(answer.status, 202, "{answer:?}");
    assert_eq!(answer.body["channel"], "email");
    let mail = smtp.message_to("ann@example.com").await;
    assert!(
        mail.contains("From: tidings <codes@tidings.test>"),
        "{mail}"
    );
    let code = extract_code(mail.split("\n\n").nth(1).unwrap_or(&mail));

    let answer = app
        .post(
            "/v1/auth/verify",
            json!({"email": "ANN@example.COM", "code": code}),
        )
        .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let tokens = Tokens::from(&answer.body);
    assert!(tokens.new_user);
    let me = app.get("/v1/me", &tokens.access).await;
    assert_eq!(me.body["email"], "ann@example.com");
    assert_eq!(me.body["phone"], json!(null));
}

#[tokio::test]
async fn formatting_variants_of_one_number_reach_one_account() {
    let app =
        TestApp::spawn_with(Options::default().env("TIDINGS_LIMITS__OTP_RESEND_SECS", 0)).await;
    let mut user_ids = Vec::new();
    for (i, variant) in [
        "+1 415 555 0101",
        "+1 (415) 555-0101",
        "+14155550101",
        " +1-415-555-0101 ",
    ]
    .iter()
    .enumerate()
    {
        let code = app.phone_code(variant, "+14155550101").await;
        let answer = app.verify(variant, &code).await;
        assert_eq!(answer.status, 200, "{variant}: {answer:?}");
        let tokens = Tokens::from(&answer.body);
        assert_eq!(tokens.new_user, i == 0, "{variant}");
        user_ids.push(tokens.user_id);
    }
    user_ids.dedup();
    assert_eq!(user_ids.len(), 1);
}

#[tokio::test]
async fn known_and_unknown_accounts_get_the_same_answer() {
    let app = TestApp::spawn().await;
    app.login("+14155550101").await;
    // The cooldown of the known number has to pass for a fair comparison: use another limit-free app.
    let app2 = TestApp::spawn().await;
    app2.login("+14155550101").await;
    let known = app
        .post("/v1/auth/otp", json!({"phone": "+14155550102"}))
        .await;
    let unknown = app2
        .post("/v1/auth/otp", json!({"phone": "+14155550102"}))
        .await;
    assert_eq!((known.status, &known.body), (unknown.status, &unknown.body));
}

#[tokio::test]
async fn malformed_identities_are_refused() {
    let app = TestApp::spawn().await;
    for phone in ["4155550101", "+1 415", "call me", ""] {
        app.post("/v1/auth/otp", json!({"phone": phone}))
            .await
            .assert_error(400, "invalid_phone");
    }
    for email in ["ann", "ann@", "@example.com", "ann@@example.com", ""] {
        app.post("/v1/auth/otp", json!({"email": email}))
            .await
            .assert_error(400, "invalid_email");
    }
    app.post("/v1/auth/otp", json!({}))
        .await
        .assert_error(400, "invalid_json");
    app.post(
        "/v1/auth/otp",
        json!({"phone": "+14155550101", "email": "a@b.co"}),
    )
    .await
    .assert_error(400, "invalid_json");
    app.post("/v1/auth/otp", json!({"phone": 14155550101u64}))
        .await
        .assert_error(400, "invalid_json");
    assert!(app.twilio.requests().is_empty());
}

#[tokio::test]
async fn a_wrong_code_is_refused_and_the_right_one_still_works() {
    let app = TestApp::spawn().await;
    let code = app.phone_code("+14155550101", "+14155550101").await;
    let wrong = if code == "000000" { "000001" } else { "000000" };
    for attempt in [wrong, "12345", "abcdef", ""] {
        app.verify("+14155550101", attempt)
            .await
            .assert_error(401, "invalid_code");
    }
    let answer = app.verify("+14155550101", &code).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    // Single use.
    app.verify("+14155550101", &code)
        .await
        .assert_error(401, "invalid_code");
}

#[tokio::test]
async fn after_max_attempts_even_the_right_code_is_dead() {
    let app =
        TestApp::spawn_with(Options::default().env("TIDINGS_AUTH__OTP_MAX_ATTEMPTS", 3)).await;
    let code = app.phone_code("+14155550101", "+14155550101").await;
    let wrong = if code == "999999" { "999998" } else { "999999" };
    for _ in 0..3 {
        app.verify("+14155550101", wrong)
            .await
            .assert_error(401, "invalid_code");
    }
    app.verify("+14155550101", &code)
        .await
        .assert_error(401, "invalid_code");
}

#[tokio::test]
async fn an_expired_code_is_dead() {
    let app = TestApp::spawn_with(Options::default().env("TIDINGS_AUTH__OTP_TTL_SECS", 1)).await;
    let code = app.phone_code("+14155550101", "+14155550101").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    app.verify("+14155550101", &code)
        .await
        .assert_error(401, "invalid_code");
}

#[tokio::test]
async fn a_new_code_replaces_the_old_one() {
    let app =
        TestApp::spawn_with(Options::default().env("TIDINGS_LIMITS__OTP_RESEND_SECS", 0)).await;
    let old = app.phone_code("+14155550101", "+14155550101").await;
    let new = app.phone_code("+14155550101", "+14155550101").await;
    if old != new {
        app.verify("+14155550101", &old)
            .await
            .assert_error(401, "invalid_code");
    }
    let answer = app.verify("+14155550101", &new).await;
    assert_eq!(answer.status, 200, "{answer:?}");
}

#[tokio::test]
async fn resend_cooldown_answers_429_with_retry_after() {
    let app = TestApp::spawn().await;
    app.phone_code("+14155550101", "+14155550101").await;
    let again = app
        .post("/v1/auth/otp", json!({"phone": "+1 415 555 0101"}))
        .await;
    again.assert_error(429, "rate_limited");
    let retry_after = again.retry_after();
    assert!(
        (55..=60).contains(&retry_after),
        "Retry-After {retry_after}"
    );
    // Another identity is not held back.
    assert_eq!(
        app.post("/v1/auth/otp", json!({"phone": "+14155550102"}))
            .await
            .status,
        202
    );
    assert_eq!(app.sms_count("+14155550101"), 1);
}

#[tokio::test]
async fn hourly_caps_per_identity_and_per_ip() {
    let app = TestApp::spawn_with(
        Options::default()
            .env("TIDINGS_LIMITS__OTP_RESEND_SECS", 0)
            .env("TIDINGS_LIMITS__OTP_PER_IDENTITY_PER_HOUR", 2)
            .env("TIDINGS_LIMITS__OTP_PER_IP_PER_HOUR", 4),
    )
    .await;
    for _ in 0..2 {
        assert_eq!(
            app.post("/v1/auth/otp", json!({"phone": "+14155550101"}))
                .await
                .status,
            202
        );
    }
    let capped = app
        .post("/v1/auth/otp", json!({"phone": "+14155550101"}))
        .await;
    capped.assert_error(429, "rate_limited");
    assert!(capped.headers.contains_key("retry-after"));
    // Two more from this IP reach the IP cap of 4, whatever the identity.
    for phone in ["+14155550102", "+14155550103"] {
        assert_eq!(
            app.post("/v1/auth/otp", json!({"phone": phone}))
                .await
                .status,
            202
        );
    }
    app.post("/v1/auth/otp", json!({"email": "someone@example.com"}))
        .await
        .assert_error(429, "rate_limited");
}

#[tokio::test]
async fn the_twilio_provider_retries_on_5xx_and_429() {
    let app = TestApp::spawn().await;
    app.twilio.answer(&[503, 429]);
    assert_eq!(
        app.post("/v1/auth/otp", json!({"phone": "+14155550101"}))
            .await
            .status,
        202
    );
    // Two refusals, then the accepted one (after 1 s and 2 s of back-off); one code throughout.
    let code = app.twilio.code("+14155550101", 3).await;
    let bodies: Vec<String> = app
        .twilio
        .requests()
        .iter()
        .map(|r| r.form["Body"].clone())
        .collect();
    assert_eq!(bodies.len(), 3, "{bodies:?}");
    assert!(bodies.iter().all(|b| extract_code(b) == code));
    let answer = app.verify("+14155550101", &code).await;
    assert_eq!(answer.status, 200);
}

#[tokio::test]
async fn the_twilio_provider_does_not_retry_a_permanent_refusal() {
    let app = TestApp::spawn().await;
    app.twilio.answer(&[400]);
    assert_eq!(
        app.post("/v1/auth/otp", json!({"phone": "+14155550101"}))
            .await
            .status,
        202
    );
    app.twilio.nth_sms_to("+14155550101", 1).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(app.sms_count("+14155550101"), 1);
    assert!(
        app.log().contains("login code not sent"),
        "the failure is logged"
    );
}

#[tokio::test]
async fn wrong_codes_are_capped_per_identity_per_day_across_codes_and_restarts() {
    let mut app = TestApp::spawn_with(
        Options::default()
            .env("TIDINGS_LIMITS__OTP_RESEND_SECS", 0)
            .env("TIDINGS_LIMITS__OTP_PER_IDENTITY_PER_HOUR", 0)
            .env("TIDINGS_LIMITS__OTP_FAILURES_PER_IDENTITY_PER_DAY", 4)
            .env("TIDINGS_AUTH__OTP_MAX_ATTEMPTS", 3),
    )
    .await;
    let phone = "+14155550101";
    // Three wrong guesses kill the first code; a new code does not start the count again.
    let first = app.phone_code(phone, phone).await;
    let wrong = |code: &str| format!("{:06}", (code.parse::<u32>().unwrap() + 1) % 1_000_000);
    for _ in 0..3 {
        app.verify(phone, &wrong(&first))
            .await
            .assert_error(401, "invalid_code");
    }
    let second = app.phone_code(phone, phone).await;
    app.verify(phone, &wrong(&second))
        .await
        .assert_error(401, "invalid_code");
    // That was the fourth wrong code today: even the right one is refused now, until the day
    // is over (Retry-After says when), and no more codes are sent.
    let locked = app.verify(phone, &second).await;
    locked.assert_error(429, "rate_limited");
    let retry_after = locked.retry_after();
    assert!((1..=86_400).contains(&retry_after), "{retry_after}");
    app.post("/v1/auth/otp", json!({"phone": phone}))
        .await
        .assert_error(429, "rate_limited");
    assert_eq!(app.sms_count(phone), 2);
    // Counted in the store: a restart does not give the guesser a new day.
    app.restart();
    app.post("/v1/auth/otp", json!({"phone": phone}))
        .await
        .assert_error(429, "rate_limited");
    // Other identities are not affected.
    let other = "+14155550102";
    let code = app.phone_code(other, other).await;
    assert_eq!(app.verify(other, &code).await.status, 200);
}
