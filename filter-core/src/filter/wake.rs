//! Phase 4: waking the streams that waited on a lookup: each is stamped
//! and resumed (a batch per callback) or answered locally.

use std::rc::Rc;

use super::arrive::record_stamp;
use super::*;
use crate::heal::{self};
use crate::host::Host;
use crate::inflight::{Done, Pending};
use crate::stamp;

/// Resolves the stamped requests whose replay awaits this lookup, and
/// resumes the replays waiting (restamped if the answer is a fresher
/// credential); completes every member: makes it the effective context,
/// stamps and resumes it or answers it locally, and records how. Then makes
/// `current` effective again.
pub(super) fn complete(
    host: &dyn Host,
    worker: &Worker,
    pending: &Pending,
    outcome: &Outcome,
    current: u32,
) {
    let metrics = &worker.metrics;
    let lookup = &pending.lookup;
    let fresh = match outcome {
        Outcome::Stamp(answer) => Ok((&answer.credential, &answer.upstream)),
        Outcome::Refuse(rejection) => Err(rejection.code),
    };
    worker.stamps.borrow_mut().resolve(pending.id, fresh);
    let mut resumed = 0;
    for &(healer, stamp) in &pending.healers {
        if !host.set_effective_context(healer) {
            log::debug!("authstamp: a waiting replay is gone");
            continue;
        }
        match heal::replay(host, worker, stamp) {
            Ok(()) => host.resume_request(),
            Err(rejection) => {
                metrics.error(host, rejection.code);
                rejection.send(host);
            }
        }
    }
    for &member in &pending.members {
        if !host.set_effective_context(member) {
            log::warn!("authstamp: a waiting stream is gone");
            continue;
        }
        let result = match outcome {
            Outcome::Stamp(answer) => stamp::stamp(
                host,
                &lookup.config.headers,
                &answer.credential,
                &answer.upstream,
                heal::marks(host, worker, lookup, &answer.credential),
            )
            .map(|()| {
                record_stamp(
                    host,
                    worker,
                    Rc::clone(lookup),
                    &answer.credential,
                    answer.upstream.clone(),
                )
            }),
            Outcome::Refuse(rejection) => Err(rejection.clone()),
        };
        let done = match result {
            Ok(id) => {
                metrics.stamped(host);
                if resumed < RESUME_BATCH {
                    host.resume_request();
                    resumed += 1;
                } else {
                    worker.to_resume.borrow_mut().push_back(member);
                }
                Done::Stamped(id)
            }
            Err(rejection) => {
                metrics.error(host, rejection.code);
                rejection.send(host);
                Done::Replied
            }
        };
        worker.inflight.borrow_mut().record(member, done);
    }
    if !worker.to_resume.borrow().is_empty() {
        host.set_tick_period(TICK);
    }
    host.set_effective_context(current);
}

/// Resumes up to [`RESUME_BATCH`] of the stamped streams left by
/// [`complete`] (a stream gone meanwhile is skipped).
pub(super) fn resume_left(host: &dyn Host, worker: &Worker) {
    for _ in 0..RESUME_BATCH {
        let Some(member) = worker.to_resume.borrow_mut().pop_front() else {
            break;
        };
        if host.set_effective_context(member) {
            host.resume_request();
        }
    }
    host.set_effective_context(worker.root);
}
