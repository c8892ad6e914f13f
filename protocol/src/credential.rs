//! A credential and where it goes on a request. The rules here are the one
//! definition of a valid credential: the token service applies them when a
//! provider configuration is stored, and the filter before it stamps.

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::headers;

/// The credential to put on the upstream request: a header, e.g.
/// `authorization: Bearer <token>`, or (`"in": "query"`) a query parameter,
/// e.g. `?api_key=<key>`, replacing every parameter of that name the request
/// carried. The value is a secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Credential {
    pub name: String,
    pub value: String,
    /// Where the credential goes; absent means a header.
    #[serde(default, rename = "in", skip_serializing_if = "Placement::is_header")]
    pub placement: Placement,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("name", &self.name)
            .field("value", &"<redacted>")
            .field("in", &self.placement)
            .finish()
    }
}

/// Where a credential goes (OpenAPI's `in` of an API key).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Placement {
    /// A request header (`name` is a lowercase header name).
    #[default]
    Header,
    /// A query parameter (`name` matches `[A-Za-z0-9._~-]{1,64}`; the value is
    /// percent-encoded by the filter).
    Query,
}

impl Placement {
    pub fn is_header(&self) -> bool {
        *self == Placement::Header
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Placement::Header => "header",
            Placement::Query => "query",
        }
    }
}

/// Longest credential header or query-parameter name.
pub const MAX_NAME_BYTES: usize = 64;
/// Longest credential value.
pub const MAX_VALUE_BYTES: usize = 16 * 1024;

/// Header names a credential may never be sent as: HTTP framing and routing.
/// Names starting with `proxy-` or `x-authstamp-` are refused as well.
pub const RESERVED_HEADER_NAMES: [&str; 10] = [
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

/// An RFC 9110 token character.
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A non-empty header field name without upper-case letters.
pub fn is_lowercase_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| is_tchar(b) && !b.is_ascii_uppercase())
}

/// Whether `name` may be a credential query parameter: 1 to 64 RFC 3986
/// unreserved characters, so it needs no encoding.
pub fn is_query_param_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'))
}

/// Whether a credential may be sent in the header `name`.
pub fn check_header_name(name: &str) -> Result<(), &'static str> {
    if !is_lowercase_header_name(name) || name.len() > MAX_NAME_BYTES {
        return Err(
            "the credential header name is not a lowercase header name of at most 64 bytes",
        );
    }
    if RESERVED_HEADER_NAMES.contains(&name)
        || name.starts_with("proxy-")
        || name.starts_with(headers::PREFIX)
    {
        return Err(
            "the credential header name is reserved (HTTP framing, proxy-* or x-authstamp-*)",
        );
    }
    Ok(())
}

/// Whether `name` is a valid credential name for `placement`.
pub fn check_name(placement: Placement, name: &str) -> Result<(), &'static str> {
    match placement {
        Placement::Header => check_header_name(name),
        Placement::Query if is_query_param_name(name) => Ok(()),
        Placement::Query => {
            Err("the credential query parameter name is not 1 to 64 of [A-Za-z0-9._~-]")
        }
    }
}

/// A value is non-empty, at most [`MAX_VALUE_BYTES`] and without CR, LF or NUL.
pub fn check_value(value: &str) -> Result<(), &'static str> {
    if value.is_empty() || value.len() > MAX_VALUE_BYTES {
        return Err("the credential value is empty or too long");
    }
    if value.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
        return Err("the credential value contains CR, LF or NUL");
    }
    Ok(())
}

/// Everything the filter checks before it puts `credential` on a request.
pub fn check(credential: &Credential) -> Result<(), &'static str> {
    check_name(credential.placement, &credential.name)?;
    check_value(&credential.value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, value: &str) -> Credential {
        Credential {
            name: name.into(),
            value: value.into(),
            placement: Placement::Header,
        }
    }

    fn query(name: &str, value: &str) -> Credential {
        Credential {
            placement: Placement::Query,
            ..header(name, value)
        }
    }

    #[test]
    fn placement_defaults_to_a_header_on_the_wire() {
        let header: Credential =
            serde_json::from_str(r#"{"name":"authorization","value":"Bearer x"}"#).unwrap();
        assert_eq!(header.placement, Placement::Header);
        assert_eq!(
            serde_json::to_string(&header).unwrap(),
            r#"{"name":"authorization","value":"Bearer x"}"#
        );
        let query: Credential =
            serde_json::from_str(r#"{"name":"api_key","value":"k","in":"query"}"#).unwrap();
        assert_eq!(query.placement, Placement::Query);
        assert!(serde_json::to_string(&query)
            .unwrap()
            .contains(r#""in":"query""#));
    }

    #[test]
    fn debug_hides_the_value() {
        let debug = format!("{:?}", header("authorization", "Bearer s3cr3t"));
        assert!(!debug.contains("s3cr3t"), "{debug}");
        assert!(debug.contains("authorization"));
    }

    #[test]
    fn header_credentials_are_checked() {
        assert_eq!(check(&header("authorization", "Bearer x")), Ok(()));
        assert_eq!(check(&header("x-api-key", "k")), Ok(()));
        assert_eq!(check(&header(&"a".repeat(64), "k")), Ok(()));
        for (name, value) in [
            ("Authorization", "Bearer x"),
            ("", "x"),
            ("auth header", "x"),
            (":authority", "x"),
            ("host", "x"),
            ("content-length", "1"),
            ("proxy-authorization", "x"),
            ("x-authstamp-route", "https"),
            (&"a".repeat(65), "x"),
            ("authorization", ""),
            ("authorization", "Bearer x\r\nx-injected: 1"),
            ("authorization", "Bearer x\n"),
            ("authorization", "Bearer \0"),
        ] {
            assert!(check(&header(name, value)).is_err(), "{name}: {value:?}");
        }
        let long = "a".repeat(MAX_VALUE_BYTES + 1);
        assert!(check(&header("authorization", &long)).is_err());
    }

    #[test]
    fn query_credentials_are_checked() {
        assert_eq!(check(&query("api_key", "v")), Ok(()));
        for (name, value) in [
            ("a b", "v"),
            ("a=b", "v"),
            ("a&b", "v"),
            ("a%20", "v"),
            ("", "v"),
            (&"a".repeat(65), "v"),
            ("k", ""),
            ("k", "a\nb"),
        ] {
            assert!(check(&query(name, value)).is_err(), "{name}={value:?}");
        }
    }
}
