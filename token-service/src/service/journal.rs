//! The write-ahead journal of issued tokens the database could not take.
//!
//! A provider that rotates refresh tokens has retired the old one the moment
//! it answers a refresh: if the new tokens are then lost (the database is
//! away and the process dies), the connection is lost for good; the tokens
//! of a code exchange are a user's consent, lost with them. So before a
//! caller (or the user's browser) is answered such tokens are appended to
//! `<data_dir>/token-journal.jsonl` (0600, in the 0700 data directory), the
//! file and the directory fsynced, and kept here in memory. Tokens are
//! vault-sealed, with the connection's additional data: the file holds no
//! plaintext secret, and an entry moved to another connection does not open.
//!
//! An entry is settled (removed) once the database holds its tokens, or
//! holds newer ones (its `token_version` moved past the entry's
//! `base_version`); the file is then rewritten with what is left (renamed
//! into place, directory fsynced), and removed when nothing is left. At
//! start the file is read back and replayed before the service listens (see
//! [`crate::service::refresh::replay_journal`]). A torn last line (a crash in the
//! middle of an append, before its fsync, so before any caller saw its
//! tokens) is skipped.
//!
//! A finished authorization that returns to the app waits for the app's
//! confirmation in `connect_results`; when the database cannot take it,
//! it is journalled the same way (sealed to its result, standing for no
//! connection) and written to `connect_results` once the database is back.
//!
//! This module is the file and the in-memory maps; the database side is in
//! [`crate::service::refresh`] and, for code exchanges,
//! [`crate::service::journalled_connect`] and [`crate::service::journalled_result`].

use crate::store::connections::{ConnKey, ConnectionRecord, ConnectionStatus, Refreshed};
use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub const JOURNAL_FILE: &str = "token-journal.jsonl";

/// Issued tokens waiting for the database, as journalled: a refresh's, or
/// a code exchange's (`connect`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub app_id: String,
    pub provider: String,
    pub user_id: String,
    /// The token version the refresh started from: the entry wins only
    /// while the database still holds that version.
    pub base_version: i64,
    /// Sealed (base64 in the file).
    #[serde(with = "sealed")]
    pub access_token: Vec<u8>,
    /// Sealed; `None` keeps the stored refresh token.
    #[serde(with = "sealed_opt")]
    pub refresh_token: Option<Vec<u8>>,
    pub expires_at: Option<i64>,
    pub scopes: Option<String>,
    /// When the provider issued them (unix seconds).
    pub issued_at: i64,
    /// Set for the tokens of a code exchange: the whole new connection
    /// (`base_version` unused; written unless the database holds tokens
    /// issued later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<Connect>,
    /// Set (with `connect`) for a finished authorization that waits for the
    /// app's confirmation: the tokens are sealed to the result, not to a
    /// connection, and stand for no connection until confirmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<Held>,
}

/// A connect result (`connect_results`) the database could not take.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    /// SHA-256 of the one-time result, base64 in the file (the result
    /// itself is the browser's and never stored).
    #[serde(with = "sealed")]
    pub result_hash: Vec<u8>,
    /// When the result expires (unix seconds); an expired one is dropped.
    pub expires_at: i64,
}

/// What a code exchange's entry needs besides the tokens to store the
/// connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connect {
    /// Connection parameter values (and response-derived placeholders).
    pub params: crate::template::Values,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("app_id", &self.app_id)
            .field("provider", &self.provider)
            .field("base_version", &self.base_version)
            .field("expires_at", &self.expires_at)
            .field("connect", &self.connect.is_some())
            .field("held", &self.held.is_some())
            .finish_non_exhaustive()
    }
}

impl Entry {
    pub fn of(r: &Refreshed<'_>) -> Self {
        Self {
            app_id: r.key.app_id.clone(),
            provider: r.key.provider.clone(),
            user_id: r.key.user_id.clone(),
            base_version: r.base_version,
            access_token: r.access_token.clone(),
            refresh_token: r.refresh_token.clone(),
            expires_at: r.expires_at,
            scopes: r.scopes.map(str::to_owned),
            issued_at: r.now,
            connect: None,
            held: None,
        }
    }

    /// Whether this is a refresh's entry (else a code exchange's).
    pub fn is_refresh(&self) -> bool {
        self.connect.is_none()
    }

    /// The result hash of a held connect result, or `None`.
    pub fn held_result(&self) -> Option<&[u8]> {
        self.held.as_ref().map(|h| h.result_hash.as_slice())
    }

    pub fn key(&self) -> ConnKey {
        ConnKey {
            app_id: self.app_id.clone(),
            provider: self.provider.clone(),
            user_id: self.user_id.clone(),
        }
    }

    /// `c` (at `base_version`) as it is once this entry is written.
    pub fn apply_to(&self, c: &mut ConnectionRecord) {
        c.access_token.clone_from(&self.access_token);
        if let Some(refresh) = &self.refresh_token {
            c.refresh_token = Some(refresh.clone());
        }
        c.expires_at = self.expires_at;
        if let Some(scopes) = &self.scopes {
            c.scopes.clone_from(scopes);
        }
        c.issued_at = self.issued_at;
        c.token_version = self.base_version.saturating_add(1);
    }

    /// The connection a code exchange's entry stands for until it is written.
    pub fn as_connection(&self) -> Option<ConnectionRecord> {
        if self.held.is_some() {
            return None;
        }
        let connect = self.connect.as_ref()?;
        Some(ConnectionRecord {
            key: self.key(),
            access_token: self.access_token.clone(),
            refresh_token: self.refresh_token.clone(),
            expires_at: self.expires_at,
            scopes: self.scopes.clone().unwrap_or_default(),
            status: ConnectionStatus::Active,
            failure_count: 0,
            last_refresh_at: None,
            last_refresh_error: None,
            last_attempt_at: None,
            retry_at: None,
            issued_at: self.issued_at,
            token_version: 0,
            lease_owner: None,
            lease_until: None,
            params: connect.params.clone(),
            created_at: self.issued_at,
            updated_at: self.issued_at,
        })
    }

    /// The database write of this entry by lease holder `owner`.
    pub fn refreshed<'a>(&'a self, key: &'a ConnKey, owner: &'a str) -> Refreshed<'a> {
        Refreshed {
            key,
            owner,
            base_version: self.base_version,
            access_token: self.access_token.clone(),
            refresh_token: self.refresh_token.clone(),
            expires_at: self.expires_at,
            scopes: self.scopes.as_deref(),
            now: self.issued_at,
        }
    }
}

/// The journal: its file (`None`: memory only, for embedding and unit
/// tests) and the entries not yet settled.
#[derive(Debug)]
pub struct Journal {
    path: Option<PathBuf>,
    pending: Mutex<Pending>,
}

/// Unsettled entries: a connection's tokens (a refresh's or a code
/// exchange's, one per connection) and held connect results (by result hash).
#[derive(Debug, Default)]
struct Pending {
    tokens: HashMap<ConnKey, Entry>,
    held: HashMap<Vec<u8>, Entry>,
}

impl Pending {
    fn keep(&mut self, entry: Entry) {
        match entry.held_result() {
            Some(hash) => {
                self.held.insert(hash.to_owned(), entry);
            }
            None => keep_newest(&mut self.tokens, entry),
        }
    }

    fn len(&self) -> usize {
        self.tokens.len() + self.held.len()
    }
}

impl Journal {
    pub fn in_memory() -> Self {
        Self {
            path: None,
            pending: Mutex::new(Pending::default()),
        }
    }

    /// Opens the journal of `data_dir` (created 0700 when missing) with the
    /// entries a previous process left. Returns them too: to replay.
    pub fn open(data_dir: &Path) -> anyhow::Result<(Self, Vec<Entry>)> {
        crate::config::create_private_dir(data_dir)?;
        let path = data_dir.join(JOURNAL_FILE);
        let mut pending = Pending::default();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                crate::files::require_private_file(&path)?;
                for (number, line) in text.lines().enumerate() {
                    match serde_json::from_str::<Entry>(line) {
                        Ok(entry) => pending.keep(entry),
                        Err(err) => {
                            tracing::warn!(path = %path.display(), line = number + 1, error = %err, "skipped an unreadable journal line (an append cut short by a crash)")
                        }
                    }
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                return Err(err).with_context(|| format!("could not read {}", path.display()))
            }
        }
        let mut left: Vec<Entry> = pending
            .tokens
            .values()
            .chain(pending.held.values())
            .cloned()
            .collect();
        left.sort_by_key(|e| e.issued_at);
        Ok((
            Self {
                path: Some(path),
                pending: Mutex::new(pending),
            },
            left,
        ))
    }

    fn map(&self) -> std::sync::MutexGuard<'_, Pending> {
        // A poisoned map is still a valid map.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Journals `entry` durably (appended, file and directory fsynced) and
    /// keeps it for lookups. Blocking I/O: call it off the async workers.
    pub fn append(&self, entry: Entry) -> anyhow::Result<()> {
        let mut map = self.map();
        if let Some(path) = &self.path {
            let mut line =
                serde_json::to_vec(&entry).context("could not encode a journal entry")?;
            line.push(b'\n');
            let mut file = private_file(path, true)?;
            file.write_all(&line)
                .and_then(|()| file.sync_all())
                .with_context(|| format!("could not write {}", path.display()))?;
            sync_dir(path)?;
        }
        map.keep(entry);
        Ok(())
    }

    /// The unsettled entry of `key`'s tokens, if any (held results aside).
    pub fn pending(&self, key: &ConnKey) -> Option<Entry> {
        self.map().tokens.get(key).cloned()
    }

    /// Whether the connect result hashed `result_hash` waits for the database.
    pub fn holds_result(&self, result_hash: &[u8]) -> bool {
        self.map().held.contains_key(result_hash)
    }

    pub fn pending_count(&self) -> usize {
        self.map().len()
    }

    /// The database now holds `key`'s tokens from `base_version` on (or
    /// newer): its entry goes, and the file keeps only the rest. Blocking I/O.
    pub fn settle(&self, key: &ConnKey, base_version: i64) -> anyhow::Result<()> {
        self.settle_if(key, |e| e.is_refresh() && e.base_version <= base_version)
    }

    /// The database now holds (or has newer tokens than) `key`'s code
    /// exchange issued at `issued_at`: its entry goes. Blocking I/O.
    pub fn settle_connect(&self, key: &ConnKey, issued_at: i64) -> anyhow::Result<()> {
        self.settle_if(key, |e| !e.is_refresh() && e.issued_at <= issued_at)
    }

    /// The database now holds the connect result hashed `result_hash` (or
    /// it expired): its entry goes. Blocking I/O.
    pub fn settle_held(&self, result_hash: &[u8]) -> anyhow::Result<()> {
        let mut map = self.map();
        if map.held.remove(result_hash).is_none() {
            return Ok(());
        }
        self.rewrite(&map)
    }

    fn settle_if(&self, key: &ConnKey, settled: impl Fn(&Entry) -> bool) -> anyhow::Result<()> {
        let mut map = self.map();
        match map.tokens.get(key) {
            Some(entry) if settled(entry) => {
                map.tokens.remove(key);
            }
            _ => return Ok(()),
        }
        self.rewrite(&map)
    }

    /// Replaces the file with what `map` has left (removes it when nothing).
    fn rewrite(&self, map: &Pending) -> anyhow::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        if map.len() == 0 {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => {
                    return Err(err).with_context(|| format!("could not remove {}", path.display()))
                }
            }
            return sync_dir(path);
        }
        let mut text = Vec::new();
        for entry in map.tokens.values().chain(map.held.values()) {
            text.extend(serde_json::to_vec(entry).context("could not encode a journal entry")?);
            text.push(b'\n');
        }
        let tmp = path.with_extension("jsonl.tmp");
        let mut file = private_file(&tmp, false)?;
        file.write_all(&text)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("could not write {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("could not replace {}", path.display()))?;
        sync_dir(path)
    }
}

/// Keeps the newer entry of a connection: a code exchange replaces whatever
/// was there before it (a new connection), a refresh replaces an older
/// refresh, never a connection not yet written.
fn keep_newest(map: &mut HashMap<ConnKey, Entry>, entry: Entry) {
    let key = entry.key();
    let newer = match (map.get(&key), entry.is_refresh()) {
        (None, _) => true,
        (Some(old), false) => old.is_refresh() || old.issued_at <= entry.issued_at,
        (Some(old), true) => old.is_refresh() && old.base_version <= entry.base_version,
    };
    if newer {
        map.insert(key, entry);
    }
}

/// Opens `path` 0600 for appending (`append`) or replacing.
fn private_file(path: &Path, append: bool) -> anyhow::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.create(true);
    if append {
        options.append(true);
    } else {
        options.write(true).truncate(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options
        .open(path)
        .with_context(|| format!("could not open {}", path.display()))
}

/// Makes the directory entry of `path` (its creation, rename or removal) durable.
fn sync_dir(path: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("could not sync the directory {}", dir.display()))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

mod sealed {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(blob: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::B64.encode(blob))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        super::B64.decode(text).map_err(serde::de::Error::custom)
    }
}

mod sealed_opt {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(blob: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match blob {
            Some(blob) => s.serialize_some(&super::B64.encode(blob)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| super::B64.decode(text).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Runs `write` until the database takes it: first after 200 ms, then
/// every 500 ms while the database is unavailable. `Ok(stored)`, or the
/// first error that is not an outage.
pub async fn write_when_back<F, Fut>(mut write: F) -> Result<bool, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, sqlx::Error>>,
{
    let mut delay = STORE_RETRY_FIRST;
    loop {
        tokio::time::sleep(delay).await;
        match write().await {
            Err(err) if crate::db::is_unavailable(&err) => {
                delay = (delay * 2).min(STORE_RETRY_MAX);
            }
            done => return done,
        }
    }
}

/// The first retry of a journalled write, and the longest wait between two.
const STORE_RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(200);
const STORE_RETRY_MAX: std::time::Duration = std::time::Duration::from_millis(500);

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

#[cfg(test)]
#[cfg(unix)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn entry(user: &str, base_version: i64) -> Entry {
        Entry {
            app_id: "app".into(),
            provider: "p".into(),
            user_id: user.into(),
            base_version,
            access_token: vec![1, 2, 3],
            refresh_token: Some(vec![4, 5]),
            expires_at: Some(100),
            scopes: None,
            issued_at: 10 + base_version,
            connect: None,
            held: None,
        }
    }

    fn connect_entry(user: &str, issued_at: i64) -> Entry {
        Entry {
            base_version: 0,
            issued_at,
            scopes: Some("read".into()),
            connect: Some(Connect {
                params: [("tenant".to_owned(), "t1".to_owned())].into(),
            }),
            ..entry(user, 0)
        }
    }

    #[test]
    fn a_code_exchange_entry_outranks_refreshes_and_settles_apart() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(dir.path()).unwrap();
        let key = entry("a", 0).key();
        journal.append(entry("a", 3)).unwrap();
        journal.append(connect_entry("a", 50)).unwrap();
        // A refresh never replaces a connection not yet written, nor an
        // older exchange a newer one.
        journal.append(entry("a", 9)).unwrap();
        journal.append(connect_entry("a", 40)).unwrap();
        assert_eq!(journal.pending(&key), Some(connect_entry("a", 50)));
        let (reopened, left) = Journal::open(dir.path()).unwrap();
        assert_eq!(
            left,
            vec![connect_entry("a", 50)],
            "params survive the file"
        );
        // A refresh's settling leaves it; the exchange's own settles it.
        reopened.settle(&key, 100).unwrap();
        assert_eq!(reopened.pending_count(), 1);
        reopened.settle_connect(&key, 49).unwrap();
        assert_eq!(reopened.pending_count(), 1);
        reopened.settle_connect(&key, 50).unwrap();
        assert_eq!(reopened.pending_count(), 0);
        assert!(!dir.path().join(JOURNAL_FILE).exists());
    }

    #[test]
    fn a_held_result_is_kept_beside_the_connections_tokens_and_stands_for_no_connection() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(dir.path()).unwrap();
        let key = entry("a", 0).key();
        let held = |hash: u8| Entry {
            held: Some(Held {
                result_hash: vec![hash; 32],
                expires_at: 700,
            }),
            ..connect_entry("a", 60)
        };
        journal.append(entry("a", 3)).unwrap();
        journal.append(held(1)).unwrap();
        journal.append(held(2)).unwrap();
        // Neither result replaces the refresh, nor is it served as the connection.
        assert_eq!(journal.pending(&key), Some(entry("a", 3)));
        assert_eq!(journal.pending_count(), 3);
        let (reopened, left) = Journal::open(dir.path()).unwrap();
        assert_eq!(left.len(), 3);
        assert!(reopened.holds_result(&[1; 32]) && reopened.holds_result(&[2; 32]));
        assert!(held(1).as_connection().is_none());
        reopened.settle_held(&[1; 32]).unwrap();
        reopened.settle(&key, 3).unwrap();
        let (reopened, left) = Journal::open(dir.path()).unwrap();
        assert_eq!(left, vec![held(2)]);
        reopened.settle_held(&[2; 32]).unwrap();
        assert!(!dir.path().join(JOURNAL_FILE).exists());
    }

    #[test]
    fn entries_survive_a_restart_until_settled() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let (journal, left) = Journal::open(&data).unwrap();
        assert!(left.is_empty());
        assert_eq!(
            std::fs::metadata(&data).unwrap().permissions().mode() & 0o777,
            0o700
        );
        journal.append(entry("a", 1)).unwrap();
        journal.append(entry("b", 4)).unwrap();
        // A newer refresh of the same connection replaces the older entry.
        journal.append(entry("a", 2)).unwrap();
        let file = data.join(JOURNAL_FILE);
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (reopened, left) = Journal::open(&data).unwrap();
        assert_eq!(left, vec![entry("a", 2), entry("b", 4)]);
        assert_eq!(reopened.pending(&entry("a", 0).key()), Some(entry("a", 2)));

        // Settling an older version leaves the newer entry.
        reopened.settle(&entry("a", 0).key(), 1).unwrap();
        assert_eq!(reopened.pending_count(), 2);
        reopened.settle(&entry("a", 0).key(), 2).unwrap();
        assert_eq!(reopened.pending_count(), 1);
        let (_, left) = Journal::open(&data).unwrap();
        assert_eq!(left, vec![entry("b", 4)], "compacted to what is left");
        reopened.settle(&entry("b", 0).key(), 7).unwrap();
        assert!(!file.exists(), "an empty journal is removed");
    }

    #[test]
    fn a_torn_last_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(dir.path()).unwrap();
        journal.append(entry("a", 1)).unwrap();
        let file = dir.path().join(JOURNAL_FILE);
        let mut text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.contains("\"access_token\":\"AQID\""),
            "sealed bytes in base64: {text}"
        );
        text.push_str("{\"app_id\":\"app\",\"prov");
        std::fs::write(&file, text).unwrap();
        let (_, left) = Journal::open(dir.path()).unwrap();
        assert_eq!(left, vec![entry("a", 1)]);
    }

    #[test]
    fn a_journal_readable_by_others_refuses_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(dir.path()).unwrap();
        journal.append(entry("a", 1)).unwrap();
        let file = dir.path().join(JOURNAL_FILE);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Journal::open(dir.path()).is_err());
    }

    #[test]
    fn debug_output_names_no_token() {
        let text = format!("{:?}", entry("a", 1));
        assert!(
            !text.contains("access_token") && !text.contains("[1, 2, 3]"),
            "{text}"
        );
    }
}
