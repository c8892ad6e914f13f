//! Where a connection's API lives, and the one definition of a valid
//! upstream: the token service checks it before it answers a lookup, the
//! filter before it sends a credential there.

use serde::{Deserialize, Serialize};

/// Where the connection's API lives: the request goes to
/// `scheme://authority` + `base_path` + the request's own path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Upstream {
    /// `http` or `https`.
    pub scheme: String,
    /// `host` or `host:port`.
    pub authority: String,
    /// Empty, or a path starting with `/` and without a trailing `/`.
    pub base_path: String,
}

/// The upstream: `http` or `https`, an authority that is exactly `host[:port]`
/// (no userinfo, path, query or fragment), and a base path that is empty or
/// starts with `/`, has no trailing `/` and no empty or dot segments.
pub fn check(upstream: &Upstream) -> Result<(), &'static str> {
    if upstream.scheme != "http" && upstream.scheme != "https" {
        return Err("upstream scheme is not http or https");
    }
    check_authority(&upstream.authority)?;
    check_base_path(&upstream.base_path)
}

/// The cheap part of [`check`], for cache entries that were
/// validated in full before they were written: scheme, authority characters
/// (no userinfo, path, query, fragment or whitespace) and base path.
pub fn check_shape(upstream: &Upstream) -> Result<(), &'static str> {
    if upstream.scheme != "http" && upstream.scheme != "https" {
        return Err("upstream scheme is not http or https");
    }
    let authority = &upstream.authority;
    if authority.is_empty()
        || authority.len() > 255
        || authority
            .bytes()
            .any(|b| !b.is_ascii_graphic() || b"@/\\?#".contains(&b))
    {
        return Err("upstream authority is not host[:port]");
    }
    check_base_path(&upstream.base_path)
}

fn check_authority(authority: &str) -> Result<(), &'static str> {
    const BAD: &str = "upstream authority is not host[:port]";
    if authority.is_empty()
        || authority.len() > 255
        || authority
            .bytes()
            .any(|b| !b.is_ascii_graphic() || b"@/\\?#".contains(&b))
    {
        return Err(BAD);
    }
    // host[:port], where host is a bracketed IPv6 address, a canonical
    // dotted-quad IPv4 address or a DNS name, so that Envoy, the DNS
    // resolver and the provider's certificate all see the same host.
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or(BAD)?;
        v6.parse::<std::net::Ipv6Addr>().map_err(|_| BAD)?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or(BAD)?),
        };
        (None, port)
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(authority), None),
        }
    };
    if let Some(port) = port {
        // 1-65535, digits only, no leading zero: the form Envoy and URL
        // parsers agree on.
        let valid = !port.is_empty()
            && port.len() <= 5
            && port.bytes().all(|b| b.is_ascii_digit())
            && !port.starts_with('0')
            && port.parse::<u16>().is_ok();
        if !valid {
            return Err(BAD);
        }
    }
    if let Some(host) = host {
        check_host(host)?;
    }
    Ok(())
}

/// A DNS name of letters, digits and inner hyphens (punycode for
/// international names), or a canonical IPv4 address. A name whose last
/// label is numeric is read as an IPv4 address by URL parsers (`0x7f.1` is
/// 127.0.0.1): it must then be one, written canonically.
fn check_host(host: &str) -> Result<(), &'static str> {
    const BAD: &str = "upstream authority is not in canonical host[:port] form";
    if host.is_empty() || host.len() > 253 {
        return Err(BAD);
    }
    let labels: Vec<&str> = host.split('.').collect();
    let last = labels.last().copied().unwrap_or_default();
    let numeric = |l: &str| {
        !l.is_empty()
            && (l.bytes().all(|b| b.is_ascii_digit())
                || l.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("0x")))
    };
    if numeric(last) {
        let ip: std::net::Ipv4Addr = host.parse().map_err(|_| BAD)?;
        return if ip.to_string() == host {
            Ok(())
        } else {
            Err(BAD)
        };
    }
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if labels.iter().all(label_ok) {
        Ok(())
    } else {
        Err(BAD)
    }
}

pub fn check_base_path(base_path: &str) -> Result<(), &'static str> {
    if base_path.is_empty() {
        return Ok(());
    }
    if !base_path.starts_with('/') || base_path.ends_with('/') {
        return Err("upstream base_path must start with / and not end with /");
    }
    if base_path
        .bytes()
        .any(|b| !b.is_ascii_graphic() || b"?#\\".contains(&b))
    {
        return Err("upstream base_path contains a forbidden character");
    }
    if base_path[1..]
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err("upstream base_path contains an empty or dot segment");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(scheme: &str, authority: &str, base_path: &str) -> Upstream {
        Upstream {
            scheme: scheme.into(),
            authority: authority.into(),
            base_path: base_path.into(),
        }
    }

    #[test]
    fn good_upstreams_pass() {
        for (scheme, authority, base) in [
            ("https", "slack.com", ""),
            ("https", "graph.microsoft.com", "/v1.0"),
            ("https", "api.hubapi.com:443", "/crm/v3"),
            ("http", "127.0.0.1:8081", ""),
            ("http", "localhost:8081", "/api"),
            ("https", "Slack.COM", ""),
            ("http", "[::1]:8080", ""),
            ("https", "www.googleapis.com", "/gmail/v1/users/me%40x"),
        ] {
            assert_eq!(
                check(&upstream(scheme, authority, base)),
                Ok(()),
                "{authority}{base}"
            );
        }
    }

    #[test]
    fn bad_upstreams_fail() {
        for (scheme, authority, base) in [
            ("ftp", "slack.com", ""),
            ("HTTPS", "slack.com", ""),
            ("", "slack.com", ""),
            ("https", "", ""),
            ("https", "user@slack.com", ""),
            ("https", "user:pw@slack.com", ""),
            ("https", "slack.com/path", ""),
            ("https", "slack.com?q=1", ""),
            ("https", "slack.com#f", ""),
            ("https", "slack.com:", ""),
            ("https", "slack.com:99999", ""),
            ("https", "slack com", ""),
            ("https", "evil.com\\@slack.com", ""),
            ("https", "0x7f.1", ""),
            ("https", "%65vil.com", ""),
            ("https", ":443", ""),
            ("https", "127.1", ""),
            ("https", "127.000.0.1", ""),
            ("https", "2130706433", ""),
            ("https", "1.2.3.256", ""),
            ("https", "slack.com:0", ""),
            ("https", "slack.com:0443", ""),
            ("https", "slack.com:4a3", ""),
            ("https", "slack.com:443:443", ""),
            ("https", "slack..com", ""),
            ("https", "slack.com.", ""),
            ("https", "-slack.com", ""),
            ("https", "slack-.com", ""),
            ("https", "sl_ack.com", ""),
            ("https", "[::1", ""),
            ("https", "[::1]x", ""),
            ("https", "[::g]", ""),
            ("https", "::1", ""),
            ("https", &format!("{}.com", "a".repeat(64)), ""),
            ("https", "slack.com", "v1"),
            ("https", "slack.com", "/v1/"),
            ("https", "slack.com", "/"),
            ("https", "slack.com", "//evil.com"),
            ("https", "slack.com", "/v1//x"),
            ("https", "slack.com", "/v1/../admin"),
            ("https", "slack.com", "/v1?x=1"),
            ("https", "slack.com", "/v 1"),
            ("https", "slack.com", "/v1#f"),
        ] {
            assert!(
                check(&upstream(scheme, authority, base)).is_err(),
                "{scheme}://{authority}{base}"
            );
        }
    }

    #[test]
    fn the_cheap_shape_check_of_cached_upstreams_refuses_what_could_redirect_a_token() {
        for (scheme, authority, base) in [
            ("https", "slack.com", ""),
            ("http", "127.0.0.1:8081", "/api"),
            ("http", "[::1]:8080", ""),
        ] {
            assert_eq!(check_shape(&upstream(scheme, authority, base)), Ok(()));
        }
        for (scheme, authority, base) in [
            ("ftp", "slack.com", ""),
            ("https", "", ""),
            ("https", "user@slack.com", ""),
            ("https", "slack.com/path", ""),
            ("https", "slack.com?q=1", ""),
            ("https", "slack.com#f", ""),
            ("https", "slack com", ""),
            ("https", "evil.com\\@slack.com", ""),
            ("https", "slack.com", "//evil.com"),
            ("https", "slack.com", "/v1/../admin"),
        ] {
            assert!(
                check_shape(&upstream(scheme, authority, base)).is_err(),
                "{scheme}://{authority}{base}"
            );
        }
    }
}
