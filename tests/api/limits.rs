//! Connection caps and client-id rules (contract v1.1): a user past `max_connections_per_user`
//! and anyone past `max_connections` get CONNACK 3 while everyone else keeps chatting; a client
//! id over 128 bytes gets CONNACK 2; an empty one gets a clean session of its own.

use rumqttc::mqttbytes::v4::ConnectReturnCode as Code;
use rumqttc::mqttbytes::v4::Packet as Raw;
use rumqttc::ConnectReturnCode;

use crate::helpers::{Mqtt, Options, RawMqtt, TestApp, Tokens};

/// Connects as soon as the server has room again (a connection that just left frees its slot
/// when the server has seen it go).
async fn connect_when_room(app: &TestApp, user: &Tokens, client_id: &str) -> Mqtt {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match Mqtt::connect(app.mqtt, &user.user_id, &user.access, client_id, true).await {
            Ok(mut mqtt) => {
                mqtt.user_id = user.user_id.clone();
                return mqtt;
            }
            Err(code) => assert!(
                std::time::Instant::now() < deadline,
                "still refused after a connection left: {code:?}"
            ),
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Ann and Bob chat, Bob to Ann, and Ann sees it.
async fn still_chatting(ann: &mut Mqtt, bob: &Mqtt, id: &str) {
    bob.send(&ann.user_id, "still here?", id).await;
    loop {
        let event = ann.event().await;
        if event["client_msg_id"] == id {
            assert_eq!(event["body"], "still here?");
            return;
        }
    }
}

#[tokio::test]
async fn one_user_past_its_cap_is_refused_and_nobody_else_notices() {
    let app =
        TestApp::spawn_with(Options::default().env("TIDINGS_MQTT__MAX_CONNECTIONS_PER_USER", 3))
            .await;
    let ann = app.login("+14155550101").await;
    let bob = app.login("+14155550102").await;
    let mut ann_phone = app.mqtt_inbox(&ann, "ann-phone").await;
    let bob_phone = app.mqtt_inbox(&bob, "bob-phone").await;
    let _ann_2 = app.mqtt_inbox(&ann, "ann-2").await;
    let ann_3 = app.mqtt_inbox(&ann, "ann-3").await;

    // A fourth device of Ann's: CONNACK 3 "server unavailable".
    let refused = Mqtt::connect(app.mqtt, &ann.user_id, &ann.access, "ann-4", true).await;
    assert_eq!(
        refused.err(),
        Some(Some(ConnectReturnCode::ServiceUnavailable))
    );
    // A device of hers that reconnects with its own id replaces its old connection: never
    // refused for the cap.
    let mut ann_phone_again = app.mqtt_inbox(&ann, "ann-phone").await;
    ann_phone.assert_closed().await;
    // Bob is not affected: he connects another device, and the chat goes on.
    let _bob_laptop = app.mqtt_inbox(&bob, "bob-laptop").await;
    still_chatting(&mut ann_phone_again, &bob_phone, "b-1").await;
    assert!(app.log().contains("mqtt.max_connections_per_user reached"));

    // Once one of Ann's devices goes, a new one gets in.
    ann_3.client.disconnect().await.unwrap();
    connect_when_room(&app, &ann, "ann-4").await;
}

#[tokio::test]
async fn past_the_global_cap_everyone_new_is_refused_and_the_connected_chat_on() {
    let app = TestApp::spawn_with(Options::default().env("TIDINGS_MQTT__MAX_CONNECTIONS", 2)).await;
    let ann = app.login("+14155550101").await;
    let bob = app.login("+14155550102").await;
    let cid = app.login("+14155550103").await;
    let mut ann_phone = app.mqtt_inbox(&ann, "ann-phone").await;
    let bob_phone = app.mqtt_inbox(&bob, "bob-phone").await;

    let refused = Mqtt::connect(app.mqtt, &cid.user_id, &cid.access, "cid-phone", true).await;
    assert_eq!(
        refused.err(),
        Some(Some(ConnectReturnCode::ServiceUnavailable))
    );
    let refused = Mqtt::connect(app.mqtt, &ann.user_id, &ann.access, "ann-laptop", true).await;
    assert_eq!(
        refused.err(),
        Some(Some(ConnectReturnCode::ServiceUnavailable))
    );
    still_chatting(&mut ann_phone, &bob_phone, "b-1").await;
    assert!(app.log().contains("mqtt.max_connections reached"));

    bob_phone.client.disconnect().await.unwrap();
    let cid_phone = connect_when_room(&app, &cid, "cid-phone").await;
    cid_phone.send(&ann.user_id, "room for me", "c-1").await;
    assert_eq!(ann_phone.event().await["body"], "room for me");
}

#[tokio::test]
async fn a_client_id_over_128_bytes_is_rejected() {
    let app = TestApp::spawn().await;
    let ann = app.login("+14155550101").await;
    let long = "x".repeat(129);
    let (_, code, _) = RawMqtt::connect(app.mqtt, &long, &ann.user_id, &ann.access, true).await;
    assert_eq!(code, Code::BadClientId, "CONNACK 2 identifier rejected");
    let longest = "y".repeat(128);
    let (_, code, _) = RawMqtt::connect(app.mqtt, &longest, &ann.user_id, &ann.access, true).await;
    assert_eq!(code, Code::Success);
    // The check comes before anything else, so even a bad token learns this first.
    let (_, code, _) = RawMqtt::connect(app.mqtt, &long, &ann.user_id, "not-a-token", true).await;
    assert_eq!(code, Code::BadClientId);
}

#[tokio::test]
async fn an_empty_client_id_gets_a_clean_session_of_its_own() {
    let app = TestApp::spawn().await;
    let ann = app.login("+14155550101").await;
    let bob = app.login("+14155550102").await;
    let bob_phone = app.mqtt_inbox(&bob, "bob-phone").await;

    // Asking to keep a session needs a name for it.
    let (_, code, _) = RawMqtt::connect(app.mqtt, "", &ann.user_id, &ann.access, false).await;
    assert_eq!(code, Code::BadClientId);

    // Two anonymous devices at once: two sessions, each gets the message.
    let inbox = format!("users/{}/inbox", ann.user_id);
    let mut devices = Vec::new();
    for _ in 0..2 {
        let (mut device, code, present) =
            RawMqtt::connect(app.mqtt, "", &ann.user_id, &ann.access, true).await;
        assert_eq!((code, present), (Code::Success, false));
        device.subscribe(&inbox).await;
        assert!(matches!(device.next().await, Some(Raw::SubAck(_))));
        devices.push(device);
    }
    bob_phone.send(&ann.user_id, "to both", "b-1").await;
    for device in &mut devices {
        match device.next().await {
            Some(Raw::Publish(publish)) => {
                let event: serde_json::Value = serde_json::from_slice(&publish.payload).unwrap();
                assert_eq!(event["body"], "to both");
                device.puback(publish.pkid).await;
            }
            other => panic!("expected the event, got {other:?}"),
        }
    }
    for device in devices {
        device.disconnect().await;
    }
    // Nothing was kept: a new anonymous connection starts clean, and gets nothing old.
    let (mut again, code, present) =
        RawMqtt::connect(app.mqtt, "", &ann.user_id, &ann.access, true).await;
    assert_eq!((code, present), (Code::Success, false));
    again.subscribe(&inbox).await;
    assert!(matches!(again.next().await, Some(Raw::SubAck(_))));
    bob_phone.send(&ann.user_id, "only this", "b-2").await;
    match again.next().await {
        Some(Raw::Publish(publish)) => {
            let event: serde_json::Value = serde_json::from_slice(&publish.payload).unwrap();
            assert_eq!(event["body"], "only this");
        }
        other => panic!("expected the new event, got {other:?}"),
    }
}
