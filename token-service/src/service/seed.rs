//! `authstamp bench-seed` (hidden): many connected users for benchmarks and
//! load tests, written straight into the vault without any OAuth flow.
//!
//! Users are `<prefix><n>` for `n` in `start..start + users`; each gets an
//! active connection of the given app and provider whose access token is
//! `<token-prefix><user>`, sealed by the vault exactly as the callback seals
//! real tokens, expiring `expires_in` from now, without a refresh token.
//! Rows go in batched transactions (one commit per `batch` rows) as
//! multi-row upserts (the same conflict rule as a completed connect, so
//! re-seeding replaces rows).
//! The provider configuration must exist. Never use it on a real vault:
//! these tokens are fake.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::Serialize;

use crate::crypto::vault::{Aad, Field, Vault};
use crate::db::{self, Db};
use crate::store::connections::{self, ConnKey, NewConnection};
use crate::store::providers;
use crate::validate;

/// What to seed.
#[derive(Clone, Debug)]
pub struct Seed {
    pub app_id: String,
    pub provider: String,
    pub users: u64,
    pub start: u64,
    pub prefix: String,
    pub token_prefix: String,
    pub expires_in: Duration,
    pub batch: u64,
}

/// What was seeded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Seeded {
    pub app_id: String,
    pub provider: String,
    pub first_user: String,
    pub last_user: String,
    pub inserted: u64,
    pub expires_at: i64,
    pub millis: u64,
    /// Of `millis`, the time spent sealing access tokens with the vault.
    pub seal_millis: u64,
}

/// The user id of seeded user `n`.
pub fn user(prefix: &str, n: u64) -> String {
    format!("{prefix}{n}")
}

pub async fn run(db: &Db, vault: &Vault, seed: &Seed) -> anyhow::Result<Seeded> {
    if seed.users == 0 {
        bail!("--users must be at least 1");
    }
    if seed.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let last = seed
        .start
        .checked_add(seed.users - 1)
        .context("--start + --users overflows")?;
    for n in [seed.start, last] {
        validate::user_id(&user(&seed.prefix, n))
            .map_err(|_| anyhow::anyhow!("--prefix makes user ids longer than 256 bytes"))?;
    }
    if providers::get(db, &seed.app_id, &seed.provider)
        .await?
        .is_none()
    {
        bail!(
            "app {} has no provider configuration {}: create both first (authstamp app create, authstamp provider set)",
            seed.app_id,
            seed.provider
        );
    }
    let started = Instant::now();
    let now = db::now();
    let expires_at =
        now.saturating_add(i64::try_from(seed.expires_in.as_secs()).unwrap_or(i64::MAX));
    let mut inserted = 0;
    let mut sealing = Duration::ZERO;
    let mut n = seed.start;
    while n <= last {
        let end = n.saturating_add(seed.batch - 1).min(last);
        let mut tx = db
            .pool()
            .begin()
            .await
            .context("begin a seeding transaction")?;
        let keys: Vec<ConnKey> = (n..=end)
            .map(|i| ConnKey {
                app_id: seed.app_id.clone(),
                provider: seed.provider.clone(),
                user_id: user(&seed.prefix, i),
            })
            .collect();
        let mut rows = Vec::with_capacity(keys.len());
        let seal_started = Instant::now();
        for key in &keys {
            let aad = Aad::connection(&key.app_id, &key.provider, &key.user_id, Field::AccessToken);
            let token = format!("{}{}", seed.token_prefix, key.user_id);
            rows.push(NewConnection {
                key,
                access_token: vault.seal_str(&aad, &token)?,
                refresh_token: None,
                expires_at: Some(expires_at),
                scopes: "",
                now,
                params: None,
            });
        }
        sealing += seal_started.elapsed();
        inserted += u64::try_from(rows.len()).unwrap_or(u64::MAX);
        // Multi-row statements: one round trip per 500 rows.
        connections::upsert_many_on(&mut tx, rows)
            .await
            .context("insert seeded connections")?;
        tx.commit().await.context("commit a seeding transaction")?;
        if end == last {
            break;
        }
        n = end + 1;
    }
    Ok(Seeded {
        app_id: seed.app_id.clone(),
        provider: seed.provider.clone(),
        first_user: user(&seed.prefix, seed.start),
        last_user: user(&seed.prefix, last),
        inserted,
        expires_at,
        millis: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        seal_millis: u64::try_from(sealing.as_millis()).unwrap_or(u64::MAX),
    })
}
