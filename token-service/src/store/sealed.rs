//! The sealed columns of every table, read and written by primary key for
//! key rotation (`service::keys`): pages in key order, and a conditional
//! update that writes re-sealed blobs only over the ones that were read.

use crate::crypto::vault::{Aad, Field};
use crate::db::Db;
use sqlx::Row as _;

/// A part of a row's primary key.
#[derive(Clone, Debug)]
pub enum KeyPart {
    Text(String),
    Bytes(Vec<u8>),
}

impl KeyPart {
    pub fn text(&self) -> &str {
        match self {
            KeyPart::Text(t) => t,
            KeyPart::Bytes(_) => "",
        }
    }

    pub fn label(&self) -> String {
        match self {
            KeyPart::Text(t) => t.clone(),
            KeyPart::Bytes(b) => crate::crypto::secrets::hex(b),
        }
    }
}

/// A table with sealed columns: its primary key, the columns and how each
/// blob's associated data is built from the key.
pub struct SealedTable {
    pub table: &'static str,
    pub key: &'static [&'static str],
    pub key_is_bytes: bool,
    pub columns: &'static [(&'static str, Field)],
    pub aad: fn(&[KeyPart], Field) -> Aad,
}

fn bytes_of(part: &KeyPart) -> &[u8] {
    match part {
        KeyPart::Bytes(b) => b,
        KeyPart::Text(t) => t.as_bytes(),
    }
}

pub const TABLES: &[SealedTable] = &[
    SealedTable {
        table: "providers",
        key: &["app_id", "provider"],
        key_is_bytes: false,
        columns: &[("client_secret", Field::ClientSecret)],
        aad: |k, _| Aad::provider_secret(k[0].text(), k[1].text()),
    },
    SealedTable {
        table: "connections",
        key: &["app_id", "provider", "user_id"],
        key_is_bytes: false,
        columns: &[
            ("access_token", Field::AccessToken),
            ("refresh_token", Field::RefreshToken),
        ],
        aad: |k, field| Aad::connection(k[0].text(), k[1].text(), k[2].text(), field),
    },
    SealedTable {
        table: "webhooks",
        key: &["app_id"],
        key_is_bytes: false,
        columns: &[("secret", Field::WebhookSecret)],
        aad: |k, _| Aad::webhook_secret(k[0].text()),
    },
    SealedTable {
        table: "oauth_states",
        key: &["state_hash"],
        key_is_bytes: true,
        columns: &[("pkce_verifier", Field::PkceVerifier)],
        aad: |k, _| Aad::oauth_state(bytes_of(&k[0])),
    },
    SealedTable {
        table: "connect_results",
        key: &["result_hash"],
        key_is_bytes: true,
        columns: &[
            ("access_token", Field::AccessToken),
            ("refresh_token", Field::RefreshToken),
        ],
        aad: |k, field| Aad::connect_result(bytes_of(&k[0]), field),
    },
];

pub struct SealedRow {
    pub key: Vec<KeyPart>,
    pub blobs: Vec<Option<Vec<u8>>>,
}

/// One page of `t` after `after` in primary-key order.
pub async fn page(
    db: &Db,
    t: &SealedTable,
    after: Option<&[KeyPart]>,
    limit: i64,
) -> Result<Vec<SealedRow>, sqlx::Error> {
    let key_list = t.key.join(", ");
    let columns: Vec<&str> = t.columns.iter().map(|(c, _)| *c).collect();
    let mut sql = format!("SELECT {key_list}, {} FROM {}", columns.join(", "), t.table);
    let mut n = 0;
    if after.is_some() {
        let params: Vec<String> = t
            .key
            .iter()
            .map(|_| {
                n += 1;
                format!("${n}")
            })
            .collect();
        sql.push_str(&format!(" WHERE ({key_list}) > ({})", params.join(", ")));
    }
    sql.push_str(&format!(" ORDER BY {key_list} LIMIT ${}", n + 1));
    let mut query = sqlx::query(&sql);
    for part in after.unwrap_or_default() {
        query = match part {
            KeyPart::Text(text) => query.bind(text.clone()),
            KeyPart::Bytes(bytes) => query.bind(bytes.clone()),
        };
    }
    let rows = query.bind(limit).fetch_all(db.pool()).await?;
    rows.iter()
        .map(|row| {
            let mut key = Vec::with_capacity(t.key.len());
            for (i, _) in t.key.iter().enumerate() {
                key.push(if t.key_is_bytes {
                    KeyPart::Bytes(row.try_get(i)?)
                } else {
                    KeyPart::Text(row.try_get(i)?)
                });
            }
            let mut blobs = Vec::with_capacity(t.columns.len());
            for i in 0..t.columns.len() {
                blobs.push(row.try_get::<Option<Vec<u8>>, _>(t.key.len() + i)?);
            }
            Ok(SealedRow { key, blobs })
        })
        .collect()
}

/// Writes re-sealed blobs if the row still holds the ones that were read.
/// `Ok(false)`: the row changed (or went) meanwhile.
pub async fn write_if_unchanged(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    t: &SealedTable,
    row: &SealedRow,
    new_blobs: Vec<Option<Vec<u8>>>,
) -> Result<bool, sqlx::Error> {
    let mut n = 0;
    let mut next = || {
        n += 1;
        format!("${n}")
    };
    let mut sets = Vec::new();
    for ((column, _), blob) in t.columns.iter().zip(&new_blobs) {
        if blob.is_some() {
            sets.push(format!("{column} = {}", next()));
        }
    }
    if sets.is_empty() {
        return Ok(true);
    }
    let mut conditions: Vec<String> = t.key.iter().map(|k| format!("{k} = {}", next())).collect();
    for ((column, _), blob) in t.columns.iter().zip(&row.blobs) {
        conditions.push(match blob {
            Some(_) => format!("{column} = {}", next()),
            None => format!("{column} IS NULL"),
        });
    }
    let sql = format!(
        "UPDATE {} SET {} WHERE {}",
        t.table,
        sets.join(", "),
        conditions.join(" AND ")
    );
    let mut query = sqlx::query(&sql);
    for blob in new_blobs.into_iter().flatten() {
        query = query.bind(blob);
    }
    for part in &row.key {
        query = match part {
            KeyPart::Text(text) => query.bind(text.clone()),
            KeyPart::Bytes(bytes) => query.bind(bytes.clone()),
        };
    }
    for blob in row.blobs.iter().flatten() {
        query = query.bind(blob.clone());
    }
    let done = query.execute(&mut **tx).await?;
    Ok(done.rows_affected() == 1)
}

pub async fn count_rows(db: &Db) -> Result<u64, sqlx::Error> {
    let mut total = 0u64;
    for t in TABLES {
        let (n,): (i64,) = sqlx::query_as(&format!("SELECT COUNT(*) FROM {}", t.table))
            .fetch_one(db.pool())
            .await?;
        total += u64::try_from(n).unwrap_or(0);
    }
    Ok(total)
}
