//! The app confirms a finished connect: a flow that returns to the app's
//! `return_to` leaves its tokens in `connect_results` and hands the browser
//! a one-time result; the app's backend, which knows who is logged in,
//! sends `POST /v1/connect-results/confirm {"result", "user"}`. Only when
//! that user is the one the connect link was made for does the connection
//! exist. A victim's browser lured through an attacker's link comes back
//! logged in as the victim, so the attacker's connection is never made.

use super::connect::STATE_TTL_SECS;
use crate::crypto::secrets::{sha256, AccessToken, ConnectResultToken, RefreshToken};
use crate::crypto::vault::{Aad, Field};
use crate::db;
use crate::http::auth::AppAuth;
use crate::http::error::{ApiError, ApiJson};
use crate::oauth::client::TokenSet;
use crate::service::connections::{get_connection, ConnectionView};
pub use crate::service::journalled_connect::SealedTokens;
use crate::service::state::AppState;
use crate::store::connect_results::{self, ConnectResult};
use crate::store::connections::ConnKey;
use crate::validate;
use authstamp_protocol::ErrorCode;
use axum::extract::State;
use axum::Json;
use serde::Deserialize;

/// Seals the tokens of `tokens` with the associated data `aad` gives per field.
pub fn seal_tokens(
    state: &AppState,
    tokens: &TokenSet,
    aad: impl Fn(Field) -> Aad,
) -> Result<SealedTokens, ApiError> {
    let seal = |field, value: &str| state.vault.seal_str(&aad(field), value);
    Ok(SealedTokens {
        access_token: seal(Field::AccessToken, tokens.access_token.expose())?,
        refresh_token: tokens
            .refresh_token
            .as_ref()
            .map(|t| seal(Field::RefreshToken, t.expose()))
            .transpose()?,
        expires_in: tokens.expires_in,
        scope: tokens.scope.clone(),
    })
}

/// Keeps the tokens of a finished authorization (or credentials entered on
/// the connect page) for `key` until the app confirms; `requested_scope`
/// stands when the provider named none. Returns the one-time result for the
/// browser's way back.
pub async fn hold(
    state: &AppState,
    key: &ConnKey,
    requested_scope: &str,
    tokens: &TokenSet,
    params: &crate::template::Values,
    now: i64,
) -> Result<ConnectResultToken, ApiError> {
    let result = ConnectResultToken::generate();
    let result_hash = sha256(result.expose().as_bytes());
    let sealed = seal_tokens(state, tokens, |field| {
        Aad::connect_result(&result_hash, field)
    })?;
    crate::service::journalled_result::insert_or_journal(
        state,
        ConnectResult {
            result_hash: result_hash.to_vec(),
            app_id: key.app_id.clone(),
            provider: key.provider.clone(),
            user_id: key.user_id.clone(),
            token_expires_at: sealed.expires_at(now),
            access_token: sealed.access_token,
            refresh_token: sealed.refresh_token,
            scopes: sealed.scope.unwrap_or_else(|| requested_scope.to_owned()),
            params: params.clone(),
            created_at: now,
            expires_at: now.saturating_add(STATE_TTL_SECS),
        },
    )
    .await?;
    tracing::info!(app_id = %key.app_id, provider = %key.provider, "connect result waiting for the app's confirmation");
    Ok(result)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[derive(utoipa::ToSchema)]
pub struct ConfirmRequest {
    /// `authstamp_result` from the `return_to` URL.
    #[schema(value_type = String)]
    pub result: ConnectResultToken,
    /// The app's user logged in on the browser that came back.
    pub user: String,
}

#[utoipa::path(
    post,
    path = "/v1/connect-results/confirm",
    operation_id = "confirmConnectResult",
    summary = "Confirm a finished connect: the connection becomes active only if user is the one the connect link was made for (else 403 user_mismatch and the tokens are discarded); the result is used up either way",
    tag = "connect",
    security(("appId" = [], "appKey" = [])),
    request_body = ConfirmRequest,
    responses((status = 200, description = "the connection, active", body = ConnectionView)),
)]
/// `POST /v1/connect-results/confirm` (app auth): the connection becomes
/// active if `user` is the user of the connect link; otherwise it is
/// discarded (403 `user_mismatch`). Either way the result is used up.
pub async fn handler(
    State(state): State<AppState>,
    AppAuth(app): AppAuth,
    ApiJson(input): ApiJson<ConfirmRequest>,
) -> Result<Json<ConnectionView>, ApiError> {
    validate::user_id(&input.user)?;
    let now = db::now();
    let result_hash = sha256(input.result.expose().as_bytes());
    crate::service::journalled_result::waiting(&state, &result_hash)?;
    let pending = connect_results::take(&state.db, &app.app_id, &result_hash)
        .await?
        .filter(|r| r.expires_at > now)
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidState,
                "the connect result is unknown, already used or expired",
            )
        })?;
    if pending.user_id != input.user {
        tracing::warn!(app_id = %pending.app_id, provider = %pending.provider, "connect result confirmed for another user than its link's: connection discarded");
        return Err(ApiError::new(
            ErrorCode::UserMismatch,
            "the connect link was made for another user of the app: the connection was discarded",
        ));
    }
    let key = ConnKey {
        app_id: pending.app_id.clone(),
        provider: pending.provider.clone(),
        user_id: pending.user_id.clone(),
    };
    let open = |field, blob: &[u8]| {
        state
            .vault
            .open_string(&Aad::connect_result(&result_hash, field), blob)
    };
    let access = AccessToken::new(open(Field::AccessToken, &pending.access_token)?.as_str());
    let refresh = pending
        .refresh_token
        .as_deref()
        .map(|blob| open(Field::RefreshToken, blob).map(|t| RefreshToken::new(t.as_str())))
        .transpose()?;
    let seal = |field, value: &str| {
        state.vault.seal_str(
            &Aad::connection(&key.app_id, &key.provider, &key.user_id, field),
            value,
        )
    };
    let sealed = SealedTokens {
        access_token: seal(Field::AccessToken, access.expose())?,
        refresh_token: refresh
            .as_ref()
            .map(|t| seal(Field::RefreshToken, t.expose()))
            .transpose()?,
        expires_in: None,
        scope: None,
    };
    super::callback::store_connection_until(
        &state,
        &key,
        sealed,
        pending.token_expires_at,
        &pending.scopes,
        &pending.params,
        now,
    )
    .await?;
    Ok(Json(
        get_connection(
            &state.db,
            &state.policy,
            &key.app_id,
            &key.provider,
            &key.user_id,
        )
        .await?,
    ))
}
