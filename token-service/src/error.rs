//! The one error type of the HTTP API: an [`ErrorCode`] plus a message,
//! answered as `{"error", "message"}` with `x-authstamp-error` and the code's
//! status. Also the JSON and path extractors that answer with it.

use authstamp_protocol::{headers, ErrorBody, ErrorCode};
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    code: ErrorCode,
    message: String,
    /// `Retry-After` in seconds (429).
    retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 429 `rate_limited`, with `Retry-After` (whole seconds, at least 1).
    pub fn rate_limited(what: &str, wait: std::time::Duration) -> Self {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        Self {
            code: ErrorCode::RateLimited,
            message: format!("too many {what} for this app; retry in {} s", secs.max(1)),
            retry_after: Some(secs.max(1)),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    pub fn invalid_state() -> Self {
        Self::new(
            ErrorCode::InvalidState,
            "the connect link or OAuth state is unknown, already used or expired",
        )
    }

    /// A bug or storage failure: the details go to the log, not the caller.
    /// `err` must not carry secrets (sqlx and vault errors do not).
    pub fn internal(context: &str, err: impl fmt::Display) -> Self {
        tracing::error!(error = %err, "{context}");
        Self::new(ErrorCode::Internal, "internal error")
    }

    pub fn code(&self) -> ErrorCode {
        self.code
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let code = self.code;
        let mut response = (
            status,
            Json(ErrorBody {
                error: code,
                message: self.message,
            }),
        )
            .into_response();
        response
            .headers_mut()
            .insert(headers::ERROR, HeaderValue::from_static(code.as_str()));
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        if crate::db::is_unavailable(&err) {
            tracing::warn!(error = %err, "database unavailable");
            return Self::new(
                ErrorCode::StorageUnavailable,
                "the token service's database did not answer in time; retry shortly",
            );
        }
        Self::internal("database error", err)
    }
}

impl From<crate::crypto::vault::VaultError> for ApiError {
    fn from(err: crate::crypto::vault::VaultError) -> Self {
        Self::internal("vault error", err)
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE | StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                Self::for_status(rejection.status())
            }
            _ => Self::bad_request(rejection.body_text()),
        }
    }
}

impl ApiError {
    /// The error for a status that axum or a layer answered by itself; a
    /// fixed message, never the original body.
    pub fn for_status(status: StatusCode) -> Self {
        let (code, message) = match status {
            StatusCode::NOT_FOUND => (ErrorCode::NotFound, "no such endpoint"),
            StatusCode::METHOD_NOT_ALLOWED => (
                ErrorCode::MethodNotAllowed,
                "method not allowed for this endpoint (see the Allow header)",
            ),
            StatusCode::REQUEST_TIMEOUT => (ErrorCode::RequestTimeout, "the request took too long"),
            StatusCode::PAYLOAD_TOO_LARGE => (
                ErrorCode::PayloadTooLarge,
                "request body is larger than 64 KiB",
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => (
                ErrorCode::UnsupportedMediaType,
                "send the body as JSON with content-type: application/json",
            ),
            StatusCode::UNAUTHORIZED => (ErrorCode::Unauthorized, "authentication required"),
            s if s.is_server_error() => (ErrorCode::Internal, "internal error"),
            _ => (ErrorCode::BadRequest, "the request is invalid"),
        };
        Self::new(code, message)
    }
}

/// Response layer: an error answered outside our handlers (axum's
/// rejections and fallbacks, body limits: plain text or no body) becomes
/// `{"error","message"}` with `x-authstamp-error`. Other headers (`Allow`,
/// `Retry-After`) are kept; a handler's own page (HTML, JSON) is left alone.
pub async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let own_body = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| !ct.starts_with("text/plain"));
    if !(status.is_client_error() || status.is_server_error())
        || response.headers().contains_key(headers::ERROR)
        || own_body
    {
        return response;
    }
    let (mut parts, _plain) = response.into_parts();
    let (json, body) = ApiError::for_status(status).into_response().into_parts();
    parts.status = json.status;
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    for (name, value) in &json.headers {
        parts.headers.insert(name.clone(), value.clone());
    }
    Response::from_parts(parts, body)
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::bad_request(rejection.body_text())
    }
}

/// `axum::Json` whose rejections are [`ApiError`]s (400 `bad_request`).
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(value) = Json::<T>::from_request(req, state).await?;
        Ok(Self(value))
    }
}

/// `axum::extract::Path` whose rejections are [`ApiError`]s.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(value) =
            axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(Self(value))
    }
}

pub async fn not_found_fallback() -> ApiError {
    ApiError::not_found("no such endpoint")
}

pub async fn method_not_allowed_fallback() -> ApiError {
    ApiError::for_status(StatusCode::METHOD_NOT_ALLOWED)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    async fn mapped(response: Response) -> (StatusCode, Option<String>, String) {
        let response = json_errors(response).await;
        let status = response.status();
        let code = response
            .headers()
            .get(headers::ERROR)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, code, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn plain_and_empty_errors_become_json_and_own_pages_stay() {
        let plain = (StatusCode::PAYLOAD_TOO_LARGE, "Length limit exceeded").into_response();
        let (status, code, body) = mapped(plain).await;
        assert_eq!(status, 413);
        assert_eq!(code.as_deref(), Some("payload_too_large"));
        assert!(
            body.starts_with("{\"error\":\"payload_too_large\""),
            "{body}"
        );

        let empty = Response::builder()
            .status(StatusCode::BAD_GATEWAY)
            .body(Body::empty())
            .unwrap();
        assert_eq!(mapped(empty).await.1.as_deref(), Some("internal"));

        let page = (
            StatusCode::BAD_REQUEST,
            axum::response::Html("<p>link expired</p>"),
        )
            .into_response();
        let (status, code, body) = mapped(page).await;
        assert_eq!(
            (status, code, body.as_str()),
            (StatusCode::BAD_REQUEST, None, "<p>link expired</p>")
        );

        let ok = (StatusCode::OK, "fine").into_response();
        assert_eq!(mapped(ok).await, (StatusCode::OK, None, "fine".to_owned()));
    }
}
