//! Forwarding by SMS (the fake Twilio gateway) and email (a real SMTP server) to recipients who
//! did not get a message in time (contract §4).

use std::time::Duration;

use serde_json::json;

use crate::helpers::{messages_in, Mqtt, Options, SmtpServer, TestApp, Tokens};

const ANN: &str = "+14155550101";
const BOB: &str = "+14155550102";

fn forwarded_sms(app: &TestApp, to: &str) -> Vec<String> {
    app.forwarded_sms(to)
}

/// Waits until `n` SMS were forwarded to `to` and returns them.
async fn wait_for_sms(app: &TestApp, to: &str, n: usize) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got = forwarded_sms(app, to);
        if got.len() >= n {
            return got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{n} SMS to {to} expected; got {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Ann (display name "Ann") and Bob (SMS forwarding on), logged in, and Ann's device
/// (subscribed) that sends to Bob.
async fn ann_and_bob(app: &TestApp) -> (Tokens, Tokens, Mqtt) {
    let ann = app.login(ANN).await;
    let bob = app.login(BOB).await;
    let named = app
        .patch_me(&ann.access, json!({"display_name": "Ann"}))
        .await;
    assert_eq!(named.status, 200);
    let on = app
        .patch_me(&bob.access, json!({"forward_sms": true}))
        .await;
    assert_eq!(on.body["forward_sms"], true);
    let device = ann_phone(app, &ann).await;
    (ann, bob, device)
}

/// Ann's device, subscribed; `send` waits for the message's event (stored).
async fn ann_phone(app: &TestApp, ann: &Tokens) -> Mqtt {
    app.mqtt_inbox(ann, "ann-phone").await
}

async fn send(ann: &mut Mqtt, to: &str, body: &str, id: &str) -> u64 {
    ann.send(to, body, id).await;
    loop {
        let event = ann.event().await;
        if event["type"] == "message" {
            assert_eq!(event["client_msg_id"], id, "{event}");
            return event["seq"].as_u64().unwrap();
        }
    }
}

/// Sends "m{i}" with client_msg_id "a-{i}" for each `i`, each stored before the next.
async fn send_numbered(ann: &mut Mqtt, to: &str, numbers: std::ops::RangeInclusive<u32>) {
    for i in numbers {
        send(ann, to, &format!("m{i}"), &format!("a-{i}")).await;
    }
}

/// Disconnects a device and waits until the server has let go of it.
async fn leave(device: Mqtt) {
    device.client.disconnect().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn an_offline_recipient_gets_an_sms_and_an_online_one_gets_nothing() {
    let app = TestApp::spawn().await;
    let (_, bob, mut ann_mqtt) = ann_and_bob(&app).await;

    // Bob online: his device gets (and acknowledges) the event; nothing is forwarded.
    let mut bob_phone = app.mqtt_inbox(&bob, "bob-phone").await;
    send(&mut ann_mqtt, &bob.user_id, "while you are here", "a-1").await;
    assert_eq!(bob_phone.event().await["body"], "while you are here");
    leave(bob_phone).await;

    // Bob away: an SMS naming Ann, with the body.
    send(&mut ann_mqtt, &bob.user_id, "call me back", "a-2").await;
    let sms = wait_for_sms(&app, BOB, 1).await;
    assert_eq!(sms, vec!["Ann: call me back".to_owned()]);
    let request = app.twilio.requests().pop().unwrap();
    assert_eq!(request.form["From"], crate::helpers::TWILIO_FROM);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        forwarded_sms(&app, BOB).len(),
        1,
        "one SMS, the first stays unsent"
    );
}

#[tokio::test]
async fn sms_within_the_window_are_folded_and_the_daily_cap_holds() {
    let options = Options::default()
        .env("TIDINGS_FORWARDING__SMS_MIN_INTERVAL_SECS", 2)
        .env("TIDINGS_FORWARDING__SMS_PER_RECIPIENT_PER_DAY", 2);
    let app = TestApp::spawn_with(options).await;
    let (_, bob, mut ann_mqtt) = ann_and_bob(&app).await;

    send(&mut ann_mqtt, &bob.user_id, "one", "a-1").await;
    assert_eq!(wait_for_sms(&app, BOB, 1).await, vec!["Ann: one"]);
    send(&mut ann_mqtt, &bob.user_id, "two", "a-2").await;
    send(&mut ann_mqtt, &bob.user_id, "three", "a-3").await;
    // Folded into one at the window's end, not one each.
    let sms = wait_for_sms(&app, BOB, 2).await;
    assert_eq!(sms[1], "2 new messages from Ann: three");

    // The cap (2 a day) is reached: nothing more by SMS today.
    send(&mut ann_mqtt, &bob.user_id, "four", "a-4").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(forwarded_sms(&app, BOB).len(), 2);
    assert!(app.log().contains("SMS cap for today is reached"));
}

#[tokio::test]
async fn a_failing_provider_is_retried_and_a_refusal_is_given_up() {
    let app = TestApp::spawn().await;
    let (_, bob, mut ann_mqtt) = ann_and_bob(&app).await;

    app.twilio.answer(&[500, 429]);
    send(&mut ann_mqtt, &bob.user_id, "are you there", "a-1").await;
    // Two failures, then accepted: three requests with the same text, one SMS delivered.
    let sms = wait_for_sms(&app, BOB, 3).await;
    assert!(sms.iter().all(|s| s == "Ann: are you there"), "{sms:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(forwarded_sms(&app, BOB).len(), 3, "no retry after success");

    // A 4xx other than 429 is permanent: one try, no retry. (Another sender: Ann's next SMS
    // would wait for her 60 s window.)
    let cat = app.login("+14155550103").await;
    let mut cat_mqtt = app.mqtt_inbox(&cat, "cat-phone").await;
    app.twilio.answer(&[400]);
    send(&mut cat_mqtt, &bob.user_id, "hello from cat", "c-1").await;
    wait_for_sms(&app, BOB, 4).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(forwarded_sms(&app, BOB).len(), 4);
    assert!(app.log().contains("provider refused; not retried"));
}

#[tokio::test]
async fn a_provider_that_hangs_times_out_and_is_retried_while_chat_goes_on() {
    let app = TestApp::spawn().await;
    let (_, bob, mut ann_mqtt) = ann_and_bob(&app).await;
    app.twilio.answer(&[crate::helpers::HANG]);
    let started = tokio::time::Instant::now();
    send(&mut ann_mqtt, &bob.user_id, "first", "a-1").await;
    // While the gateway hangs, sends are stored and answered as usual.
    send_numbered(&mut ann_mqtt, &bob.user_id, 2..=5).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    // The hung request times out (10 s); the retry goes through, with what came meanwhile.
    let sms = wait_for_sms(&app, BOB, 2).await;
    assert_eq!(sms, vec!["Ann: first", "5 new messages from Ann: m5"]);
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "{:?}",
        started.elapsed()
    );
    assert!(app.log().contains("provider failed; will retry"));
}

#[tokio::test]
async fn with_a_delay_an_acknowledged_or_read_message_is_not_forwarded() {
    let options = Options::default().env("TIDINGS_FORWARDING__DELAY_SECS", 1);
    let app = TestApp::spawn_with(options).await;
    let (ann, bob, mut ann_mqtt) = ann_and_bob(&app).await;

    // Acknowledged by Bob's device within the delay.
    let mut bob_phone = app.mqtt_inbox(&bob, "bob-phone").await;
    send(&mut ann_mqtt, &bob.user_id, "acknowledged", "a-1").await;
    bob_phone.event().await;
    leave(bob_phone).await;

    // Not delivered, but Bob reads it (from a device not subscribed to its inbox).
    let seq = send(&mut ann_mqtt, &bob.user_id, "read elsewhere", "a-2").await;
    let bob_laptop = Mqtt::connect(app.mqtt, &bob.user_id, &bob.access, "bob-laptop", true)
        .await
        .unwrap();
    let read = json!({"type": "read", "peer": ann.user_id, "seq": seq});
    bob_laptop.publish_outbox(read.to_string()).await;

    // Switched off while it waits: not forwarded either.
    tokio::time::sleep(Duration::from_millis(200)).await;
    send(&mut ann_mqtt, &bob.user_id, "switched off", "a-3").await;
    let off = app
        .patch_me(&bob.access, json!({"forward_sms": false}))
        .await;
    assert_eq!(off.body["forward_sms"], false);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        forwarded_sms(&app, BOB).is_empty(),
        "{:?}",
        forwarded_sms(&app, BOB)
    );

    // Neither: forwarded once the delay is over.
    app.patch_me(&bob.access, json!({"forward_sms": true}))
        .await;
    send(&mut ann_mqtt, &bob.user_id, "nobody got this", "a-4").await;
    assert_eq!(
        wait_for_sms(&app, BOB, 1).await,
        vec!["Ann: nobody got this"]
    );
}

#[tokio::test]
async fn pending_jobs_survive_kill_9_and_go_out_once() {
    let options = Options::default()
        .env("TIDINGS_FORWARDING__DELAY_SECS", 2)
        .env("TIDINGS_FORWARDING__SMS_MIN_INTERVAL_SECS", 2);
    let mut app = TestApp::spawn_with(options).await;
    let (_, bob, mut ann_mqtt) = ann_and_bob(&app).await;
    send_numbered(&mut ann_mqtt, &bob.user_id, 1..=3).await;
    drop(ann_mqtt);
    // Acknowledged (events out, so stored), not yet due: killed.
    app.kill9();
    assert!(forwarded_sms(&app, BOB).is_empty());
    app.start();
    // The first goes when it is due; what is due within the window folds into one at its end.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while forwarded_sms(&app, BOB)
        .iter()
        .map(|s| messages_in(s))
        .sum::<usize>()
        < 3
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            forwarded_sms(&app, BOB)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let sms = forwarded_sms(&app, BOB);
    assert_eq!(
        sms.iter().map(|s| messages_in(s)).sum::<usize>(),
        3,
        "no duplicate: {sms:?}"
    );
    assert!(sms[0].starts_with("Ann: m1") || sms[0] == "3 new messages from Ann: m3");
    assert!(sms.last().unwrap().ends_with("m3"), "{sms:?}");
}

#[tokio::test]
async fn a_provider_down_for_the_whole_test_blocks_no_chat() {
    let app = TestApp::spawn().await;
    let (_, bob, mut ann_mqtt) = ann_and_bob(&app).await;
    app.twilio.answer(&[503; 10_000]);
    let started = tokio::time::Instant::now();
    // 100: the send limit is 120 a minute.
    let sending = ann_mqtt.stream_sends(&bob.user_id, 100, "a-");
    for _ in 0..100 {
        assert_eq!(ann_mqtt.event().await["type"], "message");
    }
    sending.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "100 sends took {:?}",
        started.elapsed()
    );
    // The HTTP API answers too, and forwarding keeps retrying in the background.
    let me = app.get("/v1/me", &bob.access).await;
    assert_eq!(me.status, 200);
    wait_for_sms(&app, BOB, 2).await;
    assert!(app.log().contains("provider failed; will retry"));
}

/// Logs in by email through the SMTP server and returns the tokens.
async fn email_login(app: &TestApp, smtp: &SmtpServer, email: &str) -> Tokens {
    let answer = app.post("/v1/auth/otp", json!({"email": email})).await;
    assert_eq!(answer.status, 202, "{answer:?}");
    let mail = smtp.message_to(email).await;
    let code = crate::helpers::extract_code(mail.split("\n\n").nth(1).unwrap_or(&mail));
    let answer = app
        .post("/v1/auth/verify", json!({"email": email, "code": code}))
        .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    Tokens::from(&answer.body)
}

/// The value of `name` in a raw email's header block (folded lines joined).
fn header(mail: &str, name: &str) -> Option<String> {
    let head = mail.split("\n\n").next().unwrap_or(mail);
    let unfolded = head
        .replace("\r\n", "\n")
        .replace("\n ", " ")
        .replace("\n\t", " ");
    unfolded.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name)
            .then(|| value.trim().to_owned())
    })
}

/// A raw email's text, quoted-printable soft breaks and `=3D` undone.
fn text_of(mail: &str) -> String {
    let body = mail.split_once("\n\n").map_or(mail, |(_, body)| body);
    body.replace("=\n", "").replace("=3D", "=")
}

#[tokio::test]
async fn an_email_digest_with_a_working_one_click_unsubscribe() {
    let dir = tempfile::tempdir().unwrap();
    let smtp = SmtpServer::start(dir.path());
    let options = Options {
        smtp_port: Some(smtp.port),
        ..Options::default()
    }
    .env("TIDINGS_FORWARDING__EMAIL_MIN_INTERVAL_SECS", 2);
    let app = TestApp::spawn_with(options).await;
    let ann = app.login(ANN).await;
    app.patch_me(&ann.access, json!({"display_name": "Ann"}))
        .await;
    let bob = email_login(&app, &smtp, "bob@example.com").await;
    let on = app
        .patch_me(&bob.access, json!({"forward_email": true}))
        .await;
    assert_eq!(on.body["forward_email"], true);

    let mut ann_mqtt = ann_phone(&app, &ann).await;
    send(&mut ann_mqtt, &bob.user_id, "lunch tomorrow?", "a-1").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mail = loop {
        let forwarded: Vec<String> = smtp
            .messages()
            .into_iter()
            .filter(|m| m.contains("lunch tomorrow?"))
            .collect();
        if let Some(mail) = forwarded.first() {
            break mail.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "no forwarded email");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let h = |name| header(&mail, name).unwrap_or_else(|| panic!("no {name} in {mail}"));
    assert_eq!(h("Subject"), "New message from Ann");
    assert_eq!(h("To"), "bob@example.com");
    assert!(h("From").contains("codes@tidings.test"));
    assert!(h("Date").contains("20"), "{}", h("Date"));
    assert!(h("Message-ID").starts_with('<'));
    assert_eq!(h("List-Unsubscribe-Post"), "List-Unsubscribe=One-Click");
    let link = h("List-Unsubscribe");
    let url = link.trim_start_matches('<').trim_end_matches('>');
    assert!(
        url.starts_with(&format!(
            "http://{}/v1/forwarding/unsubscribe?token=",
            app.http
        )),
        "{url}"
    );
    let text = text_of(&mail);
    assert!(text.contains(url), "the same link in the text: {text}");
    assert!(text.contains("lunch tomorrow?"), "{text}");

    // Within the window, two senders: one digest at its end, grouped by sender.
    let cat = app.login("+14155550103").await;
    app.patch_me(&cat.access, json!({"display_name": "Cat"}))
        .await;
    let mut cat_mqtt = app.mqtt_inbox(&cat, "cat-phone").await;
    send(&mut ann_mqtt, &bob.user_id, "or dinner", "a-2").await;
    send(&mut cat_mqtt, &bob.user_id, "hi Bob", "c-1").await;
    send(&mut ann_mqtt, &bob.user_id, "at 8", "a-3").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let digest = loop {
        if let Some(mail) = smtp.messages().into_iter().find(|m| m.contains("hi Bob")) {
            break mail;
        }
        assert!(tokio::time::Instant::now() < deadline, "no digest");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let subject = header(&digest, "Subject").unwrap();
    assert!(
        subject == "3 new messages from Ann, Cat" || subject == "3 new messages from Cat, Ann",
        "{subject}"
    );
    let text = text_of(&digest);
    let (ann_at, dinner, eight, cat_at) = (
        text.find("Ann:").unwrap(),
        text.find("or dinner").unwrap(),
        text.find("at 8").unwrap(),
        text.find("Cat:").unwrap(),
    );
    assert!(ann_at < dinner && dinner < eight, "{text}");
    assert!(
        !(ann_at < cat_at && cat_at < eight),
        "grouped by sender: {text}"
    );
    let forwarded = |m: &String| m.contains("Stop these emails");
    assert_eq!(smtp.messages().iter().filter(|m| forwarded(m)).count(), 2);

    // A forged token changes nothing; the link (one POST, as a mail client sends) does.
    let forged = app
        .client
        .post(app.url("/v1/forwarding/unsubscribe?token=AAAA"))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 400);
    let page = app.client.get(url).send().await.unwrap();
    assert_eq!(page.status(), 200, "opening the link only shows a button");
    assert_eq!(
        app.get("/v1/me", &bob.access).await.body["forward_email"],
        true
    );
    let clicked = app
        .client
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(clicked.status(), 200);
    assert_eq!(
        app.get("/v1/me", &bob.access).await.body["forward_email"],
        false
    );

    // Nothing more by email.
    send(&mut ann_mqtt, &bob.user_id, "still there?", "a-4").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!smtp.messages().iter().any(|m| m.contains("still there?")));
}
