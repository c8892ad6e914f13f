//! Caller authentication: the admin bearer token, the filter credential
//! (bearer token or verified client certificate) and the app id + app key
//! headers. Tokens and keys compare SHA-256 digests in constant time.

use crate::crypto::secrets::{digest_eq, sha256};
use crate::http::error::ApiError;
use crate::service::state::AppState;
use crate::store::apps::{self, AppRecord};
use authstamp_protocol::{headers, ErrorCode};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};

/// An admin API caller (`Authorization: Bearer <admin token>`).
#[derive(Debug)]
pub struct AdminAuth;

impl FromRequestParts<AppState> for AdminAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let unauthorized =
            || ApiError::new(ErrorCode::Unauthorized, "a valid admin token is required");
        // No admin token configured: the admin API is closed.
        let expected = state.admin_token_digest().ok_or_else(unauthorized)?;
        match bearer(parts) {
            Some(given) if digest_eq(&sha256(given.as_bytes()), expected) => Ok(AdminAuth),
            _ => Err(unauthorized()),
        }
    }
}

/// `Authorization: Bearer <token>`, the token trimmed and non-empty.
fn bearer(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|t| !t.is_empty())
}

/// Set on every request of a connection whose client certificate the filter
/// listener's TLS verified against `--filter-client-ca`.
#[derive(Clone, Copy, Debug)]
pub struct VerifiedClientCert;

/// The Envoy filter: the filter token as a bearer token, or a verified
/// client certificate. Apps never hold either.
#[derive(Debug)]
pub struct FilterAuth;

impl FromRequestParts<AppState> for FilterAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if parts.extensions.get::<VerifiedClientCert>().is_some() {
            return Ok(FilterAuth);
        }
        let unauthorized = || {
            ApiError::new(
                ErrorCode::Unauthorized,
                "the token lookup answers only the authstamp filter: a valid filter credential is required",
            )
        };
        let expected = state.filter_token_digest().ok_or_else(unauthorized)?;
        match bearer(parts) {
            Some(given) if digest_eq(&sha256(given.as_bytes()), expected) => Ok(FilterAuth),
            _ => Err(unauthorized()),
        }
    }
}

/// Middleware of the filter listener: every request, whatever its path,
/// needs the filter credential before anything else is looked at.
pub async fn require_filter(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let (mut parts, body) = request.into_parts();
    match FilterAuth::from_request_parts(&mut parts, &state).await {
        Ok(FilterAuth) => next.run(Request::from_parts(parts, body)).await,
        Err(err) => err.into_response(),
    }
}

/// An app proven by `x-authstamp-app` and `x-authstamp-app-key`.
#[derive(Debug)]
pub struct AppAuth(pub AppRecord);

fn required_header<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a str, ApiError> {
    headers
        .get(name)
        .map(|v| v.to_str().map(str::trim))
        .transpose()
        .map_err(|_| ApiError::bad_request(format!("header {name} is not valid text")))?
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ApiError::bad_request(format!("header {name} is required")))
}

impl FromRequestParts<AppState> for AppAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Self::of(&parts.headers, state).await
    }
}

impl AppAuth {
    /// The app the request's `x-authstamp-app` and `x-authstamp-app-key` prove.
    pub async fn of(request_headers: &HeaderMap, state: &AppState) -> Result<Self, ApiError> {
        let app_id = required_header(request_headers, headers::APP)?;
        let key = required_header(request_headers, headers::APP_KEY)?;
        let app = apps::get(&state.db, app_id)
            .await?
            .ok_or_else(|| ApiError::new(ErrorCode::UnknownApp, "unknown app"))?;
        // Every valid key of the app (several during a rotation), each
        // compared in constant time, all of them every time.
        let digest = sha256(key.as_bytes());
        let mut matches = false;
        for candidate in crate::service::apps::valid_digests(&state.db, &app.app_id).await? {
            matches |= digest_eq(&digest, &candidate);
        }
        if !matches {
            return Err(ApiError::new(
                ErrorCode::BadAppKey,
                "the app key does not match the app",
            ));
        }
        Ok(AppAuth(app))
    }
}
