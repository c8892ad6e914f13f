//! A stamped request only ever goes to its provider's host, under its base
//! path. Each attempt to send it elsewhere, written byte for byte on a raw
//! socket so no client library tidies it up, is either refused with a JSON
//! error or rewritten to the provider's host; a listener standing in for the
//! attacker's host counts every connection it gets, and must get none; one
//! standing in for the provider records every request it gets, and gets none
//! that could climb out of the base path.

use authstamp_e2e::deploy::{configure_provider_urls, egress_bootstrap, EchoServer, Envoy};
use authstamp_e2e::stack::PROVIDER;
use authstamp_e2e::{Stack, StackOptions};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A loopback listener that counts connections and answers nothing useful.
fn attacker_listener() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            counter.fetch_add(1, Ordering::SeqCst);
            if let Ok(mut stream) = stream {
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstole");
            }
        }
    });
    (address, hits)
}

struct RawResponse {
    status: u16,
    head: String,
    body: String,
}

fn send_raw(envoy_url: &str, request: &str) -> RawResponse {
    let address = envoy_url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    // Up to the end of the body its content-length announces (Envoy holds a
    // refused connection open for its delayed-close timeout), else to EOF.
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if length.is_some_and(|length| raw.len() >= end + 4 + length) {
                break;
            }
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    RawResponse {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_never_travels_to_a_host_its_provider_does_not_name() {
    let stack = Stack::start("destinations", StackOptions::default()).await;
    stack.connect_user("ivan").await;
    let (evil, evil_hits) = attacker_listener();
    let provider_host = stack.standin_url.trim_start_matches("http://").to_string();
    let evil_port = evil.rsplit(':').next().unwrap();
    let identity = format!(
        "x-authstamp-provider: {PROVIDER}\r\nx-authstamp-user: ivan\r\nx-authstamp-app: {}\r\nx-authstamp-app-key: {}\r\nconnection: close\r\n",
        stack.app_id, stack.app_key
    );

    // (attempt, request line + extra headers, Host header)
    let attempts: Vec<(&str, String, String)> = vec![
        (
            "forged Host",
            "GET /api/x HTTP/1.1\r\n".into(),
            evil.clone(),
        ),
        (
            "x-forwarded-host",
            format!("GET /api/x HTTP/1.1\r\nx-forwarded-host: {evil}\r\n"),
            evil.clone(),
        ),
        (
            "absolute URL in the request line",
            format!("GET http://{evil}/api/x HTTP/1.1\r\n"),
            evil.clone(),
        ),
        (
            "scheme-relative path",
            format!("GET //{evil}/api/x HTTP/1.1\r\n"),
            evil.clone(),
        ),
        (
            "userinfo in Host",
            "GET /api/x HTTP/1.1\r\n".into(),
            format!("{provider_host}@{evil}"),
        ),
        (
            "userinfo in the path",
            format!("GET /@{evil}/api/x HTTP/1.1\r\n"),
            evil.clone(),
        ),
        (
            "percent-encoded slashes",
            format!("GET /%2F%2F{evil}/api/x HTTP/1.1\r\n"),
            evil.clone(),
        ),
        (
            "backslash path",
            format!("GET /\\\\{evil}/api/x HTTP/1.1\r\n"),
            evil.clone(),
        ),
        (
            "mixed-case host",
            "GET /api/x HTTP/1.1\r\n".into(),
            format!("LocalHost:{evil_port}"),
        ),
        (
            "percent-encoded host",
            "GET /api/x HTTP/1.1\r\n".into(),
            format!("127.0.0.%31:{evil_port}"),
        ),
        (
            "other port on the provider's IP",
            "GET /api/x HTTP/1.1\r\n".into(),
            format!("127.0.0.1:{evil_port}"),
        ),
        (
            "forged route header",
            "GET /api/x HTTP/1.1\r\nx-authstamp-route: http\r\n".into(),
            evil.clone(),
        ),
    ];

    let mut delivered = 0;
    for (name, request_line, host) in &attempts {
        let request = format!("{request_line}host: {host}\r\n{identity}\r\n");
        let response = send_raw(&stack.envoy_url, &request);
        eprintln!("{name}: {}", response.status);
        match response.status {
            200..=299 => {
                // Rewritten: it reached the provider, on the provider's host.
                let echo: Value = serde_json::from_str(&response.body).unwrap_or_else(|e| {
                    panic!("{name}: not the provider's echo ({e}): {}", response.body)
                });
                assert_eq!(echo["headers"]["host"][0], provider_host, "{name}");
                assert!(echo["headers"].get("x-forwarded-host").is_none(), "{name}");
                delivered += 1;
            }
            400..=499 => {
                // Refused: a JSON error from the filter or Envoy, never from the attacker.
                assert!(!response.body.contains("stole"), "{name}");
                if response.head.contains("x-authstamp-error") {
                    let body: Value = serde_json::from_str(&response.body).unwrap();
                    assert!(body["error"].is_string(), "{name}: {}", response.body);
                }
            }
            other => panic!("{name}: unexpected status {other}: {}", response.body),
        }
    }
    assert_eq!(
        evil_hits.load(Ordering::SeqCst),
        0,
        "a request reached the attacker's host"
    );
    assert!(
        delivered >= 6,
        "most attempts are rewritten to the provider ({delivered})"
    );

    // The scheme-relative path is refused by the filter itself.
    let refused = send_raw(
        &stack.envoy_url,
        &format!("GET //{evil}/api/x HTTP/1.1\r\nhost: {evil}\r\n{identity}\r\n"),
    );
    assert_eq!(refused.status, 403);
    assert!(refused
        .head
        .contains("x-authstamp-error: forbidden_destination"));
}

/// Paths that a normalising provider would resolve outside the base path,
/// each relative to the base path (`/base` in egress mode, where the path is
/// sent as is).
const CLIMBS: [&str; 21] = [
    "/../admin",
    "/./admin",
    "/x/../../admin",
    "/x/..",
    "/%2e%2e/admin",
    "/%2E%2E/admin",
    "/%2e%2E/admin",
    "/.%2e/admin",
    "/%2e./admin",
    "/..%2fadmin",
    "/..%2Fadmin",
    "/%2e%2e%2fadmin",
    "/..%5cadmin",
    "/%5c..%5cadmin",
    "/..;/admin",
    "/.;x/admin",
    "/\\..\\admin",
    "/%252e%252e/admin",
    "/..%252fadmin",
    "/%u002e%u002e/admin",
    "/%c0%ae%c0%ae/admin",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_dot_segment_in_any_spelling_leaves_the_base_path_with_a_token() {
    let stack = Stack::start("destinations_base_path", StackOptions::default()).await;
    // The provider's API host records what reaches it; its base path is /base.
    let api = EchoServer::start().await;
    let standin = stack.standin_url.clone();
    configure_provider_urls(
        &stack,
        &stack.app_id,
        PROVIDER,
        &format!("{standin}/oauth/authorize"),
        &format!("{standin}/oauth/token"),
        &format!("{}/base", api.url),
    )
    .await;
    stack.connect_user("ivan").await;
    // A query credential on the same host and base path.
    stack
        .put_provider(
            "standin-key-query",
            serde_json::json!({"auth_type": "api_key", "api_base_url": format!("{}/base", api.url),
                               "header": {"name": "api_key", "format": "{token}", "in": "query"}}),
        )
        .await;
    let stored = stack
        .as_app(
            reqwest::Method::PUT,
            "/v1/connections/standin-key-query/ivan/credentials",
        )
        .json(&serde_json::json!({"api_key": "key-ivan"}))
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 200);
    // Transparent egress to the same host: the path is kept as sent.
    let egress = Envoy::start(
        &stack.log_dir,
        "egress-envoy",
        &egress_bootstrap(&stack, &[(api.authority.as_str(), PROVIDER)], "pass"),
        &[("AUTHSTAMP_APP_KEY", stack.app_key.as_str())],
    )
    .await;
    let egress_url = egress.listener("authstamp_transparent_egress").to_string();

    let gateway = |provider: &str, path: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nhost: envoy\r\nx-authstamp-provider: {provider}\r\nx-authstamp-user: ivan\r\nx-authstamp-app: {}\r\nx-authstamp-app-key: {}\r\nconnection: close\r\n\r\n",
            stack.app_id, stack.app_key
        )
    };
    let transparent = |path: &str| {
        format!(
            "GET http://{0}{path} HTTP/1.1\r\nhost: {0}\r\nx-authstamp-user: ivan\r\nconnection: close\r\n\r\n",
            api.authority
        )
    };
    // (mode, Envoy, request for a path relative to the base path)
    type Mode<'a> = (&'a str, &'a str, Box<dyn Fn(&str) -> String + 'a>);
    let modes: Vec<Mode> = vec![
        (
            "bearer",
            &stack.envoy_url,
            Box::new(|p: &str| gateway(PROVIDER, p)),
        ),
        (
            "query credential",
            &stack.envoy_url,
            Box::new(|p: &str| gateway("standin-key-query", p)),
        ),
        (
            "egress",
            &egress_url,
            Box::new(|p: &str| transparent(&format!("/base{p}"))),
        ),
    ];

    let mut by_filter = 0;
    let mut failures = Vec::new();
    for (mode, envoy, request) in &modes {
        // The same request on a plain path arrives stamped: the refusals below are the path's.
        let control = send_raw(envoy, &request("/ok"));
        assert_eq!(control.status, 200, "{mode}: {}", control.body);
        for climb in CLIMBS {
            let response = send_raw(envoy, &request(climb));
            let code = response
                .head
                .lines()
                .find_map(|l| l.strip_prefix("x-authstamp-error: "))
                .map(str::to_string);
            match (response.status, code.as_deref()) {
                (403, Some("forbidden_destination")) => {
                    let body: Value = serde_json::from_str(&response.body).unwrap();
                    assert_eq!(body["error"], "forbidden_destination", "{mode} {climb}");
                    by_filter += 1;
                }
                // Envoy's codec refusing the request line itself.
                (400, None) => {}
                (status, code) => failures.push(format!("{mode} {climb}: {status} {code:?}")),
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    let seen: Vec<String> = api
        .seen()
        .iter()
        .map(|r| r["request_line"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        seen,
        [
            "GET /base/ok HTTP/1.1",
            "GET /base/ok?api_key=key-ivan HTTP/1.1",
            "GET /base/ok HTTP/1.1",
        ],
        "only the plain requests reached the provider's host"
    );
    assert!(
        by_filter >= 3 * (CLIMBS.len() - 2),
        "the filter refused {by_filter} of {}",
        3 * CLIMBS.len()
    );
    eprintln!(
        "{by_filter} of {} climbs refused by the filter, the rest by Envoy's codec",
        3 * CLIMBS.len()
    );
}
