//! The OpenAPI document describes exactly the router: every route is
//! documented with each method it answers, and every documented operation
//! is routed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use axum::body::Body;
use axum::http::{Method, Request};
use common::*;
use std::collections::BTreeSet;

const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

/// `/v1/connections/{provider}/{user}` → `/v1/connections/x/x`.
fn sample_path(template: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in template.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push('x');
            }
            '}' => in_param = false,
            c if !in_param => out.push(c),
            _ => {}
        }
    }
    out
}

#[tokio::test]
async fn every_route_is_documented_and_every_operation_routed() {
    let h = Harness::new().await;
    let reply = h.get("/v1/openapi.json").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let doc = reply.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            // A path's own servers (the filter listener) are not an operation.
            if method == "servers" {
                continue;
            }
            assert!(METHODS.contains(&method.as_str()), "{method} {path}");
            assert!(operation["responses"].is_object(), "{method} {path}");
            documented.insert((method.clone(), path.clone()));
        }
    }

    // Both listeners: the app API, and the filter API with its credential.
    let filter_paths: BTreeSet<&str> = authstamp_token_service::filter_routes()
        .into_iter()
        .map(|(path, _)| path)
        .collect();
    let all_routes = authstamp_token_service::routes()
        .into_iter()
        .chain(authstamp_token_service::filter_routes());
    let mut routed = BTreeSet::new();
    for (path, _) in all_routes {
        let on_filter = filter_paths.contains(path);
        // A filter path is documented with the filter listener as its server.
        let servers = doc["paths"][path]["servers"].to_string();
        assert_eq!(
            servers.contains("--filter-listen"),
            on_filter,
            "{path}: {servers}"
        );
        for method in METHODS {
            let mut request = Request::builder()
                .method(Method::from_bytes(method.to_uppercase().as_bytes()).unwrap())
                .uri(sample_path(path));
            if on_filter {
                request = request.header("authorization", format!("Bearer {FILTER_TOKEN}"));
            }
            let request = request.body(Body::empty()).unwrap();
            let reply = if on_filter {
                h.send_filter(request).await
            } else {
                h.send(request).await
            };
            let fallback = reply.header("x-authstamp-error").is_some_and(|code| {
                let message = reply.json()["message"].as_str().unwrap_or("").to_owned();
                message == "no such endpoint" || code == "method_not_allowed"
            });
            if !fallback {
                routed.insert((method.to_owned(), path.to_owned()));
            }
        }
    }
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty(),
        "routed but not documented: {undocumented:?}"
    );
    assert!(
        unrouted.is_empty(),
        "documented but not routed: {unrouted:?}"
    );
    // Every documented path parameter is declared.
    for (method, path) in &documented {
        let operation = &doc["paths"][path][method];
        let declared: BTreeSet<&str> = operation["parameters"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .filter(|p| p["in"] == "path")
                    .map(|p| p["name"].as_str().unwrap())
                    .collect()
            })
            .unwrap_or_default();
        let in_path: BTreeSet<&str> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        assert_eq!(declared, in_path, "{method} {path}");
    }
    // References resolve.
    let text = serde_json::to_string(&doc).unwrap();
    for reference in text.split("\"$ref\":\"#/").skip(1) {
        let pointer = format!("/{}", &reference[..reference.find('"').unwrap()]);
        assert!(doc.pointer(&pointer).is_some(), "dangling $ref {pointer}");
    }
}

/// `token-service/openapi.json` is the document the service serves, byte
/// for byte (Istio manifests and other tests read the file).
#[tokio::test]
async fn committed_document_is_the_generated_one() {
    let h = Harness::new().await;
    let reply = h.get("/v1/openapi.json").await;
    assert_eq!(reply.status, 200);
    let served = String::from_utf8(reply.body.clone()).unwrap();
    assert_eq!(served, authstamp_token_service::openapi_json().unwrap());
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == served,
        "token-service/openapi.json differs from the document the service serves \
         (generated from the #[utoipa::path] annotations); regenerate it with \
         `make openapi`, i.e. \
         `cargo run -q -p authstamp-token-service --bin authstamp -- openapi > token-service/openapi.json`"
    );
}
