//! MQTT over WebSocket (`mqtt.ws_listen`, path `/mqtt`): the same auth and ACL as TCP.

use rumqttc::{ConnectReturnCode, MqttOptions, QoS, SubscribeReasonCode, Transport};

use crate::helpers::*;

async fn ws_connect(
    app: &TestApp,
    user: &str,
    token: &str,
) -> Result<Mqtt, Option<ConnectReturnCode>> {
    let mut options = MqttOptions::new(
        "ann-browser",
        format!("ws://{}/mqtt", app.ws),
        app.ws.port(),
    );
    options.set_transport(Transport::Ws);
    Mqtt::connect_with(options, user, token).await
}

#[tokio::test]
async fn a_websocket_client_sends_and_receives_like_a_tcp_one() {
    let app = TestApp::spawn().await;
    let ann = app.login("+14155550101").await;
    let bob = app.login("+14155550102").await;
    let mut bob_tcp = app.mqtt_inbox(&bob, "bob-tcp").await;

    let mut browser = ws_connect(&app, &ann.user_id, &ann.access)
        .await
        .expect("WebSocket connect");
    let inbox = format!("users/{}/inbox", ann.user_id);
    assert_eq!(
        browser.subscribe(&inbox).await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    assert_eq!(
        browser.subscribe("#").await,
        vec![SubscribeReasonCode::Failure]
    );
    assert_eq!(
        browser
            .subscribe(&format!("users/{}/inbox", bob.user_id))
            .await,
        vec![SubscribeReasonCode::Failure]
    );

    browser.send(&bob.user_id, "from a browser", "w-1").await;
    let at_bob = bob_tcp.event().await;
    assert_eq!(at_bob["body"], "from a browser");
    assert_eq!(
        browser.event().await,
        at_bob,
        "the echo comes back over the WebSocket"
    );

    bob_tcp.send(&ann.user_id, "hello browser", "b-1").await;
    assert_eq!(browser.event().await["body"], "hello browser");

    // A forbidden publish closes the WebSocket connection too.
    browser
        .client
        .publish(
            format!("users/{}/inbox", bob.user_id),
            QoS::AtLeastOnce,
            false,
            "x",
        )
        .await
        .unwrap();
    browser.assert_closed().await;
}

#[tokio::test]
async fn a_websocket_client_with_a_bad_token_gets_connack_not_authorized() {
    let app = TestApp::spawn().await;
    let ann = app.login("+14155550101").await;
    let refused = ws_connect(&app, &ann.user_id, "forged").await;
    assert!(matches!(
        refused,
        Err(Some(ConnectReturnCode::NotAuthorized))
    ));
}

#[tokio::test]
async fn only_the_mqtt_path_upgrades() {
    let app = TestApp::spawn().await;
    let upgrade = |path: &str| {
        reqwest::Client::new()
            .get(format!("http://{}{path}", app.ws))
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("sec-websocket-protocol", "mqtt")
            .send()
    };
    assert_eq!(upgrade("/elsewhere").await.unwrap().status(), 404);
    let accepted = upgrade("/mqtt").await.unwrap();
    assert_eq!(accepted.status(), 101);
    assert_eq!(accepted.headers()["sec-websocket-protocol"], "mqtt");
}
