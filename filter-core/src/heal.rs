//! A provider 401 healed before the app sees it.
//!
//! The filter runs twice on a request: as the listener's HTTP filter
//! (`filter.rs`), which stamps, and as an upstream HTTP filter of the
//! provider clusters, which sees attempts the router makes. Both instances
//! live in one VM per worker: the stamping instance records each stamped
//! request in [`Stamps`] and hands the record's id to the other instance in
//! the request's filter state. The second instance has one of two roles.
//!
//! `{"role": "replay"}` (the shipped bootstraps): the stamping instance, with
//! `mark_healable`, adds [`HEAL_HEADER`] to each request whose 401 a
//! replay can heal ([`marks`]); the route retries a 401 once, for marked
//! requests only, and a composite filter runs the replay instance on that
//! retry alone (`x-envoy-attempt-count` 2), so a request the provider
//! accepts creates no second Wasm context. The replay instance
//! ([`on_replay_request`]) looks for a token fresher than the refused one
//! ([`on_refused`]) and restamps the replay with it, or waits for the forced
//! refresh; if there is none (the refresh failed, or the bound) the replay
//! goes out as it was and its 401 gets `x-authstamp-error: <code>`.
//!
//! `{"role": "upstream"}` (for a virtual host without attempt counts): the
//! instance sees every attempt. On a 401 it looks for a fresher token
//! ([`on_refused`]: one already cached, the forced refresh in flight, or a
//! new forced refresh, at most one per connection per
//! `forced_refresh_interval`). If there is or will be one it adds
//! `x-authstamp-retry: 1` to the 401: the route's retry policy (on that
//! header, one retry) replays the buffered request, whose headers wait in
//! the upstream instance for the fresh token and get it; if the refresh
//! fails the replay goes out as it was and its 401 gets
//! `x-authstamp-error: <code>`. Without a fresher token (the bound) the
//! first 401 gets `x-authstamp-error` and goes to the app.
//!
//! Either way a 401 the router does not replay (body over the retry buffer)
//! reaches the stamping instance, which forces the refresh for the next
//! requests (and drops `x-authstamp-retry`). The 401 itself is never held
//! back: a response held and resumed from the root context would be
//! replayed by the router while Envoy still delivers its buffered body to
//! the deleted upstream context.

use std::collections::HashMap;
use std::rc::Rc;

use authstamp_protocol::{headers, Credential, ErrorCode, Placement, Upstream};

use crate::cache;
use crate::config::AttemptRole;
use crate::filter::{self, Verdict, Worker};
use crate::host::Host;
use crate::inflight::{Left, Lookup};
use crate::reply::Rejection;

/// The filter-state name (Envoy: `wasm.authstamp_stamp`) of a stamped
/// request's record id.
pub const STAMP_PROPERTY: &str = "authstamp_stamp";
/// Added by the upstream instance to a provider 401 it can heal; the route
/// retries on it. Never reaches the app.
pub const RETRY_HEADER: &str = "x-authstamp-retry";
/// Added by the stamping instance (`mark_healable`) to a request whose 401
/// the replay instance can heal: the route retries a 401 only for requests
/// with it. An upstream filter removes it before the provider.
pub const HEAL_HEADER: &str = "x-authstamp-heal";

/// Where a stamped request is on the healing path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Heal {
    /// No 401 seen.
    Idle,
    /// A replay is due; its credential comes with lookup `u64`.
    Awaiting(u64),
    /// A replay is due and gets this credential.
    Retry(Credential),
    /// The replay carries the fresher credential.
    Retried,
    /// No fresher credential (the code says why): the replay goes out as
    /// it was.
    Failed(ErrorCode),
    /// The 401 goes to the app.
    Unhealed,
}

impl Heal {
    fn is_due(&self) -> bool {
        matches!(self, Heal::Awaiting(_) | Heal::Retry(_))
    }
}

/// A stamped request, as the stamping instance recorded it.
#[derive(Debug)]
pub struct Stamp {
    pub lookup: Rc<Lookup>,
    /// Hash of the stamped credential.
    pub token: u64,
    /// Name and place of the stamped credential: a restamp replaces it.
    pub name: String,
    pub placement: Placement,
    pub upstream: Upstream,
    /// See [`is_static`].
    pub static_credential: bool,
    pub heal: Heal,
}

/// Whether a stamped credential is one no refresh can change: HTTP Basic
/// (RFC 7617) or a query parameter (API keys). A provider's 401 to it
/// passes through untouched.
pub fn is_static(header: &Credential) -> bool {
    header.placement == Placement::Query
        || (header.name == "authorization"
            && header
                .value
                .get(..6)
                .is_some_and(|scheme| scheme.eq_ignore_ascii_case("basic ")))
}

/// Whether the request stamped now with `credential` for `lookup` is marked
/// healable ([`HEAL_HEADER`]): `mark_healable` is on, the credential can be
/// refreshed, and no forced refresh of the connection started on this
/// worker within `forced_refresh_interval` (its 401 would not be healed).
/// No host call unless such a refresh is on record.
pub fn marks(host: &dyn Host, worker: &Worker, lookup: &Lookup, credential: &Credential) -> bool {
    if !lookup.config.mark_healable || is_static(credential) {
        return false;
    }
    let stamps = worker.stamps.borrow();
    let Some(at_ms) = stamps.forced_at_ms.get(&lookup.cache_key.key) else {
        return true;
    };
    let interval_ms =
        u64::try_from(lookup.config.forced_refresh_interval.as_millis()).unwrap_or(u64::MAX);
    host.now_unix_millis()
        .is_none_or(|now_ms| now_ms >= at_ms.saturating_add(interval_ms))
}

/// The stamped requests of one worker, shared by both instances.
#[derive(Debug, Default)]
pub struct Stamps {
    next: u64,
    records: HashMap<u64, Stamp>,
    /// Records with a replay due: while there is none, the upstream
    /// instance does nothing on request headers.
    retries_due: usize,
    /// When this worker last saw a forced refresh start, by cache key:
    /// within `forced_refresh_interval` of it a 401 cannot be healed (the
    /// bound), so [`marks`] asks for no replay.
    forced_at_ms: HashMap<String, u64>,
}

/// Entries of [`Stamps::forced_at_ms`] beyond which stale ones are dropped.
const FORCED_MEMO_LIMIT: usize = 256;

impl Stamps {
    pub fn add(&mut self, stamp: Stamp) -> u64 {
        self.next += 1;
        self.records.insert(self.next, stamp);
        self.next
    }

    pub fn remove(&mut self, id: u64) {
        if let Some(stamp) = self.records.remove(&id) {
            if stamp.heal.is_due() {
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
        if stamp.heal.is_due() {
            self.retries_due -= 1;
        }
        if heal.is_due() {
            self.retries_due += 1;
        }
        stamp.heal = heal;
    }

    /// Lookup `pending` is answered: each record awaiting it gets `fresh`
    /// (the answer's credential and upstream) if it is fresher and goes to
    /// the same place, else fails with `fresh`'s error or `token_refused`.
    pub fn resolve(&mut self, pending: u64, fresh: Result<(&Credential, &Upstream), ErrorCode>) {
        let awaiting: Vec<u64> = self
            .records
            .iter()
            .filter(|(_, s)| s.heal == Heal::Awaiting(pending))
            .map(|(id, _)| *id)
            .collect();
        for id in awaiting {
            let heal = match (fresh, self.records.get(&id)) {
                (Ok((header, upstream)), Some(stamp)) => {
                    match replayable(stamp, header, upstream) {
                        Some(header) => Heal::Retry(header),
                        None => Heal::Failed(ErrorCode::TokenRefused),
                    }
                }
                (Err(code), _) => Heal::Failed(code),
                (_, None) => continue,
            };
            self.set_heal(id, heal);
        }
    }

    pub fn retries_due(&self) -> usize {
        self.retries_due
    }

    /// A forced refresh of `key` started at `at_ms`.
    fn note_forced(&mut self, key: &str, at_ms: u64, interval_ms: u64, now_ms: u64) {
        if self.forced_at_ms.len() >= FORCED_MEMO_LIMIT {
            self.forced_at_ms
                .retain(|_, at| now_ms < at.saturating_add(interval_ms));
        }
        let at = self.forced_at_ms.entry(key.to_owned()).or_insert(at_ms);
        *at = (*at).max(at_ms);
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// The credential to replay `stamp` with: `header`, if it is fresher and
/// goes to the same upstream in the same place.
fn replayable(stamp: &Stamp, header: &Credential, upstream: &Upstream) -> Option<Credential> {
    let fresher = cache::hash(header.value.as_bytes()) != stamp.token;
    let same_place = header.name == stamp.name
        && header.placement == stamp.placement
        && *upstream == stamp.upstream;
    (fresher && same_place).then(|| header.clone())
}

/// What to do with a provider 401.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Replay; the credential comes with lookup `u64`.
    Wait(u64),
    /// No replay to wait; the refresh runs (the next requests wait for it).
    Refreshing,
    /// Replay with this credential.
    Retry(Credential),
    /// Pass it to the app with `x-authstamp-error: <code>`.
    Unhealed(ErrorCode),
    /// Pass it to the app untouched: a static credential (see [`is_static`]).
    PassThrough,
}

/// The provider refused the token of stamped request `id`. `replay`: the
/// upstream instance asks (a replay will wait for the answer); the stamping
/// instance, which sees the 401 only when no upstream instance runs, does not.
///
/// Every request for the connection that arrives from now on, on any
/// worker, waits for the fresher token: the refused one leaves the cache
/// and the shared-data marker is claimed before this returns.
pub fn on_refused(host: &dyn Host, worker: &Worker, id: u64, replay: bool) -> Decision {
    let Some((lookup, token, static_credential)) = worker
        .stamps
        .borrow()
        .get(id)
        .map(|s| (Rc::clone(&s.lookup), s.token, s.static_credential))
    else {
        return Decision::Unhealed(ErrorCode::TokenRefused);
    };
    if static_credential {
        return Decision::PassThrough;
    }
    let Some(now_ms) = host.now_unix_millis() else {
        return Decision::Unhealed(ErrorCode::TokenRefused);
    };
    let key = &lookup.cache_key;
    let digest = cache::key_digest(lookup.identity.app_key.expose());
    // Someone refreshed already: replay with that token.
    if let Some(entry) = cache::lookup(host, key, &digest, now_ms / 1000) {
        if cache::hash(entry.credential.value.as_bytes()) != token {
            return decide_stamp(worker, id, &entry.credential, &entry.upstream);
        }
    }
    let in_flight = worker.inflight.borrow().find_forced(&key.key);
    if let Some(pending) = in_flight {
        return waiting(pending, replay);
    }
    // The marker makes every new request for the connection, on any
    // worker, wait from now on.
    let ttl_ms = filter::marker_ttl_ms(&lookup.config);
    let until_ms = match cache::claim(host, key, now_ms, ttl_ms, false) {
        cache::Claim::Ask { until_ms } => until_ms,
        cache::Claim::Wait { until_ms } => {
            // Another worker's lookup (or forced refresh) of this connection.
            return wait_remote(host, worker, &lookup, replay, until_ms);
        }
    };
    let interval_ms =
        u64::try_from(lookup.config.forced_refresh_interval.as_millis()).unwrap_or(u64::MAX);
    // Nobody else asks for the connection now (we hold the marker): a
    // refusal means its last forced refresh is done, and brought no better
    // token than this one.
    if let cache::Force::Refused { at_ms } = cache::may_force(host, key, now_ms, interval_ms) {
        worker
            .stamps
            .borrow_mut()
            .note_forced(&key.key, at_ms, interval_ms, now_ms);
        cache::release(host, key, until_ms);
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
    log::info!(
        "authstamp: provider answered 401; refreshing provider={}",
        lookup.identity.provider
    );
    worker
        .stamps
        .borrow_mut()
        .note_forced(&key.key, now_ms, interval_ms, now_ms);
    let pending = worker.inflight.borrow_mut().start_forced(forced, until_ms);
    host.set_tick_period(filter::TICK);
    waiting(pending, replay)
}

/// Waits for another worker's lookup of the connection (polled on the
/// root context's tick), then decides with what it left in the cache.
fn wait_remote(
    host: &dyn Host,
    worker: &Worker,
    lookup: &Rc<Lookup>,
    replay: bool,
    until_ms: u64,
) -> Decision {
    if !replay {
        return Decision::Refreshing;
    }
    let pending = worker
        .inflight
        .borrow_mut()
        .start_remote_healer(Rc::clone(lookup), until_ms);
    host.set_tick_period(filter::TICK);
    Decision::Wait(pending)
}

fn waiting(pending: u64, replay: bool) -> Decision {
    if replay {
        Decision::Wait(pending)
    } else {
        Decision::Refreshing
    }
}

/// A fresher credential for stamped request `id`: replayable only to the
/// same upstream in the same place.
pub fn decide_stamp(
    worker: &Worker,
    id: u64,
    header: &Credential,
    upstream: &Upstream,
) -> Decision {
    let stamps = worker.stamps.borrow();
    match stamps.get(id).and_then(|s| replayable(s, header, upstream)) {
        Some(header) => Decision::Retry(header),
        None => Decision::Unhealed(ErrorCode::TokenRefused),
    }
}

/// Applies a decision to the effective stream's 401 response headers.
pub fn apply(host: &dyn Host, worker: &Worker, id: u64, decision: &Decision) {
    let heal = match decision {
        Decision::Refreshing => return,
        Decision::PassThrough => {
            worker.stamps.borrow_mut().set_heal(id, Heal::Unhealed);
            return;
        }
        Decision::Wait(pending) => Heal::Awaiting(*pending),
        Decision::Retry(header) => Heal::Retry(header.clone()),
        Decision::Unhealed(code) => {
            worker.stamps.borrow_mut().set_heal(id, Heal::Unhealed);
            host.add_response_header(headers::ERROR, code.as_str());
            return;
        }
    };
    worker.stamps.borrow_mut().set_heal(id, heal);
    host.add_response_header(RETRY_HEADER, "1");
}

/// Where an upstream attempt is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// Not known to be a stamped request's.
    Unknown,
    /// An attempt of stamped request `id`.
    Of(u64),
    /// A replay of `id` waiting for lookup `pending`.
    Held { id: u64, pending: u64 },
}

fn stamp_id(host: &dyn Host) -> Option<u64> {
    let value = host.property(&[STAMP_PROPERTY])?;
    std::str::from_utf8(&value).ok()?.parse().ok()
}

/// Request headers of upstream attempt `context`: a due replay gets the
/// fresher credential, or waits for it; anything else is left alone
/// without a host call.
pub fn on_upstream_request(host: &dyn Host, worker: &Worker, context: u32) -> (Attempt, Verdict) {
    if worker.stamps.borrow().retries_due() == 0 {
        return (Attempt::Unknown, Verdict::Continue);
    }
    let Some(id) = stamp_id(host) else {
        return (Attempt::Unknown, Verdict::Continue);
    };
    send_attempt(host, worker, context, id)
}

/// Request headers of the route's retry of a refused request (the replay
/// instance runs on nothing else): the refused token leaves the cache and
/// the replay gets a fresher one, now or after the forced refresh, or goes
/// out as it was with its 401 marked for the app.
pub fn on_replay_request(host: &dyn Host, worker: &Worker, context: u32) -> (Attempt, Verdict) {
    let Some(id) = stamp_id(host) else {
        return (Attempt::Unknown, Verdict::Continue);
    };
    if worker.stamps.borrow().heal(id) != Some(Heal::Idle) {
        return (Attempt::Of(id), Verdict::Continue);
    }
    worker.metrics.unauthorized(host);
    let heal = match on_refused(host, worker, id, true) {
        Decision::Wait(pending) => Heal::Awaiting(pending),
        Decision::Retry(header) => Heal::Retry(header),
        Decision::Unhealed(code) => Heal::Failed(code),
        Decision::Refreshing | Decision::PassThrough => Heal::Unhealed,
    };
    worker.stamps.borrow_mut().set_heal(id, heal);
    send_attempt(host, worker, context, id)
}

/// Attempt `context` of stamped request `id` goes out: restamped if a
/// fresher credential is due, held while it is awaited.
fn send_attempt(host: &dyn Host, worker: &Worker, context: u32, id: u64) -> (Attempt, Verdict) {
    let heal = worker.stamps.borrow().heal(id);
    match heal {
        Some(Heal::Retry(_)) => match replay(host, worker, id) {
            Ok(()) => (Attempt::Of(id), Verdict::Continue),
            Err(rejection) => {
                worker.metrics.error(host, rejection.code);
                rejection.send(host);
                (Attempt::Of(id), Verdict::Pause)
            }
        },
        Some(Heal::Awaiting(pending)) => {
            if worker.inflight.borrow_mut().heal_on(pending, context, id) {
                (Attempt::Held { id, pending }, Verdict::Pause)
            } else {
                // Its lookup is gone unanswered (cannot happen: answers resolve).
                worker
                    .stamps
                    .borrow_mut()
                    .set_heal(id, Heal::Failed(ErrorCode::TokenRefused));
                (Attempt::Of(id), Verdict::Continue)
            }
        }
        _ => (Attempt::Of(id), Verdict::Continue),
    }
}

/// Request body or trailers of an upstream attempt: held while the replay
/// waits (Continue here would send its headers on with the refused token).
pub fn request_data(worker: &Worker, attempt: Attempt) -> Verdict {
    match attempt {
        Attempt::Held { id, pending }
            if worker.stamps.borrow().heal(id) == Some(Heal::Awaiting(pending)) =>
        {
            Verdict::Pause
        }
        _ => Verdict::Continue,
    }
}

/// Restamps the effective replay of `id` if its record has a credential for
/// it; a refused write is answered locally (500 `internal`).
pub fn replay(host: &dyn Host, worker: &Worker, id: u64) -> Result<(), Rejection> {
    let heal = worker.stamps.borrow().heal(id);
    if let Some(Heal::Retry(header)) = heal {
        restamp(host, &header)?;
        worker.stamps.borrow_mut().set_heal(id, Heal::Retried);
        worker.metrics.healed(host);
        log::debug!("authstamp: replaying a refused request with a fresh token");
    }
    Ok(())
}

/// Replaces the credential of the effective (already stamped) request: a
/// header (query credentials are static, never replayed).
fn restamp(host: &dyn Host, header: &Credential) -> Result<(), Rejection> {
    if header.placement == Placement::Header {
        host.set_request_header(&header.name, &header.value)
            .map_err(|_| crate::stamp::header_write_failed())?;
    }
    Ok(())
}

/// Response headers of an upstream attempt: a first 401 is marked for the
/// replay or for the app (the upstream role; the replay role never sees a
/// first attempt); a replay's 401 for the app.
pub fn on_upstream_response(
    host: &dyn Host,
    worker: &Worker,
    attempt: Attempt,
    role: AttemptRole,
) -> Attempt {
    if host.response_status() != Some(401) {
        return attempt;
    }
    let id = match attempt {
        Attempt::Of(id) | Attempt::Held { id, .. } => id,
        Attempt::Unknown => match stamp_id(host) {
            Some(id) => id,
            None => return attempt,
        },
    };
    let heal = worker.stamps.borrow().heal(id);
    let code = match heal {
        Some(Heal::Idle) if role == AttemptRole::Upstream => {
            worker.metrics.unauthorized(host);
            let decision = on_refused(host, worker, id, true);
            apply(host, worker, id, &decision);
            return Attempt::Of(id);
        }
        // The fresher token is refused too: no second replay.
        Some(Heal::Retried) => ErrorCode::TokenRefused,
        Some(Heal::Failed(code)) => code,
        _ => return Attempt::Of(id),
    };
    worker.metrics.unauthorized(host);
    apply(host, worker, id, &Decision::Unhealed(code));
    Attempt::Of(id)
}

/// The upstream attempt is done; a waiting replay leaves its lookup.
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
