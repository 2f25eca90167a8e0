//! Nothing acknowledged is lost, nothing is doubled: `kill -9` while a client streams sends.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;

/// The whole conversation, page by page from the start.
async fn full_history(app: &TestApp, reader: &Tokens, peer: &str) -> Vec<Value> {
    let mut messages: Vec<Value> = Vec::new();
    let mut after = 0;
    loop {
        let path = format!("/v1/conversations/{peer}/messages?after={after}&limit=200");
        let page = app.get(&path, &reader.access).await;
        assert_eq!(page.status, 200, "{page:?}");
        let batch = page.body["messages"].as_array().unwrap().clone();
        if let Some(last) = batch.last() {
            after = last["seq"].as_u64().unwrap();
        }
        messages.extend(batch);
        if page.body["has_more"] == false {
            return messages;
        }
    }
}

/// Every seq from 1 with no gap, and every client_msg_id once.
fn assert_gapless_and_unique(history: &[Value]) -> HashMap<String, Value> {
    let mut by_id = HashMap::new();
    for (i, message) in history.iter().enumerate() {
        assert_eq!(
            message["seq"].as_u64(),
            Some(i as u64 + 1),
            "seq gap at position {i}"
        );
        let id = message["client_msg_id"].as_str().unwrap().to_owned();
        assert!(
            by_id.insert(id.clone(), message.clone()).is_none(),
            "{id} stored twice"
        );
    }
    by_id
}

#[tokio::test]
async fn kill_9_while_streaming_loses_no_acknowledged_message_and_doubles_none() {
    const SENDS: usize = 1500;
    let mut app =
        TestApp::spawn_with(Options::default().env("TIDINGS_LIMITS__SENDS_PER_USER_PER_MINUTE", 0))
            .await;
    let ann = app.login("+14155550101").await;
    let bob = app.login("+14155550102").await;
    let mut acknowledged: HashMap<String, Value> = HashMap::new();

    for round in 0..3 {
        let mut mqtt = app.mqtt_inbox(&ann, "ann-phone").await;
        let streamer = mqtt.stream_sends(&bob.user_id, SENDS, &format!("r{round}-"));
        // Let some sends be acknowledged, then pull the plug mid-stream.
        let mut this_round = Vec::new();
        while this_round.len() < 100 {
            this_round.push(mqtt.event().await);
        }
        app.kill9();
        this_round.extend(mqtt.events_until_closed().await);
        streamer.abort();
        assert!(
            this_round.len() < SENDS,
            "the kill came too late to interrupt the stream"
        );
        eprintln!(
            "round {round}: {} sends acknowledged before the kill",
            this_round.len()
        );
        for event in this_round {
            assert_eq!(event["type"], "message");
            acknowledged.insert(event["client_msg_id"].as_str().unwrap().to_owned(), event);
        }

        // Restart on the same data: every acknowledged message is there, once, unchanged.
        app.start();
        let history = full_history(&app, &bob, &ann.user_id).await;
        let stored = assert_gapless_and_unique(&history);
        for (id, event) in &acknowledged {
            assert_eq!(
                stored.get(id),
                Some(event),
                "acknowledged {id} is not in history as acknowledged"
            );
        }

        // The app retries everything of the round: what was stored answers its original
        // event, the rest is stored now, and still nothing is doubled.
        let mut mqtt = app.mqtt_inbox(&ann, "ann-phone").await;
        // A retry is the same send: the same body under the same id.
        let retries: HashMap<String, String> = (0..SENDS)
            .step_by(7)
            .map(|i| (format!("r{round}-{i}"), format!("message {i}")))
            .collect();
        for (id, body) in &retries {
            mqtt.send(&bob.user_id, body, id).await;
        }
        for _ in 0..retries.len() {
            let event = mqtt.event().await;
            let id = event["client_msg_id"].as_str().unwrap().to_owned();
            if let Some(original) = stored.get(&id) {
                assert_eq!(
                    &event, original,
                    "a retry of a stored message answers the original"
                );
            }
            acknowledged.insert(id, event);
        }
        let history = full_history(&app, &bob, &ann.user_id).await;
        let stored = assert_gapless_and_unique(&history);
        assert!(retries.keys().all(|id| stored.contains_key(id)));
    }
}

/// The same under the bench's kind of load: many senders at once (so batches hold many
/// conversations) to receivers who are offline and forward by SMS (so forwarding jobs are
/// pending and being sent), `kill -9` at a random moment, twice. Every acknowledged message is
/// in its conversation's history once and unchanged, no conversation has a seq gap, sends go on
/// after the restart, and forwarding resumes without sending anything twice.
#[tokio::test]
async fn kill_9_at_a_random_moment_under_many_senders_loses_nothing_and_doubles_nothing() {
    use rand::Rng;
    const PAIRS: usize = 8;
    const SENDS: usize = 2000;
    let options = Options::default()
        .env("TIDINGS_LIMITS__SENDS_PER_USER_PER_MINUTE", 0)
        .env("TIDINGS_FORWARDING__SMS_MIN_INTERVAL_SECS", 1)
        .env("TIDINGS_FORWARDING__SMS_PER_RECIPIENT_PER_DAY", 0);
    let mut app = TestApp::spawn_with(options).await;
    let mut pairs = Vec::new();
    for i in 0..PAIRS {
        let sender = app.login(&format!("+141555502{i:02}")).await;
        let receiver = app.login(&format!("+141555503{i:02}")).await;
        let on = app
            .patch_me(&receiver.access, serde_json::json!({"forward_sms": true}))
            .await;
        assert_eq!(on.status, 200);
        pairs.push((sender, receiver));
    }
    let mut acknowledged: Vec<HashMap<String, Value>> = vec![HashMap::new(); PAIRS];

    for round in 0..2 {
        let mut streams = Vec::new();
        for (i, (sender, receiver)) in pairs.iter().enumerate() {
            let mqtt = app.mqtt_inbox(sender, &format!("sender-{i}")).await;
            let streamer = mqtt.stream_sends(&receiver.user_id, SENDS, &format!("r{round}-"));
            streams.push((mqtt, streamer));
        }
        let moment = rand::rng().random_range(50..400);
        tokio::time::sleep(Duration::from_millis(moment)).await;
        app.kill9();
        let mut total = 0;
        for (i, (mut mqtt, streamer)) in streams.into_iter().enumerate() {
            let events = mqtt.events_until_closed().await;
            streamer.abort();
            total += events.len();
            for event in events {
                assert_eq!(event["type"], "message", "{event}");
                let id = event["client_msg_id"].as_str().unwrap().to_owned();
                acknowledged[i].insert(id, event);
            }
        }
        eprintln!("round {round}: killed after {moment} ms, {total} sends acknowledged");
        assert!(total < PAIRS * SENDS, "the kill came too late");

        app.start();
        for (i, (sender, receiver)) in pairs.iter().enumerate() {
            let history = full_history(&app, receiver, &sender.user_id).await;
            let stored = assert_gapless_and_unique(&history);
            for (id, event) in &acknowledged[i] {
                assert_eq!(stored.get(id), Some(event), "pair {i}: acknowledged {id}");
            }
        }
    }
    // Still a working server: one more message per pair gets the next seq.
    let mut stored = Vec::new();
    for (i, (sender, receiver)) in pairs.iter().enumerate() {
        let mut mqtt = app.mqtt_inbox(sender, &format!("sender-{i}")).await;
        let before = full_history(&app, receiver, &sender.user_id).await.len();
        mqtt.send(&receiver.user_id, "after", "after-1").await;
        assert_eq!(mqtt.event().await["seq"], before as u64 + 1);
        stored.push(before + 1);
    }
    // Forwarding resumed: each receiver gets the last message by SMS, and no message was
    // forwarded twice (jobs that were in flight at a kill are never sent again, so at most as
    // many as were stored).
    for (i, (_, receiver)) in pairs.iter().enumerate() {
        let phone = format!("+141555503{i:02}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !app
            .forwarded_sms(&phone)
            .iter()
            .any(|sms| sms.ends_with(": after"))
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "receiver {i} ({}) never got the last message by SMS",
                receiver.user_id
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let sms = app.forwarded_sms(&phone);
        let forwarded: usize = sms.iter().map(|s| messages_in(s)).sum();
        assert!(
            forwarded <= stored[i],
            "receiver {i}: {forwarded} forwarded of {} stored",
            stored[i]
        );
        eprintln!(
            "receiver {i}: {} SMS for {forwarded} of {} messages",
            sms.len(),
            stored[i]
        );
    }
}

#[tokio::test]
async fn a_disk_that_refuses_writes_is_said_in_the_open_and_a_restart_recovers() {
    let mut app = TestApp::spawn().await;
    let ann = app.login("+14155550101").await;
    let bob = app.login("+14155550102").await;
    let mut ann_mqtt = app.mqtt_inbox(&ann, "ann").await;
    let mut bob_mqtt = app.mqtt_inbox(&bob, "bob").await;
    bob_mqtt.send(&ann.user_id, "before", "b-1").await;
    assert_eq!(ann_mqtt.event().await["body"], "before");
    assert_eq!(bob_mqtt.event().await["seq"], 1);

    // Every file write fails from now on, as on a full disk.
    app.limit_file_size(Some(0));
    for i in 0..50 {
        bob_mqtt
            .send(&ann.user_id, &format!("during {i}"), &format!("d-{i}"))
            .await;
    }
    for _ in 0..50 {
        let error = bob_mqtt.event().await;
        assert_eq!(error["code"], "unavailable", "{error}");
        assert!(error["client_msg_id"].as_str().unwrap().starts_with("d-"));
    }
    ann_mqtt.assert_no_event(Duration::from_millis(300)).await;
    // The health check and history say so too: history does not serve what is not durable.
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    Answer::from(health).await.assert_error(503, "unavailable");
    let history = format!("/v1/conversations/{}/messages", bob.user_id);
    app.get(&history, &ann.access)
        .await
        .assert_error(503, "unavailable");
    // Said in the log once, not once per message.
    let said = app.log().matches("storage: cannot write").count();
    assert!((1..=2).contains(&said), "said {said} times:\n{}", app.log());

    // The disk takes writes again; sled does not after a failed write, so tidings exits with
    // status 75 and one line saying why, for a supervisor to restart it.
    app.limit_file_size(None);
    let status = app
        .wait_exit(Duration::from_secs(10))
        .expect("exits once the disk takes writes again");
    assert_eq!(status.code(), Some(75), "{}", app.log());
    assert!(app.log().contains("exiting with status 75"));

    // Restarted, it has exactly what was acknowledged: the retry of a refused send is new.
    app.start();
    let mut bob_mqtt = app.mqtt_inbox(&bob, "bob").await;
    bob_mqtt.send(&ann.user_id, "during 0", "d-0").await;
    let event = bob_mqtt.event().await;
    assert_eq!(
        (event["seq"].as_u64(), event["body"].as_str()),
        (Some(2), Some("during 0"))
    );
    let history = full_history(&app, &ann, &bob.user_id).await;
    assert_gapless_and_unique(&history);
    let bodies: Vec<_> = history
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, ["before", "during 0"]);
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
}
