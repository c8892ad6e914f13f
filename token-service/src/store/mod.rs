//! Row-level access to the tables, one module per table. Secrets arrive
//! here already sealed by the vault; these functions never see plaintext.

pub mod app_keys;
pub mod apps;
pub mod connect_results;
pub mod connections;
pub mod leases;
pub mod providers;
pub mod sealed;
pub mod sessions;
pub mod vault_keys;
pub mod webhook_outbox;
pub mod webhooks;

/// A JSON column that failed to parse, as a sqlx decode error.
fn json_column<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, sqlx::Error> {
    serde_json::from_str(text).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, sqlx::Error> {
    serde_json::to_string(value).map_err(|e| sqlx::Error::Encode(Box::new(e)))
}
