//! `app_keys`: up to a few keys per app, SHA-256 digests only; a key with
//! `expires_at` stops working then.

use crate::db::Db;

type Tx = sqlx::Transaction<'static, sqlx::Any>;

/// One key of an app, without its digest.
#[derive(Debug)]
pub struct KeyRow {
    pub key_id: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
}

/// Digests of the app's keys valid at `now`, at most `limit`.
pub async fn valid_digests(
    db: &Db,
    app_id: &str,
    now: i64,
    limit: i64,
) -> Result<Vec<Vec<u8>>, sqlx::Error> {
    let rows: Vec<(Vec<u8>,)> = sqlx::query_as(
        "SELECT key_hash FROM app_keys WHERE app_id = $1 \
         AND (expires_at IS NULL OR expires_at > $2) LIMIT $3",
    )
    .bind(app_id)
    .bind(now)
    .bind(limit)
    .fetch_all(db.pool())
    .await?;
    Ok(rows.into_iter().map(|(hash,)| hash).collect())
}

/// Keys of the app valid at `now`, leaving out `except_key`.
pub async fn count_valid(
    tx: &mut Tx,
    app_id: &str,
    except_key: Option<&str>,
    now: i64,
) -> Result<i64, sqlx::Error> {
    let (count,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM app_keys WHERE app_id = $1 AND key_id <> $2 \
         AND (expires_at IS NULL OR expires_at > $3)",
    )
    .bind(app_id)
    .bind(except_key.unwrap_or(""))
    .bind(now)
    .fetch_one(&mut **tx)
    .await?;
    Ok(count)
}

/// Every key of the app still valid at `at` expires at `at`.
pub async fn expire_valid_at(tx: &mut Tx, app_id: &str, at: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE app_keys SET expires_at = $2 WHERE app_id = $1 \
         AND (expires_at IS NULL OR expires_at > $2)",
    )
    .bind(app_id)
    .bind(at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A new key, valid until revoked.
pub async fn insert(
    tx: &mut Tx,
    app_id: &str,
    key_id: &str,
    key_hash: &[u8],
    created_at: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO app_keys (app_id, key_id, key_hash, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, NULL)",
    )
    .bind(app_id)
    .bind(key_id)
    .bind(key_hash.to_vec())
    .bind(created_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The app's keys, oldest first.
pub async fn list(db: &Db, app_id: &str) -> Result<Vec<KeyRow>, sqlx::Error> {
    let rows: Vec<(String, i64, Option<i64>)> = sqlx::query_as(
        "SELECT key_id, created_at, expires_at FROM app_keys WHERE app_id = $1 \
         ORDER BY created_at, key_id",
    )
    .bind(app_id)
    .fetch_all(db.pool())
    .await?;
    Ok(rows
        .into_iter()
        .map(|(key_id, created_at, expires_at)| KeyRow {
            key_id,
            created_at,
            expires_at,
        })
        .collect())
}

/// Deletes one key; `false`: the app has no such key.
pub async fn delete(tx: &mut Tx, app_id: &str, key_id: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM app_keys WHERE app_id = $1 AND key_id = $2")
        .bind(app_id)
        .bind(key_id)
        .execute(&mut **tx)
        .await?;
    Ok(done.rows_affected() > 0)
}
