//! `PUT`, `GET` and `DELETE /v1/apps/{app_id}/webhook` (admin).

use crate::http::auth::AdminAuth;
use crate::http::error::{ApiError, ApiJson, ApiPath};
use crate::service::state::AppState;
use crate::service::webhooks::{delete, get, put, view, PutWebhook, WebhookView};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

pub async fn put_handler(
    State(state): State<AppState>,
    _admin: AdminAuth,
    ApiPath(app_id): ApiPath<String>,
    ApiJson(input): ApiJson<PutWebhook>,
) -> Result<Json<WebhookView>, ApiError> {
    Ok(Json(put(&state.db, &state.vault, &app_id, input).await?))
}

pub async fn get_handler(
    State(state): State<AppState>,
    _admin: AdminAuth,
    ApiPath(app_id): ApiPath<String>,
) -> Result<Json<WebhookView>, ApiError> {
    get(&state.db, &app_id)
        .await?
        .map(|r| Json(view(&r, None)))
        .ok_or_else(|| ApiError::not_found(format!("app {app_id:?} has no webhook")))
}

pub async fn delete_handler(
    State(state): State<AppState>,
    _admin: AdminAuth,
    ApiPath(app_id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    if !delete(&state.db, &app_id).await? {
        return Err(ApiError::not_found(format!(
            "app {app_id:?} has no webhook"
        )));
    }
    Ok(StatusCode::NO_CONTENT)
}
