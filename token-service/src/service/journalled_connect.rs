//! The tokens of a code exchange the database could not take. The provider
//! has issued them on the user's consent; losing them would show the user
//! an error after a successful authorization. So they are journalled like a
//! refresh's (sealed, appended and fsynced, see [`crate::service::journal`]) before
//! the browser is shown the result page, lookups of that connection are
//! served them meanwhile, and a task writes the connection as soon as the
//! database is back (or the next process does, replaying the journal).
//!
//! While the database is away a lookup cannot check the app key against
//! it: a lookup of a journalled connection is then checked against the
//! app's key digests read at the callback, kept in memory with the
//! provider's settings, and only for that connection.

use crate::crypto::secrets::{digest_eq, Digest};
use crate::db;
use crate::error::Error;
use crate::service::journal::{Connect, Entry};
use crate::service::refresh::{self, Served};
use crate::service::state::AppState;
use crate::store::connections::{self, ConnKey, NewConnection};
use crate::store::providers::ProviderRecord;
use authstamp_protocol::ErrorCode;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What a lookup needs while the database is away, per journalled
/// connection (memory only).
#[derive(Clone)]
struct Context {
    provider: ProviderRecord,
    app_key_digests: Vec<Digest>,
}

/// The contexts of this process's journalled, unwritten connections.
#[derive(Default)]
pub struct Contexts(Mutex<HashMap<ConnKey, Arc<Context>>>);

impl std::fmt::Debug for Contexts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Contexts")
            .field("connections", &self.map().len())
            .finish()
    }
}

impl Contexts {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<ConnKey, Arc<Context>>> {
        // A poisoned map is still a valid map.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The connection the callback is about to store.
pub struct NewConnect<'a> {
    pub key: &'a ConnKey,
    pub tokens: SealedTokens,
    /// What was asked, when the provider named no scope.
    pub requested_scope: &'a str,
    pub params: &'a crate::template::Values,
    pub now: i64,
    pub provider: &'a ProviderRecord,
    /// The app's valid key digests, read before the exchange.
    pub app_key_digests: Vec<Digest>,
}

/// Where the new connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    InDatabase,
    /// Journalled; written once the database is back.
    Journalled,
}

/// Stores the new connection, or journals it when the database cannot take
/// it. Fails only when the database refuses for another reason, or is away
/// and the journal cannot be written either (nothing is retired by a code
/// exchange: the user can connect again).
pub async fn store_or_journal(state: &AppState, c: NewConnect<'_>) -> Result<Stored, Error> {
    let expires_at = c.tokens.expires_at(c.now);
    let scopes = c
        .tokens
        .scope
        .clone()
        .unwrap_or_else(|| c.requested_scope.to_owned());
    let entry = Entry {
        app_id: c.key.app_id.clone(),
        provider: c.key.provider.clone(),
        user_id: c.key.user_id.clone(),
        base_version: 0,
        access_token: c.tokens.access_token,
        refresh_token: c.tokens.refresh_token,
        expires_at,
        scopes: Some(scopes),
        issued_at: c.now,
        connect: Some(Connect {
            params: c.params.clone(),
        }),
        held: None,
    };
    let err = match write(state, &entry).await {
        Ok(_) => return Ok(Stored::InDatabase),
        Err(err) if db::is_unavailable(&err) => err,
        Err(err) => return Err(err.into()),
    };
    let key = c.key.clone();
    let appended = refresh::journal_io(state, {
        let entry = entry.clone();
        move |journal| journal.append(entry)
    })
    .await;
    if let Err(journal_err) = appended {
        tracing::error!(app_id = %key.app_id, provider = %key.provider, error = %err, journal_error = %format_args!("{journal_err:#}"), "database unavailable after a code exchange and the journal could not be written: the connection is not stored; the user has to connect again");
        return Err(Error::new(
            ErrorCode::StorageUnavailable,
            "the token service could not save the connection (its database and its journal are unavailable); connect again shortly",
        ));
    }
    state.metrics.journalled();
    state.journalled_connects.map().insert(
        key.clone(),
        Arc::new(Context {
            provider: c.provider.clone(),
            app_key_digests: c.app_key_digests,
        }),
    );
    tracing::error!(app_id = %key.app_id, provider = %key.provider, error = %err, pending = state.journal.pending_count(), "database unavailable after a code exchange: journalled the new connection's tokens (sealed, fsynced) and serving them from memory; the connection is written as soon as the database is back");
    let local = state.refresh_locks.lock_for(&key).lock_owned().await;
    hold_until_stored(state, entry, local).await;
    Ok(Stored::Journalled)
}

/// Writes a code exchange's entry (unless newer tokens are stored) and, if
/// written, announces the connection. Returns whether it was written.
pub async fn write(state: &AppState, entry: &Entry) -> Result<bool, sqlx::Error> {
    let key = entry.key();
    let params = entry
        .connect
        .as_ref()
        .map(|c| &c.params)
        .ok_or_else(|| sqlx::Error::Protocol("not a code exchange's entry".into()))?;
    let written = connections::upsert_connected_unless_newer(
        &state.db,
        NewConnection {
            key: &key,
            access_token: entry.access_token.clone(),
            refresh_token: entry.refresh_token.clone(),
            expires_at: entry.expires_at,
            scopes: entry.scopes.as_deref().unwrap_or_default(),
            now: entry.issued_at,
            params: Some(params),
        },
    )
    .await?;
    if written {
        announce_connected(state, &key);
    }
    Ok(written)
}

/// Settles a written (or superseded) entry: out of the journal and memory.
pub async fn settle(state: &AppState, entry: &Entry) {
    let key = entry.key();
    let issued_at = entry.issued_at;
    let settled = refresh::journal_io(state, {
        let key = key.clone();
        move |journal| journal.settle_connect(&key, issued_at)
    })
    .await;
    if state.journal.pending(&key).is_none() {
        state.journalled_connects.map().remove(&key);
    }
    if let Err(err) = settled {
        tracing::error!(app_id = %key.app_id, provider = %key.provider, error = %format_args!("{err:#}"), "could not remove a stored connection from the token journal; it is replayed harmlessly at the next start");
    }
}

/// A task writing a journalled connection until the database takes it
/// (200 ms, then every 500 ms), holding the connection's local refresh lock.
pub async fn hold_until_stored(
    state: &AppState,
    entry: Entry,
    local: tokio::sync::OwnedMutexGuard<()>,
) {
    let task_state = state.clone();
    let permit = state.refresh_tasks.clone().acquire_owned().await;
    tokio::spawn(async move {
        let (_local, _permit) = (local, permit);
        let key = entry.key();
        let since = Instant::now();
        match crate::service::journal::write_when_back(|| write(&task_state, &entry)).await {
            Ok(written) => {
                settle(&task_state, &entry).await;
                task_state.metrics.journal_stored(written);
                let pending = task_state.journal.pending_count();
                if written {
                    tracing::warn!(app_id = %key.app_id, provider = %key.provider, waited_ms = since.elapsed().as_millis(), pending, "database back: stored the journalled connection");
                } else {
                    tracing::warn!(app_id = %key.app_id, provider = %key.provider, waited_ms = since.elapsed().as_millis(), pending, "database back: tokens issued later were stored meanwhile; dropped the journalled connection");
                }
            }
            Err(err) => {
                tracing::error!(app_id = %key.app_id, provider = %key.provider, error = %err, "a journalled connection could not be written; kept in the journal for the next start");
            }
        }
    });
}

/// A lookup's answer from a journalled connection: the token and the
/// connection's parameters.
pub type JournalledLookup = Result<(Served, crate::template::Values), Error>;

/// The journalled, unwritten connection `key` as a lookup is served it:
/// `None` when there is none (the database's row is current).
pub fn served(
    state: &AppState,
    provider: &ProviderRecord,
    key: &ConnKey,
    force_refresh: bool,
    now: i64,
) -> Option<JournalledLookup> {
    let connection = state
        .journal
        .pending(key)
        .and_then(|entry| entry.as_connection())?;
    if force_refresh || !connection.is_valid_at(now) {
        // A refresh needs the stored connection: soon.
        return Some(Err(Error::new(
            ErrorCode::StorageUnavailable,
            "the connection is being saved; retry shortly",
        )));
    }
    let policy = state.policy.with(&provider.policy);
    Some(refresh::serve(state, &connection, &policy).map(|served| (served, connection.params)))
}

/// A lookup while the database is away: served only for a journalled
/// connection of this process, and only with one of the app keys that were
/// valid at its callback. `None`: not such a lookup.
pub fn during_outage(
    state: &AppState,
    key: &ConnKey,
    app_key: &str,
    force_refresh: bool,
) -> Option<(ProviderRecord, JournalledLookup)> {
    let context = state.journalled_connects.map().get(key).cloned()?;
    let digest = crate::crypto::secrets::sha256(app_key.as_bytes());
    let mut matches = false;
    for candidate in &context.app_key_digests {
        matches |= digest_eq(&digest, candidate);
    }
    if !matches {
        return None;
    }
    let served = served(state, &context.provider, key, force_refresh, db::now())?;
    Some((context.provider.clone(), served))
}

/// Tokens of a connection, sealed (to a connection row or a result row).
pub struct SealedTokens {
    pub access_token: Vec<u8>,
    pub refresh_token: Option<Vec<u8>>,
    pub expires_in: Option<u64>,
    /// The scope the provider granted, when it said.
    pub scope: Option<String>,
}

impl SealedTokens {
    pub fn expires_at(&self, issued_at: i64) -> Option<i64> {
        self.expires_in
            .map(|secs| issued_at.saturating_add(i64::try_from(secs).unwrap_or(i64::MAX)))
    }
}

/// Logs a stored connection and tells the app's webhook.
pub fn announce_connected(state: &AppState, key: &ConnKey) {
    tracing::info!(app_id = %key.app_id, provider = %key.provider, "connection stored");
    crate::service::webhooks::emit(
        state,
        &key.app_id,
        crate::service::webhooks::Event::Connected,
        &key.provider,
        &key.user_id,
    );
}
