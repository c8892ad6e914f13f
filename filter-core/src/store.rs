//! [`SharedStore`] in plain process memory, for hosts whose workers are
//! threads of one process (the native Envoy module): the same key/value/CAS
//! contract as proxy-wasm shared data, so the cache's slot and eviction
//! rules, its markers and key checks run unchanged. Sharded by key hash so
//! that workers rarely contend on one lock.
//!
//! One difference, on purpose: a key never written reads with CAS 0, and a
//! write with CAS 0 creates it only if nobody did in between (proxy-wasm
//! shared data has no CAS for an absent key, so there two first writes both
//! win). So the first claim of a lookup's marker is exclusive too, and a
//! cold key makes one token-service call across all workers.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::cache;
use crate::host::{SharedDataError, SharedStore};

const SHARDS: usize = 64;
/// The CAS of a key never written (a written key's is never 0).
const ABSENT_CAS: u32 = 0;

type Shard = HashMap<String, (Vec<u8>, u32)>;

/// Called after a lookup's marker is released (see [`MemoryStore::with_release_hook`]).
pub type ReleaseHook = Box<dyn Fn() + Send + Sync>;

/// Keys with their value and CAS, shared by every thread (`Sync`).
pub struct MemoryStore {
    shards: Vec<Mutex<Shard>>,
    on_release: Option<ReleaseHook>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            on_release: None,
        }
    }
}

impl std::fmt::Debug for MemoryStore {
    // Values are cache entries (tokens): never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// A store that calls `hook` (outside its locks) each time a lookup's
    /// marker is released: the host then wakes the workers waiting on
    /// another worker's lookup (each runs [`crate::stream::WorkerFilter::on_tick`]
    /// on its own thread) instead of having them poll.
    pub fn with_release_hook(hook: ReleaseHook) -> MemoryStore {
        MemoryStore {
            on_release: Some(hook),
            ..MemoryStore::default()
        }
    }

    fn shard(&self, key: &str) -> MutexGuard<'_, Shard> {
        let index = (cache::hash(key.as_bytes()) % SHARDS as u64) as usize;
        // `index` < SHARDS = the number of shards. A panic elsewhere while
        // holding a lock leaves whole entries (each write is one insert):
        // the data is still usable.
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// How many keys exist (the cache bounds them by its capacity).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl SharedStore for MemoryStore {
    fn get_shared_data(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        match self.shard(key).get(key) {
            Some((value, cas)) => (Some(value.clone()), Some(*cas)),
            None => (None, Some(ABSENT_CAS)),
        }
    }

    fn set_shared_data(
        &self,
        key: &str,
        value: &[u8],
        cas: Option<u32>,
    ) -> Result<(), SharedDataError> {
        self.write(key, value, cas)?;
        if value.is_empty() && cache::is_marker_key(key) {
            if let Some(hook) = &self.on_release {
                hook();
            }
        }
        Ok(())
    }
}

impl MemoryStore {
    fn write(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedDataError> {
        let mut shard = self.shard(key);
        match shard.get_mut(key) {
            Some((held, current)) => {
                if cas.is_some_and(|expected| expected != *current) {
                    return Err(SharedDataError::CasMismatch);
                }
                held.clear();
                held.extend_from_slice(value);
                // Never 0, so that a CAS read before any write cannot match.
                *current = current.wrapping_add(1).max(1);
            }
            None => {
                if cas.is_some_and(|expected| expected != ABSENT_CAS) {
                    return Err(SharedDataError::CasMismatch);
                }
                shard.insert(key.to_string(), (value.to_vec(), 1));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn writes_honour_cas_and_an_absent_key_has_cas_zero() {
        let store = MemoryStore::default();
        assert_eq!(store.get_shared_data("k"), (None, Some(0)));
        assert_eq!(
            store.set_shared_data("k", b"a", Some(7)),
            Err(SharedDataError::CasMismatch)
        );
        assert_eq!(store.set_shared_data("k", b"a", Some(0)), Ok(()));
        let (value, cas) = store.get_shared_data("k");
        assert_eq!(value.as_deref(), Some(&b"a"[..]));
        let cas = cas.unwrap();
        assert_eq!(store.set_shared_data("k", b"b", Some(cas)), Ok(()));
        assert_eq!(
            store.set_shared_data("k", b"c", Some(cas)),
            Err(SharedDataError::CasMismatch),
            "a stale CAS loses"
        );
        assert_eq!(store.set_shared_data("k", b"d", None), Ok(()));
        assert_eq!(store.get_shared_data("k").0.as_deref(), Some(&b"d"[..]));
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn of_two_first_claims_of_a_marker_read_before_either_writes_one_wins() {
        let store = MemoryStore::default();
        let marker = "authstamp/v2/pending/9";
        let (_, first) = store.get_shared_data(marker);
        let (_, second) = store.get_shared_data(marker);
        assert_eq!(store.set_shared_data(marker, b"worker 1", first), Ok(()));
        assert_eq!(
            store.set_shared_data(marker, b"worker 2", second),
            Err(SharedDataError::CasMismatch),
            "the second worker waits for the first one's lookup"
        );
        assert_eq!(
            store.get_shared_data(marker).0.as_deref(),
            Some(&b"worker 1"[..])
        );
        // Without a CAS a write still creates or replaces.
        assert_eq!(store.set_shared_data("other", b"x", None), Ok(()));
    }

    #[test]
    fn a_released_marker_calls_the_hook_and_nothing_else_does() {
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        let store = MemoryStore::with_release_hook(Box::new(move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }));
        let marker = "authstamp/v2/pending/3";
        assert!(cache::is_marker_key(marker));
        store.set_shared_data(marker, b"claimed", None).unwrap();
        store
            .set_shared_data("authstamp/v2/slot/3", b"", None)
            .unwrap();
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 0);
        store.set_shared_data(marker, b"", None).unwrap();
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn threads_racing_on_one_key_with_cas_lose_no_increment() {
        let store = Arc::new(MemoryStore::default());
        store.set_shared_data("n", b"0", None).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    for _ in 0..500 {
                        loop {
                            let (value, cas) = store.get_shared_data("n");
                            let n: u32 = value
                                .and_then(|v| String::from_utf8(v).ok())
                                .and_then(|v| v.parse().ok())
                                .unwrap_or(0);
                            let next = (n + 1).to_string();
                            if store.set_shared_data("n", next.as_bytes(), cas).is_ok() {
                                break;
                            }
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(store.get_shared_data("n").0.as_deref(), Some(&b"2000"[..]));
    }
}
