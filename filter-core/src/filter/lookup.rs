//! Phase 2: the token lookup: the shared-data marker that makes other
//! workers wait, and the `POST /v1/token-lookup` call (from a stream or the
//! worker root).

use std::rc::Rc;

use authstamp_protocol::{headers, paths, TokenLookupRequest};

use super::answer::or_stale;
use super::wake::complete;
use super::*;
use crate::cache::{self, Claim};
use crate::config::Config;
use crate::host::{DispatchError, Host};
use crate::inflight::Lookup;
use crate::metrics::Metrics;
use crate::reply::Rejection;

/// How long a request rechecking an app key holds the recheck: its lookup
/// has surely ended by then.
pub(super) fn recheck_lease_ms(config: &Config) -> u64 {
    u64::try_from(config.token_service.timeout.as_millis())
        .unwrap_or(0)
        .saturating_add(MARKER_GRACE_MS)
}

/// How long a lookup's marker lives.
pub(crate) fn marker_ttl_ms(config: &Config) -> u64 {
    let timeout_ms = u64::try_from(config.token_service.timeout.as_millis()).unwrap_or(0);
    timeout_ms + MARKER_GRACE_MS
}

/// Claims the shared-data marker of `lookup`'s key (see `cache::claim`); a
/// host without a clock asks without a marker.
pub(crate) fn claim(host: &dyn Host, lookup: &Lookup) -> Claim {
    let Some(now_ms) = host.now_unix_millis() else {
        return Claim::Ask { until_ms: 0 };
    };
    cache::claim(
        host,
        &lookup.cache_key,
        now_ms,
        marker_ttl_ms(&lookup.config),
        lookup.force_refresh,
    )
}

/// Sends `POST /v1/token-lookup` for `lookup` from the effective context.
pub(super) fn dispatch_lookup(
    host: &dyn Host,
    metrics: &Metrics,
    lookup: &Lookup,
) -> Result<u32, DispatchError> {
    let identity = &lookup.identity;
    let body = serde_json::to_vec(&TokenLookupRequest {
        provider: identity.provider.clone(),
        user: identity.user.clone(),
        force_refresh: lookup.force_refresh,
    })
    .map_err(|_| DispatchError)?;
    let ts = &lookup.config.token_service;
    // The filter listener answers only the filter's credential.
    let authorization = ts
        .credential
        .as_ref()
        .map(|credential| format!("Bearer {}", credential.expose()));
    let mut call_headers = vec![
        (":method", "POST"),
        (":path", paths::TOKEN_LOOKUP),
        (":authority", ts.authority.as_str()),
        ("content-type", "application/json"),
        (headers::APP, identity.app_id.as_str()),
        (headers::APP_KEY, identity.app_key.expose()),
    ];
    if let Some(value) = &authorization {
        call_headers.push(("authorization", value.as_str()));
    }
    let token = host.dispatch_http_call(&ts.cluster, &call_headers, &body, ts.timeout)?;
    metrics.call(host);
    if lookup.force_refresh {
        metrics.forced_refresh(host);
    }
    Ok(token)
}

/// Dispatches lookup `id` from the root context (the effective context of
/// the tick), claiming its marker when `claim_marker`; a failure answers its
/// members 503.
pub(super) fn dispatch_from_root(
    host: &dyn Host,
    worker: &Worker,
    id: u64,
    lookup: &Rc<Lookup>,
    claim_marker: bool,
) {
    let until_ms = if claim_marker {
        match claim(host, lookup) {
            Claim::Ask { until_ms } => Some(until_ms),
            Claim::Wait { until_ms } => {
                // Another worker asks for this key meanwhile: wait for it.
                worker.inflight.borrow_mut().wait_remote(id, until_ms);
                return;
            }
        }
    } else {
        None
    };
    match dispatch_lookup(host, &worker.metrics, lookup) {
        Ok(token) => {
            let started = host.now_unix_nanos().unwrap_or(0);
            worker
                .inflight
                .borrow_mut()
                .adopt(id, token, until_ms, started);
        }
        Err(DispatchError) => {
            log::warn!(
                "authstamp: could not dispatch to the token service provider={}",
                lookup.identity.provider
            );
            let removed = worker.inflight.borrow_mut().remove(id);
            if let Some(pending) = removed {
                cache::release(
                    host,
                    &lookup.cache_key,
                    until_ms.unwrap_or(pending.until_ms),
                );
                let outcome = Outcome::Refuse(Rejection::unavailable(
                    "the token service cannot be reached",
                ));
                let outcome = or_stale(host, worker, lookup, outcome, pending.members.len());
                complete(host, worker, &pending, &outcome, worker.root);
            }
        }
    }
}
