//! Vault key versions in the database, and rotation.
//!
//! `vault_keys` has one row per key version ever activated, with a check
//! blob that only that version's key opens; the highest version is the
//! active one, with which every replica seals new blobs. A replica verifies
//! at start that its keys open their checks (a wrong or mixed-up key means
//! no start) and polls the active version every [`POLL_INTERVAL`].
//!
//! `authstamp keys rotate` activates a newer version (taken from the key
//! ring, or generated and added to the key file), then re-encrypts every
//! sealed column of every row in batches while the service keeps serving:
//! each row is re-sealed only if it still holds the blobs that were read
//! (a refresh that wrote new tokens meanwhile wins), and passes repeat until
//! no blob below the active version is left. Older versions stay readable
//! until `--min-key-version` retires them.

use crate::config::{self, KeySource};
use crate::crypto::secrets::MasterKey;
use crate::crypto::vault::{envelope_version, Vault, VaultError};
use crate::db::Db;
use crate::store::sealed::{self, KeyPart, SealedRow, SealedTable};
use crate::store::vault_keys;
use anyhow::{bail, Context as _};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

/// How often a running service looks for a newly activated key version.
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);
/// A rotation waits this long after activating a version before its final
/// pass, so that every replica seals with the new version by then.
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(6);
/// Passes after which a rotation gives up on rows that keep changing.
const MAX_PASSES: u32 = 10;

async fn register(db: &Db, vault: &Vault, version: u32) -> anyhow::Result<()> {
    let check = vault.key_check(version)?;
    vault_keys::insert(db, version, &check)
        .await
        .context("could not record the key version")
}

/// Checks the vault's keys against the database and sets its active
/// version; on a vault that has none yet, registers the lowest version of
/// the ring. Returns the active version. Any mismatch is an error: the
/// service must not start with a key that cannot read (or would fork) the
/// vault.
pub async fn attach(db: &Db, vault: &Vault) -> anyhow::Result<u32> {
    let mut rows = vault_keys::all(db).await?;
    if rows.is_empty() {
        let first = vault
            .versions()
            .first()
            .copied()
            .context("the key ring is empty")?;
        register(db, vault, first).await?;
        rows = vault_keys::all(db).await?;
    }
    for (version, check) in &rows {
        if vault.versions().contains(version) && !vault.check_matches(*version, check)? {
            bail!(
                "the master key of version {version} is not the key this vault was sealed with \
                 (wrong key, or two different keys given the same version)"
            );
        }
    }
    let active = rows
        .keys()
        .next_back()
        .copied()
        .context("no key version recorded")?;
    match vault.set_active(active) {
        Ok(()) => Ok(active),
        Err(VaultError::RetiredKeyVersion(_)) => bail!(
            "the vault's active key version is {active}, below --min-key-version {}: \
             rotate before retiring it",
            vault.min_version()
        ),
        Err(_) => bail!(
            "the vault's active key version {active} is not among the master keys given \
             (versions {:?}): add it to the key ring",
            vault.versions()
        ),
    }
}

/// Picks up a version activated by a rotation since the last look.
pub async fn poll(db: &Db, vault: &Vault) -> anyhow::Result<()> {
    let rows = vault_keys::all(db).await?;
    let Some((&active, check)) = rows.iter().next_back() else {
        return Ok(());
    };
    if active == vault.active_version() {
        return Ok(());
    }
    if !vault.knows(active) {
        bail!(
            "key version {active} was activated but is not among this replica's master keys \
             (versions {:?}); still sealing with version {}",
            vault.versions(),
            vault.active_version()
        );
    }
    if !vault.check_matches(active, check)? {
        bail!("this replica's key of version {active} does not match the one activated");
    }
    vault.set_active(active)?;
    tracing::info!(
        version = active,
        "sealing with the newly activated key version"
    );
    Ok(())
}

/// A running service's poller: every [`POLL_INTERVAL`] until `stop`.
pub async fn run_poller(
    state: crate::service::state::AppState,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(POLL_INTERVAL) => {}
        }
        if let Err(err) = poll(&state.db, &state.vault).await {
            tracing::error!(error = %format!("{err:#}"), "key version check failed");
        }
    }
}

/// The row's blobs opened and sealed again with the active version (`None`
/// for a column that is NULL).
fn reseal(
    vault: &Vault,
    t: &SealedTable,
    row: &SealedRow,
) -> Result<Vec<Option<Vec<u8>>>, VaultError> {
    t.columns
        .iter()
        .zip(&row.blobs)
        .map(|((_, field), blob)| {
            blob.as_ref()
                .map(|blob| {
                    let aad = (t.aad)(&row.key, *field);
                    let plain = vault.open(&aad, blob)?;
                    vault.seal(&aad, &plain)
                })
                .transpose()
        })
        .collect()
}

/// Blob counts by key version (and unreadable ones) over every sealed table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BlobCensus {
    /// Key version → number of blobs.
    pub by_version: BTreeMap<u32, u64>,
    /// Blobs not in the envelope format (truncated, tampered header).
    pub malformed: u64,
    /// Rows holding sealed columns.
    pub rows: u64,
}

impl BlobCensus {
    pub fn below(&self, version: u32) -> u64 {
        self.by_version.range(..version).map(|(_, n)| n).sum()
    }
}

pub async fn census(db: &Db, batch: i64) -> anyhow::Result<BlobCensus> {
    let mut census = BlobCensus::default();
    for t in sealed::TABLES {
        let mut after: Option<Vec<KeyPart>> = None;
        loop {
            let rows = sealed::page(db, t, after.as_deref(), batch).await?;
            for row in &rows {
                census.rows += 1;
                for blob in row.blobs.iter().flatten() {
                    match envelope_version(blob) {
                        Ok(v) => *census.by_version.entry(v).or_default() += 1,
                        Err(_) => census.malformed += 1,
                    }
                }
            }
            match rows.last() {
                Some(last) if rows.len() as i64 == batch => after = Some(last.key.clone()),
                _ => break,
            }
        }
    }
    Ok(census)
}

#[derive(Clone, Copy, Debug, Default)]
struct PassResult {
    scanned: u64,
    resealed: u64,
    changed: u64,
    unreadable: u64,
}

async fn pass(
    db: &Db,
    vault: &Vault,
    batch: i64,
    mut progress: Option<&mut Progress>,
) -> anyhow::Result<PassResult> {
    let active = vault.active_version();
    let mut result = PassResult::default();
    for t in sealed::TABLES {
        let mut after: Option<Vec<KeyPart>> = None;
        loop {
            let rows = sealed::page(db, t, after.as_deref(), batch).await?;
            // Open and seal outside the transaction; write the page in one.
            let mut resealed = Vec::new();
            for row in &rows {
                result.scanned += 1;
                let stale = row
                    .blobs
                    .iter()
                    .flatten()
                    .any(|blob| envelope_version(blob) != Ok(active));
                if !stale {
                    continue;
                }
                match reseal(vault, t, row) {
                    Ok(blobs) => resealed.push((row, blobs)),
                    Err(err) => {
                        result.unreadable += 1;
                        let key: Vec<String> = row.key.iter().map(KeyPart::label).collect();
                        tracing::error!(table = t.table, key = ?key, error = %err, "cannot re-encrypt a row: it does not open");
                    }
                }
            }
            if !resealed.is_empty() {
                let mut tx = db.pool().begin().await?;
                for (row, blobs) in resealed {
                    if sealed::write_if_unchanged(&mut tx, t, row, blobs).await? {
                        result.resealed += 1;
                    } else {
                        result.changed += 1;
                    }
                }
                tx.commit().await?;
            }
            if let Some(p) = progress.as_deref_mut() {
                p.advance(rows.len() as u64);
            }
            match rows.last() {
                Some(last) if rows.len() as i64 == batch => after = Some(last.key.clone()),
                _ => break,
            }
        }
    }
    Ok(result)
}

#[derive(Clone, Copy, Debug)]
pub struct RotateOptions {
    /// Wait after activating, before the final pass (see [`DEFAULT_SETTLE`]).
    pub settle: Duration,
    /// Rows per page.
    pub batch: i64,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

impl Default for RotateOptions {
    fn default() -> Self {
        Self {
            settle: DEFAULT_SETTLE,
            batch: 500,
            progress: true,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Rotated {
    pub previous_key_version: u32,
    pub active_key_version: u32,
    /// The new key was generated and added to this key file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
    pub rows: u64,
    pub reencrypted: u64,
    pub passes: u32,
    /// Rows whose blobs do not open (tampered, or a key version no longer
    /// in the ring): left as they are.
    pub unreadable: u64,
    /// Blobs still below the active version after the last pass.
    pub remaining_below_active: u64,
}

/// `authstamp keys rotate`: activates a newer key version and re-encrypts
/// every row with it.
pub async fn rotate(
    db: &Db,
    source: &mut KeySource,
    min_version: u32,
    options: RotateOptions,
) -> anyhow::Result<Rotated> {
    let vault = Vault::from_ring(&source.ring, min_version)?;
    let previous = attach(db, &vault).await?;
    let newest = source.ring.newest().unwrap_or(previous);
    let mut rotated = Rotated {
        previous_key_version: previous,
        ..Rotated::default()
    };
    let (vault, new) = if newest > previous {
        (vault, newest)
    } else if let Some(path) = source.file.clone() {
        // Read the file again right before extending it.
        let mut ring = config::read_key_file(&path)?;
        let new = ring.newest().unwrap_or(0).max(previous) + 1;
        ring.insert(new, MasterKey::generate());
        config::write_key_file(&path, &ring)?;
        tracing::info!(path = %path.display(), version = new, "added a new master key version to the key file");
        rotated.key_file = Some(path.display().to_string());
        source.ring = ring;
        let vault = Vault::from_ring(&source.ring, min_version)?;
        attach(db, &vault).await?;
        (vault, new)
    } else {
        bail!(
            "no key version newer than the active one ({previous}) is given: generate a key \
             (`authstamp keys generate`), add it as `{}:<key>` to AUTHSTAMP_MASTER_KEYS on every \
             replica and restart them, then run `authstamp keys rotate` again",
            previous + 1
        );
    };
    register(db, &vault, new).await?;
    let rows = vault_keys::all(db).await?;
    let active = rows.keys().next_back().copied().unwrap_or(new);
    if active != new
        || !rows
            .get(&new)
            .is_some_and(|c| vault.check_matches(new, c).unwrap_or(false))
    {
        bail!("key version {new} was activated concurrently with another key; run `authstamp keys status`");
    }
    vault.set_active(new)?;
    rotated.active_key_version = new;
    let activated = Instant::now();
    tracing::info!(
        from = previous,
        to = new,
        "activated key version; re-encrypting"
    );

    rotated.rows = sealed::count_rows(db).await?;
    let mut progress = options
        .progress
        .then(|| Progress::new("re-encrypting", rotated.rows));
    loop {
        rotated.passes += 1;
        let result = pass(db, &vault, options.batch.max(1), progress.as_mut()).await?;
        if let Some(p) = progress.take() {
            p.finish();
        }
        rotated.reencrypted += result.resealed;
        rotated.unreadable = result.unreadable;
        let settled = activated.elapsed() >= options.settle;
        if settled && result.resealed == 0 && result.changed == 0 {
            break;
        }
        if rotated.passes >= MAX_PASSES {
            break;
        }
        if !settled {
            tokio::time::sleep(options.settle.saturating_sub(activated.elapsed())).await;
        }
    }
    rotated.remaining_below_active = census(db, options.batch.max(1)).await?.below(new);
    Ok(rotated)
}

#[derive(Clone, Debug, Serialize)]
pub struct KeyStatus {
    pub active_key_version: u32,
    /// Versions recorded in the database (ever activated).
    pub registered_versions: Vec<u32>,
    /// Versions of the key ring given to this command.
    pub ring_versions: Vec<u32>,
    pub min_key_version: u32,
    pub blobs: BlobCensus,
    /// Blobs below the active version (0: older keys can be retired).
    pub blobs_below_active: u64,
}

pub async fn status(db: &Db, source: &KeySource, min_version: u32) -> anyhow::Result<KeyStatus> {
    let vault = Vault::from_ring(&source.ring, min_version)?;
    let active = attach(db, &vault).await?;
    let blobs = census(db, 500).await?;
    Ok(KeyStatus {
        active_key_version: active,
        registered_versions: vault_keys::all(db).await?.keys().copied().collect(),
        ring_versions: source.ring.versions(),
        min_key_version: vault.min_version(),
        blobs_below_active: blobs.below(active),
        blobs,
    })
}

/// A progress bar on stderr: redrawn in place on a terminal, one line per
/// tenth otherwise (logs, CI).
pub struct Progress {
    label: &'static str,
    total: u64,
    done: u64,
    tty: bool,
    last_draw: Option<Instant>,
    last_tenth: u64,
}

impl Progress {
    pub fn new(label: &'static str, total: u64) -> Self {
        let mut progress = Self {
            label,
            total,
            done: 0,
            tty: std::io::stderr().is_terminal(),
            last_draw: None,
            last_tenth: 0,
        };
        progress.draw(true);
        progress
    }

    pub fn advance(&mut self, n: u64) {
        self.done = self.done.saturating_add(n);
        self.draw(false);
    }

    pub fn finish(mut self) {
        self.done = self.done.max(self.total);
        self.draw(true);
        if self.tty {
            let _ = writeln!(std::io::stderr());
        }
    }

    /// `label [#####-----] done/total (pct%)`.
    pub fn line(&self) -> String {
        const WIDTH: u64 = 30;
        let total = self.total.max(1);
        let done = self.done.min(total);
        let filled = usize::try_from(done * WIDTH / total).unwrap_or(0);
        let empty = usize::try_from(WIDTH).unwrap_or(0).saturating_sub(filled);
        format!(
            "{} [{}{}] {}/{} rows ({}%)",
            self.label,
            "#".repeat(filled),
            "-".repeat(empty),
            self.done.min(self.total),
            self.total,
            if self.total == 0 {
                100
            } else {
                done * 100 / total
            }
        )
    }

    fn draw(&mut self, force: bool) {
        let mut err = std::io::stderr().lock();
        if self.tty {
            if force
                || self
                    .last_draw
                    .is_none_or(|at| at.elapsed() >= Duration::from_millis(100))
            {
                let _ = write!(err, "\r{}", self.line());
                let _ = err.flush();
                self.last_draw = Some(Instant::now());
            }
        } else {
            let tenth = self.done.saturating_mul(10) / self.total.max(1);
            if force || tenth > self.last_tenth {
                self.last_tenth = tenth;
                let _ = writeln!(err, "{}", self.line());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_progress_line_shows_the_share_done() {
        let mut p = Progress {
            label: "re-encrypting",
            total: 200,
            done: 0,
            tty: false,
            last_draw: None,
            last_tenth: 0,
        };
        assert_eq!(
            p.line(),
            "re-encrypting [------------------------------] 0/200 rows (0%)"
        );
        p.done = 50;
        assert_eq!(
            p.line(),
            "re-encrypting [#######-----------------------] 50/200 rows (25%)"
        );
        p.total = 0;
        p.done = 0;
        assert!(p.line().ends_with("0/0 rows (100%)"), "{}", p.line());
    }
}
