//! Refresh on lookup: single flight, rotation, permanent and transient
//! provider failures, cooldown, tokens without a lifetime, the connection
//! view. Every test runs on SQLite and on PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use axum::http::StatusCode;
use common::*;
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Options without the failure cooldown (tests that retry at once).
fn no_cooldown(backend: Backend) -> Options {
    let mut o = Options::on(backend);
    o.policy.failure_cooldown = Duration::ZERO;
    o
}

async fn connected(backend: Backend) -> (Harness, ConnectedApp) {
    connected_with(no_cooldown(backend)).await
}

async fn connected_with(options: Options) -> (Harness, ConnectedApp) {
    let h = Harness::with(options).await;
    let app = h.app_with_provider().await;
    h.connect(&app, "alice").await;
    (h, app)
}

fn token_of(reply: &Reply) -> String {
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    reply.json()["header"]["value"].as_str().unwrap().to_owned()
}

both_backends!(
    concurrent_lookups_of_an_expiring_token_refresh_once,
    concurrent_lookups_of_an_expiring_token_refresh_once_case
);

async fn concurrent_lookups_of_an_expiring_token_refresh_once_case(backend: Backend) {
    // The callers wait out the 300 ms refresh (a_hanging_provider_never_delays_a_valid_token
    // in tests/tests/faults.rs covers the 250 ms default).
    let (h, app) = connected_with(Options {
        valid_token_max_wait: Some(Duration::from_secs(5)),
        ..no_cooldown(backend)
    })
    .await;
    h.set_expires_in(&app, "alice", 30).await; // inside the 60 s skew
    let counter = Arc::new(AtomicUsize::new(0));
    let seen = counter.clone();
    h.provider.respond(move |call| {
        assert_eq!(call.grant_type(), "refresh_token");
        let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
        (
            200,
            json!({"access_token": format!("at-new-{n}"), "refresh_token": format!("rt-new-{n}"),
                   "expires_in": "7200", "token_type": "bearer"}),
        )
    });
    h.provider.set_delay(Duration::from_millis(300));

    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        tasks.spawn(send_to(
            h.filter_router.clone(),
            h.lookup_request(&app, "alice", false),
        ));
    }
    let replies = tasks.join_all().await;
    assert_eq!(replies.len(), 8);
    for reply in &replies {
        assert_eq!(token_of(reply), "Bearer at-new-1");
    }
    assert_eq!(
        h.provider.calls_of("refresh_token").len(),
        1,
        "single flight"
    );
    let call = &h.provider.calls_of("refresh_token")[0];
    assert_eq!(call.form["refresh_token"], "rt-1");
    assert!(call.authorization.as_deref().unwrap().starts_with("Basic "));

    let expires_at = replies[0].json()["expires_at"].as_i64().unwrap();
    let now = authstamp_token_service::db::now();
    assert!(
        (now + 7190..=now + 7210).contains(&expires_at),
        "numeric string expires_in"
    );

    // The rotated refresh token is the one used next time.
    h.provider.set_delay(Duration::ZERO);
    assert_eq!(
        token_of(&h.lookup(&app, "alice", true).await),
        "Bearer at-new-2"
    );
    let calls = h.provider.calls_of("refresh_token");
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1].form["refresh_token"], "rt-new-1");

    let (status, failures, _) = h.connection_row(&app, "alice").await;
    assert_eq!((status.as_str(), failures), ("active", 0));
    for secret in ["at-new-2", "rt-new-2", "rt-new-1"] {
        assert!(!h.stores_in_clear(secret).await, "{secret} stored in clear");
    }
}

both_backends!(
    old_refresh_token_is_kept_when_none_is_returned,
    old_refresh_token_is_kept_when_none_is_returned_case
);

async fn old_refresh_token_is_kept_when_none_is_returned_case(backend: Backend) {
    let (h, app) = connected(backend).await;
    h.provider.respond(|_| {
        (
            200,
            json!({"access_token": "at-2", "expires_in": 3600, "refresh_token": ""}),
        )
    });
    assert_eq!(
        token_of(&h.lookup(&app, "alice", true).await),
        "Bearer at-2"
    );
    h.provider
        .respond(|_| (200, json!({"access_token": "at-3", "expires_in": 3600})));
    assert_eq!(
        token_of(&h.lookup(&app, "alice", true).await),
        "Bearer at-3"
    );
    let calls = h.provider.calls_of("refresh_token");
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].form["refresh_token"], "rt-1");
    assert_eq!(
        calls[1].form["refresh_token"], "rt-1",
        "kept, never replaced by an empty one"
    );
    // Not inside the skew and not forced: served from the vault.
    assert_eq!(
        token_of(&h.lookup(&app, "alice", false).await),
        "Bearer at-3"
    );
    assert_eq!(h.provider.calls_of("refresh_token").len(), 2);
}

both_backends!(
    invalid_grant_requires_reauth,
    invalid_grant_requires_reauth_case
);

async fn invalid_grant_requires_reauth_case(backend: Backend) {
    let (h, app) = connected(backend).await;
    h.set_expires_in(&app, "alice", 10).await;
    h.provider.respond(|_| {
        (
            400,
            json!({"error": "invalid_grant", "error_description": "revoked"}),
        )
    });
    // The access token still works: served, and the refusal is not yet
    // believed (a provider's glitch must not cost the user a reconnect).
    assert_eq!(
        token_of(&h.lookup(&app, "alice", false).await),
        "Bearer at-1"
    );
    let (status, failures, error) = h.connection_row(&app, "alice").await;
    assert_eq!(status, "active");
    assert_eq!(failures, 1);
    assert_eq!(error.as_deref(), Some("unconfirmed invalid_grant"));
    // The confirming attempt, once its short wait is over: reauth_required.
    h.exec("UPDATE connections SET retry_at = NULL").await;
    h.lookup(&app, "alice", false)
        .await
        .assert_error(409, "reauth_required");
    let (status, failures, error) = h.connection_row(&app, "alice").await;
    assert_eq!(status, "reauth_required");
    assert_eq!(failures, 2);
    assert_eq!(error.as_deref(), Some("invalid_grant"));
    // From now on without asking the provider again.
    h.lookup(&app, "alice", false)
        .await
        .assert_error(409, "reauth_required");
    assert_eq!(h.provider.calls_of("refresh_token").len(), 2);

    // Connecting again heals the connection.
    h.provider.respond(|_| {
        (
            200,
            json!({"access_token": "at-fresh", "refresh_token": "rt-fresh", "expires_in": 3600}),
        )
    });
    h.connect(&app, "alice").await;
    assert_eq!(
        token_of(&h.lookup(&app, "alice", false).await),
        "Bearer at-fresh"
    );
    let (status, failures, error) = h.connection_row(&app, "alice").await;
    assert_eq!((status.as_str(), failures, error), ("active", 0, None));
}

both_backends!(
    slack_style_ok_false_is_classified_by_its_error,
    slack_style_ok_false_is_classified_by_its_error_case
);

async fn slack_style_ok_false_is_classified_by_its_error_case(backend: Backend) {
    let (h, app) = connected(backend).await;
    h.provider
        .respond(|_| (200, json!({"ok": false, "error": "invalid_refresh_token"})));
    // Permanent, and forced (the provider refused the token): at once.
    h.lookup(&app, "alice", true)
        .await
        .assert_error(409, "reauth_required");

    let (h, app) = connected(backend).await;
    h.provider
        .respond(|_| (200, json!({"ok": false, "error": "ratelimited"})));
    // Transient, and the token is still valid: served.
    assert_eq!(
        token_of(&h.lookup(&app, "alice", true).await),
        "Bearer at-1"
    );
    let (status, failures, _) = h.connection_row(&app, "alice").await;
    assert_eq!((status.as_str(), failures), ("active", 1));
}

both_backends!(
    transient_failure_serves_a_still_valid_token,
    transient_failure_serves_a_still_valid_token_case
);

async fn transient_failure_serves_a_still_valid_token_case(backend: Backend) {
    let (h, app) = connected(backend).await;
    h.set_expires_in(&app, "alice", 30).await;
    h.provider
        .respond(|_| (503, json!({"error": "temporarily_unavailable"})));
    let reply = h.lookup(&app, "alice", false).await;
    assert_eq!(token_of(&reply), "Bearer at-1");
    let (status, failures, error) = h.connection_row(&app, "alice").await;
    assert_eq!((status.as_str(), failures), ("active", 1));
    assert_eq!(error.as_deref(), Some("http_503"));

    // Expired and the provider still down: nothing left to serve.
    h.set_expires_in(&app, "alice", -5).await;
    h.lookup(&app, "alice", false)
        .await
        .assert_error(502, "provider_unavailable");
    let (status, failures, _) = h.connection_row(&app, "alice").await;
    assert_eq!((status.as_str(), failures), ("active", 2));

    // The provider is back.
    h.provider
        .respond(|_| (200, json!({"access_token": "at-back", "expires_in": 3600})));
    assert_eq!(
        token_of(&h.lookup(&app, "alice", false).await),
        "Bearer at-back"
    );
    let (_, failures, error) = h.connection_row(&app, "alice").await;
    assert_eq!((failures, error), (0, None));
}

both_backends!(
    unreachable_token_endpoint_is_transient,
    unreachable_token_endpoint_is_transient_case
);

async fn unreachable_token_endpoint_is_transient_case(backend: Backend) {
    let h = Harness::with(Options {
        provider_timeout: Duration::from_millis(300),
        // The lookup waits for the attempt's outcome.
        valid_token_max_wait: Some(Duration::from_secs(5)),
        ..no_cooldown(backend)
    })
    .await;
    let app = h.app_with_provider().await;
    h.connect(&app, "alice").await;
    h.set_expires_in(&app, "alice", 30).await;
    h.provider.set_delay(Duration::from_secs(2));
    assert_eq!(
        token_of(&h.lookup(&app, "alice", false).await),
        "Bearer at-1"
    );
    let (_, failures, error) = h.connection_row(&app, "alice").await;
    assert_eq!((failures, error.as_deref()), (1, Some("timeout")));
}

both_backends!(
    without_a_refresh_token_the_token_is_served_until_it_expires,
    without_a_refresh_token_the_token_is_served_until_it_expires_case
);

async fn without_a_refresh_token_the_token_is_served_until_it_expires_case(backend: Backend) {
    let h = Harness::with(no_cooldown(backend)).await;
    let app = h.app_with_provider().await;
    h.provider
        .respond(|_| (200, json!({"access_token": "at-only", "expires_in": 3600})));
    h.connect(&app, "alice").await;
    h.set_expires_in(&app, "alice", 30).await;
    assert_eq!(
        token_of(&h.lookup(&app, "alice", false).await),
        "Bearer at-only"
    );
    h.lookup(&app, "alice", true)
        .await
        .assert_error(409, "reauth_required");
    h.set_expires_in(&app, "alice", -1).await;
    h.lookup(&app, "alice", false)
        .await
        .assert_error(409, "reauth_required");
    assert!(h.provider.calls_of("refresh_token").is_empty());
}

both_backends!(
    tokens_without_a_lifetime_live_the_maximum_lifetime,
    tokens_without_a_lifetime_case
);

/// No `expires_in`: neither forever nor a refresh on every call, but one
/// refresh after `max_token_lifetime` (1 h by default).
async fn tokens_without_a_lifetime_case(backend: Backend) {
    let h = Harness::with(no_cooldown(backend)).await;
    let app = h.app_with_provider().await;
    h.provider.respond(|call| match call.grant_type() {
        "authorization_code" => (
            200,
            json!({"access_token": "at-forever", "refresh_token": "rt-1"}),
        ),
        _ => (200, json!({"access_token": "at-renewed"})),
    });
    h.connect(&app, "alice").await;
    let now = authstamp_token_service::db::now();
    for _ in 0..5 {
        let reply = h.lookup(&app, "alice", false).await;
        assert_eq!(token_of(&reply), "Bearer at-forever");
        let expires_at = reply.json()["expires_at"].as_i64().unwrap();
        assert!(
            (now + 3590..=now + 3610).contains(&expires_at),
            "the filter caches it at most until the refresh"
        );
    }
    assert!(
        h.provider.calls_of("refresh_token").is_empty(),
        "not on every call"
    );
    // An hour later: exactly one refresh, then served again from the vault.
    h.exec(&format!(
        "UPDATE connections SET issued_at = {} WHERE user_id = 'alice'",
        now - 3601
    ))
    .await;
    for _ in 0..3 {
        assert_eq!(
            token_of(&h.lookup(&app, "alice", false).await),
            "Bearer at-renewed"
        );
    }
    assert_eq!(h.provider.calls_of("refresh_token").len(), 1);
    let view = h.connection_view(&app, "alice").await.json();
    assert_eq!(view["expires_at"], serde_json::Value::Null);
    assert!(view["refresh_due_at"].as_i64().unwrap() >= now + 3590);
    assert_eq!(
        token_of(&h.lookup(&app, "alice", true).await),
        "Bearer at-renewed"
    );
    assert_eq!(h.provider.calls_of("refresh_token").len(), 2, "forced");
}

both_backends!(refresh_metrics, refresh_metrics_case);

async fn refresh_metrics_case(backend: Backend) {
    let (h, app) = connected(backend).await;
    h.provider.respond(|_| (500, json!({})));
    assert_eq!(h.lookup(&app, "alice", true).await.status, StatusCode::OK);
    h.provider
        .respond(|_| (401, json!({"error": "invalid_client"})));
    h.lookup(&app, "alice", true)
        .await
        .assert_error(409, "reauth_required");
    let text = h.get("/metrics").await.text();
    for line in [
        "authstamp_refreshes_total{outcome=\"ok\"} 0",
        "authstamp_refreshes_total{outcome=\"transient\"} 1",
        "authstamp_refreshes_total{outcome=\"permanent\"} 1",
        "authstamp_provider_token_calls_total{grant=\"refresh_token\"} 2",
        "authstamp_token_lookups_total{outcome=\"reauth_required\"} 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
}

both_backends!(
    forced_refreshes_are_bounded,
    forced_refreshes_are_bounded_case
);

/// 30 provider 401s (forced lookups) at once and 30 more after them: one
/// refresh at the provider, every lookup answered with the current token;
/// once the interval is over a forced lookup refreshes again.
async fn forced_refreshes_are_bounded_case(backend: Backend) {
    let mut options = no_cooldown(backend);
    options.policy.forced_refresh_interval = Duration::from_secs(30);
    let (h, app) = connected_with(options).await;
    let counter = Arc::new(AtomicUsize::new(0));
    let seen = counter.clone();
    h.provider.respond(move |_| {
        let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
        (
            200,
            json!({"access_token": format!("at-new-{n}"), "refresh_token": format!("rt-new-{n}"),
                   "expires_in": 3600, "token_type": "bearer"}),
        )
    });
    h.provider.set_delay(Duration::from_millis(100));

    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..30 {
        tasks.spawn(send_to(
            h.filter_router.clone(),
            h.lookup_request(&app, "alice", true),
        ));
    }
    for reply in tasks.join_all().await {
        assert_eq!(token_of(&reply), "Bearer at-new-1");
    }
    for _ in 0..30 {
        assert_eq!(
            token_of(&h.lookup(&app, "alice", true).await),
            "Bearer at-new-1"
        );
    }
    assert_eq!(h.provider.calls_of("refresh_token").len(), 1);
    let text = h.get("/metrics").await.text();
    assert!(
        text.lines()
            .any(|l| l == "authstamp_forced_refreshes_total 1"),
        "{text}"
    );
    let refused = text
        .lines()
        .find_map(|l| l.strip_prefix("authstamp_forced_refresh_refused_total "))
        .unwrap()
        .parse::<u64>()
        .unwrap();
    assert!(refused >= 30, "{refused} refused");

    // The interval is over (the last refresh 31 s ago): forcing works again.
    h.exec(&format!(
        "UPDATE connections SET last_attempt_at = last_attempt_at - 31 WHERE app_id = '{}'",
        app.app_id
    ))
    .await;
    assert_eq!(
        token_of(&h.lookup(&app, "alice", true).await),
        "Bearer at-new-2"
    );
    assert_eq!(h.provider.calls_of("refresh_token").len(), 2);
}

both_backends!(
    a_healed_provider_is_probed_within_seconds_and_every_cooldown_ends,
    a_healed_provider_is_probed_within_seconds_and_every_cooldown_ends_case
);

/// After failures the connections of a provider cool down (here 60 s), but
/// one attempt per 500 ms probes the provider anyway: once it answers, every
/// connection of it refreshes at its next lookup instead of waiting. Each
/// recovery counts in the time-to-recover histogram.
async fn a_healed_provider_is_probed_within_seconds_and_every_cooldown_ends_case(backend: Backend) {
    let mut options = Options::on(backend);
    options.policy.failure_cooldown = Duration::from_secs(60);
    let (h, app) = connected_with(options).await;
    h.connect(&app, "bob").await;
    h.set_expires_in(&app, "alice", 30).await;
    h.set_expires_in(&app, "bob", 30).await;
    h.provider
        .respond(|_| (503, json!({"error": "temporarily_unavailable"})));
    for user in ["alice", "bob"] {
        assert_eq!(token_of(&h.lookup(&app, user, false).await), "Bearer at-1");
    }
    assert_eq!(h.provider.calls_of("refresh_token").len(), 2);
    let counter = Arc::new(AtomicUsize::new(0));
    let seen = counter.clone();
    h.provider.respond(move |_| {
        let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
        (
            200,
            json!({"access_token": format!("at-back-{n}"), "expires_in": 3600}),
        )
    });
    // Within the probe interval of the last failure: the cooldown holds.
    assert_eq!(
        token_of(&h.lookup(&app, "alice", false).await),
        "Bearer at-1"
    );
    assert_eq!(h.provider.calls_of("refresh_token").len(), 2);
    // The interval is a time rule: it has to pass.
    tokio::time::sleep(
        authstamp_token_service::refresh::PROBE_INTERVAL + Duration::from_millis(100),
    )
    .await;
    assert_eq!(
        token_of(&h.lookup(&app, "alice", false).await),
        "Bearer at-back-1",
        "the probe refreshed, 58 s before the cooldown would have ended"
    );
    assert_eq!(
        token_of(&h.lookup(&app, "bob", false).await),
        "Bearer at-back-2",
        "the probe's success ended bob's cooldown too"
    );
    let text = h.get("/metrics").await.text();
    for line in [
        "authstamp_provider_probes_total 1",
        "authstamp_refresh_recoveries_total 2",
        "authstamp_refresh_time_to_recover_seconds_bucket{le=\"5.0\"} 2",
        "authstamp_refresh_time_to_recover_seconds_count 2",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
}

both_backends!(
    one_invalid_grant_glitch_while_the_token_works_costs_no_reconnect,
    one_invalid_grant_glitch_while_the_token_works_costs_no_reconnect_case
);

/// A provider answers one refresh with a 200 carrying invalid_grant, then
/// works again: the still-valid token is served meanwhile and the
/// connection never becomes reauth_required.
async fn one_invalid_grant_glitch_while_the_token_works_costs_no_reconnect_case(backend: Backend) {
    let (h, app) = connected(backend).await;
    h.set_expires_in(&app, "alice", 30).await;
    h.provider
        .respond(|_| (200, json!({"error": "invalid_grant"})));
    assert_eq!(
        token_of(&h.lookup(&app, "alice", false).await),
        "Bearer at-1"
    );
    let (status, _, error) = h.connection_row(&app, "alice").await;
    assert_eq!(status, "active");
    assert_eq!(error.as_deref(), Some("unconfirmed invalid_grant"));
    h.provider
        .respond(|_| (200, json!({"access_token": "at-fine", "expires_in": 3600})));
    h.exec("UPDATE connections SET retry_at = NULL").await;
    assert_eq!(
        token_of(&h.lookup(&app, "alice", false).await),
        "Bearer at-fine"
    );
    let (status, failures, error) = h.connection_row(&app, "alice").await;
    assert_eq!((status.as_str(), failures, error), ("active", 0, None));
}
