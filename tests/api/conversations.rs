//! `GET /v1/conversations`, read markers and read receipts, and several devices of one user.

use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn conversations_most_recent_first_with_last_message_and_unread() {
    let app = TestApp::spawn().await;
    let ann = app.login("+14155550101").await;
    let bob = app.login("+14155550102").await;
    let carol = app.login("+14155550103").await;
    app.patch_me(&bob.access, json!({"display_name": "Bob"}))
        .await;
    let mut ann_mqtt = app.mqtt_inbox(&ann, "ann").await;
    let mut bob_mqtt = app.mqtt_inbox(&bob, "bob").await;
    let carol_mqtt = app.mqtt_inbox(&carol, "carol").await;

    assert_eq!(
        app.get("/v1/conversations", &ann.access).await.body,
        json!({"conversations": [], "has_more": false})
    );

    // Bob writes twice, Ann answers once; then Carol writes once (the most recent).
    bob_mqtt.send(&ann.user_id, "hi", "b-1").await;
    bob_mqtt.event().await;
    bob_mqtt.send(&ann.user_id, "you there?", "b-2").await;
    bob_mqtt.event().await;
    ann_mqtt.send(&bob.user_id, "yes", "a-1").await;
    ann_mqtt.event().await;
    ann_mqtt.event().await;
    ann_mqtt.event().await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    carol_mqtt
        .send(&ann.user_id, "hello from carol", "c-1")
        .await;
    let from_carol = ann_mqtt.event().await;

    let list = app.get("/v1/conversations", &ann.access).await;
    assert_eq!(list.status, 200, "{list:?}");
    let rows = list.body["conversations"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["peer_id"], carol.user_id.as_str());
    assert_eq!(rows[0]["display_name"], json!(null));
    assert_eq!(rows[0]["last_message"], from_carol);
    assert_eq!(rows[0]["unread"], 1);
    assert_eq!(rows[1]["peer_id"], bob.user_id.as_str());
    assert_eq!(rows[1]["display_name"], "Bob");
    assert_eq!(rows[1]["last_message"]["body"], "yes");
    assert_eq!(rows[1]["last_message"]["seq"], 3);
    // Ann has read nothing yet: Bob's two count, her own reply does not.
    assert_eq!(rows[1]["unread"], 2);
    assert_eq!(
        (&rows[1]["read_seq"], &rows[1]["peer_read_seq"]),
        (&json!(0), &json!(0))
    );
    assert_eq!(list.body["has_more"], false);

    // Bob's view of the same conversation.
    let bobs = app.get("/v1/conversations", &bob.access).await;
    assert_eq!(
        bobs.body["conversations"][0]["peer_id"],
        ann.user_id.as_str()
    );
    assert_eq!(bobs.body["conversations"][0]["unread"], 1);
    app.get("/v1/conversations", "bad")
        .await
        .assert_error(401, "unauthorized");
}

#[tokio::test]
async fn read_markers_move_forward_only_and_the_peer_is_told() {
    let app = TestApp::spawn().await;
    let ann = app.login("+14155550101").await;
    let bob = app.login("+14155550102").await;
    let mut ann_mqtt = app.mqtt_inbox(&ann, "ann").await;
    let mut bob_mqtt = app.mqtt_inbox(&bob, "bob").await;
    for i in 1..=3 {
        bob_mqtt
            .send(&ann.user_id, &format!("m{i}"), &format!("b-{i}"))
            .await;
        ann_mqtt.event().await;
        bob_mqtt.event().await;
    }
    let unread = |app: &TestApp, token: String| {
        let app = app
            .client
            .get(app.url("/v1/conversations"))
            .bearer_auth(token);
        async move {
            Answer::from(app.send().await.unwrap()).await.body["conversations"][0]["unread"].clone()
        }
    };
    assert_eq!(unread(&app, ann.access.clone()).await, 3);

    let read = |peer: &str, seq: u64| json!({"type": "read", "peer": peer, "seq": seq}).to_string();
    ann_mqtt.publish_outbox(read(&bob.user_id, 2)).await;
    let told = json!({"type": "read", "by": ann.user_id, "peer": bob.user_id, "seq": 2});
    assert_eq!(bob_mqtt.event().await, told);
    // Ann's devices are told too (the one that read, and any other), with the same event.
    assert_eq!(ann_mqtt.event().await, told);
    assert_eq!(unread(&app, ann.access.clone()).await, 1);

    // Backwards, or the same again, moves nothing and tells nobody; past the end stops at the end.
    ann_mqtt.publish_outbox(read(&bob.user_id, 1)).await;
    ann_mqtt.publish_outbox(read(&bob.user_id, 2)).await;
    ann_mqtt.publish_outbox(read(&bob.user_id, 99)).await;
    let told = json!({"type": "read", "by": ann.user_id, "peer": bob.user_id, "seq": 3});
    assert_eq!(bob_mqtt.event().await, told);
    assert_eq!(ann_mqtt.event().await, told);
    assert_eq!(unread(&app, ann.access.clone()).await, 0);
    bob_mqtt.assert_no_event(Duration::from_millis(300)).await;

    // Bad read commands get invalid_payload.
    ann_mqtt
        .publish_outbox(json!({"type": "read", "peer": "nobody", "seq": 1}).to_string())
        .await;
    assert_eq!(ann_mqtt.event().await["code"], "invalid_payload");
    ann_mqtt
        .publish_outbox(json!({"type": "read", "peer": bob.user_id, "seq": -1}).to_string())
        .await;
    assert_eq!(ann_mqtt.event().await["code"], "invalid_payload");
}

#[tokio::test]
async fn two_devices_of_one_user_get_every_event_and_an_offline_one_catches_up() {
    let app = TestApp::spawn().await;
    let ann = app.login("+14155550101").await;
    let bob = app.login("+14155550102").await;
    let mut phone = app.mqtt_inbox(&ann, "ann-phone").await;
    let mut laptop = app.mqtt_inbox(&ann, "ann-laptop").await;
    let mut bob_mqtt = app.mqtt_inbox(&bob, "bob-phone").await;

    // Bob's message reaches both devices.
    bob_mqtt.send(&ann.user_id, "to both", "b-1").await;
    let on_phone = phone.event().await;
    assert_eq!(laptop.event().await, on_phone);
    bob_mqtt.event().await;

    // What the phone sends appears on the laptop.
    phone.send(&bob.user_id, "from my phone", "p-1").await;
    let echo = phone.event().await;
    assert_eq!(laptop.event().await, echo);
    assert_eq!(bob_mqtt.event().await, echo);

    // The laptop goes offline; meanwhile two messages; it catches up from history.
    let last_seen = echo["seq"].as_u64().unwrap();
    drop(laptop);
    bob_mqtt.send(&ann.user_id, "while away 1", "b-2").await;
    // Stored before the phone sends (two clients' publishes are otherwise in no set order).
    bob_mqtt.event().await;
    phone.send(&bob.user_id, "while away 2", "p-2").await;
    for _ in 0..2 {
        phone.event().await;
    }
    let missed = app
        .get(
            &format!(
                "/v1/conversations/{}/messages?after={last_seen}",
                bob.user_id
            ),
            &ann.access,
        )
        .await;
    let bodies: Vec<&str> = missed.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, vec!["while away 1", "while away 2"]);
    assert_eq!(missed.body["has_more"], false);
}

#[tokio::test]
async fn a_persistent_session_gets_what_it_missed_while_briefly_away() {
    let app = TestApp::spawn().await;
    let ann = app.login("+14155550101").await;
    let bob = app.login("+14155550102").await;
    let bob_mqtt = app.mqtt_inbox(&bob, "bob-phone").await;
    {
        let mut away = Mqtt::connect(app.mqtt, &ann.user_id, &ann.access, "ann-phone", false)
            .await
            .unwrap();
        away.subscribe(&format!("users/{}/inbox", ann.user_id))
            .await;
        away.client.disconnect().await.unwrap();
        while away.next_packet().await.is_some() {}
    }
    bob_mqtt
        .send(&ann.user_id, "while you were away", "b-1")
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut back = Mqtt::connect(app.mqtt, &ann.user_id, &ann.access, "ann-phone", false)
        .await
        .unwrap();
    assert_eq!(back.event().await["body"], "while you were away");
}

#[tokio::test]
async fn the_same_client_id_again_replaces_the_older_connection() {
    let app = TestApp::spawn().await;
    let ann = app.login("+14155550101").await;
    let bob = app.login("+14155550102").await;
    let mut first = app.mqtt_inbox(&ann, "ann-phone").await;
    let mut second = app.mqtt_inbox(&ann, "ann-phone").await;
    first.assert_closed().await;
    // Another user's device with the same client id is another session altogether.
    let bob_mqtt = app.mqtt_inbox(&bob, "ann-phone").await;
    bob_mqtt.send(&ann.user_id, "to the new one", "b-1").await;
    assert_eq!(second.event().await["body"], "to the new one");
}

#[tokio::test]
async fn takeovers_while_the_inbox_is_busy_leave_the_broker_serving() {
    let app =
        TestApp::spawn_with(Options::default().env("TIDINGS_LIMITS__SENDS_PER_USER_PER_MINUTE", 0))
            .await;
    let ann = app.login("+14155550101").await;
    let bob = app.login("+14155550102").await;
    let bob_mqtt = app.mqtt_inbox(&bob, "bob").await;
    let flood = bob_mqtt.stream_sends(&ann.user_id, 2000, "f-");
    // Ann's phone keeps reconnecting with the same id while events pour in, reading none.
    let mut phones = Vec::new();
    for _ in 0..15 {
        let phone = Mqtt::connect(app.mqtt, &ann.user_id, &ann.access, "ann-phone", false)
            .await
            .expect("connect");
        phone
            .client
            .subscribe(
                format!("users/{}/inbox", ann.user_id),
                rumqttc::QoS::AtLeastOnce,
            )
            .await
            .unwrap();
        phones.push(phone);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    flood.await.unwrap();
    drop(phones);
    // The broker still works for everyone.
    let mut laptop = app.mqtt_inbox(&ann, "ann-laptop").await;
    bob_mqtt.send(&ann.user_id, "still alive?", "last").await;
    loop {
        if laptop.event().await["client_msg_id"] == "last" {
            break;
        }
    }
}

#[tokio::test]
async fn the_list_shows_both_read_markers_and_pages_by_time() {
    let app = TestApp::spawn().await;
    let ann = app.login("+14155550101").await;
    let mut ann_mqtt = app.mqtt_inbox(&ann, "ann").await;
    // Five peers write to Ann, one after another (each a later millisecond).
    let mut peers = Vec::new();
    for i in 0..5 {
        let peer = app.login(&format!("+1415555020{i}")).await;
        let mut mqtt = app.mqtt_inbox(&peer, "phone").await;
        mqtt.send(&ann.user_id, &format!("hi from {i}"), "c-1")
            .await;
        mqtt.event().await;
        ann_mqtt.event().await;
        tokio::time::sleep(Duration::from_millis(3)).await;
        peers.push((peer, mqtt));
    }
    // Ann reads the newest conversation; its peer reads Ann's answer.
    let (newest, newest_mqtt) = &mut peers[4];
    ann_mqtt.send(&newest.user_id, "hello back", "a-1").await;
    ann_mqtt.event().await;
    newest_mqtt.event().await;
    let read = |peer: &str, seq: u64| json!({"type": "read", "peer": peer, "seq": seq}).to_string();
    ann_mqtt.publish_outbox(read(&newest.user_id, 1)).await;
    ann_mqtt.event().await;
    newest_mqtt.event().await;
    newest_mqtt.publish_outbox(read(&ann.user_id, 2)).await;
    newest_mqtt.event().await;
    ann_mqtt.event().await;

    let first = app.get("/v1/conversations?limit=2", &ann.access).await;
    let rows = first.body["conversations"].as_array().unwrap().clone();
    assert_eq!(rows.len(), 2);
    assert_eq!(first.body["has_more"], true);
    assert_eq!(rows[0]["peer_id"], newest.user_id.as_str());
    assert_eq!(
        (
            &rows[0]["read_seq"],
            &rows[0]["peer_read_seq"],
            &rows[0]["unread"]
        ),
        (&json!(1), &json!(2), &json!(0))
    );
    // The next pages start before the last row's sent_at, until there is no more.
    let mut seen: Vec<String> = rows
        .iter()
        .map(|r| r["peer_id"].as_str().unwrap().to_owned())
        .collect();
    let mut last = rows;
    loop {
        let sent_at = last.last().unwrap()["last_message"]["sent_at"]
            .as_str()
            .unwrap();
        let ms =
            time::OffsetDateTime::parse(sent_at, &time::format_description::well_known::Rfc3339)
                .unwrap()
                .unix_timestamp_nanos()
                / 1_000_000;
        let page = app
            .get(
                &format!("/v1/conversations?limit=2&before={ms}"),
                &ann.access,
            )
            .await;
        last = page.body["conversations"].as_array().unwrap().clone();
        seen.extend(
            last.iter()
                .map(|r| r["peer_id"].as_str().unwrap().to_owned()),
        );
        if page.body["has_more"] == false {
            break;
        }
    }
    let expected: Vec<String> = peers.iter().rev().map(|(p, _)| p.user_id.clone()).collect();
    assert_eq!(seen, expected);
    app.get("/v1/conversations?limit=0", &ann.access)
        .await
        .assert_error(400, "invalid_query");
}
