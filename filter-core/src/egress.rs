//! Transparent egress: a service calls its provider's own host through Envoy
//! (its sidecar or an egress Envoy) and adds only the user header. The
//! provider is read from the request's `:authority` through the configured
//! host → provider map; the app comes from the configuration (mesh mode).
//!
//! ```json
//! "provider_hosts": {"slack.com": "slack", "graph.microsoft.com": "microsoft"},
//! "unmapped_hosts": "pass"
//! ```
//!
//! A key without a port matches its host with no port or with port 80 or
//! 443; a key with a port matches that port only. Hosts are compared in
//! lowercase. The map is used only when a request carries no provider header.

use std::collections::BTreeMap;

use authstamp_protocol::ErrorCode;
use serde::Deserialize;

use crate::host::HeaderPairs;
use crate::reply::Rejection;

/// Most entries of `provider_hosts`.
pub const MAX_PROVIDER_HOSTS: usize = 1024;
/// Longest provider name in `provider_hosts`.
pub const MAX_PROVIDER_NAME_BYTES: usize = 256;

/// What happens to a request without a provider header whose host is not in
/// `provider_hosts`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unmapped {
    /// Without authstamp headers it goes on untouched (the service's other
    /// traffic); with them (a user header) it is refused: a request that asks
    /// for a token never leaves without one.
    #[default]
    Pass,
    /// Refused with 403 `forbidden_destination`, marked or not.
    Reject,
}

/// `host` (lowercase) and optional port of an authority.
pub type HostPort = (String, Option<u16>);

/// The host → provider map and the policy for the hosts it does not name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Egress {
    hosts: BTreeMap<HostPort, String>,
    pub unmapped: Unmapped,
}

impl Egress {
    /// Validates `provider_hosts` and `unmapped_hosts`; the error names the field.
    pub fn parse(
        hosts: Option<BTreeMap<String, String>>,
        unmapped: Option<Unmapped>,
    ) -> Result<Egress, String> {
        let raw = hosts.unwrap_or_default();
        if raw.is_empty() && unmapped.is_some() {
            return Err("unmapped_hosts needs a non-empty provider_hosts".into());
        }
        if raw.len() > MAX_PROVIDER_HOSTS {
            return Err(format!(
                "provider_hosts has more than {MAX_PROVIDER_HOSTS} entries"
            ));
        }
        let mut map = BTreeMap::new();
        for (authority, provider) in raw {
            let Some(key) = parse_host_key(&authority) else {
                return Err(format!(
                    "provider_hosts: {authority:?} is not host[:port] (a DNS name in lowercase or punycode, an IPv4 address or [IPv6], without scheme, path or wildcard)"
                ));
            };
            if provider.is_empty()
                || provider.len() > MAX_PROVIDER_NAME_BYTES
                || provider.chars().any(char::is_control)
            {
                return Err(format!(
                    "provider_hosts: the provider of {authority:?} must be a non-empty name of at most {MAX_PROVIDER_NAME_BYTES} bytes without control characters"
                ));
            }
            if map.insert(key, provider).is_some() {
                return Err(format!(
                    "provider_hosts: {authority:?} is given twice (hosts are compared in lowercase)"
                ));
            }
        }
        Ok(Egress {
            hosts: map,
            unmapped: unmapped.unwrap_or_default(),
        })
    }

    /// Whether transparent egress is configured at all.
    pub fn is_enabled(&self) -> bool {
        !self.hosts.is_empty()
    }

    /// The provider mapped to `authority`, if any.
    pub fn provider_for(&self, authority: &str) -> Option<&str> {
        let (host, port) = split_authority(authority)?;
        if let Some(provider) = self.hosts.get(&(host.clone(), port)) {
            return Some(provider);
        }
        match port {
            None | Some(80) | Some(443) => self.hosts.get(&(host, None)).map(String::as_str),
            Some(_) => None,
        }
    }

    /// The provider of a request without a provider header: the one mapped
    /// to its `:authority`, else 403 `forbidden_destination`.
    pub fn provider_of_request(&self, headers: &HeaderPairs) -> Result<String, Rejection> {
        let authority = authority(headers);
        match authority.as_deref().and_then(|a| self.provider_for(a)) {
            Some(provider) => Ok(provider.to_string()),
            None => Err(unmapped_rejection(authority.as_deref())),
        }
    }

    /// For a request without authstamp headers: `Err` when this host is not
    /// mapped and `unmapped_hosts` is `reject`.
    pub fn check_unmarked(&self, headers: &HeaderPairs) -> Result<(), Rejection> {
        if !self.is_enabled() || self.unmapped == Unmapped::Pass {
            return Ok(());
        }
        let authority = authority(headers);
        match authority.as_deref().and_then(|a| self.provider_for(a)) {
            Some(_) => Ok(()),
            None => Err(unmapped_rejection(authority.as_deref())),
        }
    }
}

fn unmapped_rejection(authority: Option<&str>) -> Rejection {
    let shown: String = authority.unwrap_or("").chars().take(255).collect();
    Rejection::new(
        ErrorCode::ForbiddenDestination,
        format!("no provider is mapped to the host {shown:?} (provider_hosts)"),
    )
}

/// The request's single `:authority`, if it is valid UTF-8.
pub fn authority(headers: &HeaderPairs) -> Option<String> {
    let mut values = headers
        .iter()
        .filter(|(n, _)| n == ":authority")
        .map(|(_, v)| v);
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    std::str::from_utf8(value).ok().map(str::to_string)
}

/// Whether two authorities name the same host (ports aside).
pub fn same_host(a: &str, b: &str) -> bool {
    match (split_authority(a), split_authority(b)) {
        (Some((a, _)), Some((b, _))) => a == b,
        _ => false,
    }
}

/// `host[:port]` or `[v6][:port]` → lowercase host and port. `None` when the
/// authority is empty, has userinfo, a bad port or characters outside a host.
pub fn split_authority(authority: &str) -> Option<HostPort> {
    if authority.is_empty() || authority.len() > 261 {
        return None;
    }
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let end = rest.find(']')?;
        let inside = &rest[..end];
        if inside.is_empty()
            || !inside
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return None;
        }
        let after = &rest[end + 1..];
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':')?),
        };
        (format!("[{}]", inside.to_ascii_lowercase()), port)
    } else {
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        };
        if host.is_empty()
            || host.len() > 253
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return None;
        }
        (host.to_ascii_lowercase(), port)
    };
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            match p.parse::<u16>() {
                Ok(0) | Err(_) => return None,
                Ok(n) => Some(n),
            }
        }
        Some(_) => return None,
    };
    Some((host, port))
}

/// A configured key: a valid authority whose DNS labels are non-empty.
fn parse_host_key(authority: &str) -> Option<HostPort> {
    let (host, port) = split_authority(authority)?;
    if !host.starts_with('[')
        && host
            .split('.')
            .any(|label| label.is_empty() || label.starts_with('-') || label.ends_with('-'))
    {
        return None;
    }
    Some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn egress(pairs: &[(&str, &str)], unmapped: Option<Unmapped>) -> Result<Egress, String> {
        let map = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Egress::parse(Some(map), unmapped)
    }

    fn headers(authority: &str) -> HeaderPairs {
        vec![
            (":authority".to_string(), authority.as_bytes().to_vec()),
            (":path".to_string(), b"/".to_vec()),
        ]
    }

    #[test]
    fn authorities_split_into_lowercase_host_and_port() {
        let ok = |a: &str, h: &str, p: Option<u16>| {
            assert_eq!(split_authority(a), Some((h.to_string(), p)), "{a}")
        };
        ok("slack.com", "slack.com", None);
        ok("Slack.COM:443", "slack.com", Some(443));
        ok("127.0.0.1:9100", "127.0.0.1", Some(9100));
        ok("[::1]:8080", "[::1]", Some(8080));
        ok("[FE80::1]", "[fe80::1]", None);
        ok("localhost", "localhost", None);
        for bad in [
            "",
            ":443",
            "slack.com:",
            "slack.com:0",
            "slack.com:65536",
            "slack.com:+1",
            "user@slack.com",
            "slack.com/x",
            "slack com",
            "*.slack.com",
            "[::1",
            "[::1]x",
            "[]",
            "[::1]:",
            "a:b:c",
        ] {
            assert_eq!(split_authority(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn keys_without_a_port_match_default_ports_and_keys_with_one_match_it_only() {
        let e = egress(
            &[
                ("Slack.com", "slack"),
                ("127.0.0.1:9100", "demo"),
                ("api.example.com:8443", "example"),
            ],
            None,
        )
        .unwrap();
        assert!(e.is_enabled());
        assert_eq!(e.provider_for("slack.com"), Some("slack"));
        assert_eq!(e.provider_for("SLACK.COM:443"), Some("slack"));
        assert_eq!(e.provider_for("slack.com:80"), Some("slack"));
        assert_eq!(e.provider_for("slack.com:8080"), None);
        assert_eq!(e.provider_for("evil-slack.com"), None);
        assert_eq!(e.provider_for("slack.com.evil.com"), None);
        assert_eq!(e.provider_for("127.0.0.1:9100"), Some("demo"));
        assert_eq!(e.provider_for("127.0.0.1"), None);
        assert_eq!(e.provider_for("api.example.com:8443"), Some("example"));
        assert_eq!(e.provider_for("api.example.com"), None);
        assert_eq!(e.provider_for("bad host"), None);
    }

    #[test]
    fn bad_maps_are_refused_with_a_message_naming_the_field() {
        type Case<'a> = (&'a [(&'a str, &'a str)], Option<Unmapped>, &'a str);
        let cases: &[Case] = &[
            (&[("https://slack.com", "s")], None, "https://slack.com"),
            (&[("slack.com/api", "s")], None, "slack.com/api"),
            (&[("*.slack.com", "s")], None, "*.slack.com"),
            (&[("slack..com", "s")], None, "slack..com"),
            (&[(".slack.com", "s")], None, ".slack.com"),
            (&[("slack.com.", "s")], None, "slack.com."),
            (&[("-x.com", "s")], None, "-x.com"),
            (&[("slack.com:0", "s")], None, "slack.com:0"),
            (&[("", "s")], None, "provider_hosts"),
            (&[("slack.com", "")], None, "provider of"),
            (&[("slack.com", "a\nb")], None, "provider of"),
            (&[("slack.com", "s"), ("SLACK.com", "t")], None, "twice"),
            (&[], Some(Unmapped::Reject), "unmapped_hosts"),
        ];
        for (pairs, unmapped, needle) in cases {
            let err = egress(pairs, *unmapped).unwrap_err();
            assert!(err.contains(needle), "{pairs:?}: {err}");
        }
        let many: Vec<(String, String)> = (0..=MAX_PROVIDER_HOSTS)
            .map(|i| (format!("h{i}.example.com"), "p".to_string()))
            .collect();
        let err = Egress::parse(Some(many.into_iter().collect()), None).unwrap_err();
        assert!(err.contains("provider_hosts"), "{err}");
        assert_eq!(Egress::parse(None, None), Ok(Egress::default()));
        assert!(!Egress::default().is_enabled());
    }

    #[test]
    fn requests_get_the_provider_of_their_host_or_forbidden_destination() {
        let e = egress(&[("slack.com", "slack")], None).unwrap();
        assert_eq!(
            e.provider_of_request(&headers("slack.com")).unwrap(),
            "slack"
        );
        let err = e.provider_of_request(&headers("evil.com")).unwrap_err();
        assert_eq!(
            (err.status, err.code),
            (403, ErrorCode::ForbiddenDestination)
        );
        assert!(err.message.contains("evil.com"), "{}", err.message);
        assert!(e.provider_of_request(&Vec::new()).is_err(), "no :authority");
        let mut two = headers("slack.com");
        two.push((":authority".to_string(), b"slack.com".to_vec()));
        assert!(
            e.provider_of_request(&two).is_err(),
            "two :authority values"
        );
    }

    #[test]
    fn unmarked_requests_to_unmapped_hosts_pass_or_are_refused_as_configured() {
        let pass = egress(&[("slack.com", "slack")], None).unwrap();
        assert_eq!(pass.unmapped, Unmapped::Pass);
        assert!(pass.check_unmarked(&headers("other.com")).is_ok());
        let reject = egress(&[("slack.com", "slack")], Some(Unmapped::Reject)).unwrap();
        assert!(reject.check_unmarked(&headers("slack.com")).is_ok());
        let err = reject.check_unmarked(&headers("other.com")).unwrap_err();
        assert_eq!(
            (err.status, err.code),
            (403, ErrorCode::ForbiddenDestination)
        );
        assert!(Egress::default().check_unmarked(&headers("x")).is_ok());
    }

    #[test]
    fn through_the_filter_a_transparent_request_is_looked_up_stamped_and_then_cached() {
        use crate::config::Config;
        use crate::filter::Verdict;
        use crate::host::mock::{MockHost, ROOT};
        use crate::stream::{NewStream, StreamFilter, WorkerFilter};
        use authstamp_protocol::TokenLookupRequest;
        use std::rc::Rc;

        let config = Rc::new(
            Config::parse(
                br#"{"token_service": {"cluster": "ts", "authority": "ts.internal"},
                     "app": {"id": "app_mesh", "key_env": "K"},
                     "provider_hosts": {"graph.microsoft.com": "microsoft"}}"#,
                &|_| Some("ask_mesh".to_string()),
            )
            .unwrap(),
        );
        let host = MockHost::new(1_700_000_000);
        let mut worker = WorkerFilter::new(ROOT, Rc::default());
        worker.set_config(config);
        let new_stream = |id: u32| -> StreamFilter {
            match worker.new_stream(id) {
                NewStream::Stream(stream) => stream,
                NewStream::Upstream(_) => panic!("a stamping worker"),
            }
        };
        let request = |stream: &mut StreamFilter, path: &str| {
            let id = stream.id();
            host.add_stream(
                id,
                &[
                    (":method", "GET"),
                    (":authority", "graph.microsoft.com"),
                    (":path", path),
                    ("x-authstamp-user", "u1"),
                ],
            );
            host.enter(id);
            stream.on_request_headers(&host)
        };

        let mut first = new_stream(2);
        assert_eq!(request(&mut first, "/v1.0/me"), Verdict::Pause);
        let dispatch = host.dispatches().last().cloned().unwrap();
        let body: TokenLookupRequest = serde_json::from_slice(&dispatch.body).unwrap();
        assert_eq!(
            (body.provider.as_str(), body.user.as_str()),
            ("microsoft", "u1")
        );
        assert_eq!(dispatch.header("x-authstamp-app"), Some("app_mesh"));
        assert_eq!(dispatch.header("x-authstamp-app-key"), Some("ask_mesh"));

        host.set_call_response(
            Some(200),
            r#"{"header": {"name": "authorization", "value": "Bearer t1"},
                "upstream": {"scheme": "https", "authority": "graph.microsoft.com", "base_path": "/v1.0"},
                "expires_at": null}"#,
        );
        host.enter(2);
        let size = host.call_response_body_len();
        first.on_token_answer(&host, dispatch.token, size);
        assert_eq!(host.resumed(2), 1);
        assert_eq!(host.header(2, ":path").as_deref(), Some("/v1.0/me"));
        assert_eq!(
            host.header(2, "authorization").as_deref(),
            Some("Bearer t1")
        );
        assert_eq!(host.header(2, "x-authstamp-user"), None);

        // The next one is served from the cache, its path kept too.
        assert_eq!(
            request(&mut new_stream(3), "/v1.0/me/messages"),
            Verdict::Continue
        );
        assert_eq!(host.dispatch_count(), 1);
        assert_eq!(
            host.header(3, ":path").as_deref(),
            Some("/v1.0/me/messages")
        );
        assert_eq!(
            host.header(3, "authorization").as_deref(),
            Some("Bearer t1")
        );
    }

    #[test]
    fn same_host_ignores_case_and_port() {
        assert!(same_host("Slack.com", "slack.com:443"));
        assert!(same_host("127.0.0.1:9100", "127.0.0.1:9100"));
        assert!(!same_host("slack.com", "slack.com.evil.com"));
        assert!(!same_host("bad host", "bad host"));
    }
}
