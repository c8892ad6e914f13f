//! Tiny HTML pages for the browser side of the connect flow, from the
//! `askama` templates in `templates/`: compiled in, and every value is
//! HTML-escaped unless a template says otherwise (none does).

use crate::http::error::ApiError;
use askama::Template;
use axum::http::{header, HeaderValue};
use axum::response::{Html, IntoResponse, Response};

/// The connect page: who asks, for which provider, which scopes, and a
/// Connect button (`id="connect"`) that posts the form.
#[derive(Template)]
#[template(path = "connect.html")]
pub struct ConnectPage<'a> {
    /// The provider's display name.
    pub provider: &'a str,
    /// The app asking.
    pub app: &'a str,
    /// The app's user the link was made for (display name, else user id).
    pub user: &'a str,
    pub scopes: &'a [String],
    /// Where the Connect button posts (the same URL).
    pub action: &'a str,
    /// The form's CSRF token (the page's cookie holds the same).
    pub csrf: &'a str,
}

/// The connect page of an API-key or Basic provider: who asks, for which
/// provider, what is requested, and a form with one input per field
/// (`id` = field name) and a Connect button (`id="connect"`).
#[derive(Template)]
#[template(path = "connect_key.html")]
pub struct KeyConnectPage<'a> {
    pub provider: &'a str,
    pub app: &'a str,
    pub user: &'a str,
    /// What the form asks for ("API key", "username and password").
    pub requested: &'a str,
    /// Whether one call at the provider checks the entry before it is kept.
    pub checked: bool,
    pub fields: Vec<KeyField<'a>>,
    /// A problem with the entry as a whole (`id="form-error"`).
    pub form_error: Option<&'a str>,
    pub action: &'a str,
    pub csrf: &'a str,
}

/// One input of a [`KeyConnectPage`].
pub struct KeyField<'a> {
    /// `api_key`, `username` or `password`: the input's `id` and `name`.
    pub name: &'a str,
    pub label: &'a str,
    pub help: Option<&'a str>,
    pub help_url: Option<&'a str>,
    /// A password input, never filled in again.
    pub secret: bool,
    /// What the user entered, shown again (never for a secret field).
    pub value: &'a str,
    pub error: Option<&'a str>,
    pub invalid: bool,
    pub maxlength: usize,
    pub required: bool,
    pub autofocus: bool,
    /// The ids of the help, the error and the form's error, space-separated.
    pub described_by: String,
}

/// The result page after the callback.
#[derive(Template)]
#[template(path = "connected.html")]
struct ConnectedPage<'a> {
    provider: &'a str,
    user: &'a str,
}

pub fn connect_page(page: &ConnectPage<'_>) -> Response {
    page_response(page)
}

pub fn key_connect_page(page: &KeyConnectPage<'_>) -> Response {
    page_response(page)
}

pub fn connected_page(provider: &str, user: &str) -> Response {
    page_response(&ConnectedPage { provider, user })
}

fn page_response(page: &impl Template) -> Response {
    // Rendering only writes strings: it fails only if formatting does.
    let body = match page.render() {
        Ok(body) => body,
        Err(e) => return ApiError::internal("rendering a page", e).into_response(),
    };
    let mut response = Html(body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // No scripts or frames; inline styles only; the form posts to this
    // service (its 303 then leads to the provider).
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    const MARKUP: &str = r#"<script>alert('x')&"</script>"#;

    async fn body(response: Response) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    /// `MARKUP` as it must appear: every markup character escaped (askama
    /// writes numeric character references).
    fn escaped(html: &str) -> bool {
        html.contains("&#60;script&#62;alert(&#39;x&#39;)&#38;&#34;&#60;/script&#62;")
    }

    #[tokio::test]
    async fn user_supplied_values_with_script_are_escaped_on_the_connect_page() {
        let scopes = vec!["read".to_owned(), MARKUP.to_owned()];
        let page = body(connect_page(&ConnectPage {
            provider: "Stand-in Cloud",
            app: MARKUP,
            user: MARKUP,
            scopes: &scopes,
            action: "/connect/tok",
            csrf: MARKUP,
        }))
        .await;
        assert!(!page.contains("<script>"), "{page}");
        // The app and the user in the summary and account lines, a scope,
        // the hidden CSRF field's attribute.
        assert!(escaped(&page), "{page}");
        assert!(page.matches("&#60;script&#62;").count() >= 5, "{page}");
        assert!(
            page.contains("<h1 id=\"title\">Connect Stand-in Cloud</h1>"),
            "{page}"
        );
        assert!(page.contains("<li>read</li>"), "{page}");
        assert!(page.contains("action=\"/connect/tok\""), "{page}");
    }

    #[tokio::test]
    async fn the_result_page_escapes_provider_and_user() {
        let response = connected_page(MARKUP, "alice");
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
        assert!(response.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .starts_with("default-src 'none'"));
        let page = body(response).await;
        assert!(!page.contains("<script>"), "{page}");
        assert!(escaped(&page), "{page}");
        assert!(page.contains("data-status=\"connected\""), "{page}");
        assert!(page.contains("for alice."), "{page}");
    }

    #[tokio::test]
    async fn without_scopes_the_page_says_so() {
        let page = body(connect_page(&ConnectPage {
            provider: "P",
            app: "A",
            user: "u",
            scopes: &[],
            action: "/c",
            csrf: "t",
        }))
        .await;
        assert!(
            page.contains("<p id=\"scopes\">No specific permissions"),
            "{page}"
        );
        assert!(!page.contains("<ul"), "{page}");
    }
}
