//! Issue 10 item 2: raw tokens only for the filter. With the real token
//! service and Envoy: an app key alone gets no token from anywhere (the app
//! listener has no lookup, the filter listener wants the filter credential,
//! Envoy does not proxy to the token service), while the stamped call through
//! Envoy still works; the credential is named in Envoy's config dump and
//! held nowhere an app could read it back.

use authstamp_e2e::deploy::Envoy;
use authstamp_e2e::stack::{local_bootstrap, PROVIDER};
use authstamp_e2e::{filter_token, Stack, StackOptions, FILTER_TOKEN_ENV};
use reqwest::{Method, Response, StatusCode};
use serde_json::{json, Value};

/// Asserts the JSON error contract and that no access token is in the body.
async fn assert_refused(response: Response, status: StatusCode, code: &str, what: &str) {
    assert_eq!(response.status(), status, "{what}");
    assert_eq!(
        response
            .headers()
            .get("x-authstamp-error")
            .and_then(|v| v.to_str().ok()),
        Some(code),
        "{what}"
    );
    let text = response.text().await.expect("body");
    assert!(!text.contains("sat_"), "{what}: a token in {text}");
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: {e}: {text}"));
    assert_eq!(body["error"], code, "{what}: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_key_alone_gets_no_token_from_anywhere() {
    let stack = Stack::start("lookup_access", StackOptions::default()).await;
    stack.connect_user("alice").await;
    let lookup = json!({"provider": PROVIDER, "user": "alice"});

    // The stamped call through Envoy works: the provider sees the token.
    let response = stack
        .call(Method::GET, "/api/hello", "alice")
        .send()
        .await
        .expect("stamped call");
    assert_eq!(response.status(), StatusCode::OK);
    let echo: Value = response.json().await.expect("echo");
    let stamped = echo["headers"]["authorization"][0]
        .as_str()
        .expect("authorization at the provider")
        .to_string();
    assert!(stamped.starts_with("Bearer sat_"), "{stamped}");

    // The app listener does not route the lookup, whatever the method.
    for method in [Method::POST, Method::GET, Method::PUT] {
        let response = stack
            .as_app(method.clone(), "/v1/token-lookup")
            .json(&lookup)
            .send()
            .await
            .expect("app listener");
        assert_refused(
            response,
            StatusCode::NOT_FOUND,
            "not_found",
            method.as_str(),
        )
        .await;
    }

    // The filter listener: no credential, the app key, the admin token or a
    // wrong one in its place are all 401, before the app key is looked at.
    let filter_lookup = || {
        stack
            .http
            .post(format!("{}/v1/token-lookup", stack.filter_url))
            .header("x-authstamp-app", &stack.app_id)
            .header("x-authstamp-app-key", &stack.app_key)
            .json(&lookup)
    };
    let response = filter_lookup().send().await.expect("no credential");
    assert_refused(response, StatusCode::UNAUTHORIZED, "unauthorized", "none").await;
    let wrong = format!("{}x", filter_token());
    for (what, bearer) in [
        ("the app key", stack.app_key.as_str()),
        ("the admin token", stack.admin_token.as_str()),
        ("a wrong credential", wrong.as_str()),
    ] {
        let response = filter_lookup()
            .bearer_auth(bearer)
            .send()
            .await
            .expect("lookup");
        assert_refused(response, StatusCode::UNAUTHORIZED, "unauthorized", what).await;
    }
    // Nor anything else on the filter listener without the credential.
    let response = stack
        .http
        .get(format!(
            "{}/v1/connections/{PROVIDER}/alice",
            stack.filter_url
        ))
        .header("x-authstamp-app", &stack.app_id)
        .header("x-authstamp-app-key", &stack.app_key)
        .send()
        .await
        .expect("filter listener");
    assert_refused(
        response,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "other path",
    )
    .await;

    // Envoy is no way round: it is not a proxy to the token service, with
    // or without the app's headers (these mark the request as authstamp's,
    // which then lacks its provider and user).
    let through_envoy = || {
        stack
            .http
            .post(format!("{}/v1/token-lookup", stack.envoy_url))
            .header("host", "authstamp-token-service")
            .json(&lookup)
    };
    let response = through_envoy().send().await.expect("through envoy");
    assert_refused(
        response,
        StatusCode::NOT_FOUND,
        "not_found",
        "through Envoy",
    )
    .await;
    let response = through_envoy()
        .header("x-authstamp-app", &stack.app_id)
        .header("x-authstamp-app-key", &stack.app_key)
        .send()
        .await
        .expect("through envoy");
    assert_refused(
        response,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "through Envoy as the app",
    )
    .await;

    // The filter's credential with the app key: the token (what Envoy does).
    let response = stack
        .filter_lookup(&lookup)
        .send()
        .await
        .expect("filter lookup");
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = response.json().await.expect("answer");
    assert_eq!(answer["header"]["value"], stamped.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_holds_the_filter_credential_only_in_its_environment() {
    let stack = Stack::start("lookup_credential", StackOptions::default()).await;
    stack.connect_user("bob").await;
    let response = stack
        .call(Method::GET, "/api/hello", "bob")
        .send()
        .await
        .expect("stamped call");
    assert_eq!(response.status(), StatusCode::OK);

    // The admin config dump names the variable and never holds its value.
    let dump = stack
        .http
        .get(format!("{}/config_dump", stack.envoy_admin_url))
        .send()
        .await
        .expect("config dump")
        .text()
        .await
        .expect("dump text");
    assert!(dump.contains("host_env_keys"), "the dump shows vm_config");
    assert!(dump.contains(FILTER_TOKEN_ENV));
    assert!(
        !dump.contains(filter_token()),
        "the credential in /config_dump"
    );
    // Nor any log of any process, at debug level.
    assert!(
        !stack.all_output().contains(filter_token()),
        "the credential in a log"
    );

    // An Envoy with another credential gets no token: 503 for the app, not
    // its fault, and nothing reaches the provider.
    let calls_before = stack.standin_stats().await["api_calls"].clone();
    let wrong = Envoy::start(
        &stack.log_dir,
        "envoy-wrong-credential",
        &local_bootstrap(&stack.filter_url),
        &[(FILTER_TOKEN_ENV, "ftk_not-the-filter-credential")],
    )
    .await;
    let response = stack
        .http
        .get(format!("{}/api/hello", wrong.listener("authstamp_egress")))
        .header("x-authstamp-provider", PROVIDER)
        .header("x-authstamp-user", "bob")
        .header("x-authstamp-app", &stack.app_id)
        .header("x-authstamp-app-key", &stack.app_key)
        .send()
        .await
        .expect("call with the wrong credential");
    assert_refused(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "token_service_unavailable",
        "wrong filter credential",
    )
    .await;
    assert_eq!(stack.standin_stats().await["api_calls"], calls_before);
}
