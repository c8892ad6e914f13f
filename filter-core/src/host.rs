//! The few host calls the filter needs, behind a trait: `lib.rs` implements
//! it over `proxy_wasm::hostcalls`, the unit tests over [`mock::MockHost`].
//!
//! Every call acts on the host's current *effective* context, exactly like
//! the hostcalls: request headers, local replies and resumes go to whichever
//! stream [`Host::set_effective_context`] selected last.

use std::time::Duration;

/// Header pairs as the host gives them: names as strings, values as bytes
/// (a value need not be UTF-8).
pub type HeaderPairs = Vec<(String, Vec<u8>)>;

/// Why a shared-data write did not happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SharedDataError {
    /// Someone else wrote the key since we read it: not an error.
    CasMismatch,
    /// Any other refusal of the host.
    Failed,
}

/// The host refused to start an HTTP call (unknown cluster, bad headers…).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DispatchError;

/// The host refused a write to the stream (its headers): the caller fails
/// closed, never forwards a request it could not stamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteError;

/// Kinds of proxy-wasm metrics (Envoy stats).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// Serializes header pairs as the proxy-wasm ABI wants them: the number of
/// pairs, each pair's key and value sizes (u32, little endian), then each
/// key and value followed by a NUL byte.
pub fn serialize_pairs(pairs: &[(&str, &[u8])]) -> Vec<u8> {
    let size = 4 + pairs
        .iter()
        .map(|(n, v)| 8 + n.len() + v.len() + 2)
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    out.extend_from_slice(&len(pairs.len()));
    for (n, v) in pairs {
        out.extend_from_slice(&len(n.len()));
        out.extend_from_slice(&len(v.len()));
    }
    for (n, v) in pairs {
        out.extend_from_slice(n.as_bytes());
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// The storage every worker shares: the token cache's slots, the markers of
/// lookups in flight (cross-worker coalescing) and the app-key checks. Keys
/// are never deleted (an empty value means deleted) and never enumerated.
/// proxy-wasm: shared data of the VM id; native: [`crate::store::MemoryStore`].
pub trait SharedStore {
    /// Value and CAS of a key; when it was never written, `(None, None)`
    /// (proxy-wasm) or `(None, Some(0))` ([`crate::store::MemoryStore`]).
    fn get_shared_data(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    /// Writes a key if its CAS is still `cas` (`None`: unconditionally).
    /// In proxy-wasm creating a key never fails on CAS; in the memory store
    /// a write with CAS 0 creates it only if it is still absent.
    fn set_shared_data(
        &self,
        key: &str,
        value: &[u8],
        cas: Option<u32>,
    ) -> Result<(), SharedDataError>;
}

/// Everything else the core asks of its host. Stream calls act on the
/// *effective* context: the stream whose callback is running, or the one
/// [`Host::set_effective_context`] selected last (the core switches to each
/// waiting stream of a lookup to complete it, then back).
pub trait Host: SharedStore {
    /// The request headers of the effective stream.
    fn request_headers(&self) -> HeaderPairs;
    /// Replaces every value of `name` with `value`.
    fn set_request_header(&self, name: &str, value: &str) -> Result<(), WriteError>;
    /// Replaces the whole request header map with `headers`, in order.
    fn set_request_headers(&self, headers: &[(&str, &[u8])]) -> Result<(), WriteError>;

    /// Starts an HTTP call; its answer arrives as `on_http_call_response`
    /// with the returned token.
    fn dispatch_http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout: Duration,
    ) -> Result<u32, DispatchError>;
    /// Headers of the HTTP call answer being delivered (empty on timeout or reset).
    fn http_call_response_headers(&self) -> HeaderPairs;
    /// Body of the HTTP call answer being delivered.
    fn http_call_response_body(&self, size: usize) -> Option<Vec<u8>>;

    /// The host's wall clock in Unix nanoseconds; `None` if it cannot tell.
    fn now_unix_nanos(&self) -> Option<u64>;

    /// The host's wall clock in Unix seconds.
    fn now_unix_secs(&self) -> Option<u64> {
        self.now_unix_nanos().map(|n| n / 1_000_000_000)
    }

    /// The host's wall clock in Unix milliseconds.
    fn now_unix_millis(&self) -> Option<u64> {
        self.now_unix_nanos().map(|n| n / 1_000_000)
    }

    /// The `:status` of the effective stream's response headers.
    fn response_status(&self) -> Option<u16>;

    /// An Envoy attribute of the effective stream (e.g.
    /// `["connection", "uri_san_peer_certificate"]`); `None` when absent.
    fn property(&self, path: &[&str]) -> Option<Vec<u8>>;

    /// Sets a value in the effective stream's filter state (Envoy:
    /// `wasm.<name>`), which the upstream filters of the same request read
    /// back through [`Host::property`] with the path `[name]`.
    fn set_stream_property(&self, name: &str, value: &[u8]);

    /// Adds a header to the effective stream's response headers.
    fn add_response_header(&self, name: &str, value: &str);
    /// Removes every value of a response header of the effective stream.
    fn remove_response_header(&self, name: &str);
    /// Resumes the paused response of the effective stream.
    fn resume_response(&self);

    /// Defines (or finds) a metric of the plugin; `None` if the host refuses.
    fn define_metric(&self, kind: MetricKind, name: &str) -> Option<u32>;
    /// Adds `delta` to a counter or gauge.
    fn increment_metric(&self, id: u32, delta: i64);
    /// Records a histogram sample (or sets a gauge).
    fn record_metric(&self, id: u32, value: u64);

    /// Answers the effective stream locally.
    fn send_local_reply(&self, status: u16, headers: &[(&str, &str)], body: &[u8]);
    /// Resumes the paused request of the effective stream.
    fn resume_request(&self);
    /// Makes `context_id` the effective context; `false` if it is gone.
    fn set_effective_context(&self, context_id: u32) -> bool;
    /// Sets the root context's tick period (zero stops the ticks).
    fn set_tick_period(&self, period: Duration);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_serialize_as_the_abi_wants() {
        let bytes = serialize_pairs(&[(":path", b"/x"), ("a", b"")]);
        let mut expected = Vec::new();
        for n in [2u32, 5, 2, 1, 0] {
            expected.extend_from_slice(&n.to_le_bytes());
        }
        expected.extend_from_slice(b":path\0/x\0a\0\0");
        assert_eq!(bytes, expected);
        assert_eq!(serialize_pairs(&[]), 0u32.to_le_bytes().to_vec());
    }
}

#[cfg(any(test, feature = "mock"))]
#[allow(clippy::expect_used, clippy::panic)]
pub mod mock {
    //! An in-memory host with several streams, a clock, shared data with CAS
    //! and a record of every dispatch, local reply and resume.

    use super::*;
    use authstamp_protocol::ErrorBody;
    use std::cell::RefCell;
    use std::collections::{BTreeMap, HashSet};

    pub const ROOT: u32 = 1;

    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct LocalReply {
        pub status: u16,
        pub headers: Vec<(String, String)>,
        pub body: Vec<u8>,
    }

    impl LocalReply {
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }

        pub fn error_body(&self) -> ErrorBody {
            serde_json::from_slice(&self.body).expect("local reply body is an ErrorBody")
        }
    }

    #[derive(Clone, Debug, Default)]
    pub struct Stream {
        pub headers: HeaderPairs,
        pub reply: Option<LocalReply>,
        pub resumed: usize,
        pub response_status: Option<u16>,
        /// Envoy attributes by dotted path (`connection.uri_san_peer_certificate`).
        pub properties: BTreeMap<String, Vec<u8>>,
        /// Response headers the filter added, in order.
        pub response_added: Vec<(String, String)>,
        /// Response headers the filter removed.
        pub response_removed: Vec<String>,
        pub response_resumed: usize,
    }

    #[derive(Clone, Debug)]
    pub struct Dispatch {
        /// The effective context that made the call.
        pub from: u32,
        pub token: u32,
        pub cluster: String,
        pub headers: Vec<(String, String)>,
        pub body: Vec<u8>,
        pub timeout: Duration,
    }

    impl Dispatch {
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }
    }

    #[derive(Debug)]
    pub struct State {
        pub current: u32,
        pub live: HashSet<u32>,
        pub streams: BTreeMap<u32, Stream>,
        /// Unix nanoseconds.
        pub now: Option<u64>,
        pub dispatches: Vec<Dispatch>,
        pub next_token: u32,
        pub fail_dispatch: bool,
        /// The host refuses every request-header write.
        pub fail_header_writes: bool,
        pub shared: BTreeMap<String, (Vec<u8>, u32)>,
        pub next_cas: u32,
        pub shared_writes: Vec<(String, Option<u32>)>,
        /// Every shared-data read.
        pub shared_reads: usize,
        /// Forces the next shared-data write to fail with a CAS mismatch.
        pub cas_conflict: bool,
        pub call_response: (HeaderPairs, Vec<u8>),
        pub tick: Option<Duration>,
        /// Metrics by id: name, kind, value (counter or gauge), samples (histogram).
        pub metrics: Vec<Metric>,
    }

    #[derive(Clone, Debug)]
    pub struct Metric {
        pub name: String,
        pub kind: MetricKind,
        pub value: i64,
        pub samples: Vec<u64>,
    }

    pub struct MockHost {
        pub state: RefCell<State>,
    }

    impl MockHost {
        pub fn new(now: u64) -> Self {
            MockHost {
                state: RefCell::new(State {
                    current: ROOT,
                    live: HashSet::from([ROOT]),
                    streams: BTreeMap::new(),
                    now: Some(now * 1_000_000_000),
                    dispatches: Vec::new(),
                    next_token: 100,
                    fail_dispatch: false,
                    fail_header_writes: false,
                    shared: BTreeMap::new(),
                    next_cas: 1,
                    shared_writes: Vec::new(),
                    shared_reads: 0,
                    cas_conflict: false,
                    call_response: (Vec::new(), Vec::new()),
                    tick: None,
                    metrics: Vec::new(),
                }),
            }
        }

        /// A new stream with these request headers (names lowercase, as Envoy gives them).
        pub fn add_stream(&self, id: u32, headers: &[(&str, &str)]) {
            let headers = headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect();
            self.add_stream_bytes(id, headers);
        }

        pub fn add_stream_bytes(&self, id: u32, headers: HeaderPairs) {
            let mut state = self.state.borrow_mut();
            state.live.insert(id);
            state.streams.insert(
                id,
                Stream {
                    headers,
                    ..Stream::default()
                },
            );
        }

        /// Sets an Envoy attribute of a stream (`path` dotted).
        pub fn set_property(&self, id: u32, path: &str, value: &[u8]) {
            let mut state = self.state.borrow_mut();
            let stream = state.streams.get_mut(&id).expect("known stream");
            stream.properties.insert(path.to_string(), value.to_vec());
        }

        /// Another root context (a second worker's).
        pub fn add_context(&self, id: u32) {
            self.state.borrow_mut().live.insert(id);
        }

        /// The host calls into `id` (as the SDK does before a callback).
        pub fn enter(&self, id: u32) {
            self.state.borrow_mut().current = id;
        }

        pub fn current(&self) -> u32 {
            self.state.borrow().current
        }

        /// The stream is deleted by the host.
        pub fn delete_stream(&self, id: u32) {
            self.state.borrow_mut().live.remove(&id);
        }

        pub fn stream(&self, id: u32) -> Stream {
            self.state
                .borrow()
                .streams
                .get(&id)
                .cloned()
                .expect("known stream")
        }

        pub fn reply(&self, id: u32) -> Option<LocalReply> {
            self.stream(id).reply
        }

        pub fn resumed(&self, id: u32) -> usize {
            self.stream(id).resumed
        }

        /// Every value of a request header of a stream, as text.
        pub fn header_values(&self, id: u32, name: &str) -> Vec<String> {
            self.stream(id)
                .headers
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                .collect()
        }

        pub fn header(&self, id: u32, name: &str) -> Option<String> {
            let values = self.header_values(id, name);
            assert!(values.len() <= 1, "{name} appears {} times", values.len());
            values.into_iter().next()
        }

        pub fn header_names(&self, id: u32) -> Vec<String> {
            self.stream(id)
                .headers
                .iter()
                .map(|(n, _)| n.clone())
                .collect()
        }

        pub fn dispatches(&self) -> Vec<Dispatch> {
            self.state.borrow().dispatches.clone()
        }

        pub fn dispatch_count(&self) -> usize {
            self.state.borrow().dispatches.len()
        }

        pub fn last_token(&self) -> u32 {
            self.state
                .borrow()
                .dispatches
                .last()
                .expect("a dispatch")
                .token
        }

        /// Sets the clock to `now` Unix seconds.
        pub fn set_now(&self, now: u64) {
            self.state.borrow_mut().now = Some(now * 1_000_000_000);
        }

        /// Moves the clock forward.
        pub fn advance_millis(&self, millis: u64) {
            let mut state = self.state.borrow_mut();
            state.now = state.now.map(|n| n + millis * 1_000_000);
        }

        /// The response status the effective stream's upstream answered.
        pub fn set_response_status(&self, id: u32, status: u16) {
            let mut state = self.state.borrow_mut();
            if let Some(stream) = state.streams.get_mut(&id) {
                stream.response_status = Some(status);
            }
        }

        /// The value of a counter or gauge, by name (summed over definitions,
        /// as Envoy does for the same stat defined by several contexts).
        pub fn metric(&self, name: &str) -> i64 {
            self.state
                .borrow()
                .metrics
                .iter()
                .filter(|m| m.name == name)
                .map(|m| m.value)
                .sum()
        }

        /// Every sample of a histogram, by name.
        pub fn samples(&self, name: &str) -> Vec<u64> {
            self.state
                .borrow()
                .metrics
                .iter()
                .filter(|m| m.name == name)
                .flat_map(|m| m.samples.clone())
                .collect()
        }

        pub fn metric_names(&self) -> Vec<String> {
            self.state
                .borrow()
                .metrics
                .iter()
                .map(|m| m.name.clone())
                .collect()
        }

        pub fn set_clock_broken(&self) {
            self.state.borrow_mut().now = None;
        }

        pub fn set_fail_header_writes(&self, fail: bool) {
            self.state.borrow_mut().fail_header_writes = fail;
        }

        pub fn set_fail_dispatch(&self, fail: bool) {
            self.state.borrow_mut().fail_dispatch = fail;
        }

        /// The answer the next `on_http_call_response` reads; `status: None`
        /// is a timeout or reset (no headers at all).
        pub fn set_call_response(&self, status: Option<u16>, body: &str) {
            let headers = match status {
                Some(status) => vec![
                    (":status".to_string(), status.to_string().into_bytes()),
                    ("content-type".to_string(), b"application/json".to_vec()),
                ],
                None => Vec::new(),
            };
            self.state.borrow_mut().call_response = (headers, body.as_bytes().to_vec());
        }

        pub fn call_response_body_len(&self) -> usize {
            self.state.borrow().call_response.1.len()
        }

        pub fn shared_value(&self, key: &str) -> Option<Vec<u8>> {
            self.state.borrow().shared.get(key).map(|(v, _)| v.clone())
        }

        pub fn shared_keys(&self) -> Vec<String> {
            self.state.borrow().shared.keys().cloned().collect()
        }

        pub fn put_shared(&self, key: &str, value: &[u8]) {
            let mut state = self.state.borrow_mut();
            let cas = state.next_cas;
            state.next_cas += 1;
            state.shared.insert(key.to_string(), (value.to_vec(), cas));
        }

        pub fn shared_reads(&self) -> usize {
            self.state.borrow().shared_reads
        }

        pub fn shared_writes(&self) -> Vec<(String, Option<u32>)> {
            self.state.borrow().shared_writes.clone()
        }

        pub fn set_cas_conflict(&self) {
            self.state.borrow_mut().cas_conflict = true;
        }

        pub fn tick(&self) -> Option<Duration> {
            self.state.borrow().tick
        }
    }

    impl SharedStore for MockHost {
        fn get_shared_data(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
            self.state.borrow_mut().shared_reads += 1;
            match self.state.borrow().shared.get(key) {
                Some((value, cas)) => (Some(value.clone()), Some(*cas)),
                None => (None, None),
            }
        }

        fn set_shared_data(
            &self,
            key: &str,
            value: &[u8],
            cas: Option<u32>,
        ) -> Result<(), SharedDataError> {
            let mut state = self.state.borrow_mut();
            state.shared_writes.push((key.to_string(), cas));
            if std::mem::take(&mut state.cas_conflict) {
                return Err(SharedDataError::CasMismatch);
            }
            if let (Some(expected), Some((_, current))) = (cas, state.shared.get(key)) {
                if expected != *current {
                    return Err(SharedDataError::CasMismatch);
                }
            }
            let next = state.next_cas;
            state.next_cas += 1;
            state.shared.insert(key.to_string(), (value.to_vec(), next));
            Ok(())
        }
    }

    impl Host for MockHost {
        fn request_headers(&self) -> HeaderPairs {
            let state = self.state.borrow();
            state
                .streams
                .get(&state.current)
                .map(|s| s.headers.clone())
                .unwrap_or_default()
        }

        fn set_request_header(&self, name: &str, value: &str) -> Result<(), WriteError> {
            let mut state = self.state.borrow_mut();
            if state.fail_header_writes {
                return Err(WriteError);
            }
            let current = state.current;
            let stream = state
                .streams
                .get_mut(&current)
                .expect("a stream is effective");
            assert!(
                stream.reply.is_none(),
                "headers changed after a local reply"
            );
            stream.headers.retain(|(n, _)| n != name);
            stream
                .headers
                .push((name.to_string(), value.as_bytes().to_vec()));
            Ok(())
        }

        fn set_request_headers(&self, headers: &[(&str, &[u8])]) -> Result<(), WriteError> {
            let mut state = self.state.borrow_mut();
            if state.fail_header_writes {
                return Err(WriteError);
            }
            let current = state.current;
            let stream = state
                .streams
                .get_mut(&current)
                .expect("a stream is effective");
            assert!(
                stream.reply.is_none(),
                "headers changed after a local reply"
            );
            stream.headers = headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_vec()))
                .collect();
            Ok(())
        }

        fn dispatch_http_call(
            &self,
            cluster: &str,
            headers: &[(&str, &str)],
            body: &[u8],
            timeout: Duration,
        ) -> Result<u32, DispatchError> {
            let mut state = self.state.borrow_mut();
            if state.fail_dispatch {
                return Err(DispatchError);
            }
            let token = state.next_token;
            state.next_token += 1;
            let from = state.current;
            state.dispatches.push(Dispatch {
                from,
                token,
                cluster: cluster.to_string(),
                headers: headers
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .collect(),
                body: body.to_vec(),
                timeout,
            });
            Ok(token)
        }

        fn http_call_response_headers(&self) -> HeaderPairs {
            self.state.borrow().call_response.0.clone()
        }

        fn http_call_response_body(&self, size: usize) -> Option<Vec<u8>> {
            let state = self.state.borrow();
            let body = &state.call_response.1;
            Some(body[..size.min(body.len())].to_vec())
        }

        fn now_unix_nanos(&self) -> Option<u64> {
            self.state.borrow().now
        }

        fn response_status(&self) -> Option<u16> {
            let state = self.state.borrow();
            state
                .streams
                .get(&state.current)
                .and_then(|s| s.response_status)
        }

        fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
            let state = self.state.borrow();
            state
                .streams
                .get(&state.current)
                .and_then(|s| s.properties.get(&path.join(".")).cloned())
        }

        fn set_stream_property(&self, name: &str, value: &[u8]) {
            let mut state = self.state.borrow_mut();
            let current = state.current;
            if let Some(stream) = state.streams.get_mut(&current) {
                stream.properties.insert(name.to_string(), value.to_vec());
            }
        }

        fn add_response_header(&self, name: &str, value: &str) {
            let mut state = self.state.borrow_mut();
            let current = state.current;
            let stream = state
                .streams
                .get_mut(&current)
                .expect("a stream is effective");
            stream
                .response_added
                .push((name.to_string(), value.to_string()));
        }

        fn remove_response_header(&self, name: &str) {
            let mut state = self.state.borrow_mut();
            let current = state.current;
            let stream = state
                .streams
                .get_mut(&current)
                .expect("a stream is effective");
            stream.response_removed.push(name.to_string());
        }

        fn resume_response(&self) {
            let mut state = self.state.borrow_mut();
            let current = state.current;
            let stream = state
                .streams
                .get_mut(&current)
                .expect("a stream is effective");
            stream.response_resumed += 1;
        }

        fn define_metric(&self, kind: MetricKind, name: &str) -> Option<u32> {
            let mut state = self.state.borrow_mut();
            state.metrics.push(Metric {
                name: name.to_string(),
                kind,
                value: 0,
                samples: Vec::new(),
            });
            u32::try_from(state.metrics.len() - 1).ok()
        }

        fn increment_metric(&self, id: u32, delta: i64) {
            let mut state = self.state.borrow_mut();
            let metric = &mut state.metrics[id as usize];
            assert_ne!(metric.kind, MetricKind::Histogram, "{}", metric.name);
            metric.value += delta;
            assert!(
                metric.kind == MetricKind::Gauge || metric.value >= 0,
                "counter {} went negative",
                metric.name
            );
        }

        fn record_metric(&self, id: u32, value: u64) {
            let mut state = self.state.borrow_mut();
            let metric = &mut state.metrics[id as usize];
            match metric.kind {
                MetricKind::Histogram => metric.samples.push(value),
                MetricKind::Gauge => metric.value = value as i64,
                MetricKind::Counter => panic!("record on counter {}", metric.name),
            }
        }

        fn send_local_reply(&self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
            let mut state = self.state.borrow_mut();
            let current = state.current;
            let stream = state
                .streams
                .get_mut(&current)
                .expect("a stream is effective");
            assert!(
                stream.reply.is_none(),
                "a second local reply for stream {current}"
            );
            assert_eq!(
                stream.resumed, 0,
                "a local reply after resuming stream {current}"
            );
            stream.reply = Some(LocalReply {
                status,
                headers: headers
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .collect(),
                body: body.to_vec(),
            });
        }

        fn resume_request(&self) {
            let mut state = self.state.borrow_mut();
            let current = state.current;
            let stream = state
                .streams
                .get_mut(&current)
                .expect("a stream is effective");
            assert!(stream.reply.is_none(), "resumed after a local reply");
            stream.resumed += 1;
        }

        fn set_effective_context(&self, context_id: u32) -> bool {
            let mut state = self.state.borrow_mut();
            if state.live.contains(&context_id) {
                state.current = context_id;
                true
            } else {
                false
            }
        }

        fn set_tick_period(&self, period: Duration) {
            self.state.borrow_mut().tick = if period.is_zero() { None } else { Some(period) };
        }
    }
}
