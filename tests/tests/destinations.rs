//! A stamped request only ever goes to its provider's host. Each attempt to
//! send it elsewhere, written byte for byte on a raw socket so no client
//! library tidies it up, is either refused with a JSON error or rewritten to
//! the provider's host; a listener standing in for the attacker's host counts
//! every connection it gets, and must get none.

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
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
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
