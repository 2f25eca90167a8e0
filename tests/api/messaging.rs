//! Sending and receiving over MQTT through the real gateway, relay and broker.

use std::time::Duration;

use serde_json::{json, Value};

use rumqttc::mqttbytes::v4::{ConnectReturnCode, Packet};

use crate::helpers::*;

/// Two logged-in users, each with an MQTT connection subscribed to its inbox.
async fn ann_and_bob(app: &TestApp) -> (Tokens, Mqtt, Tokens, Mqtt) {
    let ann = app.login("+14155550101").await;
    let bob = app.login("+14155550102").await;
    let ann_mqtt = app.mqtt_inbox(&ann, "ann-phone").await;
    let bob_mqtt = app.mqtt_inbox(&bob, "bob-phone").await;
    (ann, ann_mqtt, bob, bob_mqtt)
}

#[tokio::test]
async fn a_message_reaches_the_recipient_and_echoes_to_the_sender() {
    let app = TestApp::spawn().await;
    let (ann, mut ann_mqtt, bob, mut bob_mqtt) = ann_and_bob(&app).await;

    ann_mqtt.send(&bob.user_id, "hello bob 👋", "c-0001").await;
    let received = bob_mqtt.event().await;
    let echo = ann_mqtt.event().await;
    assert_eq!(received, echo, "both inboxes get the same event");
    assert_eq!(received["type"], "message");
    assert_eq!(received["from"], ann.user_id.as_str());
    assert_eq!(received["to"], bob.user_id.as_str());
    assert_eq!(received["body"], "hello bob 👋");
    assert_eq!(received["seq"], 1);
    assert_eq!(received["client_msg_id"], "c-0001");
    let id = received["id"].as_str().unwrap();
    assert!(!id.is_empty());
    let sent_at = received["sent_at"].as_str().unwrap();
    assert!(
        sent_at.len() == 24 && sent_at.ends_with('Z') && sent_at.as_bytes()[19] == b'.',
        "{sent_at}"
    );

    // Bob answers in the same conversation: seq goes on.
    bob_mqtt.send(&ann.user_id, "hi ann", "b-1").await;
    let answer = ann_mqtt.event().await;
    assert_eq!(
        (answer["seq"].as_u64(), answer["from"].as_str()),
        (Some(2), Some(bob.user_id.as_str()))
    );
    assert_eq!(bob_mqtt.event().await["seq"], 2);
}

#[tokio::test]
async fn a_hundred_messages_arrive_in_order_with_seq_1_to_100() {
    let app = TestApp::spawn().await;
    let (_ann, mut ann_mqtt, bob, mut bob_mqtt) = ann_and_bob(&app).await;
    for i in 1..=100 {
        ann_mqtt
            .send(&bob.user_id, &format!("message {i}"), &format!("c-{i}"))
            .await;
    }
    for i in 1..=100u64 {
        let event = bob_mqtt.event().await;
        assert_eq!(
            (event["seq"].as_u64(), event["body"].as_str()),
            (Some(i), Some(format!("message {i}").as_str()))
        );
        let echo = ann_mqtt.event().await;
        assert_eq!(echo["client_msg_id"], format!("c-{i}"));
        assert_eq!(echo["seq"], i);
    }
}

/// Far more sends in one write than a connection may have in the relay at once (256), so
/// that one read holds more than that: every one is acknowledged and delivered once, in order.
/// The connection queues a read's sends together, so this fails (the connection hangs) if it
/// waited for a place while sends it still held had places.
#[tokio::test]
async fn two_thousand_sends_in_one_write_are_all_acknowledged_and_arrive_in_order() {
    let app =
        TestApp::spawn_with(Options::default().env("TIDINGS_LIMITS__SENDS_PER_USER_PER_MINUTE", 0))
            .await;
    let (ann, _ann_mqtt, bob, mut bob_mqtt) = ann_and_bob(&app).await;
    let (mut raw, code, _) =
        RawMqtt::connect(app.mqtt, "ann-raw", &ann.user_id, &ann.access, true).await;
    assert_eq!(code, ConnectReturnCode::Success);
    let sends = (1..=2000).map(|i| {
        let command = json!({"type": "send", "to": bob.user_id, "body": format!("message {i}"),
            "client_msg_id": format!("c-{i}")});
        command.to_string().into_bytes()
    });
    raw.publish_all(&format!("users/{}/outbox", ann.user_id), sends)
        .await;
    let mut acked = Vec::new();
    while acked.len() < 2000 {
        match raw.next().await {
            Some(Packet::PubAck(ack)) => acked.push(ack.pkid),
            other => panic!("expected a PUBACK, got {other:?}"),
        }
    }
    assert_eq!(acked, (1..=2000).collect::<Vec<u16>>());
    for i in 1..=2000u64 {
        let event = bob_mqtt.event().await;
        assert_eq!(
            (event["seq"].as_u64(), event["body"].as_str()),
            (Some(i), Some(format!("message {i}").as_str()))
        );
    }
    bob_mqtt.assert_no_event(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_repeated_client_msg_id_stores_nothing_and_answers_the_original() {
    let app = TestApp::spawn().await;
    let (ann, mut ann_mqtt, bob, mut bob_mqtt) = ann_and_bob(&app).await;
    ann_mqtt.send(&bob.user_id, "once", "c-1").await;
    let original = ann_mqtt.event().await;
    bob_mqtt.event().await;

    // A retry, and one from another device of Ann's.
    ann_mqtt.send(&bob.user_id, "once", "c-1").await;
    assert_eq!(ann_mqtt.event().await, original);
    let mut laptop = app.mqtt_inbox(&ann, "ann-laptop").await;
    laptop.send(&bob.user_id, "once", "c-1").await;
    assert_eq!(laptop.event().await, original);
    // The replay goes to the sender's inbox, so Ann's phone sees it too.
    assert_eq!(ann_mqtt.event().await, original);
    // The same id with another body, or to another user, is not a retry: refused, and the
    // original stays.
    laptop.send(&bob.user_id, "twice?", "c-1").await;
    let reused = laptop.event().await;
    assert_eq!(
        (reused["code"].as_str(), reused["client_msg_id"].as_str()),
        (Some("client_msg_id_reused"), Some("c-1"))
    );
    assert_eq!(ann_mqtt.event().await, reused);
    // Bob sees it once, and history holds it once.
    bob_mqtt.assert_no_event(Duration::from_millis(500)).await;
    let history = app
        .get(
            &format!("/v1/conversations/{}/messages", bob.user_id),
            &ann.access,
        )
        .await;
    assert_eq!(history.body["messages"].as_array().unwrap().len(), 1);
    assert_eq!(history.body["messages"][0], original);

    // A new id is a new message, with the next seq.
    ann_mqtt.send(&bob.user_id, "again", "c-2").await;
    assert_eq!(ann_mqtt.event().await["seq"], 2);
}

#[tokio::test]
async fn bad_payloads_get_the_contract_error_and_nobody_else_notices() {
    let app =
        TestApp::spawn_with(Options::default().env("TIDINGS_LIMITS__SENDS_PER_USER_PER_MINUTE", 3))
            .await;
    let (ann, mut ann_mqtt, bob, mut bob_mqtt) = ann_and_bob(&app).await;
    let nobody = "0123456789abcdef01234567";
    let cases: Vec<(Value, Option<&str>, &str)> = vec![
        (json!("not an object"), None, "invalid_payload"),
        (json!({"type": "shout"}), None, "invalid_payload"),
        (
            json!({"type": "send", "to": bob.user_id, "client_msg_id": "e-1"}),
            Some("e-1"),
            "invalid_payload",
        ),
        (
            json!({"type": "send", "to": bob.user_id, "body": "", "client_msg_id": "e-2"}),
            Some("e-2"),
            "invalid_payload",
        ),
        (
            json!({"type": "send", "to": bob.user_id, "body": "x", "client_msg_id": ""}),
            Some(""),
            "invalid_payload",
        ),
        (
            json!({"type": "send", "to": bob.user_id, "body": "x", "client_msg_id": "x".repeat(65)}),
            None,
            "invalid_payload",
        ),
        (
            json!({"type": "send", "to": bob.user_id, "body": 42, "client_msg_id": "e-3"}),
            Some("e-3"),
            "invalid_payload",
        ),
        (
            json!({"type": "send", "to": bob.user_id, "body": "x".repeat(4097), "client_msg_id": "e-4"}),
            Some("e-4"),
            "body_too_large",
        ),
        (
            json!({"type": "send", "to": nobody, "body": "x", "client_msg_id": "e-5"}),
            Some("e-5"),
            "unknown_recipient",
        ),
        (
            json!({"type": "send", "to": "bob", "body": "x", "client_msg_id": "e-6"}),
            Some("e-6"),
            "unknown_recipient",
        ),
        (
            json!({"type": "send", "to": ann.user_id, "body": "x", "client_msg_id": "e-7"}),
            Some("e-7"),
            "unknown_recipient",
        ),
    ];
    for (payload, _, _) in &cases {
        ann_mqtt.publish_outbox(payload.to_string()).await;
    }
    ann_mqtt.publish_outbox(&b"\xff\xfe not utf-8 {"[..]).await;
    // Malformed commands are answered by the connection itself, the others once the relay has
    // looked: the errors may come in another order than the commands.
    let mut errors = Vec::new();
    for _ in 0..=cases.len() {
        let error = ann_mqtt.event().await;
        assert_eq!(error["type"], "error", "{error}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
        errors.push(error);
    }
    for (payload, client_msg_id, code) in &cases {
        if let Some(id) = client_msg_id {
            let error = errors
                .iter()
                .find(|e| e["client_msg_id"] == *id)
                .unwrap_or_else(|| panic!("no error for {payload}: {errors:?}"));
            assert_eq!(error["code"], *code, "{payload}");
        }
    }
    // Two cases without a client_msg_id, and the bytes that are not UTF-8.
    let anonymous: Vec<_> = errors
        .iter()
        .filter(|e| e["client_msg_id"].is_null())
        .map(|e| e["code"].as_str().unwrap())
        .collect();
    assert_eq!(anonymous, ["invalid_payload"; 3], "{errors:?}");

    // Exactly 4096 code points is fine; the connection still works after all that.
    ann_mqtt.send(&bob.user_id, &"é".repeat(4096), "ok-1").await;
    assert_eq!(
        bob_mqtt.event().await["body"]
            .as_str()
            .unwrap()
            .chars()
            .count(),
        4096
    );
    assert_eq!(ann_mqtt.event().await["seq"], 1);

    // The rate limit (3 sends a minute here) counts every well-formed send, refused or not,
    // before anything is queued: e-5, e-7 and ok-1 used it up, so ok-2 gets rate_limited with
    // the seconds to wait. Bob's own sends are unaffected.
    ann_mqtt.send(&bob.user_id, "2", "ok-2").await;
    let limited = ann_mqtt.event().await;
    assert_eq!(
        (limited["code"].as_str(), limited["client_msg_id"].as_str()),
        (Some("rate_limited"), Some("ok-2"))
    );
    assert!(
        limited["retry_after"]
            .as_u64()
            .is_some_and(|s| (1..=60).contains(&s)),
        "{limited}"
    );
    bob_mqtt.send(&ann.user_id, "still here", "b-1").await;
    assert_eq!(bob_mqtt.event().await["seq"], 2);
}

#[tokio::test]
async fn a_restart_keeps_history_and_seq_goes_on() {
    let mut app = TestApp::spawn().await;
    let (ann, ann_mqtt, bob, mut bob_mqtt) = ann_and_bob(&app).await;
    for i in 1..=3 {
        ann_mqtt
            .send(&bob.user_id, &format!("before {i}"), &format!("c-{i}"))
            .await;
        bob_mqtt.event().await;
    }
    drop((ann_mqtt, bob_mqtt));
    app.restart();

    let mut ann_mqtt = app.mqtt_inbox(&ann, "ann-phone").await;
    ann_mqtt.send(&bob.user_id, "after", "c-4").await;
    assert_eq!(ann_mqtt.event().await["seq"], 4);
    // A retry of a message from before the restart is still recognised.
    ann_mqtt.send(&bob.user_id, "before 1", "c-1").await;
    assert_eq!(ann_mqtt.event().await["seq"], 1);
    let history = app
        .get(
            &format!("/v1/conversations/{}/messages", ann.user_id),
            &bob.access,
        )
        .await;
    let seqs: Vec<u64> = history.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![1, 2, 3, 4]);
}
