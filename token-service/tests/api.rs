//! The HTTP API end to end through `app()`, with a fake provider.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use authstamp_token_service::config::PublicUrl;
use authstamp_token_service::secrets::sha256;
use authstamp_token_service::vault::Vault;
use authstamp_token_service::{AppState, StateOptions};
use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use base64::Engine as _;
use common::*;
use serde_json::json;
use sha2::Digest as _;

#[tokio::test]
async fn health_and_unknown_routes() {
    let h = Harness::new().await;
    let reply = h.get("/healthz").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json(), json!({"status": "ok"}));
    h.get("/nope").await.assert_error(404, "not_found");
    let reply = h
        .send(Request::delete("/healthz").body(Body::empty()).unwrap())
        .await;
    reply.assert_error(405, "method_not_allowed");
    assert_eq!(reply.header("allow"), Some("GET,HEAD"));
}

#[tokio::test]
async fn admin_api_requires_the_admin_token() {
    let h = Harness::new().await;
    let post = |auth: Option<String>| {
        let mut r = Request::post("/v1/apps").header(header::CONTENT_TYPE, "application/json");
        if let Some(a) = auth {
            r = r.header(header::AUTHORIZATION, a);
        }
        r.body(Body::from("{}")).unwrap()
    };
    h.send(post(None)).await.assert_error(401, "unauthorized");
    h.send(post(Some("Bearer wrong".into())))
        .await
        .assert_error(401, "unauthorized");
    h.send(post(Some("Bearer ".into())))
        .await
        .assert_error(401, "unauthorized");
    h.send(post(Some(format!("Bearer {ADMIN_TOKEN}x"))))
        .await
        .assert_error(401, "unauthorized");
    h.send(post(Some(format!("Basic {ADMIN_TOKEN}"))))
        .await
        .assert_error(401, "unauthorized");
    let ok = h.send(post(Some(format!("Bearer {ADMIN_TOKEN}")))).await;
    assert_eq!(ok.status, StatusCode::CREATED, "{}", ok.text());
    // GET is admin-only too.
    h.get("/v1/apps/app_x/providers/fake")
        .await
        .assert_error(401, "unauthorized");
}

#[tokio::test]
async fn without_an_admin_token_the_admin_api_is_closed() {
    let h = Harness::with(Options {
        admin_token: None,
        ..Options::default()
    })
    .await;
    h.admin(Method::POST, "/v1/apps", Some(json!({})))
        .await
        .assert_error(401, "unauthorized");
}

both_backends!(
    app_keys_and_client_secrets_are_never_stored_in_clear,
    secrets_never_in_clear
);

async fn secrets_never_in_clear(backend: Backend) {
    let h = Harness::with(Options::on(backend)).await;
    let app = h.app_with_provider().await;
    assert!(app.app_id.starts_with("app_"));
    let key_body = app.app_key.strip_prefix("ask_").unwrap();
    assert_eq!(key_body.len(), 43);
    assert_eq!(
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(key_body)
            .unwrap()
            .len(),
        32
    );
    let (stored,): (Vec<u8>,) = sqlx::query_as("SELECT key_hash FROM apps WHERE app_id = $1")
        .bind(&app.app_id)
        .fetch_one(h.state.db.pool())
        .await
        .unwrap();
    assert_eq!(stored, sha256(app.app_key.as_bytes()).to_vec());

    h.connect(&app, "alice").await;
    assert!(
        h.stores_in_clear(&app.app_id).await,
        "sanity: the grep sees the data"
    );
    for secret in [
        app.app_key.as_str(),
        key_body,
        CLIENT_SECRET,
        "top-secret-client-value",
        "at-1",
        "rt-1",
    ] {
        assert!(
            !h.stores_in_clear(secret).await,
            "{secret} is in the database"
        );
    }
}

#[tokio::test]
async fn empty_body_creates_an_app_and_bad_input_is_a_json_400() {
    let h = Harness::new().await;
    let reply = h
        .send(
            Request::post("/v1/apps")
                .header(header::AUTHORIZATION, format!("Bearer {ADMIN_TOKEN}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    h.admin(
        Method::POST,
        "/v1/apps",
        Some(json!({"allowed_return_to": ["not a url"]})),
    )
    .await
    .assert_error(400, "bad_request");
    h.admin(
        Method::POST,
        "/v1/apps",
        Some(json!({"allowed_return_to": ["https://u:p@app.test/"]})),
    )
    .await
    .assert_error(400, "bad_request");
    h.admin(Method::POST, "/v1/apps", Some(json!({"name": 5})))
        .await
        .assert_error(400, "bad_request");
}

#[tokio::test]
async fn provider_put_and_get_never_return_the_secret() {
    let h = Harness::new().await;
    let (app_id, _) = h.create_app(&[]).await;
    let put = h
        .put_provider(
            &app_id,
            "fake",
            json!({
                "client_id": "cid",
                "client_secret": "the-client-secret-value",
                "authorize_url": "https://p.test/authorize",
                "token_url": "https://p.test/token",
                "api_base_url": "https://api.p.test",
            }),
        )
        .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.text());
    let get = h
        .admin(
            Method::GET,
            &format!("/v1/apps/{app_id}/providers/fake"),
            None,
        )
        .await;
    assert_eq!(get.status, StatusCode::OK);
    for reply in [&put, &get] {
        assert!(!reply.text().contains("the-client-secret-value"));
        let body = reply.json();
        assert!(body.get("client_secret").is_none(), "{body}");
        assert_eq!(body["client_secret_set"], true);
        assert_eq!(
            body["redirect_uri"],
            "http://authstamp.test/v1/oauth/callback"
        );
        assert_eq!(body["client_id"], "cid");
        assert_eq!(body["scopes"], json!([]));
        assert_eq!(body["scope_separator"], " ");
        assert_eq!(body["client_auth"], "basic");
        assert_eq!(
            body["header"],
            json!({"name": "authorization", "format": "Bearer {token}"})
        );
        assert_eq!(body["provider"], "fake");
        assert_eq!(body["app_id"], app_id.as_str());
    }
    // Replacing keeps one row and takes the new values.
    let mut config = h.provider_config();
    config["client_auth"] = json!("body");
    config["header"] = json!({"name": "x-api-key", "format": "{token}"});
    let put = h.put_provider(&app_id, "fake", config).await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.text());
    assert_eq!(put.json()["client_auth"], "body");
    assert_eq!(put.json()["header"]["name"], "x-api-key");
    assert_eq!(put.json()["scopes"], json!(["read", "write"]));

    h.admin(
        Method::GET,
        &format!("/v1/apps/{app_id}/providers/other"),
        None,
    )
    .await
    .assert_error(404, "not_found");
}

#[tokio::test]
async fn provider_validation_errors_are_json_400s() {
    let h = Harness::new().await;
    let (app_id, _) = h.create_app(&[]).await;
    let base = h.provider_config();
    let with = |field: &str, value: serde_json::Value| {
        let mut c = base.clone();
        c[field] = value;
        c
    };
    let without = |field: &str| {
        let mut c = base.clone();
        c.as_object_mut().unwrap().remove(field);
        c
    };
    let cases = [
        ("fake", with("authorize_url", json!("ftp://p.test/a"))),
        (
            "fake",
            with("authorize_url", json!("https://user:pw@p.test/a")),
        ),
        (
            "fake",
            with("token_url", json!("https://p.test/token#frag")),
        ),
        ("fake", with("token_url", json!("/token"))),
        (
            "fake",
            with("api_base_url", json!("https://api.p.test/v1?x=1")),
        ),
        (
            "fake",
            with(
                "header",
                json!({"name": "Authorization", "format": "Bearer {token}"}),
            ),
        ),
        (
            "fake",
            with(
                "header",
                json!({"name": "authorization", "format": "Bearer token"}),
            ),
        ),
        (
            "fake",
            with(
                "header",
                json!({"name": "authorization", "format": "{token} {token}"}),
            ),
        ),
        (
            "fake",
            with(
                "header",
                json!({"name": "authorization", "format": "Bearer {token}\r\nx: y"}),
            ),
        ),
        // The rules of `authstamp_protocol::credential` and `::upstream`,
        // the ones the filter applies before it stamps.
        (
            "fake",
            with(
                "header",
                json!({"name": "proxy-authorization", "format": "Bearer {token}"}),
            ),
        ),
        (
            "fake",
            with(
                "header",
                json!({"name": "x-authstamp-route", "format": "{token}"}),
            ),
        ),
        (
            "fake",
            with(
                "header",
                json!({"name": "a".repeat(65), "format": "{token}"}),
            ),
        ),
        (
            "fake",
            with(
                "header",
                json!({"name": "api key", "format": "{token}", "in": "query"}),
            ),
        ),
        (
            "fake",
            with("api_base_url", json!("https://api.p.test/v1//x")),
        ),
        ("fake", with("client_auth", json!("digest"))),
        ("fake", with("client_secret", json!(""))),
        ("fake", with("scopes", json!(["a b"]))),
        ("fake", with("unknown_field", json!(1))),
        ("fake", without("client_id")),
        ("fake", without("token_url")),
        ("Fake", base.clone()),
        ("-fake", base.clone()),
    ];
    for (name, config) in cases {
        let reply = h.put_provider(&app_id, name, config.clone()).await;
        reply.assert_error(400, "bad_request");
        assert!(!reply.text().contains(CLIENT_SECRET), "{}", reply.text());
    }
    // Not JSON, wrong content type, too large.
    let raw = |content_type: &str, body: Body| {
        Request::put(format!("/v1/apps/{app_id}/providers/fake"))
            .header(header::AUTHORIZATION, format!("Bearer {ADMIN_TOKEN}"))
            .header(header::CONTENT_TYPE, content_type)
            .body(body)
            .unwrap()
    };
    h.send(raw("application/json", Body::from("{not json")))
        .await
        .assert_error(400, "bad_request");
    h.send(raw("text/plain", Body::from(base.to_string())))
        .await
        .assert_error(415, "unsupported_media_type");
    let mut big = base.clone();
    big["client_id"] = json!("x".repeat(70 * 1024));
    h.send(raw("application/json", Body::from(big.to_string())))
        .await
        .assert_error(413, "payload_too_large");
    // Unknown app.
    h.put_provider("app_nope", "fake", base.clone())
        .await
        .assert_error(404, "not_found");
}

#[tokio::test]
async fn app_authentication_errors() {
    let h = Harness::new().await;
    let app = h.app_with_provider().await;
    let body = json!({"provider": "fake", "user": "alice"});
    // The connect session on the app listener, the lookup on the filter
    // listener with the filter credential: the app key is checked on both.
    for (path, to_filter) in [("/v1/connect-sessions", false), ("/v1/token-lookup", true)] {
        let router = if to_filter {
            h.filter_router.clone()
        } else {
            h.router.clone()
        };
        let send = |mut request: Request<Body>| {
            if to_filter {
                request.headers_mut().insert(
                    header::AUTHORIZATION,
                    format!("Bearer {FILTER_TOKEN}").parse().unwrap(),
                );
            }
            send_to(router.clone(), request)
        };
        send(app_request("app_unknown", &app.app_key, path, body.clone()))
            .await
            .assert_error(401, "unknown_app");
        send(app_request(&app.app_id, "ask_wrong", path, body.clone()))
            .await
            .assert_error(401, "bad_app_key");
        let missing_key = Request::post(path)
            .header("x-authstamp-app", &app.app_id)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        send(missing_key).await.assert_error(400, "bad_request");
        let missing_app = Request::post(path)
            .header("x-authstamp-app-key", &app.app_key)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        send(missing_app).await.assert_error(400, "bad_request");
    }
    // Another app's key does not open this app.
    let (_, other_key) = h.create_app(&[]).await;
    h.as_filter(&app.app_id, &other_key, "/v1/token-lookup", body)
        .await
        .assert_error(401, "bad_app_key");
}

/// Issue 10 item 2: an app key alone gets no token from anywhere. The app
/// listener has no lookup route; the filter listener wants the filter
/// credential, which an app key, the admin token or a guess is not.
#[tokio::test]
async fn an_app_key_alone_gets_no_token() {
    let h = Harness::new().await;
    let app = h.app_with_provider().await;
    h.connect(&app, "alice").await;
    let body = json!({"provider": "fake", "user": "alice"});

    for method in [Method::POST, Method::GET] {
        let mut request = app_request(&app.app_id, &app.app_key, "/v1/token-lookup", body.clone());
        *request.method_mut() = method.clone();
        let reply = h.send(request).await;
        reply.assert_error(404, "not_found");
        assert!(!reply.text().contains("at-1"), "{method}: {}", reply.text());
    }

    let no_credential = app_request(&app.app_id, &app.app_key, "/v1/token-lookup", body.clone());
    let reply = h.send_filter(no_credential).await;
    reply.assert_error(401, "unauthorized");
    assert!(!reply.text().contains("at-1"), "{}", reply.text());
    for bearer in [
        format!("Bearer {}", app.app_key),
        format!("Bearer {ADMIN_TOKEN}"),
        format!("Bearer {FILTER_TOKEN}x"),
        format!("Basic {FILTER_TOKEN}"),
        "Bearer ".to_owned(),
    ] {
        let mut request = app_request(&app.app_id, &app.app_key, "/v1/token-lookup", body.clone());
        request
            .headers_mut()
            .insert(header::AUTHORIZATION, bearer.parse().unwrap());
        let reply = h.send_filter(request).await;
        reply.assert_error(401, "unauthorized");
        assert!(!reply.text().contains("at-1"), "{bearer}: {}", reply.text());
    }
    // Nothing else is served there, and not even a 404 without the credential.
    h.send_filter(Request::get("/healthz").body(Body::empty()).unwrap())
        .await
        .assert_error(401, "unauthorized");
    let mut admin_path = Request::get("/v1/apps").body(Body::empty()).unwrap();
    admin_path.headers_mut().insert(
        header::AUTHORIZATION,
        format!("Bearer {FILTER_TOKEN}").parse().unwrap(),
    );
    h.send_filter(admin_path)
        .await
        .assert_error(404, "not_found");

    // The filter's credential with the app's key: the token.
    let reply = h.lookup(&app, "alice", false).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["header"]["value"], "Bearer at-1");
}

#[tokio::test]
async fn without_a_filter_token_every_lookup_is_refused() {
    let h = Harness::new().await;
    let app = h.app_with_provider().await;
    h.connect(&app, "alice").await;
    let options = StateOptions::new(PublicUrl::parse(PUBLIC_URL).unwrap());
    assert!(options.filter_token.is_none());
    let state = AppState::new(h.state.db.clone(), Vault::new(&h.master_key), options).unwrap();
    let reply = send_to(
        authstamp_token_service::filter_app(state),
        h.lookup_request(&app, "alice", false),
    )
    .await;
    reply.assert_error(401, "unauthorized");
}

#[tokio::test]
async fn connect_sessions_validate_their_input() {
    let h = Harness::new().await;
    let app = h.app_with_provider().await;
    let post =
        |body: serde_json::Value| h.as_app(&app.app_id, &app.app_key, "/v1/connect-sessions", body);
    post(json!({"provider": "other", "user": "alice"}))
        .await
        .assert_error(404, "unknown_provider");
    post(json!({"provider": "fake", "user": ""}))
        .await
        .assert_error(400, "bad_request");
    post(json!({"provider": "fake", "user": "a\u{7}b"}))
        .await
        .assert_error(400, "bad_request");
    post(json!({"provider": "fake", "user": "x".repeat(257)}))
        .await
        .assert_error(400, "bad_request");
    post(json!({"provider": "fake"}))
        .await
        .assert_error(400, "bad_request");
    for bad in [
        "https://evil.test/done",
        "https://app.test/donex",
        "http://app.test/done",
        "https://app.test:444/done",
        "https://app.test/",
        "not a url",
    ] {
        post(json!({"provider": "fake", "user": "alice", "return_to": bad}))
            .await
            .assert_error(400, "bad_request");
    }
    let reply = post(
        json!({"provider": "fake", "user": "alice", "return_to": "https://app.test/done/x?y=1"}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    let body = reply.json();
    let url = body["connect_url"].as_str().unwrap();
    let token = url
        .strip_prefix("http://authstamp.test/v1/connect/")
        .unwrap();
    assert_eq!(token.len(), 43);
    let now = authstamp_token_service::db::now();
    let expires_at = body["expires_at"].as_i64().unwrap();
    assert!(
        (now + 590..=now + 610).contains(&expires_at),
        "{expires_at}"
    );
    // Only the hash of the session token is stored.
    assert!(!contains(&h.raw_database(), token.as_bytes()));
}

#[tokio::test]
async fn full_connect_flow_then_lookup() {
    let h = Harness::new().await;
    let app = h.app_with_provider().await;
    let (state, nonce, location) = h
        .start_connect(&app, "alice", Some("https://app.test/done"))
        .await;

    // The authorize redirect.
    assert_eq!(location.host_str(), Some("provider.test"));
    assert_eq!(location.path(), "/oauth/authorize");
    let param = |name| query_param(&location, name);
    assert_eq!(
        param("access_type").as_deref(),
        Some("offline"),
        "existing params kept"
    );
    assert_eq!(param("prompt").as_deref(), Some("consent"));
    assert_eq!(param("response_type").as_deref(), Some("code"));
    assert_eq!(param("client_id").as_deref(), Some(CLIENT_ID));
    assert_eq!(
        param("redirect_uri").as_deref(),
        Some("http://authstamp.test/v1/oauth/callback")
    );
    assert_eq!(
        param("scope").as_deref(),
        Some("read,write"),
        "joined with the separator"
    );
    assert_eq!(param("code_challenge_method").as_deref(), Some("S256"));
    let challenge = param("code_challenge").unwrap();
    assert_eq!(challenge.len(), 43);
    assert_eq!(state.len(), 43);
    assert_eq!(
        location.query_pairs().filter(|(k, _)| k == "state").count(),
        1
    );

    let reply = h
        .callback(
            &format!("code=the-code&state={}", urlencode(&state)),
            Some(&nonce),
        )
        .await;
    assert_eq!(reply.status, StatusCode::FOUND, "{}", reply.text());
    let location = reply.header("location").unwrap();
    assert!(
        location.starts_with(
            "https://app.test/done?authstamp_status=confirmation_required&authstamp_result="
        ),
        "{location}"
    );
    let result = connect_result_of(&reply);
    // Not a connection until the app's backend confirms its user.
    h.lookup(&app, "alice", false)
        .await
        .assert_error(404, "not_connected");
    let confirmed = h.confirm(&app, &result, "alice").await;
    assert_eq!(confirmed.status, StatusCode::OK, "{}", confirmed.text());
    assert_eq!(confirmed.json()["status"], "active");

    // The code exchange the provider saw.
    let calls = h.provider.calls_of("authorization_code");
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.form["code"], "the-code");
    assert_eq!(
        call.form["redirect_uri"],
        "http://authstamp.test/v1/oauth/callback"
    );
    let verifier = &call.form["code_verifier"];
    let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()));
    assert_eq!(
        computed, challenge,
        "PKCE S256 verifier matches the challenge"
    );
    assert!(
        !call.form.contains_key("client_secret"),
        "basic auth keeps the secret out of the body"
    );
    let basic = call
        .authorization
        .as_deref()
        .unwrap()
        .strip_prefix("Basic ")
        .unwrap();
    let decoded = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(basic)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        decoded,
        format!("{}:{}", urlencode(CLIENT_ID), urlencode(CLIENT_SECRET)),
        "RFC 6749 2.3.1 form-encodes id and secret"
    );

    // The lookup.
    let reply = h.lookup(&app, "alice", false).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let body: authstamp_protocol::TokenLookupResponse =
        serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(body.credential.name, "authorization");
    assert_eq!(body.credential.value, "Bearer at-1");
    assert_eq!(body.upstream.scheme, "https");
    assert_eq!(body.upstream.authority, "api.provider.test:8443");
    assert_eq!(body.upstream.base_path, "/v2");
    let now = u64::try_from(authstamp_token_service::db::now()).unwrap();
    let expires_at = body.expires_at.unwrap();
    assert!((now + 3590..=now + 3610).contains(&expires_at));
    // Within its lifetime the token is served without calling the provider.
    assert!(h.provider.calls_of("refresh_token").is_empty());

    // The state is single use.
    h.callback(
        &format!("code=the-code&state={}", urlencode(&state)),
        Some(&nonce),
    )
    .await
    .assert_error(400, "invalid_state");
    assert_eq!(h.provider.calls_of("authorization_code").len(), 1);

    let (granted,): (String,) =
        sqlx::query_as("SELECT scopes FROM connections WHERE user_id = 'alice'")
            .fetch_one(h.state.db.pool())
            .await
            .unwrap();
    assert_eq!(granted, "read write");
}

#[tokio::test]
async fn connect_cookie_is_scoped_to_the_callback() {
    let h = Harness::new().await;
    let app = h.app_with_provider().await;
    let reply = h
        .as_app(
            &app.app_id,
            &app.app_key,
            "/v1/connect-sessions",
            json!({"provider": "fake", "user": "alice"}),
        )
        .await;
    let url = reply.json()["connect_url"].as_str().unwrap().to_owned();
    let path = url.strip_prefix(PUBLIC_URL).unwrap();
    // The page sets only its CSRF cookie (on its own path) and uses nothing
    // up; the button does.
    let page = h.get(path).await;
    assert_eq!(page.status, StatusCode::OK);
    let page_cookies: Vec<&str> = page
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(page_cookies.len(), 1, "{page_cookies:?}");
    assert!(page_cookies[0].starts_with("authstamp_csrf="));
    assert!(page_cookies[0].contains(&format!("Path={path};")));
    assert!(page
        .header("content-security-policy")
        .unwrap()
        .contains("default-src 'none'"));
    assert_eq!(
        h.get(path).await.status,
        StatusCode::OK,
        "a reload is harmless"
    );
    let reply = h.post_connect(path).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    let cookie = reply.header("set-cookie").unwrap();
    let parts: Vec<&str> = cookie.split("; ").collect();
    assert!(parts[0].starts_with("authstamp_connect="));
    assert_eq!(parts[0].len(), "authstamp_connect=".len() + 43);
    for attr in [
        "Path=/v1/oauth/callback",
        "HttpOnly",
        "SameSite=Lax",
        "Max-Age=600",
    ] {
        assert!(parts.contains(&attr), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "public URL is http");
    // The connect link is single use.
    h.post_connect(path)
        .await
        .assert_error(400, "invalid_state");
    h.get(path).await.assert_error(400, "invalid_state");
    h.get("/v1/connect/unknown-token")
        .await
        .assert_error(400, "invalid_state");
}

#[tokio::test]
async fn callback_requires_the_browser_nonce() {
    let h = Harness::new().await;
    let app = h.app_with_provider().await;

    let (state, nonce, _) = h.start_connect(&app, "alice", None).await;
    let query = format!("code=c&state={}", urlencode(&state));
    h.callback(&query, Some("wrong-nonce"))
        .await
        .assert_error(400, "invalid_state");
    // A failed check still burns the state.
    h.callback(&query, Some(&nonce))
        .await
        .assert_error(400, "invalid_state");

    let (state, _, _) = h.start_connect(&app, "alice", None).await;
    h.callback(&format!("code=c&state={}", urlencode(&state)), None)
        .await
        .assert_error(400, "invalid_state");

    h.callback("code=c&state=made-up", Some(&nonce))
        .await
        .assert_error(400, "invalid_state");
    h.callback("code=c", Some(&nonce))
        .await
        .assert_error(400, "invalid_state");
    assert!(h.provider.calls().is_empty(), "no code was exchanged");
}

#[tokio::test]
async fn expired_sessions_and_states_are_invalid() {
    let h = Harness::new().await;
    let app = h.app_with_provider().await;
    let reply = h
        .as_app(
            &app.app_id,
            &app.app_key,
            "/v1/connect-sessions",
            json!({"provider": "fake", "user": "alice"}),
        )
        .await;
    let url = reply.json()["connect_url"].as_str().unwrap().to_owned();
    sqlx::query("UPDATE connect_sessions SET expires_at = 1")
        .execute(h.state.db.pool())
        .await
        .unwrap();
    h.get(url.strip_prefix(PUBLIC_URL).unwrap())
        .await
        .assert_error(400, "invalid_state");
    h.post_connect(url.strip_prefix(PUBLIC_URL).unwrap())
        .await
        .assert_error(400, "invalid_state");

    let (state, nonce, _) = h.start_connect(&app, "alice", None).await;
    sqlx::query("UPDATE oauth_states SET expires_at = 1")
        .execute(h.state.db.pool())
        .await
        .unwrap();
    h.callback(&format!("code=c&state={}", urlencode(&state)), Some(&nonce))
        .await
        .assert_error(400, "invalid_state");
}

#[tokio::test]
async fn provider_errors_on_the_callback() {
    let h = Harness::new().await;
    let app = h.app_with_provider().await;

    // The user said no.
    let (state, nonce, _) = h.start_connect(&app, "alice", None).await;
    let reply = h
        .callback(
            &format!(
                "error=access_denied&error_description={}&state={}",
                "x".repeat(5000),
                urlencode(&state)
            ),
            Some(&nonce),
        )
        .await;
    reply.assert_error(502, "oauth_failed");
    let message = reply.json()["message"].as_str().unwrap().to_owned();
    assert!(message.contains("access_denied"), "{message}");
    assert!(message.len() < 200, "{message}");

    // The token endpoint refuses the code.
    h.provider.respond(|_| {
        (
            400,
            json!({"error": "invalid_grant", "error_description": "bad code"}),
        )
    });
    let (state, nonce, _) = h.start_connect(&app, "alice", None).await;
    let reply = h
        .callback(&format!("code=c&state={}", urlencode(&state)), Some(&nonce))
        .await;
    reply.assert_error(502, "oauth_failed");
    assert!(reply.text().contains("invalid_grant"));

    // The token endpoint is down.
    h.provider.respond(|_| (503, json!({})));
    let (state, nonce, _) = h.start_connect(&app, "alice", None).await;
    h.callback(&format!("code=c&state={}", urlencode(&state)), Some(&nonce))
        .await
        .assert_error(502, "oauth_failed");

    // A 200 without an access token.
    h.provider
        .respond(|_| (200, json!({"token_type": "bearer"})));
    let (state, nonce, _) = h.start_connect(&app, "alice", None).await;
    h.callback(&format!("code=c&state={}", urlencode(&state)), Some(&nonce))
        .await
        .assert_error(502, "oauth_failed");

    h.lookup(&app, "alice", false)
        .await
        .assert_error(404, "not_connected");
}

#[tokio::test]
async fn callback_without_return_to_shows_an_escaped_page() {
    let h = Harness::new().await;
    let app = h.app_with_provider().await;
    let (state, nonce, _) = h.start_connect(&app, "<b>bob</b>", None).await;
    let reply = h
        .callback(&format!("code=c&state={}", urlencode(&state)), Some(&nonce))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert!(reply
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    let text = reply.text();
    assert!(
        text.contains("Connected fake for &#60;b&#62;bob&#60;/b&#62;. You can close this window."),
        "{text}"
    );
    assert!(!text.contains("<b>bob"));
}

#[tokio::test]
async fn body_client_auth_sends_the_credentials_in_the_form() {
    let h = Harness::new().await;
    let (app_id, app_key) = h.create_app(&[]).await;
    let mut config = h.provider_config();
    config["client_auth"] = json!("body");
    config["scopes"] = json!([]);
    let reply = h.put_provider(&app_id, "fake", config).await;
    assert_eq!(reply.status, StatusCode::OK);
    let app = ConnectedApp {
        app_id,
        app_key,
        provider: "fake".into(),
    };
    let (state, nonce, location) = h.start_connect(&app, "alice", None).await;
    assert!(
        query_param(&location, "scope").is_none(),
        "no scopes, no scope parameter"
    );
    let reply = h
        .callback(&format!("code=c&state={}", urlencode(&state)), Some(&nonce))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let call = &h.provider.calls()[0];
    assert!(call.authorization.is_none());
    assert_eq!(call.form["client_id"], CLIENT_ID);
    assert_eq!(call.form["client_secret"], CLIENT_SECRET);
}

#[tokio::test]
async fn lookup_errors() {
    let h = Harness::new().await;
    let app = h.app_with_provider().await;
    h.lookup(&app, "alice", false)
        .await
        .assert_error(404, "not_connected");
    let other = ConnectedApp {
        provider: "other".into(),
        ..app
    };
    h.lookup(&other, "alice", false)
        .await
        .assert_error(404, "unknown_provider");
    h.as_filter(
        &other.app_id,
        &other.app_key,
        "/v1/token-lookup",
        json!({"provider": "fake", "user": "a", "app": "x"}),
    )
    .await
    .assert_error(400, "bad_request");
    h.as_filter(
        &other.app_id,
        &other.app_key,
        "/v1/token-lookup",
        json!({"provider": "fake"}),
    )
    .await
    .assert_error(400, "bad_request");
}

#[tokio::test]
async fn metrics_count_lookups_and_provider_calls() {
    let h = Harness::new().await;
    let app = h.app_with_provider().await;
    h.connect(&app, "alice").await;
    assert_eq!(h.lookup(&app, "alice", false).await.status, StatusCode::OK);
    h.lookup(&app, "nobody", false)
        .await
        .assert_error(404, "not_connected");
    h.as_filter(
        &app.app_id,
        "ask_wrong",
        "/v1/token-lookup",
        json!({"provider": "fake", "user": "alice"}),
    )
    .await
    .assert_error(401, "bad_app_key");
    let reply = h.get("/metrics").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    let text = reply.text();
    for line in [
        "authstamp_token_lookups_total{outcome=\"ok\"} 1",
        "authstamp_token_lookups_total{outcome=\"not_connected\"} 1",
        "authstamp_token_lookups_total{outcome=\"bad_app_key\"} 1",
        "authstamp_provider_token_calls_total{grant=\"authorization_code\"} 1",
        "authstamp_provider_token_calls_total{grant=\"refresh_token\"} 0",
        "authstamp_token_lookup_seconds_count 3",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
}
