//! The state machine through the objects the glues drive (see `stream.rs`).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use authstamp_protocol::ErrorCode;

use super::*;
use crate::cache::{self, Slotted};
use crate::config::Config;
use crate::heal;
use crate::host::mock::{MockHost, ROOT};
use crate::inflight::Owner;
use crate::metrics;
use crate::stream::{NewStream, StreamFilter, UpstreamFilter, WorkerFilter};
use authstamp_protocol::TokenLookupRequest;

const NOW: u64 = 1_700_000_000;
const APP: &str = "app_1";
const KEY: &str = "ask_right-key";

fn config_from(json: &str) -> Rc<Config> {
    Rc::new(
        Config::parse(json.as_bytes(), &|name| {
            (name == "APP_KEY").then(|| "ask_mesh-key".to_string())
        })
        .unwrap(),
    )
}

fn gateway() -> Rc<Config> {
    // Key rechecks have their own tests; the expiry tests span minutes.
    config_from(
        r#"{"token_service": {"cluster": "ts_cluster", "authority": "ts.internal", "timeout": "750ms"},
            "refresh_skew": "30s", "max_cache_ttl": "5m", "app_key_recheck": "1h"}"#,
    )
}

fn mesh() -> Rc<Config> {
    config_from(
        r#"{"token_service": {"cluster": "ts_cluster", "authority": "ts.internal"},
            "app": {"id": "app_mesh", "key_env": "APP_KEY"}}"#,
    )
}

/// The root context of the second worker of a bench.
const OTHER_ROOT: u32 = 1000;
/// The root context of the first worker's upstream instance.
const UPSTREAM_ROOT: u32 = 2000;

/// A test bench: one host (shared data is shared by all workers), two
/// workers, one config, driven through the objects the glues hold
/// ([`WorkerFilter`], [`StreamFilter`], [`UpstreamFilter`]). Streams run
/// on the first worker unless started with [`Bench::call_on_other`].
struct Bench {
    host: MockHost,
    root: WorkerFilter,
    other_root: WorkerFilter,
    /// The upstream instance on the first worker (same VM: same stamps).
    upstream_root: WorkerFilter,
    worker: Rc<Worker>,
    other: Rc<Worker>,
    streams: RefCell<std::collections::HashMap<u32, StreamFilter>>,
    attempts: RefCell<std::collections::HashMap<u32, UpstreamFilter>>,
    config: Rc<Config>,
    on_other: RefCell<std::collections::HashSet<u32>>,
}

impl Bench {
    fn new(config: Rc<Config>) -> Self {
        let host = MockHost::new(NOW);
        host.add_context(OTHER_ROOT);
        host.add_context(UPSTREAM_ROOT);
        let mut root = WorkerFilter::new(ROOT, Rc::default());
        root.define_metrics(&host);
        root.set_config(Rc::clone(&config));
        let mut other_root = WorkerFilter::new(OTHER_ROOT, Rc::default());
        other_root.define_metrics(&host);
        other_root.set_config(Rc::clone(&config));
        let mut upstream_root = WorkerFilter::new(UPSTREAM_ROOT, Rc::clone(&root.worker().stamps));
        upstream_root.define_metrics(&host);
        upstream_root.set_role(crate::config::AttemptRole::Upstream);
        Bench {
            worker: Rc::clone(root.worker()),
            other: Rc::clone(other_root.worker()),
            host,
            root,
            other_root,
            upstream_root,
            streams: RefCell::new(Default::default()),
            attempts: RefCell::new(Default::default()),
            config,
            on_other: RefCell::new(Default::default()),
        }
    }

    /// The worker of a stream.
    fn root_of(&self, stream: u32) -> &WorkerFilter {
        if self.on_other.borrow().contains(&stream) {
            &self.other_root
        } else {
            &self.root
        }
    }

    fn state(&self, stream: u32) -> State {
        self.streams
            .borrow()
            .get(&stream)
            .map(|s| s.state().clone())
            .unwrap_or(State::Fresh)
    }

    /// Runs `f` on the object of `stream`.
    fn on_stream<T>(&self, stream: u32, f: impl FnOnce(&mut StreamFilter) -> T) -> T {
        let mut streams = self.streams.borrow_mut();
        f(streams.get_mut(&stream).expect("a known stream"))
    }

    /// A request arrives on `stream`.
    fn request(&self, stream: u32, headers: &[(&str, &str)]) -> Verdict {
        self.host.add_stream(stream, headers);
        self.headers_arrive(stream)
    }

    fn headers_arrive(&self, stream: u32) -> Verdict {
        self.host.enter(stream);
        let NewStream::Stream(filter) = self.root_of(stream).new_stream(stream) else {
            panic!("a stamping worker");
        };
        self.streams.borrow_mut().insert(stream, filter);
        self.on_stream(stream, |s| s.on_request_headers(&self.host))
    }

    /// A marked gateway request for `user` with app key `key`.
    fn call(&self, stream: u32, user: &str, key: &str) -> Verdict {
        self.request(stream, &marked(user, key))
    }

    /// The same, on the second worker.
    fn call_on_other(&self, stream: u32, user: &str, key: &str) -> Verdict {
        self.on_other.borrow_mut().insert(stream);
        self.call(stream, user, key)
    }

    /// The token service answers the call `token`, delivered to `to`.
    fn answer(&self, to: u32, token: u32, status: Option<u16>, body: &str) {
        self.host.set_call_response(status, body);
        self.host.enter(to);
        let size = self.host.call_response_body_len();
        match to {
            ROOT => self.root.on_token_answer(&self.host, token, size),
            OTHER_ROOT => self.other_root.on_token_answer(&self.host, token, size),
            UPSTREAM_ROOT => self.upstream_root.on_token_answer(&self.host, token, size),
            stream => self.on_stream(stream, |s| s.on_token_answer(&self.host, token, size)),
        }
    }

    /// Answers the last dispatched call, delivered to its dispatcher.
    fn answer_last(&self, status: Option<u16>, body: &str) {
        let dispatch = self.host.dispatches().last().cloned().expect("a dispatch");
        self.answer(dispatch.from, dispatch.token, status, body);
    }

    fn body_arrives(&self, stream: u32) -> Verdict {
        self.host.enter(stream);
        self.on_stream(stream, |s| s.on_request_body())
    }

    /// The provider answers `status` to the stamped request of `stream`.
    fn response_arrives(&self, stream: u32, status: u16) {
        self.host.set_response_status(stream, status);
        self.host.enter(stream);
        let verdict = self.on_stream(stream, |s| s.on_response_headers(&self.host));
        assert_eq!(verdict, Verdict::Continue);
    }

    fn done(&self, stream: u32) {
        self.host.enter(stream);
        self.on_stream(stream, |s| s.on_done(&self.host));
        self.host.delete_stream(stream);
    }

    fn tick(&self) {
        self.host.enter(ROOT);
        self.root.on_tick(&self.host);
    }

    /// The router sends an attempt (upstream context `attempt`) of the
    /// stamped request of `stream`: its headers as stamped (minus the
    /// route header the route removes), its filter state.
    fn attempt(&self, attempt: u32, stream: u32) -> Verdict {
        let original = self.host.stream(stream);
        let headers = original
            .headers
            .into_iter()
            .filter(|(n, _)| n != "x-authstamp-route")
            .collect();
        self.host.add_stream_bytes(attempt, headers);
        for (name, value) in original.properties {
            self.host.set_property(attempt, &name, &value);
        }
        self.host.enter(attempt);
        let NewStream::Upstream(mut filter) = self.upstream_root.new_stream(attempt) else {
            panic!("an upstream worker");
        };
        let verdict = filter.on_request_headers(&self.host);
        self.attempts.borrow_mut().insert(attempt, filter);
        verdict
    }

    /// Where upstream attempt `attempt` is.
    fn attempt_state(&self, attempt: u32) -> heal::Attempt {
        self.attempts.borrow()[&attempt].attempt()
    }

    /// A body chunk of upstream attempt `attempt`.
    fn attempt_body(&self, attempt: u32) -> Verdict {
        self.host.enter(attempt);
        let mut attempts = self.attempts.borrow_mut();
        attempts
            .get_mut(&attempt)
            .expect("a known attempt")
            .on_request_body()
    }

    /// The provider answers `status` to upstream attempt `attempt`.
    fn attempt_answered(&self, attempt: u32, status: u16) {
        self.host.set_response_status(attempt, status);
        self.host.enter(attempt);
        let mut attempts = self.attempts.borrow_mut();
        let filter = attempts.get_mut(&attempt).expect("a known attempt");
        assert_eq!(filter.on_response_headers(&self.host), Verdict::Continue);
    }

    fn tick_upstream(&self) {
        self.host.enter(UPSTREAM_ROOT);
        self.upstream_root.on_tick(&self.host);
    }

    fn added(&self, stream: u32) -> Vec<(String, String)> {
        self.host.stream(stream).response_added
    }

    fn tick_other(&self) {
        self.host.enter(OTHER_ROOT);
        self.other_root.on_tick(&self.host);
    }

    fn key_of(&self, user: &str) -> Slotted {
        Slotted::new(
            cache::key("ts_cluster", APP, "slack", user),
            self.config.cache_capacity,
        )
    }

    /// The cache entry of `user`, wherever it is.
    fn entry_of(&self, user: &str) -> Option<cache::Entry> {
        let key = self.key_of(user);
        key.slots.iter().find_map(|slot| {
            let value = self.host.shared_value(&cache::slot_key(*slot))?;
            cache::Entry::decode(&value).filter(|e| e.key == key.key)
        })
    }

    /// The shared-data keys of cache slots.
    fn slot_keys(&self) -> Vec<String> {
        self.host
            .shared_keys()
            .into_iter()
            .filter(|k| k.starts_with("authstamp/v2/slot/"))
            .collect()
    }

    fn reply_of(&self, stream: u32) -> (u16, ErrorCode, String) {
        let reply = self.host.reply(stream).expect("a local reply");
        assert_eq!(reply.header("content-type"), Some("application/json"));
        let body = reply.error_body();
        assert_eq!(reply.header("x-authstamp-error"), Some(body.error.as_str()));
        (reply.status, body.error, body.message)
    }

    fn assert_untouched(&self, stream: u32, original: &[(&str, &str)]) {
        let expected: Vec<(String, Vec<u8>)> = original
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect();
        assert_eq!(
            self.host.stream(stream).headers,
            expected,
            "headers of {stream} changed"
        );
    }
}

fn marked_owned(user: &str, key: &str) -> Vec<(String, String)> {
    vec![
        (":method".into(), "GET".into()),
        (":path".into(), "/api/users.info?user=U1".into()),
        (":authority".into(), "envoy.local:10000".into()),
        ("x-authstamp-provider".into(), "slack".into()),
        ("x-authstamp-user".into(), user.into()),
        ("x-authstamp-app".into(), APP.into()),
        ("x-authstamp-app-key".into(), key.into()),
        ("accept".into(), "application/json".into()),
    ]
}

fn marked(user: &str, key: &str) -> Vec<(&'static str, &'static str)> {
    marked_owned(user, key)
        .into_iter()
        .map(|(n, v)| (leak(n), leak(v)))
        .collect()
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn token_answer(expires_at: Option<u64>) -> String {
    answer_json(
        "authorization",
        "Bearer xoxb-secret",
        "https",
        "slack.com",
        "/api-base",
        expires_at,
    )
}

fn answer_json(
    name: &str,
    value: &str,
    scheme: &str,
    authority: &str,
    base: &str,
    expires_at: Option<u64>,
) -> String {
    serde_json::json!({
        "header": {"name": name, "value": value},
        "upstream": {"scheme": scheme, "authority": authority, "base_path": base},
        "expires_at": expires_at,
    })
    .to_string()
}

fn error_json(code: &str, message: &str) -> String {
    serde_json::json!({"error": code, "message": message}).to_string()
}

fn assert_stamped(bench: &Bench, stream: u32, token: &str) {
    let host = &bench.host;
    assert_eq!(host.reply(stream), None, "no local reply for {stream}");
    assert_eq!(
        host.header_values(stream, "authorization"),
        vec![token.to_string()]
    );
    assert_eq!(
        host.header(stream, ":authority").as_deref(),
        Some("slack.com")
    );
    assert_eq!(
        host.header(stream, ":path").as_deref(),
        Some("/api-base/api/users.info?user=U1")
    );
    assert_eq!(
        host.header(stream, "x-authstamp-route").as_deref(),
        Some("https")
    );
    let leaked: Vec<String> = host
        .header_names(stream)
        .into_iter()
        .filter(|n| n.starts_with("x-authstamp-") && n != "x-authstamp-route")
        .collect();
    assert!(leaked.is_empty(), "authstamp headers left: {leaked:?}");
    assert_eq!(
        host.header(stream, "accept").as_deref(),
        Some("application/json")
    );
}

// --- unmarked requests ---------------------------------------------------

#[test]
fn unmarked_requests_pass_untouched() {
    let bench = Bench::new(gateway());
    let original = [
        (":method", "GET"),
        (":path", "//odd"),
        ("authorization", "Bearer mine"),
        ("x-other", "1"),
    ];
    assert_eq!(bench.request(2, &original), Verdict::Continue);
    bench.assert_untouched(2, &original);
    assert_eq!(bench.host.reply(2), None);
    assert_eq!(bench.host.dispatch_count(), 0);
    assert!(bench.host.shared_keys().is_empty());
    assert_eq!(bench.state(2), State::Passed);
    assert_eq!(bench.body_arrives(2), Verdict::Continue);
}

#[test]
fn unmarked_requests_are_refused_when_configured() {
    let bench = Bench::new(config_from(
        r#"{"token_service": {"cluster": "c", "authority": "a"}, "unmarked_requests": "reject"}"#,
    ));
    assert_eq!(bench.request(2, &[(":path", "/x")]), Verdict::Pause);
    let (status, code, message) = bench.reply_of(2);
    assert_eq!((status, code), (400, ErrorCode::BadRequest));
    assert!(message.contains("x-authstamp-provider"), "{message}");
    assert_eq!(bench.host.dispatch_count(), 0);
}

#[test]
fn configured_header_names_mark_a_request() {
    let bench = Bench::new(config_from(
        r#"{"token_service": {"cluster": "c", "authority": "a"},
            "headers": {"provider": "x-p", "user": "x-u", "app": "x-a", "app_key": "x-k"}}"#,
    ));
    bench.request(2, &[(":path", "/x"), ("x-u", "alice")]);
    let (status, _, message) = bench.reply_of(2);
    assert_eq!(status, 400);
    assert!(message.contains("x-p"), "{message}");

    bench.request(
        3,
        &[
            (":path", "/x"),
            ("x-p", "slack"),
            ("x-u", "alice"),
            ("x-a", APP),
            ("x-k", KEY),
        ],
    );
    assert_eq!(bench.host.dispatch_count(), 1);
    let d = &bench.host.dispatches()[0];
    assert_eq!(
        d.header("x-authstamp-app"),
        Some(APP),
        "the lookup uses the protocol names"
    );
    bench.answer_last(Some(200), &token_answer(None));
    let names = bench.host.header_names(3);
    for gone in ["x-p", "x-u", "x-a", "x-k"] {
        assert!(
            !names.contains(&gone.to_string()),
            "{gone} left in {names:?}"
        );
    }
}

// --- bad identity headers ------------------------------------------------

#[test]
fn each_bad_identity_header_is_a_bad_request_naming_the_header() {
    let long = "u".repeat(257);
    let base = marked("alice", KEY);
    let without = |name: &str| -> Vec<(&str, &str)> {
        base.iter().copied().filter(|(n, _)| *n != name).collect()
    };
    let with = |name: &'static str, value: &'static str| -> Vec<(&str, &str)> {
        let mut h = without(name);
        h.push((name, value));
        h
    };
    let twice = |name: &'static str| -> Vec<(&str, &str)> {
        let mut h = base.clone();
        h.push((name, "again"));
        h
    };
    // (request headers, header named in the message, why)
    type Case<'a> = (Vec<(&'a str, &'a str)>, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (
            without("x-authstamp-provider"),
            "x-authstamp-provider",
            "missing",
        ),
        (without("x-authstamp-user"), "x-authstamp-user", "missing"),
        (without("x-authstamp-app"), "x-authstamp-app", "missing"),
        (
            without("x-authstamp-app-key"),
            "x-authstamp-app-key",
            "missing",
        ),
        (
            twice("x-authstamp-provider"),
            "x-authstamp-provider",
            "exactly once",
        ),
        (
            twice("x-authstamp-user"),
            "x-authstamp-user",
            "exactly once",
        ),
        (
            twice("x-authstamp-app-key"),
            "x-authstamp-app-key",
            "exactly once",
        ),
        (with("x-authstamp-user", ""), "x-authstamp-user", "empty"),
        (
            with("x-authstamp-provider", ""),
            "x-authstamp-provider",
            "empty",
        ),
        (
            with("x-authstamp-user", leak(long.clone())),
            "x-authstamp-user",
            "256",
        ),
        (
            with("x-authstamp-user", "al\tice"),
            "x-authstamp-user",
            "control",
        ),
        (
            with("x-authstamp-app", "app\u{7f}"),
            "x-authstamp-app",
            "control",
        ),
        (
            with("x-authstamp-app-key", "ask_\u{1b}[2J"),
            "x-authstamp-app-key",
            "control",
        ),
    ];
    for (i, (headers, name, why)) in cases.into_iter().enumerate() {
        let bench = Bench::new(gateway());
        let stream = 10 + i as u32;
        assert_eq!(bench.request(stream, &headers), Verdict::Pause);
        let (status, code, message) = bench.reply_of(stream);
        assert_eq!((status, code), (400, ErrorCode::BadRequest), "{name} {why}");
        assert!(
            message.contains(name) && message.contains(why),
            "{message:?} for {name} {why}"
        );
        assert!(
            !message.contains(KEY) && !message.contains("ask_"),
            "{message}"
        );
        assert_eq!(bench.host.dispatch_count(), 0);
        assert_eq!(bench.host.resumed(stream), 0);
    }
}

#[test]
fn invalid_utf8_is_a_bad_request() {
    let bench = Bench::new(gateway());
    let mut headers: Vec<(String, Vec<u8>)> = marked_owned("alice", KEY)
        .into_iter()
        .filter(|(n, _)| n != "x-authstamp-user")
        .map(|(n, v)| (n, v.into_bytes()))
        .collect();
    headers.push(("x-authstamp-user".into(), vec![b'a', 0xff, 0xfe]));
    bench.host.add_stream_bytes(2, headers);
    bench.headers_arrive(2);
    let (status, _, message) = bench.reply_of(2);
    assert_eq!(status, 400);
    assert!(
        message.contains("x-authstamp-user") && message.contains("UTF-8"),
        "{message}"
    );
}

#[test]
fn targets_other_than_a_path_are_forbidden() {
    for path in ["http://evil.example/x", "//evil.example/x", "*"] {
        let bench = Bench::new(gateway());
        let mut headers = marked("alice", KEY);
        headers.retain(|(n, _)| *n != ":path");
        headers.push((":path", path));
        assert_eq!(bench.request(2, &headers), Verdict::Pause);
        let (status, code, _) = bench.reply_of(2);
        assert_eq!(
            (status, code),
            (403, ErrorCode::ForbiddenDestination),
            "{path}"
        );
        assert_eq!(bench.host.dispatch_count(), 0);
    }
}

#[test]
fn a_path_leaving_the_base_path_is_refused_before_any_lookup_and_on_a_hit() {
    let traversals = [
        "/../admin",
        "/api/%2e%2e/admin",
        "/api/..%2fadmin",
        "/api/..;/admin",
        "/api\\..\\admin",
        "/api/%252e%252e/admin",
    ];
    let with_path = |user: &str, path: &'static str| {
        let mut headers = marked(user, KEY);
        headers.retain(|(n, _)| *n != ":path");
        headers.push((":path", path));
        headers
    };
    let query_answer = serde_json::json!({
        "header": {"name": "api_key", "value": "k-secret", "in": "query"},
        "upstream": {"scheme": "https", "authority": "maps.example.com", "base_path": "/v1"},
    })
    .to_string();
    let bench = Bench::new(gateway());
    // alice is cached with a bearer token, bob with a query credential.
    bench.call(2, "alice", KEY);
    bench.answer_last(Some(200), &token_answer(None));
    bench.call(3, "bob", KEY);
    bench.answer_last(Some(200), &query_answer);
    assert_eq!(
        bench.host.header(3, ":path").as_deref(),
        Some("/v1/api/users.info?user=U1&api_key=k-secret")
    );
    let mut stream = 10;
    for path in traversals {
        for user in ["alice", "bob", "carol"] {
            stream += 1;
            assert_eq!(
                bench.request(stream, &with_path(user, path)),
                Verdict::Pause
            );
            let (status, code, _) = bench.reply_of(stream);
            assert_eq!(
                (status, code),
                (403, ErrorCode::ForbiddenDestination),
                "{user} {path}"
            );
            assert_eq!(bench.host.header(stream, "authorization"), None);
            assert!(
                !bench
                    .host
                    .header(stream, ":path")
                    .unwrap_or_default()
                    .contains("k-secret"),
                "{user} {path}"
            );
        }
    }
    assert_eq!(
        bench.host.dispatch_count(),
        2,
        "carol's misses asked nothing"
    );

    // Transparent egress: the path is kept as sent, so it is checked too.
    let bench = Bench::new(config_from(
        r#"{"token_service": {"cluster": "ts_cluster", "authority": "ts.internal"},
            "app": {"id": "app_mesh", "key_env": "APP_KEY"},
            "provider_hosts": {"slack.com": "slack"}}"#,
    ));
    let egress = |path: &'static str| -> Vec<(&'static str, &'static str)> {
        vec![
            (":authority", "slack.com"),
            (":path", path),
            ("x-authstamp-user", "alice"),
        ]
    };
    bench.request(2, &egress("/api-base/ok"));
    bench.answer_last(Some(200), &token_answer(None));
    assert_eq!(
        bench.host.header(2, "authorization").as_deref(),
        Some("Bearer xoxb-secret")
    );
    for (i, path) in traversals.into_iter().enumerate() {
        let stream = 20 + u32::try_from(i).unwrap();
        assert_eq!(bench.request(stream, &egress(path)), Verdict::Pause);
        assert_eq!(
            bench.reply_of(stream).1,
            ErrorCode::ForbiddenDestination,
            "{path}"
        );
        assert_eq!(bench.host.header(stream, "authorization"), None);
    }
    assert_eq!(bench.host.dispatch_count(), 1);
}

// --- miss, answer, stamp -------------------------------------------------

#[test]
fn a_miss_dispatches_one_lookup_and_the_answer_is_stamped() {
    let bench = Bench::new(gateway());
    let mut headers = marked("alice", KEY);
    headers.push(("authorization", "Bearer forged-by-the-app"));
    headers.push(("proxy-authorization", "Basic Zm9v"));
    headers.push(("x-forwarded-host", "evil.example"));
    headers.push(("x-authstamp-debug", "1"));
    headers.push(("x-authstamp-route", "http"));
    assert_eq!(bench.request(2, &headers), Verdict::Pause);
    assert_eq!(bench.state(2), State::Waiting(1));
    assert_eq!(bench.host.resumed(2), 0);

    let dispatches = bench.host.dispatches();
    assert_eq!(dispatches.len(), 1);
    let d = &dispatches[0];
    assert_eq!(d.from, 2);
    assert_eq!(d.cluster, "ts_cluster");
    assert_eq!(d.timeout, Duration::from_millis(750));
    assert_eq!(d.header(":method"), Some("POST"));
    assert_eq!(d.header(":path"), Some("/v1/token-lookup"));
    assert_eq!(d.header(":authority"), Some("ts.internal"));
    assert_eq!(d.header("content-type"), Some("application/json"));
    assert_eq!(d.header("x-authstamp-app"), Some(APP));
    assert_eq!(d.header("x-authstamp-app-key"), Some(KEY));
    let body: TokenLookupRequest = serde_json::from_slice(&d.body).unwrap();
    assert_eq!(
        body,
        TokenLookupRequest {
            provider: "slack".into(),
            user: "alice".into(),
            force_refresh: false
        }
    );

    // The body is held while the lookup is in flight.
    assert_eq!(bench.body_arrives(2), Verdict::Pause);

    bench.answer(2, d.token, Some(200), &token_answer(Some(NOW + 3600)));
    assert_stamped(&bench, 2, "Bearer xoxb-secret");
    for gone in [
        "proxy-authorization",
        "x-forwarded-host",
        "x-authstamp-debug",
    ] {
        assert_eq!(bench.host.header(2, gone), None, "{gone}");
    }
    assert_eq!(bench.host.resumed(2), 1);
    assert!(bench.state(2).is_stamped());
    assert_eq!(bench.body_arrives(2), Verdict::Continue);
    assert_eq!(bench.host.current(), 2, "effective context restored");
    assert_eq!(bench.worker.inflight.borrow().pending_count(), 0);
    assert_eq!(bench.worker.inflight.borrow().completed_count(), 0);
}

fn gateway_with_credential() -> Rc<Config> {
    Rc::new(
        Config::parse(
            br#"{"token_service": {"cluster": "ts_cluster", "authority": "ts.internal",
                                   "credential_env": "AUTHSTAMP_FILTER_TOKEN"}}"#,
            &|name| (name == "AUTHSTAMP_FILTER_TOKEN").then(|| "ftk_filter-secret".to_string()),
        )
        .unwrap(),
    )
}

#[test]
fn the_lookup_carries_the_filter_credential_and_never_the_apps_authorization() {
    let bench = Bench::new(gateway_with_credential());
    let mut headers = marked("alice", KEY);
    headers.push(("authorization", "Bearer forged-by-the-app"));
    assert_eq!(bench.request(2, &headers), Verdict::Pause);
    let dispatches = bench.host.dispatches();
    let d = &dispatches[0];
    assert_eq!(d.header("authorization"), Some("Bearer ftk_filter-secret"));
    let authorizations = d
        .headers
        .iter()
        .filter(|(n, _)| n == "authorization")
        .count();
    assert_eq!(authorizations, 1);
    assert_eq!(d.header("x-authstamp-app-key"), Some(KEY));
    bench.answer(2, d.token, Some(200), &token_answer(Some(NOW + 3600)));
    assert_stamped(&bench, 2, "Bearer xoxb-secret");
    // The credential goes to the token service only, never upstream.
    assert!(!format!("{:?}", bench.host.header_values(2, "authorization")).contains("ftk_"));

    // Without credential_env (client certificate mode) no authorization is sent.
    let plain = Bench::new(gateway());
    plain.request(2, &marked("alice", KEY));
    assert_eq!(plain.host.dispatches()[0].header("authorization"), None);
}

#[test]
fn a_refused_filter_credential_is_a_503_not_the_apps_fault() {
    let bench = Bench::new(gateway_with_credential());
    bench.call(2, "alice", KEY);
    bench.answer_last(
        Some(401),
        &error_json("unauthorized", "a valid filter credential is required"),
    );
    let (status, code, message) = bench.reply_of(2);
    assert_eq!((status, code), (503, ErrorCode::TokenServiceUnavailable));
    assert!(message.contains("filter credential"), "{message}");
    assert!(!message.contains("ftk_"), "{message}");
    assert_eq!(bench.host.resumed(2), 0);
}

#[test]
fn inbound_credentials_are_stripped_even_when_the_stamp_is_another_header() {
    let bench = Bench::new(gateway());
    let mut headers = marked("alice", KEY);
    headers.push(("authorization", "Bearer forged-by-the-app"));
    headers.push(("proxy-authorization", "Basic Zm9v"));
    headers.push(("x-forwarded-host", "evil.example"));
    headers.push(("x-api-key", "forged-key"));
    // Read as a second x-api-key by CGI-style servers.
    headers.push(("X_Api_Key", "forged-too"));
    bench.request(2, &headers);
    bench.answer_last(
        Some(200),
        &answer_json(
            "x-api-key",
            "hs-real-key",
            "https",
            "api.hubapi.com",
            "",
            None,
        ),
    );
    assert_eq!(
        bench.host.header_values(2, "x-api-key"),
        vec!["hs-real-key".to_string()]
    );
    for gone in [
        "authorization",
        "proxy-authorization",
        "x-forwarded-host",
        "X_Api_Key",
    ] {
        assert_eq!(
            bench.host.header_values(2, gone),
            Vec::<String>::new(),
            "{gone}"
        );
    }
    assert_eq!(
        bench.host.header(2, ":authority").as_deref(),
        Some("api.hubapi.com")
    );
    assert_eq!(
        bench.host.header(2, ":path").as_deref(),
        Some("/api/users.info?user=U1")
    );
    assert_eq!(bench.host.resumed(2), 1);
}

#[test]
fn a_refused_header_write_is_a_local_500_never_an_unstamped_request() {
    let bench = Bench::new(gateway());
    // A miss: the waiters of the answer.
    bench.call(2, "alice", KEY);
    bench.call(3, "alice", KEY);
    bench.host.set_fail_header_writes(true);
    bench.answer_last(Some(200), &token_answer(None));
    for stream in [2, 3] {
        let (status, code, _) = bench.reply_of(stream);
        assert_eq!((status, code), (500, ErrorCode::Internal), "{stream}");
        assert_eq!(bench.host.resumed(stream), 0, "{stream} not forwarded");
        assert_eq!(bench.body_arrives(stream), Verdict::Pause, "{stream}");
        assert_eq!(bench.state(stream), State::Replied);
    }
    // A hit.
    assert_eq!(bench.call(4, "alice", KEY), Verdict::Pause);
    let (status, code, _) = bench.reply_of(4);
    assert_eq!((status, code), (500, ErrorCode::Internal));
    assert_eq!(bench.host.header(4, "authorization"), None);
    assert_eq!(bench.host.metric("authstamp_errors_internal_total"), 3);
    // The host accepts writes again: stamped from the cache.
    bench.host.set_fail_header_writes(false);
    assert_eq!(bench.call(5, "alice", KEY), Verdict::Continue);
    assert_stamped(&bench, 5, "Bearer xoxb-secret");
}

#[test]
fn the_second_request_is_a_cache_hit_without_a_dispatch() {
    let bench = Bench::new(gateway());
    bench.call(2, "alice", KEY);
    bench.answer_last(Some(200), &token_answer(Some(NOW + 3600)));
    assert_eq!(bench.host.dispatch_count(), 1);
    let key = bench.key_of("alice");
    assert_eq!(bench.slot_keys(), vec![cache::slot_key(key.slots[0])]);
    assert_eq!(
        bench.host.shared_keys().len(),
        3,
        "the slot, the (released) marker of the lookup and the app key check"
    );
    let entry = bench.entry_of("alice").unwrap();
    assert_eq!(entry.key, key.key);
    assert_eq!(
        entry.valid_until,
        NOW + 300,
        "max_cache_ttl bounds a long-lived token"
    );
    assert_eq!(entry.app_key_digest, cache::key_digest(KEY));

    for name in bench.host.shared_keys() {
        let value = bench.host.shared_value(&name).unwrap();
        assert!(
            !String::from_utf8_lossy(&value).contains(KEY),
            "{name} holds the app key"
        );
    }

    bench.host.set_now(NOW + 299);
    assert_eq!(bench.call(3, "alice", KEY), Verdict::Continue);
    assert_eq!(bench.host.dispatch_count(), 1, "a hit never dispatches");
    assert_stamped(&bench, 3, "Bearer xoxb-secret");
    assert_eq!(
        bench.host.resumed(3),
        0,
        "a hit continues, it was never paused"
    );

    // Another user of the same app is a different key.
    bench.call(4, "bob", KEY);
    assert_eq!(bench.host.dispatch_count(), 2);
}

#[test]
fn a_wrong_key_after_the_right_one_goes_to_the_token_service_and_fails() {
    let bench = Bench::new(gateway());
    bench.call(2, "alice", KEY);
    bench.answer_last(Some(200), &token_answer(None));
    assert_eq!(bench.host.dispatch_count(), 1);

    assert_eq!(bench.call(3, "alice", "ask_wrong"), Verdict::Pause);
    assert_eq!(bench.host.dispatch_count(), 2, "a different key is a miss");
    assert_eq!(
        bench.host.dispatches()[1].header("x-authstamp-app-key"),
        Some("ask_wrong")
    );
    bench.answer_last(
        Some(401),
        &error_json("bad_app_key", "the app key does not match"),
    );
    let (status, code, message) = bench.reply_of(3);
    assert_eq!(
        (status, code, message.as_str()),
        (401, ErrorCode::BadAppKey, "the app key does not match")
    );
    assert_eq!(bench.host.resumed(3), 0);
    assert_eq!(
        bench.host.header_values(3, "authorization"),
        Vec::<String>::new()
    );

    // The right key still hits the cache, the wrong one never does.
    assert_eq!(bench.call(4, "alice", KEY), Verdict::Continue);
    assert_eq!(bench.host.dispatch_count(), 2);
    bench.call(5, "alice", "ask_wrong");
    assert_eq!(bench.host.dispatch_count(), 3);
}

#[test]
fn expiry_honours_the_refresh_skew() {
    let bench = Bench::new(gateway());
    bench.call(2, "alice", KEY);
    bench.answer_last(Some(200), &token_answer(Some(NOW + 100)));
    bench.host.set_now(NOW + 69);
    assert_eq!(bench.call(3, "alice", KEY), Verdict::Continue);
    assert_eq!(bench.host.dispatch_count(), 1);
    bench.host.set_now(NOW + 70);
    assert_eq!(
        bench.call(4, "alice", KEY),
        Verdict::Pause,
        "inside the skew: ask again"
    );
    assert_eq!(bench.host.dispatch_count(), 2);
}

#[test]
fn expiry_honours_the_max_ttl_without_expires_at() {
    let bench = Bench::new(gateway());
    bench.call(2, "alice", KEY);
    bench.answer_last(Some(200), &token_answer(None));
    bench.host.set_now(NOW + 299);
    assert_eq!(bench.call(3, "alice", KEY), Verdict::Continue);
    bench.host.set_now(NOW + 300);
    assert_eq!(bench.call(4, "alice", KEY), Verdict::Pause);
    assert_eq!(bench.host.dispatch_count(), 2);
}

#[test]
fn a_token_already_inside_the_skew_is_stamped_but_not_cached() {
    let bench = Bench::new(gateway());
    bench.call(2, "alice", KEY);
    bench.answer_last(Some(200), &token_answer(Some(NOW + 20)));
    assert_stamped(&bench, 2, "Bearer xoxb-secret");
    assert!(bench.slot_keys().is_empty());
    bench.call(3, "alice", KEY);
    assert_eq!(bench.host.dispatch_count(), 2);
}

#[test]
fn a_broken_clock_disables_the_cache_but_not_the_filter() {
    let bench = Bench::new(gateway());
    bench.host.set_clock_broken();
    bench.call(2, "alice", KEY);
    bench.answer_last(Some(200), &token_answer(None));
    assert_stamped(&bench, 2, "Bearer xoxb-secret");
    assert!(bench.slot_keys().is_empty());
}

#[test]
fn a_deleted_or_garbled_cache_entry_is_a_miss() {
    let bench = Bench::new(gateway());
    let key = cache::slot_key(bench.key_of("alice").slots[0]);
    bench.host.put_shared(&key, b"");
    bench.call(2, "alice", KEY);
    assert_eq!(bench.host.dispatch_count(), 1);
    bench.answer_last(Some(404), &error_json("not_connected", "no"));
    bench.host.put_shared(&key, b"{\"not\":\"an entry\"}");
    bench.call(3, "alice", KEY);
    assert_eq!(bench.host.dispatch_count(), 2);
    assert_eq!(bench.host.reply(3), None);
}

#[test]
fn the_cache_write_uses_cas_and_a_conflict_is_not_an_error() {
    let bench = Bench::new(gateway());
    let key = cache::slot_key(bench.key_of("alice").slots[0]);
    bench.host.put_shared(&key, b"");
    bench.call(2, "alice", KEY);
    bench.host.set_cas_conflict();
    bench.answer_last(Some(200), &token_answer(None));
    assert_stamped(&bench, 2, "Bearer xoxb-secret");
    let writes: Vec<_> = bench
        .host
        .shared_writes()
        .into_iter()
        .filter(|(k, _)| k.contains("/slot/"))
        .collect();
    assert_eq!(writes.len(), 1);
    assert!(writes[0].1.is_some(), "written with the CAS just read");
    assert_eq!(
        bench.host.shared_value(&key),
        Some(Vec::new()),
        "the conflicting write lost"
    );
}

// --- mesh mode -----------------------------------------------------------

#[test]
fn mesh_mode_binds_the_app_and_ignores_request_app_headers() {
    let bench = Bench::new(mesh());
    let headers = [
        (":path", "/api/x"),
        ("x-authstamp-provider", "slack"),
        ("x-authstamp-user", "alice"),
        ("x-authstamp-app", "app_other"),
        ("x-authstamp-app-key", "ask_other"),
        ("x-authstamp-app-key", "ask_twice"),
    ];
    assert_eq!(bench.request(2, &headers), Verdict::Pause);
    let d = &bench.host.dispatches()[0];
    assert_eq!(d.header("x-authstamp-app"), Some("app_mesh"));
    assert_eq!(d.header("x-authstamp-app-key"), Some("ask_mesh-key"));
    assert_eq!(d.timeout, Duration::from_secs(2));
    bench.answer_last(
        Some(200),
        &answer_json(
            "authorization",
            "Bearer t",
            "http",
            "127.0.0.1:8081",
            "",
            None,
        ),
    );
    assert_eq!(bench.host.header(2, ":path").as_deref(), Some("/api/x"));
    assert_eq!(
        bench.host.header(2, ":authority").as_deref(),
        Some("127.0.0.1:8081")
    );
    assert_eq!(
        bench.host.header(2, "x-authstamp-route").as_deref(),
        Some("http")
    );
    assert_eq!(bench.host.header(2, "x-authstamp-app"), None);
    assert_eq!(
        bench.host.header_values(2, "x-authstamp-app-key"),
        Vec::<String>::new()
    );
    // Only provider and user are needed.
    bench.request(
        3,
        &[
            (":path", "/api/x"),
            ("x-authstamp-provider", "slack"),
            ("x-authstamp-user", "alice"),
        ],
    );
    assert_eq!(bench.host.dispatch_count(), 1, "cached for the mesh app");
    assert_eq!(
        bench.host.header(3, "authorization").as_deref(),
        Some("Bearer t")
    );
}

// --- token-service failures ----------------------------------------------

#[test]
fn token_service_errors_are_passed_on() {
    for (status, code, expected_status) in [
        (404, "not_connected", 404),
        (404, "unknown_provider", 404),
        (401, "unknown_app", 401),
        (409, "reauth_required", 409),
        (502, "provider_unavailable", 502),
        (429, "rate_limited", 429),
    ] {
        let bench = Bench::new(gateway());
        bench.call(2, "alice", KEY);
        bench.answer_last(Some(status), &error_json(code, "why it failed"));
        let (got_status, got_code, message) = bench.reply_of(2);
        assert_eq!(got_status, expected_status);
        assert_eq!(got_code.as_str(), code);
        assert_eq!(message, "why it failed");
        assert_eq!(bench.host.resumed(2), 0);
        assert!(bench.slot_keys().is_empty());
        assert_eq!(bench.state(2), State::Replied);
    }
}

#[test]
fn timeouts_resets_and_garbage_are_503() {
    let cases: [(Option<u16>, String); 6] = [
        (None, String::new()),
        (
            Some(503),
            "upstream connect error or disconnect/reset before headers".to_string(),
        ),
        (Some(200), "not json".to_string()),
        (
            Some(200),
            r#"{"header": {"name": "authorization"}}"#.to_string(),
        ),
        (Some(500), String::new()),
        (Some(200), "x".repeat(MAX_ANSWER_BYTES + 1)),
    ];
    for (status, body) in cases {
        let bench = Bench::new(gateway());
        bench.call(2, "alice", KEY);
        bench.answer_last(status, &body);
        let (got_status, code, _) = bench.reply_of(2);
        assert_eq!(
            (got_status, code),
            (503, ErrorCode::TokenServiceUnavailable),
            "{status:?} {body:.40}"
        );
        assert_eq!(bench.host.resumed(2), 0);
        assert_eq!(
            bench.host.header(2, "x-authstamp-user").as_deref(),
            Some("alice"),
            "nothing stamped"
        );
        assert!(bench.slot_keys().is_empty());
    }
}

#[test]
fn a_dispatch_failure_is_503() {
    let bench = Bench::new(gateway());
    bench.host.set_fail_dispatch(true);
    assert_eq!(bench.call(2, "alice", KEY), Verdict::Pause);
    let (status, code, _) = bench.reply_of(2);
    assert_eq!((status, code), (503, ErrorCode::TokenServiceUnavailable));
    assert_eq!(bench.worker.inflight.borrow().pending_count(), 0);
    assert_eq!(bench.state(2), State::Replied);
}

#[test]
fn an_invalid_upstream_or_header_in_the_answer_is_503_and_nothing_is_stamped() {
    let bad_answers = [
        answer_json("authorization", "Bearer t", "ftp", "slack.com", "", None),
        answer_json(
            "authorization",
            "Bearer t",
            "https",
            "user@slack.com",
            "",
            None,
        ),
        answer_json(
            "authorization",
            "Bearer t",
            "https",
            "slack.com/x",
            "",
            None,
        ),
        answer_json(
            "authorization",
            "Bearer t",
            "https",
            "slack.com?x",
            "",
            None,
        ),
        answer_json(
            "authorization",
            "Bearer t",
            "https",
            "slack.com",
            "/base/",
            None,
        ),
        answer_json(
            "authorization",
            "Bearer t",
            "https",
            "slack.com",
            "base",
            None,
        ),
        answer_json("Authorization", "Bearer t", "https", "slack.com", "", None),
        answer_json("x-authstamp-route", "http", "https", "slack.com", "", None),
        answer_json(
            "authorization",
            "Bearer t\r\nx-evil: 1",
            "https",
            "slack.com",
            "",
            None,
        ),
        answer_json("authorization", "", "https", "slack.com", "", None),
    ];
    for answer in bad_answers {
        let bench = Bench::new(gateway());
        let original = marked("alice", KEY);
        bench.request(2, &original);
        bench.answer_last(Some(200), &answer);
        let (status, code, _) = bench.reply_of(2);
        assert_eq!(
            (status, code),
            (503, ErrorCode::TokenServiceUnavailable),
            "{answer}"
        );
        bench.assert_untouched(2, &original);
        assert_eq!(bench.host.resumed(2), 0);
        assert!(bench.slot_keys().is_empty(), "{answer} was cached");
    }
}

#[test]
fn an_unknown_token_is_ignored() {
    let bench = Bench::new(gateway());
    bench.call(2, "alice", KEY);
    bench.answer(2, 9999, Some(200), &token_answer(None));
    assert_eq!(bench.host.reply(2), None);
    assert_eq!(bench.host.resumed(2), 0);
    assert_eq!(bench.state(2), State::Waiting(1));
}

#[test]
fn without_a_configuration_marked_requests_are_refused() {
    let host = MockHost::new(NOW);
    let worker = WorkerFilter::new(ROOT, Rc::default());
    host.add_stream(2, &[(":path", "/x"), ("x-authstamp-user", "alice")]);
    host.enter(2);
    let NewStream::Stream(mut marked) = worker.new_stream(2) else {
        panic!("a stamping worker");
    };
    assert_eq!(marked.on_request_headers(&host), Verdict::Pause);
    assert_eq!(marked.state(), &State::Replied);
    assert_eq!(host.reply(2).unwrap().status, 500);
    host.add_stream(3, &[(":path", "/x")]);
    host.enter(3);
    let NewStream::Stream(mut unmarked) = worker.new_stream(3) else {
        panic!("a stamping worker");
    };
    assert_eq!(unmarked.on_request_headers(&host), Verdict::Continue);
}

// --- coalescing ----------------------------------------------------------

#[test]
fn concurrent_misses_share_one_lookup_and_all_are_completed() {
    let bench = Bench::new(gateway());
    assert_eq!(bench.call(2, "alice", KEY), Verdict::Pause);
    assert_eq!(bench.call(3, "alice", KEY), Verdict::Pause);
    assert_eq!(bench.call(4, "alice", KEY), Verdict::Pause);
    assert_eq!(bench.host.dispatch_count(), 1, "one call for three misses");
    assert_eq!(bench.state(3), State::Waiting(1));
    assert_eq!(bench.body_arrives(3), Verdict::Pause);

    bench.answer(2, bench.host.last_token(), Some(200), &token_answer(None));
    for stream in [2, 3, 4] {
        assert_stamped(&bench, stream, "Bearer xoxb-secret");
        assert_eq!(bench.host.resumed(stream), 1, "{stream} resumed once");
    }
    assert_eq!(
        bench.host.current(),
        2,
        "effective context back to the callback's"
    );
    // The waiters learn it on their next callback.
    assert_eq!(bench.body_arrives(3), Verdict::Continue);
    assert!(bench.state(3).is_stamped());
    bench.done(4);
    assert!(bench.state(4).is_stamped());
    assert_eq!(bench.worker.inflight.borrow().completed_count(), 0);
}

#[test]
fn many_waiters_are_resumed_a_batch_per_callback_then_per_tick() {
    let bench = Bench::new(gateway());
    let streams: Vec<u32> = (2..2 + 40).collect();
    for &stream in &streams {
        assert_eq!(bench.call(stream, "alice", KEY), Verdict::Pause);
    }
    assert_eq!(bench.host.dispatch_count(), 1);
    bench.answer(2, bench.host.last_token(), Some(200), &token_answer(None));
    let resumed = |list: &[u32]| list.iter().filter(|s| bench.host.resumed(**s) == 1).count();
    // Every waiter is stamped at once; only a batch runs on in the callback.
    for &stream in &streams {
        assert_stamped(&bench, stream, "Bearer xoxb-secret");
    }
    assert_eq!(resumed(&streams), RESUME_BATCH);
    assert_eq!(bench.host.tick(), Some(TICK), "the rest on the next ticks");
    assert_eq!(
        bench.host.current(),
        2,
        "effective context back to the callback's"
    );
    bench.tick();
    assert_eq!(resumed(&streams), 2 * RESUME_BATCH);
    bench.done(streams[39]); // a stream gone before its turn is skipped
    bench.tick();
    assert_eq!(resumed(&streams[..39]), 39);
    assert_eq!(bench.host.tick(), Some(IDLE_TICK), "nothing left to resume");
    for &stream in &streams {
        assert!(
            bench.host.resumed(stream) <= 1,
            "{stream} resumed once at most"
        );
    }
}

#[test]
fn concurrent_misses_share_a_refusal_too() {
    let bench = Bench::new(gateway());
    bench.call(2, "alice", KEY);
    bench.call(3, "alice", KEY);
    bench.answer_last(Some(404), &error_json("not_connected", "connect first"));
    for stream in [2, 3] {
        assert_eq!(bench.reply_of(stream).1, ErrorCode::NotConnected);
        assert_eq!(bench.host.resumed(stream), 0);
    }
    bench.body_arrives(3);
    assert_eq!(bench.state(3), State::Replied);
}

#[test]
fn a_different_app_key_never_piggybacks() {
    let bench = Bench::new(gateway());
    bench.call(2, "alice", KEY);
    bench.call(3, "alice", "ask_wrong");
    bench.call(4, "alice", KEY);
    bench.call(5, "alice", "ask_wrong");
    let dispatches = bench.host.dispatches();
    assert_eq!(dispatches.len(), 1, "the other key waits for the marker");
    assert_eq!(dispatches[0].header("x-authstamp-app-key"), Some(KEY));
    assert_eq!(
        bench.state(5),
        bench.state(3),
        "the same app key shares a wait"
    );
    assert_eq!(bench.host.tick(), Some(TICK), "the wait is polled");

    bench.answer(2, dispatches[0].token, Some(200), &token_answer(None));
    assert_stamped(&bench, 2, "Bearer xoxb-secret");
    assert_stamped(&bench, 4, "Bearer xoxb-secret");
    assert_eq!(bench.host.reply(3), None);

    // The entry is for the right key only: the other key asks for itself.
    bench.tick();
    let dispatches = bench.host.dispatches();
    assert_eq!(dispatches.len(), 2, "one call per app key");
    assert_eq!(dispatches[1].from, ROOT);
    assert_eq!(
        dispatches[1].header("x-authstamp-app-key"),
        Some("ask_wrong")
    );
    bench.answer(
        ROOT,
        dispatches[1].token,
        Some(401),
        &error_json("bad_app_key", "wrong key"),
    );
    for stream in [3, 5] {
        assert_eq!(bench.reply_of(stream).0, 401);
        assert_eq!(bench.host.resumed(stream), 0);
        assert_eq!(
            bench.host.header_values(stream, "authorization"),
            Vec::<String>::new()
        );
    }
    bench.tick();
    assert_eq!(bench.host.tick(), Some(IDLE_TICK), "nothing left to poll");
}

#[test]
fn a_waiter_that_goes_away_is_not_completed() {
    let bench = Bench::new(gateway());
    bench.call(2, "alice", KEY);
    bench.call(3, "alice", KEY);
    bench.done(3);
    assert_eq!(bench.host.tick(), None);
    bench.answer_last(Some(200), &token_answer(None));
    assert_stamped(&bench, 2, "Bearer xoxb-secret");
    assert_eq!(bench.host.resumed(3), 0);
    assert_eq!(bench.host.reply(3), None);
}

#[test]
fn when_the_dispatcher_goes_away_the_root_context_asks_again_for_the_waiters() {
    let bench = Bench::new(gateway());
    bench.call(2, "alice", KEY);
    bench.call(3, "alice", KEY);
    let first = bench.host.last_token();
    bench.done(2);
    assert_eq!(
        bench.host.tick(),
        Some(ORPHAN_TICK),
        "the root context is asked to tick"
    );
    assert_eq!(
        bench.worker.inflight.borrow().owner(1),
        Some(Owner::Orphaned)
    );
    assert_eq!(bench.worker.inflight.borrow().members(1), vec![3]);

    // A request arriving meanwhile joins the orphan.
    bench.call(4, "alice", KEY);
    assert_eq!(bench.host.dispatch_count(), 1);

    bench.tick();
    assert_eq!(bench.host.tick(), Some(IDLE_TICK), "back to the idle tick");
    let dispatches = bench.host.dispatches();
    assert_eq!(dispatches.len(), 2);
    assert_eq!(dispatches[1].from, ROOT, "dispatched by the root context");
    assert_eq!(dispatches[1].header("x-authstamp-app-key"), Some(KEY));
    assert_eq!(bench.worker.inflight.borrow().owner(1), Some(Owner::Root));

    // The first call may still be answered (to the root): its token means nothing any more.
    bench.answer(ROOT, first, Some(200), &token_answer(None));
    assert_eq!(bench.host.resumed(3), 0);

    bench.answer(ROOT, dispatches[1].token, Some(200), &token_answer(None));
    assert_stamped(&bench, 3, "Bearer xoxb-secret");
    assert_stamped(&bench, 4, "Bearer xoxb-secret");
    assert_eq!(bench.host.current(), ROOT);
    bench.body_arrives(3);
    assert!(bench.state(3).is_stamped());
}

#[test]
fn an_orphan_whose_redispatch_fails_answers_503() {
    let bench = Bench::new(gateway());
    bench.call(2, "alice", KEY);
    bench.call(3, "alice", KEY);
    bench.done(2);
    bench.host.set_fail_dispatch(true);
    bench.tick();
    assert_eq!(bench.reply_of(3).1, ErrorCode::TokenServiceUnavailable);
    assert_eq!(bench.worker.inflight.borrow().pending_count(), 0);
    assert_eq!(bench.host.tick(), Some(IDLE_TICK));
}

#[test]
fn a_lonely_dispatcher_that_goes_away_leaves_nothing_behind() {
    let bench = Bench::new(gateway());
    bench.call(2, "alice", KEY);
    bench.done(2);
    assert_eq!(bench.host.tick(), None);
    assert_eq!(bench.worker.inflight.borrow().pending_count(), 0);
}

#[test]
fn the_route_header_cannot_be_smuggled_in() {
    // An inbound x-authstamp-route marks the request: without identity it is refused.
    let bench = Bench::new(gateway());
    bench.request(2, &[(":path", "/x"), ("x-authstamp-route", "https")]);
    assert_eq!(bench.reply_of(2).0, 400);
}

// --- across workers ------------------------------------------------------

#[test]
fn another_worker_waits_for_the_first_lookup_and_stamps_from_the_cache() {
    let bench = Bench::new(gateway());
    bench.call(2, "alice", KEY);
    assert_eq!(bench.call_on_other(3, "alice", KEY), Verdict::Pause);
    assert_eq!(bench.call_on_other(4, "alice", KEY), Verdict::Pause);
    assert_eq!(bench.host.dispatch_count(), 1, "one call in all workers");
    assert_eq!(
        bench.other.inflight.borrow().owned_by(Owner::Remote).len(),
        1
    );
    assert_eq!(bench.host.tick(), Some(TICK));

    // Polling before the answer changes nothing.
    bench.tick_other();
    assert_eq!(bench.host.resumed(3), 0);
    assert_eq!(bench.host.dispatch_count(), 1);

    bench.answer_last(Some(200), &token_answer(None));
    assert_stamped(&bench, 2, "Bearer xoxb-secret");
    bench.tick_other();
    for stream in [3, 4] {
        assert_stamped(&bench, stream, "Bearer xoxb-secret");
        assert_eq!(bench.host.resumed(stream), 1);
    }
    assert_eq!(bench.host.current(), OTHER_ROOT);
    bench.body_arrives(3);
    assert!(bench.state(3).is_stamped());
    assert_eq!(bench.other.inflight.borrow().pending_count(), 0);
    assert_eq!(bench.host.dispatch_count(), 1);
    assert_eq!(bench.host.metric(metrics::COALESCED), 2);
    assert_eq!(bench.host.metric(metrics::TOKEN_SERVICE_CALLS), 1);
}

#[test]
fn when_the_first_lookup_fails_the_waiting_worker_asks_itself() {
    let bench = Bench::new(gateway());
    bench.call(2, "alice", KEY);
    bench.call_on_other(3, "alice", KEY);
    bench.answer_last(Some(503), &error_json("internal", "storage hiccup"));
    assert_eq!(bench.reply_of(2).0, 503);
    bench.tick_other();
    let dispatches = bench.host.dispatches();
    assert_eq!(dispatches.len(), 2);
    assert_eq!(dispatches[1].from, OTHER_ROOT);
    bench.answer(
        OTHER_ROOT,
        dispatches[1].token,
        Some(200),
        &token_answer(None),
    );
    assert_stamped(&bench, 3, "Bearer xoxb-secret");
}

#[test]
fn a_marker_left_by_a_vanished_worker_expires() {
    let bench = Bench::new(gateway());
    bench.call(2, "alice", KEY);
    bench.call_on_other(3, "alice", KEY);
    // The first worker never answers (its VM went away).
    bench.host.advance_millis(749 + MARKER_GRACE_MS);
    bench.tick_other();
    assert_eq!(bench.host.dispatch_count(), 1, "the marker is still live");
    bench.host.advance_millis(1);
    bench.tick_other();
    assert_eq!(bench.host.dispatch_count(), 2, "expired: ask ourselves");
    bench.answer_last(Some(200), &token_answer(None));
    assert_stamped(&bench, 3, "Bearer xoxb-secret");
}

#[test]
fn a_waiter_on_another_worker_that_goes_away_stops_the_polling() {
    let bench = Bench::new(gateway());
    bench.call(2, "alice", KEY);
    bench.call_on_other(3, "alice", KEY);
    bench.done(3);
    assert_eq!(bench.other.inflight.borrow().pending_count(), 0);
    bench.tick_other();
    assert_eq!(bench.host.tick(), Some(IDLE_TICK));
    assert_eq!(bench.host.dispatch_count(), 1);
}

#[test]
fn a_lonely_dispatcher_releases_its_marker_when_it_goes_away() {
    let bench = Bench::new(gateway());
    bench.call(2, "alice", KEY);
    bench.done(2);
    // Another worker does not wait for a lookup whose answer nobody reads.
    assert_eq!(bench.call_on_other(3, "alice", KEY), Verdict::Pause);
    assert_eq!(bench.host.dispatch_count(), 2);
    assert_eq!(bench.host.dispatches()[1].from, 3);
}

// --- provider 401 --------------------------------------------------------

fn refreshed_answer() -> String {
    answer_json(
        "authorization",
        "Bearer xoxb-fresh",
        "https",
        "slack.com",
        "/api-base",
        None,
    )
}

#[test]
fn a_provider_401_drops_the_token_and_forces_one_refresh_from_the_root() {
    let bench = Bench::new(gateway());
    bench.call(2, "alice", KEY);
    bench.answer_last(Some(200), &token_answer(None));
    bench.call(3, "alice", KEY);
    bench.call(4, "alice", KEY);
    assert_eq!(bench.host.dispatch_count(), 1);

    // A 2xx or another error changes nothing.
    bench.response_arrives(2, 200);
    bench.response_arrives(2, 403);
    assert!(bench.entry_of("alice").is_some());
    assert_eq!(bench.host.tick(), None);

    bench.response_arrives(3, 401);
    assert!(
        bench.entry_of("alice").is_none(),
        "the refused token is gone"
    );
    assert_eq!(bench.host.tick(), Some(TICK));
    assert_eq!(
        bench.host.dispatch_count(),
        1,
        "dispatched by the root, not the stream"
    );
    // Every other request that carried the refused token gets its 401 too: nothing more.
    bench.response_arrives(4, 401);
    bench.done(3);
    bench.done(4);

    // A request arriving before the tick waits for the forced refresh.
    assert_eq!(bench.call(5, "alice", KEY), Verdict::Pause);
    bench.tick();
    let dispatches = bench.host.dispatches();
    assert_eq!(dispatches.len(), 2);
    let forced = &dispatches[1];
    assert_eq!(forced.from, ROOT);
    let body: TokenLookupRequest = serde_json::from_slice(&forced.body).unwrap();
    assert!(body.force_refresh);
    assert_eq!(
        (body.provider.as_str(), body.user.as_str()),
        ("slack", "alice")
    );
    assert_eq!(forced.header("x-authstamp-app-key"), Some(KEY));
    assert_eq!(bench.host.tick(), Some(IDLE_TICK));

    // A request arriving while the refresh is in flight waits for it too.
    assert_eq!(bench.call(6, "alice", KEY), Verdict::Pause);
    assert_eq!(bench.host.dispatch_count(), 2);
    bench.answer(ROOT, forced.token, Some(200), &refreshed_answer());
    for stream in [5, 6] {
        assert_eq!(
            bench.host.header_values(stream, "authorization"),
            vec!["Bearer xoxb-fresh".to_string()]
        );
    }
    assert_eq!(
        bench.entry_of("alice").unwrap().credential.value,
        "Bearer xoxb-fresh"
    );
    assert_eq!(bench.call(7, "alice", KEY), Verdict::Continue);
    assert_eq!(bench.host.metric(metrics::PROVIDER_UNAUTHORIZED), 2);
    assert_eq!(bench.host.metric(metrics::FORCED_REFRESHES), 1);
}

#[test]
fn a_late_401_for_an_old_token_keeps_the_fresh_one() {
    let bench = Bench::new(gateway());
    bench.call(2, "alice", KEY);
    bench.answer_last(Some(200), &token_answer(None));
    bench.call(3, "alice", KEY);
    bench.response_arrives(2, 401);
    bench.tick();
    bench.answer_last(Some(200), &refreshed_answer());
    // Stream 3 was stamped with the old token before the refresh.
    bench.response_arrives(3, 401);
    assert_eq!(
        bench.entry_of("alice").unwrap().credential.value,
        "Bearer xoxb-fresh"
    );
    assert_eq!(bench.host.tick(), Some(IDLE_TICK));
    assert_eq!(bench.host.dispatch_count(), 2);
}

#[test]
fn a_401_seen_by_two_workers_forces_one_refresh() {
    let bench = Bench::new(gateway());
    bench.call(2, "alice", KEY);
    bench.answer_last(Some(200), &token_answer(None));
    bench.call_on_other(3, "alice", KEY);
    assert!(bench.state(3).is_stamped(), "a hit on the other worker");
    bench.response_arrives(2, 401);
    bench.response_arrives(3, 401);
    bench.tick();
    bench.tick_other();
    assert_eq!(bench.host.dispatch_count(), 2, "one forced refresh in all");
    // The other worker's new requests wait for it through the marker.
    assert_eq!(bench.call_on_other(4, "alice", KEY), Verdict::Pause);
    assert_eq!(bench.host.dispatch_count(), 2);
    bench.answer_last(Some(200), &refreshed_answer());
    bench.tick_other();
    assert_eq!(
        bench.host.header_values(4, "authorization"),
        vec!["Bearer xoxb-fresh".to_string()]
    );
}

#[test]
fn a_failed_forced_refresh_answers_the_waiters_and_leaves_the_cache_empty() {
    let bench = Bench::new(gateway());
    bench.call(2, "alice", KEY);
    bench.answer_last(Some(200), &token_answer(None));
    bench.response_arrives(2, 401);
    bench.call(3, "alice", KEY);
    bench.tick();
    bench.answer_last(Some(409), &error_json("reauth_required", "connect again"));
    assert_eq!(bench.reply_of(3).1, ErrorCode::ReauthRequired);
    assert!(bench.entry_of("alice").is_none());
    assert_eq!(bench.worker.inflight.borrow().pending_count(), 0);
}

// --- healing a provider 401 (upstream instance) ---------------------------

fn retry_header() -> (String, String) {
    (heal::RETRY_HEADER.to_string(), "1".to_string())
}

fn error_header(code: &str) -> (String, String) {
    ("x-authstamp-error".to_string(), code.to_string())
}

/// A cached token for alice, stamped on stream 2, whose first attempt
/// (context 10) the provider refuses.
fn refused_first_attempt() -> Bench {
    let bench = Bench::new(gateway());
    bench.call(2, "alice", KEY);
    bench.answer_last(Some(200), &token_answer(None));
    bench.call(3, "alice", KEY);
    assert!(bench.state(3).is_stamped());
    assert_eq!(bench.attempt(10, 3), Verdict::Continue);
    bench.attempt_answered(10, 401);
    bench
}

#[test]
fn a_first_attempt_needs_no_host_call_and_other_statuses_pass_untouched() {
    let bench = Bench::new(gateway());
    bench.call(2, "alice", KEY);
    bench.answer_last(Some(200), &token_answer(None));
    bench.call(3, "alice", KEY);
    let reads = bench.host.shared_reads();
    assert_eq!(bench.attempt(10, 3), Verdict::Continue);
    assert_eq!(bench.attempt_state(10), heal::Attempt::Unknown);
    for status in [200, 403, 500] {
        bench.attempt_answered(10, status);
        assert!(bench.added(10).is_empty(), "{status}");
    }
    assert_eq!(bench.host.shared_reads(), reads, "nothing read");
    assert_eq!(bench.host.dispatch_count(), 1);
    assert_eq!(bench.host.tick(), None);
}

#[test]
fn a_refused_token_is_replayed_once_with_the_forced_refresh() {
    let bench = refused_first_attempt();
    assert_eq!(bench.added(10), vec![retry_header()]);
    assert!(
        bench.entry_of("alice").is_none(),
        "the refused token is gone"
    );
    assert_eq!(bench.host.tick(), Some(TICK));
    // From now on new requests wait, on this worker and the other.
    assert_eq!(bench.call(4, "alice", KEY), Verdict::Pause);
    assert_eq!(bench.call_on_other(5, "alice", KEY), Verdict::Pause);
    // The router's replay waits too, body included.
    assert_eq!(bench.attempt(11, 3), Verdict::Pause);
    assert_eq!(bench.attempt_body(11), Verdict::Pause);

    bench.tick_upstream();
    let forced = bench.host.dispatches().last().cloned().unwrap();
    assert_eq!(forced.from, UPSTREAM_ROOT);
    let body: TokenLookupRequest = serde_json::from_slice(&forced.body).unwrap();
    assert!(body.force_refresh);
    bench.answer(UPSTREAM_ROOT, forced.token, Some(200), &refreshed_answer());

    assert_eq!(bench.host.resumed(11), 1);
    assert_eq!(
        bench.host.header_values(11, "authorization"),
        vec!["Bearer xoxb-fresh".to_string()]
    );
    assert_eq!(
        bench.host.header(11, ":path").as_deref(),
        Some("/api-base/api/users.info?user=U1"),
        "nothing else changes"
    );
    assert_eq!(bench.attempt_body(11), Verdict::Continue);
    bench.tick();
    bench.tick_other();
    for stream in [4, 5] {
        assert_eq!(
            bench.host.header_values(stream, "authorization"),
            vec!["Bearer xoxb-fresh".to_string()],
            "{stream}"
        );
    }
    // The replay's answer goes to the app as it is.
    bench.attempt_answered(11, 200);
    assert!(bench.added(11).is_empty());
    bench.response_arrives(3, 200);
    assert!(bench.host.stream(3).response_removed.is_empty());
    assert_eq!(bench.host.dispatch_count(), 2, "one forced refresh");
    assert_eq!(bench.host.metric(metrics::HEALED_RETRIES), 1);
    assert_eq!(bench.host.metric(metrics::UNHEALED), 0);
    bench.done(3);
    assert_eq!(bench.worker.stamps.borrow().retries_due(), 0);
}

#[test]
fn a_failed_refresh_sends_the_replay_as_it_was_and_marks_its_401() {
    let bench = refused_first_attempt();
    assert_eq!(bench.attempt(11, 3), Verdict::Pause);
    bench.tick_upstream();
    bench.answer_last(Some(409), &error_json("reauth_required", "connect again"));
    assert_eq!(bench.host.resumed(11), 1);
    assert_eq!(
        bench.host.header_values(11, "authorization"),
        vec!["Bearer xoxb-secret".to_string()]
    );
    bench.attempt_answered(11, 401);
    assert_eq!(bench.added(11), vec![error_header("reauth_required")]);
    bench.response_arrives(3, 401);
    assert_eq!(bench.host.metric(metrics::UNHEALED), 1);
    assert_eq!(bench.host.metric(metrics::HEALED_RETRIES), 0);
}

#[test]
fn a_forced_lookup_answered_with_the_refused_token_is_not_a_heal() {
    // The token service bounds forced refreshes too: within its
    // interval it answers with the current token.
    let bench = refused_first_attempt();
    assert_eq!(bench.attempt(11, 3), Verdict::Pause);
    bench.tick_upstream();
    bench.answer_last(Some(200), &token_answer(None));
    assert_eq!(bench.host.resumed(11), 1);
    assert_eq!(
        bench.host.header_values(11, "authorization"),
        vec!["Bearer xoxb-secret".to_string()]
    );
    bench.attempt_answered(11, 401);
    assert_eq!(bench.added(11), vec![error_header("token_refused")]);
    assert_eq!(bench.host.metric(metrics::HEALED_RETRIES), 0);
}

#[test]
fn a_replay_refused_again_is_not_replayed_and_forced_refreshes_are_bounded() {
    let bench = refused_first_attempt();
    bench.attempt(11, 3);
    bench.tick_upstream();
    bench.answer_last(Some(200), &refreshed_answer());
    bench.attempt_answered(11, 401);
    assert_eq!(bench.added(11), vec![error_header("token_refused")]);

    // The fresh token is refused too, within forced_refresh_interval:
    // no refresh, no replay, the current token stays.
    bench.call(6, "alice", KEY);
    assert!(bench.state(6).is_stamped());
    bench.attempt(12, 6);
    bench.attempt_answered(12, 401);
    assert_eq!(bench.added(12), vec![error_header("token_refused")]);
    assert_eq!(bench.host.dispatch_count(), 2);
    assert_eq!(bench.host.metric(metrics::FORCED_REFUSED), 1);
    assert_eq!(
        bench.entry_of("alice").unwrap().credential.value,
        "Bearer xoxb-fresh"
    );
    assert_eq!(bench.attempt(13, 6), Verdict::Continue, "no replay due");

    // Past the interval a 401 forces a refresh again.
    bench.host.advance_millis(30_000);
    bench.call(7, "alice", KEY);
    bench.attempt(14, 7);
    bench.attempt_answered(14, 401);
    assert_eq!(bench.added(14), vec![retry_header()]);
    bench.tick_upstream();
    assert_eq!(bench.host.dispatch_count(), 3);
}

#[test]
fn a_401_the_router_does_not_replay_loses_the_retry_header() {
    let bench = refused_first_attempt();
    // A body over the retry buffer: the 401 reaches the stamping instance.
    bench.response_arrives(3, 401);
    assert_eq!(
        bench.host.stream(3).response_removed,
        vec![heal::RETRY_HEADER.to_string()]
    );
    assert_eq!(bench.host.metric(metrics::UNHEALED), 1);
    // The forced refresh still happens, and the next request gets its token.
    assert_eq!(bench.call(4, "alice", KEY), Verdict::Pause);
    bench.tick_upstream();
    bench.answer_last(Some(200), &refreshed_answer());
    bench.tick();
    assert_eq!(
        bench.host.header_values(4, "authorization"),
        vec!["Bearer xoxb-fresh".to_string()]
    );
    bench.done(3);
    assert_eq!(bench.worker.stamps.borrow().retries_due(), 0);
}

#[test]
fn concurrent_401s_of_one_token_share_one_refresh_and_are_all_replayed() {
    let bench = Bench::new(gateway());
    bench.call(2, "alice", KEY);
    bench.answer_last(Some(200), &token_answer(None));
    for (stream, attempt) in [(3, 10), (4, 11), (5, 12)] {
        bench.call(stream, "alice", KEY);
        bench.attempt(attempt, stream);
    }
    for attempt in [10, 11, 12] {
        bench.attempt_answered(attempt, 401);
        assert_eq!(bench.added(attempt), vec![retry_header()], "{attempt}");
    }
    for (replay, stream) in [(20, 3), (21, 4)] {
        assert_eq!(bench.attempt(replay, stream), Verdict::Pause);
    }
    bench.tick_upstream();
    bench.answer_last(Some(200), &refreshed_answer());
    // A replay arriving after the answer gets the fresh token at once.
    assert_eq!(bench.attempt(22, 5), Verdict::Continue);
    for replay in [20, 21, 22] {
        assert_eq!(
            bench.host.header_values(replay, "authorization"),
            vec!["Bearer xoxb-fresh".to_string()],
            "{replay}"
        );
    }
    assert_eq!(bench.host.dispatch_count(), 2);
    assert_eq!(bench.host.metric(metrics::HEALED_RETRIES), 3);
}

#[test]
fn a_401_after_another_request_refreshed_replays_with_the_cached_token() {
    let bench = Bench::new(gateway());
    bench.call(2, "alice", KEY);
    bench.answer_last(Some(200), &token_answer(None));
    bench.call(3, "alice", KEY);
    bench.call(4, "alice", KEY);
    bench.attempt(10, 3);
    bench.attempt(11, 4);
    bench.attempt_answered(10, 401);
    bench.tick_upstream();
    bench.answer_last(Some(200), &refreshed_answer());
    // Stream 4 carried the old token too; its 401 comes later.
    bench.attempt_answered(11, 401);
    assert_eq!(bench.added(11), vec![retry_header()]);
    assert_eq!(bench.attempt(21, 4), Verdict::Continue);
    assert_eq!(
        bench.host.header_values(21, "authorization"),
        vec!["Bearer xoxb-fresh".to_string()]
    );
    assert_eq!(bench.host.dispatch_count(), 2);
}

#[test]
fn static_credentials_get_their_401_untouched_without_a_refresh() {
    let bench = Bench::new(gateway());
    let answer = |name: &str, value: &str, location: &str| {
        serde_json::json!({
            "header": {"name": name, "value": value, "in": location},
            "upstream": {"scheme": "https", "authority": "slack.com", "base_path": "/api-base"},
            "expires_at": null,
        })
        .to_string()
    };
    let cases = [
        ("alice", answer("api_key", "k-1", "query")),
        ("bob", answer("authorization", "Basic Ym9iOnB3", "header")),
    ];
    for (i, (user, answer)) in cases.iter().enumerate() {
        let stream = 2 + 10 * i as u32;
        bench.call(stream, user, KEY);
        bench.answer_last(Some(200), answer);
        bench.call(stream + 1, user, KEY);
        bench.attempt(stream + 100, stream + 1);
        bench.attempt_answered(stream + 100, 401);
        assert!(bench.added(stream + 100).is_empty(), "{user}");
        assert!(bench.entry_of(user).is_some(), "{user}: still cached");
        bench.response_arrives(stream + 1, 401);
        assert!(bench.host.stream(stream + 1).response_removed.is_empty());
    }
    assert_eq!(bench.host.dispatch_count(), 2, "no forced refresh");
    assert_eq!(bench.host.tick(), None);
    assert!(heal::is_static(&authstamp_protocol::Credential {
        name: "authorization".into(),
        value: "basic x".into(),
        placement: authstamp_protocol::Placement::Header,
    }));
    assert!(!heal::is_static(&authstamp_protocol::Credential {
        name: "authorization".into(),
        value: "Bearer x".into(),
        placement: authstamp_protocol::Placement::Header,
    }));
}

#[test]
fn unmarked_and_refused_requests_ignore_the_response() {
    let bench = Bench::new(gateway());
    bench.request(2, &[(":path", "/x")]);
    bench.response_arrives(2, 401);
    bench.call(3, "alice", KEY);
    bench.answer_last(Some(404), &error_json("not_connected", "no"));
    bench.response_arrives(3, 401);
    assert_eq!(bench.host.metric(metrics::PROVIDER_UNAUTHORIZED), 0);
    assert_eq!(bench.host.tick(), None);
}

// --- healing a provider 401 (replay instance) -----------------------------

fn healing() -> Rc<Config> {
    config_from(
        r#"{"token_service": {"cluster": "ts_cluster", "authority": "ts.internal", "timeout": "750ms"},
            "refresh_skew": "30s", "max_cache_ttl": "5m", "app_key_recheck": "1h",
            "mark_healable": true}"#,
    )
}

impl Bench {
    /// A bench whose second instance has the replay role: it runs on the
    /// route's retry of a 401 only (see `heal.rs`).
    fn replaying(config: Rc<Config>) -> Self {
        let mut bench = Bench::new(config);
        bench
            .upstream_root
            .set_role(crate::config::AttemptRole::Replay);
        bench
    }

    fn heal_mark(&self, stream: u32) -> Vec<String> {
        self.host.header_values(stream, heal::HEAL_HEADER)
    }
}

/// Alice's cached token stamped on stream 3, whose first attempt the
/// provider refused: the router replays it (context 11).
fn refused_and_replayed() -> Bench {
    let bench = Bench::replaying(healing());
    bench.call(2, "alice", KEY);
    bench.answer_last(Some(200), &token_answer(None));
    bench.call(3, "alice", KEY);
    assert_eq!(bench.heal_mark(3), vec!["1".to_string()]);
    assert_eq!(
        bench.attempt(11, 3),
        Verdict::Pause,
        "waits for the refresh"
    );
    bench
}

#[test]
fn only_mark_healable_marks_and_only_refreshable_credentials() {
    let plain = Bench::new(gateway());
    plain.call(2, "alice", KEY);
    plain.answer_last(Some(200), &token_answer(None));
    plain.call(3, "alice", KEY);
    for stream in [2, 3] {
        assert!(plain.heal_mark(stream).is_empty(), "{stream}");
    }

    let bench = Bench::replaying(healing());
    bench.call(2, "alice", KEY);
    bench.answer_last(Some(200), &token_answer(None));
    bench.call(3, "alice", KEY);
    for stream in [2, 3] {
        assert_eq!(bench.heal_mark(stream), vec!["1".to_string()], "{stream}");
    }
    let basic = answer_json(
        "authorization",
        "Basic Ym9iOnB3",
        "https",
        "slack.com",
        "/api-base",
        None,
    );
    let query = serde_json::json!({
        "header": {"name": "api_key", "value": "k-1", "in": "query"},
        "upstream": {"scheme": "https", "authority": "slack.com", "base_path": "/api-base"},
        "expires_at": null,
    })
    .to_string();
    for (user, answer, stream) in [("bob", &basic, 4), ("carol", &query, 6)] {
        bench.call(stream, user, KEY);
        bench.answer_last(Some(200), answer);
        bench.call(stream + 1, user, KEY);
        for stream in [stream, stream + 1] {
            assert!(
                bench.heal_mark(stream).is_empty(),
                "static: {user} {stream}"
            );
        }
    }
}

#[test]
fn a_replay_forces_the_refresh_and_goes_out_with_the_fresh_token() {
    let bench = refused_and_replayed();
    assert!(
        bench.entry_of("alice").is_none(),
        "the refused token is gone"
    );
    assert_eq!(bench.host.metric(metrics::PROVIDER_UNAUTHORIZED), 1);
    // New requests wait, on this worker and the other.
    assert_eq!(bench.call(4, "alice", KEY), Verdict::Pause);
    assert_eq!(bench.call_on_other(5, "alice", KEY), Verdict::Pause);
    assert_eq!(bench.attempt_body(11), Verdict::Pause);
    bench.tick_upstream();
    let forced = bench.host.dispatches().last().cloned().unwrap();
    assert_eq!(forced.from, UPSTREAM_ROOT);
    let body: TokenLookupRequest = serde_json::from_slice(&forced.body).unwrap();
    assert!(body.force_refresh);
    bench.answer(UPSTREAM_ROOT, forced.token, Some(200), &refreshed_answer());
    assert_eq!(bench.host.resumed(11), 1);
    assert_eq!(
        bench.host.header_values(11, "authorization"),
        vec!["Bearer xoxb-fresh".to_string()]
    );
    assert_eq!(bench.attempt_body(11), Verdict::Continue);
    bench.tick();
    bench.tick_other();
    for stream in [4, 5] {
        assert_eq!(
            bench.host.header_values(stream, "authorization"),
            vec!["Bearer xoxb-fresh".to_string()],
            "{stream}"
        );
    }
    bench.attempt_answered(11, 200);
    assert!(bench.added(11).is_empty());
    bench.response_arrives(3, 200);
    assert_eq!(bench.host.dispatch_count(), 2, "one forced refresh");
    assert_eq!(bench.host.metric(metrics::HEALED_RETRIES), 1);
    assert_eq!(bench.host.metric(metrics::UNHEALED), 0);
    bench.done(3);
    assert_eq!(bench.worker.stamps.borrow().retries_due(), 0);
}

#[test]
fn a_replay_whose_refresh_fails_goes_out_as_it_was_and_marks_its_401() {
    let bench = refused_and_replayed();
    bench.tick_upstream();
    bench.answer_last(Some(409), &error_json("reauth_required", "connect again"));
    assert_eq!(bench.host.resumed(11), 1);
    assert_eq!(
        bench.host.header_values(11, "authorization"),
        vec!["Bearer xoxb-secret".to_string()]
    );
    bench.attempt_answered(11, 401);
    assert_eq!(bench.added(11), vec![error_header("reauth_required")]);
    bench.response_arrives(3, 401);
    assert_eq!(bench.host.metric(metrics::UNHEALED), 1);
    assert_eq!(bench.host.metric(metrics::HEALED_RETRIES), 0);
    assert_eq!(bench.host.dispatch_count(), 2, "no second forced refresh");
}

#[test]
fn within_the_interval_a_refused_replay_is_marked_and_new_requests_are_not() {
    let bench = refused_and_replayed();
    bench.tick_upstream();
    bench.answer_last(Some(200), &refreshed_answer());
    bench.attempt_answered(11, 401);
    assert_eq!(bench.added(11), vec![error_header("token_refused")]);
    bench.response_arrives(3, 401);

    // The fresh token is refused too: within forced_refresh_interval a new
    // request is not marked, so the route does not replay its 401 ...
    bench.call(6, "alice", KEY);
    assert!(bench.state(6).is_stamped());
    assert!(bench.heal_mark(6).is_empty());
    bench.response_arrives(6, 401);
    assert_eq!(bench.added(6), vec![error_header("token_refused")]);
    assert_eq!(bench.host.metric(metrics::FORCED_REFUSED), 1);
    assert_eq!(bench.host.dispatch_count(), 2);
    assert_eq!(
        bench.entry_of("alice").unwrap().credential.value,
        "Bearer xoxb-fresh"
    );
    // ... and a replay that still comes is not restamped.
    bench.call(7, "alice", KEY);
    assert_eq!(bench.attempt(12, 7), Verdict::Continue);
    bench.attempt_answered(12, 401);
    assert_eq!(bench.added(12), vec![error_header("token_refused")]);
    assert_eq!(bench.host.dispatch_count(), 2);

    // Past the interval requests are marked again and a replay heals.
    bench.host.advance_millis(30_000);
    bench.call(8, "alice", KEY);
    assert_eq!(bench.heal_mark(8), vec!["1".to_string()]);
    assert_eq!(bench.attempt(13, 8), Verdict::Pause);
    bench.tick_upstream();
    assert_eq!(bench.host.dispatch_count(), 3);
}

#[test]
fn an_unreplayed_401_of_a_marked_request_forces_the_refresh_for_the_next() {
    // A body over the retry buffer: the route does not replay, the 401
    // reaches the stamping instance.
    let bench = Bench::replaying(healing());
    bench.call(2, "alice", KEY);
    bench.answer_last(Some(200), &token_answer(None));
    bench.call(3, "alice", KEY);
    bench.response_arrives(3, 401);
    assert!(bench.added(3).is_empty(), "the provider's 401 as it was");
    assert_eq!(bench.host.metric(metrics::UNHEALED), 1);
    assert_eq!(bench.call(4, "alice", KEY), Verdict::Pause);
    bench.tick();
    bench.answer_last(Some(200), &refreshed_answer());
    bench.tick();
    assert_eq!(
        bench.host.header_values(4, "authorization"),
        vec!["Bearer xoxb-fresh".to_string()]
    );
}

// --- app key rechecks ----------------------------------------------------

fn rechecking() -> Rc<Config> {
    config_from(
        r#"{"token_service": {"cluster": "ts_cluster", "authority": "ts.internal", "timeout": "750ms"},
            "app_key_recheck": "5s"}"#,
    )
}

#[test]
fn a_revoked_app_key_stops_working_on_hits_after_one_recheck_per_key_not_per_user() {
    let bench = Bench::new(rechecking());
    for (stream, user) in [(2, "alice"), (3, "bob"), (4, "carol")] {
        bench.call(stream, user, KEY);
        bench.answer_last(Some(200), &token_answer(None));
    }
    assert_eq!(bench.host.dispatch_count(), 3);

    // Within the recheck interval every hit is served from the cache.
    bench.host.advance_millis(4_999);
    for (stream, user) in [(5, "alice"), (6, "bob"), (7, "carol")] {
        assert_eq!(bench.call(stream, user, KEY), Verdict::Continue, "{user}");
    }
    assert_eq!(bench.host.dispatch_count(), 3);

    // Then the first hit rechecks the key; the others (any worker) are
    // served meanwhile.
    bench.host.advance_millis(1);
    assert_eq!(bench.call(8, "alice", KEY), Verdict::Pause);
    assert_eq!(bench.host.dispatch_count(), 4);
    assert_eq!(bench.call(9, "bob", KEY), Verdict::Continue);
    assert_eq!(bench.call_on_other(10, "carol", KEY), Verdict::Continue);
    assert_eq!(bench.host.dispatch_count(), 4, "one recheck for the key");
    bench.answer_last(Some(200), &token_answer(None));
    assert_stamped(&bench, 8, "Bearer xoxb-secret");
    bench.host.advance_millis(4_999);
    assert_eq!(bench.call(11, "bob", KEY), Verdict::Continue);
    assert_eq!(bench.host.dispatch_count(), 4, "accepted for another 5 s");

    // Revoked at the token service: the next recheck is refused, and from
    // then on no hit with the key is served, on any worker.
    bench.host.advance_millis(1);
    assert_eq!(bench.call(12, "bob", KEY), Verdict::Pause);
    assert_eq!(bench.call(13, "carol", KEY), Verdict::Continue, "leased");
    bench.answer_last(Some(401), &error_json("bad_app_key", "revoked"));
    assert_eq!(bench.reply_of(12).1, ErrorCode::BadAppKey);
    for (stream, user) in [(14, "carol"), (15, "alice")] {
        assert_eq!(bench.call(stream, user, KEY), Verdict::Pause, "{user}");
        bench.answer_last(Some(401), &error_json("bad_app_key", "revoked"));
        assert_eq!(bench.reply_of(stream).0, 401);
    }
    assert_eq!(bench.call_on_other(16, "alice", KEY), Verdict::Pause);
    assert_eq!(bench.host.dispatch_count(), 8);
    assert_eq!(bench.host.header(16, "authorization"), None);
}

#[test]
fn a_refused_key_waiting_for_another_workers_lookup_is_never_stamped_from_an_older_entry() {
    let bench = Bench::new(rechecking());
    for (stream, user) in [(2, "alice"), (3, "bob")] {
        bench.call(stream, user, KEY);
        bench.answer_last(Some(200), &token_answer(None));
    }
    bench.host.advance_millis(5_000);
    bench.call(4, "bob", KEY);
    bench.answer_last(Some(401), &error_json("bad_app_key", "revoked"));
    // alice's entry still holds the revoked key's digest. A lookup for her
    // with the new key is in flight on the first worker...
    assert_eq!(bench.call(5, "alice", "ask_new-key"), Verdict::Pause);
    let new_key_lookup = bench.host.dispatches().last().cloned().unwrap();
    // ...and a request with the revoked key waits for it on the other.
    assert_eq!(bench.call_on_other(6, "alice", KEY), Verdict::Pause);
    bench.tick_other();
    assert_eq!(bench.host.reply(6), None);
    assert_eq!(
        bench.host.header(6, "authorization"),
        None,
        "not from the old entry"
    );
    bench.answer(5, new_key_lookup.token, Some(200), &refreshed_answer());
    bench.tick_other();
    bench.answer_last(Some(401), &error_json("bad_app_key", "revoked"));
    assert_eq!(bench.reply_of(6).1, ErrorCode::BadAppKey);
    assert_eq!(bench.host.header(6, "authorization"), None);
}

#[test]
fn a_recheck_that_fails_holds_its_lease_only_until_its_lookup_surely_ended() {
    let bench = Bench::new(rechecking());
    bench.call(2, "alice", KEY);
    bench.answer_last(Some(200), &token_answer(None));
    bench.call(3, "bob", KEY);
    bench.answer_last(Some(200), &token_answer(None));
    bench.host.advance_millis(5_000);
    assert_eq!(bench.call(4, "alice", KEY), Verdict::Pause);
    bench.answer_last(None, "");
    assert_eq!(bench.reply_of(4).1, ErrorCode::TokenServiceUnavailable);
    // A timeout says nothing about the key: hits are served until the
    // lease (timeout + grace) ends, then the next one rechecks.
    bench.host.advance_millis(749 + MARKER_GRACE_MS);
    assert_eq!(bench.call(5, "bob", KEY), Verdict::Continue);
    bench.host.advance_millis(1);
    assert_eq!(bench.call(6, "bob", KEY), Verdict::Pause);
    // not_connected is answered past the app's authentication: accepted.
    bench.answer_last(Some(404), &error_json("not_connected", "gone"));
    assert_eq!(bench.call(7, "alice", KEY), Verdict::Continue);
    assert_eq!(bench.host.dispatch_count(), 4);
}

#[test]
fn an_unknown_key_never_creates_a_key_check() {
    let bench = Bench::new(rechecking());
    for (stream, key) in [(2, "ask_wrong-1"), (3, "ask_wrong-2")] {
        bench.call(stream, "alice", key);
        bench.answer_last(Some(401), &error_json("bad_app_key", "no"));
    }
    let checks = bench
        .host
        .shared_keys()
        .into_iter()
        .filter(|k| k.starts_with("authstamp/v2/appkey/"))
        .count();
    assert_eq!(checks, 0);
}

// --- bounded cache -------------------------------------------------------

#[test]
fn many_users_through_a_tiny_cache_never_get_a_wrong_token() {
    let bench = Bench::new(config_from(
        r#"{"token_service": {"cluster": "ts_cluster", "authority": "ts.internal"},
            "cache_capacity": 4}"#,
    ));
    let mut stream = 10;
    for round in 0..3 {
        for user in 0..40 {
            stream += 1;
            let user = format!("user{user}");
            if bench.call(stream, &user, KEY) == Verdict::Pause {
                bench.answer_last(
                    Some(200),
                    &answer_json(
                        "authorization",
                        &format!("Bearer tok-{user}"),
                        "https",
                        "slack.com",
                        "/api-base",
                        None,
                    ),
                );
            }
            assert_eq!(
                bench.host.header_values(stream, "authorization"),
                vec![format!("Bearer tok-{user}")],
                "round {round}"
            );
        }
    }
    assert!(bench.slot_keys().len() <= 4, "{:?}", bench.slot_keys());
    assert!(bench.host.metric(metrics::CACHE_SLOTS) <= 4);
    let markers = bench
        .host
        .shared_keys()
        .into_iter()
        .filter(|k| k.starts_with("authstamp/v2/pending/"))
        .count();
    assert!(markers <= 4, "{markers}");
    assert!(
        bench.host.metric(metrics::CACHE_MISSES) >= 100,
        "mostly misses"
    );
}

// --- metrics -------------------------------------------------------------

#[test]
fn metrics_count_hits_misses_stamps_errors_calls_and_fetch_latency() {
    let bench = Bench::new(gateway());
    bench.call(2, "alice", KEY);
    bench.host.advance_millis(3);
    bench.answer_last(Some(200), &token_answer(None));
    bench.call(3, "alice", KEY);
    bench.call(4, "alice", KEY);
    bench.call(5, "bob", KEY);
    bench.call(6, "bob", KEY);
    bench.answer_last(Some(404), &error_json("not_connected", "no"));
    bench.request(7, &[(":path", "/x"), ("x-authstamp-user", "carol")]);
    bench.request(8, &[(":path", "/x")]);

    let host = &bench.host;
    assert_eq!(
        host.metric(metrics::CACHE_HITS),
        0,
        "hits are handed over in batches"
    );
    assert_eq!(host.metric(metrics::STAMPED), 1);
    bench.tick();
    assert_eq!(host.metric(metrics::CACHE_HITS), 2);
    assert_eq!(host.metric(metrics::CACHE_MISSES), 3);
    assert_eq!(host.metric(metrics::COALESCED), 1);
    assert_eq!(host.metric(metrics::STAMPED), 3);
    assert_eq!(host.metric(metrics::TOKEN_SERVICE_CALLS), 2);
    assert_eq!(host.metric("authstamp_errors_not_connected_total"), 2);
    assert_eq!(host.metric("authstamp_errors_bad_request_total"), 1);
    assert_eq!(host.metric(metrics::CACHE_SLOTS), 1);
    let samples = host.samples(metrics::TOKEN_FETCH_US);
    assert_eq!(samples, vec![3_000, 0]);
}

#[test]
fn a_hit_reads_shared_data_twice_and_makes_no_other_host_call_but_the_header_write() {
    let bench = Bench::new(gateway());
    bench.call(2, "alice", KEY);
    bench.answer_last(Some(200), &token_answer(None));
    let reads = bench.host.shared_reads();
    let writes = bench.host.shared_writes().len();
    assert_eq!(bench.call(3, "alice", KEY), Verdict::Continue);
    assert_eq!(
        bench.host.shared_reads(),
        reads + 2,
        "the entry and the app key check"
    );
    assert_eq!(bench.host.shared_writes().len(), writes);
    assert_eq!(bench.host.dispatch_count(), 1);
    assert_eq!(bench.host.tick(), None, "no tick asked for");
    // One filter-state write hands the record to the upstream instance.
    let properties = bench.host.stream(3).properties;
    assert_eq!(properties.len(), 1);
    assert!(properties.contains_key(heal::STAMP_PROPERTY));
    assert_eq!(
        bench.host.metric(metrics::CACHE_HITS),
        0,
        "hit counts wait for the batch"
    );
}

#[test]
fn the_remembered_app_key_digest_is_only_reused_for_the_same_key() {
    use crate::config::Secret;
    let worker = Worker::default();
    let right = Secret::new(KEY);
    assert_eq!(worker.key_digest(&right), cache::key_digest(KEY));
    assert_eq!(worker.key_digest(&right), cache::key_digest(KEY));
    let wrong = Secret::new("ask_right-kez");
    assert_eq!(
        worker.key_digest(&wrong),
        cache::key_digest("ask_right-kez")
    );
    assert_ne!(cache::key_digest("ask_right-kez"), cache::key_digest(KEY));
    assert_eq!(worker.key_digest(&right), cache::key_digest(KEY));
    let digest = cache::key_digest(KEY);
    for (cluster, app) in [
        ("ts", APP),
        ("ts", APP),
        ("ts", "app_2"),
        ("other", "app_2"),
    ] {
        let (got, name) = worker.key_check(cluster, app, &right);
        assert_eq!(got, digest);
        assert_eq!(
            &*name,
            cache::key_check_name(cluster, app, &digest),
            "{cluster} {app}"
        );
    }
    let (got, name) = worker.key_check("ts", APP, &wrong);
    assert_eq!(got, cache::key_digest("ask_right-kez"));
    assert_eq!(
        &*name,
        cache::key_check_name("ts", APP, &cache::key_digest("ask_right-kez"))
    );
    assert!(!format!("{worker:?}").contains(KEY), "never printed");
}

#[test]
fn a_failed_lookup_serves_the_cached_token_until_its_real_expiry_never_after() {
    let bench = Bench::new(gateway());
    bench.call(2, "alice", KEY);
    bench.answer_last(Some(200), &token_answer(Some(NOW + 3600)));
    // Past max_cache_ttl (5 min): a miss, and the token service times out.
    bench.host.set_now(NOW + 301);
    assert_eq!(bench.call(3, "alice", KEY), Verdict::Pause);
    assert_eq!(bench.call(4, "alice", KEY), Verdict::Pause, "joins");
    bench.answer_last(None, "");
    for stream in [3, 4] {
        assert_stamped(&bench, stream, "Bearer xoxb-secret");
        assert_eq!(bench.host.resumed(stream), 1);
    }
    assert_eq!(bench.host.metric(metrics::STALE_SERVED), 2);
    // Failing answers of every kind of outage, and an unreachable service.
    for (stream, status, body) in [
        (5, Some(503), "upstream connect error".to_string()),
        (6, Some(503), error_json("storage_unavailable", "db down")),
        (7, Some(200), "{garbage".to_string()),
    ] {
        assert_eq!(bench.call(stream, "alice", KEY), Verdict::Pause);
        bench.answer_last(status, &body);
        assert_stamped(&bench, stream, "Bearer xoxb-secret");
    }
    bench.host.set_fail_dispatch(true);
    assert_eq!(bench.call(8, "alice", KEY), Verdict::Continue);
    assert_stamped(&bench, 8, "Bearer xoxb-secret");
    bench.host.set_fail_dispatch(false);
    assert_eq!(bench.host.metric(metrics::STALE_SERVED), 6);
    // An answer that is the service's verdict is not an outage.
    assert_eq!(bench.call(9, "alice", KEY), Verdict::Pause);
    bench.answer_last(Some(404), &error_json("not_connected", "gone"));
    assert_eq!(bench.reply_of(9).1, ErrorCode::NotConnected);
    // At the token's expiry: no stale token any more.
    bench.host.set_now(NOW + 3600);
    assert_eq!(bench.call(10, "alice", KEY), Verdict::Pause);
    bench.answer_last(None, "");
    assert_eq!(bench.reply_of(10).1, ErrorCode::TokenServiceUnavailable);
    assert_eq!(bench.host.header(10, "authorization"), None);
    assert_eq!(bench.host.metric(metrics::STALE_SERVED), 6);
}

#[test]
fn no_stale_token_without_a_known_expiry_for_a_refused_key_or_another_key() {
    let bench = Bench::new(gateway());
    bench.call(2, "alice", KEY);
    bench.answer_last(Some(200), &token_answer(None));
    bench.call(3, "bob", KEY);
    bench.answer_last(Some(200), &token_answer(Some(NOW + 3600)));
    bench.host.set_now(NOW + 301);
    // alice's token has no known expiry.
    bench.call(4, "alice", KEY);
    bench.answer_last(None, "");
    assert_eq!(bench.reply_of(4).1, ErrorCode::TokenServiceUnavailable);
    // Another app key never gets bob's token.
    bench.call(5, "bob", "ask_other-key");
    bench.answer_last(None, "");
    assert_eq!(bench.reply_of(5).1, ErrorCode::TokenServiceUnavailable);
    // The key refused: never served, not even stale.
    bench.call(6, "bob", KEY);
    bench.answer_last(Some(401), &error_json("bad_app_key", "revoked"));
    bench.call(7, "bob", KEY);
    bench.answer_last(None, "");
    assert_eq!(bench.reply_of(7).1, ErrorCode::TokenServiceUnavailable);
    assert_eq!(bench.host.metric(metrics::STALE_SERVED), 0);
}

#[test]
fn a_forced_refresh_that_times_out_never_serves_the_refused_token() {
    let bench = Bench::new(gateway());
    bench.call(2, "alice", KEY);
    bench.answer_last(Some(200), &token_answer(Some(NOW + 3600)));
    bench.response_arrives(2, 401);
    bench.call(3, "alice", KEY);
    bench.tick();
    let forced: TokenLookupRequest =
        serde_json::from_slice(&bench.host.dispatches().last().unwrap().body).unwrap();
    assert!(forced.force_refresh);
    bench.answer_last(None, "");
    assert_eq!(bench.reply_of(3).1, ErrorCode::TokenServiceUnavailable);
    assert_eq!(bench.host.header(3, "authorization"), None);
    assert_eq!(bench.host.metric(metrics::STALE_SERVED), 0);
}
