//! `service_leases`: jobs that run once across replicas take a named lease.

use crate::db::Db;

/// Takes or renews the lease `name` for `owner` until `until_ms` when it is
/// free, expired or already ours. `true`: ours.
pub async fn acquire(
    db: &Db,
    name: &str,
    owner: &str,
    now_ms: i64,
    until_ms: i64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE service_leases SET owner = $2, until_ms = $3 \
         WHERE name = $1 AND (owner = $2 OR owner IS NULL OR until_ms <= $4)",
    )
    .bind(name)
    .bind(owner)
    .bind(until_ms)
    .bind(now_ms)
    .execute(db.pool())
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Gives the lease up if it is ours.
pub async fn release(db: &Db, name: &str, owner: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE service_leases SET owner = NULL, until_ms = 0 WHERE name = $1 AND owner = $2",
    )
    .bind(name)
    .bind(owner)
    .execute(db.pool())
    .await?;
    Ok(())
}
