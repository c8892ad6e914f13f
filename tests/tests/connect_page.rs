//! The connect page in a real browser: headless Chromium opens a connect
//! session's URL, sees the provider and the permissions asked, clicks
//! Connect, types a login and approves at the stand-in provider's consent
//! page, lands on the result page; the connection is then active through
//! the API and the filter stamps its token.

use authstamp_e2e::chromium::Chromium;
use authstamp_e2e::stack::{CLIENT_ID, PROVIDER};
use authstamp_e2e::{Stack, StackOptions};
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
    let title = browser
        .eval("document.getElementById('title').innerText")
        .await;
    assert_eq!(title, "Connect Stand-in Cloud");
    let scopes = browser
        .eval("[...document.querySelectorAll('#scopes li')].map(li => li.innerText)")
        .await;
    assert_eq!(scopes, json!(["read", "write"]));
    browser
        .eval("document.getElementById('connect').click()")
        .await;

    // The stand-in provider's consent page.
    browser
        .wait_for(
            "the provider's consent page",
            "document.getElementById('login') && document.getElementById('approve')",
        )
        .await;
    browser
        .eval("document.getElementById('login').focus()")
        .await;
    browser.type_text("alice").await;
    browser
        .eval("document.getElementById('approve').click()")
        .await;

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
