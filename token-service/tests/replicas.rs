//! Several replicas (each its own `AppState`: lease owner, locks, metrics)
//! on one database: one refresh per connection, lease waits and takeovers,
//! concurrent rotation, cooldown, the background refresher, policy
//! overrides and the connection API. Every test runs on SQLite and on
//! PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use authstamp_token_service::vault::{Aad, Field};
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::*;
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn token_of(reply: &Reply) -> String {
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    reply.json()["header"]["value"].as_str().unwrap().to_owned()
}

fn metric(text: &str, series: &str) -> u64 {
    authstamp_testkit::prom::value(text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"))
        as u64
}

/// A provider that rotates: `rt-N` → `at-(N+1)` + `rt-(N+1)`; an old refresh
/// token is refused with invalid_grant (reuse).
fn rotating(h: &Harness) -> Arc<AtomicUsize> {
    let current = Arc::new(AtomicUsize::new(1));
    let c = current.clone();
    h.provider.respond(move |call| match call.grant_type() {
        "authorization_code" => (
            200,
            json!({"access_token": "at-1", "refresh_token": "rt-1", "expires_in": 3600}),
        ),
        _ => {
            let n = c.load(Ordering::SeqCst);
            if call.form["refresh_token"] != format!("rt-{n}") {
                return (400, json!({"error": "invalid_grant"}));
            }
            c.store(n + 1, Ordering::SeqCst);
            (
                200,
                json!({"access_token": format!("at-{}", n + 1), "refresh_token": format!("rt-{}", n + 1), "expires_in": 3600}),
            )
        }
    });
    current
}

both_backends!(
    two_replicas_refresh_an_expired_token_once,
    two_replicas_case
);

async fn two_replicas_case(backend: Backend) {
    let h = Harness::with(Options::on(backend)).await;
    let app = h.app_with_provider().await;
    rotating(&h);
    h.connect(&app, "alice").await;
    let (b_state, b_router, b_filter) = h.replica(Options::on(backend)).await;
    h.set_expires_in(&app, "alice", -10).await;
    h.provider.set_delay(Duration::from_millis(300));

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..60 {
        let router = if i % 2 == 0 {
            h.filter_router.clone()
        } else {
            b_filter.clone()
        };
        tasks.spawn(send_to(router, h.lookup_request(&app, "alice", false)));
    }
    let replies = tasks.join_all().await;
    for reply in &replies {
        assert_eq!(token_of(reply), "Bearer at-2");
    }
    assert_eq!(h.provider.calls_of("refresh_token").len(), 1);
    // The rotated refresh token is the one stored and used next.
    h.provider.set_delay(Duration::ZERO);
    assert_eq!(
        token_of(&h.lookup(&app, "alice", true).await),
        "Bearer at-3"
    );
    assert_eq!(
        h.provider.calls_of("refresh_token")[1].form["refresh_token"],
        "rt-2"
    );
    // One of the replicas waited for the other's lease.
    let a = h.get("/metrics").await.text();
    let b = send_to(
        b_router,
        Request::get("/metrics").body(Body::empty()).unwrap(),
    )
    .await
    .text();
    let waits = metric(&a, "authstamp_refresh_lease_waits_total")
        + metric(&b, "authstamp_refresh_lease_waits_total");
    assert!(waits >= 1, "{a}\n{b}");
    assert_eq!(
        metric(&a, "authstamp_refreshes_total{outcome=\"ok\"}")
            + metric(&b, "authstamp_refreshes_total{outcome=\"ok\"}"),
        2
    );
    drop(b_state);
}

both_backends!(
    a_lease_left_by_a_dead_replica_expires_and_is_taken_over,
    dead_lease_case
);

async fn dead_lease_case(backend: Backend) {
    let h = Harness::with(Options::on(backend)).await;
    let app = h.app_with_provider().await;
    h.connect(&app, "alice").await;
    h.set_expires_in(&app, "alice", -10).await;
    // A replica took the lease and died: nobody releases it.
    let until = authstamp_token_service::db::now_ms() + 1500;
    h.exec(&format!(
        "UPDATE connections SET refresh_lease_owner = 'dead#1', refresh_lease_until = {until}"
    ))
    .await;
    let started = Instant::now();
    assert_eq!(
        token_of(&h.lookup(&app, "alice", false).await),
        "Bearer at-refreshed"
    );
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(1200), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    assert_eq!(h.provider.calls_of("refresh_token").len(), 1);
    let text = h.get("/metrics").await.text();
    assert_eq!(metric(&text, "authstamp_refresh_lease_takeovers_total"), 1);
    assert_eq!(metric(&text, "authstamp_refresh_lease_waits_total"), 1);
    // Released after the write.
    let (owner,): (Option<String>,) = sqlx::query_as("SELECT refresh_lease_owner FROM connections")
        .fetch_one(h.state.db.pool())
        .await
        .unwrap();
    assert_eq!(owner, None);
}

both_backends!(
    invalid_grant_after_a_concurrent_rotation_is_not_a_dead_connection,
    concurrent_rotation_case
);

async fn concurrent_rotation_case(backend: Backend) {
    let h = Harness::with(Options::on(backend)).await;
    let app = h.app_with_provider().await;
    h.connect(&app, "alice").await;
    h.set_expires_in(&app, "alice", -10).await;
    h.provider
        .respond(|_| (400, json!({"error": "invalid_grant"})));
    h.provider.set_delay(Duration::from_millis(500));
    let lookup = tokio::spawn(send_to(
        h.filter_router.clone(),
        h.lookup_request(&app, "alice", false),
    ));
    // While the provider thinks, another party stores rotated tokens (as a
    // replica whose lease had run out would).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let aad = |f| Aad::connection(&app.app_id, &app.provider, "alice", f);
    let access = h
        .state
        .vault
        .seal_str(&aad(Field::AccessToken), "at-other")
        .unwrap();
    let refresh = h
        .state
        .vault
        .seal_str(&aad(Field::RefreshToken), "rt-other")
        .unwrap();
    sqlx::query(
        "UPDATE connections SET access_token = $1, refresh_token = $2, expires_at = $3, \
         token_version = token_version + 1",
    )
    .bind(access)
    .bind(refresh)
    .bind(authstamp_token_service::db::now() + 3600)
    .execute(h.state.db.pool())
    .await
    .unwrap();
    let reply = lookup.await.unwrap();
    assert_eq!(token_of(&reply), "Bearer at-other");
    let (status, _, _) = h.connection_row(&app, "alice").await;
    assert_eq!(status, "active", "not declared dead");
    let text = h.get("/metrics").await.text();
    assert_eq!(
        metric(&text, "authstamp_refreshes_total{outcome=\"superseded\"}"),
        1
    );
}

both_backends!(
    cooldown_after_a_transient_failure_spares_the_provider,
    cooldown_case
);

async fn cooldown_case(backend: Backend) {
    let mut options = Options::on(backend);
    options.policy.failure_cooldown = Duration::from_secs(2);
    let h = Harness::with(options).await;
    let app = h.app_with_provider().await;
    h.connect(&app, "alice").await;
    h.set_expires_in(&app, "alice", 30).await; // inside the skew, still valid
    h.provider.respond(|_| (503, json!({})));
    for _ in 0..10 {
        assert_eq!(
            token_of(&h.lookup(&app, "alice", false).await),
            "Bearer at-1"
        );
    }
    assert_eq!(
        h.provider.calls_of("refresh_token").len(),
        1,
        "no hammering"
    );
    let view = h.connection_view(&app, "alice").await.json();
    assert_eq!(view["status"], "active");
    assert_eq!(view["failure_count"], 1);
    assert_eq!(view["last_error"], "http_503");
    let now = authstamp_token_service::db::now();
    assert!((now + 1..=now + 2).contains(&view["retry_at"].as_i64().unwrap()));
    // Expired while cooling down: an immediate 502, still no provider call.
    h.set_expires_in(&app, "alice", -1).await;
    h.lookup(&app, "alice", false)
        .await
        .assert_error(502, "provider_unavailable");
    h.lookup(&app, "alice", true)
        .await
        .assert_error(502, "provider_unavailable");
    assert_eq!(h.provider.calls_of("refresh_token").len(), 1);
    // After the cooldown: tried again, failing twice doubles it.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    h.lookup(&app, "alice", false)
        .await
        .assert_error(502, "provider_unavailable");
    assert_eq!(h.provider.calls_of("refresh_token").len(), 2);
    let view = h.connection_view(&app, "alice").await.json();
    assert_eq!(view["failure_count"], 2);
    let now = authstamp_token_service::db::now();
    assert!(
        (now + 3..=now + 4).contains(&view["retry_at"].as_i64().unwrap()),
        "{view}"
    );
    // The provider is back; after the cooldown the next lookup heals it.
    h.provider
        .respond(|_| (200, json!({"access_token": "at-back", "expires_in": 3600})));
    h.exec("UPDATE connections SET retry_at = NULL").await;
    assert_eq!(
        token_of(&h.lookup(&app, "alice", false).await),
        "Bearer at-back"
    );
    let view = h.connection_view(&app, "alice").await.json();
    assert_eq!(
        (
            view["failure_count"].as_i64(),
            view["last_error"].is_null(),
            view["retry_at"].is_null()
        ),
        (Some(0), true, true)
    );
}

both_backends!(
    the_background_refresher_runs_once_across_replicas,
    background_case
);

async fn background_case(backend: Backend) {
    let h = Harness::with(Options::on(backend)).await;
    let app = h.app_with_provider().await;
    h.connect(&app, "alice").await;
    h.connect(&app, "bob").await;
    h.connect(&app, "carol").await;
    // alice inside the 5 min background window, bob far from it, carol is
    // old enough for a keep-alive refresh under the provider's override.
    h.set_expires_in(&app, "alice", 200).await;
    let mut config = h.provider_config();
    config["refresh"] = json!({"keepalive": "1day"});
    assert_eq!(
        h.put_provider(&app.app_id, "fake", config).await.status,
        StatusCode::OK
    );
    let now = authstamp_token_service::db::now();
    h.exec(&format!(
        "UPDATE connections SET issued_at = {}, expires_at = {} WHERE user_id = 'carol'",
        now - 2 * 86400,
        now + 30 * 86400
    ))
    .await;
    let (b_state, _, _) = h.replica(Options::on(backend)).await;
    let (a, b) = tokio::join!(
        authstamp_token_service::background::tick(&h.state, "replica-a"),
        authstamp_token_service::background::tick(&b_state, "replica-b"),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a + b, 2, "one replica led and refreshed alice and carol");
    assert!(a == 0 || b == 0);
    let calls = h.provider.calls_of("refresh_token");
    assert_eq!(calls.len(), 2);
    // The other replica's pass, and the leader's next pass, find nothing due.
    let (a2, b2) = tokio::join!(
        authstamp_token_service::background::tick(&h.state, "replica-a"),
        authstamp_token_service::background::tick(&b_state, "replica-b"),
    );
    assert_eq!(a2.unwrap() + b2.unwrap(), 0);
    assert_eq!(h.provider.calls_of("refresh_token").len(), 2);
    for user in ["alice", "carol"] {
        let view = h.connection_view(&app, user).await.json();
        assert!(view["last_refresh_at"].as_i64().is_some(), "{view}");
        assert_eq!(view["status"], "active", "{view}");
    }
    let bob = h.connection_view(&app, "bob").await.json();
    assert!(bob["last_refresh_at"].is_null());
}

both_backends!(
    per_provider_policy_overrides_the_service_defaults,
    policy_override_case
);

async fn policy_override_case(backend: Backend) {
    let h = Harness::with(Options::on(backend)).await;
    let app = h.app_with_provider().await;
    h.connect(&app, "alice").await;
    h.set_expires_in(&app, "alice", 300).await; // outside the default 60 s skew
    assert_eq!(
        token_of(&h.lookup(&app, "alice", false).await),
        "Bearer at-1"
    );
    assert!(h.provider.calls_of("refresh_token").is_empty());

    let mut config = h.provider_config();
    config["refresh"] = json!({"skew": "10m", "failure_cooldown": "1m"});
    let reply = h.put_provider(&app.app_id, "fake", config).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(
        reply.json()["refresh"],
        json!({"skew": "10m", "failure_cooldown": "1m"})
    );
    let got = h
        .admin(
            Method::GET,
            &format!("/v1/apps/{}/providers/fake", app.app_id),
            None,
        )
        .await
        .json();
    assert_eq!(got["refresh"]["skew"], "10m");
    assert_eq!(
        token_of(&h.lookup(&app, "alice", false).await),
        "Bearer at-refreshed"
    );
    assert_eq!(h.provider.calls_of("refresh_token").len(), 1);

    let mut bad = h.provider_config();
    bad["refresh"] = json!({"max_token_lifetime": "1s"});
    h.put_provider(&app.app_id, "fake", bad)
        .await
        .assert_error(400, "bad_request");
    let mut bad = h.provider_config();
    bad["refresh"] = json!({"skew": 30});
    h.put_provider(&app.app_id, "fake", bad)
        .await
        .assert_error(400, "bad_request");
}

both_backends!(
    the_connection_api_shows_state_and_never_tokens,
    connection_api_case
);

async fn connection_api_case(backend: Backend) {
    let h = Harness::with(Options::on(backend)).await;
    let app = h.app_with_provider().await;
    h.connect(&app, "alice/1").await;
    let reply = h.connection_view(&app, "alice/1").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let view = reply.json();
    assert_eq!(view["provider"], "fake");
    assert_eq!(view["user"], "alice/1");
    assert_eq!(view["status"], "active");
    assert_eq!(view["has_refresh_token"], true);
    assert_eq!(view["failure_count"], 0);
    assert!(view["expires_at"].as_i64().is_some());
    for secret in ["at-1", "rt-1"] {
        assert!(!reply.text().contains(secret));
    }
    let list = h
        .send(
            Request::get("/v1/connections?user=alice%2F1")
                .header("x-authstamp-app", &app.app_id)
                .header("x-authstamp-app-key", &app.app_key)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text());
    assert_eq!(list.json()["connections"][0]["user"], "alice/1");
    assert_eq!(list.json()["connections"].as_array().unwrap().len(), 1);

    // A permanent failure is visible in the lookup and in the view.
    h.provider
        .respond(|_| (200, json!({"ok": false, "error": "invalid_refresh_token"})));
    h.lookup(&app, "alice/1", true)
        .await
        .assert_error(409, "reauth_required");
    let view = h.connection_view(&app, "alice/1").await.json();
    assert_eq!(view["status"], "reauth_required");
    assert_eq!(view["last_error"], "invalid_refresh_token");
    assert_eq!(view["failure_count"], 1);
    let text = h.get("/metrics").await.text();
    assert_eq!(
        metric(&text, "authstamp_connections{status=\"reauth_required\"}"),
        1
    );

    // Unknown user, another app, no user parameter, bad key.
    h.connection_view(&app, "nobody")
        .await
        .assert_error(404, "not_connected");
    let (other_id, other_key) = h.create_app(&[]).await;
    let other = ConnectedApp {
        app_id: other_id,
        app_key: other_key,
        provider: "fake".into(),
    };
    h.connection_view(&other, "alice/1")
        .await
        .assert_error(404, "not_connected");
    h.send(
        Request::get("/v1/connections")
            .header("x-authstamp-app", &app.app_id)
            .header("x-authstamp-app-key", &app.app_key)
            .body(Body::empty())
            .unwrap(),
    )
    .await
    .assert_error(400, "bad_request");
    h.send(
        Request::get("/v1/connections?user=alice")
            .header("x-authstamp-app", &app.app_id)
            .header("x-authstamp-app-key", "ask_wrong")
            .body(Body::empty())
            .unwrap(),
    )
    .await
    .assert_error(401, "bad_app_key");
}
