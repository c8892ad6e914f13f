//! Per-app rate limits on token lookups and connect sessions: 429
//! `rate_limited` JSON with `Retry-After`, one bucket per app.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use authstamp_token_service::ratelimit::{Rate, RateLimits};
use axum::http::StatusCode;
use common::{Harness, Options};
use serde_json::json;

#[tokio::test]
async fn lookups_and_connect_sessions_past_the_limit_get_429() {
    let h = Harness::with(Options {
        rate_limits: Some(RateLimits {
            lookups: Rate::per_minute(5),
            connect_sessions: Rate::per_minute(3),
        }),
        ..Options::default()
    })
    .await;
    let app = h.app_with_provider().await;
    let other = h.app_with_provider().await;

    // Connect sessions: three, then 429 (the connect below used none yet).
    for i in 0..3 {
        let reply = h
            .as_app(
                &app.app_id,
                &app.app_key,
                "/v1/connect-sessions",
                json!({"provider": "fake", "user": format!("u{i}")}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    }
    let reply = h
        .as_app(
            &app.app_id,
            &app.app_key,
            "/v1/connect-sessions",
            json!({"provider": "fake", "user": "u4"}),
        )
        .await;
    reply.assert_error(429, "rate_limited");
    let retry: u64 = reply.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry), "{retry}");

    // The other app has its own buckets.
    h.connect(&other, "alice").await;
    for _ in 0..5 {
        assert_eq!(
            h.lookup(&other, "alice", false).await.status,
            StatusCode::OK
        );
    }
    let reply = h.lookup(&other, "alice", false).await;
    reply.assert_error(429, "rate_limited");
    assert!(reply.header("retry-after").is_some());
    assert!(reply.text().contains("token lookups"), "{}", reply.text());
    // A wrong key is refused as such, before any bucket is touched.
    let mut wrong = h.lookup_request(&other, "alice", false);
    wrong
        .headers_mut()
        .insert("x-authstamp-app-key", "ask_wrong".parse().unwrap());
    h.send_filter(wrong).await.assert_error(401, "bad_app_key");
    // Lookups of the first app are still allowed.
    let reply = h.lookup(&app, "nobody", false).await;
    reply.assert_error(404, "not_connected");

    // Counted in the metrics like any other outcome.
    let metrics = h.get("/metrics").await.text();
    assert!(
        metrics.contains("authstamp_token_lookups_total{outcome=\"rate_limited\"} 1"),
        "{metrics}"
    );
}
