//! `POST /v1/token-lookup`: the filter asks what to stamp for (app,
//! provider, user). Tokens inside the refresh skew are refreshed first, one
//! refresh per connection at a time in this process.

use crate::auth::AppAuth;
use crate::db;
use crate::error::{ApiError, ApiJson};
use crate::metrics::{Grant, RefreshOutcome};
use crate::oauth::client::{ClientCredentials, GrantRequest, TokenError};
use crate::oauth::connect::app_provider;
use crate::secrets::{AccessToken, ClientSecret, RefreshToken};
use crate::store::connections::{self, ConnKey, ConnectionRecord, ConnectionStatus, Refreshed};
use crate::store::providers::ProviderRecord;
use crate::validate::{self, TOKEN_PLACEHOLDER};
use crate::vault::{Aad, Field};
use crate::AppState;
use authstamp_protocol::{
    ErrorCode, StampHeader, TokenLookupRequest, TokenLookupResponse, Upstream,
};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;
use url::Url;

pub async fn handler(
    State(state): State<AppState>,
    app: Result<AppAuth, ApiError>,
    body: Result<ApiJson<TokenLookupRequest>, ApiError>,
) -> Response {
    let started = Instant::now();
    let result = match (app, body) {
        (Ok(AppAuth(app)), Ok(ApiJson(request))) => lookup(&state, &app.app_id, &request).await,
        (Err(err), _) | (_, Err(err)) => Err(err),
    };
    state.metrics.lookup(
        result.as_ref().map(|_| ()).map_err(ApiError::code),
        started.elapsed(),
    );
    match result {
        Ok(answer) => Json(answer).into_response(),
        Err(err) => err.into_response(),
    }
}

/// The token to stamp and when it expires.
struct Served {
    access_token: AccessToken,
    expires_at: Option<i64>,
}

pub async fn lookup(
    state: &AppState,
    app_id: &str,
    request: &TokenLookupRequest,
) -> Result<TokenLookupResponse, ApiError> {
    validate::user_id(&request.user)?;
    let provider = app_provider(state, app_id, &request.provider).await?;
    let key = ConnKey {
        app_id: app_id.to_owned(),
        provider: provider.provider.clone(),
        user_id: request.user.clone(),
    };
    let connection = connections::get(&state.db, &key).await?.ok_or_else(|| {
        ApiError::new(
            ErrorCode::NotConnected,
            "the user has not connected this provider",
        )
    })?;
    if connection.status == ConnectionStatus::ReauthRequired {
        return Err(reauth_required());
    }
    let now = db::now();
    let skew = i64::try_from(state.refresh_skew.as_secs()).unwrap_or(i64::MAX);
    let needs_refresh = request.force_refresh
        || connection
            .expires_at
            .is_some_and(|at| at.saturating_sub(now) <= skew);
    let served = if needs_refresh {
        refresh(state, &provider, connection, request.force_refresh).await?
    } else {
        Served {
            access_token: open_access_token(state, &connection)?,
            expires_at: connection.expires_at,
        }
    };
    answer(&provider, &served)
}

fn reauth_required() -> ApiError {
    ApiError::new(
        ErrorCode::ReauthRequired,
        "the provider no longer accepts this connection; the user must connect again",
    )
}

fn provider_unavailable(reason: &str) -> ApiError {
    ApiError::new(
        ErrorCode::ProviderUnavailable,
        format!("the provider's token endpoint failed ({reason}) and no valid token is left"),
    )
}

fn open_access_token(state: &AppState, c: &ConnectionRecord) -> Result<AccessToken, ApiError> {
    let aad = Aad::connection(
        &c.key.app_id,
        &c.key.provider,
        &c.key.user_id,
        Field::AccessToken,
    );
    Ok(AccessToken::new(
        state.vault.open_string(&aad, &c.access_token)?.as_str(),
    ))
}

fn answer(provider: &ProviderRecord, served: &Served) -> Result<TokenLookupResponse, ApiError> {
    let api = Url::parse(&provider.api_base_url)
        .map_err(|e| ApiError::internal("stored api_base_url is invalid", e))?;
    let host = api
        .host_str()
        .ok_or_else(|| ApiError::internal("stored api_base_url has no host", "no host"))?;
    // `url` already drops a port that is the scheme's default.
    let authority = match api.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    Ok(TokenLookupResponse {
        header: StampHeader {
            name: provider.header_name.clone(),
            value: provider.header_format.replacen(
                TOKEN_PLACEHOLDER,
                served.access_token.expose(),
                1,
            ),
        },
        upstream: Upstream {
            scheme: api.scheme().to_owned(),
            authority,
            base_path: api.path().trim_end_matches('/').to_owned(),
        },
        expires_at: served.expires_at.and_then(|at| u64::try_from(at).ok()),
    })
}

/// Refreshes the connection, or uses the refresh another caller finished
/// while this one waited for the connection's lock.
async fn refresh(
    state: &AppState,
    provider: &ProviderRecord,
    snapshot: ConnectionRecord,
    force: bool,
) -> Result<Served, ApiError> {
    let now = db::now();
    if snapshot.refresh_token.is_none() {
        // Nothing to refresh with: serve what is left, if anything.
        if !force && snapshot.is_valid_at(now) {
            return Ok(Served {
                access_token: open_access_token(state, &snapshot)?,
                expires_at: snapshot.expires_at,
            });
        }
        return Err(reauth_required());
    }

    let lock = state.refresh_locks.lock_for(&snapshot.key);
    let _guard = lock.lock().await;
    let now = db::now();
    let current = connections::get(&state.db, &snapshot.key)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::NotConnected, "the connection was removed"))?;
    if current.status == ConnectionStatus::ReauthRequired {
        return Err(reauth_required());
    }
    // Every write re-seals the access token with a fresh nonce, so a changed
    // blob (or failure count) means another caller finished a refresh.
    let token_changed = current.access_token != snapshot.access_token;
    if token_changed || current.failure_count != snapshot.failure_count {
        if current.is_valid_at(now) {
            return Ok(Served {
                access_token: open_access_token(state, &current)?,
                expires_at: current.expires_at,
            });
        }
        if !token_changed {
            return Err(provider_unavailable(
                current
                    .last_refresh_error
                    .as_deref()
                    .unwrap_or("earlier attempt"),
            ));
        }
    }
    let Some(refresh_blob) = current.refresh_token.as_ref() else {
        return Err(reauth_required());
    };

    let key = &current.key;
    let aad = |field| Aad::connection(&key.app_id, &key.provider, &key.user_id, field);
    let refresh_token = RefreshToken::new(
        state
            .vault
            .open_string(&aad(Field::RefreshToken), refresh_blob)?
            .as_str(),
    );
    let secret = ClientSecret::new(
        state
            .vault
            .open_string(
                &Aad::provider_secret(&provider.app_id, &provider.provider),
                &provider.client_secret,
            )?
            .as_str(),
    );
    state.metrics.provider_call(Grant::RefreshToken);
    let result = state
        .token_client
        .request(
            &provider.token_url,
            &ClientCredentials {
                client_id: &provider.client_id,
                client_secret: &secret,
                auth: provider.client_auth,
            },
            &GrantRequest::RefreshToken {
                refresh_token: &refresh_token,
            },
        )
        .await;
    let now = db::now();
    match result {
        Ok(tokens) => {
            let expires_at = tokens
                .expires_in
                .map(|secs| now.saturating_add(i64::try_from(secs).unwrap_or(i64::MAX)));
            let access_blob = state
                .vault
                .seal_str(&aad(Field::AccessToken), tokens.access_token.expose())?;
            let refresh_blob = tokens
                .refresh_token
                .as_ref()
                .map(|t| state.vault.seal_str(&aad(Field::RefreshToken), t.expose()))
                .transpose()?;
            connections::store_refreshed(
                &state.db,
                Refreshed {
                    key,
                    access_token: access_blob,
                    refresh_token: refresh_blob,
                    expires_at,
                    scopes: tokens.scope.as_deref(),
                    now,
                },
            )
            .await?;
            state.metrics.refresh(RefreshOutcome::Ok);
            tracing::info!(app_id = %key.app_id, provider = %key.provider, rotated = tokens.refresh_token.is_some(), "refreshed access token");
            Ok(Served {
                access_token: tokens.access_token,
                expires_at,
            })
        }
        Err(err) => {
            let permanent = err.is_permanent();
            connections::record_refresh_failure(&state.db, key, permanent, err.reason(), now)
                .await?;
            tracing::warn!(app_id = %key.app_id, provider = %key.provider, reason = %err.reason(), permanent, "refresh failed");
            match err {
                TokenError::Permanent(_) => {
                    state.metrics.refresh(RefreshOutcome::Permanent);
                    Err(reauth_required())
                }
                TokenError::Transient(reason) => {
                    state.metrics.refresh(RefreshOutcome::Transient);
                    if current.is_valid_at(now) {
                        Ok(Served {
                            access_token: open_access_token(state, &current)?,
                            expires_at: current.expires_at,
                        })
                    } else {
                        Err(provider_unavailable(&reason))
                    }
                }
            }
        }
    }
}

/// One async mutex per connection, held while refreshing it. Entries are
/// weak so that idle connections cost nothing.
#[derive(Debug, Default)]
pub struct RefreshLocks {
    locks: Mutex<HashMap<ConnKey, Weak<tokio::sync::Mutex<()>>>>,
}

impl RefreshLocks {
    pub fn lock_for(&self, key: &ConnKey) -> Arc<tokio::sync::Mutex<()>> {
        // A poisoned map is still a valid map.
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(lock) = locks.get(key).and_then(Weak::upgrade) {
            return lock;
        }
        if locks.len() >= 1024 {
            locks.retain(|_, weak| weak.strong_count() > 0);
        }
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        locks.insert(key.clone(), Arc::downgrade(&lock));
        lock
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(user: &str) -> ConnKey {
        ConnKey {
            app_id: "app".into(),
            provider: "p".into(),
            user_id: user.into(),
        }
    }

    #[test]
    fn one_lock_per_live_connection() {
        let locks = RefreshLocks::default();
        let a = locks.lock_for(&key("a"));
        let a2 = locks.lock_for(&key("a"));
        let b = locks.lock_for(&key("b"));
        assert!(Arc::ptr_eq(&a, &a2));
        assert!(!Arc::ptr_eq(&a, &b));
        drop((a, a2));
        // Dropped locks are recreated, not resurrected.
        let a3 = locks.lock_for(&key("a"));
        assert_eq!(Arc::strong_count(&a3), 1);
    }
}
