//! Apps and provider configurations: the service functions shared by the
//! admin HTTP API and the CLI, and the thin HTTP handlers over them.

pub use crate::catalog::CredentialSpec;
use crate::catalog::{
    self, AuthType, CatalogEntry, ConnectionParam, Pkce, RevocationStyle, TokenRequestParams,
};
use crate::config::PublicUrl;
use crate::crypto::secrets::{hex, random_bytes, sha256, AppKey, ClientSecret};
use crate::crypto::vault::{Aad, Vault};
use crate::db::{self, Db};
use crate::discovery;
use crate::error::{ApiError, ApiJson, ApiPath};
use crate::http::auth::AdminAuth;
use crate::policy::PolicyOverrides;
use crate::service::state::AppState;
use crate::store::apps::{self, AppRecord};
use crate::store::providers::{self, ClientAuth, ProviderRecord, ProviderSettings};
use crate::validate;
use authstamp_protocol::Placement;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateApp {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub allowed_return_to: Vec<String>,
}

/// The only place an app key is ever shown.
#[derive(Serialize)]
pub struct CreatedApp {
    pub app_id: String,
    pub app_key: String,
}

impl std::fmt::Debug for CreatedApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedApp")
            .field("app_id", &self.app_id)
            .field("app_key", &"<redacted>")
            .finish()
    }
}

pub async fn create_app(db: &Db, input: CreateApp) -> Result<CreatedApp, ApiError> {
    let name = input.name.unwrap_or_default();
    validate::plain_text("name", &name, 200, false)?;
    if input.allowed_return_to.len() > 50 {
        return Err(ApiError::bad_request(
            "at most 50 allowed_return_to entries",
        ));
    }
    let mut allowed = Vec::with_capacity(input.allowed_return_to.len());
    for entry in &input.allowed_return_to {
        let url = validate::http_url("allowed_return_to", entry)?;
        if url.query().is_some() {
            return Err(ApiError::bad_request(
                "allowed_return_to entries must not contain a query",
            ));
        }
        allowed.push(url.to_string());
    }
    let key = AppKey::generate();
    let record = AppRecord {
        app_id: format!("app_{}", hex(&random_bytes::<12>())),
        name,
        key_hash: sha256(key.expose().as_bytes()).to_vec(),
        allowed_return_to: allowed,
        created_at: db::now(),
    };
    apps::insert(db, &record).await?;
    tracing::info!(app_id = %record.app_id, "created app");
    Ok(CreatedApp {
        app_id: record.app_id,
        app_key: key.expose().to_owned(),
    })
}

/// A provider configuration: a catalog entry plus overrides, or every field
/// of a custom provider. Absent fields come from the catalog entry (or the
/// issuer's discovery document), then from the defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
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

async fn require_app(db: &Db, app_id: &str) -> Result<AppRecord, ApiError> {
    apps::get(db, app_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no app {app_id:?}")))
}

/// How long discovery may take.
const DISCOVERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Creates or replaces the configuration of `provider` for `app_id`.
pub async fn put_provider(
    db: &Db,
    vault: &Vault,
    public_url: Option<&PublicUrl>,
    app_id: &str,
    provider: &str,
    input: PutProvider,
) -> Result<ProviderView, ApiError> {
    validate::provider_name(provider)?;
    let entry = match &input.catalog {
        None => None,
        Some(name) => Some(catalog::get()?.get(name).cloned().ok_or_else(|| {
            ApiError::bad_request(format!(
                "no provider {name:?} in the catalog (GET /v1/catalog lists them)"
            ))
        })?),
    };
    let needs_urls = input.authorize_url.is_none()
        && entry
            .as_ref()
            .and_then(|e| e.authorize_url.as_ref())
            .is_none()
        || input.token_url.is_none() && entry.as_ref().and_then(|e| e.token_url.as_ref()).is_none();
    let discovered = match &input.issuer {
        Some(issuer) if needs_urls => Some(discovery::discover(issuer, DISCOVERY_TIMEOUT).await?),
        _ => None,
    };
    let from_entry = |f: fn(&CatalogEntry) -> Option<String>| entry.as_ref().and_then(f);
    let auth_type = input
        .auth_type
        .or(entry.as_ref().map(|e| e.auth_type))
        .unwrap_or_default();
    let authorize_url = input
        .authorize_url
        .or_else(|| {
            discovered
                .as_ref()
                .and_then(|d| d.authorization_endpoint.clone())
        })
        .or_else(|| from_entry(|e| e.authorize_url.clone()));
    let token_url = input
        .token_url
        .or_else(|| discovered.as_ref().and_then(|d| d.token_endpoint.clone()))
        .or_else(|| from_entry(|e| e.token_url.clone()));
    let entry_revocation = entry.as_ref().and_then(|e| e.revocation.clone());
    let revocation_url = input
        .revocation_url
        .clone()
        .or_else(|| {
            discovered
                .as_ref()
                .and_then(|d| d.revocation_endpoint.clone())
        })
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
    let post_exchange_metadata = entry
        .as_ref()
        .and_then(|e| e.post_exchange_metadata.clone())
        .map(|mut m| {
            if let Some(url) = &input.metadata_url {
                m.url = url.clone();
            }
            m
        });
    if input.metadata_url.is_some() && post_exchange_metadata.is_none() {
        return Err(ApiError::bad_request(
            "metadata_url overrides the catalog entry's post_exchange_metadata, which it has none of",
        ));
    }
    let token_request_params = input
        .token_request_params
        .or_else(|| entry.as_ref().map(|e| e.token_request_params.clone()))
        .unwrap_or_default();
    let api_base_url = input
        .api_base_url
        .or_else(|| from_entry(|e| e.api_base_url.clone()))
        .ok_or_else(|| ApiError::bad_request("api_base_url is required"))?;
    let connection_params = input
        .connection_params
        .or_else(|| entry.as_ref().map(|e| e.connection_params.clone()))
        .unwrap_or_default();
    let quirks = entry
        .as_ref()
        .map(|e| e.token_response_quirks.clone())
        .unwrap_or_default();
    let api_hosts = match input.api_hosts {
        Some(hosts) => hosts,
        None => match &entry {
            Some(e) => e.api_hosts.clone(),
            None => vec![host_template(&api_base_url)?],
        },
    };
    let extra_authorize_params = input
        .extra_authorize_params
        .or_else(|| entry.as_ref().map(|e| e.extra_authorize_params.clone()))
        .unwrap_or_default();
    let scope_separator = input
        .scope_separator
        .or_else(|| from_entry(|e| Some(e.scope_separator.clone())))
        .unwrap_or_else(|| " ".to_owned());
    let scopes = input
        .scopes
        .or_else(|| entry.as_ref().map(|e| e.default_scopes.clone()))
        .unwrap_or_default();
    let header = input
        .header
        .or_else(|| entry.as_ref().map(|e| e.header.clone()))
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
        .or(entry.as_ref().map(|e| e.client_auth))
        .or_else(|| {
            let methods = discovered
                .as_ref()
                .and_then(|d| d.token_endpoint_auth_methods_supported.as_ref())?;
            let basic = methods.iter().any(|m| m == "client_secret_basic");
            let post = methods.iter().any(|m| m == "client_secret_post");
            (post && !basic).then_some(ClientAuth::Body)
        })
        .unwrap_or_default();
    let pkce = input
        .pkce
        .or(entry.as_ref().map(|e| e.pkce))
        .or_else(|| {
            let methods = discovered
                .as_ref()
                .and_then(|d| d.code_challenge_methods_supported.as_ref())?;
            Some(if methods.iter().any(|m| m == "S256") {
                Pkce::Supported
            } else {
                Pkce::Unknown
            })
        })
        .unwrap_or_default();
    let api_key_fields = input
        .api_key_fields
        .or_else(|| entry.as_ref().map(|e| e.api_key_fields.clone()))
        .unwrap_or_default();
    let key_check = input
        .key_check
        .or_else(|| entry.as_ref().and_then(|e| e.key_check.clone()));
    let display_name = input
        .display_name
        .or_else(|| from_entry(|e| Some(e.display_name.clone())))
        .unwrap_or_default();
    validate::plain_text("display_name", &display_name, 100, false)?;

    // What each credential type needs.
    let (client_id, client_secret) = if auth_type.is_oauth() {
        let client_id = input
            .client_id
            .ok_or_else(|| ApiError::bad_request("client_id is required for OAuth providers"))?;
        let secret = input.client_secret.ok_or_else(|| {
            ApiError::bad_request("client_secret is required for OAuth providers")
        })?;
        validate::plain_text("client_id", &client_id, 1024, true)?;
        let text = secret.expose();
        if text.is_empty() || text.len() > 4096 || text.chars().any(char::is_control) {
            return Err(ApiError::bad_request(
                "client_secret must be 1 to 4096 bytes without control characters",
            ));
        }
        (client_id, Some(secret))
    } else {
        if input.client_id.is_some() || input.client_secret.is_some() {
            return Err(ApiError::bad_request(format!(
                "{} providers take no client_id or client_secret: the credential is stored per connection",
                auth_type.as_str()
            )));
        }
        (String::new(), None)
    };
    if auth_type == AuthType::Oauth2 && authorize_url.is_none() {
        return Err(ApiError::bad_request(
            "authorize_url is required (or an issuer to discover it from)",
        ));
    }
    if auth_type.is_oauth() && token_url.is_none() {
        return Err(ApiError::bad_request(
            "token_url is required (or an issuer to discover it from)",
        ));
    }
    let (authorize_url, token_url) = if auth_type.is_oauth() {
        (
            if auth_type == AuthType::Oauth2 {
                authorize_url.unwrap_or_default()
            } else {
                String::new()
            },
            token_url.unwrap_or_default(),
        )
    } else {
        (String::new(), String::new())
    };
    let mut problems = catalog::validate_params(&connection_params);
    if auth_type.is_oauth() && (!api_key_fields.is_empty() || key_check.is_some()) {
        problems.push("api_key_fields and key_check are for api_key and basic providers".into());
    }
    problems.extend(catalog::key_field_problems(auth_type, &api_key_fields));
    problems.extend(key_check.iter().flat_map(catalog::KeyCheck::problems));
    problems.extend(catalog::validate_templates(
        &catalog::Templates {
            authorize_url: Some(authorize_url.as_str()).filter(|u| !u.is_empty()),
            token_url: Some(token_url.as_str()).filter(|u| !u.is_empty()),
            refresh_url: refresh_url.as_deref(),
            revocation_url: revocation_url.as_deref(),
            metadata_url: post_exchange_metadata.as_ref().map(|m| m.url.as_str()),
            api_base_url: Some(&api_base_url),
            api_hosts: &api_hosts,
            extra_authorize_params: &extra_authorize_params,
            connection_params: &connection_params,
            quirks: &quirks,
            metadata_fills: post_exchange_metadata.as_ref().map(|m| m.fills.as_str()),
            https_only: false,
        },
        &|_| "acme".to_owned(),
    ));
    for (what, url) in [
        ("authorize_url", authorize_url.as_str()),
        ("token_url", token_url.as_str()),
        ("api_base_url", api_base_url.as_str()),
    ] {
        if url.len() > 2048 || url.chars().any(char::is_control) {
            problems.push(format!(
                "{what} must be at most 2048 bytes without control characters"
            ));
        }
    }
    if !api_base_url.contains('{') {
        // A fixed API URL must already be what the filter accepts as an
        // upstream (`authstamp_protocol::upstream`), not fail at the first call.
        let rule = url::Url::parse(&api_base_url)
            .map_err(|_| "api_base_url is not a URL")
            .and_then(|url| {
                crate::http::lookup::upstream_of(&url).map_err(|_| "api_base_url has no host")
            })
            .and_then(|upstream| authstamp_protocol::upstream::check(&upstream));
        if let Err(reason) = rule {
            problems.push(format!("api_base_url: {reason}"));
        }
    }
    if let Some(first) = problems.first() {
        return Err(ApiError::bad_request(format!(
            "invalid provider configuration: {first}{}",
            if problems.len() > 1 {
                format!(" (and {} more)", problems.len() - 1)
            } else {
                String::new()
            }
        )));
    }
    validate::scopes(&scopes, &scope_separator)?;
    validate::credential_name(header.placement, &header.name)?;
    validate::header_format(&header.format)?;
    input.refresh.validate()?;
    if let Some(issuer) = &input.issuer {
        // RFC 8414 §2: https (http for tests), no query, no fragment; compared
        // as a plain string, so kept exactly as given.
        let url = validate::http_url_without_query("issuer", issuer)?;
        if url.fragment().is_some() || issuer.len() > 2048 {
            return Err(ApiError::bad_request(
                "issuer must be a URL without query or fragment",
            ));
        }
    }
    require_app(db, app_id).await?;

    let now = db::now();
    let record = ProviderRecord {
        app_id: app_id.to_owned(),
        provider: provider.to_owned(),
        client_id,
        client_secret: match &client_secret {
            Some(secret) => {
                vault.seal_str(&Aad::provider_secret(app_id, provider), secret.expose())?
            }
            None => Vec::new(),
        },
        authorize_url,
        token_url,
        api_base_url,
        scopes,
        scope_separator,
        client_auth,
        header_name: header.name,
        header_format: header.format,
        policy: input.refresh,
        issuer: input.issuer,
        catalog: input.catalog,
        display_name,
        auth_type,
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
            stamp_in: header.placement,
            api_key_fields,
            key_check,
        },
        created_at: now,
        updated_at: now,
    };
    let stored = providers::upsert(db, &record).await?;
    tracing::info!(app_id, provider, catalog = ?stored.catalog, auth_type = stored.auth_type.as_str(), "stored provider configuration");
    Ok(ProviderView::new(stored, public_url))
}

/// The host part of a URL template (placeholders kept), lowercase.
fn host_template(url: &str) -> Result<String, ApiError> {
    let after = url
        .split_once("://")
        .map(|(_, rest)| rest)
        .ok_or_else(|| ApiError::bad_request("api_base_url must be an absolute URL"))?;
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
) -> Result<ProviderView, ApiError> {
    require_app(db, app_id).await?;
    providers::get(db, app_id, provider)
        .await?
        .map(|p| ProviderView::new(p, public_url))
        .ok_or_else(|| ApiError::not_found(format!("app {app_id:?} has no provider {provider:?}")))
}

// HTTP handlers.

pub async fn create_app_handler(
    State(state): State<AppState>,
    _admin: AdminAuth,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<CreatedApp>), ApiError> {
    let body = body.map_err(|rejection| ApiError::for_status(rejection.status()))?;
    // Both fields are optional, so an empty body is an empty object.
    let input = if body.iter().all(u8::is_ascii_whitespace) {
        CreateApp::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?
    };
    let created = create_app(&state.db, input).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

pub async fn put_provider_handler(
    State(state): State<AppState>,
    _admin: AdminAuth,
    ApiPath((app_id, provider)): ApiPath<(String, String)>,
    ApiJson(input): ApiJson<PutProvider>,
) -> Result<Json<ProviderView>, ApiError> {
    put_provider(
        &state.db,
        &state.vault,
        Some(&state.public_url),
        &app_id,
        &provider,
        input,
    )
    .await
    .map(Json)
}

pub async fn get_provider_handler(
    State(state): State<AppState>,
    _admin: AdminAuth,
    ApiPath((app_id, provider)): ApiPath<(String, String)>,
) -> Result<Json<ProviderView>, ApiError> {
    get_provider(&state.db, Some(&state.public_url), &app_id, &provider)
        .await
        .map(Json)
}
