//! Reading a request: is it ours (marked), and whose token does it want.

use std::fmt;

use authstamp_protocol::headers;

use crate::config::{AppBinding, Config, Secret};
use crate::host::HeaderPairs;
use crate::reply::Rejection;
use crate::stamp;

/// Longest accepted value of an identity header.
pub const MAX_VALUE_BYTES: usize = 256;

/// Which app, provider and user a marked request stands for.
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    pub app_id: String,
    pub app_key: Secret,
    pub provider: String,
    pub user: String,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("app_id", &self.app_id)
            .field("app_key", &self.app_key)
            .field("provider", &self.provider)
            .field("user", &self.user)
            .finish()
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Classified {
    /// No authstamp header at all: not ours.
    Unmarked,
    Marked(Identity),
}

/// Byte `b` as CGI-style servers and some proxies match header names:
/// lowercase, `_` read as `-`.
fn dashed(b: u8) -> u8 {
    if b == b'_' {
        b'-'
    } else {
        b.to_ascii_lowercase()
    }
}

/// Whether `name` equals `other` with `_` read as `-`, ignoring ASCII case.
pub fn eq_dashed(name: &str, other: &str) -> bool {
    name.len() == other.len()
        && name
            .bytes()
            .zip(other.bytes())
            .all(|(a, b)| dashed(a) == dashed(b))
}

pub fn starts_with_dashed(name: &str, prefix: &str) -> bool {
    name.get(..prefix.len())
        .is_some_and(|start| eq_dashed(start, prefix))
}

fn is_authstamp_name(name: &str, config: &Config) -> bool {
    starts_with_dashed(name, headers::PREFIX)
        || config.headers.all().iter().any(|n| eq_dashed(name, n))
}

/// Whether the request carries any authstamp header: a name starting with
/// `x-authstamp-` or one of the configured names, also when spelled with
/// underscores (such a request is then refused, see [`classify`]).
pub fn is_marked(headers: &HeaderPairs, config: &Config) -> bool {
    headers
        .iter()
        .any(|(name, _)| is_authstamp_name(name, config))
}

/// Whether `name` is, up to ASCII case, an authstamp header or a stripped
/// credential as spelled (a configured name may hold an underscore).
fn is_exact_name(name: &str, config: &Config) -> bool {
    name.get(..headers::PREFIX.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(headers::PREFIX))
        || config
            .headers
            .all()
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n))
        || stamp::STRIPPED.iter().any(|n| name.eq_ignore_ascii_case(n))
}

/// A header that spells an authstamp header or an inbound credential with
/// underscores (`x_authstamp_app_key`, `proxy_authorization`): a proxy or
/// provider that reads `_` as `-` would take it for the real one.
fn underscore_spelling<'a>(headers: &'a HeaderPairs, config: &Config) -> Option<&'a str> {
    headers
        .iter()
        .map(|(name, _)| name.as_str())
        .filter(|name| !is_exact_name(name, config))
        .find(|name| {
            is_authstamp_name(name, config) || stamp::STRIPPED.iter().any(|n| eq_dashed(name, n))
        })
}

/// Classifies a request and, if it is marked, reads its identity. A marked
/// request with a missing, repeated or invalid identity header is refused
/// with a message naming the header (never its value).
///
/// Transparent egress (`provider_hosts` configured): a marked request without
/// a provider header is for the provider mapped to its `:authority`, and is
/// refused with `forbidden_destination` when its host maps to none; an
/// unmarked request to an unmapped host is refused when `unmapped_hosts` is
/// `reject`.
pub fn classify(headers: &HeaderPairs, config: &Config) -> Result<Classified, Rejection> {
    if !is_marked(headers, config) {
        config.egress.check_unmarked(headers)?;
        return Ok(Classified::Unmarked);
    }
    if let Some(name) = underscore_spelling(headers, config) {
        let name: String = name.chars().take(64).collect();
        return Err(Rejection::bad_request(format!(
            "header {name} spells an authstamp header or a credential with underscores: send it with dashes, or not at all"
        )));
    }
    let names = &config.headers;
    let provider = if config.egress.is_enabled() && !has_header(headers, &names.provider) {
        config.egress.provider_of_request(headers)?
    } else {
        single_value(headers, &names.provider)?
    };
    let user = single_value(headers, &names.user)?;
    let (app_id, app_key) = match &config.app {
        AppBinding::Mesh { id, key } => (id.clone(), key.clone()),
        AppBinding::Gateway => (
            single_value(headers, &names.app)?,
            Secret::new(single_value(headers, &names.app_key)?),
        ),
    };
    Ok(Classified::Marked(Identity {
        app_id,
        app_key,
        provider,
        user,
    }))
}

/// Whether the request carries header `name` at all.
pub fn has_header(headers: &HeaderPairs, name: &str) -> bool {
    headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name))
}

/// The one valid value of header `name`.
fn single_value(headers: &HeaderPairs, name: &str) -> Result<String, Rejection> {
    let mut values = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v);
    let Some(value) = values.next() else {
        return Err(Rejection::bad_request(format!("missing header {name}")));
    };
    if values.next().is_some() {
        return Err(Rejection::bad_request(format!(
            "header {name} must appear exactly once"
        )));
    }
    let Ok(text) = std::str::from_utf8(value) else {
        return Err(Rejection::bad_request(format!(
            "header {name} is not valid UTF-8"
        )));
    };
    if text.is_empty() {
        return Err(Rejection::bad_request(format!("header {name} is empty")));
    }
    if text.len() > MAX_VALUE_BYTES {
        return Err(Rejection::bad_request(format!(
            "header {name} is longer than {MAX_VALUE_BYTES} bytes"
        )));
    }
    if text.chars().any(char::is_control) {
        return Err(Rejection::bad_request(format!(
            "header {name} contains control characters"
        )));
    }
    Ok(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use authstamp_protocol::ErrorCode;

    fn gateway() -> Config {
        Config::parse(
            br#"{"token_service": {"cluster": "ts", "authority": "ts"}}"#,
            &|_| None,
        )
        .unwrap()
    }

    fn pairs(list: &[(&str, &str)]) -> HeaderPairs {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn debug_of_an_identity_hides_the_key() {
        let id = Identity {
            app_id: "app_1".into(),
            app_key: Secret::new("ask_hidden"),
            provider: "slack".into(),
            user: "u".into(),
        };
        let debug = format!("{id:?}");
        assert!(!debug.contains("ask_hidden"), "{debug}");
        assert!(debug.contains("slack"));
    }

    #[test]
    fn any_authstamp_prefix_marks_a_request() {
        let config = gateway();
        assert!(!is_marked(
            &pairs(&[(":path", "/"), ("authorization", "x")]),
            &config
        ));
        assert!(is_marked(
            &pairs(&[("x-authstamp-route", "https")]),
            &config
        ));
        assert!(is_marked(&pairs(&[("X-Authstamp-Whatever", "1")]), &config));
    }

    fn mesh_egress(unmapped: &str) -> Config {
        let json = format!(
            r#"{{"token_service": {{"cluster": "ts", "authority": "ts"}},
                "app": {{"id": "app_mesh", "key_env": "K"}},
                "provider_hosts": {{"slack.com": "slack"}}, "unmapped_hosts": "{unmapped}"}}"#
        );
        Config::parse(json.as_bytes(), &|_| Some("ask_mesh".to_string())).unwrap()
    }

    #[test]
    fn transparent_requests_take_the_provider_from_their_host_and_the_app_from_the_config() {
        let config = mesh_egress("pass");
        let headers = pairs(&[
            (":authority", "Slack.com"),
            (":path", "/api/chat.postMessage"),
            ("x-authstamp-user", "U1"),
            // Headers cannot override the bound app.
            ("x-authstamp-app", "app_other"),
        ]);
        let Classified::Marked(id) = classify(&headers, &config).unwrap() else {
            panic!("marked")
        };
        assert_eq!(
            (id.app_id.as_str(), id.provider.as_str(), id.user.as_str()),
            ("app_mesh", "slack", "U1")
        );
        assert_eq!(id.app_key, Secret::new("ask_mesh"));

        // An explicit provider header wins over the host.
        let explicit = pairs(&[
            (":authority", "slack.com"),
            ("x-authstamp-provider", "google"),
            ("x-authstamp-user", "U1"),
        ]);
        let Classified::Marked(id) = classify(&explicit, &config).unwrap() else {
            panic!("marked")
        };
        assert_eq!(id.provider, "google");

        // A user header to an unmapped host never leaves without a token.
        let unmapped = pairs(&[(":authority", "evil.com"), ("x-authstamp-user", "U1")]);
        let err = classify(&unmapped, &config).unwrap_err();
        assert_eq!(err.code, ErrorCode::ForbiddenDestination);
        // A mapped host still needs the user header.
        let no_user = pairs(&[(":authority", "slack.com"), ("x-authstamp-route", "https")]);
        assert_eq!(
            classify(&no_user, &config).unwrap_err().code,
            ErrorCode::BadRequest
        );
    }

    #[test]
    fn unmarked_requests_to_unmapped_hosts_pass_or_are_refused_as_configured() {
        let plain = pairs(&[(":authority", "github.com"), (":path", "/")]);
        assert_eq!(
            classify(&plain, &mesh_egress("pass")).unwrap(),
            Classified::Unmarked
        );
        let err = classify(&plain, &mesh_egress("reject")).unwrap_err();
        assert_eq!(
            (err.status, err.code),
            (403, ErrorCode::ForbiddenDestination)
        );
        let mapped = pairs(&[(":authority", "slack.com"), (":path", "/")]);
        assert_eq!(
            classify(&mapped, &mesh_egress("reject")).unwrap(),
            Classified::Unmarked
        );
    }

    #[test]
    fn without_provider_hosts_a_missing_provider_header_is_a_bad_request() {
        let headers = pairs(&[(":authority", "slack.com"), ("x-authstamp-user", "U1")]);
        let err = classify(&headers, &gateway()).unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest);
        assert!(
            err.message.contains("x-authstamp-provider"),
            "{}",
            err.message
        );
    }

    #[test]
    fn header_names_are_matched_case_insensitively() {
        let config = gateway();
        let headers = pairs(&[
            ("X-Authstamp-Provider", "slack"),
            ("x-authstamp-user", "u"),
            ("x-authstamp-app", "a"),
            ("x-authstamp-app-key", "k"),
        ]);
        let Classified::Marked(id) = classify(&headers, &config).unwrap() else {
            panic!("marked")
        };
        assert_eq!(id.provider, "slack");
    }

    #[test]
    fn authstamp_headers_and_credentials_spelled_with_underscores_are_refused() {
        let config = gateway();
        let base = [
            ("x-authstamp-provider", "slack"),
            ("x-authstamp-user", "u"),
            ("x-authstamp-app", "a"),
            ("x-authstamp-app-key", "k"),
        ];
        for spelled in [
            "x_authstamp_app_key",
            "x_authstamp_user",
            "X_Authstamp_App",
            "x-authstamp_provider",
            "x_authstamp_route",
            "x_authstamp_anything",
            "proxy_authorization",
            "Proxy_Authorization",
            "x_forwarded_host",
        ] {
            let mut headers = pairs(&base);
            headers.push((spelled.to_string(), b"forged".to_vec()));
            let err = classify(&headers, &config).unwrap_err();
            assert_eq!(
                (err.status, err.code),
                (400, ErrorCode::BadRequest),
                "{spelled}"
            );
            assert!(err.message.contains(spelled), "{}", err.message);
            assert!(!err.message.contains("forged"), "{}", err.message);
        }
        // Alone, an underscore spelling marks the request: it is refused, not passed on.
        let alone = pairs(&[(":path", "/"), ("x_authstamp_app_key", "k")]);
        assert!(is_marked(&alone, &config));
        assert_eq!(
            classify(&alone, &config).unwrap_err().code,
            ErrorCode::BadRequest
        );
        // Other underscores are the app's own business.
        let mut headers = pairs(&base);
        headers.push(("authorization_".to_string(), b"1".to_vec()));
        assert!(matches!(
            classify(&headers, &config),
            Ok(Classified::Marked(_))
        ));
        let mut headers = pairs(&base);
        headers.push(("x_request_id".to_string(), b"1".to_vec()));
        headers.push(("authorization".to_string(), b"Bearer own".to_vec()));
        assert!(matches!(
            classify(&headers, &config),
            Ok(Classified::Marked(_))
        ));
        // Unmarked traffic is not ours, underscores or not.
        let unmarked = pairs(&[(":path", "/"), ("proxy_authorization", "x")]);
        assert_eq!(classify(&unmarked, &config).unwrap(), Classified::Unmarked);
    }

    #[test]
    fn a_configured_name_with_an_underscore_is_the_real_header() {
        let config = Config::parse(
            br#"{"token_service": {"cluster": "ts", "authority": "ts"},
                "headers": {"provider": "x_p", "user": "x-u", "app": "x-a", "app_key": "x-k"}}"#,
            &|_| None,
        )
        .unwrap();
        let headers = pairs(&[("x_p", "slack"), ("x-u", "u"), ("x-a", "a"), ("x-k", "k")]);
        assert!(matches!(
            classify(&headers, &config),
            Ok(Classified::Marked(_))
        ));
        // Its dashed spelling and underscore spellings of the others are not.
        for spelled in ["x-p", "x_u", "X_K"] {
            let mut with = headers.clone();
            with.push((spelled.to_string(), b"forged".to_vec()));
            assert_eq!(
                classify(&with, &config).unwrap_err().code,
                ErrorCode::BadRequest,
                "{spelled}"
            );
        }
    }
}
