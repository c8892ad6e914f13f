//! authstamp as an Envoy dynamic module: a native shared library that Envoy
//! loads by name (`libauthstamp_native.so` in
//! `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`) and runs in its HTTP filter chain.
//!
//! - [`abi`]: Envoy's C ABI, the exported hooks and the panic barrier; the
//!   only module with `unsafe`.
//! - [`host`]: the safe filter and factory traits the hooks drive.
//! - [`reply`]: the module's own 500 `internal` reply.
//! - `probe` (feature `probe`, tests only): a filter that exercises every
//!   host call and panics on demand.
//! - `floor` (feature `floor`, benchmark only): a filter that does nothing
//!   or stamps one constant header, the floor of a dynamic module.
#![deny(unsafe_code)]

// The panic barrier needs unwinding: build with `--profile native` (or any
// profile with `panic = "unwind"`), never the workspace's release profile.
#[cfg(panic = "abort")]
compile_error!("authstamp-native needs panic = \"unwind\": build it with `--profile native`");

pub mod abi;
#[cfg(feature = "floor")]
pub mod floor;
pub mod glue;
pub mod host;
#[cfg(feature = "probe")]
pub mod probe;
pub mod reply;

use abi::ConfigContext;
use host::{FilterFactory, LogLevel};

/// The factory for one filter configuration, from its `filter_config`.
fn new_factory(context: &ConfigContext<'_>) -> Result<Box<dyn FilterFactory>, String> {
    #[cfg(feature = "probe")]
    if let Some(factory) = probe::factory(context)? {
        return Ok(factory);
    }
    #[cfg(feature = "floor")]
    if let Some(factory) = floor::factory(context)? {
        return Ok(factory);
    }
    glue::factory(context)
}

/// The core's `log` records, into Envoy's log.
struct EnvoyLogger;

impl log::Log for EnvoyLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        abi::log_enabled(level(metadata.level()))
    }

    fn log(&self, record: &log::Record<'_>) {
        let level = level(record.level());
        if abi::log_enabled(level) {
            abi::log(level, &record.args().to_string());
        }
    }

    fn flush(&self) {}
}

fn level(level: log::Level) -> LogLevel {
    match level {
        log::Level::Error => LogLevel::Error,
        log::Level::Warn => LogLevel::Warn,
        log::Level::Info => LogLevel::Info,
        log::Level::Debug => LogLevel::Debug,
        log::Level::Trace => LogLevel::Trace,
    }
}

/// Reports a panic's place in Envoy's log, never its message (which could
/// carry request data); the barrier in [`abi`] then fails the stream closed.
fn install_hooks() {
    static LOGGER: EnvoyLogger = EnvoyLogger;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
    std::panic::set_hook(Box::new(|info| {
        let place = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        abi::log(
            LogLevel::Error,
            &format!("authstamp: internal error at {place}; the request failed closed (500)"),
        );
    }));
}
