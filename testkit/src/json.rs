//! HTTP reply helpers for tests that talk to real servers.

use serde_json::Value;

/// The JSON body of a reply; panics with the status and the text when it is
/// not JSON.
pub async fn json_of(response: reqwest::Response) -> Value {
    let status = response.status();
    let text = response.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}), {status}: {text}"))
}

/// `(status, body)`: the body as JSON, or as a JSON string when it is not JSON.
pub async fn status_and_body(response: reqwest::Response) -> (reqwest::StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}
