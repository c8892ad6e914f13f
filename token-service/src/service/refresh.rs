//! Refresh: one provider call per connection at a time, in this process and
//! across every replica that shares the database.
//!
//! 1. In-process single flight: callers of one connection queue on a local
//!    mutex, so only one of them talks to the database lease at a time.
//! 2. Across replicas: the connection row's lease (`refresh_lease_owner`,
//!    `refresh_lease_until`) is taken with one conditional `UPDATE` (free or
//!    expired). It lasts longer than the provider timeout, so a live holder
//!    always finishes (or gives up) before it runs out.
//! 3. After taking it the row is read again: if someone refreshed (or failed)
//!    meanwhile, their result is used and the provider is not called.
//! 4. The new tokens, the healthy status and the release of the lease are
//!    one `UPDATE`. A missing refresh token in the answer keeps the old one.
//! 5. Others wait with a backoff bounded by the holder's lease, then read the
//!    result; a lease whose holder died expires and is taken over.
//! 6. The provider call runs in its own task: a caller that goes away (the
//!    filter's timeout) never drops a provider answer on the floor.
//!
//! Failures: a permanent refusal marks the connection `reauth_required`,
//! unless the token version changed meanwhile (another refresh had rotated
//! the refresh token: the refusal concerned an old one). A transient failure
//! counts, sets a cooldown (doubling per failure) during which nobody asks the
//! provider again, and a still-valid token keeps being served.

use crate::crypto::secrets::{AccessToken, RefreshToken};
use crate::crypto::vault::{Aad, Field};
use crate::db;
use crate::error::Error;
use crate::metrics::{Grant, RefreshOutcome};
use crate::oauth::client::{ClientCredentials, GrantRequest, TokenError};
use crate::policy::{secs, RefreshPolicy};
use crate::service::journal::Entry;
use crate::service::state::AppState;
use crate::store::connections::{self, ConnKey, ConnectionRecord, ConnectionStatus, Refreshed};
use crate::store::providers::ProviderRecord;
use authstamp_protocol::ErrorCode;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// By default a caller whose stored token is still valid waits at most this long for a
/// refresh (its own or another holder's, in this replica or another) before
/// it is served the current token; the refresh goes on in its task.
pub const DEFAULT_VALID_TOKEN_MAX_WAIT: Duration = Duration::from_millis(250);
/// While a provider's connections cool down after failures, one refresh
/// attempt per this interval (per provider, per replica) goes to it anyway:
/// a healed provider is noticed within a second, not after the cooldown.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// A permanent refusal while the access token still works is confirmed by
/// one more attempt this many seconds later before the user must reconnect.
const CONFIRM_AFTER_SECS: i64 = 2;
/// Marks a permanent refusal that has not been confirmed yet (in
/// `last_refresh_error`).
pub const UNCONFIRMED: &str = "unconfirmed ";
const FIRST_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_millis(200);

/// The token to stamp and when it expires (as told to the filter).
pub struct Served {
    pub access_token: AccessToken,
    pub expires_at: Option<i64>,
}

/// Why a refresh is attempted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// A lookup found the token inside the refresh window.
    Due,
    /// A lookup asked for a refresh whatever the expiry.
    Force,
    /// The background refresher: expiring soon, or keep-alive.
    Background,
}

pub fn reauth_required() -> Error {
    Error::new(
        ErrorCode::ReauthRequired,
        "the provider no longer accepts this connection; the user must connect again",
    )
}

pub fn provider_unavailable(reason: &str) -> Error {
    Error::new(
        ErrorCode::ProviderUnavailable,
        format!("the provider's token endpoint failed ({reason}) and no valid token is left"),
    )
}

/// When the stored token is due for a refresh by a lookup; `None`: never by
/// time (no refresh token). The skew is at most half the token's lifetime,
/// and tokens without `expires_in` live `max_token_lifetime`: never a
/// refresh on every call, never a token kept forever.
pub fn refresh_due_at(c: &ConnectionRecord, p: &RefreshPolicy) -> Option<i64> {
    c.refresh_token.as_ref()?;
    Some(match c.expires_at {
        Some(exp) => {
            let lifetime = exp.saturating_sub(c.issued_at).max(0);
            exp.saturating_sub(secs(p.skew).min(lifetime / 2))
        }
        None => c.issued_at.saturating_add(secs(p.max_token_lifetime)),
    })
}

/// Whether a forced refresh may run: the token is no longer valid, or the
/// connection's last refresh (`last_refresh`, unix seconds; `None`: none
/// since it was connected) is at least `forced_refresh_interval` old. Bounds
/// the provider calls that 401s (or a hostile caller) can force, across
/// replicas since the time is the stored row's.
pub fn forced_refresh_allowed(
    c: &ConnectionRecord,
    last_refresh: Option<i64>,
    p: &RefreshPolicy,
    now: i64,
) -> bool {
    !c.is_valid_at(now)
        || last_refresh.is_none_or(|at| at.saturating_add(secs(p.forced_refresh_interval)) <= now)
}

pub fn is_due(c: &ConnectionRecord, p: &RefreshPolicy, now: i64) -> bool {
    refresh_due_at(c, p).is_some_and(|at| at <= now)
}

/// Whether the background refresher should renew this connection now.
pub fn background_due(c: &ConnectionRecord, p: &RefreshPolicy, now: i64) -> bool {
    if c.status != ConnectionStatus::Active || c.refresh_token.is_none() {
        return false;
    }
    let keepalive = !p.keepalive.is_zero() && c.issued_at.saturating_add(secs(p.keepalive)) <= now;
    let by_expiry = !p.background_window.is_zero() && {
        let end = c
            .expires_at
            .unwrap_or_else(|| c.issued_at.saturating_add(secs(p.max_token_lifetime)));
        let lifetime = end.saturating_sub(c.issued_at).max(0);
        end.saturating_sub(secs(p.background_window).min(lifetime / 2)) <= now
    };
    keepalive || by_expiry || is_due(c, p, now)
}

/// The expiry told to the filter: the provider's, or for a refreshable token
/// without one, when it will be refreshed.
pub fn reported_expiry(c: &ConnectionRecord, p: &RefreshPolicy) -> Option<i64> {
    c.expires_at
        .or_else(|| refresh_due_at(c, p).filter(|_| c.expires_at.is_none()))
}

pub fn open_access_token(state: &AppState, c: &ConnectionRecord) -> Result<AccessToken, Error> {
    let aad = Aad::connection(
        &c.key.app_id,
        &c.key.provider,
        &c.key.user_id,
        Field::AccessToken,
    );
    Ok(AccessToken::new(
        state.vault.open_string(&aad, &c.access_token)?.as_str(),
    ))
}

pub(crate) fn serve(
    state: &AppState,
    c: &ConnectionRecord,
    p: &RefreshPolicy,
) -> Result<Served, Error> {
    Ok(Served {
        access_token: open_access_token(state, c)?,
        expires_at: reported_expiry(c, p),
    })
}

/// Refreshes `snapshot`'s connection (or uses the refresh someone else
/// finished meanwhile). Runs in its own task: see the module docs.
pub async fn refresh(
    state: &AppState,
    provider: &ProviderRecord,
    snapshot: ConnectionRecord,
    need: Need,
) -> Result<Served, Error> {
    let policy = state.policy.with(&provider.policy);
    // Served instead if the refresh takes longer than a valid token may wait.
    let fallback = (need == Need::Due && snapshot.is_valid_at(db::now()))
        .then(|| serve(state, &snapshot, &policy))
        .transpose()?;
    let task_state = state.clone();
    let provider = provider.clone();
    let permit = state.refresh_tasks.clone().acquire_owned().await;
    let task = tokio::spawn(async move {
        let _permit = permit;
        run(&task_state, &provider, snapshot, need).await
    });
    let joined = match fallback {
        None => task.await,
        Some(current) => match tokio::time::timeout(state.valid_token_max_wait, task).await {
            Ok(joined) => joined,
            Err(_) => {
                state.metrics.served_during_refresh();
                return Ok(current);
            }
        },
    };
    joined.map_err(|e| Error::internal("refresh task failed", e))?
}

/// Records the time a caller spent waiting for someone else's lease.
struct WaitTimer<'a> {
    state: &'a AppState,
    started: Option<Instant>,
}

impl Drop for WaitTimer<'_> {
    fn drop(&mut self) {
        if let Some(started) = self.started {
            self.state.metrics.lease_wait(started.elapsed());
        }
    }
}

async fn run(
    state: &AppState,
    provider: &ProviderRecord,
    snapshot: ConnectionRecord,
    need: Need,
) -> Result<Served, Error> {
    let policy = state.policy.with(&provider.policy);
    if snapshot.refresh_token.is_none() {
        // Nothing to refresh with: serve what is left, if anything.
        if need != Need::Force && snapshot.is_valid_at(db::now()) {
            return serve(state, &snapshot, &policy);
        }
        return Err(reauth_required());
    }
    let key = snapshot.key.clone();
    let lock = state.refresh_locks.lock_for(&key);
    let local = lock.lock_owned().await;
    let owner = state.lease_owner();
    let mut timer = WaitTimer {
        state,
        started: None,
    };
    let mut backoff = FIRST_BACKOFF;
    let begun = Instant::now();
    loop {
        let now = db::now();
        let now_ms = db::now_ms();
        let current = connections::get(&state.db, &key)
            .await?
            .ok_or_else(|| Error::new(ErrorCode::NotConnected, "the connection was removed"))?;
        if current.status == ConnectionStatus::ReauthRequired {
            return Err(reauth_required());
        }
        if current.token_version != snapshot.token_version && current.is_valid_at(now) {
            // Someone refreshed (or reconnected) since the caller looked.
            return serve(state, &current, &policy);
        }
        if current.token_version == snapshot.token_version
            && current.failure_count > snapshot.failure_count
        {
            // Someone tried while this caller waited, and failed.
            return if current.is_valid_at(now) {
                serve(state, &current, &policy)
            } else {
                Err(provider_unavailable(
                    current
                        .last_refresh_error
                        .as_deref()
                        .unwrap_or("earlier attempt"),
                ))
            };
        }
        let still_needed = match need {
            Need::Force => {
                let allowed =
                    forced_refresh_allowed(&current, current.last_attempt_at, &policy, now);
                if !allowed {
                    state.metrics.forced_refresh_refused();
                }
                allowed
            }
            Need::Due => is_due(&current, &policy, now),
            Need::Background => background_due(&current, &policy, now),
        };
        if !still_needed {
            return serve(state, &current, &policy);
        }
        let cooling = current.retry_at.is_some_and(|at| at > now);
        // An unconfirmed refusal is confirmed after its own delay, not by a
        // probe: a glitch shorter than that costs no reconnect.
        let unconfirmed = current
            .last_refresh_error
            .as_deref()
            .is_some_and(|e| e.starts_with(UNCONFIRMED));
        if cooling && !unconfirmed && state.provider_probes.take(&key.app_id, &key.provider) {
            // This attempt tells whether the provider is back; a success
            // ends the cooldown of all its connections.
            state.metrics.provider_probe();
        } else if cooling {
            state.metrics.cooldown_skip();
            return if current.is_valid_at(now) {
                serve(state, &current, &policy)
            } else {
                Err(provider_unavailable(
                    current
                        .last_refresh_error
                        .as_deref()
                        .unwrap_or("cooling down after a failure"),
                ))
            };
        }
        let lease_ms = i64::try_from(state.refresh_lease.as_millis()).unwrap_or(i64::MAX);
        if connections::try_take_lease(
            &state.db,
            &key,
            &owner,
            now_ms,
            now_ms.saturating_add(lease_ms),
        )
        .await?
        {
            if let Some(previous) = current
                .lease_owner
                .as_deref()
                .filter(|_| current.lease_until.is_some_and(|u| u <= now_ms))
            {
                state.metrics.lease_takeover();
                tracing::warn!(app_id = %key.app_id, provider = %key.provider, previous, "took over an expired refresh lease");
            }
            // Re-read: a refresh may have finished between the read and the take.
            let fresh = connections::get(&state.db, &key).await?;
            match fresh {
                Some(fresh)
                    if fresh.token_version == current.token_version
                        && fresh.failure_count == current.failure_count
                        && fresh.status == ConnectionStatus::Active =>
                {
                    match store_journalled(state, &policy, &fresh, &owner).await? {
                        Journalled::Nothing => {}
                        Journalled::Served(served) => return Ok(served),
                        Journalled::Reread => continue,
                    }
                    drop(timer);
                    if need == Need::Force {
                        state.metrics.forced_refresh_done();
                    }
                    return attempt(state, provider, &policy, fresh, &owner, need, local).await;
                }
                _ => {
                    connections::release_lease(&state.db, &key, &owner).await?;
                    continue;
                }
            }
        }
        // Held by another request or replica.
        if need == Need::Background {
            return serve(state, &current, &policy);
        }
        timer.started.get_or_insert(begun);
        if need != Need::Force
            && current.is_valid_at(now)
            && begun.elapsed() >= state.valid_token_max_wait
        {
            return serve(state, &current, &policy);
        }
        let until_ms = current.lease_until.unwrap_or(now_ms);
        let left = Duration::from_millis(u64::try_from(until_ms - now_ms).unwrap_or(0).max(1));
        tokio::time::sleep(backoff.min(left)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// The provider call and its outcome, while holding the lease.
async fn attempt(
    state: &AppState,
    provider: &ProviderRecord,
    policy: &RefreshPolicy,
    current: ConnectionRecord,
    owner: &str,
    need: Need,
    local: tokio::sync::OwnedMutexGuard<()>,
) -> Result<Served, Error> {
    let key = &current.key;
    let aad = |field| Aad::connection(&key.app_id, &key.provider, &key.user_id, field);
    let Some(refresh_blob) = current.refresh_token.as_ref() else {
        connections::release_lease(&state.db, key, owner).await?;
        return Err(reauth_required());
    };
    let refresh_token = RefreshToken::new(
        state
            .vault
            .open_string(&aad(Field::RefreshToken), refresh_blob)?
            .as_str(),
    );
    let secret = state.client_secret(provider)?;
    let token_url = provider
        .refresh_url_for(&current.params)
        .map_err(|e| Error::internal("stored token_url is invalid", e))?;
    let extra = provider
        .token_params_for(
            &provider.settings.token_request_params.refresh,
            &current.params,
        )
        .map_err(|e| Error::internal("stored token_request_params are invalid", e))?;
    state.metrics.provider_call(Grant::RefreshToken);
    if need == Need::Background {
        state.metrics.background_refresh();
    }
    let result = state
        .token_client
        .request_with(
            token_url.as_str(),
            &ClientCredentials {
                client_id: &provider.client_id,
                client_secret: &secret,
                auth: provider.client_auth,
            },
            &GrantRequest::RefreshToken {
                refresh_token: &refresh_token,
            },
            &extra,
        )
        .await;
    let now = db::now();
    match result {
        Ok(tokens) => {
            let expires_at = tokens
                .expires_in
                .map(|secs| now.saturating_add(i64::try_from(secs).unwrap_or(i64::MAX)));
            let access_blob = state
                .vault
                .seal_str(&aad(Field::AccessToken), tokens.access_token.expose())?;
            // `token_set` already dropped empty refresh tokens: `None` keeps the old one.
            let refresh_blob = tokens
                .refresh_token
                .as_ref()
                .map(|t| state.vault.seal_str(&aad(Field::RefreshToken), t.expose()))
                .transpose()?;
            let refreshed = Refreshed {
                key,
                owner,
                base_version: current.token_version,
                access_token: access_blob,
                refresh_token: refresh_blob,
                expires_at,
                scopes: tokens.scope.as_deref(),
                now,
            };
            let stored = store_or_hold(state, refreshed, local).await?;
            state.metrics.refresh(RefreshOutcome::Ok);
            let failing_for = state.failing_since.recovered(key);
            if current.failure_count > 0 {
                // From this replica's first failure of the run, or else
                // (another replica failed) from the last failed attempt.
                let failing_for = failing_for.unwrap_or_else(|| {
                    let since = current.last_attempt_at.unwrap_or(now);
                    Duration::from_secs(u64::try_from(now.saturating_sub(since)).unwrap_or(0))
                });
                state.metrics.time_to_recover(failing_for);
                // The provider answers again: its other connections need not
                // wait out their cooldowns.
                state.metrics.recovered();
                match connections::clear_cooldowns(&state.db, &key.app_id, &key.provider, now).await
                {
                    Ok(cleared) => {
                        tracing::info!(app_id = %key.app_id, provider = %key.provider, cleared, "provider answers again: cooldowns ended")
                    }
                    Err(err) => {
                        tracing::warn!(app_id = %key.app_id, provider = %key.provider, error = %err, "could not end the provider's cooldowns")
                    }
                }
            }
            if stored {
                tracing::info!(app_id = %key.app_id, provider = %key.provider, refresh_token_returned = tokens.refresh_token.is_some(), ?need, "refreshed access token");
            } else {
                state.metrics.lease_lost();
                tracing::warn!(app_id = %key.app_id, provider = %key.provider, "refresh finished after its lease expired and newer tokens were stored; kept the newer ones");
            }
            let reported = expires_at.or_else(|| {
                Some(now.saturating_add(secs(policy.max_token_lifetime)))
                    .filter(|_| tokens.refresh_token.is_some() || current.refresh_token.is_some())
            });
            Ok(Served {
                access_token: tokens.access_token,
                expires_at: reported,
            })
        }
        Err(TokenError::Permanent(code)) => {
            // One refusal while the access token still works may be a
            // provider's glitch (a 200 with invalid_grant): serve the token
            // and confirm with one more attempt before the user must
            // reconnect. A forced refresh comes from the provider refusing
            // that token (a 401): then nothing works any more.
            let unconfirmed = format!("{UNCONFIRMED}{code}");
            let repeated = current.last_refresh_error.as_deref() == Some(unconfirmed.as_str());
            if current.is_valid_at(now) && need != Need::Force && !repeated {
                connections::record_transient_failure(
                    &state.db,
                    key,
                    owner,
                    current.token_version,
                    &unconfirmed,
                    now,
                    now.saturating_add(CONFIRM_AFTER_SECS),
                )
                .await?;
                state.provider_probes.touch(&key.app_id, &key.provider);
                state.failing_since.failed(key);
                state.metrics.refresh(RefreshOutcome::Transient);
                tracing::warn!(app_id = %key.app_id, provider = %key.provider, reason = %code, "refresh refused while the access token still works: serving it; one more attempt confirms the refusal before the user must reconnect");
                return serve(state, &current, policy);
            }
            let marked = connections::mark_reauth_required(
                &state.db,
                key,
                owner,
                current.token_version,
                &code,
                now,
            )
            .await?;
            if marked {
                state.failing_since.recovered(key);
                crate::service::webhooks::emit(
                    state,
                    &key.app_id,
                    crate::service::webhooks::Event::ReauthRequired,
                    &key.provider,
                    &key.user_id,
                );
                state.metrics.refresh(RefreshOutcome::Permanent);
                tracing::warn!(app_id = %key.app_id, provider = %key.provider, reason = %code, "refresh refused: connection needs a new connect");
                return Err(reauth_required());
            }
            // The tokens changed while we asked: our refresh token was an old one.
            let latest = connections::get(&state.db, key).await?;
            match latest {
                Some(latest)
                    if latest.status == ConnectionStatus::Active && latest.is_valid_at(now) =>
                {
                    state.metrics.refresh(RefreshOutcome::Superseded);
                    tracing::info!(app_id = %key.app_id, provider = %key.provider, reason = %code, "old refresh token refused after a concurrent rotation; serving the newer tokens");
                    serve(state, &latest, policy)
                }
                _ => {
                    state.metrics.refresh(RefreshOutcome::Permanent);
                    Err(reauth_required())
                }
            }
        }
        Err(TokenError::Transient(reason)) => {
            let failures = current.failure_count.saturating_add(1);
            let cooldown = cooldown(
                policy.failure_cooldown,
                state.max_failure_cooldown,
                failures,
            );
            let retry_at = now.saturating_add(i64::try_from(cooldown.as_secs()).unwrap_or(0));
            connections::record_transient_failure(
                &state.db,
                key,
                owner,
                current.token_version,
                &reason,
                now,
                retry_at,
            )
            .await?;
            state.provider_probes.touch(&key.app_id, &key.provider);
            state.failing_since.failed(key);
            crate::service::webhooks::emit(
                state,
                &key.app_id,
                crate::service::webhooks::Event::RefreshFailed,
                &key.provider,
                &key.user_id,
            );
            state.metrics.refresh(RefreshOutcome::Transient);
            tracing::warn!(app_id = %key.app_id, provider = %key.provider, %reason, failures, cooldown_secs = cooldown.as_secs(), "refresh failed; will retry after the cooldown");
            if current.is_valid_at(now) {
                serve(state, &current, policy)
            } else {
                Err(provider_unavailable(&reason))
            }
        }
    }
}

/// Writes refreshed tokens. While the database is unreachable the provider
/// may already have rotated the refresh token, so giving up would lose the
/// connection: the sealed tokens are journalled (see [`crate::service::journal`]:
/// fsynced in the data directory, kept in memory) before the caller is
/// served them, and a task of its own writes them as soon as the database
/// is back, holding the connection's local lock so no refresh in this
/// replica starts from the old refresh token meanwhile.
async fn store_or_hold(
    state: &AppState,
    refreshed: Refreshed<'_>,
    local: tokio::sync::OwnedMutexGuard<()>,
) -> Result<bool, Error> {
    let err = match connections::store_refreshed(&state.db, refreshed.clone()).await {
        Ok(stored) => return Ok(stored),
        Err(err) if db::is_unavailable(&err) => err,
        Err(err) => return Err(err.into()),
    };
    let entry = Entry::of(&refreshed);
    let key = refreshed.key.clone();
    match journal_io(state, {
        let entry = entry.clone();
        move |journal| journal.append(entry)
    })
    .await
    {
        Ok(()) => {
            state.metrics.journalled();
            tracing::error!(app_id = %key.app_id, provider = %key.provider, error = %err, pending = state.journal.pending_count(), "database unavailable after a refresh: journalled the new tokens (sealed, fsynced) and holding them in memory; they are written as soon as the database is back");
        }
        Err(journal_err) => {
            tracing::error!(app_id = %key.app_id, provider = %key.provider, error = %err, journal_error = %format_args!("{journal_err:#}"), "database unavailable after a refresh and the journal could not be written: holding the new tokens in memory only (lost if this process dies before the database is back)");
        }
    }
    hold_until_stored(state, entry, refreshed.owner.to_owned(), local).await;
    Ok(true)
}

/// Runs blocking journal I/O off the async workers.
pub(crate) async fn journal_io<T: Send + 'static>(
    state: &AppState,
    io: impl FnOnce(&crate::service::journal::Journal) -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let task_state = state.clone();
    tokio::task::spawn_blocking(move || io(&task_state.journal))
        .await
        .map_err(|e| anyhow::anyhow!("journal task failed: {e}"))?
}

/// Settles `key`'s journal entry (the database has its tokens or newer ones).
async fn settle(state: &AppState, key: &ConnKey, base_version: i64) {
    let settled = journal_io(state, {
        let key = key.clone();
        move |journal| journal.settle(&key, base_version)
    })
    .await;
    if let Err(err) = settled {
        tracing::error!(app_id = %key.app_id, provider = %key.provider, error = %format_args!("{err:#}"), "could not remove a stored entry from the token journal; it is replayed harmlessly at the next start");
    }
}

/// A task writing a journalled entry until the database takes it (200 ms,
/// then every 500 ms), holding `local`.
async fn hold_until_stored(
    state: &AppState,
    entry: Entry,
    owner: String,
    local: tokio::sync::OwnedMutexGuard<()>,
) {
    let task_state = state.clone();
    let permit = state.refresh_tasks.clone().acquire_owned().await;
    tokio::spawn(async move {
        let (_local, _permit) = (local, permit);
        let key = entry.key();
        let since = Instant::now();
        let written = crate::service::journal::write_when_back(|| {
            connections::store_refreshed(&task_state.db, entry.refreshed(&key, &owner))
        })
        .await;
        match written {
            Ok(stored) => {
                settle(&task_state, &key, entry.base_version).await;
                task_state.metrics.store_retried();
                task_state.metrics.journal_stored(stored);
                let pending = task_state.journal.pending_count();
                if stored {
                    tracing::warn!(app_id = %key.app_id, provider = %key.provider, waited_ms = since.elapsed().as_millis(), pending, "database back: stored the journalled tokens");
                } else {
                    tracing::warn!(app_id = %key.app_id, provider = %key.provider, waited_ms = since.elapsed().as_millis(), pending, "database back: newer tokens were stored meanwhile; dropped the journalled ones");
                }
            }
            Err(err) => {
                tracing::error!(app_id = %key.app_id, provider = %key.provider, error = %err, "journalled tokens could not be written; kept in the journal for the next start");
            }
        }
    });
}

/// Replays the journal a previous process left, before serving: each entry
/// is written if the database still holds the version it started from,
/// dropped if it holds newer tokens, and held (and retried) if the database
/// is unreachable.
pub async fn replay_journal(state: &AppState, entries: Vec<Entry>) {
    if entries.is_empty() {
        return;
    }
    let total = entries.len();
    let (mut stored, mut superseded, mut waiting, mut failed) = (0, 0, 0, 0);
    for entry in entries {
        let replayed = if entry.held.is_some() {
            replay_held(state, entry).await
        } else {
            replay_tokens(state, entry).await
        };
        match replayed {
            Replayed::Written(written) => {
                state.metrics.journal_stored(written);
                if written {
                    stored += 1;
                } else {
                    superseded += 1;
                }
            }
            Replayed::Waiting => waiting += 1,
            Replayed::Failed => failed += 1,
        }
    }
    state.metrics.journal_replayed(total);
    tracing::warn!(
        replayed = total,
        stored,
        superseded,
        waiting_for_database = waiting,
        failed,
        "replayed the token journal left by the previous process"
    );
}

/// What became of one replayed journal entry.
enum Replayed {
    /// Settled: written (`true`) or superseded by newer tokens.
    Written(bool),
    /// The database is still away: a task writes it once it is back.
    Waiting,
    /// The database refused it; it stays in the journal.
    Failed,
}

/// Replays a connection's tokens (a refresh's or a code exchange's) under
/// the connection's local refresh lock.
async fn replay_tokens(state: &AppState, entry: Entry) -> Replayed {
    use crate::service::journalled_connect as connect;
    let key = entry.key();
    let local = state.refresh_locks.lock_for(&key).lock_owned().await;
    let owner = state.lease_owner();
    let written = if entry.is_refresh() {
        connections::store_refreshed(&state.db, entry.refreshed(&key, &owner)).await
    } else {
        connect::write(state, &entry).await
    };
    match written {
        Ok(written) => {
            if entry.is_refresh() {
                settle(state, &key, entry.base_version).await;
            } else {
                connect::settle(state, &entry).await;
            }
            Replayed::Written(written)
        }
        Err(err) if db::is_unavailable(&err) => {
            if entry.is_refresh() {
                hold_until_stored(state, entry, owner, local).await;
            } else {
                connect::hold_until_stored(state, entry, local).await;
            }
            Replayed::Waiting
        }
        Err(err) => {
            tracing::error!(app_id = %key.app_id, provider = %key.provider, error = %err, "a journalled entry could not be written; kept in the journal");
            Replayed::Failed
        }
    }
}

/// Replays a connect result waiting for the app: it stands for no
/// connection, so there is no lock to take.
async fn replay_held(state: &AppState, entry: Entry) -> Replayed {
    use crate::service::journalled_result as held;
    match held::write(state, &entry).await {
        Ok(written) => {
            held::settle(state, &entry).await;
            Replayed::Written(written)
        }
        Err(err) if db::is_unavailable(&err) => {
            held::hold_until_stored(state, entry).await;
            Replayed::Waiting
        }
        Err(err) => {
            tracing::error!(app_id = %entry.app_id, provider = %entry.provider, error = %err, "a journalled connect result could not be written; kept in the journal");
            Replayed::Failed
        }
    }
}

/// A journalled refresh this caller finds after taking the lease (a
/// previous process of this data directory refreshed, journalled and died,
/// or its write is still waiting): written instead of a new provider call,
/// which would present a refresh token the provider has already retired.
async fn store_journalled(
    state: &AppState,
    policy: &RefreshPolicy,
    fresh: &ConnectionRecord,
    owner: &str,
) -> Result<Journalled, Error> {
    let Some(entry) = state
        .journal
        .pending(&fresh.key)
        .filter(|e| e.base_version == fresh.token_version)
    else {
        return Ok(Journalled::Nothing);
    };
    let key = &fresh.key;
    let stored = connections::store_refreshed(&state.db, entry.refreshed(key, owner)).await?;
    settle(state, key, entry.base_version).await;
    state.metrics.journal_stored(stored);
    if !stored {
        connections::release_lease(&state.db, key, owner).await?;
        return Ok(Journalled::Reread);
    }
    tracing::warn!(app_id = %key.app_id, provider = %key.provider, "stored journalled tokens found when taking the refresh lease, instead of asking the provider again");
    let mut served = fresh.clone();
    entry.apply_to(&mut served);
    serve(state, &served, policy).map(Journalled::Served)
}

/// What [`store_journalled`] did.
enum Journalled {
    /// No journalled refresh: ask the provider.
    Nothing,
    Served(Served),
    /// Newer tokens are stored; the lease is released: read again.
    Reread,
}

/// The journalled tokens of `c` not yet in the database (`c` holds the
/// version they started from), while their access token is valid: lookups
/// are served them without waiting for the database write.
pub fn journalled(
    state: &AppState,
    c: &ConnectionRecord,
    p: &RefreshPolicy,
    now: i64,
) -> Option<Result<Served, Error>> {
    let entry = state
        .journal
        .pending(&c.key)
        .filter(|e| e.is_refresh() && e.base_version == c.token_version)?;
    let mut newer = c.clone();
    entry.apply_to(&mut newer);
    newer.is_valid_at(now).then(|| serve(state, &newer, p))
}

/// When each provider was last asked during failures, per replica: the
/// probe of [`PROBE_INTERVAL`].
#[derive(Debug, Default)]
pub struct ProviderProbes(Mutex<HashMap<(String, String), Instant>>);

impl ProviderProbes {
    /// A probe of (`app_id`, `provider`) may go now; it is then recorded.
    pub fn take(&self, app_id: &str, provider: &str) -> bool {
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let key = (app_id.to_owned(), provider.to_owned());
        if last
            .get(&key)
            .is_some_and(|at| at.elapsed() < PROBE_INTERVAL)
        {
            return false;
        }
        last.insert(key, Instant::now());
        true
    }

    /// The provider was just asked (and failed): the next probe waits.
    pub fn touch(&self, app_id: &str, provider: &str) {
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        last.insert((app_id.to_owned(), provider.to_owned()), Instant::now());
    }
}

/// When each connection's current run of refresh failures began, in this
/// replica: the time-to-recover histogram.
#[derive(Debug, Default)]
pub struct FailingSince(Mutex<HashMap<ConnKey, Instant>>);

/// Connections tracked by [`FailingSince`] at most (a provider outage over
/// more is still counted, from the stored last attempt).
const FAILING_TRACKED: usize = 100_000;

impl FailingSince {
    /// A refresh of `key` failed; the run's first failure is kept.
    pub fn failed(&self, key: &ConnKey) {
        let mut since = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if since.len() < FAILING_TRACKED || since.contains_key(key) {
            since.entry(key.clone()).or_insert_with(Instant::now);
        }
    }

    /// The run of failures of `key` ended: how long it lasted, if it began here.
    pub fn recovered(&self, key: &ConnKey) -> Option<Duration> {
        let mut since = self.0.lock().unwrap_or_else(|e| e.into_inner());
        since.remove(key).map(|at| at.elapsed())
    }
}

/// `base` doubled per failure after the first, at most `max`.
pub fn cooldown(base: Duration, max: Duration, failures: i64) -> Duration {
    let doublings = u32::try_from(failures.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
    base.saturating_mul(1u32 << doublings).min(max.max(base))
}

/// One async mutex per connection, held while refreshing it. Entries are
/// weak so that idle connections cost nothing.
#[derive(Debug, Default)]
pub struct RefreshLocks {
    locks: Mutex<HashMap<ConnKey, Weak<tokio::sync::Mutex<()>>>>,
}

impl RefreshLocks {
    pub fn lock_for(&self, key: &ConnKey) -> Arc<tokio::sync::Mutex<()>> {
        // A poisoned map is still a valid map.
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(lock) = locks.get(key).and_then(Weak::upgrade) {
            return lock;
        }
        if locks.len() >= 1024 {
            locks.retain(|_, weak| weak.strong_count() > 0);
        }
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        locks.insert(key.clone(), Arc::downgrade(&lock));
        lock
    }
}

/// Lease owner names: this replica's random id and a sequence number.
#[derive(Debug)]
pub struct LeaseOwners {
    replica: String,
    next: AtomicU64,
}

impl LeaseOwners {
    pub fn new() -> Self {
        Self {
            replica: crate::crypto::secrets::hex(&crate::crypto::secrets::random_bytes::<6>()),
            next: AtomicU64::new(1),
        }
    }

    pub fn replica(&self) -> &str {
        &self.replica
    }

    pub fn next(&self) -> String {
        format!(
            "{}#{}",
            self.replica,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }
}

impl Default for LeaseOwners {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(user: &str) -> ConnKey {
        ConnKey {
            app_id: "app".into(),
            provider: "p".into(),
            user_id: user.into(),
        }
    }

    fn record(expires_at: Option<i64>, issued_at: i64, refresh: bool) -> ConnectionRecord {
        ConnectionRecord {
            key: key("a"),
            access_token: vec![],
            refresh_token: refresh.then(Vec::new),
            expires_at,
            scopes: String::new(),
            status: ConnectionStatus::Active,
            failure_count: 0,
            last_refresh_at: None,
            last_refresh_error: None,
            last_attempt_at: None,
            retry_at: None,
            issued_at,
            token_version: 1,
            lease_owner: None,
            lease_until: None,
            params: Default::default(),
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn one_lock_per_live_connection() {
        let locks = RefreshLocks::default();
        let a = locks.lock_for(&key("a"));
        let a2 = locks.lock_for(&key("a"));
        let b = locks.lock_for(&key("b"));
        assert!(Arc::ptr_eq(&a, &a2));
        assert!(!Arc::ptr_eq(&a, &b));
        drop((a, a2));
        // Dropped locks are recreated, not resurrected.
        let a3 = locks.lock_for(&key("a"));
        assert_eq!(Arc::strong_count(&a3), 1);
    }

    #[test]
    fn due_times_never_mean_every_call_or_forever() {
        let p = RefreshPolicy::default(); // skew 60 s, max lifetime 1 h
                                          // An hour-long token: refreshed 60 s before it expires.
        assert_eq!(refresh_due_at(&record(Some(3600), 0, true), &p), Some(3540));
        // A 30 s token: the skew shrinks to half its life, not every call.
        assert_eq!(
            refresh_due_at(&record(Some(1030), 1000, true), &p),
            Some(1015)
        );
        // No expires_in: the maximum lifetime.
        assert_eq!(refresh_due_at(&record(None, 1000, true), &p), Some(4600));
        // Nothing to refresh with: never due.
        assert_eq!(refresh_due_at(&record(Some(3600), 0, false), &p), None);
        assert!(is_due(&record(None, 1000, true), &p, 4600));
        assert!(!is_due(&record(None, 1000, true), &p, 4599));
        assert_eq!(reported_expiry(&record(None, 1000, true), &p), Some(4600));
        assert_eq!(reported_expiry(&record(None, 1000, false), &p), None);
    }

    #[test]
    fn background_window_and_keepalive() {
        let mut p = RefreshPolicy::default(); // window 5 min, keep-alive off
        let hour = record(Some(3600), 0, true);
        assert!(!background_due(&hour, &p, 3299));
        assert!(background_due(&hour, &p, 3300));
        // A 2 min token is not renewed in a loop: half its life first.
        let short = record(Some(120), 0, true);
        assert!(!background_due(&short, &p, 59));
        assert!(background_due(&short, &p, 60));
        let long = record(Some(90 * 86400), 0, true);
        assert!(!background_due(&long, &p, 86400));
        p.keepalive = Duration::from_secs(86400);
        assert!(background_due(&long, &p, 86400));
        p.background_window = Duration::ZERO;
        assert!(!background_due(&hour, &p, 3300));
        assert!(background_due(&hour, &p, 3540), "still due by the skew");
    }

    #[test]
    fn cooldown_doubles_up_to_the_maximum() {
        let base = Duration::from_secs(5);
        let max = Duration::from_secs(60);
        assert_eq!(cooldown(base, max, 1), Duration::from_secs(5));
        assert_eq!(cooldown(base, max, 2), Duration::from_secs(10));
        assert_eq!(cooldown(base, max, 4), Duration::from_secs(40));
        assert_eq!(cooldown(base, max, 5), Duration::from_secs(60));
        assert_eq!(cooldown(base, max, 500), Duration::from_secs(60));
        assert_eq!(cooldown(Duration::ZERO, max, 3), Duration::ZERO);
    }
}
