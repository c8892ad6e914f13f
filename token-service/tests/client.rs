//! The token endpoint client against real sockets: classification of
//! failures, no redirects, capped bodies, and no body text in errors.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use authstamp_token_service::oauth::client::{
    ClientCredentials, GrantRequest, TokenClient, TokenError,
};
use authstamp_token_service::secrets::{ClientSecret, RefreshToken};
use authstamp_token_service::store::providers::ClientAuth;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{any, post};
use axum::Router;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Serves `/t/{case}` with canned answers; counts hits of `/elsewhere`.
async fn server() -> (String, Arc<AtomicUsize>) {
    let elsewhere = Arc::new(AtomicUsize::new(0));
    let hits = elsewhere.clone();
    let router = Router::new()
        .route(
            "/t/{case}",
            post(
                |axum::extract::Path(case): axum::extract::Path<String>| async move {
                    let json = |status: u16, body: &str| {
                        (
                            StatusCode::from_u16(status).unwrap(),
                            [(header::CONTENT_TYPE, "application/json")],
                            body.to_owned(),
                        )
                            .into_response()
                    };
                    match case.as_str() {
                        "ok" => json(
                            200,
                            r#"{"access_token":"AT","token_type":"Bearer","expires_in":60}"#,
                        ),
                        "429" => json(429, "{}"),
                        "500" => json(500, r#"{"access_token":"LEAKED-TOKEN"}"#),
                        "invalid_grant" => json(
                            400,
                            r#"{"error":"invalid_grant","error_description":"LEAKED-TOKEN"}"#,
                        ),
                        "invalid_client" => json(401, r#"{"error":"invalid_client"}"#),
                        "unauthorized_client" => json(400, r#"{"error":"unauthorized_client"}"#),
                        "invalid_scope" => json(400, r#"{"error":"invalid_scope"}"#),
                        "unsupported_grant_type" => {
                            json(400, r#"{"error":"unsupported_grant_type"}"#)
                        }
                        "invalid_request" => json(400, r#"{"error":"invalid_request"}"#),
                        "400_plain" => (StatusCode::BAD_REQUEST, "LEAKED-TOKEN").into_response(),
                        "200_error_permanent" => json(200, r#"{"error":"bad_refresh_token"}"#),
                        "200_error_transient" => json(200, r#"{"error":"server_busy"}"#),
                        "200_ok_false" => json(200, r#"{"ok":false,"error":"token_revoked"}"#),
                        "200_ok_false_other" => json(200, r#"{"ok":false,"error":"ratelimited"}"#),
                        "200_not_json" => {
                            (StatusCode::OK, "<html>LEAKED-TOKEN</html>").into_response()
                        }
                        "200_form" => (
                            StatusCode::OK,
                            [(header::CONTENT_TYPE, "application/x-www-form-urlencoded")],
                            "access_token=FORM-AT&scope=repo",
                        )
                            .into_response(),
                        "redirect" => {
                            (StatusCode::FOUND, [(header::LOCATION, "/elsewhere")]).into_response()
                        }
                        "huge" => json(
                            200,
                            &format!(
                                r#"{{"access_token":"AT","pad":"{}"}}"#,
                                "x".repeat(2 * 1024 * 1024)
                            ),
                        ),
                        "slow" => {
                            tokio::time::sleep(Duration::from_secs(3)).await;
                            json(200, r#"{"access_token":"AT"}"#)
                        }
                        _ => json(404, "{}"),
                    }
                },
            ),
        )
        .route(
            "/elsewhere",
            any(move || {
                hits.fetch_add(1, Ordering::SeqCst);
                async { r#"{"access_token":"REDIRECTED"}"# }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (format!("http://{addr}"), elsewhere)
}

async fn refresh(
    client: &TokenClient,
    url: &str,
) -> Result<authstamp_token_service::oauth::client::TokenSet, TokenError> {
    let secret = ClientSecret::new("secret");
    let token = RefreshToken::new("rt");
    client
        .request(
            url,
            &ClientCredentials {
                client_id: "id",
                client_secret: &secret,
                auth: ClientAuth::Basic,
            },
            &GrantRequest::RefreshToken {
                refresh_token: &token,
            },
        )
        .await
}

#[tokio::test]
async fn classifies_token_endpoint_answers() {
    let (base, elsewhere) = server().await;
    let client = TokenClient::new(Duration::from_millis(1000)).unwrap();

    let ok = refresh(&client, &format!("{base}/t/ok")).await.unwrap();
    assert_eq!(ok.access_token.expose(), "AT");
    assert_eq!(ok.expires_in, Some(60));
    let form = refresh(&client, &format!("{base}/t/200_form"))
        .await
        .unwrap();
    assert_eq!(form.access_token.expose(), "FORM-AT");

    let cases: &[(&str, bool)] = &[
        ("429", false),
        ("500", false),
        ("invalid_grant", true),
        ("invalid_client", true),
        ("unauthorized_client", true),
        ("invalid_scope", true),
        ("unsupported_grant_type", true),
        ("invalid_request", false),
        ("400_plain", false),
        ("200_error_permanent", true),
        ("200_error_transient", false),
        ("200_ok_false", true),
        ("200_ok_false_other", false),
        ("200_not_json", false),
        ("redirect", false),
        ("huge", false),
        ("slow", false),
        ("missing", false),
    ];
    for (case, permanent) in cases {
        let err = refresh(&client, &format!("{base}/t/{case}"))
            .await
            .unwrap_err();
        assert_eq!(err.is_permanent(), *permanent, "{case}: {err:?}");
        let text = format!("{err} {err:?}");
        assert!(!text.contains("LEAKED-TOKEN"), "{case}: {text}");
        assert!(
            !text.contains("127.0.0.1"),
            "{case}: errors carry no URL: {text}"
        );
    }
    assert_eq!(
        refresh(&client, &format!("{base}/t/invalid_grant"))
            .await
            .unwrap_err(),
        TokenError::Permanent("invalid_grant".into())
    );
    assert_eq!(
        refresh(&client, &format!("{base}/t/slow"))
            .await
            .unwrap_err(),
        TokenError::Transient("timeout".into())
    );
    assert_eq!(
        refresh(&client, &format!("{base}/t/huge"))
            .await
            .unwrap_err(),
        TokenError::Transient("response_too_large".into())
    );
    assert_eq!(
        elsewhere.load(Ordering::SeqCst),
        0,
        "redirects are not followed"
    );

    // Nothing listens on port 9 of localhost (discard); a refused connect is transient.
    let err = refresh(&client, "http://127.0.0.1:9/token")
        .await
        .unwrap_err();
    assert_eq!(err, TokenError::Transient("connect".into()));
}
