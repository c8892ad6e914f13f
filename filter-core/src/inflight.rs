//! Token lookups in flight in one worker, so that concurrent misses for the
//! same connection and app key share one call to the token service.
//!
//! A lookup is owned by whoever dispatched it: a stream, or the root context
//! when the stream that dispatched it went away with others still waiting.
//! The proxy-wasm SDK delivers a call's answer only to the context that
//! dispatched it and drops it once that stream is deleted, so the root
//! context dispatches again on its next tick. Every waiting stream is a
//! member; when the answer arrives each member is completed, and the outcome
//! is recorded so that the member's own context learns it on its next callback.
//!
//! Two more kinds of lookup wait for the root context's tick: a forced
//! refresh after a provider's 401 (no members; its answer refills the
//! cache), and a wait for another worker's lookup of the same key (the
//! shared-data marker of `cache.rs`), which the tick polls.

use std::collections::HashMap;
use std::rc::Rc;

use crate::cache::{constant_time_eq, Slotted};
use crate::config::Config;
use crate::request::Identity;

/// What a lookup asks for, with the configuration of the stream that started it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lookup {
    pub cache_key: Slotted,
    pub identity: Identity,
    pub config: Rc<Config>,
    /// Ask the token service to refresh at the provider (after a 401).
    pub force_refresh: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// The stream that dispatched the call.
    Stream(u32),
    /// The root context dispatched it.
    Root,
    /// Nobody has dispatched it (yet, or any more): the root context must.
    Orphaned,
    /// Another worker asks for this key; the root context polls the cache
    /// and the marker.
    Remote,
}

#[derive(Debug)]
pub struct Pending {
    pub id: u64,
    pub lookup: Rc<Lookup>,
    pub owner: Owner,
    pub token: Option<u32>,
    /// Streams waiting for the answer, in arrival order.
    pub members: Vec<u32>,
    /// Replays of refused requests waiting for the answer (upstream
    /// contexts), with the id of their stamped request (see `heal.rs`).
    pub healers: Vec<(u32, u64)>,
    /// When our shared-data marker for the key expires (0: we hold none);
    /// for a remote wait, when the other worker's marker expires.
    pub until_ms: u64,
    /// When the call was dispatched (Unix ns), for the latency histogram.
    pub started_ns: u64,
}

/// How a waiting stream was completed by another context's callback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Done {
    /// Stamped; the `u64` is its record in `heal::Stamps`.
    Stamped(u64),
    Replied,
}

/// What a stream leaving a lookup means for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Left {
    /// Nothing to do.
    Nothing,
    /// It owned a call others still wait for: the root context must dispatch again.
    Orphaned,
    /// The lookup is gone; its marker (if any) should be released.
    Removed { cache_key: Slotted, until_ms: u64 },
}

#[derive(Debug, Default)]
pub struct Inflight {
    next_id: u64,
    pending: HashMap<u64, Pending>,
    tokens: HashMap<u32, u64>,
    completed: HashMap<u32, Done>,
}

impl Inflight {
    /// A lookup for the same cache key and the same app key, if one is in
    /// flight; a forced refresh first, since its answer is the freshest.
    pub fn find(&self, cache_key: &str, app_key: &str) -> Option<u64> {
        self.pending
            .iter()
            .filter(|(_, p)| {
                p.lookup.cache_key.key == cache_key
                    && constant_time_eq(
                        p.lookup.identity.app_key.expose().as_bytes(),
                        app_key.as_bytes(),
                    )
            })
            .max_by_key(|(id, p)| (p.lookup.force_refresh, std::cmp::Reverse(**id)))
            .map(|(id, _)| *id)
    }

    /// Whether a forced refresh of `cache_key` is already in flight.
    pub fn has_forced(&self, cache_key: &str) -> bool {
        self.pending
            .values()
            .any(|p| p.lookup.force_refresh && p.lookup.cache_key.key == cache_key)
    }

    /// Adds `stream` to the waiters of lookup `id`.
    pub fn join(&mut self, id: u64, stream: u32) -> bool {
        match self.pending.get_mut(&id) {
            Some(p) => {
                p.members.push(stream);
                true
            }
            None => false,
        }
    }

    fn insert(&mut self, mut pending: Pending) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        pending.id = id;
        if let Some(token) = pending.token {
            self.tokens.insert(token, id);
        }
        self.pending.insert(id, pending);
        id
    }

    /// Records a lookup `stream` just dispatched with `token`.
    pub fn start(
        &mut self,
        lookup: Rc<Lookup>,
        stream: u32,
        token: u32,
        until_ms: u64,
        started_ns: u64,
    ) -> u64 {
        self.insert(Pending {
            id: 0,
            lookup,
            owner: Owner::Stream(stream),
            token: Some(token),
            members: vec![stream],
            healers: Vec::new(),
            until_ms,
            started_ns,
        })
    }

    /// Records `stream` waiting for another worker's lookup (marker until `until_ms`).
    pub fn start_remote(&mut self, lookup: Rc<Lookup>, stream: u32, until_ms: u64) -> u64 {
        self.insert(Pending {
            id: 0,
            lookup,
            owner: Owner::Remote,
            token: None,
            members: vec![stream],
            healers: Vec::new(),
            until_ms,
            started_ns: 0,
        })
    }

    /// Records a wait for another worker's lookup (marker until
    /// `until_ms`) that replays of refused requests will join.
    pub fn start_remote_healer(&mut self, lookup: Rc<Lookup>, until_ms: u64) -> u64 {
        self.insert(Pending {
            id: 0,
            lookup,
            owner: Owner::Remote,
            token: None,
            members: Vec::new(),
            healers: Vec::new(),
            until_ms,
            started_ns: 0,
        })
    }

    /// Records a forced refresh for the root context to dispatch, whose
    /// marker (already claimed) expires at `until_ms`.
    pub fn start_forced(&mut self, lookup: Rc<Lookup>, until_ms: u64) -> u64 {
        let id = self.start_orphan(lookup);
        if let Some(p) = self.pending.get_mut(&id) {
            p.until_ms = until_ms;
        }
        id
    }

    /// A forced refresh of `cache_key` in flight, if any.
    pub fn find_forced(&self, cache_key: &str) -> Option<u64> {
        self.pending
            .iter()
            .filter(|(_, p)| p.lookup.force_refresh && p.lookup.cache_key.key == cache_key)
            .map(|(id, _)| *id)
            .min()
    }

    /// Adds replay `healer` (of stamped request `stamp`) to lookup `id`.
    pub fn heal_on(&mut self, id: u64, healer: u32, stamp: u64) -> bool {
        match self.pending.get_mut(&id) {
            Some(p) => {
                p.healers.push((healer, stamp));
                true
            }
            None => false,
        }
    }

    /// Records a lookup without members for the root context to dispatch
    /// (a forced refresh).
    pub fn start_orphan(&mut self, lookup: Rc<Lookup>) -> u64 {
        self.insert(Pending {
            id: 0,
            lookup,
            owner: Owner::Orphaned,
            token: None,
            members: Vec::new(),
            healers: Vec::new(),
            until_ms: 0,
            started_ns: 0,
        })
    }

    /// The lookup answered by `token`, removed.
    pub fn take_by_token(&mut self, token: u32) -> Option<Pending> {
        let id = self.tokens.remove(&token)?;
        self.pending.remove(&id)
    }

    /// `stream` is done before its lookup was answered.
    pub fn leave(&mut self, id: u64, stream: u32) -> Left {
        let Some(p) = self.pending.get_mut(&id) else {
            return Left::Nothing;
        };
        p.members.retain(|m| *m != stream);
        p.healers.retain(|(h, _)| *h != stream);
        match p.owner {
            // Its answer still fills the cache.
            Owner::Root | Owner::Orphaned => Left::Nothing,
            Owner::Remote if p.members.is_empty() && p.healers.is_empty() => self.removed(id),
            Owner::Remote => Left::Nothing,
            Owner::Stream(owner) if owner != stream => Left::Nothing,
            Owner::Stream(_) => {
                // The answer to this token would go to the deleted stream and
                // be dropped by the SDK: forget it.
                if let Some(token) = p.token.take() {
                    self.tokens.remove(&token);
                }
                if p.members.is_empty() {
                    self.removed(id)
                } else {
                    p.owner = Owner::Orphaned;
                    Left::Orphaned
                }
            }
        }
    }

    fn removed(&mut self, id: u64) -> Left {
        match self.remove(id) {
            Some(p) => Left::Removed {
                cache_key: p.lookup.cache_key.clone(),
                until_ms: if p.owner == Owner::Remote {
                    0
                } else {
                    p.until_ms
                },
            },
            None => Left::Nothing,
        }
    }

    /// Lookups with the given owner, oldest first.
    pub fn owned_by(&self, owner: Owner) -> Vec<(u64, Rc<Lookup>)> {
        let mut found: Vec<(u64, Rc<Lookup>)> = self
            .pending
            .iter()
            .filter(|(_, p)| p.owner == owner)
            .map(|(id, p)| (*id, Rc::clone(&p.lookup)))
            .collect();
        found.sort_by_key(|(id, _)| *id);
        found
    }

    /// Lookups waiting for the root context to dispatch them.
    pub fn orphans(&self) -> Vec<(u64, Rc<Lookup>)> {
        self.owned_by(Owner::Orphaned)
    }

    /// Whether the root context has anything to do on its tick.
    pub fn needs_tick(&self) -> bool {
        self.pending
            .values()
            .any(|p| matches!(p.owner, Owner::Orphaned | Owner::Remote))
    }

    /// The root context dispatched lookup `id` with `token`; `until_ms`:
    /// the marker it now holds, if it claimed one (`None` keeps the old one).
    pub fn adopt(&mut self, id: u64, token: u32, until_ms: Option<u64>, started_ns: u64) {
        if let Some(p) = self.pending.get_mut(&id) {
            p.owner = Owner::Root;
            p.token = Some(token);
            if let Some(until_ms) = until_ms {
                p.until_ms = until_ms;
            }
            p.started_ns = started_ns;
            self.tokens.insert(token, id);
        }
    }

    /// Lookup `id` (not dispatched) now waits for another worker's lookup
    /// of its key, whose marker expires at `until_ms`.
    pub fn wait_remote(&mut self, id: u64, until_ms: u64) {
        if let Some(p) = self.pending.get_mut(&id) {
            if let Some(token) = p.token.take() {
                self.tokens.remove(&token);
            }
            p.owner = Owner::Remote;
            p.until_ms = until_ms;
        }
    }

    pub fn remove(&mut self, id: u64) -> Option<Pending> {
        let p = self.pending.remove(&id)?;
        if let Some(token) = p.token {
            self.tokens.remove(&token);
        }
        Some(p)
    }

    /// Records how a member stream was completed.
    pub fn record(&mut self, stream: u32, done: Done) {
        self.completed.insert(stream, done);
    }

    /// How `stream` was completed, if it was; forgets it.
    pub fn settle(&mut self, stream: u32) -> Option<Done> {
        self.completed.remove(&stream)
    }

    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    pub fn owner(&self, id: u64) -> Option<Owner> {
        self.pending.get(&id).map(|p| p.owner)
    }

    pub fn members(&self, id: u64) -> Vec<u32> {
        self.pending
            .get(&id)
            .map(|p| p.members.clone())
            .unwrap_or_default()
    }

    pub fn completed_count(&self) -> usize {
        self.completed.len()
    }
}
