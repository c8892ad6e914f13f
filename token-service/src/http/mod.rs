//! The HTTP layer: the route tables of both listeners, one handler file per
//! resource, the connect pages, request authentication and logging.
//! Handlers parse the request, call the operation and shape the answer.

pub mod app_keys;
pub mod auth;
pub mod callback;
pub mod confirm;
pub mod connect;
pub mod connections;
pub mod credentials;
pub mod error;
pub mod filter_tls;
pub mod html;
pub mod key_connect;
pub mod lifecycle;
pub mod logging;
pub mod lookup;
pub mod openapi;
pub mod providers;
pub mod server;
pub mod webhooks;

use crate::catalog;
use crate::db;
use crate::metrics;
use crate::service::state::{AppState, PROBE_DB_TIMEOUT};
use authstamp_protocol::paths;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap};
use axum::response::IntoResponse;
use axum::routing::{get, post, put, MethodRouter};
use axum::{Json, Router};
use error::ApiError;

/// Request bodies larger than this are refused.
pub const BODY_LIMIT: usize = 64 * 1024;

/// Every route of the app-facing HTTP API (`--listen`). [`app`] is built
/// from this list, [`filter_app`] from [`filter_routes`], and
/// `tests/openapi.rs` checks both against the OpenAPI document served at
/// `/v1/openapi.json` (every route documented, every documented operation
/// routed). That document is generated from the handlers'
/// `#[utoipa::path]` annotations ([`openapi::ApiDoc`]): add a route here,
/// annotate its handler and list the handler in `ApiDoc`'s `paths`, then
/// regenerate `token-service/openapi.json` (`make openapi`).
pub fn routes() -> Vec<(&'static str, MethodRouter<AppState>)> {
    vec![
        ("/healthz", get(healthz)),
        ("/readyz", get(readyz)),
        ("/metrics", get(metrics_text)),
        ("/v1/openapi.json", get(openapi_document)),
        ("/v1/apps", post(providers::create_app_handler)),
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
            put(providers::put_provider_handler).get(providers::get_provider_handler),
        ),
        (
            "/v1/apps/{app_id}/webhook",
            put(webhooks::put_handler)
                .get(webhooks::get_handler)
                .delete(webhooks::delete_handler),
        ),
        ("/v1/catalog", get(catalog_list)),
        ("/v1/catalog/{name}", get(catalog_entry)),
        ("/v1/connect-sessions", post(connect::create_session)),
        ("/v1/connect-results/confirm", post(confirm::handler)),
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
            get(connect::page).post(connect::start),
        ),
        (paths::OAUTH_CALLBACK, get(callback::handler)),
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

#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    operation_id = "openapiDocument",
    summary = "This document",
    tag = "service",
    security(()),
    responses((status = 200, description = "OpenAPI 3 document", body = Object)),
)]
/// The OpenAPI 3 document of this API, generated ([`openapi::ApiDoc`]).
async fn openapi_document() -> Result<impl IntoResponse, ApiError> {
    let json = openapi::openapi_json()
        .map_err(|err| ApiError::internal("could not serialise the OpenAPI document", err))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], json))
}

#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    summary = "Liveness: 200 while the process answers; never touches the database",
    tag = "service",
    security(()),
    responses((status = 200, description = "ok", body = inline(openapi::Health))),
)]
/// Liveness: the process answers. Never touches the database, so a probe
/// does not restart the service in the middle of a database outage.
async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    summary = "Readiness: 200 when the database answers within 500 ms, else 503 storage_unavailable naming the failing check",
    tag = "service",
    security(()),
    responses((status = 200, description = "ok", body = inline(openapi::Readiness))),
)]
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

#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    summary = "Prometheus metrics",
    tag = "service",
    security(()),
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain", body = String)),
)]
async fn metrics_text(State(state): State<AppState>) -> impl IntoResponse {
    // Side by side, so a database that does not answer costs one probe
    // timeout, not two.
    let (counts, active_key) = tokio::join!(
        state.status_counts(),
        tokio::time::timeout(
            PROBE_DB_TIMEOUT,
            crate::store::vault_keys::active(&state.db)
        ),
    );
    let active_key = active_key.ok().and_then(Result::ok).flatten();
    let text = state.metrics.render(counts, active_key);
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text)
}

#[utoipa::path(
    get,
    path = "/v1/catalog",
    operation_id = "listCatalog",
    summary = "The built-in provider catalog",
    tag = "catalog",
    security(()),
    responses((status = 200, description = "entries", body = inline(openapi::CatalogList))),
)]
/// `GET /v1/catalog`: every catalog entry (public data, no authentication).
async fn catalog_list() -> Result<impl IntoResponse, ApiError> {
    Ok(Json(
        serde_json::json!({ "providers": catalog::get()?.entries() }),
    ))
}

#[utoipa::path(
    get,
    path = "/v1/catalog/{name}",
    operation_id = "getCatalogEntry",
    summary = "One catalog entry",
    tag = "catalog",
    security(()),
    params(("name" = String, Path, description = "Catalog name, e.g. `zendesk`.")),
    responses((status = 200, description = "entry", body = crate::catalog::CatalogEntry)),
)]
/// `GET /v1/catalog/{name}`: one catalog entry.
async fn catalog_entry(
    error::ApiPath(name): error::ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    catalog::get()?
        .get(&name)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no provider {name:?} in the catalog")))
}

/// Values of the cookie `name` in every `Cookie` header.
pub(crate) fn cookie_values<'a>(
    headers: &'a HeaderMap,
    name: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(move |pair| {
            let (key, value) = pair.trim().split_once('=')?;
            (key.trim() == name).then(|| value.trim().trim_matches('"'))
        })
}
