//! Bounds on what a client can hold (issue "Hardening"): slow and silent sockets on HTTP and
//! MQTT are cut off on their deadlines, the caps answer at once, and honest clients keep working
//! meanwhile, even under a 1 024-descriptor limit.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::helpers::*;

/// Short deadlines, so that the tests wait seconds, not minutes.
fn quick() -> Options {
    Options::default()
        .env("TIDINGS_HTTP__HEADER_TIMEOUT_SECS", 1)
        .env("TIDINGS_HTTP__BODY_TIMEOUT_SECS", 1)
        .env("TIDINGS_MQTT__CONNECT_TIMEOUT_SECS", 1)
        .env("TIDINGS_MQTT__PACKET_TIMEOUT_SECS", 1)
}

/// `n` sockets that each send the first byte of a request and then nothing.
async fn slow_sockets(addr: std::net::SocketAddr, n: usize, first: &[u8]) -> Vec<TcpStream> {
    let mut sockets = Vec::with_capacity(n);
    for _ in 0..n {
        let mut socket = TcpStream::connect(addr).await.unwrap();
        socket.write_all(first).await.unwrap();
        sockets.push(socket);
    }
    sockets
}

#[tokio::test]
async fn a_slowloris_under_1024_descriptors_is_cut_off_and_locks_nobody_out() {
    raise_own_open_files();
    let app = TestApp::spawn_with(Options {
        open_files: Some(1024),
        ..quick()
    })
    .await;
    let ann = app.login("+14155550101").await;
    assert!(
        app.log()
            .contains("http.max_connections lowered to fit the open-files limit"),
        "{}",
        app.log()
    );

    // 1 000 sockets dribbling a request head: more than the server has descriptors to spare.
    let started = Instant::now();
    let mut slow = slow_sockets(app.http, 1000, b"G").await;

    // MQTT is not starved: its descriptors are its own.
    let mut mqtt = app.mqtt_inbox(&ann, "phone").await;
    mqtt.assert_no_event(Duration::from_millis(100)).await;

    // Past http.max_connections a socket is told 503 at once; the rest are closed once their
    // header timeout (1 s) is over. None stays.
    let mut busy = 0;
    for socket in &mut slow {
        let got = read_until_closed(socket, Duration::from_secs(10))
            .await
            .expect("every slow socket is closed by the server");
        if got.starts_with(b"HTTP/1.1 503") {
            busy += 1;
        }
    }
    assert!(busy > 0, "some sockets were over the cap");
    assert!(started.elapsed() < Duration::from_secs(10));

    // And HTTP serves again.
    let me = app.get("/v1/me", &ann.access).await;
    assert_eq!(me.status, 200, "{me:?}");
}

#[tokio::test]
async fn a_body_that_does_not_come_gets_408_and_the_connection_closes() {
    let app = TestApp::spawn_with(quick()).await;
    let mut socket = TcpStream::connect(app.http).await.unwrap();
    socket
        .write_all(
            b"POST /v1/auth/otp HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
              content-length: 100\r\n\r\n{\"pho",
        )
        .await
        .unwrap();
    let answer = read_until_closed(&mut socket, Duration::from_secs(5))
        .await
        .expect("closed after the body timeout");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"request_timeout\""), "{answer}");
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed_after_the_header_timeout() {
    let app = TestApp::spawn_with(quick()).await;
    let mut socket = TcpStream::connect(app.http).await.unwrap();
    socket
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let answer = read_until_closed(&mut socket, Duration::from_secs(5))
        .await
        .expect("closed once idle for the header timeout");
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    let idle = started.elapsed();
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_secs(3),
        "{idle:?}"
    );
}

#[tokio::test]
async fn mqtt_sockets_that_do_not_connect_are_dropped_and_the_pending_cap_answers_at_once() {
    let app = TestApp::spawn_with(quick().env("TIDINGS_MQTT__MAX_PENDING_CONNECTS", 5)).await;
    let ann = app.login("+14155550101").await;

    // Five silent sockets hold every pending place...
    let mut silent = slow_sockets(app.mqtt, 5, b"").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // ...so the next one is told CONNACK 3 "server unavailable" before it asks.
    let mut sixth = TcpStream::connect(app.mqtt).await.unwrap();
    let told = read_until_closed(&mut sixth, Duration::from_secs(1))
        .await
        .expect("turned away at once");
    assert_eq!(told, [0x20, 0x02, 0x00, 0x03]);

    // The silent ones are dropped after the connect timeout (1 s), without a word.
    for socket in &mut silent {
        let got = read_until_closed(socket, Duration::from_secs(5))
            .await
            .expect("dropped after mqtt.connect_timeout_secs");
        assert!(got.is_empty());
    }
    // Then there is room again.
    let (_mqtt, code, _) =
        RawMqtt::connect(app.mqtt, "phone", &ann.user_id, &ann.access, true).await;
    assert_eq!(code, rumqttc::mqttbytes::v4::ConnectReturnCode::Success);
}

#[tokio::test]
async fn a_connect_over_8_kib_is_refused_before_it_is_read() {
    let app = TestApp::spawn().await;
    let mut socket = TcpStream::connect(app.mqtt).await.unwrap();
    // The fixed header of a CONNECT announcing 9 000 bytes, and the start of it.
    socket
        .write_all(&[0x10, 0xA8, 0x46, 0x00, 0x04, b'M', b'Q', b'T', b'T'])
        .await
        .unwrap();
    let got = read_until_closed(&mut socket, Duration::from_secs(2))
        .await
        .expect("closed at once");
    assert!(got.is_empty(), "{got:?}");
}

#[tokio::test]
async fn half_a_packet_is_dropped_after_the_packet_timeout_even_with_keep_alive_off() {
    let app = TestApp::spawn_with(quick()).await;
    let ann = app.login("+14155550101").await;
    let bob = app.login("+14155550102").await;
    let mut watcher = app.mqtt_inbox(&ann, "watcher").await;
    // keep_alive = 0: without a packet deadline nothing would ever close this.
    let (mut raw, code, _) =
        RawMqtt::connect(app.mqtt, "half", &bob.user_id, &bob.access, true).await;
    assert_eq!(code, rumqttc::mqttbytes::v4::ConnectReturnCode::Success);
    // A PUBLISH announcing 200 000 bytes, of which 5 come.
    raw.write(&[0x32, 0xC0, 0x9A, 0x0C, 0x00, 0x05]).await;
    let started = Instant::now();
    assert!(raw.next().await.is_none(), "closed by the server");
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(5), "{waited:?}");

    // A connection that keeps sending whole packets for longer than that is not cut off.
    let bob_phone = app.mqtt_inbox(&bob, "phone").await;
    for i in 0..3 {
        bob_phone
            .send(&ann.user_id, &format!("still here {i}"), &format!("c-{i}"))
            .await;
        assert_eq!(watcher.event().await["body"], format!("still here {i}"));
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
}

/// `count` QoS 0 publishes of `payload` to `topic`, in one buffer.
fn qos0_publishes(topic: &str, payload: &[u8], count: usize) -> Vec<u8> {
    use rumqttc::mqttbytes::v4::Publish;
    let mut out = bytes::BytesMut::new();
    for _ in 0..count {
        Publish::new(topic, rumqttc::mqttbytes::QoS::AtMostOnce, payload.to_vec())
            .write(&mut out)
            .unwrap();
    }
    out.to_vec()
}

#[tokio::test]
async fn a_flood_of_refused_commands_costs_the_flooder_alone() {
    let app = TestApp::spawn_with(
        Options::default().env("TIDINGS_LIMITS__SENDS_PER_USER_PER_MINUTE", 60),
    )
    .await;
    let ann = app.login("+14155550101").await;
    let bob = app.login("+14155550102").await;
    let eve = app.login("+14155550166").await;
    let mut ann_mqtt = app.mqtt_inbox(&ann, "ann").await;
    let bob_mqtt = app.mqtt_inbox(&bob, "bob").await;
    let before = app.rss_kib();

    // Eve floods from three connections: malformed commands, and sends far past her limit.
    // One of them is subscribed to her inbox and never reads what it is told.
    let outbox = format!("users/{}/outbox", eve.user_id);
    // (To herself: the few within her limit are refused by the relay, the rest before it.)
    let send = serde_json::json!({"type": "send", "to": eve.user_id, "body": "spam", "client_msg_id": "s"});
    let mut floods = Vec::new();
    for (i, payload) in [
        b"{not json".to_vec(),
        send.to_string().into_bytes(),
        b"[]".to_vec(),
    ]
    .into_iter()
    .enumerate()
    {
        let (mut raw, code, _) = RawMqtt::connect(
            app.mqtt,
            &format!("eve-{i}"),
            &eve.user_id,
            &eve.access,
            true,
        )
        .await;
        assert_eq!(code, rumqttc::mqttbytes::v4::ConnectReturnCode::Success);
        if i == 2 {
            raw.subscribe(&format!("users/{}/inbox", eve.user_id)).await;
        }
        let chunk = qos0_publishes(&outbox, &payload, 2_000);
        floods.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(6);
            let mut sent = 0;
            while Instant::now() < deadline {
                // Held back while the server reads her no faster than it can (the connection
                // that never reads is held for good). A write cut short leaves half a packet,
                // and a next chunk would make the stream malformed, so it is her last.
                let left = deadline.saturating_duration_since(Instant::now());
                if tokio::time::timeout(left, raw.write(&chunk)).await.is_err() {
                    break;
                }
                sent += 2_000;
            }
            sent
        }));
    }

    // Meanwhile Bob and Ann chat: every message arrives (how fast is for the bench to say: this
    // test's own flood writers, and the other tests, share the cores with the server).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let started = Instant::now();
        bob_mqtt
            .send(&ann.user_id, &format!("hi {i}"), &format!("b-{i}"))
            .await;
        let event = ann_mqtt.event().await;
        assert_eq!(event["body"], format!("hi {i}"), "{event}");
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut flooded = 0;
    for flood in floods {
        flooded += flood.await.unwrap();
    }
    assert!(
        flooded >= 100_000,
        "the flood was a flood: {flooded} commands"
    );
    // Nothing of it was queued or kept: memory is about where it was.
    let grown_mib = (app.rss_kib() as i64 - before as i64) / 1024;
    assert!(
        grown_mib < 64,
        "the flood of {flooded} commands left {grown_mib} MiB"
    );
    // Nothing of it was stored: Ann got only Bob's messages, and no sends from Eve.
    ann_mqtt.assert_no_event(Duration::from_millis(300)).await;
    eprintln!(
        "flood: {flooded} commands, slowest honest message {slowest:?}, RSS {grown_mib:+} MiB"
    );
}

#[tokio::test]
async fn nothing_secret_reaches_the_log() {
    // The test app logs at debug for tidings: the most it ever says.
    let app = TestApp::spawn().await;
    let phone = "+14155550101";
    let code = app.phone_code(phone, phone).await;
    let answer = app.verify(phone, &code).await;
    assert_eq!(answer.status, 200);
    let access = answer.body["access_token"].as_str().unwrap().to_owned();
    let refresh = answer.body["refresh_token"].as_str().unwrap().to_owned();
    let bob = app.login("+14155550102").await;
    let ann = Tokens::from(&answer.body);
    let user_id = ann.user_id.clone();
    let mut ann_mqtt = app.mqtt_inbox(&ann, "phone").await;
    let body = "the secret plans for tuesday";
    ann_mqtt.send(&bob.user_id, body, "c-1").await;
    assert_eq!(ann_mqtt.event().await["body"], body);
    let refreshed = app
        .post("/v1/auth/refresh", json!({"refresh_token": refresh}))
        .await;
    assert_eq!(refreshed.status, 200);
    // A wrong password on MQTT, and a forged bearer on HTTP.
    let (_, code_5, _) =
        RawMqtt::connect(app.mqtt, "x", &user_id, "not-a-token-s3cr3t", true).await;
    assert_eq!(
        code_5,
        rumqttc::mqttbytes::v4::ConnectReturnCode::NotAuthorized
    );
    app.get("/v1/me", "forged-bearer-s3cr3t")
        .await
        .assert_error(401, "unauthorized");

    let log = app.log();
    // The code as a number of its own, past each line's timestamp (whose digits may hold it).
    let code_said = log.lines().any(|line| {
        let text = line.split_once(' ').map_or("", |(_, rest)| rest);
        text.match_indices(code.as_str()).any(|(at, _)| {
            let before = text[..at].chars().next_back();
            let after = text[at + code.len()..].chars().next();
            !before.is_some_and(|c| c.is_ascii_digit())
                && !after.is_some_and(|c| c.is_ascii_digit())
        })
    });
    assert!(!code_said, "the code {code} is in the log:\n{log}");
    for secret in [
        &access,
        &refresh,
        TWILIO_TOKEN,
        body,
        "not-a-token-s3cr3t",
        "forged-bearer-s3cr3t",
    ] {
        assert!(!log.contains(secret), "{secret:?} is in the log:\n{log}");
    }
}

#[tokio::test]
async fn a_half_packet_flood_holds_nothing_for_long_while_honest_clients_chat() {
    raise_own_open_files();
    let app = TestApp::spawn_with(quick()).await;
    let ann = app.login("+14155550101").await;
    let bob = app.login("+14155550102").await;
    let before = app.rss_kib();
    // 600 sockets that send the first 4 KiB of an 8 000-byte CONNECT, and no more.
    let mut half = vec![0x10, 0xC0, 0x3E];
    half.extend(std::iter::repeat_n(b'x', 4096));
    let mut flood = slow_sockets(app.mqtt, 600, &half).await;
    // Honest clients connect and chat meanwhile.
    let mut ann_mqtt = app.mqtt_inbox(&ann, "ann").await;
    let bob_mqtt = app.mqtt_inbox(&bob, "bob").await;
    bob_mqtt
        .send(&ann.user_id, "hello through the flood", "c-1")
        .await;
    assert_eq!(ann_mqtt.event().await["body"], "hello through the flood");
    // Every half packet is dropped on its deadline, and what it held is given back.
    for socket in &mut flood {
        let got = read_until_closed(socket, Duration::from_secs(10))
            .await
            .expect("dropped after mqtt.connect_timeout_secs");
        assert!(got.is_empty());
    }
    let grown_mib = (app.rss_kib() as i64 - before as i64) / 1024;
    assert!(grown_mib < 32, "600 half packets left {grown_mib} MiB");
}

#[tokio::test]
async fn a_subscribe_loop_is_cut_off_and_stalls_no_one() {
    use rumqttc::mqttbytes::v4::{Subscribe, Unsubscribe};
    let app = TestApp::spawn().await;
    let ann = app.login("+14155550101").await;
    let bob = app.login("+14155550102").await;
    let eve = app.login("+14155550166").await;
    let mut ann_mqtt = app.mqtt_inbox(&ann, "ann").await;
    let bob_mqtt = app.mqtt_inbox(&bob, "bob").await;
    // Eve subscribes and unsubscribes her own inbox in a loop, 4 000 packets a write: each is
    // work for the router that every user shares.
    let inbox = format!("users/{}/inbox", eve.user_id);
    let mut chunk = bytes::BytesMut::new();
    for i in 1..=2_000u16 {
        let mut subscribe = Subscribe::new(&inbox, rumqttc::mqttbytes::QoS::AtLeastOnce);
        subscribe.pkid = i;
        subscribe.write(&mut chunk).unwrap();
        let mut unsubscribe = Unsubscribe::new(&inbox);
        unsubscribe.pkid = i;
        unsubscribe.write(&mut chunk).unwrap();
    }
    let (mut eve_raw, _, _) =
        RawMqtt::connect(app.mqtt, "eve", &eve.user_id, &eve.access, true).await;
    let flood = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        for _ in 0..50 {
            let write = eve_raw.stream_mut().write_all(&chunk);
            match tokio::time::timeout(Duration::from_secs(2), write).await {
                Ok(Ok(())) => {}
                _ => return true, // closed (or no longer read) by the server
            }
        }
        false
    });
    // Bob's messages keep reaching Ann meanwhile (a stalled router would hold them).
    for i in 0..10 {
        bob_mqtt
            .send(&ann.user_id, &format!("hi {i}"), &format!("b-{i}"))
            .await;
        assert_eq!(ann_mqtt.event().await["body"], format!("hi {i}"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(flood.await.unwrap(), "the loop was cut off");
    assert!(app
        .log()
        .contains("too many SUBSCRIBE and UNSUBSCRIBE packets"));
}

#[tokio::test]
async fn read_commands_past_their_rate_get_rate_limited() {
    let app = TestApp::spawn().await;
    let ann = app.login("+14155550101").await;
    let bob = app.login("+14155550102").await;
    let mut ann_mqtt = app.mqtt_inbox(&ann, "ann").await;
    let bob_mqtt = app.mqtt_inbox(&bob, "bob").await;
    bob_mqtt.send(&ann.user_id, "hi", "b-1").await;
    assert_eq!(ann_mqtt.event().await["body"], "hi");
    // 300 read commands at once: the first 100 are taken (and move nothing after the first),
    // the rest are answered rate_limited by the connection, with the time to wait.
    let read = json!({"type": "read", "peer": bob.user_id, "seq": 1}).to_string();
    for _ in 0..300 {
        ann_mqtt.publish_outbox(read.clone()).await;
    }
    let mut limited = 0;
    while limited < 150 {
        let event = ann_mqtt.event().await;
        if event["code"] == "rate_limited" {
            assert_eq!(event["retry_after"], 1, "{event}");
            limited += 1;
        }
    }
    // Still a working connection, and the marker moved once: Bob was told.
    ann_mqtt.send(&bob.user_id, "still here", "a-1").await;
    let mut bob_mqtt = bob_mqtt;
    let mut told = Vec::new();
    loop {
        let event = bob_mqtt.event().await;
        if event["type"] == "message" && event["body"] == "still here" {
            break;
        }
        told.push(event);
    }
    assert_eq!(
        told.iter().filter(|e| e["type"] == "read").count(),
        1,
        "{told:?}"
    );
}
