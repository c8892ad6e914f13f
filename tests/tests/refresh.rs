//! Refresh that never loses a connection, with real processes: replicas of
//! the token service on a real PostgreSQL, the stand-in provider with its
//! quirks, a real Envoy, and a real SIGKILL in the middle of a refresh.

use authstamp_e2e::replicas::{lookup_at, metric, Replicas};
use authstamp_e2e::stack::metric_sum;
use authstamp_e2e::{Stack, StackOptions};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::{Duration, Instant};

fn token(body: &Value) -> String {
    body["header"]["value"]
        .as_str()
        .unwrap_or_else(|| panic!("no token in {body}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_lookups_over_two_replicas_on_postgres_refresh_once() {
    let replicas = Replicas::start("refresh_200_over_2_replicas", 2, true, &[]).await;
    replicas
        .set_quirks(json!({"rotate_refresh_tokens": true}))
        .await;
    replicas.connect_user_expiring("alice", 1).await;
    let (_, before) = replicas.lookup(0, "nobody").await;
    assert_eq!(before["error"], "not_connected");
    // Let alice's token expire.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // A slow token endpoint keeps the refresh in flight while everyone asks,
    // so the other replica's callers meet the lease even on a loaded machine.
    replicas.set_quirks(json!({"token_delay_ms": 1500})).await;

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let http = replicas.http.clone();
        let base = replicas.filter_urls[i % 2].clone();
        let (app_id, app_key) = (replicas.app_id.clone(), replicas.app_key.clone());
        tasks.spawn(async move { lookup_at(&http, &base, &app_id, &app_key, "alice").await });
    }
    let answers = tasks.join_all().await;
    let tokens: HashSet<String> = answers
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, StatusCode::OK, "{body}");
            token(body)
        })
        .collect();
    assert_eq!(tokens.len(), 1, "every caller got the same token");
    assert_eq!(
        replicas.refresh_calls().await,
        1,
        "exactly one refresh at the provider"
    );
    // It is the new one: the provider's echo says it came from a refresh.
    let echo: Value = replicas
        .http
        .get(format!("{}/api/me", replicas.standin_url))
        .header("authorization", tokens.iter().next().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echo["token_grant"], "refresh_token");
    let (a, b) = (replicas.metrics(0).await, replicas.metrics(1).await);
    assert_eq!(
        metric(&a, "authstamp_refreshes_total{outcome=\"ok\"}")
            + metric(&b, "authstamp_refreshes_total{outcome=\"ok\"}"),
        1
    );
    let waits = metric(&a, "authstamp_refresh_lease_waits_total")
        + metric(&b, "authstamp_refresh_lease_waits_total");
    assert!(waits >= 1, "the other replica waited for the lease");
    let view = replicas.connection(1, "alice").await;
    assert_eq!(view["status"], "active");
    assert_eq!(view["failure_count"], 0);
    eprintln!("200 lookups over 2 replicas: 1 refresh, {waits} lease waits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_requests_through_envoy_with_two_workers_refresh_once() {
    let stack = Stack::start(
        "refresh_500_through_envoy",
        StackOptions {
            envoy_concurrency: 2,
            ..StackOptions::default()
        },
    )
    .await;
    stack
        .set_quirks(json!({"access_token_ttl_secs": 1, "rotate_refresh_tokens": true}))
        .await;
    stack.connect_user("zoe").await;
    stack
        .set_quirks(json!({"access_token_ttl_secs": 3600, "token_delay_ms": 200}))
        .await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // expired
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(600)
        .build()
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..500 {
        let request = http
            .get(format!("{}/api/items?i={i}", stack.envoy_url))
            .header("x-authstamp-provider", authstamp_e2e::stack::PROVIDER)
            .header("x-authstamp-user", "zoe")
            .header("x-authstamp-app", &stack.app_id)
            .header("x-authstamp-app-key", &stack.app_key);
        tasks.spawn(async move {
            let response = request.send().await.expect("request through Envoy");
            let status = response.status();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            (status, body)
        });
    }
    let answers = tasks.join_all().await;
    let failed: Vec<_> = answers
        .iter()
        .filter(|(status, _)| *status != StatusCode::OK)
        .collect();
    assert!(
        failed.is_empty(),
        "{} failed, e.g. {:?}",
        failed.len(),
        failed.first()
    );
    let stamped: HashSet<String> = answers
        .iter()
        .map(|(_, echo)| {
            assert_eq!(echo["token_grant"], "refresh_token", "{echo}");
            echo["headers"]["authorization"][0]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(stamped.len(), 1);
    assert_eq!(
        stack.refresh_calls().await,
        1,
        "one refresh call for 500 requests"
    );
    let lookups = stack.token_lookups().await;
    eprintln!(
        "500 requests through Envoy (2 workers): 1 refresh, {lookups} token lookups, 0 failed"
    );
}

/// SIGKILL of the replica holding the lease while its provider call is in
/// flight. Without rotation the next replica refreshes with the same
/// refresh token: new token stored. With rotation the provider had already
/// rotated (the new refresh token died with the killed process), so the
/// old one is reuse, the provider revokes the family, and the connection is
/// reported `reauth_required`, never served broken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_refresh_loses_no_connection() {
    let mut replicas = Replicas::start(
        "refresh_sigkill",
        2,
        true,
        &["--provider-timeout", "3s", "--refresh-lease", "4s"],
    )
    .await;
    replicas.connect_user_expiring("bob", 1).await;
    replicas.connect_user_expiring("carol", 1).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // 1. No rotation: the refresh token survives the crash.
    replicas
        .set_quirks(json!({"token_delay_ms": 2500, "delay_after_issuing": true}))
        .await;
    let (victim, survivor) = (0, 1);
    let doomed = replicas.doomed_lookup(victim, "bob");
    replicas
        .wait_for_refresh_calls(1, Duration::from_secs(10))
        .await;
    replicas.services[victim].kill(); // SIGKILL, mid-refresh
    let _ = doomed.await;
    replicas.set_quirks(json!({"token_delay_ms": 0})).await;
    let started = Instant::now();
    let (status, body) = replicas.lookup(survivor, "bob").await;
    let waited = started.elapsed();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(token(&body).starts_with("Bearer sat_"));
    assert_eq!(
        replicas.refresh_calls().await,
        2,
        "the survivor refreshed once"
    );
    assert!(
        waited < Duration::from_secs(6),
        "bounded by the lease: {waited:?}"
    );
    let metrics = replicas.metrics(survivor).await;
    assert_eq!(
        metric(&metrics, "authstamp_refresh_lease_takeovers_total"),
        1
    );
    let view = replicas.connection(survivor, "bob").await;
    assert_eq!(view["status"], "active", "{view}");
    assert_eq!(view["failure_count"], 0);
    eprintln!("SIGKILL without rotation: survivor waited {waited:?}, new token stored");

    // 2. Rotation: the killed replica's answer carried the only copy of the
    // new refresh token.
    let victim = replicas.add_replica(&[]);
    replicas
        .set_quirks(json!({
            "rotate_refresh_tokens": true,
            "token_delay_ms": 2500,
            "delay_after_issuing": true
        }))
        .await;
    let doomed = replicas.doomed_lookup(victim, "carol");
    replicas
        .wait_for_refresh_calls(3, Duration::from_secs(10))
        .await;
    replicas.services[victim].kill();
    let _ = doomed.await;
    replicas.set_quirks(json!({"token_delay_ms": 0})).await;
    let (status, body) = replicas.lookup(survivor, "carol").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"], "reauth_required");
    let view = replicas.connection(survivor, "carol").await;
    assert_eq!(view["status"], "reauth_required", "{view}");
    assert_eq!(view["last_error"], "invalid_grant");
    // Never served broken: every later lookup says so too, without asking the provider.
    let (status, _) = replicas.lookup(survivor, "carol").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(replicas.refresh_calls().await, 4);
    // Connecting again heals it.
    replicas.connect_user_via(survivor, "carol").await;
    let (status, body) = replicas.lookup(survivor, "carol").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eprintln!("SIGKILL with rotation: reauth_required reported, reconnect heals");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_refresher_runs_once_across_two_replicas() {
    let replicas = Replicas::start(
        "refresh_background",
        2,
        true,
        &["--background-interval", "500ms"],
    )
    .await;
    // A 4 s token: the background renews it after half its life, before any lookup.
    replicas.connect_user_expiring("dana", 4).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while replicas.refresh_calls().await < 1 {
        assert!(Instant::now() < deadline, "no background refresh");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        replicas.refresh_calls().await,
        1,
        "once, not once per replica"
    );
    let (a, b) = (replicas.metrics(0).await, replicas.metrics(1).await);
    assert_eq!(
        metric(&a, "authstamp_background_leader") + metric(&b, "authstamp_background_leader"),
        1,
        "one leader"
    );
    assert_eq!(
        metric(&a, "authstamp_background_refreshes_total")
            + metric(&b, "authstamp_background_refreshes_total"),
        1
    );
    assert_eq!(metric_sum(&a, "authstamp_token_lookups_total"), 0);
    let view = replicas.connection(0, "dana").await;
    assert!(view["last_refresh_at"].as_i64().is_some(), "{view}");
    assert!(
        view["expires_at"].as_i64().unwrap() > view["last_refresh_at"].as_i64().unwrap() + 3000
    );
}

/// Connects `user` with a token that has expired when this returns.
async fn expired(stack: &Stack, user: &str) {
    stack.set_quirks(json!({"access_token_ttl_secs": 1})).await;
    stack.connect_user(user).await;
    stack
        .set_quirks(json!({"access_token_ttl_secs": 3600}))
        .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
}

/// Each provider failure mode, as the app sees it through Envoy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_modes_as_the_app_sees_them_through_envoy() {
    let stack = Stack::start("refresh_failure_modes", StackOptions::default()).await;
    let call = |user: &str| stack.call(Method::GET, "/api/me", user).send();
    let error_of = |response: reqwest::Response| async move {
        let status = response.status();
        let header = response
            .headers()
            .get("x-authstamp-error")
            .map(|v| v.to_str().unwrap().to_string());
        let body: Value = response.json().await.unwrap();
        assert_eq!(header.as_deref(), body["error"].as_str(), "{body}");
        (status, body["error"].as_str().unwrap_or("").to_string())
    };

    // 5xx at the token endpoint with an expired token: 502, then the cooldown
    // answers at once without asking the provider again.
    expired(&stack, "u5xx").await;
    stack.set_quirks(json!({"token_status": 503})).await;
    let before = stack.refresh_calls().await;
    let (status, code) = error_of(call("u5xx").await.unwrap()).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_GATEWAY, "provider_unavailable")
    );
    for _ in 0..5 {
        let (status, _) = error_of(call("u5xx").await.unwrap()).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
    }
    assert_eq!(
        stack.refresh_calls().await,
        before + 1,
        "no hammering during the cooldown"
    );
    stack.set_quirks(json!({"token_status": null})).await;

    // HTTP 200 with an error body (Slack/GitHub style), permanent: 409.
    expired(&stack, "u200").await;
    stack
        .set_quirks(json!({"error_in_200": "invalid_grant"}))
        .await;
    let (status, code) = error_of(call("u200").await.unwrap()).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::CONFLICT, "reauth_required")
    );
    stack.set_quirks(json!({"error_in_200": null})).await;
    // Still 409 afterwards (the connection is marked), until the user connects again.
    let (status, _) = error_of(call("u200").await.unwrap()).await;
    assert_eq!(status, StatusCode::CONFLICT);
    stack.connect_user("u200").await;
    assert_eq!(call("u200").await.unwrap().status(), StatusCode::OK);

    // The user revoked the app at the provider: invalid_grant, 409.
    expired(&stack, "urevoked").await;
    stack
        .http
        .post(format!(
            "{}/_standin/revoke?login=urevoked",
            stack.standin_url
        ))
        .send()
        .await
        .unwrap();
    let (status, code) = error_of(call("urevoked").await.unwrap()).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::CONFLICT, "reauth_required")
    );

    // A refresh answer without a new refresh token keeps the old one: two
    // refreshes in a row both work.
    stack
        .set_quirks(json!({"omit_refresh_token_on_refresh": true, "rotate_refresh_tokens": true}))
        .await;
    expired(&stack, "ukeep").await;
    assert_eq!(call("ukeep").await.unwrap().status(), StatusCode::OK);
    let lookup = |user: &str| {
        stack
            .filter_lookup(&json!({"provider": authstamp_e2e::stack::PROVIDER, "user": user, "force_refresh": true}))
            .send()
    };
    assert_eq!(lookup("ukeep").await.unwrap().status(), StatusCode::OK);
    assert_eq!(lookup("ukeep").await.unwrap().status(), StatusCode::OK);
    stack
        .set_quirks(json!({"omit_refresh_token_on_refresh": false, "rotate_refresh_tokens": false}))
        .await;

    // A slow token endpoint (past the provider timeout) with an expired token: 502.
    expired(&stack, "uslow").await;
    stack.set_quirks(json!({"token_delay_ms": 12_000})).await;
    let started = Instant::now();
    let (status, code) = error_of(call("uslow").await.unwrap()).await;
    // The filter gives up after its own 2 s timeout; the refresh goes on in the
    // token service and ends as a transient failure.
    assert!(
        matches!(
            code.as_str(),
            "token_service_unavailable" | "provider_unavailable"
        ),
        "{status} {code}"
    );
    assert!(started.elapsed() < Duration::from_secs(11));
    stack.set_quirks(json!({"token_delay_ms": 0})).await;

    // No expires_in: served from the vault, not refreshed on every call.
    stack.set_quirks(json!({"omit_expires_in": true})).await;
    stack.connect_user("unoexp").await;
    let before = stack.refresh_calls().await;
    for _ in 0..5 {
        assert_eq!(call("unoexp").await.unwrap().status(), StatusCode::OK);
    }
    assert_eq!(
        stack.refresh_calls().await,
        before,
        "no refresh on every call"
    );
    let view: Value = stack
        .http
        .get(format!(
            "{}/v1/connections/standin/unoexp",
            stack.service_url
        ))
        .header("x-authstamp-app", &stack.app_id)
        .header("x-authstamp-app-key", &stack.app_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(view["expires_at"].is_null(), "{view}");
    let due = view["refresh_due_at"].as_i64().unwrap() - view["created_at"].as_i64().unwrap();
    assert_eq!(
        due, 3600,
        "refreshed after the maximum lifetime, never forever"
    );
}
