//! A provider 401 healed before the app sees it.
//!
//! The filter runs twice on a request: as the listener's HTTP filter
//! (`filter.rs`), which stamps, and as the upstream HTTP filter of the
//! provider clusters (configuration `{"role": "upstream"}`), which sees each
//! attempt the router makes. Both instances live in one VM per worker: the
//! stamping instance records each stamped request in [`Stamps`] and hands
//! the record's id to the upstream instance in the request's filter state.
//!
//! When the provider answers 401, the upstream instance holds that response
//! back and gets a token fresher than the refused one ([`on_refused`]: one
//! already cached, the forced refresh in flight, or a new forced refresh,
//! at most one per connection per `forced_refresh_interval`). With one it
//! adds `x-authstamp-retry: 1`: the route's retry policy (on that header,
//! one retry) replays the buffered request, and the upstream instance
//! restamps the replay. Without one it adds `x-authstamp-error: <code>` and
//! the provider's 401 goes to the app. A 401 the router does not replay
//! (body over the retry buffer) reaches the stamping instance, which drops
//! `x-authstamp-retry`.

use std::collections::HashMap;
use std::rc::Rc;

use authstamp_protocol::{headers, ErrorCode, StampHeader, StampLocation, Upstream};

use crate::cache;
use crate::filter::{self, Verdict, Worker};
use crate::host::Host;
use crate::inflight::{Left, Lookup};

/// The filter-state name (Envoy: `wasm.authstamp_stamp`) of a stamped
/// request's record id.
pub const STAMP_PROPERTY: &str = "authstamp_stamp";
/// Added by the upstream instance to a provider 401 it can heal; the route
/// retries on it. Never reaches the app.
pub const RETRY_HEADER: &str = "x-authstamp-retry";

/// Where a stamped request is on the healing path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Heal {
    /// No 401 seen.
    Idle,
    /// The first attempt's 401 is held back until a fresher token is in.
    Refreshing,
    /// The replay is due and gets this credential.
    Retry(StampHeader),
    /// The replay carries the fresher credential.
    Retried,
    /// The 401 goes to the app.
    Unhealed,
}

/// A stamped request, as the stamping instance recorded it.
#[derive(Debug)]
pub struct Stamp {
    pub lookup: Rc<Lookup>,
    /// Hash of the stamped credential.
    pub token: u64,
    /// Name and place of the stamped credential: a restamp replaces it.
    pub name: String,
    pub location: StampLocation,
    pub upstream: Upstream,
    pub heal: Heal,
}

/// The stamped requests of one worker, shared by both instances.
#[derive(Debug, Default)]
pub struct Stamps {
    next: u64,
    records: HashMap<u64, Stamp>,
    /// Records in [`Heal::Retry`]: while none is, the upstream instance
    /// does nothing on request headers.
    retries_due: usize,
}

impl Stamps {
    pub fn add(&mut self, stamp: Stamp) -> u64 {
        self.next += 1;
        self.records.insert(self.next, stamp);
        self.next
    }

    pub fn remove(&mut self, id: u64) {
        if let Some(stamp) = self.records.remove(&id) {
            if matches!(stamp.heal, Heal::Retry(_)) {
                self.retries_due -= 1;
            }
        }
    }

    pub fn get(&self, id: u64) -> Option<&Stamp> {
        self.records.get(&id)
    }

    pub fn heal(&self, id: u64) -> Option<Heal> {
        self.records.get(&id).map(|s| s.heal.clone())
    }

    pub fn set_heal(&mut self, id: u64, heal: Heal) {
        let Some(stamp) = self.records.get_mut(&id) else {
            return;
        };
        if matches!(stamp.heal, Heal::Retry(_)) {
            self.retries_due -= 1;
        }
        if matches!(heal, Heal::Retry(_)) {
            self.retries_due += 1;
        }
        stamp.heal = heal;
    }

    pub fn retries_due(&self) -> usize {
        self.retries_due
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// What to do with a provider 401.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Hold it back: a fresher token comes with lookup `id`.
    Wait(u64),
    /// No healer to hold back; the refresh runs (the next requests wait for it).
    Refreshing,
    /// Replay with this credential.
    Retry(StampHeader),
    /// Pass it to the app with `x-authstamp-error: <code>`.
    Unhealed(ErrorCode),
}

/// The provider refused the token of stamped request `id`. `healer`: the
/// upstream context whose 401 waits (none for the stamping instance, which
/// sees the 401 only when no upstream instance runs).
///
/// Every request for the connection that arrives from now on, on any
/// worker, waits for the fresher token: the refused one leaves the cache
/// and the shared-data marker is claimed before this returns.
pub fn on_refused(host: &dyn Host, worker: &Worker, id: u64, healer: Option<u32>) -> Decision {
    let Some((lookup, token)) = worker
        .stamps
        .borrow()
        .get(id)
        .map(|s| (Rc::clone(&s.lookup), s.token))
    else {
        return Decision::Unhealed(ErrorCode::TokenRefused);
    };
    let Some(now_ms) = host.now_unix_millis() else {
        return Decision::Unhealed(ErrorCode::TokenRefused);
    };
    let key = &lookup.cache_key;
    let digest = cache::key_digest(lookup.identity.app_key.expose());
    // Someone refreshed already: replay with that token.
    if let Some(entry) = cache::lookup(host, key, &digest, now_ms / 1000) {
        if cache::hash(entry.header.value.as_bytes()) != token {
            return decide_stamp(worker, id, &entry.header, &entry.upstream);
        }
    }
    let in_flight = worker.inflight.borrow().find_forced(&key.key);
    if let Some(pending) = in_flight {
        return wait_on(worker, pending, healer, id);
    }
    if cache::is_pending(host, key, now_ms) {
        // Another worker's lookup (or forced refresh) of this connection.
        let Some(healer) = healer else {
            return Decision::Refreshing;
        };
        let until_ms = now_ms.saturating_add(filter::marker_ttl_ms(&lookup.config));
        let pending =
            worker
                .inflight
                .borrow_mut()
                .start_remote_healer(Rc::clone(&lookup), healer, id, until_ms);
        host.set_tick_period(filter::TICK);
        return Decision::Wait(pending);
    }
    let interval_ms =
        u64::try_from(lookup.config.forced_refresh_interval.as_millis()).unwrap_or(u64::MAX);
    if !cache::may_force(host, key, now_ms, interval_ms) {
        log::info!(
            "authstamp: provider answered 401 again within forced_refresh_interval provider={}",
            lookup.identity.provider
        );
        worker.metrics.forced_refused(host);
        return Decision::Unhealed(ErrorCode::TokenRefused);
    }
    cache::invalidate(host, key, token);
    let forced = Rc::new(Lookup {
        force_refresh: true,
        ..Lookup::clone(&lookup)
    });
    let until_ms = match filter::claim(host, &forced) {
        cache::Claim::Ask { until_ms } | cache::Claim::Wait { until_ms } => until_ms,
    };
    log::info!(
        "authstamp: provider answered 401; refreshing provider={}",
        lookup.identity.provider
    );
    let pending = worker.inflight.borrow_mut().start_forced(forced, until_ms);
    host.set_tick_period(filter::TICK);
    wait_on(worker, pending, healer, id)
}

fn wait_on(worker: &Worker, pending: u64, healer: Option<u32>, id: u64) -> Decision {
    match healer {
        Some(healer) => {
            worker.inflight.borrow_mut().heal_on(pending, healer, id);
            Decision::Wait(pending)
        }
        None => Decision::Refreshing,
    }
}

/// A fresher credential for stamped request `id`: replayable only to the
/// same upstream in the same place.
pub fn decide_stamp(
    worker: &Worker,
    id: u64,
    header: &StampHeader,
    upstream: &Upstream,
) -> Decision {
    let stamps = worker.stamps.borrow();
    let Some(stamp) = stamps.get(id) else {
        return Decision::Unhealed(ErrorCode::TokenRefused);
    };
    let fresher = cache::hash(header.value.as_bytes()) != stamp.token;
    let same_place = header.name == stamp.name
        && header.location == stamp.location
        && *upstream == stamp.upstream;
    if fresher && same_place {
        Decision::Retry(header.clone())
    } else {
        Decision::Unhealed(ErrorCode::TokenRefused)
    }
}

/// Applies a decision to the effective stream's 401 response headers.
pub fn apply(host: &dyn Host, worker: &Worker, id: u64, decision: &Decision) {
    match decision {
        Decision::Wait(_) => worker.stamps.borrow_mut().set_heal(id, Heal::Refreshing),
        Decision::Refreshing => {}
        Decision::Retry(header) => {
            worker
                .stamps
                .borrow_mut()
                .set_heal(id, Heal::Retry(header.clone()));
            host.add_response_header(RETRY_HEADER, "1");
        }
        Decision::Unhealed(code) => {
            worker.stamps.borrow_mut().set_heal(id, Heal::Unhealed);
            host.add_response_header(headers::ERROR, code.as_str());
        }
    }
}

/// Where an upstream attempt is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// Not known to be a stamped request's.
    Unknown,
    /// An attempt of stamped request `id`.
    Of(u64),
    /// Its 401 waits for lookup `pending`.
    Held { id: u64, pending: u64 },
}

fn stamp_id(host: &dyn Host) -> Option<u64> {
    let value = host.property(&[STAMP_PROPERTY])?;
    std::str::from_utf8(&value).ok()?.parse().ok()
}

/// Request headers of an upstream attempt: a due replay gets the fresher
/// credential; anything else is left alone without a host call.
pub fn on_upstream_request(host: &dyn Host, worker: &Worker) -> Attempt {
    if worker.stamps.borrow().retries_due() == 0 {
        return Attempt::Unknown;
    }
    let Some(id) = stamp_id(host) else {
        return Attempt::Unknown;
    };
    let heal = worker.stamps.borrow().heal(id);
    if let Some(Heal::Retry(header)) = heal {
        restamp(host, &header);
        worker.stamps.borrow_mut().set_heal(id, Heal::Retried);
        worker.metrics.healed(host);
        log::debug!("authstamp: replaying a refused request with a fresh token");
    }
    Attempt::Of(id)
}

/// Replaces the credential of the effective (already stamped) request.
fn restamp(host: &dyn Host, header: &StampHeader) {
    match header.location {
        StampLocation::Header => host.set_request_header(&header.name, &header.value),
        StampLocation::Query => {
            let request = host.request_headers();
            let path = request
                .iter()
                .find(|(n, _)| n == ":path")
                .and_then(|(_, v)| std::str::from_utf8(v).ok())
                .unwrap_or("/");
            let path = crate::stamp::with_query_param(path, &header.name, &header.value);
            host.set_request_header(":path", &path);
        }
    }
}

/// Response headers of an upstream attempt (context `context`).
pub fn on_upstream_response(
    host: &dyn Host,
    worker: &Worker,
    context: u32,
    attempt: Attempt,
) -> (Attempt, Verdict) {
    if host.response_status() != Some(401) {
        return (attempt, Verdict::Continue);
    }
    let id = match attempt {
        Attempt::Of(id) | Attempt::Held { id, .. } => id,
        Attempt::Unknown => match stamp_id(host) {
            Some(id) => id,
            None => return (attempt, Verdict::Continue),
        },
    };
    let heal = worker.stamps.borrow().heal(id);
    match heal {
        Some(Heal::Idle) => {
            worker.metrics.unauthorized(host);
            let decision = on_refused(host, worker, id, Some(context));
            apply(host, worker, id, &decision);
            match decision {
                Decision::Wait(pending) => (Attempt::Held { id, pending }, Verdict::Pause),
                _ => (Attempt::Of(id), Verdict::Continue),
            }
        }
        Some(Heal::Retried) => {
            // The fresher token is refused too: no second replay.
            worker.metrics.unauthorized(host);
            apply(
                host,
                worker,
                id,
                &Decision::Unhealed(ErrorCode::TokenRefused),
            );
            (Attempt::Of(id), Verdict::Continue)
        }
        _ => (Attempt::Of(id), Verdict::Continue),
    }
}

/// Response body or trailers of an upstream attempt: held while its 401 is.
pub fn response_data(worker: &Worker, attempt: Attempt) -> Verdict {
    match attempt {
        Attempt::Held { id, .. } if worker.stamps.borrow().heal(id) == Some(Heal::Refreshing) => {
            Verdict::Pause
        }
        _ => Verdict::Continue,
    }
}

/// The upstream attempt is done; a held 401 leaves its lookup.
pub fn on_upstream_done(host: &dyn Host, worker: &Worker, context: u32, attempt: Attempt) {
    if let Attempt::Held { pending, .. } = attempt {
        let left = worker.inflight.borrow_mut().leave(pending, context);
        if let Left::Removed {
            cache_key,
            until_ms,
        } = left
        {
            cache::release(host, &cache_key, until_ms);
        }
    }
}
