//! `webhook_outbox`: events waiting for delivery to their app's webhook.
//! A replica claims due rows with one conditional `UPDATE … RETURNING`
//! (a lease: `claimed_by`, `claimed_until`), so each attempt runs once
//! across replicas and a dead replica's claims expire.

use crate::db::Db;

/// A claimed event.
#[derive(Clone, Debug)]
pub struct OutboxRow {
    pub id: String,
    pub app_id: String,
    /// The delivery's JSON body, exactly as it is sent every time.
    pub payload: String,
    pub attempts: i64,
}

pub async fn insert(
    db: &Db,
    id: &str,
    app_id: &str,
    payload: &str,
    now_ms: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO webhook_outbox (id, app_id, payload, attempts, next_attempt_at, created_at) \
         VALUES ($1, $2, $3, 0, $4, $4)",
    )
    .bind(id)
    .bind(app_id)
    .bind(payload)
    .bind(now_ms)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Claims up to `limit` due rows for `owner` until `until_ms`.
pub async fn claim(
    db: &Db,
    owner: &str,
    now_ms: i64,
    until_ms: i64,
    limit: i64,
) -> Result<Vec<OutboxRow>, sqlx::Error> {
    // The claim condition is repeated outside the subquery: a row claimed by
    // another replica meanwhile fails it when PostgreSQL re-checks the row.
    let rows: Vec<(String, String, String, i64)> = sqlx::query_as(
        "UPDATE webhook_outbox SET claimed_by = $1, claimed_until = $3 \
         WHERE id IN (SELECT id FROM webhook_outbox \
             WHERE next_attempt_at <= $2 AND (claimed_until IS NULL OR claimed_until < $2) \
             ORDER BY next_attempt_at LIMIT $4) \
           AND next_attempt_at <= $2 AND (claimed_until IS NULL OR claimed_until < $2) \
         RETURNING id, app_id, payload, attempts",
    )
    .bind(owner)
    .bind(now_ms)
    .bind(until_ms)
    .bind(limit)
    .fetch_all(db.pool())
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, app_id, payload, attempts)| OutboxRow {
            id,
            app_id,
            payload,
            attempts,
        })
        .collect())
}

/// Delivered or given up: the row goes.
pub async fn delete(db: &Db, id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM webhook_outbox WHERE id = $1")
        .bind(id)
        .execute(db.pool())
        .await?;
    Ok(())
}

/// A failed attempt: counted, released, due again at `next_ms`.
pub async fn reschedule(
    db: &Db,
    id: &str,
    owner: &str,
    next_ms: i64,
    error: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE webhook_outbox SET attempts = attempts + 1, next_attempt_at = $3, \
           last_error = $4, claimed_by = NULL, claimed_until = NULL \
         WHERE id = $1 AND claimed_by = $2",
    )
    .bind(id)
    .bind(owner)
    .bind(next_ms)
    .bind(error)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Rows waiting (metrics and tests).
pub async fn pending(db: &Db) -> Result<i64, sqlx::Error> {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM webhook_outbox")
        .fetch_one(db.pool())
        .await?;
    Ok(n)
}
