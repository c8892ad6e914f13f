//! Caller authentication: the admin bearer token and the app id + app key
//! headers. Both compare SHA-256 digests in constant time.

use crate::error::ApiError;
use crate::secrets::{digest_eq, sha256};
use crate::store::apps::{self, AppRecord};
use crate::AppState;
use authstamp_protocol::{headers, ErrorCode};
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

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
        let given = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|t| !t.is_empty())
            .ok_or_else(unauthorized)?;
        if digest_eq(&sha256(given.as_bytes()), expected) {
            Ok(AdminAuth)
        } else {
            Err(unauthorized())
        }
    }
}

/// An app proven by `x-authstamp-app` and `x-authstamp-app-key`.
#[derive(Debug)]
pub struct AppAuth(pub AppRecord);

fn required_header<'a>(parts: &'a Parts, name: &str) -> Result<&'a str, ApiError> {
    parts
        .headers
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
        let app_id = required_header(parts, headers::APP)?;
        let key = required_header(parts, headers::APP_KEY)?;
        let app = apps::get(&state.db, app_id)
            .await?
            .ok_or_else(|| ApiError::new(ErrorCode::UnknownApp, "unknown app"))?;
        // Every valid key of the app (several during a rotation), each
        // compared in constant time, all of them every time.
        let digest = sha256(key.as_bytes());
        let mut matches = false;
        for candidate in crate::app_keys::valid_digests(&state.db, &app.app_id).await? {
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
