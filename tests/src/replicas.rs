//! Several `authstamp serve` processes on one database (PostgreSQL or one
//! SQLite file) with the stand-in provider: the harness of the refresh tests.
//! Replicas are real processes, so a test can SIGKILL one mid-refresh.

use crate::browser::{browser_client, walk_connect};
use crate::postgres::TestPostgres;
use crate::process::Process;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const READY_TIMEOUT: Duration = Duration::from_secs(30);
pub const PROVIDER: &str = "standin";
pub const CLIENT_ID: &str = "authstamp-refresh-client";
/// Where connects made with [`Replicas::connect_session_returning`] send the browser back.
pub const RETURN_TO: &str = "https://app.example/authstamp/back";

pub struct Replicas {
    pub log_dir: PathBuf,
    pub standin: Process,
    pub standin_url: String,
    pub services: Vec<Process>,
    pub urls: Vec<String>,
    /// Each replica's filter listener (token lookups).
    pub filter_urls: Vec<String>,
    /// `None`: SQLite in `data_dir`.
    pub database_url: Option<String>,
    pub data_dir: PathBuf,
    /// Extra `serve` arguments of every replica.
    pub serve_args: Vec<String>,
    pub app_id: String,
    pub app_key: String,
    pub admin_token: String,
    pub client_secret: String,
    pub master_key: String,
    pub http: Client,
    /// Kept alive for the replicas (dropped last).
    pub postgres: Option<TestPostgres>,
}

impl Replicas {
    /// `count` replicas with `serve_args`, on a PostgreSQL of their own
    /// (`postgres`) or on one SQLite file.
    pub async fn start(
        test_name: &str,
        count: usize,
        postgres: bool,
        serve_args: &[&str],
    ) -> Replicas {
        let log_dir = crate::log_dir(test_name);
        let http = Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(512)
            .build()
            .expect("http client");
        let client_secret = crate::random_token("cs_");
        let mut command = Command::new(crate::standin_bin());
        command
            .args(["--listen", "127.0.0.1:0", "--client-id", CLIENT_ID])
            .env("AUTHSTAMP_STANDIN_CLIENT_SECRET", &client_secret)
            .env("RUST_LOG", "info");
        let mut standin = Process::spawn("standin", command, &log_dir, "listening on");
        let standin_url = standin.wait_for_listen_url(READY_TIMEOUT);

        let (pg, database_url) = if postgres {
            let pg = TestPostgres::start();
            let url = pg.create_database("refresh");
            (Some(pg), Some(url))
        } else {
            (None, None)
        };
        let master_key = {
            use base64::Engine;
            let mut key = [0u8; 32];
            crate::getrandom(&mut key);
            base64::engine::general_purpose::STANDARD.encode(key)
        };
        let data_dir = log_dir.join("data");
        std::fs::create_dir_all(&data_dir).expect("data dir");
        let mut replicas = Replicas {
            log_dir,
            standin,
            standin_url,
            services: Vec::new(),
            urls: Vec::new(),
            filter_urls: Vec::new(),
            database_url,
            data_dir,
            serve_args: serve_args.iter().map(|s| s.to_string()).collect(),
            app_id: String::new(),
            app_key: String::new(),
            admin_token: crate::random_token("adm_"),
            client_secret,
            master_key,
            http,
            postgres: pg,
        };
        for _ in 0..count {
            replicas.add_replica(&[]);
        }
        replicas.setup_app().await;
        replicas
    }

    /// Starts one more replica; returns its index.
    pub fn add_replica(&mut self, extra: &[&str]) -> usize {
        let index = self.services.len();
        let mut command = Command::new(crate::authstamp_bin());
        command
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(["--filter-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.serve_args)
            .args(extra)
            .env("AUTHSTAMP_MASTER_KEY", &self.master_key)
            .env("AUTHSTAMP_ADMIN_TOKEN", &self.admin_token)
            .env(crate::FILTER_TOKEN_ENV, crate::filter_token())
            .env("RUST_LOG", "info,sqlx=warn");
        if let Some(url) = &self.database_url {
            command.env("AUTHSTAMP_DATABASE_URL", url);
        }
        let mut process = Process::spawn(
            &format!("replica-{index}"),
            command,
            &self.log_dir,
            "listening on",
        );
        let line = process.wait_for_line(READY_TIMEOUT);
        let (url, filter_url) = crate::process::service_urls(&line);
        self.services.push(process);
        self.urls.push(url);
        self.filter_urls.push(filter_url);
        index
    }

    async fn setup_app(&mut self) {
        let response = self
            .http
            .post(format!("{}/v1/apps", self.urls[0]))
            .bearer_auth(&self.admin_token)
            .json(&json!({"name": "refresh", "allowed_return_to": [RETURN_TO]}))
            .send()
            .await
            .expect("create app");
        assert_eq!(response.status(), StatusCode::CREATED);
        let body: Value = response.json().await.expect("app json");
        self.app_id = body["app_id"].as_str().expect("app_id").to_string();
        self.app_key = body["app_key"].as_str().expect("app_key").to_string();
        self.put_provider(json!({})).await;
    }

    /// (Re)configures the provider with these refresh policy overrides.
    pub async fn put_provider(&self, refresh: Value) {
        let response = self
            .http
            .put(format!(
                "{}/v1/apps/{}/providers/{PROVIDER}",
                self.urls[0], self.app_id
            ))
            .bearer_auth(&self.admin_token)
            .json(&json!({
                "client_id": CLIENT_ID,
                "client_secret": self.client_secret,
                "authorize_url": format!("{}/oauth/authorize", self.standin_url),
                "token_url": format!("{}/oauth/token", self.standin_url),
                "api_base_url": self.standin_url,
                "scopes": ["read"],
                "refresh": refresh,
            }))
            .send()
            .await
            .expect("put provider");
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "{:?}",
            response.text().await
        );
    }

    /// Connects `user` through the browser flow (via replica 0).
    pub async fn connect_user(&self, user: &str) {
        self.connect_user_via(0, user).await;
    }

    /// Connects `user` through the browser flow via replica `index`.
    pub async fn connect_user_via(&self, index: usize, user: &str) {
        let connect_url = self.connect_session(index, user).await;
        let outcome = walk_connect(&browser_client(), &connect_url, user).await;
        assert_eq!(
            outcome.final_status,
            StatusCode::OK,
            "{}",
            outcome.final_body
        );
    }

    /// A connect link for `user` made at replica `index`.
    pub async fn connect_session(&self, index: usize, user: &str) -> String {
        self.connect_session_with(index, json!({"provider": PROVIDER, "user": user}))
            .await
    }

    /// A connect link for `user` that returns to the app ([`RETURN_TO`]),
    /// which then confirms the result ([`Replicas::confirm`]).
    pub async fn connect_session_returning(&self, index: usize, user: &str) -> String {
        self.connect_session_with(
            index,
            json!({"provider": PROVIDER, "user": user, "return_to": RETURN_TO}),
        )
        .await
    }

    async fn connect_session_with(&self, index: usize, body: Value) -> String {
        let response = self
            .http
            .post(format!("{}/v1/connect-sessions", self.urls[index]))
            .header("x-authstamp-app", &self.app_id)
            .header("x-authstamp-app-key", &self.app_key)
            .json(&body)
            .send()
            .await
            .expect("connect session");
        assert_eq!(response.status(), StatusCode::CREATED);
        let body: Value = response.json().await.expect("session json");
        body["connect_url"]
            .as_str()
            .expect("connect_url")
            .to_owned()
    }

    /// Connects `user` with an access token that expires `ttl_secs` later.
    pub async fn connect_user_expiring(&self, user: &str, ttl_secs: u64) {
        self.set_quirks(json!({"access_token_ttl_secs": ttl_secs}))
            .await;
        self.connect_user(user).await;
        self.set_quirks(json!({"access_token_ttl_secs": 3600}))
            .await;
    }

    /// A lookup at replica `index` that may never be answered (its replica
    /// is about to be killed): runs in the background, its outcome ignored.
    pub fn doomed_lookup(&self, index: usize, user: &str) -> tokio::task::JoinHandle<()> {
        let request = self
            .http
            .post(format!("{}/v1/token-lookup", self.filter_urls[index]))
            .bearer_auth(crate::filter_token())
            .header("x-authstamp-app", &self.app_id)
            .header("x-authstamp-app-key", &self.app_key)
            .json(&json!({"provider": PROVIDER, "user": user}));
        tokio::spawn(async move {
            let _ = request.send().await;
        })
    }

    /// The app confirms the connect result `result` for `user` at replica
    /// `index` (`POST /v1/connect-results/confirm`): (status, body).
    pub async fn confirm(&self, index: usize, result: &str, user: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .post(format!("{}/v1/connect-results/confirm", self.urls[index]))
            .header("x-authstamp-app", &self.app_id)
            .header("x-authstamp-app-key", &self.app_key)
            .json(&json!({"result": result, "user": user}))
            .send()
            .await
            .expect("confirm");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// `POST /v1/token-lookup` at replica `index`: (status, body).
    pub async fn lookup(&self, index: usize, user: &str) -> (StatusCode, Value) {
        lookup_at(
            &self.http,
            &self.filter_urls[index],
            &self.app_id,
            &self.app_key,
            user,
        )
        .await
    }

    /// `GET /v1/connections/{provider}/{user}` at replica `index`.
    pub async fn connection(&self, index: usize, user: &str) -> Value {
        let response = self
            .http
            .get(format!(
                "{}/v1/connections/{PROVIDER}/{user}",
                self.urls[index]
            ))
            .header("x-authstamp-app", &self.app_id)
            .header("x-authstamp-app-key", &self.app_key)
            .send()
            .await
            .expect("connection");
        response.json().await.expect("connection json")
    }

    pub async fn metrics(&self, index: usize) -> String {
        self.http
            .get(format!("{}/metrics", self.urls[index]))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    pub async fn set_quirks(&self, quirks: Value) {
        authstamp_testkit::standin::set_quirks(&self.http, &self.standin_url, &quirks).await;
    }

    /// The stand-in's counters (`GET /_standin/stats`).
    pub async fn standin_stats(&self) -> Value {
        authstamp_testkit::standin::stats(&self.http, &self.standin_url).await
    }

    /// Replicas started from now on reach PostgreSQL through a
    /// [`TcpCut`](crate::tcp_cut::TcpCut): a database outage on demand.
    pub async fn cut_database(&mut self) -> crate::tcp_cut::TcpCut {
        let url = self.database_url.clone().expect("postgres");
        let authority = url
            .split('@')
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .expect("host:port in the database URL")
            .to_owned();
        let cut = crate::tcp_cut::TcpCut::start(&authority).await;
        self.database_url = Some(url.replacen(&authority, &cut.addr, 1));
        cut
    }

    pub async fn refresh_calls(&self) -> u64 {
        authstamp_testkit::standin::refresh_calls(&self.http, &self.standin_url).await
    }

    /// Waits until the provider has seen `n` refresh calls.
    pub async fn wait_for_refresh_calls(&self, n: u64, timeout: Duration) {
        authstamp_testkit::standin::wait_for_refresh_calls(
            &self.http,
            &self.standin_url,
            n,
            timeout,
        )
        .await;
    }

    pub fn all_output(&self) -> String {
        std::iter::once(&self.standin)
            .chain(self.services.iter())
            .map(|p| p.logs())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Replicas {
    fn drop(&mut self) {
        for service in &mut self.services {
            service.kill();
        }
        if std::thread::panicking() {
            eprintln!("test failed; logs kept in {}", self.log_dir.display());
            let output = self.all_output();
            let lines: Vec<&str> = output.lines().collect();
            let tail = lines[lines.len().saturating_sub(150)..].join("\n");
            eprintln!("{tail}");
        }
    }
}

/// `POST /v1/token-lookup` at the filter listener `base`, with the filter
/// credential: (status, body).
pub async fn lookup_at(
    http: &Client,
    base: &str,
    app_id: &str,
    app_key: &str,
    user: &str,
) -> (StatusCode, Value) {
    let response = http
        .post(format!("{base}/v1/token-lookup"))
        .bearer_auth(crate::filter_token())
        .header("x-authstamp-app", app_id)
        .header("x-authstamp-app-key", app_key)
        .json(&json!({"provider": PROVIDER, "user": user}))
        .send()
        .await
        .expect("lookup");
    let status = response.status();
    let text = response.text().await.expect("lookup body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

/// The first sample of `name` (with its labels, e.g. `x{a="b"}`) in
/// Prometheus text.
pub fn metric(text: &str, name: &str) -> u64 {
    crate::prom::value(text, name).unwrap_or_else(|| panic!("no {name} in metrics")) as u64
}
