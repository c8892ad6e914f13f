//! Benchmark only (feature `floor`, never shipped): the floor of a dynamic
//! module in Envoy's filter chain, `make bench`'s reference rows (o) and
//! (t) beside the Wasm floor (n) and (s). What is left between (t) and
//! (d') is authstamp's own work; what is between (t) and (b) is Envoy's
//! cost of a dynamic-module filter.
//!
//! Configuration: `{"floor": "noop"}` (nothing per request),
//! `{"floor": "stamp"}` (sets `authorization` to a constant, one host call)
//! or `{"floor": "writes"}` (row (u): the host calls of an authstamp hit
//! without its logic: every request header read, the four authstamp
//! headers removed, `:authority`, `:path`, the credential and the route
//! header written, the route chosen again).
#![forbid(unsafe_code)]

use serde::Deserialize;

use crate::abi::{ConfigContext, Stream};
use crate::host::{FilterFactory, HeadersStatus, HttpFilter};

const CREDENTIAL: &[u8] = b"Bearer bench-static-token-0123456789abcdef";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FloorConfig {
    floor: Mode,
}

#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    Noop,
    Stamp,
    Writes,
}

/// What a hit removes and writes (the names of the benchmark's request).
const REMOVED: [&str; 4] = [
    "x-authstamp-provider",
    "x-authstamp-user",
    "x-authstamp-app",
    "x-authstamp-app-key",
];

struct Floor(Mode);

/// The floor factory when the configuration is a floor's, else `None`.
pub fn factory(context: &ConfigContext<'_>) -> Result<Option<Box<dyn FilterFactory>>, String> {
    let is_floor = serde_json::from_slice::<serde_json::Value>(context.config)
        .ok()
        .is_some_and(|v| v.get("floor").is_some());
    if !is_floor {
        return Ok(None);
    }
    let config: FloorConfig =
        serde_json::from_slice(context.config).map_err(|e| format!("floor configuration: {e}"))?;
    Ok(Some(Box::new(Floor(config.floor))))
}

impl FilterFactory for Floor {
    fn new_filter(&self, _stream: &mut Stream<'_>) -> Box<dyn HttpFilter> {
        Box::new(Floor(self.0))
    }
}

impl HttpFilter for Floor {
    fn on_request_headers(
        &mut self,
        stream: &mut Stream<'_>,
        _end_of_stream: bool,
    ) -> HeadersStatus {
        // A failed write shows in the benchmark's check of the header.
        match self.0 {
            Mode::Noop => {}
            Mode::Stamp => {
                let _ = stream.set_request_header("authorization", CREDENTIAL);
            }
            Mode::Writes => {
                let read: Vec<(Vec<u8>, Vec<u8>)> = stream
                    .request_headers()
                    .into_iter()
                    .map(|(n, v)| (n.to_vec(), v.to_vec()))
                    .collect();
                let value = |name: &[u8]| {
                    read.iter()
                        .find(|(n, _)| n.as_slice() == name)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default()
                };
                let (authority, path) = (value(b":authority"), value(b":path"));
                for name in REMOVED {
                    let _ = stream.remove_request_header(name);
                }
                let _ = stream.set_request_header(":authority", &authority);
                let _ = stream.set_request_header(":path", &path);
                let _ = stream.set_request_header("authorization", CREDENTIAL);
                let _ = stream.set_request_header("x-authstamp-route", b"http");
                stream.clear_route_cache();
            }
        }
        HeadersStatus::Continue
    }
}
