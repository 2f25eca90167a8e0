//! `GET /v1/conversations/{peer_id}/messages`: paging with before, after, limit and has_more.

use serde_json::Value;

use crate::helpers::*;

fn seqs(page: &Value) -> Vec<u64> {
    page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn pages_through_a_conversation_in_both_directions() {
    let app = TestApp::spawn().await;
    let ann = app.login("+14155550101").await;
    let bob = app.login("+14155550102").await;
    let mut ann_mqtt = app.mqtt_inbox(&ann, "ann").await;
    for i in 1..=10 {
        ann_mqtt
            .send(&bob.user_id, &format!("m{i}"), &format!("c-{i}"))
            .await;
        ann_mqtt.event().await;
    }
    let path = |query: &str| format!("/v1/conversations/{}/messages{query}", ann.user_id);
    let get = |query: &'static str| {
        let path = path(query);
        let app = &app;
        let token = bob.access.clone();
        async move {
            let answer = app.get(&path, &token).await;
            assert_eq!(answer.status, 200, "{query}: {answer:?}");
            answer.body
        }
    };

    let all = get("").await;
    assert_eq!(seqs(&all), (1..=10).collect::<Vec<_>>());
    assert_eq!(all["has_more"], false);
    assert_eq!(all["messages"][0]["type"], "message");
    assert_eq!(all["messages"][0]["body"], "m1");
    assert_eq!(all["messages"][0]["client_msg_id"], "c-1");

    let newest = get("?limit=3").await;
    assert_eq!(
        (seqs(&newest), newest["has_more"].as_bool()),
        (vec![8, 9, 10], Some(true))
    );
    let older = get("?before=8&limit=3").await;
    assert_eq!(
        (seqs(&older), older["has_more"].as_bool()),
        (vec![5, 6, 7], Some(true))
    );
    let oldest = get("?before=3&limit=3").await;
    assert_eq!(
        (seqs(&oldest), oldest["has_more"].as_bool()),
        (vec![1, 2], Some(false))
    );

    let after = get("?after=2&limit=3").await;
    assert_eq!(
        (seqs(&after), after["has_more"].as_bool()),
        (vec![3, 4, 5], Some(true))
    );
    let tail = get("?after=7&limit=3").await;
    assert_eq!(
        (seqs(&tail), tail["has_more"].as_bool()),
        (vec![8, 9, 10], Some(false))
    );
    let none = get("?after=10").await;
    assert_eq!(
        (seqs(&none), none["has_more"].as_bool()),
        (vec![], Some(false))
    );

    // Both sides read the same conversation.
    let from_ann = app
        .get(
            &format!("/v1/conversations/{}/messages", bob.user_id),
            &ann.access,
        )
        .await;
    assert_eq!(from_ann.body, all);
}

#[tokio::test]
async fn bad_history_requests() {
    let app = TestApp::spawn().await;
    let ann = app.login("+14155550101").await;
    let bob = app.login("+14155550102").await;
    let path = format!("/v1/conversations/{}/messages", bob.user_id);
    app.get(&path, "nope")
        .await
        .assert_error(401, "unauthorized");
    app.get(
        "/v1/conversations/0123456789abcdef01234567/messages",
        &ann.access,
    )
    .await
    .assert_error(404, "not_found");
    app.get("/v1/conversations/not-an-id/messages", &ann.access)
        .await
        .assert_error(404, "not_found");
    app.get(&format!("{path}?limit=abc"), &ann.access)
        .await
        .assert_error(400, "invalid_query");
    app.get(&format!("{path}?limit=0"), &ann.access)
        .await
        .assert_error(400, "invalid_query");
    // Over the maximum is served at the maximum.
    assert_eq!(
        app.get(&format!("{path}?limit=5000"), &ann.access)
            .await
            .status,
        200
    );
    // A third user reads their own (empty) conversation with Bob, never Ann's.
    let carol = app.login("+14155550103").await;
    let answer = app.get(&path, &carol.access).await;
    assert_eq!(answer.body["messages"], serde_json::json!([]));
}
