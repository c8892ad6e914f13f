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

use std::collections::HashMap;
use std::rc::Rc;

use crate::cache::constant_time_eq;
use crate::config::Config;
use crate::request::Identity;

/// What a lookup asks for, with the configuration of the stream that started it.
#[derive(Clone, Debug)]
pub struct Lookup {
    pub cache_key: String,
    pub identity: Identity,
    pub config: Rc<Config>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// The stream that dispatched the call.
    Stream(u32),
    /// The root context re-dispatched it.
    Root,
    /// The owner went away; the root context must dispatch again.
    Orphaned,
}

#[derive(Debug)]
pub struct Pending {
    pub lookup: Lookup,
    pub owner: Owner,
    pub token: Option<u32>,
    /// Streams waiting for the answer, in arrival order.
    pub members: Vec<u32>,
}

/// How a waiting stream was completed by another context's callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Done {
    Stamped,
    Replied,
}

#[derive(Debug, Default)]
pub struct Inflight {
    next_id: u64,
    pending: HashMap<u64, Pending>,
    tokens: HashMap<u32, u64>,
    completed: HashMap<u32, Done>,
}

impl Inflight {
    /// A lookup for the same cache key and the same app key, if one is in flight.
    pub fn find(&self, cache_key: &str, app_key: &str) -> Option<u64> {
        self.pending
            .iter()
            .find(|(_, p)| {
                p.lookup.cache_key == cache_key
                    && constant_time_eq(
                        p.lookup.identity.app_key.expose().as_bytes(),
                        app_key.as_bytes(),
                    )
            })
            .map(|(id, _)| *id)
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

    /// Records a lookup `stream` just dispatched with `token`.
    pub fn start(&mut self, lookup: Lookup, stream: u32, token: u32) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        self.pending.insert(
            id,
            Pending {
                lookup,
                owner: Owner::Stream(stream),
                token: Some(token),
                members: vec![stream],
            },
        );
        self.tokens.insert(token, id);
        id
    }

    /// The lookup answered by `token`, removed.
    pub fn take_by_token(&mut self, token: u32) -> Option<Pending> {
        let id = self.tokens.remove(&token)?;
        self.pending.remove(&id)
    }

    /// `stream` is done before its lookup was answered. Returns `true` when
    /// it owned a call that others still wait for: the root context must
    /// dispatch again.
    pub fn leave(&mut self, id: u64, stream: u32) -> bool {
        let Some(p) = self.pending.get_mut(&id) else {
            return false;
        };
        p.members.retain(|m| *m != stream);
        if p.owner != Owner::Stream(stream) {
            return false;
        }
        // The answer to this token would go to the deleted stream and be
        // dropped by the SDK: forget it.
        if let Some(token) = p.token.take() {
            self.tokens.remove(&token);
        }
        if p.members.is_empty() {
            self.pending.remove(&id);
            false
        } else {
            p.owner = Owner::Orphaned;
            true
        }
    }

    /// Lookups waiting for the root context to dispatch them again.
    pub fn orphans(&self) -> Vec<(u64, Lookup)> {
        let mut orphans: Vec<(u64, Lookup)> = self
            .pending
            .iter()
            .filter(|(_, p)| p.owner == Owner::Orphaned)
            .map(|(id, p)| (*id, p.lookup.clone()))
            .collect();
        orphans.sort_by_key(|(id, _)| *id);
        orphans
    }

    /// The root context dispatched orphan `id` again with `token`.
    pub fn adopt(&mut self, id: u64, token: u32) {
        if let Some(p) = self.pending.get_mut(&id) {
            p.owner = Owner::Root;
            p.token = Some(token);
            self.tokens.insert(token, id);
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
