//! Provider profiles: the stand-in takes the shape of one catalog entry
//! under `/p/{name}/…` — its endpoint paths, client authentication, scope
//! separator, PKCE policy, token-request parameters (per grant, including a
//! client-credentials `grant_type` of its own), refresh endpoint, token
//! lifetime and refresh-token rotation, revocation style, metadata call, and
//! where the API wants its credential (a header with the text around the
//! token, or a query parameter; an access token, an API key or Basic
//! credentials registered with `POST /_standin/credentials`). Each request
//! is checked against the profile, then served by the ordinary endpoints;
//! every mismatch is answered 400 (the API: 401) and kept for
//! `GET /_standin/profiles/{name}`, with the calls per endpoint and the
//! digests of the refresh tokens presented, in order.

use std::collections::BTreeMap;
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use url::form_urlencoded;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use crate::crypto;
use crate::params::Params;
use crate::store::Issuing;
use crate::AppState;

/// The verifier the stand-in uses for itself when a profile's client sends
/// no PKCE (the core endpoints always want one).
const OWN_VERIFIER: &str = "standin-profile-verifier-without-pkce-from-the-client-0001";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    Basic,
    Body,
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pkce {
    Required,
    Supported,
    Unsupported,
    OptIn,
    Unknown,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revocation {
    pub path: String,
    /// `POST` or `DELETE`.
    pub method: String,
    /// `rfc7009` or `bearer`.
    pub style: String,
    pub client_auth: ClientAuth,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub path: String,
    /// The authorization scheme before the token (`OAuth`, `Bearer`).
    pub scheme: String,
    pub field: String,
    pub value: String,
}

/// What the API takes as its credential.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiCredential {
    /// A live access token of the stand-in.
    #[default]
    AccessToken,
    /// A key registered with `POST /_standin/credentials`.
    ApiKey,
    /// `base64(username:password)` of a registered pair.
    Basic,
}

/// Where the API wants the credential.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    #[default]
    Header,
    Query,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Absent: no authorization code flow (client credentials, API keys).
    #[serde(default)]
    pub authorize_path: Option<String>,
    /// Absent: no token endpoint (API keys, Basic).
    #[serde(default)]
    pub token_path: Option<String>,
    #[serde(default)]
    pub refresh_path: Option<String>,
    #[serde(default = "default_client_auth")]
    pub client_auth: ClientAuth,
    #[serde(default = "default_pkce")]
    pub pkce: Pkce,
    #[serde(default = "default_separator")]
    pub scope_separator: String,
    #[serde(default)]
    pub exchange_params: BTreeMap<String, String>,
    #[serde(default)]
    pub refresh_params: BTreeMap<String, String>,
    /// Client-credentials form fields; a `grant_type` here replaces
    /// `client_credentials` (Zoom's `account_credentials`).
    #[serde(default)]
    pub client_credentials_params: BTreeMap<String, String>,
    /// Access-token lifetime in seconds; absent: the quirks'.
    #[serde(default)]
    pub access_token_ttl_secs: Option<u64>,
    /// Refresh-token rotation; absent: the quirks'.
    #[serde(default)]
    pub rotate_refresh_tokens: Option<bool>,
    #[serde(default)]
    pub revocation: Option<Revocation>,
    #[serde(default)]
    pub metadata: Option<Metadata>,
    /// The API credential: header (or query parameter) name and the text
    /// before and after the credential.
    pub api_header: String,
    pub api_prefix: String,
    #[serde(default)]
    pub api_suffix: String,
    #[serde(default)]
    pub api_in: Placement,
    #[serde(default)]
    pub api_credential: ApiCredential,
}

fn default_client_auth() -> ClientAuth {
    ClientAuth::Body
}

fn default_pkce() -> Pkce {
    Pkce::Unknown
}

fn default_separator() -> String {
    " ".into()
}

impl Profile {
    fn issuing(&self, store: &crate::store::Store) -> Issuing {
        let quirks = store.issuing();
        Issuing {
            ttl: self.access_token_ttl_secs.or(quirks.ttl),
            rotate: self.rotate_refresh_tokens.unwrap_or(quirks.rotate),
        }
    }
}

/// A profile and what went wrong with it so far.
#[derive(Clone, Debug)]
pub struct Registered {
    pub profile: Profile,
    pub mismatches: Vec<String>,
    pub calls: BTreeMap<String, u64>,
    /// SHA-256 (hex) of each refresh token presented, in order.
    pub refresh_tokens: Vec<String>,
}

/// `PUT /_standin/profiles/{name}`: registers (or replaces) a profile.
pub async fn put(State(state): State<AppState>, Path(name): Path<String>, body: Bytes) -> Response {
    let profile: Profile = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": "invalid_request", "error_description": e.to_string()})),
            )
                .into_response()
        }
    };
    state.store().profiles.insert(
        name,
        Registered {
            profile,
            mismatches: Vec::new(),
            calls: BTreeMap::new(),
            refresh_tokens: Vec::new(),
        },
    );
    StatusCode::NO_CONTENT.into_response()
}

/// `GET /_standin/profiles/{name}`: the profile's mismatches and calls.
pub async fn get(State(state): State<AppState>, Path(name): Path<String>) -> Response {
    match state.store().profiles.get(&name) {
        Some(r) => Json(json!({
            "mismatches": r.mismatches,
            "calls": r.calls,
            "refresh_tokens": r.refresh_tokens,
        }))
        .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// `ANY /p/{name}` and `ANY /p/{name}/{*path}`.
pub async fn dispatch(
    State(state): State<AppState>,
    Path(segments): Path<BTreeMap<String, String>>,
    method: Method,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let name = segments.get("name").cloned().unwrap_or_default();
    let path = format!("/{}", segments.get("path").map_or("", String::as_str));
    let Some(profile) = state.store().profiles.get(&name).map(|r| r.profile.clone()) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let (what, outcome) = route(
        &state,
        &name,
        &profile,
        &path,
        &method,
        query.as_deref(),
        &headers,
        &body,
    );
    {
        let mut store = state.store();
        if let Some(r) = store.profiles.get_mut(&name) {
            *r.calls.entry(what.to_owned()).or_default() += 1;
            if let Err(message) = &outcome {
                r.mismatches
                    .push(format!("{what} {method} {path}: {message}"));
            }
        }
    }
    match outcome {
        Ok(Forward::Authorize(query)) => {
            crate::authorize::show(State(state), RawQuery(Some(query))).await
        }
        Ok(Forward::Token(body)) => {
            let issuing = profile.issuing(&state.store());
            crate::token::issue(&state, &headers, body.as_bytes(), Some(issuing)).await
        }
        Ok(Forward::Answer(response)) => response,
        // A provider answers a bad credential with 401.
        Err(message) if what == "api" => (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_token", "error_description": message})),
        )
            .into_response(),
        Err(message) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "profile_mismatch", "error_description": message})),
        )
            .into_response(),
    }
}

enum Forward {
    Authorize(String),
    Token(String),
    Answer(Response),
}

#[allow(clippy::too_many_arguments)] // one request, taken apart by axum
fn route(
    state: &AppState,
    name: &str,
    p: &Profile,
    path: &str,
    method: &Method,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> (&'static str, Result<Forward, String>) {
    if p.authorize_path.as_deref() == Some(path) && method == Method::GET {
        return ("authorize", authorize(p, query));
    }
    if (p.token_path.as_deref() == Some(path) || p.refresh_path.as_deref() == Some(path))
        && method == Method::POST
    {
        return ("token", token(state, name, p, path, headers, body));
    }
    if let Some(r) = p.revocation.as_ref().filter(|r| r.path == path) {
        return ("revoke", revoke(state, r, method, headers, body));
    }
    if let Some(m) = p.metadata.as_ref().filter(|m| m.path == path) {
        return ("metadata", metadata(state, m, headers));
    }
    if path.starts_with("/api/") {
        return ("api", api(state, p, path, query, headers));
    }
    (
        "unknown",
        Err("no endpoint of the profile has this path".into()),
    )
}

fn pairs(text: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(text)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn count(pairs: &[(String, String)], name: &str) -> usize {
    pairs.iter().filter(|(k, _)| k == name).count()
}

fn authorize(p: &Profile, query: Option<&str>) -> Result<Forward, String> {
    let mut pairs = pairs(query.unwrap_or_default().as_bytes());
    if count(&pairs, "response_type") != 1 {
        return Err("response_type must be sent exactly once".into());
    }
    let challenged = count(&pairs, "code_challenge") > 0;
    match (p.pkce, challenged) {
        (Pkce::Unsupported | Pkce::OptIn, true) => {
            return Err("PKCE sent to a provider that does not accept it".into())
        }
        (Pkce::Required, false) => return Err("PKCE is required".into()),
        (Pkce::Unsupported | Pkce::OptIn, false) => {
            pairs.push((
                "code_challenge".into(),
                crypto::s256_challenge(OWN_VERIFIER),
            ));
            pairs.push(("code_challenge_method".into(), "S256".into()));
        }
        _ => {}
    }
    normalise_scope(p, &mut pairs)?;
    let query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    Ok(Forward::Authorize(query))
}

/// A comma-joined scope must hold no space; the core endpoints want it space-joined.
fn normalise_scope(p: &Profile, pairs: &mut [(String, String)]) -> Result<(), String> {
    for (k, v) in pairs.iter_mut() {
        if k == "scope" {
            if p.scope_separator == "," && v.contains(' ') {
                return Err(format!(
                    "scope {v:?} is not joined by {:?}",
                    p.scope_separator
                ));
            }
            *v = v
                .split(p.scope_separator.as_str())
                .collect::<Vec<_>>()
                .join(" ");
        }
    }
    Ok(())
}

fn token(
    state: &AppState,
    name: &str,
    p: &Profile,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Forward, String> {
    let mut pairs = pairs(body);
    if count(&pairs, "grant_type") != 1 {
        return Err("grant_type must be sent exactly once".into());
    }
    let grant = pairs
        .iter()
        .find(|(k, _)| k == "grant_type")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let token_path = p.token_path.as_deref().unwrap_or_default();
    let client_grant = p
        .client_credentials_params
        .get("grant_type")
        .map_or("client_credentials", String::as_str);
    let (expected_path, params) = match grant.as_str() {
        "authorization_code" if p.authorize_path.is_some() => (token_path, &p.exchange_params),
        "refresh_token" if p.authorize_path.is_some() => (
            p.refresh_path.as_deref().unwrap_or(token_path),
            &p.refresh_params,
        ),
        g if g == client_grant && p.authorize_path.is_none() => {
            (token_path, &p.client_credentials_params)
        }
        other => return Err(format!("grant_type {other:?} is not part of the profile")),
    };
    if path != expected_path {
        return Err(format!("{grant} belongs at {expected_path}"));
    }
    let basic = headers.contains_key(header::AUTHORIZATION);
    let in_body = count(&pairs, "client_secret") > 0;
    match (p.client_auth, basic, in_body) {
        (ClientAuth::Basic, true, false) | (ClientAuth::Body, false, true) => {}
        (want, _, _) => {
            return Err(format!(
            "client authentication is not {want:?} (basic header: {basic}, body secret: {in_body})"
        ))
        }
    }
    for (key, value) in params.iter().filter(|(k, _)| *k != "grant_type") {
        let sent: Vec<&str> = pairs
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect();
        if sent != [value.as_str()] {
            return Err(format!(
                "token parameter {key}={value} not sent once (got {sent:?})"
            ));
        }
    }
    if grant == "refresh_token" {
        if let Some((_, presented)) = pairs.iter().find(|(k, _)| k == "refresh_token") {
            let digest = crypto::sha256_hex(presented.as_bytes());
            if let Some(r) = state.store().profiles.get_mut(name) {
                r.refresh_tokens.push(digest);
            }
        }
    }
    if grant == client_grant {
        normalise_scope(p, &mut pairs)?;
        for (k, v) in pairs.iter_mut() {
            if k == "grant_type" {
                "client_credentials".clone_into(v);
            }
        }
    }
    if grant == "authorization_code" && count(&pairs, "code_verifier") == 0 {
        if matches!(p.pkce, Pkce::Unsupported | Pkce::OptIn) {
            pairs.push(("code_verifier".into(), OWN_VERIFIER.into()));
        } else {
            return Err("the code exchange carries no code_verifier".into());
        }
    }
    Ok(Forward::Token(
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish(),
    ))
}

/// The token of `authorization: <scheme> <token>`, if it is a live access token.
fn live_token(state: &AppState, headers: &HeaderMap, name: &str, prefix: &str) -> Option<String> {
    let value = headers.get(name)?.to_str().ok()?;
    let token = value.strip_prefix(prefix)?;
    state
        .store()
        .access(token, SystemTime::now())
        .map(|_| token.to_owned())
}

fn revoke(
    state: &AppState,
    r: &Revocation,
    method: &Method,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Forward, String> {
    if method.as_str() != r.method {
        return Err(format!("revocation must be {}", r.method));
    }
    let client_id = state.config().client_id.clone();
    let token = if r.style == "bearer" {
        live_token(state, headers, "authorization", "Bearer ")
            .ok_or("bearer revocation without a live access token")?
    } else {
        let params = Params::parse(body);
        let basic = headers.contains_key(header::AUTHORIZATION);
        let in_body = params.single("client_secret").ok().flatten().is_some();
        match (r.client_auth, basic, in_body) {
            (ClientAuth::Basic, true, false)
            | (ClientAuth::Body, false, true)
            | (ClientAuth::None, false, false) => {}
            (want, _, _) => {
                return Err(format!(
                    "revocation client authentication is not {want:?} (basic header: {basic}, body secret: {in_body})"
                ))
            }
        }
        if let Some((id, secret)) = headers
            .get(header::AUTHORIZATION)
            .and_then(crate::token::parse_basic)
            .or_else(|| {
                let id = params.single("client_id").ok().flatten()?;
                let secret = params.single("client_secret").ok().flatten()?;
                Some((id.to_owned(), secret.to_owned()))
            })
        {
            let config = state.config();
            if !(crypto::ct_eq(&id, &config.client_id)
                & crypto::ct_eq(&secret, &config.client_secret))
            {
                return Err("revocation client authentication failed".into());
            }
        }
        params
            .single("token")
            .ok()
            .flatten()
            .map(str::to_owned)
            .ok_or("revocation without a token")?
    };
    let removed = state.store().revoke_token(&client_id, &token);
    if removed == 0 {
        return Err("the revoked token was not live".into());
    }
    Ok(Forward::Answer(Json(json!({})).into_response()))
}

fn metadata(state: &AppState, m: &Metadata, headers: &HeaderMap) -> Result<Forward, String> {
    live_token(state, headers, "authorization", &format!("{} ", m.scheme))
        .ok_or_else(|| format!("metadata call without `{} <live token>`", m.scheme))?;
    Ok(Forward::Answer(
        Json(json!({ m.field.clone(): m.value })).into_response(),
    ))
}

/// The credential exactly where the profile wants it: one header (or query
/// parameter) of that name, its value the prefix, the credential, the suffix.
fn placed<'a>(
    p: &Profile,
    query: &'a [(String, String)],
    headers: &'a HeaderMap,
) -> Option<String> {
    let values: Vec<String> = match p.api_in {
        Placement::Header => headers
            .get_all(p.api_header.as_str())
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect(),
        Placement::Query => query
            .iter()
            .filter(|(k, _)| *k == p.api_header)
            .map(|(_, v)| v.clone())
            .collect(),
    };
    let [value] = values.as_slice() else {
        return None;
    };
    let credential = value
        .strip_prefix(p.api_prefix.as_str())?
        .strip_suffix(p.api_suffix.as_str())?;
    (!credential.is_empty()).then(|| credential.to_owned())
}

/// The login a credential stands for, if the stand-in knows it.
fn login_of(state: &AppState, kind: ApiCredential, credential: &str) -> Option<String> {
    let store = state.store();
    match kind {
        ApiCredential::AccessToken => store.access(credential, SystemTime::now()).map(|i| i.login),
        ApiCredential::ApiKey => store.api_keys.get(credential).cloned(),
        ApiCredential::Basic => {
            let decoded = STANDARD.decode(credential).ok()?;
            let decoded = String::from_utf8(decoded).ok()?;
            let (user, password) = decoded.split_once(':')?;
            store
                .basic
                .get(user)
                .filter(|expected| crypto::ct_eq(expected, password))
                .map(|_| user.to_owned())
        }
    }
}

fn api(
    state: &AppState,
    p: &Profile,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Forward, String> {
    let query = pairs(query.unwrap_or_default().as_bytes());
    let login = placed(p, &query, headers)
        .and_then(|credential| login_of(state, p.api_credential, &credential))
        .ok_or_else(|| {
            format!(
                "API call without {:?} {}: {}<{:?}>{} exactly once",
                p.api_in, p.api_header, p.api_prefix, p.api_credential, p.api_suffix
            )
        })?;
    Ok(Forward::Answer(
        Json(json!({"user": login, "path": path})).into_response(),
    ))
}
