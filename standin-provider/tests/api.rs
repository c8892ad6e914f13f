//! `ANY /api/{*path}`: bearer token check and echo.

mod common;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use common::*;
use serde_json::json;
use sha2::{Digest as _, Sha256};

fn hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn echo_reports_the_request() {
    let s = Standin::new();
    let t = s.login("alice").await;
    let body = b"{\"text\":\"hello\"}".to_vec();
    let reply = s
        .send(
            Request::post("/api/chat.postMessage?channel=C1&x=%20y")
                .header(header::AUTHORIZATION, format!("Bearer {}", t.access))
                .header(header::CONTENT_TYPE, "application/json")
                .header("X-Multi", "one")
                .header("x-multi", "two")
                .body(Body::from(body.clone()))
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.header("x-standin-echo"), Some("1"));
    let echo = reply.json();
    assert_eq!(echo["user"], "alice");
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/api/chat.postMessage");
    assert_eq!(echo["query"], "channel=C1&x=%20y");
    assert_eq!(echo["body_len"], body.len());
    assert_eq!(echo["body_sha256"], hex(&body));
    assert_eq!(
        echo["headers"]["authorization"],
        json!([format!("Bearer {}", t.access)])
    );
    assert_eq!(echo["headers"]["content-type"], json!(["application/json"]));
    assert_eq!(echo["headers"]["x-multi"], json!(["one", "two"]));
    assert_eq!(echo["token_grant"], "authorization_code");
    assert!(echo["token_serial"].as_u64().unwrap() >= 1);
}

#[tokio::test]
async fn echo_without_query_or_body() {
    let s = Standin::new();
    let t = s.login("bob").await;
    for method in [Method::GET, Method::DELETE, Method::PUT, Method::PATCH] {
        let echo = s
            .api(method.clone(), "/api/deep/nested/path", Some(&t.access))
            .await;
        assert_eq!(echo.status, StatusCode::OK);
        let echo = echo.json();
        assert_eq!(echo["method"], method.as_str());
        assert_eq!(echo["path"], "/api/deep/nested/path");
        assert_eq!(echo["query"], serde_json::Value::Null);
        assert_eq!(echo["body_len"], 0);
        assert_eq!(echo["body_sha256"], hex(b""));
    }
}

#[tokio::test]
async fn token_serial_increments_with_every_access_token() {
    let s = Standin::new();
    let a = s.login("alice").await;
    let b = s.login("bob").await;
    let refreshed = s.refresh(&a.refresh).await.json();
    let serial = |token: String| {
        let s = &s;
        async move {
            s.api(Method::GET, "/api/x", Some(&token)).await.json()["token_serial"]
                .as_u64()
                .unwrap()
        }
    };
    let sa = serial(a.access.clone()).await;
    let sb = serial(b.access.clone()).await;
    let sr = serial(refreshed["access_token"].as_str().unwrap().to_owned()).await;
    assert_eq!((sa, sb, sr), (1, 2, 3));
}

#[tokio::test]
async fn missing_or_bad_tokens_are_401() {
    let s = Standin::new();
    let t = s.login("alice").await;
    let check = |reply: Reply| {
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            reply.header("www-authenticate"),
            Some("Bearer error=\"invalid_token\"")
        );
        assert_eq!(reply.json(), json!({"error": "invalid_token"}));
        assert!(reply.header("x-standin-echo").is_none());
    };
    check(s.api(Method::GET, "/api/x", None).await);
    check(s.api(Method::GET, "/api/x", Some("sat_unknown")).await);
    check(s.api(Method::GET, "/api/x", Some(&t.refresh)).await);
    let basic = s
        .send(
            Request::get("/api/x")
                .header(header::AUTHORIZATION, format!("Basic {}", t.access))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    check(basic);
    // The scheme is case-insensitive.
    let lower = s
        .send(
            Request::get("/api/x")
                .header(header::AUTHORIZATION, format!("bearer {}", t.access))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(lower.status, StatusCode::OK);
}

#[tokio::test]
async fn expired_access_token_is_401_and_refresh_recovers() {
    let s = Standin::with_config(|c| c.access_token_ttl = std::time::Duration::ZERO);
    let code = s.code("alice", "read").await;
    let body = s.exchange(&code).await.json();
    assert_eq!(body["expires_in"], 0);
    let access = body["access_token"].as_str().unwrap();
    let reply = s.api(Method::GET, "/api/x", Some(access)).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        reply.header("www-authenticate"),
        Some("Bearer error=\"invalid_token\"")
    );

    s.quirks(json!({"access_token_ttl_secs": 60})).await;
    let refreshed = s
        .refresh(body["refresh_token"].as_str().unwrap())
        .await
        .json();
    assert_eq!(refreshed["expires_in"], 60);
    let reply = s
        .api(
            Method::GET,
            "/api/x",
            Some(refreshed["access_token"].as_str().unwrap()),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn status_header_picks_the_status() {
    let s = Standin::new();
    let t = s.login("alice").await;
    for status in [201u16, 404, 429, 500, 503] {
        let reply = s
            .send(
                Request::get("/api/x")
                    .header(header::AUTHORIZATION, format!("Bearer {}", t.access))
                    .header("x-standin-status", status.to_string())
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(reply.status.as_u16(), status);
        assert_eq!(reply.header("x-standin-echo"), Some("1"));
        assert_eq!(reply.json()["user"], "alice");
    }
    for bad in ["100", "600", "abc"] {
        let reply = s
            .send(
                Request::get("/api/x")
                    .header(header::AUTHORIZATION, format!("Bearer {}", t.access))
                    .header("x-standin-status", bad)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
    }
}

#[tokio::test]
async fn bodies_up_to_ten_mib() {
    let s = Standin::new();
    let t = s.login("alice").await;
    let limit = 10 * 1024 * 1024;
    let big = vec![b'x'; limit];
    let reply = s
        .send(
            Request::put("/api/upload")
                .header(header::AUTHORIZATION, format!("Bearer {}", t.access))
                .body(Body::from(big.clone()))
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let echo = reply.json();
    assert_eq!(echo["body_len"], limit);
    assert_eq!(echo["body_sha256"], hex(&big));

    let too_big = vec![b'x'; limit + 1];
    let reply = s
        .send(
            Request::put("/api/upload")
                .header(header::AUTHORIZATION, format!("Bearer {}", t.access))
                .body(Body::from(too_big))
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn user_revocation_kills_all_tokens_of_the_login() {
    let s = Standin::new();
    let a1 = s.login("alice").await;
    let a2 = s.login("alice").await;
    let b = s.login("bob").await;
    let reply = s
        .send(
            Request::post("/_standin/revoke?login=alice")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.json(),
        json!({"login": "alice", "families_revoked": 2, "tokens_revoked": 4})
    );
    for t in [&a1, &a2] {
        assert_eq!(
            s.api(Method::GET, "/api/x", Some(&t.access)).await.status,
            StatusCode::UNAUTHORIZED
        );
        s.refresh(&t.refresh)
            .await
            .assert_oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
    }
    assert_eq!(
        s.api(Method::GET, "/api/x", Some(&b.access)).await.status,
        StatusCode::OK
    );
    assert_eq!(s.stats().await["families_revoked"], 2);

    let missing = s
        .send(
            Request::post("/_standin/revoke")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
}
