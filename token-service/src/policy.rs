//! Refresh policy: the service's defaults (flags of `authstamp serve`) and the
//! per-provider overrides stored with each provider configuration.

use crate::error::Error;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Longest duration a policy field accepts (ten years).
const MAX_SECS: u64 = 10 * 365 * 24 * 3600;

/// The effective policy of one provider configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct RefreshPolicy {
    /// Refresh on lookup when the token expires within this window.
    #[serde(with = "humantime_serde")]
    pub skew: Duration,
    /// Lifetime assumed for an access token that came without `expires_in`
    /// (when there is a refresh token to renew it with).
    #[serde(with = "humantime_serde")]
    pub max_token_lifetime: Duration,
    /// The background refresher renews tokens expiring within this window;
    /// zero: only lookups refresh.
    #[serde(with = "humantime_serde")]
    pub background_window: Duration,
    /// Refresh a connection whose tokens are this old even if unused, to keep
    /// refresh tokens alive that die when idle; zero: off.
    #[serde(with = "humantime_serde")]
    pub keepalive: Duration,
    /// No new attempt this long after a transient failure; doubles with each
    /// further failure up to the service's maximum.
    #[serde(with = "humantime_serde")]
    pub failure_cooldown: Duration,
    /// A lookup's `force_refresh` (the provider answered 401) refreshes at
    /// most once per this interval per connection; within it the token
    /// obtained last is served. Zero: every forced lookup refreshes.
    /// Service-wide (no per-provider override).
    #[serde(skip)]
    pub forced_refresh_interval: Duration,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        Self {
            skew: Duration::from_secs(60),
            max_token_lifetime: Duration::from_secs(3600),
            background_window: Duration::from_secs(300),
            keepalive: Duration::ZERO,
            failure_cooldown: Duration::from_secs(5),
            forced_refresh_interval: Duration::from_secs(30),
        }
    }
}

/// Per-provider overrides; absent fields follow the service's defaults.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[derive(utoipa::ToSchema)]
pub struct PolicyOverrides {
    /// A duration, e.g. `90s` or `2h` (humantime).
    #[schema(value_type = Option<String>)]
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub skew: Option<Duration>,
    /// A duration, e.g. `90s` or `2h` (humantime).
    #[schema(value_type = Option<String>)]
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_token_lifetime: Option<Duration>,
    /// A duration, e.g. `90s` or `2h` (humantime).
    #[schema(value_type = Option<String>)]
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub background_window: Option<Duration>,
    /// A duration, e.g. `90s` or `2h` (humantime).
    #[schema(value_type = Option<String>)]
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub keepalive: Option<Duration>,
    /// A duration, e.g. `90s` or `2h` (humantime).
    #[schema(value_type = Option<String>)]
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub failure_cooldown: Option<Duration>,
}

impl PolicyOverrides {
    pub fn validate(&self) -> Result<(), Error> {
        for (name, value) in [
            ("skew", self.skew),
            ("max_token_lifetime", self.max_token_lifetime),
            ("background_window", self.background_window),
            ("keepalive", self.keepalive),
            ("failure_cooldown", self.failure_cooldown),
        ] {
            if value.is_some_and(|d| d.as_secs() > MAX_SECS) {
                return Err(Error::bad_request(format!(
                    "refresh.{name} must be at most ten years"
                )));
            }
        }
        if self.max_token_lifetime.is_some_and(|d| d.as_secs() < 10) {
            return Err(Error::bad_request(
                "refresh.max_token_lifetime must be at least 10s: tokens are never refreshed on every call",
            ));
        }
        if self
            .keepalive
            .is_some_and(|d| !d.is_zero() && d.as_secs() < 10)
        {
            return Err(Error::bad_request(
                "refresh.keepalive must be 0s (off) or at least 10s",
            ));
        }
        Ok(())
    }

    /// Column values (whole seconds, `None` for absent).
    pub fn to_columns(self) -> [Option<i64>; 5] {
        let secs = |d: Option<Duration>| d.map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        [
            secs(self.skew),
            secs(self.max_token_lifetime),
            secs(self.background_window),
            secs(self.keepalive),
            secs(self.failure_cooldown),
        ]
    }

    pub fn from_columns(columns: [Option<i64>; 5]) -> Self {
        let dur =
            |s: Option<i64>| s.map(|s| Duration::from_secs(u64::try_from(s.max(0)).unwrap_or(0)));
        let [skew, max_token_lifetime, background_window, keepalive, failure_cooldown] = columns;
        Self {
            skew: dur(skew),
            max_token_lifetime: dur(max_token_lifetime),
            background_window: dur(background_window),
            keepalive: dur(keepalive),
            failure_cooldown: dur(failure_cooldown),
        }
    }
}

impl RefreshPolicy {
    /// These defaults with a provider's overrides applied.
    pub fn with(&self, o: &PolicyOverrides) -> RefreshPolicy {
        RefreshPolicy {
            skew: o.skew.unwrap_or(self.skew),
            max_token_lifetime: o.max_token_lifetime.unwrap_or(self.max_token_lifetime),
            background_window: o.background_window.unwrap_or(self.background_window),
            keepalive: o.keepalive.unwrap_or(self.keepalive),
            failure_cooldown: o.failure_cooldown.unwrap_or(self.failure_cooldown),
            forced_refresh_interval: self.forced_refresh_interval,
        }
    }
}

/// Whole seconds as i64 (saturating).
pub fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_round_trip_through_json_and_columns() {
        let o: PolicyOverrides =
            serde_json::from_str(r#"{"skew": "30s", "keepalive": "30days"}"#).unwrap();
        assert_eq!(o.skew, Some(Duration::from_secs(30)));
        assert_eq!(o.keepalive, Some(Duration::from_secs(30 * 86400)));
        assert_eq!(PolicyOverrides::from_columns(o.to_columns()), o);
        let json = serde_json::to_value(o).unwrap();
        assert_eq!(json["skew"], "30s");
        assert!(json.get("max_token_lifetime").is_none());
        let p = RefreshPolicy::default().with(&o);
        assert_eq!(p.skew, Duration::from_secs(30));
        assert_eq!(p.max_token_lifetime, Duration::from_secs(3600));
        assert!(serde_json::from_str::<PolicyOverrides>(r#"{"nope": "1s"}"#).is_err());
        assert!(serde_json::from_str::<PolicyOverrides>(r#"{"skew": 30}"#).is_err());
    }

    #[test]
    fn validation() {
        let bad = PolicyOverrides {
            max_token_lifetime: Some(Duration::from_secs(1)),
            ..PolicyOverrides::default()
        };
        assert!(bad.validate().is_err());
        let bad = PolicyOverrides {
            keepalive: Some(Duration::from_secs(5)),
            ..PolicyOverrides::default()
        };
        assert!(bad.validate().is_err());
        let off = PolicyOverrides {
            keepalive: Some(Duration::ZERO),
            ..PolicyOverrides::default()
        };
        assert!(off.validate().is_ok());
    }
}
