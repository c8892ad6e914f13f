//! `connect_results`: tokens of a finished authorization held until the
//! app's backend confirms that the browser which came back is the user the
//! connect link was made for. Keyed by the SHA-256 of the one-time result
//! and taken with `DELETE … RETURNING`, so each is used at most once; a
//! taken result's hash stays in `used_connect_results` until it would have
//! expired, so that a journalled copy written again is refused.

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
    let values = "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";
    insert_with(db, r, values).await.map(|_| ())
}

/// Inserts `r` unless its result is there already or was used (a
/// journalled result written twice: by its task and by a replay, or again
/// after its confirmation by a process killed before it settled the
/// journal). Returns whether it inserted.
pub async fn insert_unless_present(db: &Db, r: &ConnectResult) -> Result<bool, sqlx::Error> {
    insert_with(
        db,
        r,
        "SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11 \
         WHERE NOT EXISTS (SELECT 1 FROM used_connect_results WHERE result_hash = $1) \
         ON CONFLICT (result_hash) DO NOTHING",
    )
    .await
}

async fn insert_with(db: &Db, r: &ConnectResult, values: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(&format!("INSERT INTO connect_results ({COLUMNS}) {values}"))
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
/// checks), and marks it used; another app's result is left alone and not
/// returned.
pub async fn take(
    db: &Db,
    app_id: &str,
    result_hash: &[u8],
) -> Result<Option<ConnectResult>, sqlx::Error> {
    let mut tx = db.begin_write().await?;
    let taken = sqlx::query(&format!(
        "DELETE FROM connect_results WHERE result_hash = $1 AND app_id = $2 RETURNING {COLUMNS}"
    ))
    .bind(result_hash)
    .bind(app_id)
    .fetch_optional(&mut *tx)
    .await?
    .as_ref()
    .map(ConnectResult::from_row)
    .transpose()?;
    if let Some(taken) = &taken {
        sqlx::query(
            "INSERT INTO used_connect_results (result_hash, expires_at) VALUES ($1, $2) \
             ON CONFLICT (result_hash) DO NOTHING",
        )
        .bind(result_hash)
        .bind(taken.expires_at)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(taken)
}

/// Rows waiting for confirmation (tests and the operator's view).
pub async fn count(db: &Db) -> Result<i64, sqlx::Error> {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM connect_results")
        .fetch_one(db.pool())
        .await?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use authstamp_testkit::postgres::TestPostgres;

    fn result() -> ConnectResult {
        ConnectResult {
            result_hash: vec![7; 32],
            app_id: "app_x".into(),
            provider: "p".into(),
            user_id: "u".into(),
            access_token: vec![1, 2],
            refresh_token: None,
            token_expires_at: None,
            scopes: String::new(),
            params: Default::default(),
            created_at: 10,
            expires_at: crate::db::now() + 600,
        }
    }

    async fn with_provider(db: &Db) {
        for sql in [
            "INSERT INTO apps (app_id, name, key_hash, created_at) VALUES ('app_x', 'x', $1, 1)",
            "INSERT INTO providers (app_id, provider, client_id, client_secret, authorize_url, \
             token_url, api_base_url, client_auth, header_name, header_format, created_at, \
             updated_at) VALUES ('app_x', 'p', 'c', $1, 'https://a', 'https://t', 'https://b', \
             'body', 'authorization', 'Bearer {token}', 1, 1)",
        ] {
            let blob = vec![0u8];
            sqlx::query(sql)
                .bind(blob)
                .execute(db.pool())
                .await
                .unwrap();
        }
    }

    /// A replayed journal entry of a result the app already confirmed is
    /// not written again; one never taken is written once.
    async fn a_used_result_is_not_written_again(db: &Db) {
        with_provider(db).await;
        let r = result();
        assert!(insert_unless_present(db, &r).await.unwrap(), "first write");
        assert!(
            !insert_unless_present(db, &r).await.unwrap(),
            "written twice"
        );
        assert_eq!(count(db).await.unwrap(), 1);
        let taken = take(db, "app_x", &r.result_hash).await.unwrap();
        assert_eq!(taken.map(|t| t.user_id), Some("u".to_owned()));
        assert!(
            !insert_unless_present(db, &r).await.unwrap(),
            "a used result came back"
        );
        assert_eq!(count(db).await.unwrap(), 0);
        assert!(take(db, "app_x", &r.result_hash).await.unwrap().is_none());
        // Its mark goes once the result would have expired.
        super::super::sessions::purge_expired(db, r.expires_at + 1)
            .await
            .unwrap();
        let (marks,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM used_connect_results")
            .fetch_one(db.pool())
            .await
            .unwrap();
        assert_eq!(marks, 0);
    }

    #[tokio::test]
    async fn a_used_result_is_not_written_again_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(None, dir.path()).await.unwrap();
        a_used_result_is_not_written_again(&db).await;
    }

    #[tokio::test]
    async fn a_used_result_is_not_written_again_postgres() {
        let dir = tempfile::tempdir().unwrap();
        let url = TestPostgres::shared().create_database("connect_results");
        let db = Db::open(Some(&url), dir.path()).await.unwrap();
        a_used_result_is_not_written_again(&db).await;
    }
}
