//! A finished authorization that returns to the app, when the database
//! cannot take its result. The provider has issued tokens on the user's
//! consent; the app still has to confirm who came back. So the result is
//! journalled (sealed to the result, as in `connect_results`, appended and
//! fsynced, see [`crate::service::journal`]), the browser goes back to the app as
//! usual, and a task writes it to `connect_results` as soon as the
//! database is back (or the next process does, replaying the journal).
//! Until then the app's confirmation answers 503 `storage_unavailable`:
//! retried, it succeeds once the result is written.

use crate::db;
use crate::error::Error;
use crate::service::journal::{Connect, Entry, Held};
use crate::service::state::AppState;
use crate::store::connect_results::{self, ConnectResult};
use authstamp_protocol::ErrorCode;
use std::time::Instant;

/// Stores `result`, or journals it when the database cannot take it. Fails
/// only when the database refuses for another reason, or is away and the
/// journal cannot be written either.
pub async fn insert_or_journal(state: &AppState, result: ConnectResult) -> Result<(), Error> {
    let err = match connect_results::insert(&state.db, &result).await {
        Ok(()) => return Ok(()),
        Err(err) if db::is_unavailable(&err) => err,
        Err(err) => return Err(err.into()),
    };
    let entry = entry_of(result);
    let appended = crate::service::refresh::journal_io(state, {
        let entry = entry.clone();
        move |journal| journal.append(entry)
    })
    .await;
    if let Err(journal_err) = appended {
        tracing::error!(app_id = %entry.app_id, provider = %entry.provider, error = %err, journal_error = %format_args!("{journal_err:#}"), "database unavailable after a code exchange and the journal could not be written: the connect result is not kept; the user has to connect again");
        return Err(Error::new(
            ErrorCode::StorageUnavailable,
            "the token service could not save the connection (its database and its journal are unavailable); connect again shortly",
        ));
    }
    state.metrics.journalled();
    tracing::error!(app_id = %entry.app_id, provider = %entry.provider, error = %err, pending = state.journal.pending_count(), "database unavailable after a code exchange: journalled the connect result (sealed, fsynced); it is written as soon as the database is back, and the app's confirmation answers 503 until then");
    hold_until_stored(state, entry).await;
    Ok(())
}

/// Whether the app's confirmation of `result_hash` must wait: its result
/// is journalled and not yet written.
pub fn waiting(state: &AppState, result_hash: &[u8]) -> Result<(), Error> {
    if state.journal.holds_result(result_hash) {
        return Err(Error::new(
            ErrorCode::StorageUnavailable,
            "the connect result is being saved; retry shortly",
        ));
    }
    Ok(())
}

/// Writes a held result's entry (unless it is there or expired). Returns
/// whether it was written.
pub async fn write(state: &AppState, entry: &Entry) -> Result<bool, sqlx::Error> {
    let result = result_of(entry)
        .ok_or_else(|| sqlx::Error::Protocol("not a held connect result's entry".into()))?;
    if result.expires_at <= db::now() {
        tracing::warn!(app_id = %result.app_id, provider = %result.provider, "a journalled connect result expired before the database came back: dropped; the user has to connect again");
        return Ok(false);
    }
    connect_results::insert_unless_present(&state.db, &result).await
}

/// Settles a written (or expired) entry: out of the journal.
pub async fn settle(state: &AppState, entry: &Entry) {
    let Some(result_hash) = entry.held_result().map(<[u8]>::to_vec) else {
        return;
    };
    let settled = crate::service::refresh::journal_io(state, move |journal| {
        journal.settle_held(&result_hash)
    })
    .await;
    if let Err(err) = settled {
        tracing::error!(app_id = %entry.app_id, provider = %entry.provider, error = %format_args!("{err:#}"), "could not remove a stored connect result from the token journal; it is replayed harmlessly at the next start");
    }
}

/// A task writing a journalled result until the database takes it.
pub async fn hold_until_stored(state: &AppState, entry: Entry) {
    let task_state = state.clone();
    let permit = state.refresh_tasks.clone().acquire_owned().await;
    tokio::spawn(async move {
        let _permit = permit;
        let since = Instant::now();
        match crate::service::journal::write_when_back(|| write(&task_state, &entry)).await {
            Ok(written) => {
                settle(&task_state, &entry).await;
                task_state.metrics.journal_stored(written);
                if written {
                    tracing::warn!(app_id = %entry.app_id, provider = %entry.provider, waited_ms = since.elapsed().as_millis(), pending = task_state.journal.pending_count(), "database back: stored the journalled connect result; it waits for the app's confirmation");
                }
            }
            Err(err) => {
                tracing::error!(app_id = %entry.app_id, provider = %entry.provider, error = %err, "a journalled connect result could not be written; kept in the journal for the next start");
            }
        }
    });
}

fn entry_of(r: ConnectResult) -> Entry {
    Entry {
        app_id: r.app_id,
        provider: r.provider,
        user_id: r.user_id,
        base_version: 0,
        access_token: r.access_token,
        refresh_token: r.refresh_token,
        expires_at: r.token_expires_at,
        scopes: Some(r.scopes),
        issued_at: r.created_at,
        connect: Some(Connect { params: r.params }),
        held: Some(Held {
            result_hash: r.result_hash,
            expires_at: r.expires_at,
        }),
    }
}

fn result_of(e: &Entry) -> Option<ConnectResult> {
    let held = e.held.as_ref()?;
    Some(ConnectResult {
        result_hash: held.result_hash.clone(),
        app_id: e.app_id.clone(),
        provider: e.provider.clone(),
        user_id: e.user_id.clone(),
        access_token: e.access_token.clone(),
        refresh_token: e.refresh_token.clone(),
        token_expires_at: e.expires_at,
        scopes: e.scopes.clone().unwrap_or_default(),
        params: e
            .connect
            .as_ref()
            .map(|c| c.params.clone())
            .unwrap_or_default(),
        created_at: e.issued_at,
        expires_at: held.expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_survives_its_journal_entry_unchanged() {
        let result = ConnectResult {
            result_hash: vec![7; 32],
            app_id: "app".into(),
            provider: "p".into(),
            user_id: "u".into(),
            access_token: vec![1, 2],
            refresh_token: Some(vec![3]),
            token_expires_at: Some(99),
            scopes: "read".into(),
            params: [("tenant".to_owned(), "t1".to_owned())].into(),
            created_at: 10,
            expires_at: 610,
        };
        let entry = entry_of(result.clone());
        assert!(entry.as_connection().is_none(), "stands for no connection");
        let back = result_of(&entry).unwrap();
        let fields = |r: ConnectResult| {
            let ConnectResult {
                result_hash,
                app_id,
                provider,
                user_id,
                access_token,
                refresh_token,
                token_expires_at,
                scopes,
                params,
                created_at,
                expires_at,
            } = r;
            let ids = (app_id, provider, user_id, scopes, params);
            let times = (token_expires_at, created_at, expires_at);
            (result_hash, access_token, refresh_token, ids, times)
        };
        assert_eq!(fields(back), fields(result));
    }
}
