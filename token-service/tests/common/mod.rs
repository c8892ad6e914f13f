//! Test harness: the token service over a temp-dir SQLite, driven with
//! tower's `oneshot`, and a fake provider token endpoint on 127.0.0.1:0.

#![allow(dead_code)]

use authstamp_testkit::postgres::TestPostgres;
use authstamp_token_service::config::PublicUrl;
use authstamp_token_service::db::Db;
use authstamp_token_service::policy::RefreshPolicy;
use authstamp_token_service::secrets::{AdminToken, FilterToken, MasterKey};
use authstamp_token_service::vault::Vault;
use authstamp_token_service::{app, filter_app, AppState, StateOptions};
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Form, Router};
use http_body_util::BodyExt as _;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower::ServiceExt as _;
use url::Url;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
/// The credential the Envoy filter sends to the filter listener.
pub const FILTER_TOKEN: &str = "test-filter-token-9876543210";
pub const PUBLIC_URL: &str = "http://authstamp.test";
pub const CLIENT_ID: &str = "client id/1";
/// Characters that RFC 6749 §2.3.1 form-encodes before Basic auth.
pub const CLIENT_SECRET: &str = "s3cr:t+/= top-secret-client-value";

/// One request the fake token endpoint received.
#[derive(Clone, Debug)]
pub struct TokenCall {
    pub form: HashMap<String, String>,
    pub authorization: Option<String>,
}

impl TokenCall {
    pub fn grant_type(&self) -> &str {
        self.form
            .get("grant_type")
            .map(String::as_str)
            .unwrap_or("")
    }
}

type Responder = Box<dyn Fn(&TokenCall) -> (u16, Value) + Send + Sync>;

#[derive(Clone)]
pub struct FakeProvider {
    pub token_url: String,
    /// Its API's base URL (`GET /api/me` checks a credential).
    pub api_url: String,
    calls: Arc<Mutex<Vec<TokenCall>>>,
    /// Credentials `GET /api/me` accepts (an `x-api-key`, an `api_key`
    /// query parameter or a whole `authorization` value).
    accepted: Arc<Mutex<Vec<String>>>,
    /// The credential each `GET /api/me` carried.
    api_calls: Arc<Mutex<Vec<String>>>,
    responder: Arc<Mutex<Responder>>,
    delay: Arc<Mutex<Duration>>,
}

impl FakeProvider {
    pub async fn start() -> Self {
        let provider = Self {
            token_url: String::new(),
            api_url: String::new(),
            calls: Arc::default(),
            accepted: Arc::default(),
            api_calls: Arc::default(),
            responder: Arc::new(Mutex::new(Box::new(|call: &TokenCall| {
                match call.grant_type() {
                    "authorization_code" => (
                        200,
                        json!({"access_token": "at-1", "refresh_token": "rt-1", "token_type": "Bearer",
                               "expires_in": 3600, "scope": "read write"}),
                    ),
                    _ => (
                        200,
                        json!({"access_token": "at-refreshed", "expires_in": 3600}),
                    ),
                }
            }))),
            delay: Arc::new(Mutex::new(Duration::ZERO)),
        };
        let router = Router::new()
            .route("/token", post(token_endpoint))
            .route("/api/me", axum::routing::get(api_me))
            .with_state(provider.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        Self {
            token_url: format!("http://{addr}/token"),
            api_url: format!("http://{addr}"),
            ..provider
        }
    }

    /// Makes `GET /api/me` accept `credential`.
    pub fn accept(&self, credential: &str) {
        self.accepted.lock().unwrap().push(credential.to_owned());
    }

    /// The credential each `GET /api/me` carried, in order.
    pub fn api_calls(&self) -> Vec<String> {
        self.api_calls.lock().unwrap().clone()
    }

    pub fn respond(&self, f: impl Fn(&TokenCall) -> (u16, Value) + Send + Sync + 'static) {
        *self.responder.lock().unwrap() = Box::new(f);
    }

    pub fn set_delay(&self, delay: Duration) {
        *self.delay.lock().unwrap() = delay;
    }

    pub fn calls(&self) -> Vec<TokenCall> {
        self.calls.lock().unwrap().clone()
    }

    pub fn calls_of(&self, grant_type: &str) -> Vec<TokenCall> {
        self.calls()
            .into_iter()
            .filter(|c| c.grant_type() == grant_type)
            .collect()
    }
}

async fn token_endpoint(
    State(provider): State<FakeProvider>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> impl IntoResponse {
    let call = TokenCall {
        form,
        authorization: headers
            .get(header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap().to_owned()),
    };
    provider.calls.lock().unwrap().push(call.clone());
    let delay = *provider.delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let (status, body) = (provider.responder.lock().unwrap())(&call);
    (StatusCode::from_u16(status).unwrap(), axum::Json(body))
}

/// `GET /api/me`: 200 for an accepted credential, else 401.
async fn api_me(
    State(provider): State<FakeProvider>,
    headers: HeaderMap,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> StatusCode {
    let from_query = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "api_key")
        .map(|(_, v)| v.into_owned());
    let credential = headers
        .get("x-api-key")
        .or_else(|| headers.get(header::AUTHORIZATION))
        .map(|v| v.to_str().unwrap().to_owned())
        .or(from_query)
        .unwrap_or_default();
    provider.api_calls.lock().unwrap().push(credential.clone());
    if provider.accepted.lock().unwrap().contains(&credential) {
        StatusCode::OK
    } else {
        StatusCode::UNAUTHORIZED
    }
}

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub state: AppState,
    /// The app-facing API (`--listen`).
    pub router: Router,
    /// The filter listener's API (`--filter-listen`).
    pub filter_router: Router,
    pub provider: FakeProvider,
    /// `None`: SQLite in `dir`.
    pub database_url: Option<String>,
    pub master_key: MasterKey,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// Asserts an error reply in the protocol's shape.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.text());
        assert_eq!(
            self.header("x-authstamp-error"),
            Some(code),
            "body: {}",
            self.text()
        );
        assert!(
            self.header("content-type")
                .unwrap_or("")
                .starts_with("application/json"),
            "content-type of {}",
            self.text()
        );
        let body = self.json();
        assert_eq!(body["error"], code, "{body}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
    }
}

/// Which database a harness runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    /// A fresh database on the test process's own PostgreSQL.
    Postgres,
}

pub struct Options {
    pub admin_token: Option<&'static str>,
    pub backend: Backend,
    pub policy: RefreshPolicy,
    pub provider_timeout: Duration,
    pub refresh_lease: Option<Duration>,
    /// `None`: the service's defaults.
    pub rate_limits: Option<authstamp_token_service::ratelimit::RateLimits>,
    /// `None`: the service's default (250 ms).
    pub valid_token_max_wait: Option<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            admin_token: Some(ADMIN_TOKEN),
            backend: Backend::Sqlite,
            // Tests force refreshes back to back to count them; the bound
            // has its own test (refresh.rs, forced_refreshes_are_bounded).
            policy: RefreshPolicy {
                forced_refresh_interval: Duration::ZERO,
                ..RefreshPolicy::default()
            },
            provider_timeout: Duration::from_secs(5),
            refresh_lease: None,
            rate_limits: None,
            valid_token_max_wait: None,
        }
    }
}

impl Options {
    pub fn on(backend: Backend) -> Self {
        Self {
            backend,
            ..Self::default()
        }
    }
}

/// Runs an async test body once on SQLite and once on PostgreSQL:
/// `both_backends!(name, body)` with `async fn body(backend: Backend)`.
#[macro_export]
macro_rules! both_backends {
    ($name:ident, $body:path) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                $body(Backend::Sqlite).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                $body(Backend::Postgres).await;
            }
        }
    };
}

pub struct ConnectedApp {
    pub app_id: String,
    pub app_key: String,
    pub provider: String,
}

impl Harness {
    pub async fn new() -> Self {
        Self::with(Options::default()).await
    }

    pub async fn with(options: Options) -> Self {
        let _ = tracing_subscriber::fmt().with_test_writer().try_init();
        let dir = tempfile::tempdir().unwrap();
        let database_url = match options.backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(TestPostgres::shared().create_database("ts")),
        };
        let db = Db::open(database_url.as_deref(), dir.path()).await.unwrap();
        let mut state_options = StateOptions::new(PublicUrl::parse(PUBLIC_URL).unwrap());
        state_options.admin_token = options.admin_token.map(AdminToken::new);
        state_options.filter_token = Some(FilterToken::new(FILTER_TOKEN));
        state_options.policy = options.policy;
        state_options.provider_timeout = options.provider_timeout;
        state_options.refresh_lease = options.refresh_lease;
        if let Some(wait) = options.valid_token_max_wait {
            state_options.valid_token_max_wait = wait;
        }
        if let Some(limits) = options.rate_limits {
            state_options.rate_limits = limits;
        }
        let master_key = MasterKey::generate();
        let vault_key = MasterKey::from_base64(&master_key.to_base64()).unwrap();
        let state = AppState::new(db, Vault::new(&master_key), state_options).unwrap();
        Self {
            router: app(state.clone()),
            filter_router: filter_app(state.clone()),
            state,
            dir,
            provider: FakeProvider::start().await,
            database_url,
            master_key: vault_key,
        }
    }

    /// Another replica: its own state (lease owner, locks, metrics) on the
    /// same database and vault key, like a second `authstamp serve`:
    /// `(state, app router, filter router)`.
    pub async fn replica(&self, options: Options) -> (AppState, Router, Router) {
        let db = Db::open(self.database_url.as_deref(), self.dir.path())
            .await
            .unwrap();
        let mut state_options = StateOptions::new(PublicUrl::parse(PUBLIC_URL).unwrap());
        state_options.admin_token = options.admin_token.map(AdminToken::new);
        state_options.filter_token = Some(FilterToken::new(FILTER_TOKEN));
        state_options.policy = options.policy;
        state_options.provider_timeout = options.provider_timeout;
        state_options.refresh_lease = options.refresh_lease;
        if let Some(wait) = options.valid_token_max_wait {
            state_options.valid_token_max_wait = wait;
        }
        let key = MasterKey::from_base64(&self.master_key.to_base64()).unwrap();
        let state = AppState::new(db, Vault::new(&key), state_options).unwrap();
        (state.clone(), app(state.clone()), filter_app(state))
    }

    pub async fn send(&self, request: Request<Body>) -> Reply {
        send_to(self.router.clone(), request).await
    }

    /// A request to the filter listener, as it arrives (no credential added).
    pub async fn send_filter(&self, request: Request<Body>) -> Reply {
        send_to(self.filter_router.clone(), request).await
    }

    /// `POST uri` to the filter listener as the filter would send it for
    /// the app: filter credential plus the app's headers.
    pub async fn as_filter(&self, app_id: &str, app_key: &str, uri: &str, body: Value) -> Reply {
        self.send_filter(filter_request(app_id, app_key, uri, body))
            .await
    }

    pub async fn get(&self, uri: &str) -> Reply {
        self.send(Request::get(uri).body(Body::empty()).unwrap())
            .await
    }

    pub async fn admin(&self, method: Method, uri: &str, body: Option<Value>) -> Reply {
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {ADMIN_TOKEN}"));
        let body = match body {
            Some(v) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        self.send(request.body(body).unwrap()).await
    }

    pub async fn as_app(&self, app_id: &str, app_key: &str, uri: &str, body: Value) -> Reply {
        self.send(app_request(app_id, app_key, uri, body)).await
    }

    pub async fn create_app(&self, allowed_return_to: &[&str]) -> (String, String) {
        let reply = self
            .admin(
                Method::POST,
                "/v1/apps",
                Some(json!({"name": "test app", "allowed_return_to": allowed_return_to})),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
        let body = reply.json();
        (
            body["app_id"].as_str().unwrap().to_owned(),
            body["app_key"].as_str().unwrap().to_owned(),
        )
    }

    pub fn provider_config(&self) -> Value {
        json!({
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "authorize_url": "https://provider.test/oauth/authorize?access_type=offline&prompt=consent",
            "token_url": self.provider.token_url,
            "api_base_url": "https://api.provider.test:8443/v2/",
            "scopes": ["read", "write"],
            "scope_separator": ",",
        })
    }

    pub async fn put_provider(&self, app_id: &str, name: &str, config: Value) -> Reply {
        self.admin(
            Method::PUT,
            &format!("/v1/apps/{app_id}/providers/{name}"),
            Some(config),
        )
        .await
    }

    /// An app with provider `fake`, return_to allowed under https://app.test/done.
    pub async fn app_with_provider(&self) -> ConnectedApp {
        let (app_id, app_key) = self.create_app(&["https://app.test/done"]).await;
        let reply = self
            .put_provider(&app_id, "fake", self.provider_config())
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        ConnectedApp {
            app_id,
            app_key,
            provider: "fake".into(),
        }
    }

    /// Connect link → authorize redirect; returns (state, cookie value, authorize URL).
    pub async fn start_connect(
        &self,
        app: &ConnectedApp,
        user: &str,
        return_to: Option<&str>,
    ) -> (String, String, Url) {
        self.start_connect_with(app, user, return_to, json!({}))
            .await
    }

    /// The path of the connect link the app gets for the connect-session
    /// request `body` (the page is not opened).
    pub async fn connect_link(&self, app: &ConnectedApp, body: Value) -> String {
        let reply = self
            .as_app(&app.app_id, &app.app_key, "/v1/connect-sessions", body)
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
        reply.json()["connect_url"]
            .as_str()
            .unwrap()
            .strip_prefix(PUBLIC_URL)
            .unwrap()
            .to_owned()
    }

    /// [`Self::start_connect`] with connection parameters.
    pub async fn start_connect_with(
        &self,
        app: &ConnectedApp,
        user: &str,
        return_to: Option<&str>,
        params: Value,
    ) -> (String, String, Url) {
        let mut body = json!({"provider": app.provider, "user": user, "params": params});
        if let Some(r) = return_to {
            body["return_to"] = json!(r);
        }
        let path = self.connect_link(app, body).await;
        let page = self.get(&path).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text());
        assert!(
            page.text().contains(&format!("action=\"{path}\"")),
            "{}",
            page.text()
        );
        let reply = self.post_connect(&path).await;
        assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.text());
        let location = Url::parse(reply.header("location").unwrap()).unwrap();
        let state = query_param(&location, "state").unwrap();
        let cookie = reply.header("set-cookie").unwrap();
        let nonce = cookie
            .split(';')
            .next()
            .unwrap()
            .strip_prefix("authstamp_connect=")
            .unwrap()
            .to_owned();
        (state, nonce, location)
    }

    /// The connect page's button as the page's browser presses it: the
    /// page is opened for its CSRF cookie and field, then the form is posted
    /// same-origin. (A page that does not open, a used or expired link, gets
    /// a well-formed post all the same, so the session check is what answers.)
    pub async fn post_connect(&self, path: &str) -> Reply {
        let page = self.get(path).await;
        let csrf = if page.status == StatusCode::OK {
            csrf_of(&page)
        } else {
            "csrf-of-a-page-that-did-not-open".to_owned()
        };
        self.send(
            Request::post(path)
                .header(header::COOKIE, format!("authstamp_csrf={csrf}"))
                .header(header::ORIGIN, PUBLIC_URL)
                .header("sec-fetch-site", "same-origin")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(format!("csrf={}", urlencode(&csrf))))
                .unwrap(),
        )
        .await
    }

    pub async fn callback(&self, query: &str, cookie: Option<&str>) -> Reply {
        let mut request = Request::get(format!("/v1/oauth/callback?{query}"));
        if let Some(nonce) = cookie {
            request = request.header(
                header::COOKIE,
                format!("other=1; authstamp_connect={nonce}"),
            );
        }
        self.send(request.body(Body::empty()).unwrap()).await
    }

    /// Runs the whole connect flow for `user`, back to the app's return_to,
    /// and the app's confirmation.
    pub async fn connect(&self, app: &ConnectedApp, user: &str) {
        let result = self.connect_until_return(app, user).await;
        let confirmed = self.confirm(app, &result, user).await;
        assert_eq!(confirmed.status, StatusCode::OK, "{}", confirmed.text());
    }

    /// The connect flow for `user` up to the app's return_to: the one-time
    /// result the browser carried back (nothing is connected yet).
    pub async fn connect_until_return(&self, app: &ConnectedApp, user: &str) -> String {
        let (state, nonce, _) = self
            .start_connect(app, user, Some("https://app.test/done"))
            .await;
        let reply = self
            .callback(
                &format!("code=the-code&state={}", urlencode(&state)),
                Some(&nonce),
            )
            .await;
        assert_eq!(reply.status, StatusCode::FOUND, "{}", reply.text());
        connect_result_of(&reply)
    }

    /// The app's side of a callback that went back to its return_to: confirms
    /// `user`, asserting the redirect and the confirmation.
    pub async fn confirm_return(&self, app: &ConnectedApp, user: &str, callback: &Reply) {
        assert_eq!(callback.status, StatusCode::FOUND, "{}", callback.text());
        let confirmed = self.confirm(app, &connect_result_of(callback), user).await;
        assert_eq!(confirmed.status, StatusCode::OK, "{}", confirmed.text());
    }

    /// The app's backend confirms a connect result for its logged-in `user`.
    pub async fn confirm(&self, app: &ConnectedApp, result: &str, user: &str) -> Reply {
        self.as_app(
            &app.app_id,
            &app.app_key,
            "/v1/connect-results/confirm",
            json!({"result": result, "user": user}),
        )
        .await
    }

    pub fn lookup_request(
        &self,
        app: &ConnectedApp,
        user: &str,
        force_refresh: bool,
    ) -> Request<Body> {
        let mut body = json!({"provider": app.provider, "user": user});
        if force_refresh {
            body["force_refresh"] = json!(true);
        }
        filter_request(&app.app_id, &app.app_key, "/v1/token-lookup", body)
    }

    /// A token lookup as the filter sends it, to the filter listener.
    pub async fn lookup(&self, app: &ConnectedApp, user: &str, force_refresh: bool) -> Reply {
        self.send_filter(self.lookup_request(app, user, force_refresh))
            .await
    }

    /// Moves a connection's expiry to `now + secs` (for a token obtained an
    /// hour ago, so that the skew applies in full).
    pub async fn set_expires_in(&self, app: &ConnectedApp, user: &str, secs: i64) {
        let now = authstamp_token_service::db::now();
        sqlx::query("UPDATE connections SET expires_at = $1, issued_at = $5 WHERE app_id = $2 AND provider = $3 AND user_id = $4")
            .bind(now + secs)
            .bind(&app.app_id)
            .bind(&app.provider)
            .bind(user)
            .bind(now - 3600)
            .execute(self.state.db.pool())
            .await
            .unwrap();
    }

    /// Runs SQL against the harness's database.
    pub async fn exec(&self, sql: &str) {
        sqlx::query(sql)
            .execute(self.state.db.pool())
            .await
            .unwrap();
    }

    /// `GET /v1/connections/{provider}/{user}` as the app.
    pub async fn connection_view(&self, app: &ConnectedApp, user: &str) -> Reply {
        self.send(
            Request::get(format!(
                "/v1/connections/{}/{}",
                app.provider,
                urlencode(user)
            ))
            .header("x-authstamp-app", &app.app_id)
            .header("x-authstamp-app-key", &app.app_key)
            .body(Body::empty())
            .unwrap(),
        )
        .await
    }

    /// Every byte the database holds that could carry a secret: the SQLite
    /// files, or every bytea/text column of PostgreSQL as hex and text.
    pub async fn all_stored_bytes(&self) -> Vec<u8> {
        if self.database_url.is_none() {
            return self.raw_database();
        }
        let mut bytes = Vec::new();
        for table in [
            "apps",
            "providers",
            "connections",
            "connect_sessions",
            "oauth_states",
        ] {
            let rows: Vec<(String,)> = sqlx::query_as(&format!("SELECT t::text FROM {table} t"))
                .fetch_all(self.state.db.pool())
                .await
                .unwrap();
            for (row,) in rows {
                bytes.extend(row.into_bytes());
            }
        }
        bytes
    }

    /// Whether `secret` is anywhere in the database, in clear (or, on
    /// PostgreSQL, as the hex text of a bytea).
    pub async fn stores_in_clear(&self, secret: &str) -> bool {
        let bytes = self.all_stored_bytes().await;
        let hex: String = secret.bytes().map(|b| format!("{b:02x}")).collect();
        contains(&bytes, secret.as_bytes()) || contains(&bytes, hex.as_bytes())
    }

    pub async fn connection_row(
        &self,
        app: &ConnectedApp,
        user: &str,
    ) -> (String, i64, Option<String>) {
        sqlx::query_as(
            "SELECT status, failure_count, last_refresh_error FROM connections \
             WHERE app_id = $1 AND provider = $2 AND user_id = $3",
        )
        .bind(&app.app_id)
        .bind(&app.provider)
        .bind(user)
        .fetch_one(self.state.db.pool())
        .await
        .unwrap()
    }

    /// Every byte of the SQLite database, WAL included.
    pub fn raw_database(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        for name in ["authstamp.db", "authstamp.db-wal", "authstamp.db-shm"] {
            if let Ok(b) = std::fs::read(self.dir.path().join(name)) {
                bytes.extend(b);
            }
        }
        assert!(!bytes.is_empty());
        bytes
    }
}

pub async fn send_to(router: Router, request: Request<Body>) -> Reply {
    let response = router.oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    Reply {
        status,
        headers,
        body,
    }
}

pub fn app_request(app_id: &str, app_key: &str, uri: &str, body: Value) -> Request<Body> {
    Request::post(uri)
        .header("x-authstamp-app", app_id)
        .header("x-authstamp-app-key", app_key)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

/// [`app_request`] with the filter credential, as the Envoy filter sends it.
pub fn filter_request(app_id: &str, app_key: &str, uri: &str, body: Value) -> Request<Body> {
    let mut request = app_request(app_id, app_key, uri, body);
    request.headers_mut().insert(
        header::AUTHORIZATION,
        format!("Bearer {FILTER_TOKEN}").parse().unwrap(),
    );
    request
}

pub fn query_param(url: &Url, name: &str) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

pub fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The CSRF token a connect page set in its cookie; asserts the form
/// carries the same value.
pub fn csrf_of(page: &Reply) -> String {
    let cookie = page
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix("authstamp_csrf="))
        .expect("the connect page sets its CSRF cookie");
    let value = cookie.split(';').next().unwrap().to_owned();
    assert!(
        page.text()
            .contains(&format!("name=\"csrf\" value=\"{value}\"")),
        "the form carries the cookie's CSRF token: {}",
        page.text()
    );
    value
}

/// `authstamp_result` of a callback's redirect to the app's return_to.
pub fn connect_result_of(reply: &Reply) -> String {
    let location = Url::parse(reply.header("location").expect("location")).unwrap();
    assert_eq!(
        query_param(&location, "authstamp_status").as_deref(),
        Some("confirmation_required")
    );
    query_param(&location, "authstamp_result").expect("authstamp_result")
}
