//! A diagnostic filter for tests/tests/native_*.rs (feature `probe`, never
//! shipped): each `x-probe` request header value exercises one host call
//! of [`crate::abi`] against a real Envoy, and `panic*` values prove the
//! panic barrier.
//!
//! Configuration: `{"probe": {"callout_cluster": "<cluster>"}}`.
#![forbid(unsafe_code)]

use std::time::Duration;

use serde::Deserialize;

use crate::abi::{ConfigContext, Stream};
use crate::host::{CalloutResponse, FilterFactory, HeadersStatus, HttpFilter, LogLevel, MetricId};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbeConfig {
    probe: ProbeSettings,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbeSettings {
    callout_cluster: String,
}

struct Probe {
    callout_cluster: String,
    requests: MetricId,
    last_worker: MetricId,
    header_bytes: MetricId,
}

/// The probe factory when the configuration is a probe's, else `None`.
pub fn factory(context: &ConfigContext<'_>) -> Result<Option<Box<dyn FilterFactory>>, String> {
    let is_probe = serde_json::from_slice::<serde_json::Value>(context.config)
        .ok()
        .is_some_and(|v| v.get("probe").is_some());
    if !is_probe {
        return Ok(None);
    }
    let config: ProbeConfig =
        serde_json::from_slice(context.config).map_err(|e| format!("probe configuration: {e}"))?;
    let define = |name: &str, id: Option<MetricId>| id.ok_or(format!("metric {name} refused"));
    let probe = Probe {
        callout_cluster: config.probe.callout_cluster,
        requests: define(
            "requests",
            context.define_counter("authstamp_probe_requests_total"),
        )?,
        last_worker: define(
            "worker",
            context.define_gauge("authstamp_probe_last_worker"),
        )?,
        header_bytes: define(
            "header bytes",
            context.define_histogram("authstamp_probe_header_bytes"),
        )?,
    };
    crate::abi::log(LogLevel::Info, "authstamp probe: configured");
    Ok(Some(Box::new(probe)))
}

impl FilterFactory for Probe {
    fn new_filter(&self, _stream: &mut Stream<'_>) -> Box<dyn HttpFilter> {
        Box::new(ProbeFilter {
            callout_cluster: self.callout_cluster.clone(),
            requests: self.requests,
            last_worker: self.last_worker,
            header_bytes: self.header_bytes,
            mode: String::new(),
        })
    }
}

struct ProbeFilter {
    callout_cluster: String,
    requests: MetricId,
    last_worker: MetricId,
    header_bytes: MetricId,
    mode: String,
}

/// The id a probe's wake-up carries.
const WAKE_EVENT: u64 = 7;

impl ProbeFilter {
    fn stamp(&self, stream: &mut Stream<'_>) -> HeadersStatus {
        let count = stream.request_headers().len().to_string();
        let worker = stream.worker_index().to_string();
        let written = stream
            .set_request_header("authorization", b"Bearer probe-token")
            .and_then(|()| stream.remove_request_header("x-authstamp-user"))
            .and_then(|()| stream.remove_request_header("x-probe-absent"))
            .and_then(|()| stream.set_request_header("x-probe-header-count", count.as_bytes()))
            .and_then(|()| stream.set_request_header("x-probe-worker", worker.as_bytes()));
        if written.is_err() {
            stream.send_response(500, &[("x-probe", b"write-failed")], b"");
            return HeadersStatus::Stop;
        }
        HeadersStatus::Continue
    }

    fn callout(&self, stream: &mut Stream<'_>, cluster: &str) -> HeadersStatus {
        let headers: [(&str, &[u8]); 3] = [
            (":method", b"GET"),
            (":path", b"/probe-callout"),
            ("host", b"probe"),
        ];
        match stream.http_callout(cluster, &headers, b"", Duration::from_secs(5)) {
            Ok(_) => HeadersStatus::Stop,
            Err(error) => {
                let body = format!("{error:?}");
                stream.send_response(502, &[("x-probe", b"callout-refused")], body.as_bytes());
                HeadersStatus::Stop
            }
        }
    }

    fn wake_from_another_thread(stream: &mut Stream<'_>) -> HeadersStatus {
        let Some(scheduler) = stream.scheduler() else {
            stream.send_response(500, &[("x-probe", b"no-scheduler")], b"");
            return HeadersStatus::Stop;
        };
        std::thread::spawn(move || scheduler.wake(WAKE_EVENT));
        HeadersStatus::Stop
    }
}

impl HttpFilter for ProbeFilter {
    fn on_request_headers(
        &mut self,
        stream: &mut Stream<'_>,
        _end_of_stream: bool,
    ) -> HeadersStatus {
        let Some(mode) = stream.request_header("x-probe") else {
            return HeadersStatus::Continue;
        };
        self.mode = String::from_utf8_lossy(mode).into_owned();
        let size: usize = stream
            .request_headers()
            .iter()
            .map(|(n, v)| n.len() + v.len())
            .sum();
        let counted = stream
            .increment_counter(self.requests, 1)
            .and_then(|()| stream.set_gauge(self.last_worker, u64::from(stream.worker_index())))
            .and_then(|()| stream.record_histogram(self.header_bytes, size as u64));
        if counted.is_err() {
            crate::abi::log(
                LogLevel::Warn,
                "authstamp probe: a metric update was refused",
            );
        }
        match self.mode.as_str() {
            "stamp" => self.stamp(stream),
            "reply" => {
                stream.send_response(
                    418,
                    &[("content-type", b"application/json"), ("x-probe", b"reply")],
                    br#"{"probe":"reply"}"#,
                );
                HeadersStatus::Stop
            }
            "callout" => {
                let cluster = self.callout_cluster.clone();
                self.callout(stream, &cluster)
            }
            "callout-unknown-cluster" => self.callout(stream, "authstamp_probe_no_such_cluster"),
            "wake" | "panic-scheduled" => Self::wake_from_another_thread(stream),
            "panic-callout" => {
                let cluster = self.callout_cluster.clone();
                self.callout(stream, &cluster)
            }
            #[allow(clippy::panic)] // The test switch of the panic barrier.
            "panic" => panic!("probe: forced panic in on_request_headers"),
            _ => HeadersStatus::Continue,
        }
    }

    fn on_response_headers(
        &mut self,
        stream: &mut Stream<'_>,
        _end_of_stream: bool,
    ) -> HeadersStatus {
        if !self.mode.is_empty()
            && stream
                .set_response_header("x-probe-response", b"seen")
                .is_err()
        {
            crate::abi::log(LogLevel::Warn, "authstamp probe: response header refused");
        }
        HeadersStatus::Continue
    }

    fn on_callout_done(&mut self, stream: &mut Stream<'_>, _id: u64, response: CalloutResponse) {
        #[allow(clippy::panic)] // The test switch of the panic barrier.
        if self.mode == "panic-callout" {
            panic!("probe: forced panic in on_callout_done");
        }
        let status = response
            .status()
            .map_or_else(|| format!("{:?}", response.result), |s| s.to_string());
        let bytes = response.body.len().to_string();
        let written = stream
            .set_request_header("x-probe-callout-status", status.as_bytes())
            .and_then(|()| {
                stream.set_request_header("x-probe-callout-body-bytes", bytes.as_bytes())
            });
        if written.is_err() {
            stream.send_response(500, &[("x-probe", b"write-failed")], b"");
            return;
        }
        stream.continue_decoding();
    }

    fn on_scheduled(&mut self, stream: &mut Stream<'_>, event_id: u64) {
        #[allow(clippy::panic)] // The test switch of the panic barrier.
        if self.mode == "panic-scheduled" {
            panic!("probe: forced panic in on_scheduled");
        }
        let id = event_id.to_string();
        if stream
            .set_request_header("x-probe-woken", id.as_bytes())
            .is_err()
        {
            stream.send_response(500, &[("x-probe", b"write-failed")], b"");
            return;
        }
        stream.continue_decoding();
    }
}
