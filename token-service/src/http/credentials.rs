//! `PUT /v1/connections/{provider}/{user}/credentials`: an app stores a
//! user's API key or Basic credentials (`service::credentials` seals and
//! stores them).

use crate::http::auth::AppAuth;
use crate::http::error::{ApiError, ApiJson, ApiPath};
use crate::service::connections::ConnectionView;
use crate::service::credentials::{put_credentials, PutCredentials};
use crate::service::state::AppState;
use axum::extract::State;
use axum::Json;

#[utoipa::path(
    put,
    path = "/v1/connections/{provider}/{user}/credentials",
    operation_id = "putCredentials",
    summary = "Store a user's API key or Basic credentials (sealed in the vault)",
    tag = "connections",
    security(("appId" = [], "appKey" = [])),
    params(("provider" = String, Path, description = "The provider configuration name, e.g. `slack`."), ("user" = String, Path, description = "The app's own id of its end user; `-` for app-level credentials.")),
    request_body = PutCredentials,
    responses((status = 200, description = "connection", body = ConnectionView)),
)]
/// `PUT /v1/connections/{provider}/{user}/credentials` (app auth).
pub async fn put_handler(
    State(state): State<AppState>,
    AppAuth(app): AppAuth,
    ApiPath((provider, user)): ApiPath<(String, String)>,
    ApiJson(input): ApiJson<PutCredentials>,
) -> Result<Json<ConnectionView>, ApiError> {
    Ok(Json(
        put_credentials(&state, &app.app_id, &provider, &user, input).await?,
    ))
}
