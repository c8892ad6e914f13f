//! Test harness: drives the provider's router with `oneshot`, no socket.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use authstamp_standin_provider::{app, AppState, Config};
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use http_body_util::BodyExt as _;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tower::ServiceExt as _;
use url::Url;

pub const CLIENT_ID: &str = "test-app";
/// Characters that must be form-urlencoded inside HTTP Basic credentials.
pub const CLIENT_SECRET: &str = "s3cret:with+odd=chars%";
/// Already has a query: the code must be appended, not replace it.
pub const REDIRECT_URI: &str = "http://localhost:9999/callback?tenant=acme";
pub const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
pub const STATE: &str = "st&te=/?#x";

pub fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

pub fn form(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// How the token request authenticates the client.
#[derive(Clone, Copy, Debug)]
pub enum ClientAuth<'a> {
    /// `client_secret_basic` with the right credentials.
    Basic,
    /// `client_secret_post` with the right credentials.
    Post,
    /// Both methods at once.
    Both,
    /// No authentication at all.
    None,
    BasicWith(&'a str, &'a str),
    PostWith(&'a str, &'a str),
}

pub fn basic_header(id: &str, secret: &str) -> String {
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    format!(
        "Basic {}",
        STANDARD.encode(format!("{}:{}", enc(id), enc(secret)))
    )
}

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    pub fn location(&self) -> Url {
        assert_eq!(self.status, StatusCode::FOUND, "{}", self.text());
        Url::parse(self.header("location").expect("no Location")).unwrap()
    }

    /// Asserts an RFC 6749 §5.2 error.
    pub fn assert_oauth_error(&self, status: StatusCode, error: &str) {
        assert_eq!(self.status, status, "{}", self.text());
        let body = self.json();
        assert_eq!(body["error"], error, "{body}");
        assert!(body["error_description"].is_string(), "{body}");
        assert_eq!(self.header("cache-control"), Some("no-store"));
    }
}

pub fn query_param(url: &Url, name: &str) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Hidden `<input>`s of the consent page, unescaped.
pub fn hidden_fields(html: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for chunk in html.split("<input type=\"hidden\" ").skip(1) {
        let name = between(chunk, "name=\"", "\"");
        let value = between(chunk, "value=\"", "\"");
        out.push((unescape(&name), unescape(&value)));
    }
    out
}

fn between(s: &str, start: &str, end: &str) -> String {
    let from = s.find(start).unwrap() + start.len();
    let len = s[from..].find(end).unwrap();
    s[from..from + len].to_owned()
}

pub fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

#[derive(Debug, Clone)]
pub struct Tokens {
    pub access: String,
    pub refresh: String,
}

pub struct Standin {
    router: Router,
    pub state: AppState,
}

impl Standin {
    pub fn new() -> Self {
        Self::with_config(|_| {})
    }

    pub fn with_config(adjust: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config::new(CLIENT_ID, CLIENT_SECRET);
        adjust(&mut config);
        let state = AppState::new(config);
        Self {
            router: app(state.clone()),
            state,
        }
    }

    pub async fn send(&self, request: Request<Body>) -> Reply {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, uri: &str) -> Reply {
        self.send(Request::get(uri).body(Body::empty()).unwrap())
            .await
    }

    pub async fn post_json(&self, uri: &str, json: Value) -> Reply {
        self.send(
            Request::post(uri)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(json.to_string()))
                .unwrap(),
        )
        .await
    }

    pub async fn post_form(&self, uri: &str, pairs: &[(&str, &str)]) -> Reply {
        self.send(
            Request::post(uri)
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(form(pairs)))
                .unwrap(),
        )
        .await
    }

    /// The authorize URL (path + query) for a PKCE request.
    pub fn authorize_uri(&self, scope: &str, extra: &[(&str, &str)]) -> String {
        let challenge = challenge(VERIFIER);
        let mut pairs = vec![
            ("response_type", "code"),
            ("client_id", CLIENT_ID),
            ("redirect_uri", REDIRECT_URI),
            ("state", STATE),
            ("scope", scope),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ];
        pairs.extend_from_slice(extra);
        format!("/oauth/authorize?{}", form(&pairs))
    }

    /// Consent page → approve as `login` → the redirect back to the client.
    pub async fn approve_redirect(&self, login: &str, scope: &str) -> Url {
        let page = self.get(&self.authorize_uri(scope, &[])).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text());
        let mut fields = hidden_fields(&page.text());
        fields.push(("login".into(), login.into()));
        fields.push(("decision".into(), "approve".into()));
        let pairs: Vec<(&str, &str)> = fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.post_form("/oauth/authorize", &pairs).await.location()
    }

    /// An authorization code for `login`.
    pub async fn code(&self, login: &str, scope: &str) -> String {
        let back = self.approve_redirect(login, scope).await;
        assert_eq!(query_param(&back, "state").as_deref(), Some(STATE));
        query_param(&back, "code").expect("no code in redirect")
    }

    pub async fn token(&self, pairs: &[(&str, &str)], auth: ClientAuth<'_>) -> Reply {
        let mut pairs: Vec<(&str, &str)> = pairs.to_vec();
        let mut request = Request::post("/oauth/token")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        match auth {
            ClientAuth::Basic => {
                request = request.header(
                    header::AUTHORIZATION,
                    basic_header(CLIENT_ID, CLIENT_SECRET),
                );
            }
            ClientAuth::BasicWith(id, secret) => {
                request = request.header(header::AUTHORIZATION, basic_header(id, secret));
            }
            ClientAuth::Post => {
                pairs.push(("client_id", CLIENT_ID));
                pairs.push(("client_secret", CLIENT_SECRET));
            }
            ClientAuth::PostWith(id, secret) => {
                pairs.push(("client_id", id));
                pairs.push(("client_secret", secret));
            }
            ClientAuth::Both => {
                request = request.header(
                    header::AUTHORIZATION,
                    basic_header(CLIENT_ID, CLIENT_SECRET),
                );
                pairs.push(("client_id", CLIENT_ID));
                pairs.push(("client_secret", CLIENT_SECRET));
            }
            ClientAuth::None => {}
        }
        self.send(request.body(Body::from(form(&pairs))).unwrap())
            .await
    }

    pub async fn exchange(&self, code: &str) -> Reply {
        self.token(
            &[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", REDIRECT_URI),
                ("code_verifier", VERIFIER),
            ],
            ClientAuth::Basic,
        )
        .await
    }

    pub async fn refresh(&self, refresh_token: &str) -> Reply {
        self.token(
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
            ],
            ClientAuth::Basic,
        )
        .await
    }

    /// Full login of `login` with scope `read write`.
    pub async fn login(&self, login: &str) -> Tokens {
        let code = self.code(login, "read write").await;
        let reply = self.exchange(&code).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let body = reply.json();
        Tokens {
            access: body["access_token"].as_str().unwrap().to_owned(),
            refresh: body["refresh_token"].as_str().unwrap().to_owned(),
        }
    }

    pub async fn api(&self, method: Method, path: &str, token: Option<&str>) -> Reply {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        self.send(request.body(Body::empty()).unwrap()).await
    }

    pub async fn quirks(&self, patch: Value) -> Value {
        let reply = self.post_json("/_standin/quirks", patch).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        reply.json()
    }

    pub async fn stats(&self) -> Value {
        self.get("/_standin/stats").await.json()
    }
}
