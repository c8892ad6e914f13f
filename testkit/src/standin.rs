//! The stand-in provider's test controls (`/_standin/…`), for tests that
//! run `authstamp-standin` as their provider.

use std::time::Duration;

use serde_json::Value;

/// Its counters (`GET /_standin/stats`).
pub async fn stats(http: &reqwest::Client, standin_url: &str) -> Value {
    http.get(format!("{standin_url}/_standin/stats"))
        .send()
        .await
        .expect("standin stats")
        .json()
        .await
        .expect("stats json")
}

/// How many refresh-token grants it has answered.
pub async fn refresh_calls(http: &reqwest::Client, standin_url: &str) -> u64 {
    stats(http, standin_url).await["token_calls"]["refresh_token"]
        .as_u64()
        .expect("refresh count")
}

/// Waits until it has seen `n` refresh calls.
pub async fn wait_for_refresh_calls(
    http: &reqwest::Client,
    standin_url: &str,
    n: u64,
    timeout: Duration,
) {
    crate::eventually(&format!("refresh call {n}"), timeout, || async move {
        (refresh_calls(http, standin_url).await >= n).then_some(())
    })
    .await;
}

/// Switches quirks (`POST /_standin/quirks`, a partial update).
pub async fn set_quirks(http: &reqwest::Client, standin_url: &str, quirks: &Value) {
    let response = http
        .post(format!("{standin_url}/_standin/quirks"))
        .json(quirks)
        .send()
        .await
        .expect("quirks");
    assert!(response.status().is_success());
}
