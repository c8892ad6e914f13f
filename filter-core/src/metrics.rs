//! The filter's metrics, defined through proxy-wasm (`proxy_define_metric`)
//! so that Envoy keeps them as ordinary stats. Envoy puts them in its
//! `wasmcustom` namespace and prints them at `/stats/prometheus` under exactly
//! the names below (no `envoy_` prefix); every worker's VM defines the same
//! names and so adds to the same stats.
//!
//! A metric the host refuses to define is simply not counted: metrics never
//! fail a request.
//!
//! The two counters of every cache hit (hits, stamped) are added up in the
//! VM and handed to Envoy every [`FLUSH_EVERY`] hits and on the root
//! context's tick (at least every second): a host call costs about a
//! microsecond, more than the rest of a hit's bookkeeping. Everything else
//! is counted at once.

use std::cell::Cell;

use authstamp_protocol::ErrorCode;

use crate::host::{Host, MetricKind};

/// Requests served from the token cache.
pub const CACHE_HITS: &str = "authstamp_cache_hits_total";
/// Marked, valid requests not served from the cache.
pub const CACHE_MISSES: &str = "authstamp_cache_misses_total";
/// Misses that waited for a lookup already in flight (in this worker or,
/// through the shared-data marker, in another) instead of making their own.
pub const COALESCED: &str = "authstamp_coalesced_total";
/// Requests stamped and sent on to their provider.
pub const STAMPED: &str = "authstamp_stamped_total";
/// HTTP calls made to the token service (lookups and forced refreshes).
pub const TOKEN_SERVICE_CALLS: &str = "authstamp_token_service_calls_total";
/// Provider answers 401 to a stamped request.
pub const PROVIDER_UNAUTHORIZED: &str = "authstamp_provider_unauthorized_total";
/// Forced refreshes asked of the token service after a provider 401.
pub const FORCED_REFRESHES: &str = "authstamp_forced_refreshes_total";
/// Retries after a provider 401 sent with a refreshed token.
pub const HEALED_RETRIES: &str = "authstamp_healed_retries_total";
/// Provider 401s to stamped requests that reached the app.
pub const UNHEALED: &str = "authstamp_unhealed_unauthorized_total";
/// Forced refreshes not asked for: the connection had one within
/// `forced_refresh_interval`.
pub const FORCED_REFUSED: &str = "authstamp_forced_refreshes_refused_total";
/// Cache slots created in shared data (each holds at most one entry); never
/// above `cache_capacity`.
pub const CACHE_SLOTS: &str = "authstamp_cache_slots";
/// Requests stamped with a cached token past its cache validity but still
/// valid at the provider, because the token service failed (stale-if-error).
pub const STALE_SERVED: &str = "authstamp_stale_served_total";
/// Latency of token-service calls in microseconds, from dispatch to answer
/// (or timeout).
pub const TOKEN_FETCH_US: &str = "authstamp_token_fetch_us";

/// The name of the counter of local replies with `code`:
/// `authstamp_errors_<code>_total`.
pub fn error_name(code: ErrorCode) -> String {
    format!("authstamp_errors_{}_total", code.as_str())
}

/// Hits counted in the VM before they are handed to Envoy.
pub const FLUSH_EVERY: u32 = 64;

/// The metric ids of one root context, and the hits not yet handed over.
#[derive(Debug, Default)]
pub struct Metrics {
    pending_hits: Cell<u32>,
    pending_stamped: Cell<u32>,
    hits: Option<u32>,
    misses: Option<u32>,
    coalesced: Option<u32>,
    stamped: Option<u32>,
    calls: Option<u32>,
    unauthorized: Option<u32>,
    forced: Option<u32>,
    healed: Option<u32>,
    unhealed: Option<u32>,
    forced_refused: Option<u32>,
    slots: Option<u32>,
    stale: Option<u32>,
    fetch_us: Option<u32>,
    errors: [Option<u32>; ErrorCode::ALL.len()],
}

impl Metrics {
    /// Defines every metric; call once per root context.
    pub fn define(host: &dyn Host) -> Metrics {
        let counter = |name: &str| host.define_metric(MetricKind::Counter, name);
        let mut errors = [None; ErrorCode::ALL.len()];
        for (slot, code) in errors.iter_mut().zip(ErrorCode::ALL) {
            *slot = counter(&error_name(code));
        }
        Metrics {
            pending_hits: Cell::new(0),
            pending_stamped: Cell::new(0),
            hits: counter(CACHE_HITS),
            misses: counter(CACHE_MISSES),
            coalesced: counter(COALESCED),
            stamped: counter(STAMPED),
            calls: counter(TOKEN_SERVICE_CALLS),
            unauthorized: counter(PROVIDER_UNAUTHORIZED),
            forced: counter(FORCED_REFRESHES),
            healed: counter(HEALED_RETRIES),
            unhealed: counter(UNHEALED),
            forced_refused: counter(FORCED_REFUSED),
            slots: host.define_metric(MetricKind::Gauge, CACHE_SLOTS),
            stale: counter(STALE_SERVED),
            fetch_us: host.define_metric(MetricKind::Histogram, TOKEN_FETCH_US),
            errors,
        }
    }

    fn inc(host: &dyn Host, id: Option<u32>) {
        if let Some(id) = id {
            host.increment_metric(id, 1);
        }
    }

    /// A cache hit, stamped: counted here, handed over in batches.
    pub fn hit_stamped(&self, host: &dyn Host) {
        let hits = self.pending_hits.get() + 1;
        self.pending_hits.set(hits);
        self.pending_stamped.set(self.pending_stamped.get() + 1);
        if hits >= FLUSH_EVERY {
            self.flush(host);
        }
    }

    /// Hands the counted hits to Envoy.
    pub fn flush(&self, host: &dyn Host) {
        for (pending, id) in [
            (&self.pending_hits, self.hits),
            (&self.pending_stamped, self.stamped),
        ] {
            let n = pending.replace(0);
            if n > 0 {
                if let Some(id) = id {
                    host.increment_metric(id, i64::from(n));
                }
            }
        }
    }

    pub fn hit(&self, host: &dyn Host) {
        Self::inc(host, self.hits);
    }

    pub fn miss(&self, host: &dyn Host) {
        Self::inc(host, self.misses);
    }

    pub fn coalesced(&self, host: &dyn Host) {
        Self::inc(host, self.coalesced);
    }

    pub fn stamped(&self, host: &dyn Host) {
        Self::inc(host, self.stamped);
    }

    pub fn call(&self, host: &dyn Host) {
        Self::inc(host, self.calls);
    }

    pub fn unauthorized(&self, host: &dyn Host) {
        Self::inc(host, self.unauthorized);
    }

    pub fn forced_refresh(&self, host: &dyn Host) {
        Self::inc(host, self.forced);
    }

    pub fn healed(&self, host: &dyn Host) {
        Self::inc(host, self.healed);
    }

    pub fn unhealed(&self, host: &dyn Host) {
        Self::inc(host, self.unhealed);
    }

    pub fn forced_refused(&self, host: &dyn Host) {
        Self::inc(host, self.forced_refused);
    }

    pub fn stale_served(&self, host: &dyn Host, requests: usize) {
        if let (Some(id), Ok(delta)) = (self.stale, i64::try_from(requests)) {
            host.increment_metric(id, delta);
        }
    }

    pub fn slot_created(&self, host: &dyn Host) {
        Self::inc(host, self.slots);
    }

    pub fn error(&self, host: &dyn Host, code: ErrorCode) {
        if let Some(i) = ErrorCode::ALL.iter().position(|c| *c == code) {
            Self::inc(host, self.errors[i]);
        }
    }

    pub fn fetch_latency(&self, host: &dyn Host, micros: u64) {
        if let Some(id) = self.fetch_us {
            host.record_metric(id, micros);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::mock::MockHost;

    #[test]
    fn every_metric_is_defined_once_with_its_kind() {
        let host = MockHost::new(1);
        let metrics = Metrics::define(&host);
        let names = host.metric_names();
        assert_eq!(names.len(), 13 + ErrorCode::ALL.len());
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        for name in &names {
            assert!(name.starts_with("authstamp_"), "{name}");
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{name} is not a plain Prometheus name"
            );
        }
        metrics.hit(&host);
        metrics.hit(&host);
        for _ in 0..FLUSH_EVERY - 1 {
            metrics.hit_stamped(&host);
        }
        assert_eq!(host.metric(CACHE_HITS), 2, "held in the VM");
        metrics.hit_stamped(&host);
        assert_eq!(host.metric(CACHE_HITS), 2 + i64::from(FLUSH_EVERY));
        assert_eq!(host.metric(STAMPED), i64::from(FLUSH_EVERY));
        metrics.hit_stamped(&host);
        metrics.flush(&host);
        metrics.flush(&host);
        assert_eq!(host.metric(STAMPED), i64::from(FLUSH_EVERY) + 1);
        metrics.error(&host, ErrorCode::NotConnected);
        metrics.fetch_latency(&host, 1500);
        metrics.slot_created(&host);
        metrics.stale_served(&host, 3);
        assert_eq!(host.metric(STALE_SERVED), 3);
        assert_eq!(host.metric(CACHE_HITS), 3 + i64::from(FLUSH_EVERY));
        assert_eq!(host.metric("authstamp_errors_not_connected_total"), 1);
        assert_eq!(host.metric("authstamp_errors_internal_total"), 0);
        assert_eq!(host.samples(TOKEN_FETCH_US), vec![1500]);
        assert_eq!(host.metric(CACHE_SLOTS), 1);
    }

    #[test]
    fn undefined_metrics_are_not_counted() {
        let host = MockHost::new(1);
        let metrics = Metrics::default();
        metrics.hit(&host);
        metrics.fetch_latency(&host, 1);
        metrics.error(&host, ErrorCode::Internal);
        assert!(host.metric_names().is_empty());
    }
}
