//! The per-request state machine of the hot path, one module per phase.
//! [`crate::stream::StreamFilter`] holds a stream's [`State`] and calls the
//! phases with the host and the stream's worker.
//!
//! 1. Unmarked requests pass untouched (or are refused, by configuration).
//! 2. Marked requests need a valid identity and an origin-form target that
//!    stays under the base path.
//! 3. A valid cache entry for the same app key, whose key the token service
//!    accepted within `app_key_recheck` (else one request per key rechecks
//!    it through step 4): stamp and continue.
//! 4. Otherwise join a lookup in flight in this worker for the same key and
//!    app key; or wait for another worker's lookup of the key (its
//!    shared-data marker is live); or dispatch one to the token service; and
//!    pause.
//! 5. The answer is validated, cached, and every waiting stream is stamped
//!    and resumed, or answered locally.
//! 6. Each stamped request is recorded (`heal::Stamps`) for the upstream
//!    instance, which heals a provider 401 with one replay (see `heal.rs`).
//!    Without it, a 401 seen here deletes the cached entry that held the
//!    refused token and has the root context ask the token service for a
//!    forced refresh (bounded); requests arriving meanwhile wait for it.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use authstamp_protocol::TokenLookupResponse;

use crate::cache;
use crate::config::Secret;
use crate::heal::Stamps;
use crate::inflight::Inflight;
use crate::metrics::Metrics;
use crate::reply::Rejection;

/// Largest token-service answer read.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Tick period of the root context while it has lookups to dispatch or
/// another worker's lookup to wait for.
pub const TICK: Duration = Duration::from_millis(1);
/// Tick period otherwise: hands batched metrics to Envoy.
pub const IDLE_TICK: Duration = Duration::from_secs(1);
/// Kept for the tests and callers of the first version.
pub const ORPHAN_TICK: Duration = TICK;
/// How long a marker outlives the token-service timeout, so that waiting
/// workers take over only once the owner's call has surely ended.
pub const MARKER_GRACE_MS: u64 = 250;

/// One worker's filter state: its root context id, its lookups in flight
/// and its metric ids. Shared by the worker's root context and streams.
#[derive(Debug, Default)]
pub struct Worker {
    pub root: u32,
    pub inflight: RefCell<Inflight>,
    pub metrics: Metrics,
    /// Stamped requests, shared with the upstream instance of this worker.
    pub stamps: Rc<RefCell<Stamps>>,
    /// Stamped streams still to resume, [`RESUME_BATCH`] per callback.
    pub to_resume: RefCell<std::collections::VecDeque<u32>>,
    /// The last app key hashed and its digest: hits with the same key (all
    /// of them in mesh mode) skip SHA-256.
    last_digest: RefCell<Option<LastDigest>>,
}

/// An app key with its digest and the name of its key check at one
/// token service and app; prints none of them.
struct LastDigest {
    key: Secret,
    digest: [u8; 32],
    cluster: String,
    app_id: String,
    check_name: Rc<str>,
}

impl std::fmt::Debug for LastDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Streams resumed in one callback at most. Each resume runs the stream on
/// to the router inside this call, the upstream filter instance's context
/// creation included; hundreds in one call exhaust V8's stack (seen on 1.40
/// with 250 waiters per worker), so the rest go on the next ticks.
pub const RESUME_BATCH: usize = 16;

impl Worker {
    pub fn new(root: u32, metrics: Metrics) -> Worker {
        Worker::sharing(root, metrics, Rc::default())
    }

    /// A worker whose stamp records are `stamps` (one set per VM).
    pub fn sharing(root: u32, metrics: Metrics, stamps: Rc<RefCell<Stamps>>) -> Worker {
        Worker {
            root,
            inflight: RefCell::new(Inflight::default()),
            metrics,
            stamps,
            to_resume: RefCell::default(),
            last_digest: RefCell::default(),
        }
    }

    /// [`cache::key_digest`] of `app_key`, remembered for the next request
    /// with the same key (compared in constant time).
    pub fn key_digest(&self, app_key: &Secret) -> [u8; 32] {
        self.remembered(app_key, None).0
    }

    /// The digest of `app_key` and the name of its key check
    /// ([`cache::key_check_name`]) at token-service `cluster` for `app_id`:
    /// what a hit needs, without SHA-256 or formatting while they stay the
    /// same.
    pub fn key_check(&self, cluster: &str, app_id: &str, app_key: &Secret) -> ([u8; 32], Rc<str>) {
        let (digest, name) = self.remembered(app_key, Some((cluster, app_id)));
        (
            digest,
            name.unwrap_or_else(|| cache::key_check_name(cluster, app_id, &digest).into()),
        )
    }

    fn remembered(
        &self,
        app_key: &Secret,
        check: Option<(&str, &str)>,
    ) -> ([u8; 32], Option<Rc<str>>) {
        let mut last = self.last_digest.borrow_mut();
        let same_key = last.as_ref().is_some_and(|last| {
            cache::constant_time_eq(last.key.expose().as_bytes(), app_key.expose().as_bytes())
        });
        if !same_key {
            let digest = cache::key_digest(app_key.expose());
            *last = Some(LastDigest {
                key: app_key.clone(),
                digest,
                cluster: String::new(),
                app_id: String::new(),
                check_name: Rc::from(""),
            });
        }
        let Some(last) = last.as_mut() else {
            return (cache::key_digest(app_key.expose()), None);
        };
        let Some((cluster, app_id)) = check else {
            return (last.digest, None);
        };
        if last.check_name.is_empty() || last.cluster != cluster || last.app_id != app_id {
            last.cluster = cluster.to_string();
            last.app_id = app_id.to_string();
            last.check_name = cache::key_check_name(cluster, app_id, &last.digest).into();
        }
        (last.digest, Some(Rc::clone(&last.check_name)))
    }
}

/// What the host should do with the stream after a callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Continue,
    Pause,
}

/// Where a stream is on the hot path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// No request headers seen yet.
    Fresh,
    /// Not ours: the request goes on untouched.
    Passed,
    /// Stamped (the `u64` is its record in `heal::Stamps`): the request
    /// goes on; a 401 answer refreshes its token.
    Stamped(u64),
    /// Paused on token lookup `id`.
    Waiting(u64),
    /// Answered locally.
    Replied,
}

impl State {
    pub fn is_stamped(&self) -> bool {
        matches!(self, State::Stamped(..))
    }
}

/// What a token-lookup answer means for the streams waiting on it.
pub(crate) enum Outcome {
    Stamp(TokenLookupResponse),
    Refuse(Rejection),
}
mod answer;
mod arrive;
mod lifecycle;
mod lookup;
mod tick;
mod wake;

pub use answer::on_call_response;
pub use arrive::on_request_headers;
pub use lifecycle::{on_done, on_request_data, on_response_headers, settle};
pub(crate) use lookup::{claim, marker_ttl_ms};
pub use tick::on_tick;

#[cfg(test)]
mod tests;
