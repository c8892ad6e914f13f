//! The consent page and the error page. Everything interpolated is HTML-escaped.

use std::fmt::Write as _;

/// Escapes text for HTML element content and double- or single-quoted attributes.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
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

/// What the consent page shows and carries.
pub struct Consent<'a> {
    pub client_id: &'a str,
    pub scopes: &'a [String],
    /// The authorization request, re-posted as hidden fields.
    pub hidden: &'a [(&'a str, &'a str)],
    /// Prefill of the login field.
    pub login: &'a str,
    /// A message above the form (e.g. "enter a login").
    pub notice: Option<&'a str>,
}

pub fn consent_page(c: &Consent<'_>) -> String {
    let scopes = if c.scopes.is_empty() {
        "no particular scope".to_owned()
    } else {
        c.scopes.join(" ")
    };
    let mut hidden = String::new();
    for (name, value) in c.hidden {
        let _ = writeln!(
            hidden,
            r#"    <input type="hidden" name="{}" value="{}">"#,
            escape(name),
            escape(value)
        );
    }
    let notice = c
        .notice
        .map(|n| format!("  <p class=\"notice\" id=\"notice\">{}</p>\n", escape(n)))
        .unwrap_or_default();
    let title = format!("App {} asks for {}", escape(c.client_id), escape(&scopes));
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Authorize {client} - authstamp stand-in provider</title>
</head>
<body>
  <h1>authstamp stand-in provider</h1>
  <p id="summary">{title}</p>
{notice}  <form method="post" action="/oauth/authorize">
{hidden}    <label for="login">Login</label>
    <input type="text" name="login" id="login" value="{login}" autocomplete="username">
    <button type="submit" name="decision" value="approve" id="approve">Approve</button>
    <button type="submit" name="decision" value="deny" id="deny">Deny</button>
  </form>
</body>
</html>
"#,
        client = escape(c.client_id),
        login = escape(c.login),
    )
}

pub fn error_page(message: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Invalid authorization request - authstamp stand-in provider</title>
</head>
<body>
  <h1>Invalid authorization request</h1>
  <p id="error">{}</p>
</body>
</html>
"#,
        escape(message)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn consent_page_escapes_everything() {
        let scopes = vec!["<script>".to_owned()];
        let page = consent_page(&Consent {
            client_id: "app\"><b>",
            scopes: &scopes,
            hidden: &[("state", "\"><script>alert(1)</script>")],
            login: "<bob>",
            notice: Some("<i>"),
        });
        assert!(!page.contains("<script>"));
        assert!(!page.contains("<b>"));
        assert!(!page.contains("<bob>"));
        assert!(!page.contains("<i>"));
        assert!(page.contains("App app&quot;&gt;&lt;b&gt; asks for &lt;script&gt;"));
        assert!(page.contains(r#"value="&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;""#));
    }
}
