//! The `authstamp` admin commands that cover the API: credentials, app
//! keys, webhooks and connections. Each runs the real binary on the
//! harness's database and vault key, and the result is checked through the
//! service's own API (token lookups, app-key checks).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use common::*;
use serde_json::{json, Value};
use std::io::Write as _;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};

const BIN: &str = env!("CARGO_BIN_EXE_authstamp");

/// `authstamp ARGS` on the harness's data dir and key, `stdin` piped in.
fn cli(h: &Harness, args: &[&str], envs: &[(&str, &str)], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(BIN);
    for (name, _) in std::env::vars() {
        if name.starts_with("AUTHSTAMP_") {
            cmd.env_remove(name);
        }
    }
    cmd.args(args)
        .env("AUTHSTAMP_DATA_DIR", h.dir.path())
        .env("AUTHSTAMP_MASTER_KEY", h.master_key.to_base64().as_str())
        .envs(envs.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut pipe = child.stdin.take().unwrap();
    if let Some(input) = stdin {
        pipe.write_all(input.as_bytes()).unwrap();
    }
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn cli_json(h: &Harness, args: &[&str], envs: &[(&str, &str)], stdin: Option<&str>) -> Value {
    let out = cli(h, args, envs, stdin);
    assert!(
        out.status.success(),
        "authstamp {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

async fn app_with(h: &Harness, name: &str, config: Value) -> ConnectedApp {
    let (app_id, app_key) = h.create_app(&["https://app.test/done"]).await;
    let reply = h.put_provider(&app_id, name, config).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    ConnectedApp {
        app_id,
        app_key,
        provider: name.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_set_stores_and_replaces_api_keys_and_basic_credentials() {
    let h = Harness::new().await;
    let keyed = app_with(
        &h,
        "keyed",
        json!({"auth_type": "api_key", "api_base_url": "https://api.keyed.test/v1",
               "header": {"name": "x-api-key", "format": "{token}"}}),
    )
    .await;
    let base = [
        "credentials",
        "set",
        "--app",
        &keyed.app_id,
        "--provider",
        "keyed",
        "--user",
        "alice",
    ];

    // From the environment.
    let mut args = base.to_vec();
    args.extend(["--api-key-env", "ALICE_KEY"]);
    let view = cli_json(&h, &args, &[("ALICE_KEY", "key-ENV-alice")], None);
    assert_eq!(view["status"], "active");
    assert!(!view.to_string().contains("key-ENV"), "{view}");
    let answer = h.lookup(&keyed, "alice", false).await.json();
    assert_eq!(
        answer["header"],
        json!({"name": "x-api-key", "value": "key-ENV-alice"})
    );

    // Replaced from a file (its trailing newline is not part of the key).
    let file = h.dir.path().join("alice.key");
    std::fs::write(&file, "key-FILE-alice\n").unwrap();
    let mut args = base.to_vec();
    let path = file.to_str().unwrap();
    args.extend(["--api-key-file", path]);
    cli_json(&h, &args, &[], None);
    let answer = h.lookup(&keyed, "alice", false).await.json();
    assert_eq!(answer["header"]["value"], "key-FILE-alice");

    // Never on the command line; one source only; a basic provider's
    // username and password refused for an api_key provider.
    let mut args = base.to_vec();
    args.extend(["--api-key", "key-ARGV"]);
    assert!(!cli(&h, &args, &[], None).status.success());
    let mut args = base.to_vec();
    args.extend(["--api-key-stdin", "--api-key-env", "X"]);
    assert!(!cli(&h, &args, &[], Some("k")).status.success());
    let mut args = base.to_vec();
    args.extend(["--username", "u", "--password-stdin"]);
    let out = cli(&h, &args, &[], Some("p"));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("api_key provider"),
        "{}",
        stderr(&out)
    );

    // Basic: the password from stdin.
    let basic = app_with(
        &h,
        "basic",
        json!({"auth_type": "basic", "api_base_url": "https://api.basic.test"}),
    )
    .await;
    let view = cli_json(
        &h,
        &[
            "credentials",
            "set",
            "--app",
            &basic.app_id,
            "--provider",
            "basic",
            "--user",
            "bob",
            "--username",
            "bob@example.test",
            "--password-stdin",
        ],
        &[],
        Some("pw-STDIN-bob\n"),
    );
    assert_eq!(view["status"], "active");
    let answer = h.lookup(&basic, "bob", false).await.json();
    use base64::Engine as _;
    let expected =
        base64::engine::general_purpose::STANDARD.encode("bob@example.test:pw-STDIN-bob");
    assert_eq!(answer["header"]["value"], format!("Basic {expected}"));
    // A password without a username does not parse.
    let out = cli(
        &h,
        &[
            "credentials",
            "set",
            "--app",
            &basic.app_id,
            "--provider",
            "basic",
            "--user",
            "bob",
            "--password-stdin",
        ],
        &[],
        Some("p"),
    );
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_key_rotate_list_and_revoke() {
    let h = Harness::new().await;
    let (app_id, old_key) = h.create_app(&[]).await;
    let app_accepts = |key: String| {
        let h = &h;
        let app_id = app_id.clone();
        async move {
            h.as_app(
                &app_id,
                &key,
                "/v1/connect-sessions",
                json!({"provider": "none", "user": "u"}),
            )
            .await
            .json()["error"]
                != "bad_app_key"
        }
    };
    let rotated = cli_json(
        &h,
        &["app", "key", "rotate", "--app", &app_id, "--grace", "1h"],
        &[],
        None,
    );
    let new_key = rotated["app_key"].as_str().unwrap().to_owned();
    assert!(new_key.starts_with("ask_"));
    assert!(rotated["others_expire_at"].as_i64().is_some());
    assert!(app_accepts(new_key.clone()).await);
    assert!(app_accepts(old_key.clone()).await, "valid during the grace");

    let listed = cli_json(&h, &["app", "key", "list", "--app", &app_id], &[], None);
    let keys = listed["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert!(!listed.to_string().contains(&new_key), "never a key");
    let old_id = keys
        .iter()
        .find(|k| k["key_id"] != rotated["key_id"])
        .unwrap()["key_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let revoked = cli_json(
        &h,
        &["app", "key", "revoke", "--app", &app_id, "--key", &old_id],
        &[],
        None,
    );
    assert_eq!(revoked["revoked"], true);
    assert!(!app_accepts(old_key).await, "revoked at once");
    assert!(app_accepts(new_key).await);
    // The last valid key stays.
    let last = rotated["key_id"].as_str().unwrap();
    let out = cli(
        &h,
        &["app", "key", "revoke", "--app", &app_id, "--key", last],
        &[],
        None,
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("at least one valid key"),
        "{}",
        stderr(&out)
    );
}

/// A webhook receiver on 127.0.0.1:0 that answers `status` and keeps what
/// it got.
async fn receiver(status: StatusCode) -> (String, Arc<Mutex<Vec<(HeaderMap, Vec<u8>)>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    let router = Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push((headers, body.to_vec()));
                status
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (url, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_set_get_test_and_delete() {
    let h = Harness::new().await;
    let (app_id, _) = h.create_app(&[]).await;
    let (url, got) = receiver(StatusCode::NO_CONTENT).await;
    let secret = "whsec-STDIN-0123456789abcdef";
    let set = cli_json(
        &h,
        &[
            "webhook",
            "set",
            "--app",
            &app_id,
            "--url",
            &url,
            "--secret-stdin",
        ],
        &[],
        Some(&format!("{secret}\n")),
    );
    assert_eq!(set["url"], url.as_str());
    assert!(set.get("secret").is_none(), "a given secret is never shown");
    let shown = cli_json(&h, &["webhook", "get", "--app", &app_id], &[], None);
    assert_eq!(shown["url"], url.as_str());
    assert!(!shown.to_string().contains("STDIN"));

    let sent = cli_json(&h, &["webhook", "test", "--app", &app_id], &[], None);
    assert_eq!(sent["delivered"], true);
    assert_eq!(sent["status"], 204);
    let deliveries = got.lock().unwrap().clone();
    assert_eq!(deliveries.len(), 1);
    let (headers, body) = &deliveries[0];
    assert_eq!(headers["x-authstamp-event"], "test");
    assert_eq!(
        headers["x-authstamp-delivery"],
        sent["id"].as_str().unwrap()
    );
    let signature = headers["x-authstamp-signature"].to_str().unwrap();
    assert!(authstamp_token_service::webhooks::verify(
        secret.as_bytes(),
        signature,
        body
    ));
    assert!(!authstamp_token_service::webhooks::verify(
        b"another-secret-0123",
        signature,
        body
    ));
    let payload: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(payload["type"], "test");
    assert_eq!(payload["app_id"], app_id.as_str());

    // A receiver that refuses: the command fails and says so.
    let (refusing, _) = receiver(StatusCode::INTERNAL_SERVER_ERROR).await;
    let made = cli_json(
        &h,
        &["webhook", "set", "--app", &app_id, "--url", &refusing],
        &[],
        None,
    );
    assert!(
        made["secret"].as_str().unwrap().starts_with("whsec_"),
        "a made secret is shown once"
    );
    let out = cli(&h, &["webhook", "test", "--app", &app_id], &[], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"status\": 500"));

    let deleted = cli_json(&h, &["webhook", "delete", "--app", &app_id], &[], None);
    assert_eq!(deleted["deleted"], true);
    let out = cli(&h, &["webhook", "get", "--app", &app_id], &[], None);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("has no webhook"), "{}", stderr(&out));
    // Secrets are no flags.
    assert!(!cli(
        &h,
        &["webhook", "set", "--app", &app_id, "--url", &url, "--secret", "x"],
        &[],
        None
    )
    .status
    .success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_list_by_status_reconnect_and_disconnect() {
    let h = Harness::new().await;
    let app = h.app_with_provider().await;
    h.connect(&app, "alice").await;
    h.connect(&app, "bob").await;
    sqlx::query(
        "UPDATE connections SET status = 'reauth_required' WHERE app_id = $1 AND user_id = 'bob'",
    )
    .bind(&app.app_id)
    .execute(h.state.db.pool())
    .await
    .unwrap();
    let users = |list: &Value| -> Vec<String> {
        list["connections"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["user"].as_str().unwrap().to_owned())
            .collect()
    };
    let listed = |args: &[&str]| {
        let mut all = vec!["connection", "list", "--app", &app.app_id];
        all.extend(args);
        users(&cli_json(&h, &all, &[], None))
    };
    assert_eq!(listed(&["--status", "reauth-required"]), ["bob"]);
    assert_eq!(listed(&["--status", "active"]), ["alice"]);
    assert!(listed(&["--status", "failing"]).is_empty());
    assert_eq!(listed(&["--user", "bob"]), ["bob"]);
    assert!(listed(&["--user", "alice", "--status", "reauth-required"]).is_empty());
    // Neither --user nor --status: refused, not every connection at once.
    assert!(
        !cli(&h, &["connection", "list", "--app", &app.app_id], &[], None)
            .status
            .success()
    );

    let session = cli_json(
        &h,
        &[
            "connection",
            "reconnect",
            "--app",
            &app.app_id,
            "--provider",
            "fake",
            "--user",
            "bob",
            "--public-url",
            PUBLIC_URL,
            "--return-to",
            "https://app.test/done",
        ],
        &[],
        None,
    );
    let connect_url = session["connect_url"].as_str().unwrap();
    assert!(
        connect_url.starts_with(&format!("{PUBLIC_URL}/v1/connect/")),
        "{connect_url}"
    );
    let page = h.get(connect_url.strip_prefix(PUBLIC_URL).unwrap()).await;
    assert_eq!(
        page.status,
        StatusCode::OK,
        "the link opens the connect page"
    );

    // The disconnect's webhook event reaches the outbox before the command exits.
    cli_json(
        &h,
        &[
            "webhook",
            "set",
            "--app",
            &app.app_id,
            "--url",
            "http://127.0.0.1:9/hook",
        ],
        &[],
        None,
    );
    let done = cli_json(
        &h,
        &[
            "connection",
            "disconnect",
            "--app",
            &app.app_id,
            "--provider",
            "fake",
            "--user",
            "alice",
        ],
        &[],
        None,
    );
    assert_eq!(done["deleted"], true);
    assert_eq!(done["revocation"], "unsupported");
    let events: Vec<(String,)> =
        sqlx::query_as("SELECT payload FROM webhook_outbox WHERE app_id = $1")
            .bind(&app.app_id)
            .fetch_all(h.state.db.pool())
            .await
            .unwrap();
    assert!(
        events
            .iter()
            .any(|(p,)| p.contains("\"disconnected\"") && p.contains("\"alice\"")),
        "{events:?}"
    );
    h.lookup(&app, "alice", false)
        .await
        .assert_error(404, "not_connected");
    let out = cli(
        &h,
        &[
            "connection",
            "disconnect",
            "--app",
            &app.app_id,
            "--provider",
            "fake",
            "--user",
            "alice",
        ],
        &[],
        None,
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not connected"), "{}", stderr(&out));
}

/// A reader that stops early (`authstamp providers list | head -1`) is no
/// error: the command exits 0 and says nothing on stderr.
#[test]
fn a_closed_stdout_ends_a_command_quietly() {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(BIN)
        .args(["providers", "list"])
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stderr(&out), "");
}
