//! `GET /oauth/authorize` (consent page) and `POST /oauth/authorize` (the user's decision),
//! RFC 6749 §4.1.1-4.1.2 with PKCE required (RFC 7636 §4.3).

use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use url::Url;

use crate::config::Config;
use crate::crypto;
use crate::html::{self, Consent};
use crate::params::Params;
use crate::scope;
use crate::store::CodeGrant;
use crate::AppState;

/// A validated authorization request.
struct AuthzRequest {
    client_id: String,
    /// As sent: the token request must repeat it exactly.
    redirect_uri: String,
    redirect: Url,
    state: Option<String>,
    scopes: Vec<String>,
    code_challenge: String,
}

/// `GET /oauth/authorize`: validate, then show the consent page.
pub async fn show(State(state): State<AppState>, RawQuery(query): RawQuery) -> Response {
    let params = Params::from_query(query.as_deref());
    let config = state.config();
    match validate(&params, config) {
        Ok(req) => {
            let login = params.single("login").ok().flatten().unwrap_or_default();
            consent(&req, login, None, StatusCode::OK)
        }
        Err(rejection) => rejection.into_response(config),
    }
}

/// `POST /oauth/authorize`: approve (issue a code) or deny.
pub async fn decide(State(state): State<AppState>, body: Bytes) -> Response {
    let params = Params::parse(&body);
    let config = state.config();
    let req = match validate(&params, config) {
        Ok(req) => req,
        Err(rejection) => return rejection.into_response(config),
    };
    let redirect_error = |error, description| {
        error_redirect(
            &req.redirect,
            config,
            req.state.as_deref(),
            error,
            description,
        )
    };
    match params.single("decision") {
        Ok(Some("approve")) => {}
        Ok(Some("deny")) => {
            return redirect_error("access_denied", "the user denied the request");
        }
        _ => return redirect_error("invalid_request", "decision must be approve or deny"),
    }
    let login = match params.single("login") {
        Ok(login) => login.map(str::trim).unwrap_or_default(),
        Err(_) => return redirect_error("invalid_request", "login is repeated"),
    };
    if login.is_empty() {
        return consent(
            &req,
            "",
            Some("Enter a login to approve."),
            StatusCode::BAD_REQUEST,
        );
    }
    let code = state.store().issue_code(
        CodeGrant {
            client_id: req.client_id.clone(),
            redirect_uri: req.redirect_uri.clone(),
            code_challenge: req.code_challenge.clone(),
            login: login.to_owned(),
            scope: req.scopes.join(" "),
        },
        SystemTime::now(),
    );
    tracing::info!(client_id = %req.client_id, "authorization code issued");
    let mut pairs = vec![("code", code.as_str())];
    if let Some(s) = req.state.as_deref() {
        pairs.push(("state", s));
    }
    if config.send_iss {
        pairs.push(("iss", config.issuer.as_str()));
    }
    redirect(&req.redirect, &pairs)
}

/// Why a request was refused. A bad client or redirect URI gets an error page (never a
/// redirect to an unverified URI, RFC 6749 §4.1.2.1); other errors redirect back.
enum Rejection {
    Page(&'static str),
    Redirect {
        to: Box<Url>,
        state: Option<String>,
        error: &'static str,
        description: String,
    },
}

impl Rejection {
    fn into_response(self, config: &Config) -> Response {
        match self {
            Self::Page(message) => error_page(message),
            Self::Redirect {
                to,
                state,
                error,
                description,
            } => error_redirect(&to, config, state.as_deref(), error, &description),
        }
    }
}

/// Checks an authorization request (query or re-posted form).
fn validate(params: &Params, config: &Config) -> Result<AuthzRequest, Rejection> {
    let client_id = match params.single("client_id") {
        Ok(Some(id)) if crypto::ct_eq(id, &config.client_id) => id,
        Ok(Some(_)) => return Err(Rejection::Page("unknown client_id")),
        Ok(None) => return Err(Rejection::Page("client_id is missing")),
        Err(_) => return Err(Rejection::Page("client_id is repeated")),
    };
    let redirect_uri = match params.single("redirect_uri") {
        Ok(Some(uri)) => uri,
        Ok(None) => return Err(Rejection::Page("redirect_uri is missing")),
        Err(_) => return Err(Rejection::Page("redirect_uri is repeated")),
    };
    let redirect = match Url::parse(redirect_uri) {
        Ok(url) if url.cannot_be_a_base() => {
            return Err(Rejection::Page("redirect_uri must be a hierarchical URI"))
        }
        Ok(url) if url.fragment().is_some() => {
            return Err(Rejection::Page("redirect_uri must not contain a fragment"))
        }
        Ok(url) => url,
        Err(_) => return Err(Rejection::Page("redirect_uri is not an absolute URI")),
    };
    let (state, repeated) = match params.single("state") {
        Ok(s) => (s.map(str::to_owned), params.any_repeated()),
        Err(rep) => (None, Some(rep)),
    };
    let fail = |error: &'static str, description: String| {
        Err(Rejection::Redirect {
            to: Box::new(redirect.clone()),
            state: state.clone(),
            error,
            description,
        })
    };
    if let Some(rep) = repeated {
        return fail(
            "invalid_request",
            format!("parameter {} is repeated", rep.0),
        );
    }
    match params.single("response_type") {
        Ok(Some("code")) => {}
        Ok(Some(_)) => {
            return fail(
                "unsupported_response_type",
                "only response_type=code is supported".into(),
            )
        }
        _ => return fail("invalid_request", "response_type is missing".into()),
    }
    let code_challenge = match params.single("code_challenge") {
        Ok(Some(c)) if crypto::is_pkce_string(c) => c,
        Ok(Some(_)) => return fail("invalid_request", "code_challenge is malformed".into()),
        _ => {
            return fail(
                "invalid_request",
                "code_challenge is required (PKCE)".into(),
            )
        }
    };
    match params.single("code_challenge_method") {
        Ok(Some("S256")) => {}
        Ok(Some(_)) => {
            return fail(
                "invalid_request",
                "transform algorithm not supported: code_challenge_method must be S256".into(),
            )
        }
        _ => {
            return fail(
                "invalid_request",
                "code_challenge_method=S256 is required".into(),
            )
        }
    }
    let scopes = match params.single("scope").ok().flatten().map(scope::parse) {
        None => Vec::new(),
        Some(Some(scopes)) => scopes,
        Some(None) => return fail("invalid_scope", "scope is malformed".into()),
    };
    Ok(AuthzRequest {
        client_id: client_id.to_owned(),
        redirect_uri: redirect_uri.to_owned(),
        redirect,
        state,
        scopes,
        code_challenge: code_challenge.to_owned(),
    })
}

fn consent(req: &AuthzRequest, login: &str, notice: Option<&str>, status: StatusCode) -> Response {
    let scope = req.scopes.join(" ");
    let mut hidden = vec![
        ("response_type", "code"),
        ("client_id", req.client_id.as_str()),
        ("redirect_uri", req.redirect_uri.as_str()),
    ];
    if let Some(s) = req.state.as_deref() {
        hidden.push(("state", s));
    }
    if !scope.is_empty() {
        hidden.push(("scope", scope.as_str()));
    }
    hidden.push(("code_challenge", req.code_challenge.as_str()));
    hidden.push(("code_challenge_method", "S256"));
    let page = html::consent_page(&Consent {
        client_id: &req.client_id,
        scopes: &req.scopes,
        hidden: &hidden,
        login,
        notice,
    });
    html_response(status, page)
}

fn error_page(message: &str) -> Response {
    html_response(StatusCode::BAD_REQUEST, html::error_page(message))
}

fn html_response(status: StatusCode, page: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        page,
    )
        .into_response()
}

/// RFC 6749 §4.1.2.1 error response (plus `iss`, RFC 9207 §2, when enabled).
fn error_redirect(
    to: &Url,
    config: &Config,
    state: Option<&str>,
    error: &str,
    description: &str,
) -> Response {
    let mut pairs = vec![("error", error), ("error_description", description)];
    if let Some(s) = state {
        pairs.push(("state", s));
    }
    if config.send_iss {
        pairs.push(("iss", config.issuer.as_str()));
    }
    redirect(to, &pairs)
}

/// 302 to `to` with `pairs` appended to whatever query it already has.
fn redirect(to: &Url, pairs: &[(&str, &str)]) -> Response {
    let mut location = to.clone();
    location.query_pairs_mut().extend_pairs(pairs);
    (
        StatusCode::FOUND,
        [
            (header::LOCATION, location.as_str().to_owned()),
            (header::CACHE_CONTROL, "no-store".to_owned()),
        ],
    )
        .into_response()
}
