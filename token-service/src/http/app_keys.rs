//! `/v1/apps/{app_id}/keys`: adding, listing and revoking an app's keys
//! (the operations are in [`crate::service::apps`]).

use crate::http::auth::AdminAuth;
use crate::http::error::{ApiError, ApiPath};
use crate::service::apps::{self, RotateKey};
use crate::service::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

// HTTP handlers (admin).

#[utoipa::path(
    post,
    path = "/v1/apps/{app_id}/keys",
    operation_id = "addAppKey",
    summary = "Add an app key (rotation); the others stay valid until revoked or the grace ends",
    tag = "admin",
    security(("adminToken" = [])),
    params(("app_id" = String, Path, description = "The app id (`app_…`).")),
    request_body(content = Option<RotateKey>, description = "Optional: an empty body is an empty object."),
    responses((status = 201, description = "the new key, shown only here", body = apps::NewKey)),
)]
pub async fn rotate_handler(
    State(state): State<AppState>,
    _admin: AdminAuth,
    ApiPath(app_id): ApiPath<String>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<apps::NewKey>), ApiError> {
    let body = body.map_err(|rejection| ApiError::for_status(rejection.status()))?;
    let input = if body.iter().all(u8::is_ascii_whitespace) {
        RotateKey::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?
    };
    let created = apps::rotate(&state.db, &app_id, input).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

#[utoipa::path(
    get,
    path = "/v1/apps/{app_id}/keys",
    operation_id = "listAppKeys",
    summary = "List the app's keys (never a key or digest)",
    tag = "admin",
    security(("adminToken" = [])),
    params(("app_id" = String, Path, description = "The app id (`app_…`).")),
    responses((status = 200, description = "keys", body = inline(crate::http::openapi::KeyList))),
)]
pub async fn list_handler(
    State(state): State<AppState>,
    _admin: AdminAuth,
    ApiPath(app_id): ApiPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let keys = apps::list(&state.db, &app_id).await?;
    Ok(Json(serde_json::json!({ "keys": keys })))
}

#[utoipa::path(
    delete,
    path = "/v1/apps/{app_id}/keys/{key_id}",
    operation_id = "revokeAppKey",
    summary = "Revoke an app key",
    tag = "admin",
    security(("adminToken" = [])),
    params(("app_id" = String, Path, description = "The app id (`app_…`)."), ("key_id" = String, Path, description = "The key id.")),
    responses((status = 204, description = "revoked")),
)]
pub async fn revoke_handler(
    State(state): State<AppState>,
    _admin: AdminAuth,
    ApiPath((app_id, key_id)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    apps::revoke(&state.db, &app_id, &key_id).await?;
    Ok(StatusCode::NO_CONTENT)
}
