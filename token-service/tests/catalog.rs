//! The provider catalog over HTTP and on the command line.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use common::*;

#[tokio::test]
async fn catalog_is_served_without_authentication() {
    let h = Harness::new().await;
    let reply = h.get("/v1/catalog").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let body = reply.json();
    let providers = body["providers"].as_array().unwrap();
    assert!(providers.len() >= 40);
    let names: Vec<&str> = providers
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "sorted by name");
    let reply = h.get("/v1/catalog/zendesk").await;
    assert_eq!(reply.status, 200);
    let zendesk = reply.json();
    assert_eq!(zendesk["display_name"], "Zendesk");
    assert_eq!(zendesk["connection_params"][0]["name"], "subdomain");
    assert_eq!(zendesk["api_hosts"][0], "{subdomain}.zendesk.com");
    h.get("/v1/catalog/nope")
        .await
        .assert_error(404, "not_found");
}

#[test]
fn providers_list_on_the_command_line() {
    let bin = env!("CARGO_BIN_EXE_authstamp");
    let out = std::process::Command::new(bin)
        .args(["providers", "list", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(list.as_array().unwrap().len() >= 40);
    assert!(list
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["name"] == "slack" && e["docs_url"].as_str().unwrap().starts_with("https://")));
    let out = std::process::Command::new(bin)
        .args(["providers", "list"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("shopify") && l.ends_with("shop")),
        "{text}"
    );
    let out = std::process::Command::new(bin)
        .args(["providers", "show", "nope"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}
