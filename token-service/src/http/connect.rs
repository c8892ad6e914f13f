//! Starting a connection: the app asks for a connect link, the user's
//! browser opens it and is sent to the provider's authorize endpoint.

use crate::crypto::secrets::{
    digest_eq, sha256, BrowserNonce, CsrfToken, OAuthState, SessionToken,
};
use crate::crypto::vault::Aad;
use crate::db;
use crate::http::auth::AppAuth;
use crate::http::error::{ApiError, ApiJson, ApiPath};
use crate::service::connect::{
    app_provider, new_session, CreateSession, CreatedSession, CONNECT_PATH,
};
use crate::service::state::AppState;
use crate::store::providers::ProviderRecord;
use crate::store::sessions::{self, ConnectSession, OAuthStateRecord};
use authstamp_protocol::{paths, ErrorCode};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use oauth2::PkceCodeChallenge;
use url::Url;

/// How long the browser has between opening the connect link and coming
/// back to the callback.
pub const STATE_TTL_SECS: i64 = 600;
pub const NONCE_COOKIE: &str = "authstamp_connect";
/// The connect page's CSRF cookie; the form carries the same value.
pub const CSRF_COOKIE: &str = "authstamp_csrf";
/// The form field of the CSRF token.
pub const CSRF_FIELD: &str = "csrf";

#[utoipa::path(
    post,
    path = "/v1/connect-sessions",
    operation_id = "createConnectSession",
    summary = "A single-use connect link for one user",
    tag = "connect",
    security(("appId" = [], "appKey" = [])),
    request_body = CreateSession,
    responses((status = 201, description = "created", body = CreatedSession)),
)]
/// `POST /v1/connect-sessions`: a single-use connect link for one user.
pub async fn create_session(
    State(state): State<AppState>,
    AppAuth(app): AppAuth,
    ApiJson(input): ApiJson<CreateSession>,
) -> Result<(StatusCode, Json<CreatedSession>), ApiError> {
    state
        .limits
        .connect_sessions
        .check(&app.app_id)
        .map_err(|wait| ApiError::rate_limited("connect sessions", wait))?;
    let created = new_session(&state, &app, input).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

#[utoipa::path(
    get,
    path = "/v1/connect/{session_token}",
    operation_id = "connectPage",
    summary = "Browser: the connect page (provider, permissions asked, a Connect button; for api_key and basic providers a form with one input per api_key_fields entry); does not use the session up",
    tag = "connect",
    security(()),
    params(("session_token" = String, Path, description = "From connect_url.")),
    responses((status = 200, description = "the page", content_type = "text/html", body = String)),
)]
/// `GET /v1/connect/{session_token}`: the connect page. Shows the app, the
/// user it is for, the provider, what is asked and a Connect button (a form
/// posting to the same URL with a CSRF token that a cookie of this page
/// carries too); the session is not used up here, so a link preview or a
/// reload does no harm.
pub async fn page(
    State(state): State<AppState>,
    ApiPath(token): ApiPath<String>,
) -> Result<Response, ApiError> {
    let token = SessionToken::new(token);
    let now = db::now();
    let session = sessions::peek_session(&state.db, &sha256(token.expose().as_bytes()))
        .await?
        .filter(|s| s.expires_at > now)
        .ok_or_else(ApiError::invalid_state)?;
    let provider = app_provider(&state, &session.app_id, &session.provider).await?;
    if crate::http::key_connect::is_key_provider(provider.auth_type) {
        return crate::http::key_connect::form_page(
            &state,
            &token,
            &session,
            &provider,
            StatusCode::OK,
            &crate::http::key_connect::Shown::default(),
        )
        .await;
    }
    let app_name = app_name(&state, &session).await?;
    let action = page_path(&state, &token);
    let csrf = CsrfToken::generate();
    let mut response = crate::http::html::connect_page(&crate::http::html::ConnectPage {
        provider: provider.shown_name(),
        app: &app_name,
        user: shown_user(&session),
        scopes: &provider.scopes,
        action: &action,
        csrf: csrf.expose(),
    });
    set_csrf_cookie(&state, &mut response, &action, &csrf)?;
    Ok(response)
}

/// The name the connect page gives the app (its id when it has none).
pub(crate) async fn app_name(
    state: &AppState,
    session: &ConnectSession,
) -> Result<String, ApiError> {
    Ok(crate::store::apps::get(&state.db, &session.app_id)
        .await?
        .map(|a| a.name)
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| session.app_id.clone()))
}

/// How the connect page names the user: the app's display name, else the id.
pub(crate) fn shown_user(session: &ConnectSession) -> &str {
    session
        .user_display_name
        .as_deref()
        .unwrap_or(&session.user_id)
}

/// The connect page's path in the browser (its form posts there).
pub(crate) fn page_path(state: &AppState, token: &SessionToken) -> String {
    state
        .public_url
        .browser_path(&format!("{CONNECT_PATH}/{}", token.expose()))
}

/// Sets the page's CSRF cookie (the form carries the same token).
pub(crate) fn set_csrf_cookie(
    state: &AppState,
    response: &mut Response,
    path: &str,
    csrf: &CsrfToken,
) -> Result<(), ApiError> {
    let cookie = csrf_cookie(state, path, csrf.expose(), STATE_TTL_SECS);
    response.headers_mut().append(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).map_err(|e| ApiError::internal("invalid cookie", e))?,
    );
    Ok(())
}

/// Clears the page's CSRF cookie (the session is used up) and keeps the
/// answer out of caches and of the next page's `Referer`.
pub(crate) fn finish_response(
    state: &AppState,
    response: &mut Response,
    token: &SessionToken,
) -> Result<(), ApiError> {
    let clear = csrf_cookie(state, &page_path(state, token), "", 0);
    let headers = response.headers_mut();
    headers.append(
        header::SET_COOKIE,
        HeaderValue::from_str(&clear).map_err(|e| ApiError::internal("invalid cookie", e))?,
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    Ok(())
}

/// The CSRF cookie, bound to the one connect page's path. `SameSite=Strict`:
/// a cross-site form post carries none.
fn csrf_cookie(state: &AppState, path: &str, value: &str, max_age: i64) -> String {
    let mut cookie =
        format!("{CSRF_COOKIE}={value}; Path={path}; HttpOnly; SameSite=Strict; Max-Age={max_age}");
    if state.public_url.is_https() {
        cookie.push_str("; Secure");
    }
    cookie
}

/// The Connect button's post must come from the connect page itself: a
/// browser that sends fetch metadata must say `same-origin`, an `Origin`
/// must be this service's, and the form's CSRF token must equal the page's
/// cookie. A cross-site auto-submitting form fails all three.
pub fn check_same_origin(
    headers: &HeaderMap,
    form: &[u8],
    public_origin: &str,
) -> Result<(), ApiError> {
    let refuse = |why: &str| {
        ApiError::new(
            ErrorCode::CrossSiteRequest,
            format!("the connect form must be sent from its own page ({why}); open the connect link again"),
        )
    };
    let single = |name: header::HeaderName| -> Result<Option<&str>, ApiError> {
        let mut values = headers.get_all(&name).iter();
        match (values.next(), values.next()) {
            (None, _) => Ok(None),
            (Some(v), None) => v
                .to_str()
                .map(Some)
                .map_err(|_| refuse(&format!("unreadable {name}"))),
            (Some(_), Some(_)) => Err(refuse(&format!("{name} sent twice"))),
        }
    };
    if let Some(site) = single(header::HeaderName::from_static("sec-fetch-site"))? {
        if site != "same-origin" {
            return Err(refuse("sent from another site"));
        }
    }
    if let Some(origin) = single(header::ORIGIN)? {
        if !origin.eq_ignore_ascii_case(public_origin) {
            return Err(refuse("sent from another origin"));
        }
    }
    let field = url::form_urlencoded::parse(form)
        .find(|(k, _)| k == CSRF_FIELD)
        .map(|(_, v)| CsrfToken::new(v.into_owned()))
        .filter(|v| !v.expose().is_empty())
        .ok_or_else(|| refuse("no CSRF token"))?;
    let expected = sha256(field.expose().as_bytes());
    let mut matches = false;
    for cookie in super::cookie_values(headers, CSRF_COOKIE) {
        matches |= digest_eq(&sha256(cookie.as_bytes()), &expected);
    }
    if !matches {
        return Err(refuse("the CSRF token does not match the page's cookie"));
    }
    Ok(())
}

#[utoipa::path(
    post,
    path = "/v1/connect/{session_token}",
    operation_id = "connectStart",
    summary = "Browser: the Connect button; refused (403 cross_site_request) unless sent from the connect page itself (Sec-Fetch-Site same-origin when sent, Origin of this service when sent, the page's CSRF token equal to its cookie); uses the session up, sets the browser-binding cookie and sends the browser to the provider. For api_key and basic providers the form's credentials: checked with the provider's key_check when it has one, then the session is used up and they are sealed (result page, or 303 to return_to for the app's confirmation); an invalid (400), refused (422), unchecked (502) or sixth-in-a-minute (429) entry shows the form again and keeps the session",
    tag = "connect",
    security(()),
    params(("session_token" = String, Path, description = "From connect_url.")),
    request_body(content = inline(crate::http::openapi::ConnectForm), content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "api_key and basic providers: the result page", content_type = "text/html", body = String),
        (status = 303, description = "to the provider's authorize URL (state, PKCE S256); api_key and basic providers with a return_to: to return_to with authstamp_result"),
    ),
)]
/// `POST /v1/connect/{session_token}` (the page's Connect button): checks
/// that the post comes from the page ([`check_same_origin`]); for an
/// API-key or Basic provider the form is the credentials
/// ([`crate::http::key_connect::submit`]); otherwise consumes the session, stores
/// a state with a PKCE verifier and a browser nonce, and sends the browser
/// to the provider (303).
pub async fn start(
    State(state): State<AppState>,
    ApiPath(token): ApiPath<String>,
    headers: HeaderMap,
    form: axum::body::Bytes,
) -> Result<Response, ApiError> {
    check_same_origin(&headers, &form, state.public_url.origin()).inspect_err(|_| {
        tracing::warn!("connect form refused: not sent from its own page");
    })?;
    let token = SessionToken::new(token);
    let now = db::now();
    let peeked = sessions::peek_session(&state.db, &sha256(token.expose().as_bytes()))
        .await?
        .filter(|s| s.expires_at > now)
        .ok_or_else(ApiError::invalid_state)?;
    let provider = app_provider(&state, &peeked.app_id, &peeked.provider).await?;
    if crate::http::key_connect::is_key_provider(provider.auth_type) {
        return crate::http::key_connect::submit(&state, &token, &peeked, &provider, &form).await;
    }
    let session = sessions::take_session(&state.db, &sha256(token.expose().as_bytes()))
        .await?
        .filter(|s| s.expires_at > now)
        .ok_or_else(ApiError::invalid_state)?;

    let oauth_state = OAuthState::generate();
    let state_hash = sha256(oauth_state.expose().as_bytes());
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    // A provider known not to support PKCE gets no challenge (and the code
    // exchange no verifier: an empty one is not sent).
    let pkce = provider.settings.pkce.send();
    let verifier_text = if pkce { verifier.secret().as_str() } else { "" };
    let nonce = BrowserNonce::generate();
    let redirect_uri = state.public_url.redirect_uri();
    let scope = provider.scopes.join(&provider.scope_separator);
    let record = OAuthStateRecord {
        state_hash: state_hash.to_vec(),
        app_id: session.app_id,
        provider: session.provider,
        user_id: session.user_id,
        return_to: session.return_to,
        pkce_verifier: state
            .vault
            .seal_str(&Aad::oauth_state(&state_hash), verifier_text)?,
        nonce_hash: sha256(nonce.expose().as_bytes()).to_vec(),
        redirect_uri: redirect_uri.clone(),
        requested_scope: scope.clone(),
        params: session.params.clone(),
        created_at: now,
        expires_at: now + STATE_TTL_SECS,
    };
    sessions::insert_state(&state.db, &record).await?;

    let location = authorize_url(
        &provider,
        &session.params,
        &redirect_uri,
        &scope,
        &oauth_state,
        pkce.then_some(challenge.as_str()),
    )?;
    let mut cookie = format!(
        "{NONCE_COOKIE}={}; Path={}; HttpOnly; SameSite=Lax; Max-Age={STATE_TTL_SECS}",
        nonce.expose(),
        state.public_url.browser_path(paths::OAUTH_CALLBACK)
    );
    if state.public_url.is_https() {
        cookie.push_str("; Secure");
    }
    let header_value = |v: &str| {
        HeaderValue::from_str(v).map_err(|e| ApiError::internal("invalid redirect header", e))
    };
    let mut response = StatusCode::SEE_OTHER.into_response();
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, header_value(location.as_str())?);
    headers.append(header::SET_COOKIE, header_value(&cookie)?);
    finish_response(&state, &mut response, &token)?;
    Ok(response)
}

/// The provider's authorize URL (placeholders filled with the connection's
/// parameters) with the authorization request parameters added; its own
/// query parameters and the provider's `extra_authorize_params` stay unless
/// they collide with ours.
fn authorize_url(
    provider: &ProviderRecord,
    params: &crate::template::Values,
    redirect_uri: &str,
    scope: &str,
    state: &OAuthState,
    code_challenge: Option<&str>,
) -> Result<Url, ApiError> {
    let mut url = provider
        .url(&provider.authorize_url, params)
        .map_err(|e| ApiError::internal("stored authorize_url is invalid", e))?
        .ok_or_else(|| ApiError::internal("stored authorize_url is empty", "no URL"))?;
    let ours = [
        "response_type",
        "client_id",
        "redirect_uri",
        "scope",
        "state",
        "code_challenge",
        "code_challenge_method",
    ];
    let values = provider.values(params);
    let mut kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| !ours.contains(&k.as_ref()))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    for (key, template) in &provider.settings.extra_authorize_params {
        if ours.contains(&key.as_str()) {
            continue;
        }
        let value = crate::template::render_text(template, &values)
            .map_err(|e| ApiError::internal("stored extra_authorize_params", e))?;
        kept.retain(|(k, _)| k != key);
        kept.push((key.clone(), value));
    }
    url.set_query(None);
    {
        let mut query = url.query_pairs_mut();
        query.extend_pairs(kept);
        query
            .append_pair("response_type", "code")
            .append_pair("client_id", &provider.client_id)
            .append_pair("redirect_uri", redirect_uri);
        if !scope.is_empty() {
            query.append_pair("scope", scope);
        }
        query.append_pair("state", state.expose());
        if let Some(challenge) = code_challenge {
            query
                .append_pair("code_challenge", challenge)
                .append_pair("code_challenge_method", "S256");
        }
    }
    Ok(url)
}
