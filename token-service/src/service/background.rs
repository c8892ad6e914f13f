//! The background refresher: renews tokens before they expire and keeps idle
//! refresh tokens alive, once across replicas. Every replica runs the loop;
//! only the holder of the `background_refresher` lease (a row in
//! `service_leases`, taken and renewed with a conditional `UPDATE`) scans.
//! Each refresh still takes its connection's lease, so even two leaders in
//! a clock-skewed moment never refresh one connection twice.

use crate::db;
use crate::service::refresh::{self, Need};
use crate::service::state::AppState;
use crate::store::connections::{self, ConnKey, DueCandidate};
use crate::store::{leases, providers};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

pub const LEADER_LEASE: &str = "background_refresher";

/// Runs until `shutdown` resolves; then gives the leader lease up.
pub async fn run(state: AppState, shutdown: impl std::future::Future<Output = ()>) {
    let interval = state.background.interval;
    if interval.is_zero() {
        return;
    }
    let owner = format!("{}#background", state.lease_owners.replica());
    tokio::pin!(shutdown);
    loop {
        if let Err(err) = tick(&state, &owner).await {
            tracing::warn!(error = %err, "background refresh pass failed");
        }
        // A little jitter so that replicas started together do not race.
        let jitter =
            Duration::from_millis(u64::from(crate::crypto::secrets::random_bytes::<1>()[0]));
        tokio::select! {
            () = tokio::time::sleep(interval + jitter) => {}
            () = &mut shutdown => break,
        }
    }
    state.metrics.set_background_leader(false);
    if let Err(err) = leases::release(&state.db, LEADER_LEASE, &owner).await {
        tracing::warn!(error = %err, "could not release the background refresher lease");
    }
}

/// One pass: take or renew the leader lease, then refresh what is due.
/// Returns how many refreshes were started.
pub async fn tick(state: &AppState, owner: &str) -> anyhow::Result<usize> {
    let now_ms = db::now_ms();
    let hold = i64::try_from((state.background.interval * 3).as_millis()).unwrap_or(i64::MAX);
    let leader = leases::acquire(
        &state.db,
        LEADER_LEASE,
        owner,
        now_ms,
        now_ms.saturating_add(hold.max(5_000)),
    )
    .await?;
    state.metrics.set_background_leader(leader);
    if !leader {
        return Ok(0);
    }
    state.metrics.background_run();

    let providers: HashMap<(String, String), providers::ProviderRecord> = providers::all(&state.db)
        .await?
        .into_iter()
        .map(|p| ((p.app_id.clone(), p.provider.clone()), p))
        .collect();
    if providers.is_empty() {
        return Ok(0);
    }
    let policies: Vec<_> = providers
        .values()
        .map(|p| state.policy.with(&p.policy))
        .collect();
    let secs = crate::policy::secs;
    let now = db::now();
    // Coarse bounds over every provider's policy; exact checks per row below.
    let widest_window = policies
        .iter()
        .map(|p| secs(p.background_window).max(secs(p.skew)))
        .max()
        .unwrap_or(0);
    let shortest_age = policies
        .iter()
        .flat_map(|p| {
            let keepalive = (!p.keepalive.is_zero()).then(|| secs(p.keepalive));
            let no_expiry = secs(p.max_token_lifetime)
                - secs(p.background_window).min(secs(p.max_token_lifetime) / 2);
            keepalive.into_iter().chain([no_expiry])
        })
        .min()
        .unwrap_or(i64::MAX);
    let batch = state.background.batch;
    let mut candidates: Vec<DueCandidate> = connections::expiring_before(
        &state.db,
        now.saturating_add(widest_window),
        now,
        now_ms,
        batch,
    )
    .await?;
    candidates.extend(
        connections::issued_before(
            &state.db,
            now.saturating_sub(shortest_age),
            now,
            now_ms,
            batch,
        )
        .await?,
    );
    let mut seen: HashSet<ConnKey> = HashSet::new();
    let semaphore = std::sync::Arc::new(tokio::sync::Semaphore::new(
        state.background.concurrency.max(1),
    ));
    let mut tasks = tokio::task::JoinSet::new();
    for candidate in candidates {
        if !seen.insert(candidate.key.clone()) {
            continue;
        }
        let Some(provider) = providers
            .get(&(candidate.key.app_id.clone(), candidate.key.provider.clone()))
            .cloned()
        else {
            continue;
        };
        let Ok(permit) = semaphore.clone().acquire_owned().await else {
            break;
        };
        let state = state.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let policy = state.policy.with(&provider.policy);
            let Ok(Some(record)) = connections::get(&state.db, &candidate.key).await else {
                return false;
            };
            if !refresh::background_due(&record, &policy, db::now()) {
                return false;
            }
            // Errors are recorded on the connection and in the metrics.
            let _ = refresh::refresh(&state, &provider, record, Need::Background).await;
            true
        });
    }
    let started = tasks
        .join_all()
        .await
        .into_iter()
        .filter(|started| *started)
        .count();
    if started > 0 {
        tracing::info!(
            refreshes = started,
            "background refresher renewed expiring connections"
        );
    }
    Ok(started)
}
