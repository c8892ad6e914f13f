//! Where a token may go and how it is put on the request: validation of the
//! token service's answer, of the request target, and the stamping itself.

use authstamp_protocol::{
    headers, ErrorCode, StampHeader, StampLocation, TokenLookupResponse, Upstream,
};

use crate::config::{is_lowercase_header_name, HeaderNames};
use crate::host::{HeaderPairs, Host};
use crate::reply::Rejection;

/// Inbound headers that never reach a provider, besides every `x-authstamp-*`
/// header, the configured names and the stamp header itself.
pub const STRIPPED: [&str; 3] = ["authorization", "proxy-authorization", "x-forwarded-host"];

/// Header names a token may not be stamped as: HTTP framing and routing.
const FORBIDDEN_STAMP_NAMES: [&str; 10] = [
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

/// Longest accepted stamp header value.
pub const MAX_STAMP_VALUE_BYTES: usize = 16 * 1024;

/// Checks everything the filter will act on in a token-lookup answer.
pub fn validate_answer(answer: &TokenLookupResponse) -> Result<(), &'static str> {
    validate_header(&answer.header)?;
    validate_upstream(&answer.upstream)
}

/// The stamp header: a lowercase token name that is not HTTP framing or
/// authstamp's own, and a non-empty value without CR, LF or NUL.
pub fn validate_header(header: &StampHeader) -> Result<(), &'static str> {
    if header.location == StampLocation::Query {
        if !authstamp_protocol::is_query_param_name(&header.name) {
            return Err("stamp query parameter name is not 1 to 64 unreserved characters");
        }
        if header.value.is_empty() || header.value.len() > MAX_STAMP_VALUE_BYTES {
            return Err("stamp query parameter value is empty or too long");
        }
        if header.value.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
            return Err("stamp query parameter value contains CR, LF or NUL");
        }
        return Ok(());
    }
    if !is_lowercase_header_name(&header.name) || header.name.len() > 128 {
        return Err("stamp header name is not a lowercase header name");
    }
    if header.name.starts_with(headers::PREFIX)
        || FORBIDDEN_STAMP_NAMES.contains(&header.name.as_str())
    {
        return Err("stamp header name is reserved");
    }
    if header.value.is_empty() || header.value.len() > MAX_STAMP_VALUE_BYTES {
        return Err("stamp header value is empty or too long");
    }
    if header.value.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
        return Err("stamp header value contains CR, LF or NUL");
    }
    Ok(())
}

/// The upstream: `http` or `https`, an authority that is exactly `host[:port]`
/// (no userinfo, path, query or fragment), and a base path that is empty or
/// starts with `/`, has no trailing `/` and no empty or dot segments.
pub fn validate_upstream(upstream: &Upstream) -> Result<(), &'static str> {
    if upstream.scheme != "http" && upstream.scheme != "https" {
        return Err("upstream scheme is not http or https");
    }
    validate_authority(&upstream.authority)?;
    validate_base_path(&upstream.base_path)
}

/// The cheap part of [`validate_upstream`], for cache entries that were
/// validated in full before they were written: scheme, authority characters
/// (no userinfo, path, query, fragment or whitespace) and base path.
pub fn check_upstream_shape(upstream: &Upstream) -> Result<(), &'static str> {
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
    validate_base_path(&upstream.base_path)
}

fn validate_authority(authority: &str) -> Result<(), &'static str> {
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
        validate_host(host)?;
    }
    Ok(())
}

/// A DNS name of letters, digits and inner hyphens (punycode for
/// international names), or a canonical IPv4 address. A name whose last
/// label is numeric is read as an IPv4 address by URL parsers (`0x7f.1` is
/// 127.0.0.1): it must then be one, written canonically.
fn validate_host(host: &str) -> Result<(), &'static str> {
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

fn validate_base_path(base_path: &str) -> Result<(), &'static str> {
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

/// The request's `:path`, if it is an origin-form target: it starts with a
/// single `/`. Absolute-form, scheme-relative, `*` and missing targets are
/// refused, since a token must only travel to its provider's authority.
pub fn request_path(headers: &HeaderPairs) -> Result<String, Rejection> {
    let forbidden = || {
        Rejection::new(
            ErrorCode::ForbiddenDestination,
            "the request target must be a path starting with a single /",
        )
    };
    let mut paths = headers.iter().filter(|(n, _)| n == ":path").map(|(_, v)| v);
    let path = paths.next().ok_or_else(forbidden)?;
    if paths.next().is_some() {
        return Err(forbidden());
    }
    let path = std::str::from_utf8(path).map_err(|_| forbidden())?;
    if !path.starts_with('/') || path.starts_with("//") {
        return Err(forbidden());
    }
    if escapes_its_base(path) {
        return Err(Rejection::new(
            ErrorCode::ForbiddenDestination,
            "the request path must not contain backslashes or `.` or `..` segments in any spelling: a token never leaves its connection's base path",
        ));
    }
    Ok(path.to_string())
}

/// Rounds of percent-decoding a path is checked through: a provider (or a
/// proxy in front of it) may decode more than once.
const DECODE_ROUNDS: usize = 3;

/// Whether the path part (before `?`) could climb out of the base path on a
/// provider that normalises it: a raw backslash, or a `.` or `..` segment
/// (a `;parameter` ignored) after 0 to [`DECODE_ROUNDS`] rounds of
/// percent-decoding, where `/`, `\` and their escapes all split segments.
pub fn escapes_its_base(path: &str) -> bool {
    let path = path.split('?').next().unwrap_or_default().as_bytes();
    if path.contains(&b'\\') || has_dot_segment(path) {
        return true;
    }
    // Without an escape, decoding changes nothing (the hot path's case).
    if !path.contains(&b'%') {
        return false;
    }
    let mut current = path.to_vec();
    for _ in 0..DECODE_ROUNDS {
        let decoded = decode_path_escapes(&current);
        if decoded == current {
            return false;
        }
        if has_dot_segment(&decoded) {
            return true;
        }
        current = decoded;
    }
    // Refused if a further round would still decode: no client nests so deep.
    decode_path_escapes(&current) != current
}

fn has_dot_segment(path: &[u8]) -> bool {
    path.split(|b| matches!(b, b'/' | b'\\')).any(|segment| {
        let name = segment.split(|b| *b == b';').next().unwrap_or_default();
        name == b"." || name == b".."
    })
}

/// One round of decoding as lenient servers do it: `%XX`, IIS's `%uXXXX`
/// (ASCII only), and the overlong UTF-8 forms of `.`, `/` and `\` that old
/// decoders accept. Anything else is kept as it is.
fn decode_path_escapes(path: &[u8]) -> Vec<u8> {
    let hex = |b: u8| char::from(b).to_digit(16);
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        if path[i] == b'%' {
            let byte = match (path.get(i + 1), path.get(i + 2)) {
                (Some(&h), Some(&l)) => hex(h).zip(hex(l)).map(|(h, l)| h * 16 + l),
                _ => None,
            };
            if let Some(byte) = byte.and_then(|b| u8::try_from(b).ok()) {
                out.push(byte);
                i += 3;
                continue;
            }
            if matches!(path.get(i + 1), Some(b'u' | b'U')) {
                let wide = path.get(i + 2..i + 6).and_then(|digits| {
                    digits
                        .iter()
                        .try_fold(0u32, |acc, &d| Some(acc * 16 + hex(d)?))
                });
                if let Some(ascii) = wide.and_then(|w| u8::try_from(w).ok()).filter(u8::is_ascii) {
                    out.push(ascii);
                    i += 6;
                    continue;
                }
            }
        }
        out.push(path[i]);
        i += 1;
    }
    for (overlong, plain) in [
        (&[0xc0, 0xae][..], b'.'),
        (&[0xe0, 0x80, 0xae][..], b'.'),
        (&[0xc0, 0xaf][..], b'/'),
        (&[0xc1, 0x9c][..], b'\\'),
    ] {
        out = replace_bytes(&out, overlong, plain);
    }
    out
}

fn replace_bytes(haystack: &[u8], needle: &[u8], with: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut i = 0;
    while i < haystack.len() {
        if haystack[i..].starts_with(needle) {
            out.push(with);
            i += needle.len();
        } else {
            out.push(haystack[i]);
            i += 1;
        }
    }
    out
}

/// Whether `name` starts with `prefix`, ignoring ASCII case.
fn starts_with_ignore_case(name: &str, prefix: &str) -> bool {
    name.len() >= prefix.len()
        && name.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

fn is_stripped(name: &str, names: &HeaderNames, stamp_name: &str) -> bool {
    starts_with_ignore_case(name, headers::PREFIX)
        || names.all().iter().any(|n| name.eq_ignore_ascii_case(n))
        || STRIPPED.iter().any(|n| name.eq_ignore_ascii_case(n))
        // `x_api_key` next to the stamped `x-api-key` reads as a second one on CGI-style servers.
        || crate::request::eq_dashed(name, stamp_name)
}

/// Stamps the effective stream's request: removes every authstamp header
/// (prefix and configured names), any inbound credential and forwarded host,
/// then sets the token header, `:authority`, `:path` (base path + original
/// path) and the route header for Envoy's route table.
///
/// A request without a provider header got its provider from its host
/// (transparent egress, see [`crate::egress`]; classification refuses it
/// otherwise): it already names its provider's host and full path, so its
/// host must be the connection's API host and its path is kept as sent.
pub fn stamp(
    host: &dyn Host,
    names: &HeaderNames,
    header: &StampHeader,
    upstream: &Upstream,
) -> Result<(), Rejection> {
    let request = host.request_headers();
    let path = request_path(&request)?;
    stamp_request(host, names, header, upstream, &request, path)
}

/// [`stamp`] with the request headers the caller already read and their
/// checked [`request_path`]: the new header list is written back in one
/// host call (the hot path's cost is mostly host calls, not work).
pub fn stamp_request(
    host: &dyn Host,
    names: &HeaderNames,
    header: &StampHeader,
    upstream: &Upstream,
    request: &HeaderPairs,
    path: String,
) -> Result<(), Rejection> {
    let transparent = !request
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case(&names.provider));
    let path = if transparent {
        let authority = crate::egress::authority(request).unwrap_or_default();
        if !crate::egress::same_host(&authority, &upstream.authority) {
            return Err(Rejection::new(
                ErrorCode::ForbiddenDestination,
                format!(
                    "this host is mapped to a provider whose API host is {}: its token goes nowhere else",
                    upstream.authority
                ),
            ));
        }
        path
    } else {
        format!("{}{}", upstream.base_path, path)
    };
    let (path, stamp_header) = match header.location {
        StampLocation::Header => (path, Some(header)),
        StampLocation::Query => (with_query_param(&path, &header.name, &header.value), None),
    };
    // A query credential strips no header of its name (it has none).
    let stamp_header_name = stamp_header.map_or("", |h| h.name.as_str());
    let mut stamped: Vec<(&str, &[u8])> = Vec::with_capacity(request.len() + 3);
    let mut has_authority = false;
    for (name, value) in request {
        if name.eq_ignore_ascii_case(":authority") {
            if !has_authority {
                stamped.push((":authority", upstream.authority.as_bytes()));
                has_authority = true;
            }
        } else if name.eq_ignore_ascii_case(":path") {
            stamped.push((":path", path.as_bytes()));
        } else if !is_stripped(name, names, stamp_header_name) {
            stamped.push((name, value));
        }
    }
    if !has_authority {
        stamped.push((":authority", upstream.authority.as_bytes()));
    }
    if let Some(header) = stamp_header {
        stamped.push((&header.name, header.value.as_bytes()));
    }
    stamped.push((headers::ROUTE, upstream.scheme.as_bytes()));
    host.set_request_headers(&stamped)
        .map_err(|_| header_write_failed())
}

/// The host refused the stamped headers: the request is answered locally
/// (500), never forwarded without its credential.
pub fn header_write_failed() -> Rejection {
    log::error!("authstamp: could not write the stamped request headers");
    Rejection::new(
        ErrorCode::Internal,
        "the request could not be stamped (the proxy refused the header write)",
    )
}

/// `path` with every query parameter named `name` (compared after
/// percent-decoding, ignoring ASCII case) removed and `name=value` appended,
/// the value percent-encoded: the request cannot bring its own credential,
/// smuggle a second one, or break out of the parameter.
pub fn with_query_param(path: &str, name: &str, value: &str) -> String {
    let (base, query) = match path.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (path, None),
    };
    let mut out = String::with_capacity(path.len() + name.len() + value.len() * 3 + 2);
    out.push_str(base);
    let mut first = true;
    for pair in query.into_iter().flat_map(|q| q.split('&')) {
        if pair.is_empty() {
            continue;
        }
        let key = pair.split_once('=').map_or(pair, |(k, _)| k);
        if percent_decode(key).eq_ignore_ascii_case(name.as_bytes()) {
            continue;
        }
        out.push(if first { '?' } else { '&' });
        first = false;
        out.push_str(pair);
    }
    out.push(if first { '?' } else { '&' });
    out.push_str(name);
    out.push('=');
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
    out
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// `%XX` decoded and `+` as a space (form encoding); invalid escapes kept.
fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(u8::try_from(h * 16 + l).unwrap_or(b'%'));
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    out
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

    fn header(name: &str, value: &str) -> StampHeader {
        StampHeader {
            name: name.into(),
            value: value.into(),
            location: StampLocation::Header,
        }
    }

    fn query(name: &str, value: &str) -> StampHeader {
        StampHeader {
            name: name.into(),
            value: value.into(),
            location: StampLocation::Query,
        }
    }

    #[test]
    fn query_credentials_replace_every_parameter_of_their_name() {
        assert_eq!(
            with_query_param("/v1/x", "api_key", "k1"),
            "/v1/x?api_key=k1"
        );
        assert_eq!(
            with_query_param("/v1/x?a=1&api_key=forged&b=2", "api_key", "k1"),
            "/v1/x?a=1&b=2&api_key=k1"
        );
        assert_eq!(
            with_query_param(
                "/x?API_KEY=1&api%5Fkey=2&api_key&api+key=3&&c",
                "api_key",
                "k"
            ),
            "/x?api+key=3&c&api_key=k"
        );
        assert_eq!(
            with_query_param("/x?", "key", "a b&c=d#e/é"),
            "/x?key=a%20b%26c%3Dd%23e%2F%C3%A9"
        );
        assert_eq!(with_query_param("/x?a=%zz", "k", "v"), "/x?a=%zz&k=v");
        assert_eq!(with_query_param("/x?k%", "k", "v"), "/x?k%&k=v");
    }

    #[test]
    fn query_stamps_go_into_the_path_not_a_header() {
        use crate::host::mock::MockHost;
        let names = HeaderNames::default();
        let host = MockHost::new(1);
        host.add_stream(
            3,
            &[
                (":authority", "127.0.0.1:10000"),
                (":path", "/maps?q=x&key=forged"),
                ("x-authstamp-provider", "maps"),
                ("x-authstamp-user", "u"),
                ("authorization", "Bearer forged"),
                ("key", "a header of the same name stays"),
            ],
        );
        host.enter(3);
        let up = upstream("https", "maps.example.com", "/api");
        stamp(&host, &names, &query("key", "s3cret key"), &up).unwrap();
        assert_eq!(
            host.header(3, ":path").as_deref(),
            Some("/api/maps?q=x&key=s3cret%20key")
        );
        assert_eq!(host.header(3, "authorization"), None);
        assert_eq!(
            host.header(3, "key").as_deref(),
            Some("a header of the same name stays")
        );
        assert_eq!(validate_header(&query("key", "v")), Ok(()));
        for (name, value) in [
            ("a b", "v"),
            ("a=b", "v"),
            ("", "v"),
            ("k", ""),
            ("k", "a\nb"),
        ] {
            assert!(
                validate_header(&query(name, value)).is_err(),
                "{name}={value:?}"
            );
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
                validate_upstream(&upstream(scheme, authority, base)),
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
                validate_upstream(&upstream(scheme, authority, base)).is_err(),
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
            assert_eq!(
                check_upstream_shape(&upstream(scheme, authority, base)),
                Ok(())
            );
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
                check_upstream_shape(&upstream(scheme, authority, base)).is_err(),
                "{scheme}://{authority}{base}"
            );
        }
    }

    #[test]
    fn stamp_headers_are_checked() {
        assert_eq!(
            validate_header(&header("authorization", "Bearer x")),
            Ok(())
        );
        assert_eq!(validate_header(&header("x-api-key", "k")), Ok(()));
        for (name, value) in [
            ("Authorization", "Bearer x"),
            ("", "x"),
            ("auth header", "x"),
            (":authority", "x"),
            ("host", "x"),
            ("content-length", "1"),
            ("x-authstamp-route", "https"),
            ("authorization", ""),
            ("authorization", "Bearer x\r\nx-injected: 1"),
            ("authorization", "Bearer x\n"),
            ("authorization", "Bearer \0"),
        ] {
            assert!(
                validate_header(&header(name, value)).is_err(),
                "{name}: {value:?}"
            );
        }
        let long = "a".repeat(MAX_STAMP_VALUE_BYTES + 1);
        assert!(validate_header(&header("authorization", &long)).is_err());
    }

    #[test]
    fn transparent_requests_keep_their_path_and_must_name_the_api_host() {
        use crate::host::mock::MockHost;
        let names = HeaderNames::default();
        let token = header("authorization", "Bearer t");
        let graph = upstream("https", "graph.microsoft.com", "/v1.0");
        let host = MockHost::new(1);
        host.add_stream(
            7,
            &[
                (":authority", "Graph.Microsoft.com"),
                (":path", "/v1.0/me?x=1"),
                ("x-authstamp-user", "u"),
                ("authorization", "Bearer forged"),
            ],
        );
        host.enter(7);
        stamp(&host, &names, &token, &graph).unwrap();
        assert_eq!(host.header(7, ":path").as_deref(), Some("/v1.0/me?x=1"));
        assert_eq!(
            host.header(7, ":authority").as_deref(),
            Some("graph.microsoft.com")
        );
        assert_eq!(host.header_values(7, "authorization"), vec!["Bearer t"]);
        assert_eq!(host.header(7, "x-authstamp-user"), None);
        assert_eq!(host.header(7, headers::ROUTE).as_deref(), Some("https"));

        // The same request with the provider header is an explicit one: base path + path.
        host.add_stream(
            8,
            &[
                (":authority", "127.0.0.1:10000"),
                (":path", "/me"),
                ("x-authstamp-provider", "microsoft"),
                ("x-authstamp-user", "u"),
            ],
        );
        host.enter(8);
        stamp(&host, &names, &token, &graph).unwrap();
        assert_eq!(host.header(8, ":path").as_deref(), Some("/v1.0/me"));

        // A host that is not the connection's API host gets no token.
        host.add_stream(
            9,
            &[
                (":authority", "files.example.com"),
                (":path", "/x"),
                ("x-authstamp-user", "u"),
            ],
        );
        host.enter(9);
        let err = stamp(&host, &names, &token, &graph).unwrap_err();
        assert_eq!(
            (err.status, err.code),
            (403, ErrorCode::ForbiddenDestination)
        );
        assert_eq!(host.header(9, "authorization"), None);
    }

    #[test]
    fn request_targets_must_be_origin_form() {
        let pairs = |p: &str| vec![(":path".to_string(), p.as_bytes().to_vec())];
        assert_eq!(request_path(&pairs("/api/x?y=1")).unwrap(), "/api/x?y=1");
        assert_eq!(request_path(&pairs("/")).unwrap(), "/");
        for bad in ["http://evil.com/x", "//evil.com/x", "*", "", "api/x"] {
            let err = request_path(&pairs(bad)).unwrap_err();
            assert_eq!(
                (err.status, err.code),
                (403, ErrorCode::ForbiddenDestination),
                "{bad}"
            );
        }
        assert!(request_path(&Vec::new()).is_err(), "no :path at all");
        assert!(request_path(&vec![(":path".to_string(), vec![b'/', 0xff])]).is_err());
    }

    #[test]
    fn a_path_climbing_out_of_the_base_path_in_any_spelling_is_refused() {
        let pairs = |p: &str| vec![(":path".to_string(), p.as_bytes().to_vec())];
        for bad in [
            "/..",
            "/.",
            "/api/..",
            "/api/../admin",
            "/api/./x",
            "/api/x/../../admin?q=1",
            "/api/%2e%2e/admin",
            "/api/%2E%2E/admin",
            "/api/%2e%2E/admin",
            "/api/.%2e/admin",
            "/api/%2e./admin",
            "/api/%2e/admin",
            "/api/..%2fadmin",
            "/api/..%2Fadmin",
            "/api/%2e%2e%2fadmin",
            "/api%2f..%2fadmin",
            "/api/..%5cadmin",
            "/api/%5c..%5cadmin",
            "/api/..;/admin",
            "/api/..;jsessionid=1/admin",
            "/api/.;x/admin",
            "/api/%2e%2e;/admin",
            "/api\\..\\admin",
            "/api/\\..\\admin",
            "/api/x\\y",
            "/api/%252e%252e/admin",
            "/api/%25252e%25252e/admin",
            "/api/..%252fadmin",
            "/api/%u002e%u002e/admin",
            "/api/%U002E%U002E%u002fadmin",
            "/api/%c0%ae%c0%ae/admin",
            "/api/..%c0%afadmin",
            "/api/%e0%80%ae%e0%80%ae/admin",
            "/api/..%c1%9cadmin",
            // Deeper than any client nests escapes.
            "/api/%252525252e",
        ] {
            assert!(escapes_its_base(bad), "{bad}");
            let err = request_path(&pairs(bad)).unwrap_err();
            assert_eq!(
                (err.status, err.code),
                (403, ErrorCode::ForbiddenDestination),
                "{bad}"
            );
        }
        // Dots inside names, escapes that form no dot segment, and dots in
        // the query are the provider's business.
        for good in [
            "/api/x",
            "/api/.well-known/openid-configuration",
            "/api/file.txt",
            "/api/...",
            "/api/..x/y",
            "/api/x..",
            "/api/%2e%2ex",
            "/api/projects/group%2Fproject",
            "/api/users/me%40example.com",
            "/api/100%25",
            "/api/%252541",
            "/api/%zz/%",
            "/api/x;v=1",
            "/api/x?path=../../etc&y=%2e%2e",
            "/api/x?a=\\..\\",
        ] {
            assert!(!escapes_its_base(good), "{good}");
            assert_eq!(request_path(&pairs(good)).unwrap(), good);
        }
    }
}
