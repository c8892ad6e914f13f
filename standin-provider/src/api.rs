//! `ANY /api/{*path}`: the provider's API, reduced to an echo that needs a bearer token.

use std::collections::BTreeMap;
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::{OriginalUri, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use base64::Engine as _;

use crate::crypto;
use crate::store::{AccessInfo, GrantKind};
use crate::AppState;

/// Request header choosing the echo's status.
const STATUS_HEADER: &str = "x-standin-status";

pub async fn echo(
    State(state): State<AppState>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let now = SystemTime::now();
    let info = {
        let mut store = state.store();
        store.stats.api_calls += 1;
        let info = match (bearer_token(&headers), credential(&headers, uri.query())) {
            (Some(t), _) => store.access(t, now),
            (None, Some(Credential::ApiKey(key))) => {
                store.api_keys.get(&key).map(|login| AccessInfo {
                    login: login.clone(),
                    grant: GrantKind::ApiKey,
                    serial: 0,
                })
            }
            (None, Some(Credential::Basic(user, password))) => store
                .basic
                .get(&user)
                .filter(|expected| crypto::ct_eq(expected, &password))
                .map(|_| AccessInfo {
                    login: user.clone(),
                    grant: GrantKind::Basic,
                    serial: 0,
                }),
            (None, None) => None,
        };
        if info.is_none() {
            store.stats.api_calls_rejected += 1;
        }
        info
    };
    let Some(info) = info else {
        return (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            )],
            Json(json!({"error": "invalid_token"})),
        )
            .into_response();
    };
    let status =
        match headers.get(STATUS_HEADER) {
            None => StatusCode::OK,
            Some(v) => match requested_status(v) {
                Some(s) => s,
                None => return (
                    StatusCode::BAD_REQUEST,
                    Json(json!({
                        "error": "invalid_request",
                        "error_description": "x-standin-status must be an integer within 200..=599",
                    })),
                )
                    .into_response(),
            },
        };
    let mut echoed: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in &headers {
        echoed
            .entry(name.as_str().to_owned())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let body = json!({
        "user": info.login,
        "method": method.as_str(),
        "path": uri.path(),
        "query": uri.query(),
        "body_sha256": crypto::sha256_hex(&body),
        "body_len": body.len(),
        "headers": echoed,
        "token_grant": info.grant,
        "token_serial": info.serial,
    });
    (status, [("x-standin-echo", "1")], Json(body)).into_response()
}

/// An API key (header `x-api-key` or query parameter `api_key`, exactly one
/// value) or HTTP Basic credentials.
enum Credential {
    ApiKey(String),
    Basic(String, String),
}

fn credential(headers: &HeaderMap, query: Option<&str>) -> Option<Credential> {
    let mut keys: Vec<String> = headers
        .get_all("x-api-key")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect();
    keys.extend(
        url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .filter(|(k, _)| k == "api_key")
            .map(|(_, v)| v.into_owned()),
    );
    if keys.len() == 1 {
        return keys.pop().map(Credential::ApiKey);
    }
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next()?;
    if values.next().is_some() || !keys.is_empty() {
        return None;
    }
    let text = value.to_str().ok()?;
    let (scheme, encoded) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some(Credential::Basic(user.to_owned(), password.to_owned()))
}

/// The token of the one `Authorization: Bearer …` header.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let (scheme, token) = value.to_str().ok()?.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn requested_status(value: &HeaderValue) -> Option<StatusCode> {
    let code: u16 = value.to_str().ok()?.trim().parse().ok()?;
    if (200..=599).contains(&code) {
        StatusCode::from_u16(code).ok()
    } else {
        None
    }
}
