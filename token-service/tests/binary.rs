//! The `authstamp` binary: refusing to start without a key, local mode,
//! the CLI admin commands, a whole connect flow over real sockets, graceful
//! shutdown, and logs free of secrets.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use authstamp_testkit::process::Service;
use authstamp_token_service::secrets::MasterKey;
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_authstamp");
const FILTER_TOKEN: &str = "filter-LOGCHECK-token";

fn command(data_dir: &Path) -> Command {
    with_test_env(Command::new(BIN), data_dir)
}

/// `authstamp` with at most `limit` open file descriptors (`ulimit -n`).
fn command_with_fd_limit(data_dir: &Path, limit: u32) -> Command {
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        &format!("ulimit -n {limit} && exec \"$0\" \"$@\""),
        BIN,
    ]);
    with_test_env(cmd, data_dir)
}

fn with_test_env(mut cmd: Command, data_dir: &Path) -> Command {
    for (name, _) in std::env::vars() {
        if name.starts_with("AUTHSTAMP_") {
            cmd.env_remove(name);
        }
    }
    cmd.env("AUTHSTAMP_DATA_DIR", data_dir)
        .env("RUST_LOG", "info");
    cmd
}

/// `authstamp serve` from `cmd`, both listeners on loopback and apart.
fn start_server(cmd: Command) -> Service {
    let server = Service::start(cmd);
    assert!(
        server.url.starts_with("http://127.0.0.1:"),
        "{}",
        server.url
    );
    assert!(
        server.filter_url.starts_with("http://127.0.0.1:"),
        "{}",
        server.filter_url
    );
    assert_ne!(server.url, server.filter_url);
    server
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[test]
fn serve_without_a_master_key_exits_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let output = command(&dir.path().join("data"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("AUTHSTAMP_MASTER_KEY"), "{stderr}");
    assert!(stderr.contains("--master-key-file"), "{stderr}");
}

#[tokio::test]
async fn local_mode_creates_its_secrets_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut cmd = command(&data);
    cmd.args(["serve", "--local", "--listen", "127.0.0.1:0"])
        .args(["--filter-listen", "127.0.0.1:0"]);
    let server = start_server(cmd);

    let key_path = data.join("master.key");
    let token_path = data.join("admin.token");
    let filter_token_path = data.join("filter.token");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        for path in [&key_path, &token_path, &filter_token_path] {
            let mode = std::fs::metadata(path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", path.display());
        }
    }
    let key = std::fs::read_to_string(&key_path).unwrap();
    assert!(MasterKey::from_base64(&key).is_ok());
    let admin_token = std::fs::read_to_string(&token_path)
        .unwrap()
        .trim()
        .to_owned();
    assert!(data.join("authstamp.db").exists());

    let client = http();
    let health = client
        .get(format!("{}/healthz", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let created = client
        .post(format!("{}/v1/apps", server.url))
        .bearer_auth(&admin_token)
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let denied = client
        .post(format!("{}/v1/apps", server.url))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 401);
    assert_eq!(denied.headers()["x-authstamp-error"], "unauthorized");

    let logs = server.stop();
    assert!(
        logs.contains(&key_path.display().to_string()),
        "logs name the key file: {logs}"
    );
    assert!(!logs.contains(key.trim()), "the key itself is never logged");
    assert!(!logs.contains(&admin_token));
    let filter_token = std::fs::read_to_string(&filter_token_path).unwrap();
    assert!(filter_token.trim().len() >= 32);
    assert!(!logs.contains(filter_token.trim()));

    // A second start reuses the same files.
    let mut cmd = command(&data);
    cmd.args(["serve", "--local", "--listen", "127.0.0.1:0"])
        .args(["--filter-listen", "127.0.0.1:0"]);
    let server = start_server(cmd);
    assert_eq!(std::fs::read_to_string(&key_path).unwrap(), key);
    server.stop();
}

fn run_json(cmd: &mut Command, stdin: Option<&str>) -> Value {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    if let Some(input) = stdin {
        pipe.write_all(input.as_bytes()).unwrap();
    }
    drop(pipe);
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test]
async fn cli_admin_commands_then_a_connect_flow_over_http() {
    // The provider's token endpoint.
    let router = Router::new().route(
        "/token",
        post(|body: String| async move {
            assert!(body.contains("grant_type=authorization_code"));
            axum::Json(json!({"access_token": "xoxp-LOGCHECK-access", "refresh_token": "xoxe-LOGCHECK-refresh", "expires_in": 43200}))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let token_url = format!("http://{}/token", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let master_key = MasterKey::generate().to_base64().to_string();
    let admin_token = "admin-LOGCHECK-token";

    let app = run_json(
        command(&data)
            .env("AUTHSTAMP_MASTER_KEY", &master_key)
            .args([
                "app",
                "create",
                "--name",
                "demo",
                "--allow-return-to",
                "https://app.test/done",
            ]),
        None,
    );
    let app_id = app["app_id"].as_str().unwrap().to_owned();
    let app_key = app["app_key"].as_str().unwrap().to_owned();
    assert!(app_key.starts_with("ask_"));

    let provider = run_json(
        command(&data)
            .env("AUTHSTAMP_MASTER_KEY", &master_key)
            .args([
                "provider",
                "set",
                "--app",
                &app_id,
                "--provider",
                "slack",
                "--client-id",
                "cid",
                "--client-secret-stdin",
                "--authorize-url",
                "https://slack.test/oauth/v2/authorize",
                "--token-url",
                &token_url,
                "--api-base-url",
                "https://slack.test/api",
                "--scope",
                "chat:write",
                "--scope",
                "users:read",
                "--scope-separator",
                ",",
                "--client-auth",
                "body",
            ]),
        Some("cli-LOGCHECK-secret\n"),
    );
    assert_eq!(provider["client_secret_set"], true);
    assert_eq!(provider["scopes"], json!(["chat:write", "users:read"]));
    assert_eq!(provider["client_auth"], "body");
    assert!(!provider.to_string().contains("LOGCHECK"));

    let mut cmd = command(&data);
    cmd.env("AUTHSTAMP_MASTER_KEY", &master_key)
        .env("AUTHSTAMP_ADMIN_TOKEN", admin_token)
        .env("AUTHSTAMP_FILTER_TOKEN", FILTER_TOKEN)
        .env("AUTHSTAMP_LOG_FORMAT", "json")
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(["--filter-listen", "127.0.0.1:0"]);
    let server = start_server(cmd);
    let base = server.url.clone();
    let client = http();

    let view: Value = client
        .get(format!("{base}/v1/apps/{app_id}/providers/slack"))
        .bearer_auth(admin_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(view["redirect_uri"], format!("{base}/v1/oauth/callback"));

    let session: Value = client
        .post(format!("{base}/v1/connect-sessions"))
        .header("x-authstamp-app", &app_id)
        .header("x-authstamp-app-key", &app_key)
        .json(&json!({"provider": "slack", "user": "U123", "return_to": "https://app.test/done"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let connect_url = session["connect_url"].as_str().unwrap().to_owned();
    let session_token = connect_url.rsplit('/').next().unwrap().to_owned();
    let page = client.get(&connect_url).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csrf = page.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .strip_prefix("authstamp_csrf=")
        .unwrap()
        .to_owned();
    let redirect = client
        .post(&connect_url)
        .header("cookie", format!("authstamp_csrf={csrf}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={csrf}"))
        .send()
        .await
        .unwrap();
    assert_eq!(redirect.status(), 303);
    let location = url::Url::parse(redirect.headers()["location"].to_str().unwrap()).unwrap();
    let state = location
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    let cookie = redirect.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let code = "code-LOGCHECK-value";
    let callback = client
        .get(format!(
            "{base}/v1/oauth/callback?code={code}&state={state}"
        ))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(callback.status(), 302);
    let back = url::Url::parse(callback.headers()["location"].to_str().unwrap()).unwrap();
    assert_eq!(back.host_str(), Some("app.test"));
    let result = back
        .query_pairs()
        .find(|(k, _)| k == "authstamp_result")
        .unwrap()
        .1
        .into_owned();
    let confirmed = client
        .post(format!("{base}/v1/connect-results/confirm"))
        .header("x-authstamp-app", &app_id)
        .header("x-authstamp-app-key", &app_key)
        .json(&json!({"result": result, "user": "U123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(confirmed.status(), 200);

    // An app key alone gets no token: no lookup route on the app listener;
    // on the filter listener, no credential, the app key or a wrong one is 401.
    let body = json!({"provider": "slack", "user": "U123"});
    let attempts = [
        (base.clone(), None, 404, "not_found"),
        (server.filter_url.clone(), None, 401, "unauthorized"),
        (
            server.filter_url.clone(),
            Some(app_key.clone()),
            401,
            "unauthorized",
        ),
        (
            server.filter_url.clone(),
            Some(admin_token.to_owned()),
            401,
            "unauthorized",
        ),
        (
            server.filter_url.clone(),
            Some(format!("{FILTER_TOKEN}-")),
            401,
            "unauthorized",
        ),
    ];
    for (listener, bearer, status, code) in attempts {
        let mut request = client
            .post(format!("{listener}/v1/token-lookup"))
            .header("x-authstamp-app", &app_id)
            .header("x-authstamp-app-key", &app_key)
            .json(&body);
        if let Some(bearer) = &bearer {
            request = request.bearer_auth(bearer);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status, "{listener} {bearer:?}");
        assert_eq!(response.headers()["x-authstamp-error"], code);
        let text = response.text().await.unwrap();
        assert!(!text.contains("LOGCHECK"), "{text}");
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["error"], code);
    }

    let lookup: Value = client
        .post(format!("{}/v1/token-lookup", server.filter_url))
        .bearer_auth(FILTER_TOKEN)
        .header("x-authstamp-app", &app_id)
        .header("x-authstamp-app-key", &app_key)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(lookup["header"]["value"], "Bearer xoxp-LOGCHECK-access");
    assert_eq!(
        lookup["upstream"],
        json!({"scheme": "https", "authority": "slack.test", "base_path": "/api"})
    );

    let logs = server.stop();
    // JSON lines with the route template, never a secret or a query string.
    assert!(logs.contains("/v1/oauth/callback"), "{logs}");
    assert!(logs.contains("/v1/connect/{session_token}"), "{logs}");
    for secret in [
        "LOGCHECK",
        state.as_str(),
        session_token.as_str(),
        app_key.as_str(),
        master_key.as_str(),
        FILTER_TOKEN,
        cookie.as_str(),
        csrf.as_str(),
        result.as_str(),
        "code=",
    ] {
        assert!(!logs.contains(secret), "{secret:?} in logs:\n{logs}");
    }
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        serde_json::from_str::<Value>(line)
            .unwrap_or_else(|_| panic!("not a JSON log line: {line}"));
    }
}

fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The data directory is 0700, the database (with -wal and -shm) and the
/// secret files 0600; a secret file open to others refuses the start with
/// the chmod to run, a wider data directory or database is warned about.
#[test]
fn files_at_rest_are_private_and_open_secret_files_refuse_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let serve = || {
        let mut cmd = command(&data);
        cmd.args(["serve", "--local", "--listen", "127.0.0.1:0"])
            .args(["--filter-listen", "127.0.0.1:0"]);
        cmd
    };
    let server = start_server(serve());
    assert_eq!(mode_of(&data), 0o700);
    let files = [
        "authstamp.db",
        "authstamp.db-wal",
        "authstamp.db-shm",
        "master.key",
        "admin.token",
    ]
    .map(|name| data.join(name));
    for file in &files {
        assert_eq!(mode_of(file), 0o600, "{}", file.display());
    }
    server.stop();

    for secret in ["master.key", "admin.token"] {
        let path = data.join(secret);
        set_mode(&path, 0o644);
        let output = serve().output().unwrap();
        assert!(!output.status.success(), "started with {secret} 0644");
        assert!(output.stdout.is_empty());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&format!("chmod 600 {}", path.display())),
            "{stderr}"
        );
        set_mode(&path, 0o600);
    }

    set_mode(&data, 0o755);
    set_mode(&data.join("authstamp.db"), 0o644);
    let server = start_server(serve());
    assert_eq!(mode_of(&data.join("authstamp.db")), 0o600, "tightened");
    let logs = server.stop();
    assert!(
        logs.contains(&format!("chmod 700 {}", data.display())),
        "{logs}"
    );
}

/// One raw HTTP/1.1 exchange (`connection: close`): status line, lowercase
/// headers, body.
async fn raw_exchange(url: &str, request: &[u8]) -> (u16, Vec<(String, String)>, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr = url.strip_prefix("http://").unwrap();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the service answers and closes")
        .unwrap();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

/// Every error the service answers outside its handlers is the JSON
/// contract with `x-authstamp-error` and the right status.
#[tokio::test]
async fn errors_outside_the_handlers_are_json() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut cmd = command(&data);
    cmd.args(["serve", "--local", "--listen", "127.0.0.1:0"])
        .args(["--filter-listen", "127.0.0.1:0"]);
    let server = start_server(cmd);
    let admin = std::fs::read_to_string(data.join("admin.token")).unwrap();
    let admin = admin.trim();
    let big = format!("{{\"name\": \"{}\"}}", "x".repeat(70 * 1024));
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("unknown route", "GET /v2/nope HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".into(), 404, "not_found"),
        ("OPTIONS *", "OPTIONS * HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".into(), 404, "not_found"),
        ("method not allowed", "DELETE /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".into(), 405, "method_not_allowed"),
        (
            "JSON without content-type",
            format!("PUT /v1/apps/app_x/webhook HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {admin}\r\ncontent-length: 12\r\nconnection: close\r\n\r\n{{\"name\":\"x\"}}"),
            415,
            "unsupported_media_type",
        ),
        (
            "invalid JSON",
            format!("POST /v1/apps HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {admin}\r\ncontent-type: application/json\r\ncontent-length: 5\r\nconnection: close\r\n\r\n{{\"nam"),
            400,
            "bad_request",
        ),
        (
            "body over 64 KiB",
            format!("POST /v1/apps HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {admin}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{big}", big.len()),
            413,
            "payload_too_large",
        ),
        (
            "key rotation body over 64 KiB",
            format!("POST /v1/apps/app_x/keys HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {admin}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{big}", big.len()),
            413,
            "payload_too_large",
        ),
    ];
    for (name, request, status, code) in cases {
        let (got, headers, body) = raw_exchange(&server.url, request.as_bytes()).await;
        let header = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(got, status, "{name}: {body}");
        assert_eq!(header("x-authstamp-error"), Some(code), "{name}");
        assert_eq!(header("content-type"), Some("application/json"), "{name}");
        let json: Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{name}: {e}: {body:?}"));
        assert_eq!(json["error"], code, "{name}");
        assert!(
            json["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{name}"
        );
        if status == 405 {
            assert_eq!(header("allow"), Some("GET,HEAD"), "{name}");
        }
    }
    // Known limit: what hyper cannot parse it answers itself, before any
    // router sees the request (empty body): 400 unparsable, 414 URI too long,
    // 431 too many headers. Envoy in front maps those.
    let long_uri = format!("GET /{} HTTP/1.1\r\nhost: x\r\n\r\n", "a".repeat(100_000));
    // More than hyper's 100 headers (small, so it reads them all: no reset).
    let many_headers = format!(
        "GET / HTTP/1.1\r\nhost: x\r\n{}\r\n",
        (0..120)
            .map(|i| format!("x-h{i}: v\r\n"))
            .collect::<String>()
    );
    for (request, status) in [
        ("NOT HTTP\r\n\r\n".to_owned(), 400),
        (long_uri, 414),
        (many_headers, 431),
    ] {
        let (got, _, body) = raw_exchange(&server.url, request.as_bytes()).await;
        assert_eq!((got, body.as_str()), (status, ""));
    }
    server.stop();
}

/// 300 slowloris connections (headers never finished) against a service
/// limited to 256 file descriptors: each is closed after the header read
/// timeout, and a normal client keeps being answered meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_clients_are_closed_while_normal_clients_are_answered() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = command_with_fd_limit(&dir.path().join("data"), 256);
    cmd.args([
        "serve",
        "--local",
        "--listen",
        "127.0.0.1:0",
        "--filter-listen",
        "127.0.0.1:0",
        "--header-read-timeout",
        "2s",
    ]);
    let server = start_server(cmd);
    let addr = server.url.strip_prefix("http://").unwrap().to_owned();

    let started = Instant::now();
    let mut slow = tokio::task::JoinSet::new();
    for _ in 0..300 {
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-slow: ")
            .await
            .unwrap();
        slow.spawn(async move {
            // EOF or reset: the service closed it.
            let mut buf = [0u8; 256];
            let closed = tokio::time::timeout(Duration::from_secs(20), async {
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            })
            .await;
            closed.is_ok().then(|| started.elapsed())
        });
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let normal = async {
        let mut answered = 0;
        let mut slowest = Duration::ZERO;
        while started.elapsed() < Duration::from_secs(6) {
            let sent = Instant::now();
            let reply = client
                .get(format!("{}/v1/catalog", server.url))
                .send()
                .await
                .expect("a normal client is answered");
            assert_eq!(reply.status(), 200);
            slowest = slowest.max(sent.elapsed());
            answered += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (answered, slowest)
    };
    let ((answered, slowest), closed) = tokio::join!(normal, slow.join_all());
    assert_eq!(closed.len(), 300);
    assert!(
        closed.iter().all(Option::is_some),
        "{} slow connections still open after 20 s",
        closed.iter().filter(|c| c.is_none()).count()
    );
    let last_closed = closed.iter().flatten().max().unwrap();
    eprintln!(
        "300 slow connections all closed after {last_closed:?}; {answered} normal answers meanwhile, slowest {slowest:?}"
    );
    assert!(answered >= 5, "{answered} answers");
    // At worst a new client waits for one header timeout to free a descriptor.
    assert!(
        slowest < Duration::from_secs(5),
        "slowest answer {slowest:?}"
    );
    server.stop();
}

/// A kept-alive connection without traffic is closed after --idle-timeout,
/// well before the header read timeout.
#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = command(&dir.path().join("data"));
    cmd.args([
        "serve",
        "--local",
        "--listen",
        "127.0.0.1:0",
        "--filter-listen",
        "127.0.0.1:0",
        "--idle-timeout",
        "1s",
        "--header-read-timeout",
        "20s",
    ]);
    let server = start_server(cmd);
    let addr = server.url.strip_prefix("http://").unwrap();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let answered = Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .expect("closed by the service");
    assert!(matches!(end, Ok(0) | Err(_)));
    let idle = answered.elapsed();
    assert!(
        idle >= Duration::from_millis(800) && idle < Duration::from_secs(5),
        "closed after {idle:?}"
    );
    server.stop();
}
