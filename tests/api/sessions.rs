//! Kept sessions (`clean_session = false`) across takeovers, their bound per user and their
//! deadline.

use std::time::Duration;

use rumqttc::mqttbytes::v4::ConnectReturnCode as Code;
use rumqttc::mqttbytes::v4::Packet as Raw;

use crate::helpers::{Options, RawMqtt, TestApp};

/// The bodies of the next `n` events, acknowledging each.
async fn bodies(device: &mut RawMqtt, n: usize) -> Vec<String> {
    let mut bodies = Vec::new();
    while bodies.len() < n {
        match device.next().await {
            Some(Raw::Publish(publish)) => {
                let event: serde_json::Value = serde_json::from_slice(&publish.payload).unwrap();
                bodies.push(event["body"].as_str().unwrap().to_owned());
                device.puback(publish.pkid).await;
            }
            Some(_) => {}
            None => panic!("closed after {bodies:?}"),
        }
    }
    bodies
}

#[tokio::test]
async fn a_device_that_takes_over_its_half_open_session_gets_every_unacknowledged_event() {
    let app = TestApp::spawn().await;
    let ann = app.login("+14155550101").await;
    let bob = app.login("+14155550102").await;
    let bob_phone = app.mqtt_inbox(&bob, "bob-phone").await;
    let inbox = format!("users/{}/inbox", ann.user_id);

    // Ann's phone keeps its session, subscribes, then goes silent: the socket stays open (as
    // after a network change) and it acknowledges nothing.
    let (mut stale, code, _) =
        RawMqtt::connect(app.mqtt, "ann-phone", &ann.user_id, &ann.access, false).await;
    assert_eq!(code, Code::Success);
    stale.subscribe(&inbox).await;
    assert!(matches!(stale.next().await, Some(Raw::SubAck(_))));
    for i in 1..=3 {
        bob_phone
            .send(&ann.user_id, &format!("m{i}"), &format!("b-{i}"))
            .await;
    }
    // The events reach the stale socket, unacknowledged.
    let mut unacked = 0;
    while unacked < 3 {
        if let Some(Raw::Publish(_)) = stale.next().await {
            unacked += 1;
        }
    }

    // The phone comes back on a new socket with the same client id: it takes over, finds its
    // session, and gets the three events again (nothing was acknowledged), then a new one.
    let (mut phone, code, present) =
        RawMqtt::connect(app.mqtt, "ann-phone", &ann.user_id, &ann.access, false).await;
    assert_eq!((code, present), (Code::Success, true));
    assert!(stale.next().await.is_none(), "the stale socket is closed");
    assert_eq!(bodies(&mut phone, 3).await, ["m1", "m2", "m3"]);
    bob_phone.send(&ann.user_id, "m4", "b-4").await;
    assert_eq!(bodies(&mut phone, 1).await, ["m4"]);

    // Away again, properly this time; events queue; back again: they arrive.
    phone.disconnect().await;
    bob_phone.send(&ann.user_id, "m5", "b-5").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut phone, code, present) =
        RawMqtt::connect(app.mqtt, "ann-phone", &ann.user_id, &ann.access, false).await;
    assert_eq!((code, present), (Code::Success, true));
    assert_eq!(bodies(&mut phone, 1).await, ["m5"]);
}

#[tokio::test]
async fn kept_sessions_expire_and_a_user_keeps_only_so_many() {
    let app = TestApp::spawn_with(
        Options::default()
            .env("TIDINGS_MQTT__SESSION_EXPIRY_SECS", 2)
            .env("TIDINGS_MQTT__MAX_CONNECTIONS_PER_USER", 2),
    )
    .await;
    let ann = app.login("+14155550101").await;
    let inbox = format!("users/{}/inbox", ann.user_id);
    let away = |id: &'static str| {
        let (app_mqtt, user, token, inbox) = (
            app.mqtt,
            ann.user_id.clone(),
            ann.access.clone(),
            inbox.clone(),
        );
        async move {
            let (mut device, code, _) = RawMqtt::connect(app_mqtt, id, &user, &token, false).await;
            assert_eq!(code, Code::Success);
            device.subscribe(&inbox).await;
            assert!(matches!(device.next().await, Some(Raw::SubAck(_))));
            device.disconnect().await;
        }
    };
    let back = |id: &'static str| {
        let (app_mqtt, user, token) = (app.mqtt, ann.user_id.clone(), ann.access.clone());
        async move {
            let (device, code, present) =
                RawMqtt::connect(app_mqtt, id, &user, &token, false).await;
            assert_eq!(code, Code::Success);
            device.disconnect().await;
            present
        }
    };

    // Three devices keep sessions; Ann keeps at most two, so the oldest goes.
    away("a").await;
    away("b").await;
    away("c").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!back("a").await, "the oldest kept session was discarded");
    assert!(back("c").await, "a newer one is still there");

    // Past session_expiry_secs, none is left.
    away("d").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!back("d").await, "an expired session was discarded");
}
