//! Per-app rate limits: a `governor` rate limiter (GCRA) keyed by app id in
//! this process's memory, so the limits hold per replica (N replicas behind
//! one address allow up to N times the rate). A rate `count/period` allows a
//! burst of `count` requests and one more every `period / count`, as a token
//! bucket of `count` refilled at `count / period` does; past it, 429
//! `rate_limited` with `Retry-After`.

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Keys kept before idle ones (whose state equals a fresh key's) are dropped.
const MAX_KEYS: usize = 100_000;
/// How many checks pass between two looks at the key count (a look visits
/// every shard of the map, too dear for every request).
const PRUNE_EVERY: u32 = 4096;

/// `COUNT/PERIOD` (`10000/s`, `60/m`, `1000/h`) or `0`/`off`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub count: u32,
    pub period: Duration,
}

impl Rate {
    pub const fn per_second(count: u32) -> Self {
        Self {
            count,
            period: Duration::from_secs(1),
        }
    }

    pub const fn per_minute(count: u32) -> Self {
        Self {
            count,
            period: Duration::from_secs(60),
        }
    }

    pub fn is_off(&self) -> bool {
        self.count == 0
    }
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text == "0" || text.eq_ignore_ascii_case("off") {
            return Ok(Self::per_second(0));
        }
        let bad = || format!("{text:?}: expected COUNT/s, COUNT/m, COUNT/h or off");
        let (count, unit) = text.split_once('/').ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        let period = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        Ok(Self { count, period })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_off() {
            return f.write_str("off");
        }
        let unit = match self.period.as_secs() {
            1 => "s",
            60 => "m",
            _ => "h",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

/// The limits of one service.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimits {
    /// `POST /v1/token-lookup` per app.
    pub lookups: Rate,
    /// `POST /v1/connect-sessions` per app.
    pub connect_sessions: Rate,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            lookups: Rate::per_second(10_000),
            connect_sessions: Rate::per_minute(600),
        }
    }
}

impl RateLimits {
    pub fn off() -> Self {
        Self {
            lookups: Rate::per_second(0),
            connect_sessions: Rate::per_second(0),
        }
    }
}

type KeyedLimiter<C> =
    RateLimiter<String, DashMapStateStore<String>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// The quota of a rate; `None` when the rate is off.
fn quota(rate: Rate) -> Option<Quota> {
    let burst = NonZeroU32::new(rate.count)?;
    // Rates above one per nanosecond round to one per nanosecond.
    let interval = (rate.period / rate.count).max(Duration::from_nanos(1));
    Some(Quota::with_period(interval)?.allow_burst(burst))
}

/// One rate limit by key (the app id).
pub struct Limiter<C: Clock = DefaultClock> {
    rate: Rate,
    /// `None`: the rate is off.
    limiter: Option<KeyedLimiter<C>>,
    checks: AtomicU32,
}

impl<C: Clock> fmt::Debug for Limiter<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limiter")
            .field("rate", &self.rate.to_string())
            .finish_non_exhaustive()
    }
}

impl Limiter {
    pub fn new(rate: Rate) -> Self {
        Self::with_clock(rate, DefaultClock::default())
    }
}

impl<C: Clock> Limiter<C> {
    pub fn with_clock(rate: Rate, clock: C) -> Self {
        Self {
            rate,
            limiter: quota(rate).map(|q| RateLimiter::dashmap_with_clock(q, clock)),
            checks: AtomicU32::new(0),
        }
    }

    /// Counts one request of `key`; `Err(wait)` when it is over the rate.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        if self.checks.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == 0
            && limiter.len() >= MAX_KEYS
        {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        limiter
            .check_key(&key.to_owned())
            .map_err(|not_until| not_until.wait_time_from(limiter.clock().now()))
    }
}

/// Credentials a connect link may submit: a link is no oracle for guessing
/// keys at the provider.
pub const KEY_SUBMISSIONS: Rate = Rate {
    count: 5,
    period: Duration::from_secs(60),
};

/// The limiters of a service.
#[derive(Debug)]
pub struct Limiters {
    pub lookups: Limiter,
    pub connect_sessions: Limiter,
    /// Credentials submitted on a connect page, per connect link.
    pub key_submissions: Limiter,
}

impl Limiters {
    pub fn new(limits: RateLimits) -> Self {
        Self {
            lookups: Limiter::new(limits.lookups),
            connect_sessions: Limiter::new(limits.connect_sessions),
            key_submissions: Limiter::new(KEY_SUBMISSIONS),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    #[test]
    fn rates_parse_and_print() {
        assert_eq!("10000/s".parse::<Rate>(), Ok(Rate::per_second(10_000)));
        assert_eq!(" 60/m ".parse::<Rate>(), Ok(Rate::per_minute(60)));
        assert_eq!(
            "3/h".parse::<Rate>().unwrap().period,
            Duration::from_secs(3600)
        );
        assert!("off".parse::<Rate>().unwrap().is_off());
        assert!("0".parse::<Rate>().unwrap().is_off());
        for bad in ["", "10", "10/d", "x/s", "-1/s", "1/"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
        assert_eq!(Rate::per_minute(60).to_string(), "60/m");
    }

    #[test]
    fn a_bucket_allows_its_burst_then_refills_at_the_rate() {
        let clock = FakeRelativeClock::default();
        let limiter = Limiter::with_clock(Rate::per_second(5), clock.clone());
        for _ in 0..5 {
            assert!(limiter.check("app_a").is_ok());
        }
        let wait = limiter.check("app_a").unwrap_err();
        assert!(
            wait > Duration::from_millis(150) && wait <= Duration::from_millis(200),
            "{wait:?}"
        );
        // Another app has its own bucket.
        assert!(limiter.check("app_b").is_ok());
        // 200 ms later, one more.
        clock.advance(Duration::from_millis(200));
        assert!(limiter.check("app_a").is_ok());
        assert!(limiter.check("app_a").is_err());
        // Never more than the burst after a long pause.
        clock.advance(Duration::from_secs(3600));
        for _ in 0..5 {
            assert!(limiter.check("app_a").is_ok());
        }
        assert!(limiter.check("app_a").is_err());
    }

    #[test]
    fn per_minute_and_per_hour_rates_refill_over_their_period() {
        let clock = FakeRelativeClock::default();
        let limiter = Limiter::with_clock("3/h".parse().unwrap(), clock.clone());
        for _ in 0..3 {
            assert!(limiter.check("a").is_ok());
        }
        let wait = limiter.check("a").unwrap_err();
        assert_eq!(wait, Duration::from_secs(1200));
        clock.advance(Duration::from_secs(1199));
        assert!(limiter.check("a").is_err());
        clock.advance(Duration::from_secs(1));
        assert!(limiter.check("a").is_ok());
    }

    #[test]
    fn idle_keys_are_dropped_once_there_are_too_many() {
        let clock = FakeRelativeClock::default();
        let limiter = Limiter::with_clock(Rate::per_second(1), clock.clone());
        let keys = |l: &Limiter<FakeRelativeClock>| l.limiter.as_ref().map_or(0, |l| l.len());
        for i in 0..MAX_KEYS {
            assert!(limiter.check(&format!("app_{i}")).is_ok());
        }
        assert_eq!(keys(&limiter), MAX_KEYS);
        // An hour later those buckets are full again; one key is in use.
        clock.advance(Duration::from_secs(3600));
        assert!(limiter.check("busy").is_ok());
        // Within PRUNE_EVERY checks the key count is looked at: the full
        // buckets go, the one in use stays (and stays limited).
        for _ in 0..PRUNE_EVERY {
            assert!(limiter.check("busy").is_err());
        }
        assert_eq!(keys(&limiter), 1);
    }

    #[test]
    fn off_never_limits() {
        let limiter = Limiter::new(Rate::per_second(0));
        for _ in 0..10_000 {
            assert!(limiter.check("a").is_ok());
        }
    }
}
