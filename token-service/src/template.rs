//! `{name}` placeholders in provider URL templates and hosts (the catalog's
//! per-tenant hosts such as `https://{subdomain}.zendesk.com/oauth/tokens`).
//!
//! A value substituted into a host must be made of host characters only
//! (`a-z`, `0-9`, `.`, `-`), so it can add labels to a host but never end it
//! early (`@`, `/`, `:`, `#`, `?` are refused); the host of the parsed URL
//! is then compared with the host that was built, so no parser surprise can
//! send a client secret or a token elsewhere. A value substituted after the
//! host is percent-encoded as one path segment.

use std::collections::BTreeMap;
use url::Url;

/// Values for placeholders, by name.
pub type Values = BTreeMap<String, String>;

/// The placeholder names of `template`, in order (repeats included).
/// Unbalanced or nested braces and names outside `[a-z0-9_]` are errors.
pub fn placeholders(template: &str) -> Result<Vec<&str>, String> {
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find(['{', '}']) {
        if rest[open..].starts_with('}') {
            return Err(format!("unbalanced }} in {template:?}"));
        }
        let after = &rest[open + 1..];
        let close = after
            .find(['{', '}'])
            .filter(|i| after[*i..].starts_with('}'))
            .ok_or_else(|| format!("unbalanced {{ in {template:?}"))?;
        let name = &after[..close];
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(format!("bad placeholder {{{name}}} in {template:?}"));
        }
        names.push(name);
        rest = &after[close + 1..];
    }
    Ok(names)
}

fn substitute(
    template: &str,
    values: &Values,
    mut encode: impl FnMut(&str, &str) -> Result<String, String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("unbalanced {{ in {template:?}"))?;
        let name = &after[..close];
        let value = values
            .get(name)
            .ok_or_else(|| format!("no value for {{{name}}}"))?;
        out.push_str(&encode(name, value)?);
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Whether `value` may be put into a host: host characters only, no empty
/// label at either end.
pub fn is_host_fragment(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 253
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        && !value.starts_with('.')
        && !value.contains("..")
}

/// A lowercase DNS host name (labels of `a-z0-9-`, not starting or ending
/// with `-`), or an IP literal.
pub fn is_host_name(host: &str) -> bool {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// A host template (`{shop}.myshopify.com`, optionally with `:port`) with
/// its placeholders filled; lowercase.
pub fn render_host(template: &str, values: &Values) -> Result<String, String> {
    let host = substitute(template, values, |name, value| {
        if is_host_fragment(value) {
            Ok(value.to_ascii_lowercase())
        } else {
            Err(format!("{{{name}}} is not a host name fragment"))
        }
    })?;
    Ok(host.to_ascii_lowercase())
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn encode_segment(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An `http(s)` URL template with its placeholders filled: host values as
/// in [`render_host`], the others percent-encoded; the parsed URL must have
/// exactly the host that was built.
pub fn render_url(template: &str, values: &Values) -> Result<Url, String> {
    let (scheme, after_scheme) = template
        .split_once("://")
        .ok_or_else(|| format!("{template:?} is not an absolute URL"))?;
    if !matches!(scheme, "http" | "https") {
        return Err(format!("{template:?} is not an http(s) URL"));
    }
    let authority_end = after_scheme
        .find(['/', '?', '#'])
        .unwrap_or(after_scheme.len());
    let (authority, rest) = after_scheme.split_at(authority_end);
    if authority.contains('@') {
        return Err(format!("{template:?} must not contain user info"));
    }
    let authority = render_host(authority, values)?;
    let rest = substitute(rest, values, |name, value| {
        let encoded = encode_segment(value);
        if encoded == "." || encoded == ".." || encoded.is_empty() {
            return Err(format!("{{{name}}} is not a path segment"));
        }
        Ok(encoded)
    })?;
    let text = format!("{scheme}://{authority}{rest}");
    let url = Url::parse(&text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    let expected_host = authority
        .rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()) && !port.is_empty())
        .map_or(authority.as_str(), |(host, _)| host);
    if url.host_str() != Some(expected_host) {
        return Err(format!(
            "{text:?} does not parse to the host {expected_host}"
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{text:?} must not contain user info"));
    }
    Ok(url)
}

/// A plain text template (an authorize parameter value) with its
/// placeholders filled verbatim (the URL serializer encodes it).
pub fn render_text(template: &str, values: &Values) -> Result<String, String> {
    substitute(template, values, |_, value| Ok(value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(pairs: &[(&str, &str)]) -> Values {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn finds_placeholders() {
        assert_eq!(
            placeholders("https://{subdomain}.zendesk.com/{x_1}").unwrap(),
            ["subdomain", "x_1"]
        );
        assert!(placeholders("plain").unwrap().is_empty());
        for bad in [
            "{", "}", "{a", "a}", "{{a}}", "{A}", "{}", "{a-b}", "{a{b}}",
        ] {
            assert!(placeholders(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn renders_hosts_and_paths() {
        let v = values(&[("subdomain", "Acme"), ("tenant", "a b/c"), ("port", "1")]);
        let url = render_url("https://{subdomain}.zendesk.com/oauth/{tenant}/x", &v).unwrap();
        assert_eq!(url.as_str(), "https://acme.zendesk.com/oauth/a%20b%2Fc/x");
        let url = render_url("http://127.0.0.1:9000/{subdomain}", &v).unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:9000/Acme");
        assert_eq!(
            render_host("{subdomain}.myshopify.com", &v).unwrap(),
            "acme.myshopify.com"
        );
    }

    #[test]
    fn a_value_never_moves_the_host() {
        for evil in [
            "evil.com#",
            "evil.com/",
            "evil.com?",
            "evil.com@",
            "evil.com:1",
            "a\\b",
            "",
            ".evil",
            "a..b",
            "%2e",
            "evil.com\u{ff0f}",
        ] {
            let v = values(&[("subdomain", evil)]);
            assert!(
                render_url("https://{subdomain}.zendesk.com/oauth/tokens", &v).is_err(),
                "{evil:?}"
            );
        }
        // A whole-host placeholder takes any host: only the entry's pattern
        // (checked before substitution) restricts it.
        let v = values(&[("host", "gitlab.com")]);
        assert_eq!(
            render_url("https://{host}/oauth/token", &v)
                .unwrap()
                .host_str(),
            Some("gitlab.com")
        );
        // Path values cannot climb.
        let v = values(&[("tenant", "..")]);
        assert!(render_url("https://login.example.com/{tenant}/token", &v).is_err());
        assert!(render_url("https://x/{missing}", &Values::new()).is_err());
        assert!(render_url("https://user@x/", &Values::new()).is_err());
        assert!(render_url("ftp://x/", &Values::new()).is_err());
    }

    #[test]
    fn host_names() {
        for ok in ["slack.com", "a-b.example", "127.0.0.1", "x", "localhost"] {
            assert!(is_host_name(ok), "{ok}");
        }
        for bad in [
            "",
            "Slack.com",
            "-a.com",
            "a-.com",
            "a..b",
            "a_b.com",
            "a b",
        ] {
            assert!(!is_host_name(bad), "{bad}");
        }
    }
}
