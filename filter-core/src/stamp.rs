//! Where a token may go and how it is put on the request: validation of the
//! token service's answer, of the request target, and the stamping itself.

use authstamp_protocol::{
    credential, headers, upstream, Credential, ErrorCode, Placement, TokenLookupResponse, Upstream,
};

use crate::config::HeaderNames;
use crate::host::{HeaderPairs, Host};
use crate::reply::Rejection;

/// Inbound headers that never reach a provider, besides every `x-authstamp-*`
/// header, the configured names and the stamp header itself.
pub const STRIPPED: [&str; 3] = ["authorization", "proxy-authorization", "x-forwarded-host"];

/// Checks everything the filter will act on in a token-lookup answer, by
/// the rules the token service applied (`authstamp_protocol`).
pub fn validate_answer(answer: &TokenLookupResponse) -> Result<(), &'static str> {
    credential::check(&answer.credential)?;
    upstream::check(&answer.upstream)
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
/// path), the route header for Envoy's route table and, if `healable`, the
/// heal marker for the route's retry (see `heal.rs`).
///
/// A request without a provider header got its provider from its host
/// (transparent egress, see [`crate::egress`]; classification refuses it
/// otherwise): it already names its provider's host and full path, so its
/// host must be the connection's API host and its path is kept as sent.
pub fn stamp(
    host: &dyn Host,
    names: &HeaderNames,
    header: &Credential,
    upstream: &Upstream,
    healable: bool,
) -> Result<(), Rejection> {
    let request = host.request_headers();
    let path = request_path(&request)?;
    stamp_request(host, names, header, upstream, &request, path, healable)
}

/// [`stamp`] with the request headers the caller already read and their
/// checked [`request_path`]: the new header list is written back in one
/// host call (the hot path's cost is mostly host calls, not work).
pub fn stamp_request(
    host: &dyn Host,
    names: &HeaderNames,
    header: &Credential,
    upstream: &Upstream,
    request: &HeaderPairs,
    path: String,
    healable: bool,
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
    let (path, stamp_header) = match header.placement {
        Placement::Header => (path, Some(header)),
        Placement::Query => (with_query_param(&path, &header.name, &header.value), None),
    };
    // A query credential strips no header of its name (it has none).
    let stamp_header_name = stamp_header.map_or("", |h| h.name.as_str());
    let mut stamped: Vec<(&str, &[u8])> = Vec::with_capacity(request.len() + 4);
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
    if healable {
        stamped.push((crate::heal::HEAL_HEADER, b"1"));
    }
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

    fn header(name: &str, value: &str) -> Credential {
        Credential {
            name: name.into(),
            value: value.into(),
            placement: Placement::Header,
        }
    }

    fn query(name: &str, value: &str) -> Credential {
        Credential {
            name: name.into(),
            value: value.into(),
            placement: Placement::Query,
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
        stamp(&host, &names, &query("key", "s3cret key"), &up, false).unwrap();
        assert_eq!(
            host.header(3, ":path").as_deref(),
            Some("/api/maps?q=x&key=s3cret%20key")
        );
        assert_eq!(host.header(3, "authorization"), None);
        assert_eq!(
            host.header(3, "key").as_deref(),
            Some("a header of the same name stays")
        );
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
        stamp(&host, &names, &token, &graph, false).unwrap();
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
        stamp(&host, &names, &token, &graph, false).unwrap();
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
        let err = stamp(&host, &names, &token, &graph, false).unwrap_err();
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
