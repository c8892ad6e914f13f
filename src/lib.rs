//! authstamp filter, the proxy-wasm build: wires proxy-wasm's root and HTTP
//! contexts to the host-independent core (`authstamp-filter-core`) and
//! implements its [`Host`](authstamp_filter_core::host::Host) trait over
//! `proxy_wasm::hostcalls`. Built for wasm32 only: a native build never
//! links against the host's imports. Every callback forwards in a line.

#[cfg(target_arch = "wasm32")]
mod glue {
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::time::{Duration, UNIX_EPOCH};

    use proxy_wasm::hostcalls;
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, Status};

    use proxy_wasm::types::MetricType;

    use authstamp_filter_core::filter::Verdict;
    use authstamp_filter_core::heal::Stamps;
    use authstamp_filter_core::host::{
        serialize_pairs, DispatchError, HeaderPairs, Host, MetricKind, SharedDataError,
        SharedStore, WriteError,
    };
    use authstamp_filter_core::stream::{NewStream, StreamFilter, UpstreamFilter, WorkerFilter};

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
            Box::new(Root(WorkerFilter::new(context_id, stamps())))
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

    impl SharedStore for HostCalls {
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
    }

    impl Host for HostCalls {
        fn request_headers(&self) -> HeaderPairs {
            hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_default()
        }

        fn set_request_header(&self, name: &str, value: &str) -> Result<(), WriteError> {
            hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value))
                .map_err(|_| WriteError)
        }

        fn set_request_headers(&self, headers: &[(&str, &[u8])]) -> Result<(), WriteError> {
            let serialized = serialize_pairs(headers);
            // The raw ABI call: the SDK's set_map_bytes panics (killing the
            // VM) on any status but Ok.
            let status = unsafe {
                proxy_set_header_map_pairs(
                    MapType::HttpRequestHeaders,
                    serialized.as_ptr(),
                    serialized.len(),
                )
            };
            if status == Status::Ok {
                Ok(())
            } else {
                Err(WriteError)
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

    /// One per worker (the root context): forwards to [`WorkerFilter`].
    struct Root(WorkerFilter);

    impl Context for Root {
        fn on_http_call_response(&mut self, token: u32, _: usize, body_size: usize, _: usize) {
            self.0.on_token_answer(&HostCalls, token, body_size);
        }
    }

    impl RootContext for Root {
        fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
            let raw = hostcalls::get_buffer(
                BufferType::PluginConfiguration,
                0,
                plugin_configuration_size,
            )
            .ok()
            .flatten()
            .unwrap_or_default();
            self.0
                .on_configure(&HostCalls, &raw, &|name| std::env::var(name).ok())
        }

        fn on_tick(&mut self) {
            self.0.on_tick(&HostCalls);
        }

        fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
            Some(match self.0.new_stream(context_id) {
                NewStream::Stream(stream) => Box::new(Stream(stream)),
                NewStream::Upstream(attempt) => Box::new(Upstream(attempt)),
            })
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    fn action(verdict: Verdict) -> Action {
        match verdict {
            Verdict::Continue => Action::Continue,
            Verdict::Pause => Action::Pause,
        }
    }

    /// One per request: forwards to [`StreamFilter`].
    struct Stream(StreamFilter);

    impl Context for Stream {
        fn on_http_call_response(&mut self, token: u32, _: usize, body_size: usize, _: usize) {
            self.0.on_token_answer(&HostCalls, token, body_size);
        }

        fn on_done(&mut self) -> bool {
            self.0.on_done(&HostCalls);
            true
        }
    }

    impl HttpContext for Stream {
        fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
            action(self.0.on_request_headers(&HostCalls))
        }

        fn on_http_request_body(&mut self, _: usize, _: bool) -> Action {
            action(self.0.on_request_body())
        }

        fn on_http_request_trailers(&mut self, _: usize) -> Action {
            action(self.0.on_request_trailers())
        }

        fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
            action(self.0.on_response_headers(&HostCalls))
        }
    }

    /// One per upstream attempt: forwards to [`UpstreamFilter`].
    struct Upstream(UpstreamFilter);

    impl Context for Upstream {
        fn on_done(&mut self) -> bool {
            self.0.on_done(&HostCalls);
            true
        }
    }

    impl HttpContext for Upstream {
        fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
            action(self.0.on_request_headers(&HostCalls))
        }

        fn on_http_request_body(&mut self, _: usize, _: bool) -> Action {
            action(self.0.on_request_body())
        }

        fn on_http_request_trailers(&mut self, _: usize) -> Action {
            action(self.0.on_request_trailers())
        }

        fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
            action(self.0.on_response_headers(&HostCalls))
        }
    }
}
