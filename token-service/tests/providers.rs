//! Provider configurations made from the catalog, connection parameters in
//! URLs and hosts, and OpenID Connect / RFC 8414 discovery.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use axum::http::{Method, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn a_catalog_entry_needs_only_the_client_credentials() {
    let h = Harness::new().await;
    let (app_id, app_key) = h.create_app(&["https://app.test/done"]).await;
    let reply = h
        .put_provider(
            &app_id,
            "zendesk",
            json!({"catalog": "zendesk", "client_id": "zd-client", "client_secret": "zd-secret"}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let view = reply.json();
    assert_eq!(view["catalog"], "zendesk");
    assert_eq!(view["display_name"], "Zendesk");
    assert_eq!(view["auth_type"], "oauth2");
    assert_eq!(
        view["authorize_url"],
        "https://{subdomain}.zendesk.com/oauth/authorizations/new"
    );
    assert_eq!(
        view["scopes"],
        json!(["read"]),
        "the catalog's default scopes"
    );
    assert_eq!(view["client_auth"], "body");
    assert_eq!(view["api_hosts"], json!(["{subdomain}.zendesk.com"]));
    assert_eq!(view["connection_params"][0]["name"], "subdomain");
    assert_eq!(view["client_secret_set"], true);
    assert!(!reply.text().contains("zd-secret"));
    let app = ConnectedApp {
        app_id,
        app_key,
        provider: "zendesk".into(),
    };

    // The subdomain is required and must match the entry's pattern: it
    // decides where the client secret and the tokens go.
    for bad in [
        json!({}),
        json!({"subdomain": "evil.com"}),
        json!({"subdomain": "acme.evil.com#"}),
        json!({"subdomain": "acme/../x"}),
        json!({"subdomain": "acme", "other": "x"}),
    ] {
        h.as_app(
            &app.app_id,
            &app.app_key,
            "/v1/connect-sessions",
            json!({"provider": "zendesk", "user": "alice", "params": bad}),
        )
        .await
        .assert_error(400, "bad_request");
    }
    let (_, _, location) = h
        .start_connect_with(&app, "alice", None, json!({"subdomain": "acme"}))
        .await;
    assert_eq!(location.host_str(), Some("acme.zendesk.com"));
    assert_eq!(location.path(), "/oauth/authorizations/new");
    assert_eq!(query_param(&location, "scope").as_deref(), Some("read"));
    assert_eq!(
        query_param(&location, "client_id").as_deref(),
        Some("zd-client")
    );
}

#[tokio::test]
async fn overrides_replace_only_what_they_name() {
    let h = Harness::new().await;
    let (app_id, _) = h.create_app(&[]).await;
    let reply = h
        .put_provider(
            &app_id,
            "my-slack",
            json!({"catalog": "slack", "client_id": "1.2", "client_secret": "s",
                   "scopes": ["chat:write", "channels:read"], "display_name": "Our Slack"}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let view = reply.json();
    assert_eq!(view["scopes"], json!(["chat:write", "channels:read"]));
    assert_eq!(view["scope_separator"], ",");
    assert_eq!(view["display_name"], "Our Slack");
    assert_eq!(view["token_url"], "https://slack.com/api/oauth.v2.access");
    assert_eq!(
        view["token_response_quirks"],
        json!(["slack_authed_user", "error_in_200"])
    );
    let reply = h
        .admin(
            Method::GET,
            &format!("/v1/apps/{app_id}/providers/my-slack"),
            None,
        )
        .await;
    assert_eq!(reply.json()["catalog"], "slack");

    for (body, expected) in [
        (
            json!({"catalog": "nope", "client_id": "a", "client_secret": "b"}),
            "no provider",
        ),
        (
            json!({"catalog": "slack", "client_id": "a"}),
            "client_secret is required",
        ),
        (
            json!({"catalog": "slack", "client_secret": "b"}),
            "client_id is required",
        ),
        (
            json!({"catalog": "zendesk", "client_id": "a", "client_secret": "b",
                   "api_hosts": ["evil.example"]}),
            "not in api_hosts",
        ),
        (
            json!({"catalog": "zendesk", "client_id": "a", "client_secret": "b",
                   "token_url": "https://{nope}.zendesk.com/t"}),
            "unknown placeholder",
        ),
        (
            json!({"client_id": "a", "client_secret": "b", "api_base_url": "https://api.x.test"}),
            "authorize_url is required",
        ),
    ] {
        let reply = h.put_provider(&app_id, "p", body.clone()).await;
        reply.assert_error(400, "bad_request");
        assert!(reply.text().contains(expected), "{body}: {}", reply.text());
    }
}

#[tokio::test]
async fn connection_parameters_reach_the_stamped_host() {
    let h = Harness::new().await;
    let (app_id, app_key) = h.create_app(&["https://app.test/done"]).await;
    let mut config = h.provider_config();
    config["api_base_url"] = json!("https://{tenant}.api.provider.test/v2");
    config["connection_params"] = json!([
        {"name": "tenant", "description": "the tenant", "pattern": "^[a-z]{1,20}$"}
    ]);
    let reply = h.put_provider(&app_id, "tenanted", config).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(
        reply.json()["api_hosts"],
        json!(["{tenant}.api.provider.test"])
    );
    let app = ConnectedApp {
        app_id,
        app_key,
        provider: "tenanted".into(),
    };
    let (state, nonce, _) = h
        .start_connect_with(
            &app,
            "alice",
            Some("https://app.test/done"),
            json!({"tenant": "acme"}),
        )
        .await;
    let reply = h
        .callback(&format!("code=c&state={}", urlencode(&state)), Some(&nonce))
        .await;
    h.confirm_return(&app, "alice", &reply).await;
    let reply = h.lookup(&app, "alice", false).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let body = reply.json();
    assert_eq!(body["upstream"]["authority"], "acme.api.provider.test");
    assert_eq!(body["upstream"]["base_path"], "/v2");
}

/// A tiny issuer serving one metadata document.
async fn issuer(document: impl Fn(&str) -> Value + Send + Sync + 'static) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let body = document(&base);
    let router = Router::new().route(
        "/.well-known/openid-configuration",
        get(move || {
            let body = body.clone();
            async move { Json(body) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    base
}

#[tokio::test]
async fn discovery_fills_the_urls_of_a_generic_provider() {
    let h = Harness::new().await;
    let (app_id, _) = h.create_app(&[]).await;
    let base = issuer(|base| {
        json!({
            "issuer": base,
            "authorization_endpoint": format!("{base}/authorize"),
            "token_endpoint": format!("{base}/token"),
            "revocation_endpoint": format!("{base}/revoke"),
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_post"],
        })
    })
    .await;
    let reply = h
        .put_provider(
            &app_id,
            "oidc",
            json!({"issuer": base, "client_id": "c", "client_secret": "s",
                   "api_base_url": "https://api.oidc.test"}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let view = reply.json();
    assert_eq!(view["authorize_url"], format!("{base}/authorize"));
    assert_eq!(view["token_url"], format!("{base}/token"));
    assert_eq!(view["revocation_url"], format!("{base}/revoke"));
    assert_eq!(view["revocation_style"], "rfc7009");
    assert_eq!(
        view["client_auth"], "body",
        "only client_secret_post offered"
    );
    assert_eq!(view["issuer"], base);
    // A given URL wins over the discovered one.
    let reply = h
        .put_provider(
            &app_id,
            "oidc",
            json!({"issuer": base, "client_id": "c", "client_secret": "s",
                   "token_url": "https://other.test/token", "api_base_url": "https://api.oidc.test"}),
        )
        .await;
    assert_eq!(reply.json()["token_url"], "https://other.test/token");

    // A document that names another issuer is refused.
    let liar = issuer(|_| {
        json!({"issuer": "https://evil.test", "authorization_endpoint": "https://evil.test/a",
               "token_endpoint": "https://evil.test/t"})
    })
    .await;
    let reply = h
        .put_provider(
            &app_id,
            "liar",
            json!({"issuer": liar, "client_id": "c", "client_secret": "s",
                   "api_base_url": "https://api.oidc.test"}),
        )
        .await;
    reply.assert_error(400, "bad_request");
    assert!(reply.text().contains("another issuer"), "{}", reply.text());
    // Nothing there at all.
    let reply = h
        .put_provider(
            &app_id,
            "none",
            json!({"issuer": "http://127.0.0.1:9", "client_id": "c", "client_secret": "s",
                   "api_base_url": "https://api.oidc.test"}),
        )
        .await;
    reply.assert_error(400, "bad_request");
}

#[tokio::test]
async fn api_hosts_and_user_tokens_named_by_the_token_response_are_used() {
    let h = Harness::new().await;
    let (app_id, app_key) = h.create_app(&["https://app.test/done"]).await;
    // Salesforce's API host is the `instance_url` of the token response.
    let reply = h
        .put_provider(
            &app_id,
            "salesforce",
            json!({"catalog": "salesforce", "client_id": "sf", "client_secret": "s",
                   "token_url": h.provider.token_url}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let salesforce = ConnectedApp {
        app_id: app_id.clone(),
        app_key: app_key.clone(),
        provider: "salesforce".into(),
    };
    let connect = |user: &'static str, instance_url: &'static str| {
        let (h, app) = (&h, &salesforce);
        async move {
            h.provider.respond(move |_| {
                (
                    200,
                    json!({"access_token": "at-sf", "instance_url": instance_url,
                             "token_type": "Bearer", "issued_at": "1"}),
                )
            });
            let (state, nonce, location) = h
                .start_connect_with(app, user, Some("https://app.test/done"), json!({}))
                .await;
            assert_eq!(location.host_str(), Some("login.salesforce.com"));
            let reply = h
                .callback(&format!("code=c&state={}", urlencode(&state)), Some(&nonce))
                .await;
            h.confirm_return(app, user, &reply).await;
        }
    };
    connect("alice", "https://acme.my.salesforce.com").await;
    let reply = h.lookup(&salesforce, "alice", false).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(
        reply.json()["upstream"]["authority"],
        "acme.my.salesforce.com"
    );
    // A host outside Salesforce's domains is never used: the lookup fails
    // naming the missing host instead of sending the token there.
    connect("mallory", "https://evil.example").await;
    let reply = h.lookup(&salesforce, "mallory", false).await;
    reply.assert_error(500, "internal");
    assert!(reply.text().contains("instance_host"), "{}", reply.text());
    assert!(!reply.text().contains("evil.example"), "{}", reply.text());

    // Slack: the connecting user's own token comes under `authed_user`.
    let reply = h
        .put_provider(
            &app_id,
            "slack",
            json!({"catalog": "slack", "client_id": "sl", "client_secret": "s",
                   "token_url": h.provider.token_url}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    h.provider.respond(|_| {
        (
            200,
            json!({"ok": true, "access_token": "xoxb-bot", "token_type": "bot",
                     "authed_user": {"id": "U1", "access_token": "xoxp-user",
                                     "token_type": "user", "scope": "chat:write"}}),
        )
    });
    let slack = ConnectedApp {
        app_id,
        app_key,
        provider: "slack".into(),
    };
    let (state, nonce, _) = h
        .start_connect_with(&slack, "bob", Some("https://app.test/done"), json!({}))
        .await;
    let reply = h
        .callback(&format!("code=c&state={}", urlencode(&state)), Some(&nonce))
        .await;
    h.confirm_return(&slack, "bob", &reply).await;
    let reply = h.lookup(&slack, "bob", false).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["header"]["value"], "Bearer xoxp-user");

    // QuickBooks: the company id comes in the redirect and goes in the API path.
    let reply = h
        .put_provider(
            &slack.app_id,
            "quickbooks",
            json!({"catalog": "quickbooks", "client_id": "qb", "client_secret": "s",
                   "token_url": h.provider.token_url}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    h.provider.respond(|_| {
        (
            200,
            json!({"access_token": "at-qb", "token_type": "bearer", "expires_in": 3600}),
        )
    });
    let quickbooks = ConnectedApp {
        app_id: slack.app_id.clone(),
        app_key: slack.app_key.clone(),
        provider: "quickbooks".into(),
    };
    for (user, realm, expected) in [
        ("carol", "9130347", Some("/v3/company/9130347")),
        ("dave", "../../evil", None),
    ] {
        let (state, nonce, _) = h
            .start_connect_with(&quickbooks, user, Some("https://app.test/done"), json!({}))
            .await;
        let query = format!(
            "code=c&state={}&realmId={}",
            urlencode(&state),
            urlencode(realm)
        );
        let reply = h.callback(&query, Some(&nonce)).await;
        h.confirm_return(&quickbooks, user, &reply).await;
        let reply = h.lookup(&quickbooks, user, false).await;
        match expected {
            Some(base_path) => {
                assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
                assert_eq!(reply.json()["upstream"]["base_path"], base_path);
                assert_eq!(
                    reply.json()["upstream"]["authority"],
                    "quickbooks.api.intuit.com"
                );
            }
            None => {
                reply.assert_error(500, "internal");
                assert!(reply.text().contains("realm_id"), "{}", reply.text());
            }
        }
    }
}
