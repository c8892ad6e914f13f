//! The token cache in proxy-wasm shared data (one per VM id, shared by every
//! worker): a fixed number of slots, key and value encoding, expiry, lookup,
//! CAS write, invalidation, and the markers of lookups in flight.
//!
//! Shared data has no delete and no enumeration, so the cache never creates
//! keys on demand. It has `cache_capacity` slots, `authstamp/v2/slot/<n>`;
//! a connection's cache key (cluster, app, provider, user) hashes (FNV-1a 64,
//! stable across workers and restarts) to two candidate slots. A lookup reads
//! the first candidate and, unless it holds this key, the second; an entry
//! carries its full cache key, so a slot holding another key is a miss, never
//! a wrong token. A write goes to the candidate that already holds the key,
//! else to an unused or expired one, else evicts the entry that expires first.
//! So at most `cache_capacity` keys ever exist and memory stays flat however
//! many users pass; writing an empty value is how an entry is deleted.
//!
//! Markers (`authstamp/v2/pending/<n>`, one per slot, same bound) say "a
//! worker is asking the token service for this key until <time>", so that
//! the other workers wait for its answer instead of asking too.
//!
//! Key checks (`authstamp/v2/appkey/<cluster, app, key digest>`) say until
//! when the token service last accepted an app key: a hit trusts the entry's
//! key digest only that long (`app_key_recheck`), then one request per key
//! (not per user) takes the miss path to check it again while the others
//! are served, so that a revoked key stops working within seconds. There is
//! one per app key the token service accepted (keys are made by admins, not
//! by requests), so their number stays small too.

use std::fmt;
use std::time::Duration;

use authstamp_protocol::{credential, upstream, Credential, Placement, Upstream};

use crate::host::{Host, SharedDataError};

/// Version of the key and value layout: a change makes old entries invisible.
const SLOT_PREFIX: &str = "authstamp/v2/slot/";
const PENDING_PREFIX: &str = "authstamp/v2/pending/";

/// The cache key of a connection. Each part is length-prefixed, so the key
/// is unambiguous for any strings. The token-service cluster is part of the
/// key, so that two filter configurations sharing a VM id but asking
/// different token services never see each other's entries.
pub fn key(cluster: &str, app_id: &str, provider: &str, user: &str) -> String {
    let mut key =
        String::with_capacity(cluster.len() + app_id.len() + provider.len() + user.len() + 16);
    for part in [cluster, app_id, provider, user] {
        key.push_str(&part.len().to_string());
        key.push(':');
        key.push_str(part);
    }
    key
}

/// FNV-1a, 64 bits: stable across workers, restarts and platforms.
pub fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A cache key with its two candidate slots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slotted {
    pub key: String,
    pub slots: [u32; 2],
}

impl Slotted {
    pub fn new(key: String, capacity: u32) -> Slotted {
        let capacity = u64::from(capacity.max(1));
        let h = hash(key.as_bytes());
        // Two independent halves of the hash pick the two candidates.
        let first = (h % capacity) as u32;
        let mut second = ((h >> 32) ^ (h << 7)) % capacity;
        if second == u64::from(first) && capacity > 1 {
            second = (second + 1) % capacity;
        }
        Slotted {
            key,
            slots: [first, second as u32],
        }
    }

    /// The distinct candidate slots, first choice first.
    fn candidates(&self) -> impl Iterator<Item = u32> + '_ {
        let [a, b] = self.slots;
        std::iter::once(a).chain((b != a).then_some(b))
    }
}

pub fn slot_key(slot: u32) -> String {
    format!("{SLOT_PREFIX}{slot}")
}

fn pending_key(slot: u32) -> String {
    format!("{PENDING_PREFIX}{slot}")
}

/// Whether a shared-data key is a lookup's marker: writing one empty is
/// the release of [`release`] (the answer is in the cache, or the lookup
/// failed), the moment other workers waiting on it should look again.
pub fn is_marker_key(name: &str) -> bool {
    name.starts_with(PENDING_PREFIX)
}

/// SHA-256 of an app key: what shared data holds instead of the key, which
/// any code in the VM (or a heap dump of Envoy) could read there.
pub fn key_digest(app_key: &str) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(app_key.as_bytes()).into()
}

/// A cached token: for which cache key and app key (its digest), what to
/// stamp, where to send it and until when (Unix seconds).
#[derive(Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub app_key_digest: [u8; 32],
    pub credential: Credential,
    pub upstream: Upstream,
    pub valid_until: u64,
    /// When the token itself expires at the provider (Unix seconds), if the
    /// token service said: the bound of stale-if-error (see [`lookup_stale`]).
    pub expires_at: Option<u64>,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("key", &self.key)
            .field("app_key_digest", &"<redacted>")
            .field("credential", &self.credential)
            .field("upstream", &self.upstream)
            .field("valid_until", &self.valid_until)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// First line of an encoded entry.
const ENTRY_TAG: &str = "authstamp-entry-v4";

impl Entry {
    /// One field per line (read on every cache hit: no JSON). No field can
    /// hold a line break: identities, app keys, stamp values and upstreams
    /// are validated without control characters before they are cached; an
    /// entry that has one is not encoded.
    pub fn encode(&self) -> Option<Vec<u8>> {
        // A query credential's name is written `?name` (no header name can
        // start with `?`).
        let stamp_name = match self.credential.placement {
            Placement::Header => std::borrow::Cow::Borrowed(self.credential.name.as_str()),
            Placement::Query => std::borrow::Cow::Owned(format!("?{}", self.credential.name)),
        };
        let digest = hex(&self.app_key_digest);
        let fields = [
            self.key.as_str(),
            &digest,
            &stamp_name,
            &self.credential.value,
            &self.upstream.scheme,
            &self.upstream.authority,
            &self.upstream.base_path,
        ];
        if fields.iter().any(|f| f.contains('\n')) {
            return None;
        }
        let until = self.valid_until.to_string();
        let expires = self
            .expires_at
            .map_or_else(|| "-".to_string(), |at| at.to_string());
        let size = ENTRY_TAG.len()
            + until.len()
            + expires.len()
            + fields.iter().map(|f| f.len() + 1).sum::<usize>()
            + 2;
        let mut out = String::with_capacity(size);
        out.push_str(ENTRY_TAG);
        out.push('\n');
        out.push_str(&until);
        out.push('\n');
        out.push_str(&expires);
        for field in fields {
            out.push('\n');
            out.push_str(field);
        }
        Some(out.into_bytes())
    }

    /// An entry from shared data; an empty value means deleted.
    pub fn decode(bytes: &[u8]) -> Option<Entry> {
        if bytes.is_empty() {
            return None;
        }
        let text = std::str::from_utf8(bytes).ok()?;
        let mut fields = text.split('\n');
        if fields.next()? != ENTRY_TAG {
            return None;
        }
        let valid_until = fields.next()?.parse().ok()?;
        let expires_at = match fields.next()? {
            "-" => None,
            at => Some(at.parse().ok()?),
        };
        let mut next = || fields.next().map(str::to_string);
        let entry = Entry {
            key: next()?,
            app_key_digest: unhex(&next()?)?,
            credential: {
                let name = next()?;
                let value = next()?;
                match name.strip_prefix('?') {
                    Some(query) => Credential {
                        name: query.to_string(),
                        value,
                        placement: Placement::Query,
                    },
                    None => Credential {
                        name,
                        value,
                        placement: Placement::Header,
                    },
                }
            },
            upstream: Upstream {
                scheme: next()?,
                authority: next()?,
                base_path: next()?,
            },
            valid_until,
            expires_at,
        };
        if fields.next().is_some() {
            return None;
        }
        Some(entry)
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

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// A 32-byte digest from its lowercase hex.
fn unhex(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let nibble = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let [high, low] = pair else {
            return None;
        };
        *byte = nibble(*high)? << 4 | nibble(*low)?;
    }
    Some(out)
}

/// Byte-wise equality in time independent of where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}

/// The entry of `key` in its first candidate slot that holds it, if any.
fn find(host: &dyn Host, key: &Slotted) -> Option<Entry> {
    for slot in key.candidates() {
        let (value, _cas) = host.get_shared_data(&slot_key(slot));
        let Some(entry) = value.as_deref().and_then(Entry::decode) else {
            continue;
        };
        if entry.key == key.key {
            return Some(entry);
        }
    }
    None
}

/// A usable entry: present, not deleted, for this cache key, well formed,
/// still valid at `now`, and for the app key of this digest.
pub fn lookup(
    host: &dyn Host,
    key: &Slotted,
    app_key_digest: &[u8; 32],
    now: u64,
) -> Option<Entry> {
    let entry = find(host, key)?;
    if entry.valid_until <= now {
        return None;
    }
    if !constant_time_eq(&entry.app_key_digest, app_key_digest) {
        return None;
    }
    // Only this filter writes these keys, after validating the answer in
    // full; a cheap check of the shape is enough here.
    if upstream::check_shape(&entry.upstream).is_err()
        || credential::check(&entry.credential).is_err()
    {
        log::warn!("authstamp: ignoring a malformed cache entry");
        return None;
    }
    Some(entry)
}

/// Stale-if-error: an entry of `key` for this app key past its cache
/// validity (the refresh skew, `max_cache_ttl`) whose token is still valid
/// at the provider at `now` (its real expiry is known and later), for when
/// the token service cannot answer. Never past the expiry; an entry
/// without a known expiry is never served stale.
pub fn lookup_stale(
    host: &dyn Host,
    key: &Slotted,
    app_key_digest: &[u8; 32],
    now: u64,
) -> Option<Entry> {
    let entry = find(host, key)?;
    if entry.expires_at.is_none_or(|at| at <= now) {
        return None;
    }
    if !constant_time_eq(&entry.app_key_digest, app_key_digest) {
        return None;
    }
    if upstream::check_shape(&entry.upstream).is_err()
        || credential::check(&entry.credential).is_err()
    {
        return None;
    }
    Some(entry)
}

/// What a write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    /// Written into a slot that did not exist yet.
    NewSlot,
    /// Written into an existing slot.
    Replaced,
    /// Not written: another writer won the CAS race, or the host refused.
    Skipped,
}

/// Writes an entry into the best candidate slot, with the CAS just read:
/// the slot holding this key, else one that is deleted, unreadable or
/// expired, else one that does not exist yet, else the one whose entry
/// expires first. Losing a
/// CAS race is fine: the other writer's entry is as good as ours.
pub fn store(host: &dyn Host, key: &Slotted, entry: &Entry, now: u64) -> Stored {
    let Some(bytes) = entry.encode() else {
        return Stored::Skipped;
    };
    // (rank, slot, cas, exists): the lowest rank wins, first candidate on ties.
    let mut best: Option<(u64, u32, Option<u32>, bool)> = None;
    for slot in key.candidates() {
        let (value, cas) = host.get_shared_data(&slot_key(slot));
        let rank = match value.as_deref().map(Entry::decode) {
            Some(Some(held)) if held.key == key.key => 0,
            // Reusing a dead slot before creating one keeps fewer keys.
            Some(None) => 1,
            Some(Some(held)) if held.valid_until <= now => 1,
            None => 2,
            Some(Some(held)) => 3 + held.valid_until.saturating_sub(now),
        };
        if best.is_none_or(|(r, ..)| rank < r) {
            best = Some((rank, slot, cas, value.is_some()));
        }
    }
    let Some((_, slot, cas, existed)) = best else {
        return Stored::Skipped;
    };
    match host.set_shared_data(&slot_key(slot), &bytes, cas) {
        Ok(()) if existed => Stored::Replaced,
        Ok(()) => Stored::NewSlot,
        Err(SharedDataError::CasMismatch) => {
            log::debug!("authstamp: cache slot written concurrently");
            Stored::Skipped
        }
        Err(SharedDataError::Failed) => {
            log::warn!("authstamp: could not write the token cache");
            Stored::Skipped
        }
    }
}

/// Deletes the entry of `key` if it still holds the token whose value
/// hashes to `stamped` (a provider refused that token). Returns `true` when
/// this call deleted it: the caller then asks for a fresh token; a later
/// 401 for the same, already deleted token does nothing.
pub fn invalidate(host: &dyn Host, key: &Slotted, stamped: u64) -> bool {
    let mut deleted = false;
    for slot in key.candidates() {
        let name = slot_key(slot);
        let (value, cas) = host.get_shared_data(&name);
        let Some(entry) = value.as_deref().and_then(Entry::decode) else {
            continue;
        };
        if entry.key == key.key
            && hash(entry.credential.value.as_bytes()) == stamped
            && host.set_shared_data(&name, b"", cas).is_ok()
        {
            deleted = true;
        }
    }
    deleted
}

const KEY_CHECK_PREFIX: &str = "authstamp/v2/appkey/";
const KEY_CHECK_TAG: &str = "authstamp-keycheck-v1";

/// The shared-data name of the key check of an app key (by its digest) of
/// `app_id` at the token service of `cluster`.
pub fn key_check_name(cluster: &str, app_id: &str, app_key_digest: &[u8; 32]) -> String {
    format!(
        "{KEY_CHECK_PREFIX}{}",
        key(cluster, app_id, &hex(app_key_digest), "")
    )
}

/// What the token service last said about an app key, in Unix ms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyCheck {
    /// Accepted: hits trust the key until then.
    pub verified_until_ms: u64,
    /// A request is rechecking it until then: hits are served meanwhile.
    pub lease_until_ms: u64,
    /// Refused (revoked): every request with it takes the miss path.
    pub refused: bool,
}

impl KeyCheck {
    fn encode(&self) -> Vec<u8> {
        format!(
            "{KEY_CHECK_TAG}\n{}\n{}\n{}",
            self.verified_until_ms,
            self.lease_until_ms,
            u8::from(self.refused)
        )
        .into_bytes()
    }

    fn decode(bytes: &[u8]) -> Option<KeyCheck> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut fields = text.split('\n');
        if fields.next()? != KEY_CHECK_TAG {
            return None;
        }
        let check = KeyCheck {
            verified_until_ms: fields.next()?.parse().ok()?,
            lease_until_ms: fields.next()?.parse().ok()?,
            refused: match fields.next()? {
                "0" => false,
                "1" => true,
                _ => return None,
            },
        };
        fields.next().is_none().then_some(check)
    }

    /// Whether a hit may trust the key at `now_ms`: accepted and not stale,
    /// or another request is rechecking it.
    fn trusted(&self, now_ms: u64) -> bool {
        !self.refused && (self.verified_until_ms > now_ms || self.lease_until_ms > now_ms)
    }
}

/// What a cache hit does about its app key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyVerdict {
    /// Stamp from the cache.
    Trusted,
    /// Take the miss path: its lookup checks the key at the token service.
    Recheck,
}

/// On a cache hit: whether the key of check `name` is trusted at `now_ms`
/// (one shared-data read). If its check is stale, this request claims the
/// recheck for `lease_ms` and takes the miss path, while the other hits
/// with the key are served until the lease ends; a refused key is always
/// rechecked.
pub fn check_key(host: &dyn Host, name: &str, now_ms: u64, lease_ms: u64) -> KeyVerdict {
    let (value, cas) = host.get_shared_data(name);
    let check = value.as_deref().and_then(KeyCheck::decode);
    if check.is_some_and(|c| c.trusted(now_ms)) {
        return KeyVerdict::Trusted;
    }
    if check.is_some_and(|c| c.refused) {
        return KeyVerdict::Recheck;
    }
    let claimed = KeyCheck {
        lease_until_ms: now_ms.saturating_add(lease_ms),
        ..check.unwrap_or_default()
    };
    match host.set_shared_data(name, &claimed.encode(), cas) {
        Ok(()) | Err(SharedDataError::Failed) => KeyVerdict::Recheck,
        Err(SharedDataError::CasMismatch) => {
            // Another worker wrote it just now: a lease or a verdict.
            let (value, _) = host.get_shared_data(name);
            let check = value.as_deref().and_then(KeyCheck::decode);
            if check.is_some_and(|c| c.trusted(now_ms)) {
                KeyVerdict::Trusted
            } else {
                KeyVerdict::Recheck
            }
        }
    }
}

/// Whether the token service accepted the key of check `name` within its
/// recheck interval (a lease does not count): for a request that missed and
/// waits for another worker's lookup, which must not stamp a revoked key
/// from an older entry.
pub fn key_verified(host: &dyn Host, name: &str, now_ms: u64) -> bool {
    let (value, _) = host.get_shared_data(name);
    value
        .as_deref()
        .and_then(KeyCheck::decode)
        .is_some_and(|c| !c.refused && c.verified_until_ms > now_ms)
}

/// Whether the token service has refused the key of check `name` (revoked,
/// unknown): such a key is never served, not even stale.
pub fn key_refused_before(host: &dyn Host, name: &str) -> bool {
    let (value, _) = host.get_shared_data(name);
    value
        .as_deref()
        .and_then(KeyCheck::decode)
        .is_some_and(|c| c.refused)
}

/// The token service accepted the key of check `name` at `now_ms`: hits
/// trust it for `recheck_ms`.
pub fn key_accepted(host: &dyn Host, name: &str, now_ms: u64, recheck_ms: u64) {
    let accepted = KeyCheck {
        verified_until_ms: now_ms.saturating_add(recheck_ms),
        lease_until_ms: 0,
        refused: false,
    };
    write_key_check(host, name, &accepted, true);
}

/// The token service refused the key of check `name` (revoked): every
/// request with it takes the miss path until it is accepted again. Only an
/// existing check is written, so unknown keys never create one.
pub fn key_refused(host: &dyn Host, name: &str) {
    let refused = KeyCheck {
        refused: true,
        ..KeyCheck::default()
    };
    write_key_check(host, name, &refused, false);
}

fn write_key_check(host: &dyn Host, name: &str, check: &KeyCheck, create: bool) {
    // A CAS conflict is another worker's write meanwhile: read and try once more.
    for _ in 0..2 {
        let (value, cas) = host.get_shared_data(name);
        if value.is_none() && !create {
            return;
        }
        match host.set_shared_data(name, &check.encode(), cas) {
            Ok(()) => return,
            Err(SharedDataError::CasMismatch) => continue,
            Err(SharedDataError::Failed) => {
                log::warn!("authstamp: could not write an app key check");
                return;
            }
        }
    }
}

/// A lookup in flight somewhere, as its marker says.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Marker {
    until_ms: u64,
    key: String,
}

impl Marker {
    fn encode(&self) -> Vec<u8> {
        format!("{}\n{}", self.until_ms, self.key).into_bytes()
    }

    fn decode(bytes: &[u8]) -> Option<Marker> {
        let text = std::str::from_utf8(bytes).ok()?;
        let (until, key) = text.split_once('\n')?;
        Some(Marker {
            until_ms: until.parse().ok()?,
            key: key.to_string(),
        })
    }
}

/// The answer of [`claim`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Ask the token service; the marker (if written) expires at `until_ms`.
    Ask { until_ms: u64 },
    /// Another worker is asking for this key until `until_ms`: wait for its answer.
    Wait { until_ms: u64 },
}

fn live_marker(value: Option<&[u8]>, key: &Slotted, now_ms: u64) -> Option<Marker> {
    let marker = Marker::decode(value?)?;
    (marker.key == key.key && marker.until_ms > now_ms).then_some(marker)
}

/// Before asking the token service for `key`: if another worker's marker
/// for it is live, wait for that; otherwise write ours (until `now_ms +
/// ttl_ms`) and ask. `force` asks regardless (a forced refresh must not wait
/// for a plain lookup that may bring back the refused token). In proxy-wasm
/// inserting a new key never fails CAS, so two workers may both ask for a key
/// whose marker slot never existed; once it exists, the CAS makes the claim
/// exclusive (in the native memory store, from the first claim on).
pub fn claim(host: &dyn Host, key: &Slotted, now_ms: u64, ttl_ms: u64, force: bool) -> Claim {
    let name = pending_key(key.slots[0]);
    let (value, cas) = host.get_shared_data(&name);
    if !force {
        if let Some(marker) = live_marker(value.as_deref(), key, now_ms) {
            return Claim::Wait {
                until_ms: marker.until_ms,
            };
        }
    }
    let until_ms = now_ms.saturating_add(ttl_ms);
    let ours = Marker {
        until_ms,
        key: key.key.clone(),
    };
    match host.set_shared_data(&name, &ours.encode(), cas) {
        Ok(()) | Err(SharedDataError::Failed) => Claim::Ask { until_ms },
        Err(SharedDataError::CasMismatch) => {
            let (value, _) = host.get_shared_data(&name);
            match live_marker(value.as_deref(), key, now_ms) {
                Some(marker) if !force => Claim::Wait {
                    until_ms: marker.until_ms,
                },
                // Someone else's key took the marker slot: ask without a marker.
                _ => Claim::Ask { until_ms: 0 },
            }
        }
    }
}

/// Whether a live marker still says that someone asks for `key`.
pub fn is_pending(host: &dyn Host, key: &Slotted, now_ms: u64) -> bool {
    let (value, _) = host.get_shared_data(&pending_key(key.slots[0]));
    live_marker(value.as_deref(), key, now_ms).is_some()
}

/// Clears our marker for `key` (the one that expires at `until_ms`) once the
/// answer is in, so that waiting workers look at the cache at once.
pub fn release(host: &dyn Host, key: &Slotted, until_ms: u64) {
    if until_ms == 0 {
        return;
    }
    let name = pending_key(key.slots[0]);
    let (value, cas) = host.get_shared_data(&name);
    let ours = value
        .as_deref()
        .and_then(Marker::decode)
        .is_some_and(|m| m.key == key.key && m.until_ms == until_ms);
    if ours {
        let _ = host.set_shared_data(&name, b"", cas);
    }
}

const FORCED_PREFIX: &str = "authstamp/v2/forced/";

/// The answer of [`may_force`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Force {
    /// Recorded: ask for it.
    Allowed,
    /// The connection's last forced refresh was asked for at `at_ms`, within
    /// the interval (by any worker).
    Refused { at_ms: u64 },
}

/// Whether a forced refresh of `key` may be asked for now: at most one per
/// `interval_ms` per connection across all workers (the last one's time is
/// kept in shared data). A CAS conflict is another worker forcing at the
/// same moment.
pub fn may_force(host: &dyn Host, key: &Slotted, now_ms: u64, interval_ms: u64) -> Force {
    let name = format!("{FORCED_PREFIX}{}", key.slots[0]);
    let (value, cas) = host.get_shared_data(&name);
    let last = value
        .as_deref()
        .and_then(Marker::decode)
        .filter(|last| last.key == key.key);
    if let Some(last) = last {
        if now_ms < last.until_ms.saturating_add(interval_ms) {
            return Force::Refused {
                at_ms: last.until_ms,
            };
        }
    }
    let ours = Marker {
        until_ms: now_ms,
        key: key.key.clone(),
    };
    match host.set_shared_data(&name, &ours.encode(), cas) {
        Ok(()) | Err(SharedDataError::Failed) => Force::Allowed,
        Err(SharedDataError::CasMismatch) => Force::Refused { at_ms: now_ms },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::mock::MockHost;

    fn entry_for(key: &Slotted, valid_until: u64) -> Entry {
        Entry {
            key: key.key.clone(),
            app_key_digest: key_digest("ask_1"),
            credential: Credential {
                name: "authorization".into(),
                value: format!("Bearer tok-{}", key.key),
                placement: Placement::Header,
            },
            upstream: Upstream {
                scheme: "https".into(),
                authority: "slack.com".into(),
                base_path: String::new(),
            },
            valid_until,
            expires_at: None,
        }
    }

    fn slotted(user: &str, capacity: u32) -> Slotted {
        Slotted::new(key("ts", "app", "slack", user), capacity)
    }

    #[test]
    fn keys_are_unambiguous() {
        assert_ne!(key("c", "a:b", "c", "d"), key("c", "a", "b:c", "d"));
        assert_ne!(key("c", "a", "b", "cd"), key("c", "a", "bc", "d"));
        assert_ne!(key("c", "1:a", "", "x"), key("c", "", "1:a", "x"));
        assert_ne!(key("c1", "a", "p", "u"), key("c2", "a", "p", "u"));
        assert_eq!(key("ts", "app", "slack", "u1"), "2:ts3:app5:slack2:u1");
    }

    #[test]
    fn slots_are_stable_distinct_and_within_capacity() {
        // FNV-1a test vectors: the hash must never change, or every
        // worker of a running Envoy would look in different slots.
        assert_eq!(hash(b""), 0xcbf29ce484222325);
        assert_eq!(hash(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(hash(b"foobar"), 0x85944171f73967e8);
        for capacity in [1, 2, 3, 16, 1000] {
            for i in 0..200 {
                let k = slotted(&format!("user{i}"), capacity);
                assert!(k.slots.iter().all(|s| *s < capacity), "{k:?}");
                if capacity > 1 {
                    assert_ne!(k.slots[0], k.slots[1], "{k:?}");
                }
                assert_eq!(k, slotted(&format!("user{i}"), capacity));
            }
        }
        // The slots spread: 1000 keys over 64 slots use nearly all of them.
        let mut used = std::collections::HashSet::new();
        for i in 0..1000 {
            used.extend(slotted(&format!("u{i}"), 64).slots);
        }
        assert!(used.len() >= 60, "{}", used.len());
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
        let e = entry_for(&slotted("u", 8), 5);
        let bytes = e.encode().unwrap();
        assert_eq!(Entry::decode(&bytes), Some(e.clone()));
        assert_eq!(Entry::decode(b""), None);
        assert_eq!(Entry::decode(b"{"), None);
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert_eq!(Entry::decode(format!("{text}\nextra").as_bytes()), None);
        let short = text.rsplit_once('\n').unwrap().0;
        assert_eq!(Entry::decode(short.as_bytes()), None);
        let mut query = e.clone();
        query.credential.name = "api_key".into();
        query.credential.placement = Placement::Query;
        let encoded = query.encode().unwrap();
        assert!(String::from_utf8_lossy(&encoded).contains("\n?api_key\n"));
        assert_eq!(
            Entry::decode(&encoded),
            Some(query),
            "a query credential stays one"
        );
        let mut broken = e.clone();
        broken.credential.value = "Bearer a\nb".into();
        assert_eq!(broken.encode(), None, "no line break is ever encoded");
        let debug = format!("{e:?}");
        assert!(
            !debug.contains("ask_1") && !debug.contains("tok-"),
            "{debug}"
        );
    }

    #[test]
    fn lookup_needs_a_valid_entry_for_the_same_key() {
        let host = MockHost::new(100);
        let k = slotted("alice", 8);
        assert_eq!(lookup(&host, &k, &key_digest("ask_1"), 100), None);
        assert_eq!(store(&host, &k, &entry_for(&k, 101), 100), Stored::NewSlot);
        assert!(lookup(&host, &k, &key_digest("ask_1"), 100).is_some());
        assert_eq!(
            lookup(&host, &k, &key_digest("ask_1"), 101),
            None,
            "expired at valid_until"
        );
        assert_eq!(
            lookup(&host, &k, &key_digest("ask_2"), 100),
            None,
            "another app key"
        );
        assert_eq!(lookup(&host, &k, &key_digest(""), 100), None);
        host.put_shared(&slot_key(k.slots[0]), b"");
        host.put_shared(&slot_key(k.slots[1]), b"");
        assert_eq!(
            lookup(&host, &k, &key_digest("ask_1"), 100),
            None,
            "empty value means deleted"
        );
        let mut bad = entry_for(&k, 500);
        bad.upstream.authority = "user@evil.example".into();
        host.put_shared(&slot_key(k.slots[0]), &bad.encode().unwrap());
        assert_eq!(
            lookup(&host, &k, &key_digest("ask_1"), 100),
            None,
            "malformed entries are ignored"
        );
    }

    #[test]
    fn a_slot_holding_another_key_is_a_miss_never_its_token() {
        let host = MockHost::new(100);
        let alice = slotted("alice", 8);
        let bob = slotted("bob", 8);
        // Bob's entry sits in both of alice's candidate slots.
        let mut planted = entry_for(&bob, 500);
        planted.key = bob.key.clone();
        for slot in alice.slots {
            host.put_shared(&slot_key(slot), &planted.encode().unwrap());
        }
        assert_eq!(lookup(&host, &alice, &key_digest("ask_1"), 100), None);
        // Alice's entry in her second slot is found.
        host.put_shared(
            &slot_key(alice.slots[1]),
            &entry_for(&alice, 500).encode().unwrap(),
        );
        let found = lookup(&host, &alice, &key_digest("ask_1"), 100).unwrap();
        assert_eq!(found.credential.value, format!("Bearer tok-{}", alice.key));
    }

    #[test]
    fn store_prefers_the_own_slot_then_a_free_one_then_the_first_to_expire() {
        let host = MockHost::new(100);
        let k = slotted("alice", 8);
        let [first, second] = k.slots.map(slot_key);
        let other = |until| {
            let mut e = entry_for(&slotted("zed", 8), until);
            e.key = "someone else".into();
            e.encode().unwrap()
        };
        // Both free: the first candidate.
        assert_eq!(store(&host, &k, &entry_for(&k, 200), 100), Stored::NewSlot);
        assert!(host.shared_value(&first).is_some());
        assert!(host.shared_value(&second).is_none());
        // Its own slot again, even when the other one is free.
        assert_eq!(store(&host, &k, &entry_for(&k, 300), 100), Stored::Replaced);
        assert!(host.shared_value(&second).is_none());

        // First held by a live entry, second free: the second.
        let host = MockHost::new(100);
        host.put_shared(&first, &other(500));
        assert_eq!(store(&host, &k, &entry_for(&k, 200), 100), Stored::NewSlot);
        assert_eq!(host.shared_value(&first).unwrap(), other(500));
        assert!(lookup(&host, &k, &key_digest("ask_1"), 100).is_some());

        // Both live: the one that expires first is evicted.
        let host = MockHost::new(100);
        host.put_shared(&first, &other(900));
        host.put_shared(&second, &other(400));
        assert_eq!(store(&host, &k, &entry_for(&k, 200), 100), Stored::Replaced);
        assert_eq!(host.shared_value(&first).unwrap(), other(900));
        assert!(lookup(&host, &k, &key_digest("ask_1"), 100).is_some());

        // An expired or deleted entry goes before a live one.
        let host = MockHost::new(100);
        host.put_shared(&first, &other(900));
        host.put_shared(&second, &other(50));
        store(&host, &k, &entry_for(&k, 200), 100);
        assert_eq!(host.shared_value(&first).unwrap(), other(900));
        let host = MockHost::new(100);
        host.put_shared(&first, &other(900));
        host.put_shared(&second, b"");
        store(&host, &k, &entry_for(&k, 200), 100);
        assert_eq!(host.shared_value(&first).unwrap(), other(900));
    }

    #[test]
    fn store_writes_with_the_cas_it_read() {
        let host = MockHost::new(100);
        let k = slotted("alice", 1);
        assert_eq!(k.slots, [0, 0]);
        store(&host, &k, &entry_for(&k, 200), 100);
        store(&host, &k, &entry_for(&k, 300), 100);
        let writes = host.shared_writes();
        assert_eq!(
            writes[0],
            (slot_key(0), None),
            "a new key is written unconditionally"
        );
        assert!(
            writes[1].1.is_some(),
            "an existing key is written with its CAS"
        );
        host.set_cas_conflict();
        assert_eq!(store(&host, &k, &entry_for(&k, 400), 100), Stored::Skipped);
        let held = Entry::decode(&host.shared_value(&slot_key(0)).unwrap()).unwrap();
        assert_eq!(held.valid_until, 300);
    }

    #[test]
    fn a_hundred_thousand_users_never_make_more_keys_than_the_capacity() {
        // Every key maps into 0..capacity (checked for a million keys), so
        // no number of users makes more slot keys than that.
        for i in 0..1_000_000u32 {
            let k = Slotted::new(i.to_string(), 1024);
            assert!(k.slots[0] < 1024 && k.slots[1] < 1024);
        }
        let host = MockHost::new(100);
        let capacity = 1024;
        let mut new_slots = 0;
        for i in 0..100_000u32 {
            let k = Slotted::new(key("ts", "app", "slack", &i.to_string()), capacity);
            if store(&host, &k, &entry_for(&k, 1000 + u64::from(i % 500)), 100) == Stored::NewSlot {
                new_slots += 1;
            }
        }
        let keys = host.shared_keys();
        assert_eq!(keys.len(), capacity as usize, "every slot used, none more");
        assert_eq!(new_slots, capacity);
        assert!(keys.iter().all(|k| k.starts_with(SLOT_PREFIX)));
        // The most recent users are still served.
        let recent = Slotted::new(key("ts", "app", "slack", "99999"), capacity);
        assert!(lookup(&host, &recent, &key_digest("ask_1"), 100).is_some());
    }

    #[test]
    fn invalidate_deletes_only_the_refused_token() {
        let host = MockHost::new(100);
        let k = slotted("alice", 8);
        let e = entry_for(&k, 500);
        store(&host, &k, &e, 100);
        let refused = hash(e.credential.value.as_bytes());
        assert!(!invalidate(&host, &k, hash(b"Bearer another")));
        assert!(lookup(&host, &k, &key_digest("ask_1"), 100).is_some());
        assert!(!invalidate(&host, &slotted("bob", 8), refused));
        assert!(invalidate(&host, &k, refused));
        assert_eq!(lookup(&host, &k, &key_digest("ask_1"), 100), None);
        assert!(!invalidate(&host, &k, refused), "already deleted");
    }

    #[test]
    fn markers_make_other_workers_wait_until_released_or_expired() {
        let host = MockHost::new(100);
        let k = slotted("alice", 8);
        let Claim::Ask { until_ms } = claim(&host, &k, 1_000, 2_000, false) else {
            panic!("first claim asks")
        };
        assert_eq!(until_ms, 3_000);
        assert!(is_pending(&host, &k, 1_500));
        assert_eq!(
            claim(&host, &k, 1_500, 2_000, false),
            Claim::Wait { until_ms: 3_000 }
        );
        // Another key in the same marker slot does not wait.
        let other = Slotted {
            key: "other".into(),
            slots: k.slots,
        };
        assert!(!is_pending(&host, &other, 1_500));
        // A forced refresh asks anyway.
        assert!(matches!(
            claim(&host, &k, 1_500, 2_000, true),
            Claim::Ask { until_ms: 3_500 }
        ));
        // Released only by its owner.
        release(&host, &k, 3_000);
        assert!(is_pending(&host, &k, 1_600));
        release(&host, &k, 3_500);
        assert!(!is_pending(&host, &k, 1_600));
        // An expired marker does not hold anyone.
        claim(&host, &k, 10_000, 2_000, false);
        assert!(is_pending(&host, &k, 11_999));
        assert!(!is_pending(&host, &k, 12_000));
        assert!(matches!(
            claim(&host, &k, 12_000, 2_000, false),
            Claim::Ask { .. }
        ));
        assert_eq!(
            host.shared_keys()
                .iter()
                .filter(|k| k.starts_with(PENDING_PREFIX))
                .count(),
            1,
            "one marker key per slot, reused"
        );
    }

    #[test]
    fn a_refused_marker_write_still_asks() {
        let host = MockHost::new(100);
        let k = slotted("alice", 8);
        claim(&host, &k, 1_000, 2_000, false);
        release(&host, &k, 3_000);
        // Someone wrote the marker slot between our read and our write, and
        // what is there now is no live marker of this key: ask, without a marker.
        host.set_cas_conflict();
        assert_eq!(
            claim(&host, &k, 4_000, 2_000, false),
            Claim::Ask { until_ms: 0 }
        );
        release(&host, &k, 0);
        assert!(!is_pending(&host, &k, 4_000));
    }

    #[test]
    fn an_entry_holds_the_digest_of_the_app_key_never_the_key() {
        let host = MockHost::new(100);
        let k = slotted("alice", 8);
        let app_key = "ask_Zq8v-secret-app-key";
        let mut entry = entry_for(&k, 500);
        entry.app_key_digest = key_digest(app_key);
        store(&host, &k, &entry, 100);
        let bytes = host.shared_value(&slot_key(k.slots[0])).unwrap();
        let text = String::from_utf8(bytes).unwrap();
        assert!(!text.contains(app_key), "{text}");
        assert!(!text.contains("secret-app"), "{text}");
        // SHA-256 test vector, so the digest is the standard one.
        assert_eq!(
            hex(&key_digest("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(text.contains(&hex(&key_digest(app_key))), "{text}");
        assert!(lookup(&host, &k, &key_digest(app_key), 100).is_some());
        for other in ["ask_Zq8v-secret-app-keY", "ask_Zq8v-secret-app-ke", ""] {
            assert_eq!(lookup(&host, &k, &key_digest(other), 100), None, "{other}");
        }
        // An entry of the earlier layout (the key in clear) is no entry.
        let old = text
            .replacen("authstamp-entry-v3", "authstamp-entry-v2", 1)
            .replacen(&hex(&key_digest(app_key)), app_key, 1);
        assert_eq!(Entry::decode(old.as_bytes()), None);
        assert_eq!(
            Entry::decode(
                text.replacen(&hex(&key_digest(app_key)), "zz", 1)
                    .as_bytes()
            ),
            None
        );
    }

    #[test]
    fn key_checks_trust_an_accepted_key_until_stale_then_lease_one_recheck() {
        let host = MockHost::new(100);
        let name = key_check_name("ts", "app", &key_digest("ask_1"));
        assert!(!name.contains("ask_1"), "{name}");
        assert_ne!(name, key_check_name("ts", "app", &key_digest("ask_2")));
        assert_ne!(name, key_check_name("ts2", "app", &key_digest("ask_1")));
        // Refusing an unknown key writes nothing.
        key_refused(&host, &name);
        assert!(host.shared_value(&name).is_none());

        key_accepted(&host, &name, 1_000, 5_000);
        assert_eq!(check_key(&host, &name, 5_999, 900), KeyVerdict::Trusted);
        assert!(key_verified(&host, &name, 5_999));
        // Stale: the first caller rechecks, the next ones are served for the lease.
        assert_eq!(check_key(&host, &name, 6_000, 900), KeyVerdict::Recheck);
        assert_eq!(check_key(&host, &name, 6_899, 900), KeyVerdict::Trusted);
        assert!(!key_verified(&host, &name, 6_000), "a lease is no verdict");
        assert_eq!(check_key(&host, &name, 6_900, 900), KeyVerdict::Recheck);
        key_refused(&host, &name);
        for now in [6_901, 7_000, 100_000] {
            assert_eq!(
                check_key(&host, &name, now, 900),
                KeyVerdict::Recheck,
                "{now}"
            );
        }
        key_accepted(&host, &name, 100_000, 5_000);
        assert_eq!(check_key(&host, &name, 100_001, 900), KeyVerdict::Trusted);

        // Garbage is a stale check; a lost CAS race reads again (still stale).
        host.put_shared(&name, b"authstamp-keycheck-v1\n1\n2");
        assert_eq!(check_key(&host, &name, 100_001, 900), KeyVerdict::Recheck);
        host.put_shared(&name, b"authstamp-keycheck-v1\n1\n2\n0");
        host.set_cas_conflict();
        assert_eq!(check_key(&host, &name, 100_001, 900), KeyVerdict::Recheck);
    }
}
