//! One complete authstamp deployment for a test: stand-in provider, token
//! service with a fresh vault, an app with a provider configuration, and
//! Envoy running `envoy/envoy.yaml` with only its ports and paths changed.

use crate::browser::{browser_client, walk_connect, ConnectOutcome};
use crate::deploy::Envoy;
use crate::process::Process;
use reqwest::{Client, Method, RequestBuilder, StatusCode};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const READY_TIMEOUT: Duration = Duration::from_secs(30);
pub const PROVIDER: &str = "standin";
pub const CLIENT_ID: &str = "authstamp-e2e-client";

pub struct StackOptions {
    /// Envoy worker threads.
    pub envoy_concurrency: u32,
    /// The token service's early-refresh window.
    pub refresh_skew: &'static str,
    /// More `authstamp serve` arguments (e.g. the filter listener's TLS).
    pub service_args: Vec<String>,
    /// PostgreSQL (`AUTHSTAMP_DATABASE_URL`); `None`: SQLite in the data dir.
    pub database_url: Option<String>,
}

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions {
            envoy_concurrency: 1,
            refresh_skew: "60s",
            service_args: Vec::new(),
            database_url: None,
        }
    }
}

pub struct Stack {
    pub log_dir: PathBuf,
    pub standin: Process,
    pub standin_url: String,
    pub token_service: Process,
    /// The app-facing API.
    pub service_url: String,
    /// The filter listener (token lookups with the filter credential).
    pub filter_url: String,
    pub envoy: Process,
    /// The listener apps send provider requests to.
    pub envoy_url: String,
    pub envoy_admin_url: String,
    pub app_id: String,
    pub app_key: String,
    pub admin_token: String,
    pub client_secret: String,
    pub master_key: String,
    pub http: Client,
}

impl Stack {
    pub async fn start(test_name: &str, options: StackOptions) -> Stack {
        let log_dir = crate::log_dir(test_name);
        let http = Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(20))
            .build()
            .expect("http client");

        let client_secret = crate::random_token("cs_");
        let mut command = Command::new(crate::standin_bin());
        command
            .args(["--listen", "127.0.0.1:0", "--client-id", CLIENT_ID])
            .args(["--access-token-ttl", "3600s"])
            .env("AUTHSTAMP_STANDIN_CLIENT_SECRET", &client_secret)
            .env("RUST_LOG", "debug");
        let mut standin = Process::spawn("standin", command, &log_dir, "listening on");
        let standin_url = standin.wait_for_listen_url(READY_TIMEOUT);

        let master_key = {
            use base64::Engine;
            let mut key = [0u8; 32];
            crate::getrandom(&mut key);
            base64::engine::general_purpose::STANDARD.encode(key)
        };
        let admin_token = crate::random_token("adm_");
        let data_dir = log_dir.join("data");
        std::fs::create_dir_all(&data_dir).expect("data dir");
        let mut command = Command::new(crate::authstamp_bin());
        command
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(["--filter-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--refresh-skew", options.refresh_skew])
            .args(&options.service_args)
            .env("AUTHSTAMP_MASTER_KEY", &master_key)
            .env("AUTHSTAMP_ADMIN_TOKEN", &admin_token)
            .env(crate::FILTER_TOKEN_ENV, crate::filter_token())
            .env("RUST_LOG", "debug,sqlx=info");
        if let Some(url) = &options.database_url {
            command.env("AUTHSTAMP_DATABASE_URL", url);
        }
        let mut token_service = Process::spawn("token-service", command, &log_dir, "listening on");
        let line = token_service.wait_for_line(READY_TIMEOUT);
        let (service_url, filter_url) = crate::process::service_urls(&line);

        let (envoy, envoy_url, envoy_admin_url) =
            start_envoy(&log_dir, &filter_url, options.envoy_concurrency).await;

        let mut stack = Stack {
            log_dir,
            standin,
            standin_url,
            token_service,
            service_url,
            filter_url,
            envoy,
            envoy_url,
            envoy_admin_url,
            app_id: String::new(),
            app_key: String::new(),
            admin_token,
            client_secret,
            master_key,
            http,
        };
        let (app_id, app_key) = stack.create_app("e2e", &["http://127.0.0.1/return"]).await;
        stack.app_id = app_id;
        stack.app_key = app_key;
        stack
            .configure_provider(&stack.app_id.clone(), PROVIDER)
            .await;
        stack
    }

    /// Kills Envoy and starts it again (`concurrency` workers, new ports).
    pub async fn restart_envoy(&mut self, concurrency: u32) {
        let bootstrap = local_bootstrap(&self.filter_url);
        self.restart_envoy_on(&bootstrap, concurrency).await;
    }

    /// Kills Envoy and starts it on `bootstrap` (the local bootstrap with
    /// some values changed; listener `authstamp_egress`).
    pub async fn restart_envoy_on(&mut self, bootstrap: &str, concurrency: u32) {
        self.envoy.kill();
        let envoy = Envoy::start_with_workers(
            &self.log_dir,
            "envoy-restarted",
            bootstrap,
            &[],
            concurrency,
        )
        .await;
        self.envoy_url = envoy.listener("authstamp_egress").to_string();
        self.envoy_admin_url = envoy.admin_url;
        self.envoy = envoy.process;
    }

    pub fn admin(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.service_url))
            .bearer_auth(&self.admin_token)
    }

    /// A new app through the admin API: `(app_id, app_key)`.
    pub async fn create_app(&self, name: &str, allowed_return_to: &[&str]) -> (String, String) {
        let response = self
            .admin(Method::POST, "/v1/apps")
            .json(&json!({"name": name, "allowed_return_to": allowed_return_to}))
            .send()
            .await
            .expect("create app");
        assert_eq!(response.status(), StatusCode::CREATED);
        let body: Value = response.json().await.expect("app json");
        (
            body["app_id"].as_str().expect("app_id").to_string(),
            body["app_key"].as_str().expect("app_key").to_string(),
        )
    }

    /// Points `provider` of `app_id` at the stand-in provider.
    pub async fn configure_provider(&self, app_id: &str, provider: &str) {
        let response = self
            .admin(
                Method::PUT,
                &format!("/v1/apps/{app_id}/providers/{provider}"),
            )
            .json(&json!({
                "client_id": CLIENT_ID,
                "client_secret": self.client_secret,
                "authorize_url": format!("{}/oauth/authorize", self.standin_url),
                "token_url": format!("{}/oauth/token", self.standin_url),
                "api_base_url": self.standin_url,
                "scopes": ["read", "write"],
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

    /// Stores a provider configuration (any JSON body) for the stack's app.
    pub async fn put_provider(&self, provider: &str, config: Value) {
        let response = self
            .admin(
                Method::PUT,
                &format!("/v1/apps/{}/providers/{provider}", self.app_id),
            )
            .json(&config)
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

    /// A request of the stack's app with its app headers.
    pub fn as_app(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.service_url))
            .header("x-authstamp-app", &self.app_id)
            .header("x-authstamp-app-key", &self.app_key)
    }

    /// `POST /v1/token-lookup` on the filter listener as the filter sends
    /// it: the filter credential and the stack's app headers.
    pub fn filter_lookup(&self, body: &Value) -> RequestBuilder {
        self.http
            .post(format!("{}/v1/token-lookup", self.filter_url))
            .bearer_auth(crate::filter_token())
            .header("x-authstamp-app", &self.app_id)
            .header("x-authstamp-app-key", &self.app_key)
            .json(body)
    }

    /// A provider API request through Envoy for `user` of `provider`.
    pub fn call_provider(
        &self,
        method: Method,
        provider: &str,
        path: &str,
        user: &str,
    ) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.envoy_url))
            .header("x-authstamp-provider", provider)
            .header("x-authstamp-user", user)
            .header("x-authstamp-app", &self.app_id)
            .header("x-authstamp-app-key", &self.app_key)
    }

    /// Connects `user` of the stack's app through the whole browser flow.
    pub async fn connect_user(&self, user: &str) -> ConnectOutcome {
        self.connect_user_as(&self.app_id, &self.app_key, user)
            .await
    }

    pub async fn connect_user_as(&self, app_id: &str, app_key: &str, user: &str) -> ConnectOutcome {
        let response = self
            .http
            .post(format!("{}/v1/connect-sessions", self.service_url))
            .header("x-authstamp-app", app_id)
            .header("x-authstamp-app-key", app_key)
            .json(&json!({"provider": PROVIDER, "user": user}))
            .send()
            .await
            .expect("connect session");
        assert_eq!(response.status(), StatusCode::CREATED);
        let body: Value = response.json().await.expect("session json");
        let connect_url = body["connect_url"].as_str().expect("connect_url");
        let outcome = walk_connect(&browser_client(), connect_url, user).await;
        assert_eq!(
            outcome.final_status,
            StatusCode::OK,
            "{}",
            outcome.final_body
        );
        outcome
    }

    /// A provider API request through Envoy for `user` of the stack's app.
    pub fn call(&self, method: Method, path: &str, user: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.envoy_url))
            .header("x-authstamp-provider", PROVIDER)
            .header("x-authstamp-user", user)
            .header("x-authstamp-app", &self.app_id)
            .header("x-authstamp-app-key", &self.app_key)
    }

    /// `users` connections of `provider` for users `<prefix><n>`, seeded
    /// straight into the token service's store (`authstamp bench-seed`;
    /// `extra` its further flags, e.g. `--token-prefix`).
    pub fn seed_users(&self, provider: &str, prefix: &str, users: u64, extra: &[&str]) {
        let output = Command::new(crate::authstamp_bin())
            .arg("bench-seed")
            .arg("--data-dir")
            .arg(self.log_dir.join("data"))
            .args(["--app", &self.app_id, "--provider", provider])
            .args(["--prefix", prefix, "--users", &users.to_string()])
            .args(extra)
            .env("AUTHSTAMP_MASTER_KEY", &self.master_key)
            .output()
            .expect("bench-seed");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Sum of the samples of `name` in Envoy's `/stats/prometheus` (the
    /// filter's metrics, either build).
    pub async fn envoy_metric(&self, name: &str) -> u64 {
        let text = self
            .http
            .get(format!("{}/stats/prometheus", self.envoy_admin_url))
            .send()
            .await
            .expect("envoy admin")
            .text()
            .await
            .expect("envoy stats");
        metric_sum(&text, name)
    }

    /// Token lookups the token service has answered, from its `/metrics`.
    pub async fn token_lookups(&self) -> u64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.service_url))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        metric_sum(&text, "authstamp_token_lookups_total")
    }

    pub async fn standin_stats(&self) -> Value {
        authstamp_testkit::standin::stats(&self.http, &self.standin_url).await
    }

    pub async fn refresh_calls(&self) -> u64 {
        authstamp_testkit::standin::refresh_calls(&self.http, &self.standin_url).await
    }

    pub async fn set_quirks(&self, quirks: Value) {
        authstamp_testkit::standin::set_quirks(&self.http, &self.standin_url, &quirks).await;
    }

    /// Everything every process of the stack printed so far.
    pub fn all_output(&self) -> String {
        [&self.standin, &self.token_service, &self.envoy]
            .iter()
            .map(|p| p.logs())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test failed; logs kept in {}", self.log_dir.display());
            let output = self.all_output();
            let tail: String = output
                .lines()
                .rev()
                .take(200)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            eprintln!("{tail}");
        }
    }
}

/// Envoy's Prometheus prefix of the native module's stats (the Wasm
/// filter's have none): the names after it are the same.
pub const NATIVE_STATS_PREFIX: &str = "envoy_dynamicmodulescustom_";
/// The same for the native upstream instance's stats, kept per provider
/// cluster (label `envoy_cluster_name`).
pub const NATIVE_CLUSTER_STATS_PREFIX: &str = "envoy_cluster_dynamicmodulescustom_";
/// The Wasm replay instance's stats on Envoy 1.36–1.38, which keeps them
/// per provider cluster (1.39 and later: unprefixed, like the stamping
/// instance's).
pub const WASM_CLUSTER_STATS_PREFIX: &str = "envoy_cluster_wasmcustom_";

/// Sum of every sample of `name` in Prometheus text (with or without one of
/// the prefixes above: deploy/prometheus/scrape-envoy.yml strips the same).
pub fn metric_sum(text: &str, name: &str) -> u64 {
    crate::prom::samples(text)
        .filter(|sample| {
            let plain = sample
                .name
                .strip_prefix(NATIVE_STATS_PREFIX)
                .or_else(|| sample.name.strip_prefix(NATIVE_CLUSTER_STATS_PREFIX))
                .or_else(|| sample.name.strip_prefix(WASM_CLUSTER_STATS_PREFIX))
                .unwrap_or(sample.name);
            plain == name
        })
        .map(|sample| sample.value)
        .sum::<f64>() as u64
}

/// The Envoy bootstrap of `envoy/envoy.yaml` with free ports, the given token
/// service filter listener, and absolute paths. Each replaced value must be
/// found exactly once, so a change to the real file breaks the tests instead
/// of escaping them.
pub fn local_bootstrap(filter_url: &str) -> String {
    let root = crate::workspace_root();
    if crate::filter_build() == crate::FilterBuild::Native {
        return native_bootstrap(filter_url);
    }
    let original =
        std::fs::read_to_string(root.join("envoy/envoy.yaml")).expect("read envoy/envoy.yaml");
    let service_port = filter_url.rsplit(':').next().expect("filter port");
    let replacements = [
        ("port_value: 9901", "port_value: 0".to_string()),
        ("port_value: 10000", "port_value: 0".to_string()),
        ("port_value: 8081", format!("port_value: {service_port}")),
    ];
    let mut config = crate::deploy::with_built_filter(
        &original,
        "filename: target/wasm32-wasip1/release/authstamp_filter.wasm",
    );
    for (from, to) in replacements {
        assert_eq!(config.matches(from).count(), 1, "envoy.yaml: `{from}` once");
        config = config.replace(from, &to);
    }
    config
}

/// The local bootstrap's `max_cache_ttl` filter configuration member: where
/// tests change the filter configuration.
pub const MAX_CACHE_TTL: &str = "\"max_cache_ttl\": \"5m\"";

/// [`local_bootstrap`] with [`MAX_CACHE_TTL`] (found once) replaced by
/// `with`, e.g. `"max_cache_ttl": "5m", "cache_capacity": 4`.
pub fn local_bootstrap_replacing(filter_url: &str, with: &str) -> String {
    crate::deploy::replace_once(
        &local_bootstrap(filter_url),
        &[(MAX_CACHE_TTL, with.to_string())],
    )
}

/// [`local_bootstrap`] of the native build (`envoy/envoy-native.yaml`; the
/// module comes from `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`, see
/// [`crate::envoy_command`]).
fn native_bootstrap(filter_url: &str) -> String {
    let original = std::fs::read_to_string(crate::workspace_root().join("envoy/envoy-native.yaml"))
        .expect("read envoy/envoy-native.yaml");
    let service_port = filter_url.rsplit(':').next().expect("filter port");
    crate::deploy::replace_once(
        &original,
        &[
            ("port_value: 9901", "port_value: 0".to_string()),
            ("port_value: 10000", "port_value: 0".to_string()),
            ("port_value: 8081", format!("port_value: {service_port}")),
        ],
    )
}

/// Envoy on the local bootstrap: `(process, listener URL, admin URL)`.
async fn start_envoy(
    log_dir: &Path,
    filter_url: &str,
    concurrency: u32,
) -> (Process, String, String) {
    let envoy = Envoy::start_with_workers(
        log_dir,
        "envoy",
        &local_bootstrap(filter_url),
        &[],
        concurrency,
    )
    .await;
    let listener = envoy.listener("authstamp_egress").to_string();
    (envoy.process, listener, envoy.admin_url)
}
