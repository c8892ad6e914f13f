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
    // `show` prints an entry with its references, field by field.
    let out = std::process::Command::new(bin)
        .args(["providers", "show", "hubspot"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let token_sources = shown["references"]["token_url"].as_array().unwrap();
    assert!(
        token_sources
            .iter()
            .any(|s| s.as_str().unwrap().starts_with("https://")),
        "{shown}"
    );
    assert!(shown["unverified"].is_array());
    let out = std::process::Command::new(bin)
        .args(["providers", "show", "nope"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

// Issue 15: every listed catalog error, fixed and proven through the code
// the service runs (connect, code exchange, refresh, disconnect) against a
// provider that records what it receives.

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::routing::any;
use axum::Router;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use url::Url;

/// One request the recording provider received.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    authorization: Option<String>,
    form: Vec<(String, String)>,
}

impl Seen {
    fn field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A provider on 127.0.0.1 that answers every path: `…/metadata` with a
/// Mailchimp data centre, any other GET or DELETE and `…/revoke…` with 200,
/// any other POST with fresh tokens.
#[derive(Clone)]
struct Recorder {
    base: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Recorder {
    async fn start() -> Self {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = seen.clone();
        let router = Router::new().fallback(any(
            move |method: Method, uri: axum::http::Uri, headers: HeaderMap, body: String| {
                let log = log.clone();
                async move {
                    let form = url::form_urlencoded::parse(body.as_bytes())
                        .map(|(k, v)| (k.into_owned(), v.into_owned()))
                        .collect();
                    let path = uri.path().to_owned();
                    let n = {
                        let mut log = log.lock().unwrap();
                        log.push(Seen {
                            method: method.to_string(),
                            path: path.clone(),
                            authorization: headers
                                .get(header::AUTHORIZATION)
                                .map(|v| v.to_str().unwrap().to_owned()),
                            form,
                        });
                        log.len()
                    };
                    let body = if path.ends_with("/metadata") {
                        json!({"dc": "us6", "api_endpoint": "https://us6.api.mailchimp.com"})
                    } else if method != Method::POST || path.contains("revoke") {
                        json!({})
                    } else {
                        json!({"access_token": format!("at-{n}"), "refresh_token": format!("rt-{n}"),
                               "token_type": "Bearer", "expires_in": 3600})
                    };
                    axum::Json(body)
                }
            },
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Self {
            base: format!("http://{addr}"),
            seen,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn at(&self, path: &str) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.path == path).collect()
    }
}

/// An app whose provider `name` is the catalog entry `name`, its OAuth
/// endpoints moved to the recorder (same paths), nothing else overridden.
async fn catalog_app(h: &Harness, rec: &Recorder, name: &str) -> ConnectedApp {
    let entry = h.get(&format!("/v1/catalog/{name}")).await.json();
    let (app_id, app_key) = h.create_app(&["https://app.test/done"]).await;
    let moved = |field: &Value| -> Value {
        match field.as_str() {
            Some(url) => {
                let path = url.split_once("://").unwrap().1;
                let path = &path[path.find('/').unwrap_or(path.len())..];
                json!(format!("{}{path}", rec.base))
            }
            None => Value::Null,
        }
    };
    let mut config = json!({"catalog": name, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                            "token_url": moved(&entry["token_url"])});
    for (field, key) in [("refresh_url", "refresh_url"), ("revocation_url", "url")] {
        let source = if field == "refresh_url" {
            &entry["refresh_url"]
        } else {
            &entry["revocation"][key]
        };
        if !source.is_null() {
            config[field] = moved(source);
        }
    }
    if !entry["post_exchange_metadata"].is_null() {
        config["metadata_url"] = moved(&entry["post_exchange_metadata"]["url"]);
    }
    let reply = h.put_provider(&app_id, name, config).await;
    assert_eq!(reply.status, StatusCode::OK, "{name}: {}", reply.text());
    ConnectedApp {
        app_id,
        app_key,
        provider: name.to_owned(),
    }
}

/// Connect → callback → confirm; returns the authorize URL the browser was
/// sent to.
async fn connect(h: &Harness, app: &ConnectedApp, user: &str, params: Value) -> Url {
    let (state, nonce, authorize) = h
        .start_connect_with(app, user, Some("https://app.test/done"), params)
        .await;
    let reply = h
        .callback(
            &format!("code=the-code&state={}", urlencode(&state)),
            Some(&nonce),
        )
        .await;
    assert_eq!(reply.status, StatusCode::FOUND, "{}", reply.text());
    h.confirm_return(app, user, &reply).await;
    authorize
}

async fn disconnect(h: &Harness, app: &ConnectedApp, user: &str) -> Value {
    let reply = h
        .send(
            Request::delete(format!("/v1/connections/{}/{user}", app.provider))
                .header("x-authstamp-app", &app.app_id)
                .header("x-authstamp-app-key", &app.app_key)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    reply.json()
}

fn entry(h_catalog: &Value, name: &str) -> Value {
    h_catalog["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("{name} is not in the catalog"))
        .clone()
}

#[tokio::test]
async fn monday_uses_oauth_2_1_with_pkce_required_refresh_and_revocation() {
    let h = Harness::new().await;
    let monday = entry(&h.get("/v1/catalog").await.json(), "monday");
    assert_eq!(
        monday["token_url"],
        "https://auth.monday.com/oauth_ms/oauth/token"
    );
    assert_eq!(monday["pkce"], "required");
    assert_eq!(monday["refresh"]["supported"], true);
    assert!(monday["revocation"]["url"].is_string());
    let rec = Recorder::start().await;
    let app = catalog_app(&h, &rec, "monday").await;
    let authorize = connect(&h, &app, "alice", json!({})).await;
    assert_eq!(
        query_param(&authorize, "code_challenge_method").as_deref(),
        Some("S256")
    );
    let exchange = &rec.at("/oauth_ms/oauth/token")[0];
    assert!(exchange.field("code_verifier").is_some(), "{exchange:?}");
}

#[tokio::test]
async fn notion_refresh_rotates() {
    let h = Harness::new().await;
    let notion = entry(&h.get("/v1/catalog").await.json(), "notion");
    assert_eq!(notion["refresh"]["rotation"], true);
}

#[tokio::test]
async fn intercom_revokes_with_the_token_as_bearer_on_its_regional_host() {
    let h = Harness::new().await;
    let intercom = entry(&h.get("/v1/catalog").await.json(), "intercom");
    assert_eq!(intercom["revocation"]["style"], "bearer");
    assert_eq!(
        intercom["revocation"]["url"],
        "https://{api_host}/auth/uninstall"
    );
    let rec = Recorder::start().await;
    let app = catalog_app(&h, &rec, "intercom").await;
    // A European workspace: authorize on its regional host.
    let authorize = connect(
        &h,
        &app,
        "alice",
        json!({"app_host": "app.eu.intercom.com", "api_host": "api.eu.intercom.io"}),
    )
    .await;
    assert_eq!(authorize.host_str(), Some("app.eu.intercom.com"));
    let lookup = h.lookup(&app, "alice", false).await.json();
    assert_eq!(
        lookup["upstream"]["authority"], "api.eu.intercom.io",
        "{lookup}"
    );
    let access = rec.at("/auth/eagle/token")[0].clone();
    assert_eq!(access.method, "POST");
    let reply = disconnect(&h, &app, "alice").await;
    assert_eq!(reply["revocation"], "revoked", "{reply}");
    let revoke = &rec.at("/auth/uninstall")[0];
    assert_eq!(revoke.method, "POST");
    assert!(
        revoke
            .authorization
            .as_deref()
            .is_some_and(|a| a.starts_with("Bearer at-")),
        "{revoke:?}"
    );
    assert!(
        revoke.form.is_empty(),
        "no client secret in a bearer revoke"
    );
}

#[tokio::test]
async fn hubspot_uses_the_dated_token_and_revoke_endpoints() {
    let h = Harness::new().await;
    let hubspot = entry(&h.get("/v1/catalog").await.json(), "hubspot");
    assert_eq!(
        hubspot["token_url"],
        "https://api.hubapi.com/oauth/2026-03/token"
    );
    assert_eq!(
        hubspot["revocation"]["url"],
        "https://api.hubapi.com/oauth/2026-03/token/revoke"
    );
    let rec = Recorder::start().await;
    let app = catalog_app(&h, &rec, "hubspot").await;
    connect(&h, &app, "alice", json!({})).await;
    assert_eq!(rec.at("/oauth/2026-03/token").len(), 1);
    assert_eq!(disconnect(&h, &app, "alice").await["revocation"], "revoked");
    assert_eq!(rec.at("/oauth/2026-03/token/revoke").len(), 1);
}

#[tokio::test]
async fn zoho_allows_every_products_api_host() {
    let h = Harness::new().await;
    let zoho = entry(&h.get("/v1/catalog").await.json(), "zoho");
    let hosts: Vec<&str> = zoho["api_hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for product in ["desk", "mail", "people", "calendar", "recruit"] {
        assert!(
            hosts.iter().any(|h| h.starts_with(&format!("{product}."))),
            "{product}: {hosts:?}"
        );
    }
}

#[tokio::test]
async fn slack_pkce_is_sent_only_when_the_app_opts_in() {
    let h = Harness::new().await;
    let slack = entry(&h.get("/v1/catalog").await.json(), "slack");
    assert_eq!(slack["pkce"], "opt_in");
    let rec = Recorder::start().await;
    let app = catalog_app(&h, &rec, "slack").await;
    let (_, _, authorize) = h.start_connect(&app, "alice", None).await;
    assert!(
        query_param(&authorize, "code_challenge").is_none(),
        "{authorize}"
    );
    // The app opted in at Slack and says so in its provider configuration.
    let reply = h
        .put_provider(
            &app.app_id,
            "slack",
            json!({"catalog": "slack", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                   "pkce": "supported"}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let (_, _, authorize) = h.start_connect(&app, "bob", None).await;
    assert!(
        query_param(&authorize, "code_challenge").is_some(),
        "{authorize}"
    );
}

/// Shopify's `expiring=1` and Zendesk's `expires_in` reach the code exchange
/// and every refresh.
#[tokio::test]
async fn token_request_params_reach_the_exchange_and_the_refresh() {
    for (name, params, field, value, token_path) in [
        (
            "shopify",
            json!({"shop": "acme"}),
            "expiring",
            "1",
            "/admin/oauth/access_token",
        ),
        (
            "zendesk",
            json!({"subdomain": "acme"}),
            "expires_in",
            "172800",
            "/oauth/tokens",
        ),
    ] {
        let h = Harness::new().await;
        let rec = Recorder::start().await;
        let app = catalog_app(&h, &rec, name).await;
        connect(&h, &app, "alice", params).await;
        let reply = h.lookup(&app, "alice", true).await;
        assert_eq!(reply.status, StatusCode::OK, "{name}: {}", reply.text());
        let calls = rec.at(token_path);
        let grants: Vec<&str> = calls
            .iter()
            .map(|c| c.field("grant_type").unwrap())
            .collect();
        assert_eq!(grants, ["authorization_code", "refresh_token"], "{name}");
        for call in &calls {
            assert_eq!(call.field(field), Some(value), "{name}: {call:?}");
        }
    }
}

#[tokio::test]
async fn salesforce_login_hosts_include_the_partitioned_domains() {
    let h = Harness::new().await;
    let salesforce = entry(&h.get("/v1/catalog").await.json(), "salesforce");
    let param = &salesforce["connection_params"][0];
    assert_eq!(param["name"], "login_host");
    let re = regex::Regex::new(param["pattern"].as_str().unwrap()).unwrap();
    for ok in [
        "login.salesforce.com",
        "test.salesforce.com",
        "acme.my.salesforce.com",
        "acme-dev-ed.develop.my.salesforce.com",
        "acme--uat.sandbox.my.salesforce.com",
        "site-1234.scratch.my.salesforce.com",
        "trail-abc.trailblaze.my.salesforce.com",
    ] {
        assert!(re.is_match(ok), "{ok}");
    }
    for bad in [
        "evil.example",
        "acme.my.salesforce.com.evil.example",
        "salesforce.com",
    ] {
        assert!(!re.is_match(bad), "{bad}");
    }
}

#[tokio::test]
async fn figma_refreshes_at_its_refresh_url() {
    let h = Harness::new().await;
    let figma = entry(&h.get("/v1/catalog").await.json(), "figma");
    assert_eq!(
        figma["refresh_url"],
        "https://api.figma.com/v1/oauth/refresh"
    );
    let rec = Recorder::start().await;
    let app = catalog_app(&h, &rec, "figma").await;
    connect(&h, &app, "alice", json!({})).await;
    let reply = h.lookup(&app, "alice", true).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(rec.at("/v1/oauth/token").len(), 1, "the exchange only");
    let refresh = &rec.at("/v1/oauth/refresh");
    assert_eq!(refresh.len(), 1);
    assert_eq!(refresh[0].field("grant_type"), Some("refresh_token"));
}

#[tokio::test]
async fn calendly_revokes_with_client_credentials_in_the_body() {
    let h = Harness::new().await;
    let rec = Recorder::start().await;
    let app = catalog_app(&h, &rec, "calendly").await;
    connect(&h, &app, "alice", json!({})).await;
    assert_eq!(disconnect(&h, &app, "alice").await["revocation"], "revoked");
    let revoke = &rec.at("/oauth/revoke")[0];
    assert_eq!(revoke.field("client_id"), Some(CLIENT_ID));
    assert_eq!(revoke.field("client_secret"), Some(CLIENT_SECRET));
    assert!(revoke.field("token").is_some_and(|t| t.starts_with("rt-")));
    assert!(revoke.authorization.is_none(), "{revoke:?}");
}

#[tokio::test]
async fn stripe_sends_response_type_once() {
    let h = Harness::new().await;
    let rec = Recorder::start().await;
    let app = catalog_app(&h, &rec, "stripe").await;
    let (_, _, authorize) = h.start_connect(&app, "alice", None).await;
    let response_types = authorize
        .query_pairs()
        .filter(|(k, _)| k == "response_type")
        .count();
    assert_eq!(response_types, 1, "{authorize}");
}

#[tokio::test]
async fn discord_supports_pkce() {
    let h = Harness::new().await;
    let rec = Recorder::start().await;
    let app = catalog_app(&h, &rec, "discord").await;
    let (_, _, authorize) = h.start_connect(&app, "alice", None).await;
    assert_eq!(
        query_param(&authorize, "code_challenge_method").as_deref(),
        Some("S256")
    );
}

#[tokio::test]
async fn mailchimp_metadata_fills_the_data_centre_of_the_api_host() {
    let h = Harness::new().await;
    let rec = Recorder::start().await;
    let app = catalog_app(&h, &rec, "mailchimp").await;
    connect(&h, &app, "alice", json!({})).await;
    let metadata = &rec.at("/oauth2/metadata")[0];
    assert_eq!(metadata.method, "GET");
    assert!(
        metadata
            .authorization
            .as_deref()
            .is_some_and(|a| a.starts_with("OAuth at-")),
        "{metadata:?}"
    );
    // The token lookup sends it to the data centre's API host.
    let lookup = h.lookup(&app, "alice", false).await;
    assert_eq!(lookup.status, StatusCode::OK, "{}", lookup.text());
    assert_eq!(
        lookup.json()["upstream"]["authority"],
        "us6.api.mailchimp.com",
        "{}",
        lookup.text()
    );
}

/// `docs/providers.md` carries the catalog's table as the code builds it.
#[test]
fn docs_providers_md_is_the_catalog() {
    const START: &str = "<!-- generated: catalog table -->\n";
    const END: &str = "<!-- end of generated table -->";
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/providers.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let (head, rest) = text.split_once(START).expect("start marker");
    let (_, tail) = rest.split_once(END).expect("end marker");
    let catalog = authstamp_token_service::catalog::embedded().unwrap();
    let expected = format!("{head}{START}{}{END}{tail}", catalog.markdown_table());
    if std::env::var_os("AUTHSTAMP_WRITE_DOCS").is_some() {
        std::fs::write(&path, &expected).unwrap();
    }
    assert!(
        text == expected,
        "docs/providers.md is not the catalog: regenerate it (see the file)"
    );
}
