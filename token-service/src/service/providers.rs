//! Provider configurations: a request is resolved (merged with its catalog
//! entry, the issuer's metadata and the defaults), validated, its secret
//! sealed, then upserted. Shared by the admin API and the CLI.

pub use crate::catalog::CredentialSpec;
use crate::catalog::{
    self, AuthType, CatalogEntry, ConnectionParam, Pkce, RevocationStyle, TokenRequestParams,
};
use crate::config::PublicUrl;
use crate::crypto::secrets::ClientSecret;
use crate::crypto::vault::{Aad, Vault};
use crate::db::{self, Db};
use crate::discovery;
use crate::error::Error;
use crate::policy::PolicyOverrides;
use crate::service::apps;
use crate::store::providers::{self, ClientAuth, ProviderRecord, ProviderSettings};
use crate::validate;
use authstamp_protocol::Placement;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A provider configuration: a catalog entry plus overrides, or every field
/// of a custom provider. Absent fields come from the catalog entry (or the
/// issuer's discovery document), then from the defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[derive(utoipa::ToSchema)]
pub struct PutProvider {
    /// A catalog entry (`authstamp providers list`) to start from.
    #[serde(default)]
    pub catalog: Option<String>,
    #[serde(default)]
    pub auth_type: Option<AuthType>,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub client_secret: Option<ClientSecret>,
    #[serde(default)]
    pub authorize_url: Option<String>,
    #[serde(default)]
    pub token_url: Option<String>,
    #[serde(default)]
    pub revocation_url: Option<String>,
    /// The refresh endpoint, when it is not the token URL.
    #[serde(default)]
    pub refresh_url: Option<String>,
    /// Where the catalog entry's post-exchange metadata call goes instead.
    #[serde(default)]
    pub metadata_url: Option<String>,
    /// Extra token-request form fields per grant (replaces the entry's).
    #[serde(default)]
    pub token_request_params: Option<TokenRequestParams>,
    #[serde(default)]
    pub api_base_url: Option<String>,
    #[serde(default)]
    pub api_hosts: Option<Vec<String>>,
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    #[serde(default)]
    pub scope_separator: Option<String>,
    #[serde(default)]
    pub client_auth: Option<ClientAuth>,
    #[serde(default)]
    pub pkce: Option<Pkce>,
    #[serde(default)]
    pub extra_authorize_params: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub connection_params: Option<Vec<ConnectionParam>>,
    #[serde(default)]
    pub header: Option<CredentialSpec>,
    /// The connect page's form fields (API-key and Basic providers).
    #[serde(default)]
    pub api_key_fields: Option<Vec<catalog::ApiKeyField>>,
    /// The call that checks credentials entered on the connect page.
    #[serde(default)]
    pub key_check: Option<catalog::KeyCheck>,
    /// Refresh policy overrides for this provider (absent: the service's defaults).
    #[serde(default)]
    pub refresh: PolicyOverrides,
    /// The provider's issuer identifier. RFC 9207: every authorization
    /// response must carry exactly this `iss`. OpenID Connect Discovery /
    /// RFC 8414: when the authorize or token URL is not given (nor by the
    /// catalog), the issuer's metadata fills them.
    #[serde(default)]
    pub issuer: Option<String>,
}

/// A stored provider configuration as shown to admins: never the secret.
#[derive(Debug, Serialize)]
pub struct ProviderView {
    pub app_id: String,
    pub provider: String,
    pub catalog: Option<String>,
    pub display_name: String,
    pub auth_type: AuthType,
    pub client_id: String,
    pub client_secret_set: bool,
    pub authorize_url: String,
    pub token_url: String,
    pub api_base_url: String,
    pub scopes: Vec<String>,
    pub scope_separator: String,
    pub client_auth: ClientAuth,
    pub header: CredentialSpec,
    #[serde(flatten)]
    pub settings: ProviderSettings,
    /// This provider's refresh policy overrides.
    pub refresh: PolicyOverrides,
    /// The `iss` authorization responses must carry (RFC 9207).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// The redirect URI to register with the provider.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect_uri: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl ProviderView {
    fn new(p: ProviderRecord, public_url: Option<&PublicUrl>) -> Self {
        Self {
            client_secret_set: !p.client_secret.is_empty(),
            redirect_uri: public_url
                .filter(|_| p.auth_type == AuthType::Oauth2)
                .map(PublicUrl::redirect_uri),
            app_id: p.app_id,
            provider: p.provider,
            catalog: p.catalog,
            display_name: p.display_name,
            auth_type: p.auth_type,
            client_id: p.client_id,
            authorize_url: p.authorize_url,
            token_url: p.token_url,
            api_base_url: p.api_base_url,
            scopes: p.scopes,
            scope_separator: p.scope_separator,
            client_auth: p.client_auth,
            header: CredentialSpec {
                name: p.header_name,
                format: p.header_format,
                placement: p.settings.stamp_in,
            },
            settings: p.settings,
            refresh: p.policy,
            issuer: p.issuer,
            created_at: p.created_at,
            updated_at: p.updated_at,
        }
    }
}

/// How long discovery may take.
const DISCOVERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A provider configuration with every field decided: the request merged
/// with its catalog entry, the issuer's metadata and the defaults. Not yet
/// checked, the secret not yet sealed.
#[derive(Debug, Clone)]
pub struct ResolvedProvider {
    pub catalog: Option<String>,
    pub auth_type: AuthType,
    pub display_name: String,
    pub client_id: String,
    /// OAuth providers only; sealed by [`seal`].
    pub client_secret: Option<ClientSecret>,
    /// OAuth 2 (authorization code) providers only.
    pub authorize_url: Option<String>,
    /// OAuth providers only.
    pub token_url: Option<String>,
    pub api_base_url: String,
    pub scopes: Vec<String>,
    pub scope_separator: String,
    pub client_auth: ClientAuth,
    pub header: CredentialSpec,
    pub policy: PolicyOverrides,
    pub issuer: Option<String>,
    pub settings: ProviderSettings,
}

/// The catalog entry `input` starts from, if it names one.
fn catalog_entry(input: &PutProvider) -> Result<Option<CatalogEntry>, Error> {
    let Some(name) = &input.catalog else {
        return Ok(None);
    };
    catalog::get()?.get(name).cloned().map(Some).ok_or_else(|| {
        Error::bad_request(format!(
            "no provider {name:?} in the catalog (GET /v1/catalog lists them)"
        ))
    })
}

/// Whether the authorize or token URL is given by neither the request nor
/// the catalog entry, so the issuer's metadata must fill it.
fn needs_discovery(input: &PutProvider, entry: Option<&CatalogEntry>) -> bool {
    input.authorize_url.is_none() && entry.and_then(|e| e.authorize_url.as_ref()).is_none()
        || input.token_url.is_none() && entry.and_then(|e| e.token_url.as_ref()).is_none()
}

/// Merges a request with its catalog entry and the issuer's metadata: a
/// field given in the request wins, then the discovered one, then the
/// entry's, then the default. Pure; fails only when a required field has
/// no value from any of them or the request gives one the type takes none of.
pub fn resolve(
    input: PutProvider,
    entry: Option<&CatalogEntry>,
    discovered: Option<&discovery::Metadata>,
) -> Result<ResolvedProvider, Error> {
    let from_entry = |f: fn(&CatalogEntry) -> Option<String>| entry.and_then(f);
    let auth_type = input
        .auth_type
        .or(entry.map(|e| e.auth_type))
        .unwrap_or_default();
    let authorize_url = input
        .authorize_url
        .or_else(|| discovered.and_then(|d| d.authorization_endpoint.clone()))
        .or_else(|| from_entry(|e| e.authorize_url.clone()));
    let token_url = input
        .token_url
        .or_else(|| discovered.and_then(|d| d.token_endpoint.clone()))
        .or_else(|| from_entry(|e| e.token_url.clone()));
    let entry_revocation = entry.and_then(|e| e.revocation.clone());
    let revocation_url = input
        .revocation_url
        .or_else(|| discovered.and_then(|d| d.revocation_endpoint.clone()))
        .or_else(|| entry_revocation.as_ref().map(|r| r.url.clone()));
    // An overridden URL keeps the entry's way of calling it; a custom
    // provider's (or a discovered) endpoint is RFC 7009.
    let revocation_style = revocation_url.as_ref().map(|_| {
        entry_revocation
            .as_ref()
            .map_or(RevocationStyle::Rfc7009, |r| r.style)
    });
    let refresh_url = input
        .refresh_url
        .or_else(|| from_entry(|e| e.refresh_url.clone()));
    let post_exchange_metadata =
        entry
            .and_then(|e| e.post_exchange_metadata.clone())
            .map(|mut m| {
                if let Some(url) = &input.metadata_url {
                    m.url = url.clone();
                }
                m
            });
    if input.metadata_url.is_some() && post_exchange_metadata.is_none() {
        return Err(Error::bad_request(
            "metadata_url overrides the catalog entry's post_exchange_metadata, which it has none of",
        ));
    }
    let token_request_params = input
        .token_request_params
        .or_else(|| entry.map(|e| e.token_request_params.clone()))
        .unwrap_or_default();
    let api_base_url = input
        .api_base_url
        .or_else(|| from_entry(|e| e.api_base_url.clone()))
        .ok_or_else(|| Error::bad_request("api_base_url is required"))?;
    let connection_params = input
        .connection_params
        .or_else(|| entry.map(|e| e.connection_params.clone()))
        .unwrap_or_default();
    let quirks = entry
        .map(|e| e.token_response_quirks.clone())
        .unwrap_or_default();
    let api_hosts = match input.api_hosts {
        Some(hosts) => hosts,
        None => match entry {
            Some(e) => e.api_hosts.clone(),
            None => vec![host_template(&api_base_url)?],
        },
    };
    let extra_authorize_params = input
        .extra_authorize_params
        .or_else(|| entry.map(|e| e.extra_authorize_params.clone()))
        .unwrap_or_default();
    let scope_separator = input
        .scope_separator
        .or_else(|| from_entry(|e| Some(e.scope_separator.clone())))
        .unwrap_or_else(|| " ".to_owned());
    let scopes = input
        .scopes
        .or_else(|| entry.map(|e| e.default_scopes.clone()))
        .unwrap_or_default();
    let header = input
        .header
        .or_else(|| entry.map(|e| e.header.clone()))
        .unwrap_or_else(|| match auth_type {
            AuthType::Basic => CredentialSpec {
                name: "authorization".into(),
                format: "Basic {token}".into(),
                placement: Placement::Header,
            },
            _ => CredentialSpec::default(),
        });
    let client_auth = input
        .client_auth
        .or(entry.map(|e| e.client_auth))
        .or_else(|| {
            let methods =
                discovered.and_then(|d| d.token_endpoint_auth_methods_supported.as_ref())?;
            let basic = methods.iter().any(|m| m == "client_secret_basic");
            let post = methods.iter().any(|m| m == "client_secret_post");
            (post && !basic).then_some(ClientAuth::Body)
        })
        .unwrap_or_default();
    let pkce = input
        .pkce
        .or(entry.map(|e| e.pkce))
        .or_else(|| {
            let methods = discovered.and_then(|d| d.code_challenge_methods_supported.as_ref())?;
            Some(if methods.iter().any(|m| m == "S256") {
                Pkce::Supported
            } else {
                Pkce::Unknown
            })
        })
        .unwrap_or_default();
    let api_key_fields = input
        .api_key_fields
        .or_else(|| entry.map(|e| e.api_key_fields.clone()))
        .unwrap_or_default();
    let key_check = input
        .key_check
        .or_else(|| entry.and_then(|e| e.key_check.clone()));
    let display_name = input
        .display_name
        .or_else(|| from_entry(|e| Some(e.display_name.clone())))
        .unwrap_or_default();

    // What each credential type needs.
    let (client_id, client_secret) = if auth_type.is_oauth() {
        let client_id = input
            .client_id
            .ok_or_else(|| Error::bad_request("client_id is required for OAuth providers"))?;
        let secret = input
            .client_secret
            .ok_or_else(|| Error::bad_request("client_secret is required for OAuth providers"))?;
        (client_id, Some(secret))
    } else {
        if input.client_id.is_some() || input.client_secret.is_some() {
            return Err(Error::bad_request(format!(
                "{} providers take no client_id or client_secret: the credential is stored per connection",
                auth_type.as_str()
            )));
        }
        (String::new(), None)
    };
    if auth_type == AuthType::Oauth2 && authorize_url.is_none() {
        return Err(Error::bad_request(
            "authorize_url is required (or an issuer to discover it from)",
        ));
    }
    if auth_type.is_oauth() && token_url.is_none() {
        return Err(Error::bad_request(
            "token_url is required (or an issuer to discover it from)",
        ));
    }
    let stamp_in = header.placement;
    Ok(ResolvedProvider {
        catalog: input.catalog,
        auth_type,
        display_name,
        client_id,
        client_secret,
        // Only the types that use a URL keep it.
        authorize_url: authorize_url.filter(|_| auth_type == AuthType::Oauth2),
        token_url: token_url.filter(|_| auth_type.is_oauth()),
        api_base_url,
        scopes,
        scope_separator,
        client_auth,
        header,
        policy: input.refresh,
        issuer: input.issuer,
        settings: ProviderSettings {
            api_hosts,
            revocation_url,
            revocation_style,
            pkce,
            extra_authorize_params,
            connection_params,
            token_response_quirk: None,
            token_response_quirks: quirks,
            refresh_url,
            token_request_params,
            revocation_method: entry_revocation.as_ref().map(|r| r.method),
            revocation_client_auth: entry_revocation.as_ref().map(|r| r.client_auth),
            revocation_token: entry_revocation.as_ref().map(|r| r.token),
            post_exchange_metadata,
            stamp_in,
            api_key_fields,
            key_check,
        },
    })
}

/// Checks a resolved configuration: every field's form, the templates, and
/// that a fixed API URL is an upstream the filter accepts.
pub fn validate(p: &ResolvedProvider) -> Result<(), Error> {
    validate::plain_text("display_name", &p.display_name, 100, false)?;
    if let Some(secret) = &p.client_secret {
        validate::plain_text("client_id", &p.client_id, 1024, true)?;
        let text = secret.expose();
        if text.is_empty() || text.len() > 4096 || text.chars().any(char::is_control) {
            return Err(Error::bad_request(
                "client_secret must be 1 to 4096 bytes without control characters",
            ));
        }
    }
    let s = &p.settings;
    let mut problems = catalog::validate_params(&s.connection_params);
    if p.auth_type.is_oauth() && (!s.api_key_fields.is_empty() || s.key_check.is_some()) {
        problems.push("api_key_fields and key_check are for api_key and basic providers".into());
    }
    problems.extend(catalog::key_field_problems(p.auth_type, &s.api_key_fields));
    problems.extend(s.key_check.iter().flat_map(catalog::KeyCheck::problems));
    problems.extend(catalog::validate_templates(
        &catalog::Templates {
            authorize_url: p.authorize_url.as_deref(),
            token_url: p.token_url.as_deref(),
            refresh_url: s.refresh_url.as_deref(),
            revocation_url: s.revocation_url.as_deref(),
            metadata_url: s.post_exchange_metadata.as_ref().map(|m| m.url.as_str()),
            api_base_url: Some(&p.api_base_url),
            api_hosts: &s.api_hosts,
            extra_authorize_params: &s.extra_authorize_params,
            connection_params: &s.connection_params,
            quirks: &s.token_response_quirks,
            metadata_fills: s.post_exchange_metadata.as_ref().map(|m| m.fills.as_str()),
            https_only: false,
        },
        &|_| "acme".to_owned(),
    ));
    for (what, url) in [
        ("authorize_url", p.authorize_url.as_deref()),
        ("token_url", p.token_url.as_deref()),
        ("api_base_url", Some(p.api_base_url.as_str())),
    ] {
        let url = url.unwrap_or_default();
        if url.len() > 2048 || url.chars().any(char::is_control) {
            problems.push(format!(
                "{what} must be at most 2048 bytes without control characters"
            ));
        }
    }
    if !p.api_base_url.contains('{') {
        // A fixed API URL must already be what the filter accepts as an
        // upstream (`authstamp_protocol::upstream`), not fail at the first call.
        let rule = url::Url::parse(&p.api_base_url)
            .map_err(|_| "api_base_url is not a URL")
            .and_then(|url| validate::upstream_of(&url).map_err(|_| "api_base_url has no host"))
            .and_then(|upstream| authstamp_protocol::upstream::check(&upstream));
        if let Err(reason) = rule {
            problems.push(format!("api_base_url: {reason}"));
        }
    }
    if let Some(first) = problems.first() {
        return Err(Error::bad_request(format!(
            "invalid provider configuration: {first}{}",
            if problems.len() > 1 {
                format!(" (and {} more)", problems.len() - 1)
            } else {
                String::new()
            }
        )));
    }
    validate::scopes(&p.scopes, &p.scope_separator)?;
    validate::credential_name(p.header.placement, &p.header.name)?;
    validate::header_format(&p.header.format)?;
    p.policy.validate()?;
    if let Some(issuer) = &p.issuer {
        // RFC 8414 §2: https (http for tests), no query, no fragment; compared
        // as a plain string, so kept exactly as given.
        let url = validate::http_url_without_query("issuer", issuer)?;
        if url.fragment().is_some() || issuer.len() > 2048 {
            return Err(Error::bad_request(
                "issuer must be a URL without query or fragment",
            ));
        }
    }
    Ok(())
}

/// The record to store: the client secret sealed into a vault envelope
/// bound to (app, provider).
pub fn seal(
    p: ResolvedProvider,
    vault: &Vault,
    app_id: &str,
    provider: &str,
    now: i64,
) -> Result<ProviderRecord, Error> {
    let client_secret = match &p.client_secret {
        Some(secret) => vault.seal_str(&Aad::provider_secret(app_id, provider), secret.expose())?,
        None => Vec::new(),
    };
    Ok(ProviderRecord {
        app_id: app_id.to_owned(),
        provider: provider.to_owned(),
        client_id: p.client_id,
        client_secret,
        authorize_url: p.authorize_url.unwrap_or_default(),
        token_url: p.token_url.unwrap_or_default(),
        api_base_url: p.api_base_url,
        scopes: p.scopes,
        scope_separator: p.scope_separator,
        client_auth: p.client_auth,
        header_name: p.header.name,
        header_format: p.header.format,
        policy: p.policy,
        issuer: p.issuer,
        catalog: p.catalog,
        display_name: p.display_name,
        auth_type: p.auth_type,
        settings: p.settings,
        created_at: now,
        updated_at: now,
    })
}

/// Creates or replaces the configuration of `provider` for `app_id`:
/// resolve, validate, seal, upsert.
pub async fn put_provider(
    db: &Db,
    vault: &Vault,
    public_url: Option<&PublicUrl>,
    app_id: &str,
    provider: &str,
    input: PutProvider,
) -> Result<ProviderView, Error> {
    validate::provider_name(provider)?;
    let entry = catalog_entry(&input)?;
    let discovered = match &input.issuer {
        Some(issuer) if needs_discovery(&input, entry.as_ref()) => {
            Some(discovery::discover(issuer, DISCOVERY_TIMEOUT).await?)
        }
        _ => None,
    };
    let resolved = resolve(input, entry.as_ref(), discovered.as_ref())?;
    validate(&resolved)?;
    apps::require(db, app_id).await?;
    let record = seal(resolved, vault, app_id, provider, db::now())?;
    let stored = providers::upsert(db, &record).await?;
    tracing::info!(app_id, provider, catalog = ?stored.catalog, auth_type = stored.auth_type.as_str(), "stored provider configuration");
    Ok(ProviderView::new(stored, public_url))
}

/// The host part of a URL template (placeholders kept), lowercase.
fn host_template(url: &str) -> Result<String, Error> {
    let after = url
        .split_once("://")
        .map(|(_, rest)| rest)
        .ok_or_else(|| Error::bad_request("api_base_url must be an absolute URL"))?;
    let authority = &after[..after.find(['/', '?', '#']).unwrap_or(after.len())];
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    };
    Ok(host.to_ascii_lowercase())
}

pub async fn get_provider(
    db: &Db,
    public_url: Option<&PublicUrl>,
    app_id: &str,
    provider: &str,
) -> Result<ProviderView, Error> {
    apps::require(db, app_id).await?;
    providers::get(db, app_id, provider)
        .await?
        .map(|p| ProviderView::new(p, public_url))
        .ok_or_else(|| Error::not_found(format!("app {app_id:?} has no provider {provider:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn input(value: serde_json::Value) -> PutProvider {
        serde_json::from_value(value).unwrap()
    }

    fn entry(name: &str) -> CatalogEntry {
        catalog::get().unwrap().get(name).unwrap().clone()
    }

    fn oauth() -> serde_json::Value {
        json!({"client_id": "cid", "client_secret": "sec",
               "authorize_url": "https://p.test/authorize", "token_url": "https://p.test/token",
               "api_base_url": "https://API.p.test:8443/v1"})
    }

    fn with(mut base: serde_json::Value, key: &str, value: serde_json::Value) -> serde_json::Value {
        base[key] = value;
        base
    }

    fn without(mut base: serde_json::Value, key: &str) -> serde_json::Value {
        base.as_object_mut().unwrap().remove(key);
        base
    }

    type Check = fn(&ResolvedProvider);
    /// (case, request, catalog entry, discovered metadata, what must hold or
    /// the start of the error message).
    type Case = (
        &'static str,
        serde_json::Value,
        Option<&'static str>,
        bool,
        Result<Check, &'static str>,
    );

    #[test]
    fn resolve_merges_request_entry_discovery_and_defaults() {
        let discovered = discovery::Metadata {
            issuer: "https://issuer.test".into(),
            authorization_endpoint: Some("https://issuer.test/auth".into()),
            token_endpoint: Some("https://issuer.test/token".into()),
            revocation_endpoint: Some("https://issuer.test/revoke".into()),
            code_challenge_methods_supported: Some(vec!["plain".into(), "S256".into()]),
            token_endpoint_auth_methods_supported: Some(vec!["client_secret_post".into()]),
        };
        let cases: Vec<Case> = vec![
            ("custom oauth2: defaults and the host of api_base_url", oauth(), None, false, Ok(|p| {
                assert_eq!(p.auth_type, AuthType::Oauth2);
                assert_eq!(p.client_id, "cid");
                assert_eq!(p.client_secret.as_ref().unwrap().expose(), "sec");
                assert_eq!(p.authorize_url.as_deref(), Some("https://p.test/authorize"));
                assert_eq!(p.token_url.as_deref(), Some("https://p.test/token"));
                assert_eq!(p.settings.api_hosts, ["api.p.test"]);
                assert_eq!(p.scope_separator, " ");
                assert_eq!(p.client_auth, ClientAuth::default());
                assert_eq!(p.header, CredentialSpec::default());
                assert_eq!(p.settings.revocation_url, None);
                assert_eq!(p.settings.revocation_style, None);
                assert_eq!(p.display_name, "");
            })),
            ("a placeholder host stays a template", with(oauth(), "api_base_url", json!("https://{dc}.Api.test/x")), None, false, Ok(|p| {
                assert_eq!(p.settings.api_hosts, ["{dc}.api.test"]);
            })),
            ("given api_hosts win", with(oauth(), "api_hosts", json!(["a.test"])), None, false, Ok(|p| {
                assert_eq!(p.settings.api_hosts, ["a.test"]);
            })),
            ("no api_base_url", without(oauth(), "api_base_url"), None, false, Err("api_base_url is required")),
            ("a relative api_base_url has no host", with(oauth(), "api_base_url", json!("/v1")), None, false, Err("api_base_url must be an absolute URL")),
            ("oauth without client_id", without(oauth(), "client_id"), None, false, Err("client_id is required")),
            ("oauth without client_secret", without(oauth(), "client_secret"), None, false, Err("client_secret is required")),
            ("oauth2 without authorize_url", without(oauth(), "authorize_url"), None, false, Err("authorize_url is required")),
            ("oauth without token_url", without(oauth(), "token_url"), None, false, Err("token_url is required")),
            ("client credentials need no authorize_url and keep none",
                with(oauth(), "auth_type", json!("oauth2_client_credentials")), None, false, Ok(|p| {
                assert_eq!(p.authorize_url, None);
                assert_eq!(p.token_url.as_deref(), Some("https://p.test/token"));
            })),
            ("an api_key provider keeps no OAuth URL",
                json!({"auth_type": "api_key", "api_base_url": "https://api.k.test",
                       "authorize_url": "https://k.test/a", "token_url": "https://k.test/t"}),
                None, false, Ok(|p| {
                assert_eq!((p.authorize_url.as_deref(), p.token_url.as_deref()), (None, None));
                assert_eq!(p.client_id, "");
                assert!(p.client_secret.is_none());
            })),
            ("an api_key provider takes no client_id",
                json!({"auth_type": "api_key", "api_base_url": "https://api.k.test", "client_id": "x"}),
                None, false, Err("api_key providers take no client_id")),
            ("a basic provider's default header",
                json!({"auth_type": "basic", "api_base_url": "https://api.k.test"}), None, false, Ok(|p| {
                assert_eq!(p.header.name, "authorization");
                assert_eq!(p.header.format, "Basic {token}");
            })),
            ("the catalog entry fills what the request leaves out",
                json!({"catalog": "github", "client_id": "cid", "client_secret": "sec"}),
                Some("github"), false, Ok(|p| {
                assert_eq!(p.catalog.as_deref(), Some("github"));
                assert_eq!(p.display_name, "GitHub");
                assert_eq!(p.authorize_url.as_deref(), Some("https://github.com/login/oauth/authorize"));
                assert_eq!(p.api_base_url, "https://api.github.com");
                assert_eq!(p.settings.api_hosts, ["api.github.com", "uploads.github.com"]);
                assert_eq!(p.settings.pkce, Pkce::Supported);
                assert_eq!(p.settings.revocation_style, Some(RevocationStyle::ProviderSpecific));
                assert!(p.settings.revocation_method.is_some());
            })),
            ("the request wins over the entry; an overridden revocation URL keeps the entry's style",
                json!({"catalog": "github", "client_id": "cid", "client_secret": "sec",
                       "token_url": "https://gh.test/token", "display_name": "Mine",
                       "revocation_url": "https://gh.test/revoke", "scopes": ["repo"]}),
                Some("github"), false, Ok(|p| {
                assert_eq!(p.token_url.as_deref(), Some("https://gh.test/token"));
                assert_eq!(p.display_name, "Mine");
                assert_eq!(p.scopes, ["repo"]);
                assert_eq!(p.settings.revocation_url.as_deref(), Some("https://gh.test/revoke"));
                assert_eq!(p.settings.revocation_style, Some(RevocationStyle::ProviderSpecific));
            })),
            ("metadata_url overrides the entry's post-exchange call",
                json!({"catalog": "mailchimp", "client_id": "cid", "client_secret": "sec",
                       "metadata_url": "https://m.test/meta"}),
                Some("mailchimp"), false, Ok(|p| {
                let meta = p.settings.post_exchange_metadata.as_ref().unwrap();
                assert_eq!(meta.url, "https://m.test/meta");
            })),
            ("metadata_url without an entry's post-exchange call",
                with(oauth(), "metadata_url", json!("https://m.test/meta")), None, false,
                Err("metadata_url overrides")),
            ("discovery fills the URLs, RFC 7009 revocation, PKCE and body client auth",
                json!({"client_id": "cid", "client_secret": "sec", "issuer": "https://issuer.test",
                       "api_base_url": "https://api.issuer.test"}),
                None, true, Ok(|p| {
                assert_eq!(p.authorize_url.as_deref(), Some("https://issuer.test/auth"));
                assert_eq!(p.token_url.as_deref(), Some("https://issuer.test/token"));
                assert_eq!(p.settings.revocation_url.as_deref(), Some("https://issuer.test/revoke"));
                assert_eq!(p.settings.revocation_style, Some(RevocationStyle::Rfc7009));
                assert_eq!(p.settings.pkce, Pkce::Supported);
                assert_eq!(p.client_auth, ClientAuth::Body);
                assert_eq!(p.issuer.as_deref(), Some("https://issuer.test"));
            })),
            ("a given URL wins over the discovered one",
                with(with(oauth(), "issuer", json!("https://issuer.test")), "pkce", json!("unknown")),
                None, true, Ok(|p| {
                assert_eq!(p.authorize_url.as_deref(), Some("https://p.test/authorize"));
                assert_eq!(p.settings.pkce, Pkce::Unknown);
            })),
        ];
        for (case, request, entry_name, with_discovery, expected) in cases {
            let entry = entry_name.map(entry);
            let got = resolve(
                input(request),
                entry.as_ref(),
                with_discovery.then_some(&discovered),
            );
            match (got, expected) {
                (Ok(p), Ok(check)) => check(&p),
                (Err(e), Err(start)) => assert!(
                    e.message().starts_with(start),
                    "{case}: error {:?} does not start with {start:?}",
                    e.message()
                ),
                (got, _) => panic!("{case}: unexpected {got:?}"),
            }
        }
    }

    #[test]
    fn discovery_is_needed_only_when_a_url_is_missing_everywhere() {
        assert!(!needs_discovery(&input(oauth()), None));
        assert!(needs_discovery(&input(without(oauth(), "token_url")), None));
        let github = entry("github");
        assert!(!needs_discovery(&input(json!({})), Some(&github)));
    }

    #[test]
    fn validate_refuses_what_resolve_let_through() {
        let ok = resolve(input(oauth()), None, None).unwrap();
        validate(&ok).unwrap();
        for (case, request, start) in [
            (
                "a control character in display_name",
                with(oauth(), "display_name", json!("a\u{7}")),
                "display_name",
            ),
            (
                "an empty client secret",
                with(oauth(), "client_secret", json!("")),
                "client_secret must be",
            ),
            (
                "an api_base_url the filter refuses",
                with(oauth(), "api_base_url", json!("https://user@api.p.test")),
                "invalid provider configuration",
            ),
            (
                "an issuer with a fragment",
                with(oauth(), "issuer", json!("https://i.test/#x")),
                "issuer must",
            ),
            (
                "key_check on an OAuth provider",
                with(
                    oauth(),
                    "api_key_fields",
                    json!([{"name": "api_key", "label": "Key", "secret": true}]),
                ),
                "invalid provider configuration",
            ),
        ] {
            let resolved = resolve(input(request), None, None).unwrap();
            let err = validate(&resolved).unwrap_err();
            assert!(
                err.message().starts_with(start),
                "{case}: {:?}",
                err.message()
            );
        }
    }
}
