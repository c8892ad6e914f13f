//! Local replies: every failure of the filter is answered with the status of
//! its [`ErrorCode`], `content-type: application/json`, `x-authstamp-error`
//! and a JSON [`ErrorBody`].

use authstamp_protocol::{headers, ErrorBody, ErrorCode};

use crate::host::Host;

/// Longest message passed on from the token service (in characters).
pub const MAX_MESSAGE_CHARS: usize = 512;

/// A refused request: what the client gets instead of the provider's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub code: ErrorCode,
    pub message: String,
}

impl Rejection {
    /// A rejection with the status that goes with `code`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Rejection {
            status: code.http_status(),
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Rejection::new(ErrorCode::BadRequest, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Rejection::new(ErrorCode::TokenServiceUnavailable, message)
    }

    /// The token service's own error, passed on: its status when it is an
    /// error status, else the one that goes with the code.
    pub fn from_token_service(status: u16, body: ErrorBody) -> Self {
        let status = if (400..=599).contains(&status) {
            status
        } else {
            body.error.http_status()
        };
        let mut message: String = body.message.chars().take(MAX_MESSAGE_CHARS).collect();
        if message.is_empty() {
            message = format!("token service error {}", body.error);
        }
        Rejection {
            status,
            code: body.error,
            message,
        }
    }

    pub fn body(&self) -> Vec<u8> {
        let body = ErrorBody {
            error: self.code,
            message: self.message.clone(),
        };
        serde_json::to_vec(&body).unwrap_or_else(|_| {
            format!(r#"{{"error":"{}","message":"request refused"}}"#, self.code).into_bytes()
        })
    }

    /// Sends the local reply on the host's effective stream.
    pub fn send(&self, host: &dyn Host) {
        let body = self.body();
        host.send_local_reply(
            self.status,
            &[
                ("content-type", "application/json"),
                (headers::ERROR, self.code.as_str()),
            ],
            &body,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_follows_the_code() {
        let r = Rejection::new(ErrorCode::ForbiddenDestination, "no");
        assert_eq!(r.status, 403);
        assert_eq!(Rejection::bad_request("x").status, 400);
        assert_eq!(Rejection::unavailable("x").status, 503);
    }

    #[test]
    fn token_service_errors_keep_their_status_unless_it_is_not_an_error() {
        let body = |code| ErrorBody {
            error: code,
            message: "m".into(),
        };
        let r = Rejection::from_token_service(401, body(ErrorCode::BadAppKey));
        assert_eq!(
            (r.status, r.code, r.message.as_str()),
            (401, ErrorCode::BadAppKey, "m")
        );
        let r = Rejection::from_token_service(302, body(ErrorCode::NotConnected));
        assert_eq!(r.status, 404);
        let long = ErrorBody {
            error: ErrorCode::Internal,
            message: "é".repeat(2000),
        };
        let r = Rejection::from_token_service(500, long);
        assert_eq!(r.message.chars().count(), MAX_MESSAGE_CHARS);
        let empty = ErrorBody {
            error: ErrorCode::Internal,
            message: String::new(),
        };
        assert!(!Rejection::from_token_service(500, empty).message.is_empty());
    }

    #[test]
    fn body_is_an_error_body() {
        let r = Rejection::bad_request("header \"x\" is missing");
        let parsed: ErrorBody = serde_json::from_slice(&r.body()).unwrap();
        assert_eq!(parsed.error, ErrorCode::BadRequest);
        assert_eq!(parsed.message, "header \"x\" is missing");
    }
}
