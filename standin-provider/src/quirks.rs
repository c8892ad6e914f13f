//! Real-world provider behaviours that tests switch on and off at runtime.

use serde::{Deserialize, Deserializer, Serialize};

use crate::config::Config;

/// The current quirk settings (`GET /_standin/quirks`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Quirks {
    /// Lifetime of access tokens issued from now on.
    pub access_token_ttl_secs: u64,
    /// Token responses carry no `expires_in`; such access tokens never expire here.
    pub omit_expires_in: bool,
    /// Every refresh returns a new refresh token and retires the presented one.
    pub rotate_refresh_tokens: bool,
    /// Refresh responses carry no `refresh_token`; the presented one stays valid.
    pub omit_refresh_token_on_refresh: bool,
    /// The token endpoint answers `200 {"ok": false, "error": <this>}` (Slack, GitHub).
    pub error_in_200: Option<String>,
    /// Sleep this long before answering the token endpoint.
    pub token_delay_ms: u64,
    /// With `token_delay_ms`: issue (and rotate) first, then sleep, then answer,
    /// like a provider that committed a refresh whose answer never arrives. A
    /// client that gives up or dies during the sleep has still used up its
    /// refresh token.
    pub delay_after_issuing: bool,
    /// The token endpoint answers this status with a small body instead of working.
    pub token_status: Option<u16>,
    /// Code exchange answers in Slack's `oauth.v2.access` shape with `authed_user`.
    pub slack_authed_user: bool,
}

impl Quirks {
    /// Defaults taken from the command line; every quirk off.
    pub fn from_config(config: &Config) -> Self {
        Self {
            access_token_ttl_secs: config.access_token_ttl.as_secs(),
            omit_expires_in: false,
            rotate_refresh_tokens: config.rotate_refresh_tokens,
            omit_refresh_token_on_refresh: false,
            error_in_200: None,
            token_delay_ms: 0,
            delay_after_issuing: false,
            token_status: None,
            slack_authed_user: false,
        }
    }

    /// Applies a partial update; nothing changes if the patch is invalid.
    pub fn apply(&mut self, patch: QuirksPatch) -> Result<(), String> {
        if let Some(Some(status)) = patch.token_status {
            if !(200..=599).contains(&status) {
                return Err(format!(
                    "token_status must be within 200..=599, got {status}"
                ));
            }
        }
        if let Some(v) = patch.access_token_ttl_secs {
            self.access_token_ttl_secs = v;
        }
        if let Some(v) = patch.omit_expires_in {
            self.omit_expires_in = v;
        }
        if let Some(v) = patch.rotate_refresh_tokens {
            self.rotate_refresh_tokens = v;
        }
        if let Some(v) = patch.omit_refresh_token_on_refresh {
            self.omit_refresh_token_on_refresh = v;
        }
        if let Some(v) = patch.error_in_200 {
            self.error_in_200 = v;
        }
        if let Some(v) = patch.token_delay_ms {
            self.token_delay_ms = v;
        }
        if let Some(v) = patch.delay_after_issuing {
            self.delay_after_issuing = v;
        }
        if let Some(v) = patch.token_status {
            self.token_status = v;
        }
        if let Some(v) = patch.slack_authed_user {
            self.slack_authed_user = v;
        }
        Ok(())
    }
}

/// A partial update (`POST /_standin/quirks`): absent fields stay as they are; for the
/// optional fields an explicit `null` switches the quirk off.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuirksPatch {
    #[serde(default)]
    pub access_token_ttl_secs: Option<u64>,
    #[serde(default)]
    pub omit_expires_in: Option<bool>,
    #[serde(default)]
    pub rotate_refresh_tokens: Option<bool>,
    #[serde(default)]
    pub omit_refresh_token_on_refresh: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    pub error_in_200: Option<Option<String>>,
    #[serde(default)]
    pub token_delay_ms: Option<u64>,
    #[serde(default)]
    pub delay_after_issuing: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    pub token_status: Option<Option<u16>>,
    #[serde(default)]
    pub slack_authed_user: Option<bool>,
}

/// Tells a present `null` (`Some(None)`) apart from an absent field (`None`).
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Quirks {
        Quirks::from_config(&Config::new("a", "b"))
    }

    fn patch(json: &str) -> QuirksPatch {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn defaults_follow_config() {
        let mut cfg = Config::new("a", "b");
        cfg.access_token_ttl = std::time::Duration::from_secs(42);
        cfg.rotate_refresh_tokens = true;
        let q = Quirks::from_config(&cfg);
        assert_eq!(q.access_token_ttl_secs, 42);
        assert!(q.rotate_refresh_tokens);
        assert_eq!(q.error_in_200, None);
    }

    #[test]
    fn partial_update_and_null() {
        let mut q = base();
        q.apply(patch(
            r#"{"error_in_200":"invalid_code","token_status":503}"#,
        ))
        .unwrap();
        assert_eq!(q.error_in_200.as_deref(), Some("invalid_code"));
        assert_eq!(q.token_status, Some(503));
        q.apply(patch(r#"{"token_delay_ms":5}"#)).unwrap();
        assert_eq!(q.error_in_200.as_deref(), Some("invalid_code"));
        assert_eq!(q.token_delay_ms, 5);
        q.apply(patch(r#"{"error_in_200":null,"token_status":null}"#))
            .unwrap();
        assert_eq!(q.error_in_200, None);
        assert_eq!(q.token_status, None);
    }

    #[test]
    fn invalid_patch_changes_nothing() {
        let mut q = base();
        let before = q.clone();
        assert!(q
            .apply(patch(r#"{"omit_expires_in":true,"token_status":99}"#))
            .is_err());
        assert_eq!(q, before);
        assert!(serde_json::from_str::<QuirksPatch>(r#"{"no_such_quirk":1}"#).is_err());
    }
}
