//! Tiny HTML pages for the browser side of the connect flow.

use axum::http::{header, HeaderValue};
use axum::response::{Html, IntoResponse, Response};

pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;\
    padding:0 1rem;color:#222}h1{font-size:1.4rem}ul{padding-left:1.2rem}\
    button{font-size:1rem;padding:.6rem 1.4rem;border:0;border-radius:.3rem;\
    background:#2457d6;color:#fff;cursor:pointer}";

/// What the connect page shows.
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

/// The connect page: who asks, for which provider, which scopes, and a
/// Connect button (`id="connect"`) that posts the form.
pub fn connect_page(page: &ConnectPage<'_>) -> Response {
    let scopes = if page.scopes.is_empty() {
        "  <p id=\"scopes\">No specific permissions are requested; the provider shows what the app gets.</p>\n"
            .to_owned()
    } else {
        let items: String = page
            .scopes
            .iter()
            .map(|s| format!("    <li>{}</li>\n", escape(s)))
            .collect();
        format!("  <p>Permissions requested:</p>\n  <ul id=\"scopes\">\n{items}  </ul>\n")
    };
    let body = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>Connect {provider}</title><style>{STYLE}</style></head>\n<body>\n\
         <h1 id=\"title\">Connect {provider}</h1>\n\
         <p id=\"summary\">{app} asks to use your {provider} account.</p>\n\
         <p id=\"account\">This link connects it for <strong>{user}</strong> in {app}. \
         If that is not you, close this page.</p>\n{scopes}\
         <form method=\"post\" action=\"{action}\">\n\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\n\
         <button type=\"submit\" id=\"connect\">Connect {provider}</button>\n</form>\n\
         <p>You will sign in at {provider} and approve there.</p>\n</body></html>\n",
        provider = escape(page.provider),
        app = escape(page.app),
        user = escape(page.user),
        action = escape(page.action),
        csrf = escape(page.csrf),
    );
    page_response(body)
}

/// The result page after the callback.
pub fn connected_page(provider: &str, user: &str) -> Response {
    let body = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Connected</title>\
         <style>{STYLE}</style></head>\n<body>\n<h1 id=\"result\" data-status=\"connected\">\
         Connected</h1>\n<p>Connected {} for {}. You can close this window.</p>\n</body></html>\n",
        escape(provider),
        escape(user)
    );
    page_response(body)
}

fn page_response(body: String) -> Response {
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

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape(r#"<script>alert('x')&"</script>"#),
            "&lt;script&gt;alert(&#39;x&#39;)&amp;&quot;&lt;/script&gt;"
        );
    }
}
