//! Phase 1: a request's headers arrive. Unmarked requests pass (or are
//! refused); marked ones are classified, checked (workload, path), stamped
//! from the cache on a hit, or join, wait for or dispatch a lookup.

use std::rc::Rc;

use authstamp_protocol::{headers, ErrorCode};

use super::answer::stale_entry;
use super::lookup::{dispatch_lookup, recheck_lease_ms};
use super::*;
use crate::cache::{self, Claim, KeyVerdict, Slotted};
use crate::config::{Config, Unmarked};
use crate::heal::{self, Heal, Stamp};
use crate::host::{DispatchError, HeaderPairs, Host};
use crate::inflight::Lookup;
use crate::metrics::Metrics;
use crate::reply::Rejection;
use crate::request::{self, Classified};
use crate::stamp;

pub(super) fn refuse(host: &dyn Host, metrics: &Metrics, rejection: Rejection) -> (State, Verdict) {
    log::info!(
        "authstamp: refused status={} code={}",
        rejection.status,
        rejection.code
    );
    metrics.error(host, rejection.code);
    rejection.send(host);
    (State::Replied, Verdict::Pause)
}

/// Records the effective stream as stamped for `lookup` and hands the
/// record's id to the upstream instance (one host call).
pub(super) fn record_stamp(
    host: &dyn Host,
    worker: &Worker,
    lookup: Rc<Lookup>,
    header: &authstamp_protocol::Credential,
    upstream: authstamp_protocol::Upstream,
) -> u64 {
    let id = worker.stamps.borrow_mut().add(Stamp {
        lookup,
        token: cache::hash(header.value.as_bytes()),
        name: header.name.clone(),
        placement: header.placement,
        upstream,
        static_credential: heal::is_static(header),
        heal: Heal::Idle,
    });
    host.set_stream_property(heal::STAMP_PROPERTY, id.to_string().as_bytes());
    id
}

/// Stamps a cache hit.
fn stamp_hit(
    host: &dyn Host,
    worker: &Worker,
    lookup: Rc<Lookup>,
    entry: cache::Entry,
    request: &HeaderPairs,
    path: String,
) -> (State, Verdict) {
    let metrics = &worker.metrics;
    let healable = heal::marks(host, worker, &lookup, &entry.credential);
    match stamp::stamp_request(
        host,
        &lookup.config.headers,
        &entry.credential,
        &entry.upstream,
        request,
        path,
        healable,
    ) {
        Ok(()) => {
            metrics.hit_stamped(host);
            let id = record_stamp(host, worker, lookup, &entry.credential, entry.upstream);
            (State::Stamped(id), Verdict::Continue)
        }
        Err(rejection) => refuse(host, metrics, rejection),
    }
}

/// `on_http_request_headers` of stream `stream`.
pub fn on_request_headers(
    host: &dyn Host,
    config: Option<&Rc<Config>>,
    worker: &Worker,
    stream: u32,
) -> (State, Verdict) {
    let metrics = &worker.metrics;
    let request_headers = host.request_headers();
    let Some(config) = config else {
        // Without a configuration nothing can be stamped: refuse what is
        // ours, let the rest through.
        let marked = request_headers
            .iter()
            .any(|(n, _)| request::starts_with_dashed(n, headers::PREFIX));
        if marked {
            return refuse(
                host,
                metrics,
                Rejection::new(
                    ErrorCode::Internal,
                    "the authstamp filter has no valid configuration",
                ),
            );
        }
        return (State::Passed, Verdict::Continue);
    };

    let identity = match request::classify(&request_headers, config) {
        Ok(Classified::Marked(identity)) => identity,
        Ok(Classified::Unmarked) => {
            return match config.unmarked {
                Unmarked::Pass => (State::Passed, Verdict::Continue),
                Unmarked::Reject => refuse(
                    host,
                    metrics,
                    Rejection::bad_request(format!(
                        "the request carries no authstamp headers ({} and {} are required)",
                        config.headers.provider, config.headers.user
                    )),
                ),
            };
        }
        Err(rejection) => return refuse(host, metrics, rejection),
    };
    if let Err(rejection) = crate::workload::check(host, &config.allowed_workloads) {
        return refuse(host, metrics, rejection);
    }
    let path = match stamp::request_path(&request_headers) {
        Ok(path) => path,
        Err(rejection) => return refuse(host, metrics, rejection),
    };

    let cache_key = Slotted::new(
        cache::key(
            &config.token_service.cluster,
            &identity.app_id,
            &identity.provider,
            &identity.user,
        ),
        config.cache_capacity,
    );
    if let Some(now_ms) = host.now_unix_millis() {
        let (key_digest, check) = worker.key_check(
            &config.token_service.cluster,
            &identity.app_id,
            &identity.app_key,
        );
        let hit = cache::lookup(host, &cache_key, &key_digest, now_ms / 1000);
        let trusted = hit.filter(|_| {
            match cache::check_key(host, &check, now_ms, recheck_lease_ms(config)) {
                KeyVerdict::Trusted => true,
                KeyVerdict::Recheck => {
                    log::debug!(
                        "authstamp: cache hit whose app key is due for a check provider={}",
                        identity.provider
                    );
                    false
                }
            }
        });
        if let Some(entry) = trusted {
            log::debug!("authstamp: cache hit provider={}", identity.provider);
            let lookup = Rc::new(Lookup {
                cache_key,
                identity,
                config: Rc::clone(config),
                force_refresh: false,
            });
            return stamp_hit(host, worker, lookup, entry, &request_headers, path);
        }
    }
    metrics.miss(host);

    let joined = {
        let mut inflight = worker.inflight.borrow_mut();
        inflight
            .find(&cache_key.key, identity.app_key.expose())
            .filter(|id| inflight.join(*id, stream))
    };
    if let Some(id) = joined {
        log::debug!(
            "authstamp: joined a lookup in flight provider={}",
            identity.provider
        );
        metrics.coalesced(host);
        return (State::Waiting(id), Verdict::Pause);
    }

    let lookup = Rc::new(Lookup {
        cache_key,
        identity,
        config: Rc::clone(config),
        force_refresh: false,
    });
    let until_ms = match claim(host, &lookup) {
        Claim::Wait { until_ms } => {
            log::debug!(
                "authstamp: waiting for another worker's lookup provider={}",
                lookup.identity.provider
            );
            metrics.coalesced(host);
            let id = worker
                .inflight
                .borrow_mut()
                .start_remote(lookup, stream, until_ms);
            host.set_tick_period(TICK);
            return (State::Waiting(id), Verdict::Pause);
        }
        Claim::Ask { until_ms } => until_ms,
    };
    match dispatch_lookup(host, metrics, &lookup) {
        Ok(token) => {
            log::debug!(
                "authstamp: cache miss provider={}",
                lookup.identity.provider
            );
            let started = host.now_unix_nanos().unwrap_or(0);
            let id = worker
                .inflight
                .borrow_mut()
                .start(lookup, stream, token, until_ms, started);
            (State::Waiting(id), Verdict::Pause)
        }
        Err(DispatchError) => {
            log::warn!(
                "authstamp: could not dispatch to the token service provider={}",
                lookup.identity.provider
            );
            cache::release(host, &lookup.cache_key, until_ms);
            let rejection = Rejection::unavailable("the token service cannot be reached");
            match stale_entry(host, worker, &lookup, &rejection) {
                Some(entry) => {
                    metrics.stale_served(host, 1);
                    stamp_hit(host, worker, lookup, entry, &request_headers, path)
                }
                None => refuse(host, metrics, rejection),
            }
        }
    }
}
