//! `/v1/apps` and `/v1/apps/{app_id}/providers/{provider}`: the admin
//! handlers; the operations are in [`crate::service::apps`] and
//! [`crate::service::providers`].

use crate::http::auth::AdminAuth;
use crate::http::error::{ApiError, ApiJson, ApiPath};
use crate::service::apps::{self, CreateApp, CreatedApp};
use crate::service::providers::{self, ProviderView, PutProvider};
use crate::service::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

#[utoipa::path(
    post,
    path = "/v1/apps",
    operation_id = "createApp",
    summary = "Create an app; its key is shown only here",
    tag = "admin",
    security(("adminToken" = [])),
    request_body(content = Option<CreateApp>, description = "Optional: an empty body is an empty object."),
    responses((status = 201, description = "created", body = CreatedApp)),
)]
pub async fn create_app_handler(
    State(state): State<AppState>,
    _admin: AdminAuth,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<CreatedApp>), ApiError> {
    let body = body.map_err(|rejection| ApiError::for_status(rejection.status()))?;
    // Both fields are optional, so an empty body is an empty object.
    let input = if body.iter().all(u8::is_ascii_whitespace) {
        CreateApp::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?
    };
    let created = apps::create_app(&state.db, input).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

#[utoipa::path(
    put,
    path = "/v1/apps/{app_id}/providers/{provider}",
    operation_id = "putProvider",
    summary = "Create or replace a provider configuration (from the catalog plus overrides, or custom)",
    tag = "admin",
    security(("adminToken" = [])),
    params(("app_id" = String, Path, description = "The app id (`app_…`)."), ("provider" = String, Path, description = "The provider configuration name, e.g. `slack`.")),
    request_body = PutProvider,
    responses((status = 200, description = "the stored configuration, without the secret", body = ProviderView)),
)]
pub async fn put_provider_handler(
    State(state): State<AppState>,
    _admin: AdminAuth,
    ApiPath((app_id, provider)): ApiPath<(String, String)>,
    ApiJson(input): ApiJson<PutProvider>,
) -> Result<Json<ProviderView>, ApiError> {
    providers::put_provider(
        &state.db,
        &state.vault,
        Some(&state.public_url),
        &app_id,
        &provider,
        input,
    )
    .await
    .map(Json)
    .map_err(ApiError::from)
}

#[utoipa::path(
    get,
    path = "/v1/apps/{app_id}/providers/{provider}",
    operation_id = "getProvider",
    summary = "Read a provider configuration (without the secret)",
    tag = "admin",
    security(("adminToken" = [])),
    params(("app_id" = String, Path, description = "The app id (`app_…`)."), ("provider" = String, Path, description = "The provider configuration name, e.g. `slack`.")),
    responses((status = 200, description = "configuration", body = ProviderView)),
)]
pub async fn get_provider_handler(
    State(state): State<AppState>,
    _admin: AdminAuth,
    ApiPath((app_id, provider)): ApiPath<(String, String)>,
) -> Result<Json<ProviderView>, ApiError> {
    let view =
        providers::get_provider(&state.db, Some(&state.public_url), &app_id, &provider).await?;
    Ok(Json(view))
}
