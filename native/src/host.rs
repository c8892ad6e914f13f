//! What the module's filters see of Envoy: the per-stream filter trait the
//! hooks drive, the factory a configuration makes, and the small types of
//! the safe handles in [`crate::abi`].
#![forbid(unsafe_code)]

use crate::abi::Stream;

/// Envoy refused a host call (a header write, a metric update).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostError;

/// Why Envoy did not start an HTTP callout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CalloutError {
    /// `:method`, `:path` or `host` is missing.
    MissingRequiredHeaders,
    ClusterNotFound,
    /// E.g. no healthy host in the cluster.
    CannotCreateRequest,
}

/// How a callout ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CalloutResult {
    Success,
    /// Reset or timed out: no answer.
    Reset,
    ExceedResponseBufferLimit,
}

/// A callout's answer, copied out of Envoy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CalloutResponse {
    pub result: CalloutResult,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl CalloutResponse {
    /// The answer's `:status`, if it came.
    pub fn status(&self) -> Option<u16> {
        let value = self.header(":status")?;
        std::str::from_utf8(value).ok()?.parse().ok()
    }

    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
}

/// An Envoy stat defined by the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricId(pub(crate) usize);

/// Envoy's log levels (abi.h `envoy_dynamic_module_type_log_level`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum LogLevel {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

/// What a headers hook tells Envoy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadersStatus {
    Continue,
    /// Pause the stream until [`Stream::continue_decoding`] (or encoding).
    Stop,
}

/// What a body hook tells Envoy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyStatus {
    Continue,
    /// Keep the body in Envoy until the stream is resumed (past Envoy's
    /// buffer limit, reading from the client pauses).
    StopAndBuffer,
}

/// One stream's filter: one method per Envoy event. A panic in any of them
/// fails the stream closed (500 `internal`) and disables the filter.
pub trait HttpFilter {
    fn on_request_headers(&mut self, stream: &mut Stream<'_>, end_of_stream: bool)
        -> HeadersStatus;

    fn on_request_body(&mut self, _stream: &mut Stream<'_>, _end_of_stream: bool) -> BodyStatus {
        BodyStatus::Continue
    }

    /// Request trailers: `Stop` holds them (and the request) back.
    fn on_request_trailers(&mut self, _stream: &mut Stream<'_>) -> HeadersStatus {
        HeadersStatus::Continue
    }

    fn on_response_headers(
        &mut self,
        _stream: &mut Stream<'_>,
        _end_of_stream: bool,
    ) -> HeadersStatus {
        HeadersStatus::Continue
    }

    fn on_response_body(&mut self, _stream: &mut Stream<'_>, _end_of_stream: bool) -> BodyStatus {
        BodyStatus::Continue
    }

    /// The answer of a callout this stream started.
    fn on_callout_done(&mut self, _stream: &mut Stream<'_>, _id: u64, _response: CalloutResponse) {}

    /// A [`crate::abi::Scheduler::wake`] of this stream, on its worker.
    fn on_scheduled(&mut self, _stream: &mut Stream<'_>, _event_id: u64) {}

    fn on_stream_complete(&mut self, _stream: &mut Stream<'_>) {}
}

/// Made once per filter configuration (main thread), shared by every
/// worker: makes each stream's filter.
pub trait FilterFactory: Send + Sync {
    fn new_filter(&self, stream: &mut Stream<'_>) -> Box<dyn HttpFilter>;
}
