//! `GET /v1/connections?user=…` and `GET /v1/connections/{provider}/{user}`:
//! an app reads the state of its users' connections (never a token).

use crate::db::Db;
use crate::error::{ApiError, ApiPath};
use crate::http::auth::AppAuth;
use crate::policy::RefreshPolicy;
use crate::service::refresh;
use crate::service::state::AppState;
use crate::store::connections::{self, ConnKey, ConnectionRecord};
use crate::store::providers;
use crate::validate;
use authstamp_protocol::ErrorCode;
use axum::extract::{Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};

/// A connection as its app sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = Connection)]
pub struct ConnectionView {
    pub provider: String,
    pub user: String,
    /// `active`, `refreshing` (a refresh is running right now) or
    /// `reauth_required`.
    #[schema(value_type = crate::http::openapi::ConnectionStatus)]
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

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConnectionList {
    pub connections: Vec<ConnectionView>,
}

async fn policy_for(
    db: &Db,
    defaults: &RefreshPolicy,
    app_id: &str,
    provider: &str,
) -> Result<RefreshPolicy, ApiError> {
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
) -> Result<ConnectionView, ApiError> {
    validate::user_id(user)?;
    let key = ConnKey {
        app_id: app_id.to_owned(),
        provider: provider.to_owned(),
        user_id: user.to_owned(),
    };
    let record = connections::get(db, &key).await?.ok_or_else(|| {
        ApiError::new(
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
) -> Result<ConnectionList, ApiError> {
    validate::user_id(user)?;
    let mut views = Vec::new();
    for record in connections::list_for_user(db, app_id, user).await? {
        let policy = policy_for(db, defaults, app_id, &record.key.provider).await?;
        views.push(ConnectionView::new(&record, &policy));
    }
    Ok(ConnectionList { connections: views })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    user: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/connections",
    operation_id = "listConnections",
    summary = "Every connection of one user (never a secret)",
    tag = "connections",
    security(("appId" = [], "appKey" = [])),
    params(("user" = String, Query, description = "The user.")),
    responses((status = 200, description = "connections", body = inline(ConnectionList))),
)]
pub async fn list_handler(
    State(state): State<AppState>,
    AppAuth(app): AppAuth,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ConnectionList>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let user = query
        .user
        .ok_or_else(|| ApiError::bad_request("the query parameter user is required"))?;
    list_connections(&state.db, &state.policy, &app.app_id, &user)
        .await
        .map(Json)
}

#[utoipa::path(
    get,
    path = "/v1/connections/{provider}/{user}",
    operation_id = "getConnection",
    summary = "One connection's status (never a secret)",
    tag = "connections",
    security(("appId" = [], "appKey" = [])),
    params(("provider" = String, Path, description = "The provider configuration name, e.g. `slack`."), ("user" = String, Path, description = "The app's own id of its end user; `-` for app-level credentials.")),
    responses((status = 200, description = "connection", body = ConnectionView)),
)]
pub async fn get_handler(
    State(state): State<AppState>,
    AppAuth(app): AppAuth,
    ApiPath((provider, user)): ApiPath<(String, String)>,
) -> Result<Json<ConnectionView>, ApiError> {
    get_connection(&state.db, &state.policy, &app.app_id, &provider, &user)
        .await
        .map(Json)
}

/// Connections of `app_id` across users (for the CLI), optionally only those
/// whose stored status is `status`; at most `limit`.
pub async fn list_app_connections(
    db: &Db,
    defaults: &RefreshPolicy,
    app_id: &str,
    status: Option<connections::ConnectionStatus>,
    limit: i64,
) -> Result<ConnectionList, ApiError> {
    let mut views = Vec::new();
    for record in connections::list_for_app(db, app_id, status, limit).await? {
        let policy = policy_for(db, defaults, app_id, &record.key.provider).await?;
        views.push(ConnectionView::new(&record, &policy));
    }
    Ok(ConnectionList { connections: views })
}
