//! The HTTP edge of errors: [`ApiError`] answers a domain
//! [`Error`](crate::http::error::Error) as `{"error", "message"}` with
//! `x-authstamp-error`, the code's status and `Retry-After` where set. Also
//! the JSON and path extractors and the fallbacks that answer with it.

use crate::error::Error;
use authstamp_protocol::{headers, ErrorBody, ErrorCode};
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use std::fmt;

/// A domain error on its way out as an HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError(Error);

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self(Error::new(code, message))
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self(Error::bad_request(message))
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self(Error::not_found(message))
    }

    pub fn invalid_state() -> Self {
        Self(Error::invalid_state())
    }

    pub fn internal(context: &str, err: impl fmt::Display) -> Self {
        Self(Error::internal(context, err))
    }

    pub fn rate_limited(what: &str, wait: std::time::Duration) -> Self {
        Self(Error::rate_limited(what, wait))
    }

    pub fn code(&self) -> ErrorCode {
        self.0.code()
    }

    pub fn message(&self) -> &str {
        self.0.message()
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.0.code().http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for ApiError {}

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        Self(err)
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        Self(err.into())
    }
}

impl From<crate::crypto::vault::VaultError> for ApiError {
    fn from(err: crate::crypto::vault::VaultError) -> Self {
        Self(err.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let code = self.0.code();
        let retry_after = self.0.retry_after();
        let mut response = (
            status,
            Json(ErrorBody {
                error: code,
                message: self.0.into_message(),
            }),
        )
            .into_response();
        response
            .headers_mut()
            .insert(headers::ERROR, HeaderValue::from_static(code.as_str()));
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
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
