//! `GET/POST /oauth/authorize`.

mod common;

use axum::http::StatusCode;
use common::*;

#[tokio::test]
async fn consent_page_shows_the_request() {
    let s = Standin::new();
    let page = s
        .get(&s.authorize_uri("read write read", &[("login", "alice")]))
        .await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    let html = page.text();
    assert!(html.contains("App test-app asks for read write"), "{html}");
    assert!(html.contains(r#"<form method="post" action="/oauth/authorize">"#));
    assert!(html.contains(r#"name="login" id="login" value="alice""#));
    assert!(html.contains(r#"name="decision" value="approve" id="approve""#));
    assert!(html.contains(r#"name="decision" value="deny" id="deny""#));
    let fields = hidden_fields(&html);
    let get = |n: &str| fields.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
    assert_eq!(get("client_id"), Some(CLIENT_ID));
    assert_eq!(get("redirect_uri"), Some(REDIRECT_URI));
    assert_eq!(get("state"), Some(STATE));
    assert_eq!(get("scope"), Some("read write"));
    assert_eq!(get("code_challenge"), Some(challenge(VERIFIER).as_str()));
    assert_eq!(get("code_challenge_method"), Some("S256"));
    assert_eq!(get("response_type"), Some("code"));
}

#[tokio::test]
async fn consent_page_escapes_input() {
    let s = Standin::new();
    let page = s
        .get(&s.authorize_uri("read", &[("login", "\"><script>x</script>")]))
        .await;
    let html = page.text();
    assert!(!html.contains("<script>"), "{html}");
    // The state carries `&`, `?`, `#`: escaped in the page, intact after the round trip.
    assert!(html.contains("st&amp;te=/?#x"));
}

#[tokio::test]
async fn approve_redirects_with_code_and_state_keeping_the_query() {
    let s = Standin::new();
    let back = s.approve_redirect("alice", "read").await;
    assert_eq!(back.path(), "/callback");
    assert_eq!(query_param(&back, "tenant").as_deref(), Some("acme"));
    assert_eq!(query_param(&back, "state").as_deref(), Some(STATE));
    assert!(query_param(&back, "code").unwrap().starts_with("sco_"));
    assert_eq!(query_param(&back, "iss"), None);
}

#[tokio::test]
async fn send_iss_adds_the_issuer() {
    let s = Standin::with_config(|c| {
        c.send_iss = true;
        c.issuer = "http://provider.test:8080".into();
    });
    let back = s.approve_redirect("alice", "read").await;
    assert_eq!(
        query_param(&back, "iss").as_deref(),
        Some("http://provider.test:8080")
    );
    assert!(query_param(&back, "code").is_some());
}

#[tokio::test]
async fn deny_redirects_access_denied() {
    let s = Standin::new();
    let page = s.get(&s.authorize_uri("read", &[])).await;
    let mut fields = hidden_fields(&page.text());
    fields.push(("decision".into(), "deny".into()));
    let pairs: Vec<(&str, &str)> = fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let back = s.post_form("/oauth/authorize", &pairs).await.location();
    assert_eq!(
        query_param(&back, "error").as_deref(),
        Some("access_denied")
    );
    assert_eq!(query_param(&back, "state").as_deref(), Some(STATE));
    assert_eq!(query_param(&back, "code"), None);
}

#[tokio::test]
async fn approve_without_login_shows_the_form_again() {
    let s = Standin::new();
    let page = s.get(&s.authorize_uri("read", &[])).await;
    let mut fields = hidden_fields(&page.text());
    fields.push(("login".into(), "   ".into()));
    fields.push(("decision".into(), "approve".into()));
    let pairs: Vec<(&str, &str)> = fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let reply = s.post_form("/oauth/authorize", &pairs).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.header("location").is_none());
    assert!(reply.text().contains("Enter a login"));
}

#[tokio::test]
async fn unknown_client_or_bad_redirect_uri_never_redirects() {
    let s = Standin::new();
    let challenge = challenge(VERIFIER);
    let base = [
        ("response_type", "code"),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
        ("state", "x"),
    ];
    let cases: Vec<Vec<(&str, &str)>> = vec![
        vec![("client_id", "other-app"), ("redirect_uri", REDIRECT_URI)],
        vec![("redirect_uri", REDIRECT_URI)],
        vec![("client_id", CLIENT_ID)],
        vec![("client_id", CLIENT_ID), ("redirect_uri", "/relative")],
        vec![
            ("client_id", CLIENT_ID),
            ("redirect_uri", "http://cb/#frag"),
        ],
        vec![
            ("client_id", CLIENT_ID),
            ("redirect_uri", "javascript:alert(1)"),
        ],
        vec![
            ("client_id", CLIENT_ID),
            ("client_id", CLIENT_ID),
            ("redirect_uri", REDIRECT_URI),
        ],
        vec![
            ("client_id", CLIENT_ID),
            ("redirect_uri", REDIRECT_URI),
            ("redirect_uri", "http://evil.test/"),
        ],
    ];
    for case in cases {
        let mut pairs = case.clone();
        pairs.extend_from_slice(&base);
        let reply = s.get(&format!("/oauth/authorize?{}", form(&pairs))).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{case:?}");
        assert!(reply.header("location").is_none(), "{case:?}");
        assert!(reply
            .header("content-type")
            .unwrap()
            .starts_with("text/html"));
        // Same on the form post.
        pairs.push(("login", "alice"));
        pairs.push(("decision", "approve"));
        let reply = s.post_form("/oauth/authorize", &pairs).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{case:?}");
        assert!(reply.header("location").is_none(), "{case:?}");
    }
}

#[tokio::test]
async fn other_errors_redirect_back() {
    let s = Standin::new();
    let challenge = challenge(VERIFIER);
    let ok = |extra: &[(&'static str, &'static str)], drop: &[&str]| {
        let mut pairs: Vec<(&str, String)> = vec![
            ("response_type", "code".into()),
            ("client_id", CLIENT_ID.into()),
            ("redirect_uri", REDIRECT_URI.into()),
            ("state", "s1".into()),
            ("code_challenge", challenge.clone()),
            ("code_challenge_method", "S256".into()),
        ];
        pairs.retain(|(k, _)| !drop.contains(k));
        for (k, v) in extra {
            pairs.retain(|(n, _)| n != k);
            pairs.push((k, (*v).to_owned()));
        }
        let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        format!("/oauth/authorize?{}", form(&pairs))
    };
    let cases = [
        (
            ok(&[("response_type", "token")], &[]),
            "unsupported_response_type",
        ),
        (ok(&[], &["response_type"]), "invalid_request"),
        (ok(&[], &["code_challenge"]), "invalid_request"),
        (ok(&[("code_challenge", "short")], &[]), "invalid_request"),
        (ok(&[], &["code_challenge_method"]), "invalid_request"),
        (
            ok(&[("code_challenge_method", "plain")], &[]),
            "invalid_request",
        ),
        (ok(&[("scope", "bad\"scope")], &[]), "invalid_scope"),
    ];
    for (uri, error) in cases {
        let reply = s.get(&uri).await;
        let back = reply.location();
        assert_eq!(back.host_str(), Some("localhost"), "{uri}");
        assert_eq!(query_param(&back, "tenant").as_deref(), Some("acme"));
        assert_eq!(query_param(&back, "error").as_deref(), Some(error), "{uri}");
        assert_eq!(query_param(&back, "state").as_deref(), Some("s1"), "{uri}");
        assert!(query_param(&back, "error_description").is_some());
    }
    // A repeated parameter is invalid_request too.
    let uri = format!("{}&scope=a&scope=b", ok(&[], &[]));
    let back = s.get(&uri).await.location();
    assert_eq!(
        query_param(&back, "error").as_deref(),
        Some("invalid_request")
    );
}

#[tokio::test]
async fn unknown_decision_is_invalid_request() {
    let s = Standin::new();
    let page = s.get(&s.authorize_uri("read", &[])).await;
    let mut fields = hidden_fields(&page.text());
    fields.push(("login".into(), "alice".into()));
    fields.push(("decision".into(), "maybe".into()));
    let pairs: Vec<(&str, &str)> = fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let back = s.post_form("/oauth/authorize", &pairs).await.location();
    assert_eq!(
        query_param(&back, "error").as_deref(),
        Some("invalid_request")
    );
}
