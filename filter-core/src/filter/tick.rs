//! The worker root's tick: batched metrics, resumes left over, orphaned
//! lookups and forced refreshes, waits on other workers' lookups.

use authstamp_protocol::TokenLookupResponse;

use super::lookup::dispatch_from_root;
use super::wake::{complete, resume_left};
use super::*;
use crate::cache;
use crate::host::Host;
use crate::inflight::Owner;

/// The root context's tick: hands batched metrics over, dispatches orphaned
/// lookups and forced refreshes, polls waits on other workers, and slows
/// the ticks down to [`IDLE_TICK`] when nothing is left to do.
pub fn on_tick(host: &dyn Host, worker: &Worker) {
    worker.metrics.flush(host);
    resume_left(host, worker);
    let orphans = worker.inflight.borrow().orphans();
    for (id, lookup) in orphans {
        // A forced refresh claims the marker; a re-dispatch still holds its own.
        dispatch_from_root(host, worker, id, &lookup, lookup.force_refresh);
    }

    let remotes = worker.inflight.borrow().owned_by(Owner::Remote);
    for (id, lookup) in remotes {
        let key_digest = cache::key_digest(lookup.identity.app_key.expose());
        let check = cache::key_check_name(
            &lookup.config.token_service.cluster,
            &lookup.identity.app_id,
            &key_digest,
        );
        // An entry for this key whose key the token service accepted lately
        // (a revoked key must not be stamped from an older entry).
        let entry = host.now_unix_millis().and_then(|now_ms| {
            cache::lookup(host, &lookup.cache_key, &key_digest, now_ms / 1000)
                .filter(|_| cache::key_verified(host, &check, now_ms))
        });
        if let Some(entry) = entry {
            let removed = worker.inflight.borrow_mut().remove(id);
            if let Some(pending) = removed {
                let outcome = Outcome::Stamp(TokenLookupResponse {
                    credential: entry.credential,
                    upstream: entry.upstream,
                    expires_at: None,
                });
                complete(host, worker, &pending, &outcome, worker.root);
            }
            continue;
        }
        let still_pending = host
            .now_unix_millis()
            .is_some_and(|now_ms| cache::is_pending(host, &lookup.cache_key, now_ms));
        if !still_pending {
            // The other worker is done (or gone) and left nothing usable for
            // this app key: ask ourselves.
            dispatch_from_root(host, worker, id, &lookup, true);
        }
    }

    if !worker.inflight.borrow().needs_tick() && worker.to_resume.borrow().is_empty() {
        host.set_tick_period(IDLE_TICK);
    }
}
