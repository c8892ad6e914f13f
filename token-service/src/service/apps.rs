//! Apps and their keys: creating an app, and key rotation without
//! downtime. An app holds up to [`MAX_KEYS_PER_APP`] keys at once (table
//! `app_keys`, SHA-256 digests only); a new key is shown once, the older
//! ones stay valid until revoked or, with `grace`, until the grace period
//! ends. An app always keeps one key.

use crate::crypto::secrets::{hex, random_bytes, sha256, AppKey, Digest};
use crate::db::{self, Db};
use crate::error::Error;
use crate::store;
pub use crate::store::apps::new_key_id;
use crate::store::apps::{self, AppRecord};
use crate::validate;
use authstamp_protocol::ErrorCode;
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[derive(utoipa::ToSchema)]
pub struct CreateApp {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub allowed_return_to: Vec<String>,
}

/// The only place an app key is ever shown.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CreatedApp {
    pub app_id: String,
    pub app_key: String,
}

impl std::fmt::Debug for CreatedApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedApp")
            .field("app_id", &self.app_id)
            .field("app_key", &"<redacted>")
            .finish()
    }
}

pub async fn create_app(db: &Db, input: CreateApp) -> Result<CreatedApp, Error> {
    let name = input.name.unwrap_or_default();
    validate::plain_text("name", &name, 200, false)?;
    if input.allowed_return_to.len() > 50 {
        return Err(Error::bad_request("at most 50 allowed_return_to entries"));
    }
    let mut allowed = Vec::with_capacity(input.allowed_return_to.len());
    for entry in &input.allowed_return_to {
        let url = validate::http_url("allowed_return_to", entry)?;
        if url.query().is_some() {
            return Err(Error::bad_request(
                "allowed_return_to entries must not contain a query",
            ));
        }
        allowed.push(url.to_string());
    }
    let key = AppKey::generate();
    let record = AppRecord {
        app_id: format!("app_{}", hex(&random_bytes::<12>())),
        name,
        key_hash: sha256(key.expose().as_bytes()).to_vec(),
        allowed_return_to: allowed,
        created_at: db::now(),
    };
    apps::insert(db, &record).await?;
    tracing::info!(app_id = %record.app_id, "created app");
    Ok(CreatedApp {
        app_id: record.app_id,
        app_key: key.expose().to_owned(),
    })
}

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
#[derive(utoipa::ToSchema)]
pub struct RotateKey {
    /// The other keys expire this long from now (absent: valid until revoked).
    #[serde(default, with = "humantime_serde")]
    #[schema(value_type = Option<String>)]
    pub grace: Option<Duration>,
}

/// The only place a new key is shown.
#[derive(Serialize, utoipa::ToSchema)]
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

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeyView {
    pub key_id: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub valid: bool,
}

/// The app `app_id`, or `not_found`.
pub async fn require(db: &Db, app_id: &str) -> Result<AppRecord, Error> {
    apps::get(db, app_id)
        .await?
        .ok_or_else(|| Error::not_found(format!("no app {app_id:?}")))
}

/// Inside a [`Db::begin_write`] transaction: the app exists, and concurrent
/// key changes of this app wait until this transaction ends (PostgreSQL: the
/// app row's lock; SQLite: the database write lock is already held).
async fn lock_app(
    db: &Db,
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    app_id: &str,
) -> Result<(), Error> {
    if apps::lock(db, tx, app_id).await? {
        Ok(())
    } else {
        Err(Error::not_found(format!("no app {app_id:?}")))
    }
}

/// Adds a key. The count check and the insert are one write transaction, so
/// concurrent rotations never pass [`MAX_KEYS_PER_APP`].
pub async fn rotate(db: &Db, app_id: &str, input: RotateKey) -> Result<NewKey, Error> {
    if input.grace.is_some_and(|g| g > MAX_GRACE) {
        return Err(Error::bad_request("grace must be at most 90 days"));
    }
    let key = AppKey::generate();
    let key_id = new_key_id();
    let mut tx = db.begin_write().await?;
    lock_app(db, &mut tx, app_id).await?;
    let now = db::now();
    let valid = store::app_keys::count_valid(&mut tx, app_id, None, now).await?;
    if valid >= MAX_KEYS_PER_APP {
        return Err(Error::new(
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

pub async fn list(db: &Db, app_id: &str) -> Result<Vec<KeyView>, Error> {
    require(db, app_id).await?;
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
pub async fn revoke(db: &Db, app_id: &str, key_id: &str) -> Result<(), Error> {
    let mut tx = db.begin_write().await?;
    lock_app(db, &mut tx, app_id).await?;
    let others = store::app_keys::count_valid(&mut tx, app_id, Some(key_id), db::now()).await?;
    if others == 0 {
        return Err(Error::new(
            ErrorCode::Conflict,
            "an app keeps at least one valid key: add a new one before revoking this one",
        ));
    }
    if !store::app_keys::delete(&mut tx, app_id, key_id).await? {
        return Err(Error::not_found(format!(
            "app {app_id:?} has no key {key_id:?}"
        )));
    }
    tx.commit().await?;
    tracing::info!(app_id, key_id, "revoked an app key");
    Ok(())
}
