//! The profile (`PATCH /v1/me`) and a second identity (`/v1/me/email`, `/v1/me/phone`).

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn the_profile_can_be_changed_in_parts() {
    let app = TestApp::spawn().await;
    let ann = app.login("+14155550101").await;
    let answer = app
        .patch_me(&ann.access, json!({"display_name": "  Ann Lee  "}))
        .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body["display_name"], "Ann Lee", "trimmed");
    assert_eq!(answer.body["forward_sms"], false);

    let answer = app
        .patch_me(
            &ann.access,
            json!({"forward_sms": true, "forward_email": true}),
        )
        .await;
    assert_eq!(
        (
            answer.body["display_name"].as_str(),
            answer.body["forward_sms"].as_bool()
        ),
        (Some("Ann Lee"), Some(true))
    );
    assert_eq!(answer.body["forward_email"], true);
    assert_eq!(app.get("/v1/me", &ann.access).await.body, answer.body);

    // The name shows up where others see it.
    let bob = app.login("+14155550102").await;
    let found = app
        .get("/v1/users/lookup?phone=%2B14155550101", &bob.access)
        .await;
    assert_eq!(found.body["display_name"], "Ann Lee");

    // 64 characters (not bytes) is the most; null clears.
    let long = "é".repeat(64);
    assert_eq!(
        app.patch_me(&ann.access, json!({"display_name": long}))
            .await
            .body["display_name"],
        long.as_str()
    );
    let cleared = app
        .patch_me(&ann.access, json!({"display_name": null}))
        .await;
    assert_eq!(cleared.body["display_name"], json!(null));
    assert_eq!(cleared.body["forward_sms"], true, "untouched fields stay");
}

#[tokio::test]
async fn bad_profile_changes_are_refused() {
    let app = TestApp::spawn().await;
    let ann = app.login("+14155550101").await;
    for name in [
        "",
        "   ",
        &"x".repeat(65),
        "tab\there",
        "new\nline",
        "nul\u{0}",
    ] {
        app.patch_me(&ann.access, json!({ "display_name": name }))
            .await
            .assert_error(400, "invalid_display_name");
    }
    app.patch_me(&ann.access, json!({"forward_sms": "yes"}))
        .await
        .assert_error(400, "invalid_json");
    app.patch_me(&ann.access, json!({"user_id": "0123456789abcdef01234567"}))
        .await
        .assert_error(400, "invalid_json");
    app.patch_me("bad", json!({"forward_sms": true}))
        .await
        .assert_error(401, "unauthorized");
    assert_eq!(
        app.get("/v1/me", &ann.access).await.body["display_name"],
        json!(null)
    );
}

#[tokio::test]
async fn a_phone_user_adds_an_email_and_logs_in_with_either() {
    // Adding the address, then logging in with it at once: no resend cooldown between the two
    // (it is the address's, whatever the purpose).
    let app =
        TestApp::spawn_with(Options::default().env("TIDINGS_LIMITS__OTP_RESEND_SECS", 0)).await;
    let ann = app.login("+14155550101").await;
    let answer = app
        .post_auth(
            "/v1/me/email",
            &ann.access,
            json!({"email": "Ann@Example.com"}),
        )
        .await;
    assert_eq!(answer.status, 202, "{answer:?}");
    assert_eq!(answer.body["channel"], "email");
    let code = app.email_code("ann@example.com", 1).await;
    let wrong = if code == "000000" { "000001" } else { "000000" };
    app.verify_added(&ann.access, "email", "ann@example.com", wrong)
        .await
        .assert_error(401, "invalid_code");
    let me = app
        .verify_added(&ann.access, "email", "ann@example.com", &code)
        .await;
    assert_eq!(me.status, 200, "{me:?}");
    assert_eq!(
        (me.body["phone"].as_str(), me.body["email"].as_str()),
        (Some("+14155550101"), Some("ann@example.com"))
    );

    // Logging in by email opens the same account.
    assert_eq!(
        app.post("/v1/auth/otp", json!({"email": "ANN@example.com"}))
            .await
            .status,
        202
    );
    let code = app.email_code("ann@example.com", 2).await;
    let login = app
        .post(
            "/v1/auth/verify",
            json!({"email": "ann@example.com", "code": code}),
        )
        .await;
    assert_eq!(login.status, 200, "{login:?}");
    assert_eq!(
        (
            login.body["user_id"].as_str(),
            login.body["new_user"].as_bool()
        ),
        (Some(ann.user_id.as_str()), Some(false))
    );
}

#[tokio::test]
async fn an_email_user_adds_a_phone_and_logs_in_with_either() {
    // Adding the address, then logging in with it at once: no resend cooldown between the two
    // (it is the address's, whatever the purpose).
    let app =
        TestApp::spawn_with(Options::default().env("TIDINGS_LIMITS__OTP_RESEND_SECS", 0)).await;
    assert_eq!(
        app.post("/v1/auth/otp", json!({"email": "bob@example.com"}))
            .await
            .status,
        202
    );
    let code = app.email_code("bob@example.com", 1).await;
    let bob = Tokens::from(
        &app.post(
            "/v1/auth/verify",
            json!({"email": "bob@example.com", "code": code}),
        )
        .await
        .body,
    );

    let answer = app
        .post_auth(
            "/v1/me/phone",
            &bob.access,
            json!({"phone": "+1 (415) 555-0199"}),
        )
        .await;
    assert_eq!(
        (answer.status, answer.body["channel"].as_str()),
        (202, Some("sms"))
    );
    let code = app.twilio.code("+14155550199", 1).await;
    let me = app
        .verify_added(&bob.access, "phone", "+14155550199", &code)
        .await;
    assert_eq!(me.status, 200, "{me:?}");
    assert_eq!(me.body["phone"], "+14155550199");

    let again = app.login("+14155550199").await;
    assert_eq!(again.user_id, bob.user_id);
    assert!(!again.new_user);
}

#[tokio::test]
async fn an_identity_of_another_account_is_409_already_taken() {
    // Bob asks to add Ann's number right after Ann logged in with it: no cooldown here.
    let app =
        TestApp::spawn_with(Options::default().env("TIDINGS_LIMITS__OTP_RESEND_SECS", 0)).await;
    let ann = app.login("+14155550101").await;
    let bob = app.login("+14155550102").await;
    assert_eq!(
        app.post_auth(
            "/v1/me/phone",
            &bob.access,
            json!({"phone": "+14155550101"})
        )
        .await
        .status,
        202
    );
    let code = app.twilio.code("+14155550101", 2).await;
    app.verify_added(&bob.access, "phone", "+14155550101", &code)
        .await
        .assert_error(409, "already_taken");
    // Nothing moved.
    assert_eq!(
        app.get("/v1/me", &bob.access).await.body["phone"],
        "+14155550102"
    );
    let owner = app
        .get("/v1/users/lookup?phone=%2B14155550101", &bob.access)
        .await;
    assert_eq!(owner.body["user_id"], ann.user_id.as_str());
}

#[tokio::test]
async fn codes_for_adding_follow_the_login_rules() {
    let app = TestApp::spawn().await;
    let ann = app.login("+14155550101").await;
    app.post_auth("/v1/me/email", &ann.access, json!({"email": "nope"}))
        .await
        .assert_error(400, "invalid_email");
    app.post_auth("/v1/me/phone", &ann.access, json!({"phone": "123"}))
        .await
        .assert_error(400, "invalid_phone");
    app.post_auth("/v1/me/email", "bad", json!({"email": "a@example.com"}))
        .await
        .assert_error(401, "unauthorized");
    // Resend cooldown.
    assert_eq!(
        app.post_auth(
            "/v1/me/email",
            &ann.access,
            json!({"email": "a@example.com"})
        )
        .await
        .status,
        202
    );
    let again = app
        .post_auth(
            "/v1/me/email",
            &ann.access,
            json!({"email": "a@example.com"}),
        )
        .await;
    again.assert_error(429, "rate_limited");
    assert!(again.headers.contains_key("retry-after"));
    // The cooldown is the address's, whatever the purpose: a login code for it, or another
    // account adding it, waits too (contract v1.1).
    app.post("/v1/auth/otp", json!({"email": "a@example.com"}))
        .await
        .assert_error(429, "rate_limited");
    let bob = app.login("+14155550102").await;
    app.post_auth(
        "/v1/me/email",
        &bob.access,
        json!({"email": "a@example.com"}),
    )
    .await
    .assert_error(429, "rate_limited");
    // A code for adding is no login code, and another account cannot use it.
    let code = app.email_code("a@example.com", 1).await;
    app.post(
        "/v1/auth/verify",
        json!({"email": "a@example.com", "code": code}),
    )
    .await
    .assert_error(401, "invalid_code");
    app.verify_added(&bob.access, "email", "a@example.com", &code)
        .await
        .assert_error(401, "invalid_code");
    // The owner still can, once.
    let me = app
        .verify_added(&ann.access, "email", "a@example.com", &code)
        .await;
    assert_eq!(me.status, 200);
    app.verify_added(&ann.access, "email", "a@example.com", &code)
        .await
        .assert_error(401, "invalid_code");
}
