//! authstamp token service: apps, provider configurations, the OAuth connect
//! flow and callback, the encrypted vault, refresh, and the token lookup the
//! Envoy filter calls.
//!
//! [`app`] builds the whole HTTP API over an [`AppState`]; `main.rs` only
//! parses the command line and calls [`cli::run`].

pub mod admin;
pub mod auth;
pub mod cli;
pub mod config;
pub mod db;
pub mod error;
pub mod html;
pub mod logging;
pub mod lookup;
pub mod metrics;
pub mod oauth;
pub mod secrets;
pub mod serve;
pub mod store;
pub mod validate;
pub mod vault;

use crate::config::PublicUrl;
use crate::db::Db;
use crate::error::ApiError;
use crate::lookup::RefreshLocks;
use crate::metrics::Metrics;
use crate::oauth::client::TokenClient;
use crate::secrets::{sha256, AdminToken, Digest};
use crate::vault::Vault;
use authstamp_protocol::paths;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

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
    pub refresh_skew: Duration,
    pub connect_session_ttl: Duration,
    admin_token_digest: Option<Digest>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("db", &self.db)
            .field("public_url", &self.public_url)
            .field("refresh_skew", &self.refresh_skew)
            .field("connect_session_ttl", &self.connect_session_ttl)
            .field("admin_api_enabled", &self.admin_token_digest.is_some())
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
    pub refresh_skew: Duration,
    pub provider_timeout: Duration,
    pub connect_session_ttl: Duration,
}

impl AppState {
    pub fn new(db: Db, vault: Vault, options: StateOptions) -> anyhow::Result<Self> {
        Ok(Self(Arc::new(Inner {
            db,
            vault,
            public_url: options.public_url,
            token_client: TokenClient::new(options.provider_timeout)?,
            metrics: Metrics::default(),
            refresh_locks: RefreshLocks::default(),
            refresh_skew: options.refresh_skew,
            connect_session_ttl: options.connect_session_ttl,
            admin_token_digest: options.admin_token.map(|t| sha256(t.expose().as_bytes())),
        })))
    }

    pub fn admin_token_digest(&self) -> Option<&Digest> {
        self.0.admin_token_digest.as_ref()
    }
}

/// The token service's HTTP API.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .route("/v1/apps", post(admin::create_app_handler))
        .route(
            "/v1/apps/{app_id}/providers/{provider}",
            put(admin::put_provider_handler).get(admin::get_provider_handler),
        )
        .route("/v1/connect-sessions", post(oauth::connect::create_session))
        .route(paths::TOKEN_LOOKUP, post(lookup::handler))
        .route("/v1/connect/{session_token}", get(oauth::connect::start))
        .route(paths::OAUTH_CALLBACK, get(oauth::callback::handler))
        .fallback(error::not_found_fallback)
        .method_not_allowed_fallback(error::method_not_allowed_fallback)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn(logging::log_request))
        .with_state(state)
}

async fn healthz(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    state.db.ping().await?;
    Ok(Json(serde_json::json!({ "status": "ok" })))
}

async fn metrics_text(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
