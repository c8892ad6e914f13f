//! The OAuth flow against hostile or broken providers: the RFC 9207 `iss`
//! check, token endpoints that answer 10 MiB (with and without a length),
//! that redirect elsewhere, or that never answer.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use axum::http::StatusCode;
use common::{urlencode, ConnectedApp, Harness, Options};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const ISSUER: &str = "https://provider.test/tenant-1";

async fn app_with(h: &Harness, extra: serde_json::Value) -> ConnectedApp {
    let (app_id, app_key) = h.create_app(&["https://app.test/done"]).await;
    let mut config = h.provider_config();
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    let reply = h.put_provider(&app_id, "fake", config).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    ConnectedApp {
        app_id,
        app_key,
        provider: "fake".into(),
    }
}

/// A whole callback for `user` with `extra` appended to its query.
async fn callback_with(h: &Harness, app: &ConnectedApp, user: &str, extra: &str) -> common::Reply {
    let (state, nonce, _) = h.start_connect(app, user, None).await;
    h.callback(
        &format!("code=the-code&state={}{extra}", urlencode(&state)),
        Some(&nonce),
    )
    .await
}

#[tokio::test]
async fn iss_must_match_the_configured_issuer() {
    let h = Harness::new().await;
    let app = app_with(&h, json!({"issuer": ISSUER})).await;
    let view = h
        .put_provider(&app.app_id, "fake", {
            let mut c = h.provider_config();
            c["issuer"] = json!(ISSUER);
            c
        })
        .await
        .json();
    assert_eq!(view["issuer"], ISSUER);

    let refused = [
        ("no iss", String::new()),
        (
            "another issuer",
            format!("&iss={}", urlencode("https://evil.test")),
        ),
        (
            "a prefix of it",
            format!("&iss={}", urlencode("https://provider.test")),
        ),
        (
            "trailing slash",
            format!("&iss={}", urlencode(&format!("{ISSUER}/"))),
        ),
        ("twice", format!("&iss={0}&iss={0}", urlencode(ISSUER))),
        ("empty", "&iss=".to_string()),
    ];
    for (case, extra) in &refused {
        let reply = callback_with(&h, &app, "mallory", extra).await;
        reply.assert_error(502, "oauth_failed");
        assert!(reply.text().contains("iss"), "{case}: {}", reply.text());
    }
    // An error response from another issuer is refused as such too.
    let reply = callback_with(
        &h,
        &app,
        "mallory",
        "&error=access_denied&iss=https%3A%2F%2Fevil.test",
    )
    .await;
    reply.assert_error(502, "oauth_failed");
    assert!(reply.text().contains("another issuer"), "{}", reply.text());
    assert!(
        h.provider.calls_of("authorization_code").is_empty(),
        "no code was exchanged for a response of the wrong issuer"
    );

    let reply = callback_with(&h, &app, "alice", &format!("&iss={}", urlencode(ISSUER))).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(h.provider.calls_of("authorization_code").len(), 1);

    // Without a configured issuer an iss is accepted as it comes.
    let plain = h.app_with_provider().await;
    let reply = callback_with(&h, &plain, "bob", "&iss=https%3A%2F%2Fwhatever.test").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());

    // Bad issuers are refused at configuration time.
    for bad in [
        "not a url",
        "ftp://x.test",
        "https://x.test/?a=b",
        "https://x.test/#f",
    ] {
        let mut c = h.provider_config();
        c["issuer"] = json!(bad);
        h.put_provider(&app.app_id, "fake", c)
            .await
            .assert_error(400, "bad_request");
    }
}

/// A token endpoint on 127.0.0.1 that answers every request with `head`
/// followed by `body_len` bytes of `{"access_token":"aaaa…`, then closes.
async fn raw_token_endpoint(head: &'static str, body_len: usize) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 8192];
                let _ = socket.read(&mut buf).await;
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(b"{\"access_token\":\"").await;
                let chunk = vec![b'a'; 64 * 1024];
                let mut sent = 0;
                while sent < body_len {
                    if socket.write_all(&chunk).await.is_err() {
                        return; // the client hung up: good
                    }
                    sent += chunk.len();
                }
                let _ = socket.write_all(b"\"}").await;
            });
        }
    });
    (url, hits)
}

#[tokio::test]
async fn token_responses_are_capped_at_one_mebibyte() {
    let h = Harness::new().await;
    // 10 MiB through the fake provider (with a content-length).
    let app = h.app_with_provider().await;
    h.provider.respond(|_| {
        (
            200,
            json!({"access_token": "a".repeat(10 << 20), "expires_in": 60}),
        )
    });
    let reply = callback_with(&h, &app, "alice", "").await;
    reply.assert_error(502, "oauth_failed");
    assert!(
        reply.text().contains("response_too_large"),
        "{}",
        reply.text()
    );

    // 10 MiB without a length, until the connection closes; and chunked.
    for head in [
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 10485780\r\n\r\n",
    ] {
        let (url, hits) = raw_token_endpoint(head, 10 << 20).await;
        let app = app_with(&h, json!({"token_url": url})).await;
        let started = Instant::now();
        let reply = callback_with(&h, &app, "alice", "").await;
        reply.assert_error(502, "oauth_failed");
        assert!(
            reply.text().contains("response_too_large"),
            "{}",
            reply.text()
        );
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    // Nothing was stored.
    assert!(h.connection_view(&app, "alice").await.status == StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_token_endpoint_that_redirects_is_not_followed() {
    let h = Harness::new().await;
    let (elsewhere, elsewhere_hits) = raw_token_endpoint(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n",
        10,
    )
    .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let token_url = format!("http://{}/token", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let location = elsewhere.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 8192];
                let _ = socket.read(&mut buf).await;
                let answer = format!(
                    "HTTP/1.1 307 Temporary Redirect\r\nlocation: {location}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    let app = app_with(&h, json!({"token_url": token_url})).await;
    let reply = callback_with(&h, &app, "alice", "").await;
    reply.assert_error(502, "oauth_failed");
    assert_eq!(
        elsewhere_hits.load(Ordering::SeqCst),
        0,
        "the code and the client secret never went to the redirect's target"
    );
}

#[tokio::test]
async fn a_token_endpoint_that_never_answers_times_out() {
    let h = Harness::with(Options {
        provider_timeout: Duration::from_secs(1),
        ..Options::default()
    })
    .await;
    let app = h.app_with_provider().await;
    h.provider.set_delay(Duration::from_secs(10));
    let started = Instant::now();
    let reply = callback_with(&h, &app, "alice", "").await;
    reply.assert_error(502, "oauth_failed");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "took {took:?}");
}
