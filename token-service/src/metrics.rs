//! Prometheus counters and the lookup latency histogram, as plain atomics.

use authstamp_protocol::ErrorCode;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::store::connections::StatusCounts;

const LOOKUP_BUCKETS: [f64; 11] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Seconds from a connection's first transient refresh failure to its next success.
const RECOVER_BUCKETS: [f64; 10] = [1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefreshOutcome {
    Ok,
    Transient,
    Permanent,
    /// The provider refused an old refresh token after another refresh had
    /// rotated it: the newer tokens were served, the connection stays.
    Superseded,
}

const REFRESH_OUTCOMES: [(&str, RefreshOutcome); 4] = [
    ("ok", RefreshOutcome::Ok),
    ("transient", RefreshOutcome::Transient),
    ("permanent", RefreshOutcome::Permanent),
    ("superseded", RefreshOutcome::Superseded),
];

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

/// The gauge of when the active vault key version was activated (unix
/// seconds; alert on its age), or nothing when the database did not answer.
pub fn render_active_key(active: Option<(u32, i64)>) -> String {
    let Some((version, activated_at)) = active else {
        return String::new();
    };
    format!(
        "# HELP authstamp_vault_active_key_activated_seconds Unix time the active vault key version was activated.\n\
         # TYPE authstamp_vault_active_key_activated_seconds gauge\n\
         authstamp_vault_active_key_activated_seconds{{version=\"{version}\"}} {activated_at}\n"
    )
}

#[derive(Debug, Default)]
pub struct Metrics {
    lookups_ok: AtomicU64,
    lookups_err: [AtomicU64; ErrorCode::ALL.len()],
    refreshes: [AtomicU64; 4],
    background_refreshes: AtomicU64,
    background_runs: AtomicU64,
    background_leader: AtomicU64,
    cooldown_skips: AtomicU64,
    lease_waits: AtomicU64,
    lease_wait_micros: AtomicU64,
    lease_takeovers: AtomicU64,
    lease_lost: AtomicU64,
    served_during_refresh: AtomicU64,
    provider_probes: AtomicU64,
    recoveries: AtomicU64,
    stores_retried: AtomicU64,
    journalled: AtomicU64,
    lookups_retried: AtomicU64,
    journal_replayed: AtomicU64,
    journal_stored: AtomicU64,
    journal_superseded: AtomicU64,
    recover_buckets: [AtomicU64; RECOVER_BUCKETS.len()],
    recover_count: AtomicU64,
    recover_sum_millis: AtomicU64,
    forced_refreshes: AtomicU64,
    forced_refreshes_refused: AtomicU64,
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

    pub fn background_refresh(&self) {
        inc(&self.background_refreshes);
    }

    pub fn background_run(&self) {
        inc(&self.background_runs);
    }

    pub fn set_background_leader(&self, leader: bool) {
        self.background_leader
            .store(u64::from(leader), Ordering::Relaxed);
    }

    pub fn cooldown_skip(&self) {
        inc(&self.cooldown_skips);
    }

    /// A caller waited for another holder's refresh lease.
    pub fn lease_wait(&self, waited: Duration) {
        inc(&self.lease_waits);
        let micros = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
        self.lease_wait_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// A lease left behind by another holder expired and was taken over.
    pub fn lease_takeover(&self) {
        inc(&self.lease_takeovers);
    }

    /// A lookup's `force_refresh` went to the provider.
    pub fn forced_refresh_done(&self) {
        inc(&self.forced_refreshes);
    }

    /// A lookup's `force_refresh` was answered with the current token: the
    /// last one is younger than the forced-refresh interval.
    pub fn forced_refresh_refused(&self) {
        inc(&self.forced_refreshes_refused);
    }

    /// A refresh finished after its lease had been taken over.
    pub fn lease_lost(&self) {
        inc(&self.lease_lost);
    }

    /// A lookup got the still-valid token because the refresh took longer
    /// than a valid token may wait.
    pub fn served_during_refresh(&self) {
        inc(&self.served_during_refresh);
    }

    /// A refresh went to a provider whose connections cool down (a probe).
    pub fn provider_probe(&self) {
        inc(&self.provider_probes);
    }

    /// A refresh succeeded after failures.
    pub fn recovered(&self) {
        inc(&self.recoveries);
    }

    /// Refreshed tokens were written only after the database came back.
    pub fn store_retried(&self) {
        inc(&self.stores_retried);
    }

    /// A lookup failed fast on storage (a connection the server ended) and is retried.
    pub fn lookup_retried(&self) {
        inc(&self.lookups_retried);
    }

    /// Issued tokens the database could not take were journalled.
    pub fn journalled(&self) {
        inc(&self.journalled);
    }

    /// Entries left by a previous process were replayed at start.
    pub fn journal_replayed(&self, n: usize) {
        self.journal_replayed
            .fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// A journal entry was settled: written (`stored`), or dropped for newer tokens.
    pub fn journal_stored(&self, stored: bool) {
        inc(if stored {
            &self.journal_stored
        } else {
            &self.journal_superseded
        });
    }

    /// A connection refreshed again `failing_for` after its first transient failure.
    pub fn time_to_recover(&self, failing_for: Duration) {
        let secs = failing_for.as_secs_f64();
        for (bucket, bound) in self.recover_buckets.iter().zip(RECOVER_BUCKETS) {
            if secs <= bound {
                inc(bucket);
            }
        }
        inc(&self.recover_count);
        let millis = u64::try_from(failing_for.as_millis()).unwrap_or(u64::MAX);
        self.recover_sum_millis.fetch_add(millis, Ordering::Relaxed);
    }

    pub fn refreshes(&self, outcome: RefreshOutcome) -> u64 {
        self.refreshes[outcome as usize].load(Ordering::Relaxed)
    }

    pub fn provider_call(&self, grant: Grant) {
        inc(&self.provider_calls[grant as usize]);
    }

    pub fn provider_calls(&self, grant: Grant) -> u64 {
        self.provider_calls[grant as usize].load(Ordering::Relaxed)
    }

    /// Prometheus text exposition format 0.0.4; `connections` when the
    /// database answered.
    pub fn render(&self, connections: Option<StatusCounts>) -> String {
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
        for (name, outcome) in REFRESH_OUTCOMES {
            let _ = writeln!(
                out,
                "authstamp_refreshes_total{{outcome=\"{name}\"}} {}",
                load(&self.refreshes[outcome as usize])
            );
        }
        let counters: [(&str, &str, &AtomicU64); 17] = [
            (
                "authstamp_token_lookups_retried_total",
                "Lookup retries on the next database connection after a fast storage failure (a connection the server ended).",
                &self.lookups_retried,
            ),
            (
                "authstamp_token_journal_appends_total",
                "Issued tokens (of a refresh or a code exchange) journalled (sealed, fsynced) because the database could not take them.",
                &self.journalled,
            ),
            (
                "authstamp_token_journal_replayed_total",
                "Journal entries a previous process left, replayed at start.",
                &self.journal_replayed,
            ),
            (
                "authstamp_token_journal_stored_total",
                "Journal entries written to the database.",
                &self.journal_stored,
            ),
            (
                "authstamp_token_journal_superseded_total",
                "Journal entries dropped because the database already held newer tokens.",
                &self.journal_superseded,
            ),
            (
                "authstamp_background_refreshes_total",
                "Refresh attempts started by the background refresher (also in authstamp_refreshes_total).",
                &self.background_refreshes,
            ),
            (
                "authstamp_background_runs_total",
                "Background refresher passes run by this replica as the leader.",
                &self.background_runs,
            ),
            (
                "authstamp_refresh_cooldown_skips_total",
                "Refreshes not attempted because the connection is cooling down after a failure.",
                &self.cooldown_skips,
            ),
            (
                "authstamp_refresh_lease_waits_total",
                "Lookups that waited for a refresh lease held by another request or replica.",
                &self.lease_waits,
            ),
            (
                "authstamp_refresh_lease_takeovers_total",
                "Refresh leases taken over after their holder let them expire (e.g. it died).",
                &self.lease_takeovers,
            ),
            (
                "authstamp_refresh_lease_lost_total",
                "Refreshes that finished after their lease had expired.",
                &self.lease_lost,
            ),
            (
                "authstamp_served_during_refresh_total",
                "Lookups served the still-valid token while its refresh took longer than 250 ms.",
                &self.served_during_refresh,
            ),
            (
                "authstamp_provider_probes_total",
                "Refreshes sent during a cooldown to learn whether the provider is back (one per provider per 500 ms).",
                &self.provider_probes,
            ),
            (
                "authstamp_refresh_recoveries_total",
                "Refreshes that succeeded after failures; each ends its provider's cooldowns.",
                &self.recoveries,
            ),
            (
                "authstamp_refresh_stores_retried_total",
                "Refreshes whose new tokens were written only after the database came back.",
                &self.stores_retried,
            ),
            (
                "authstamp_forced_refreshes_total",
                "Refreshes forced by a lookup's force_refresh (a provider 401) that went to the provider.",
                &self.forced_refreshes,
            ),
            (
                "authstamp_forced_refresh_refused_total",
                "Forced refreshes refused within --forced-refresh-interval: the current token was served.",
                &self.forced_refreshes_refused,
            ),
        ];
        for (name, help, counter) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                load(counter)
            );
        }
        let wait = load(&self.lease_wait_micros);
        let _ = writeln!(
            out,
            "# HELP authstamp_refresh_lease_wait_seconds_total Time spent waiting for refresh leases.\n\
             # TYPE authstamp_refresh_lease_wait_seconds_total counter\n\
             authstamp_refresh_lease_wait_seconds_total {}.{:06}",
            wait / 1_000_000,
            wait % 1_000_000
        );
        let _ = writeln!(
            out,
            "# HELP authstamp_background_leader 1 while this replica runs the background refresher.\n\
             # TYPE authstamp_background_leader gauge\n\
             authstamp_background_leader {}",
            load(&self.background_leader)
        );
        if let Some(c) = connections {
            out.push_str("# HELP authstamp_connections Stored connections by status (failing: active, last refresh failed).\n");
            out.push_str("# TYPE authstamp_connections gauge\n");
            for (status, n) in [
                ("active", c.active),
                ("reauth_required", c.reauth_required),
                ("failing", c.failing),
            ] {
                let _ = writeln!(out, "authstamp_connections{{status=\"{status}\"}} {n}");
            }
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
        out.push_str("# HELP authstamp_refresh_time_to_recover_seconds Time from a connection's first transient refresh failure to its next success.\n");
        out.push_str("# TYPE authstamp_refresh_time_to_recover_seconds histogram\n");
        for (bucket, bound) in self.recover_buckets.iter().zip(RECOVER_BUCKETS) {
            let _ = writeln!(
                out,
                "authstamp_refresh_time_to_recover_seconds_bucket{{le=\"{bound}\"}} {}",
                load(bucket)
            );
        }
        let recovered = load(&self.recover_count);
        let sum = load(&self.recover_sum_millis);
        let _ = writeln!(
            out,
            "authstamp_refresh_time_to_recover_seconds_bucket{{le=\"+Inf\"}} {recovered}\n\
             authstamp_refresh_time_to_recover_seconds_sum {}.{:03}\n\
             authstamp_refresh_time_to_recover_seconds_count {recovered}",
            sum / 1000,
            sum % 1000
        );
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
        m.lease_wait(Duration::from_millis(1500));
        m.time_to_recover(Duration::from_millis(1500));
        m.time_to_recover(Duration::from_secs(40));
        let text = m.render(Some(StatusCounts {
            active: 3,
            reauth_required: 1,
            failing: 2,
        }));
        assert!(
            text.contains("authstamp_refresh_lease_waits_total 1\n"),
            "{text}"
        );
        assert!(text.contains("authstamp_refresh_lease_wait_seconds_total 1.500000\n"));
        assert!(text.contains("authstamp_connections{status=\"reauth_required\"} 1\n"));
        assert!(text.contains("authstamp_connections{status=\"failing\"} 2\n"));
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
        assert!(text.contains("authstamp_refresh_time_to_recover_seconds_bucket{le=\"1\"} 0\n"));
        assert!(text.contains("authstamp_refresh_time_to_recover_seconds_bucket{le=\"2\"} 1\n"));
        assert!(text.contains("authstamp_refresh_time_to_recover_seconds_bucket{le=\"60\"} 2\n"));
        assert!(text.contains("authstamp_refresh_time_to_recover_seconds_sum 41.500\n"));
        assert!(text.contains("authstamp_refresh_time_to_recover_seconds_count 2\n"));
    }
}
