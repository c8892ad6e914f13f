//! The ways authstamp is deployed, checked against the files users copy:
//! the snippet for an existing Envoy (pasted into a foreign bootstrap and
//! run), the bootstraps that carry it, the README that shows it, and the
//! docker-compose trial (validated: this machine has no Docker engine).

use authstamp_e2e::deploy::{
    parse_yaml, port_of, read_repo_file, replace_once, EchoServer, Envoy, Snippet, SNIPPET_PATH,
    SNIPPET_TOKEN_SERVICE_HOST, SNIPPET_WASM_PATH,
};
use authstamp_e2e::stack::PROVIDER;
use authstamp_e2e::{filter_wasm, Stack, StackOptions};
use reqwest::StatusCode;
use serde_json::Value;

const LOCAL_WASM: &str = "target/wasm32-wasip1/release/authstamp_filter.wasm";

#[test]
fn the_readme_shows_the_snippet_file_verbatim() {
    let readme = read_repo_file("README.md");
    let snippet = read_repo_file(SNIPPET_PATH);
    assert!(
        readme.contains(&format!("```yaml\n{snippet}```")),
        "README.md must show {SNIPPET_PATH} verbatim in a ```yaml block"
    );
}

#[test]
fn the_local_compose_and_egress_bootstraps_carry_the_snippet() {
    let snippet = Snippet::load();
    let local = parse_yaml(&read_repo_file("envoy/envoy.yaml"));
    snippet
        .edited("127.0.0.1", 8080, LOCAL_WASM)
        .assert_carried_by(&local, "authstamp_egress", "providers");
    let compose = parse_yaml(&read_repo_file("envoy/compose.yaml"));
    snippet.assert_carried_by(&compose, "authstamp_egress", "providers");
    let egress = parse_yaml(&read_repo_file("envoy/egress.yaml"));
    snippet
        .edited("127.0.0.1", 8080, LOCAL_WASM)
        .assert_routes_and_clusters(&egress, "authstamp_transparent_egress", "everything");
    // The snippet is for gateway mode and the values a user edits are where
    // the docs say.
    let config = snippet.http_filters[0]["typed_config"]["config"]["configuration"]["value"]
        .as_str()
        .expect("plugin configuration");
    let config: Value = serde_json::from_str(config).expect("configuration is JSON");
    assert_eq!(
        config["token_service"]["cluster"],
        "authstamp_token_service"
    );
    assert_eq!(
        config["token_service"]["authority"],
        SNIPPET_TOKEN_SERVICE_HOST
    );
    assert!(config.get("app").is_none());
    assert_eq!(
        snippet.http_filters[0]["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"],
        serde_yaml_ng::Value::from(SNIPPET_WASM_PATH)
    );
}

#[test]
fn the_snippet_pasted_into_an_existing_bootstrap_validates_on_this_envoy() {
    let mut bootstrap = parse_yaml(&read_repo_file("tests/fixtures/existing-envoy.yaml"));
    Snippet::load()
        .edited("127.0.0.1", 8080, &filter_wasm().display().to_string())
        .paste_into(&mut bootstrap, "ingress_http", "default");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bootstrap.yaml");
    std::fs::write(&path, serde_yaml_ng::to_string(&bootstrap).expect("yaml")).expect("write");
    let output = std::process::Command::new(authstamp_e2e::envoy_bin())
        .args(["--mode", "validate", "-l", "warn", "-c"])
        .arg(&path)
        .output()
        .expect("run envoy");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snippet_pasted_into_an_existing_envoy_stamps_and_leaves_its_routes_alone() {
    let stack = Stack::start("existing_envoy", StackOptions::default()).await;
    let backend = EchoServer::start().await;
    let fixture = replace_once(
        &read_repo_file("tests/fixtures/existing-envoy.yaml"),
        &[(
            "port_value: 1 }",
            format!("port_value: {} }}", port_of(&backend.url)),
        )],
    );
    let mut bootstrap = parse_yaml(&fixture);
    Snippet::load()
        .edited(
            "127.0.0.1",
            port_of(&stack.service_url),
            &filter_wasm().display().to_string(),
        )
        .paste_into(&mut bootstrap, "ingress_http", "default");
    let config = serde_yaml_ng::to_string(&bootstrap).expect("yaml");
    let envoy = Envoy::start(&stack.log_dir, "existing-envoy", &config, &[]).await;
    let url = envoy.listener("ingress_http").to_string();
    stack.connect_user("alice").await;

    let stamped = |host: Option<&str>| {
        let mut request = stack
            .http
            .get(format!("{url}/api/auth.test"))
            .header("x-authstamp-provider", PROVIDER)
            .header("x-authstamp-user", "alice")
            .header("x-authstamp-app", &stack.app_id)
            .header("x-authstamp-app-key", &stack.app_key);
        if let Some(host) = host {
            request = request.header("host", host);
        }
        request
    };
    let response = stamped(None).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let echo: Value = response.json().await.unwrap();
    assert_eq!(echo["user"], "alice");
    assert!(echo["headers"]["authorization"][0]
        .as_str()
        .unwrap()
        .starts_with("Bearer sat_"));
    assert!(echo["headers"].get("x-authstamp-route").is_none());

    // The stamped :authority picks the route again: a marked request that
    // came in for the user's backend host still goes to the provider only.
    let response = stamped(Some("backend.internal")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.json::<Value>().await.unwrap()["user"], "alice");
    assert!(
        backend.seen().is_empty(),
        "the backend got a marked request"
    );

    // The user's own routes and filters are untouched.
    let health = stack
        .http
        .get(format!("{url}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(health.text().await.unwrap(), "ok");
    let missing = stack
        .http
        .get(format!("{url}/nothing"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(missing.text().await.unwrap(), "not here");
    let envoy_health = stack
        .http
        .get(format!("{url}/envoy-health"))
        .send()
        .await
        .unwrap();
    assert_eq!(envoy_health.status(), StatusCode::OK);
    let response = stack
        .http
        .get(format!("{url}/orders/7"))
        .header("host", "backend.internal")
        .header("authorization", "Bearer users-own")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let seen = backend.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["request_line"], "GET /orders/7 HTTP/1.1");
    assert_eq!(seen[0]["headers"]["authorization"], "Bearer users-own");
    assert_eq!(stack.standin_stats().await["api_calls"], 2);
}
