//! Callers through the real Envoy in gateway mode: app A can never use app
//! B's connections, whatever headers it sends (underscore spellings of the
//! authstamp headers included); and a rotated app key works next to the old
//! one until that one is revoked, which reaches the filter's cache within
//! seconds.

use authstamp_e2e::stack::PROVIDER;
use authstamp_e2e::{Stack, StackOptions};
use reqwest::header::HeaderValue;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::time::{Duration, Instant};

struct App {
    id: String,
    key: String,
}

/// Request headers as sent: name, raw value.
type Headers<'a> = Vec<(&'a str, &'a [u8])>;

/// Sends one request through Envoy with exactly these headers (in order,
/// repeats kept) and returns the status, the error code and the echo.
async fn send(stack: &Stack, headers: &[(&str, &[u8])]) -> (StatusCode, Option<String>, Value) {
    let mut request = stack.http.get(format!("{}/api/whoami", stack.envoy_url));
    for (name, value) in headers {
        request = request.header(*name, HeaderValue::from_bytes(value).unwrap());
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let code = response
        .headers()
        .get("x-authstamp-error")
        .map(|v| v.to_str().unwrap().to_string());
    let body = response.text().await.unwrap();
    (
        status,
        code,
        serde_json::from_str(&body).unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_a_never_uses_app_b_connections_whatever_headers_it_sends() {
    let stack = Stack::start("callers", StackOptions::default()).await;
    let a = App {
        id: stack.app_id.clone(),
        key: stack.app_key.clone(),
    };
    let (b_id, b_key) = stack.create_app("b", &[]).await;
    stack.configure_provider(&b_id, PROVIDER).await;
    let b = App {
        id: b_id,
        key: b_key,
    };
    // frank is A's user; gina is B's.
    stack.connect_user_as(&a.id, &a.key, "frank").await;
    stack.connect_user_as(&b.id, &b.key, "gina").await;

    // A's own request works and fills the filter's cache.
    let p = PROVIDER.as_bytes();
    let (status, _, echo) = send(
        &stack,
        &[
            ("x-authstamp-provider", p),
            ("x-authstamp-user", b"frank"),
            ("x-authstamp-app", a.id.as_bytes()),
            ("x-authstamp-app-key", a.key.as_bytes()),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(echo["user"], "frank");
    let calls_before = stack.standin_stats().await["api_calls"].as_u64().unwrap();

    let (a_id, a_key, b_id, b_key) = (
        a.id.as_bytes(),
        a.key.as_bytes(),
        b.id.as_bytes(),
        b.key.as_bytes(),
    );
    let both_ids = format!("{},{}", a.id, b.id);
    let padded = format!(" {} ", b.id);
    let upper = b.id.to_uppercase();
    let bearer = format!("Bearer {}", a.key);
    // (case, headers besides provider, expected status, expected code)
    let cases: Vec<(&str, Headers, u16, &str)> = vec![
        (
            "A's user with B's credentials",
            vec![
                ("x-authstamp-user", b"frank"),
                ("x-authstamp-app", b_id),
                ("x-authstamp-app-key", b_key),
            ],
            404,
            "not_connected",
        ),
        (
            "B's user with A's credentials",
            vec![
                ("x-authstamp-user", b"gina"),
                ("x-authstamp-app", a_id),
                ("x-authstamp-app-key", a_key),
            ],
            404,
            "not_connected",
        ),
        (
            "A's id with B's key",
            vec![
                ("x-authstamp-user", b"frank"),
                ("x-authstamp-app", a_id),
                ("x-authstamp-app-key", b_key),
            ],
            401,
            "bad_app_key",
        ),
        (
            "B's id with A's key (A's user cached)",
            vec![
                ("x-authstamp-user", b"frank"),
                ("x-authstamp-app", b_id),
                ("x-authstamp-app-key", a_key),
            ],
            401,
            "bad_app_key",
        ),
        (
            "B's id with A's key, B's user",
            vec![
                ("x-authstamp-user", b"gina"),
                ("x-authstamp-app", b_id),
                ("x-authstamp-app-key", a_key),
            ],
            401,
            "bad_app_key",
        ),
        (
            "two app headers",
            vec![
                ("x-authstamp-user", b"gina"),
                ("x-authstamp-app", a_id),
                ("x-authstamp-app", b_id),
                ("x-authstamp-app-key", a_key),
            ],
            400,
            "bad_request",
        ),
        (
            "two app headers, other case",
            vec![
                ("x-authstamp-user", b"gina"),
                ("X-Authstamp-App", b_id),
                ("x-authstamp-app", a_id),
                ("x-authstamp-app-key", a_key),
            ],
            400,
            "bad_request",
        ),
        (
            "two keys",
            vec![
                ("x-authstamp-user", b"gina"),
                ("x-authstamp-app", b_id),
                ("x-authstamp-app-key", a_key),
                ("x-authstamp-app-key", b_key),
            ],
            400,
            "bad_request",
        ),
        (
            "two users",
            vec![
                ("x-authstamp-user", b"frank"),
                ("x-authstamp-user", b"gina"),
                ("x-authstamp-app", a_id),
                ("x-authstamp-app-key", a_key),
            ],
            400,
            "bad_request",
        ),
        (
            "both ids comma-joined",
            vec![
                ("x-authstamp-user", b"gina"),
                ("x-authstamp-app", both_ids.as_bytes()),
                ("x-authstamp-app-key", a_key),
            ],
            401,
            "unknown_app",
        ),
        (
            "B's id in another case",
            vec![
                ("x-authstamp-user", b"gina"),
                ("x-authstamp-app", upper.as_bytes()),
                ("x-authstamp-app-key", a_key),
            ],
            401,
            "unknown_app",
        ),
        (
            "B's id padded, A's key",
            vec![
                ("x-authstamp-user", b"gina"),
                ("x-authstamp-app", padded.as_bytes()),
                ("x-authstamp-app-key", a_key),
            ],
            401,
            "bad_app_key",
        ),
        (
            "no key, A's key as a bearer token",
            vec![
                ("x-authstamp-user", b"gina"),
                ("x-authstamp-app", b_id),
                ("authorization", bearer.as_bytes()),
            ],
            400,
            "bad_request",
        ),
        (
            "no app id",
            vec![
                ("x-authstamp-user", b"gina"),
                ("x-authstamp-app-key", b_key),
            ],
            400,
            "bad_request",
        ),
        (
            "non-UTF-8 app id",
            vec![
                ("x-authstamp-user", b"gina"),
                ("x-authstamp-app", b"app_\xff\xfe"),
                ("x-authstamp-app-key", a_key),
            ],
            400,
            "bad_request",
        ),
        (
            "empty key",
            vec![
                ("x-authstamp-user", b"gina"),
                ("x-authstamp-app", b_id),
                ("x-authstamp-app-key", b""),
            ],
            400,
            "bad_request",
        ),
        // Underscore spellings, which a server reading `_` as `-` would take
        // for the real headers: refused by the filter (the bootstrap as is
        // passes them on to it).
        (
            "B's key as x_authstamp_app_key next to A's",
            vec![
                ("x-authstamp-user", b"frank"),
                ("x-authstamp-app", a_id),
                ("x-authstamp-app-key", a_key),
                ("x_authstamp_app_key", b_key),
            ],
            400,
            "bad_request",
        ),
        (
            "B's user as x_authstamp_user next to A's",
            vec![
                ("x-authstamp-user", b"frank"),
                ("x_authstamp_user", b"gina"),
                ("x-authstamp-app", a_id),
                ("x-authstamp-app-key", a_key),
            ],
            400,
            "bad_request",
        ),
        (
            "every identity header with underscores",
            vec![
                ("x_authstamp_user", b"frank"),
                ("x_authstamp_app", a_id),
                ("x_authstamp_app_key", a_key),
            ],
            400,
            "bad_request",
        ),
        (
            "proxy_authorization on a stamped request",
            vec![
                ("x-authstamp-user", b"frank"),
                ("x-authstamp-app", a_id),
                ("x-authstamp-app-key", a_key),
                ("proxy_authorization", bearer.as_bytes()),
            ],
            400,
            "bad_request",
        ),
    ];
    let mut failures = Vec::new();
    for (case, extra, status, code) in &cases {
        let mut headers: Vec<(&str, &[u8])> = vec![("x-authstamp-provider", p)];
        headers.extend(extra.iter().cloned());
        let (got_status, got_code, echo) = send(&stack, &headers).await;
        if got_status.as_u16() != *status || got_code.as_deref() != Some(*code) {
            failures.push(format!(
                "{case}: {got_status} {got_code:?} (wanted {status} {code}) {echo}"
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(
        stack.standin_stats().await["api_calls"].as_u64().unwrap(),
        calls_before,
        "no refused request reached the provider"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_app_key_works_next_to_the_old_one_until_it_is_revoked() {
    let stack = Stack::start("app_key_rotation", StackOptions::default()).await;
    for user in ["hank", "iris", "jack"] {
        stack.connect_user(user).await;
    }
    let call = |user: &str, key: &str| {
        stack
            .http
            .get(format!("{}/api/me", stack.envoy_url))
            .header("x-authstamp-provider", PROVIDER)
            .header("x-authstamp-user", user)
            .header("x-authstamp-app", &stack.app_id)
            .header("x-authstamp-app-key", key)
            .send()
    };
    assert_eq!(call("hank", &stack.app_key).await.unwrap().status(), 200);
    let created: Value = stack
        .admin(Method::POST, &format!("/v1/apps/{}/keys", stack.app_id))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let new_key = created["app_key"].as_str().unwrap().to_string();
    // Both keys, cached user or not.
    assert_eq!(call("hank", &new_key).await.unwrap().status(), 200);
    assert_eq!(call("iris", &new_key).await.unwrap().status(), 200);
    assert_eq!(call("iris", &stack.app_key).await.unwrap().status(), 200);
    // Revoke the original key.
    let keys: Value = stack
        .admin(Method::GET, &format!("/v1/apps/{}/keys", stack.app_id))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let old_id = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key_id"] != created["key_id"])
        .unwrap()["key_id"]
        .as_str()
        .unwrap()
        .to_string();
    let revoked = stack
        .admin(
            Method::DELETE,
            &format!("/v1/apps/{}/keys/{old_id}", stack.app_id),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 204);
    let revoked_at = Instant::now();

    // iris was last looked up with the revoked key: the filter's cache still
    // serves her until the key's next recheck (app_key_recheck, 5 s by
    // default in envoy/envoy.yaml), then refuses it.
    let mut served = 0;
    let took = loop {
        let response = call("iris", &stack.app_key).await.unwrap();
        if response.status() == StatusCode::UNAUTHORIZED {
            assert_eq!(response.headers()["x-authstamp-error"], "bad_app_key");
            break revoked_at.elapsed();
        }
        assert_eq!(response.status(), StatusCode::OK);
        served += 1;
        assert!(
            revoked_at.elapsed() < Duration::from_secs(15),
            "the revoked key still works through the cache after {:?}",
            revoked_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("revoked key refused for a cached user {took:?} after the revocation ({served} requests served from the cache meanwhile)");
    assert!(
        served > 0,
        "iris was served from the cache right after the revocation"
    );
    // The recheck interval, plus the recheck lookup's own time (at most the
    // 2 s token-service timeout), plus the polling.
    assert!(took < Duration::from_secs(8), "{took:?}");
    // Every request with it is refused from then on, cached or not; the new
    // key still works.
    for _ in 0..3 {
        assert_eq!(call("iris", &stack.app_key).await.unwrap().status(), 401);
    }
    let refused = call("jack", &stack.app_key).await.unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(refused.headers()["x-authstamp-error"], "bad_app_key");
    assert_eq!(call("jack", &new_key).await.unwrap().status(), 200);
    assert_eq!(call("iris", &new_key).await.unwrap().status(), 200);
}
