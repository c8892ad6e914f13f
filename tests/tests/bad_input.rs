//! The bad-input matrix: malformed requests to the filter (through the real
//! Envoy) and to the token service, written byte for byte on raw sockets so
//! that nothing tidies them up, each with its expected status and error
//! code; invalid filter configurations refused at load; and the vault
//! (apps, keys, providers, connections) byte-identical afterwards.

use authstamp_e2e::stack::{local_bootstrap, PROVIDER};
use authstamp_e2e::{Stack, StackOptions};
use sha2::Digest as _;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum To {
    Envoy,
    /// The token service's app-facing listener.
    Service,
    /// The token service's filter listener.
    Filter,
}

struct Case {
    name: &'static str,
    to: To,
    method: &'static str,
    path: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    /// Write the request a few bytes at a time over about a second.
    slow: bool,
    status: u16,
    /// `None`: no `x-authstamp-error` expected.
    code: Option<&'static str>,
}

fn case(name: &'static str, to: To, status: u16, code: Option<&'static str>) -> Case {
    Case {
        name,
        to,
        method: "GET",
        path: b"/api/x".to_vec(),
        headers: Vec::new(),
        body: Vec::new(),
        slow: false,
        status,
        code,
    }
}

impl Case {
    fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers
            .push((name.to_string(), value.as_ref().to_vec()));
        self
    }
    fn method(mut self, method: &'static str) -> Self {
        self.method = method;
        self
    }
    fn path(mut self, path: impl AsRef<[u8]>) -> Self {
        self.path = path.as_ref().to_vec();
        self
    }
    fn json(mut self, body: impl AsRef<[u8]>) -> Self {
        self.body = body.as_ref().to_vec();
        self.header("content-type", "application/json")
    }
    fn body(mut self, body: Vec<u8>) -> Self {
        self.body = body;
        self
    }
    fn slow(mut self) -> Self {
        self.slow = true;
        self
    }
}

/// Status and `x-authstamp-error` of one raw request.
fn send(address: &str, c: &Case) -> (u16, Option<String>, String) {
    let mut request = Vec::new();
    request.extend_from_slice(c.method.as_bytes());
    request.push(b' ');
    request.extend_from_slice(&c.path);
    request.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    request.extend_from_slice(address.as_bytes());
    request.extend_from_slice(b"\r\nconnection: close\r\n");
    for (name, value) in &c.headers {
        request.extend_from_slice(name.as_bytes());
        request.extend_from_slice(b": ");
        request.extend_from_slice(value);
        request.extend_from_slice(b"\r\n");
    }
    if !c.body.is_empty() || c.method == "POST" || c.method == "PUT" {
        request.extend_from_slice(format!("content-length: {}\r\n", c.body.len()).as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    request.extend_from_slice(&c.body);
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    if c.slow {
        for chunk in request.chunks(request.len() / 20 + 1) {
            if stream.write_all(chunk).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    } else {
        // The peer may answer and close before reading a huge body.
        let _ = stream.write_all(&request);
    }
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let code = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("x-authstamp-error")
            .then(|| value.trim().to_string())
    });
    (status, code, body.chars().take(300).collect())
}

/// SHA-256 over every row of the tables that hold the vault and its keys.
async fn vault_digest(db_path: &std::path::Path) -> String {
    sqlx::any::install_default_drivers();
    let url = format!("sqlite://{}?mode=ro", db_path.display());
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    let mut hasher = sha2::Sha256::new();
    let queries = [
        "SELECT app_id || '|' || name || '|' || hex(key_hash) || '|' || allowed_return_to FROM apps ORDER BY app_id",
        "SELECT app_id || '|' || key_id || '|' || hex(key_hash) || '|' || COALESCE(expires_at, -1) FROM app_keys ORDER BY app_id, key_id",
        "SELECT app_id || '|' || provider || '|' || hex(client_secret) || '|' || token_url || '|' || api_base_url || '|' || updated_at FROM providers ORDER BY app_id, provider",
        "SELECT app_id || '|' || provider || '|' || user_id || '|' || hex(access_token) || '|' || COALESCE(hex(refresh_token), '-') || '|' || COALESCE(expires_at, -1) || '|' || status || '|' || token_version || '|' || failure_count FROM connections ORDER BY app_id, provider, user_id",
        "SELECT version || '|' || hex(key_check) FROM vault_keys ORDER BY version",
    ];
    let mut rows = 0;
    for query in queries {
        let lines: Vec<(String,)> = sqlx::query_as(query).fetch_all(&pool).await.unwrap();
        for (line,) in lines {
            hasher.update(line.as_bytes());
            hasher.update(b"\n");
            rows += 1;
        }
    }
    pool.close().await;
    assert!(rows >= 5, "the vault has rows to compare");
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn lookup(user: &str) -> String {
    format!(r#"{{"provider": "{PROVIDER}", "user": "{user}"}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_inputs_get_their_error_and_leave_the_vault_unchanged() {
    let stack = Stack::start("bad_input", StackOptions::default()).await;
    stack.connect_user("victor").await;
    stack.connect_user("tess").await;
    let db_path = stack.log_dir.join("data/authstamp.db");

    // Truncated ciphertext: tess's stored access token loses its tail.
    {
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&format!("sqlite://{}", db_path.display()))
            .await
            .unwrap();
        sqlx::query(
            "UPDATE connections SET access_token = substr(access_token, 1, 20) WHERE user_id = 'tess'",
        )
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
    }
    let before = vault_digest(&db_path).await;

    let app_id = stack.app_id.clone();
    let key = stack.app_key.clone();
    let ok = |name, to, status, code| {
        case(name, to, status, code)
            .header("x-authstamp-provider", PROVIDER)
            .header("x-authstamp-user", "victor")
            .header("x-authstamp-app", &app_id)
            .header("x-authstamp-app-key", &key)
    };
    // Provider, user, app and key as given (none for an empty value).
    let with = |name, status, code, provider: &[u8], user: &[u8], app: &[u8], k: &[u8]| {
        let mut c = case(name, To::Envoy, status, code);
        for (h, v) in [
            ("x-authstamp-provider", provider),
            ("x-authstamp-user", user),
            ("x-authstamp-app", app),
            ("x-authstamp-app-key", k),
        ] {
            if !v.is_empty() {
                c = c.header(h, v);
            }
        }
        c
    };
    let (p, a, k) = (PROVIDER.as_bytes(), app_id.as_bytes(), key.as_bytes());
    let bad = Some("bad_request");
    let service = |name, status, code| {
        case(name, To::Service, status, code)
            .method("POST")
            .path("/v1/connect-sessions")
            .header("x-authstamp-app", &app_id)
            .header("x-authstamp-app-key", &key)
    };
    let filter_credential = format!("Bearer {}", authstamp_e2e::filter_token());
    // A lookup as the filter sends it, to the filter listener.
    let filter = |name, status, code| {
        case(name, To::Filter, status, code)
            .method("POST")
            .path("/v1/token-lookup")
            .header("authorization", &filter_credential)
            .header("x-authstamp-app", &app_id)
            .header("x-authstamp-app-key", &key)
    };
    let admin = |name, method, path: String, status, code| {
        case(name, To::Service, status, code)
            .method(method)
            .path(path)
            .header("authorization", format!("Bearer {}", stack.admin_token))
    };
    let provider_path = format!("/v1/apps/{app_id}/providers/{PROVIDER}");
    let good_provider = format!(
        r#"{{"client_id": "c", "client_secret": "s", "authorize_url": "{0}/a", "token_url": "{0}/t", "api_base_url": "{0}"}}"#,
        stack.standin_url
    );
    let long_user = "u".repeat(257);

    let cases =
        vec![
        // --- the filter, through Envoy ---
        with("missing user", 400, bad, p, b"", a, k),
        with("missing provider", 400, bad, b"", b"victor", a, k),
        with("missing app id", 400, bad, p, b"victor", b"", k),
        with("missing app key", 400, bad, p, b"victor", a, b""),
        ok("duplicated provider", To::Envoy, 400, bad).header("x-authstamp-provider", "other"),
        ok("duplicated user", To::Envoy, 400, bad).header("x-authstamp-user", "victor"),
        ok("duplicated app key", To::Envoy, 400, bad).header("x-authstamp-app-key", &key),
        ok("duplicated app id", To::Envoy, 400, bad).header("x-authstamp-app", &app_id),
        with("user of 257 bytes", 400, bad, p, long_user.as_bytes(), a, k),
        // Envoy's codec refuses it before the filter sees it (its refusal
        // mapped to the JSON contract by the bootstrap's local_reply_config).
        with(
            "user with a control character",
            400,
            bad,
            p,
            b"vic\x01tor",
            a,
            k,
        ),
        with("non-UTF-8 user", 400, bad, p, b"vic\xfftor", a, k),
        with(
            "non-UTF-8 provider",
            400,
            bad,
            b"stand\xe9in",
            b"victor",
            a,
            k,
        ),
        with(
            "app key of 1 KiB",
            400,
            bad,
            p,
            b"victor",
            a,
            "k".repeat(1024).as_bytes(),
        ),
        with(
            "unknown provider",
            404,
            Some("unknown_provider"),
            b"nope",
            b"victor",
            a,
            k,
        ),
        with(
            "provider with a path",
            404,
            Some("unknown_provider"),
            b"../standin",
            b"victor",
            a,
            k,
        ),
        with(
            "unknown app",
            401,
            Some("unknown_app"),
            p,
            b"victor",
            b"app_nope",
            k,
        ),
        with(
            "wrong app key",
            401,
            Some("bad_app_key"),
            p,
            b"victor",
            a,
            b"ask_wrong",
        ),
        with(
            "user never connected",
            404,
            Some("not_connected"),
            p,
            b"nobody",
            a,
            k,
        ),
        with(
            "truncated ciphertext in the vault",
            500,
            Some("internal"),
            p,
            b"tess",
            a,
            k,
        ),
        ok(
            "scheme-relative path",
            To::Envoy,
            403,
            Some("forbidden_destination"),
        )
        .path("//evil.example/x"),
        ok(
            "oversized header (96 KiB)",
            To::Envoy,
            431,
            Some("headers_too_large"),
        )
        .header("x-big", "b".repeat(96 * 1024)),
        with(
            "oversized user header (70 KiB)",
            431,
            Some("headers_too_large"),
            p,
            "u".repeat(70 * 1024).as_bytes(),
            a,
            k,
        ),
        ok("invalid header name", To::Envoy, 400, bad).header("bad header", "x"),
        with(
            "huge body (4 MiB) for a user never connected",
            404,
            Some("not_connected"),
            p,
            b"nobody",
            a,
            k,
        )
        .method("POST")
        .body(vec![b'x'; 4 << 20]),
        with(
            "slow client, a byte at a time",
            404,
            Some("not_connected"),
            p,
            b"nobody",
            a,
            k,
        )
        .slow(),
        // --- the token service ---
        filter("lookup: invalid JSON", 400, bad).json("{\"provider\": "),
        filter("lookup: JSON array", 400, bad).json("[1, 2]"),
        filter("lookup: empty body", 400, bad).json(""),
        filter("lookup: missing user", 400, bad).json(format!(r#"{{"provider": "{PROVIDER}"}}"#)),
        filter("lookup: unknown field", 400, bad).json(format!(
            r#"{{"provider": "{PROVIDER}", "user": "victor", "admin": true}}"#
        )),
        filter("lookup: force_refresh not a boolean", 400, bad).json(format!(
            r#"{{"provider": "{PROVIDER}", "user": "victor", "force_refresh": "yes"}}"#
        )),
        filter("lookup: user of 300 bytes", 400, bad).json(lookup(&"u".repeat(300))),
        filter("lookup: user with a control character", 400, bad).json(lookup("a\\u0007b")),
        filter("lookup: body over 64 KiB", 413, Some("payload_too_large"))
            .json(lookup(&"u".repeat(70_000))),
        filter("lookup: not JSON content type", 415, Some("unsupported_media_type"))
            .body(lookup("victor").into_bytes())
            .header("content-type", "text/plain"),
        filter("lookup: non-UTF-8 JSON", 400, bad)
            .json(b"{\"provider\": \"st\xffandin\", \"user\": \"v\"}"),
        filter("lookup: unknown provider", 404, Some("unknown_provider"))
            .json(r#"{"provider": "nope", "user": "victor"}"#),
        filter("lookup: truncated ciphertext", 500, Some("internal")).json(lookup("tess")),
        case("lookup: no app headers", To::Filter, 400, bad)
            .method("POST")
            .path("/v1/token-lookup")
            .header("authorization", &filter_credential)
            .json(lookup("victor")),
        case("lookup: non-UTF-8 app id", To::Filter, 400, bad)
            .method("POST")
            .path("/v1/token-lookup")
            .header("authorization", &filter_credential)
            .header("x-authstamp-app", b"app_\xff")
            .header("x-authstamp-app-key", &key)
            .json(lookup("victor")),
        service("connect: unknown provider", 404, Some("unknown_provider"))
            .path("/v1/connect-sessions")
            .json(r#"{"provider": "nope", "user": "u"}"#),
        service("connect: return_to not allowed", 400, bad)
            .path("/v1/connect-sessions")
            .json(format!(
                r#"{{"provider": "{PROVIDER}", "user": "u", "return_to": "https://evil.example/"}}"#
            )),
        service("connect: javascript return_to", 400, bad)
            .path("/v1/connect-sessions")
            .json(format!(
                r#"{{"provider": "{PROVIDER}", "user": "u", "return_to": "javascript:alert(1)"}}"#
            )),
        service("connect: missing user", 400, bad)
            .path("/v1/connect-sessions")
            .json(format!(r#"{{"provider": "{PROVIDER}"}}"#)),
        case(
            "connect link: unknown token",
            To::Service,
            400,
            Some("invalid_state"),
        )
        .path("/v1/connect/not-a-real-session-token"),
        case(
            "connect link: 4 KiB token",
            To::Service,
            400,
            Some("invalid_state"),
        )
        .path(format!("/v1/connect/{}", "t".repeat(4096))),
        case(
            "callback: no state",
            To::Service,
            400,
            Some("invalid_state"),
        )
        .path("/v1/oauth/callback?code=abc"),
        case(
            "callback: unknown state",
            To::Service,
            400,
            Some("invalid_state"),
        )
        .path("/v1/oauth/callback?code=abc&state=forged")
        .header("cookie", "authstamp_connect=forged"),
        case(
            "callback: garbage query",
            To::Service,
            400,
            Some("invalid_state"),
        )
        .path("/v1/oauth/callback?%ZZ&&=&state=%FF%00"),
        case("admin: no token", To::Service, 401, Some("unauthorized"))
            .method("POST")
            .path("/v1/apps")
            .json("{}"),
        case("admin: wrong token", To::Service, 401, Some("unauthorized"))
            .method("POST")
            .path("/v1/apps")
            .header("authorization", "Bearer wrong-token")
            .json("{}"),
        admin(
            "admin: invalid JSON app",
            "POST",
            "/v1/apps".into(),
            400,
            bad,
        )
        .json("{name"),
        admin(
            "admin: provider with an unknown field",
            "PUT",
            provider_path.clone(),
            400,
            bad,
        )
        .json(good_provider.replacen('{', r#"{"surprise": 1, "#, 1)),
        admin(
            "admin: provider with an ftp token_url",
            "PUT",
            provider_path.clone(),
            400,
            bad,
        )
        .json(good_provider.replacen("\"token_url\": \"http", "\"token_url\": \"ftp", 1)),
        admin(
            "admin: provider stamping the host header",
            "PUT",
            provider_path.clone(),
            400,
            bad,
        )
        .json(good_provider.replacen(
            '{',
            r#"{"header": {"name": "host", "format": "{token}"}, "#,
            1,
        )),
        admin(
            "admin: provider name with a space",
            "PUT",
            format!("/v1/apps/{app_id}/providers/bad%20name"),
            400,
            bad,
        )
        .json(good_provider.clone()),
        admin(
            "admin: provider of an unknown app",
            "PUT",
            format!("/v1/apps/app_nope/providers/{PROVIDER}"),
            404,
            Some("not_found"),
        )
        .json(good_provider.clone()),
        admin(
            "admin: provider body of 1 MiB",
            "PUT",
            provider_path.clone(),
            413,
            Some("payload_too_large"),
        )
        .json(format!(r#"{{"client_id": "{}"}}"#, "c".repeat(1 << 20))),
        admin(
            "admin: key with a bad grace",
            "POST",
            format!("/v1/apps/{app_id}/keys"),
            400,
            bad,
        )
        .json(r#"{"grace": "forever"}"#),
        case("unknown endpoint", To::Service, 404, Some("not_found")).path("/v1/nothing-here"),
        case("wrong method", To::Filter, 405, Some("method_not_allowed"))
            .path("/v1/token-lookup")
            .header("authorization", &filter_credential),
        // The lookup is not on the app listener, and wants the filter's credential.
        case("lookup on the app listener", To::Service, 404, Some("not_found"))
            .method("POST")
            .path("/v1/token-lookup")
            .header("x-authstamp-app", &app_id)
            .header("x-authstamp-app-key", &key)
            .json(lookup("victor")),
        case("lookup without the filter credential", To::Filter, 401, Some("unauthorized"))
            .method("POST")
            .path("/v1/token-lookup")
            .header("x-authstamp-app", &app_id)
            .header("x-authstamp-app-key", &key)
            .json(lookup("victor")),
    ];
    assert!(cases.len() >= 40, "{} cases", cases.len());

    let envoy = stack.envoy_url.trim_start_matches("http://").to_string();
    let service_address = stack.service_url.trim_start_matches("http://").to_string();
    let filter_address = stack.filter_url.trim_start_matches("http://").to_string();
    let mut failures = Vec::new();
    for c in &cases {
        let address = match c.to {
            To::Envoy => &envoy,
            To::Service => &service_address,
            To::Filter => &filter_address,
        };
        let started = Instant::now();
        let (status, code, body) = send(address, c);
        // Every refusal through Envoy, the filter's or Envoy's own, is JSON.
        let json_code = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|b| b["error"].as_str().map(str::to_string));
        let body_ok = c.to == To::Service || c.code.is_none() || json_code.as_deref() == c.code;
        if status != c.status || code.as_deref() != c.code || !body_ok {
            failures.push(format!(
                "{}: got {status} {code:?}, want {} {:?}: {body}",
                c.name, c.status, c.code
            ));
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{}: took {:?}",
            c.name,
            started.elapsed()
        );
    }
    assert!(failures.is_empty(), "{failures:#?}");
    eprintln!("{} malformed requests answered as expected", cases.len());

    // Both processes are still serving: a correct request works.
    let response = stack
        .call(reqwest::Method::GET, "/api/after", "victor")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        stack.standin_stats().await["api_calls"],
        1,
        "no malformed request reached the provider"
    );
    assert_eq!(
        vault_digest(&db_path).await,
        before,
        "the vault changed under malformed input"
    );
}

#[test]
fn invalid_filter_configurations_are_refused_at_load() {
    let dir = authstamp_e2e::log_dir("bad_input_config");
    let bootstrap = local_bootstrap("http://127.0.0.1:8080");
    let original = r#""timeout": "2s""#;
    assert_eq!(bootstrap.matches(original).count(), 1, "envoy.yaml changed");
    let configs = [
        ("not JSON", r#""timeout": "2s" ,,"#),
        ("unknown field", r#""timeout": "2s", "surprise": true"#),
        ("timeout not a duration", r#""timeout": "soon""#),
        ("timeout out of range", r#""timeout": "2h""#),
    ];
    for (name, replacement) in configs {
        let path = dir.join(format!("{}.yaml", name.replace(' ', "_")));
        std::fs::write(&path, bootstrap.replace(original, replacement)).unwrap();
        let output = authstamp_e2e::envoy_command()
            .args(["--mode", "validate", "-l", "error", "-c"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{name}: Envoy accepted it");
    }
    // The original passes, so the refusals above are the filter's.
    let path = dir.join("original.yaml");
    std::fs::write(&path, &bootstrap).unwrap();
    let output = authstamp_e2e::envoy_command()
        .args(["--mode", "validate", "-l", "error", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
