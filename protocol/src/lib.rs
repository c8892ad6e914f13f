//! The contracts between the authstamp filter, the token service and the
//! applications that call through Envoy. Everything here is user-facing and
//! versioned: change it only with a new API version.

use serde::{Deserialize, Serialize};
use std::fmt;

pub mod credential;
pub mod upstream;

pub use credential::{Credential, Placement};
pub use upstream::Upstream;

/// Request and response header names of the pass-through.
pub mod headers {
    /// Every header starting with this prefix is authstamp's: a request that
    /// carries one is handled by the filter, and all of them are removed
    /// before the request leaves Envoy.
    pub const PREFIX: &str = "x-authstamp-";
    /// Which provider configuration (e.g. `slack`) the request is for.
    pub const PROVIDER: &str = "x-authstamp-provider";
    /// The application's own identifier of its end user.
    pub const USER: &str = "x-authstamp-user";
    /// The app id (gateway mode; in mesh mode the filter configuration binds it).
    pub const APP: &str = "x-authstamp-app";
    /// The app key that proves the caller is the app (gateway mode).
    pub const APP_KEY: &str = "x-authstamp-app-key";
    /// Set on every local reply of the filter and on every token-service error.
    pub const ERROR: &str = "x-authstamp-error";
    /// Set by the filter after stamping, for Envoy's route table only: `http`
    /// or `https`, the scheme of the connection's upstream. Routes remove it
    /// before the request goes upstream.
    pub const ROUTE: &str = "x-authstamp-route";
}

/// Paths of the token-service API used by the filter.
pub mod paths {
    /// `POST` a [`TokenLookupRequest`](crate::TokenLookupRequest) with app auth
    /// headers; answers a [`TokenLookupResponse`](crate::TokenLookupResponse).
    pub const TOKEN_LOOKUP: &str = "/v1/token-lookup";
    /// The one redirect URL registered with every provider.
    pub const OAUTH_CALLBACK: &str = "/v1/oauth/callback";
}

/// Every error of the filter and the token service, as the `error` field of
/// an [`ErrorBody`] and the value of the `x-authstamp-error` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ErrorCode {
    /// Malformed request: missing or invalid field, header or parameter.
    BadRequest,
    /// Admin API called without the right admin token.
    Unauthorized,
    /// The app id is not known.
    UnknownApp,
    /// The app key does not match the app.
    BadAppKey,
    /// The app has no configuration for this provider.
    UnknownProvider,
    /// The user never connected this provider for this app (or disconnected).
    NotConnected,
    /// The provider refused the refresh token (e.g. `invalid_grant`): the user
    /// must connect again.
    ReauthRequired,
    /// The provider's token endpoint failed or timed out and no valid token is
    /// left to serve.
    ProviderUnavailable,
    /// The filter could not reach the token service, or it timed out.
    TokenServiceUnavailable,
    /// A connect session or OAuth state is unknown, used or expired.
    InvalidState,
    /// The provider's authorization or token response was refused or invalid.
    OauthFailed,
    /// A resource of the admin or lifecycle API does not exist.
    NotFound,
    /// The request would send a token somewhere its provider does not allow.
    ForbiddenDestination,
    /// Too many requests for this app.
    RateLimited,
    /// Mesh mode: the calling workload's identity (peer certificate URI SAN
    /// or source principal) is not in the filter's `app.allowed_workloads`.
    ForbiddenWorkload,
    /// A connect page's form was posted from another site, or without the
    /// page's CSRF token.
    CrossSiteRequest,
    /// A connect result was confirmed for another user than the one the
    /// connect link was made for: the connection is discarded.
    UserMismatch,
    /// The token service's database did not answer in time (an outage or
    /// a failover); nothing was changed.
    StorageUnavailable,
    /// Envoy: a protocol upgrade (WebSocket, CONNECT) was asked for; none is
    /// proxied.
    UpgradeRefused,
    /// Envoy: the request (its headers, or all of it) did not arrive in time.
    RequestTimeout,
    /// Envoy: the request body is over the buffer limit.
    PayloadTooLarge,
    /// Envoy: HTTP/1.0 request; HTTP/1.1 or HTTP/2 is required.
    UpgradeRequired,
    /// Envoy: the request line and headers are over `max_request_headers_kb`.
    HeadersTooLarge,
    /// Envoy: unsupported method or transfer encoding.
    NotImplemented,
    /// Envoy: the upstream (the provider's API host) could not be reached or
    /// reset the request (Envoy's 502 or 503).
    UpstreamUnavailable,
    /// Envoy: the upstream did not answer within the route timeout.
    UpstreamTimeout,
    /// The request conflicts with the resource's current state (e.g. an app
    /// already holds its maximum of keys).
    Conflict,
    /// The path exists but not for this method.
    MethodNotAllowed,
    /// The request body is not of the content type the endpoint accepts.
    UnsupportedMediaType,
    /// Added to a provider's own 401: the provider refused the stamped token
    /// and authstamp could not heal it (the refreshed token was refused too,
    /// or this connection had its forced refresh within the interval).
    TokenRefused,
    /// A bug or storage failure; details are in the token service's log.
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 31] = [
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::UnknownApp,
        ErrorCode::BadAppKey,
        ErrorCode::UnknownProvider,
        ErrorCode::NotConnected,
        ErrorCode::ReauthRequired,
        ErrorCode::ProviderUnavailable,
        ErrorCode::TokenServiceUnavailable,
        ErrorCode::InvalidState,
        ErrorCode::OauthFailed,
        ErrorCode::NotFound,
        ErrorCode::ForbiddenDestination,
        ErrorCode::RateLimited,
        ErrorCode::ForbiddenWorkload,
        ErrorCode::CrossSiteRequest,
        ErrorCode::UserMismatch,
        ErrorCode::StorageUnavailable,
        ErrorCode::UpgradeRefused,
        ErrorCode::RequestTimeout,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UpgradeRequired,
        ErrorCode::HeadersTooLarge,
        ErrorCode::NotImplemented,
        ErrorCode::UpstreamUnavailable,
        ErrorCode::UpstreamTimeout,
        ErrorCode::Conflict,
        ErrorCode::MethodNotAllowed,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::TokenRefused,
        ErrorCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::UnknownApp => "unknown_app",
            ErrorCode::BadAppKey => "bad_app_key",
            ErrorCode::UnknownProvider => "unknown_provider",
            ErrorCode::NotConnected => "not_connected",
            ErrorCode::ReauthRequired => "reauth_required",
            ErrorCode::ProviderUnavailable => "provider_unavailable",
            ErrorCode::TokenServiceUnavailable => "token_service_unavailable",
            ErrorCode::InvalidState => "invalid_state",
            ErrorCode::OauthFailed => "oauth_failed",
            ErrorCode::NotFound => "not_found",
            ErrorCode::ForbiddenDestination => "forbidden_destination",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::ForbiddenWorkload => "forbidden_workload",
            ErrorCode::CrossSiteRequest => "cross_site_request",
            ErrorCode::UserMismatch => "user_mismatch",
            ErrorCode::StorageUnavailable => "storage_unavailable",
            ErrorCode::Conflict => "conflict",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::Internal => "internal",
            ErrorCode::UpgradeRefused => "upgrade_refused",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UpgradeRequired => "upgrade_required",
            ErrorCode::HeadersTooLarge => "headers_too_large",
            ErrorCode::NotImplemented => "not_implemented",
            ErrorCode::UpstreamUnavailable => "upstream_unavailable",
            ErrorCode::UpstreamTimeout => "upstream_timeout",
            ErrorCode::TokenRefused => "token_refused",
        }
    }

    pub fn from_code(code: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == code)
    }

    /// The HTTP status that goes with the code, the same in the filter and
    /// the token service.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::UnknownApp => 401,
            ErrorCode::BadAppKey => 401,
            ErrorCode::UnknownProvider => 404,
            ErrorCode::NotConnected => 404,
            ErrorCode::ReauthRequired => 409,
            ErrorCode::ProviderUnavailable => 502,
            ErrorCode::TokenServiceUnavailable => 503,
            ErrorCode::InvalidState => 400,
            ErrorCode::OauthFailed => 502,
            ErrorCode::NotFound => 404,
            ErrorCode::ForbiddenDestination => 403,
            ErrorCode::RateLimited => 429,
            ErrorCode::ForbiddenWorkload => 403,
            ErrorCode::CrossSiteRequest => 403,
            ErrorCode::UserMismatch => 403,
            ErrorCode::StorageUnavailable => 503,
            ErrorCode::Conflict => 409,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::Internal => 500,
            ErrorCode::UpgradeRefused => 403,
            ErrorCode::RequestTimeout => 408,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::UpgradeRequired => 426,
            ErrorCode::HeadersTooLarge => 431,
            ErrorCode::NotImplemented => 501,
            ErrorCode::UpstreamUnavailable => 503,
            ErrorCode::UpstreamTimeout => 504,
            ErrorCode::TokenRefused => 401,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The JSON body of every error: `{"error": "<code>", "message": "…"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = Error))]
pub struct ErrorBody {
    pub error: ErrorCode,
    pub message: String,
}

/// Body of `POST /v1/token-lookup`. The app is identified by the
/// `x-authstamp-app` and `x-authstamp-app-key` headers of the lookup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenLookupRequest {
    pub provider: String,
    pub user: String,
    /// Refresh at the provider even if the stored token looks valid (the
    /// provider answered 401 to it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force_refresh: bool,
}

/// Answer of `POST /v1/token-lookup`: what to stamp and where to send it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenLookupResponse {
    /// Serialized as `header`, its name before query credentials existed.
    #[serde(rename = "header")]
    pub credential: Credential,
    pub upstream: Upstream,
    /// Unix seconds when the access token expires; `None` when the provider
    /// gave no lifetime.
    pub expires_at: Option<u64>,
}

impl fmt::Debug for TokenLookupResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenLookupResponse")
            .field("credential", &self.credential)
            .field("upstream", &self.upstream)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_round_trip_through_their_names() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_code(code.as_str()), Some(code));
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert!((400..600).contains(&code.http_status()));
        }
        assert_eq!(ErrorCode::from_code("nope"), None);
    }

    #[test]
    fn debug_of_lookup_response_hides_the_credential() {
        let response = TokenLookupResponse {
            credential: Credential {
                name: "authorization".into(),
                value: "Bearer s3cr3t-token".into(),
                placement: Placement::Header,
            },
            upstream: Upstream {
                scheme: "https".into(),
                authority: "slack.com".into(),
                base_path: String::new(),
            },
            expires_at: Some(1),
        };
        let debug = format!("{response:?}");
        assert!(!debug.contains("s3cr3t-token"), "{debug}");
        assert!(debug.contains("slack.com"));
        // The wire keeps the field's first name.
        let json = serde_json::to_value(&response).unwrap();
        assert_eq!(json["header"]["name"], "authorization");
        assert_eq!(json.get("credential"), None);
    }

    #[test]
    fn lookup_request_rejects_unknown_fields() {
        let err = serde_json::from_str::<TokenLookupRequest>(
            r#"{"provider":"p","user":"u","app":"other"}"#,
        );
        assert!(err.is_err());
        let ok: TokenLookupRequest =
            serde_json::from_str(r#"{"provider":"p","user":"u"}"#).unwrap();
        assert!(!ok.force_refresh);
    }
}
