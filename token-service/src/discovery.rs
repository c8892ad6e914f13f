//! OpenID Connect Discovery 1.0 and RFC 8414 authorization server metadata:
//! a generic provider's endpoints from its issuer.
//!
//! `{issuer}/.well-known/openid-configuration` is tried first, then
//! `/.well-known/oauth-authorization-server` inserted before the issuer's
//! path (RFC 8414 §3.1). The metadata's `issuer` must equal the one asked
//! for (RFC 8414 §3.3, OIDC Discovery §4.3): a document that names another
//! issuer is refused.

use crate::error::Error;
use serde::Deserialize;
use std::time::Duration;
use url::Url;

const MAX_METADATA: usize = 256 * 1024;

/// The endpoints authstamp uses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Metadata {
    pub issuer: String,
    #[serde(default)]
    pub authorization_endpoint: Option<String>,
    #[serde(default)]
    pub token_endpoint: Option<String>,
    #[serde(default)]
    pub revocation_endpoint: Option<String>,
    #[serde(default)]
    pub code_challenge_methods_supported: Option<Vec<String>>,
    #[serde(default)]
    pub token_endpoint_auth_methods_supported: Option<Vec<String>>,
}

/// The metadata URLs of `issuer`, in the order they are tried.
pub fn metadata_urls(issuer: &Url) -> Vec<Url> {
    let path = issuer.path().trim_end_matches('/');
    let mut urls = Vec::new();
    let mut oidc = issuer.clone();
    oidc.set_path(&format!("{path}/.well-known/openid-configuration"));
    urls.push(oidc);
    let mut oauth = issuer.clone();
    oauth.set_path(&format!("/.well-known/oauth-authorization-server{path}"));
    urls.push(oauth);
    urls
}

/// Fetches and checks the metadata of `issuer`.
pub async fn discover(issuer: &str, timeout: Duration) -> Result<Metadata, Error> {
    let issuer_url = crate::validate::http_url_without_query("issuer", issuer)?;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .user_agent(concat!("authstamp/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Error::internal("discovery client", e))?;
    let mut last = String::from("no metadata document");
    for url in metadata_urls(&issuer_url) {
        match fetch(&http, &url).await {
            Ok(metadata) => {
                if metadata.issuer.trim_end_matches('/') != issuer.trim_end_matches('/') {
                    return Err(Error::bad_request(format!(
                        "the metadata at {url} names another issuer ({:?})",
                        metadata.issuer
                    )));
                }
                return Ok(metadata);
            }
            Err(reason) => last = format!("{url}: {reason}"),
        }
    }
    Err(Error::bad_request(format!(
        "discovery of {issuer} failed ({last})"
    )))
}

async fn fetch(http: &reqwest::Client, url: &Url) -> Result<Metadata, String> {
    let mut response = http
        .get(url.clone())
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                "timeout".to_owned()
            } else {
                "unreachable".to_owned()
            }
        })?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status().as_u16()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|_| "read failed".to_owned())?
    {
        if body.len() + chunk.len() > MAX_METADATA {
            return Err("document too large".into());
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|e| format!("not metadata JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_known_urls() {
        let urls = metadata_urls(&Url::parse("https://login.example.com/tenant1/").unwrap());
        assert_eq!(
            urls[0].as_str(),
            "https://login.example.com/tenant1/.well-known/openid-configuration"
        );
        assert_eq!(
            urls[1].as_str(),
            "https://login.example.com/.well-known/oauth-authorization-server/tenant1"
        );
        let urls = metadata_urls(&Url::parse("http://127.0.0.1:9000").unwrap());
        assert_eq!(
            urls[1].as_str(),
            "http://127.0.0.1:9000/.well-known/oauth-authorization-server"
        );
    }
}
