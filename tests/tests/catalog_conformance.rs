//! Issue 15 item 4: every OAuth 2.0 authorization-code entry of the catalog,
//! walked against the stand-in provider wearing that entry's profile
//! (endpoint paths, client authentication, scope separator, PKCE policy,
//! token-request parameters, refresh endpoint, revocation style, metadata
//! call, API credential header): connect in a browser → a stamped call
//! through Envoy → refresh → revoke. Entries run concurrently against one
//! stack (one stand-in, one token service, one Envoy); a failure names the
//! entry. The API hosts are the stand-in's: the catalog's own hosts are
//! checked by rendering in `catalog::tests` (token service).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use authstamp_e2e::browser::{browser_client, walk_connect_pkce};
use authstamp_e2e::stack::CLIENT_ID;
use authstamp_e2e::{Stack, StackOptions};
use futures::{FutureExt as _, StreamExt as _};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Values tried, in order, for a connection parameter without default; the
/// token service says which match its pattern.
const CANDIDATES: &[&str] = &[
    "acme",
    "12345",
    "us",
    "eu",
    "live",
    "api",
    "acme.okta.com",
    "acme.us.auth0.com",
    "acme.my.salesforce.com",
    "acme.myfreshworks.com",
    "acme.freshservice.com",
    "01234567-89ab-cdef-0123-456789abcdef",
    "acme.service-now.com",
    "acme.looker.com",
    "acme.snowflakecomputing.com",
    "acme.teamwork.com",
    "www.wrike.com",
    "acme.yahooapis.com",
    "www.clover.com",
    "api.clover.com",
    "business.revolut.com",
    "b2b.revolut.com",
    "app.datadoghq.com",
    "datadoghq.com",
    "acme.grafana.net",
    "restacme.bullhornstaffing.com",
    "sellercentral.amazon.com",
    "amzn1.acme",
    "na",
    "acme.docusign.net",
    "smartsheet.com",
    "sentry.io",
    "",
];

/// The path of a URL template with connection parameters filled.
fn path_of(url: &str, params: &Value) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let mut path = rest[rest.find('/').unwrap_or(rest.len())..].to_owned();
    if let Some(map) = params.as_object() {
        for (k, v) in map {
            path = path.replace(&format!("{{{k}}}"), v.as_str().unwrap());
        }
    }
    let path = path.split('?').next().unwrap().to_owned();
    if path.is_empty() {
        "/".into()
    } else {
        path
    }
}

fn profile_of(entry: &Value, params: &Value) -> Value {
    let path = |field: &Value| field.as_str().map(|u| path_of(u, params));
    let header_format = entry["header"]["format"].as_str().unwrap();
    let revocation = &entry["revocation"];
    let called = matches!(revocation["style"].as_str(), Some("rfc7009" | "bearer"));
    json!({
        "authorize_path": path(&entry["authorize_url"]),
        "token_path": path(&entry["token_url"]),
        "refresh_path": path(&entry["refresh_url"]),
        "client_auth": entry["client_auth"],
        "pkce": entry["pkce"],
        "scope_separator": entry["scope_separator"],
        "exchange_params": entry["token_request_params"]["exchange"],
        "refresh_params": entry["token_request_params"]["refresh"],
        "revocation": if called {
            json!({"path": path(&revocation["url"]), "method": revocation["method"],
                   "style": revocation["style"], "client_auth": revocation["client_auth"]})
        } else {
            Value::Null
        },
        "metadata": if entry["post_exchange_metadata"].is_null() {
            Value::Null
        } else {
            let m = &entry["post_exchange_metadata"];
            json!({"path": path(&m["url"]),
                   "scheme": m["header_format"].as_str().unwrap().trim_end_matches(" {token}"),
                   "field": m["field"], "value": "standin"})
        },
        "api_header": entry["header"]["name"],
        "api_prefix": header_format.split("{token}").next().unwrap(),
    })
}

/// Connection parameters for `name`: defaults, then the first candidate the
/// service accepts for each required one (tried by creating a session).
async fn params_for(stack: &Stack, name: &str, entry: &Value) -> Value {
    let mut params = json!({});
    for p in entry["connection_params"].as_array().unwrap() {
        let key = p["name"].as_str().unwrap();
        params[key] = p.get("default").cloned().unwrap_or(json!("acme"));
    }
    for p in entry["connection_params"].as_array().unwrap() {
        if p.get("default").is_some() {
            continue;
        }
        let key = p["name"].as_str().unwrap();
        for candidate in CANDIDATES {
            params[key] = json!(candidate);
            let reply = stack
                .as_app(Method::POST, "/v1/connect-sessions")
                .json(&json!({"provider": name, "user": "probe", "params": params}))
                .send()
                .await
                .unwrap();
            let text = reply.text().await.unwrap();
            if !text.contains(&format!("\"{key}\\\" does not match"))
                && !text.contains(&format!("parameter \\\"{key}\\\" does not match"))
            {
                break;
            }
        }
    }
    params
}

/// Walks `entry` (the catalog's) with the stand-in wearing the profile of
/// `worn` (the same entry, or a broken copy that must be refused).
async fn walk(stack: Rc<Stack>, entry: Value, worn: Value) -> Result<(), String> {
    let name = entry["name"].as_str().unwrap().to_owned();
    let fail = |what: &str, detail: String| Err(format!("{what}: {detail}"));
    let base = format!("{}/p/{name}", stack.standin_url);
    let moved = |url: &Value| -> Value {
        url.as_str()
            .map(|u| {
                let rest = u.split_once("://").unwrap().1;
                json!(format!(
                    "{base}{}",
                    &rest[rest.find('/').unwrap_or(rest.len())..]
                ))
            })
            .unwrap_or(Value::Null)
    };
    let mut config = json!({
        "catalog": name, "client_id": CLIENT_ID, "client_secret": stack.client_secret,
        "authorize_url": moved(&entry["authorize_url"]), "token_url": moved(&entry["token_url"]),
        "api_base_url": format!("{base}/api"), "api_hosts": ["127.0.0.1"],
    });
    if !entry["refresh_url"].is_null() {
        config["refresh_url"] = moved(&entry["refresh_url"]);
    }
    if !entry["revocation"].is_null() {
        config["revocation_url"] = moved(&entry["revocation"]["url"]);
    }
    if !entry["post_exchange_metadata"].is_null() {
        config["metadata_url"] = moved(&entry["post_exchange_metadata"]["url"]);
    }
    let reply = stack
        .admin(
            Method::PUT,
            &format!("/v1/apps/{}/providers/{name}", stack.app_id),
        )
        .json(&config)
        .send()
        .await
        .unwrap();
    if reply.status() != StatusCode::OK {
        return fail("provider configuration", reply.text().await.unwrap());
    }
    let params = params_for(&stack, &name, &entry).await;
    let profile = profile_of(&worn, &params);
    let reply = stack
        .http
        .put(format!("{}/_standin/profiles/{name}", stack.standin_url))
        .json(&profile)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::NO_CONTENT, "{name}: profile");
    let mismatches = || async {
        let r: Value = stack
            .http
            .get(format!("{}/_standin/profiles/{name}", stack.standin_url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r["mismatches"].clone()
    };

    // Connect.
    // A fresh user per walk: Envoy's cache never holds an earlier walk's token.
    static WALKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WALKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let user = format!("user-{n}-of-{name}");
    let reply = stack
        .as_app(Method::POST, "/v1/connect-sessions")
        .json(&json!({"provider": name, "user": user, "params": params}))
        .send()
        .await
        .unwrap();
    if reply.status() != StatusCode::CREATED {
        return fail("connect session", reply.text().await.unwrap());
    }
    let body: Value = reply.json().await.unwrap();
    let pkce = !matches!(entry["pkce"].as_str(), Some("unsupported" | "opt_in"));
    let connect_url = body["connect_url"].as_str().unwrap().to_owned();
    let outcome = walk_connect_pkce(&browser_client(), &connect_url, &user, pkce).await;
    if outcome.final_status != StatusCode::OK {
        return fail(
            "connect",
            format!("{} {:?}", outcome.final_body, mismatches().await),
        );
    }

    // A stamped call through Envoy.
    let reply = stack
        .call_provider(Method::GET, &name, "/me", &user)
        .send()
        .await
        .unwrap();
    let status = reply.status();
    let text = reply.text().await.unwrap();
    if status != StatusCode::OK || !text.contains(&format!("\"user\":\"{user}\"")) {
        return fail(
            "stamped call",
            format!("{status} {text} {:?}", mismatches().await),
        );
    }

    // Refresh, where the entry has it.
    if entry["refresh"]["supported"] == true {
        let reply = stack
            .filter_lookup(&json!({"provider": name, "user": user, "force_refresh": true}))
            .send()
            .await
            .unwrap();
        if reply.status() != StatusCode::OK {
            return fail(
                "refresh",
                format!("{} {:?}", reply.text().await.unwrap(), mismatches().await),
            );
        }
    }

    // Revoke.
    let reply = stack
        .as_app(Method::DELETE, &format!("/v1/connections/{name}/{user}"))
        .send()
        .await
        .unwrap();
    let body: Value = reply.json().await.unwrap();
    let called = matches!(
        entry["revocation"]["style"].as_str(),
        Some("rfc7009" | "bearer")
    );
    let expected = if called { "revoked" } else { "unsupported" };
    if body["revocation"] != expected {
        return fail(
            "revoke",
            format!("{body} (expected {expected}) {:?}", mismatches().await),
        );
    }
    let left = mismatches().await;
    if left.as_array().is_some_and(|m| !m.is_empty()) {
        return fail("profile", left.to_string());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_oauth_entry_connects_calls_refreshes_and_revokes() {
    let stack = Rc::new(Stack::start("catalog_conformance", StackOptions::default()).await);
    let catalog: Value = stack
        .http
        .get(format!("{}/v1/catalog", stack.service_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entries: Vec<Value> = catalog["providers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["auth_type"] == "oauth2")
        .cloned()
        .collect();
    assert!(entries.len() >= 150, "{} OAuth entries", entries.len());
    let started = Instant::now();
    let results: Vec<(String, Result<(), String>)> = futures::stream::iter(entries)
        .map(|entry| {
            let stack = stack.clone();
            let name = entry["name"].as_str().unwrap().to_owned();
            async move {
                // A failed assertion inside the walk names its entry too.
                let outcome = std::panic::AssertUnwindSafe(tokio::time::timeout(
                    Duration::from_secs(60),
                    walk(stack, entry.clone(), entry),
                ))
                .catch_unwind()
                .await;
                let result = match outcome {
                    Ok(Ok(result)) => result,
                    Ok(Err(_)) => Err("timed out".into()),
                    Err(panic) => Err(format!(
                        "panicked: {}",
                        panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                            .unwrap_or_default()
                    )),
                };
                (name, result)
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let failed: Vec<String> = results
        .iter()
        .filter_map(|(name, r)| r.as_ref().err().map(|e| format!("{name}: {e}")))
        .collect();
    eprintln!(
        "{} entries walked in {:?}, {} failed",
        results.len(),
        started.elapsed(),
        failed.len()
    );
    assert!(failed.is_empty(), "{}", failed.join("\n"));

    // The walk can fail: a client that breaks its profile is refused.
    let entry_of = |name: &str| {
        catalog["providers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap()
            .clone()
    };
    let refusal = |name: &str, worn: Value| {
        let stack = stack.clone();
        let entry = entry_of(name);
        let name = name.to_owned();
        async move {
            let outcome = std::panic::AssertUnwindSafe(walk(stack.clone(), entry, worn))
                .catch_unwind()
                .await;
            assert!(
                !matches!(outcome, Ok(Ok(()))),
                "{name}: a broken profile passed"
            );
            stack
                .http
                .get(format!("{}/_standin/profiles/{name}", stack.standin_url))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    let mut slack = entry_of("slack");
    slack["pkce"] = json!("required");
    let refused = refusal("slack", slack).await;
    assert!(refused.contains("PKCE is required"), "{refused}");
    let mut shopify = entry_of("shopify");
    shopify["token_request_params"]["exchange"]["expiring"] = json!("0");
    let refused = refusal("shopify", shopify).await;
    assert!(refused.contains("expiring=0"), "{refused}");
    let mut calendly = entry_of("calendly");
    calendly["revocation"]["client_auth"] = json!("basic");
    let refused = refusal("calendly", calendly).await;
    assert!(
        refused.contains("revocation client authentication"),
        "{refused}"
    );
}
