//! `GET /v1/oauth/callback`: the provider sends the browser back with a
//! code (or an error). The state is taken once, checked against the
//! browser's nonce cookie, and the code is exchanged for tokens.

use super::connect::NONCE_COOKIE;
use crate::crypto::secrets::{digest_eq, sha256, AuthorizationCode, OAuthState, PkceVerifier};
use crate::crypto::vault::Aad;
use crate::db;
use crate::http::error::ApiError;
use crate::http::html;
use crate::metrics::Grant;
use crate::oauth::client::{sanitize_code, ClientCredentials, GrantRequest, TokenError, TokenSet};
use crate::service::connect::app_provider;
use crate::service::journalled_connect::announce_connected;
use crate::service::state::AppState;
use crate::store::connections::{self, ConnKey, NewConnection};
use crate::store::sessions::{self, OAuthStateRecord};
use authstamp_protocol::{paths, ErrorCode};
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use url::{form_urlencoded, Url};

/// The callback's query; `code` and `state` are secrets.
#[derive(Default)]
pub struct CallbackQuery {
    pub code: Option<AuthorizationCode>,
    pub state: Option<OAuthState>,
    pub error: Option<String>,
    /// RFC 9207 `iss`.
    pub iss: Option<String>,
    /// `iss` appeared more than once (refused when an issuer is configured).
    pub iss_repeated: bool,
    /// QuickBooks' `realmId`: the company the user picked.
    pub realm_id: Option<String>,
}

/// Parses the callback's query string (public for the fuzz target).
pub fn parse_query(raw: Option<&str>) -> CallbackQuery {
    let mut q = CallbackQuery::default();
    for (k, v) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            // The first of a repeated parameter wins; repeats are ignored.
            "code" if q.code.is_none() => q.code = Some(AuthorizationCode::new(v.into_owned())),
            "state" if q.state.is_none() => q.state = Some(OAuthState::new(v.into_owned())),
            "error" if q.error.is_none() => q.error = Some(v.into_owned()),
            "iss" if q.iss.is_none() => q.iss = Some(v.into_owned()),
            "iss" => q.iss_repeated = true,
            "realmId" if q.realm_id.is_none() => q.realm_id = Some(v.into_owned()),
            _ => {}
        }
    }
    q
}

/// RFC 9207 §2.4: with an issuer configured, the response must carry exactly
/// that `iss` (once), compared as a plain string; error responses included.
pub fn check_issuer(expected: Option<&str>, query: &CallbackQuery) -> Result<(), ApiError> {
    let Some(expected) = expected else {
        return Ok(());
    };
    match query.iss.as_deref() {
        Some(iss) if iss == expected && !query.iss_repeated => Ok(()),
        Some(_) => Err(ApiError::new(
            ErrorCode::OauthFailed,
            "the authorization response came from another issuer (iss does not match the provider's issuer)",
        )),
        None => Err(ApiError::new(
            ErrorCode::OauthFailed,
            "the authorization response has no iss parameter, but the provider's issuer is configured (RFC 9207)",
        )),
    }
}

/// Values of the nonce cookie in every `Cookie` header.
fn nonce_cookies(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    super::cookie_values(headers, NONCE_COOKIE)
}

#[utoipa::path(
    get,
    path = "/v1/oauth/callback",
    operation_id = "oauthCallback",
    summary = "Browser: the provider's redirect back (code and state); with a return_to, 302 there with authstamp_status=confirmation_required and a one-time authstamp_result for the app's backend to confirm; without one, the connection is stored and a result page shown",
    tag = "connect",
    security(()),
    params(
        ("code" = Option<String>, Query, description = "Authorization code."),
        ("state" = Option<String>, Query, description = "OAuth state."),
        ("error" = Option<String>, Query, description = "Provider error."),
        ("iss" = Option<String>, Query, description = "RFC 9207 issuer."),
    ),
    responses(
        (status = 200, description = "result page", content_type = "text/html", body = String),
        (status = 302, description = "to return_to with authstamp_status=connected"),
    ),
)]
pub async fn handler(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let mut query = parse_query(raw.as_deref());
    let oauth_state = query
        .state
        .take()
        .filter(|s| !s.expose().is_empty())
        .ok_or_else(ApiError::invalid_state)?;
    let now = db::now();
    let state_hash = sha256(oauth_state.expose().as_bytes());
    drop(oauth_state);
    let record = sessions::take_state(&state.db, &state_hash)
        .await?
        .filter(|r| r.expires_at > now)
        .ok_or_else(ApiError::invalid_state)?;
    // Only the browser that opened the connect link may finish it.
    let mut browser_matches = false;
    for value in nonce_cookies(&headers) {
        browser_matches |= digest_eq(&sha256(value.as_bytes()), &record.nonce_hash);
    }
    if !browser_matches {
        return Err(ApiError::invalid_state());
    }

    // Before anything the response says is believed: who sent it.
    let provider = app_provider(&state, &record.app_id, &record.provider).await?;
    if let Err(err) = check_issuer(provider.issuer.as_deref(), &query) {
        tracing::warn!(provider = %record.provider, "authorization response with a wrong or missing iss refused");
        return Err(err);
    }
    if let Some(error) = query.error {
        let code = sanitize_code(&error);
        tracing::info!(provider = %record.provider, error = %code, "provider refused the authorization");
        return Err(ApiError::new(
            ErrorCode::OauthFailed,
            format!("the provider refused the authorization ({code})"),
        ));
    }
    let code = query
        .code
        .filter(|c| !c.expose().is_empty())
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::OauthFailed,
                "the provider sent no authorization code",
            )
        })?;

    let from_redirect = redirect_values(&provider, query.realm_id);
    // Read while the database is known to answer: lookups of a connection
    // journalled after the exchange are checked against these.
    let app_key_digests = match record.return_to {
        Some(_) => Vec::new(),
        None => crate::service::apps::valid_digests(&state.db, &record.app_id).await?,
    };
    let tokens = exchange(&state, &provider, &record, &code).await?;
    let mut params = record.params.clone();
    params.extend(tokens.derived.clone());
    params.extend(from_redirect);
    if let Some((name, value)) = post_exchange_metadata(&state, &provider, &params, &tokens).await?
    {
        params.insert(name, value);
    }
    let key = ConnKey {
        app_id: record.app_id.clone(),
        provider: record.provider.clone(),
        user_id: record.user_id.clone(),
    };
    let mut response = match &record.return_to {
        // Back to the app, which must confirm that the browser that came
        // back is the user the link was made for before the connection
        // exists (POST /v1/connect-results/confirm).
        Some(return_to) => {
            let result =
                super::confirm::hold(&state, &key, &record.requested_scope, &tokens, &params, now)
                    .await?;
            redirect_to_return(return_to, &result, StatusCode::FOUND)?
        }
        None => {
            let sealed = super::confirm::seal_tokens(&state, &tokens, |field| {
                Aad::connection(&key.app_id, &key.provider, &key.user_id, field)
            })?;
            // The tokens exist at the provider now: kept even if the
            // database cannot take them (journalled, written later).
            crate::service::journalled_connect::store_or_journal(
                &state,
                crate::service::journalled_connect::NewConnect {
                    key: &key,
                    tokens: sealed,
                    requested_scope: &record.requested_scope,
                    params: &params,
                    now,
                    provider: &provider,
                    app_key_digests,
                },
            )
            .await?;
            html::connected_page(&key.provider, &key.user_id)
        }
    };
    // The nonce has done its job.
    let clear = format!(
        "{NONCE_COOKIE}=; Path={}; HttpOnly; SameSite=Lax; Max-Age=0",
        state.public_url.browser_path(paths::OAUTH_CALLBACK)
    );
    if let Ok(value) = HeaderValue::from_str(&clear) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // The callback URL carried the code and the state.
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    Ok(response)
}

/// The redirect back to the app's `return_to` with the one-time result the
/// app confirms.
pub(crate) fn redirect_to_return(
    return_to: &str,
    result: &crate::crypto::secrets::ConnectResultToken,
    status: StatusCode,
) -> Result<Response, ApiError> {
    let mut url =
        Url::parse(return_to).map_err(|e| ApiError::internal("stored return_to is invalid", e))?;
    url.query_pairs_mut()
        .append_pair("authstamp_status", "confirmation_required")
        .append_pair("authstamp_result", result.expose());
    let mut response = status.into_response();
    let location = HeaderValue::from_str(url.as_str())
        .map_err(|e| ApiError::internal("invalid return_to header", e))?;
    response.headers_mut().insert(header::LOCATION, location);
    Ok(response)
}

/// Connection values a provider names in its redirect: QuickBooks' company
/// id (`realmId`, digits only), which its API paths carry.
fn redirect_values(
    provider: &crate::store::providers::ProviderRecord,
    realm_id: Option<String>,
) -> crate::template::Values {
    let mut values = crate::template::Values::new();
    let quickbooks = provider.settings.has_quirk("quickbooks_realm_id");
    let realm_id = realm_id
        .filter(|id| (1..=32).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_digit()));
    if let (true, Some(realm_id)) = (quickbooks, realm_id) {
        values.insert("realm_id".to_owned(), realm_id);
    }
    values
}

/// Exchanges the code at the provider.
async fn exchange(
    state: &AppState,
    provider: &crate::store::providers::ProviderRecord,
    record: &OAuthStateRecord,
    code: &AuthorizationCode,
) -> Result<TokenSet, ApiError> {
    let verifier = PkceVerifier::new(
        state
            .vault
            .open_string(&Aad::oauth_state(&record.state_hash), &record.pkce_verifier)?
            .as_str(),
    );
    let secret = state.client_secret(provider)?;
    let token_url = provider
        .token_url_for(&record.params)
        .map_err(|e| ApiError::internal("stored token_url is invalid", e))?;
    let extra = provider
        .token_params_for(
            &provider.settings.token_request_params.exchange,
            &record.params,
        )
        .map_err(|e| ApiError::internal("stored token_request_params are invalid", e))?;
    state.metrics.provider_call(Grant::AuthorizationCode);
    state
        .token_client
        .request_with(
            token_url.as_str(),
            &ClientCredentials {
                client_id: &provider.client_id,
                client_secret: &secret,
                auth: provider.client_auth,
            },
            &GrantRequest::AuthorizationCode {
                code,
                redirect_uri: &record.redirect_uri,
                code_verifier: &verifier,
            },
            &extra,
        )
        .await
        .map_err(|err| {
            tracing::warn!(provider = %provider.provider, reason = %err.reason(), permanent = err.is_permanent(), "code exchange failed");
            let message = match &err {
                TokenError::Permanent(code) => {
                    format!("the provider refused the authorization code ({code})")
                }
                TokenError::Transient(reason) => {
                    format!("the provider's token endpoint failed ({reason})")
                }
            };
            ApiError::new(ErrorCode::OauthFailed, message)
        })
}

/// The provider's post-exchange metadata call, when it has one: the
/// placeholder it fills and its value. A failure fails the connect (the API
/// host would be unknown).
async fn post_exchange_metadata(
    state: &AppState,
    provider: &crate::store::providers::ProviderRecord,
    params: &crate::template::Values,
    tokens: &TokenSet,
) -> Result<Option<(String, String)>, ApiError> {
    let Some(metadata) = &provider.settings.post_exchange_metadata else {
        return Ok(None);
    };
    let url = crate::template::render_url(&metadata.url, &provider.values(params))
        .map_err(|e| ApiError::internal("stored post_exchange_metadata url is invalid", e))?;
    let value = state
        .token_client
        .fetch_metadata(
            url.as_str(),
            &metadata.header_format,
            &metadata.field,
            &tokens.access_token,
        )
        .await
        .map_err(|err| {
            tracing::warn!(provider = %provider.provider, reason = %err.reason(), "post-exchange metadata call failed");
            ApiError::new(
                ErrorCode::OauthFailed,
                format!("the provider's metadata call failed ({})", err.reason()),
            )
        })?;
    Ok(Some((metadata.fills.clone(), value)))
}

/// Stores (or replaces) the connection `key` with tokens sealed to it, the
/// access token's expiry and the scopes given, and tells the app's webhook.
pub(crate) async fn store_connection_until(
    state: &AppState,
    key: &ConnKey,
    tokens: super::confirm::SealedTokens,
    expires_at: Option<i64>,
    scopes: &str,
    params: &crate::template::Values,
    now: i64,
) -> Result<(), ApiError> {
    connections::upsert_connected(
        &state.db,
        NewConnection {
            key,
            access_token: tokens.access_token,
            refresh_token: tokens.refresh_token,
            expires_at,
            scopes,
            now,
            params: Some(params),
        },
    )
    .await?;
    announce_connected(state, key);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing_keeps_the_first_value() {
        let q = parse_query(Some("code=a%2Bb&state=s1&state=s2&iss=x"));
        assert_eq!(q.code.unwrap().expose(), "a+b");
        assert_eq!(q.state.unwrap().expose(), "s1");
        assert!(q.error.is_none());
        let q = parse_query(None);
        assert!(q.state.is_none());
    }

    #[test]
    fn finds_the_nonce_cookie_among_others() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; authstamp_connect=n1"),
        );
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("authstamp_connect=n2"),
        );
        let found: Vec<&str> = nonce_cookies(&headers).collect();
        assert_eq!(found, ["n1", "n2"]);
    }
}
