//! `connections`: a user's tokens for one (app, provider), as vault
//! envelopes, with the refresh bookkeeping.

use crate::db::Db;
use sqlx::any::AnyRow;
use sqlx::Row as _;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub app_id: String,
    pub provider: String,
    pub user_id: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionStatus {
    Active,
    ReauthRequired,
}

impl ConnectionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionStatus::Active => "active",
            ConnectionStatus::ReauthRequired => "reauth_required",
        }
    }

    fn parse(text: &str) -> Result<Self, sqlx::Error> {
        match text {
            "active" => Ok(Self::Active),
            "reauth_required" => Ok(Self::ReauthRequired),
            other => Err(sqlx::Error::Decode(
                format!("unknown connection status {other:?}").into(),
            )),
        }
    }
}

#[derive(Clone)]
pub struct ConnectionRecord {
    pub key: ConnKey,
    /// Vault envelope.
    pub access_token: Vec<u8>,
    /// Vault envelope.
    pub refresh_token: Option<Vec<u8>>,
    pub expires_at: Option<i64>,
    pub scopes: String,
    pub status: ConnectionStatus,
    pub failure_count: i64,
    pub last_refresh_at: Option<i64>,
    pub last_refresh_error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl std::fmt::Debug for ConnectionRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionRecord")
            .field("key", &self.key)
            .field("has_refresh_token", &self.refresh_token.is_some())
            .field("expires_at", &self.expires_at)
            .field("status", &self.status)
            .field("failure_count", &self.failure_count)
            .finish_non_exhaustive()
    }
}

impl ConnectionRecord {
    /// The stored access token has not expired (no lifetime: assumed valid).
    pub fn is_valid_at(&self, now: i64) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }

    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            key: ConnKey {
                app_id: row.try_get("app_id")?,
                provider: row.try_get("provider")?,
                user_id: row.try_get("user_id")?,
            },
            access_token: row.try_get("access_token")?,
            refresh_token: row.try_get("refresh_token")?,
            expires_at: row.try_get("expires_at")?,
            scopes: row.try_get("scopes")?,
            status: ConnectionStatus::parse(&row.try_get::<String, _>("status")?)?,
            failure_count: row.try_get("failure_count")?,
            last_refresh_at: row.try_get("last_refresh_at")?,
            last_refresh_error: row.try_get("last_refresh_error")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }
}

const COLUMNS: &str = "app_id, provider, user_id, access_token, refresh_token, expires_at, \
    scopes, status, failure_count, last_refresh_at, last_refresh_error, created_at, updated_at";

pub async fn get(db: &Db, key: &ConnKey) -> Result<Option<ConnectionRecord>, sqlx::Error> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM connections WHERE app_id = $1 AND provider = $2 AND user_id = $3"
    ))
    .bind(&key.app_id)
    .bind(&key.provider)
    .bind(&key.user_id)
    .fetch_optional(db.pool())
    .await?
    .as_ref()
    .map(ConnectionRecord::from_row)
    .transpose()
}

/// Tokens from a completed authorization: a fresh, active connection that
/// replaces any earlier one of the same user.
pub struct NewConnection<'a> {
    pub key: &'a ConnKey,
    pub access_token: Vec<u8>,
    pub refresh_token: Option<Vec<u8>>,
    pub expires_at: Option<i64>,
    pub scopes: &'a str,
    pub now: i64,
}

pub async fn upsert_connected(db: &Db, c: NewConnection<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO connections (app_id, provider, user_id, access_token, refresh_token, \
           expires_at, scopes, status, failure_count, last_refresh_at, last_refresh_error, \
           refresh_lease_owner, refresh_lease_until, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'active', 0, NULL, NULL, NULL, NULL, $8, $8) \
         ON CONFLICT (app_id, provider, user_id) DO UPDATE SET \
           access_token = excluded.access_token, refresh_token = excluded.refresh_token, \
           expires_at = excluded.expires_at, scopes = excluded.scopes, status = 'active', \
           failure_count = 0, last_refresh_at = NULL, last_refresh_error = NULL, \
           refresh_lease_owner = NULL, refresh_lease_until = NULL, \
           updated_at = excluded.updated_at",
    )
    .bind(&c.key.app_id)
    .bind(&c.key.provider)
    .bind(&c.key.user_id)
    .bind(c.access_token)
    .bind(c.refresh_token)
    .bind(c.expires_at)
    .bind(c.scopes)
    .bind(c.now)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// The result of a successful refresh.
pub struct Refreshed<'a> {
    pub key: &'a ConnKey,
    pub access_token: Vec<u8>,
    /// `None` keeps the stored refresh token.
    pub refresh_token: Option<Vec<u8>>,
    pub expires_at: Option<i64>,
    /// `None` keeps the stored scopes.
    pub scopes: Option<&'a str>,
    pub now: i64,
}

/// Stores a refresh result in one statement: new access token, rotated
/// refresh token (or the old one), healthy status.
pub async fn store_refreshed(db: &Db, r: Refreshed<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE connections SET access_token = $4, \
           refresh_token = COALESCE($5, refresh_token), expires_at = $6, \
           scopes = COALESCE($7, scopes), last_refresh_at = $8, failure_count = 0, \
           status = 'active', last_refresh_error = NULL, updated_at = $8 \
         WHERE app_id = $1 AND provider = $2 AND user_id = $3",
    )
    .bind(&r.key.app_id)
    .bind(&r.key.provider)
    .bind(&r.key.user_id)
    .bind(r.access_token)
    .bind(r.refresh_token)
    .bind(r.expires_at)
    .bind(r.scopes)
    .bind(r.now)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Counts a failed refresh; a permanent one also requires a new connect.
pub async fn record_refresh_failure(
    db: &Db,
    key: &ConnKey,
    permanent: bool,
    error: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    let status = if permanent {
        ConnectionStatus::ReauthRequired
    } else {
        ConnectionStatus::Active
    };
    sqlx::query(
        "UPDATE connections SET failure_count = failure_count + 1, \
           status = CASE WHEN $4 = 'reauth_required' THEN 'reauth_required' ELSE status END, \
           last_refresh_error = $5, updated_at = $6 \
         WHERE app_id = $1 AND provider = $2 AND user_id = $3",
    )
    .bind(&key.app_id)
    .bind(&key.provider)
    .bind(&key.user_id)
    .bind(status.as_str())
    .bind(error)
    .bind(now)
    .execute(db.pool())
    .await?;
    Ok(())
}
