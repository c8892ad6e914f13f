//! The end of a connection's life and its renewal, for apps:
//!
//! - `DELETE /v1/connections/{provider}/{user}`: revokes the grant at the
//!   provider where the provider supports RFC 7009 (the refresh token if
//!   there is one, which revokes the whole grant at most providers, else the
//!   access token), then always deletes the connection locally, whatever the
//!   provider said. A `disconnected` webhook follows.
//! - `POST /v1/connections/{provider}/{user}/reconnect`: a new connect
//!   session for an existing OAuth connection, with the same connection
//!   parameters (the user consents again; the new tokens replace the old).

use crate::http::auth::AppAuth;
use crate::http::error::{ApiError, ApiPath};
use crate::service::connect::CreatedSession;
use crate::service::lifecycle::{disconnect, reconnect, Disconnected, Reconnect};
use crate::service::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

#[utoipa::path(
    delete,
    path = "/v1/connections/{provider}/{user}",
    operation_id = "disconnect",
    summary = "Disconnect: RFC 7009 revocation at the provider where supported, local delete always",
    tag = "connections",
    security(("appId" = [], "appKey" = [])),
    params(("provider" = String, Path, description = "The provider configuration name, e.g. `slack`."), ("user" = String, Path, description = "The app's own id of its end user; `-` for app-level credentials.")),
    responses((status = 200, description = "what happened", body = Disconnected)),
)]
pub async fn disconnect_handler(
    State(state): State<AppState>,
    AppAuth(app): AppAuth,
    ApiPath((provider, user)): ApiPath<(String, String)>,
) -> Result<Json<Disconnected>, ApiError> {
    Ok(Json(
        disconnect(&state, &app.app_id, &provider, &user).await?,
    ))
}

#[utoipa::path(
    post,
    path = "/v1/connections/{provider}/{user}/reconnect",
    operation_id = "reconnect",
    summary = "A new connect session for an existing OAuth connection (same parameters)",
    tag = "connections",
    security(("appId" = [], "appKey" = [])),
    params(("provider" = String, Path, description = "The provider configuration name, e.g. `slack`."), ("user" = String, Path, description = "The app's own id of its end user; `-` for app-level credentials.")),
    request_body(content = Option<Reconnect>, description = "Optional: an empty body means no return_to."),
    responses((status = 201, description = "created", body = CreatedSession)),
)]
/// `POST /v1/connections/{provider}/{user}/reconnect`.
pub async fn reconnect_handler(
    State(state): State<AppState>,
    AppAuth(app): AppAuth,
    ApiPath((provider_name, user)): ApiPath<(String, String)>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<CreatedSession>), ApiError> {
    // The body is optional: empty means no return_to.
    let input: Reconnect = if body.iter().all(u8::is_ascii_whitespace) {
        Reconnect::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?
    };
    state
        .limits
        .connect_sessions
        .check(&app.app_id)
        .map_err(|wait| ApiError::rate_limited("connect sessions", wait))?;
    let created = reconnect(&state, &app, &provider_name, &user, input).await?;
    Ok((StatusCode::CREATED, Json(created)))
}
