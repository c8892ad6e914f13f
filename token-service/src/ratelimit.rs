//! Per-app rate limits: a token bucket per app in this process's memory, so
//! the limits hold per replica (N replicas behind one address allow up to N
//! times the rate). A bucket holds `count` requests and refills at
//! `count / period`; an empty bucket answers 429 `rate_limited` with
//! `Retry-After`.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Buckets kept at most; full, idle ones are dropped first.
const MAX_BUCKETS: usize = 100_000;

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

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets by key (the app id).
pub struct Limiter {
    rate: Rate,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limiter")
            .field("rate", &self.rate.to_string())
            .finish_non_exhaustive()
    }
}

impl Limiter {
    pub fn new(rate: Rate) -> Self {
        Self {
            rate,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `key`'s bucket; `Err(wait)` when it is empty.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        self.check_at(key, Instant::now())
    }

    pub fn check_at(&self, key: &str, now: Instant) -> Result<(), Duration> {
        if self.rate.is_off() {
            return Ok(());
        }
        let capacity = f64::from(self.rate.count);
        let per_sec = capacity / self.rate.period.as_secs_f64();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(key) {
            // Forget buckets that have refilled: they hold no state worth keeping.
            buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * per_sec < capacity
            });
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: capacity,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_sec).min(capacity);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / per_sec))
        }
    }
}

/// Both limiters of a service.
#[derive(Debug)]
pub struct Limiters {
    pub lookups: Limiter,
    pub connect_sessions: Limiter,
}

impl Limiters {
    pub fn new(limits: RateLimits) -> Self {
        Self {
            lookups: Limiter::new(limits.lookups),
            connect_sessions: Limiter::new(limits.connect_sessions),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let limiter = Limiter::new(Rate::per_second(5));
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(limiter.check_at("app_a", t0).is_ok());
        }
        let wait = limiter.check_at("app_a", t0).unwrap_err();
        assert!(
            wait > Duration::from_millis(150) && wait <= Duration::from_millis(200),
            "{wait:?}"
        );
        // Another app has its own bucket.
        assert!(limiter.check_at("app_b", t0).is_ok());
        // 200 ms later, one more.
        let t1 = t0 + Duration::from_millis(200);
        assert!(limiter.check_at("app_a", t1).is_ok());
        assert!(limiter.check_at("app_a", t1).is_err());
        // Never more than the burst after a long pause.
        let t2 = t1 + Duration::from_secs(3600);
        for _ in 0..5 {
            assert!(limiter.check_at("app_a", t2).is_ok());
        }
        assert!(limiter.check_at("app_a", t2).is_err());
    }

    #[test]
    fn off_never_limits() {
        let limiter = Limiter::new(Rate::per_second(0));
        let t0 = Instant::now();
        for _ in 0..10_000 {
            assert!(limiter.check_at("a", t0).is_ok());
        }
    }
}
