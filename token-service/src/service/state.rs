//! The state every operation and handler shares: database, vault, token
//! client, metrics, refresh bookkeeping, journal and rate limits.

use crate::catalog;
use crate::config::PublicUrl;
use crate::crypto::secrets::{sha256, AdminToken, ClientSecret, Digest, FilterToken};
use crate::crypto::vault::{Aad, Vault, VaultError};
use crate::db::Db;
use crate::metrics::Metrics;
use crate::oauth::client::TokenClient;
use crate::policy::RefreshPolicy;
use crate::ratelimit;
use crate::service::refresh::{self, LeaseOwners, RefreshLocks};
use crate::service::{journal, journalled_connect};
use crate::store;
use crate::store::connections::StatusCounts;
use std::ops::Deref;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Everything the handlers share; cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub db: Db,
    pub vault: Vault,
    pub public_url: PublicUrl,
    pub token_client: TokenClient,
    pub metrics: Metrics,
    pub refresh_locks: RefreshLocks,
    /// Service-wide refresh policy; providers may override parts of it.
    pub policy: RefreshPolicy,
    /// Upper bound of the doubling failure cooldown.
    pub max_failure_cooldown: Duration,
    /// How long a refresh lease lasts (longer than the provider timeout).
    pub refresh_lease: Duration,
    /// How long a caller with a still-valid token waits for a refresh.
    pub valid_token_max_wait: Duration,
    pub lease_owners: LeaseOwners,
    pub provider_probes: refresh::ProviderProbes,
    /// When each failing connection's failures began (time to recover).
    pub failing_since: refresh::FailingSince,
    /// Issued tokens the database could not take yet.
    pub journal: journal::Journal,
    /// What lookups of journalled, unwritten connections need meanwhile.
    pub journalled_connects: journalled_connect::Contexts,
    /// Held by every running refresh task; shutdown waits for them.
    pub refresh_tasks: Arc<tokio::sync::Semaphore>,
    pub background: BackgroundOptions,
    pub connect_session_ttl: Duration,
    /// Per-app rate limits (in this replica's memory).
    pub limits: ratelimit::Limiters,
    admin_token_digest: Option<Digest>,
    filter_token_digest: Option<Digest>,
    status_cache: Mutex<Option<(Instant, StatusCounts)>>,
}

/// The background refresher: how often the leader scans, and how much.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackgroundOptions {
    /// Zero: no background refresher in this replica.
    pub interval: Duration,
    /// Connections refreshed per pass at most.
    pub batch: i64,
    /// Refreshes running at once.
    pub concurrency: usize,
}

impl Default for BackgroundOptions {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(15),
            batch: 500,
            concurrency: 8,
        }
    }
}

/// Permits of [`Inner::refresh_tasks`].
pub const MAX_REFRESH_TASKS: u32 = 4096;

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("db", &self.db)
            .field("public_url", &self.public_url)
            .field("policy", &self.policy)
            .field("refresh_lease", &self.refresh_lease)
            .field("replica", &self.lease_owners.replica())
            .field("connect_session_ttl", &self.connect_session_ttl)
            .field("admin_api_enabled", &self.admin_token_digest.is_some())
            .field("filter_token_set", &self.filter_token_digest.is_some())
            .finish_non_exhaustive()
    }
}

impl Deref for AppState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// Settings of an [`AppState`] besides the database and the vault.
#[derive(Debug)]
pub struct StateOptions {
    pub public_url: PublicUrl,
    /// `None`: the admin API answers 401 to everyone.
    pub admin_token: Option<AdminToken>,
    /// `None`: only a verified client certificate opens the filter listener.
    pub filter_token: Option<FilterToken>,
    pub policy: RefreshPolicy,
    pub max_failure_cooldown: Duration,
    pub provider_timeout: Duration,
    /// `None`: the provider timeout plus 5 s.
    pub refresh_lease: Option<Duration>,
    pub valid_token_max_wait: Duration,
    pub background: BackgroundOptions,
    pub connect_session_ttl: Duration,
    pub rate_limits: ratelimit::RateLimits,
    /// The token journal (`serve`: in the data directory); `None`: memory only.
    pub journal: Option<journal::Journal>,
}

impl StateOptions {
    /// Defaults for tests and embedding: everything as `authstamp serve`
    /// without flags, but no background refresher.
    pub fn new(public_url: PublicUrl) -> Self {
        Self {
            public_url,
            admin_token: None,
            filter_token: None,
            policy: RefreshPolicy::default(),
            max_failure_cooldown: Duration::from_secs(300),
            provider_timeout: Duration::from_secs(10),
            refresh_lease: None,
            valid_token_max_wait: refresh::DEFAULT_VALID_TOKEN_MAX_WAIT,
            background: BackgroundOptions {
                interval: Duration::ZERO,
                ..BackgroundOptions::default()
            },
            connect_session_ttl: Duration::from_secs(600),
            rate_limits: ratelimit::RateLimits::default(),
            journal: None,
        }
    }
}

impl AppState {
    /// The provider's OAuth client secret, opened from the vault.
    pub fn client_secret(
        &self,
        provider: &store::providers::ProviderRecord,
    ) -> Result<ClientSecret, VaultError> {
        let secret = self.vault.open_string(
            &Aad::provider_secret(&provider.app_id, &provider.provider),
            &provider.client_secret,
        )?;
        Ok(ClientSecret::new(secret.as_str()))
    }

    pub fn new(db: Db, vault: Vault, options: StateOptions) -> anyhow::Result<Self> {
        let refresh_lease = options
            .refresh_lease
            .unwrap_or(options.provider_timeout + Duration::from_secs(5));
        if refresh_lease <= options.provider_timeout {
            anyhow::bail!(
                "the refresh lease ({}) must be longer than the provider timeout ({})",
                humantime::format_duration(refresh_lease),
                humantime::format_duration(options.provider_timeout)
            );
        }
        if let Err(errors) = catalog::embedded() {
            anyhow::bail!("the provider catalog is invalid: {}", errors.join("; "));
        }
        Ok(Self(Arc::new(Inner {
            db,
            vault,
            public_url: options.public_url,
            token_client: TokenClient::new(options.provider_timeout)?,
            metrics: Metrics::default(),
            refresh_locks: RefreshLocks::default(),
            policy: options.policy,
            max_failure_cooldown: options.max_failure_cooldown,
            refresh_lease,
            valid_token_max_wait: options.valid_token_max_wait,
            lease_owners: LeaseOwners::new(),
            provider_probes: refresh::ProviderProbes::default(),
            failing_since: refresh::FailingSince::default(),
            journal: options.journal.unwrap_or_else(journal::Journal::in_memory),
            journalled_connects: journalled_connect::Contexts::default(),
            refresh_tasks: Arc::new(tokio::sync::Semaphore::new(MAX_REFRESH_TASKS as usize)),
            background: options.background,
            connect_session_ttl: options.connect_session_ttl,
            limits: ratelimit::Limiters::new(options.rate_limits),
            admin_token_digest: options.admin_token.map(|t| sha256(t.expose().as_bytes())),
            filter_token_digest: options.filter_token.map(|t| sha256(t.expose().as_bytes())),
            status_cache: Mutex::new(None),
        })))
    }

    /// A fresh lease owner name of this replica.
    pub fn lease_owner(&self) -> String {
        self.lease_owners.next()
    }

    /// Connections by status, counted at most every 10 s.
    pub async fn status_counts(&self) -> Option<StatusCounts> {
        let cached = *self.status_cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, counts)) = cached {
            if at.elapsed() < Duration::from_secs(10) {
                return Some(counts);
            }
        }
        // Metrics stay quick in an outage: the last counts (or none) after a short wait.
        let counted = tokio::time::timeout(
            PROBE_DB_TIMEOUT,
            store::connections::count_by_status(&self.db),
        )
        .await
        .unwrap_or(Err(sqlx::Error::PoolTimedOut));
        match counted {
            Ok(counts) => {
                *self.status_cache.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some((Instant::now(), counts));
                Some(counts)
            }
            Err(err) => {
                tracing::warn!(error = %err, "could not count connections for /metrics");
                cached.map(|(_, counts)| counts)
            }
        }
    }

    /// Waits (at most `limit`) until no refresh task is running.
    pub async fn drain_refreshes(&self, limit: Duration) {
        let all = self.refresh_tasks.acquire_many(MAX_REFRESH_TASKS);
        if tokio::time::timeout(limit, all).await.is_err() {
            tracing::warn!("refreshes still running at shutdown");
        }
    }

    pub fn admin_token_digest(&self) -> Option<&Digest> {
        self.0.admin_token_digest.as_ref()
    }

    pub fn filter_token_digest(&self) -> Option<&Digest> {
        self.0.filter_token_digest.as_ref()
    }
}

/// How long `/readyz` and `/metrics` wait for the database.
pub const PROBE_DB_TIMEOUT: Duration = Duration::from_millis(500);
