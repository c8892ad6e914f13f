//! `connections`: a user's tokens for one (app, provider), as vault
//! envelopes, with the refresh bookkeeping and the per-connection refresh
//! lease that replicas sharing one database take before refreshing.
//!
//! Every statement that changes tokens or refresh state is one `UPDATE`
//! (atomic on both backends) guarded by the lease owner or the token version,
//! so that a replica that lost its lease can never overwrite newer tokens.

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
    /// As the provider said (`expires_in`); `None`: it gave no lifetime.
    pub expires_at: Option<i64>,
    pub scopes: String,
    pub status: ConnectionStatus,
    pub failure_count: i64,
    /// Last successful refresh.
    pub last_refresh_at: Option<i64>,
    pub last_refresh_error: Option<String>,
    /// Last refresh attempt, successful or not.
    pub last_attempt_at: Option<i64>,
    /// Cooldown after a transient failure: no attempt before this.
    pub retry_at: Option<i64>,
    /// When the current access token was obtained.
    pub issued_at: i64,
    /// Bumped by every write of new tokens.
    pub token_version: i64,
    pub lease_owner: Option<String>,
    /// Unix milliseconds.
    pub lease_until: Option<i64>,
    /// Connection parameter values (and response-derived placeholders).
    pub params: crate::template::Values,
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
            .field("token_version", &self.token_version)
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
            last_attempt_at: row.try_get("last_attempt_at")?,
            retry_at: row.try_get("retry_at")?,
            issued_at: row.try_get("issued_at")?,
            token_version: row.try_get("token_version")?,
            lease_owner: row.try_get("refresh_lease_owner")?,
            lease_until: row.try_get("refresh_lease_until")?,
            params: super::json_column(&row.try_get::<String, _>("params")?)?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }
}

const COLUMNS: &str = "app_id, provider, user_id, access_token, refresh_token, expires_at, \
    scopes, status, failure_count, last_refresh_at, last_refresh_error, last_attempt_at, \
    retry_at, issued_at, token_version, refresh_lease_owner, refresh_lease_until, \
    created_at, updated_at, params";

const WHERE_KEY: &str = "app_id = $1 AND provider = $2 AND user_id = $3";

pub async fn get(db: &Db, key: &ConnKey) -> Result<Option<ConnectionRecord>, sqlx::Error> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM connections WHERE {WHERE_KEY}"
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

/// Every connection of one user of an app, by provider.
pub async fn list_for_user(
    db: &Db,
    app_id: &str,
    user_id: &str,
) -> Result<Vec<ConnectionRecord>, sqlx::Error> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM connections WHERE app_id = $1 AND user_id = $2 ORDER BY provider"
    ))
    .bind(app_id)
    .bind(user_id)
    .fetch_all(db.pool())
    .await?
    .iter()
    .map(ConnectionRecord::from_row)
    .collect()
}

/// Connections of an app, by user and provider, optionally only those with
/// a stored `status`; at most `limit`.
pub async fn list_for_app(
    db: &Db,
    app_id: &str,
    status: Option<ConnectionStatus>,
    limit: i64,
) -> Result<Vec<ConnectionRecord>, sqlx::Error> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM connections WHERE app_id = $1 AND ($2 = '' OR status = $2) \
         ORDER BY user_id, provider LIMIT $3"
    ))
    .bind(app_id)
    .bind(status.map_or("", ConnectionStatus::as_str))
    .bind(limit)
    .fetch_all(db.pool())
    .await?
    .iter()
    .map(ConnectionRecord::from_row)
    .collect()
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
    /// Connection parameters (`None` in bulk seeding: `{}`).
    pub params: Option<&'a crate::template::Values>,
}

pub async fn upsert_connected(db: &Db, c: NewConnection<'_>) -> Result<(), sqlx::Error> {
    upsert_connected_on(db.pool(), c).await
}

/// [`upsert_connected`] on any executor, e.g. a transaction (bulk seeding).
pub async fn upsert_connected_on<'e, E>(
    executor: E,
    c: NewConnection<'_>,
) -> Result<(), sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    upsert(executor, c, UPSERT_CONNECTED).await.map(|_| ())
}

/// [`upsert_connected`] of a journalled code exchange: unless the database
/// holds tokens issued after it (a later connect or refresh). Returns
/// whether it was written.
pub async fn upsert_connected_unless_newer(
    db: &Db,
    c: NewConnection<'_>,
) -> Result<bool, sqlx::Error> {
    let sql = format!("{UPSERT_CONNECTED} WHERE connections.issued_at <= excluded.issued_at");
    upsert(db.pool(), c, &sql).await.map(|rows| rows == 1)
}

const UPSERT_CONNECTED: &str = "INSERT INTO connections (app_id, provider, user_id, \
       access_token, refresh_token, \
       expires_at, scopes, status, failure_count, last_refresh_at, last_refresh_error, \
       last_attempt_at, retry_at, issued_at, token_version, \
       refresh_lease_owner, refresh_lease_until, created_at, updated_at, params) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, 'active', 0, NULL, NULL, NULL, NULL, $8, 1, \
       NULL, NULL, $8, $8, $9) \
     ON CONFLICT (app_id, provider, user_id) DO UPDATE SET \
       access_token = excluded.access_token, refresh_token = excluded.refresh_token, \
       expires_at = excluded.expires_at, scopes = excluded.scopes, status = 'active', \
       failure_count = 0, last_refresh_at = NULL, last_refresh_error = NULL, \
       last_attempt_at = NULL, retry_at = NULL, issued_at = excluded.issued_at, \
       token_version = connections.token_version + 1, \
       refresh_lease_owner = NULL, refresh_lease_until = NULL, \
       updated_at = excluded.updated_at, params = excluded.params";

/// Runs an upsert of `c`; returns the rows written.
async fn upsert<'e, E>(executor: E, c: NewConnection<'_>, sql: &str) -> Result<u64, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let done = sqlx::query(sql)
        .bind(&c.key.app_id)
        .bind(&c.key.provider)
        .bind(&c.key.user_id)
        .bind(c.access_token)
        .bind(c.refresh_token)
        .bind(c.expires_at)
        .bind(c.scopes)
        .bind(c.now)
        .bind(super::to_json(&c.params.cloned().unwrap_or_default())?)
        .execute(executor)
        .await?;
    Ok(done.rows_affected())
}

/// Rows per statement of [`upsert_many_on`] (8 bind parameters each; well
/// under SQLite's and PostgreSQL's limits).
pub const UPSERT_CHUNK: usize = 500;

/// Many [`upsert_connected`]s as multi-row statements of up to
/// [`UPSERT_CHUNK`] rows (bulk seeding: one round trip per chunk instead of
/// per row). Keys must be distinct.
pub async fn upsert_many_on(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    rows: Vec<NewConnection<'_>>,
) -> Result<(), sqlx::Error> {
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<NewConnection<'_>> = rows.by_ref().take(UPSERT_CHUNK).collect();
        let mut sql = String::with_capacity(200 + chunk.len() * 64);
        sql.push_str(
            "INSERT INTO connections (app_id, provider, user_id, access_token, refresh_token, \
               expires_at, scopes, status, failure_count, issued_at, token_version, \
               created_at, updated_at) VALUES ",
        );
        for i in 0..chunk.len() {
            let b = i * 8;
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!(
                "(${}, ${}, ${}, ${}, ${}, ${}, ${}, 'active', 0, ${}, 1, ${}, ${})",
                b + 1,
                b + 2,
                b + 3,
                b + 4,
                b + 5,
                b + 6,
                b + 7,
                b + 8,
                b + 8,
                b + 8
            ));
        }
        sql.push_str(
            " ON CONFLICT (app_id, provider, user_id) DO UPDATE SET \
               access_token = excluded.access_token, refresh_token = excluded.refresh_token, \
               expires_at = excluded.expires_at, scopes = excluded.scopes, status = 'active', \
               failure_count = 0, last_refresh_at = NULL, last_refresh_error = NULL, \
               last_attempt_at = NULL, retry_at = NULL, issued_at = excluded.issued_at, \
               token_version = connections.token_version + 1, \
               refresh_lease_owner = NULL, refresh_lease_until = NULL, \
               updated_at = excluded.updated_at",
        );
        let mut query = sqlx::query(&sql);
        for c in chunk {
            query = query
                .bind(c.key.app_id.clone())
                .bind(c.key.provider.clone())
                .bind(c.key.user_id.clone())
                .bind(c.access_token)
                .bind(c.refresh_token)
                .bind(c.expires_at)
                .bind(c.scopes.to_owned())
                .bind(c.now);
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Removes a connection; `true` if there was one.
pub async fn delete(db: &Db, key: &ConnKey) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(&format!("DELETE FROM connections WHERE {WHERE_KEY}"))
        .bind(&key.app_id)
        .bind(&key.provider)
        .bind(&key.user_id)
        .execute(db.pool())
        .await?;
    Ok(done.rows_affected() > 0)
}

/// Takes the refresh lease when it is free or expired. `true`: ours until
/// `until_ms`.
pub async fn try_take_lease(
    db: &Db,
    key: &ConnKey,
    owner: &str,
    now_ms: i64,
    until_ms: i64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(&format!(
        "UPDATE connections SET refresh_lease_owner = $4, refresh_lease_until = $5 \
         WHERE {WHERE_KEY} AND (refresh_lease_until IS NULL OR refresh_lease_until <= $6)"
    ))
    .bind(&key.app_id)
    .bind(&key.provider)
    .bind(&key.user_id)
    .bind(owner)
    .bind(until_ms)
    .bind(now_ms)
    .execute(db.pool())
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Gives the lease back (only if it is still ours).
pub async fn release_lease(db: &Db, key: &ConnKey, owner: &str) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "UPDATE connections SET refresh_lease_owner = NULL, refresh_lease_until = NULL \
         WHERE {WHERE_KEY} AND refresh_lease_owner = $4"
    ))
    .bind(&key.app_id)
    .bind(&key.provider)
    .bind(&key.user_id)
    .bind(owner)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// The result of a successful refresh.
#[derive(Clone)]
pub struct Refreshed<'a> {
    pub key: &'a ConnKey,
    /// The lease holder writing.
    pub owner: &'a str,
    /// The token version the refresh started from.
    pub base_version: i64,
    pub access_token: Vec<u8>,
    /// `None` keeps the stored refresh token (never an empty one).
    pub refresh_token: Option<Vec<u8>>,
    pub expires_at: Option<i64>,
    /// `None` keeps the stored scopes.
    pub scopes: Option<&'a str>,
    pub now: i64,
}

/// Stores a refresh result and releases the lease in one statement: new
/// access token, rotated refresh token (or the old one), healthy status, next
/// version. Written while the lease is ours, or, if it expired meanwhile,
/// while nobody stored newer tokens. `false`: not written.
pub async fn store_refreshed(db: &Db, r: Refreshed<'_>) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(&format!(
        "UPDATE connections SET access_token = $4, \
           refresh_token = COALESCE($5, refresh_token), expires_at = $6, \
           scopes = COALESCE($7, scopes), last_refresh_at = $8, last_attempt_at = $8, \
           issued_at = $8, failure_count = 0, retry_at = NULL, status = 'active', \
           last_refresh_error = NULL, token_version = token_version + 1, \
           refresh_lease_owner = NULL, refresh_lease_until = NULL, updated_at = $8 \
         WHERE {WHERE_KEY} AND (refresh_lease_owner = $9 OR token_version = $10)"
    ))
    .bind(&r.key.app_id)
    .bind(&r.key.provider)
    .bind(&r.key.user_id)
    .bind(r.access_token)
    .bind(r.refresh_token)
    .bind(r.expires_at)
    .bind(r.scopes)
    .bind(r.now)
    .bind(r.owner)
    .bind(r.base_version)
    .execute(db.pool())
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The provider answers again: its connections cooling down may retry at
/// once. Returns how many were cooling down.
pub async fn clear_cooldowns(
    db: &Db,
    app_id: &str,
    provider: &str,
    now: i64,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE connections SET retry_at = NULL          WHERE app_id = $1 AND provider = $2 AND retry_at > $3",
    )
    .bind(app_id)
    .bind(provider)
    .bind(now)
    .execute(db.pool())
    .await?;
    Ok(done.rows_affected())
}

/// Counts a transient failure, sets the cooldown and releases the lease,
/// unless newer tokens than `base_version` were stored meanwhile (then only
/// the lease is released: the connection is healthy).
pub async fn record_transient_failure(
    db: &Db,
    key: &ConnKey,
    owner: &str,
    base_version: i64,
    error: &str,
    now: i64,
    retry_at: i64,
) -> Result<(), sqlx::Error> {
    let done = sqlx::query(&format!(
        "UPDATE connections SET failure_count = failure_count + 1, last_refresh_error = $4, \
           last_attempt_at = $5, retry_at = $6, updated_at = $5, \
           refresh_lease_owner = CASE WHEN refresh_lease_owner = $7 THEN NULL ELSE refresh_lease_owner END, \
           refresh_lease_until = CASE WHEN refresh_lease_owner = $7 THEN NULL ELSE refresh_lease_until END \
         WHERE {WHERE_KEY} AND token_version = $8"
    ))
    .bind(&key.app_id)
    .bind(&key.provider)
    .bind(&key.user_id)
    .bind(error)
    .bind(now)
    .bind(retry_at)
    .bind(owner)
    .bind(base_version)
    .execute(db.pool())
    .await?;
    if done.rows_affected() == 0 {
        release_lease(db, key, owner).await?;
    }
    Ok(())
}

/// After a permanent refusal: `reauth_required`, unless the tokens changed
/// since `base_version` (another refresh rotated them meanwhile: the refused
/// refresh token was simply an old one). `true`: marked.
pub async fn mark_reauth_required(
    db: &Db,
    key: &ConnKey,
    owner: &str,
    base_version: i64,
    error: &str,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(&format!(
        "UPDATE connections SET status = 'reauth_required', failure_count = failure_count + 1, \
           last_refresh_error = $4, last_attempt_at = $5, retry_at = NULL, updated_at = $5, \
           refresh_lease_owner = NULL, refresh_lease_until = NULL \
         WHERE {WHERE_KEY} AND token_version = $6"
    ))
    .bind(&key.app_id)
    .bind(&key.provider)
    .bind(&key.user_id)
    .bind(error)
    .bind(now)
    .bind(base_version)
    .execute(db.pool())
    .await?;
    if done.rows_affected() == 0 {
        release_lease(db, key, owner).await?;
    }
    Ok(done.rows_affected() == 1)
}

/// Keys and times of active, refreshable connections, for the background
/// refresher.
#[derive(Clone, Debug)]
pub struct DueCandidate {
    pub key: ConnKey,
    pub expires_at: Option<i64>,
    pub issued_at: i64,
}

fn candidate(row: &AnyRow) -> Result<DueCandidate, sqlx::Error> {
    Ok(DueCandidate {
        key: ConnKey {
            app_id: row.try_get("app_id")?,
            provider: row.try_get("provider")?,
            user_id: row.try_get("user_id")?,
        },
        expires_at: row.try_get("expires_at")?,
        issued_at: row.try_get("issued_at")?,
    })
}

/// Refreshable active connections expiring by `before`, not cooling down and
/// not leased, soonest first (uses the partial index `connections_expiring`).
pub async fn expiring_before(
    db: &Db,
    before: i64,
    now: i64,
    now_ms: i64,
    limit: i64,
) -> Result<Vec<DueCandidate>, sqlx::Error> {
    sqlx::query(
        "SELECT app_id, provider, user_id, expires_at, issued_at FROM connections \
         WHERE status = 'active' AND refresh_token IS NOT NULL AND expires_at <= $1 \
           AND (retry_at IS NULL OR retry_at <= $2) \
           AND (refresh_lease_until IS NULL OR refresh_lease_until <= $3) \
         ORDER BY expires_at LIMIT $4",
    )
    .bind(before)
    .bind(now)
    .bind(now_ms)
    .bind(limit)
    .fetch_all(db.pool())
    .await?
    .iter()
    .map(candidate)
    .collect()
}

/// Refreshable active connections whose tokens were obtained by `before`
/// (tokens without a lifetime, and keep-alive), oldest first.
pub async fn issued_before(
    db: &Db,
    before: i64,
    now: i64,
    now_ms: i64,
    limit: i64,
) -> Result<Vec<DueCandidate>, sqlx::Error> {
    sqlx::query(
        "SELECT app_id, provider, user_id, expires_at, issued_at FROM connections \
         WHERE status = 'active' AND refresh_token IS NOT NULL AND issued_at <= $1 \
           AND (retry_at IS NULL OR retry_at <= $2) \
           AND (refresh_lease_until IS NULL OR refresh_lease_until <= $3) \
         ORDER BY issued_at LIMIT $4",
    )
    .bind(before)
    .bind(now)
    .bind(now_ms)
    .bind(limit)
    .fetch_all(db.pool())
    .await?
    .iter()
    .map(candidate)
    .collect()
}

/// Connections by status, plus the active ones whose last refresh failed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatusCounts {
    pub active: i64,
    pub reauth_required: i64,
    pub failing: i64,
}

pub async fn count_by_status(db: &Db) -> Result<StatusCounts, sqlx::Error> {
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT status, COUNT(*), \
           SUM(CASE WHEN failure_count > 0 THEN 1 ELSE 0 END) \
         FROM connections GROUP BY status",
    )
    .fetch_all(db.pool())
    .await?;
    let mut counts = StatusCounts::default();
    for (status, n, failing) in rows {
        match status.as_str() {
            "active" => {
                counts.active = n;
                counts.failing = failing;
            }
            _ => counts.reauth_required += n,
        }
    }
    Ok(counts)
}
