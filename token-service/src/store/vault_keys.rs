//! `vault_keys`: one row per key version ever activated, with a check blob
//! only that version's key opens; the highest version is the active one.

use crate::db::{self, Db};
use std::collections::BTreeMap;

/// Every registered version and its check blob.
pub async fn all(db: &Db) -> Result<BTreeMap<u32, Vec<u8>>, sqlx::Error> {
    let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as("SELECT version, key_check FROM vault_keys")
        .fetch_all(db.pool())
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(version, check)| Some((u32::try_from(version).ok()?, check)))
        .collect())
}

/// The active (highest) key version and when it was activated (unix
/// seconds), for the key-age gauge of `/metrics`.
pub async fn active(db: &Db) -> Result<Option<(u32, i64)>, sqlx::Error> {
    let row: Option<(i64, i64)> =
        sqlx::query_as("SELECT version, created_at FROM vault_keys ORDER BY version DESC LIMIT 1")
            .fetch_optional(db.pool())
            .await?;
    Ok(row.and_then(|(version, at)| Some((u32::try_from(version).ok()?, at))))
}

/// Registers `version` with its check blob; a version already there stays.
pub async fn insert(db: &Db, version: u32, check: &[u8]) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO vault_keys (version, key_check, created_at) VALUES ($1, $2, $3) \
         ON CONFLICT (version) DO NOTHING",
    )
    .bind(i64::from(version))
    .bind(check)
    .bind(db::now())
    .execute(db.pool())
    .await?;
    Ok(())
}
