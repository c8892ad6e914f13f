//! Apps and provider configurations: the service functions shared by the
//! admin HTTP API and the CLI, and the thin HTTP handlers over them.

use crate::auth::AdminAuth;
use crate::config::PublicUrl;
use crate::db::{self, Db};
use crate::error::{ApiError, ApiJson, ApiPath};
use crate::policy::PolicyOverrides;
use crate::secrets::{hex, random_bytes, sha256, AppKey, ClientSecret};
use crate::store::apps::{self, AppRecord};
use crate::store::providers::{self, ClientAuth, ProviderRecord};
use crate::validate;
use crate::vault::{Aad, Vault};
use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

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

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderSpec {
    pub name: String,
    pub format: String,
}

impl Default for HeaderSpec {
    fn default() -> Self {
        Self {
            name: "authorization".into(),
            format: "Bearer {token}".into(),
        }
    }
}

fn default_separator() -> String {
    " ".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutProvider {
    pub client_id: String,
    pub client_secret: ClientSecret,
    pub authorize_url: String,
    pub token_url: String,
    pub api_base_url: String,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default = "default_separator")]
    pub scope_separator: String,
    #[serde(default)]
    pub client_auth: ClientAuth,
    #[serde(default)]
    pub header: HeaderSpec,
    /// Refresh policy overrides for this provider (absent: the service's defaults).
    #[serde(default)]
    pub refresh: PolicyOverrides,
    /// RFC 9207: the provider's issuer identifier; when set, every
    /// authorization response must carry exactly this `iss`.
    #[serde(default)]
    pub issuer: Option<String>,
}

/// A stored provider configuration as shown to admins: never the secret.
#[derive(Debug, Serialize)]
pub struct ProviderView {
    pub app_id: String,
    pub provider: String,
    pub client_id: String,
    pub client_secret_set: bool,
    pub authorize_url: String,
    pub token_url: String,
    pub api_base_url: String,
    pub scopes: Vec<String>,
    pub scope_separator: String,
    pub client_auth: ClientAuth,
    pub header: HeaderSpec,
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
            app_id: p.app_id,
            provider: p.provider,
            client_id: p.client_id,
            authorize_url: p.authorize_url,
            token_url: p.token_url,
            api_base_url: p.api_base_url,
            scopes: p.scopes,
            scope_separator: p.scope_separator,
            client_auth: p.client_auth,
            header: HeaderSpec {
                name: p.header_name,
                format: p.header_format,
            },
            refresh: p.policy,
            issuer: p.issuer,
            redirect_uri: public_url.map(PublicUrl::redirect_uri),
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
    validate::plain_text("client_id", &input.client_id, 1024, true)?;
    let secret = input.client_secret.expose();
    if secret.is_empty() || secret.len() > 4096 || secret.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "client_secret must be 1 to 4096 bytes without control characters",
        ));
    }
    let authorize_url = validate::http_url("authorize_url", &input.authorize_url)?;
    let token_url = validate::http_url("token_url", &input.token_url)?;
    let api_base_url = validate::http_url_without_query("api_base_url", &input.api_base_url)?;
    validate::scopes(&input.scopes, &input.scope_separator)?;
    validate::header_name(&input.header.name)?;
    validate::header_format(&input.header.format)?;
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
        client_id: input.client_id,
        client_secret: vault.seal_str(&Aad::provider_secret(app_id, provider), secret)?,
        authorize_url: authorize_url.to_string(),
        token_url: token_url.to_string(),
        api_base_url: api_base_url.to_string(),
        scopes: input.scopes,
        scope_separator: input.scope_separator,
        client_auth: input.client_auth,
        header_name: input.header.name,
        header_format: input.header.format,
        policy: input.refresh,
        issuer: input.issuer,
        created_at: now,
        updated_at: now,
    };
    let stored = providers::upsert(db, &record).await?;
    tracing::info!(app_id, provider, "stored provider configuration");
    Ok(ProviderView::new(stored, public_url))
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
    let body = body
        .map_err(|_| ApiError::bad_request("request body is unreadable or larger than 64 KiB"))?;
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
