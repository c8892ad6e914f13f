//! Input checks shared by the admin API, the CLI and the app API. Each
//! returns a `bad_request` with a message naming the field.

use crate::error::Error;
use authstamp_protocol::Placement;
use url::Url;

/// `[a-z0-9][a-z0-9_.-]{0,63}`
pub fn provider_name(name: &str) -> Result<(), Error> {
    let bytes = name.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 64
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes.iter().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(Error::bad_request(
            "provider must match [a-z0-9][a-z0-9_.-]{0,63}",
        ))
    }
}

/// The app's identifier of its end user: 1..=256 bytes, no control characters.
pub fn user_id(user: &str) -> Result<(), Error> {
    if user.is_empty() || user.len() > 256 || user.chars().any(char::is_control) {
        return Err(Error::bad_request(
            "user must be 1 to 256 bytes without control characters",
        ));
    }
    Ok(())
}

/// A short free-text field without control characters.
pub fn plain_text(field: &str, value: &str, max: usize, required: bool) -> Result<(), Error> {
    if (required && value.is_empty()) || value.len() > max || value.chars().any(char::is_control) {
        let need = if required { "1" } else { "0" };
        return Err(Error::bad_request(format!(
            "{field} must be {need} to {max} bytes without control characters"
        )));
    }
    Ok(())
}

/// An absolute http(s) URL with a host, without user info or fragment.
pub fn http_url(field: &str, value: &str) -> Result<Url, Error> {
    let url = Url::parse(value)
        .map_err(|_| Error::bad_request(format!("{field} must be an absolute URL")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(Error::bad_request(format!(
            "{field} must be an http:// or https:// URL with a host"
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Error::bad_request(format!(
            "{field} must not contain user info"
        )));
    }
    if url.fragment().is_some() {
        return Err(Error::bad_request(format!(
            "{field} must not contain a fragment"
        )));
    }
    if value.len() > 2048 {
        return Err(Error::bad_request(format!(
            "{field} must be at most 2048 bytes"
        )));
    }
    Ok(url)
}

/// Like [`http_url`], and without a query either.
pub fn http_url_without_query(field: &str, value: &str) -> Result<Url, Error> {
    let url = http_url(field, value)?;
    if url.query().is_some() {
        return Err(Error::bad_request(format!(
            "{field} must not contain a query"
        )));
    }
    Ok(url)
}

/// Whether a credential may be sent as `name` at `placement`: the rules of
/// `authstamp_protocol::credential`, which the filter applies again before
/// it stamps.
pub fn credential_name(placement: Placement, name: &str) -> Result<(), Error> {
    authstamp_protocol::credential::check_name(placement, name)
        .map_err(|reason| Error::bad_request(format!("header.name {name:?}: {reason}")))
}

pub const TOKEN_PLACEHOLDER: &str = "{token}";

/// A header value template with `{token}` exactly once and no control
/// characters (so no CR/LF).
pub fn header_format(format: &str) -> Result<(), Error> {
    if format.matches(TOKEN_PLACEHOLDER).count() != 1 {
        return Err(Error::bad_request(
            "header.format must contain {token} exactly once",
        ));
    }
    if format.len() > 256 || format.chars().any(|c| c.is_control() && c != '\t') {
        return Err(Error::bad_request(
            "header.format must be at most 256 bytes without control characters (no CR/LF)",
        ));
    }
    Ok(())
}

pub fn scopes(scopes: &[String], separator: &str) -> Result<(), Error> {
    if separator.is_empty() || separator.len() > 4 || separator.chars().any(|c| c.is_control()) {
        return Err(Error::bad_request(
            "scope_separator must be 1 to 4 characters without control characters",
        ));
    }
    if scopes.len() > 100 {
        return Err(Error::bad_request("at most 100 scopes"));
    }
    for scope in scopes {
        if scope.is_empty()
            || scope.len() > 512
            || scope.contains(separator)
            || scope.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(Error::bad_request(
                "each scope must be 1 to 512 bytes without whitespace, control characters or the separator",
            ));
        }
    }
    Ok(())
}

/// `return_to` is allowed when it has the scheme, host and port of one of
/// the app's entries and its path equals or lies under that entry's path.
pub fn return_to_allowed(return_to: &Url, allowed: &[String]) -> bool {
    allowed.iter().filter_map(|a| Url::parse(a).ok()).any(|a| {
        a.scheme() == return_to.scheme()
            && a.host_str() == return_to.host_str()
            && a.port_or_known_default() == return_to.port_or_known_default()
            && path_is_under(return_to.path(), a.path())
    })
}

fn path_is_under(path: &str, base: &str) -> bool {
    if base.ends_with('/') {
        return path.starts_with(base);
    }
    path == base
        || path
            .strip_prefix(base)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// The upstream the filter sends a connection's requests to: scheme,
/// `host[:port]` and the path without its trailing `/`.
pub fn upstream_of(api: &Url) -> Result<authstamp_protocol::Upstream, Error> {
    let host = api
        .host_str()
        .ok_or_else(|| Error::internal("stored api_base_url has no host", "no host"))?;
    // `url` already drops a port that is the scheme's default.
    let authority = match api.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    Ok(authstamp_protocol::Upstream {
        scheme: api.scheme().to_owned(),
        authority,
        base_path: api.path().trim_end_matches('/').to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_names() {
        for ok in [
            "slack",
            "a",
            "ms-graph",
            "google.v2",
            "x_1",
            &"a".repeat(64),
        ] {
            assert!(provider_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Slack", "-x", ".x", "a b", "a/b", &"a".repeat(65), "é"] {
            assert!(provider_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls() {
        assert!(http_url("u", "https://slack.com/oauth/v2/authorize?x=1").is_ok());
        assert!(http_url("u", "ftp://x/").is_err());
        assert!(http_url("u", "https://user:pw@x/").is_err());
        assert!(http_url("u", "https://x/#frag").is_err());
        assert!(http_url("u", "/relative").is_err());
        assert!(http_url_without_query("u", "https://x/api?x=1").is_err());
        assert!(http_url_without_query("u", "https://x/api").is_ok());
    }

    #[test]
    fn headers() {
        assert!(credential_name(Placement::Header, "authorization").is_ok());
        assert!(credential_name(Placement::Header, "x-api-key").is_ok());
        for bad in [
            "Authorization",
            "",
            "a b",
            "a:b",
            "host",
            "x-authstamp-user",
            "proxy-authorization",
        ] {
            assert!(credential_name(Placement::Header, bad).is_err(), "{bad}");
        }
        assert!(header_format("Bearer {token}").is_ok());
        assert!(header_format("{token}").is_ok());
        assert!(header_format("Bearer").is_err());
        assert!(header_format("{token}{token}").is_err());
        assert!(header_format("Bearer {token}\r\nx-evil: 1").is_err());
    }

    #[test]
    fn return_to_matching() {
        let allowed = vec![
            "https://app.example/done".to_owned(),
            "http://localhost:3000/cb/".to_owned(),
        ];
        let ok = |u: &str| return_to_allowed(&Url::parse(u).unwrap(), &allowed);
        assert!(ok("https://app.example/done"));
        assert!(ok("https://app.example/done/sub?x=1"));
        assert!(ok("https://app.example:443/done"));
        assert!(ok("http://localhost:3000/cb/x"));
        assert!(!ok("https://app.example/donex"));
        assert!(!ok("https://app.example/"));
        assert!(!ok("http://app.example/done"));
        assert!(!ok("https://app.example:8443/done"));
        assert!(!ok("https://evil.example/done"));
        assert!(!ok("https://app.example.evil/done"));
        assert!(!ok("https://app.example/done/../admin"));
        assert!(!ok("http://localhost:3001/cb/x"));
    }

    #[test]
    fn users() {
        assert!(user_id("alice@example.com").is_ok());
        assert!(user_id("").is_err());
        assert!(user_id("a\nb").is_err());
        assert!(user_id(&"a".repeat(257)).is_err());
        assert!(user_id(&"a".repeat(256)).is_ok());
    }
}
