//! The database pool (SQLite by default, PostgreSQL for shared vaults) and
//! its migrations. Queries use `$N` placeholders, which both backends accept.

use anyhow::Context as _;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{AnyPool, ConnectOptions as _, Executor as _};
use std::path::Path;
use std::str::FromStr as _;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone, Debug)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
}

const SQLITE_FILE: &str = "authstamp.db";
const BUSY_TIMEOUT_MS: u32 = 5_000;
/// How long a query waits for a connection before it fails with
/// `storage_unavailable`: shorter than the filter's token-service timeout
/// (2 s in the shipped bootstraps), so an outage is reported, not waited out.
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(1);

impl Db {
    /// Opens `database_url`, or `<data_dir>/authstamp.db` when none is
    /// given, and runs the migrations of its backend.
    pub async fn open(database_url: Option<&str>, data_dir: &Path) -> anyhow::Result<Self> {
        Self::open_with(database_url, data_dir, DEFAULT_ACQUIRE_TIMEOUT).await
    }

    /// [`Self::open`] with the connection acquire timeout given.
    pub async fn open_with(
        database_url: Option<&str>,
        data_dir: &Path,
        acquire_timeout: Duration,
    ) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let (url, backend) = match database_url.map(str::trim).filter(|u| !u.is_empty()) {
            None => {
                crate::config::create_private_dir(data_dir)?;
                crate::files::warn_if_dir_open(data_dir);
                let file = data_dir.join(SQLITE_FILE);
                crate::files::prepare_sqlite_file(&file)?;
                let url = SqliteConnectOptions::new()
                    .filename(file)
                    .create_if_missing(true)
                    .to_url_lossy();
                (url.to_string(), Backend::Sqlite)
            }
            Some(url) if url.starts_with("sqlite:") => (url.to_owned(), Backend::Sqlite),
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                (url.to_owned(), Backend::Postgres)
            }
            // The URL may carry a password: never echo it.
            Some(_) => anyhow::bail!(
                "unsupported database URL: use postgres://… for PostgreSQL or leave it unset for SQLite"
            ),
        };
        let options = AnyConnectOptions::from_str(&url)
            .map_err(|_| anyhow::anyhow!("the database URL could not be parsed"))?;
        let mut pool_options = AnyPoolOptions::new().acquire_timeout(acquire_timeout);
        if backend == Backend::Sqlite {
            pool_options = pool_options.max_connections(8).after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute(format!("PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}").as_str())
                        .await?;
                    conn.execute("PRAGMA foreign_keys = ON").await?;
                    Ok(())
                })
            });
        }
        let pool = pool_options
            .connect_with(options)
            .await
            .context("could not open the database")?;
        if backend == Backend::Sqlite {
            // Persistent in the file: readers do not block the writer.
            pool.execute("PRAGMA journal_mode = WAL")
                .await
                .context("could not enable WAL")?;
        }
        let db = Self { pool, backend };
        db.migrate().await?;
        Ok(db)
    }

    async fn migrate(&self) -> anyhow::Result<()> {
        match self.backend {
            Backend::Sqlite => sqlx::migrate!("migrations/sqlite").run(&self.pool).await,
            Backend::Postgres => sqlx::migrate!("migrations/postgres").run(&self.pool).await,
        }
        .context("database migration failed")
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// A transaction that reads and then writes. On SQLite `BEGIN IMMEDIATE`
    /// takes the write lock up front: a deferred transaction that upgrades
    /// from read to write fails at once with `database is locked` (the busy
    /// timeout does not apply to an upgrade), while this one waits its turn.
    /// On PostgreSQL lock the rows the decision depends on (`FOR UPDATE`).
    pub async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
    }

    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// The database could not be reached (pool timeout, connection refused or
/// reset, server shutting down): worth a retry, unlike a query error.
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
        sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed => true,
        // PostgreSQL's admin_shutdown / cannot_connect_now / crash_shutdown.
        sqlx::Error::Database(db) => {
            matches!(db.code().as_deref(), Some("57P01" | "57P02" | "57P03"))
        }
        _ => false,
    }
}

/// Current time in unix seconds.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Current time in unix milliseconds (refresh leases).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sqlite_accepts_dollar_placeholders_and_delete_returning() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(None, dir.path()).await.unwrap();
        assert!(dir.path().join(SQLITE_FILE).exists());
        sqlx::query(
            "INSERT INTO apps (app_id, name, key_hash, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind("app_x")
        .bind("x")
        .bind(vec![1u8, 2, 3])
        .bind(7i64)
        .execute(db.pool())
        .await
        .unwrap();
        let row: Option<(String, i64)> =
            sqlx::query_as("DELETE FROM apps WHERE app_id = $1 RETURNING name, created_at")
                .bind("app_x")
                .fetch_optional(db.pool())
                .await
                .unwrap();
        assert_eq!(row, Some(("x".to_owned(), 7)));
        let again: Option<(String, i64)> =
            sqlx::query_as("DELETE FROM apps WHERE app_id = $1 RETURNING name, created_at")
                .bind("app_x")
                .fetch_optional(db.pool())
                .await
                .unwrap();
        assert_eq!(again, None);
        let mode: (String,) = sqlx::query_as("PRAGMA journal_mode")
            .fetch_one(db.pool())
            .await
            .unwrap();
        assert_eq!(mode.0, "wal");
        // Opening again reruns no migration and keeps the data.
        db.close().await;
        Db::open(None, dir.path()).await.unwrap();
    }

    #[tokio::test]
    async fn rejects_unknown_database_urls_without_echoing_them() {
        let dir = tempfile::tempdir().unwrap();
        let err = Db::open(Some("mysql://user:hunter2@db/x"), dir.path())
            .await
            .unwrap_err();
        assert!(!format!("{err:#}").contains("hunter2"));
    }
}
