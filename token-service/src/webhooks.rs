//! Webhooks: each app may configure one URL that receives its connections'
//! events (`connected`, `refresh_failed`, `reauth_required`,
//! `disconnected`) as JSON POSTs signed with HMAC-SHA256.
//!
//! Signature (header `x-authstamp-signature`): `t=<unix seconds>,v1=<hex>`
//! where `<hex>` is `HMAC-SHA256(secret, "<t>.<raw body>")`. A receiver
//! recomputes it over the raw body, compares in constant time and refuses old
//! timestamps. `x-authstamp-event` names the event, `x-authstamp-delivery`
//! is the event id (the same on every retry: deduplicate on it).
//!
//! Delivery runs in the background: at most [`MAX_ATTEMPTS`] attempts with a
//! doubling pause from [`FIRST_RETRY`], each bounded by [`ATTEMPT_TIMEOUT`];
//! a 2xx ends it. At most [`MAX_IN_FLIGHT`] deliveries run at once per
//! process; events beyond that are dropped with a warning (never a growing
//! queue). Delivery is best effort and at least once: nothing is persisted.

use crate::auth::AdminAuth;
use crate::db::{self, Db};
use crate::error::{ApiError, ApiJson, ApiPath};
use crate::secrets::{hex, random_bytes};
use crate::vault::{Aad, Vault};
use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::sync::OnceLock;
use std::time::Duration;
use zeroize::Zeroizing;

pub const SIGNATURE_HEADER: &str = "x-authstamp-signature";
pub const EVENT_HEADER: &str = "x-authstamp-event";
pub const DELIVERY_HEADER: &str = "x-authstamp-delivery";
pub const MAX_ATTEMPTS: u32 = 5;
pub const FIRST_RETRY: Duration = Duration::from_millis(500);
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
pub const MAX_IN_FLIGHT: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// A user connected (or reconnected), or the app stored credentials, or
    /// the first client-credentials token was fetched.
    Connected,
    /// A refresh (or client-credentials fetch) failed transiently; the
    /// service retries after a cooldown.
    RefreshFailed,
    /// The provider refused the refresh token: the user must connect again.
    ReauthRequired,
    /// The connection was deleted (and revoked at the provider if it can be).
    Disconnected,
}

impl Event {
    pub const ALL: [Event; 4] = [
        Event::Connected,
        Event::RefreshFailed,
        Event::ReauthRequired,
        Event::Disconnected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Event::Connected => "connected",
            Event::RefreshFailed => "refresh_failed",
            Event::ReauthRequired => "reauth_required",
            Event::Disconnected => "disconnected",
        }
    }
}

/// The JSON body of a delivery.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Payload {
    pub id: String,
    #[serde(rename = "type")]
    pub event: Event,
    pub created_at: i64,
    pub app_id: String,
    pub provider: String,
    pub user: String,
}

/// `t=<t>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    // HMAC takes keys of any length; new_from_slice cannot fail for it.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={timestamp},v1={}", hex(&mac.finalize().into_bytes()))
}

/// Checks a signature header against `body` in constant time (for receivers
/// written in Rust, and the tests).
pub fn verify(secret: &[u8], header: &str, body: &[u8]) -> bool {
    let mut timestamp = None;
    let mut given = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", v)) => given = Some(v),
            _ => {}
        }
    }
    let (Some(timestamp), Some(given)) = (timestamp, given) else {
        return false;
    };
    let expected = signature(secret, timestamp, body);
    let expected = expected.rsplit_once("v1=").map_or("", |(_, v)| v);
    crate::secrets::digest_eq(
        &crate::secrets::sha256(expected.as_bytes()),
        &crate::secrets::sha256(given.as_bytes()),
    )
}

struct Delivery {
    http: reqwest::Client,
    slots: std::sync::Arc<tokio::sync::Semaphore>,
}

fn delivery() -> Option<&'static Delivery> {
    static DELIVERY: OnceLock<Option<Delivery>> = OnceLock::new();
    DELIVERY
        .get_or_init(|| {
            let http = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(ATTEMPT_TIMEOUT)
                .user_agent(concat!("authstamp-webhooks/", env!("CARGO_PKG_VERSION")))
                .build()
                .ok()?;
            Some(Delivery {
                http,
                slots: std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
            })
        })
        .as_ref()
}

/// Sends `event` to the app's webhook, if it has one, in the background.
pub fn emit(state: &AppState, app_id: &str, event: Event, provider: &str, user: &str) {
    let Some(delivery) = delivery() else {
        tracing::warn!("webhook client unavailable; event dropped");
        return;
    };
    let Ok(slot) = delivery.slots.clone().try_acquire_owned() else {
        tracing::warn!(
            app_id,
            event = event.as_str(),
            "too many webhook deliveries in flight; event dropped"
        );
        return;
    };
    let payload = Payload {
        id: format!("evt_{}", hex(&random_bytes::<12>())),
        event,
        created_at: db::now(),
        app_id: app_id.to_owned(),
        provider: provider.to_owned(),
        user: user.to_owned(),
    };
    let state = state.clone();
    tokio::spawn(async move {
        let _slot = slot;
        if let Err(err) = deliver(&state, delivery, &payload).await {
            tracing::warn!(app_id = %payload.app_id, event = payload.event.as_str(), error = %err, "webhook delivery failed");
        }
    });
}

async fn deliver(state: &AppState, delivery: &Delivery, payload: &Payload) -> Result<(), String> {
    let Some(hook) = get(&state.db, &payload.app_id)
        .await
        .map_err(|e| format!("database: {e}"))?
    else {
        return Ok(());
    };
    let secret = state
        .vault
        .open(&Aad::webhook_secret(&payload.app_id), &hook.secret)
        .map_err(|e| format!("vault: {e}"))?;
    let body = serde_json::to_vec(payload).map_err(|e| e.to_string())?;
    let mut pause = FIRST_RETRY;
    let mut last = String::new();
    for attempt in 1..=MAX_ATTEMPTS {
        let timestamp = db::now();
        let result = delivery
            .http
            .post(&hook.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature(&secret, timestamp, &body))
            .header(EVENT_HEADER, payload.event.as_str())
            .header(DELIVERY_HEADER, &payload.id)
            .body(body.clone())
            .send()
            .await;
        match result {
            Ok(response) if response.status().is_success() => {
                tracing::info!(app_id = %payload.app_id, event = payload.event.as_str(), attempt, "webhook delivered");
                return Ok(());
            }
            Ok(response) => last = format!("HTTP {}", response.status().as_u16()),
            Err(err) => {
                last = if err.is_timeout() {
                    "timeout".into()
                } else {
                    "unreachable".into()
                }
            }
        }
        if attempt < MAX_ATTEMPTS {
            tokio::time::sleep(pause).await;
            pause = pause.saturating_mul(2);
        }
    }
    Err(format!("gave up after {MAX_ATTEMPTS} attempts ({last})"))
}

/// A stored webhook.
pub struct WebhookRecord {
    pub app_id: String,
    pub url: String,
    /// Vault envelope.
    pub secret: Vec<u8>,
    pub created_at: i64,
    pub updated_at: i64,
}

pub async fn get(db: &Db, app_id: &str) -> Result<Option<WebhookRecord>, sqlx::Error> {
    let row: Option<(String, String, Vec<u8>, i64, i64)> = sqlx::query_as(
        "SELECT app_id, url, secret, created_at, updated_at FROM webhooks WHERE app_id = $1",
    )
    .bind(app_id)
    .fetch_optional(db.pool())
    .await?;
    Ok(row.map(
        |(app_id, url, secret, created_at, updated_at)| WebhookRecord {
            app_id,
            url,
            secret,
            created_at,
            updated_at,
        },
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutWebhook {
    pub url: String,
    /// Absent: a new random secret is made and returned once.
    #[serde(default)]
    pub secret: Option<crate::secrets::ClientSecret>,
}

impl std::fmt::Debug for PutWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PutWebhook")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
pub struct WebhookView {
    pub app_id: String,
    pub url: String,
    /// Only when the service made the secret, once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    pub events: Vec<&'static str>,
    pub signature_header: &'static str,
    pub created_at: i64,
    pub updated_at: i64,
}

impl std::fmt::Debug for WebhookView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookView")
            .field("app_id", &self.app_id)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

fn view(r: &WebhookRecord, secret: Option<String>) -> WebhookView {
    WebhookView {
        app_id: r.app_id.clone(),
        url: r.url.clone(),
        secret,
        events: Event::ALL.iter().map(|e| e.as_str()).collect(),
        signature_header: SIGNATURE_HEADER,
        created_at: r.created_at,
        updated_at: r.updated_at,
    }
}

/// Creates or replaces the webhook of `app_id`.
pub async fn put(
    db: &Db,
    vault: &Vault,
    app_id: &str,
    input: PutWebhook,
) -> Result<WebhookView, ApiError> {
    let url = crate::validate::http_url("url", &input.url)?;
    crate::store::apps::get(db, app_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no app {app_id:?}")))?;
    let (secret, shown) = match input.secret {
        Some(secret) => {
            let text = secret.expose();
            if text.len() < 16 || text.len() > 512 || text.chars().any(char::is_control) {
                return Err(ApiError::bad_request(
                    "secret must be 16 to 512 bytes without control characters",
                ));
            }
            (Zeroizing::new(text.to_owned()), None)
        }
        None => {
            let made = format!("whsec_{}", hex(&random_bytes::<32>()));
            (Zeroizing::new(made.clone()), Some(made))
        }
    };
    let sealed = vault.seal_str(&Aad::webhook_secret(app_id), &secret)?;
    let now = db::now();
    sqlx::query(
        "INSERT INTO webhooks (app_id, url, secret, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $4) ON CONFLICT (app_id) DO UPDATE SET \
         url = excluded.url, secret = excluded.secret, updated_at = excluded.updated_at",
    )
    .bind(app_id)
    .bind(url.as_str())
    .bind(sealed)
    .bind(now)
    .execute(db.pool())
    .await?;
    let stored = get(db, app_id)
        .await?
        .ok_or_else(|| ApiError::internal("webhook vanished", "after insert"))?;
    tracing::info!(app_id, "stored webhook");
    Ok(view(&stored, shown))
}

// Admin HTTP handlers: PUT, GET and DELETE /v1/apps/{app_id}/webhook.

pub async fn put_handler(
    State(state): State<AppState>,
    _admin: AdminAuth,
    ApiPath(app_id): ApiPath<String>,
    ApiJson(input): ApiJson<PutWebhook>,
) -> Result<Json<WebhookView>, ApiError> {
    put(&state.db, &state.vault, &app_id, input).await.map(Json)
}

pub async fn get_handler(
    State(state): State<AppState>,
    _admin: AdminAuth,
    ApiPath(app_id): ApiPath<String>,
) -> Result<Json<WebhookView>, ApiError> {
    get(&state.db, &app_id)
        .await?
        .map(|r| Json(view(&r, None)))
        .ok_or_else(|| ApiError::not_found(format!("app {app_id:?} has no webhook")))
}

pub async fn delete_handler(
    State(state): State<AppState>,
    _admin: AdminAuth,
    ApiPath(app_id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let done = sqlx::query("DELETE FROM webhooks WHERE app_id = $1")
        .bind(&app_id)
        .execute(state.db.pool())
        .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::not_found(format!(
            "app {app_id:?} has no webhook"
        )));
    }
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_refuse_tampering() {
        let secret = b"whsec_test";
        let body = br#"{"type":"connected"}"#;
        let header = signature(secret, 1_700_000_000, body);
        assert!(header.starts_with("t=1700000000,v1="));
        assert_eq!(header.len(), "t=1700000000,v1=".len() + 64);
        assert!(verify(secret, &header, body));
        assert!(!verify(b"other", &header, body));
        assert!(!verify(secret, &header, br#"{"type":"disconnected"}"#));
        let shifted = header.replace("t=1700000000", "t=1700000001");
        assert!(!verify(secret, &shifted, body));
        assert!(!verify(secret, "garbage", body));
    }
}
