//! `connect_results`: tokens of a finished authorization held until the
//! app's backend confirms that the browser which came back is the user the
//! connect link was made for. Keyed by the SHA-256 of the one-time result
//! and taken with `DELETE … RETURNING`, so each is used at most once.

use crate::db::Db;
use sqlx::any::AnyRow;
use sqlx::Row as _;

#[derive(Clone)]
pub struct ConnectResult {
    pub result_hash: Vec<u8>,
    pub app_id: String,
    pub provider: String,
    pub user_id: String,
    /// Vault envelopes sealed to this row (`Aad::connect_result`).
    pub access_token: Vec<u8>,
    pub refresh_token: Option<Vec<u8>>,
    pub token_expires_at: Option<i64>,
    pub scopes: String,
    pub params: crate::template::Values,
    pub created_at: i64,
    pub expires_at: i64,
}

impl std::fmt::Debug for ConnectResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectResult")
            .field("app_id", &self.app_id)
            .field("provider", &self.provider)
            .field("user_id", &self.user_id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

const COLUMNS: &str = "result_hash, app_id, provider, user_id, access_token, refresh_token, \
    token_expires_at, scopes, params, created_at, expires_at";

impl ConnectResult {
    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            result_hash: row.try_get("result_hash")?,
            app_id: row.try_get("app_id")?,
            provider: row.try_get("provider")?,
            user_id: row.try_get("user_id")?,
            access_token: row.try_get("access_token")?,
            refresh_token: row.try_get("refresh_token")?,
            token_expires_at: row.try_get("token_expires_at")?,
            scopes: row.try_get("scopes")?,
            params: super::json_column(&row.try_get::<String, _>("params")?)?,
            created_at: row.try_get("created_at")?,
            expires_at: row.try_get("expires_at")?,
        })
    }
}

pub async fn insert(db: &Db, r: &ConnectResult) -> Result<(), sqlx::Error> {
    insert_with(db, r, "").await.map(|_| ())
}

/// Inserts `r` unless its result is there already (a journalled result
/// written twice: by its task and by a replay). Returns whether it inserted.
pub async fn insert_unless_present(db: &Db, r: &ConnectResult) -> Result<bool, sqlx::Error> {
    insert_with(db, r, " ON CONFLICT (result_hash) DO NOTHING").await
}

async fn insert_with(db: &Db, r: &ConnectResult, on_conflict: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(&format!(
        "INSERT INTO connect_results ({COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11){on_conflict}"
    ))
    .bind(&r.result_hash)
    .bind(&r.app_id)
    .bind(&r.provider)
    .bind(&r.user_id)
    .bind(&r.access_token)
    .bind(&r.refresh_token)
    .bind(r.token_expires_at)
    .bind(&r.scopes)
    .bind(super::to_json(&r.params)?)
    .bind(r.created_at)
    .bind(r.expires_at)
    .execute(db.pool())
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Removes and returns the result of `app_id` (expired or not: the caller
/// checks); another app's result is left alone and not returned.
pub async fn take(
    db: &Db,
    app_id: &str,
    result_hash: &[u8],
) -> Result<Option<ConnectResult>, sqlx::Error> {
    sqlx::query(&format!(
        "DELETE FROM connect_results WHERE result_hash = $1 AND app_id = $2 RETURNING {COLUMNS}"
    ))
    .bind(result_hash)
    .bind(app_id)
    .fetch_optional(db.pool())
    .await?
    .as_ref()
    .map(ConnectResult::from_row)
    .transpose()
}

/// Rows waiting for confirmation (tests and the operator's view).
pub async fn count(db: &Db) -> Result<i64, sqlx::Error> {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM connect_results")
        .fetch_one(db.pool())
        .await?;
    Ok(n)
}
