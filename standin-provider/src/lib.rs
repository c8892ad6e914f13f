//! `authstamp-standin`: a stand-in OAuth 2.0 provider (RFC 6749 authorization code grant
//! with PKCE, RFC 7636) playing the third-party SaaS in tests and local trials, with
//! real-world quirks switchable at runtime.
//!
//! Endpoints: `GET|POST /oauth/authorize`, `POST /oauth/token` (authorization code,
//! refresh, client credentials), `POST /oauth/revoke` (RFC 7009), `ANY /api/{*path}` (an
//! echo needing a bearer token), `/_standin/{stats,quirks,revoke}` for tests, `/healthz`
//! and `/.well-known/{oauth-authorization-server,openid-configuration}`. State lives in memory.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::extract::DefaultBodyLimit;
use axum::routing::{any, get, post};
use axum::{middleware, Router};

mod api;
mod authorize;
mod config;
mod control;
mod crypto;
mod error;
mod html;
mod params;
mod profile;
mod quirks;
mod scope;
mod server;
mod store;
mod token;

pub use config::{Cli, Config};
pub use server::{init_tracing, serve};

/// Largest request body the API echo accepts.
pub const API_BODY_LIMIT: usize = 10 * 1024 * 1024;

/// Shared state of one provider instance; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    shared: Arc<Shared>,
}

struct Shared {
    config: Config,
    store: Mutex<store::Store>,
}

impl AppState {
    pub fn new(config: Config) -> Self {
        let store = store::Store::new(quirks::Quirks::from_config(&config));
        Self {
            shared: Arc::new(Shared {
                config,
                store: Mutex::new(store),
            }),
        }
    }

    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The store; never held across an `.await`.
    pub(crate) fn store(&self) -> MutexGuard<'_, store::Store> {
        // A panic while holding the lock leaves consistent-enough test state behind.
        self.shared
            .store
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The provider's routes.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route(
            "/oauth/authorize",
            get(authorize::show).post(authorize::decide),
        )
        .route("/oauth/token", post(token::token))
        .route("/oauth/revoke", post(token::revoke))
        .route(
            "/api/{*path}",
            any(api::echo).layer(DefaultBodyLimit::max(API_BODY_LIMIT)),
        )
        .route("/_standin/stats", get(control::stats))
        .route(
            "/_standin/quirks",
            get(control::get_quirks).post(control::set_quirks),
        )
        .route("/_standin/revoke", post(control::revoke))
        .route(
            "/_standin/profiles/{name}",
            get(profile::get).put(profile::put),
        )
        .route("/p/{name}", any(profile::dispatch))
        .route(
            "/p/{name}/{*path}",
            any(profile::dispatch).layer(DefaultBodyLimit::max(API_BODY_LIMIT)),
        )
        .route("/_standin/credentials", post(control::add_credentials))
        .route("/healthz", get(control::healthz))
        .route(
            "/.well-known/oauth-authorization-server",
            get(control::metadata),
        )
        .route("/.well-known/openid-configuration", get(control::metadata))
        .layer(middleware::from_fn(server::log_request))
        .with_state(state)
}
