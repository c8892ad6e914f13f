//! Phase 5: the rest of a stream's life: body and trailers held while it
//! waits, the provider's response (an unhealed 401), the end of the stream.

use super::*;
use crate::cache;
use crate::heal::{self, Heal};
use crate::host::Host;
use crate::inflight::{Done, Left};

/// Brings a waiting stream's state up to date: another context may have
/// completed it.
pub fn settle(state: State, worker: &Worker, stream: u32) -> State {
    match state {
        State::Waiting(_) => match worker.inflight.borrow_mut().settle(stream) {
            Some(Done::Stamped(id)) => State::Stamped(id),
            Some(Done::Replied) => State::Replied,
            None => state,
        },
        other => other,
    }
}

/// Request body or trailers: held while the stream waits (or was answered),
/// so nothing reaches the router before the token is stamped.
pub fn on_request_data(state: State, worker: &Worker, stream: u32) -> (State, Verdict) {
    let state = settle(state, worker, stream);
    let verdict = match state {
        State::Waiting(_) | State::Replied => Verdict::Pause,
        State::Fresh | State::Passed | State::Stamped(..) => Verdict::Continue,
    };
    (state, verdict)
}

/// The provider's response headers for a stamped request, as the app will
/// get them. A 401 here is one the upstream instance did not heal: counted;
/// a retry header the router did not act on (a body over the retry buffer)
/// is removed. Without an upstream instance (it never saw the request), the
/// 401 is handled here as there, minus the replay: the refused token leaves
/// the cache and a bounded forced refresh is queued for the root context,
/// which the next requests wait for.
pub fn on_response_headers(host: &dyn Host, state: State, worker: &Worker, stream: u32) -> State {
    let state = settle(state, worker, stream);
    let State::Stamped(id) = state else {
        return state;
    };
    if host.response_status() != Some(401) {
        return state;
    }
    worker.metrics.unhealed(host);
    let heal = worker.stamps.borrow().heal(id);
    match heal {
        Some(Heal::Idle) => {
            worker.metrics.unauthorized(host);
            let decision = heal::on_refused(host, worker, id, false);
            if let heal::Decision::Unhealed(code) = decision {
                heal::apply(host, worker, id, &heal::Decision::Unhealed(code));
            }
        }
        Some(Heal::Retry(_) | Heal::Awaiting(_)) => {
            host.remove_response_header(heal::RETRY_HEADER);
            worker.stamps.borrow_mut().set_heal(id, Heal::Unhealed);
        }
        _ => {}
    }
    state
}

/// The stream is done. If it still waited, it leaves its lookup; if it owned
/// the call and others still wait, the root context is asked to tick and
/// dispatch again.
pub fn on_done(host: &dyn Host, state: State, worker: &Worker, stream: u32) -> State {
    let state = settle(state, worker, stream);
    if let State::Stamped(id) = state {
        worker.stamps.borrow_mut().remove(id);
    }
    if let State::Waiting(id) = state {
        let left = worker.inflight.borrow_mut().leave(id, stream);
        match left {
            Left::Orphaned => host.set_tick_period(TICK),
            Left::Removed {
                cache_key,
                until_ms,
            } => cache::release(host, &cache_key, until_ms),
            Left::Nothing => {}
        }
    }
    state
}
