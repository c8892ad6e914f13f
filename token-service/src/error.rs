//! The domain error of the token service's operations (`service/`, the
//! catalog, validation, policy): an [`ErrorCode`] from the shared contract,
//! a message a caller may read, and for `rate_limited` the wait. It knows
//! nothing of HTTP: `http::error::ApiError` answers it as a response, the
//! CLI prints it.

use authstamp_protocol::ErrorCode;
use std::fmt;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    code: ErrorCode,
    message: String,
    /// The wait in whole seconds (`rate_limited`).
    retry_after: Option<u64>,
}

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// `rate_limited`, with the wait in whole seconds (at least 1).
    pub fn rate_limited(what: &str, wait: Duration) -> Self {
        let secs = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
        Self {
            code: ErrorCode::RateLimited,
            message: format!("too many {what} for this app; retry in {secs} s"),
            retry_after: Some(secs),
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

    pub fn into_message(self) -> String {
        self.message
    }

    /// Seconds to wait before retrying (`rate_limited` only).
    pub fn retry_after(&self) -> Option<u64> {
        self.retry_after
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Error {}

impl From<sqlx::Error> for Error {
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

impl From<crate::crypto::vault::VaultError> for Error {
    fn from(err: crate::crypto::vault::VaultError) -> Self {
        Self::internal("vault error", err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_limit_waits_whole_seconds_and_at_least_one() {
        let cases = [(0, 1), (1, 1), (1_000, 1), (1_001, 2), (2_500, 3)];
        for (millis, secs) in cases {
            let err = Error::rate_limited("requests", Duration::from_millis(millis));
            assert_eq!(err.retry_after(), Some(secs), "{millis} ms");
            assert!(err.message().ends_with(&format!("retry in {secs} s")));
        }
        assert_eq!(Error::bad_request("x").retry_after(), None);
    }
}
