//! The connect page in a real browser: headless Chromium opens a connect
//! session's URL, sees the provider and the permissions asked, clicks
//! Connect, types a login and approves at the stand-in provider's consent
//! page, lands on the result page; the connection is then active through
//! the API and the filter stamps its token. For API-key and Basic
//! providers the page is a form: the user types the key, the stand-in
//! checks it, and the filter stamps it; screenshots at desktop and phone
//! widths are checked.

use authstamp_e2e::chromium::{Chromium, Viewport};
use authstamp_e2e::page_server::PageServer;
use authstamp_e2e::stack::{CLIENT_ID, PROVIDER};
use authstamp_e2e::{Stack, StackOptions};
use base64::Engine as _;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_connects_in_headless_chromium() {
    let stack = Stack::start("connect_page", StackOptions::default()).await;
    let standin = stack.standin_url.clone();
    stack
        .put_provider(
            PROVIDER,
            json!({"client_id": CLIENT_ID, "client_secret": stack.client_secret,
                   "display_name": "Stand-in Cloud",
                   "authorize_url": format!("{standin}/oauth/authorize"),
                   "token_url": format!("{standin}/oauth/token"),
                   "api_base_url": standin, "scopes": ["read", "write"]}),
        )
        .await;
    let response = stack
        .as_app(Method::POST, "/v1/connect-sessions")
        .json(&json!({"provider": PROVIDER, "user": "alice"}))
        .send()
        .await
        .expect("connect session");
    assert_eq!(response.status(), StatusCode::CREATED);
    let session: Value = response.json().await.expect("session json");
    let connect_url = session["connect_url"].as_str().expect("connect_url");

    let mut browser = Chromium::launch(&stack.log_dir).await;
    browser.navigate(connect_url).await;
    browser
        .wait_for("the connect page", "document.getElementById('connect')")
        .await;
    assert_eq!(browser.text("title").await, "Connect Stand-in Cloud");
    assert_eq!(browser.texts("#scopes li").await, ["read", "write"]);
    browser.click("connect").await;
    consent_as(&mut browser, "alice").await;

    // Back at the token service: the result page.
    browser
        .wait_for(
            "the result page",
            "document.getElementById('result') && document.getElementById('result').dataset.status === 'connected'",
        )
        .await;
    let text = browser.eval("document.body.innerText").await;
    assert!(text.as_str().unwrap().contains("Connected"), "{text}");

    // The connection is active, and the filter stamps its token.
    let view: Value = stack
        .as_app(Method::GET, &format!("/v1/connections/{PROVIDER}/alice"))
        .send()
        .await
        .expect("connection")
        .json()
        .await
        .expect("connection json");
    assert_eq!(view["status"], "active", "{view}");
    assert_eq!(view["scopes"], "read write");
    let response = stack
        .call(Method::GET, "/api/whoami", "alice")
        .send()
        .await
        .expect("call through Envoy");
    assert_eq!(response.status(), StatusCode::OK);
    let echo: Value = response.json().await.expect("echo");
    assert_eq!(echo["user"], "alice");
    // The page used the session up: opening the link again is refused.
    let again = stack.http.get(connect_url).send().await.expect("again");
    assert_eq!(again.status(), StatusCode::BAD_REQUEST);
}

/// The app's user `user` asks for a connect link that returns to `return_to`.
async fn connect_link(
    stack: &Stack,
    app: (&str, &str),
    user: &str,
    display: &str,
    return_to: &str,
) -> String {
    let response = stack
        .http
        .post(format!("{}/v1/connect-sessions", stack.service_url))
        .header("x-authstamp-app", app.0)
        .header("x-authstamp-app-key", app.1)
        .json(&json!({"provider": PROVIDER, "user": user,
                      "user_display_name": display, "return_to": return_to}))
        .send()
        .await
        .expect("connect session");
    assert_eq!(response.status(), StatusCode::CREATED);
    let session: Value = response.json().await.expect("session json");
    session["connect_url"]
        .as_str()
        .expect("connect_url")
        .to_owned()
}

/// At the stand-in provider's consent page: types `login` and approves.
async fn consent_as(browser: &mut Chromium, login: &str) {
    browser
        .wait_for(
            "the provider's consent page",
            "document.getElementById('login') && document.getElementById('approve')",
        )
        .await;
    browser.type_into("login", login).await;
    browser.click("approve").await;
}

/// Clicks Connect on the open connect page, signs in at the stand-in as
/// `login` and waits until the browser is back on the app's page; the
/// `authstamp_result` it carried.
async fn connect_in_browser(browser: &mut Chromium, login: &str) -> String {
    browser.click("connect").await;
    consent_as(browser, login).await;
    browser
        .wait_for("the app's return_to page", "document.getElementById('app')")
        .await;
    let back = browser.url().await;
    let param = |name: &str| {
        back.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    assert_eq!(
        param("authstamp_status").as_deref(),
        Some("confirmation_required")
    );
    param("authstamp_result").expect("authstamp_result")
}

/// The app's backend confirms a connect result for its logged-in user.
async fn confirm(stack: &Stack, app: (&str, &str), result: &str, user: &str) -> (u16, Value) {
    let response = stack
        .http
        .post(format!("{}/v1/connect-results/confirm", stack.service_url))
        .header("x-authstamp-app", app.0)
        .header("x-authstamp-app-key", app.1)
        .json(&json!({"result": result, "user": user}))
        .send()
        .await
        .expect("confirm");
    let status = response.status().as_u16();
    (status, response.json().await.expect("confirm json"))
}

/// A provider call through Envoy for `user` of `app`: its status.
async fn call_status(stack: &Stack, app: (&str, &str), user: &str) -> (u16, Value) {
    let response = stack
        .http
        .get(format!("{}/api/whoami", stack.envoy_url))
        .header("x-authstamp-provider", PROVIDER)
        .header("x-authstamp-user", user)
        .header("x-authstamp-app", app.0)
        .header("x-authstamp-app-key", app.1)
        .send()
        .await
        .expect("call through Envoy");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The connect-link takeover in a real browser. Mallory, a user of the app,
/// takes the connect link made for *his* account and lures Alice's browser
/// to a page on another site that posts its Connect form at once: Chromium
/// sends it cross-site and the token service refuses it before anything
/// reaches the provider. If Alice is talked into clicking Connect herself
/// (the page names Mallory), the browser returns to the app, whose backend
/// confirms the user logged in there (Alice): refused, and Mallory never
/// gets a connection. Alice's own link is still one click.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_browser_never_completes_a_connect_link() {
    let stack = Stack::start("connect_takeover", StackOptions::default()).await;
    let app_page = PageServer::start(
        "127.0.0.1",
        "<!doctype html><title>App</title><p id=\"app\">Back at the app</p>".to_owned(),
    )
    .await;
    let return_to = format!("{}/return", app_page.origin);
    let (app_id, app_key) = stack.create_app("Team Chat", &[&return_to]).await;
    stack.configure_provider(&app_id, PROVIDER).await;
    let app = (app_id.as_str(), app_key.as_str());
    let stats_before = stack.standin_stats().await;

    // 1. The auto-submitting form on another site (localhost vs 127.0.0.1).
    let link = connect_link(&stack, app, "mallory", "mallory@example.test", &return_to).await;
    let evil = PageServer::start(
        "localhost",
        format!(
            "<!doctype html><form id=\"f\" method=\"post\" action=\"{link}\">\
             <input type=\"hidden\" name=\"csrf\" value=\"guessed\"></form>\
             <script>document.getElementById('f').submit()</script>"
        ),
    )
    .await;
    let mut browser = Chromium::launch(&stack.log_dir).await;
    browser.navigate(&format!("{}/prize", evil.origin)).await;
    browser
        .wait_for(
            "the token service's refusal",
            "document.body && document.body.innerText.includes('cross_site_request')",
        )
        .await;
    let at = browser.url().await;
    assert!(
        at.as_str().starts_with(&stack.service_url),
        "the browser never left for the provider: {at}"
    );
    assert_eq!(evil.requests(), ["/prize"]);
    assert_eq!(
        stack.standin_stats().await["token_calls"],
        stats_before["token_calls"],
        "no code reached the provider's token endpoint"
    );

    // 2. Alice clicks Connect on Mallory's link herself: the page names
    //    Mallory; the browser comes back to the app logged in as Alice.
    browser.navigate(&link).await;
    browser
        .wait_for("the connect page", "document.getElementById('connect')")
        .await;
    let account = browser.text("account").await;
    assert!(account.contains("mallory@example.test"), "{account}");
    let result = connect_in_browser(&mut browser, "alice").await;
    let (status, body) = confirm(&stack, app, &result, "alice").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "user_mismatch");
    for user in ["mallory", "alice"] {
        let (status, body) = call_status(&stack, app, user).await;
        assert_eq!(status, 404, "{user}: {body}");
        assert_eq!(body["error"], "not_connected");
    }

    // 3. Alice's own link: one click, one confirmation, stamped.
    let link = connect_link(&stack, app, "alice", "alice@example.test", &return_to).await;
    browser.navigate(&link).await;
    browser
        .wait_for("the connect page", "document.getElementById('connect')")
        .await;
    let result = connect_in_browser(&mut browser, "alice").await;
    let (status, body) = confirm(&stack, app, &result, "alice").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "active");
    let (status, echo) = call_status(&stack, app, "alice").await;
    assert_eq!(status, 200, "{echo}");
    assert_eq!(echo["user"], "alice");
}

/// A connect link of the stack's app for `user` of `provider`.
async fn key_link(stack: &Stack, provider: &str, user: &str) -> String {
    let response = stack
        .as_app(Method::POST, "/v1/connect-sessions")
        .json(&json!({"provider": provider, "user": user}))
        .send()
        .await
        .expect("connect session");
    assert_eq!(response.status(), StatusCode::CREATED);
    let session: Value = response.json().await.expect("session json");
    session["connect_url"]
        .as_str()
        .expect("connect_url")
        .to_owned()
}

/// Takes a screenshot of the open page into the log directory and checks
/// it and the layout at `viewport`: the PNG decodes at the viewport's width
/// and is not blank, nothing scrolls sideways, the submit button is inside
/// the viewport, every label is visible, every input has one label, the
/// first input has the focus and a visible outline, and all text has a
/// contrast of at least 4.5:1 with its background (WCAG 2.1, 1.4.3).
async fn check_layout(browser: &mut Chromium, stack: &Stack, viewport: Viewport, name: &str) {
    let png_bytes = browser.screenshot().await;
    let file = stack.log_dir.join(format!("{name}.png"));
    std::fs::write(&file, &png_bytes).expect("write screenshot");
    let mut reader = png::Decoder::new(std::io::Cursor::new(&png_bytes))
        .read_info()
        .unwrap_or_else(|e| panic!("{}: not a PNG: {e}", file.display()));
    let mut pixels = vec![0; reader.output_buffer_size().expect("frame size")];
    let frame = reader.next_frame(&mut pixels).expect("decode screenshot");
    assert_eq!(frame.width, viewport.width, "{}", file.display());
    assert_eq!(frame.height, viewport.height, "{}", file.display());
    let first = &pixels[..3];
    assert!(
        pixels
            .chunks(frame.line_size / frame.width as usize)
            .any(|p| &p[..3] != first),
        "{} is blank",
        file.display()
    );
    let layout = browser
        .eval(
            "(() => { const rgb = (c) => c.match(/[\\d.]+/g).map(Number); \
               const lum = (c) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); }; \
                 return 0.2126 * f(c[0]) + 0.7152 * f(c[1]) + 0.0722 * f(c[2]); }; \
               const background = (e) => { for (; e; e = e.parentElement) { const c = rgb(getComputedStyle(e).backgroundColor); \
                 if (c.length < 4 || c[3] > 0) return c; } return [255, 255, 255]; }; \
               const contrast = (e) => { const a = lum(rgb(getComputedStyle(e).color)), b = lum(background(e)); \
                 return (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05); }; \
               const inside = (r) => r.width > 0 && r.height > 0 && r.left >= 0 && r.top >= 0 \
               && r.right <= innerWidth && r.bottom <= innerHeight; \
               const visible = (e) => { const s = getComputedStyle(e); \
                 return s.visibility === 'visible' && s.display !== 'none' && s.opacity !== '0' && inside(e.getBoundingClientRect()); }; \
               const inputs = [...document.querySelectorAll('input:not([type=hidden])')]; \
               const focused = document.activeElement; const outline = getComputedStyle(focused); \
               return { scrollWidth: document.documentElement.scrollWidth, innerWidth, \
                 button: inside(document.getElementById('connect').getBoundingClientRect()), \
                 labels: [...document.querySelectorAll('label')].map(visible), \
                 labelled: inputs.map((i) => i.labels.length === 1 && visible(i.labels[0])), \
                 focused: focused === inputs[0], \
                 outline: outline.outlineStyle + ' ' + outline.outlineWidth, \
                 contrast: Math.min(...[...document.querySelectorAll('h1, p, label, a, strong, button, input:not([type=hidden])')].map(contrast)) }; })()",
        )
        .await;
    let width = u64::from(viewport.width);
    assert_eq!(layout["innerWidth"], width, "{layout}");
    assert!(
        layout["scrollWidth"].as_u64().is_some_and(|w| w <= width),
        "horizontal scroll at {width} px: {layout}"
    );
    assert_eq!(
        layout["button"], true,
        "submit button outside the viewport: {layout}"
    );
    let labels = layout["labels"].as_array().expect("labels");
    assert!(
        !labels.is_empty() && labels.iter().all(|v| v == true),
        "{layout}"
    );
    let labelled = layout["labelled"].as_array().expect("inputs");
    assert!(
        !labelled.is_empty() && labelled.iter().all(|v| v == true),
        "{layout}"
    );
    assert_eq!(
        layout["focused"], true,
        "the first input has the focus: {layout}"
    );
    assert_eq!(
        layout["outline"], "solid 3px",
        "a visible focus outline: {layout}"
    );
    assert!(
        layout["contrast"].as_f64().is_some_and(|c| c >= 4.5),
        "text contrast below 4.5:1: {layout}"
    );
}

/// API keys (in a header, in a query parameter) and Basic credentials
/// typed into the connect page in headless Chromium: the stand-in checks
/// each (a wrong key shows the form again with the reason), the result page
/// follows, and calls through Envoy carry the credential where the
/// provider wants it. The forms are screenshot and checked at 1280 and
/// 375 px.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_enter_api_keys_and_basic_credentials_in_headless_chromium() {
    let stack = Stack::start("connect_key_page", StackOptions::default()).await;
    let standin = stack.standin_url.clone();
    let response = stack
        .http
        .post(format!("{standin}/_standin/credentials"))
        .json(&json!({"api_keys": {"key-alice": "alice"}, "basic": {"carol": "c4rol pass:word"}}))
        .send()
        .await
        .expect("credentials");
    assert!(response.status().is_success());
    let check = json!({"method": "GET", "path": "/api/me", "expect_status": 200});
    let key_field = json!([{"name": "api_key", "label": "Stand-in API key", "secret": true,
                            "help": "Settings → Developer → API keys",
                            "help_url": "https://standin.example/settings/keys"}]);
    stack
        .put_provider(
            "standin-key",
            json!({"auth_type": "api_key", "display_name": "Stand-in Keys", "api_base_url": standin,
                   "header": {"name": "x-api-key", "format": "{token}"},
                   "api_key_fields": key_field, "key_check": check}),
        )
        .await;
    stack
        .put_provider(
            "standin-key-query",
            json!({"auth_type": "api_key", "display_name": "Stand-in Maps", "api_base_url": standin,
                   "header": {"name": "api_key", "format": "{token}", "in": "query"},
                   "api_key_fields": key_field, "key_check": check}),
        )
        .await;
    stack
        .put_provider(
            "standin-basic",
            json!({"auth_type": "basic", "display_name": "Stand-in Desk", "api_base_url": standin,
                   "key_check": check}),
        )
        .await;

    // 1. Desktop, a key in a header: a wrong key first.
    let mut browser = Chromium::launch_at(&stack.log_dir, Viewport::DESKTOP).await;
    browser
        .navigate(&key_link(&stack, "standin-key", "alice").await)
        .await;
    browser
        .wait_for("the key form", "document.getElementById('api_key')")
        .await;
    assert_eq!(browser.text("title").await, "Connect Stand-in Keys");
    assert!(browser.text("requested").await.contains("Stand-in API key"));
    assert_eq!(
        browser
            .eval("document.querySelector('#api_key-help a').href")
            .await,
        "https://standin.example/settings/keys"
    );
    check_layout(
        &mut browser,
        &stack,
        Viewport::DESKTOP,
        "connect-key-desktop",
    )
    .await;
    let rejected_before = stack.standin_stats().await["api_calls_rejected"].clone();
    browser.type_into("api_key", "key-wrong").await;
    browser.click("connect").await;
    browser
        .wait_for("the refusal", "document.getElementById('form-error')")
        .await;
    assert!(browser
        .text("form-error")
        .await
        .contains("Stand-in Keys did not accept these credentials (HTTP 401)"),);
    assert_eq!(
        browser
            .eval("document.getElementById('api_key').value")
            .await,
        ""
    );
    assert_eq!(
        stack.standin_stats().await["api_calls_rejected"].as_u64(),
        rejected_before.as_u64().map(|n| n + 1),
        "the check call reached the stand-in"
    );
    browser.type_into("api_key", "key-alice").await;
    browser.click("connect").await;
    wait_for_result(&mut browser).await;
    let body = browser.eval("document.body.innerText").await;
    assert!(!body.as_str().unwrap_or("").contains("key-alice"), "{body}");
    let echo = echo_of(
        stack
            .call_provider(Method::GET, "standin-key", "/api/me", "alice")
            .header("x-api-key", "forged"),
    )
    .await;
    assert_eq!(echo["user"], "alice");
    assert_eq!(echo["token_grant"], "api_key");
    assert_eq!(echo["headers"]["x-api-key"], json!(["key-alice"]));
    drop(browser);

    // 2. Phone, a key in a query parameter, and Basic credentials.
    let mut browser = Chromium::launch_at(&stack.log_dir, Viewport::PHONE).await;
    browser
        .navigate(&key_link(&stack, "standin-key-query", "alice").await)
        .await;
    browser
        .wait_for("the key form", "document.getElementById('api_key')")
        .await;
    check_layout(&mut browser, &stack, Viewport::PHONE, "connect-key-phone").await;
    browser.type_into("api_key", "key-alice").await;
    browser.click("connect").await;
    wait_for_result(&mut browser).await;
    let echo = echo_of(stack.call_provider(
        Method::GET,
        "standin-key-query",
        "/api/search?q=1&api_key=forged",
        "alice",
    ))
    .await;
    assert_eq!(echo["user"], "alice");
    assert_eq!(echo["query"], "q=1&api_key=key-alice");

    browser
        .navigate(&key_link(&stack, "standin-basic", "carol").await)
        .await;
    browser
        .wait_for("the Basic form", "document.getElementById('password')")
        .await;
    check_layout(&mut browser, &stack, Viewport::PHONE, "connect-basic-phone").await;
    browser.type_into("username", "carol").await;
    browser.type_into("password", "c4rol pass:word").await;
    browser.click("connect").await;
    wait_for_result(&mut browser).await;
    let echo =
        echo_of(stack.call_provider(Method::GET, "standin-basic", "/api/tickets", "carol")).await;
    assert_eq!(echo["user"], "carol");
    assert_eq!(echo["token_grant"], "basic");

    // What the users typed is in none of the token service's log lines.
    let logs = stack.token_service.logs();
    assert!(logs.contains("stored credentials"), "{logs}");
    let basic = base64::engine::general_purpose::STANDARD.encode("carol:c4rol pass:word");
    for secret in ["key-alice", "key-wrong", "c4rol pass", basic.as_str()] {
        assert!(
            !logs.contains(secret),
            "{secret:?} in the token service's log"
        );
    }
}

async fn wait_for_result(browser: &mut Chromium) {
    browser
        .wait_for(
            "the result page",
            "document.getElementById('result') && document.getElementById('result').dataset.status === 'connected'",
        )
        .await;
}

/// The stand-in's echo of a call through Envoy (which must succeed).
async fn echo_of(request: reqwest::RequestBuilder) -> Value {
    let response = request.send().await.expect("call through Envoy");
    let status = response.status();
    let text = response.text().await.expect("body");
    assert_eq!(status, StatusCode::OK, "{text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}
