//! The pass-through end to end: a real Envoy loading the built filter, the
//! `authstamp` token service and the stand-in provider, each its own process.

use authstamp_e2e::stack::{metric_sum, PROVIDER};
use authstamp_e2e::{sha256_hex, Stack, StackOptions};
use authstamp_testkit::json_of;
use reqwest::{Method, Response, StatusCode};
use serde_json::{json, Value};

/// Asserts a local error reply of the filter or the token service.
async fn assert_error(response: Response, status: StatusCode, code: &str) {
    assert_eq!(response.status(), status);
    assert_eq!(
        response
            .headers()
            .get("x-authstamp-error")
            .map(|v| v.to_str().unwrap()),
        Some(code)
    );
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap()),
        Some("application/json")
    );
    let body = json_of(response).await;
    assert_eq!(body["error"], code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

fn bearer_seen(echo: &Value) -> String {
    echo["headers"]["authorization"][0]
        .as_str()
        .expect("authorization at the provider")
        .to_string()
}

fn assert_no_authstamp_headers(echo: &Value) {
    let headers = echo["headers"].as_object().expect("headers");
    let leaked: Vec<&String> = headers
        .keys()
        .filter(|k| k.starts_with("x-authstamp-"))
        .collect();
    assert!(leaked.is_empty(), "leaked to the provider: {leaked:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_then_get_and_post_are_stamped_and_answered_unchanged() {
    let stack = Stack::start("get_and_post", StackOptions::default()).await;
    let outcome = stack.connect_user("alice").await;
    assert!(
        outcome.final_body.contains("Connected"),
        "{}",
        outcome.final_body
    );
    let code = outcome
        .callback_url
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .expect("code in callback");

    // The callback's code is single use: replaying the callback fails.
    let replay = stack
        .http
        .get(outcome.callback_url.clone())
        .send()
        .await
        .unwrap();
    assert_error(replay, StatusCode::BAD_REQUEST, "invalid_state").await;

    // GET with a query, an inbound Authorization that must not survive, and a
    // status the provider is asked to answer with.
    let response = stack
        .call(Method::GET, "/api/users.info?user=U1&pretty=1", "alice")
        .header("authorization", "Bearer forged-by-the-app")
        .header("x-standin-status", "203")
        .header("x-app-trace", "t-1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NON_AUTHORITATIVE_INFORMATION);
    assert_eq!(response.headers().get("x-standin-echo").unwrap(), "1");
    let echo = json_of(response).await;
    assert_eq!(echo["user"], "alice");
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["path"], "/api/users.info");
    assert_eq!(echo["query"], "user=U1&pretty=1");
    assert_eq!(echo["token_grant"], "authorization_code");
    assert_eq!(
        echo["headers"]["authorization"].as_array().unwrap().len(),
        1
    );
    let token = bearer_seen(&echo);
    assert!(token.starts_with("Bearer sat_"), "not the provider's token");
    assert!(!token.contains(&code));
    assert_eq!(echo["headers"]["x-app-trace"][0], "t-1");
    let host = stack.standin_url.trim_start_matches("http://");
    assert_eq!(
        echo["headers"]["host"][0], host,
        "authority set to the provider's"
    );
    assert_no_authstamp_headers(&echo);

    // POST: a binary body arrives byte-exact.
    let body: Vec<u8> = (0..200_000u32).map(|i| (i * 7919 % 251) as u8).collect();
    let response = stack
        .call(Method::POST, "/api/files.upload", "alice")
        .header("content-type", "application/octet-stream")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let echo = json_of(response).await;
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["body_len"], body.len());
    assert_eq!(echo["body_sha256"], sha256_hex(&body));
    assert_eq!(bearer_seen(&echo), token);
    assert_no_authstamp_headers(&echo);

    // The provider's own errors come back unchanged too.
    let response = stack
        .http
        .get(format!("{}/api/anything", stack.envoy_url))
        .header("x-authstamp-provider", PROVIDER)
        .header("x-authstamp-user", "alice")
        .header("x-authstamp-app", &stack.app_id)
        .header("x-authstamp-app-key", &stack.app_key)
        .header("x-standin-status", "418")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::IM_A_TEAPOT);
    assert!(response.headers().get("x-authstamp-error").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_call_is_served_from_the_filter_cache() {
    let stack = Stack::start("cache", StackOptions::default()).await;
    stack.connect_user("carol").await;
    assert_eq!(stack.token_lookups().await, 0);

    let first = stack
        .call(Method::GET, "/api/a", "carol")
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let first_token = bearer_seen(&json_of(first).await);
    assert_eq!(
        stack.token_lookups().await,
        1,
        "a miss asks the token service"
    );

    for _ in 0..5 {
        let again = stack
            .call(Method::GET, "/api/b", "carol")
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), StatusCode::OK);
        assert_eq!(bearer_seen(&json_of(again).await), first_token);
    }
    assert_eq!(
        stack.token_lookups().await,
        1,
        "hits never call the token service"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_inside_the_refresh_skew_is_refreshed_once_and_the_new_token_used() {
    let stack = Stack::start("refresh", StackOptions::default()).await;
    // Issue the first token with 2 s to live. The token service's 60 s skew
    // is capped at half a token's lifetime (never a refresh on every call),
    // so it is due after 1 s.
    stack.set_quirks(json!({"access_token_ttl_secs": 2})).await;
    stack.connect_user("dave").await;
    stack
        .set_quirks(json!({"access_token_ttl_secs": 3600}))
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(stack.refresh_calls().await, 0);

    let response = stack
        .call(Method::GET, "/api/me", "dave")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let echo = json_of(response).await;
    assert_eq!(
        echo["token_grant"], "refresh_token",
        "the refreshed token was stamped"
    );
    assert_eq!(echo["user"], "dave");
    assert_eq!(stack.refresh_calls().await, 1);

    // The refreshed token lasts an hour: no second refresh, the same token.
    let token = bearer_seen(&echo);
    let again = json_of(
        stack
            .call(Method::GET, "/api/me", "dave")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(bearer_seen(&again), token);
    assert_eq!(stack.refresh_calls().await, 1);

    let metrics = stack
        .http
        .get(format!("{}/metrics", stack.service_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(metric_sum(&metrics, "authstamp_refreshes_total"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_json_errors_with_the_right_status() {
    let mut stack = Stack::start("errors", StackOptions::default()).await;
    stack.connect_user("erin").await;

    // A user who never connected.
    let response = stack
        .call(Method::GET, "/api/x", "nobody")
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::NOT_FOUND, "not_connected").await;

    // A duplicated provider header.
    let response = stack
        .call(Method::GET, "/api/x", "erin")
        .header("x-authstamp-provider", "no-such-provider")
        .send()
        .await
        .unwrap();
    // reqwest appends: two provider headers are ambiguous and refused.
    assert_error(response, StatusCode::BAD_REQUEST, "bad_request").await;
    let response = stack
        .http
        .get(format!("{}/api/x", stack.envoy_url))
        .header("x-authstamp-provider", "no-such-provider")
        .header("x-authstamp-user", "erin")
        .header("x-authstamp-app", &stack.app_id)
        .header("x-authstamp-app-key", &stack.app_key)
        .send()
        .await
        .unwrap();
    // An unknown provider.
    assert_error(response, StatusCode::NOT_FOUND, "unknown_provider").await;

    // Missing user header.
    let response = stack
        .http
        .get(format!("{}/api/x", stack.envoy_url))
        .header("x-authstamp-provider", PROVIDER)
        .header("x-authstamp-app", &stack.app_id)
        .header("x-authstamp-app-key", &stack.app_key)
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::BAD_REQUEST, "bad_request").await;

    // A correct request fills the cache; a wrong key right after must still fail.
    let ok = stack
        .call(Method::GET, "/api/x", "erin")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let lookups = stack.token_lookups().await;
    let wrong_key = stack
        .http
        .get(format!("{}/api/x", stack.envoy_url))
        .header("x-authstamp-provider", PROVIDER)
        .header("x-authstamp-user", "erin")
        .header("x-authstamp-app", &stack.app_id)
        .header("x-authstamp-app-key", "ask_wrong")
        .send()
        .await
        .unwrap();
    assert_error(wrong_key, StatusCode::UNAUTHORIZED, "bad_app_key").await;
    assert_eq!(
        stack.token_lookups().await,
        lookups + 1,
        "the wrong key was checked"
    );
    let unknown_app = stack
        .http
        .get(format!("{}/api/x", stack.envoy_url))
        .header("x-authstamp-provider", PROVIDER)
        .header("x-authstamp-user", "erin")
        .header("x-authstamp-app", "app_unknown")
        .header("x-authstamp-app-key", &stack.app_key)
        .send()
        .await
        .unwrap();
    assert_error(unknown_app, StatusCode::UNAUTHORIZED, "unknown_app").await;

    // No authstamp headers: not ours; this bootstrap routes it nowhere.
    let unmarked = stack
        .http
        .get(format!("{}/api/x", stack.envoy_url))
        .send()
        .await
        .unwrap();
    assert_eq!(unmarked.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        stack.standin_stats().await["api_calls"],
        1,
        "only the one stamped call"
    );

    // Token service down: a cache miss gets 503, nothing reaches the provider.
    stack.token_service.kill();
    let response = stack
        .call(Method::GET, "/api/x", "someone-else")
        .send()
        .await
        .unwrap();
    assert_error(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "token_service_unavailable",
    )
    .await;
    // A cached user keeps working while the token service is away.
    let cached = stack
        .call(Method::GET, "/api/x", "erin")
        .send()
        .await
        .unwrap();
    assert_eq!(cached.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_of_one_app_never_get_each_others_token() {
    let stack = Stack::start("isolation", StackOptions::default()).await;
    stack.connect_user("frank").await;
    stack.connect_user("grace").await;

    let mut tokens = Vec::new();
    for round in 0..3 {
        for user in ["frank", "grace"] {
            let response = stack
                .call(Method::GET, &format!("/api/whoami?r={round}"), user)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            let echo = json_of(response).await;
            assert_eq!(echo["user"], user, "the provider saw another user's token");
            tokens.push((user, bearer_seen(&echo)));
        }
    }
    let frank: Vec<_> = tokens
        .iter()
        .filter(|(u, _)| *u == "frank")
        .map(|(_, t)| t)
        .collect();
    let grace: Vec<_> = tokens
        .iter()
        .filter(|(u, _)| *u == "grace")
        .map(|(_, t)| t)
        .collect();
    assert!(frank.iter().all(|t| !grace.contains(t)));

    // Another app cannot use this app's connection, whatever it sends.
    let (other_id, other_key) = stack.create_app("other", &[]).await;
    stack.configure_provider(&other_id, PROVIDER).await;
    let response = stack
        .http
        .get(format!("{}/api/whoami", stack.envoy_url))
        .header("x-authstamp-provider", PROVIDER)
        .header("x-authstamp-user", "frank")
        .header("x-authstamp-app", &other_id)
        .header("x-authstamp-app-key", &other_key)
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::NOT_FOUND, "not_connected").await;
}
