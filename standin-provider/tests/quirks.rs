//! `/_standin/quirks`: each quirk changes the provider's behaviour at runtime.

mod common;

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::*;
use serde_json::json;

#[tokio::test]
async fn get_and_partial_update() {
    let s = Standin::with_config(|c| {
        c.access_token_ttl = Duration::from_secs(120);
        c.rotate_refresh_tokens = true;
    });
    let defaults = json!({
        "access_token_ttl_secs": 120,
        "omit_expires_in": false,
        "rotate_refresh_tokens": true,
        "omit_refresh_token_on_refresh": false,
        "error_in_200": null,
        "token_delay_ms": 0,
        "delay_after_issuing": false,
        "token_status": null,
        "slack_authed_user": false,
    });
    assert_eq!(s.get("/_standin/quirks").await.json(), defaults);

    let merged = s.quirks(json!({"error_in_200": "invalid_code"})).await;
    let mut expected = defaults.clone();
    expected["error_in_200"] = json!("invalid_code");
    assert_eq!(merged, expected);
    let merged = s
        .quirks(json!({"token_status": 503, "omit_expires_in": true}))
        .await;
    expected["token_status"] = json!(503);
    expected["omit_expires_in"] = json!(true);
    assert_eq!(merged, expected);
    assert_eq!(s.get("/_standin/quirks").await.json(), expected);
    let merged = s
        .quirks(json!({"token_status": null, "error_in_200": null, "omit_expires_in": false}))
        .await;
    assert_eq!(merged, defaults);
}

#[tokio::test]
async fn invalid_quirk_updates_are_rejected() {
    let s = Standin::new();
    for bad in [
        json!({"no_such_quirk": true}),
        json!({"token_status": 42}),
        json!({"token_delay_ms": -1}),
        json!({"omit_expires_in": "yes"}),
    ] {
        let reply = s.post_json("/_standin/quirks", bad.clone()).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    let reply = s
        .send(
            Request::post("/_standin/quirks")
                .body(Body::from("not json"))
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        s.get("/_standin/quirks").await.json()["token_status"],
        json!(null)
    );
}

#[tokio::test]
async fn access_token_ttl_secs() {
    let s = Standin::new();
    s.quirks(json!({"access_token_ttl_secs": 5})).await;
    let code = s.code("alice", "read").await;
    assert_eq!(s.exchange(&code).await.json()["expires_in"], 5);
}

#[tokio::test]
async fn omit_expires_in_means_never_expires() {
    let s = Standin::with_config(|c| c.access_token_ttl = Duration::ZERO);
    s.quirks(json!({"omit_expires_in": true})).await;
    let code = s.code("alice", "read").await;
    let body = s.exchange(&code).await.json();
    assert!(body.get("expires_in").is_none(), "{body}");
    let access = body["access_token"].as_str().unwrap();
    assert_eq!(
        s.api(Method::GET, "/api/x", Some(access)).await.status,
        StatusCode::OK
    );
    let refreshed = s
        .refresh(body["refresh_token"].as_str().unwrap())
        .await
        .json();
    assert!(refreshed.get("expires_in").is_none(), "{refreshed}");
}

#[tokio::test]
async fn omit_refresh_token_on_refresh() {
    for rotate in [false, true] {
        let s = Standin::with_config(|c| c.rotate_refresh_tokens = rotate);
        s.quirks(json!({"omit_refresh_token_on_refresh": true}))
            .await;
        let t = s.login("alice").await;
        for _ in 0..3 {
            let reply = s.refresh(&t.refresh).await;
            assert_eq!(reply.status, StatusCode::OK, "rotate={rotate}");
            let body = reply.json();
            assert!(body.get("refresh_token").is_none(), "{body}");
            assert!(body["access_token"].as_str().unwrap().starts_with("sat_"));
        }
        assert_eq!(s.stats().await["families_revoked"], 0);
    }
}

#[tokio::test]
async fn error_in_200() {
    let s = Standin::new();
    let code = s.code("alice", "read").await;
    s.quirks(json!({"error_in_200": "invalid_code"})).await;
    let reply = s.exchange(&code).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json(), json!({"ok": false, "error": "invalid_code"}));
    // The provider did nothing: the code still works once the quirk is off.
    s.quirks(json!({"error_in_200": null})).await;
    assert_eq!(s.exchange(&code).await.status, StatusCode::OK);
}

#[tokio::test]
async fn token_status() {
    let s = Standin::new();
    let t = s.login("alice").await;
    s.quirks(json!({"token_status": 503})).await;
    let reply = s.refresh(&t.refresh).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(reply
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    assert!(reply.text().contains("503"));
    assert_eq!(reply.header("retry-after"), Some("1"));

    s.quirks(json!({"token_status": 400})).await;
    let reply = s.refresh(&t.refresh).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.json()["error"].is_string());

    s.quirks(json!({"token_status": null})).await;
    assert_eq!(s.refresh(&t.refresh).await.status, StatusCode::OK);
}

#[tokio::test]
async fn token_delay_ms() {
    let s = Standin::new();
    let t = s.login("alice").await;
    s.quirks(json!({"token_delay_ms": 200})).await;
    let start = Instant::now();
    assert_eq!(s.refresh(&t.refresh).await.status, StatusCode::OK);
    assert!(start.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn delay_after_issuing_rotates_even_when_the_client_gives_up() {
    let s = Standin::with_config(|c| c.rotate_refresh_tokens = true);
    let t = s.login("alice").await;
    s.quirks(json!({"token_delay_ms": 500, "delay_after_issuing": true}))
        .await;
    // The client goes away while the provider sleeps on its answer.
    let gave_up = tokio::time::timeout(Duration::from_millis(100), s.refresh(&t.refresh)).await;
    assert!(gave_up.is_err());
    s.quirks(json!({"token_delay_ms": 0})).await;
    // The refresh token was rotated all the same: presenting it is reuse,
    // which revokes the whole family (RFC 9700 §4.14.2).
    s.refresh(&t.refresh)
        .await
        .assert_oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
    let stats = s.stats().await;
    assert_eq!(stats["token_calls"]["refresh_token"], 2);
    assert_eq!(stats["families_revoked"], 1);
    assert_eq!(
        s.api(Method::GET, "/api/me", Some(&t.access)).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn slack_authed_user() {
    let s = Standin::new();
    s.quirks(json!({"slack_authed_user": true})).await;
    let code = s.code("alice", "chat:write users:read").await;
    let reply = s.exchange(&code).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    let body = reply.json();
    assert_eq!(body["ok"], true);
    assert_eq!(body["token_type"], "bot");
    let bot = body["access_token"].as_str().unwrap();
    assert!(bot.starts_with("sbt_"), "{body}");
    let user = &body["authed_user"];
    assert_eq!(user["id"], "alice");
    assert_eq!(user["token_type"], "user");
    assert_eq!(user["expires_in"], 3600);
    assert_eq!(user["scope"], "chat:write users:read");
    let user_token = user["access_token"].as_str().unwrap();
    let refresh = user["refresh_token"].as_str().unwrap();
    assert!(user_token.starts_with("sat_"));
    assert!(refresh.starts_with("srt_"));

    let echo = s.api(Method::GET, "/api/auth.test", Some(user_token)).await;
    assert_eq!(echo.status, StatusCode::OK);
    assert_eq!(echo.json()["user"], "alice");
    assert_eq!(
        s.api(Method::GET, "/api/auth.test", Some(bot)).await.status,
        StatusCode::OK
    );

    // Refresh answers stay standard.
    let refreshed = s.refresh(refresh).await.json();
    assert_eq!(refreshed["token_type"], "Bearer");
    assert!(refreshed["access_token"]
        .as_str()
        .unwrap()
        .starts_with("sat_"));
}
