//! `POST /oauth/token`: code exchange, client authentication, refresh, token families.

mod common;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use common::*;
use serde_json::json;

#[tokio::test]
async fn happy_path_authorize_token_api() {
    let s = Standin::new();
    let code = s.code("alice", "read write").await;
    let reply = s.exchange(&code).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    assert_eq!(reply.header("pragma"), Some("no-cache"));
    assert!(reply
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    let body = reply.json();
    let access = body["access_token"].as_str().unwrap();
    assert!(access.starts_with("sat_"));
    assert!(body["refresh_token"].as_str().unwrap().starts_with("srt_"));
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(body["scope"], "read write");

    let echo = s.api(Method::GET, "/api/v1/me?x=1", Some(access)).await;
    assert_eq!(echo.status, StatusCode::OK, "{}", echo.text());
    let echo = echo.json();
    assert_eq!(echo["user"], "alice");
    assert_eq!(echo["token_grant"], "authorization_code");
}

#[tokio::test]
async fn pkce_mismatch_is_invalid_grant() {
    let s = Standin::new();
    let code = s.code("alice", "read").await;
    let wrong = "A".repeat(43);
    let reply = s
        .token(
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT_URI),
                ("code_verifier", &wrong),
            ],
            ClientAuth::Basic,
        )
        .await;
    reply.assert_oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");

    // Malformed or missing verifiers are invalid_request.
    for verifier in ["short", &"a".repeat(129), &format!("{}!", "a".repeat(43))] {
        let reply = s
            .token(
                &[
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("redirect_uri", REDIRECT_URI),
                    ("code_verifier", verifier),
                ],
                ClientAuth::Basic,
            )
            .await;
        reply.assert_oauth_error(StatusCode::BAD_REQUEST, "invalid_request");
    }
    let reply = s
        .token(
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT_URI),
            ],
            ClientAuth::Basic,
        )
        .await;
    reply.assert_oauth_error(StatusCode::BAD_REQUEST, "invalid_request");
}

#[tokio::test]
async fn redirect_uri_must_match() {
    let s = Standin::new();
    let code = s.code("alice", "read").await;
    for redirect in [
        "http://localhost:9999/callback",
        "http://localhost:9999/callback?tenant=evil",
    ] {
        let reply = s
            .token(
                &[
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("redirect_uri", redirect),
                    ("code_verifier", VERIFIER),
                ],
                ClientAuth::Basic,
            )
            .await;
        reply.assert_oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
    }
    let reply = s
        .token(
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("code_verifier", VERIFIER),
            ],
            ClientAuth::Basic,
        )
        .await;
    reply.assert_oauth_error(StatusCode::BAD_REQUEST, "invalid_request");
}

#[tokio::test]
async fn code_reuse_is_invalid_grant_and_revokes_its_tokens() {
    let s = Standin::new();
    let code = s.code("alice", "read").await;
    let first = s.exchange(&code).await.json();
    let access = first["access_token"].as_str().unwrap();
    let refresh = first["refresh_token"].as_str().unwrap();
    assert_eq!(
        s.api(Method::GET, "/api/x", Some(access)).await.status,
        StatusCode::OK
    );

    s.exchange(&code)
        .await
        .assert_oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
    assert_eq!(
        s.api(Method::GET, "/api/x", Some(access)).await.status,
        StatusCode::UNAUTHORIZED
    );
    s.refresh(refresh)
        .await
        .assert_oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
    assert_eq!(s.stats().await["families_revoked"], 1);
}

#[tokio::test]
async fn unknown_code_is_invalid_grant() {
    let s = Standin::new();
    s.exchange("sco_nope")
        .await
        .assert_oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
}

#[tokio::test]
async fn client_secret_basic_and_post_both_work() {
    let s = Standin::new();
    for auth in [ClientAuth::Basic, ClientAuth::Post] {
        let code = s.code("alice", "read").await;
        let reply = s
            .token(
                &[
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("redirect_uri", REDIRECT_URI),
                    ("code_verifier", VERIFIER),
                ],
                auth,
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{auth:?}: {}", reply.text());
    }
}

#[tokio::test]
async fn both_client_auth_methods_at_once_is_invalid_request() {
    let s = Standin::new();
    let code = s.code("alice", "read").await;
    let reply = s
        .token(
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT_URI),
                ("code_verifier", VERIFIER),
            ],
            ClientAuth::Both,
        )
        .await;
    reply.assert_oauth_error(StatusCode::BAD_REQUEST, "invalid_request");
    // The code was not consumed.
    assert_eq!(s.exchange(&code).await.status, StatusCode::OK);
}

#[tokio::test]
async fn wrong_client_credentials_are_401_invalid_client() {
    let s = Standin::new();
    let code = s.code("alice", "read").await;
    let grant = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT_URI),
        ("code_verifier", VERIFIER),
    ];
    for auth in [
        ClientAuth::BasicWith(CLIENT_ID, "wrong"),
        ClientAuth::BasicWith("other", CLIENT_SECRET),
        ClientAuth::PostWith(CLIENT_ID, "wrong"),
        ClientAuth::PostWith("other", CLIENT_SECRET),
        ClientAuth::None,
    ] {
        let reply = s.token(&grant, auth).await;
        reply.assert_oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
        assert!(
            reply
                .header("www-authenticate")
                .unwrap()
                .starts_with("Basic"),
            "{auth:?}"
        );
    }
    // Basic credentials must be form-urlencoded: the raw secret (with `:`, `+`, `%`) fails.
    let raw = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("{CLIENT_ID}:{CLIENT_SECRET}")
        )
    );
    let reply = s
        .send(
            Request::post("/oauth/token")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .header(header::AUTHORIZATION, raw)
                .body(Body::from(form(&grant)))
                .unwrap(),
        )
        .await;
    reply.assert_oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    // A Bearer header is not client authentication.
    let reply = s
        .send(
            Request::post("/oauth/token")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .header(header::AUTHORIZATION, "Bearer abc")
                .body(Body::from(form(&grant)))
                .unwrap(),
        )
        .await;
    reply.assert_oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    // After all that the code still works.
    assert_eq!(s.exchange(&code).await.status, StatusCode::OK);
}

#[tokio::test]
async fn malformed_token_requests() {
    let s = Standin::new();
    s.token(&[], ClientAuth::Basic)
        .await
        .assert_oauth_error(StatusCode::BAD_REQUEST, "invalid_request");
    s.token(&[("grant_type", "password")], ClientAuth::Basic)
        .await
        .assert_oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type");
    s.token(
        &[
            ("grant_type", "refresh_token"),
            ("grant_type", "refresh_token"),
        ],
        ClientAuth::Basic,
    )
    .await
    .assert_oauth_error(StatusCode::BAD_REQUEST, "invalid_request");
    s.token(&[("grant_type", "refresh_token")], ClientAuth::Basic)
        .await
        .assert_oauth_error(StatusCode::BAD_REQUEST, "invalid_request");
    s.token(&[("grant_type", "authorization_code")], ClientAuth::Basic)
        .await
        .assert_oauth_error(StatusCode::BAD_REQUEST, "invalid_request");
    // Not a form.
    let reply = s
        .send(
            Request::post("/oauth/token")
                .header(header::CONTENT_TYPE, "application/json")
                .header(
                    header::AUTHORIZATION,
                    basic_header(CLIENT_ID, CLIENT_SECRET),
                )
                .body(Body::from(
                    json!({"grant_type": "refresh_token"}).to_string(),
                ))
                .unwrap(),
        )
        .await;
    reply.assert_oauth_error(StatusCode::BAD_REQUEST, "invalid_request");
    // Only POST.
    assert_eq!(
        s.get("/oauth/token").await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
}

#[tokio::test]
async fn refresh_without_rotation_keeps_the_refresh_token() {
    let s = Standin::new();
    let t = s.login("alice").await;
    let reply = s.refresh(&t.refresh).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    let body = reply.json();
    let new_access = body["access_token"].as_str().unwrap();
    assert_ne!(new_access, t.access);
    assert_eq!(body["refresh_token"], t.refresh.as_str());
    assert_eq!(body["scope"], "read write");
    assert_eq!(body["expires_in"], 3600);
    // Both access tokens work; the new one says how it was issued.
    assert_eq!(
        s.api(Method::GET, "/api/a", Some(&t.access)).await.status,
        StatusCode::OK
    );
    let echo = s.api(Method::GET, "/api/a", Some(new_access)).await.json();
    assert_eq!(echo["token_grant"], "refresh_token");
    assert_eq!(echo["user"], "alice");
    // The same refresh token keeps working.
    assert_eq!(s.refresh(&t.refresh).await.status, StatusCode::OK);
    assert_eq!(s.stats().await["families_revoked"], 0);
}

#[tokio::test]
async fn refresh_with_rotation_and_reuse_detection() {
    let s = Standin::with_config(|c| c.rotate_refresh_tokens = true);
    let t = s.login("alice").await;
    let first = s.refresh(&t.refresh).await.json();
    let rt2 = first["refresh_token"].as_str().unwrap().to_owned();
    let at2 = first["access_token"].as_str().unwrap().to_owned();
    assert!(rt2.starts_with("srt_"));
    assert_ne!(rt2, t.refresh);
    let second = s.refresh(&rt2).await.json();
    let rt3 = second["refresh_token"].as_str().unwrap().to_owned();
    let at3 = second["access_token"].as_str().unwrap().to_owned();
    assert_ne!(rt3, rt2);
    for at in [&t.access, &at2, &at3] {
        assert_eq!(
            s.api(Method::GET, "/api/a", Some(at)).await.status,
            StatusCode::OK
        );
    }

    // An attacker replays the rotated rt2: the whole family dies.
    s.refresh(&rt2)
        .await
        .assert_oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
    for at in [&t.access, &at2, &at3] {
        let reply = s.api(Method::GET, "/api/a", Some(at)).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    }
    s.refresh(&rt3)
        .await
        .assert_oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
    assert_eq!(s.stats().await["families_revoked"], 1);
}

#[tokio::test]
async fn reuse_revokes_only_its_own_family() {
    let s = Standin::with_config(|c| c.rotate_refresh_tokens = true);
    let mine = s.login("alice").await;
    let other = s.login("alice").await;
    assert_eq!(s.refresh(&mine.refresh).await.status, StatusCode::OK);
    s.refresh(&mine.refresh)
        .await
        .assert_oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
    assert_eq!(
        s.api(Method::GET, "/api/a", Some(&mine.access))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        s.api(Method::GET, "/api/a", Some(&other.access))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(s.refresh(&other.refresh).await.status, StatusCode::OK);
}

#[tokio::test]
async fn refresh_scope_must_be_a_subset() {
    let s = Standin::new();
    let t = s.login("alice").await;
    let narrow = s
        .token(
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &t.refresh),
                ("scope", "read"),
            ],
            ClientAuth::Post,
        )
        .await;
    assert_eq!(narrow.status, StatusCode::OK, "{}", narrow.text());
    assert_eq!(narrow.json()["scope"], "read");
    s.token(
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &t.refresh),
            ("scope", "read admin"),
        ],
        ClientAuth::Basic,
    )
    .await
    .assert_oauth_error(StatusCode::BAD_REQUEST, "invalid_scope");
    // Narrowing once does not narrow the refresh token itself.
    let again = s.refresh(&t.refresh).await.json();
    assert_eq!(again["scope"], "read write");
}

#[tokio::test]
async fn unknown_refresh_token_is_invalid_grant() {
    let s = Standin::new();
    s.refresh("srt_nope")
        .await
        .assert_oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
}

#[tokio::test]
async fn rotation_can_be_switched_at_runtime() {
    let s = Standin::new();
    let t = s.login("alice").await;
    assert_eq!(
        s.refresh(&t.refresh).await.json()["refresh_token"],
        t.refresh.as_str()
    );
    s.quirks(json!({"rotate_refresh_tokens": true})).await;
    let rotated = s.refresh(&t.refresh).await.json();
    assert_ne!(rotated["refresh_token"], t.refresh.as_str());
}
