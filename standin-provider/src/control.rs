//! Test controls and small endpoints: stats, quirks, user revocation, health, metadata.

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::params::Params;
use crate::quirks::QuirksPatch;
use crate::AppState;

/// `GET /_standin/stats`
pub async fn stats(State(state): State<AppState>) -> Response {
    Json(state.store().stats.clone()).into_response()
}

/// `GET /_standin/quirks`
pub async fn get_quirks(State(state): State<AppState>) -> Response {
    Json(state.store().quirks.clone()).into_response()
}

/// `POST /_standin/quirks`: partial update, answers the merged state.
pub async fn set_quirks(State(state): State<AppState>, body: Bytes) -> Response {
    let patch: QuirksPatch = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => return bad_request(&e.to_string()),
    };
    let mut store = state.store();
    match store.quirks.apply(patch) {
        Ok(()) => {
            tracing::info!(quirks = ?store.quirks, "quirks updated");
            Json(store.quirks.clone()).into_response()
        }
        Err(e) => bad_request(&e),
    }
}

/// `POST /_standin/revoke?login=X`: the user revokes the app; all their tokens
/// die. With `&only=access` only their access tokens do (the provider
/// revoked a token, not the grant): a refresh still works.
pub async fn revoke(State(state): State<AppState>, RawQuery(query): RawQuery) -> Response {
    let params = Params::from_query(query.as_deref());
    let login = match params.single("login") {
        Ok(Some(login)) => login,
        _ => return bad_request("exactly one non-empty login parameter is required"),
    };
    // `only=access`: the access tokens die, the grant (refresh tokens) lives.
    let revoked = match params.single("only") {
        Ok(None) => state.store().revoke_login(login),
        Ok(Some("access")) => state.store().revoke_login_access(login),
        _ => return bad_request("only must be `access` if given"),
    };
    Json(json!({
        "login": login,
        "families_revoked": revoked.families_revoked,
        "tokens_revoked": revoked.tokens_revoked,
    }))
    .into_response()
}

/// `POST /_standin/credentials`: `{"api_keys"?: {"<key>": "<login>"},
/// "basic"?: {"<username>": "<password>"}}` adds credentials the API echo
/// accepts (API keys in `x-api-key` or `?api_key=`, Basic in `authorization`).
pub async fn add_credentials(State(state): State<AppState>, body: Bytes) -> Response {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Credentials {
        #[serde(default)]
        api_keys: std::collections::HashMap<String, String>,
        #[serde(default)]
        basic: std::collections::HashMap<String, String>,
    }
    let added: Credentials = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return bad_request(&e.to_string()),
    };
    let mut store = state.store();
    let counts = (added.api_keys.len(), added.basic.len());
    store.api_keys.extend(added.api_keys);
    store.basic.extend(added.basic);
    Json(json!({"api_keys_added": counts.0, "basic_added": counts.1})).into_response()
}

/// `GET /healthz`
pub async fn healthz() -> &'static str {
    "ok"
}

/// `GET /.well-known/oauth-authorization-server` (RFC 8414).
pub async fn metadata(State(state): State<AppState>) -> Response {
    let config = state.config();
    let base = config.issuer_base();
    Json(json!({
        "issuer": config.issuer,
        "authorization_endpoint": format!("{base}/oauth/authorize"),
        "token_endpoint": format!("{base}/oauth/token"),
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "revocation_endpoint": format!("{base}/oauth/revoke"),
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "authorization_response_iss_parameter_supported": config.send_iss,
    }))
    .into_response()
}

fn bad_request(message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": "invalid_request", "error_description": message})),
    )
        .into_response()
}
