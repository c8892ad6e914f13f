//! authstamp token service: apps, provider configurations, the OAuth connect
//! flow and callback, the encrypted vault, refresh, and the token lookup the
//! Envoy filter calls.
//!
//! [`app`] builds the whole HTTP API over an [`AppState`]; `main.rs` only
//! parses the command line and calls [`cli::run`].

pub mod admin;
pub mod app_keys;
pub mod auth;
pub mod background;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod connections;
pub mod credentials;
pub mod db;
pub mod discovery;
pub mod error;
pub mod files;
pub mod filter_tls;
pub mod html;
pub mod journal;
pub mod key_connect;
pub mod keys;
pub mod lifecycle;
pub mod logging;
pub mod lookup;
pub mod metrics;
pub mod oauth;
pub mod policy;
pub mod ratelimit;
pub mod refresh;
pub mod secrets;
pub mod seed;
pub mod serve;
pub mod server;
pub mod store;
pub mod template;
pub mod validate;
pub mod vault;
pub mod webhooks;

use crate::config::PublicUrl;
use crate::db::Db;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::oauth::client::TokenClient;
use crate::policy::RefreshPolicy;
use crate::refresh::{LeaseOwners, RefreshLocks};
use crate::secrets::{sha256, AdminToken, Digest, FilterToken};
use crate::store::connections::StatusCounts;
use crate::vault::Vault;
use authstamp_protocol::paths;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post, put, MethodRouter};
use axum::{Json, Router};
use std::ops::Deref;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Request bodies larger than this are refused.
pub const BODY_LIMIT: usize = 64 * 1024;

/// Everything the handlers share; cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub db: Db,
    pub vault: Vault,
    pub public_url: PublicUrl,
    pub token_client: TokenClient,
    pub metrics: Metrics,
    pub refresh_locks: RefreshLocks,
    /// Service-wide refresh policy; providers may override parts of it.
    pub policy: RefreshPolicy,
    /// Upper bound of the doubling failure cooldown.
    pub max_failure_cooldown: Duration,
    /// How long a refresh lease lasts (longer than the provider timeout).
    pub refresh_lease: Duration,
    /// How long a caller with a still-valid token waits for a refresh.
    pub valid_token_max_wait: Duration,
    pub lease_owners: LeaseOwners,
    pub provider_probes: refresh::ProviderProbes,
    /// When each failing connection's failures began (time to recover).
    pub failing_since: refresh::FailingSince,
    /// Issued tokens the database could not take yet.
    pub journal: journal::Journal,
    /// What lookups of journalled, unwritten connections need meanwhile.
    pub journalled_connects: oauth::journalled_connect::Contexts,
    /// Held by every running refresh task; shutdown waits for them.
    pub refresh_tasks: Arc<tokio::sync::Semaphore>,
    pub background: BackgroundOptions,
    pub connect_session_ttl: Duration,
    /// Per-app rate limits (in this replica's memory).
    pub limits: ratelimit::Limiters,
    admin_token_digest: Option<Digest>,
    filter_token_digest: Option<Digest>,
    status_cache: Mutex<Option<(Instant, StatusCounts)>>,
}

/// The background refresher: how often the leader scans, and how much.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackgroundOptions {
    /// Zero: no background refresher in this replica.
    pub interval: Duration,
    /// Connections refreshed per pass at most.
    pub batch: i64,
    /// Refreshes running at once.
    pub concurrency: usize,
}

impl Default for BackgroundOptions {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(15),
            batch: 500,
            concurrency: 8,
        }
    }
}

/// Permits of [`Inner::refresh_tasks`].
pub const MAX_REFRESH_TASKS: u32 = 4096;

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("db", &self.db)
            .field("public_url", &self.public_url)
            .field("policy", &self.policy)
            .field("refresh_lease", &self.refresh_lease)
            .field("replica", &self.lease_owners.replica())
            .field("connect_session_ttl", &self.connect_session_ttl)
            .field("admin_api_enabled", &self.admin_token_digest.is_some())
            .field("filter_token_set", &self.filter_token_digest.is_some())
            .finish_non_exhaustive()
    }
}

impl Deref for AppState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// Settings of an [`AppState`] besides the database and the vault.
#[derive(Debug)]
pub struct StateOptions {
    pub public_url: PublicUrl,
    /// `None`: the admin API answers 401 to everyone.
    pub admin_token: Option<AdminToken>,
    /// `None`: only a verified client certificate opens the filter listener.
    pub filter_token: Option<FilterToken>,
    pub policy: RefreshPolicy,
    pub max_failure_cooldown: Duration,
    pub provider_timeout: Duration,
    /// `None`: the provider timeout plus 5 s.
    pub refresh_lease: Option<Duration>,
    pub valid_token_max_wait: Duration,
    pub background: BackgroundOptions,
    pub connect_session_ttl: Duration,
    pub rate_limits: ratelimit::RateLimits,
    /// The token journal (`serve`: in the data directory); `None`: memory only.
    pub journal: Option<journal::Journal>,
}

impl StateOptions {
    /// Defaults for tests and embedding: everything as `authstamp serve`
    /// without flags, but no background refresher.
    pub fn new(public_url: PublicUrl) -> Self {
        Self {
            public_url,
            admin_token: None,
            filter_token: None,
            policy: RefreshPolicy::default(),
            max_failure_cooldown: Duration::from_secs(300),
            provider_timeout: Duration::from_secs(10),
            refresh_lease: None,
            valid_token_max_wait: refresh::DEFAULT_VALID_TOKEN_MAX_WAIT,
            background: BackgroundOptions {
                interval: Duration::ZERO,
                ..BackgroundOptions::default()
            },
            connect_session_ttl: Duration::from_secs(600),
            rate_limits: ratelimit::RateLimits::default(),
            journal: None,
        }
    }
}

impl AppState {
    pub fn new(db: Db, vault: Vault, options: StateOptions) -> anyhow::Result<Self> {
        let refresh_lease = options
            .refresh_lease
            .unwrap_or(options.provider_timeout + Duration::from_secs(5));
        if refresh_lease <= options.provider_timeout {
            anyhow::bail!(
                "the refresh lease ({}) must be longer than the provider timeout ({})",
                humantime::format_duration(refresh_lease),
                humantime::format_duration(options.provider_timeout)
            );
        }
        if let Err(errors) = catalog::embedded() {
            anyhow::bail!("the provider catalog is invalid: {}", errors.join("; "));
        }
        Ok(Self(Arc::new(Inner {
            db,
            vault,
            public_url: options.public_url,
            token_client: TokenClient::new(options.provider_timeout)?,
            metrics: Metrics::default(),
            refresh_locks: RefreshLocks::default(),
            policy: options.policy,
            max_failure_cooldown: options.max_failure_cooldown,
            refresh_lease,
            valid_token_max_wait: options.valid_token_max_wait,
            lease_owners: LeaseOwners::new(),
            provider_probes: refresh::ProviderProbes::default(),
            failing_since: refresh::FailingSince::default(),
            journal: options.journal.unwrap_or_else(journal::Journal::in_memory),
            journalled_connects: oauth::journalled_connect::Contexts::default(),
            refresh_tasks: Arc::new(tokio::sync::Semaphore::new(MAX_REFRESH_TASKS as usize)),
            background: options.background,
            connect_session_ttl: options.connect_session_ttl,
            limits: ratelimit::Limiters::new(options.rate_limits),
            admin_token_digest: options.admin_token.map(|t| sha256(t.expose().as_bytes())),
            filter_token_digest: options.filter_token.map(|t| sha256(t.expose().as_bytes())),
            status_cache: Mutex::new(None),
        })))
    }

    /// A fresh lease owner name of this replica.
    pub fn lease_owner(&self) -> String {
        self.lease_owners.next()
    }

    /// Connections by status, counted at most every 10 s.
    pub async fn status_counts(&self) -> Option<StatusCounts> {
        let cached = *self.status_cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, counts)) = cached {
            if at.elapsed() < Duration::from_secs(10) {
                return Some(counts);
            }
        }
        // Metrics stay quick in an outage: the last counts (or none) after a short wait.
        let counted = tokio::time::timeout(
            PROBE_DB_TIMEOUT,
            store::connections::count_by_status(&self.db),
        )
        .await
        .unwrap_or(Err(sqlx::Error::PoolTimedOut));
        match counted {
            Ok(counts) => {
                *self.status_cache.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some((Instant::now(), counts));
                Some(counts)
            }
            Err(err) => {
                tracing::warn!(error = %err, "could not count connections for /metrics");
                cached.map(|(_, counts)| counts)
            }
        }
    }

    /// Waits (at most `limit`) until no refresh task is running.
    pub async fn drain_refreshes(&self, limit: Duration) {
        let all = self.refresh_tasks.acquire_many(MAX_REFRESH_TASKS);
        if tokio::time::timeout(limit, all).await.is_err() {
            tracing::warn!("refreshes still running at shutdown");
        }
    }

    pub fn admin_token_digest(&self) -> Option<&Digest> {
        self.0.admin_token_digest.as_ref()
    }

    pub fn filter_token_digest(&self) -> Option<&Digest> {
        self.0.filter_token_digest.as_ref()
    }
}

/// Every route of the app-facing HTTP API (`--listen`). [`app`] is built
/// from this list, [`filter_app`] from [`filter_routes`], and
/// `tests/openapi.rs` checks both against the OpenAPI document served at
/// `/v1/openapi.json` (every route documented, every documented operation
/// routed): add a route here and to `openapi.json` together.
pub fn routes() -> Vec<(&'static str, MethodRouter<AppState>)> {
    vec![
        ("/healthz", get(healthz)),
        ("/readyz", get(readyz)),
        ("/metrics", get(metrics_text)),
        ("/v1/openapi.json", get(openapi_document)),
        ("/v1/apps", post(admin::create_app_handler)),
        (
            "/v1/apps/{app_id}/keys",
            post(app_keys::rotate_handler).get(app_keys::list_handler),
        ),
        (
            "/v1/apps/{app_id}/keys/{key_id}",
            axum::routing::delete(app_keys::revoke_handler),
        ),
        (
            "/v1/apps/{app_id}/providers/{provider}",
            put(admin::put_provider_handler).get(admin::get_provider_handler),
        ),
        (
            "/v1/apps/{app_id}/webhook",
            put(webhooks::put_handler)
                .get(webhooks::get_handler)
                .delete(webhooks::delete_handler),
        ),
        ("/v1/catalog", get(catalog_list)),
        ("/v1/catalog/{name}", get(catalog_entry)),
        ("/v1/connect-sessions", post(oauth::connect::create_session)),
        ("/v1/connect-results/confirm", post(oauth::confirm::handler)),
        ("/v1/connections", get(connections::list_handler)),
        (
            "/v1/connections/{provider}/{user}",
            get(connections::get_handler).delete(lifecycle::disconnect_handler),
        ),
        (
            "/v1/connections/{provider}/{user}/credentials",
            put(credentials::put_handler),
        ),
        (
            "/v1/connections/{provider}/{user}/reconnect",
            post(lifecycle::reconnect_handler),
        ),
        (
            "/v1/connect/{session_token}",
            get(oauth::connect::page).post(oauth::connect::start),
        ),
        (paths::OAUTH_CALLBACK, get(oauth::callback::handler)),
    ]
}

/// The Envoy-facing API (`--filter-listen`): the token lookup, which
/// answers raw tokens, so only to the filter's credential.
pub fn filter_routes() -> Vec<(&'static str, MethodRouter<AppState>)> {
    vec![(paths::TOKEN_LOOKUP, post(lookup::handler))]
}

/// The token service's app-facing HTTP API: never a raw token.
pub fn app(state: AppState) -> Router {
    router_of(routes(), state, |router| router)
}

/// The filter listener's HTTP API: [`filter_routes`] and nothing else, all
/// of it (unknown paths too) behind the filter credential.
pub fn filter_app(state: AppState) -> Router {
    router_of(filter_routes(), state.clone(), |router| {
        router.layer(axum::middleware::from_fn_with_state(
            state,
            auth::require_filter,
        ))
    })
}

fn router_of(
    routes: Vec<(&'static str, MethodRouter<AppState>)>,
    state: AppState,
    guard: impl FnOnce(Router<AppState>) -> Router<AppState>,
) -> Router {
    let mut router = Router::new();
    for (path, methods) in routes {
        router = router.route(path, methods);
    }
    let router = router
        .fallback(error::not_found_fallback)
        .method_not_allowed_fallback(error::method_not_allowed_fallback)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::map_response(error::json_errors));
    guard(router)
        .layer(axum::middleware::from_fn(logging::log_request))
        .with_state(state)
}

/// The OpenAPI 3 document of this API (`token-service/openapi.json`).
pub const OPENAPI: &str = include_str!("../openapi.json");

async fn openapi_document() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

/// Liveness: the process answers. Never touches the database, so a probe
/// does not restart the service in the middle of a database outage.
async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

/// How long `/readyz` and `/metrics` wait for the database.
const PROBE_DB_TIMEOUT: Duration = Duration::from_millis(500);

/// Readiness: the database answers; 503 `storage_unavailable` naming the
/// failing check otherwise.
async fn readyz(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let failed = match tokio::time::timeout(PROBE_DB_TIMEOUT, state.db.ping()).await {
        Ok(Ok(())) => None,
        Ok(Err(err)) if db::is_unavailable(&err) => Some("unreachable".to_owned()),
        Ok(Err(err)) => Some(format!("query failed ({err})")),
        Err(_) => Some(format!(
            "no answer within {} ms",
            PROBE_DB_TIMEOUT.as_millis()
        )),
    };
    match failed {
        None => Ok(Json(
            serde_json::json!({ "status": "ready", "checks": { "database": "ok" } }),
        )),
        Some(why) => Err(ApiError::new(
            authstamp_protocol::ErrorCode::StorageUnavailable,
            format!("not ready: database {why}"),
        )),
    }
}

async fn metrics_text(State(state): State<AppState>) -> impl IntoResponse {
    // Side by side, so a database that does not answer costs one probe
    // timeout, not two.
    let (counts, active_key) = tokio::join!(
        state.status_counts(),
        tokio::time::timeout(PROBE_DB_TIMEOUT, keys::active_key_activation(&state.db)),
    );
    let active_key = active_key.ok().and_then(Result::ok).flatten();
    let text = state.metrics.render(counts, active_key);
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text)
}

/// `GET /v1/catalog`: every catalog entry (public data, no authentication).
async fn catalog_list() -> Result<impl IntoResponse, ApiError> {
    Ok(Json(
        serde_json::json!({ "providers": catalog::get()?.entries() }),
    ))
}

/// `GET /v1/catalog/{name}`: one catalog entry.
async fn catalog_entry(
    crate::error::ApiPath(name): crate::error::ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    catalog::get()?
        .get(&name)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no provider {name:?} in the catalog")))
}
