//! The filter's cache end to end: coalescing across Envoy workers, the
//! bounded cache, the forced refresh after a provider 401, and the filter's
//! metrics in Envoy's admin output.

use authstamp_testkit::{eventually, json_of};
use std::time::{Duration, Instant};

use authstamp_e2e::stack::{
    local_bootstrap_replacing, metric_sum, MAX_CACHE_TTL, NATIVE_STATS_PREFIX,
};
use authstamp_e2e::{FilterBuild, Stack, StackOptions};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::task::JoinSet;

fn bearer_seen(echo: &Value) -> String {
    echo["headers"]["authorization"][0]
        .as_str()
        .expect("authorization at the provider")
        .to_string()
}

async fn admin_text(stack: &Stack, path: &str) -> String {
    stack
        .http
        .get(format!("{}{path}", stack.envoy_admin_url))
        .send()
        .await
        .expect("envoy admin")
        .text()
        .await
        .expect("admin text")
}

/// Waits (up to 10 s) until `name` reaches `at_least`: hit counts are
/// handed to Envoy in batches (every second), histograms on stats flushes.
async fn wait_for_metric(stack: &Stack, name: &str, at_least: u64) -> u64 {
    let what = format!("{name} >= {at_least}");
    eventually(&what, Duration::from_secs(10), || async move {
        let value = stack.envoy_metric(name).await;
        (value >= at_least).then_some(value)
    })
    .await
}

/// Envoy's tcmalloc `allocated` bytes (admin /memory).
async fn envoy_allocated(stack: &Stack) -> u64 {
    let memory: Value =
        serde_json::from_str(&admin_text(stack, "/memory").await).expect("memory json");
    memory["allocated"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("allocated")
}

/// Replaces the stack's Envoy by one whose filter configuration is the
/// local bootstrap's plus `extra` (JSON members, e.g. `"cache_capacity": 4`).
async fn restart_envoy_with(stack: &mut Stack, extra: &str, concurrency: u32) {
    restart_envoy_replacing(stack, &format!("{MAX_CACHE_TTL}, {extra}"), concurrency).await;
}

/// Replaces the stack's Envoy by one whose filter configuration is the
/// local bootstrap's with [`MAX_CACHE_TTL`] replaced by `with`.
async fn restart_envoy_replacing(stack: &mut Stack, with: &str, concurrency: u32) {
    let bootstrap = local_bootstrap_replacing(&stack.filter_url, with);
    stack.restart_envoy_on(&bootstrap, concurrency).await;
}

/// Envoy workers of the coalescing test.
const WORKERS: u32 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_cold_requests_on_four_workers_make_one_lookup_natively_at_most_one_per_worker_in_wasm(
) {
    let stack = Stack::start(
        "coalescing",
        StackOptions {
            envoy_concurrency: WORKERS,
            ..StackOptions::default()
        },
    )
    .await;
    // An expired token and a slow provider: the first lookup refreshes for
    // 400 ms, so every request of the burst arrives while it is in flight.
    stack.set_quirks(json!({"access_token_ttl_secs": 1})).await;
    stack.connect_user("cold").await;
    stack
        .set_quirks(json!({"access_token_ttl_secs": 3600, "token_delay_ms": 400}))
        .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(stack.token_lookups().await, 0);

    let mut burst = JoinSet::new();
    for i in 0..200 {
        let request = stack.call(Method::GET, &format!("/api/burst?i={i}"), "cold");
        burst.spawn(async move { request.send().await });
    }
    let mut tokens = Vec::new();
    while let Some(result) = burst.join_next().await {
        let response = result.expect("task").expect("response");
        assert_eq!(response.status(), StatusCode::OK);
        let echo = json_of(response).await;
        assert_eq!(echo["user"], "cold");
        assert_eq!(echo["token_grant"], "refresh_token");
        tokens.push(bearer_seen(&echo));
    }
    assert_eq!(tokens.len(), 200);
    assert!(tokens.iter().all(|t| *t == tokens[0]), "one token for all");

    let lookups = stack.token_lookups().await;
    eprintln!("token lookups for 200 concurrent cold requests on {WORKERS} workers: {lookups}");
    match authstamp_e2e::filter_build() {
        // One cache and one marker store for every worker, whose first
        // claim of a marker is exclusive too.
        FilterBuild::Native => assert_eq!(lookups, 1, "one lookup for all workers"),
        // Shared data: only the first claim of a never-written marker can
        // race, so at most one lookup per worker (docs/filter.md).
        FilterBuild::Wasm => assert!(
            (1..=u64::from(WORKERS)).contains(&lookups),
            "{lookups} lookups"
        ),
    }
    assert_eq!(stack.refresh_calls().await, 1);

    // Every worker took connections (per-worker listener stats).
    let stats = admin_text(&stack, "/stats?filter=worker_.\\.downstream_cx_total").await;
    let per_worker: Vec<u64> = stats
        .lines()
        .filter(|l| l.starts_with("listener.") && !l.contains("admin"))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    assert_eq!(per_worker.len(), WORKERS as usize, "{stats}");
    assert!(per_worker.iter().all(|n| *n > 0), "{stats}");

    let calls = stack
        .envoy_metric("authstamp_token_service_calls_total")
        .await;
    assert_eq!(calls, lookups);
    let coalesced = stack.envoy_metric("authstamp_coalesced_total").await;
    let hits = wait_for_metric(
        &stack,
        "authstamp_cache_hits_total",
        200 - calls - coalesced,
    )
    .await;
    eprintln!(
        "{calls} token-service calls, {coalesced} waited for a lookup in flight, {hits} cache hits"
    );
    assert_eq!(
        calls + coalesced + hits,
        200,
        "every request asked, waited for a lookup in flight, or hit the cache"
    );
    assert!(
        coalesced >= 100,
        "the burst waited for the lookup in flight: {coalesced}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_small_cache_holds_many_users_without_growing_or_mixing_tokens() {
    let mut stack = Stack::start("bounded_cache", StackOptions::default()).await;
    restart_envoy_with(&mut stack, "\"cache_capacity\": 4", 1).await;

    // Twelve real users through four slots: constant eviction, never a
    // wrong token (the stand-in reports whose token it was given).
    let users: Vec<String> = (0..12).map(|i| format!("user{i}")).collect();
    for user in &users {
        stack.connect_user(user).await;
    }
    for round in 0..3 {
        for user in &users {
            let response = stack
                .call(Method::GET, &format!("/api/whoami?r={round}"), user)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            let echo = json_of(response).await;
            assert_eq!(
                echo["user"],
                user.as_str(),
                "round {round}: another user's token"
            );
        }
    }
    let lookups = stack.token_lookups().await;
    assert!(
        lookups > 12,
        "entries were evicted and looked up again: {lookups}"
    );

    // Thousands of users (seeded straight into the vault, on a provider whose
    // API base is the stand-in's unauthenticated stats page).
    let response = stack
        .admin(
            Method::PUT,
            &format!("/v1/apps/{}/providers/bulk", stack.app_id),
        )
        .json(&json!({
            "client_id": "bulk",
            "client_secret": "bulk-secret",
            "authorize_url": format!("{}/oauth/authorize", stack.standin_url),
            "token_url": format!("{}/oauth/token", stack.standin_url),
            "api_base_url": format!("{}/_standin", stack.standin_url),
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "{:?}",
        response.text().await
    );
    let users = 2000u32;
    stack.seed_users("bulk", "bulk-", users.into(), &[]);

    let mut allocated = Vec::new();
    for batch in 0..4 {
        let mut requests = JoinSet::new();
        for n in (batch * users / 4)..((batch + 1) * users / 4) {
            let request = stack
                .http
                .get(format!("{}/stats", stack.envoy_url))
                .header("x-authstamp-provider", "bulk")
                .header("x-authstamp-user", format!("bulk-{n}"))
                .header("x-authstamp-app", &stack.app_id)
                .header("x-authstamp-app-key", &stack.app_key);
            requests.spawn(async move { request.send().await });
            if requests.len() >= 16 {
                let response = requests.join_next().await.unwrap().unwrap().unwrap();
                assert_eq!(response.status(), StatusCode::OK);
            }
        }
        while let Some(result) = requests.join_next().await {
            assert_eq!(result.unwrap().unwrap().status(), StatusCode::OK);
        }
        allocated.push(envoy_allocated(&stack).await);
    }
    let slots = stack.envoy_metric("authstamp_cache_slots").await;
    let misses = stack.envoy_metric("authstamp_cache_misses_total").await;
    eprintln!(
        "capacity 4: {slots} slots after {} users, {misses} misses; Envoy allocated per 500 users: {allocated:?}",
        users + 12
    );
    assert!(
        (1..=4).contains(&slots),
        "{slots} cache slots for capacity 4"
    );
    assert!(misses >= u64::from(users), "{misses}");
    // Memory stays flat: the last 1,500 users add no cache entries.
    let growth = allocated[3].saturating_sub(allocated[0]);
    assert!(
        growth < 2 * 1024 * 1024,
        "Envoy grew {growth} bytes: {allocated:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_401_refreshes_the_token_for_the_replay_and_the_next_request() {
    let stack = Stack::start("provider_401", StackOptions::default()).await;
    stack.connect_user("rita").await;

    let first = json_of(
        stack
            .call(Method::GET, "/api/me", "rita")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(first["token_grant"], "authorization_code");
    let refused = bearer_seen(&first);
    assert_eq!(stack.token_lookups().await, 1);

    // The provider refuses the token, and the fresh one it is replayed
    // with (see heal.rs): its second 401 reaches the app, marked as such.
    let response = stack
        .call(Method::GET, "/api/me", "rita")
        .header("x-standin-status", "401")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers().get("x-standin-echo").unwrap(), "1");
    assert_eq!(
        response.headers().get("x-authstamp-error").unwrap(),
        "token_refused"
    );

    // The next request carries a fresh token from a forced refresh.
    let next = json_of(
        stack
            .call(Method::GET, "/api/me", "rita")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(next["user"], "rita");
    assert_eq!(next["token_grant"], "refresh_token", "{next}");
    let fresh = bearer_seen(&next);
    assert_ne!(fresh, refused);
    assert_eq!(stack.refresh_calls().await, 1);
    assert_eq!(stack.token_lookups().await, 2, "one forced lookup");

    // And it is cached again.
    let again = json_of(
        stack
            .call(Method::GET, "/api/me", "rita")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(bearer_seen(&again), fresh);
    assert_eq!(stack.token_lookups().await, 2);
    assert_eq!(
        stack
            .envoy_metric("authstamp_provider_unauthorized_total")
            .await,
        2,
        "the first attempt's and the replay's"
    );
    assert_eq!(
        stack.envoy_metric("authstamp_forced_refreshes_total").await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_metrics_are_visible_in_envoy_prometheus_output() {
    let stack = Stack::start("filter_metrics", StackOptions::default()).await;
    stack.connect_user("mia").await;
    for _ in 0..5 {
        let response = stack
            .call(Method::GET, "/api/x", "mia")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let response = stack
        .call(Method::GET, "/api/x", "nobody")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let response = stack
        .http
        .get(format!("{}/api/x", stack.envoy_url))
        .header("x-authstamp-user", "mia")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    assert_eq!(
        wait_for_metric(&stack, "authstamp_cache_hits_total", 4).await,
        4
    );
    assert_eq!(
        wait_for_metric(&stack, "authstamp_stamped_total", 5).await,
        5
    );
    assert_eq!(
        wait_for_metric(&stack, "authstamp_token_fetch_us_count", 2).await,
        2,
        "the fetch-latency histogram"
    );
    let text = admin_text(&stack, "/stats/prometheus")
        .await
        .replace(NATIVE_STATS_PREFIX, "");
    let expect = [
        ("authstamp_cache_misses_total", 2),
        ("authstamp_coalesced_total", 0),
        ("authstamp_token_service_calls_total", 2),
        ("authstamp_errors_not_connected_total", 1),
        ("authstamp_errors_bad_request_total", 1),
        ("authstamp_errors_internal_total", 0),
        ("authstamp_cache_slots", 1),
        ("authstamp_provider_unauthorized_total", 0),
    ];
    for (name, value) in expect {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} missing:\n{text}"
        );
        assert_eq!(metric_sum(&text, name), value, "{name}");
    }
    assert!(
        text.contains("# TYPE authstamp_token_fetch_us histogram"),
        "{text}"
    );
    assert!(
        text.contains("authstamp_token_fetch_us_bucket{le="),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_token_service_stopped_a_cached_token_still_valid_is_served() {
    let mut stack = Stack::start("stale_if_error", StackOptions::default()).await;
    stack.connect_user("sam").await;
    stack.connect_user("tia").await;
    // Entries valid for 1 s in the cache; the provider's tokens for an hour.
    restart_envoy_replacing(&mut stack, "\"max_cache_ttl\": \"1s\"", 1).await;
    let first = stack
        .call(Method::GET, "/api/me", "sam")
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let token = bearer_seen(&json_of(first).await);

    stack.token_service.kill();
    // Until the entry is past its cache validity the requests are plain
    // hits; then each is a failed lookup answered from the stale entry.
    let deadline = Instant::now() + Duration::from_secs(10);
    while stack.envoy_metric("authstamp_stale_served_total").await == 0 {
        assert!(Instant::now() < deadline, "no stale token served");
        let response = stack
            .call(Method::GET, "/api/me", "sam")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(bearer_seen(&json_of(response).await), token);
    }
    let response = stack
        .call(Method::GET, "/api/me", "sam")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(bearer_seen(&json_of(response).await), token);
    assert!(stack.envoy_metric("authstamp_stale_served_total").await >= 2);

    // A user without a cached token gets the outage.
    let response = stack
        .call(Method::GET, "/api/me", "tia")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        response.headers().get("x-authstamp-error").unwrap(),
        "token_service_unavailable"
    );
}
