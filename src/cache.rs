//! The token cache in proxy-wasm shared data (one per VM id, shared by every
//! worker): key and value encoding, expiry, lookup and CAS write.

use std::fmt;
use std::time::Duration;

use authstamp_protocol::{StampHeader, Upstream};
use serde::{Deserialize, Serialize};

use crate::host::{Host, SharedDataError};
use crate::stamp;

/// Version of the key and value layout: a change makes old entries invisible.
const KEY_PREFIX: &str = "authstamp/v1/";

/// The shared-data key of a connection. Each part is length-prefixed, so
/// the key is unambiguous for any strings. The token-service cluster is part
/// of the key, so that two filter configurations sharing a VM id but asking
/// different token services never see each other's entries.
pub fn key(cluster: &str, app_id: &str, provider: &str, user: &str) -> String {
    let mut key = String::from(KEY_PREFIX);
    for part in [cluster, app_id, provider, user] {
        key.push_str(&part.len().to_string());
        key.push(':');
        key.push_str(part);
    }
    key
}

/// A cached token: what to stamp, where to send it, for which app key and
/// until when (Unix seconds).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub app_key: String,
    pub header: StampHeader,
    pub upstream: Upstream,
    pub valid_until: u64,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("app_key", &"<redacted>")
            .field("header", &self.header)
            .field("upstream", &self.upstream)
            .field("valid_until", &self.valid_until)
            .finish()
    }
}

impl Entry {
    pub fn encode(&self) -> Option<Vec<u8>> {
        serde_json::to_vec(self).ok()
    }

    /// An entry from shared data; an empty value means deleted.
    pub fn decode(bytes: &[u8]) -> Option<Entry> {
        if bytes.is_empty() {
            return None;
        }
        serde_json::from_slice(bytes).ok()
    }
}

fn whole_seconds_up(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Until when an answer may be served from the cache:
/// `min(expires_at - refresh_skew, now + max_cache_ttl)`, or `now + max_cache_ttl`
/// when the token has no known expiry. Not cacheable if `<= now`.
pub fn valid_until(
    now: u64,
    expires_at: Option<u64>,
    refresh_skew: Duration,
    max_cache_ttl: Duration,
) -> u64 {
    let by_ttl = now.saturating_add(max_cache_ttl.as_secs());
    match expires_at {
        Some(expires_at) => expires_at
            .saturating_sub(whole_seconds_up(refresh_skew))
            .min(by_ttl),
        None => by_ttl,
    }
}

/// Byte-wise equality in time independent of where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// A usable entry: present, not deleted, well formed, still valid at `now`,
/// and for this app key.
pub fn lookup(host: &dyn Host, key: &str, app_key: &str, now: u64) -> Option<Entry> {
    let (value, _cas) = host.get_shared_data(key);
    let entry = Entry::decode(&value?)?;
    if entry.valid_until <= now {
        return None;
    }
    if !constant_time_eq(entry.app_key.as_bytes(), app_key.as_bytes()) {
        return None;
    }
    if stamp::validate_upstream(&entry.upstream).is_err()
        || stamp::validate_header(&entry.header).is_err()
    {
        log::warn!("authstamp: ignoring a malformed cache entry");
        return None;
    }
    Some(entry)
}

/// Writes an entry with the CAS just read. Losing a CAS race is fine: the
/// other writer's entry is as good as ours.
pub fn store(host: &dyn Host, key: &str, entry: &Entry) {
    let Some(bytes) = entry.encode() else {
        return;
    };
    let (_current, cas) = host.get_shared_data(key);
    match host.set_shared_data(key, &bytes, cas) {
        Ok(()) => {}
        Err(SharedDataError::CasMismatch) => {
            log::debug!("authstamp: cache entry written concurrently")
        }
        Err(SharedDataError::Failed) => log::warn!("authstamp: could not write the token cache"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::mock::MockHost;

    fn entry(valid_until: u64) -> Entry {
        Entry {
            app_key: "ask_1".into(),
            header: StampHeader {
                name: "authorization".into(),
                value: "Bearer tok".into(),
            },
            upstream: Upstream {
                scheme: "https".into(),
                authority: "slack.com".into(),
                base_path: String::new(),
            },
            valid_until,
        }
    }

    #[test]
    fn keys_are_unambiguous() {
        assert_ne!(key("c", "a:b", "c", "d"), key("c", "a", "b:c", "d"));
        assert_ne!(key("c", "a", "b", "cd"), key("c", "a", "bc", "d"));
        assert_ne!(key("c", "1:a", "", "x"), key("c", "", "1:a", "x"));
        assert_ne!(key("c1", "a", "p", "u"), key("c2", "a", "p", "u"));
        assert_eq!(
            key("ts", "app", "slack", "u1"),
            "authstamp/v1/2:ts3:app5:slack2:u1"
        );
    }

    #[test]
    fn expiry_uses_skew_and_max_ttl() {
        let skew = Duration::from_secs(30);
        let ttl = Duration::from_secs(300);
        assert_eq!(valid_until(1000, Some(1100), skew, ttl), 1070);
        assert_eq!(valid_until(1000, Some(100_000), skew, ttl), 1300);
        assert_eq!(valid_until(1000, None, skew, ttl), 1300);
        assert_eq!(valid_until(1000, Some(1020), skew, ttl), 990);
        assert_eq!(valid_until(1000, Some(10), skew, ttl), 0);
        // A sub-second skew rounds up, never down.
        assert_eq!(
            valid_until(1000, Some(1100), Duration::from_millis(1500), ttl),
            1098
        );
    }

    #[test]
    fn constant_time_eq_compares_bytes() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn entries_round_trip_and_debug_hides_secrets() {
        let e = entry(5);
        let bytes = e.encode().unwrap();
        assert_eq!(Entry::decode(&bytes), Some(e.clone()));
        assert_eq!(Entry::decode(b""), None);
        assert_eq!(Entry::decode(b"{"), None);
        let debug = format!("{e:?}");
        assert!(
            !debug.contains("ask_1") && !debug.contains("tok"),
            "{debug}"
        );
    }

    #[test]
    fn lookup_needs_a_valid_entry_for_the_same_key() {
        let host = MockHost::new(100);
        assert_eq!(lookup(&host, "k", "ask_1", 100), None);
        host.put_shared("k", &entry(101).encode().unwrap());
        assert!(lookup(&host, "k", "ask_1", 100).is_some());
        assert_eq!(
            lookup(&host, "k", "ask_1", 101),
            None,
            "expired at valid_until"
        );
        assert_eq!(lookup(&host, "k", "ask_2", 100), None, "another app key");
        assert_eq!(lookup(&host, "k", "", 100), None);
        host.put_shared("k", b"");
        assert_eq!(
            lookup(&host, "k", "ask_1", 100),
            None,
            "empty value means deleted"
        );
        let mut bad = entry(500);
        bad.upstream.authority = "user@evil.example".into();
        host.put_shared("k", &bad.encode().unwrap());
        assert_eq!(
            lookup(&host, "k", "ask_1", 100),
            None,
            "malformed entries are ignored"
        );
    }

    #[test]
    fn store_writes_with_the_cas_it_read() {
        let host = MockHost::new(100);
        store(&host, "k", &entry(200));
        host.put_shared("k", &entry(150).encode().unwrap());
        store(&host, "k", &entry(300));
        let writes = host.shared_writes();
        assert_eq!(
            writes[0],
            ("k".to_string(), None),
            "a new key is written unconditionally"
        );
        assert!(
            writes[1].1.is_some(),
            "an existing key is written with its CAS"
        );
        assert_eq!(
            Entry::decode(&host.shared_value("k").unwrap())
                .unwrap()
                .valid_until,
            300
        );

        host.set_cas_conflict();
        store(&host, "k", &entry(400));
        assert_eq!(
            Entry::decode(&host.shared_value("k").unwrap())
                .unwrap()
                .valid_until,
            300
        );
    }
}
