//! authstamp filter: a proxy-wasm HTTP filter that stamps a user's OAuth
//! access token on provider API requests.
//!
//! All logic lives behind the [`host::Host`] trait and is unit-tested natively
//! with a mock host; this file only wires proxy-wasm's root and HTTP contexts
//! to it and implements the trait over `proxy_wasm::hostcalls` (built for
//! wasm32 only: a native build never links against the host's imports).

pub mod cache;
pub mod config;
pub mod egress;
pub mod filter;
pub mod heal;
pub mod host;
pub mod inflight;
pub mod metrics;
pub mod reply;
pub mod request;
pub mod stamp;
pub mod workload;

#[cfg(target_arch = "wasm32")]
mod glue {
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::time::{Duration, UNIX_EPOCH};

    use proxy_wasm::hostcalls;
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, Status};

    use proxy_wasm::types::MetricType;

    use crate::config::Config;
    use crate::filter::{self, State, Verdict, Worker};
    use crate::heal::{self, Attempt, Stamps};
    use crate::host::{DispatchError, HeaderPairs, Host, MetricKind, SharedDataError};
    use crate::metrics::Metrics;

    thread_local! {
        /// The stamped requests of this VM (one per worker), shared by the
        /// stamping and the upstream instance.
        static STAMPS: Rc<RefCell<Stamps>> = Rc::default();
    }

    fn stamps() -> Rc<RefCell<Stamps>> {
        STAMPS.with(Rc::clone)
    }

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Info);
        proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
            Box::new(Root {
                config: None,
                upstream: false,
                worker: Rc::new(Worker::sharing(context_id, Metrics::default(), stamps())),
                metrics_defined: false,
            })
        });
    }}

    #[link(wasm_import_module = "env")]
    extern "C" {
        fn proxy_set_header_map_pairs(
            map_type: MapType,
            map_data: *const u8,
            map_size: usize,
        ) -> Status;
    }

    /// The [`Host`] of the running proxy: every call acts on the host's
    /// effective context. Host refusals are logged, never unwrapped.
    struct HostCalls;

    impl Host for HostCalls {
        fn request_headers(&self) -> HeaderPairs {
            hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_default()
        }

        fn set_request_header(&self, name: &str, value: &str) {
            if hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value)).is_err() {
                log::warn!("authstamp: could not set a request header");
            }
        }

        fn remove_request_header(&self, name: &str) {
            if hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None).is_err() {
                log::warn!("authstamp: could not remove a request header");
            }
        }

        fn set_request_headers(&self, headers: &[(&str, &[u8])]) {
            let serialized = crate::host::serialize_pairs(headers);
            // The raw ABI call: the SDK's set_map_bytes panics (killing the
            // VM) on any status but Ok.
            let status = unsafe {
                proxy_set_header_map_pairs(
                    MapType::HttpRequestHeaders,
                    serialized.as_ptr(),
                    serialized.len(),
                )
            };
            if status != Status::Ok {
                log::error!("authstamp: could not set the request headers");
            }
        }

        fn dispatch_http_call(
            &self,
            cluster: &str,
            headers: &[(&str, &str)],
            body: &[u8],
            timeout: Duration,
        ) -> Result<u32, DispatchError> {
            hostcalls::dispatch_http_call(
                cluster,
                headers.to_vec(),
                Some(body),
                Vec::new(),
                timeout,
            )
            .map_err(|_| DispatchError)
        }

        fn http_call_response_headers(&self) -> HeaderPairs {
            hostcalls::get_map_bytes(MapType::HttpCallResponseHeaders).unwrap_or_default()
        }

        fn http_call_response_body(&self, size: usize) -> Option<Vec<u8>> {
            hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, size)
                .ok()
                .flatten()
        }

        fn get_shared_data(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
            hostcalls::get_shared_data(key).unwrap_or((None, None))
        }

        fn set_shared_data(
            &self,
            key: &str,
            value: &[u8],
            cas: Option<u32>,
        ) -> Result<(), SharedDataError> {
            match hostcalls::set_shared_data(key, Some(value), cas) {
                Ok(()) => Ok(()),
                Err(Status::CasMismatch) => Err(SharedDataError::CasMismatch),
                Err(_) => Err(SharedDataError::Failed),
            }
        }

        fn now_unix_nanos(&self) -> Option<u64> {
            let now = hostcalls::get_current_time().ok()?;
            let since = now.duration_since(UNIX_EPOCH).ok()?;
            u64::try_from(since.as_nanos()).ok()
        }

        fn response_status(&self) -> Option<u16> {
            let status = hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, ":status")
                .ok()
                .flatten()?;
            std::str::from_utf8(&status).ok()?.parse().ok()
        }

        fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
            hostcalls::get_property(path.to_vec()).ok().flatten()
        }

        fn set_stream_property(&self, name: &str, value: &[u8]) {
            if hostcalls::set_property(vec![name], Some(value)).is_err() {
                log::warn!("authstamp: could not set a stream property");
            }
        }

        fn add_response_header(&self, name: &str, value: &str) {
            if hostcalls::add_map_value(MapType::HttpResponseHeaders, name, value).is_err() {
                log::warn!("authstamp: could not add a response header");
            }
        }

        fn remove_response_header(&self, name: &str) {
            if hostcalls::set_map_value(MapType::HttpResponseHeaders, name, None).is_err() {
                log::warn!("authstamp: could not remove a response header");
            }
        }

        fn resume_response(&self) {
            if hostcalls::resume_http_response().is_err() {
                log::error!("authstamp: could not resume a response");
            }
        }

        fn define_metric(&self, kind: MetricKind, name: &str) -> Option<u32> {
            let kind = match kind {
                MetricKind::Counter => MetricType::Counter,
                MetricKind::Gauge => MetricType::Gauge,
                MetricKind::Histogram => MetricType::Histogram,
            };
            hostcalls::define_metric(kind, name).ok()
        }

        fn increment_metric(&self, id: u32, delta: i64) {
            let _ = hostcalls::increment_metric(id, delta);
        }

        fn record_metric(&self, id: u32, value: u64) {
            let _ = hostcalls::record_metric(id, value);
        }

        fn send_local_reply(&self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
            if hostcalls::send_http_response(u32::from(status), headers.to_vec(), Some(body))
                .is_err()
            {
                log::error!("authstamp: could not send a local reply status={status}");
            }
        }

        fn resume_request(&self) {
            if hostcalls::resume_http_request().is_err() {
                log::error!("authstamp: could not resume a request");
            }
        }

        fn set_effective_context(&self, context_id: u32) -> bool {
            hostcalls::set_effective_context(context_id).is_ok()
        }

        fn set_tick_period(&self, period: Duration) {
            if hostcalls::set_tick_period(period).is_err() {
                log::warn!("authstamp: could not set the tick period");
            }
        }
    }

    /// One per worker: the configuration, the worker's lookups in flight and
    /// its metrics.
    struct Root {
        config: Option<Rc<Config>>,
        /// The upstream instance (`{"role": "upstream"}`): heals 401s.
        upstream: bool,
        worker: Rc<Worker>,
        metrics_defined: bool,
    }

    impl Context for Root {
        fn on_http_call_response(
            &mut self,
            token_id: u32,
            _num_headers: usize,
            body_size: usize,
            _num_trailers: usize,
        ) {
            filter::on_call_response(
                &HostCalls,
                &self.worker,
                token_id,
                body_size,
                self.worker.root,
            );
        }
    }

    impl RootContext for Root {
        fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
            if !self.metrics_defined {
                // Before any stream exists: nobody else holds the worker yet.
                self.worker = Rc::new(Worker::sharing(
                    self.worker.root,
                    Metrics::define(&HostCalls),
                    stamps(),
                ));
                self.metrics_defined = true;
            }
            let raw = match hostcalls::get_buffer(
                BufferType::PluginConfiguration,
                0,
                plugin_configuration_size,
            ) {
                Ok(raw) => raw.unwrap_or_default(),
                Err(_) => Vec::new(),
            };
            if crate::config::is_upstream_role(&raw) {
                log::info!("authstamp: configured role=upstream");
                self.upstream = true;
                HostCalls.set_tick_period(filter::IDLE_TICK);
                return true;
            }
            match Config::parse(&raw, &|name| std::env::var(name).ok()) {
                Ok(config) => {
                    log::info!(
                        "authstamp: configured mode={} cluster={}",
                        if config.is_mesh() { "mesh" } else { "gateway" },
                        config.token_service.cluster
                    );
                    self.config = Some(Rc::new(config));
                    // Hands batched metrics to Envoy (see metrics.rs).
                    HostCalls.set_tick_period(filter::IDLE_TICK);
                    true
                }
                Err(error) => {
                    log::error!("authstamp: invalid plugin configuration: {error}");
                    false
                }
            }
        }

        fn on_tick(&mut self) {
            filter::on_tick(&HostCalls, &self.worker);
        }

        fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
            if self.upstream {
                return Some(Box::new(UpstreamAttempt {
                    id: context_id,
                    worker: Rc::clone(&self.worker),
                    attempt: Attempt::Unknown,
                }));
            }
            Some(Box::new(Stream {
                id: context_id,
                config: self.config.clone(),
                worker: Rc::clone(&self.worker),
                state: State::Fresh,
            }))
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    /// One per request.
    struct Stream {
        id: u32,
        config: Option<Rc<Config>>,
        worker: Rc<Worker>,
        state: State,
    }

    fn action(verdict: Verdict) -> Action {
        match verdict {
            Verdict::Continue => Action::Continue,
            Verdict::Pause => Action::Pause,
        }
    }

    impl Stream {
        fn take_state(&mut self) -> State {
            std::mem::replace(&mut self.state, State::Fresh)
        }

        fn on_data(&mut self) -> Action {
            let state = self.take_state();
            let (state, verdict) = filter::on_request_data(state, &self.worker, self.id);
            self.state = state;
            action(verdict)
        }
    }

    impl Context for Stream {
        fn on_http_call_response(
            &mut self,
            token_id: u32,
            _num_headers: usize,
            body_size: usize,
            _num_trailers: usize,
        ) {
            filter::on_call_response(&HostCalls, &self.worker, token_id, body_size, self.id);
            let state = self.take_state();
            self.state = filter::settle(state, &self.worker, self.id);
        }

        fn on_done(&mut self) -> bool {
            let state = self.take_state();
            self.state = filter::on_done(&HostCalls, state, &self.worker, self.id);
            true
        }
    }

    impl HttpContext for Stream {
        fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
            let (state, verdict) =
                filter::on_request_headers(&HostCalls, self.config.as_ref(), &self.worker, self.id);
            self.state = state;
            action(verdict)
        }

        fn on_http_request_body(&mut self, _body_size: usize, _end_of_stream: bool) -> Action {
            self.on_data()
        }

        fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
            self.on_data()
        }

        fn on_http_response_headers(
            &mut self,
            _num_headers: usize,
            _end_of_stream: bool,
        ) -> Action {
            // Only stamped requests care about the answer (a 401 refreshes the token).
            if matches!(self.state, State::Stamped(..) | State::Waiting(_)) {
                let state = self.take_state();
                self.state = filter::on_response_headers(&HostCalls, state, &self.worker, self.id);
            }
            Action::Continue
        }
    }

    /// One per attempt the router makes to a provider (upstream instance).
    struct UpstreamAttempt {
        id: u32,
        worker: Rc<Worker>,
        attempt: Attempt,
    }

    impl Context for UpstreamAttempt {
        fn on_done(&mut self) -> bool {
            heal::on_upstream_done(&HostCalls, &self.worker, self.id, self.attempt);
            true
        }
    }

    impl HttpContext for UpstreamAttempt {
        fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
            let (attempt, verdict) = heal::on_upstream_request(&HostCalls, &self.worker, self.id);
            self.attempt = attempt;
            action(verdict)
        }

        fn on_http_request_body(&mut self, _body_size: usize, _end_of_stream: bool) -> Action {
            action(heal::request_data(&self.worker, self.attempt))
        }

        fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
            action(heal::request_data(&self.worker, self.attempt))
        }

        fn on_http_response_headers(
            &mut self,
            _num_headers: usize,
            _end_of_stream: bool,
        ) -> Action {
            self.attempt = heal::on_upstream_response(&HostCalls, &self.worker, self.attempt);
            Action::Continue
        }
    }
}
