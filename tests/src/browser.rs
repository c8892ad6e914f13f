//! The connect flow walked as a browser walks it: one cookie jar, each
//! redirect followed by hand so every hop can be checked, the provider's
//! consent form read from its HTML and submitted.

use reqwest::{Client, StatusCode};
use url::Url;

/// Where a connect flow ended.
pub struct ConnectOutcome {
    /// The callback URL the provider sent the browser to (carries code and state).
    pub callback_url: Url,
    pub final_status: StatusCode,
    /// The final response's `location` when it redirected (to `return_to`).
    pub final_location: Option<String>,
    pub final_body: String,
}

pub fn browser_client() -> Client {
    Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("browser client")
}

/// Opens `connect_url`, consents at the provider as `login`, and follows the
/// provider's redirect back to the token service's callback.
pub async fn walk_connect(browser: &Client, connect_url: &str, login: &str) -> ConnectOutcome {
    walk_connect_pkce(browser, connect_url, login, true).await
}

/// [`walk_connect`] for a provider that gets PKCE (`pkce`) or not.
pub async fn walk_connect_pkce(
    browser: &Client,
    connect_url: &str,
    login: &str,
    pkce: bool,
) -> ConnectOutcome {
    // 1. The token service shows its connect page; its Connect button posts
    //    the form, and the answer sends the browser to the provider.
    let page = browser
        .get(connect_url)
        .send()
        .await
        .expect("open connect_url");
    assert_eq!(page.status(), StatusCode::OK, "the connect page");
    let html = page.text().await.expect("connect page html");
    assert!(html.contains("id=\"connect\""), "no Connect button: {html}");
    let action = form_action(&html).expect("the connect form's action");
    let action = Url::parse(connect_url)
        .and_then(|u| u.join(&action))
        .expect("form action URL");
    // The form's hidden fields (its CSRF token; the page set the matching
    // cookie in the jar).
    let form = hidden_inputs(&html);
    assert!(
        form.iter().any(|(k, v)| k == "csrf" && !v.is_empty()),
        "no CSRF token in the connect form: {html}"
    );
    let response = browser
        .post(action)
        .form(&form)
        .send()
        .await
        .expect("press Connect");
    assert_eq!(
        response.status(),
        StatusCode::SEE_OTHER,
        "Connect must redirect to the provider"
    );
    let authorize_url = location(&response);
    let authorize = Url::parse(&authorize_url).expect("authorize URL");
    let params: Vec<(String, String)> = authorize.query_pairs().into_owned().collect();
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(param("response_type").as_deref(), Some("code"));
    if pkce {
        assert_eq!(param("code_challenge_method").as_deref(), Some("S256"));
        assert!(param("code_challenge").is_some_and(|c| c.len() == 43));
    } else {
        assert_eq!(
            param("code_challenge"),
            None,
            "PKCE sent to a provider without it"
        );
    }
    assert!(param("state").is_some_and(|s| s.len() >= 32));

    // 2. The provider shows its consent page; the user types a login and approves.
    let page = browser
        .get(authorize.clone())
        .send()
        .await
        .expect("authorize page");
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.expect("consent html");
    let mut form = hidden_inputs(&html);
    form.push(("login".into(), login.into()));
    form.push(("decision".into(), "approve".into()));
    let action = authorize.join("/oauth/authorize").expect("form action");
    let approved = browser
        .post(action)
        .form(&form)
        .send()
        .await
        .expect("approve");
    assert_eq!(
        approved.status(),
        StatusCode::FOUND,
        "consent must redirect back"
    );
    let callback_url = Url::parse(&location(&approved)).expect("callback URL");

    // 3. Back at the token service's callback, with the cookie set in step 1.
    let done = browser
        .get(callback_url.clone())
        .send()
        .await
        .expect("callback");
    let final_status = done.status();
    let final_location = done
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let final_body = done.text().await.unwrap_or_default();
    ConnectOutcome {
        callback_url,
        final_status,
        final_location,
        final_body,
    }
}

fn location(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| panic!("{} without location", response.status()))
}

/// The `action` of the first `<form …>` in `html`.
pub fn form_action(html: &str) -> Option<String> {
    let tag = html.split("<form").nth(1)?;
    attribute(&tag[..tag.find('>')?], "action")
}

/// `(name, value)` of every `<input type="hidden" …>` in `html`.
pub fn hidden_inputs(html: &str) -> Vec<(String, String)> {
    html.split("<input")
        .skip(1)
        .filter_map(|tag| {
            let tag = &tag[..tag.find('>')?];
            if attribute(tag, "type").as_deref() != Some("hidden") {
                return None;
            }
            Some((
                attribute(tag, "name")?,
                attribute(tag, "value").unwrap_or_default(),
            ))
        })
        .collect()
}

fn attribute(tag: &str, name: &str) -> Option<String> {
    let start = tag.find(&format!("{name}=\""))? + name.len() + 2;
    let len = tag[start..].find('"')?;
    Some(unescape_html(&tag[start..start + len]))
}

fn unescape_html(text: &str) -> String {
    text.replace("&quot;", "\"")
        .replace("&#34;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&lt;", "<")
        .replace("&#60;", "<")
        .replace("&gt;", ">")
        .replace("&#62;", ">")
        .replace("&amp;", "&")
        .replace("&#38;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_hidden_inputs_and_unescapes_them() {
        let html = r#"<form><input type="hidden" name="state" value="a&amp;b">
            <input type="text" name="login" value="x"><input type="hidden" name="scope" value="read write">
            <input type="hidden" name="q" value="&#60;&#34;&#38;&#62;"></form>"#;
        assert_eq!(
            hidden_inputs(html),
            vec![
                ("state".to_string(), "a&b".to_string()),
                ("scope".to_string(), "read write".to_string()),
                ("q".to_string(), "<\"&>".to_string())
            ]
        );
    }
}
