//! `PUT`, `GET` and `DELETE /v1/apps/{app_id}/webhook` (admin).

use crate::http::auth::AdminAuth;
use crate::http::error::{ApiError, ApiJson, ApiPath};
use crate::service::state::AppState;
use crate::service::webhooks::{delete, get, put, view, PutWebhook, WebhookView};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

#[utoipa::path(
    put,
    path = "/v1/apps/{app_id}/webhook",
    operation_id = "putWebhook",
    summary = "Set the app's webhook URL (and signing secret; made and shown once if absent)",
    tag = "admin",
    security(("adminToken" = [])),
    params(("app_id" = String, Path, description = "The app id (`app_…`).")),
    request_body = PutWebhook,
    responses((status = 200, description = "webhook", body = WebhookView)),
)]
pub async fn put_handler(
    State(state): State<AppState>,
    _admin: AdminAuth,
    ApiPath(app_id): ApiPath<String>,
    ApiJson(input): ApiJson<PutWebhook>,
) -> Result<Json<WebhookView>, ApiError> {
    Ok(Json(put(&state.db, &state.vault, &app_id, input).await?))
}

#[utoipa::path(
    get,
    path = "/v1/apps/{app_id}/webhook",
    operation_id = "getWebhook",
    summary = "Read the app's webhook (never the secret)",
    tag = "admin",
    security(("adminToken" = [])),
    params(("app_id" = String, Path, description = "The app id (`app_…`).")),
    responses((status = 200, description = "webhook", body = WebhookView)),
)]
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

#[utoipa::path(
    delete,
    path = "/v1/apps/{app_id}/webhook",
    operation_id = "deleteWebhook",
    summary = "Remove the app's webhook",
    tag = "admin",
    security(("adminToken" = [])),
    params(("app_id" = String, Path, description = "The app id (`app_…`).")),
    responses((status = 204, description = "removed")),
)]
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
