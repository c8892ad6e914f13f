//! Stats, health and metadata.

mod common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::*;
use serde_json::json;

#[tokio::test]
async fn stats_count_token_and_api_calls() {
    let s = Standin::with_config(|c| c.rotate_refresh_tokens = true);
    assert_eq!(
        s.stats().await,
        json!({
            "token_calls": {"authorization_code": 0, "refresh_token": 0, "client_credentials": 0, "other": 0},
            "api_calls": 0,
            "api_calls_rejected": 0,
            "families_revoked": 0,
            "revocation_calls": 0,
            "tokens_revoked_by_client": 0,
        })
    );
    let t = s.login("alice").await; // 1 authorization_code
    s.exchange("sco_bogus").await; // 2 authorization_code (failed)
    let rt2 = s.refresh(&t.refresh).await.json()["refresh_token"] // 1 refresh_token
        .as_str()
        .unwrap()
        .to_owned();
    s.refresh(&t.refresh).await; // 2 refresh_token: reuse, family revoked
    s.refresh(&rt2).await; // 3 refresh_token (failed)
    s.token(&[("grant_type", "password")], ClientAuth::Basic)
        .await; // other
    s.token(&[], ClientAuth::Basic).await; // other (no grant_type)
    s.quirks(json!({"token_status": 503})).await;
    s.refresh("srt_x").await; // 4 refresh_token, counted even when the quirk answers
    s.api(Method::GET, "/api/x", Some(&t.access)).await; // rejected: revoked
    s.api(Method::GET, "/api/x", None).await; // rejected
    let u = {
        s.quirks(json!({"token_status": null})).await;
        s.login("bob").await // 3 authorization_code
    };
    s.api(Method::GET, "/api/x", Some(&u.access)).await;
    assert_eq!(
        s.stats().await,
        json!({
            "token_calls": {"authorization_code": 3, "refresh_token": 4, "client_credentials": 0, "other": 2},
            "api_calls": 3,
            "api_calls_rejected": 2,
            "families_revoked": 1,
            "revocation_calls": 0,
            "tokens_revoked_by_client": 0,
        })
    );
}

#[tokio::test]
async fn healthz() {
    let s = Standin::new();
    let reply = s.get("/healthz").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "ok");
}

#[tokio::test]
async fn metadata() {
    let s = Standin::with_config(|c| {
        c.issuer = "http://127.0.0.1:7000/".into();
        c.send_iss = true;
    });
    let meta = s
        .get("/.well-known/oauth-authorization-server")
        .await
        .json();
    assert_eq!(meta["issuer"], "http://127.0.0.1:7000/");
    assert_eq!(
        meta["authorization_endpoint"],
        "http://127.0.0.1:7000/oauth/authorize"
    );
    assert_eq!(meta["token_endpoint"], "http://127.0.0.1:7000/oauth/token");
    assert_eq!(meta["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(meta["authorization_response_iss_parameter_supported"], true);
}

#[tokio::test]
async fn unknown_paths_are_404() {
    let s = Standin::new();
    let reply = s
        .send(Request::get("/nope").body(Body::empty()).unwrap())
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
}
