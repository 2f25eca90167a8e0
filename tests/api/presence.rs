//! Presence through the real app (in process, to hold its [`Presence`] handle): who is
//! subscribed, and which `message` events a device of the recipient acknowledged with PUBACK.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use tidings::config::Settings;
use tidings::domain::{MessageId, UserId};
use tidings::gateway::Presence;
use tidings::startup::Application;

use crate::helpers::{FakeTwilio, TWILIO_FROM, TWILIO_SID, TWILIO_TOKEN};

struct InProcess {
    http: std::net::SocketAddr,
    mqtt: std::net::SocketAddr,
    presence: Presence,
    twilio: FakeTwilio,
    _dir: tempfile::TempDir,
}

async fn start() -> InProcess {
    let dir = tempfile::tempdir().unwrap();
    let twilio = FakeTwilio::start().await;
    let env = [
        ("HTTP__LISTEN", "127.0.0.1:0".to_owned()),
        ("MQTT__LISTEN", "127.0.0.1:0".to_owned()),
        (
            "STORAGE__PATH",
            dir.path().join("data").display().to_string(),
        ),
        ("SMS__PROVIDER", "twilio".to_owned()),
        ("SMS__TWILIO__BASE_URL", format!("http://{}", twilio.addr)),
        ("SMS__TWILIO__ACCOUNT_SID", TWILIO_SID.to_owned()),
        ("SMS__TWILIO__AUTH_TOKEN", TWILIO_TOKEN.to_owned()),
        ("SMS__TWILIO__FROM", TWILIO_FROM.to_owned()),
    ]
    .map(|(k, v)| (format!("TIDINGS_{k}"), v));
    let settings = Settings::load_with_env(&dir.path().join("none.toml"), env).unwrap();
    let app = Application::build(settings).await.unwrap();
    let running = InProcess {
        http: app.http_addr(),
        mqtt: app.mqtt_addr(),
        presence: app.presence(),
        twilio,
        _dir: dir,
    };
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    running
}

impl InProcess {
    /// Logs `phone` in; its user id and access token.
    async fn login(&self, phone: &str) -> (String, String) {
        let http = reqwest::Client::new();
        let base = format!("http://{}", self.http);
        http.post(format!("{base}/v1/auth/otp"))
            .json(&json!({ "phone": phone }))
            .send()
            .await
            .unwrap();
        let code = self.twilio.code(phone, 1).await;
        let tokens: Value = http
            .post(format!("{base}/v1/auth/verify"))
            .json(&json!({ "phone": phone, "code": code }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (
            tokens["user_id"].as_str().unwrap().to_owned(),
            tokens["access_token"].as_str().unwrap().to_owned(),
        )
    }

    /// A connection of `user`, acknowledging only what the test says, subscribed to its inbox.
    async fn device(
        &self,
        (user, token): &(String, String),
        id: &str,
    ) -> (
        AsyncClient,
        tokio::sync::mpsc::UnboundedReceiver<rumqttc::Publish>,
    ) {
        let mut options = MqttOptions::new(id, "127.0.0.1", self.mqtt.port());
        options.set_credentials(user, token);
        options.set_manual_acks(true);
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        client
            .subscribe(format!("users/{user}/inbox"), QoS::AtLeastOnce)
            .await
            .unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut subscribed_tx = Some(subscribed_tx);
            while let Ok(event) = eventloop.poll().await {
                match event {
                    Event::Incoming(Packet::SubAck(_)) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Event::Incoming(Packet::Publish(publish)) => {
                        let forwarded = tx.send(publish);
                        if forwarded.is_err() {
                            break;
                        }
                    }
                    _ => {}
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), subscribed)
            .await
            .unwrap()
            .unwrap();
        (client, rx)
    }
}

async fn next_message(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<rumqttc::Publish>,
) -> (rumqttc::Publish, MessageId) {
    let publish = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("an event within 10 s")
        .unwrap();
    let event: Value = serde_json::from_slice(&publish.payload).unwrap();
    assert_eq!(event["type"], "message");
    let id = MessageId::parse(event["id"].as_str().unwrap()).unwrap();
    (publish, id)
}

/// Waits until `check` holds, for up to 5 s.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn presence_knows_who_is_subscribed_and_which_events_they_acknowledged() {
    let app = start().await;
    let ann = app.login("+14155550101").await;
    let bob = app.login("+14155550102").await;
    let ann_id = UserId::parse(&ann.0).unwrap();
    let bob_id = UserId::parse(&bob.0).unwrap();
    assert!(!app.presence.is_subscribed(&ann_id));

    let (ann_phone, mut ann_events) = app.device(&ann, "ann-phone").await;
    let (bob_phone, mut bob_events) = app.device(&bob, "bob-phone").await;
    assert!(app.presence.is_subscribed(&ann_id));

    let send = json!({"type": "send", "to": ann.0, "body": "hi", "client_msg_id": "b-1"});
    bob_phone
        .publish(
            format!("users/{}/outbox", bob.0),
            QoS::AtLeastOnce,
            false,
            send.to_string(),
        )
        .await
        .unwrap();
    let (to_ann, id) = next_message(&mut ann_events).await;
    let (to_bob, echo_id) = next_message(&mut bob_events).await;
    assert_eq!(id, echo_id);
    // Forwarding watches a message before its event goes out; here, before the PUBACK.
    app.presence
        .watch(&ann_id, id.clone(), Duration::from_secs(60));
    app.presence
        .watch(&bob_id, id.clone(), Duration::from_secs(60));
    // Bob's device acknowledging his own copy is no delivery to Ann.
    bob_phone.ack(&to_bob).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!app.presence.acknowledged(&ann_id, &id));
    assert!(!app.presence.acknowledged(&bob_id, &id));
    ann_phone.ack(&to_ann).await.unwrap();
    eventually("Ann's PUBACK is seen", || {
        app.presence.acknowledged(&ann_id, &id)
    })
    .await;
    app.presence.forget(&ann_id, &id);
    assert!(!app.presence.acknowledged(&ann_id, &id));

    // Unsubscribed, then gone: not present.
    ann_phone
        .unsubscribe(format!("users/{}/inbox", ann.0))
        .await
        .unwrap();
    eventually("Ann unsubscribed", || !app.presence.is_subscribed(&ann_id)).await;
    ann_phone
        .subscribe(format!("users/{}/inbox", ann.0), QoS::AtLeastOnce)
        .await
        .unwrap();
    eventually("Ann subscribed again", || {
        app.presence.is_subscribed(&ann_id)
    })
    .await;
    ann_phone.disconnect().await.unwrap();
    eventually("Ann gone", || !app.presence.is_subscribed(&ann_id)).await;
    assert!(app.presence.is_subscribed(&bob_id));
}
