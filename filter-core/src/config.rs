//! The filter's JSON plugin configuration: parsing, defaults and validation.
//!
//! ```json
//! {
//!   "token_service": {"cluster": "authstamp_token_service", "authority": "authstamp-token-service", "timeout": "2s",
//!                     "credential_env": "AUTHSTAMP_FILTER_TOKEN"},
//!   "app": {"id": "app_…", "key_env": "AUTHSTAMP_APP_KEY"},
//!   "refresh_skew": "30s",
//!   "max_cache_ttl": "5m",
//!   "app_key_recheck": "5s",
//!   "cache_capacity": 16384,
//!   "unmarked_requests": "pass",
//!   "headers": {"provider": "x-authstamp-provider", "user": "x-authstamp-user",
//!               "app": "x-authstamp-app", "app_key": "x-authstamp-app-key"}
//! }
//! ```
//!
//! Only `token_service.cluster` and `token_service.authority` are required.
//! `token_service.credential_env` names the VM environment variable holding
//! the filter credential, sent as `authorization: Bearer …` on every lookup
//! (the token service's filter listener refuses lookups without it, unless
//! the cluster presents a client certificate instead); the bootstrap names
//! the variable, never the secret.
//! With `app` the filter runs in mesh mode (the app is bound by configuration
//! and its key read from the VM environment variable `key_env`); without it,
//! in gateway mode (every request carries the app id and key).
//!
//! Transparent egress adds `provider_hosts` (`{"slack.com": "slack"}`) and
//! `unmapped_hosts` (`pass` | `reject`): see [`crate::egress`].

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use authstamp_protocol::headers;
use serde::Deserialize;

use crate::egress::{Egress, Unmapped};

/// Bounds of `token_service.timeout`.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(1);
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Bounds of `refresh_skew`.
pub const MAX_REFRESH_SKEW: Duration = Duration::from_secs(3600);
pub const DEFAULT_REFRESH_SKEW: Duration = Duration::from_secs(30);
/// Bounds of `max_cache_ttl` (the cache works in whole seconds).
pub const MIN_CACHE_TTL: Duration = Duration::from_secs(1);
pub const MAX_CACHE_TTL: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(300);
/// Bounds of `app_key_recheck`: how long a cache hit trusts that the token
/// service last accepted the request's app key (then one lookup rechecks it).
pub const MIN_APP_KEY_RECHECK: Duration = Duration::from_secs(1);
pub const MAX_APP_KEY_RECHECK: Duration = Duration::from_secs(3600);
pub const DEFAULT_APP_KEY_RECHECK: Duration = Duration::from_secs(5);
/// Bounds of `forced_refresh_interval` (the token service's
/// `--forced-refresh-interval` has the same default).
pub const MIN_FORCED_REFRESH_INTERVAL: Duration = Duration::from_secs(1);
pub const MAX_FORCED_REFRESH_INTERVAL: Duration = Duration::from_secs(3600);
pub const DEFAULT_FORCED_REFRESH_INTERVAL: Duration = Duration::from_secs(30);
/// Bounds of `cache_capacity`: the number of shared-data slots of the token
/// cache (see `cache.rs`), hence the most entries it ever holds.
pub const MIN_CACHE_CAPACITY: u32 = 1;
pub const MAX_CACHE_CAPACITY: u32 = 4 * 1024 * 1024;
pub const DEFAULT_CACHE_CAPACITY: u32 = 16 * 1024;
/// Longest app id or app key accepted, the same limit as for request headers.
pub const MAX_IDENTIFIER_BYTES: usize = 256;
/// Bounds of `app.allowed_workloads`.
pub const MAX_ALLOWED_WORKLOADS: usize = 64;
pub const MAX_WORKLOAD_BYTES: usize = 512;

/// Header names the configuration may not claim: they are set, removed or
/// interpreted by the filter or by HTTP itself.
const RESERVED_HEADER_NAMES: [&str; 10] = [
    "host",
    "authorization",
    "proxy-authorization",
    "x-forwarded-host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    headers::ROUTE,
    headers::ERROR,
];

/// A credential: compared and sent, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// What to do with a request that carries no authstamp header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unmarked {
    /// Not ours: continue untouched.
    Pass,
    /// Answer 400 `bad_request`.
    Reject,
}

/// Where the app identity of a request comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppBinding {
    /// One workload, one app: bound by configuration; request headers cannot
    /// override it.
    Mesh { id: String, key: Secret },
    /// Each request carries the app id and app key headers.
    Gateway,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenService {
    /// Envoy cluster of the token service.
    pub cluster: String,
    /// `:authority` of the lookup requests.
    pub authority: String,
    pub timeout: Duration,
    /// The filter credential (from `credential_env`); `None`: the cluster's
    /// client certificate is the credential.
    pub credential: Option<Secret>,
}

/// The request header names the filter reads (all lowercase).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderNames {
    pub provider: String,
    pub user: String,
    pub app: String,
    pub app_key: String,
}

impl HeaderNames {
    pub fn all(&self) -> [&str; 4] {
        [&self.provider, &self.user, &self.app, &self.app_key]
    }
}

impl Default for HeaderNames {
    fn default() -> Self {
        HeaderNames {
            provider: headers::PROVIDER.to_string(),
            user: headers::USER.to_string(),
            app: headers::APP.to_string(),
            app_key: headers::APP_KEY.to_string(),
        }
    }
}

/// The validated configuration, shared by every stream of a root context.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub token_service: TokenService,
    pub app: AppBinding,
    pub refresh_skew: Duration,
    pub max_cache_ttl: Duration,
    /// How long an app key the token service accepted is trusted on cache
    /// hits before one lookup checks it again (so a revoked key stops working).
    pub app_key_recheck: Duration,
    /// At most one forced refresh per connection within this interval
    /// (after a provider 401); past that the 401 goes to the app.
    pub forced_refresh_interval: Duration,
    /// Slots of the shared-data token cache: the cap on cached entries.
    pub cache_capacity: u32,
    pub unmarked: Unmarked,
    pub headers: HeaderNames,
    /// Transparent egress: provider by request host, and unmapped hosts.
    pub egress: Egress,
    /// Mesh mode: workload identities (peer certificate URI SAN or source
    /// principal) allowed to use the bound app; empty: not checked.
    pub allowed_workloads: Vec<String>,
    /// Marks each request whose 401 a replay can heal with
    /// `x-authstamp-heal: 1`, for a route that retries a 401 only then and
    /// runs the replay instance on the retry alone (see `heal.rs`).
    pub mark_healable: bool,
}

/// Why a configuration was refused; the message names the field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn invalid(message: impl Into<String>) -> ConfigError {
    ConfigError(message.into())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    token_service: RawTokenService,
    #[serde(default)]
    app: Option<RawApp>,
    #[serde(default)]
    refresh_skew: Option<String>,
    #[serde(default)]
    max_cache_ttl: Option<String>,
    #[serde(default)]
    app_key_recheck: Option<String>,
    #[serde(default)]
    forced_refresh_interval: Option<String>,
    #[serde(default)]
    cache_capacity: Option<u32>,
    #[serde(default)]
    unmarked_requests: Option<Unmarked>,
    #[serde(default)]
    headers: Option<RawHeaders>,
    #[serde(default)]
    provider_hosts: Option<BTreeMap<String, String>>,
    #[serde(default)]
    unmapped_hosts: Option<Unmapped>,
    #[serde(default)]
    mark_healable: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTokenService {
    cluster: String,
    authority: String,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    credential_env: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    id: String,
    key_env: String,
    #[serde(default)]
    allowed_workloads: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHeaders {
    #[serde(default)]
    provider: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    app: Option<String>,
    #[serde(default)]
    app_key: Option<String>,
}

/// The configuration of a filter instance that runs on upstream attempts
/// (the provider clusters' upstream HTTP filter): `{"role": "upstream"}` or
/// `{"role": "replay"}`, nothing else (it works with what the stamping
/// instance recorded for the request).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAttemptRole {
    role: AttemptRole,
}

/// What a filter instance on upstream attempts does (see `heal.rs`).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AttemptRole {
    /// Sees every attempt: marks a healable 401 for the route's retry and
    /// restamps the replay.
    Upstream,
    /// Runs on the route's retry of a 401 only: forces the refresh and
    /// restamps it.
    Replay,
}

/// The role `raw` configures, if it configures an instance on attempts.
pub fn attempt_role(raw: &[u8]) -> Option<AttemptRole> {
    serde_json::from_slice::<RawAttemptRole>(raw)
        .ok()
        .map(|r| r.role)
}

impl Config {
    /// Parses and validates the plugin configuration. `env` looks up the VM's
    /// environment variables (`std::env::var` in Envoy, a map in tests).
    pub fn parse(raw: &[u8], env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        if raw.iter().all(u8::is_ascii_whitespace) {
            return Err(invalid(
                "the plugin configuration is empty: token_service.cluster and token_service.authority are required",
            ));
        }
        let raw: RawConfig = serde_json::from_slice(raw)
            .map_err(|e| invalid(format!("not a valid configuration: {e}")))?;

        let cluster = raw.token_service.cluster;
        if cluster.is_empty() || !cluster.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid(
                "token_service.cluster must be a non-empty cluster name without spaces or control characters",
            ));
        }
        let authority = raw.token_service.authority;
        if authority.is_empty()
            || authority.len() > 255
            || !authority.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(invalid(
                "token_service.authority must be a non-empty host[:port] without spaces or control characters",
            ));
        }
        let timeout = optional_duration(
            "token_service.timeout",
            raw.token_service.timeout,
            DEFAULT_TIMEOUT,
        )?;
        if !(MIN_TIMEOUT..=MAX_TIMEOUT).contains(&timeout) {
            return Err(invalid("token_service.timeout must be between 1ms and 60s"));
        }
        let credential = raw
            .token_service
            .credential_env
            .map(|name| filter_credential(&name, env))
            .transpose()?;

        let mut allowed_workloads = Vec::new();
        let app = match raw.app {
            None => AppBinding::Gateway,
            Some(app) => {
                check_identifier("app.id", &app.id)?;
                if let Some(list) = app.allowed_workloads {
                    if list.is_empty() || list.len() > MAX_ALLOWED_WORKLOADS {
                        return Err(invalid(format!(
                            "app.allowed_workloads must list 1 to {MAX_ALLOWED_WORKLOADS} identities (leave it out to allow any workload)"
                        )));
                    }
                    for identity in &list {
                        if identity.is_empty()
                            || identity.len() > MAX_WORKLOAD_BYTES
                            || !identity.bytes().all(|b| b.is_ascii_graphic())
                        {
                            return Err(invalid(format!(
                                "app.allowed_workloads: each identity must be 1 to {MAX_WORKLOAD_BYTES} printable ASCII characters without spaces (e.g. spiffe://cluster.local/ns/my-app/sa/my-service)"
                            )));
                        }
                    }
                    allowed_workloads = list;
                }
                if app.key_env.is_empty() {
                    return Err(invalid("app.key_env must name an environment variable"));
                }
                let key = env(&app.key_env).unwrap_or_default();
                if key.is_empty() {
                    return Err(invalid(format!(
                        "app.key_env: the environment variable {} is not set or empty \
                         (pass it with vm_config.environment_variables)",
                        app.key_env
                    )));
                }
                if check_identifier("app key", &key).is_err() {
                    return Err(invalid(format!(
                        "app.key_env: the app key in {} is longer than {MAX_IDENTIFIER_BYTES} bytes or contains control characters",
                        app.key_env
                    )));
                }
                AppBinding::Mesh {
                    id: app.id,
                    key: Secret(key),
                }
            }
        };

        let refresh_skew =
            optional_duration("refresh_skew", raw.refresh_skew, DEFAULT_REFRESH_SKEW)?;
        if refresh_skew > MAX_REFRESH_SKEW {
            return Err(invalid("refresh_skew must be at most 1h"));
        }
        let max_cache_ttl =
            optional_duration("max_cache_ttl", raw.max_cache_ttl, DEFAULT_CACHE_TTL)?;
        if !(MIN_CACHE_TTL..=MAX_CACHE_TTL).contains(&max_cache_ttl) {
            return Err(invalid("max_cache_ttl must be between 1s and 24h"));
        }
        let app_key_recheck = optional_duration(
            "app_key_recheck",
            raw.app_key_recheck,
            DEFAULT_APP_KEY_RECHECK,
        )?;
        if !(MIN_APP_KEY_RECHECK..=MAX_APP_KEY_RECHECK).contains(&app_key_recheck) {
            return Err(invalid("app_key_recheck must be between 1s and 1h"));
        }
        let forced_refresh_interval = optional_duration(
            "forced_refresh_interval",
            raw.forced_refresh_interval,
            DEFAULT_FORCED_REFRESH_INTERVAL,
        )?;
        if !(MIN_FORCED_REFRESH_INTERVAL..=MAX_FORCED_REFRESH_INTERVAL)
            .contains(&forced_refresh_interval)
        {
            return Err(invalid("forced_refresh_interval must be between 1s and 1h"));
        }
        let cache_capacity = raw.cache_capacity.unwrap_or(DEFAULT_CACHE_CAPACITY);
        if !(MIN_CACHE_CAPACITY..=MAX_CACHE_CAPACITY).contains(&cache_capacity) {
            return Err(invalid(format!(
                "cache_capacity must be between {MIN_CACHE_CAPACITY} and {MAX_CACHE_CAPACITY}"
            )));
        }

        let raw_headers = raw.headers.unwrap_or_default();
        let defaults = HeaderNames::default();
        let headers = HeaderNames {
            provider: raw_headers.provider.unwrap_or(defaults.provider),
            user: raw_headers.user.unwrap_or(defaults.user),
            app: raw_headers.app.unwrap_or(defaults.app),
            app_key: raw_headers.app_key.unwrap_or(defaults.app_key),
        };
        let fields = [
            "headers.provider",
            "headers.user",
            "headers.app",
            "headers.app_key",
        ];
        let names = headers.all();
        for (field, name) in fields.iter().zip(names) {
            check_header_name(field, name)?;
        }
        for (i, name) in names.iter().enumerate() {
            if names[..i].contains(name) {
                return Err(invalid(format!(
                    "{}: the header names must be distinct",
                    fields[i]
                )));
            }
        }

        let egress = Egress::parse(raw.provider_hosts, raw.unmapped_hosts).map_err(invalid)?;

        Ok(Config {
            token_service: TokenService {
                cluster,
                authority,
                timeout,
                credential,
            },
            app,
            refresh_skew,
            max_cache_ttl,
            app_key_recheck,
            forced_refresh_interval,
            cache_capacity,
            unmarked: raw.unmarked_requests.unwrap_or(Unmarked::Pass),
            headers,
            egress,
            allowed_workloads,
            mark_healable: raw.mark_healable,
        })
    }

    pub fn is_mesh(&self) -> bool {
        matches!(self.app, AppBinding::Mesh { .. })
    }
}

fn optional_duration(
    field: &str,
    value: Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(text) => parse_duration(&text).ok_or_else(|| {
            invalid(format!(
                "{field} must be a duration such as \"500ms\", \"2s\", \"5m\" or \"1h\""
            ))
        }),
    }
}

/// `<digits><unit>` with the unit one of `ms`, `s`, `m`, `h`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() || digits.len() > 12 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        "h" => n.checked_mul(3600).map(Duration::from_secs),
        _ => None,
    }
}

/// Longest filter credential accepted.
pub const MAX_CREDENTIAL_BYTES: usize = 1024;

/// The filter credential from the VM environment variable `name`: set,
/// and a valid bearer token (visible ASCII, no spaces).
fn filter_credential(
    name: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Secret, ConfigError> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            "token_service.credential_env must name an environment variable",
        ));
    }
    let value = env(name).unwrap_or_default();
    let value = value.trim();
    if value.is_empty() {
        return Err(invalid(format!(
            "token_service.credential_env: the environment variable {name} is not set or empty \
             (pass it with vm_config.environment_variables)"
        )));
    }
    if value.len() > MAX_CREDENTIAL_BYTES || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(format!(
            "token_service.credential_env: the credential in {name} must be at most \
             {MAX_CREDENTIAL_BYTES} visible ASCII characters without spaces"
        )));
    }
    Ok(Secret(value.to_string()))
}

fn check_identifier(field: &str, value: &str) -> Result<(), ConfigError> {
    if value.is_empty() || value.len() > MAX_IDENTIFIER_BYTES || value.chars().any(char::is_control)
    {
        return Err(invalid(format!(
            "{field} must be non-empty, at most {MAX_IDENTIFIER_BYTES} bytes, without control characters"
        )));
    }
    Ok(())
}

pub use authstamp_protocol::credential::{is_lowercase_header_name, is_tchar};

fn check_header_name(field: &str, name: &str) -> Result<(), ConfigError> {
    if !is_lowercase_header_name(name) || name.len() > 128 {
        return Err(invalid(format!(
            "{field} must be a non-empty lowercase header name"
        )));
    }
    if RESERVED_HEADER_NAMES.contains(&name) {
        return Err(invalid(format!("{field}: the header {name} is reserved")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const MINIMAL: &str = r#"{"token_service": {"cluster": "ts", "authority": "ts.local"}}"#;

    fn parse_with(json: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::parse(json.as_bytes(), &|name| env.get(name).cloned())
    }

    fn parse(json: &str) -> Result<Config, ConfigError> {
        parse_with(json, &[])
    }

    #[test]
    fn minimal_config_gets_the_defaults() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(config.token_service.cluster, "ts");
        assert_eq!(config.token_service.authority, "ts.local");
        assert_eq!(config.token_service.timeout, Duration::from_secs(2));
        assert_eq!(config.app, AppBinding::Gateway);
        assert_eq!(config.refresh_skew, Duration::from_secs(30));
        assert_eq!(config.max_cache_ttl, Duration::from_secs(300));
        assert_eq!(config.app_key_recheck, Duration::from_secs(5));
        assert_eq!(config.cache_capacity, DEFAULT_CACHE_CAPACITY);
        assert_eq!(config.unmarked, Unmarked::Pass);
        assert_eq!(config.headers, HeaderNames::default());
        assert_eq!(config.headers.provider, headers::PROVIDER);
        assert!(!config.is_mesh());
        assert_eq!(config.token_service.credential, None);
    }

    #[test]
    fn the_filter_credential_comes_from_the_named_environment_variable() {
        let json = r#"{"token_service": {"cluster": "ts", "authority": "ts",
                                         "credential_env": "AUTHSTAMP_FILTER_TOKEN"}}"#;
        let config = parse_with(json, &[("AUTHSTAMP_FILTER_TOKEN", " ftk_very-secret\n")]).unwrap();
        assert_eq!(
            config.token_service.credential,
            Some(Secret::new("ftk_very-secret"))
        );
        let debug = format!("{config:?} {config:#?}");
        assert!(!debug.contains("very-secret"), "{debug}");

        let named = |value: &str| {
            parse_with(json, &[("AUTHSTAMP_FILTER_TOKEN", value)])
                .unwrap_err()
                .to_string()
        };
        let unset = parse(json).unwrap_err().to_string();
        assert!(
            unset.contains("AUTHSTAMP_FILTER_TOKEN") && unset.contains("not set"),
            "{unset}"
        );
        assert!(named("  ").contains("not set"));
        for bad in [
            "two words",
            "ctl\u{7}x",
            &"x".repeat(MAX_CREDENTIAL_BYTES + 1),
        ] {
            let message = named(bad);
            assert!(
                message.contains("token_service.credential_env"),
                "{message}"
            );
            assert!(
                !message.contains(bad),
                "the value is never echoed: {message}"
            );
        }
        let empty_name =
            r#"{"token_service": {"cluster": "ts", "authority": "ts", "credential_env": ""}}"#;
        assert!(parse(empty_name)
            .unwrap_err()
            .to_string()
            .contains("token_service.credential_env"));
    }

    #[test]
    fn full_config_in_mesh_mode_reads_the_key_from_the_environment() {
        let json = r#"{
            "token_service": {"cluster": "authstamp_token_service", "authority": "authstamp-token-service", "timeout": "500ms"},
            "app": {"id": "app_1", "key_env": "AUTHSTAMP_APP_KEY"},
            "refresh_skew": "0s",
            "max_cache_ttl": "1h",
            "app_key_recheck": "30s",
            "cache_capacity": 100,
            "unmarked_requests": "reject",
            "headers": {"provider": "x-p", "user": "x-u", "app": "x-a", "app_key": "x-k"}
        }"#;
        let config = parse_with(json, &[("AUTHSTAMP_APP_KEY", "ask_secret")]).unwrap();
        assert_eq!(config.token_service.timeout, Duration::from_millis(500));
        assert_eq!(
            config.app,
            AppBinding::Mesh {
                id: "app_1".into(),
                key: Secret::new("ask_secret")
            }
        );
        assert!(config.is_mesh());
        assert_eq!(config.refresh_skew, Duration::ZERO);
        assert_eq!(config.max_cache_ttl, Duration::from_secs(3600));
        assert_eq!(config.app_key_recheck, Duration::from_secs(30));
        assert_eq!(config.cache_capacity, 100);
        assert_eq!(config.unmarked, Unmarked::Reject);
        assert_eq!(config.headers.all(), ["x-p", "x-u", "x-a", "x-k"]);
    }

    #[test]
    fn debug_of_the_config_never_prints_the_app_key() {
        let json = r#"{"token_service": {"cluster": "ts", "authority": "ts"},
                       "app": {"id": "app_1", "key_env": "K"}}"#;
        let config = parse_with(json, &[("K", "ask_very-secret-key")]).unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("ask_very-secret-key"), "{debug}");
        assert!(debug.contains("app_1"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
        let pretty = format!("{config:#?}");
        assert!(!pretty.contains("very-secret"), "{pretty}");
    }

    #[test]
    fn bad_configs_are_rejected_with_a_message_naming_the_field() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("   ", "empty"),
            ("{}", "token_service"),
            ("null", "not a valid configuration"),
            ("not json", "not a valid configuration"),
            (r#"{"token_service": {"authority": "a"}}"#, "cluster"),
            (r#"{"token_service": {"cluster": "c"}}"#, "authority"),
            (
                r#"{"token_service": {"cluster": "", "authority": "a"}}"#,
                "token_service.cluster",
            ),
            (
                r#"{"token_service": {"cluster": "c d", "authority": "a"}}"#,
                "token_service.cluster",
            ),
            (
                r#"{"token_service": {"cluster": "c", "authority": ""}}"#,
                "token_service.authority",
            ),
            (
                r#"{"token_service": {"cluster": "c", "authority": "a", "timeout": "0ms"}}"#,
                "token_service.timeout",
            ),
            (
                r#"{"token_service": {"cluster": "c", "authority": "a", "timeout": "61s"}}"#,
                "token_service.timeout",
            ),
            (
                r#"{"token_service": {"cluster": "c", "authority": "a", "timeout": "2"}}"#,
                "token_service.timeout",
            ),
            (
                r#"{"token_service": {"cluster": "c", "authority": "a", "timeout": "2 s"}}"#,
                "token_service.timeout",
            ),
            (
                r#"{"token_service": {"cluster": "c", "authority": "a", "timeout": "-2s"}}"#,
                "token_service.timeout",
            ),
            (
                r#"{"token_service": {"cluster": "c", "authority": "a", "timeout": 2}}"#,
                "not a valid configuration",
            ),
            (
                r#"{"token_service": {"cluster": "c", "authority": "a", "extra": 1}}"#,
                "extra",
            ),
            (
                r#"{"token_service": {"cluster": "c", "authority": "a"}, "cache": true}"#,
                "cache",
            ),
            (
                r#"{"token_service": {"cluster": "c", "authority": "a"}, "max_cache_ttl": "0s"}"#,
                "max_cache_ttl",
            ),
            (
                r#"{"token_service": {"cluster": "c", "authority": "a"}, "max_cache_ttl": "500ms"}"#,
                "max_cache_ttl",
            ),
            (
                r#"{"token_service": {"cluster": "c", "authority": "a"}, "max_cache_ttl": "2d"}"#,
                "max_cache_ttl",
            ),
            (
                r#"{"token_service": {"cluster": "c", "authority": "a"}, "app_key_recheck": "500ms"}"#,
                "app_key_recheck",
            ),
            (
                r#"{"token_service": {"cluster": "c", "authority": "a"}, "app_key_recheck": "2h"}"#,
                "app_key_recheck",
            ),
            (
                r#"{"token_service": {"cluster": "c", "authority": "a"}, "app_key_recheck": "soon"}"#,
                "app_key_recheck",
            ),
            (
                r#"{"token_service": {"cluster": "c", "authority": "a"}, "cache_capacity": 0}"#,
                "cache_capacity",
            ),
            (
                r#"{"token_service": {"cluster": "c", "authority": "a"}, "cache_capacity": 4194305}"#,
                "cache_capacity",
            ),
            (
                r#"{"token_service": {"cluster": "c", "authority": "a"}, "cache_capacity": -1}"#,
                "not a valid configuration",
            ),
            (
                r#"{"token_service": {"cluster": "c", "authority": "a"}, "cache_capacity": "big"}"#,
                "not a valid configuration",
            ),
            (
                r#"{"token_service": {"cluster": "c", "authority": "a"}, "refresh_skew": "2h"}"#,
                "refresh_skew",
            ),
            (
                r#"{"token_service": {"cluster": "c", "authority": "a"}, "refresh_skew": "fast"}"#,
                "refresh_skew",
            ),
            (
                r#"{"token_service": {"cluster": "c", "authority": "a"}, "unmarked_requests": "drop"}"#,
                "drop",
            ),
            (
                r#"{"token_service": {"cluster": "c", "authority": "a"}, "headers": {"provider": "X-Provider"}}"#,
                "headers.provider",
            ),
            (
                r#"{"token_service": {"cluster": "c", "authority": "a"}, "headers": {"user": ""}}"#,
                "headers.user",
            ),
            (
                r#"{"token_service": {"cluster": "c", "authority": "a"}, "headers": {"app": "x app"}}"#,
                "headers.app",
            ),
            (
                r#"{"token_service": {"cluster": "c", "authority": "a"}, "headers": {"app_key": "authorization"}}"#,
                "headers.app_key",
            ),
            (
                r#"{"token_service": {"cluster": "c", "authority": "a"}, "headers": {"user": "x-authstamp-provider"}}"#,
                "distinct",
            ),
            (
                r#"{"token_service": {"cluster": "c", "authority": "a"}, "headers": {"tenant": "x-t"}}"#,
                "tenant",
            ),
            (
                r#"{"token_service": {"cluster": "c", "authority": "a"}, "app": {"id": "app_1"}}"#,
                "key_env",
            ),
            (
                r#"{"token_service": {"cluster": "c", "authority": "a"}, "app": {"id": "", "key_env": "K"}}"#,
                "app.id",
            ),
            (
                r#"{"token_service": {"cluster": "c", "authority": "a"}, "app": {"id": "a", "key_env": ""}}"#,
                "app.key_env",
            ),
            (
                r#"{"token_service": {"cluster": "c", "authority": "a"}, "app": {"id": "a", "key_env": "MISSING"}}"#,
                "MISSING",
            ),
            (
                r#"{"token_service": {"cluster": "c", "authority": "a"}, "app": {"id": "a", "key_env": "EMPTY"}}"#,
                "EMPTY",
            ),
        ];
        for (json, needle) in cases {
            let err = parse_with(json, &[("EMPTY", "")]).expect_err(json);
            let message = err.to_string();
            assert!(
                message.contains(needle),
                "{json}: {message:?} should mention {needle:?}"
            );
        }
    }

    #[test]
    fn a_bad_app_key_in_the_environment_is_rejected_without_printing_it() {
        let json = r#"{"token_service": {"cluster": "c", "authority": "a"}, "app": {"id": "a", "key_env": "K"}}"#;
        let err = parse_with(json, &[("K", "ask_bad\nkey")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("K"), "{err}");
        assert!(!err.contains("ask_bad"), "{err}");
        let long = "k".repeat(MAX_IDENTIFIER_BYTES + 1);
        assert!(parse_with(json, &[("K", &long)]).is_err());
    }

    #[test]
    fn provider_hosts_and_unmapped_hosts_are_parsed_and_checked() {
        let json = r#"{"token_service": {"cluster": "c", "authority": "a"},
                       "app": {"id": "app_1", "key_env": "K"},
                       "provider_hosts": {"Slack.com": "slack", "127.0.0.1:9100": "demo"},
                       "unmapped_hosts": "reject"}"#;
        let config = parse_with(json, &[("K", "ask_k")]).unwrap();
        assert!(config.egress.is_enabled());
        assert_eq!(config.egress.unmapped, Unmapped::Reject);
        assert_eq!(config.egress.provider_for("slack.com:443"), Some("slack"));
        assert_eq!(config.egress.provider_for("127.0.0.1:9100"), Some("demo"));
        assert!(!parse(MINIMAL).unwrap().egress.is_enabled());
        for (json, needle) in [
            (
                r#"{"token_service": {"cluster": "c", "authority": "a"}, "provider_hosts": {"https://x.com": "x"}}"#,
                "provider_hosts",
            ),
            (
                r#"{"token_service": {"cluster": "c", "authority": "a"}, "unmapped_hosts": "reject"}"#,
                "unmapped_hosts",
            ),
            (
                r#"{"token_service": {"cluster": "c", "authority": "a"}, "provider_hosts": {"x.com": "x"}, "unmapped_hosts": "drop"}"#,
                "drop",
            ),
            (
                r#"{"token_service": {"cluster": "c", "authority": "a"}, "provider_hosts": ["x.com"]}"#,
                "not a valid configuration",
            ),
        ] {
            let err = parse(json).unwrap_err().to_string();
            assert!(err.contains(needle), "{json}: {err}");
        }
    }

    #[test]
    fn durations_parse_in_their_units() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
        for bad in [
            "",
            "s",
            "5",
            "5sec",
            "1.5s",
            "-1s",
            " 1s",
            "1s ",
            "1S",
            "1m30s",
            "9999999999999s",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }
}
