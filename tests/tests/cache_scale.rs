//! Many distinct users through a small cache, end to end: each of
//! `AUTHSTAMP_SCALE_USERS` users (12,000 by default; `make
//! test-native-scale` runs 1,000,000) is seeded in the token service and
//! asked for once through Envoy with `cache_capacity: 1024`, so every
//! request is a miss that evicts another user's entry. Every response must
//! carry that user's own token (the upstream echoes the credential it got),
//! and Envoy's resident and allocated memory must stay flat from the
//! warm-up to the end.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use authstamp_e2e::deploy::CredentialEcho;
use authstamp_e2e::stack::{local_bootstrap_replacing, MAX_CACHE_TTL};
use authstamp_e2e::{Stack, StackOptions};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::task::JoinSet;

const CAPACITY: u64 = 1024;
/// Requests in flight from the test (keep-alive connections to Envoy).
const IN_FLIGHT: u64 = 32;
const PROVIDER: &str = "scale";
const USER_PREFIX: &str = "u";
const TOKEN_PREFIX: &str = "tok-";
/// Memory samples: one after each tenth of the users, the first being the warm-up.
const PHASES: u64 = 10;
/// Envoy's RSS at the end may exceed its RSS after the warm-up by at most this.
const FLAT_WITHIN: f64 = 0.10;

fn scale_users() -> u64 {
    match std::env::var("AUTHSTAMP_SCALE_USERS") {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("AUTHSTAMP_SCALE_USERS={text}: a number of users")),
        Err(_) => 12_000,
    }
}

/// Asks for users `range` through Envoy, `IN_FLIGHT` at a time, and checks
/// that each got its own token at the upstream.
async fn ask_for(stack: &Stack, range: std::ops::Range<u64>) {
    let next = Arc::new(AtomicU64::new(range.start));
    let mut workers = JoinSet::new();
    for _ in 0..IN_FLIGHT {
        let next = Arc::clone(&next);
        let request = stack
            .http
            .request(Method::GET, format!("{}/scale", stack.envoy_url))
            .header("x-authstamp-provider", PROVIDER)
            .header("x-authstamp-app", &stack.app_id)
            .header("x-authstamp-app-key", &stack.app_key);
        let end = range.end;
        workers.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= end {
                    return;
                }
                let user = format!("{USER_PREFIX}{n}");
                let response = request
                    .try_clone()
                    .expect("a bodiless request clones")
                    .header("x-authstamp-user", &user)
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("{user}: {e}"));
                let status = response.status();
                let text = response.text().await.expect("body");
                assert_eq!(status, StatusCode::OK, "{user}: {text}");
                let echo: Value = serde_json::from_str(&text).expect("echo JSON");
                assert_eq!(
                    echo["authorization"],
                    format!("Bearer {TOKEN_PREFIX}{user}"),
                    "{user} got another credential"
                );
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done.expect("a request worker failed");
    }
}

/// The bytes Envoy's allocator has handed out and not got back (admin
/// `/memory`, tcmalloc's `allocated`): the native module allocates through
/// Envoy's exported `malloc`, so its memory counts here too.
async fn envoy_allocated_bytes(stack: &Stack) -> u64 {
    let memory: Value = stack
        .http
        .get(format!("{}/memory", stack.envoy_admin_url))
        .send()
        .await
        .expect("Envoy admin /memory")
        .json()
        .await
        .expect("/memory JSON");
    memory["allocated"]
        .as_str()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("/memory without allocated: {memory}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn distinct_users_through_1024_slots_leave_envoy_memory_flat_and_never_mix_tokens() {
    let users = scale_users();
    assert!(
        users >= 10 * CAPACITY,
        "at least {} users, so that the cache turns over",
        10 * CAPACITY
    );
    let mut stack = Stack::start(
        "cache_scale",
        StackOptions {
            // Every request is a lookup: no per-app bound in the way.
            service_args: vec!["--rate-limit-lookups".into(), "off".into()],
            ..StackOptions::default()
        },
    )
    .await;
    let bootstrap = local_bootstrap_replacing(
        &stack.filter_url,
        &format!("{MAX_CACHE_TTL}, \"cache_capacity\": {CAPACITY}"),
    );
    stack.restart_envoy_on(&bootstrap, 2).await;

    let upstream = CredentialEcho::start().await;
    stack
        .put_provider(
            PROVIDER,
            json!({
                "client_id": "scale",
                "client_secret": "scale-secret",
                "authorize_url": format!("{}/oauth/authorize", stack.standin_url),
                "token_url": format!("{}/oauth/token", stack.standin_url),
                "api_base_url": upstream.url,
            }),
        )
        .await;
    let seeding = Instant::now();
    stack.seed_users(
        PROVIDER,
        USER_PREFIX,
        users,
        &["--token-prefix", TOKEN_PREFIX],
    );
    eprintln!("seeded {users} users in {:.1?}", seeding.elapsed());

    let started = Instant::now();
    let mut rss_kib = Vec::new();
    let mut allocated = Vec::new();
    for phase in 0..PHASES {
        ask_for(&stack, phase * users / PHASES..(phase + 1) * users / PHASES).await;
        rss_kib.push(stack.envoy.rss_kib().expect("Envoy runs"));
        allocated.push(envoy_allocated_bytes(&stack).await);
    }
    let elapsed = started.elapsed();
    eprintln!(
        "{users} users in {elapsed:.1?} ({:.0} requests/s); Envoy RSS KiB after each tenth: {rss_kib:?}; allocated bytes: {allocated:?}",
        users as f64 / elapsed.as_secs_f64()
    );

    assert_eq!(upstream.requests(), users, "one upstream request per user");
    assert_eq!(
        stack.token_lookups().await,
        users,
        "every request was a miss, none served from another user's entry"
    );
    let slots = stack.envoy_metric("authstamp_cache_slots").await;
    assert!(
        (1..=CAPACITY).contains(&slots),
        "{slots} cache slots for capacity {CAPACITY}"
    );
    let (warm, last) = (rss_kib[0], rss_kib[rss_kib.len() - 1]);
    assert!(
        last as f64 <= warm as f64 * (1.0 + FLAT_WITHIN),
        "Envoy grew from {warm} KiB after the warm-up to {last} KiB: {rss_kib:?}"
    );
    // Tighter than RSS (no page granularity, no freed pages kept): a few
    // bytes kept per request show here long before they show in RSS.
    let (warm, last) = (allocated[0], allocated[allocated.len() - 1]);
    assert!(
        last as f64 <= warm as f64 * (1.0 + FLAT_WITHIN),
        "Envoy's allocated memory grew from {warm} bytes after the warm-up to {last}: {allocated:?}"
    );
}
