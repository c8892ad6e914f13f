//! `POST /v1/token-lookup`: the filter asks what to stamp for (app,
//! provider, user). Served on the filter listener only, behind
//! [`crate::http::auth::require_filter`]; the app key is checked here, the
//! rate limit applied, storage blips retried, and [`crate::service::lookup`]
//! answers (refreshing first when due: one refresh per connection across
//! replicas).

use crate::http::auth::AppAuth;
use crate::http::error::{ApiError, ApiJson};
use crate::service::journalled_connect;
use crate::service::lookup::{answer, lookup};
use crate::service::state::AppState;
use crate::store::connections::ConnKey;
use authstamp_protocol::{headers, ErrorCode, TokenLookupRequest, TokenLookupResponse};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::time::Instant;

/// Storage failures within this time of the request are broken pooled
/// connections, worth a retry on the next one (at most [`FAST_RETRIES`]).
const FAST_FAILURE: std::time::Duration = std::time::Duration::from_millis(250);
const FAST_RETRIES: usize = 16;

#[utoipa::path(
    post,
    path = "/v1/token-lookup",
    operation_id = "tokenLookup",
    summary = "What to stamp for (app, provider, user), refreshing first when due",
    description = "Answers raw tokens, so only to the authstamp filter: the filter credential (bearer AUTHSTAMP_FILTER_TOKEN, or a client certificate under --filter-client-ca) plus the app's id and key. Without the filter credential every request on the filter listener is 401 `unauthorized`.",
    tag = "filter",
    security(("filterToken" = [], "appId" = [], "appKey" = [])),
    request_body = TokenLookupRequest,
    responses((status = 200, description = "stamp", body = TokenLookupResponse)),
)]
pub async fn handler(
    State(state): State<AppState>,
    request_headers: HeaderMap,
    body: Result<ApiJson<TokenLookupRequest>, ApiError>,
) -> Response {
    let started = Instant::now();
    // Pooled connections the server ended (a restart, a failover) each fail
    // their next query at once: retried on the next connection while the
    // failures stay that fast. An unreachable database fails slowly (the
    // acquire timeout) and is not retried.
    let mut result = authenticated_lookup(&state, &request_headers, &body).await;
    for _ in 0..FAST_RETRIES {
        match &result {
            Err(err)
                if err.code() == ErrorCode::StorageUnavailable
                    && started.elapsed() < FAST_FAILURE =>
            {
                state.metrics.lookup_retried();
                result = authenticated_lookup(&state, &request_headers, &body).await;
            }
            _ => break,
        }
    }
    state.metrics.lookup(
        result.as_ref().map(|_| ()).map_err(ApiError::code),
        started.elapsed(),
    );
    match result {
        Ok(answer) => Json(answer).into_response(),
        Err(err) => err.into_response(),
    }
}

async fn authenticated_lookup(
    state: &AppState,
    request_headers: &HeaderMap,
    body: &Result<ApiJson<TokenLookupRequest>, ApiError>,
) -> Result<TokenLookupResponse, ApiError> {
    let app = match AppAuth::of(request_headers, state).await {
        Ok(AppAuth(app)) => app,
        // The database is away: a connection journalled after its code
        // exchange is still served (the key checked against its callback's).
        Err(err) if err.code() == ErrorCode::StorageUnavailable => {
            return during_outage(state, request_headers, body).unwrap_or(Err(err));
        }
        Err(err) => return Err(err),
    };
    let ApiJson(request) = body.as_ref().map_err(Clone::clone)?;
    state
        .limits
        .lookups
        .check(&app.app_id)
        .map_err(|wait| ApiError::rate_limited("token lookups", wait))?;
    Ok(lookup(state, &app.app_id, request).await?)
}

/// A lookup of a journalled, unwritten connection while the database is
/// away; `None`: not one.
fn during_outage(
    state: &AppState,
    request_headers: &HeaderMap,
    body: &Result<ApiJson<TokenLookupRequest>, ApiError>,
) -> Option<Result<TokenLookupResponse, ApiError>> {
    let ApiJson(request) = body.as_ref().ok()?;
    let header = |name| request_headers.get(name)?.to_str().ok();
    let key = ConnKey {
        app_id: header(headers::APP)?.to_owned(),
        provider: request.provider.clone(),
        user_id: request.user.clone(),
    };
    let (provider, served) = journalled_connect::during_outage(
        state,
        &key,
        header(headers::APP_KEY)?,
        request.force_refresh,
    )?;
    if let Err(wait) = state.limits.lookups.check(&key.app_id) {
        return Some(Err(ApiError::rate_limited("token lookups", wait)));
    }
    Some(
        served
            .and_then(|(served, params)| answer(&provider, &params, &served))
            .map_err(ApiError::from),
    )
}
