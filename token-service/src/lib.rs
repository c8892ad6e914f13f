//! authstamp token service: apps, provider configurations, the OAuth connect
//! flow and callback, the encrypted vault, refresh, and the token lookup the
//! Envoy filter calls.
//!
//! [`app`] builds the whole HTTP API over an [`AppState`]; `main.rs` only
//! parses the command line and calls [`cli::run`].
//!
//! # Layers
//!
//! Each top-level module belongs to a layer and imports only modules of
//! the layers below it, so the modules have no import cycle
//! (`tests/layers.rs` holds the table and fails on an upward import or a
//! cycle). From the top:
//!
//! - `cli`: the command line and `serve` (the process).
//! - `http`: the route tables, one handler file per resource, the connect
//!   pages, authentication of requests, logging, the listeners.
//! - `service`: the operations: [`AppState`], refresh, the journal,
//!   webhook delivery, key rotation, seeding.
//! - `oauth` (the provider's token endpoint client), `metrics`.
//! - `store`: the SQL of each table, one module per table (key rotation in
//!   `service/keys.rs` and the schema and ping in `db.rs` still hold their own).
//! - `catalog` (provider types and the embedded entries), `discovery`,
//!   `validate`, `policy`, then `error` (the domain error; `http::error` answers it), `db`,
//!   `config`, `crypto` (vault, secrets), and `ratelimit`, `template`,
//!   `files` at the bottom.
//!
//! This file only declares the modules and re-exports the paths other
//! crates and the tests use; code inside the crate uses the full paths.

pub mod catalog;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod db;
pub mod discovery;
pub mod error;
pub mod files;
pub mod http;
pub mod metrics;
pub mod oauth;
pub mod policy;
pub mod ratelimit;
pub mod service;
pub mod store;
pub mod template;
pub mod validate;

pub use crypto::{secrets, vault};
pub use http::openapi::{openapi_json, ApiDoc};
pub use http::{app, filter_app, filter_routes, routes, BODY_LIMIT};
pub use service::state::{AppState, BackgroundOptions, StateOptions, MAX_REFRESH_TASKS};
pub use service::{background, refresh, seed, webhooks};
