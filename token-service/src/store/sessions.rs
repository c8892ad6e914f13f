//! `connect_sessions` (connect links) and `oauth_states` (one per started
//! authorization). Both are keyed by the SHA-256 of their token and taken
//! with `DELETE … RETURNING`, so each is used at most once.

use crate::db::Db;
use sqlx::any::AnyRow;
use sqlx::Row as _;

#[derive(Clone, Debug)]
pub struct ConnectSession {
    pub token_hash: Vec<u8>,
    pub app_id: String,
    pub provider: String,
    pub user_id: String,
    pub return_to: Option<String>,
    /// How the connect page names the app's user (the app's own label).
    pub user_display_name: Option<String>,
    /// Connection parameter values, already checked against their patterns.
    pub params: crate::template::Values,
    pub created_at: i64,
    pub expires_at: i64,
}

const SESSION_COLUMNS: &str =
    "token_hash, app_id, provider, user_id, return_to, created_at, expires_at, params, user_display_name";

impl ConnectSession {
    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            token_hash: row.try_get("token_hash")?,
            app_id: row.try_get("app_id")?,
            provider: row.try_get("provider")?,
            user_id: row.try_get("user_id")?,
            return_to: row.try_get("return_to")?,
            user_display_name: row.try_get("user_display_name")?,
            params: super::json_column(&row.try_get::<String, _>("params")?)?,
            created_at: row.try_get("created_at")?,
            expires_at: row.try_get("expires_at")?,
        })
    }
}

pub async fn insert_session(db: &Db, s: &ConnectSession) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "INSERT INTO connect_sessions ({SESSION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
    ))
    .bind(&s.token_hash)
    .bind(&s.app_id)
    .bind(&s.provider)
    .bind(&s.user_id)
    .bind(&s.return_to)
    .bind(s.created_at)
    .bind(s.expires_at)
    .bind(super::to_json(&s.params)?)
    .bind(&s.user_display_name)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Reads the session without using it up (the connect page).
pub async fn peek_session(
    db: &Db,
    token_hash: &[u8],
) -> Result<Option<ConnectSession>, sqlx::Error> {
    sqlx::query(&format!(
        "SELECT {SESSION_COLUMNS} FROM connect_sessions WHERE token_hash = $1"
    ))
    .bind(token_hash)
    .fetch_optional(db.pool())
    .await?
    .as_ref()
    .map(ConnectSession::from_row)
    .transpose()
}

/// Removes and returns the session (expired or not: the caller checks).
pub async fn take_session(
    db: &Db,
    token_hash: &[u8],
) -> Result<Option<ConnectSession>, sqlx::Error> {
    sqlx::query(&format!(
        "DELETE FROM connect_sessions WHERE token_hash = $1 RETURNING {SESSION_COLUMNS}"
    ))
    .bind(token_hash)
    .fetch_optional(db.pool())
    .await?
    .as_ref()
    .map(ConnectSession::from_row)
    .transpose()
}

#[derive(Clone)]
pub struct OAuthStateRecord {
    pub state_hash: Vec<u8>,
    pub app_id: String,
    pub provider: String,
    pub user_id: String,
    pub return_to: Option<String>,
    /// Vault envelope.
    pub pkce_verifier: Vec<u8>,
    pub nonce_hash: Vec<u8>,
    pub redirect_uri: String,
    pub requested_scope: String,
    pub params: crate::template::Values,
    pub created_at: i64,
    pub expires_at: i64,
}

impl std::fmt::Debug for OAuthStateRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthStateRecord")
            .field("app_id", &self.app_id)
            .field("provider", &self.provider)
            .field("user_id", &self.user_id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

const STATE_COLUMNS: &str = "state_hash, app_id, provider, user_id, return_to, pkce_verifier, \
    nonce_hash, redirect_uri, requested_scope, created_at, expires_at, params";

impl OAuthStateRecord {
    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            state_hash: row.try_get("state_hash")?,
            app_id: row.try_get("app_id")?,
            provider: row.try_get("provider")?,
            user_id: row.try_get("user_id")?,
            return_to: row.try_get("return_to")?,
            pkce_verifier: row.try_get("pkce_verifier")?,
            nonce_hash: row.try_get("nonce_hash")?,
            redirect_uri: row.try_get("redirect_uri")?,
            requested_scope: row.try_get("requested_scope")?,
            params: super::json_column(&row.try_get::<String, _>("params")?)?,
            created_at: row.try_get("created_at")?,
            expires_at: row.try_get("expires_at")?,
        })
    }
}

pub async fn insert_state(db: &Db, s: &OAuthStateRecord) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "INSERT INTO oauth_states ({STATE_COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
    ))
    .bind(&s.state_hash)
    .bind(&s.app_id)
    .bind(&s.provider)
    .bind(&s.user_id)
    .bind(&s.return_to)
    .bind(&s.pkce_verifier)
    .bind(&s.nonce_hash)
    .bind(&s.redirect_uri)
    .bind(&s.requested_scope)
    .bind(s.created_at)
    .bind(s.expires_at)
    .bind(super::to_json(&s.params)?)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Removes and returns the state in one statement: a second callback with
/// the same state finds nothing.
pub async fn take_state(
    db: &Db,
    state_hash: &[u8],
) -> Result<Option<OAuthStateRecord>, sqlx::Error> {
    sqlx::query(&format!(
        "DELETE FROM oauth_states WHERE state_hash = $1 RETURNING {STATE_COLUMNS}"
    ))
    .bind(state_hash)
    .fetch_optional(db.pool())
    .await?
    .as_ref()
    .map(OAuthStateRecord::from_row)
    .transpose()
}

/// Drops sessions, states, unconfirmed results and the marks of used ones
/// that expired before `now`.
pub async fn purge_expired(db: &Db, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM connect_sessions WHERE expires_at < $1")
        .bind(now)
        .execute(db.pool())
        .await?;
    sqlx::query("DELETE FROM oauth_states WHERE expires_at < $1")
        .bind(now)
        .execute(db.pool())
        .await?;
    sqlx::query("DELETE FROM connect_results WHERE expires_at < $1")
        .bind(now)
        .execute(db.pool())
        .await?;
    sqlx::query("DELETE FROM used_connect_results WHERE expires_at < $1")
        .bind(now)
        .execute(db.pool())
        .await?;
    Ok(())
}
