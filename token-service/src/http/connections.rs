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

pub async fn get_handler(
    State(state): State<AppState>,
    AppAuth(app): AppAuth,
    ApiPath((provider, user)): ApiPath<(String, String)>,
) -> Result<Json<ConnectionView>, ApiError> {
    Ok(Json(
        get_connection(&state.db, &state.policy, &app.app_id, &provider, &user).await?,
    ))
}
