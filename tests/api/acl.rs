//! The gateway's security rules: who may connect, subscribe and publish where.

use std::time::Duration;

use rumqttc::{ConnectReturnCode, QoS, SubscribeReasonCode};
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn bad_tokens_get_connack_not_authorized() {
    let app = TestApp::spawn().await;
    let ann = app.login("+14155550101").await;
    let bob = app.login("+14155550102").await;
    let refused = |r: Result<Mqtt, Option<ConnectReturnCode>>| match r {
        Err(code) => code,
        Ok(_) => panic!("connected"),
    };
    let cases = [
        (ann.user_id.as_str(), "not-a-token"),
        (ann.user_id.as_str(), ""),
        // One user's token with another user's name.
        (bob.user_id.as_str(), ann.access.as_str()),
        ("not-a-user-id", ann.access.as_str()),
    ];
    for (username, password) in cases {
        let result = Mqtt::connect(app.mqtt, username, password, "x", true).await;
        assert_eq!(
            refused(result),
            Some(ConnectReturnCode::NotAuthorized),
            "{username}"
        );
    }
    // A logged-out token.
    let answer = app
        .post_auth("/v1/auth/logout", &bob.access, json!({}))
        .await;
    assert_eq!(answer.status, 204);
    let result = Mqtt::connect(app.mqtt, &bob.user_id, &bob.access, "x", true).await;
    assert_eq!(refused(result), Some(ConnectReturnCode::NotAuthorized));
    // The right one works.
    assert!(
        Mqtt::connect(app.mqtt, &ann.user_id, &ann.access, "x", true)
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn only_the_own_inbox_can_be_subscribed() {
    let app = TestApp::spawn().await;
    let ann = app.login("+14155550101").await;
    let bob = app.login("+14155550102").await;
    let mut mqtt = app.mqtt_inbox(&ann, "ann-phone").await;
    let mut bob_mqtt = app.mqtt_inbox(&bob, "bob-phone").await;
    for filter in [
        "#".to_owned(),
        "+".to_owned(),
        "users/+/inbox".to_owned(),
        "users/#".to_owned(),
        "$SYS/#".to_owned(),
        format!("users/{}/inbox", bob.user_id),
        format!("users/{}/outbox", ann.user_id),
        format!("users/{}/+", ann.user_id),
    ] {
        assert_eq!(
            mqtt.subscribe(&filter).await,
            vec![SubscribeReasonCode::Failure],
            "{filter}"
        );
    }
    // One SUBSCRIBE with a good and a bad filter: each gets its own answer.
    let filters = vec![
        rumqttc::SubscribeFilter::new(format!("users/{}/inbox", bob.user_id), QoS::AtLeastOnce),
        rumqttc::SubscribeFilter::new(format!("users/{}/inbox", ann.user_id), QoS::AtLeastOnce),
    ];
    mqtt.client.subscribe_many(filters).await.unwrap();
    loop {
        if let Some(rumqttc::Packet::SubAck(ack)) = mqtt.next_packet().await {
            assert_eq!(
                ack.return_codes,
                vec![
                    SubscribeReasonCode::Failure,
                    SubscribeReasonCode::Success(QoS::AtLeastOnce)
                ]
            );
            break;
        }
    }
    // None of the refused filters leaks Bob's messages to Ann.
    bob_mqtt.send(&ann.user_id, "to ann", "b-1").await;
    let event = mqtt.event().await;
    assert_eq!(event["to"], ann.user_id.as_str());
    bob_mqtt.event().await;
    let charlie = app.login("+14155550103").await;
    bob_mqtt.send(&charlie.user_id, "not for ann", "b-2").await;
    assert_eq!(bob_mqtt.event().await["to"], charlie.user_id.as_str());
    mqtt.assert_no_event(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn publishing_anywhere_but_the_own_outbox_closes_the_connection() {
    let app = TestApp::spawn().await;
    let ann = app.login("+14155550101").await;
    let bob = app.login("+14155550102").await;
    let mut bob_mqtt = app.mqtt_inbox(&bob, "bob-phone").await;
    let forged =
        json!({"type": "send", "to": ann.user_id, "body": "forged", "client_msg_id": "f-1"})
            .to_string();
    let message = json!({"type": "message", "from": ann.user_id, "body": "fake"}).to_string();
    for (topic, payload) in [
        (format!("users/{}/outbox", bob.user_id), forged.clone()),
        (format!("users/{}/inbox", bob.user_id), message.clone()),
        (format!("users/{}/inbox", ann.user_id), message.clone()),
        ("anything".to_owned(), message.clone()),
    ] {
        let mut mqtt = app.mqtt_inbox(&ann, "ann-phone").await;
        mqtt.client
            .publish(&topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
        mqtt.assert_closed().await;
    }
    // Nothing of it reached Bob, and nothing was stored.
    bob_mqtt.assert_no_event(Duration::from_millis(500)).await;
    let history = app
        .get(
            &format!("/v1/conversations/{}/messages", ann.user_id),
            &bob.access,
        )
        .await;
    assert_eq!(history.body["messages"], json!([]));
}

#[tokio::test]
async fn a_will_on_another_topic_is_refused() {
    let app = TestApp::spawn().await;
    let ann = app.login("+14155550101").await;
    let bob = app.login("+14155550102").await;
    let mut options =
        rumqttc::MqttOptions::new("ann-will", app.mqtt.ip().to_string(), app.mqtt.port());
    options.set_credentials(&ann.user_id, &ann.access);
    options.set_last_will(rumqttc::LastWill::new(
        format!("users/{}/inbox", bob.user_id),
        "boo",
        QoS::AtLeastOnce,
        false,
    ));
    let (_client, mut eventloop) = rumqttc::AsyncClient::new(options, 10);
    match eventloop.poll().await {
        Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
            assert_eq!(code, ConnectReturnCode::NotAuthorized)
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn logout_closes_the_sessions_live_connections() {
    let app =
        TestApp::spawn_with(Options::default().env("TIDINGS_LIMITS__OTP_RESEND_SECS", 0)).await;
    let phone = app.login("+14155550101").await;
    let laptop = app.login("+14155550101").await;
    let mut phone_mqtt = app.mqtt_inbox(&phone, "phone").await;
    let mut laptop_mqtt = app.mqtt_inbox(&laptop, "laptop").await;
    let answer = app
        .post_auth("/v1/auth/logout", &phone.access, json!({}))
        .await;
    assert_eq!(answer.status, 204);
    phone_mqtt.assert_closed().await;
    // The other session stays connected and working.
    let bob = app.login("+14155550102").await;
    let bob_mqtt = app.mqtt_inbox(&bob, "bob").await;
    bob_mqtt.send(&laptop.user_id, "still there?", "b-1").await;
    assert_eq!(laptop_mqtt.event().await["body"], "still there?");
}

#[tokio::test]
async fn a_connection_closes_when_its_token_expires() {
    let app = TestApp::spawn_with(Options::default().env("TIDINGS_AUTH__ACCESS_TTL_SECS", 2)).await;
    let ann = app.login("+14155550101").await;
    let mut mqtt = app.mqtt_inbox(&ann, "ann-phone").await;
    let started = std::time::Instant::now();
    mqtt.assert_closed().await;
    let after = started.elapsed();
    assert!(after < Duration::from_secs(4), "closed after {after:?}");
    // And the expired token cannot connect again.
    let again = Mqtt::connect(app.mqtt, &ann.user_id, &ann.access, "ann-phone", true).await;
    assert!(matches!(again, Err(Some(ConnectReturnCode::NotAuthorized))));
}
