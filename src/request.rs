//! Reading a request: is it ours (marked), and whose token does it want.

use std::fmt;

use authstamp_protocol::headers;

use crate::config::{AppBinding, Config, Secret};
use crate::host::HeaderPairs;
use crate::reply::Rejection;

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

/// Whether the request carries any authstamp header: a name starting with
/// `x-authstamp-` or one of the configured names.
pub fn is_marked(headers: &HeaderPairs, config: &Config) -> bool {
    headers.iter().any(|(name, _)| {
        let name = name.to_ascii_lowercase();
        name.starts_with(headers::PREFIX) || config.headers.all().contains(&name.as_str())
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
}
