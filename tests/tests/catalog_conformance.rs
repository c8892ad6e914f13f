//! Issue 15 item 4: every entry of the catalog, walked against the stand-in
//! provider wearing that entry's profile, through one Envoy:
//!
//! - `oauth2`: endpoint paths, client authentication, scope separator, PKCE
//!   policy, token-request parameters, refresh endpoint, rotation,
//!   revocation style, metadata call, API credential header: connect in a
//!   browser → a stamped call → refresh twice (a rotating entry's stand-in
//!   hands out a new refresh token each time and refuses the old one; a
//!   non-rotating one keeps it) → revoke.
//! - `oauth2_client_credentials`: token path, client authentication, scope
//!   separator, token-request parameters (Zoom's own `grant_type`): a stamped
//!   call with a token the service fetched itself → the token expires and
//!   the next call carries a new one → revoke where the entry has it.
//! - `api_key` and `basic`: the app stores the credential → a stamped call
//!   carries it exactly where the entry says (header name and format, query
//!   parameter, Basic) → disconnect removes it.
//!
//! Entries run concurrently against one stack (one stand-in, one token
//! service, one Envoy); a failure names the entry. The API hosts are the
//! stand-in's: the catalog's own hosts are checked by rendering in
//! `catalog::tests` (token service).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use authstamp_e2e::browser::{browser_client, walk_connect_pkce};
use authstamp_e2e::stack::CLIENT_ID;
use authstamp_e2e::{Stack, StackOptions};
use futures::{FutureExt as _, StreamExt as _};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The user id of app-level connections.
const APP_USER: &str = "-";

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
    "https://api.acme.example",
    "us-central1",
    "gcp",
    "acme.cloud.databricks.com",
    "123-ABC-456",
    "ABCDEFGHIJ",
    "2024-01-01",
    "pub_01234567-89ab-cdef-0123-456789abcdef",
    "cdp",
    "acme.api.gong.io",
    "mixpanel.com",
    "acct_ABCDEFGHIJKLMNOP",
    "abcdefghijklmnopqrst",
    "api.teamtailor.com",
    "acme.api-us1.com",
    "",
];

/// A template with connection parameters filled.
fn render(text: &str, params: &Value) -> String {
    let mut out = text.to_owned();
    if let Some(map) = params.as_object() {
        for (k, v) in map {
            out = out.replace(&format!("{{{k}}}"), v.as_str().unwrap());
        }
    }
    out
}

/// The path of a URL template with connection parameters filled.
fn path_of(url: &str, params: &Value) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let path = render(&rest[rest.find('/').unwrap_or(rest.len())..], params);
    let path = path.split('?').next().unwrap().to_owned();
    if path.is_empty() {
        "/".into()
    } else {
        path
    }
}

/// A grant's token-request parameters with connection parameters filled.
fn rendered(grant_params: &Value, params: &Value) -> Value {
    let map = grant_params.as_object().unwrap();
    map.iter()
        .map(|(k, v)| (k.clone(), json!(render(v.as_str().unwrap(), params))))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// Access-token lifetime the stand-in gives client-credentials tokens: short,
/// so the walk sees the service fetch the next one.
const CLIENT_TOKEN_TTL_SECS: u64 = 2;

fn profile_of(entry: &Value, params: &Value) -> Value {
    let path = |field: &Value| field.as_str().map(|u| path_of(u, params));
    let header_format = entry["header"]["format"].as_str().unwrap();
    let (prefix, suffix) = header_format.split_once("{token}").unwrap();
    let revocation = &entry["revocation"];
    let called = matches!(revocation["style"].as_str(), Some("rfc7009" | "bearer"));
    let mut profile = json!({
        "api_header": entry["header"]["name"],
        "api_prefix": prefix,
        "api_suffix": suffix,
        "api_in": entry["header"].get("in").cloned().unwrap_or(json!("header")),
    });
    let token_params = &entry["token_request_params"];
    let oauth = json!({
        "token_path": path(&entry["token_url"]),
        "client_auth": entry["client_auth"],
        "scope_separator": entry["scope_separator"],
        "revocation": if called {
            json!({"path": path(&revocation["url"]), "method": revocation["method"],
                   "style": revocation["style"], "client_auth": revocation["client_auth"]})
        } else {
            Value::Null
        },
    });
    let more = match entry["auth_type"].as_str().unwrap() {
        "oauth2" => json!({
            "authorize_path": path(&entry["authorize_url"]),
            "refresh_path": path(&entry["refresh_url"]),
            "pkce": entry["pkce"],
            "exchange_params": rendered(&token_params["exchange"], params),
            "refresh_params": rendered(&token_params["refresh"], params),
            "rotate_refresh_tokens": entry["refresh"]["rotation"],
            "metadata": if entry["post_exchange_metadata"].is_null() {
                Value::Null
            } else {
                let m = &entry["post_exchange_metadata"];
                json!({"path": path(&m["url"]),
                       "scheme": m["header_format"].as_str().unwrap().trim_end_matches(" {token}"),
                       "field": m["field"], "value": "standin"})
            },
        }),
        "oauth2_client_credentials" => json!({
            "client_credentials_params": rendered(&token_params["client_credentials"], params),
            "access_token_ttl_secs": CLIENT_TOKEN_TTL_SECS,
        }),
        "api_key" => json!({"api_credential": "api_key"}),
        _ => json!({"api_credential": "basic"}),
    };
    let is_oauth = entry["auth_type"].as_str().unwrap().starts_with("oauth2");
    for part in [is_oauth.then_some(&oauth), Some(&more)]
        .into_iter()
        .flatten()
    {
        for (k, v) in part.as_object().unwrap() {
            profile[k] = v.clone();
        }
    }
    profile
}

/// Whether an error text says parameter `key` did not match its pattern.
fn refuses(text: &str, key: &str) -> bool {
    text.contains(&format!("parameter \\\"{key}\\\" does not match"))
        || text.contains(&format!("of {key} does not match"))
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
            if !refuses(&reply.text().await.unwrap(), key) {
                break;
            }
        }
    }
    params
}

/// The stand-in's base for `name` and an entry URL moved onto it (same path).
fn moved(base: &str, url: &Value) -> Value {
    url.as_str()
        .map(|u| {
            let rest = u.split_once("://").unwrap().1;
            json!(format!(
                "{base}{}",
                &rest[rest.find('/').unwrap_or(rest.len())..]
            ))
        })
        .unwrap_or(Value::Null)
}

/// The provider configuration of `entry` with every endpoint moved onto the
/// stand-in's `/p/{name}`.
fn config_of(stack: &Stack, entry: &Value) -> Value {
    let name = entry["name"].as_str().unwrap();
    let base = format!("{}/p/{name}", stack.standin_url);
    let mut config = json!({
        "catalog": name,
        "api_base_url": format!("{base}/api"), "api_hosts": ["127.0.0.1"],
    });
    if entry["auth_type"].as_str().unwrap().starts_with("oauth2") {
        config["client_id"] = json!(CLIENT_ID);
        config["client_secret"] = json!(stack.client_secret);
        config["token_url"] = moved(&base, &entry["token_url"]);
    }
    if !entry["authorize_url"].is_null() {
        config["authorize_url"] = moved(&base, &entry["authorize_url"]);
    }
    if !entry["refresh_url"].is_null() {
        config["refresh_url"] = moved(&base, &entry["refresh_url"]);
    }
    if !entry["revocation"].is_null() {
        config["revocation_url"] = moved(&base, &entry["revocation"]["url"]);
    }
    if !entry["post_exchange_metadata"].is_null() {
        config["metadata_url"] = moved(&base, &entry["post_exchange_metadata"]["url"]);
    }
    config
}

async fn put_provider(stack: &Stack, name: &str, config: &Value) -> Result<(), String> {
    let reply = stack
        .admin(
            Method::PUT,
            &format!("/v1/apps/{}/providers/{name}", stack.app_id),
        )
        .json(config)
        .send()
        .await
        .unwrap();
    if reply.status() == StatusCode::OK {
        Ok(())
    } else {
        Err(format!(
            "provider configuration: {}",
            reply.text().await.unwrap()
        ))
    }
}

async fn put_profile(stack: &Stack, name: &str, profile: &Value) {
    let reply = stack
        .http
        .put(format!("{}/_standin/profiles/{name}", stack.standin_url))
        .json(profile)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::NO_CONTENT, "{name}: profile");
}

/// What the stand-in saw of `name`: mismatches, calls, refresh tokens.
async fn seen(stack: &Stack, name: &str) -> Value {
    stack
        .http
        .get(format!("{}/_standin/profiles/{name}", stack.standin_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A stamped call through Envoy; the stand-in answers with the login the
/// credential stands for.
async fn stamped_call(stack: &Stack, name: &str, user: &str, login: &str) -> Result<(), String> {
    let reply = stack
        .call_provider(Method::GET, name, "/me", user)
        .send()
        .await
        .unwrap();
    let status = reply.status();
    let text = reply.text().await.unwrap();
    if status != StatusCode::OK || !text.contains(&format!("\"user\":\"{login}\"")) {
        return Err(format!(
            "stamped call: {status} {text} {}",
            seen(stack, name).await["mismatches"]
        ));
    }
    Ok(())
}

/// Disconnect; `called`: the entry has a revocation the service calls.
async fn disconnect(stack: &Stack, name: &str, user: &str, called: bool) -> Result<(), String> {
    let reply = stack
        .as_app(Method::DELETE, &format!("/v1/connections/{name}/{user}"))
        .send()
        .await
        .unwrap();
    let body: Value = reply.json().await.unwrap();
    let expected = if called { "revoked" } else { "unsupported" };
    if body["revocation"] != expected {
        return Err(format!(
            "revoke: {body} (expected {expected}) {}",
            seen(stack, name).await["mismatches"]
        ));
    }
    // Gone from the service. (A lookup of an app-level token would fetch a
    // new one, so only a user's connection is looked up.)
    let reply = if user == APP_USER {
        stack
            .as_app(Method::GET, &format!("/v1/connections/{name}/{user}"))
            .send()
            .await
    } else {
        stack
            .filter_lookup(&json!({"provider": name, "user": user}))
            .send()
            .await
    }
    .unwrap();
    let status = reply.status();
    let text = reply.text().await.unwrap();
    if status != StatusCode::NOT_FOUND || !text.contains("not") {
        return Err(format!("after disconnect: {status} {text}"));
    }
    Ok(())
}

fn called_revocation(entry: &Value) -> bool {
    matches!(
        entry["revocation"]["style"].as_str(),
        Some("rfc7009" | "bearer")
    )
}

/// A fresh user per walk: Envoy's cache never holds an earlier walk's token.
fn fresh_user(name: &str) -> String {
    static WALKS: AtomicU64 = AtomicU64::new(0);
    let n = WALKS.fetch_add(1, Ordering::Relaxed);
    format!("user-{n}-of-{name}")
}

/// Walks `entry` (the catalog's) with the stand-in wearing the profile of
/// `worn` (the same entry, or a broken copy that must be refused).
async fn walk(stack: Rc<Stack>, entry: Value, worn: Value) -> Result<(), String> {
    let name = entry["name"].as_str().unwrap().to_owned();
    match entry["auth_type"].as_str().unwrap() {
        "oauth2" => walk_oauth(&stack, &name, &entry, &worn).await?,
        "oauth2_client_credentials" => {
            walk_client_credentials(&stack, &name, &entry, &worn).await?
        }
        _ => walk_stored_credential(&stack, &name, &entry, &worn).await?,
    }
    let left = seen(&stack, &name).await["mismatches"].clone();
    if left.as_array().is_some_and(|m| !m.is_empty()) {
        return Err(format!("profile: {left}"));
    }
    Ok(())
}

async fn walk_oauth(stack: &Stack, name: &str, entry: &Value, worn: &Value) -> Result<(), String> {
    put_provider(stack, name, &config_of(stack, entry)).await?;
    let params = params_for(stack, name, entry).await;
    put_profile(stack, name, &profile_of(worn, &params)).await;

    // Connect.
    let user = fresh_user(name);
    let reply = stack
        .as_app(Method::POST, "/v1/connect-sessions")
        .json(&json!({"provider": name, "user": user, "params": params}))
        .send()
        .await
        .unwrap();
    if reply.status() != StatusCode::CREATED {
        return Err(format!("connect session: {}", reply.text().await.unwrap()));
    }
    let body: Value = reply.json().await.unwrap();
    let pkce = !matches!(entry["pkce"].as_str(), Some("unsupported" | "opt_in"));
    let connect_url = body["connect_url"].as_str().unwrap().to_owned();
    let outcome = walk_connect_pkce(&browser_client(), &connect_url, &user, pkce).await;
    if outcome.final_status != StatusCode::OK {
        return Err(format!(
            "connect: {} {}",
            outcome.final_body,
            seen(stack, name).await["mismatches"]
        ));
    }

    stamped_call(stack, name, &user, &user).await?;

    // Refresh twice, where the entry has it: a rotating provider's second
    // refresh only works with the refresh token the first one returned.
    if entry["refresh"]["supported"] == true {
        for round in 1..=2 {
            let reply = stack
                .filter_lookup(&json!({"provider": name, "user": user, "force_refresh": true}))
                .send()
                .await
                .unwrap();
            if reply.status() != StatusCode::OK {
                return Err(format!(
                    "refresh {round}: {} {}",
                    reply.text().await.unwrap(),
                    seen(stack, name).await["mismatches"]
                ));
            }
        }
        let presented = seen(stack, name).await["refresh_tokens"].clone();
        let presented = presented.as_array().unwrap();
        let rotates = entry["refresh"]["rotation"] == true;
        if presented.len() != 2 || (presented[0] != presented[1]) != rotates {
            return Err(format!(
                "rotation {rotates}: refresh tokens presented {presented:?}"
            ));
        }
        stamped_call(stack, name, &user, &user).await?;
    }

    disconnect(stack, name, &user, called_revocation(entry)).await
}

/// Connection parameter values of an app-level connection: the entry's
/// declarations with a default for each required one, the first candidate
/// the service accepts (tried by storing the configuration).
async fn client_params(stack: &Stack, name: &str, entry: &Value, config: &mut Value) -> Value {
    let mut declared = entry["connection_params"].clone();
    let mut params = json!({});
    for i in 0..declared.as_array().unwrap().len() {
        let key = declared[i]["name"].as_str().unwrap().to_owned();
        if declared[i].get("default").is_none() {
            for candidate in CANDIDATES {
                declared[i]["default"] = json!(candidate);
                config["connection_params"] = declared.clone();
                if put_provider(stack, name, config)
                    .await
                    .err()
                    .is_none_or(|e| !refuses(&e, &key))
                {
                    break;
                }
            }
        }
        params[key] = declared[i]["default"].clone();
    }
    config["connection_params"] = declared;
    params
}

async fn walk_client_credentials(
    stack: &Stack,
    name: &str,
    entry: &Value,
    worn: &Value,
) -> Result<(), String> {
    let mut config = config_of(stack, entry);
    let params = client_params(stack, name, entry, &mut config).await;
    put_provider(stack, name, &config).await?;
    put_profile(stack, name, &profile_of(worn, &params)).await;
    let login = format!("client:{CLIENT_ID}");
    stamped_call(stack, name, APP_USER, &login).await?;

    // The token expires: a later call carries one the service fetched anew.
    let deadline = Instant::now() + Duration::from_secs(CLIENT_TOKEN_TTL_SECS * 5);
    loop {
        let fetched = seen(stack, name).await["calls"]["token"]
            .as_u64()
            .unwrap_or(0);
        if fetched >= 2 {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no new token after expiry: {fetched} fetched {}",
                seen(stack, name).await["mismatches"]
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        stamped_call(stack, name, APP_USER, &login).await?;
    }

    disconnect(stack, name, APP_USER, called_revocation(entry)).await
}

async fn walk_stored_credential(
    stack: &Stack,
    name: &str,
    entry: &Value,
    worn: &Value,
) -> Result<(), String> {
    put_provider(stack, name, &config_of(stack, entry)).await?;
    let user = fresh_user(name);
    let basic = entry["auth_type"] == "basic";
    // What the provider issued; Basic: the user name is the login.
    let secret = authstamp_e2e::random_token("sec ret:");
    let (stored, registered) = if basic {
        (
            json!({"username": user, "password": secret}),
            json!({"basic": {&user: secret}}),
        )
    } else {
        (
            json!({"api_key": secret}),
            json!({"api_keys": {&secret: user}}),
        )
    };
    let reply = stack
        .http
        .post(format!("{}/_standin/credentials", stack.standin_url))
        .json(&registered)
        .send()
        .await
        .unwrap();
    assert!(reply.status().is_success(), "{name}: stand-in credentials");

    // The app stores it as a user would, with the first parameter values
    // the service accepts.
    let mut params = json!({});
    for p in entry["connection_params"].as_array().unwrap() {
        let key = p["name"].as_str().unwrap();
        params[key] = p.get("default").cloned().unwrap_or(json!("acme"));
    }
    let store = |params: &Value| {
        let mut body = stored.clone();
        body["params"] = params.clone();
        stack
            .as_app(
                Method::PUT,
                &format!("/v1/connections/{name}/{user}/credentials"),
            )
            .json(&body)
            .send()
    };
    for p in entry["connection_params"].as_array().unwrap() {
        if p.get("default").is_some() {
            continue;
        }
        let key = p["name"].as_str().unwrap();
        for candidate in CANDIDATES {
            params[key] = json!(candidate);
            let text = store(&params).await.unwrap().text().await.unwrap();
            if !refuses(&text, key) {
                break;
            }
        }
    }
    let reply = store(&params).await.unwrap();
    if reply.status() != StatusCode::OK {
        return Err(format!(
            "store credentials: {}",
            reply.text().await.unwrap()
        ));
    }
    put_profile(stack, name, &profile_of(worn, &params)).await;

    stamped_call(stack, name, &user, &user).await?;
    disconnect(stack, name, &user, false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_entry_connects_calls_refreshes_and_revokes() {
    // Each walk forces two refreshes in a row.
    let options = StackOptions {
        service_args: vec!["--forced-refresh-interval".into(), "0s".into()],
        ..StackOptions::default()
    };
    let stack = Rc::new(Stack::start("catalog_conformance", options).await);
    let catalog: Value = stack
        .http
        .get(format!("{}/v1/catalog", stack.service_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entries: Vec<Value> = catalog["providers"].as_array().unwrap().clone();
    let count = |auth_type: &str| {
        entries
            .iter()
            .filter(|e| e["auth_type"] == auth_type)
            .count()
    };
    let counts = [
        ("oauth2", count("oauth2")),
        (
            "oauth2_client_credentials",
            count("oauth2_client_credentials"),
        ),
        ("api_key", count("api_key")),
        ("basic", count("basic")),
    ];
    assert!(counts[0].1 >= 150 && counts[1].1 >= 30, "{counts:?}");
    assert!(counts[2].1 + counts[3].1 >= 60, "{counts:?}");
    assert_eq!(
        counts.iter().map(|(_, n)| n).sum::<usize>(),
        entries.len(),
        "an auth type the walk does not know"
    );
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
        "{} entries ({counts:?}) walked in {:?}, {} failed",
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
            let error = match outcome {
                Ok(Ok(())) => panic!("{name}: a broken profile passed"),
                Ok(Err(e)) => e,
                Err(_) => "panicked".to_owned(),
            };
            format!("{error} {}", seen(&stack, &name).await)
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
    // Basic credentials stamped as a bearer token (what 14 basic entries said
    // before), an API key under another header, a client that authenticates
    // in the body where the provider wants Basic.
    let mut jira = entry_of("jira-basic");
    jira["header"]["format"] = json!("Bearer {token}");
    let refused = refusal("jira-basic", jira).await;
    assert!(refused.contains("API call without"), "{refused}");
    let mut anthropic = entry_of("anthropic");
    anthropic["header"]["name"] = json!("x-anthropic-key");
    let refused = refusal("anthropic", anthropic).await;
    assert!(refused.contains("API call without"), "{refused}");
    let mut gemini = entry_of("google-gemini");
    gemini["header"]["in"] = json!("header");
    let refused = refusal("google-gemini", gemini).await;
    assert!(refused.contains("API call without"), "{refused}");
    let mut spotify = entry_of("spotify-cc");
    spotify["client_auth"] = json!("body");
    let refused = refusal("spotify-cc", spotify).await;
    assert!(
        refused.contains("client authentication is not Body"),
        "{refused}"
    );
    let mut zoom = entry_of("zoom-cc");
    zoom["token_request_params"]["client_credentials"]["grant_type"] = json!("client_credentials");
    let refused = refusal("zoom-cc", zoom).await;
    assert!(refused.contains("account_credentials"), "{refused}");
    // A rotating provider whose client kept using the first refresh token:
    // the stand-in refuses it (Notion rotates).
    let mut notion = entry_of("notion");
    notion["refresh"]["rotation"] = json!(false);
    let refused = refusal("notion", notion).await;
    assert!(refused.contains("rotation true"), "{refused}");
}
