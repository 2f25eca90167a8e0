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

/// Random bodies (bytes, JSON of any shape, and objects with the right field names holding
/// anything) to every endpoint that reads one: each is answered with a JSON error or a success,
/// never a 5xx, and the server goes on serving.
#[tokio::test]
async fn random_bodies_get_a_clear_answer_never_a_5xx() {
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let app = TestApp::spawn_with(
        Options::default()
            .env("TIDINGS_LIMITS__OTP_PER_IP_PER_HOUR", 0)
            .env("TIDINGS_LIMITS__OTP_PER_IDENTITY_PER_HOUR", 0),
    )
    .await;
    let ann = app.login("+14155550101").await;
    let names = [
        "phone",
        "email",
        "code",
        "refresh_token",
        "display_name",
        "forward_sms",
        "forward_email",
    ];
    let value = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        "\\PC{0,40}".prop_map(serde_json::Value::String),
        "[+0-9 ]{0,20}".prop_map(serde_json::Value::String),
        Just(json!([1, {"a": null}])),
    ];
    let object = prop::collection::btree_map(prop::sample::select(names.to_vec()), value, 0..4)
        .prop_map(|fields| json!(fields).to_string().into_bytes());
    let bodies = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        "\\PC{0,100}".prop_map(String::into_bytes),
        object.clone(),
        object,
    ];
    let endpoints = [
        ("POST", "/v1/auth/otp"),
        ("POST", "/v1/auth/verify"),
        ("POST", "/v1/auth/refresh"),
        ("PATCH", "/v1/me"),
        ("POST", "/v1/me/email"),
        ("POST", "/v1/me/phone"),
        ("POST", "/v1/me/email/verify"),
        ("POST", "/v1/me/phone/verify"),
    ];
    let mut runner = TestRunner::deterministic();
    for round in 0..40 {
        for (method, path) in endpoints {
            let body = bodies.new_tree(&mut runner).unwrap().current();
            let request = app
                .client
                .request(method.parse().unwrap(), app.url(path))
                .bearer_auth(&ann.access)
                .header("content-type", "application/json")
                .body(body.clone());
            let answer = Answer::from(request.send().await.unwrap()).await;
            assert!(
                answer.status < 500,
                "round {round}: {method} {path} {:?} → {answer:?}",
                String::from_utf8_lossy(&body)
            );
            if answer.status >= 400 {
                assert!(!answer.error_code().is_empty(), "{answer:?}");
            }
        }
    }
    assert_eq!(app.get("/v1/me", &ann.access).await.status, 200);
}

#[tokio::test]
async fn metrics_count_what_happened_in_the_prometheus_format() {
    let app = TestApp::spawn().await;
    let ann = app.login("+14155550101").await;
    let bob = app.login("+14155550102").await;
    // A refused code request (the resend cooldown) and a wrong code.
    app.post("/v1/auth/otp", json!({"phone": "+14155550101"}))
        .await
        .assert_error(429, "rate_limited");
    let mut ann_mqtt = app.mqtt_inbox(&ann, "ann").await;
    let mut bob_mqtt = app.mqtt_inbox(&bob, "bob").await;
    for i in 0..3 {
        bob_mqtt
            .send(&ann.user_id, &format!("m{i}"), &format!("b-{i}"))
            .await;
        ann_mqtt.event().await;
        bob_mqtt.event().await;
    }
    let answer = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    assert!(answer.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = answer.text().await.unwrap();
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
            .parse()
            .unwrap()
    };
    assert_eq!(value("tidings_mqtt_connections"), 2.0);
    assert_eq!(value("tidings_messages_stored_total"), 3.0);
    assert_eq!(value("tidings_message_delivery_seconds_count"), 3.0);
    assert_eq!(
        value("tidings_message_delivery_seconds_bucket{le=\"+Inf\"}"),
        3.0
    );
    assert!(value("tidings_store_fsync_seconds_count") >= 3.0);
    assert_eq!(value("tidings_store_healthy"), 1.0);
    assert_eq!(value("tidings_otp_sent_total"), 2.0);
    assert_eq!(value("tidings_otp_refused_total"), 1.0);
    assert_eq!(value("tidings_forwarding_sent_total"), 0.0);
    // Every line is a comment or `name[{labels}] number`, and every series has its TYPE.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, number) = line.rsplit_once(' ').unwrap();
        assert!(number.parse::<f64>().is_ok(), "{line}");
        let name = series.split('{').next().unwrap();
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .filter(|base| text.contains(&format!("# TYPE {base} histogram")))
            .unwrap_or(name);
        assert!(text.contains(&format!("# TYPE {base} ")), "{line}");
    }
}
