//! Access and refresh tokens: rotation, logout, and every kind of bad token.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test]
async fn refresh_rotates_and_the_old_refresh_token_dies() {
    let app = TestApp::spawn().await;
    let first = app.login("+14155550101").await;
    let answer = app
        .post("/v1/auth/refresh", json!({"refresh_token": first.refresh}))
        .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body["token_type"], "Bearer");
    let second = Tokens::from(&answer.body);
    assert_eq!(second.user_id, first.user_id);
    assert!(!second.new_user);
    assert_ne!(second.refresh, first.refresh);
    assert_eq!(app.get("/v1/me", &second.access).await.status, 200);

    app.post("/v1/auth/refresh", json!({"refresh_token": first.refresh}))
        .await
        .assert_error(401, "unauthorized");
    let third = app
        .post("/v1/auth/refresh", json!({"refresh_token": second.refresh}))
        .await;
    assert_eq!(third.status, 200);
    app.post("/v1/auth/refresh", json!({"refresh_token": "made-up"}))
        .await
        .assert_error(401, "unauthorized");
}

#[tokio::test]
async fn logout_kills_the_session_and_only_that_session() {
    let app =
        TestApp::spawn_with(Options::default().env("TIDINGS_LIMITS__OTP_RESEND_SECS", 0)).await;
    let phone_a = app.login("+14155550101").await;
    let phone_b = app.login("+14155550101").await;
    let answer = app
        .post_auth("/v1/auth/logout", &phone_a.access, json!({}))
        .await;
    assert_eq!(answer.status, 204, "{answer:?}");
    app.get("/v1/me", &phone_a.access)
        .await
        .assert_error(401, "unauthorized");
    app.post(
        "/v1/auth/refresh",
        json!({"refresh_token": phone_a.refresh}),
    )
    .await
    .assert_error(401, "unauthorized");
    app.post_auth("/v1/auth/logout", &phone_a.access, json!({}))
        .await
        .assert_error(401, "unauthorized");
    // The other device stays logged in.
    assert_eq!(app.get("/v1/me", &phone_b.access).await.status, 200);
}

fn jwt_parts(token: &str) -> (Value, Value) {
    let mut parts = token.split('.');
    let header =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts.next().unwrap()).unwrap()).unwrap();
    let claims =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts.next().unwrap()).unwrap()).unwrap();
    (header, claims)
}

fn sign(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

const SECRET: &str = "a-test-secret-that-is-long-enough-0123456789";

#[tokio::test]
async fn missing_garbage_forged_none_and_expired_tokens_are_refused() {
    let app = TestApp::spawn_with(Options::default().env("TIDINGS_AUTH__JWT_SECRET", SECRET)).await;
    let tokens = app.login("+14155550101").await;
    let (header, claims) = jwt_parts(&tokens.access);
    assert_eq!(header["alg"], "HS256");
    assert_eq!(claims["sub"], tokens.user_id.as_str());

    // Our own re-signing of the same claims is accepted: the forgeries below fail for their flaw alone.
    assert_eq!(app.get("/v1/me", &sign(&claims, SECRET)).await.status, 200);

    let no_header = app.client.get(app.url("/v1/me")).send().await.unwrap();
    Answer::from(no_header)
        .await
        .assert_error(401, "unauthorized");
    app.get("/v1/me", "not-a-token")
        .await
        .assert_error(401, "unauthorized");

    let forged = sign(&claims, "another-secret-that-is-long-enough-0123456789");
    app.get("/v1/me", &forged)
        .await
        .assert_error(401, "unauthorized");

    let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    app.get("/v1/me", &format!("{none_header}.{body}."))
        .await
        .assert_error(401, "unauthorized");

    let mut expired = claims.clone();
    expired["exp"] = json!(claims["iat"].as_u64().unwrap() - 1);
    app.get("/v1/me", &sign(&expired, SECRET))
        .await
        .assert_error(401, "unauthorized");

    // A token for someone else's id on a real session.
    let mut other = claims.clone();
    other["sub"] = json!("0123456789abcdef01234567");
    app.get("/v1/me", &sign(&other, SECRET))
        .await
        .assert_error(401, "unauthorized");
}

#[tokio::test]
async fn an_access_token_expires_after_its_ttl() {
    let app = TestApp::spawn_with(Options::default().env("TIDINGS_AUTH__ACCESS_TTL_SECS", 1)).await;
    let tokens = app.login("+14155550101").await;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    app.get("/v1/me", &tokens.access)
        .await
        .assert_error(401, "unauthorized");
    // The refresh token still gets a fresh one.
    let answer = app
        .post("/v1/auth/refresh", json!({"refresh_token": tokens.refresh}))
        .await;
    assert_eq!(answer.status, 200);
}
