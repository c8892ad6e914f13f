//! Calls to a provider's token endpoint (code exchange and refresh), and the
//! classification of their failures into transient and permanent.
//!
//! Response bodies may carry tokens: they are read into zeroized buffers,
//! capped at 1 MiB, and never put in errors or logs (only a sanitized
//! `error` code is kept).

use crate::crypto::secrets::{
    AccessToken, AuthorizationCode, ClientSecret, PkceVerifier, RefreshToken,
};
use crate::store::providers::ClientAuth;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use reqwest::StatusCode;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::time::Duration;
use url::form_urlencoded;
use zeroize::Zeroizing;

const MAX_BODY: usize = 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Ten years: longer lifetimes are treated as this.
const MAX_EXPIRES_IN: u64 = 10 * 365 * 24 * 3600;

/// RFC 6749 §5.2 codes (and common variants) that mean the grant or the
/// client is dead, not the provider.
const PERMANENT_OAUTH_ERRORS: &[&str] = &[
    "invalid_grant",
    "invalid_client",
    "unauthorized_client",
    "invalid_scope",
    "unsupported_grant_type",
    "invalid_refresh_token",
    "token_revoked",
    "bad_refresh_token",
];

/// GitHub/Slack style: HTTP 200 with an error field.
const PERMANENT_200_ERRORS: &[&str] = &[
    "invalid_grant",
    "invalid_refresh_token",
    "token_revoked",
    "invalid_client",
    "bad_refresh_token",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Worth retrying later: network, timeout, 5xx, 429, unexpected answers.
    #[error("token endpoint unavailable ({0})")]
    Transient(String),
    /// The provider refused the grant or the client: retrying cannot help.
    #[error("token endpoint refused the request ({0})")]
    Permanent(String),
}

impl TokenError {
    pub fn reason(&self) -> &str {
        match self {
            TokenError::Transient(r) | TokenError::Permanent(r) => r,
        }
    }

    pub fn is_permanent(&self) -> bool {
        matches!(self, TokenError::Permanent(_))
    }
}

pub struct ClientCredentials<'a> {
    pub client_id: &'a str,
    pub client_secret: &'a ClientSecret,
    pub auth: ClientAuth,
}

pub enum GrantRequest<'a> {
    AuthorizationCode {
        code: &'a AuthorizationCode,
        /// Exactly as sent to the authorize endpoint.
        redirect_uri: &'a str,
        code_verifier: &'a PkceVerifier,
    },
    RefreshToken {
        refresh_token: &'a RefreshToken,
    },
    /// RFC 6749 §4.4: an app-level token for the client itself.
    ClientCredentials {
        /// The `scope` parameter (joined), if any.
        scope: Option<&'a str>,
    },
}

/// A successful token response.
#[derive(Debug)]
pub struct TokenSet {
    pub access_token: AccessToken,
    pub refresh_token: Option<RefreshToken>,
    pub expires_in: Option<u64>,
    pub scope: Option<String>,
    /// Hosts some providers name beside the token for this user's API
    /// (Salesforce `instance_url`, Pipedrive and Zoho `api_domain`), keyed by
    /// the catalog's derived placeholder; only hosts of the provider's own
    /// domains are kept.
    pub derived: crate::template::Values,
}

/// Token-response fields that name the user's API host, the catalog
/// placeholder each fills, and the domains such a host must belong to: a
/// response can never send a token to a host outside them.
const DERIVED_HOSTS: &[(&str, &str, &[&str])] = &[
    (
        "instance_url",
        "instance_host",
        &[".salesforce.com", ".force.com"],
    ),
    (
        "api_domain",
        "api_domain_host",
        &[
            ".pipedrive.com",
            ".zohoapis.com",
            ".zohoapis.eu",
            ".zohoapis.in",
            ".zohoapis.com.au",
            ".zohoapis.jp",
            ".zohoapis.ca",
            ".zohoapis.com.cn",
            ".zohoapis.sa",
        ],
    ),
];

#[derive(Clone, Debug)]
pub struct TokenClient {
    http: reqwest::Client,
}

impl TokenClient {
    pub fn new(total_timeout: Duration) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            // A token endpoint that redirects is misconfigured; following it
            // would resend the code and the client credentials elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(total_timeout)
            .user_agent(concat!("authstamp/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { http })
    }

    pub async fn request(
        &self,
        token_url: &str,
        client: &ClientCredentials<'_>,
        grant: &GrantRequest<'_>,
    ) -> Result<TokenSet, TokenError> {
        self.request_with(token_url, client, grant, &BTreeMap::new())
            .await
    }

    /// [`Self::request`] with the provider's extra form fields for this
    /// grant (catalog `token_request_params`, e.g. Shopify's `expiring=1`).
    pub async fn request_with(
        &self,
        token_url: &str,
        client: &ClientCredentials<'_>,
        grant: &GrantRequest<'_>,
        extra: &BTreeMap<String, String>,
    ) -> Result<TokenSet, TokenError> {
        let body = form_body(client, grant, extra);
        let mut request = self
            .http
            .post(token_url)
            .header(ACCEPT, "application/json")
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded");
        if client.auth == ClientAuth::Basic {
            request = request.header(AUTHORIZATION, basic_auth(client)?);
        }
        let response = request
            .body(body.as_bytes().to_vec())
            .send()
            .await
            .map_err(classify_send_error)?;
        let status = response.status();
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            return Err(TokenError::Transient(format!("http_{}", status.as_u16())));
        }
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = read_capped(response).await?;
        parse_token_response(status.as_u16(), content_type.as_deref(), &bytes)
    }
}

impl TokenClient {
    /// The post-exchange metadata call (Mailchimp): `GET url` with the new
    /// access token stamped per `header_format`; the answer's `field` must be
    /// one DNS label, as it becomes part of the API host.
    pub async fn fetch_metadata(
        &self,
        url: &str,
        header_format: &str,
        field: &str,
        access_token: &AccessToken,
    ) -> Result<String, TokenError> {
        let value = Zeroizing::new(header_format.replace("{token}", access_token.expose()));
        let mut header = HeaderValue::from_str(&value)
            .map_err(|_| TokenError::Permanent("invalid_access_token".into()))?;
        header.set_sensitive(true);
        let response = self
            .http
            .get(url)
            .header(ACCEPT, "application/json")
            .header(AUTHORIZATION, header)
            .send()
            .await
            .map_err(classify_send_error)?;
        let status = response.status();
        if !status.is_success() {
            return Err(TokenError::Transient(format!(
                "metadata_http_{}",
                status.as_u16()
            )));
        }
        let bytes = read_capped(response).await?;
        metadata_value(&bytes, field)
    }

    /// The connect page's key check: `method url` with `secret` stamped as
    /// the filter stamps calls (`format` in header `name`, or in query
    /// parameter `name`); the answer's status. The body is not read, and no
    /// redirect is followed.
    pub async fn check_credential(
        &self,
        method: crate::catalog::CheckMethod,
        mut url: url::Url,
        stamp: &CredentialStamp<'_>,
        secret: &AccessToken,
    ) -> Result<StatusCode, TokenError> {
        let value = Zeroizing::new(stamp.format.replace("{token}", secret.expose()));
        let invalid = || TokenError::Permanent("invalid_credential".into());
        let method = match method {
            crate::catalog::CheckMethod::Get => reqwest::Method::GET,
            crate::catalog::CheckMethod::Head => reqwest::Method::HEAD,
            crate::catalog::CheckMethod::Post => reqwest::Method::POST,
        };
        let request = if stamp.in_query {
            let kept: Vec<(String, String)> = url
                .query_pairs()
                .filter(|(k, _)| k != stamp.name)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            url.query_pairs_mut()
                .clear()
                .extend_pairs(kept)
                .append_pair(stamp.name, &value);
            self.http.request(method, url.as_str())
        } else {
            let name = reqwest::header::HeaderName::from_bytes(stamp.name.as_bytes())
                .map_err(|_| invalid())?;
            let mut header = HeaderValue::from_str(&value).map_err(|_| invalid())?;
            header.set_sensitive(true);
            self.http.request(method, url.as_str()).header(name, header)
        };
        let response = request.send().await.map_err(classify_send_error)?;
        Ok(response.status())
    }
}

/// How a key check stamps the credential.
pub struct CredentialStamp<'a> {
    pub name: &'a str,
    /// `{token}` once.
    pub format: &'a str,
    /// In the query parameter `name` instead of a header.
    pub in_query: bool,
}

/// The `field` of a metadata answer, if it is one lowercase DNS label.
pub fn metadata_value(bytes: &[u8], field: &str) -> Result<String, TokenError> {
    let invalid = || TokenError::Transient("invalid_metadata".into());
    let fields: Map<String, Value> = serde_json::from_slice(bytes).map_err(|_| invalid())?;
    let value = fields
        .get(field)
        .and_then(Value::as_str)
        .ok_or_else(invalid)?;
    let label = value.to_ascii_lowercase();
    let is_label = (1..=63).contains(&label.len())
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-');
    if is_label {
        Ok(label)
    } else {
        Err(invalid())
    }
}

/// Classifies a token endpoint's answer (status, `content-type`, body of at
/// most 1 MiB): the tokens, or a transient or permanent failure. Never
/// panics, whatever the bytes (fuzzed: `fuzz/fuzz_targets/token_response.rs`).
pub fn parse_token_response(
    status: u16,
    content_type: Option<&str>,
    bytes: &[u8],
) -> Result<TokenSet, TokenError> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        return Err(TokenError::Transient(format!("http_{}", status.as_u16())));
    }
    if bytes.len() > MAX_BODY {
        return Err(TokenError::Transient("response_too_large".into()));
    }
    let form_body = content_type.is_some_and(|ct| {
        ct.starts_with("application/x-www-form-urlencoded") || ct.starts_with("text/plain")
    });
    let fields = parse_fields(bytes, form_body);
    if status == StatusCode::BAD_REQUEST || status == StatusCode::UNAUTHORIZED {
        let code = fields.as_ref().and_then(error_code);
        return Err(match code {
            Some(code) if PERMANENT_OAUTH_ERRORS.contains(&code.as_str()) => {
                TokenError::Permanent(code)
            }
            Some(code) => TokenError::Transient(code),
            None => TokenError::Transient(format!("http_{}", status.as_u16())),
        });
    }
    if !status.is_success() {
        return Err(TokenError::Transient(format!("http_{}", status.as_u16())));
    }
    let fields = fields.ok_or_else(|| TokenError::Transient("invalid_response".into()))?;
    let ok_false = fields.get("ok").and_then(Value::as_bool) == Some(false);
    if fields.contains_key("error") || ok_false {
        let code = error_code(&fields).unwrap_or_else(|| "error".to_owned());
        return Err(if PERMANENT_200_ERRORS.contains(&code.as_str()) {
            TokenError::Permanent(code)
        } else {
            TokenError::Transient(code)
        });
    }
    token_set(&fields)
}

/// The form body of a token request (built apart: the serializer is not
/// `Send`).
pub fn form_body(
    client: &ClientCredentials<'_>,
    grant: &GrantRequest<'_>,
    extra: &BTreeMap<String, String>,
) -> Zeroizing<String> {
    let mut form = form_urlencoded::Serializer::new(String::new());
    // The catalog refuses the names written below; a custom provider's
    // duplicate of one of them is skipped rather than sent twice.
    for (key, value) in extra {
        if !crate::catalog::RESERVED_TOKEN_PARAMS.contains(&key.as_str()) {
            form.append_pair(key, value);
        }
    }
    match grant {
        GrantRequest::AuthorizationCode {
            code,
            redirect_uri,
            code_verifier,
        } => {
            form.append_pair("grant_type", "authorization_code")
                .append_pair("code", code.expose())
                .append_pair("redirect_uri", redirect_uri);
            // Empty: the provider does not support PKCE and got no challenge.
            if !code_verifier.expose().is_empty() {
                form.append_pair("code_verifier", code_verifier.expose());
            }
        }
        GrantRequest::ClientCredentials { scope } => {
            // The one reserved name a catalog may set (Zoom: account_credentials).
            let grant_type = extra
                .get("grant_type")
                .map_or("client_credentials", String::as_str);
            form.append_pair("grant_type", grant_type);
            if let Some(scope) = scope.filter(|s| !s.is_empty()) {
                form.append_pair("scope", scope);
            }
        }
        GrantRequest::RefreshToken { refresh_token } => {
            form.append_pair("grant_type", "refresh_token")
                .append_pair("refresh_token", refresh_token.expose());
        }
    }
    if client.auth == ClientAuth::Body {
        form.append_pair("client_id", client.client_id)
            .append_pair("client_secret", client.client_secret.expose());
    }
    Zeroizing::new(form.finish())
}

fn basic_auth(client: &ClientCredentials<'_>) -> Result<HeaderValue, TokenError> {
    // RFC 6749 §2.3.1: both parts form-urlencoded before base64.
    let id: String = form_urlencoded::byte_serialize(client.client_id.as_bytes()).collect();
    let secret = Zeroizing::new(
        form_urlencoded::byte_serialize(client.client_secret.expose().as_bytes())
            .collect::<String>(),
    );
    let joined = Zeroizing::new(format!("{id}:{}", secret.as_str()));
    let value = Zeroizing::new(format!("Basic {}", STANDARD.encode(joined.as_bytes())));
    let mut header = HeaderValue::from_str(&value)
        .map_err(|_| TokenError::Permanent("invalid_client_credentials".into()))?;
    header.set_sensitive(true);
    Ok(header)
}

fn classify_send_error(err: reqwest::Error) -> TokenError {
    // The error's text names the URL; keep only its kind.
    let kind = if err.is_timeout() {
        "timeout"
    } else if err.is_connect() {
        "connect"
    } else {
        "request"
    };
    TokenError::Transient(kind.into())
}

async fn read_capped(mut response: reqwest::Response) -> Result<Zeroizing<Vec<u8>>, TokenError> {
    let mut body = Zeroizing::new(Vec::new());
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(TokenError::Transient("response_too_large".into()));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(err) => return Err(classify_send_error(err)),
        }
    }
}

/// A JSON object, or a form-encoded body when the provider sends one.
fn parse_fields(bytes: &[u8], form_body: bool) -> Option<Map<String, Value>> {
    if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(bytes) {
        return Some(map);
    }
    if !form_body {
        return None;
    }
    let map: Map<String, Value> = form_urlencoded::parse(bytes)
        .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
        .collect();
    (!map.is_empty()).then_some(map)
}

/// The provider's `error` code, reduced to `[A-Za-z0-9_.-]` and 64 bytes so
/// it is safe to log and to echo.
fn error_code(fields: &Map<String, Value>) -> Option<String> {
    let code = fields.get("error")?.as_str()?;
    let clean = sanitize_code(code);
    (!clean.is_empty()).then_some(clean)
}

pub fn sanitize_code(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        .take(64)
        .collect()
}

fn token_set(fields: &Map<String, Value>) -> Result<TokenSet, TokenError> {
    // Slack answers the workspace's bot token at the top level and the
    // connecting user's own token under `authed_user`: the user's is stamped.
    if let Some(user) = fields.get("authed_user").and_then(Value::as_object) {
        let has_token = user
            .get("access_token")
            .and_then(Value::as_str)
            .is_some_and(is_usable_token);
        if has_token {
            let mut set = token_set(user)?;
            set.derived = derived_hosts(fields);
            return Ok(set);
        }
    }
    let invalid = || TokenError::Transient("invalid_response".into());
    let access_token = fields
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|t| is_usable_token(t))
        .ok_or_else(invalid)?;
    let refresh_token = fields
        .get("refresh_token")
        .and_then(Value::as_str)
        .filter(|t| is_usable_token(t))
        .map(RefreshToken::new);
    Ok(TokenSet {
        access_token: AccessToken::new(access_token),
        refresh_token,
        expires_in: fields.get("expires_in").and_then(parse_expires_in),
        scope: fields.get("scope").and_then(parse_scope),
        derived: derived_hosts(fields),
    })
}

fn derived_hosts(fields: &Map<String, Value>) -> crate::template::Values {
    let mut derived = crate::template::Values::new();
    for (field, placeholder, domains) in DERIVED_HOSTS {
        let host = fields
            .get(*field)
            .and_then(Value::as_str)
            .and_then(|raw| url::Url::parse(raw).ok())
            .filter(|url| url.scheme() == "https" && url.port().is_none())
            .and_then(|url| url.host_str().map(str::to_ascii_lowercase))
            .filter(|host| domains.iter().any(|domain| host.ends_with(domain)));
        if let Some(host) = host {
            derived.insert((*placeholder).to_owned(), host);
        }
    }
    derived
}

/// Non-empty, no whitespace or control characters: it ends up in a header.
fn is_usable_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 16 * 1024
        && !token.chars().any(|c| c.is_control() || c.is_whitespace())
}

/// A number or a numeric string (some providers quote it); 0 means "does
/// not expire" (Mailchimp), never "already expired".
fn parse_expires_in(value: &Value) -> Option<u64> {
    let secs = match value {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    }?;
    (secs > 0).then(|| secs.min(MAX_EXPIRES_IN))
}

fn parse_scope(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Array(items) => {
            let parts: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
            (!parts.is_empty()).then(|| parts.join(" "))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn slack_user_tokens_under_authed_user_are_the_ones_stored() {
        let set = token_set(&fields(json!({
            "ok": true, "access_token": "xoxb-bot", "token_type": "bot",
            "authed_user": {"id": "U1", "access_token": "xoxp-user", "refresh_token": "xoxe-1",
                            "expires_in": 43200, "scope": "chat:write", "token_type": "user"}
        })))
        .unwrap();
        assert_eq!(set.access_token.expose(), "xoxp-user");
        assert_eq!(set.refresh_token.unwrap().expose(), "xoxe-1");
        assert_eq!(set.expires_in, Some(43200));
        assert_eq!(set.scope.as_deref(), Some("chat:write"));
        // Bot scopes only: authed_user carries no token, the bot token is it.
        let set = token_set(&fields(json!({
            "access_token": "xoxb-bot", "authed_user": {"id": "U1"}
        })))
        .unwrap();
        assert_eq!(set.access_token.expose(), "xoxb-bot");
    }

    #[test]
    fn api_hosts_named_by_the_response_are_kept_only_on_the_providers_domains() {
        let derived = |v: Value| token_set(&fields(v)).unwrap().derived;
        let salesforce = derived(json!({
            "access_token": "at", "instance_url": "https://Acme.my.salesforce.com"
        }));
        assert_eq!(salesforce["instance_host"], "acme.my.salesforce.com");
        let zoho = derived(json!({"access_token": "at", "api_domain": "https://www.zohoapis.eu"}));
        assert_eq!(zoho["api_domain_host"], "www.zohoapis.eu");
        for evil in [
            "https://evil.example",
            "https://salesforce.com.evil.example",
            "http://acme.my.salesforce.com",
            "https://acme.my.salesforce.com:8443",
            "https://user@evil.example/.salesforce.com",
            "not a url",
        ] {
            let set = derived(json!({"access_token": "at", "instance_url": evil}));
            assert!(set.is_empty(), "{evil} kept: {set:?}");
        }
    }

    #[test]
    fn parses_lenient_token_responses() {
        let set = token_set(&fields(json!({
            "access_token": "at", "token_type": "BEARER", "expires_in": "3600",
            "refresh_token": "", "scope": "a b"
        })))
        .unwrap();
        assert_eq!(set.access_token.expose(), "at");
        assert!(
            set.refresh_token.is_none(),
            "empty refresh token is no refresh token"
        );
        assert_eq!(set.expires_in, Some(3600));
        assert_eq!(set.scope.as_deref(), Some("a b"));
        let set = token_set(&fields(json!({"access_token": "at", "expires_in": 60}))).unwrap();
        assert_eq!(set.expires_in, Some(60));
        let set = token_set(&fields(json!({"access_token": "at", "expires_in": 0}))).unwrap();
        assert_eq!(set.expires_in, None, "Mailchimp: 0 is no expiry");
        assert_eq!(set.scope, None);
        assert!(token_set(&fields(json!({"access_token": ""}))).is_err());
        assert!(token_set(&fields(json!({"token_type": "bearer"}))).is_err());
        assert!(token_set(&fields(json!({"access_token": "a\r\nb"}))).is_err());
    }

    #[test]
    fn error_codes_are_sanitized() {
        let f = fields(json!({"error": "invalid_grant<script>\n and more"}));
        assert_eq!(
            error_code(&f).as_deref(),
            Some("invalid_grantscriptandmore")
        );
        let long = "x".repeat(500);
        assert_eq!(sanitize_code(&long).len(), 64);
    }

    #[test]
    fn token_request_params_are_sent_and_never_replace_ours() {
        let secret = ClientSecret::new("s");
        let client = ClientCredentials {
            client_id: "id",
            client_secret: &secret,
            auth: ClientAuth::Basic,
        };
        let refresh_token = RefreshToken::new("rt");
        let extra = BTreeMap::from([
            ("expiring".to_owned(), "1".to_owned()),
            ("grant_type".to_owned(), "password".to_owned()),
        ]);
        let body = form_body(
            &client,
            &GrantRequest::RefreshToken {
                refresh_token: &refresh_token,
            },
            &extra,
        );
        let pairs: Vec<(String, String)> = form_urlencoded::parse(body.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        assert!(pairs.contains(&("expiring".into(), "1".into())));
        let grant_types: Vec<_> = pairs.iter().filter(|(k, _)| k == "grant_type").collect();
        assert_eq!(grant_types.len(), 1);
        assert_eq!(grant_types[0].1, "refresh_token");
    }

    #[test]
    fn metadata_values_must_be_one_dns_label() {
        assert_eq!(metadata_value(br#"{"dc":"us6"}"#, "dc").unwrap(), "us6");
        assert_eq!(metadata_value(br#"{"dc":"US6"}"#, "dc").unwrap(), "us6");
        for bad in [
            r#"{"dc":"us6.evil.example"}"#,
            r#"{"dc":""}"#,
            r#"{"dc":"a/b"}"#,
            r#"{"dc":5}"#,
            r#"{"other":"us6"}"#,
            "not json",
        ] {
            assert!(metadata_value(bad.as_bytes(), "dc").is_err(), "{bad}");
        }
    }

    #[test]
    fn form_bodies_parse_when_declared() {
        let f = parse_fields(b"access_token=abc&scope=repo", true).unwrap();
        assert_eq!(f["access_token"], "abc");
        assert!(parse_fields(b"access_token=abc", false).is_none());
    }
}
