//! Every credential type through a real Envoy: OAuth client credentials (an
//! app-level connection), API keys in a header and in a query parameter,
//! and HTTP Basic. One filter, one stamping path; the stand-in provider
//! checks each credential and echoes what arrived.

use authstamp_e2e::stack::CLIENT_ID;
use authstamp_e2e::{Stack, StackOptions};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

async fn echo(response: reqwest::Response) -> Value {
    let status = response.status();
    let text = response.text().await.expect("body");
    assert_eq!(status, StatusCode::OK, "{text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_api_keys_and_basic_are_stamped_by_the_same_filter() {
    let stack = Stack::start("credential_types", StackOptions::default()).await;
    let standin = stack.standin_url.clone();
    // The stand-in accepts these API keys and Basic credentials.
    let response = stack
        .http
        .post(format!("{standin}/_standin/credentials"))
        .json(
            &json!({"api_keys": {"key-alice": "alice", "key-bob": "bob"},
                      "basic": {"carol": "c4rol pass:word"}}),
        )
        .send()
        .await
        .expect("credentials");
    assert!(response.status().is_success());

    // 1. OAuth client credentials: the app's own token, user "-".
    stack
        .put_provider(
            "standin-machine",
            json!({"auth_type": "oauth2_client_credentials", "client_id": CLIENT_ID,
                   "client_secret": stack.client_secret,
                   "token_url": format!("{standin}/oauth/token"),
                   "api_base_url": standin, "scopes": ["read"]}),
        )
        .await;
    for _ in 0..3 {
        let body = echo(
            stack
                .call_provider(Method::GET, "standin-machine", "/api/reports", "-")
                .send()
                .await
                .expect("cc call"),
        )
        .await;
        assert_eq!(body["user"], format!("client:{CLIENT_ID}"));
        assert_eq!(body["token_grant"], "client_credentials");
        assert_eq!(body["path"], "/api/reports");
    }
    let stats = stack.standin_stats().await;
    assert_eq!(stats["token_calls"]["client_credentials"], 1, "{stats}");

    // 2. An API key in a header, stored per user by the app.
    stack
        .put_provider(
            "standin-key",
            json!({"auth_type": "api_key", "api_base_url": standin,
                   "header": {"name": "x-api-key", "format": "{token}"}}),
        )
        .await;
    for (user, key) in [("alice", "key-alice"), ("bob", "key-bob")] {
        let response = stack
            .as_app(
                Method::PUT,
                &format!("/v1/connections/standin-key/{user}/credentials"),
            )
            .json(&json!({"api_key": key}))
            .send()
            .await
            .expect("store key");
        assert_eq!(response.status(), StatusCode::OK);
    }
    for user in ["alice", "bob"] {
        let body = echo(
            stack
                .call_provider(Method::GET, "standin-key", "/api/me", user)
                .header("x-api-key", "forged-key")
                .header("authorization", "Bearer forged")
                .send()
                .await
                .expect("key call"),
        )
        .await;
        assert_eq!(body["user"], user);
        assert_eq!(body["token_grant"], "api_key");
        assert_eq!(
            body["headers"]["x-api-key"].as_array().map(Vec::len),
            Some(1)
        );
        assert!(body["headers"].get("authorization").is_none(), "{body}");
    }

    // 3. An API key in a query parameter: set and replaced by the filter.
    stack
        .put_provider(
            "standin-key-query",
            json!({"auth_type": "api_key", "api_base_url": standin,
                   "header": {"name": "api_key", "format": "{token}", "in": "query"}}),
        )
        .await;
    let response = stack
        .as_app(
            Method::PUT,
            "/v1/connections/standin-key-query/alice/credentials",
        )
        .json(&json!({"api_key": "key-alice"}))
        .send()
        .await
        .expect("store key");
    assert_eq!(response.status(), StatusCode::OK);
    let body = echo(
        stack
            .call_provider(
                Method::GET,
                "standin-key-query",
                "/api/search?q=a%20b&api_key=forged&API_KEY=x&page=2",
                "alice",
            )
            .send()
            .await
            .expect("query call"),
    )
    .await;
    assert_eq!(body["user"], "alice");
    assert_eq!(body["query"], "q=a%20b&page=2&api_key=key-alice");
    // A user without a key gets no request out at all.
    let response = stack
        .call_provider(Method::GET, "standin-key-query", "/api/search", "nobody")
        .send()
        .await
        .expect("unconnected");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        response
            .headers()
            .get("x-authstamp-error")
            .map(|v| v.to_str().unwrap()),
        Some("not_connected")
    );

    // 4. HTTP Basic.
    stack
        .put_provider(
            "standin-basic",
            json!({"auth_type": "basic", "api_base_url": standin}),
        )
        .await;
    let response = stack
        .as_app(
            Method::PUT,
            "/v1/connections/standin-basic/carol/credentials",
        )
        .json(&json!({"username": "carol", "password": "c4rol pass:word"}))
        .send()
        .await
        .expect("store basic");
    assert_eq!(response.status(), StatusCode::OK);
    let body = echo(
        stack
            .call_provider(Method::POST, "standin-basic", "/api/tickets", "carol")
            .body("{}")
            .send()
            .await
            .expect("basic call"),
    )
    .await;
    assert_eq!(body["user"], "carol");
    assert_eq!(body["token_grant"], "basic");
    assert!(body["headers"]["authorization"][0]
        .as_str()
        .unwrap()
        .starts_with("Basic "));
    // A wrong password is the provider's 401, passed through unchanged.
    let response = stack
        .as_app(
            Method::PUT,
            "/v1/connections/standin-basic/dave/credentials",
        )
        .json(&json!({"username": "carol", "password": "wrong"}))
        .send()
        .await
        .expect("store basic");
    assert_eq!(response.status(), StatusCode::OK);
    let response = stack
        .call_provider(Method::GET, "standin-basic", "/api/tickets", "dave")
        .send()
        .await
        .expect("wrong basic");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.headers().get("x-authstamp-error").is_none());
}
