//! `POST /oauth/token` (RFC 6749 §3.2, §4.1.3, §6) with client authentication (§2.3.1).

use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Map, Value};

use crate::config::Config;
use crate::crypto;
use crate::error::{no_store, OAuthError};
use crate::params::{form_decode, Params, Repeated};
use crate::quirks::Quirks;
use crate::store::{Issued, Issuing, Redemption};
use crate::AppState;

pub async fn token(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    issue(&state, &headers, &body, None).await
}

/// The token endpoint; a catalog profile passes its own `issuing` (lifetime,
/// rotation) instead of the quirks'.
pub(crate) async fn issue(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
    issuing: Option<Issuing>,
) -> Response {
    let is_form = is_form_urlencoded(headers);
    let params = if is_form {
        Params::parse(body)
    } else {
        Params::default()
    };
    let quirks = {
        let mut store = state.store();
        let calls = &mut store.stats.token_calls;
        match params.single("grant_type") {
            Ok(Some("authorization_code")) => calls.authorization_code += 1,
            Ok(Some("refresh_token")) => calls.refresh_token += 1,
            Ok(Some("client_credentials")) => calls.client_credentials += 1,
            _ => calls.other += 1,
        }
        store.quirks.clone()
    };
    let delay = Duration::from_millis(quirks.token_delay_ms);
    if !delay.is_zero() && !quirks.delay_after_issuing {
        tokio::time::sleep(delay).await;
    }
    let mut response = if let Some(resp) = quirk_response(&quirks) {
        resp
    } else if !is_form {
        OAuthError::invalid_request("expected an application/x-www-form-urlencoded body")
            .into_response()
    } else {
        handle(state, headers, &params, issuing).unwrap_or_else(IntoResponse::into_response)
    };
    if !delay.is_zero() && quirks.delay_after_issuing {
        // The grant is done (a rotated refresh token is already retired).
        tokio::time::sleep(delay).await;
    }
    no_store(&mut response);
    response
}

/// `POST /oauth/revoke` (RFC 7009): the client revokes one of its tokens.
/// A refresh token takes its whole family with it. 200 whether or not the
/// token was known (§2.2).
pub async fn revoke(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    if !is_form_urlencoded(&headers) {
        return OAuthError::invalid_request("expected an application/x-www-form-urlencoded body")
            .into_response();
    }
    let params = Params::parse(&body);
    let client_id = match authenticate(&headers, &params, state.config()) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    let token = match required(&params, "token") {
        Ok(t) => t.to_owned(),
        Err(e) => return e.into_response(),
    };
    let removed = state.store().revoke_token(&client_id, &token);
    tracing::info!(removed, "token revoked by the client");
    let mut response = StatusCode::OK.into_response();
    no_store(&mut response);
    response
}

fn is_form_urlencoded(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| {
            mime.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// The `token_status` and `error_in_200` quirks: answer without doing anything.
fn quirk_response(quirks: &Quirks) -> Option<Response> {
    if let Some(status) = quirks.token_status {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let mut response = if status.is_server_error() {
            // What a gateway in front of the provider would answer.
            let reason = status.canonical_reason().unwrap_or("Error");
            (
                status,
                [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                format!(
                    "<html><head><title>{code} {reason}</title></head>\
                     <body><h1>{code} {reason}</h1></body></html>\n",
                    code = status.as_u16()
                ),
            )
                .into_response()
        } else {
            (
                status,
                Json(json!({
                    "error": "standin_token_status",
                    "error_description": format!("token_status quirk: answering {}", status.as_u16()),
                })),
            )
                .into_response()
        };
        if matches!(status.as_u16(), 429 | 503) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        return Some(response);
    }
    quirks
        .error_in_200
        .as_ref()
        .map(|error| Json(json!({"ok": false, "error": error})).into_response())
}

fn handle(
    state: &AppState,
    headers: &HeaderMap,
    params: &Params,
    issuing: Option<Issuing>,
) -> Result<Response, OAuthError> {
    if let Some(Repeated(name)) = params.any_repeated() {
        return Err(OAuthError::invalid_request(format!(
            "parameter {name} is repeated"
        )));
    }
    let client_id = authenticate(headers, params, state.config())?;
    let now = SystemTime::now();
    let issuing = issuing.unwrap_or_else(|| state.store().issuing());
    let issued = match single(params, "grant_type")? {
        Some("authorization_code") => {
            let code = required(params, "code")?;
            let redirect_uri = required(params, "redirect_uri")?;
            let code_verifier = required(params, "code_verifier")?;
            if !crypto::is_pkce_string(code_verifier) {
                return Err(OAuthError::invalid_request(
                    "code_verifier must be 43 to 128 unreserved characters",
                ));
            }
            state.store().redeem_code(
                Redemption {
                    client_id: &client_id,
                    code,
                    redirect_uri,
                    code_verifier,
                },
                issuing,
                now,
            )?
        }
        Some("refresh_token") => {
            let refresh_token = required(params, "refresh_token")?;
            let scope = single(params, "scope")?;
            state
                .store()
                .refresh(&client_id, refresh_token, scope, issuing, now)?
        }
        Some("client_credentials") => {
            let scope = single(params, "scope")?;
            state
                .store()
                .client_credentials(&client_id, scope, issuing, now)?
        }
        Some(other) => {
            return Err(OAuthError::unsupported_grant_type(format!(
                "grant_type {other} is not supported"
            )))
        }
        None => return Err(OAuthError::invalid_request("grant_type is missing")),
    };
    Ok(Json(success_body(&issued)).into_response())
}

fn single<'p>(params: &'p Params, name: &str) -> Result<Option<&'p str>, OAuthError> {
    params
        .single(name)
        .map_err(|Repeated(n)| OAuthError::invalid_request(format!("parameter {n} is repeated")))
}

fn required<'p>(params: &'p Params, name: &str) -> Result<&'p str, OAuthError> {
    single(params, name)?.ok_or_else(|| OAuthError::invalid_request(format!("{name} is missing")))
}

/// Authenticates the client by `client_secret_basic` or `client_secret_post` (not both);
/// returns its id.
pub(crate) fn authenticate(
    headers: &HeaderMap,
    params: &Params,
    config: &Config,
) -> Result<String, OAuthError> {
    let mut authorization = headers.get_all(header::AUTHORIZATION).iter();
    let basic = match (authorization.next(), authorization.next()) {
        (None, _) => None,
        (Some(value), None) => Some(parse_basic(value).ok_or_else(|| {
            OAuthError::invalid_client("Authorization header is not valid HTTP Basic credentials")
        })?),
        (Some(_), Some(_)) => {
            return Err(OAuthError::invalid_request(
                "more than one Authorization header",
            ))
        }
    };
    let body_id = single(params, "client_id")?;
    let body_secret = single(params, "client_secret")?;
    let (id, secret) = match (basic, body_secret) {
        (Some(_), Some(_)) => {
            return Err(OAuthError::invalid_request(
                "the client authenticated with more than one method",
            ))
        }
        (Some((id, secret)), None) => {
            if body_id.is_some_and(|b| b != id) {
                return Err(OAuthError::invalid_request(
                    "client_id in the body differs from the Authorization header",
                ));
            }
            (id, secret)
        }
        (None, Some(secret)) => match body_id {
            Some(id) => (id.to_owned(), secret.to_owned()),
            None => {
                return Err(OAuthError::invalid_client(
                    "client_secret given without client_id",
                ))
            }
        },
        (None, None) => return Err(OAuthError::invalid_client("client authentication required")),
    };
    // Both comparisons always run.
    let id_ok = crypto::ct_eq(&id, &config.client_id);
    let secret_ok = crypto::ct_eq(&secret, &config.client_secret);
    if id_ok & secret_ok {
        Ok(id)
    } else {
        Err(OAuthError::invalid_client("client authentication failed"))
    }
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))` (RFC 6749 §2.3.1).
pub(crate) fn parse_basic(value: &HeaderValue) -> Option<(String, String)> {
    let value = value.to_str().ok()?;
    let (scheme, credentials) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(credentials.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((form_decode(id)?, form_decode(secret)?))
}

fn success_body(issued: &Issued) -> Value {
    if let Some(bot) = &issued.bot_token {
        // Slack's oauth.v2.access shape: the bot token on top, the user's in authed_user.
        let mut user = Map::new();
        user.insert("id".into(), json!(issued.login));
        user.insert("scope".into(), json!(issued.scope));
        user.insert("access_token".into(), json!(issued.access_token));
        user.insert("token_type".into(), json!("user"));
        if let Some(rt) = &issued.refresh_token {
            user.insert("refresh_token".into(), json!(rt));
        }
        if let Some(exp) = issued.expires_in {
            user.insert("expires_in".into(), json!(exp));
        }
        return json!({
            "ok": true,
            "app_id": "A0STANDIN",
            "access_token": bot,
            "token_type": "bot",
            "scope": issued.scope,
            "bot_user_id": "U0STANDINBOT",
            "team": {"id": "T0STANDIN", "name": "authstamp stand-in"},
            "enterprise": null,
            "is_enterprise_install": false,
            "authed_user": user,
        });
    }
    let mut body = Map::new();
    body.insert("access_token".into(), json!(issued.access_token));
    body.insert("token_type".into(), json!("Bearer"));
    if let Some(exp) = issued.expires_in {
        body.insert("expires_in".into(), json!(exp));
    }
    if let Some(rt) = &issued.refresh_token {
        body.insert("refresh_token".into(), json!(rt));
    }
    body.insert("scope".into(), json!(issued.scope));
    Value::Object(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(raw: &str) -> HeaderValue {
        HeaderValue::from_str(&format!("Basic {}", STANDARD.encode(raw))).unwrap()
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        assert_eq!(
            parse_basic(&basic("my%20app:s%3Acret+x")),
            Some(("my app".into(), "s:cret x".into()))
        );
        assert_eq!(
            parse_basic(&basic("app:a:b")),
            Some(("app".into(), "a:b".into()))
        );
        assert_eq!(parse_basic(&basic("no-colon")), None);
        assert_eq!(parse_basic(&HeaderValue::from_static("Bearer abc")), None);
        assert_eq!(parse_basic(&HeaderValue::from_static("Basic !!!")), None);
        assert!(parse_basic(
            &HeaderValue::from_str(&format!("bAsIc {}", STANDARD.encode("a:b"))).unwrap()
        )
        .is_some());
    }
}
