//! App key rotation without downtime: an app holds up to
//! [`MAX_KEYS_PER_APP`] keys at once (table `app_keys`, SHA-256 digests
//! only). `POST /v1/apps/{app_id}/keys` adds a key and shows it once; the
//! older keys stay valid until revoked (`DELETE …/keys/{key_id}`) or, with
//! `grace`, until the grace period ends. An app always keeps one key.

use crate::crypto::secrets::{sha256, AppKey, Digest};
use crate::db::{self, Db};
use crate::error::{ApiError, ApiPath};
use crate::http::auth::AdminAuth;
use crate::service::state::AppState;
pub use crate::store::apps::new_key_id;
use crate::store::{self, apps};
use authstamp_protocol::ErrorCode;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Keys valid at once per app (bounds the work of every authentication).
pub const MAX_KEYS_PER_APP: i64 = 10;
/// Longest grace period.
pub const MAX_GRACE: Duration = Duration::from_secs(90 * 24 * 3600);

/// Digests of the app's keys that are valid now.
pub async fn valid_digests(db: &Db, app_id: &str) -> Result<Vec<Digest>, sqlx::Error> {
    let hashes = store::app_keys::valid_digests(db, app_id, db::now(), MAX_KEYS_PER_APP).await?;
    Ok(hashes
        .iter()
        .filter_map(|hash| Digest::try_from(hash.as_slice()).ok())
        .collect())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    /// The other keys expire this long from now (absent: valid until revoked).
    #[serde(default, with = "humantime_serde")]
    pub grace: Option<Duration>,
}

/// The only place a new key is shown.
#[derive(Serialize)]
pub struct NewKey {
    pub app_id: String,
    pub key_id: String,
    pub app_key: String,
    pub created_at: i64,
    /// When the app's other keys stop working (with `grace`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub others_expire_at: Option<i64>,
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKey")
            .field("app_id", &self.app_id)
            .field("key_id", &self.key_id)
            .field("app_key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Serialize)]
pub struct KeyView {
    pub key_id: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub valid: bool,
}

async fn require_app(db: &Db, app_id: &str) -> Result<(), ApiError> {
    apps::get(db, app_id)
        .await?
        .map(|_| ())
        .ok_or_else(|| ApiError::not_found(format!("no app {app_id:?}")))
}

/// Inside a [`Db::begin_write`] transaction: the app exists, and concurrent
/// key changes of this app wait until this transaction ends (PostgreSQL: the
/// app row's lock; SQLite: the database write lock is already held).
async fn lock_app(
    db: &Db,
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    app_id: &str,
) -> Result<(), ApiError> {
    if apps::lock(db, tx, app_id).await? {
        Ok(())
    } else {
        Err(ApiError::not_found(format!("no app {app_id:?}")))
    }
}

/// Adds a key. The count check and the insert are one write transaction, so
/// concurrent rotations never pass [`MAX_KEYS_PER_APP`].
pub async fn rotate(db: &Db, app_id: &str, input: RotateKey) -> Result<NewKey, ApiError> {
    if input.grace.is_some_and(|g| g > MAX_GRACE) {
        return Err(ApiError::bad_request("grace must be at most 90 days"));
    }
    let key = AppKey::generate();
    let key_id = new_key_id();
    let mut tx = db.begin_write().await?;
    lock_app(db, &mut tx, app_id).await?;
    let now = db::now();
    let valid = store::app_keys::count_valid(&mut tx, app_id, None, now).await?;
    if valid >= MAX_KEYS_PER_APP {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!(
                "the app has {valid} valid keys: revoke one first (at most {MAX_KEYS_PER_APP})"
            ),
        ));
    }
    let others_expire_at = input
        .grace
        .map(|g| now.saturating_add(i64::try_from(g.as_secs()).unwrap_or(i64::MAX)));
    if let Some(at) = others_expire_at {
        store::app_keys::expire_valid_at(&mut tx, app_id, at).await?;
    }
    let key_hash = sha256(key.expose().as_bytes());
    store::app_keys::insert(&mut tx, app_id, &key_id, &key_hash, now).await?;
    tx.commit().await?;
    tracing::info!(app_id, key_id = %key_id, others_expire_at, "added an app key");
    Ok(NewKey {
        app_id: app_id.to_owned(),
        key_id,
        app_key: key.expose().to_owned(),
        created_at: now,
        others_expire_at,
    })
}

pub async fn list(db: &Db, app_id: &str) -> Result<Vec<KeyView>, ApiError> {
    require_app(db, app_id).await?;
    let now = db::now();
    Ok(store::app_keys::list(db, app_id)
        .await?
        .into_iter()
        .map(|row| KeyView {
            key_id: row.key_id,
            created_at: row.created_at,
            expires_at: row.expires_at,
            valid: row.expires_at.is_none_or(|at| at > now),
        })
        .collect())
}

/// Deletes a key unless it is the app's last valid one; check and delete are
/// one write transaction, so concurrent revocations never remove them all.
pub async fn revoke(db: &Db, app_id: &str, key_id: &str) -> Result<(), ApiError> {
    let mut tx = db.begin_write().await?;
    lock_app(db, &mut tx, app_id).await?;
    let others = store::app_keys::count_valid(&mut tx, app_id, Some(key_id), db::now()).await?;
    if others == 0 {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "an app keeps at least one valid key: add a new one before revoking this one",
        ));
    }
    if !store::app_keys::delete(&mut tx, app_id, key_id).await? {
        return Err(ApiError::not_found(format!(
            "app {app_id:?} has no key {key_id:?}"
        )));
    }
    tx.commit().await?;
    tracing::info!(app_id, key_id, "revoked an app key");
    Ok(())
}

// HTTP handlers (admin).

pub async fn rotate_handler(
    State(state): State<AppState>,
    _admin: AdminAuth,
    ApiPath(app_id): ApiPath<String>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<NewKey>), ApiError> {
    let body = body.map_err(|rejection| ApiError::for_status(rejection.status()))?;
    let input = if body.iter().all(u8::is_ascii_whitespace) {
        RotateKey::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?
    };
    let created = rotate(&state.db, &app_id, input).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

pub async fn list_handler(
    State(state): State<AppState>,
    _admin: AdminAuth,
    ApiPath(app_id): ApiPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let keys = list(&state.db, &app_id).await?;
    Ok(Json(serde_json::json!({ "keys": keys })))
}

pub async fn revoke_handler(
    State(state): State<AppState>,
    _admin: AdminAuth,
    ApiPath((app_id, key_id)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    revoke(&state.db, &app_id, &key_id).await?;
    Ok(StatusCode::NO_CONTENT)
}
