//! `GET /v1/connections?user=…` and `GET /v1/connections/{provider}/{user}`:
//! an app reads the state of its users' connections (never a token).

use crate::http::auth::AppAuth;
use crate::http::error::{ApiError, ApiPath};
use crate::service::connections::{
    get_connection, list_connections, ConnectionList, ConnectionView,
};
use crate::service::state::AppState;
use axum::extract::{Query, State};
use axum::Json;
use serde::Deserialize;

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
    Ok(Json(
        list_connections(&state.db, &state.policy, &app.app_id, &user).await?,
    ))
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
    Ok(Json(
        get_connection(&state.db, &state.policy, &app.app_id, &provider, &user).await?,
    ))
}
