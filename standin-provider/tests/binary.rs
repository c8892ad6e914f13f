//! The real binary: the "listening" line, a flow over TCP, no secrets in the logs, and a
//! graceful exit on SIGTERM.
#![cfg(unix)]
#![allow(clippy::unwrap_used)]

use std::process::Stdio;
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::time::timeout;

const SECRET: &str = "binary-test-secret-7f3a";
const VERIFIER: &str = "verifier-for-the-binary-test-0123456789-abcdefghij";
const STATE: &str = "state-value-9c1e";

/// One HTTP/1.1 request on a fresh connection; returns (status, headers, body).
async fn http(addr: &str, request: String) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_owned(), body.to_owned())
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: standin\r\nConnection: close\r\n\r\n")
}

fn post_form(path: &str, body: &str, extra: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: standin\r\nConnection: close\r\n{extra}\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn form(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

#[tokio::test]
async fn binary_serves_logs_safely_and_stops_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_authstamp-standin"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--client-id",
            "bin-app",
            "--send-iss",
        ])
        .env("AUTHSTAMP_STANDIN_CLIENT_SECRET", SECRET)
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    timeout(Duration::from_secs(30), stdout.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    let url = line
        .trim_end()
        .strip_prefix("authstamp-standin listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    let addr = url.to_owned();
    assert!(
        addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
        "{addr}"
    );
    let mut stderr = child.stderr.take().unwrap();
    let stderr_task = tokio::spawn(async move {
        let mut logs = String::new();
        stderr.read_to_string(&mut logs).await.unwrap();
        logs
    });

    let (status, _, body) = http(&addr, get("/healthz")).await;
    assert_eq!((status, body.as_str()), (200, "ok"));

    // A full flow over TCP.
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(VERIFIER.as_bytes()));
    let redirect_uri = "http://127.0.0.1:1/cb";
    let request = [
        ("response_type", "code"),
        ("client_id", "bin-app"),
        ("redirect_uri", redirect_uri),
        ("state", STATE),
        ("scope", "read"),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ];
    let (status, _, page) = http(&addr, get(&format!("/oauth/authorize?{}", form(&request)))).await;
    assert_eq!(status, 200);
    assert!(page.contains("App bin-app asks for read"));
    let mut approve = request.to_vec();
    approve.push(("login", "carol"));
    approve.push(("decision", "approve"));
    let (status, head, _) = http(&addr, post_form("/oauth/authorize", &form(&approve), "")).await;
    assert_eq!(status, 302);
    let location = head
        .lines()
        .find_map(|l| l.strip_prefix("location: "))
        .unwrap();
    let location = url::Url::parse(location).unwrap();
    let param = |n: &str| {
        location
            .query_pairs()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.into_owned())
            .unwrap()
    };
    let code = param("code");
    assert_eq!(param("iss"), format!("http://{addr}"));

    let basic = format!(
        "Authorization: Basic {}\r\n",
        STANDARD.encode(format!("bin-app:{SECRET}"))
    );
    let exchange = form(&[
        ("grant_type", "authorization_code"),
        ("code", &code),
        ("redirect_uri", redirect_uri),
        ("code_verifier", VERIFIER),
    ]);
    let (status, _, body) = http(&addr, post_form("/oauth/token", &exchange, &basic)).await;
    assert_eq!(status, 200, "{body}");
    let tokens: serde_json::Value = serde_json::from_str(&body).unwrap();
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let refresh = tokens["refresh_token"].as_str().unwrap().to_owned();
    let (status, _, body) = http(
        &addr,
        format!(
            "GET /api/whoami?q=1 HTTP/1.1\r\nHost: standin\r\nConnection: close\r\n\
             Authorization: Bearer {access}\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echo["user"], "carol");
    assert_eq!(echo["headers"]["host"], serde_json::json!(["standin"]));
    // Replay the code too, so the error path is logged.
    let (status, _, _) = http(&addr, post_form("/oauth/token", &exchange, &basic)).await;
    assert_eq!(status, 400);

    // SIGTERM: graceful shutdown, exit status 0.
    let pid = child.id().unwrap().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let exit = timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit:?}");

    let logs = stderr_task.await.unwrap();
    assert!(logs.contains("/oauth/token"), "{logs}");
    for secret in [
        SECRET,
        &code,
        &access,
        &refresh,
        VERIFIER,
        STATE,
        challenge.as_str(),
        "q=1",
    ] {
        assert!(!logs.contains(secret), "logs leak {secret:?}:\n{logs}");
    }
    // Nothing else on stdout after the listening line.
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).await.unwrap();
    assert_eq!(rest, "");
}

#[tokio::test]
async fn binary_refuses_to_start_without_a_secret() {
    let out = Command::new(env!("CARGO_BIN_EXE_authstamp-standin"))
        .args(["--client-id", "x"])
        .env_remove("AUTHSTAMP_STANDIN_CLIENT_SECRET")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
}
