//! Phase 3: the token service's answer: read and validated (the parser),
//! cached, its verdict on the app key recorded, its waiters completed.

use authstamp_protocol::{ErrorBody, ErrorCode, TokenLookupResponse};

use super::wake::complete;
use super::*;
use crate::cache::{self, Stored};
use crate::host::Host;
use crate::inflight::Lookup;
use crate::metrics::Metrics;
use crate::reply::Rejection;
use crate::stamp;

/// Records what a token-service answer says about the lookup's app key: an
/// answer the service gives only past the app's authentication accepts it,
/// `bad_app_key` and `unknown_app` refuse it, anything else (a timeout, a
/// failure) says nothing.
fn record_key_check(host: &dyn Host, lookup: &Lookup, outcome: &Outcome) {
    let accepted = match outcome {
        Outcome::Stamp(_) => true,
        Outcome::Refuse(rejection) => match rejection.code {
            ErrorCode::NotConnected
            | ErrorCode::ReauthRequired
            | ErrorCode::UnknownProvider
            | ErrorCode::ProviderUnavailable => true,
            ErrorCode::BadAppKey | ErrorCode::UnknownApp => false,
            _ => return,
        },
    };
    let identity = &lookup.identity;
    let name = cache::key_check_name(
        &lookup.config.token_service.cluster,
        &identity.app_id,
        &cache::key_digest(identity.app_key.expose()),
    );
    if !accepted {
        cache::key_refused(host, &name);
        return;
    }
    let Some(now_ms) = host.now_unix_millis() else {
        return;
    };
    let recheck_ms = u64::try_from(lookup.config.app_key_recheck.as_millis()).unwrap_or(0);
    cache::key_accepted(host, &name, now_ms, recheck_ms);
}

/// Reads the answer being delivered (before any switch of effective context).
fn read_answer(host: &dyn Host, body_size: usize, provider: &str) -> Outcome {
    let answer_headers = host.http_call_response_headers();
    let status = answer_headers
        .iter()
        .find(|(n, _)| n == ":status")
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
        .and_then(|v| v.parse::<u16>().ok());
    let Some(status) = status else {
        log::warn!("authstamp: token service timed out or reset provider={provider}");
        return Outcome::Refuse(Rejection::unavailable(
            "the token service did not answer in time",
        ));
    };
    if body_size > MAX_ANSWER_BYTES {
        log::warn!("authstamp: token service answer too large status={status} provider={provider}");
        return Outcome::Refuse(Rejection::unavailable(
            "the token service answer is too large",
        ));
    }
    let body = if body_size == 0 {
        Vec::new()
    } else {
        host.http_call_response_body(body_size).unwrap_or_default()
    };
    if status == 200 {
        return match serde_json::from_slice::<TokenLookupResponse>(&body) {
            Ok(answer) => {
                match stamp::validate_answer(&answer) {
                    Ok(()) => Outcome::Stamp(answer),
                    Err(reason) => {
                        log::warn!("authstamp: token service answer refused ({reason}) provider={provider}");
                        Outcome::Refuse(Rejection::unavailable(
                            "the token service answer is invalid",
                        ))
                    }
                }
            }
            Err(_) => {
                log::warn!(
                    "authstamp: token service answer unreadable status=200 provider={provider}"
                );
                Outcome::Refuse(Rejection::unavailable(
                    "the token service answer is unreadable",
                ))
            }
        };
    }
    match serde_json::from_slice::<ErrorBody>(&body) {
        // The filter's own credential was refused: Envoy's configuration is
        // wrong, not the app's request.
        Ok(error) if error.error == ErrorCode::Unauthorized => {
            log::warn!(
                "authstamp: token service refused the filter credential (token_service.credential_env) status={status} provider={provider}"
            );
            Outcome::Refuse(Rejection::unavailable(
                "the token service refused this Envoy's filter credential",
            ))
        }
        Ok(error) => {
            log::info!(
                "authstamp: token service refused status={status} code={} provider={provider}",
                error.error
            );
            Outcome::Refuse(Rejection::from_token_service(status, error))
        }
        Err(_) => {
            log::warn!("authstamp: token service failed status={status} provider={provider}");
            Outcome::Refuse(Rejection::unavailable(format!(
                "the token service answered status {status}"
            )))
        }
    }
}

fn cache_answer(host: &dyn Host, metrics: &Metrics, lookup: &Lookup, answer: &TokenLookupResponse) {
    let Some(now) = host.now_unix_secs() else {
        return;
    };
    let config = &lookup.config;
    let valid_until = cache::valid_until(
        now,
        answer.expires_at,
        config.refresh_skew,
        config.max_cache_ttl,
    );
    if valid_until <= now {
        return;
    }
    let entry = cache::Entry {
        key: lookup.cache_key.key.clone(),
        app_key_digest: cache::key_digest(lookup.identity.app_key.expose()),
        credential: answer.credential.clone(),
        upstream: answer.upstream.clone(),
        valid_until,
        expires_at: answer.expires_at,
    };
    if cache::store(host, &lookup.cache_key, &entry, now) == Stored::NewSlot {
        metrics.slot_created(host);
    }
}

/// `on_http_call_response` for `token`, delivered to context `current` (a
/// stream or the root context).
pub fn on_call_response(
    host: &dyn Host,
    worker: &Worker,
    token: u32,
    body_size: usize,
    current: u32,
) {
    let Some(pending) = worker.inflight.borrow_mut().take_by_token(token) else {
        log::debug!("authstamp: answer for a lookup nobody waits for");
        return;
    };
    if let Some(now) = host.now_unix_nanos() {
        if pending.started_ns != 0 {
            let micros = now.saturating_sub(pending.started_ns) / 1_000;
            worker.metrics.fetch_latency(host, micros);
        }
    }
    let lookup = &pending.lookup;
    let outcome = read_answer(host, body_size, &lookup.identity.provider);
    if let Outcome::Stamp(answer) = &outcome {
        cache_answer(host, &worker.metrics, lookup, answer);
    }
    record_key_check(host, lookup, &outcome);
    cache::release(host, &lookup.cache_key, pending.until_ms);
    let outcome = or_stale(host, worker, lookup, outcome, pending.members.len());
    complete(host, worker, &pending, &outcome, current);
}

/// Stale-if-error: when the token service cannot answer (unreachable,
/// timed out, failing, its storage or the provider down), the cached
/// token of a lookup that is not a forced refresh, past its cache validity
/// but still valid at the provider, and for an app key the service never
/// refused. Never past the token's expiry (see [`cache::lookup_stale`]).
pub(super) fn stale_entry(
    host: &dyn Host,
    worker: &Worker,
    lookup: &Lookup,
    rejection: &Rejection,
) -> Option<cache::Entry> {
    let transient = matches!(
        rejection.code,
        ErrorCode::TokenServiceUnavailable
            | ErrorCode::StorageUnavailable
            | ErrorCode::ProviderUnavailable
    );
    if !transient || lookup.force_refresh {
        return None;
    }
    let now = host.now_unix_secs()?;
    let identity = &lookup.identity;
    let digest = worker.key_digest(&identity.app_key);
    let check = cache::key_check_name(
        &lookup.config.token_service.cluster,
        &identity.app_id,
        &digest,
    );
    if cache::key_refused_before(host, &check) {
        return None;
    }
    let entry = cache::lookup_stale(host, &lookup.cache_key, &digest, now)?;
    log::warn!(
        "authstamp: token service failed ({}): serving the cached token, valid for {} s more provider={}",
        rejection.code,
        entry.expires_at.unwrap_or(now).saturating_sub(now),
        identity.provider
    );
    Some(entry)
}

/// `outcome`, or a stale cached token for its `members` waiting streams
/// when it is a failure of the token service (see [`stale_entry`]).
pub(super) fn or_stale(
    host: &dyn Host,
    worker: &Worker,
    lookup: &Lookup,
    outcome: Outcome,
    members: usize,
) -> Outcome {
    let Outcome::Refuse(rejection) = &outcome else {
        return outcome;
    };
    match stale_entry(host, worker, lookup, rejection) {
        Some(entry) => {
            worker.metrics.stale_served(host, members);
            Outcome::Stamp(TokenLookupResponse {
                credential: entry.credential,
                upstream: entry.upstream,
                expires_at: entry.expires_at,
            })
        }
        None => outcome,
    }
}
