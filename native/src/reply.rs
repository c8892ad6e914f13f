//! The module's own local reply when it cannot go on (a panic): 500 with
//! authstamp's JSON error body, like every authstamp error.
#![forbid(unsafe_code)]

use authstamp_protocol::{headers, ErrorBody, ErrorCode};

/// What a stream gets after a panic in the module: `(status, headers, body)`.
pub fn internal_error() -> (u16, [(&'static str, &'static str); 2], Vec<u8>) {
    let code = ErrorCode::Internal;
    let body = ErrorBody {
        error: code,
        message: "the authstamp module failed on this request".to_string(),
    };
    let body = serde_json::to_vec(&body)
        .unwrap_or_else(|_| br#"{"error":"internal","message":"internal error"}"#.to_vec());
    (
        code.http_status(),
        [
            ("content-type", "application/json"),
            (headers::ERROR, code.as_str()),
        ],
        body,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_error_is_an_error_body_with_its_header() {
        let (status, headers, body) = internal_error();
        assert_eq!(status, 500);
        assert!(headers.contains(&("x-authstamp-error", "internal")));
        let body: ErrorBody = serde_json::from_slice(&body).expect("an ErrorBody");
        assert_eq!(body.error, ErrorCode::Internal);
    }
}
