//! The connection lifecycle end to end, with signed webhooks: connect, list
//! (never a secret), a failed refresh, the provider revoking the grant
//! (reauth_required), reconnect, disconnect with RFC 7009 revocation at the
//! provider. A tiny receiver checks every webhook's HMAC-SHA256 signature,
//! and its first answer (500) makes the service retry.

use authstamp_e2e::stack::{CLIENT_ID, PROVIDER};
use authstamp_e2e::webhook_receiver::{signature_valid, Receiver};
use authstamp_e2e::{Stack, StackOptions};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const SECRET: &str = "whsec-e2e-0123456789abcdef";

fn event_of(d: &authstamp_e2e::webhook_receiver::Delivery) -> Value {
    serde_json::from_slice(&d.body).expect("webhook JSON")
}

async fn lookup(stack: &Stack, force: bool) -> reqwest::Response {
    stack
        .filter_lookup(&json!({"provider": PROVIDER, "user": "alice", "force_refresh": force}))
        .send()
        .await
        .expect("lookup")
}

async fn status_of(stack: &Stack) -> Value {
    stack
        .as_app(Method::GET, &format!("/v1/connections/{PROVIDER}/alice"))
        .send()
        .await
        .expect("view")
        .json()
        .await
        .expect("view json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_fail_reauth_reconnect_disconnect_with_signed_webhooks() {
    // Back-to-back forced refreshes below each reach the provider.
    let stack = Stack::start(
        "lifecycle",
        StackOptions {
            service_args: vec!["--forced-refresh-interval".into(), "0s".into()],
            ..StackOptions::default()
        },
    )
    .await;
    let receiver = Receiver::start(1).await;
    let standin = stack.standin_url.clone();
    // The provider with its RFC 7009 revocation endpoint.
    stack
        .put_provider(
            PROVIDER,
            json!({"client_id": CLIENT_ID, "client_secret": stack.client_secret,
                   "authorize_url": format!("{standin}/oauth/authorize"),
                   "token_url": format!("{standin}/oauth/token"),
                   "revocation_url": format!("{standin}/oauth/revoke"),
                   "api_base_url": standin, "scopes": ["read"],
                   "refresh": {"failure_cooldown": "1s"}}),
        )
        .await;
    let response = stack
        .admin(Method::PUT, &format!("/v1/apps/{}/webhook", stack.app_id))
        .json(&json!({"url": receiver.url, "secret": SECRET}))
        .send()
        .await
        .expect("webhook");
    assert_eq!(response.status(), StatusCode::OK);
    let view: Value = response.json().await.expect("webhook json");
    assert!(
        view.get("secret").is_none(),
        "a given secret is never echoed"
    );

    // Connected: the first delivery gets a 500, the retry carries the same id.
    stack.connect_user("alice").await;
    let first = receiver
        .wait_for("connected (first attempt)", |d| {
            event_of(d)["type"] == "connected"
        })
        .await;
    assert_eq!(first.status, 500);
    let id = event_of(&first)["id"].as_str().unwrap().to_owned();
    let retried = receiver
        .wait_for("connected (retry)", |d| {
            d.status == 200 && event_of(d)["id"] == id.as_str()
        })
        .await;
    assert_eq!(
        retried.headers.get("x-authstamp-event").map(String::as_str),
        Some("connected")
    );
    assert_eq!(retried.headers.get("x-authstamp-delivery"), Some(&id));
    let event = event_of(&retried);
    assert_eq!(event["app_id"], stack.app_id);
    assert_eq!(event["provider"], PROVIDER);
    assert_eq!(event["user"], "alice");

    // The list: one active connection, no secret in it.
    let list: Value = stack
        .as_app(Method::GET, "/v1/connections?user=alice")
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("list json");
    let connections = list["connections"].as_array().unwrap();
    assert_eq!(connections.len(), 1);
    assert_eq!(connections[0]["status"], "active");
    let text = list.to_string();
    assert!(!text.contains("sat_") && !text.contains("srt_"), "{text}");

    // A refresh that fails for a while: refresh_failed, still active.
    stack.set_quirks(json!({"token_status": 503})).await;
    let response = lookup(&stack, true).await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "the valid token is still served"
    );
    receiver
        .wait_for("refresh_failed", |d| {
            event_of(d)["type"] == "refresh_failed"
        })
        .await;
    assert_eq!(status_of(&stack).await["status"], "active");
    stack.set_quirks(json!({"token_status": null})).await;

    // The user revokes the app at the provider: reauth_required.
    let response = stack
        .http
        .post(format!("{standin}/_standin/revoke?login=alice"))
        .send()
        .await
        .expect("revoke at the provider");
    assert!(response.status().is_success());
    // Past the failure cooldown (1 s after the failure).
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let response = lookup(&stack, true).await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    receiver
        .wait_for("reauth_required", |d| {
            event_of(d)["type"] == "reauth_required"
        })
        .await;
    assert_eq!(status_of(&stack).await["status"], "reauth_required");

    // Reconnect: a new connect session for the same connection.
    let response = stack
        .as_app(
            Method::POST,
            &format!("/v1/connections/{PROVIDER}/alice/reconnect"),
        )
        .send()
        .await
        .expect("reconnect");
    assert_eq!(response.status(), StatusCode::CREATED);
    let session: Value = response.json().await.expect("session");
    let connect_url = session["connect_url"].as_str().unwrap();
    let outcome = authstamp_e2e::browser::walk_connect(
        &authstamp_e2e::browser::browser_client(),
        connect_url,
        "alice",
    )
    .await;
    assert_eq!(
        outcome.final_status,
        StatusCode::OK,
        "{}",
        outcome.final_body
    );
    assert_eq!(status_of(&stack).await["status"], "active");
    let connected = receiver
        .deliveries()
        .iter()
        .filter(|d| event_of(d)["type"] == "connected")
        .map(|d| event_of(d)["id"].as_str().unwrap().to_owned())
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    assert!(connected >= 1);
    let response = stack
        .call(Method::GET, "/api/me", "alice")
        .send()
        .await
        .expect("call");
    assert_eq!(response.status(), StatusCode::OK);

    // Disconnect: revoked at the provider (RFC 7009), deleted here.
    let response = stack
        .as_app(Method::DELETE, &format!("/v1/connections/{PROVIDER}/alice"))
        .send()
        .await
        .expect("disconnect");
    assert_eq!(response.status(), StatusCode::OK);
    let done: Value = response.json().await.expect("disconnect json");
    assert_eq!(done["deleted"], true);
    assert_eq!(done["revocation"], "revoked", "{done}");
    let stats = stack.standin_stats().await;
    assert_eq!(stats["revocation_calls"], 1, "{stats}");
    assert!(
        stats["tokens_revoked_by_client"].as_u64().unwrap() >= 1,
        "{stats}"
    );
    receiver
        .wait_for("disconnected", |d| event_of(d)["type"] == "disconnected")
        .await;
    let response = stack
        .call(Method::GET, "/api/me", "alice")
        .send()
        .await
        .expect("call");
    // The filter's cache may still hold the token for its remaining life,
    // but the provider no longer accepts it: nothing works any more.
    assert_ne!(response.status(), StatusCode::OK);
    let response = stack
        .as_app(Method::GET, &format!("/v1/connections/{PROVIDER}/alice"))
        .send()
        .await
        .expect("view");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let response = stack
        .as_app(Method::DELETE, &format!("/v1/connections/{PROVIDER}/alice"))
        .send()
        .await
        .expect("disconnect again");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    // Every delivery is signed with the app's secret over its raw body.
    let deliveries = receiver.deliveries();
    assert!(deliveries.len() >= 6, "{}", deliveries.len());
    for d in &deliveries {
        assert!(signature_valid(SECRET, d), "bad signature: {:?}", d.headers);
        assert!(!signature_valid("another-secret-0123456", d));
    }
}
