//! `make soak`: bounded load through a real Envoy for `SOAK_SECONDS` (300
//! there, 20 by default) while every user's token is refreshed every 3 s at
//! a provider that rotates refresh tokens. Passes with 0 failed requests,
//! 0 requests answered for another user, and the resident memory of Envoy
//! and the token service flat within 10 % after the warm-up (the first
//! quarter). Prints the figures.

use authstamp_e2e::stack::{Stack, StackOptions, PROVIDER};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const USERS: usize = 10;
/// Requests per second per user (50/s in all).
const PER_USER_INTERVAL: Duration = Duration::from_millis(200);

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    wrong_user: AtomicU64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soak_under_token_churn_has_no_failures_and_flat_memory() {
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let stack = Stack::start(
        "soak",
        StackOptions {
            envoy_concurrency: 2,
            ..StackOptions::default()
        },
    )
    .await;
    // 6 s tokens: due for a refresh after half their lifetime.
    stack
        .set_quirks(json!({"rotate_refresh_tokens": true, "access_token_ttl_secs": 6}))
        .await;
    let users: Vec<String> = (0..USERS).map(|i| format!("soak-{i}")).collect();
    for user in &users {
        stack.connect_user(user).await;
    }
    let tally = Arc::new(Tally::default());
    let run = Duration::from_secs(seconds);
    let started = Instant::now();
    let workers: Vec<_> = users
        .iter()
        .map(|user| {
            let (tally, user) = (tally.clone(), user.clone());
            let http = stack.http.clone();
            let url = format!("{}/api/me", stack.envoy_url);
            let (app_id, app_key) = (stack.app_id.clone(), stack.app_key.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(PER_USER_INTERVAL);
                while started.elapsed() < run {
                    tick.tick().await;
                    let response = http
                        .get(&url)
                        .header("x-authstamp-provider", PROVIDER)
                        .header("x-authstamp-user", &user)
                        .header("x-authstamp-app", &app_id)
                        .header("x-authstamp-app-key", &app_key)
                        .send()
                        .await;
                    let echo = match response {
                        Ok(r) if r.status() == StatusCode::OK => r.json::<Value>().await.ok(),
                        Ok(r) => {
                            eprintln!("{user}: {} {:?}", r.status(), r.text().await);
                            None
                        }
                        Err(e) => {
                            eprintln!("{user}: {e}");
                            None
                        }
                    };
                    match echo {
                        Some(echo) if echo["user"] == user.as_str() => &tally.ok,
                        Some(_) => &tally.wrong_user,
                        None => &tally.failed,
                    }
                    .fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    // Memory once a second; the warm-up's last sample is the baseline.
    let warm_up = run / 4;
    let (mut envoy_base, mut service_base) = (None, None);
    let (mut envoy_max, mut service_max) = (0u64, 0u64);
    let (mut envoy_last, mut service_last) = (0u64, 0u64);
    while started.elapsed() < run {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let envoy = stack.envoy.rss_kib().expect("envoy runs");
        let service = stack.token_service.rss_kib().expect("token service runs");
        if started.elapsed() < warm_up {
            (envoy_base, service_base) = (Some(envoy), Some(service));
        } else {
            envoy_max = envoy_max.max(envoy);
            service_max = service_max.max(service);
        }
        (envoy_last, service_last) = (envoy, service);
    }
    for worker in workers {
        worker.await.expect("worker");
    }
    let envoy_base = envoy_base.unwrap_or(envoy_last);
    let service_base = service_base.unwrap_or(service_last);
    let stats = stack.standin_stats().await;
    let (ok, failed, wrong) = (
        tally.ok.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
        tally.wrong_user.load(Ordering::Relaxed),
    );
    let growth = |base: u64, max: u64| (max as f64 / base.max(1) as f64 - 1.0) * 100.0;
    eprintln!(
        "soak {seconds} s, {USERS} users at {} req/s: {ok} ok, {failed} failed, {wrong} for another user; \
         {} refreshes, {} token families revoked; \
         RSS after warm-up -> max: envoy {envoy_base} -> {envoy_max} KiB ({:+.1} %), \
         token service {service_base} -> {service_max} KiB ({:+.1} %)",
        USERS as u64 * 1000 / PER_USER_INTERVAL.as_millis() as u64,
        stats["token_calls"]["refresh_token"],
        stats["families_revoked"],
        growth(envoy_base, envoy_max),
        growth(service_base, service_max),
    );
    assert!(ok > 0);
    assert_eq!(failed, 0, "failed requests");
    assert_eq!(wrong, 0, "requests answered for another user");
    assert_eq!(stats["families_revoked"], 0, "{stats}");
    assert!(
        stats["token_calls"]["refresh_token"].as_u64().unwrap_or(0) >= USERS as u64,
        "the tokens churned: {stats}"
    );
    assert!(growth(envoy_base, envoy_max) <= 10.0, "envoy memory grew");
    assert!(
        growth(service_base, service_max) <= 10.0,
        "token service memory grew"
    );
}
