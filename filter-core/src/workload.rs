//! Mesh mode: which workloads may use the app bound by the configuration.
//!
//! With `app.allowed_workloads` set, a marked request is stamped only when
//! the calling workload's identity is in the list: the downstream peer
//! certificate's URI SAN (`connection.uri_san_peer_certificate`, e.g.
//! `spiffe://cluster.local/ns/my-app/sa/my-service`, present when the
//! workload reached this Envoy over mTLS: an egress gateway, a shared
//! proxy), else Istio's `source.principal`. No identity, or another one, is
//! refused with 403 `forbidden_workload` before any lookup. Identities are
//! compared exactly (byte for byte).

use authstamp_protocol::ErrorCode;

use crate::host::Host;
use crate::reply::Rejection;

/// The Envoy attributes read, in order.
pub const IDENTITY_PROPERTIES: [&[&str]; 2] = [
    &["connection", "uri_san_peer_certificate"],
    &["source", "principal"],
];

/// The caller's workload identity, from the first attribute that has one.
pub fn identity(host: &dyn Host) -> Option<String> {
    // The first attribute present decides, even when it is unusable.
    let value = IDENTITY_PROPERTIES
        .iter()
        .find_map(|path| host.property(path).filter(|v| !v.is_empty()))?;
    String::from_utf8(value).ok()
}

/// `Ok` when `allowed` is empty (not checked) or holds the caller's identity.
pub fn check(host: &dyn Host, allowed: &[String]) -> Result<(), Rejection> {
    if allowed.is_empty() {
        return Ok(());
    }
    match identity(host) {
        Some(id) if allowed.iter().any(|a| a.as_bytes() == id.as_bytes()) => Ok(()),
        Some(_) => Err(Rejection::new(
            ErrorCode::ForbiddenWorkload,
            "this workload's identity is not allowed to use the app (app.allowed_workloads)",
        )),
        None => Err(Rejection::new(
            ErrorCode::ForbiddenWorkload,
            "no workload identity (peer certificate URI SAN or source principal) on this connection; app.allowed_workloads requires one",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::filter::Verdict;
    use crate::host::mock::{MockHost, ROOT};
    use crate::stream::{NewStream, WorkerFilter};
    use std::rc::Rc;

    const ALLOWED: &str = "spiffe://cluster.local/ns/my-app/sa/my-service";

    fn config(allowed: Option<&str>) -> Rc<Config> {
        let allowed = allowed
            .map(|a| format!(r#", "allowed_workloads": [{a}]"#))
            .unwrap_or_default();
        let json = format!(
            r#"{{"token_service": {{"cluster": "ts", "authority": "ts"}},
                "app": {{"id": "app_mesh", "key_env": "K"{allowed}}}}}"#
        );
        Rc::new(Config::parse(json.as_bytes(), &|_| Some("ask_mesh".into())).unwrap())
    }

    /// Runs one marked request with these attributes; the local reply, if any.
    fn run(
        config: &Rc<Config>,
        properties: &[(&str, &[u8])],
    ) -> (Verdict, Option<crate::host::mock::LocalReply>, usize) {
        let host = MockHost::new(1_700_000_000);
        let mut worker = WorkerFilter::new(ROOT, Rc::default());
        worker.define_metrics(&host);
        worker.set_config(Rc::clone(config));
        let NewStream::Stream(mut stream) = worker.new_stream(2) else {
            panic!("a stamping worker");
        };
        host.add_stream(
            2,
            &[
                (":path", "/api/x"),
                ("x-authstamp-provider", "slack"),
                ("x-authstamp-user", "alice"),
            ],
        );
        for (path, value) in properties {
            host.set_property(2, path, value);
        }
        host.enter(2);
        let verdict = stream.on_request_headers(&host);
        (verdict, host.reply(2), host.dispatch_count())
    }

    #[test]
    fn the_list_is_parsed_and_bounded() {
        assert!(config(None).allowed_workloads.is_empty());
        assert_eq!(
            config(Some(&format!("\"{ALLOWED}\""))).allowed_workloads,
            [ALLOWED]
        );
        for bad in [
            "",
            "\"\"",
            "\"spiffe://x/with space\"",
            "\"spiffe://x/\\u0000\"",
        ] {
            let json = format!(
                r#"{{"token_service": {{"cluster": "ts", "authority": "ts"}},
                    "app": {{"id": "a", "key_env": "K", "allowed_workloads": [{bad}]}}}}"#
            );
            assert!(
                Config::parse(json.as_bytes(), &|_| Some("k".into())).is_err(),
                "{bad}"
            );
        }
        let many: Vec<String> = (0..65).map(|i| format!("\"spiffe://x/{i}\"")).collect();
        let json = format!(
            r#"{{"token_service": {{"cluster": "ts", "authority": "ts"}},
                "app": {{"id": "a", "key_env": "K", "allowed_workloads": [{}]}}}}"#,
            many.join(",")
        );
        assert!(Config::parse(json.as_bytes(), &|_| Some("k".into())).is_err());
        // Gateway mode has no bound app, hence no list.
        let json = r#"{"token_service": {"cluster": "ts", "authority": "ts"},
                       "allowed_workloads": ["spiffe://x"]}"#;
        assert!(Config::parse(json.as_bytes(), &|_| None).is_err());
    }

    #[test]
    fn an_allowed_peer_certificate_goes_on_to_the_lookup() {
        let config = config(Some(&format!("\"spiffe://other\", \"{ALLOWED}\"")));
        let (verdict, reply, dispatches) = run(
            &config,
            &[("connection.uri_san_peer_certificate", ALLOWED.as_bytes())],
        );
        assert_eq!(verdict, Verdict::Pause);
        assert!(reply.is_none());
        assert_eq!(dispatches, 1);
        // Istio's source.principal when there is no URI SAN attribute.
        let (verdict, _, dispatches) = run(&config, &[("source.principal", ALLOWED.as_bytes())]);
        assert_eq!((verdict, dispatches), (Verdict::Pause, 1));
    }

    #[test]
    fn other_missing_or_garbled_identities_are_refused_before_any_lookup() {
        let config = config(Some(&format!("\"{ALLOWED}\"")));
        let cases: [&[(&str, &[u8])]; 7] = [
            &[],
            &[(
                "connection.uri_san_peer_certificate",
                b"spiffe://cluster.local/ns/evil/sa/x",
            )],
            // A prefix, a suffix, another case: exact match only.
            &[(
                "connection.uri_san_peer_certificate",
                b"spiffe://cluster.local/ns/my-app/sa/my-service-2",
            )],
            &[(
                "connection.uri_san_peer_certificate",
                b"spiffe://cluster.local/ns/my-app/sa/my-servic",
            )],
            &[(
                "connection.uri_san_peer_certificate",
                b"SPIFFE://cluster.local/ns/my-app/sa/my-service",
            )],
            &[("connection.uri_san_peer_certificate", b"\xff\xfe")],
            // The first attribute wins: an allowed principal does not rescue
            // a peer certificate of another workload.
            &[
                ("connection.uri_san_peer_certificate", b"spiffe://evil"),
                ("source.principal", ALLOWED.as_bytes()),
            ],
        ];
        for (i, properties) in cases.iter().enumerate() {
            let (verdict, reply, dispatches) = run(&config, properties);
            assert_eq!(verdict, Verdict::Pause, "case {i}");
            let reply = reply.unwrap_or_else(|| panic!("case {i}: no reply"));
            assert_eq!(reply.status, 403, "case {i}");
            assert_eq!(
                reply.header("x-authstamp-error"),
                Some("forbidden_workload"),
                "case {i}"
            );
            assert_eq!(reply.error_body().error, ErrorCode::ForbiddenWorkload);
            assert_eq!(dispatches, 0, "case {i}: no lookup");
        }
    }

    #[test]
    fn without_a_list_any_workload_may_call() {
        let (verdict, reply, dispatches) = run(&config(None), &[]);
        assert_eq!(
            (verdict, reply.is_none(), dispatches),
            (Verdict::Pause, true, 1)
        );
    }
}
