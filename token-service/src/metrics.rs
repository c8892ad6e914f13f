//! Prometheus metrics through `prometheus-client`: counters and histograms
//! registered once, the database-derived gauges added at each scrape.
//!
//! The exposition is OpenMetrics text (`# EOF` at the end; a counter's
//! `# TYPE`/`# HELP` name its family without the `_total` its samples carry).

use authstamp_protocol::ErrorCode;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use crate::store::connections::StatusCounts;

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

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

/// One label, e.g. `[("outcome", "ok")]`.
type Label = [(&'static str, &'static str); 1];

/// Registers `metric` as `name` (the exposed name: a counter's `_total` is
/// added back by the encoder) with `help` (the encoder adds the final period).
fn register(registry: &mut Registry, name: &str, help: &str, metric: impl Metric) {
    let family = name.strip_suffix("_total").unwrap_or(name);
    registry.register(family, help.strip_suffix('.').unwrap_or(help), metric);
}

/// A counter family with one child per value of `key`, created up front so
/// that every value is exported (at 0 too) and the hot path never looks a
/// label up.
fn labelled_counters<const N: usize>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    key: &'static str,
    values: [&'static str; N],
) -> [Counter; N] {
    let family = Family::<Label, Counter>::default();
    let children = values.map(|value| family.get_or_create(&[(key, value)]).clone());
    register(registry, name, help, family);
    children
}

fn counter(registry: &mut Registry, name: &str, help: &str) -> Counter {
    let counter = Counter::default();
    register(registry, name, help, counter.clone());
    counter
}

fn histogram(registry: &mut Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let histogram = Histogram::new(buckets.iter().copied());
    register(registry, name, help, histogram.clone());
    histogram
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    lookups_ok: Counter,
    lookups_err: [Counter; ErrorCode::ALL.len()],
    refreshes: [Counter; REFRESH_OUTCOMES.len()],
    lookups_retried: Counter,
    journalled: Counter,
    journal_replayed: Counter,
    journal_stored: Counter,
    journal_superseded: Counter,
    background_refreshes: Counter,
    background_runs: Counter,
    cooldown_skips: Counter,
    lease_waits: Counter,
    lease_takeovers: Counter,
    lease_lost: Counter,
    served_during_refresh: Counter,
    provider_probes: Counter,
    recoveries: Counter,
    stores_retried: Counter,
    forced_refreshes: Counter,
    forced_refreshes_refused: Counter,
    lease_wait_seconds: Counter<f64, AtomicU64>,
    background_leader: Gauge,
    provider_calls: [Counter; 2],
    time_to_recover: Histogram,
    lookup_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut r = Registry::default();
        let [lookups_ok, lookups_err @ ..] = labelled_counters::<{ ErrorCode::ALL.len() + 1 }>(
            &mut r,
            "authstamp_token_lookups_total",
            "Token lookups by outcome (ok or error code).",
            "outcome",
            prepend("ok", ErrorCode::ALL.map(ErrorCode::as_str)),
        );
        let refreshes = labelled_counters(
            &mut r,
            "authstamp_refreshes_total",
            "Refresh attempts at providers by outcome.",
            "outcome",
            REFRESH_OUTCOMES.map(|(name, _)| name),
        );
        let mut c = |name: &str, help: &str| counter(&mut r, name, help);
        let lookups_retried = c(
            "authstamp_token_lookups_retried_total",
            "Lookup retries on the next database connection after a fast storage failure (a connection the server ended).",
        );
        let journalled = c(
            "authstamp_token_journal_appends_total",
            "Issued tokens (of a refresh or a code exchange) journalled (sealed, fsynced) because the database could not take them.",
        );
        let journal_replayed = c(
            "authstamp_token_journal_replayed_total",
            "Journal entries a previous process left, replayed at start.",
        );
        let journal_stored = c(
            "authstamp_token_journal_stored_total",
            "Journal entries written to the database.",
        );
        let journal_superseded = c(
            "authstamp_token_journal_superseded_total",
            "Journal entries dropped because the database already held newer tokens.",
        );
        let background_refreshes = c(
            "authstamp_background_refreshes_total",
            "Refresh attempts started by the background refresher (also in authstamp_refreshes_total).",
        );
        let background_runs = c(
            "authstamp_background_runs_total",
            "Background refresher passes run by this replica as the leader.",
        );
        let cooldown_skips = c(
            "authstamp_refresh_cooldown_skips_total",
            "Refreshes not attempted because the connection is cooling down after a failure.",
        );
        let lease_waits = c(
            "authstamp_refresh_lease_waits_total",
            "Lookups that waited for a refresh lease held by another request or replica.",
        );
        let lease_takeovers = c(
            "authstamp_refresh_lease_takeovers_total",
            "Refresh leases taken over after their holder let them expire (e.g. it died).",
        );
        let lease_lost = c(
            "authstamp_refresh_lease_lost_total",
            "Refreshes that finished after their lease had expired.",
        );
        let served_during_refresh = c(
            "authstamp_served_during_refresh_total",
            "Lookups served the still-valid token while its refresh took longer than 250 ms.",
        );
        let provider_probes = c(
            "authstamp_provider_probes_total",
            "Refreshes sent during a cooldown to learn whether the provider is back (one per provider per 500 ms).",
        );
        let recoveries = c(
            "authstamp_refresh_recoveries_total",
            "Refreshes that succeeded after failures; each ends its provider's cooldowns.",
        );
        let stores_retried = c(
            "authstamp_refresh_stores_retried_total",
            "Refreshes whose new tokens were written only after the database came back.",
        );
        let forced_refreshes = c(
            "authstamp_forced_refreshes_total",
            "Refreshes forced by a lookup's force_refresh (a provider 401) that went to the provider.",
        );
        let forced_refreshes_refused = c(
            "authstamp_forced_refresh_refused_total",
            "Forced refreshes refused within --forced-refresh-interval: the current token was served.",
        );
        let lease_wait_seconds = Counter::<f64, AtomicU64>::default();
        register(
            &mut r,
            "authstamp_refresh_lease_wait_seconds_total",
            "Time spent waiting for refresh leases.",
            lease_wait_seconds.clone(),
        );
        let background_leader = Gauge::default();
        register(
            &mut r,
            "authstamp_background_leader",
            "1 while this replica runs the background refresher.",
            background_leader.clone(),
        );
        let provider_calls = labelled_counters(
            &mut r,
            "authstamp_provider_token_calls_total",
            "Calls to provider token endpoints by grant.",
            "grant",
            [Grant::AuthorizationCode, Grant::RefreshToken].map(Grant::as_str),
        );
        let time_to_recover = histogram(
            &mut r,
            "authstamp_refresh_time_to_recover_seconds",
            "Time from a connection's first transient refresh failure to its next success.",
            &RECOVER_BUCKETS,
        );
        let lookup_seconds = histogram(
            &mut r,
            "authstamp_token_lookup_seconds",
            "Token lookup latency.",
            &LOOKUP_BUCKETS,
        );
        Metrics {
            registry: r,
            lookups_ok,
            lookups_err,
            refreshes,
            lookups_retried,
            journalled,
            journal_replayed,
            journal_stored,
            journal_superseded,
            background_refreshes,
            background_runs,
            cooldown_skips,
            lease_waits,
            lease_takeovers,
            lease_lost,
            served_during_refresh,
            provider_probes,
            recoveries,
            stores_retried,
            forced_refreshes,
            forced_refreshes_refused,
            lease_wait_seconds,
            background_leader,
            provider_calls,
            time_to_recover,
            lookup_seconds,
        }
    }
}

/// `[first, rest...]`.
fn prepend<const N: usize, const M: usize>(
    first: &'static str,
    rest: [&'static str; N],
) -> [&'static str; M] {
    std::array::from_fn(|i| match i {
        0 => first,
        i => rest.get(i - 1).copied().unwrap_or(""),
    })
}

impl Metrics {
    pub fn lookup(&self, outcome: Result<(), ErrorCode>, elapsed: Duration) {
        match outcome {
            Ok(()) => {
                self.lookups_ok.inc();
            }
            Err(code) => {
                if let Some(i) = ErrorCode::ALL.iter().position(|c| *c == code) {
                    self.lookups_err[i].inc();
                }
            }
        }
        self.lookup_seconds.observe(elapsed.as_secs_f64());
    }

    pub fn refresh(&self, outcome: RefreshOutcome) {
        self.refreshes[outcome as usize].inc();
    }

    pub fn background_refresh(&self) {
        self.background_refreshes.inc();
    }

    pub fn background_run(&self) {
        self.background_runs.inc();
    }

    pub fn set_background_leader(&self, leader: bool) {
        self.background_leader.set(i64::from(leader));
    }

    pub fn cooldown_skip(&self) {
        self.cooldown_skips.inc();
    }

    /// A caller waited for another holder's refresh lease.
    pub fn lease_wait(&self, waited: Duration) {
        self.lease_waits.inc();
        self.lease_wait_seconds.inc_by(waited.as_secs_f64());
    }

    /// A lease left behind by another holder expired and was taken over.
    pub fn lease_takeover(&self) {
        self.lease_takeovers.inc();
    }

    /// A lookup's `force_refresh` went to the provider.
    pub fn forced_refresh_done(&self) {
        self.forced_refreshes.inc();
    }

    /// A lookup's `force_refresh` was answered with the current token: the
    /// last one is younger than the forced-refresh interval.
    pub fn forced_refresh_refused(&self) {
        self.forced_refreshes_refused.inc();
    }

    /// A refresh finished after its lease had been taken over.
    pub fn lease_lost(&self) {
        self.lease_lost.inc();
    }

    /// A lookup got the still-valid token because the refresh took longer
    /// than a valid token may wait.
    pub fn served_during_refresh(&self) {
        self.served_during_refresh.inc();
    }

    /// A refresh went to a provider whose connections cool down (a probe).
    pub fn provider_probe(&self) {
        self.provider_probes.inc();
    }

    /// A refresh succeeded after failures.
    pub fn recovered(&self) {
        self.recoveries.inc();
    }

    /// Refreshed tokens were written only after the database came back.
    pub fn store_retried(&self) {
        self.stores_retried.inc();
    }

    /// A lookup failed fast on storage (a connection the server ended) and is retried.
    pub fn lookup_retried(&self) {
        self.lookups_retried.inc();
    }

    /// Issued tokens the database could not take were journalled.
    pub fn journalled(&self) {
        self.journalled.inc();
    }

    /// Entries left by a previous process were replayed at start.
    pub fn journal_replayed(&self, n: usize) {
        self.journal_replayed
            .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
    }

    /// A journal entry was settled: written (`stored`), or dropped for newer tokens.
    pub fn journal_stored(&self, stored: bool) {
        if stored {
            self.journal_stored.inc();
        } else {
            self.journal_superseded.inc();
        }
    }

    /// A connection refreshed again `failing_for` after its first transient failure.
    pub fn time_to_recover(&self, failing_for: Duration) {
        self.time_to_recover.observe(failing_for.as_secs_f64());
    }

    pub fn refreshes(&self, outcome: RefreshOutcome) -> u64 {
        self.refreshes[outcome as usize].get()
    }

    pub fn provider_call(&self, grant: Grant) {
        self.provider_calls[grant as usize].inc();
    }

    pub fn provider_calls(&self, grant: Grant) -> u64 {
        self.provider_calls[grant as usize].get()
    }

    /// The OpenMetrics text of every metric, with the gauges read from the
    /// database at this scrape: `connections` by status, and when the active
    /// vault key version was activated (`(version, unix seconds)`; alert on
    /// its age). Each is left out when the database did not answer.
    pub fn render(
        &self,
        connections: Option<StatusCounts>,
        active_key: Option<(u32, i64)>,
    ) -> String {
        let mut scraped = Registry::default();
        if let Some(c) = connections {
            let family = Family::<Label, Gauge>::default();
            for (status, n) in [
                ("active", c.active),
                ("reauth_required", c.reauth_required),
                ("failing", c.failing),
            ] {
                family.get_or_create(&[("status", status)]).set(n);
            }
            register(
                &mut scraped,
                "authstamp_connections",
                "Stored connections by status (failing: active, last refresh failed).",
                family,
            );
        }
        if let Some((version, activated_at)) = active_key {
            let family = Family::<[(&'static str, String); 1], Gauge>::default();
            family
                .get_or_create(&[("version", version.to_string())])
                .set(activated_at);
            register(
                &mut scraped,
                "authstamp_vault_active_key_activated_seconds",
                "Unix time the active vault key version was activated.",
                family,
            );
        }
        let mut out = String::with_capacity(8192);
        // Writing to a String cannot fail.
        let _ = encode_registry(&mut out, &self.registry)
            .and_then(|()| encode_registry(&mut out, &scraped))
            .and_then(|()| encode_eof(&mut out));
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
        let text = m.render(
            Some(StatusCounts {
                active: 3,
                reauth_required: 1,
                failing: 2,
            }),
            Some((2, 1_700_000_000)),
        );
        for line in [
            "authstamp_refresh_lease_waits_total 1",
            "authstamp_refresh_lease_wait_seconds_total 1.5",
            "authstamp_connections{status=\"reauth_required\"} 1",
            "authstamp_connections{status=\"failing\"} 2",
            "authstamp_token_lookups_total{outcome=\"ok\"} 1",
            "authstamp_token_lookups_total{outcome=\"not_connected\"} 1",
            "authstamp_token_lookups_total{outcome=\"bad_app_key\"} 0",
            "authstamp_refreshes_total{outcome=\"transient\"} 1",
            "authstamp_refreshes_total{outcome=\"ok\"} 0",
            "authstamp_provider_token_calls_total{grant=\"refresh_token\"} 1",
            "authstamp_token_lookup_seconds_bucket{le=\"0.005\"} 1",
            "authstamp_token_lookup_seconds_bucket{le=\"0.05\"} 2",
            "authstamp_token_lookup_seconds_bucket{le=\"+Inf\"} 2",
            "authstamp_token_lookup_seconds_sum 0.033",
            "authstamp_token_lookup_seconds_count 2",
            "authstamp_refresh_time_to_recover_seconds_bucket{le=\"1.0\"} 0",
            "authstamp_refresh_time_to_recover_seconds_bucket{le=\"2.0\"} 1",
            "authstamp_refresh_time_to_recover_seconds_bucket{le=\"60.0\"} 2",
            "authstamp_refresh_time_to_recover_seconds_sum 41.5",
            "authstamp_refresh_time_to_recover_seconds_count 2",
            "authstamp_vault_active_key_activated_seconds{version=\"2\"} 1700000000",
            "# TYPE authstamp_token_lookups counter",
            "# HELP authstamp_token_lookups Token lookups by outcome (ok or error code).",
            "# TYPE authstamp_background_leader gauge",
            "# TYPE authstamp_token_lookup_seconds histogram",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn leaves_out_the_gauges_the_database_did_not_answer() {
        let text = Metrics::default().render(None, None);
        assert!(!text.contains("authstamp_connections"), "{text}");
        assert!(!text.contains("authstamp_vault_active_key"), "{text}");
        assert!(
            text.contains("# TYPE authstamp_refreshes counter\n"),
            "{text}"
        );
    }
}
