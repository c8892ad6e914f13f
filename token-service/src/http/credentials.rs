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
