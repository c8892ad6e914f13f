//! The connect-link takeover and what stops it: the Connect button's post
//! only from its own page (fetch metadata, Origin, CSRF token bound to the
//! page's cookie), the page naming the app's user, and a connection that
//! exists only once the app's backend confirms the user who came back.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use common::*;
use serde_json::json;

/// A connect link for `user` of `app` (with the app's return_to); its path.
async fn connect_path(
    h: &Harness,
    app: &ConnectedApp,
    user: &str,
    display: Option<&str>,
) -> String {
    let mut body =
        json!({"provider": app.provider, "user": user, "return_to": "https://app.test/done"});
    if let Some(name) = display {
        body["user_display_name"] = json!(name);
    }
    h.connect_link(app, body).await
}

/// A forged post: what it is, its headers, its body.
type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, String);

/// A post of the connect form with the given headers and body.
async fn post_form(h: &Harness, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut request =
        Request::post(path).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    h.send(request.body(Body::from(body.to_owned())).unwrap())
        .await
}

#[tokio::test]
async fn the_connect_form_is_refused_unless_posted_from_its_own_page() {
    let h = Harness::new().await;
    let app = h.app_with_provider().await;
    let path = connect_path(&h, &app, "mallory", Some("Mallory <m@example.test>")).await;

    let page = h.get(&path).await;
    assert_eq!(page.status, StatusCode::OK);
    let html = page.text();
    // The page names the user the link is for (escaped), the app and the provider.
    assert!(
        html.contains("<strong>Mallory &#60;m@example.test&#62;</strong>"),
        "{html}"
    );
    assert!(html.contains("test app"), "{html}");
    let cookie = page.header("set-cookie").unwrap().to_owned();
    for attr in [
        format!("Path={path}").as_str(),
        "HttpOnly",
        "SameSite=Strict",
        "Max-Age=600",
    ] {
        assert!(cookie.split("; ").any(|a| a == attr), "{attr} in {cookie}");
    }
    let csrf = csrf_of(&page);
    let jar = format!("authstamp_csrf={csrf}");
    let form = format!("csrf={}", urlencode(&csrf));

    // An auto-submitting form on another site, in every shape a browser or
    // a forger can give it.
    let evil: &[Case] = &[
        (
            "cross-site with Origin, no cookie (SameSite=Strict keeps it home)",
            vec![
                ("origin", "http://evil.example"),
                ("sec-fetch-site", "cross-site"),
            ],
            form.clone(),
        ),
        (
            "cross-site, even with the cookie and the token",
            vec![
                ("cookie", &jar),
                ("origin", "http://evil.example"),
                ("sec-fetch-site", "cross-site"),
            ],
            form.clone(),
        ),
        (
            "same-site sibling",
            vec![
                ("cookie", &jar),
                ("origin", PUBLIC_URL),
                ("sec-fetch-site", "same-site"),
            ],
            form.clone(),
        ),
        (
            "another origin without fetch metadata",
            vec![
                ("cookie", &jar),
                ("origin", "http://authstamp.test.evil.example"),
            ],
            form.clone(),
        ),
        (
            "an opaque origin",
            vec![("cookie", &jar), ("origin", "null")],
            form.clone(),
        ),
        ("no CSRF token", vec![("cookie", &jar)], String::new()),
        ("no cookie", vec![], form.clone()),
        (
            "a token that is not the cookie's",
            vec![("cookie", "authstamp_csrf=forged")],
            form.clone(),
        ),
        (
            "an empty token",
            vec![("cookie", "authstamp_csrf=")],
            "csrf=".to_owned(),
        ),
        (
            "two Origin headers",
            vec![
                ("cookie", &jar),
                ("origin", PUBLIC_URL),
                ("origin", "http://evil.example"),
            ],
            form.clone(),
        ),
    ];
    for (case, headers, body) in evil {
        let reply = post_form(&h, &path, headers, body).await;
        assert_eq!(reply.status.as_u16(), 403, "{case}: {}", reply.text());
        reply.assert_error(403, "cross_site_request");
        assert!(reply.header("location").is_none(), "{case}");
    }

    // None of that used the link up: the user's own click still works, once.
    let reply = post_form(
        &h,
        &path,
        &[
            ("cookie", &jar),
            ("origin", PUBLIC_URL),
            ("sec-fetch-site", "same-origin"),
        ],
        &form,
    )
    .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.text());
    // The CSRF cookie is cleared with the session used up.
    let cleared: Vec<&str> = reply
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert!(
        cleared
            .iter()
            .any(|c| c.starts_with("authstamp_csrf=;") && c.contains("Max-Age=0")),
        "{cleared:?}"
    );
    // A client without fetch metadata or Origin (an old browser) passes on the token alone.
    let other = connect_path(&h, &app, "bob", None).await;
    let page = h.get(&other).await;
    assert!(
        page.text().contains("<strong>bob</strong>"),
        "the user id without a display name"
    );
    let csrf = csrf_of(&page);
    let reply = post_form(
        &h,
        &other,
        &[("cookie", &format!("authstamp_csrf={csrf}"))],
        &format!("csrf={}", urlencode(&csrf)),
    )
    .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.text());
}

#[tokio::test]
async fn a_connection_exists_only_once_the_app_confirms_the_user_who_came_back() {
    let h = Harness::new().await;
    let app = h.app_with_provider().await;

    // The takeover: mallory's link, completed by alice's browser. The app's
    // backend sees alice logged in and confirms alice: refused, discarded.
    let result = h.connect_until_return(&app, "mallory").await;
    h.lookup(&app, "mallory", false)
        .await
        .assert_error(404, "not_connected");
    h.confirm(&app, &result, "alice")
        .await
        .assert_error(403, "user_mismatch");
    h.lookup(&app, "mallory", false)
        .await
        .assert_error(404, "not_connected");
    h.lookup(&app, "alice", false)
        .await
        .assert_error(404, "not_connected");
    // Used up: not even the right user can confirm it afterwards.
    h.confirm(&app, &result, "mallory")
        .await
        .assert_error(400, "invalid_state");

    // The normal flow: one click for the user, one call for the app.
    let result = h.connect_until_return(&app, "alice").await;
    // The tokens wait sealed: nothing in clear in the database.
    assert!(!contains(&h.raw_database(), b"at-1"));
    assert!(!contains(&h.raw_database(), result.as_bytes()));
    // Another app cannot confirm (or burn) it.
    let other = h.app_with_provider().await;
    h.confirm(&other, &result, "alice")
        .await
        .assert_error(400, "invalid_state");
    let confirmed = h.confirm(&app, &result, "alice").await;
    assert_eq!(confirmed.status, StatusCode::OK, "{}", confirmed.text());
    assert_eq!(confirmed.json()["status"], "active");
    assert_eq!(confirmed.json()["user"], "alice");
    let lookup = h.lookup(&app, "alice", false).await;
    assert_eq!(lookup.status, StatusCode::OK, "{}", lookup.text());
    assert_eq!(lookup.json()["header"]["value"], "Bearer at-1");
    h.confirm(&app, &result, "alice")
        .await
        .assert_error(400, "invalid_state");

    // An unconfirmed result expires with the flow.
    let result = h.connect_until_return(&app, "carol").await;
    h.exec("UPDATE connect_results SET expires_at = 1").await;
    h.confirm(&app, &result, "carol")
        .await
        .assert_error(400, "invalid_state");
    h.confirm(&app, "no-such-result", "carol")
        .await
        .assert_error(400, "invalid_state");
}

#[tokio::test]
async fn display_names_are_checked() {
    let h = Harness::new().await;
    let app = h.app_with_provider().await;
    for bad in ["", &"x".repeat(121), "a\u{7}b", "line\nbreak"] {
        h.as_app(
            &app.app_id,
            &app.app_key,
            "/v1/connect-sessions",
            json!({"provider": "fake", "user": "u", "user_display_name": bad}),
        )
        .await
        .assert_error(400, "bad_request");
    }
}
