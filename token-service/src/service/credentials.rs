//! Credentials that are not an OAuth authorization code grant, stamped the
//! same way so one filter serves every integration:
//!
//! - **API keys and HTTP Basic**: the app stores them for a user (or for
//!   itself, user `-`) with `PUT /v1/connections/{provider}/{user}/credentials`;
//!   they are sealed in the vault like tokens (a Basic pair as the
//!   `base64(username:password)` it is sent as), never refreshed, and stamped
//!   with the provider's header (`Basic {token}`, `x-api-key: {token}`, …) or
//!   query parameter.
//! - **OAuth 2.0 client credentials** (RFC 6749 §4.4): one app-level
//!   connection, user `-`. The service fetches the token itself on the first
//!   lookup and again when it is due (the refresh skew, at most half its
//!   life), one fetch at a time per connection in a process.

use crate::catalog::{self, AuthType};
use crate::crypto::secrets::AccessToken;
use crate::crypto::vault::{Aad, Field};
use crate::db;
use crate::error::Error;
use crate::oauth::client::{ClientCredentials, GrantRequest, TokenError};
use crate::policy::secs;
use crate::service::connect::{app_provider, APP_USER};
use crate::service::connections::{self as views, ConnectionView};
use crate::service::refresh::{provider_unavailable, Served};
use crate::service::state::AppState;
use crate::store::connections::{self, ConnKey, ConnectionRecord, NewConnection};
use crate::store::providers::ProviderRecord;
use crate::template::Values;
use crate::validate;
use authstamp_protocol::ErrorCode;
use base64::Engine as _;
use serde::Deserialize;
use std::collections::BTreeMap;

/// Body of `PUT /v1/connections/{provider}/{user}/credentials`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutCredentials {
    /// For `api_key` providers.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub api_key: Option<AccessToken>,
    /// For `basic` providers.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub password: Option<AccessToken>,
    /// Connection parameters the provider declares.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
}

/// Longest API key, user name and password, in bytes.
pub const API_KEY_MAX: usize = 8192;

pub const USERNAME_MAX: usize = 1024;

pub const PASSWORD_MAX: usize = 4096;

/// Entered credentials that cannot be stored: which field, and why.
#[derive(Debug)]
pub struct FieldError {
    /// `api_key`, `username` or `password`; `None` for the whole input.
    pub field: Option<&'static str>,
    pub message: String,
}

impl FieldError {
    fn of(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field: Some(field),
            message: message.into(),
        }
    }
}

impl From<FieldError> for Error {
    fn from(e: FieldError) -> Self {
        Error::bad_request(e.message)
    }
}

fn no_control(field: &'static str, value: &str, max: usize) -> Result<(), FieldError> {
    if value.is_empty() || value.len() > max || value.chars().any(char::is_control) {
        return Err(FieldError::of(
            field,
            format!("{field} must be 1 to {max} bytes without control characters"),
        ));
    }
    Ok(())
}

/// The secret stamped for a provider of `auth_type`: the API key itself, or
/// a Basic pair as the `base64(username:password)` it is sent as.
pub fn credential_secret(
    auth_type: AuthType,
    provider_name: &str,
    api_key: Option<&AccessToken>,
    username: Option<&str>,
    password: Option<&AccessToken>,
) -> Result<AccessToken, FieldError> {
    match auth_type {
        AuthType::ApiKey => {
            if username.is_some() || password.is_some() {
                return Err(FieldError {
                    field: None,
                    message: "an api_key provider takes {\"api_key\"}, not a username and password"
                        .into(),
                });
            }
            let key = api_key.ok_or_else(|| FieldError::of("api_key", "api_key is required"))?;
            no_control("api_key", key.expose(), API_KEY_MAX)?;
            Ok(AccessToken::new(key.expose()))
        }
        AuthType::Basic => {
            if api_key.is_some() {
                return Err(FieldError {
                    field: None,
                    message: "a basic provider takes {\"username\", \"password\"}, not an api_key"
                        .into(),
                });
            }
            let username =
                username.ok_or_else(|| FieldError::of("username", "username is required"))?;
            let password =
                password.ok_or_else(|| FieldError::of("password", "password is required"))?;
            no_control("username", username, USERNAME_MAX)?;
            // RFC 7617 allows an empty password (an API key as the user name).
            if !password.expose().is_empty() {
                no_control("password", password.expose(), PASSWORD_MAX)?;
            }
            if username.contains(':') {
                return Err(FieldError::of(
                    "username",
                    "username must not contain ':' (RFC 7617)",
                ));
            }
            let pair = zeroize::Zeroizing::new(format!("{username}:{}", password.expose()));
            Ok(AccessToken::new(
                base64::engine::general_purpose::STANDARD.encode(pair.as_bytes()),
            ))
        }
        other => Err(FieldError {
            field: None,
            message: format!(
                "provider {provider_name:?} uses {} credentials: {}",
                other.as_str(),
                if other == AuthType::Oauth2 {
                    "the user connects in a browser (POST /v1/connect-sessions)"
                } else {
                    "the service fetches its token itself"
                }
            ),
        }),
    }
}

/// Stores (or replaces) a user's API key or Basic credentials.
pub async fn put_credentials(
    state: &AppState,
    app_id: &str,
    provider_name: &str,
    user: &str,
    input: PutCredentials,
) -> Result<ConnectionView, Error> {
    validate::user_id(user)?;
    let provider = app_provider(state, app_id, provider_name).await?;
    let secret = credential_secret(
        provider.auth_type,
        provider_name,
        input.api_key.as_ref(),
        input.username.as_deref(),
        input.password.as_ref(),
    )?;
    let params = catalog::resolve_params(&provider.settings.connection_params, &input.params)?;
    provider
        .urls(&params)
        .map_err(|e| Error::bad_request(format!("connection parameters: {e}")))?;
    let key = ConnKey {
        app_id: app_id.to_owned(),
        provider: provider.provider.clone(),
        user_id: user.to_owned(),
    };
    store_credentials(state, &key, provider.auth_type, &secret, &params).await?;
    views::get_connection(&state.db, &state.policy, app_id, &key.provider, user).await
}

/// Seals `secret` to the connection `key` and stores it (replacing what
/// was there), and tells the app's webhook.
pub async fn store_credentials(
    state: &AppState,
    key: &ConnKey,
    auth_type: AuthType,
    secret: &AccessToken,
    params: &Values,
) -> Result<(), Error> {
    let sealed = state.vault.seal_str(
        &Aad::connection(&key.app_id, &key.provider, &key.user_id, Field::AccessToken),
        secret.expose(),
    )?;
    connections::upsert_connected(
        &state.db,
        NewConnection {
            key,
            access_token: sealed,
            refresh_token: None,
            expires_at: None,
            scopes: "",
            now: db::now(),
            params: Some(params),
        },
    )
    .await?;
    tracing::info!(
        app_id = %key.app_id,
        provider = %key.provider,
        auth_type = auth_type.as_str(),
        "stored credentials"
    );
    crate::service::webhooks::emit(
        state,
        &key.app_id,
        crate::service::webhooks::Event::Connected,
        &key.provider,
        &key.user_id,
    );
    Ok(())
}

/// When a client-credentials token is due: the refresh skew before it
/// expires (at most half its life); a token without lifetime lives
/// `max_token_lifetime`.
fn due_at(c: &ConnectionRecord, skew: i64, max_lifetime: i64) -> i64 {
    let expires = c
        .expires_at
        .unwrap_or_else(|| c.issued_at.saturating_add(max_lifetime));
    let lifetime = expires.saturating_sub(c.issued_at).max(0);
    expires.saturating_sub(skew.min(lifetime / 2))
}

fn reported(c: &ConnectionRecord, max_lifetime: i64) -> i64 {
    c.expires_at
        .unwrap_or_else(|| c.issued_at.saturating_add(max_lifetime))
}

/// The app-level token of a client-credentials provider, fetched when
/// missing, due or `force`d. Returns it with the connection's parameters.
pub async fn client_credentials_token(
    state: &AppState,
    provider: &ProviderRecord,
    force: bool,
) -> Result<(Served, Values), Error> {
    let key = ConnKey {
        app_id: provider.app_id.clone(),
        provider: provider.provider.clone(),
        user_id: APP_USER.to_owned(),
    };
    let policy = state.policy.with(&provider.policy);
    let (skew, max_lifetime) = (secs(policy.skew), secs(policy.max_token_lifetime));
    let serve = |c: &ConnectionRecord| -> Result<(Served, Values), Error> {
        let token = crate::service::refresh::open_access_token(state, c)?;
        Ok((
            Served {
                access_token: token,
                expires_at: Some(reported(c, max_lifetime)),
            },
            c.params.clone(),
        ))
    };
    let first = connections::get(&state.db, &key).await?;
    if let Some(c) = &first {
        if !force && db::now() < due_at(c, skew, max_lifetime) {
            return serve(c);
        }
    }
    let lock = state.refresh_locks.lock_for(&key);
    let _held = lock.lock().await;
    let current = connections::get(&state.db, &key).await?;
    if let Some(c) = &current {
        let renewed_meanwhile = first
            .as_ref()
            .is_none_or(|f| f.token_version != c.token_version);
        if renewed_meanwhile && db::now() < due_at(c, skew, max_lifetime) {
            return serve(c);
        }
        if force {
            // The app token is fetched anew each time: its issue time is the
            // last refresh.
            if !crate::service::refresh::forced_refresh_allowed(
                c,
                Some(c.issued_at),
                &policy,
                db::now(),
            ) {
                state.metrics.forced_refresh_refused();
                return serve(c);
            }
            state.metrics.forced_refresh_done();
        }
    }
    let params = catalog::resolve_params(&provider.settings.connection_params, &BTreeMap::new())?;
    let token_url = provider
        .token_url_for(&params)
        .map_err(|e| Error::internal("stored token_url is invalid", e))?;
    let extra = provider
        .token_params_for(
            &provider.settings.token_request_params.client_credentials,
            &params,
        )
        .map_err(|e| Error::internal("stored token_request_params are invalid", e))?;
    let secret = state.client_secret(provider)?;
    let scope = provider.scopes.join(&provider.scope_separator);
    let result = state
        .token_client
        .request_with(
            token_url.as_str(),
            &ClientCredentials {
                client_id: &provider.client_id,
                client_secret: &secret,
                auth: provider.client_auth,
            },
            &GrantRequest::ClientCredentials {
                scope: Some(scope.as_str()),
            },
            &extra,
        )
        .await;
    let now = db::now();
    match result {
        Ok(tokens) => {
            let sealed = state.vault.seal_str(
                &Aad::connection(&key.app_id, &key.provider, &key.user_id, Field::AccessToken),
                tokens.access_token.expose(),
            )?;
            let expires_at = tokens
                .expires_in
                .map(|s| now.saturating_add(i64::try_from(s).unwrap_or(i64::MAX)));
            let scopes = tokens.scope.clone().unwrap_or(scope);
            connections::upsert_connected(
                &state.db,
                NewConnection {
                    key: &key,
                    access_token: sealed,
                    refresh_token: None,
                    expires_at,
                    scopes: &scopes,
                    now,
                    params: Some(&params),
                },
            )
            .await?;
            if current.is_none() {
                crate::service::webhooks::emit(
                    state,
                    &key.app_id,
                    crate::service::webhooks::Event::Connected,
                    &key.provider,
                    APP_USER,
                );
            }
            tracing::info!(app_id = %key.app_id, provider = %key.provider, "fetched a client-credentials token");
            Ok((
                Served {
                    access_token: tokens.access_token,
                    expires_at: Some(expires_at.unwrap_or(now.saturating_add(max_lifetime))),
                },
                params,
            ))
        }
        Err(err) => {
            tracing::warn!(app_id = %key.app_id, provider = %key.provider, reason = %err.reason(), "client-credentials token request failed");
            crate::service::webhooks::emit(
                state,
                &key.app_id,
                crate::service::webhooks::Event::RefreshFailed,
                &key.provider,
                APP_USER,
            );
            // A token that is still valid keeps being served.
            if let Some(c) = current.as_ref().filter(|c| !force && c.is_valid_at(now)) {
                return serve(c);
            }
            Err(match err {
                TokenError::Permanent(code) => Error::new(
                    ErrorCode::OauthFailed,
                    format!("the provider refused the client credentials ({code})"),
                ),
                TokenError::Transient(reason) => provider_unavailable(&reason),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_credentials_tokens_are_due_before_they_expire() {
        let c = |expires_at, issued_at| ConnectionRecord {
            key: ConnKey {
                app_id: "a".into(),
                provider: "p".into(),
                user_id: "-".into(),
            },
            access_token: vec![],
            refresh_token: None,
            expires_at,
            scopes: String::new(),
            status: crate::store::connections::ConnectionStatus::Active,
            failure_count: 0,
            last_refresh_at: None,
            last_refresh_error: None,
            last_attempt_at: None,
            retry_at: None,
            issued_at,
            token_version: 1,
            lease_owner: None,
            lease_until: None,
            params: Values::new(),
            created_at: 0,
            updated_at: 0,
        };
        assert_eq!(due_at(&c(Some(3600), 0), 60, 3600), 3540);
        assert_eq!(
            due_at(&c(Some(10), 0), 60, 3600),
            5,
            "half its life at most"
        );
        assert_eq!(due_at(&c(None, 100), 60, 3600), 3640);
        assert_eq!(reported(&c(None, 100), 3600), 3700);
    }
}
