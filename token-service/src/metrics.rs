//! Prometheus counters and the lookup latency histogram, as plain atomics.

use authstamp_protocol::ErrorCode;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const LOOKUP_BUCKETS: [f64; 11] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefreshOutcome {
    Ok,
    Transient,
    Permanent,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant {
    AuthorizationCode,
    RefreshToken,
}

impl Grant {
    pub fn as_str(self) -> &'static str {
        match self {
            Grant::AuthorizationCode => "authorization_code",
            Grant::RefreshToken => "refresh_token",
        }
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    lookups_ok: AtomicU64,
    lookups_err: [AtomicU64; ErrorCode::ALL.len()],
    refreshes: [AtomicU64; 3],
    provider_calls: [AtomicU64; 2],
    lookup_buckets: [AtomicU64; LOOKUP_BUCKETS.len()],
    lookup_count: AtomicU64,
    lookup_sum_micros: AtomicU64,
}

fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    pub fn lookup(&self, outcome: Result<(), ErrorCode>, elapsed: Duration) {
        match outcome {
            Ok(()) => inc(&self.lookups_ok),
            Err(code) => {
                if let Some(i) = ErrorCode::ALL.iter().position(|c| *c == code) {
                    inc(&self.lookups_err[i]);
                }
            }
        }
        let secs = elapsed.as_secs_f64();
        for (bucket, bound) in self.lookup_buckets.iter().zip(LOOKUP_BUCKETS) {
            if secs <= bound {
                inc(bucket);
            }
        }
        inc(&self.lookup_count);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.lookup_sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub fn refresh(&self, outcome: RefreshOutcome) {
        inc(&self.refreshes[outcome as usize]);
    }

    pub fn provider_call(&self, grant: Grant) {
        inc(&self.provider_calls[grant as usize]);
    }

    pub fn provider_calls(&self, grant: Grant) -> u64 {
        self.provider_calls[grant as usize].load(Ordering::Relaxed)
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::with_capacity(2048);
        out.push_str(
            "# HELP authstamp_token_lookups_total Token lookups by outcome (ok or error code).\n",
        );
        out.push_str("# TYPE authstamp_token_lookups_total counter\n");
        let _ = writeln!(
            out,
            "authstamp_token_lookups_total{{outcome=\"ok\"}} {}",
            load(&self.lookups_ok)
        );
        for (code, counter) in ErrorCode::ALL.iter().zip(&self.lookups_err) {
            let _ = writeln!(
                out,
                "authstamp_token_lookups_total{{outcome=\"{}\"}} {}",
                code.as_str(),
                load(counter)
            );
        }
        out.push_str(
            "# HELP authstamp_refreshes_total Refresh attempts at providers by outcome.\n",
        );
        out.push_str("# TYPE authstamp_refreshes_total counter\n");
        for (name, outcome) in [
            ("ok", RefreshOutcome::Ok),
            ("transient", RefreshOutcome::Transient),
            ("permanent", RefreshOutcome::Permanent),
        ] {
            let _ = writeln!(
                out,
                "authstamp_refreshes_total{{outcome=\"{name}\"}} {}",
                load(&self.refreshes[outcome as usize])
            );
        }
        out.push_str("# HELP authstamp_provider_token_calls_total Calls to provider token endpoints by grant.\n");
        out.push_str("# TYPE authstamp_provider_token_calls_total counter\n");
        for grant in [Grant::AuthorizationCode, Grant::RefreshToken] {
            let _ = writeln!(
                out,
                "authstamp_provider_token_calls_total{{grant=\"{}\"}} {}",
                grant.as_str(),
                self.provider_calls(grant)
            );
        }
        out.push_str("# HELP authstamp_token_lookup_seconds Token lookup latency.\n");
        out.push_str("# TYPE authstamp_token_lookup_seconds histogram\n");
        for (bucket, bound) in self.lookup_buckets.iter().zip(LOOKUP_BUCKETS) {
            let _ = writeln!(
                out,
                "authstamp_token_lookup_seconds_bucket{{le=\"{bound}\"}} {}",
                load(bucket)
            );
        }
        let count = load(&self.lookup_count);
        let _ = writeln!(
            out,
            "authstamp_token_lookup_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        // Micro-second sum as seconds, without float accumulation.
        let sum = load(&self.lookup_sum_micros);
        let _ = writeln!(
            out,
            "authstamp_token_lookup_seconds_sum {}.{:06}",
            sum / 1_000_000,
            sum % 1_000_000
        );
        let _ = writeln!(out, "authstamp_token_lookup_seconds_count {count}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_a_cumulative_histogram() {
        let m = Metrics::default();
        m.lookup(Ok(()), Duration::from_millis(3));
        m.lookup(Err(ErrorCode::NotConnected), Duration::from_millis(30));
        m.refresh(RefreshOutcome::Transient);
        m.provider_call(Grant::RefreshToken);
        let text = m.render();
        assert!(text.contains("authstamp_token_lookups_total{outcome=\"ok\"} 1\n"));
        assert!(text.contains("authstamp_token_lookups_total{outcome=\"not_connected\"} 1\n"));
        assert!(text.contains("authstamp_refreshes_total{outcome=\"transient\"} 1\n"));
        assert!(text.contains("authstamp_refreshes_total{outcome=\"ok\"} 0\n"));
        assert!(text.contains("authstamp_provider_token_calls_total{grant=\"refresh_token\"} 1\n"));
        assert!(text.contains("authstamp_token_lookup_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("authstamp_token_lookup_seconds_bucket{le=\"0.05\"} 2\n"));
        assert!(text.contains("authstamp_token_lookup_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("authstamp_token_lookup_seconds_sum 0.033000\n"));
        assert!(text.contains("authstamp_token_lookup_seconds_count 2\n"));
    }
}
