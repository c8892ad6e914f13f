//! `POST /v1/token-lookup`: the filter asks what to stamp for (app,
//! provider, user). Served on the filter listener only, behind
//! [`crate::http::auth::require_filter`]; the app key is checked as well. Tokens due for a refresh are refreshed first (see
//! [`crate::service::refresh`]: one refresh per connection across replicas).

use crate::catalog::AuthType;
use crate::db;
use crate::error::{ApiError, ApiJson};
use crate::http::auth::AppAuth;
use crate::http::connect::app_provider;
use crate::http::connect::APP_USER;
use crate::http::credentials;
use crate::service::journalled_connect;
use crate::service::refresh::{self, Need, Served};
use crate::service::state::AppState;
use crate::store::connections::{self, ConnKey, ConnectionStatus};
use crate::store::providers::ProviderRecord;
use crate::validate::{self, TOKEN_PLACEHOLDER};
use authstamp_protocol::{headers, Credential, ErrorCode, TokenLookupRequest, TokenLookupResponse};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::time::Instant;
use url::Url;

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
    lookup(state, &app.app_id, request).await
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
    Some(served.and_then(|(served, params)| answer(&provider, &params, &served)))
}

pub async fn lookup(
    state: &AppState,
    app_id: &str,
    request: &TokenLookupRequest,
) -> Result<TokenLookupResponse, ApiError> {
    validate::user_id(&request.user)?;
    let provider = app_provider(state, app_id, &request.provider).await?;
    if provider.auth_type == AuthType::Oauth2ClientCredentials {
        if request.user != APP_USER {
            return Err(ApiError::bad_request(format!(
                "provider {:?} uses an app-level client-credentials token: send the user {APP_USER:?}",
                provider.provider
            )));
        }
        let (served, params) =
            credentials::client_credentials_token(state, &provider, request.force_refresh).await?;
        return answer(&provider, &params, &served);
    }
    let key = ConnKey {
        app_id: app_id.to_owned(),
        provider: provider.provider.clone(),
        user_id: request.user.clone(),
    };
    let now = db::now();
    if let Some(journalled) =
        journalled_connect::served(state, &provider, &key, request.force_refresh, now)
    {
        // Connected while the database was away, not written yet.
        let (served, params) = journalled?;
        return answer(&provider, &params, &served);
    }
    let connection = connections::get(&state.db, &key).await?.ok_or_else(|| {
        ApiError::new(
            ErrorCode::NotConnected,
            "the user has not connected this provider",
        )
    })?;
    if connection.status == ConnectionStatus::ReauthRequired {
        return Err(refresh::reauth_required());
    }
    let policy = state.policy.with(&provider.policy);
    let params = connection.params.clone();
    let journalled = (!request.force_refresh)
        .then(|| refresh::journalled(state, &connection, &policy, now))
        .flatten();
    let served = if let Some(served) = journalled {
        // Refreshed while the database was away, not written yet.
        served?
    } else if request.force_refresh {
        refresh::refresh(state, &provider, connection, Need::Force).await?
    } else if refresh::is_due(&connection, &policy, now) || !connection.is_valid_at(now) {
        refresh::refresh(state, &provider, connection, Need::Due).await?
    } else {
        Served {
            access_token: refresh::open_access_token(state, &connection)?,
            expires_at: refresh::reported_expiry(&connection, &policy),
        }
    };
    answer(&provider, &params, &served)
}

fn answer(
    provider: &ProviderRecord,
    params: &crate::template::Values,
    served: &Served,
) -> Result<TokenLookupResponse, ApiError> {
    let api: Url = provider.api_base_url_for(params).map_err(|e| {
        ApiError::new(
            ErrorCode::Internal,
            format!("the connection's API URL cannot be built ({e})"),
        )
    })?;
    let api_hosts = provider
        .api_hosts(params)
        .map_err(|e| ApiError::internal("stored api_hosts are invalid", e))?;
    if !api_hosts.iter().any(|h| Some(h.as_str()) == api.host_str()) {
        return Err(ApiError::new(
            ErrorCode::ForbiddenDestination,
            "the connection's API host is not one of the provider's api_hosts",
        ));
    }
    let upstream = validate::upstream_of(&api)?;
    let response = TokenLookupResponse {
        credential: Credential {
            placement: provider.settings.stamp_in,
            name: provider.header_name.clone(),
            value: provider.header_format.replacen(
                TOKEN_PLACEHOLDER,
                served.access_token.expose(),
                1,
            ),
        },
        upstream,
        expires_at: served.expires_at.and_then(|at| u64::try_from(at).ok()),
    };
    // The filter applies the same rules and would refuse the answer: say
    // here what is wrong rather than leave it a bad answer there.
    authstamp_protocol::credential::check(&response.credential)
        .and_then(|()| authstamp_protocol::upstream::check(&response.upstream))
        .map_err(|reason| {
            ApiError::new(
                ErrorCode::Internal,
                format!("the connection's credential or upstream is invalid: {reason}"),
            )
        })?;
    Ok(response)
}
