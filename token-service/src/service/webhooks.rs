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
//! Delivery is at least once and survives restarts: every event of an app
//! with a webhook is a row of `webhook_outbox` first. Every replica runs
//! [`run_outbox`], which claims due rows (a lease, so one attempt at a time
//! across replicas) and sends them; a 2xx deletes the row, anything else
//! schedules the next attempt with a doubling pause from [`FIRST_RETRY`] up
//! to [`MAX_RETRY_PAUSE`], for at most [`MAX_ATTEMPTS`] attempts, each
//! bounded by [`ATTEMPT_TIMEOUT`]. A replica that dies mid-delivery leaves
//! its claim to expire ([`CLAIM`]); another replica, or the same after its
//! restart, sends the event again with the same id.

use crate::crypto::secrets::{hex, random_bytes};
use crate::crypto::vault::{Aad, Vault};
use crate::db::{self, Db};
use crate::error::Error;
use crate::service::state::AppState;
use crate::store;
use crate::store::webhook_outbox::{self as outbox, OutboxRow};
pub use crate::store::webhooks::{delete, get, WebhookRecord};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::sync::OnceLock;
use std::time::Duration;
use zeroize::Zeroizing;

pub const SIGNATURE_HEADER: &str = "x-authstamp-signature";
pub const EVENT_HEADER: &str = "x-authstamp-event";
pub const DELIVERY_HEADER: &str = "x-authstamp-delivery";
/// About a day of attempts at the longest pause.
pub const MAX_ATTEMPTS: i64 = 300;
pub const FIRST_RETRY: Duration = Duration::from_millis(500);
pub const MAX_RETRY_PAUSE: Duration = Duration::from_secs(300);
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a claimed event is this replica's: longer than an attempt
/// (5 s), short enough that a crashed replica's events go out soon.
pub const CLAIM: Duration = Duration::from_secs(10);
/// Deliveries running at once per replica.
pub const MAX_IN_FLIGHT: usize = 64;
/// How often the outbox is looked at when nothing wakes it.
const POLL: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[derive(utoipa::ToSchema)]
#[schema(as = WebhookEvent)]
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
    crate::crypto::secrets::digest_eq(
        &crate::crypto::secrets::sha256(expected.as_bytes()),
        &crate::crypto::secrets::sha256(given.as_bytes()),
    )
}

struct Delivery {
    http: reqwest::Client,
    /// Wakes the outbox loop when an event is written.
    written: tokio::sync::Notify,
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
                written: tokio::sync::Notify::new(),
            })
        })
        .as_ref()
}

/// Writes `event` to the outbox of the app's webhook, if it has one; the
/// outbox loop delivers it. Runs in the background so the caller never
/// waits for it (an event is lost only if the process dies before the
/// write, or the database refuses it: both logged).
pub fn emit(state: &AppState, app_id: &str, event: Event, provider: &str, user: &str) {
    let payload = Payload {
        id: format!("evt_{}", hex(&random_bytes::<12>())),
        event,
        created_at: db::now(),
        app_id: app_id.to_owned(),
        provider: provider.to_owned(),
        user: user.to_owned(),
    };
    let state = state.clone();
    let pending = pending();
    pending
        .count
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    tokio::spawn(async move {
        if let Err(err) = enqueue(&state, &payload).await {
            tracing::warn!(app_id = %payload.app_id, event = payload.event.as_str(), error = %err, "webhook event not written to the outbox: dropped");
        }
        pending
            .count
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        pending.done.notify_waiters();
    });
}

/// Outbox writes that [`emit`] started and that have not finished.
struct Pending {
    count: std::sync::atomic::AtomicUsize,
    done: tokio::sync::Notify,
}

fn pending() -> &'static Pending {
    static PENDING: OnceLock<Pending> = OnceLock::new();
    PENDING.get_or_init(|| Pending {
        count: std::sync::atomic::AtomicUsize::new(0),
        done: tokio::sync::Notify::new(),
    })
}

/// Waits (at most `limit`) until every event emitted so far is written to
/// the outbox or dropped: a CLI command calls it before it exits.
pub async fn settle(limit: Duration) {
    let pending = pending();
    let wait = async {
        loop {
            let done = pending.done.notified();
            if pending.count.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                return;
            }
            done.await;
        }
    };
    if tokio::time::timeout(limit, wait).await.is_err() {
        tracing::warn!("webhook events still being written to the outbox at exit");
    }
}

async fn enqueue(state: &AppState, payload: &Payload) -> Result<(), String> {
    if get(&state.db, &payload.app_id)
        .await
        .map_err(|e| format!("database: {e}"))?
        .is_none()
    {
        return Ok(());
    }
    let body = serde_json::to_string(payload).map_err(|e| e.to_string())?;
    outbox::insert(&state.db, &payload.id, &payload.app_id, &body, db::now_ms())
        .await
        .map_err(|e| format!("database: {e}"))?;
    if let Some(delivery) = delivery() {
        delivery.written.notify_one();
    }
    Ok(())
}

/// Delivers the outbox until `shutdown` resolves (every replica runs it).
pub async fn run_outbox(state: AppState, shutdown: impl std::future::Future<Output = ()>) {
    let Some(delivery) = delivery() else {
        tracing::error!("webhook client unavailable: webhooks are not delivered");
        return;
    };
    let owner = format!("{}#webhooks", state.lease_owners.replica());
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    tokio::pin!(shutdown);
    loop {
        let free = i64::try_from(slots.available_permits()).unwrap_or(0);
        if free > 0 {
            let now = db::now_ms();
            let until = now.saturating_add(i64::try_from(CLAIM.as_millis()).unwrap_or(i64::MAX));
            match outbox::claim(&state.db, &owner, now, until, free).await {
                Ok(rows) => {
                    for row in rows {
                        let Ok(slot) = slots.clone().try_acquire_owned() else {
                            break;
                        };
                        let (state, owner) = (state.clone(), owner.clone());
                        tokio::spawn(async move {
                            let _slot = slot;
                            attempt(&state, delivery, &owner, row).await;
                        });
                    }
                }
                Err(err) => tracing::warn!(error = %err, "could not read the webhook outbox"),
            }
        }
        tokio::select! {
            () = delivery.written.notified() => {}
            () = tokio::time::sleep(POLL) => {}
            () = &mut shutdown => break,
        }
    }
}

/// One attempt at one claimed event.
async fn attempt(state: &AppState, delivery: &Delivery, owner: &str, row: OutboxRow) {
    let outcome = send(state, delivery, &row).await;
    let event = serde_json::from_str::<Payload>(&row.payload)
        .map(|p| p.event.as_str())
        .unwrap_or("unknown");
    let attempts = row.attempts.saturating_add(1);
    let result = match outcome {
        Ok(()) => {
            tracing::info!(app_id = %row.app_id, event, attempt = attempts, "webhook delivered");
            outbox::delete(&state.db, &row.id).await
        }
        Err(err) if attempts >= MAX_ATTEMPTS => {
            tracing::error!(app_id = %row.app_id, event, attempts, error = %err, "webhook delivery given up");
            outbox::delete(&state.db, &row.id).await
        }
        Err(err) => {
            let pause = retry_pause(attempts);
            tracing::warn!(app_id = %row.app_id, event, attempt = attempts, error = %err, retry_in_ms = pause.as_millis(), "webhook delivery failed; will retry");
            let next =
                db::now_ms().saturating_add(i64::try_from(pause.as_millis()).unwrap_or(i64::MAX));
            outbox::reschedule(&state.db, &row.id, owner, next, &err).await
        }
    };
    if let Err(err) = result {
        tracing::warn!(app_id = %row.app_id, error = %err, "could not update the webhook outbox; the claim will expire");
    }
}

/// The pause after `attempts` failed attempts: 0.5 s doubling to 5 min.
pub fn retry_pause(attempts: i64) -> Duration {
    let doublings = u32::try_from(attempts.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
    FIRST_RETRY
        .saturating_mul(2u32.saturating_pow(doublings))
        .min(MAX_RETRY_PAUSE)
}

/// POSTs the event once; `Err` names why it failed.
async fn send(state: &AppState, delivery: &Delivery, row: &OutboxRow) -> Result<(), String> {
    let Some(hook) = get(&state.db, &row.app_id)
        .await
        .map_err(|e| format!("database: {e}"))?
    else {
        // The webhook was removed: nothing to deliver to.
        return Ok(());
    };
    let secret = state
        .vault
        .open(&Aad::webhook_secret(&row.app_id), &hook.secret)
        .map_err(|e| format!("vault: {e}"))?;
    let event = serde_json::from_str::<Payload>(&row.payload)
        .map_err(|e| format!("stored payload: {e}"))?
        .event;
    let body = row.payload.as_bytes().to_vec();
    let timestamp = db::now();
    let response = delivery
        .http
        .post(&hook.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, signature(&secret, timestamp, &body))
        .header(EVENT_HEADER, event.as_str())
        .header(DELIVERY_HEADER, &row.id)
        .body(body)
        .send()
        .await;
    match response {
        Ok(response) if response.status().is_success() => Ok(()),
        Ok(response) => Err(format!("HTTP {}", response.status().as_u16())),
        Err(err) if err.is_timeout() => Err("timeout".into()),
        Err(_) => Err("unreachable".into()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[derive(utoipa::ToSchema)]
pub struct PutWebhook {
    pub url: String,
    /// Absent: a new random secret is made and returned once.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub secret: Option<crate::crypto::secrets::ClientSecret>,
}

impl std::fmt::Debug for PutWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PutWebhook")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Webhook)]
pub struct WebhookView {
    pub app_id: String,
    pub url: String,
    /// Only when the service made the secret, once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[schema(value_type = Vec<Event>)]
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

pub fn view(r: &WebhookRecord, secret: Option<String>) -> WebhookView {
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
) -> Result<WebhookView, Error> {
    let url = crate::validate::http_url("url", &input.url)?;
    crate::store::apps::get(db, app_id)
        .await?
        .ok_or_else(|| Error::not_found(format!("no app {app_id:?}")))?;
    let (secret, shown) = match input.secret {
        Some(secret) => {
            let text = secret.expose();
            if text.len() < 16 || text.len() > 512 || text.chars().any(char::is_control) {
                return Err(Error::bad_request(
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
    store::webhooks::upsert(db, app_id, url.as_str(), &sealed, now).await?;
    let stored = get(db, app_id)
        .await?
        .ok_or_else(|| Error::internal("webhook vanished", "after insert"))?;
    tracing::info!(app_id, "stored webhook");
    Ok(view(&stored, shown))
}

/// A stored webhook as the API shows it (never its secret).
pub fn view_of(record: &WebhookRecord) -> WebhookView {
    view(record, None)
}

/// What `authstamp webhook test` sent and got.
#[derive(Debug, Serialize)]
pub struct TestDelivery {
    pub url: String,
    pub id: String,
    /// The receiver's HTTP status (absent: no answer).
    pub status: Option<u16>,
    pub delivered: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The event type of a test delivery (not one of [`Event`]: never queued).
pub const TEST_EVENT: &str = "test";

/// POSTs one signed `test` event to the app's webhook now, once, with the
/// headers and signature of a real delivery (outside the outbox).
pub async fn send_test(db: &Db, vault: &Vault, app_id: &str) -> Result<TestDelivery, Error> {
    let hook = get(db, app_id)
        .await?
        .ok_or_else(|| Error::not_found(format!("app {app_id:?} has no webhook")))?;
    let secret = vault.open(&Aad::webhook_secret(app_id), &hook.secret)?;
    let id = format!("evt_{}", hex(&random_bytes::<12>()));
    let body = serde_json::json!({
        "id": id,
        "type": TEST_EVENT,
        "created_at": db::now(),
        "app_id": app_id,
        "provider": "",
        "user": "",
    })
    .to_string()
    .into_bytes();
    let delivery = delivery().ok_or_else(|| Error::internal("webhook client", "unavailable"))?;
    let response = delivery
        .http
        .post(&hook.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, signature(&secret, db::now(), &body))
        .header(EVENT_HEADER, TEST_EVENT)
        .header(DELIVERY_HEADER, &id)
        .body(body)
        .send()
        .await;
    let (status, error) = match response {
        Ok(response) => (Some(response.status().as_u16()), None),
        Err(err) if err.is_timeout() => (None, Some("timeout".to_owned())),
        Err(_) => (None, Some("unreachable".to_owned())),
    };
    Ok(TestDelivery {
        url: hook.url,
        id,
        delivered: status.is_some_and(|s| (200..300).contains(&s)),
        status,
        error,
    })
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

    #[test]
    fn retry_pauses_double_up_to_five_minutes() {
        assert_eq!(retry_pause(1), Duration::from_millis(500));
        assert_eq!(retry_pause(2), Duration::from_secs(1));
        assert_eq!(retry_pause(4), Duration::from_secs(4));
        assert_eq!(retry_pause(11), Duration::from_secs(300));
        assert_eq!(retry_pause(MAX_ATTEMPTS), MAX_RETRY_PAUSE);
    }
}
