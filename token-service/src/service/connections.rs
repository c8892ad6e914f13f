//! Reading connections: the state of an app's connections as its app sees
//! it (status, expiry, refresh schedule, failures; never a token).

use crate::db::Db;
use crate::error::Error;
use crate::policy::RefreshPolicy;
use crate::service::refresh;
use crate::store::connections::{self, ConnKey, ConnectionRecord};
use crate::store::providers;
use crate::validate;
use authstamp_protocol::ErrorCode;
use serde::{Deserialize, Serialize};

/// A connection as its app sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = Connection)]
pub struct ConnectionView {
    pub provider: String,
    pub user: String,
    /// `active`, `refreshing` (a refresh is running right now) or
    /// `reauth_required`.
    #[schema(value_type = ViewStatus)]
    pub status: String,
    pub scopes: String,
    /// When the access token expires, as the provider said (`null`: it gave no lifetime).
    pub expires_at: Option<i64>,
    /// When authstamp will refresh it on the next lookup (`null`: it cannot).
    pub refresh_due_at: Option<i64>,
    pub has_refresh_token: bool,
    /// Last successful refresh.
    pub last_refresh_at: Option<i64>,
    /// Last refresh attempt, successful or not.
    pub last_attempt_at: Option<i64>,
    /// Refresh failures since the last success (or the last connect).
    pub failure_count: i64,
    /// The provider's error code or the transport failure of the last failed attempt.
    pub last_error: Option<String>,
    /// After a transient failure: no new attempt before this.
    pub retry_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl ConnectionView {
    pub fn new(c: &ConnectionRecord, policy: &RefreshPolicy) -> Self {
        Self {
            provider: c.key.provider.clone(),
            user: c.key.user_id.clone(),
            status: if c.status == crate::store::connections::ConnectionStatus::Active
                && c.lease_until
                    .is_some_and(|until| until > crate::db::now_ms())
            {
                // A refresh holds the connection's lease right now.
                "refreshing".to_owned()
            } else {
                c.status.as_str().to_owned()
            },
            scopes: c.scopes.clone(),
            expires_at: c.expires_at,
            refresh_due_at: refresh::refresh_due_at(c, policy),
            has_refresh_token: c.refresh_token.is_some(),
            last_refresh_at: c.last_refresh_at,
            last_attempt_at: c.last_attempt_at,
            failure_count: c.failure_count,
            last_error: c.last_refresh_error.clone(),
            retry_at: c.retry_at,
            created_at: c.created_at,
            updated_at: c.updated_at,
        }
    }
}

/// A connection's `status`.
#[derive(utoipa::ToSchema)]
#[schema(as = ConnectionStatus, rename_all = "snake_case")]
#[allow(dead_code)] // only its schema is used (the OpenAPI document)
pub enum ViewStatus {
    Active,
    Refreshing,
    ReauthRequired,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConnectionList {
    pub connections: Vec<ConnectionView>,
}

async fn policy_for(
    db: &Db,
    defaults: &RefreshPolicy,
    app_id: &str,
    provider: &str,
) -> Result<RefreshPolicy, Error> {
    Ok(providers::get(db, app_id, provider)
        .await?
        .map(|p| defaults.with(&p.policy))
        .unwrap_or(*defaults))
}

/// One connection of `app_id`.
pub async fn get_connection(
    db: &Db,
    defaults: &RefreshPolicy,
    app_id: &str,
    provider: &str,
    user: &str,
) -> Result<ConnectionView, Error> {
    validate::user_id(user)?;
    let key = ConnKey {
        app_id: app_id.to_owned(),
        provider: provider.to_owned(),
        user_id: user.to_owned(),
    };
    let record = connections::get(db, &key).await?.ok_or_else(|| {
        Error::new(
            ErrorCode::NotConnected,
            "the user has not connected this provider",
        )
    })?;
    let policy = policy_for(db, defaults, app_id, provider).await?;
    Ok(ConnectionView::new(&record, &policy))
}

/// Every connection of one user of `app_id`.
pub async fn list_connections(
    db: &Db,
    defaults: &RefreshPolicy,
    app_id: &str,
    user: &str,
) -> Result<ConnectionList, Error> {
    validate::user_id(user)?;
    let mut views = Vec::new();
    for record in connections::list_for_user(db, app_id, user).await? {
        let policy = policy_for(db, defaults, app_id, &record.key.provider).await?;
        views.push(ConnectionView::new(&record, &policy));
    }
    Ok(ConnectionList { connections: views })
}

/// Connections of `app_id` across users (for the CLI), optionally only those
/// whose stored status is `status`; at most `limit`.
pub async fn list_app_connections(
    db: &Db,
    defaults: &RefreshPolicy,
    app_id: &str,
    status: Option<connections::ConnectionStatus>,
    limit: i64,
) -> Result<ConnectionList, Error> {
    let mut views = Vec::new();
    for record in connections::list_for_app(db, app_id, status, limit).await? {
        let policy = policy_for(db, defaults, app_id, &record.key.provider).await?;
        views.push(ConnectionView::new(&record, &policy));
    }
    Ok(ConnectionList { connections: views })
}
