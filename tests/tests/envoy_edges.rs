//! The edges of the shipped Envoy bootstraps (`envoy/envoy.yaml`,
//! `envoy/compose.yaml`, `envoy/egress.yaml`), each run by the real Envoy:
//! underscore look-alikes of authstamp's headers refused, an access log
//! without credentials, slow and idle clients closed while stamped requests
//! go on, Envoy's own refusals in the JSON error contract while the
//! filter's replies and the provider's own responses pass byte for byte,
//! and nothing made up by Envoy in either direction (HTTP/1.1 and HTTP/2).

use authstamp_e2e::deploy::{
    compose_bootstrap, configure_provider_urls, connect_provider, egress_bootstrap,
    http_connection_manager, parse_yaml, proxied_client, raw_http, read_repo_file, EchoServer,
    Envoy, RawResponse, RawUpstream,
};
use authstamp_e2e::stack::{local_bootstrap, PROVIDER};
use authstamp_e2e::{random_token, Stack, StackOptions};
use authstamp_protocol::ErrorCode;
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};
use serde_yaml_ng::Value as Yaml;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Every shipped bootstrap and the name of its one listener.
const BOOTSTRAPS: [(&str, &str); 3] = [
    ("envoy/envoy.yaml", "authstamp_egress"),
    ("envoy/compose.yaml", "authstamp_egress"),
    ("envoy/egress.yaml", "authstamp_transparent_egress"),
];
const GATEWAY_LISTENER: &str = "authstamp_egress";
const EGRESS_LISTENER: &str = "authstamp_transparent_egress";

/// The only command operators the access log may use: none of them can
/// carry a credential (no query string, no request header but the method
/// and the provider's host).
const ACCESS_LOG_OPERATORS: [&str; 13] = [
    "%START_TIME%",
    "%REQ(:METHOD)%",
    "%REQ(:AUTHORITY)%",
    "%REQ_WITHOUT_QUERY(:PATH)%",
    "%PROTOCOL%",
    "%RESPONSE_CODE%",
    "%RESPONSE_CODE_DETAILS%",
    "%RESPONSE_FLAGS%",
    "%RESP(X-AUTHSTAMP-ERROR)%",
    "%BYTES_RECEIVED%",
    "%BYTES_SENT%",
    "%DURATION%",
    "%UPSTREAM_HOST%",
];

/// What every mapper's filter must say, so that a reply that already is
/// authstamp's is never rewritten.
const NOT_ALREADY_AUTHSTAMPS: &str = "!('x-authstamp-error' in response.headers)";

#[test]
fn every_shipped_bootstrap_has_the_same_edge_settings() {
    let mut first: Option<(Yaml, Yaml)> = None;
    for (file, listener) in BOOTSTRAPS {
        let mut bootstrap = parse_yaml(&read_repo_file(file));
        let admin = &bootstrap["admin"];
        assert_eq!(
            admin["address"]["socket_address"]["address"].as_str(),
            Some("127.0.0.1"),
            "{file}: the admin API (POST /logging) must be on loopback only"
        );
        assert_eq!(admin["ignore_global_conn_limit"].as_bool(), Some(true));
        let monitors = bootstrap["overload_manager"]["resource_monitors"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{file}: no overload_manager"));
        let limit = monitors
            .iter()
            .find(|m| {
                m["name"].as_str()
                    == Some("envoy.resource_monitors.global_downstream_max_connections")
            })
            .unwrap_or_else(|| panic!("{file}: no connection limit"));
        assert!(
            limit["typed_config"]["max_active_downstream_connections"]
                .as_u64()
                .is_some_and(|n| n > 0),
            "{file}"
        );

        let hcm = http_connection_manager(&mut bootstrap, listener).clone();
        assert_eq!(
            hcm["common_http_protocol_options"]["headers_with_underscores_action"].as_str(),
            Some("REJECT_REQUEST"),
            "{file}"
        );
        for timeout in [
            &hcm["request_headers_timeout"],
            &hcm["stream_idle_timeout"],
            &hcm["request_timeout"],
            &hcm["common_http_protocol_options"]["idle_timeout"],
        ] {
            let seconds = timeout
                .as_str()
                .and_then(|t| t.strip_suffix('s'))
                .and_then(|t| t.parse::<u64>().ok());
            assert!(
                seconds.is_some_and(|s| (1..=600).contains(&s)),
                "{file}: timeout {timeout:?}"
            );
        }
        assert!(hcm["http2_protocol_options"]["max_concurrent_streams"]
            .as_u64()
            .is_some_and(|n| n <= 1000));
        assert!(hcm["max_request_headers_kb"]
            .as_u64()
            .is_some_and(|kb| kb <= 60));
        // Exact in both directions (the e2e test below checks the bytes).
        assert_eq!(hcm["generate_request_id"].as_bool(), Some(false), "{file}");
        assert_eq!(
            hcm["server_header_transformation"].as_str(),
            Some("PASS_THROUGH"),
            "{file}"
        );
        let router = hcm["http_filters"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|f| f["name"].as_str() == Some("envoy.filters.http.router"))
            .expect("a router");
        assert_eq!(
            router["typed_config"]["suppress_envoy_headers"].as_bool(),
            Some(true),
            "{file}"
        );
        for virtual_host in hcm["route_config"]["virtual_hosts"].as_sequence().unwrap() {
            assert!(
                strings_of(&virtual_host["request_headers_to_remove"])
                    .contains(&"x-forwarded-proto".to_string()),
                "{file}"
            );
        }

        let access_log = &hcm["access_log"];
        let format = &access_log[0]["typed_config"]["log_format"]["json_format"];
        let fields = format.as_mapping().expect("a JSON access log");
        assert!(fields.len() >= 5);
        for (name, value) in fields {
            let value = value.as_str().expect("a format string");
            let mut rest = value;
            while let Some(start) = rest.find('%') {
                let end = rest[start + 1..].find('%').expect("closed operator") + start + 2;
                let operator = &rest[start..end];
                assert!(
                    ACCESS_LOG_OPERATORS.contains(&operator),
                    "{file}: access log field {name:?} uses {operator}, which may carry a credential"
                );
                rest = &rest[end..];
            }
        }

        let local_reply = &hcm["local_reply_config"];
        assert!(
            local_reply.get("body_format").is_none(),
            "{file}: a default body_format would rewrite the filter's replies"
        );
        let mappers = local_reply["mappers"].as_sequence().expect("mappers");
        for mapper in mappers {
            let expression = mapper["filter"]["extension_filter"]["typed_config"]["expression"]
                .as_str()
                .expect("a CEL filter");
            assert!(expression.ends_with(NOT_ALREADY_AUTHSTAMPS), "{expression}");
            let header = &mapper["headers_to_add"][0]["header"];
            assert_eq!(header["key"].as_str(), Some("x-authstamp-error"));
            let code = header["value"].as_str().unwrap();
            let known = ErrorCode::from_code(code)
                .unwrap_or_else(|| panic!("{code} is not in protocol's ErrorCode"));
            let body = &mapper["body_format_override"]["json_format"];
            assert_eq!(body["error"].as_str(), Some(code));
            assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
            // A mapper for one status uses the code of that status.
            if let Some(status) = expression
                .strip_prefix("response.code == ")
                .and_then(|rest| rest.split(' ').next())
                .filter(|_| !expression.contains("||"))
            {
                assert_eq!(known.http_status().to_string(), status, "{code}");
            }
        }
        match &first {
            None => first = Some((access_log.clone(), local_reply.clone())),
            Some((log, reply)) => {
                assert_eq!(access_log, log, "{file}: access log differs");
                assert_eq!(local_reply, reply, "{file}: local_reply_config differs");
            }
        }
    }
}

fn strings_of(value: &Yaml) -> Vec<String> {
    value
        .as_sequence()
        .map(|s| s.as_slice())
        .unwrap_or_default()
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

/// The three bootstraps next to one stack: `(local, compose, egress)`; the
/// egress Envoy maps the stand-in's API host to the stack's provider.
async fn start_all(stack: &Stack) -> (Envoy, Envoy, Envoy) {
    let authority = stack.standin_url.trim_start_matches("http://");
    start_all_mapping(stack, authority, PROVIDER).await
}

/// [`start_all`] with the egress Envoy mapping `authority` to `provider`.
async fn start_all_mapping(
    stack: &Stack,
    authority: &str,
    provider: &str,
) -> (Envoy, Envoy, Envoy) {
    let local = Envoy::start(
        &stack.log_dir,
        "local-envoy",
        &local_bootstrap(&stack.filter_url),
        &[],
    )
    .await;
    let compose = Envoy::start(
        &stack.log_dir,
        "compose-envoy",
        &compose_bootstrap(&stack.filter_url),
        &[],
    )
    .await;
    let egress = Envoy::start(
        &stack.log_dir,
        "egress-envoy",
        &egress_bootstrap(stack, &[(authority, provider)], "pass"),
        &[("AUTHSTAMP_APP_KEY", stack.app_key.as_str())],
    )
    .await;
    (local, compose, egress)
}

/// A stamped request of the stack's app for `user` through gateway listener `base`.
fn gateway_call(stack: &Stack, base: &str, path: &str, user: &str) -> reqwest::RequestBuilder {
    stack
        .http
        .get(format!("{base}{path}"))
        .header("x-authstamp-provider", PROVIDER)
        .header("x-authstamp-user", user)
        .header("x-authstamp-app", &stack.app_id)
        .header("x-authstamp-app-key", &stack.app_key)
}

async fn assert_error(response: reqwest::Response, status: u16, code: &str) {
    assert_eq!(response.status().as_u16(), status);
    assert_eq!(
        response
            .headers()
            .get("x-authstamp-error")
            .and_then(|v| v.to_str().ok()),
        Some(code)
    );
    let text = response.text().await.unwrap();
    let body: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    assert_eq!(body["error"], code, "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn underscore_look_alikes_of_authstamp_headers_never_reach_an_upstream() {
    let stack = Stack::start("edges_underscores", StackOptions::default()).await;
    stack.connect_user("alice").await;
    let (local, compose, egress) = start_all(&stack).await;
    let other_host = EchoServer::start().await;
    let egress_client = proxied_client(egress.listener(EGRESS_LISTENER));
    let look_alikes = [
        "x_authstamp_app_key",
        "x_authstamp_user",
        "x_authstamp_provider",
        "x_authstamp_app",
    ];
    for base in [
        local.listener(GATEWAY_LISTENER),
        compose.listener(GATEWAY_LISTENER),
    ] {
        for name in look_alikes {
            let response = gateway_call(&stack, base, "/api/underscore", "alice")
                .header(name, "mallory")
                .send()
                .await
                .unwrap();
            assert_error(response, 400, "bad_request").await;
        }
        let response = gateway_call(&stack, base, "/api/plain", "alice")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    for name in look_alikes {
        let response = egress_client
            .get(format!("{}/api/underscore", stack.standin_url))
            .header("x-authstamp-user", "alice")
            .header(name, "mallory")
            .send()
            .await
            .unwrap();
        assert_error(response, 400, "bad_request").await;
        // The service's other traffic, not stamped: refused the same way.
        let response = egress_client
            .get(format!("{}/other", other_host.url))
            .header(name, "mallory")
            .send()
            .await
            .unwrap();
        assert_error(response, 400, "bad_request").await;
    }
    let response = egress_client
        .get(format!("{}/api/plain", stack.standin_url))
        .header("x-authstamp-user", "alice")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // Over HTTP/2 Envoy resets the stream instead (no reply to map).
    for base in [
        local.listener(GATEWAY_LISTENER),
        compose.listener(GATEWAY_LISTENER),
    ] {
        let output = std::process::Command::new("curl")
            .args([
                "-sS",
                "--http2-prior-knowledge",
                &format!("{base}/api/underscore"),
            ])
            .args(["-H", &format!("x-authstamp-provider: {PROVIDER}")])
            .args([
                "-H",
                "x-authstamp-user: alice",
                "-H",
                "x_authstamp_user: mallory",
            ])
            .args(["-H", &format!("x-authstamp-app: {}", stack.app_id)])
            .args(["-H", &format!("x-authstamp-app-key: {}", stack.app_key)])
            .output()
            .expect("run curl");
        assert!(
            !output.status.success(),
            "HTTP/2 request with x_authstamp_user answered"
        );
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("not closed cleanly"),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert_eq!(
        stack.standin_stats().await["api_calls"],
        3,
        "only the three plain requests reached the provider"
    );
    assert!(other_host.seen().is_empty(), "{:?}", other_host.seen());
}

/// Waits until `envoy`'s stdout (its access log, flushed by Envoy on its
/// own schedule) has `lines` lines mentioning `path`; returns the whole log.
async fn access_log_with(envoy: &Envoy, path: &str, lines: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = std::fs::read_to_string(&envoy.process.stdout_log).unwrap_or_default();
        let found = log
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|l| l["path"].as_str() == Some(path))
            .count();
        if found >= lines {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "{found} of {lines} access log lines for {path}:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_has_every_request_and_no_credential() {
    let stack = Stack::start("edges_access_log", StackOptions::default()).await;
    stack.connect_user("alice").await;
    // A provider whose API key travels in the query string.
    let api_key = random_token("key-");
    let response = stack
        .http
        .post(format!("{}/_standin/credentials", stack.standin_url))
        .json(&json!({"api_keys": {api_key.clone(): "alice"}}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    stack
        .put_provider(
            "standin-key-query",
            json!({"auth_type": "api_key", "api_base_url": stack.standin_url,
                   "header": {"name": "api_key", "format": "{token}", "in": "query"}}),
        )
        .await;
    let response = stack
        .as_app(
            Method::PUT,
            "/v1/connections/standin-key-query/alice/credentials",
        )
        .json(&json!({"api_key": api_key}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let (local, compose, egress) = start_all(&stack).await;
    let app_secret_in_query = random_token("q-");

    let mut access_token = String::new();
    for base in [
        local.listener(GATEWAY_LISTENER),
        compose.listener(GATEWAY_LISTENER),
    ] {
        let response = gateway_call(
            &stack,
            base,
            &format!("/api/logged?secret={app_secret_in_query}"),
            "alice",
        )
        .header("cookie", "session=c00kie-value")
        .send()
        .await
        .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let echo: Value = response.json().await.unwrap();
        access_token = echo["headers"]["authorization"][0]
            .as_str()
            .unwrap()
            .trim_start_matches("Bearer ")
            .to_string();
        let response = stack
            .http
            .get(format!("{base}/api/logged?page=2"))
            .header("x-authstamp-provider", "standin-key-query")
            .header("x-authstamp-user", "alice")
            .header("x-authstamp-app", &stack.app_id)
            .header("x-authstamp-app-key", &stack.app_key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let echo: Value = response.json().await.unwrap();
        assert!(echo["query"].as_str().unwrap().contains(&api_key), "{echo}");
    }
    let response = proxied_client(egress.listener(EGRESS_LISTENER))
        .get(format!(
            "{}/api/logged?secret={app_secret_in_query}",
            stack.standin_url
        ))
        .header("x-authstamp-user", "alice")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(access_token.starts_with("sat_"));

    let secrets = [
        access_token.as_str(),
        api_key.as_str(),
        stack.app_key.as_str(),
        app_secret_in_query.as_str(),
        "c00kie-value",
    ];
    for (envoy, lines) in [(&local, 2), (&compose, 2), (&egress, 1)] {
        let log = access_log_with(envoy, "/api/logged", lines).await;
        for secret in secrets {
            assert!(!log.contains(secret), "the access log has a secret:\n{log}");
        }
        let line: Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
        assert_eq!(line["status"], 200, "{line}");
        assert_eq!(line["method"], "GET");
    }

    // What the admin port can do (why it is loopback only): at debug level
    // Envoy prints request headers, the stamped token included.
    let response = stack
        .http
        .post(format!("{}/logging?level=debug", local.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let response = gateway_call(
        &stack,
        local.listener(GATEWAY_LISTENER),
        "/api/debug",
        "alice",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&local.process.stderr_log)
        .unwrap_or_default()
        .contains(&access_token)
    {
        assert!(
            Instant::now() < deadline,
            "debug logging did not print the token"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `envoy/envoy.yaml` with timeouts of seconds: request headers 1 s, idle
/// connections 2 s, the provider's answer 1 s.
fn short_timeouts_bootstrap(filter_url: &str) -> String {
    let mut config = local_bootstrap(filter_url);
    for (from, to, count) in [
        (
            "request_headers_timeout: 10s",
            "request_headers_timeout: 1s",
            1,
        ),
        ("idle_timeout: 300s", "idle_timeout: 2s", 1),
        ("timeout: 30s", "timeout: 1s", 2),
    ] {
        assert_eq!(config.matches(from).count(), count, "envoy.yaml: `{from}`");
        config = config.replace(from, to);
    }
    config
}

/// How a deliberately slow connection ended.
struct SlowEnd {
    /// When Envoy closed the connection.
    after: Duration,
    /// When Envoy's answer began, if it sent one.
    answered: Option<Duration>,
    answer: Vec<u8>,
}

/// Sends a request head one byte every 200 ms (it never ends) and reads
/// until Envoy closes the connection.
async fn slowloris(address: String) -> SlowEnd {
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let started = Instant::now();
    let mut head = b"GET /api/slow HTTP/1.1\r\nhost: x\r\nx-slow: "
        .iter()
        .copied();
    let mut answer = Vec::new();
    let mut answered = None;
    let mut buf = [0u8; 4096];
    loop {
        let byte = head.next().unwrap_or(b'a');
        if stream.write_all(&[byte]).await.is_err() {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await {
            Err(_) => {}
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                answered.get_or_insert(started.elapsed());
                answer.extend_from_slice(&buf[..n]);
            }
        }
        assert!(started.elapsed() < Duration::from_secs(15), "never closed");
    }
    SlowEnd {
        after: started.elapsed(),
        answered,
        answer,
    }
}

/// Connects and sends nothing.
async fn silent(address: String) -> SlowEnd {
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut answer)).await;
    SlowEnd {
        after: started.elapsed(),
        answered: None,
        answer,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_clients_are_closed_while_stamped_requests_go_on() {
    const SLOW: usize = 40;
    const SILENT: usize = 20;
    let stack = Stack::start("edges_slow_clients", StackOptions::default()).await;
    stack.connect_user("alice").await;
    let envoy = Envoy::start(
        &stack.log_dir,
        "short-timeouts-envoy",
        &short_timeouts_bootstrap(&stack.filter_url),
        &[],
    )
    .await;
    let base = envoy.listener(GATEWAY_LISTENER).to_string();
    let address = base.trim_start_matches("http://").to_string();
    let slow: Vec<_> = (0..SLOW)
        .map(|_| tokio::spawn(slowloris(address.clone())))
        .collect();
    let idle: Vec<_> = (0..SILENT)
        .map(|_| tokio::spawn(silent(address.clone())))
        .collect();

    // Meanwhile: stamped requests, each on a new connection.
    let fresh = Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut served = 0;
    while !(slow.iter().all(|t| t.is_finished()) && idle.iter().all(|t| t.is_finished())) {
        let started = Instant::now();
        let response = fresh
            .get(format!("{base}/api/meanwhile"))
            .header("x-authstamp-provider", PROVIDER)
            .header("x-authstamp-user", "alice")
            .header("x-authstamp-app", &stack.app_id)
            .header("x-authstamp-app-key", &stack.app_key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        served += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served >= 10, "{served} requests served meanwhile");

    let (mut slowest, mut idlest) = (Duration::ZERO, Duration::ZERO);
    for task in slow {
        let end = task.await.unwrap();
        let answered = end.answered.expect("a 408 answer");
        slowest = slowest.max(answered);
        let answer = String::from_utf8_lossy(&end.answer).into_owned();
        assert!(
            answered >= Duration::from_millis(900) && answered < Duration::from_secs(3),
            "a slow client was answered after {answered:?}"
        );
        // Envoy closes after its answer (delayed_close_timeout, 1 s).
        assert!(
            end.after < Duration::from_secs(5),
            "closed after {:?}",
            end.after
        );
        assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
        assert!(
            answer.contains("x-authstamp-error: request_timeout"),
            "{answer}"
        );
    }
    for task in idle {
        let end = task.await.unwrap();
        idlest = idlest.max(end.after);
        assert!(
            end.after >= Duration::from_millis(1800) && end.after < Duration::from_secs(6),
            "an idle client was closed after {:?}",
            end.after
        );
        assert!(end.answer.is_empty());
    }
    assert_eq!(
        envoy
            .stat("http.authstamp_egress.downstream_rq_header_timeout")
            .await,
        SLOW as u64
    );
    assert!(
        envoy
            .stat("http.authstamp_egress.downstream_cx_idle_timeout")
            .await
            >= SILENT as u64
    );
    eprintln!(
        "{SLOW} slow clients answered 408 within {slowest:?} (headers timeout 1 s), \
         {SILENT} silent ones within {idlest:?} (idle timeout 2 s), \
         {served} stamped requests served meanwhile"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_refused_and_the_admin_port_stays_open() {
    let stack = Stack::start("edges_connection_limit", StackOptions::default()).await;
    let config = local_bootstrap(&stack.filter_url);
    let from = "max_active_downstream_connections: 4096";
    assert_eq!(config.matches(from).count(), 1);
    let config = config.replace(from, "max_active_downstream_connections: 5");
    let envoy = Envoy::start(&stack.log_dir, "limited-envoy", &config, &[]).await;
    let address = envoy
        .listener(GATEWAY_LISTENER)
        .trim_start_matches("http://")
        .to_string();
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(tokio::net::TcpStream::connect(&address).await.unwrap());
    }
    // Held connections are counted once Envoy accepted them.
    let deadline = Instant::now() + Duration::from_secs(10);
    while envoy
        .stat("http.authstamp_egress.downstream_cx_active")
        .await
        < 5
    {
        assert!(Instant::now() < deadline, "5 connections not accepted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = raw_http(
        &address,
        b"GET /x HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(refused.status, 0, "the sixth connection got an answer");
    // The admin API does not count.
    let ready = stack
        .http
        .get(format!("{}/ready", envoy.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = raw_http(
            &address,
            b"GET /x HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            Duration::from_secs(5),
        )
        .await;
        if answer.status == 404 {
            assert_eq!(answer.header("x-authstamp-error"), Some("not_found"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no answer after the held connections closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One raw request per Envoy refusal: `(name, request, status, code)`.
fn envoy_refusals() -> Vec<(&'static str, Vec<u8>, u16, &'static str)> {
    let big = "b".repeat(40 * 1024);
    let long_path = "p".repeat(40 * 1024);
    vec![
        (
            "underscore header",
            b"GET /x HTTP/1.1\r\nhost: x\r\nx_authstamp_user: bob\r\nconnection: close\r\n\r\n"
                .to_vec(),
            400,
            "bad_request",
        ),
        (
            "not HTTP",
            b"HELLO THERE\r\n\r\n".to_vec(),
            400,
            "bad_request",
        ),
        (
            "invalid header name",
            b"GET /x HTTP/1.1\r\nhost: x\r\nbad header: 1\r\nconnection: close\r\n\r\n".to_vec(),
            400,
            "bad_request",
        ),
        (
            "WebSocket upgrade",
            b"GET /x HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"
                .to_vec(),
            403,
            "upgrade_refused",
        ),
        (
            "OPTIONS *",
            b"OPTIONS * HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_vec(),
            404,
            "not_found",
        ),
        (
            "CONNECT",
            b"CONNECT x:443 HTTP/1.1\r\nhost: x:443\r\n\r\n".to_vec(),
            404,
            "not_found",
        ),
        (
            "HTTP/1.0",
            b"GET /x HTTP/1.0\r\n\r\n".to_vec(),
            426,
            "upgrade_required",
        ),
        (
            "headers of 40 KiB",
            format!("GET /x HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\nconnection: close\r\n\r\n")
                .into_bytes(),
            431,
            "headers_too_large",
        ),
        (
            "URL of 40 KiB",
            format!("GET /{long_path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                .into_bytes(),
            431,
            "headers_too_large",
        ),
        (
            "unknown transfer encoding",
            b"POST /x HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip\r\nconnection: close\r\n\r\n"
                .to_vec(),
            501,
            "not_implemented",
        ),
    ]
}

fn assert_contract(name: &str, response: &RawResponse, status: u16, code: &str) {
    assert_eq!(response.status, status, "{name}");
    assert_eq!(response.header("x-authstamp-error"), Some(code), "{name}");
    assert_eq!(
        response.header("content-type"),
        Some("application/json"),
        "{name}"
    );
    let body = response.json();
    assert_eq!(body["error"], code, "{name}: {body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
}

/// A provider that answers every request itself with this status and a
/// plain-text body.
async fn provider_answering(status_line: &str, body: &str) -> RawUpstream {
    RawUpstream::start(Some(
        format!(
            "HTTP/1.1 {status_line}\r\ncontent-type: text/plain\r\nx-provider: own\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_refusals_follow_the_json_contract_and_other_replies_pass_as_they_are() {
    let stack = Stack::start("edges_local_replies", StackOptions::default()).await;
    stack.connect_user("alice").await;
    let (local, compose, egress) = start_all(&stack).await;

    // 1. Envoy's own refusals, through every bootstrap.
    for envoy in [&local, &compose, &egress] {
        let address = envoy
            .listeners
            .values()
            .next()
            .unwrap()
            .trim_start_matches("http://")
            .to_string();
        for (name, request, status, code) in envoy_refusals() {
            let started = Instant::now();
            let response = raw_http(&address, &request, Duration::from_secs(10)).await;
            assert_contract(name, &response, status, code);
            // Envoy answers and closes the connection.
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{name}: {:?}",
                started.elapsed()
            );
        }
    }

    // 2. The upstream cannot be reached (503) or does not answer (504, with
    // the route timeout made 1 s).
    let standin = stack.standin_url.clone();
    let closed_port = authstamp_e2e::process::free_port();
    let hanging = RawUpstream::start(None).await;
    for (provider, api) in [
        ("standin-down", format!("http://127.0.0.1:{closed_port}")),
        ("standin-hangs", hanging.url.clone()),
    ] {
        configure_provider_urls(
            &stack,
            &stack.app_id,
            provider,
            &format!("{standin}/oauth/authorize"),
            &format!("{standin}/oauth/token"),
            &api,
        )
        .await;
        connect_provider(&stack, provider, "alice").await;
    }
    let short = Envoy::start(
        &stack.log_dir,
        "short-timeouts-envoy",
        &short_timeouts_bootstrap(&stack.filter_url),
        &[],
    )
    .await;
    for (base, provider, status, code) in [
        (
            local.listener(GATEWAY_LISTENER),
            "standin-down",
            503,
            "upstream_unavailable",
        ),
        (
            short.listener(GATEWAY_LISTENER),
            "standin-hangs",
            504,
            "upstream_timeout",
        ),
    ] {
        let response = stack
            .http
            .get(format!("{base}/api/x"))
            .header("x-authstamp-provider", provider)
            .header("x-authstamp-user", "alice")
            .header("x-authstamp-app", &stack.app_id)
            .header("x-authstamp-app-key", &stack.app_key)
            .send()
            .await
            .unwrap();
        assert_error(response, status, code).await;
    }
    assert_eq!(
        hanging.seen().len(),
        1,
        "the request reached the hanging provider"
    );

    // 3. The provider's own 503 and 404 are not local replies: untouched.
    for (provider, status_line, body) in [
        (
            "standin-own-503",
            "503 Service Unavailable",
            "provider down",
        ),
        ("standin-own-404", "404 Not Found", "no such thing"),
    ] {
        let upstream = provider_answering(status_line, body).await;
        configure_provider_urls(
            &stack,
            &stack.app_id,
            provider,
            &format!("{standin}/oauth/authorize"),
            &format!("{standin}/oauth/token"),
            &upstream.url,
        )
        .await;
        connect_provider(&stack, provider, "alice").await;
        let response = stack
            .http
            .get(format!("{}/api/x", local.listener(GATEWAY_LISTENER)))
            .header("x-authstamp-provider", provider)
            .header("x-authstamp-user", "alice")
            .header("x-authstamp-app", &stack.app_id)
            .header("x-authstamp-app-key", &stack.app_key)
            .send()
            .await
            .unwrap();
        let status: u16 = status_line[..3].parse().unwrap();
        assert_eq!(response.status().as_u16(), status);
        assert!(response.headers().get("x-authstamp-error").is_none());
        assert_eq!(response.headers()["x-provider"], "own");
        assert_eq!(response.headers()["content-type"], "text/plain");
        assert_eq!(response.text().await.unwrap(), body);
        assert_eq!(upstream.seen().len(), 1);
    }

    // 4. The filter's replies and the catch-all route's are byte for byte
    // what the same bootstrap without local_reply_config sends.
    let mut bare = parse_yaml(&local_bootstrap(&stack.filter_url));
    http_connection_manager(&mut bare, GATEWAY_LISTENER)
        .as_mapping_mut()
        .unwrap()
        .remove("local_reply_config")
        .expect("envoy.yaml has a local_reply_config");
    let bare = Envoy::start(
        &stack.log_dir,
        "bare-envoy",
        &serde_yaml_ng::to_string(&bare).unwrap(),
        &[],
    )
    .await;
    let app = format!(
        "x-authstamp-app: {}\r\nx-authstamp-app-key: {}\r\n",
        stack.app_id, stack.app_key
    );
    let filter_replies = [
        format!("GET /x HTTP/1.1\r\nhost: x\r\nx-authstamp-provider: {PROVIDER}\r\n{app}connection: close\r\n\r\n"),
        format!("GET /x HTTP/1.1\r\nhost: x\r\nx-authstamp-provider: nope\r\nx-authstamp-user: alice\r\n{app}connection: close\r\n\r\n"),
        format!("GET /x HTTP/1.1\r\nhost: x\r\nx-authstamp-provider: {PROVIDER}\r\nx-authstamp-user: nobody\r\n{app}connection: close\r\n\r\n"),
        format!("GET /x HTTP/1.1\r\nhost: x\r\nx-authstamp-provider: {PROVIDER}\r\nx-authstamp-user: alice\r\nx-authstamp-app: {}\r\nx-authstamp-app-key: ask_wrong\r\nconnection: close\r\n\r\n", stack.app_id),
        "GET /x HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_string(),
    ];
    let without_date = |r: &RawResponse| -> Vec<(String, String)> {
        r.headers
            .iter()
            .filter(|(n, _)| n != "date")
            .cloned()
            .collect()
    };
    let mut codes = Vec::new();
    for request in &filter_replies {
        let address = |e: &Envoy| {
            e.listener(GATEWAY_LISTENER)
                .trim_start_matches("http://")
                .to_string()
        };
        let mapped = raw_http(
            &address(&local),
            request.as_bytes(),
            Duration::from_secs(10),
        )
        .await;
        let original = raw_http(&address(&bare), request.as_bytes(), Duration::from_secs(10)).await;
        assert!(mapped.status >= 400, "{request}");
        assert_eq!(mapped.status, original.status, "{request}");
        assert_eq!(without_date(&mapped), without_date(&original), "{request}");
        assert_eq!(mapped.body, original.body, "{request}");
        codes.push(mapped.header("x-authstamp-error").unwrap().to_string());
    }
    assert_eq!(
        codes,
        [
            "bad_request",
            "unknown_provider",
            "not_connected",
            "bad_app_key",
            "not_found"
        ]
    );
}

/// What the provider answers in the exactness test: its own `Server`, a
/// `Date`, rate-limit headers and two `Set-Cookie`.
const PROVIDER_RESPONSE: &str = "HTTP/1.1 200 OK\r\nserver: provider-own/1.0\r\ndate: Mon, 01 Jan 2024 00:00:00 GMT\r\nx-ratelimit-limit: 50\r\nx-ratelimit-remaining: 41\r\nset-cookie: a=1; Path=/\r\nset-cookie: b=2; Path=/\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}";

const EXACT_BODY: &str = r#"{"n": 1}"#;

/// The headers of [`PROVIDER_RESPONSE`], sorted.
fn provider_response_headers() -> Vec<(String, String)> {
    pairs(&[
        ("server", "provider-own/1.0"),
        ("date", "Mon, 01 Jan 2024 00:00:00 GMT"),
        ("x-ratelimit-limit", "50"),
        ("x-ratelimit-remaining", "41"),
        ("set-cookie", "a=1; Path=/"),
        ("set-cookie", "b=2; Path=/"),
        ("content-type", "application/json"),
        ("content-length", "11"),
    ])
}

/// `(request line, headers sorted, body)` of one raw HTTP/1.1 request.
fn parse_request(raw: &[u8]) -> (String, Vec<(String, String)>, Vec<u8>) {
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a request head");
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap().to_string();
    let mut headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    headers.sort();
    (request_line, headers, raw[head_end + 4..].to_vec())
}

fn sorted(mut headers: Vec<(String, String)>) -> Vec<(String, String)> {
    headers.sort();
    headers
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    sorted(
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_provider_and_the_app_each_get_exactly_what_the_other_sent() {
    let stack = Stack::start("edges_exact", StackOptions::default()).await;
    let upstream = RawUpstream::start(Some(PROVIDER_RESPONSE.as_bytes().to_vec())).await;
    let upstream_authority = upstream.url.trim_start_matches("http://").to_string();
    let standin = stack.standin_url.clone();
    configure_provider_urls(
        &stack,
        &stack.app_id,
        "exact",
        &format!("{standin}/oauth/authorize"),
        &format!("{standin}/oauth/token"),
        &upstream.url,
    )
    .await;
    connect_provider(&stack, "exact", "alice").await;
    let (local, compose, egress) = start_all_mapping(&stack, &upstream_authority, "exact").await;

    let body = EXACT_BODY;
    let expected_upstream_headers = || {
        pairs(&[
            ("host", &upstream_authority),
            ("x-custom", "one"),
            ("x-custom", "two"),
            ("accept", "*/*"),
            ("user-agent", "app/1"),
            ("content-type", "application/json"),
            ("content-length", &body.len().to_string()),
        ])
    };
    let app_headers = format!(
        "x-custom: one\r\nx-custom: two\r\naccept: */*\r\nuser-agent: app/1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    let gateway_request = |listener: &str| {
        format!(
            "POST /v1/things?x=1&y=%20 HTTP/1.1\r\nhost: {}\r\nx-authstamp-provider: exact\r\nx-authstamp-user: alice\r\nx-authstamp-app: {}\r\nx-authstamp-app-key: {}\r\n{app_headers}\r\n{body}",
            listener.trim_start_matches("http://"),
            stack.app_id,
            stack.app_key
        )
    };
    let egress_request = format!(
        "POST http://{upstream_authority}/v1/things?x=1&y=%20 HTTP/1.1\r\nhost: {upstream_authority}\r\nx-authstamp-user: alice\r\n{app_headers}\r\n{body}"
    );
    let runs = [
        (&local, gateway_request(local.listener(GATEWAY_LISTENER))),
        (
            &compose,
            gateway_request(compose.listener(GATEWAY_LISTENER)),
        ),
        (&egress, egress_request),
    ];
    for (n, (envoy, request)) in runs.iter().enumerate() {
        let address = envoy
            .listeners
            .values()
            .next()
            .unwrap()
            .trim_start_matches("http://")
            .to_string();
        let response = raw_http(&address, request.as_bytes(), Duration::from_secs(10)).await;
        // The app gets the provider's answer as sent.
        assert_eq!(response.status, 200, "{request}");
        assert_eq!(
            sorted(response.headers.clone()),
            provider_response_headers(),
            "{request}"
        );
        assert_eq!(response.body, b"{\"ok\":true}");

        // The provider gets the app's request as sent, plus the token.
        let seen = upstream.seen();
        assert_eq!(seen.len(), n + 1);
        let (request_line, mut headers, received_body) = parse_request(&seen[n]);
        assert_eq!(request_line, "POST /v1/things?x=1&y=%20 HTTP/1.1");
        assert_eq!(received_body, body.as_bytes());
        let token = headers
            .iter()
            .position(|(name, _)| name == "authorization")
            .map(|i| headers.remove(i).1)
            .expect("stamped");
        assert!(token.starts_with("Bearer sat_"), "{token}");
        assert_eq!(headers, expected_upstream_headers(), "{request}");
    }

    // The same over HTTP/2 from the app (curl, prior knowledge), to both
    // gateway bootstraps.
    for envoy in [&local, &compose] {
        let url = format!("{}/v1/things?x=1&y=%20", envoy.listener(GATEWAY_LISTENER));
        let output = std::process::Command::new("curl")
            .args(["-sS", "-i", "--http2-prior-knowledge", "-X", "POST", &url])
            .args([
                "-H",
                "x-authstamp-provider: exact",
                "-H",
                "x-authstamp-user: alice",
            ])
            .args(["-H", &format!("x-authstamp-app: {}", stack.app_id)])
            .args(["-H", &format!("x-authstamp-app-key: {}", stack.app_key)])
            .args([
                "-H",
                "x-custom: one",
                "-H",
                "x-custom: two",
                "-H",
                "accept: */*",
            ])
            .args([
                "-H",
                "user-agent: app/1",
                "-H",
                "content-type: application/json",
            ])
            .args(["--data-binary", body])
            .output()
            .expect("run curl");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let (head, response_body) = text.split_once("\r\n\r\n").expect("a response");
        let mut lines = head.split("\r\n");
        assert_eq!(lines.next().map(str::trim), Some("HTTP/2 200"), "{text}");
        let response_headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .collect();
        assert_eq!(
            sorted(response_headers),
            provider_response_headers(),
            "HTTP/2: {text}"
        );
        assert_eq!(response_body, "{\"ok\":true}");
        let seen = upstream.seen();
        let (request_line, mut headers, received_body) = parse_request(seen.last().unwrap());
        assert_eq!(request_line, "POST /v1/things?x=1&y=%20 HTTP/1.1");
        assert_eq!(received_body, body.as_bytes());
        headers
            .retain(|(name, value)| !(name == "authorization" && value.starts_with("Bearer sat_")));
        assert_eq!(headers, expected_upstream_headers(), "HTTP/2");
    }
}
