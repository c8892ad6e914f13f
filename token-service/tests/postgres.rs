//! The same flows on PostgreSQL, when `AUTHSTAMP_TEST_POSTGRES_URL` names a
//! scratch database (skipped otherwise).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use authstamp_token_service::db::Backend;
use axum::http::StatusCode;
use common::*;
use serde_json::json;
use std::time::Duration;

async fn harness() -> Option<Harness> {
    let Ok(url) = std::env::var("AUTHSTAMP_TEST_POSTGRES_URL") else {
        eprintln!("AUTHSTAMP_TEST_POSTGRES_URL not set: skipping");
        return None;
    };
    let h = Harness::with(Options {
        database_url: Some(url),
        ..Options::default()
    })
    .await;
    assert_eq!(h.state.db.backend(), Backend::Postgres);
    Some(h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connect_lookup_and_refresh_on_postgres() {
    let Some(h) = harness().await else { return };
    assert_eq!(h.get("/healthz").await.status, StatusCode::OK);
    let app = h.app_with_provider().await;
    let get = h
        .admin(
            axum::http::Method::GET,
            &format!("/v1/apps/{}/providers/fake", app.app_id),
            None,
        )
        .await;
    assert_eq!(get.json()["scopes"], json!(["read", "write"]));

    let (state, nonce, _) = h
        .start_connect(&app, "alice", Some("https://app.test/done"))
        .await;
    let query = format!("code=c&state={}", urlencode(&state));
    assert_eq!(
        h.callback(&query, Some(&nonce)).await.status,
        StatusCode::FOUND
    );
    h.callback(&query, Some(&nonce))
        .await
        .assert_error(400, "invalid_state");
    let reply = h.lookup(&app, "alice", false).await;
    assert_eq!(reply.json()["header"]["value"], "Bearer at-1");

    // Single flight and rotation.
    h.set_expires_in(&app, "alice", 30).await;
    h.provider.respond(|_| {
        (
            200,
            json!({"access_token": "at-pg", "refresh_token": "rt-pg", "expires_in": 3600}),
        )
    });
    h.provider.set_delay(Duration::from_millis(200));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..6 {
        tasks.spawn(send_to(
            h.router.clone(),
            h.lookup_request(&app, "alice", false),
        ));
    }
    for reply in tasks.join_all().await {
        assert_eq!(reply.json()["header"]["value"], "Bearer at-pg");
    }
    assert_eq!(h.provider.calls_of("refresh_token").len(), 1);
    h.provider.set_delay(Duration::ZERO);

    // Kept refresh token, then a permanent failure.
    h.provider
        .respond(|_| (200, json!({"access_token": "at-pg2"})));
    h.lookup(&app, "alice", true).await;
    h.provider
        .respond(|_| (400, json!({"error": "invalid_grant"})));
    h.lookup(&app, "alice", true)
        .await
        .assert_error(409, "reauth_required");
    let calls = h.provider.calls_of("refresh_token");
    assert_eq!(calls.len(), 3);
    assert_eq!(calls[1].form["refresh_token"], "rt-pg");
    assert_eq!(calls[2].form["refresh_token"], "rt-pg");
    let (status, failures, error) = h.connection_row(&app, "alice").await;
    assert_eq!(
        (status.as_str(), failures, error.as_deref()),
        ("reauth_required", 1, Some("invalid_grant"))
    );

    // A transient failure on a second user.
    h.provider.respond(|call| match call.grant_type() {
        "authorization_code" => (
            200,
            json!({"access_token": "at-b", "refresh_token": "rt-b", "expires_in": 3600}),
        ),
        _ => (503, json!({})),
    });
    h.connect(&app, "bob").await;
    assert_eq!(
        h.lookup(&app, "bob", true).await.json()["header"]["value"],
        "Bearer at-b"
    );
    h.set_expires_in(&app, "bob", -1).await;
    h.lookup(&app, "bob", false)
        .await
        .assert_error(502, "provider_unavailable");
}
