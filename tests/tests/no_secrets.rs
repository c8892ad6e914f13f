//! No secret in output: the whole flow runs with every process at debug log
//! level (Envoy's Wasm component included), then every line any process
//! printed is scanned for every secret the flow handled.

use authstamp_e2e::{Stack, StackOptions};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Credential shapes issued by the stand-in provider and the token service,
/// and the test kit's filter credential: a prefix followed by a long
/// base64url run. Any such run in a log is a leak, whether or not the test
/// saw the value itself (refresh tokens never reach it).
const SECRET_PREFIXES: [&str; 5] = ["sat_", "srt_", "sco_", "ask_", "ftk_"];

fn secret_shaped_runs(output: &str) -> Vec<String> {
    let mut found = Vec::new();
    for prefix in SECRET_PREFIXES {
        for (index, _) in output.match_indices(prefix) {
            let run: String = output[index + prefix.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .collect();
            if run.len() >= 20 {
                found.push(format!("{prefix}{}…", &run[..6]));
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_process_prints_a_secret_at_debug_level() {
    let stack = Stack::start("no_secrets", StackOptions::default()).await;
    // Short first token: the first proxied call refreshes it, so refresh
    // tokens flow through the service too.
    stack
        .set_quirks(json!({"access_token_ttl_secs": 2, "rotate_refresh_tokens": true}))
        .await;
    let outcome = stack.connect_user("heidi").await;
    stack
        .set_quirks(json!({"access_token_ttl_secs": 3600}))
        .await;
    // Due after half its 2 s life (the skew is capped at half a lifetime).
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let query: Vec<(String, String)> = outcome.callback_url.query_pairs().into_owned().collect();
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{name} in the callback"))
    };
    let (code, state) = (param("code"), param("state"));

    let mut access_tokens = Vec::new();
    for path in ["/api/one", "/api/two"] {
        let response = stack
            .call(Method::POST, path, "heidi")
            .body("payload")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let echo: Value = response.json().await.unwrap();
        let bearer = echo["headers"]["authorization"][0].as_str().unwrap();
        access_tokens.push(bearer.trim_start_matches("Bearer ").to_string());
    }
    assert_eq!(stack.refresh_calls().await, 1, "the flow refreshed once");
    // Failures log too: a wrong key and an unknown user.
    let wrong = stack
        .http
        .get(format!("{}/api/x", stack.envoy_url))
        .header("x-authstamp-provider", "standin")
        .header("x-authstamp-user", "heidi")
        .header("x-authstamp-app", &stack.app_id)
        .header(
            "x-authstamp-app-key",
            "ask_this-key-is-wrong-but-long-enough",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);

    let output = stack.all_output();
    assert!(
        output.contains("DEBUG"),
        "the processes did log at debug level"
    );
    let mut secrets = vec![
        ("authorization code", code),
        ("state", state),
        ("client secret", stack.client_secret.clone()),
        ("app key", stack.app_key.clone()),
        ("admin token", stack.admin_token.clone()),
        ("master key", stack.master_key.clone()),
    ];
    for token in access_tokens {
        secrets.push(("access token", token));
    }
    for (what, secret) in &secrets {
        assert!(secret.len() >= 16, "{what} is a real secret");
        assert!(
            !output.contains(secret.as_str()),
            "the {what} appears in a log"
        );
    }
    assert_eq!(
        secret_shaped_runs(&output),
        Vec::<String>::new(),
        "secret-shaped values in logs"
    );
}

#[test]
fn the_shape_scan_finds_what_it_should() {
    assert_eq!(
        secret_shaped_runs("x srt_abcdefghijklmnopqrstuvwxyz y"),
        vec!["srt_abcdef…".to_string()]
    );
    assert!(secret_shaped_runs("sat_short and app_abcdefghijklmnopqrstuvwxyz").is_empty());
}
