//! `apps`: an app id, the SHA-256 of its key and where connect flows may
//! return to.

use crate::crypto::secrets::{hex, random_bytes};
use crate::db::Db;
use sqlx::any::AnyRow;
use sqlx::Row as _;

#[derive(Clone, Debug)]
pub struct AppRecord {
    pub app_id: String,
    pub name: String,
    pub key_hash: Vec<u8>,
    pub allowed_return_to: Vec<String>,
    pub created_at: i64,
}

impl AppRecord {
    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            app_id: row.try_get("app_id")?,
            name: row.try_get("name")?,
            key_hash: row.try_get("key_hash")?,
            allowed_return_to: super::json_column(&row.try_get::<String, _>("allowed_return_to")?)?,
            created_at: row.try_get("created_at")?,
        })
    }
}

/// Inserts the app and its first key (`app_keys`, see `app_keys.rs`) in one
/// transaction.
pub async fn insert(db: &Db, app: &AppRecord) -> Result<(), sqlx::Error> {
    let mut tx = db.pool().begin().await?;
    sqlx::query(
        "INSERT INTO apps (app_id, name, key_hash, allowed_return_to, created_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&app.app_id)
    .bind(&app.name)
    .bind(&app.key_hash)
    .bind(super::to_json(&app.allowed_return_to)?)
    .bind(app.created_at)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO app_keys (app_id, key_id, key_hash, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, NULL)",
    )
    .bind(&app.app_id)
    .bind(new_key_id())
    .bind(&app.key_hash)
    .bind(app.created_at)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

pub async fn get(db: &Db, app_id: &str) -> Result<Option<AppRecord>, sqlx::Error> {
    sqlx::query(
        "SELECT app_id, name, key_hash, allowed_return_to, created_at FROM apps WHERE app_id = $1",
    )
    .bind(app_id)
    .fetch_optional(db.pool())
    .await?
    .as_ref()
    .map(AppRecord::from_row)
    .transpose()
}

/// A fresh id of an app key.
pub fn new_key_id() -> String {
    format!("key_{}", hex(&random_bytes::<6>()))
}

/// Inside a write transaction: whether the app exists; on PostgreSQL the
/// app row is locked until the transaction ends (SQLite: the database
/// write lock is already held).
pub async fn lock(
    db: &Db,
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    app_id: &str,
) -> Result<bool, sqlx::Error> {
    let sql = match db.backend() {
        crate::db::Backend::Sqlite => "SELECT app_id FROM apps WHERE app_id = $1",
        crate::db::Backend::Postgres => "SELECT app_id FROM apps WHERE app_id = $1 FOR UPDATE",
    };
    let found: Option<(String,)> = sqlx::query_as(sql)
        .bind(app_id)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(found.is_some())
}
