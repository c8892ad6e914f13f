//! The connect page of API-key and Basic providers: a form from the
//! provider's fields, posted under the connect page's origin and CSRF
//! rules; a refused or invalid entry shows the form again and keeps
//! nothing, an accepted one uses the link up, is sealed, and ends like an
//! OAuth connect (result page, or back to the app for its confirmation).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use base64::Engine as _;
use common::*;
use serde_json::{json, Value};

const GOOD_KEY: &str = "sk-good-0123456789";
const BAD_KEY: &str = "sk-refused-987654321";

/// An app (return_to allowed under https://app.test/done) with provider
/// `name` configured as `config`.
async fn app_with(h: &Harness, name: &str, config: Value) -> ConnectedApp {
    let (app_id, app_key) = h.create_app(&["https://app.test/done"]).await;
    let reply = h.put_provider(&app_id, name, config).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    ConnectedApp {
        app_id,
        app_key,
        provider: name.into(),
    }
}

/// An API-key provider on the fake provider's API, with catalog-style
/// fields and a key check (`GET /api/me` must answer 200).
fn keyed_config(h: &Harness) -> Value {
    json!({"auth_type": "api_key", "display_name": "Keyed Cloud",
           "api_base_url": format!("{}/v1", h.provider.api_url),
           "header": {"name": "x-api-key", "format": "{token}"},
           "api_key_fields": [{"name": "api_key", "label": "Secret <b>key</b>", "secret": true,
                               "help": "Settings → API keys", "help_url": "https://keyed.test/settings/keys"}],
           "key_check": {"method": "GET", "path": "/api/me", "expect_status": 200}})
}

/// A connect link for `user`; its path (and the page is not opened yet).
async fn link(h: &Harness, app: &ConnectedApp, user: &str, return_to: Option<&str>) -> String {
    let mut body = json!({"provider": app.provider, "user": user});
    if let Some(r) = return_to {
        body["return_to"] = json!(r);
    }
    h.connect_link(app, body).await
}

/// Opens the page and posts `fields` as its browser does (same origin, the
/// page's CSRF cookie and field).
async fn submit(h: &Harness, path: &str, fields: &[(&str, &str)]) -> Reply {
    let page = h.get(path).await;
    let csrf = if page.status == StatusCode::OK {
        csrf_of(&page)
    } else {
        "csrf-of-a-page-that-did-not-open".to_owned()
    };
    post_form(h, path, &csrf, fields).await
}

async fn post_form(h: &Harness, path: &str, csrf: &str, fields: &[(&str, &str)]) -> Reply {
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    form.append_pair("csrf", csrf);
    for (k, v) in fields {
        form.append_pair(k, v);
    }
    h.send(
        Request::post(path)
            .header(header::COOKIE, format!("authstamp_csrf={csrf}"))
            .header(header::ORIGIN, PUBLIC_URL)
            .header("sec-fetch-site", "same-origin")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(form.finish()))
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn an_api_key_entered_on_the_connect_page_is_checked_sealed_and_stamped() {
    let h = Harness::new().await;
    h.provider.accept(GOOD_KEY);
    let app = app_with(&h, "keyed", keyed_config(&h)).await;
    let path = link(&h, &app, "alice", None).await;

    // The form: the app, the provider, what is asked, the catalog's label,
    // help and link; the input labelled, focused and described by its help.
    let page = h.get(&path).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text());
    assert_eq!(page.header("cache-control"), Some("no-store"));
    let html = page.text();
    for expected in [
        "<h1 id=\"title\">Connect Keyed Cloud</h1>",
        "test app asks to call Keyed Cloud for you with your Secret &#60;b&#62;key&#60;/b&#62;.",
        "for <strong>alice</strong>",
        "One call to Keyed Cloud checks it before it is kept.",
        "<label for=\"api_key\">Secret &#60;b&#62;key&#60;/b&#62;</label>",
        "<p id=\"api_key-help\" class=\"help\">Settings → API keys <a href=\"https://keyed.test/settings/keys\"",
        "type=\"password\"",
        " autofocus",
        "aria-describedby=\"api_key-help\"",
        "name=\"viewport\"",
    ] {
        assert!(html.contains(expected), "{expected:?} in {html}");
    }
    assert!(!html.contains("<b>"), "{html}");
    assert!(!html.contains("<script"), "no JavaScript: {html}");
    assert!(
        h.provider.api_calls().is_empty(),
        "opening the page checks nothing"
    );

    // A refused key: the form again (422), the reason linked to the input,
    // the key nowhere, nothing kept; the link still works.
    let refused = submit(&h, &path, &[("api_key", BAD_KEY)]).await;
    assert_eq!(
        refused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        refused.text()
    );
    let html = refused.text();
    assert!(
        html.contains("<p id=\"form-error\" class=\"error\" role=\"alert\">Keyed Cloud did not accept these credentials (HTTP 401)."),
        "{html}"
    );
    assert!(
        html.contains("aria-describedby=\"api_key-help form-error\""),
        "{html}"
    );
    assert!(html.contains("aria-invalid=\"true\""), "{html}");
    assert!(!html.contains(BAD_KEY), "{html}");
    assert!(
        csrf_of(&refused).len() > 20,
        "a fresh CSRF token for the retry"
    );
    assert_eq!(h.provider.api_calls(), [BAD_KEY], "checked with one call");
    h.lookup(&app, "alice", false)
        .await
        .assert_error(404, "not_connected");
    assert!(!h.stores_in_clear(BAD_KEY).await);

    // The right key: checked, the link used up, the result page; sealed
    // and answered to the filter in the provider's header.
    let done = submit(&h, &path, &[("api_key", GOOD_KEY)]).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.text());
    assert!(
        done.text().contains("data-status=\"connected\""),
        "{}",
        done.text()
    );
    assert!(!done.text().contains(GOOD_KEY));
    assert_eq!(done.header("referrer-policy"), Some("no-referrer"));
    assert!(
        done.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .any(|c| c.to_str().unwrap().starts_with("authstamp_csrf=;")),
        "the CSRF cookie is cleared"
    );
    assert_eq!(h.provider.api_calls(), [BAD_KEY, GOOD_KEY]);
    assert!(!h.stores_in_clear(GOOD_KEY).await, "sealed in the vault");
    let answer = h.lookup(&app, "alice", false).await.json();
    assert_eq!(
        answer["header"],
        json!({"name": "x-api-key", "value": GOOD_KEY})
    );
    let view = h.connection_view(&app, "alice").await.json();
    assert_eq!(view["status"], "active", "{view}");

    // Single use: the link neither opens nor takes another key.
    h.get(&path).await.assert_error(400, "invalid_state");
    submit(&h, &path, &[("api_key", "sk-another")])
        .await
        .assert_error(400, "invalid_state");
    assert_eq!(h.provider.api_calls().len(), 2);
}

#[tokio::test]
async fn the_key_form_takes_posts_only_from_its_page_and_refuses_bad_values() {
    let h = Harness::new().await;
    h.provider.accept(GOOD_KEY);
    let app = app_with(&h, "keyed", keyed_config(&h)).await;
    let path = link(&h, &app, "alice", None).await;

    // Cross-site: no cookie, another origin, another site.
    let page = h.get(&path).await;
    let csrf = csrf_of(&page);
    let body = format!("csrf={csrf}&api_key={GOOD_KEY}");
    let cookie = format!("authstamp_csrf={csrf}");
    for (what, headers) in [
        ("no CSRF cookie", vec![("origin", PUBLIC_URL)]),
        (
            "another origin",
            vec![("origin", "https://evil.test"), ("cookie", cookie.as_str())],
        ),
        (
            "another site",
            vec![
                ("sec-fetch-site", "cross-site"),
                ("cookie", cookie.as_str()),
            ],
        ),
    ] {
        let mut request =
            Request::post(&path).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        for (k, v) in headers {
            request = request.header(k, v);
        }
        let reply = h
            .send(request.body(Body::from(body.clone())).unwrap())
            .await;
        assert_eq!(
            reply.status,
            StatusCode::FORBIDDEN,
            "{what}: {}",
            reply.text()
        );
        reply.assert_error(403, "cross_site_request");
    }

    // Bad values: the form again (400), the problem on the input, nothing
    // sent to the provider or kept.
    let long = "k".repeat(8193);
    for (value, message) in [
        (
            "",
            "api_key must be 1 to 8192 bytes without control characters",
        ),
        (
            "sk-\u{7}bell",
            "api_key must be 1 to 8192 bytes without control characters",
        ),
        (
            "sk-line\r\nbreak",
            "api_key must be 1 to 8192 bytes without control characters",
        ),
        (
            long.as_str(),
            "api_key must be 1 to 8192 bytes without control characters",
        ),
    ] {
        let reply = submit(&h, &path, &[("api_key", value)]).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text());
        let html = reply.text();
        assert!(
            html.contains(&format!(
                "<p id=\"api_key-error\" class=\"error\">{message}</p>"
            )),
            "{html}"
        );
        assert!(
            html.contains("aria-describedby=\"api_key-help api_key-error\""),
            "{html}"
        );
        if !value.is_empty() {
            assert!(!html.contains(value), "an entered key is never shown");
        }
    }
    // A field the form does not have, or one sent twice: a plain 400.
    submit(&h, &path, &[("api_key", GOOD_KEY), ("client_secret", "x")])
        .await
        .assert_error(400, "bad_request");
    // Five submissions a minute per link: the sixth is turned away.
    let limited = submit(&h, &path, &[("api_key", GOOD_KEY)]).await;
    assert_eq!(
        limited.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        limited.text()
    );
    assert!(limited.text().contains("Too many attempts with this link"));
    assert!(
        h.provider.api_calls().is_empty(),
        "no bad value reached the provider"
    );
    h.lookup(&app, "alice", false)
        .await
        .assert_error(404, "not_connected");
}

#[tokio::test]
async fn basic_credentials_return_to_the_app_for_its_confirmation() {
    let h = Harness::new().await;
    let pair = "carol:c4rol pass:word";
    let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
    h.provider.accept(&format!("Basic {encoded}"));
    let app = app_with(
        &h,
        "desk",
        json!({"auth_type": "basic", "api_base_url": h.provider.api_url,
               "key_check": {"path": "/api/me", "expect_status": 200}}),
    )
    .await;
    let path = link(&h, &app, "carol", Some("https://app.test/done")).await;
    let page = h.get(&path).await;
    let html = page.text();
    assert!(
        html.contains("<label for=\"username\">Username</label>"),
        "{html}"
    );
    assert!(
        html.contains("<label for=\"password\">Password</label>"),
        "{html}"
    );
    assert!(html.contains("Requested: username and password."), "{html}");

    // A user name with markup and ':' is refused and shown back escaped;
    // the password never is.
    let reply = submit(
        &h,
        &path,
        &[
            ("username", "<script>x</script>:"),
            ("password", "c4rol pass:word"),
        ],
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let html = reply.text();
    assert!(
        html.contains("value=\"&#60;script&#62;x&#60;/script&#62;:\""),
        "{html}"
    );
    assert!(!html.contains("<script>"), "{html}");
    assert!(!html.contains("c4rol pass"), "{html}");
    assert!(
        html.contains("username must not contain &#39;:&#39;"),
        "{html}"
    );

    // Right: back to the app (303), which confirms its logged-in user.
    let reply = submit(
        &h,
        &path,
        &[("username", "carol"), ("password", "c4rol pass:word")],
    )
    .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.text());
    let location = reply.header("location").unwrap();
    assert!(location.starts_with("https://app.test/done?"), "{location}");
    assert!(!location.contains("c4rol"), "{location}");
    h.lookup(&app, "carol", false)
        .await
        .assert_error(404, "not_connected");
    let result = connect_result_of(&reply);
    assert!(!h.stores_in_clear("c4rol pass:word").await);
    assert!(!h.stores_in_clear(&encoded).await);
    let confirmed = h.confirm(&app, &result, "carol").await;
    assert_eq!(confirmed.status, StatusCode::OK, "{}", confirmed.text());
    let answer = h.lookup(&app, "carol", false).await.json();
    assert_eq!(
        answer["header"],
        json!({"name": "authorization", "value": format!("Basic {encoded}")})
    );
}

#[tokio::test]
async fn provider_configurations_with_wrong_form_fields_or_checks_are_refused() {
    let h = Harness::new().await;
    let (app_id, _) = h.create_app(&[]).await;
    let base = h.provider.api_url.clone();
    for (what, config, message) in [
        (
            "fields on an OAuth provider",
            json!({"client_id": "c", "client_secret": "s", "authorize_url": "https://p.test/a",
                   "token_url": "https://p.test/t", "api_base_url": base,
                   "api_key_fields": [{"name": "api_key", "label": "Key", "secret": true}]}),
            "api_key_fields and key_check are for api_key and basic providers",
        ),
        (
            "a Basic form without a password",
            json!({"auth_type": "basic", "api_base_url": base,
                   "api_key_fields": [{"name": "username", "label": "User", "secret": false}]}),
            "api_key_fields: basic providers ask for password and username",
        ),
        (
            "a check on another host",
            json!({"auth_type": "api_key", "api_base_url": base,
                   "key_check": {"path": "//evil.test/steal", "expect_status": 200}}),
            "key_check.path must be an absolute path",
        ),
        (
            "a check on another host, spelled with a backslash",
            json!({"auth_type": "api_key", "api_base_url": base,
                   "key_check": {"path": "/\\evil.test/steal", "expect_status": 200}}),
            "key_check.path must be an absolute path",
        ),
        (
            "a check expecting a failure",
            json!({"auth_type": "api_key", "api_base_url": base,
                   "key_check": {"path": "/api/me", "expect_status": 401}}),
            "key_check.expect_status must be a 2xx status",
        ),
    ] {
        let reply = h.put_provider(&app_id, "p", config).await;
        reply.assert_error(400, "bad_request");
        assert!(reply.text().contains(message), "{what}: {}", reply.text());
    }
}
