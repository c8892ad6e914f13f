//! `webhooks`: one webhook per app, its secret a vault envelope.

use crate::db::Db;

/// A stored webhook.
pub struct WebhookRecord {
    pub app_id: String,
    pub url: String,
    /// Vault envelope.
    pub secret: Vec<u8>,
    pub created_at: i64,
    pub updated_at: i64,
}

pub async fn get(db: &Db, app_id: &str) -> Result<Option<WebhookRecord>, sqlx::Error> {
    let row: Option<(String, String, Vec<u8>, i64, i64)> = sqlx::query_as(
        "SELECT app_id, url, secret, created_at, updated_at FROM webhooks WHERE app_id = $1",
    )
    .bind(app_id)
    .fetch_optional(db.pool())
    .await?;
    Ok(row.map(
        |(app_id, url, secret, created_at, updated_at)| WebhookRecord {
            app_id,
            url,
            secret,
            created_at,
            updated_at,
        },
    ))
}

/// Inserts or replaces the webhook of `app_id`.
pub async fn upsert(
    db: &Db,
    app_id: &str,
    url: &str,
    sealed_secret: &[u8],
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO webhooks (app_id, url, secret, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $4) ON CONFLICT (app_id) DO UPDATE SET \
         url = excluded.url, secret = excluded.secret, updated_at = excluded.updated_at",
    )
    .bind(app_id)
    .bind(url)
    .bind(sealed_secret.to_vec())
    .bind(now)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Removes the webhook of `app_id`; `false`: it had none.
pub async fn delete(db: &Db, app_id: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM webhooks WHERE app_id = $1")
        .bind(app_id)
        .execute(db.pool())
        .await?;
    Ok(done.rows_affected() > 0)
}
