//! MQTT 5.0 on the same port as 3.1.1, with real 5.0 clients: rumqttc's v5 client,
//! `mosquitto_sub -V mqttv5` / `mosquitto_pub -V mqttv5`, and raw 5.0 packets for what no
//! library sends. A 5.0 client gets 5.0 packets and reason codes throughout: CONNACK 0x87,
//! 0x85, 0x97, 0x89, 0x8C; SUBACK 0x80 and 0x8F; DISCONNECT with a reason before the server
//! closes; its Session Expiry Interval decides how long its session is kept.

use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, ConnAckProperties, ConnectProperties, ConnectReturnCode, DisconnectReasonCode,
    LastWill, Packet, SubscribeReasonCode,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, StateError};
use serde_json::{json, Value};

use crate::helpers::*;

/// A 5.0 client (rumqttc v5) whose incoming packets, and the reason a server DISCONNECT
/// gave, are collected for the test.
struct V5 {
    client: AsyncClient,
    user_id: String,
    connack: ConnAck,
    incoming: tokio::sync::mpsc::UnboundedReceiver<Result<Packet, ConnectionError>>,
}

impl V5 {
    fn options(app: &TestApp, user: &Tokens, client_id: &str) -> MqttOptions {
        let mut options = MqttOptions::new(client_id, app.mqtt.ip().to_string(), app.mqtt.port());
        options.set_credentials(&user.user_id, &user.access);
        options.set_keep_alive(Duration::from_secs(30));
        options
    }

    /// Connects with `options`; `Err` with the CONNACK reason when refused.
    async fn connect(options: MqttOptions) -> Result<Self, ConnectReturnCode> {
        let user_id = options
            .credentials()
            .map(|login| login.username)
            .unwrap_or_default();
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        let connack = match tokio::time::timeout(MQTT_WAIT, eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => ack,
            Ok(Err(ConnectionError::ConnectionRefused(code))) => return Err(code),
            other => panic!("expected a CONNACK, got {other:?}"),
        };
        let (tx, incoming) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(pump(eventloop, tx));
        Ok(Self {
            client,
            user_id,
            connack,
            incoming,
        })
    }

    async fn next(&mut self) -> Result<Packet, ConnectionError> {
        tokio::time::timeout(MQTT_WAIT, self.incoming.recv())
            .await
            .expect("something arrives within MQTT_WAIT")
            .expect("the event loop reports how it ended")
    }

    /// The SUBACK's reason codes for `filters`.
    async fn subscribe(&mut self, filters: &[&str]) -> Vec<SubscribeReasonCode> {
        let filters = filters
            .iter()
            .map(|f| rumqttc::v5::mqttbytes::v5::Filter::new(*f, QoS::AtLeastOnce));
        self.client.subscribe_many(filters).await.unwrap();
        loop {
            match self.next().await {
                Ok(Packet::SubAck(ack)) => return ack.return_codes,
                Ok(_) => {}
                Err(e) => panic!("connection ended before SUBACK: {e}"),
            }
        }
    }

    async fn subscribe_inbox(&mut self) {
        let inbox = format!("users/{}/inbox", self.user_id);
        assert_eq!(
            self.subscribe(&[&inbox]).await,
            [SubscribeReasonCode::Success(QoS::AtLeastOnce)]
        );
    }

    async fn send(&self, to: &str, body: &str, client_msg_id: &str) {
        let command =
            json!({"type": "send", "to": to, "body": body, "client_msg_id": client_msg_id});
        self.client
            .publish(
                format!("users/{}/outbox", self.user_id),
                QoS::AtLeastOnce,
                false,
                command.to_string(),
            )
            .await
            .unwrap();
    }

    /// The next event on the inbox.
    async fn event(&mut self) -> Value {
        loop {
            match self.next().await {
                Ok(Packet::Publish(p)) => return serde_json::from_slice(&p.payload).unwrap(),
                Ok(_) => {}
                Err(e) => panic!("connection ended before an event: {e}"),
            }
        }
    }

    /// The reason of the server's DISCONNECT, once the connection ends.
    async fn disconnect_reason(&mut self) -> DisconnectReasonCode {
        loop {
            match self.next().await {
                Ok(_) => {}
                Err(ConnectionError::MqttState(StateError::ServerDisconnect {
                    reason_code,
                    ..
                })) => return reason_code,
                Err(e) => panic!("closed without a DISCONNECT: {e}"),
            }
        }
    }
}

async fn pump(
    mut eventloop: EventLoop,
    tx: tokio::sync::mpsc::UnboundedSender<Result<Packet, ConnectionError>>,
) {
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(packet)) => {
                if tx.send(Ok(packet)).is_err() {
                    return;
                }
            }
            Ok(Event::Outgoing(_)) => {}
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        }
    }
}

fn with_expiry(mut options: MqttOptions, clean_start: bool, expiry: Option<u32>) -> MqttOptions {
    options.set_clean_start(clean_start);
    options.set_session_expiry_interval(expiry);
    options
}

#[tokio::test]
async fn a_v5_client_chats_with_a_v311_client_on_the_same_port() {
    let app = TestApp::spawn().await;
    let ann = app.login("+14155550101").await;
    let bob = app.login("+14155550102").await;

    let mut ann5 = V5::connect(V5::options(&app, &ann, "ann-phone"))
        .await
        .unwrap();
    let properties: ConnAckProperties = ann5.connack.properties.clone().unwrap();
    assert_eq!(ann5.connack.code, ConnectReturnCode::Success);
    assert_eq!(properties.max_packet_size, Some(256 * 1024));
    assert_eq!(properties.shared_subscription_available, Some(0));
    assert_eq!(properties.subscription_identifiers_available, Some(0));
    assert_eq!(properties.assigned_client_identifier, None);
    ann5.subscribe_inbox().await;
    let mut bob4 = app.mqtt_inbox(&bob, "bob-phone").await;

    ann5.send(&bob.user_id, "hello from 5.0", "c-1").await;
    let event = bob4.event().await;
    assert_eq!(event["body"], "hello from 5.0");
    assert_eq!(event["from"], ann.user_id.as_str());
    assert_eq!(event["seq"], 1);
    let own = ann5.event().await;
    assert_eq!(
        own["client_msg_id"], "c-1",
        "the sender's own inbox gets it too"
    );

    bob4.send(&ann.user_id, "hello from 3.1.1", "b-1").await;
    let event = ann5.event().await;
    assert_eq!(event["body"], "hello from 3.1.1");
    assert_eq!(event["seq"], 2);

    // An error event reaches a 5.0 client just the same.
    ann5.send("not-a-user", "x", "c-2").await;
    let error = ann5.event().await;
    assert_eq!(error["type"], "error");
    assert_eq!(error["client_msg_id"], "c-2");
}

#[tokio::test]
async fn v5_connack_refusals_carry_v5_reason_codes() {
    let app = TestApp::spawn_with(
        Options::default()
            .env("TIDINGS_MQTT__MAX_CONNECTIONS", 2)
            .env("TIDINGS_MQTT__MAX_CONNECTIONS_PER_USER", 1),
    )
    .await;
    let ann = app.login("+14155550101").await;
    let bob = app.login("+14155550102").await;
    let cat = app.login("+14155550103").await;

    let mut bad = V5::options(&app, &ann, "ann-phone");
    bad.set_credentials(&ann.user_id, "not-a-token");
    assert_eq!(
        V5::connect(bad).await.err(),
        Some(ConnectReturnCode::NotAuthorized)
    );
    let mut other = V5::options(&app, &ann, "ann-phone");
    other.set_credentials(&bob.user_id, &ann.access);
    assert_eq!(
        V5::connect(other).await.err(),
        Some(ConnectReturnCode::NotAuthorized)
    );

    let long_id = "x".repeat(129);
    assert_eq!(
        V5::connect(V5::options(&app, &ann, &long_id)).await.err(),
        Some(ConnectReturnCode::ClientIdentifierNotValid)
    );

    let mut enhanced = V5::options(&app, &ann, "ann-phone");
    let mut properties = ConnectProperties::new();
    properties.authentication_method = Some("SCRAM-SHA-1".into());
    enhanced.set_connect_properties(properties);
    assert_eq!(
        V5::connect(enhanced).await.err(),
        Some(ConnectReturnCode::BadAuthenticationMethod)
    );

    let _ann1 = V5::connect(V5::options(&app, &ann, "ann-phone"))
        .await
        .unwrap();
    assert_eq!(
        V5::connect(V5::options(&app, &ann, "ann-laptop"))
            .await
            .err(),
        Some(ConnectReturnCode::QuotaExceeded),
        "past mqtt.max_connections_per_user"
    );
    let _bob1 = V5::connect(V5::options(&app, &bob, "bob-phone"))
        .await
        .unwrap();
    assert_eq!(
        V5::connect(V5::options(&app, &cat, "cat-phone"))
            .await
            .err(),
        Some(ConnectReturnCode::ServerBusy),
        "past mqtt.max_connections"
    );
}

#[tokio::test]
async fn v5_subscribe_refusals_and_a_forbidden_publish() {
    let app = TestApp::spawn().await;
    let ann = app.login("+14155550101").await;
    let bob = app.login("+14155550102").await;
    let mut ann5 = V5::connect(V5::options(&app, &ann, "ann-phone"))
        .await
        .unwrap();

    let own = format!("users/{}/inbox", ann.user_id);
    let bobs = format!("users/{}/inbox", bob.user_id);
    let codes = ann5.subscribe(&[&own, &bobs, "users/+/inbox"]).await;
    assert_eq!(
        codes,
        [
            SubscribeReasonCode::Success(QoS::AtLeastOnce),
            SubscribeReasonCode::Unspecified,
            SubscribeReasonCode::Unspecified,
        ]
    );

    ann5.client
        .publish(bobs, QoS::AtLeastOnce, false, "{}")
        .await
        .unwrap();
    assert_eq!(
        ann5.disconnect_reason().await,
        DisconnectReasonCode::NotAuthorized
    );
}

#[tokio::test]
async fn a_v5_connection_is_told_why_it_ends() {
    let app = TestApp::spawn_with(Options::default().env("TIDINGS_AUTH__ACCESS_TTL_SECS", 2)).await;
    let ann = app.login("+14155550101").await;

    // A second connection with the same client id takes over.
    let mut first = V5::connect(V5::options(&app, &ann, "ann-phone"))
        .await
        .unwrap();
    let _second = V5::connect(V5::options(&app, &ann, "ann-phone"))
        .await
        .unwrap();
    assert_eq!(
        first.disconnect_reason().await,
        DisconnectReasonCode::SessionTakenOver
    );

    // The access token's time is up (2 s): 0xA0 "maximum connect time".
    let mut expiring = V5::connect(V5::options(&app, &ann, "ann-tablet"))
        .await
        .unwrap();
    assert_eq!(
        expiring.disconnect_reason().await,
        DisconnectReasonCode::MaximumConnectTime
    );
}

#[tokio::test]
async fn v5_sessions_follow_the_session_expiry_interval() {
    let app = TestApp::spawn().await;
    let ann = app.login("+14155550101").await;
    let bob = app.login("+14155550102").await;
    let mut bob4 = app.mqtt_inbox(&bob, "bob-phone").await;

    // Kept for 300 s: what arrives while away is there on return.
    let options = |clean, expiry| with_expiry(V5::options(&app, &ann, "ann-phone"), clean, expiry);
    let mut ann5 = V5::connect(options(true, Some(300))).await.unwrap();
    assert!(!ann5.connack.session_present);
    assert_eq!(
        ann5.connack
            .properties
            .as_ref()
            .unwrap()
            .session_expiry_interval,
        None,
        "granted as asked"
    );
    ann5.subscribe_inbox().await;
    ann5.client.disconnect().await.unwrap();
    let _ = ann5.next().await;
    bob4.send(&ann.user_id, "while you were away", "b-1").await;
    bob4.event().await;
    let mut ann5 = V5::connect(options(false, Some(300))).await.unwrap();
    assert!(ann5.connack.session_present);
    assert_eq!(ann5.event().await["body"], "while you were away");

    // Resumed with no expiry: not kept once it ends.
    ann5.client.disconnect().await.unwrap();
    let _ = ann5.next().await;
    let mut present = true;
    for _ in 0..50 {
        let probe = V5::connect(options(false, None)).await.unwrap();
        present = probe.connack.session_present;
        probe.client.disconnect().await.unwrap();
        if !present {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!present, "a session with expiry 0 is dropped when it ends");

    // Longer than mqtt.session_expiry_secs (3600): cut, and the CONNACK says so.
    let long = V5::connect(options(true, Some(u32::MAX))).await.unwrap();
    assert_eq!(
        long.connack
            .properties
            .as_ref()
            .unwrap()
            .session_expiry_interval,
        Some(3600)
    );
    long.client.disconnect().await.unwrap();

    // Clean start drops what was kept, and (with an expiry) keeps the new session.
    let mut fresh = V5::connect(options(true, Some(60))).await.unwrap();
    assert!(
        !fresh.connack.session_present,
        "clean start: nothing resumed"
    );
    fresh.subscribe_inbox().await;
    fresh.client.disconnect().await.unwrap();
    let _ = fresh.next().await;
    let back = V5::connect(options(false, Some(60))).await.unwrap();
    assert!(back.connack.session_present, "kept after a clean start");
}

#[tokio::test]
async fn a_v5_client_without_an_id_is_assigned_one_it_can_resume() {
    let app = TestApp::spawn().await;
    let ann = app.login("+14155550101").await;
    let options = with_expiry(V5::options(&app, &ann, ""), false, Some(300));
    let mut first = V5::connect(options).await.unwrap();
    let assigned = first
        .connack
        .properties
        .as_ref()
        .and_then(|p| p.assigned_client_identifier.clone())
        .expect("an Assigned Client Identifier");
    assert!(!assigned.is_empty() && assigned.len() <= 128);
    first.subscribe_inbox().await;
    first.client.disconnect().await.unwrap();
    let _ = first.next().await;

    let options = with_expiry(V5::options(&app, &ann, &assigned), false, Some(300));
    let again = V5::connect(options).await.unwrap();
    assert!(again.connack.session_present);
}

/// A raw 5.0 connection: CONNECT made with rumqttc's v5 codec, the rest as bytes.
async fn raw_v5(app: &TestApp, user: &Tokens, client_id: &str, will: Option<LastWill>) -> RawMqtt {
    use rumqttc::v5::mqttbytes::v5::{Connect, Login};
    let connect = Connect {
        keep_alive: 0,
        client_id: client_id.to_owned(),
        clean_start: true,
        properties: None,
    };
    let login = Login::new(&user.user_id, &user.access);
    let mut out = BytesMut::new();
    Packet::Connect(connect, will, Some(login))
        .write(&mut out, None)
        .unwrap();
    let mut raw = RawMqtt::open(app.mqtt).await;
    raw.write(&out).await;
    let head = raw.read_bytes(4).await;
    assert_eq!(
        [head[0], head[2], head[3]],
        [0x20, 0x00, 0x00],
        "5.0 CONNACK success"
    );
    // Its properties.
    raw.read_bytes(usize::from(head[1]) - 2).await;
    raw
}

#[tokio::test]
async fn v5_packets_no_library_sends() {
    let app = TestApp::spawn().await;
    let ann = app.login("+14155550101").await;
    let bob = app.login("+14155550102").await;
    let mut bob4 = app.mqtt_inbox(&bob, "bob-phone").await;

    // DISCONNECT 0x04 "with will": a goodbye that still sends the will.
    let will =
        json!({"type": "send", "to": bob.user_id, "body": "my will", "client_msg_id": "w-1"});
    let will = LastWill::new(
        format!("users/{}/outbox", ann.user_id),
        will.to_string(),
        QoS::AtLeastOnce,
        false,
        None,
    );
    let mut raw = raw_v5(&app, &ann, "ann-raw", Some(will.clone())).await;
    raw.write(&[0xE0, 0x01, 0x04]).await;
    assert_eq!(bob4.event().await["body"], "my will");

    // A plain goodbye (`E0 00`, which rumqttc's own decoder refuses): no will.
    let mut raw = raw_v5(&app, &ann, "ann-raw", Some(will)).await;
    raw.write(&[0xE0, 0x00]).await;
    assert!(raw.read_to_end().await.is_empty(), "closed without a word");
    bob4.assert_no_event(Duration::from_millis(500)).await;

    // A packet only a server sends: DISCONNECT 0x82 "protocol error", exactly as 5.0 frames it.
    let mut raw = raw_v5(&app, &ann, "ann-raw", None).await;
    raw.write(&[0x20, 0x03, 0x00, 0x00, 0x00]).await;
    assert_eq!(raw.read_to_end().await, [0xE0, 0x02, 0x82, 0x00]);

    // A filter that is no MQTT filter (a library will not send one): SUBACK 0x8F.
    let mut raw = raw_v5(&app, &ann, "ann-raw", None).await;
    raw.write(&[
        0x82, 0x0B, 0x00, 0x05, 0x00, 0x00, 0x05, b'a', b'/', b'#', b'/', b'b', 0x01,
    ])
    .await;
    assert_eq!(
        raw.read_bytes(6).await,
        [0x90, 0x04, 0x00, 0x05, 0x00, 0x8F]
    );

    // A topic alias, when none is offered: 0x94.
    let mut raw = raw_v5(&app, &ann, "ann-raw", None).await;
    let topic = format!("users/{}/outbox", ann.user_id);
    let mut publish = vec![0x32];
    let body = b"{}";
    let remaining = 2 + topic.len() + 2 + 4 + body.len();
    publish.push(u8::try_from(remaining).unwrap());
    publish.extend_from_slice(&u16::try_from(topic.len()).unwrap().to_be_bytes());
    publish.extend_from_slice(topic.as_bytes());
    publish.extend_from_slice(&[0x00, 0x01, 0x03, 0x23, 0x00, 0x01]);
    publish.extend_from_slice(body);
    raw.write(&publish).await;
    assert_eq!(raw.read_to_end().await, [0xE0, 0x02, 0x94, 0x00]);

    // Bob, on 3.1.1 all along, was not disturbed.
    bob4.send(&ann.user_id, "still here", "b-1").await;
    assert_eq!(bob4.event().await["body"], "still here");
}

#[tokio::test]
async fn protocol_levels_other_than_4_and_5_get_unacceptable_protocol_version() {
    let app = TestApp::spawn().await;
    // MQTT 3.1 ("MQIsdp", level 3) and a level 6 that does not exist.
    for connect in [
        &b"\x10\x0C\x00\x06MQIsdp\x03\x02\x00\x3C\x00\x00"[..],
        &b"\x10\x0C\x00\x04MQTT\x06\x02\x00\x3C\x00\x00\x00\x00"[..],
    ] {
        let mut raw = RawMqtt::open(app.mqtt).await;
        let mut connect = connect.to_vec();
        connect[1] = u8::try_from(connect.len() - 2).unwrap();
        raw.write(&connect).await;
        assert_eq!(raw.read_to_end().await, [0x20, 0x02, 0x00, 0x01]);
    }
}

/// `program` speaking MQTT 5.0 to `app` as `user`.
fn mosquitto_v5(program: &[&str], app: &TestApp, user: &Tokens) -> Command {
    let mut command = mosquitto(program, app.mqtt, user);
    command.args(["-V", "mqttv5"]);
    command
}

#[tokio::test]
async fn mosquitto_sub_and_pub_speak_v5() {
    let app = TestApp::spawn().await;
    let ann = app.login("+14155550101").await;
    let bob = app.login("+14155550102").await;

    let sub = mosquitto_v5(&["mosquitto_sub"], &app, &bob)
        .args([
            "-i",
            "bob-phone",
            "-t",
            &format!("users/{}/inbox", bob.user_id),
        ])
        .args(["-C", "1", "-W", "10"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub is installed (scripts/install-test-deps)");
    // When mosquitto_sub's subscription is in is not visible from here: the send is retried
    // until the event shows, and its client_msg_id makes the retries one message.
    let command = json!({"type": "send", "to": bob.user_id, "body": "hello over 5.0", "client_msg_id": "m-1"});
    let publish = || {
        mosquitto_v5(&["mosquitto_pub"], &app, &ann)
            .args([
                "-i",
                "ann-phone",
                "-t",
                &format!("users/{}/outbox", ann.user_id),
            ])
            .args(["-m", &command.to_string()])
            .status()
            .unwrap()
    };
    let waiter = tokio::task::spawn_blocking(move || sub.wait_with_output().unwrap());
    for _ in 0..20 {
        assert!(
            publish().success(),
            "mosquitto_pub -V mqttv5 connects and publishes"
        );
        if waiter.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let output = waiter.await.unwrap();
    assert!(
        output.status.success(),
        "mosquitto_sub got one event in 10 s"
    );
    let event: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(event["type"], "message");
    assert_eq!(event["body"], "hello over 5.0");
    assert_eq!(
        event["seq"], 1,
        "retries of one client_msg_id are one message"
    );

    // A bad token: mosquitto_sub reports the 5.0 reason.
    let mut bad = bob.clone();
    bad.access = "not-a-token".into();
    let output = mosquitto_v5(&["mosquitto_sub"], &app, &bad)
        .args([
            "-i",
            "bob-phone",
            "-t",
            &format!("users/{}/inbox", bob.user_id),
        ])
        .args(["-C", "1", "-W", "5"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("Not authorized"), "{said}");
}
