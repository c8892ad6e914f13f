//! API keys, HTTP Basic and OAuth client credentials: stored or fetched by
//! the service and answered to the filter like any token.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use base64::Engine as _;
use common::*;
use serde_json::{json, Value};

async fn put_credentials(h: &Harness, app: &ConnectedApp, user: &str, body: Value) -> Reply {
    let request = Request::builder()
        .method(Method::PUT)
        .uri(format!(
            "/v1/connections/{}/{user}/credentials",
            app.provider
        ))
        .header("x-authstamp-app", &app.app_id)
        .header("x-authstamp-app-key", &app.app_key)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    h.send(request).await
}

async fn app_with(h: &Harness, name: &str, config: Value) -> ConnectedApp {
    let (app_id, app_key) = h.create_app(&[]).await;
    let reply = h.put_provider(&app_id, name, config).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    ConnectedApp {
        app_id,
        app_key,
        provider: name.into(),
    }
}

#[tokio::test]
async fn api_keys_in_a_header_or_a_query_parameter() {
    let h = Harness::new().await;
    let app = app_with(
        &h,
        "keyed",
        json!({"auth_type": "api_key", "api_base_url": "https://api.keyed.test/v1",
               "header": {"name": "x-api-key", "format": "{token}"}}),
    )
    .await;
    // Not connected until a key is stored (by the app here; by the user
    // on the connect page in connect_key_page.rs).
    h.lookup(&app, "alice", false)
        .await
        .assert_error(404, "not_connected");
    let reply = put_credentials(&h, &app, "alice", json!({"api_key": "key-of-alice"})).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["status"], "active");
    assert!(!reply.text().contains("key-of-alice"));
    assert!(
        !h.stores_in_clear("key-of-alice").await,
        "sealed in the vault"
    );
    let answer = h.lookup(&app, "alice", false).await.json();
    assert_eq!(
        answer["header"],
        json!({"name": "x-api-key", "value": "key-of-alice"})
    );
    assert_eq!(answer["upstream"]["authority"], "api.keyed.test");
    assert_eq!(answer["expires_at"], Value::Null);
    // The app's own key: user "-".
    put_credentials(&h, &app, "-", json!({"api_key": "app-key"})).await;
    assert_eq!(
        h.lookup(&app, "-", false).await.json()["header"]["value"],
        "app-key"
    );
    for bad in [
        json!({}),
        json!({"api_key": ""}),
        json!({"api_key": "a\nb"}),
        json!({"username": "u", "password": "p"}),
        json!({"api_key": "k", "extra": 1}),
    ] {
        put_credentials(&h, &app, "bob", bad)
            .await
            .assert_error(400, "bad_request");
    }

    let query = app_with(
        &h,
        "maps",
        json!({"auth_type": "api_key", "api_base_url": "https://maps.test",
               "header": {"name": "key", "format": "{token}", "in": "query"}}),
    )
    .await;
    put_credentials(&h, &query, "alice", json!({"api_key": "k&1"})).await;
    let answer = h.lookup(&query, "alice", false).await.json();
    assert_eq!(
        answer["header"],
        json!({"name": "key", "value": "k&1", "in": "query"})
    );
    let reply = h
        .put_provider(
            &query.app_id,
            "bad-query",
            json!({"auth_type": "api_key", "api_base_url": "https://maps.test",
                   "header": {"name": "a b", "format": "{token}", "in": "query"}}),
        )
        .await;
    reply.assert_error(400, "bad_request");
    let reply = h
        .put_provider(
            &query.app_id,
            "bad-secret",
            json!({"auth_type": "api_key", "api_base_url": "https://maps.test",
                   "client_id": "x", "client_secret": "y"}),
        )
        .await;
    reply.assert_error(400, "bad_request");
}

#[tokio::test]
async fn basic_credentials_are_stamped_as_rfc7617() {
    let h = Harness::new().await;
    let app = app_with(
        &h,
        "legacy",
        json!({"auth_type": "basic", "api_base_url": "https://legacy.test"}),
    )
    .await;
    put_credentials(
        &h,
        &app,
        "alice",
        json!({"username": "alice", "password": "pä ss:word"}),
    )
    .await;
    let answer = h.lookup(&app, "alice", false).await.json();
    let expected = base64::engine::general_purpose::STANDARD.encode("alice:pä ss:word");
    assert_eq!(
        answer["header"],
        json!({"name": "authorization", "value": format!("Basic {expected}")})
    );
    assert!(!h.stores_in_clear("pä ss:word").await);
    for bad in [
        json!({"username": "a:b", "password": "p"}),
        json!({"username": "a"}),
        json!({"api_key": "k"}),
    ] {
        put_credentials(&h, &app, "bob", bad)
            .await
            .assert_error(400, "bad_request");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_credentials_are_fetched_once_and_renewed_when_due() {
    let h = Harness::new().await;
    let mut config = h.provider_config();
    config["auth_type"] = json!("oauth2_client_credentials");
    config.as_object_mut().unwrap().remove("authorize_url");
    let app = app_with(&h, "machine", config).await;
    h.provider.respond(|call| {
        assert_eq!(call.grant_type(), "client_credentials");
        assert_eq!(
            call.form.get("scope").map(String::as_str),
            Some("read,write")
        );
        (
            200,
            json!({"access_token": "cc-1", "token_type": "Bearer", "expires_in": 3600}),
        )
    });
    // Only the app-level user.
    h.lookup(&app, "alice", false)
        .await
        .assert_error(400, "bad_request");
    let mut answers = Vec::new();
    let mut lookups = tokio::task::JoinSet::new();
    for _ in 0..10 {
        lookups.spawn(send_to(
            h.filter_router.clone(),
            h.lookup_request(&app, "-", false),
        ));
    }
    for reply in lookups.join_all().await {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        answers.push(reply.json()["header"]["value"].as_str().unwrap().to_owned());
    }
    assert!(answers.iter().all(|a| a == "Bearer cc-1"), "{answers:?}");
    assert_eq!(
        h.provider.calls_of("client_credentials").len(),
        1,
        "one fetch"
    );
    let view = h.connection_view(&app, "-").await;
    assert_eq!(view.json()["status"], "active");
    assert_eq!(view.json()["has_refresh_token"], false);

    // Due (inside the skew): fetched again.
    h.provider
        .respond(|_| (200, json!({"access_token": "cc-2", "expires_in": 3600})));
    h.set_expires_in(&app, "-", 30).await;
    let reply = h.lookup(&app, "-", false).await;
    assert_eq!(reply.json()["header"]["value"], "Bearer cc-2");
    assert_eq!(h.provider.calls_of("client_credentials").len(), 2);
    // The provider down: the still-valid token is served.
    h.provider.respond(|_| (503, json!({})));
    h.set_expires_in(&app, "-", 30).await;
    assert_eq!(
        h.lookup(&app, "-", false).await.json()["header"]["value"],
        "Bearer cc-2"
    );
    // Refused and nothing valid left: oauth_failed.
    h.provider
        .respond(|_| (401, json!({"error": "invalid_client"})));
    h.set_expires_in(&app, "-", -10).await;
    h.lookup(&app, "-", false)
        .await
        .assert_error(502, "oauth_failed");
    // No browser flow either.
    h.as_app(
        &app.app_id,
        &app.app_key,
        "/v1/connect-sessions",
        json!({"provider": "machine", "user": "alice"}),
    )
    .await
    .assert_error(400, "bad_request");
}
