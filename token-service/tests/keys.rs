//! Vault keys with the real binary: `authstamp keys rotate` re-encrypts a
//! vault of 1,000 connections while `authstamp serve` answers token lookups
//! (none fails), on SQLite and PostgreSQL; old versions stay readable until
//! `--min-key-version` retires them; a wrong key means no start; tampered,
//! swapped, relabelled and truncated blobs are refused one by one while the
//! service keeps serving everyone else.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use authstamp_testkit::postgres::TestPostgres;
use authstamp_testkit::process::Service;
use authstamp_token_service::db::Db;
use authstamp_token_service::secrets::MasterKey;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_authstamp");
const ADMIN_TOKEN: &str = "keys-test-admin-token-0123456789";
const FILTER_TOKEN: &str = "keys-test-filter-token-0123456789";
const USERS: u64 = 1000;

/// Where a test's vault lives and how it is unlocked.
struct Vault {
    dir: tempfile::TempDir,
    database_url: Option<String>,
    key_file: PathBuf,
}

impl Vault {
    fn new(postgres: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("master.key");
        std::fs::write(
            &key_file,
            format!("{}\n", MasterKey::generate().to_base64().as_str()),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let database_url = postgres.then(|| TestPostgres::shared().create_database("keys"));
        Self {
            dir,
            database_url,
            key_file,
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `authstamp …` on this vault, environment cleaned.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        for (name, _) in std::env::vars() {
            if name.starts_with("AUTHSTAMP_") {
                cmd.env_remove(name);
            }
        }
        cmd.env("AUTHSTAMP_DATA_DIR", self.data_dir())
            .env("AUTHSTAMP_MASTER_KEY_FILE", &self.key_file)
            .env("AUTHSTAMP_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("AUTHSTAMP_FILTER_TOKEN", FILTER_TOKEN)
            .env("RUST_LOG", "info")
            .args(args);
        if let Some(url) = &self.database_url {
            cmd.env("AUTHSTAMP_DATABASE_URL", url);
        }
        cmd
    }

    async fn db(&self) -> Db {
        Db::open(self.database_url.as_deref(), &self.data_dir())
            .await
            .unwrap()
    }
}

struct Output {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn run(mut cmd: Command) -> Output {
    let output = cmd.stdin(Stdio::null()).output().unwrap();
    Output {
        ok: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn run_json(cmd: Command) -> Value {
    let out = run(cmd);
    assert!(out.ok, "stderr: {}", out.stderr);
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

fn serve(vault: &Vault, extra: &[&str]) -> Service {
    let mut args = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--filter-listen",
        "127.0.0.1:0",
        "--background-interval",
        "0s",
    ];
    args.extend_from_slice(extra);
    Service::start(vault.command(&args))
}

struct App {
    id: String,
    key: String,
}

async fn create_app_with_provider(http: &reqwest::Client, url: &str) -> App {
    let created: Value = http
        .post(format!("{url}/v1/apps"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"name": "keys"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let app = App {
        id: created["app_id"].as_str().unwrap().to_owned(),
        key: created["app_key"].as_str().unwrap().to_owned(),
    };
    put_provider(http, url, &app).await;
    app
}

async fn put_provider(http: &reqwest::Client, url: &str, app: &App) {
    let response = http
        .put(format!("{url}/v1/apps/{}/providers/p", app.id))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({
            "client_id": "cid",
            "client_secret": "client-secret-value",
            "authorize_url": "https://provider.test/authorize",
            "token_url": "https://provider.test/token",
            "api_base_url": "https://api.provider.test",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

fn seed(vault: &Vault, app: &App, users: u64) {
    let out = run(vault.command(&[
        "bench-seed",
        "--app",
        &app.id,
        "--provider",
        "p",
        "--users",
        &users.to_string(),
        "--batch",
        "500",
    ]));
    assert!(out.ok, "{}", out.stderr);
}

/// A lookup at the filter listener `url`: `Ok(token)` or `Err((status, error code))`.
async fn lookup(
    http: &reqwest::Client,
    url: &str,
    app: &App,
    user: &str,
) -> Result<String, (u16, String)> {
    let response = http
        .post(format!("{url}/v1/token-lookup"))
        .bearer_auth(FILTER_TOKEN)
        .header("x-authstamp-app", &app.id)
        .header("x-authstamp-app-key", &app.key)
        .json(&json!({"provider": "p", "user": user}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    if status == 200 {
        Ok(body["header"]["value"].as_str().unwrap().to_owned())
    } else {
        Err((status, body["error"].as_str().unwrap_or("").to_owned()))
    }
}

fn status(vault: &Vault, extra: &[&str]) -> Value {
    let mut args = vec!["keys", "status"];
    args.extend_from_slice(extra);
    run_json(vault.command(&args))
}

async fn rotation_end_to_end(postgres: bool) {
    let vault = Vault::new(postgres);
    let server = serve(&vault, &[]);
    let http = reqwest::Client::new();
    let app = create_app_with_provider(&http, &server.url).await;
    seed(&vault, &app, USERS);
    let before = status(&vault, &[]);
    assert_eq!(before["active_key_version"], 1);
    assert_eq!(before["blobs"]["by_version"]["1"], USERS + 1, "{before}");

    // Lookups of every user in a loop for as long as the rotation runs.
    let running = Arc::new(AtomicBool::new(true));
    let (done, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for worker in 0..4u64 {
        let (running, done, failed, failures) = (
            running.clone(),
            done.clone(),
            failed.clone(),
            failures.clone(),
        );
        let (http, url) = (http.clone(), server.filter_url.clone());
        let app = App {
            id: app.id.clone(),
            key: app.key.clone(),
        };
        workers.push(tokio::spawn(async move {
            let mut n = worker;
            while running.load(Ordering::SeqCst) {
                let user = format!("user{}", n % USERS);
                match lookup(&http, &url, &app, &user).await {
                    Ok(token) if token == format!("Bearer seeded_{user}") => {}
                    other => {
                        failed.fetch_add(1, Ordering::SeqCst);
                        failures.lock().unwrap().push(format!("{user}: {other:?}"));
                    }
                }
                done.fetch_add(1, Ordering::SeqCst);
                n += 4;
            }
        }));
    }

    let rotate = vault.command(&["keys", "rotate", "--batch", "100"]);
    let out = tokio::task::spawn_blocking(move || run(rotate))
        .await
        .unwrap();
    running.store(false, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    assert!(out.ok, "rotate failed: {}", out.stderr);
    let rotated: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(rotated["previous_key_version"], 1);
    assert_eq!(rotated["active_key_version"], 2);
    assert_eq!(rotated["reencrypted"], USERS + 1, "{rotated}");
    assert_eq!(rotated["unreadable"], 0);
    assert_eq!(rotated["remaining_below_active"], 0);
    assert!(rotated["key_file"].is_string(), "{rotated}");
    // The progress bar, one line per tenth when stderr is not a terminal.
    assert!(
        out.stderr.contains("re-encrypting [#"),
        "progress on stderr: {}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains(&format!("{0}/{0} rows (100%)", USERS + 1)),
        "{}",
        out.stderr
    );
    let lookups = done.load(Ordering::SeqCst);
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "lookups failed during the rotation: {:?}",
        failures.lock().unwrap().iter().take(5).collect::<Vec<_>>()
    );
    assert!(
        lookups > 50,
        "only {lookups} lookups ran during the rotation"
    );
    eprintln!("{lookups} lookups during the rotation, none failed");

    // The key file gained version 2 and kept version 1.
    let file = std::fs::read_to_string(&vault.key_file).unwrap();
    assert!(file.contains("\n1:") && file.contains("\n2:"), "{file}");

    // Every blob is on version 2; the running service seals with it too.
    put_provider(&http, &server.url, &app).await;
    let after = status(&vault, &[]);
    assert_eq!(after["active_key_version"], 2);
    assert_eq!(after["blobs_below_active"], 0, "{after}");
    assert_eq!(after["blobs"]["by_version"]["2"], USERS + 1, "{after}");
    assert!(after["blobs"]["by_version"].get("1").is_none(), "{after}");
    assert!(
        server
            .stderr()
            .contains("sealing with the newly activated key version"),
        "{}",
        server.stderr()
    );
    drop(server);

    // Retire version 1: drop it from the file and set the minimum.
    let kept: String = file
        .lines()
        .filter(|l| !l.starts_with("1:"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&vault.key_file, kept).unwrap();
    let server = serve(&vault, &["--min-key-version", "2"]);
    for user in ["user0", "user500", "user999"] {
        assert_eq!(
            lookup(&http, &server.filter_url, &app, user).await,
            Ok(format!("Bearer seeded_{user}"))
        );
    }
    drop(server);

    // A service given another key of version 2 does not start.
    std::fs::write(
        &vault.key_file,
        format!("2:{}\n", MasterKey::generate().to_base64().as_str()),
    )
    .unwrap();
    let mut cmd = vault.command(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--filter-listen",
        "127.0.0.1:0",
    ]);
    let out = run({
        cmd.env("RUST_LOG", "warn");
        cmd
    });
    assert!(!out.ok);
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    assert!(
        out.stderr
            .contains("not the key this vault was sealed with"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_re_encrypts_every_row_while_serving_sqlite() {
    rotation_end_to_end(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_re_encrypts_every_row_while_serving_postgres() {
    rotation_end_to_end(true).await;
}

async fn access_token_blob(db: &Db, user: &str) -> Vec<u8> {
    let (blob,): (Vec<u8>,) =
        sqlx::query_as("SELECT access_token FROM connections WHERE user_id = $1")
            .bind(user)
            .fetch_one(db.pool())
            .await
            .unwrap();
    blob
}

async fn set_access_token_blob(db: &Db, user: &str, blob: Vec<u8>) {
    sqlx::query("UPDATE connections SET access_token = $1 WHERE user_id = $2")
        .bind(blob)
        .bind(user)
        .execute(db.pool())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_swapped_relabelled_and_truncated_blobs_are_refused() {
    let vault = Vault::new(false);
    let server = serve(&vault, &[]);
    let http = reqwest::Client::new();
    let app = create_app_with_provider(&http, &server.url).await;
    seed(&vault, &app, 6);
    let db = vault.db().await;

    // user0: one flipped byte in the ciphertext.
    let mut blob = access_token_blob(&db, "user0").await;
    let last = blob.len() - 1;
    blob[last] ^= 0x01;
    set_access_token_blob(&db, "user0", blob).await;
    // user1 and user2: blobs swapped between the rows.
    let (one, two) = (
        access_token_blob(&db, "user1").await,
        access_token_blob(&db, "user2").await,
    );
    set_access_token_blob(&db, "user1", two).await;
    set_access_token_blob(&db, "user2", one).await;
    // user3: relabelled with an unknown key version.
    let mut blob = access_token_blob(&db, "user3").await;
    blob[1..5].copy_from_slice(&9u32.to_be_bytes());
    set_access_token_blob(&db, "user3", blob).await;
    // user4: truncated.
    let blob = access_token_blob(&db, "user4").await;
    set_access_token_blob(&db, "user4", blob[..20].to_vec()).await;

    for user in ["user0", "user1", "user2", "user3", "user4"] {
        assert_eq!(
            lookup(&http, &server.filter_url, &app, user).await,
            Err((500, "internal".to_owned())),
            "{user}"
        );
    }
    // Everyone else is served, by the same process.
    assert_eq!(
        lookup(&http, &server.filter_url, &app, "user5").await,
        Ok("Bearer seeded_user5".to_owned())
    );
    // Logged (the pipe may lag behind a little).
    let mut logs = server.stderr();
    for _ in 0..40 {
        if logs.contains("unknown key version 9") && logs.contains("is truncated") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        logs = server.stderr();
    }
    assert!(logs.contains("unknown key version 9"), "{logs}");
    assert!(logs.contains("is truncated"), "{logs}");
    assert!(logs.contains("failed authentication"), "{logs}");
    assert!(
        !logs.contains("seeded_user"),
        "no plaintext in logs: {logs}"
    );

    // A rotation re-encrypts what opens, leaves what does not, and says so.
    let out = run(vault.command(&["keys", "rotate", "--settle", "0s", "--quiet"]));
    assert!(!out.ok, "rotate must report unreadable rows");
    let rotated: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(rotated["unreadable"], 5, "{rotated}");
    // user5's access token and the provider's client secret.
    assert_eq!(rotated["reencrypted"], 2, "{rotated}");
    assert!(
        out.stderr.contains("5 rows could not be re-encrypted"),
        "{}",
        out.stderr
    );
    assert_eq!(
        lookup(&http, &server.filter_url, &app, "user5").await,
        Ok("Bearer seeded_user5".to_owned())
    );
}

#[test]
fn rotation_with_keys_from_the_environment_needs_the_new_version_there_first() {
    let vault = Vault::new(false);
    let (one, two) = (
        MasterKey::generate().to_base64().to_string(),
        MasterKey::generate().to_base64().to_string(),
    );
    let with_env = |keys: &str, args: &[&str]| {
        let mut cmd = vault.command(args);
        cmd.env_remove("AUTHSTAMP_MASTER_KEY_FILE")
            .env("AUTHSTAMP_MASTER_KEY", keys);
        cmd
    };
    let created = run_json(with_env(&one, &["app", "create", "--name", "x"]));
    assert!(created["app_id"].is_string());
    let out = run(with_env(&one, &["keys", "rotate", "--settle", "0s"]));
    assert!(!out.ok);
    assert!(
        out.stderr.contains("AUTHSTAMP_MASTER_KEY"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("authstamp keys generate"),
        "{}",
        out.stderr
    );

    let ring = format!("1:{one},2:{two}");
    let rotated = run_json(with_env(&ring, &["keys", "rotate", "--settle", "0s"]));
    assert_eq!(rotated["active_key_version"], 2);
    assert!(rotated.get("key_file").is_none());
    // The old key alone can no longer serve this vault.
    let out = run(with_env(&one, &["keys", "status"]));
    assert!(!out.ok);
    assert!(
        out.stderr.contains("active key version 2"),
        "{}",
        out.stderr
    );
    let generated = run(with_env(&ring, &["keys", "generate"]));
    assert!(MasterKey::from_base64(generated.stdout.trim()).is_ok());
}
