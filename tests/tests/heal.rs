//! A provider 401 healed before the app sees it (envoy/envoy.yaml's
//! healable mark, replay instance of the filter and its route retry): one forced
//! refresh, one replay with the fresh token, the provider's second answer
//! to the app; bodies over the retry buffer and refused refreshes pass the
//! 401 through; forced refreshes stay bounded.

use authstamp_testkit::json_of;
use std::time::Duration;

use authstamp_e2e::{Stack, StackOptions};
use reqwest::{Method, Response, StatusCode};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::task::JoinSet;

fn bearer_seen(echo: &Value) -> String {
    echo["headers"]["authorization"][0]
        .as_str()
        .expect("authorization at the provider")
        .to_string()
}

/// Envoy's count of retries it sent to the provider clusters.
async fn envoy_retries(stack: &Stack) -> u64 {
    let text = stack
        .http
        .get(format!(
            "{}/stats?filter=upstream_rq_retry$",
            stack.envoy_admin_url
        ))
        .send()
        .await
        .expect("envoy admin")
        .text()
        .await
        .expect("admin text");
    text.lines()
        .filter(|l| l.starts_with("cluster.authstamp_upstream_"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// The provider revokes `login`'s access tokens; the grant stays.
async fn revoke_access_tokens(stack: &Stack, login: &str) {
    let response = stack
        .http
        .post(format!(
            "{}/_standin/revoke?login={login}&only=access",
            stack.standin_url
        ))
        .send()
        .await
        .expect("revoke");
    assert!(response.status().is_success());
}

/// The provider revokes `login`'s grant: every token, refresh included.
async fn revoke_grant(stack: &Stack, login: &str) {
    let response = stack
        .http
        .post(format!(
            "{}/_standin/revoke?login={login}",
            stack.standin_url
        ))
        .send()
        .await
        .expect("revoke");
    assert!(response.status().is_success());
}

fn assert_no_authstamp_headers(response: &Response) {
    for name in ["x-authstamp-retry", "x-authstamp-error"] {
        assert!(
            response.headers().get(name).is_none(),
            "{name} reached the app"
        );
    }
}

/// A connected user whose token the filter has cached: `(stack, token)`.
async fn connected(name: &str, user: &str, options: StackOptions) -> (Stack, String) {
    let stack = Stack::start(name, options).await;
    stack.connect_user(user).await;
    let first = json_of(
        stack
            .call(Method::GET, "/api/me", user)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(first["token_grant"], "authorization_code");
    (stack, bearer_seen(&first))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_access_token_is_healed_on_the_very_first_request() {
    let (stack, refused) = connected("heal_get", "hana", StackOptions::default()).await;
    revoke_access_tokens(&stack, "hana").await;

    let response = stack
        .call(Method::GET, "/api/me", "hana")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_no_authstamp_headers(&response);
    assert_eq!(response.headers().get("x-standin-echo").unwrap(), "1");
    let echo = json_of(response).await;
    assert_eq!(echo["token_grant"], "refresh_token", "{echo}");
    let fresh = bearer_seen(&echo);
    assert_ne!(fresh, refused);
    assert_eq!(stack.refresh_calls().await, 1, "exactly one refresh");
    assert_eq!(envoy_retries(&stack).await, 1, "one replay");
    assert_eq!(
        stack.envoy_metric("authstamp_healed_retries_total").await,
        1
    );
    assert_eq!(
        stack
            .envoy_metric("authstamp_unhealed_unauthorized_total")
            .await,
        0
    );

    // The fresh token is cached: the next request neither refreshes nor retries.
    let next = json_of(
        stack
            .call(Method::GET, "/api/me", "hana")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(bearer_seen(&next), fresh);
    assert_eq!(stack.refresh_calls().await, 1);
    assert_eq!(envoy_retries(&stack).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_kb_body_is_replayed_byte_exact() {
    let (stack, refused) = connected("heal_body", "bo", StackOptions::default()).await;
    revoke_access_tokens(&stack, "bo").await;

    // Every byte value, in an order no codec would keep by accident.
    let mut state = 0x9e37_79b9_u32;
    let body: Vec<u8> = (0..200 * 1024)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state.to_le_bytes()[0]
        })
        .collect();
    let response = stack
        .call(Method::POST, "/api/upload", "bo")
        .header("content-type", "application/octet-stream")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_no_authstamp_headers(&response);
    let echo = json_of(response).await;
    assert_ne!(bearer_seen(&echo), refused);
    assert_eq!(echo["body_len"], body.len());
    let sha: String = Sha256::digest(&body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(echo["body_sha256"], sha);
    assert_eq!(stack.refresh_calls().await, 1);
    assert_eq!(envoy_retries(&stack).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_retry_buffer_gets_its_401_and_the_next_request_the_fresh_token() {
    let (stack, refused) = connected("heal_big_body", "bea", StackOptions::default()).await;
    revoke_access_tokens(&stack, "bea").await;

    let body = vec![7u8; 2 * 1024 * 1024];
    let response = stack
        .call(Method::POST, "/api/upload", "bea")
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    // The provider's own 401, with nothing of authstamp's on it.
    assert_eq!(
        response.headers().get("www-authenticate").unwrap(),
        "Bearer error=\"invalid_token\""
    );
    assert_no_authstamp_headers(&response);
    assert_eq!(envoy_retries(&stack).await, 0, "not replayed");

    let next = stack
        .call(Method::GET, "/api/me", "bea")
        .send()
        .await
        .unwrap();
    assert_eq!(next.status(), StatusCode::OK);
    let echo = json_of(next).await;
    assert_ne!(bearer_seen(&echo), refused);
    assert_eq!(stack.refresh_calls().await, 1, "the one forced refresh");
    assert_eq!(
        stack
            .envoy_metric("authstamp_unhealed_unauthorized_total")
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_requests_after_a_revocation_all_succeed_with_one_refresh() {
    let options = StackOptions {
        envoy_concurrency: 2,
        ..StackOptions::default()
    };
    let (stack, first_token) = connected("heal_concurrent", "cy", options).await;
    revoke_access_tokens(&stack, "cy").await;

    let mut set = JoinSet::new();
    for i in 0..50 {
        // A client of its own per request: 50 connections over both workers.
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        let request = client
            .get(format!("{}/api/item/{i}", stack.envoy_url))
            .header("x-authstamp-provider", authstamp_e2e::stack::PROVIDER)
            .header("x-authstamp-user", "cy")
            .header("x-authstamp-app", &stack.app_id)
            .header("x-authstamp-app-key", &stack.app_key);
        set.spawn(async move { request.send().await });
    }
    let mut tokens = std::collections::BTreeSet::new();
    let mut refused = Vec::new();
    while let Some(result) = set.join_next().await {
        let response = result.unwrap().expect("response");
        if response.status() != StatusCode::OK {
            let error = response.headers().get("x-authstamp-error").cloned();
            refused.push((response.status(), error, response.text().await.unwrap()));
            continue;
        }
        assert_no_authstamp_headers(&response);
        tokens.insert(bearer_seen(&json_of(response).await));
    }
    assert!(refused.is_empty(), "{} not 200: {refused:?}", refused.len());
    let refused = first_token;
    assert_eq!(tokens.len(), 1, "one fresh token for all: {tokens:?}");
    assert!(!tokens.contains(&refused));
    assert_eq!(stack.refresh_calls().await, 1, "one refresh");
    assert_eq!(
        stack
            .envoy_metric("authstamp_unhealed_unauthorized_total")
            .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_refusing_every_token_gets_one_retry_per_request_and_bounded_refreshes() {
    let (stack, _) = connected("heal_always_401", "al", StackOptions::default()).await;

    for round in 0..3 {
        // The stand-in answers 401 to a valid token when asked to.
        let response = stack
            .call(Method::GET, "/api/me", "al")
            .header("x-standin-status", "401")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "round {round}");
        assert_eq!(response.headers().get("x-standin-echo").unwrap(), "1");
        assert_eq!(
            response.headers().get("x-authstamp-error").unwrap(),
            "token_refused"
        );
        assert!(response.headers().get("x-authstamp-retry").is_none());
    }
    // Only the first request forced a refresh (and was replayed with its
    // token); within forced_refresh_interval the others pass their 401 through.
    assert_eq!(stack.refresh_calls().await, 1);
    assert_eq!(envoy_retries(&stack).await, 1);
    assert_eq!(
        stack.envoy_metric("authstamp_forced_refreshes_total").await,
        1
    );
    assert_eq!(
        stack
            .envoy_metric("authstamp_forced_refreshes_refused_total")
            .await,
        2
    );
    assert_eq!(
        stack
            .envoy_metric("authstamp_unhealed_unauthorized_total")
            .await,
        3
    );
    // The current token still works for requests the provider accepts.
    let ok = stack
        .call(Method::GET, "/api/me", "al")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_grant_passes_the_401_through_with_reauth_required() {
    let (stack, _) = connected("heal_grant_revoked", "gus", StackOptions::default()).await;
    revoke_grant(&stack, "gus").await;

    let response = stack
        .call(Method::GET, "/api/me", "gus")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        response.headers().get("www-authenticate").unwrap(),
        "Bearer error=\"invalid_token\""
    );
    assert_eq!(
        response.headers().get("x-authstamp-error").unwrap(),
        "reauth_required"
    );
    assert!(response.headers().get("x-authstamp-retry").is_none());
    let body = json_of(response).await;
    assert_eq!(body["error"], "invalid_token", "the provider's own body");
    // The replay was already on its way when the refresh failed: it went
    // out as it was, once.
    assert_eq!(envoy_retries(&stack).await, 1);
    assert_eq!(stack.refresh_calls().await, 1);

    // The connection says so.
    let connection = stack
        .as_app(
            Method::GET,
            &format!("/v1/connections/{}/gus", authstamp_e2e::stack::PROVIDER),
        )
        .send()
        .await
        .unwrap();
    let connection = json_of(connection).await;
    assert_eq!(connection["status"], "reauth_required", "{connection}");
}
