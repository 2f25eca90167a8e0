//! The HTTP edges: health, bad JSON, oversized bodies, unknown routes, user lookup.

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn healthz_answers() {
    let app = TestApp::spawn().await;
    let answer = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(answer.status(), 200);
}

#[tokio::test]
async fn malformed_json_is_invalid_json() {
    let app = TestApp::spawn().await;
    for body in ["{bad", "", "[1,2", "\"phone\""] {
        let answer = app
            .client
            .post(app.url("/v1/auth/otp"))
            .body(body)
            .send()
            .await
            .unwrap();
        Answer::from(answer).await.assert_error(400, "invalid_json");
    }
}

#[tokio::test]
async fn bodies_over_64_kib_get_413() {
    let app = TestApp::spawn().await;
    let big = json!({"phone": "1".repeat(70 * 1024)}).to_string();
    let answer = app
        .client
        .post(app.url("/v1/auth/otp"))
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 413);
    // Just under the limit is parsed (and refused for what it says, not for its size).
    let fits = json!({"phone": "1".repeat(60 * 1024)}).to_string();
    let answer = app
        .client
        .post(app.url("/v1/auth/otp"))
        .body(fits)
        .send()
        .await
        .unwrap();
    Answer::from(answer)
        .await
        .assert_error(400, "invalid_phone");
}

#[tokio::test]
async fn unknown_routes_answer_json_404() {
    let app = TestApp::spawn().await;
    app.get("/v1/nothing-here", "x")
        .await
        .assert_error(404, "not_found");
}

#[tokio::test]
async fn lookup_finds_users_by_phone_or_email() {
    let app = TestApp::spawn().await;
    let ann = app.login("+14155550101").await;
    let bob = app.login("+14155550102").await;

    for query in [
        "phone=%2B14155550101",
        "phone=+14155550101",
        "phone=%2B1%20415%20555%200101",
    ] {
        let found = app
            .get(&format!("/v1/users/lookup?{query}"), &bob.access)
            .await;
        assert_eq!(found.status, 200, "{query}: {found:?}");
        assert_eq!(
            found.body,
            json!({"user_id": ann.user_id, "display_name": null})
        );
    }
    app.get("/v1/users/lookup?phone=%2B14155550199", &bob.access)
        .await
        .assert_error(404, "not_found");
    app.get("/v1/users/lookup?email=nobody%40example.com", &bob.access)
        .await
        .assert_error(404, "not_found");
    app.get("/v1/users/lookup?phone=nope", &bob.access)
        .await
        .assert_error(400, "invalid_phone");
    app.get("/v1/users/lookup?phone=%2B14155550101", "bad")
        .await
        .assert_error(401, "unauthorized");
}

#[tokio::test]
async fn lookups_are_limited_per_user_per_minute() {
    let app = TestApp::spawn_with(
        Options::default().env("TIDINGS_LIMITS__LOOKUPS_PER_USER_PER_MINUTE", 3),
    )
    .await;
    let ann = app.login("+14155550101").await;
    let bob = app.login("+14155550102").await;
    for n in 0..3 {
        let path = format!("/v1/users/lookup?phone=%2B1415555099{n}");
        app.get(&path, &ann.access)
            .await
            .assert_error(404, "not_found");
    }
    let limited = app
        .get("/v1/users/lookup?phone=%2B14155550102", &ann.access)
        .await;
    limited.assert_error(429, "rate_limited");
    assert!(limited.headers.contains_key("retry-after"));
    // Per user: Bob still looks up.
    let found = app
        .get("/v1/users/lookup?phone=%2B14155550101", &bob.access)
        .await;
    assert_eq!(found.status, 200, "{found:?}");
}
