//! Transparent egress: a service calls its provider's own host through an
//! egress Envoy (as its HTTP proxy) and adds only `x-authstamp-user`. The
//! bootstrap is `envoy/egress.yaml` with only its ports, paths, app id and
//! host map changed; the app key reaches the filter through Envoy's
//! environment (mesh mode).

use authstamp_e2e::deploy::{
    configure_provider_urls, egress_bootstrap, proxied_client, EchoServer, Envoy,
};
use authstamp_e2e::stack::PROVIDER;
use authstamp_e2e::{Stack, StackOptions};
use authstamp_testkit::json_of;
use reqwest::{Response, StatusCode};

const LISTENER: &str = "authstamp_transparent_egress";

async fn start_egress(stack: &Stack, name: &str, unmapped: &str) -> Envoy {
    let authority = stack.standin_url.trim_start_matches("http://");
    let config = egress_bootstrap(stack, &[(authority, PROVIDER)], unmapped);
    Envoy::start(
        &stack.log_dir,
        name,
        &config,
        &[("AUTHSTAMP_APP_KEY", stack.app_key.as_str())],
    )
    .await
}

async fn assert_refused(response: Response, status: StatusCode, code: &str) {
    assert_eq!(response.status(), status);
    assert_eq!(
        response
            .headers()
            .get("x-authstamp-error")
            .and_then(|v| v.to_str().ok()),
        Some(code)
    );
    let body = json_of(response).await;
    assert_eq!(body["error"], code, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_to_the_providers_own_host_with_only_the_user_header_arrives_stamped() {
    let stack = Stack::start("egress_pass", StackOptions::default()).await;
    // The provider's API lives under /api: the service's own URLs already
    // carry that path, so a transparent request must keep its path as sent.
    let standin = stack.standin_url.clone();
    configure_provider_urls(
        &stack,
        &stack.app_id,
        PROVIDER,
        &format!("{standin}/oauth/authorize"),
        &format!("{standin}/oauth/token"),
        &format!("{standin}/api"),
    )
    .await;
    stack.connect_user("alice").await;
    let egress = start_egress(&stack, "egress-envoy", "pass").await;
    let service = proxied_client(egress.listener(LISTENER));
    let other_host = EchoServer::start().await;

    // The service's own base URL, the provider's real host, one extra header.
    let response = service
        .get(format!("{standin}/api/users.info?user=U1"))
        .header("x-authstamp-user", "alice")
        .header("x-service-trace", "t-9")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let echo = json_of(response).await;
    assert_eq!(echo["user"], "alice");
    assert_eq!(echo["path"], "/api/users.info", "path kept as sent");
    assert_eq!(echo["query"], "user=U1");
    let token = echo["headers"]["authorization"][0].as_str().unwrap();
    assert!(token.starts_with("Bearer sat_"), "{token}");
    assert_eq!(echo["headers"]["x-service-trace"][0], "t-9");
    assert_eq!(
        echo["headers"]["host"][0],
        standin.trim_start_matches("http://")
    );
    let leaked: Vec<&String> = echo["headers"]
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| k.starts_with("x-authstamp-"))
        .collect();
    assert!(leaked.is_empty(), "{leaked:?}");

    // Mesh mode: request headers cannot pick another app, and a forged
    // credential is replaced.
    let response = service
        .post(format!("{standin}/api/chat.postMessage"))
        .header("x-authstamp-user", "alice")
        .header("x-authstamp-app", "app_someone_else")
        .header("x-authstamp-app-key", "ask_forged")
        .header("authorization", "Bearer forged")
        .body("{\"text\":\"hi\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let echo = json_of(response).await;
    assert_eq!(echo["headers"]["authorization"][0], token, "from the cache");
    assert_eq!(echo["path"], "/api/chat.postMessage");
    assert_eq!(echo["body_len"], 13);

    // A user of the bound app who never connected.
    let response = service
        .get(format!("{standin}/api/me"))
        .header("x-authstamp-user", "nobody")
        .send()
        .await
        .unwrap();
    assert_refused(response, StatusCode::NOT_FOUND, "not_connected").await;
    let api_calls = stack.standin_stats().await["api_calls"].as_u64().unwrap();
    assert_eq!(api_calls, 2);
    assert_eq!(
        stack.token_lookups().await,
        2,
        "alice once (then cached), nobody once"
    );

    // Another host, without authstamp headers: the service's own traffic,
    // passed on untouched (its own credential included).
    let response = service
        .get(format!("{}/repos?page=2", other_host.url))
        .header("authorization", "Bearer the-services-own")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers().get("x-echo").unwrap(), "1");
    let seen = other_host.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["request_line"], "GET /repos?page=2 HTTP/1.1");
    assert_eq!(
        seen[0]["headers"]["authorization"],
        "Bearer the-services-own"
    );
    assert_eq!(seen[0]["headers"]["host"], other_host.authority.as_str());

    // Another host, with the user header: it asks for a token that has no
    // provider there, so it is refused and never leaves.
    let response = service
        .get(format!("{}/repos", other_host.url))
        .header("x-authstamp-user", "alice")
        .send()
        .await
        .unwrap();
    assert_refused(response, StatusCode::FORBIDDEN, "forbidden_destination").await;
    assert_eq!(other_host.seen().len(), 1, "nothing reached the other host");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_unmapped_hosts_reject_only_provider_hosts_are_reachable() {
    let stack = Stack::start("egress_reject", StackOptions::default()).await;
    stack.connect_user("bob").await;
    let egress = start_egress(&stack, "egress-envoy", "reject").await;
    let service = proxied_client(egress.listener(LISTENER));
    let other_host = EchoServer::start().await;

    let response = service
        .get(format!("{}/api/ping", stack.standin_url))
        .header("x-authstamp-user", "bob")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(json_of(response).await["user"], "bob");

    let response = service
        .get(format!("{}/anything", other_host.url))
        .send()
        .await
        .unwrap();
    assert_refused(response, StatusCode::FORBIDDEN, "forbidden_destination").await;
    assert!(
        other_host.seen().is_empty(),
        "nothing reached the other host"
    );
}
