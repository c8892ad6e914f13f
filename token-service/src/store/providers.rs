//! `providers`: one OAuth client configuration per (app, provider); the
//! client secret is a vault envelope.

pub use crate::catalog::ClientAuth;
use crate::catalog::{
    ApiKeyField, AuthType, ConnectionParam, HttpMethod, KeyCheck, Pkce, PostExchangeMetadata,
    RevocationClientAuth, RevocationStyle, RevokedToken, TokenRequestParams,
};
use crate::db::Db;
use crate::policy::PolicyOverrides;
use crate::template::{self, Values};
use authstamp_protocol::Placement;
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row as _;
use std::collections::BTreeMap;

/// The provider fields beyond the original columns, stored as JSON.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderSettings {
    /// Host templates a credential of this provider may be stamped on.
    #[serde(default)]
    pub api_hosts: Vec<String>,
    #[serde(default)]
    pub revocation_url: Option<String>,
    #[serde(default)]
    pub revocation_style: Option<RevocationStyle>,
    #[serde(default)]
    pub pkce: Pkce,
    #[serde(default)]
    pub extra_authorize_params: BTreeMap<String, String>,
    #[serde(default)]
    pub connection_params: Vec<ConnectionParam>,
    /// The single quirk code of configurations stored before
    /// `token_response_quirks` existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_response_quirk: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub token_response_quirks: Vec<String>,
    /// Refreshing uses this endpoint instead of the token URL (Figma).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_url: Option<String>,
    /// Extra form fields of token requests, per grant.
    #[serde(default, skip_serializing_if = "TokenRequestParams::is_empty")]
    pub token_request_params: TokenRequestParams,
    /// How the revocation endpoint is called (absent: POST, the token
    /// endpoint's client authentication, the refresh token first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_method: Option<HttpMethod>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_client_auth: Option<RevocationClientAuth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_token: Option<RevokedToken>,
    /// A call after the code exchange that fills a placeholder (Mailchimp's `dc`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_exchange_metadata: Option<PostExchangeMetadata>,
    /// Where the credential is stamped: a header (default) or a query parameter.
    #[serde(default, skip_serializing_if = "Placement::is_header")]
    pub stamp_in: Placement,
    /// The connect page's form fields (API-key and Basic providers); none:
    /// the default labels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_key_fields: Vec<ApiKeyField>,
    /// The call that checks credentials entered on the connect page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_check: Option<KeyCheck>,
}

impl ProviderSettings {
    /// Whether the provider has the token-response quirk `code`.
    pub fn has_quirk(&self, code: &str) -> bool {
        self.token_response_quirk.as_deref() == Some(code)
            || self.token_response_quirks.iter().any(|q| q == code)
    }
}

/// A provider's URLs with a connection's parameters filled in.
#[derive(Clone, Debug)]
pub struct ResolvedUrls {
    pub authorize_url: Option<url::Url>,
    pub token_url: Option<url::Url>,
    pub revocation_url: Option<url::Url>,
    pub api_base_url: url::Url,
}

#[derive(Clone)]
pub struct ProviderRecord {
    pub app_id: String,
    pub provider: String,
    pub client_id: String,
    /// Vault envelope.
    pub client_secret: Vec<u8>,
    pub authorize_url: String,
    pub token_url: String,
    pub api_base_url: String,
    pub scopes: Vec<String>,
    pub scope_separator: String,
    pub client_auth: ClientAuth,
    pub header_name: String,
    pub header_format: String,
    /// Refresh policy overrides (absent: the service's defaults).
    pub policy: PolicyOverrides,
    /// RFC 9207 issuer identifier: authorization responses must carry it as
    /// `iss` (absent: not checked).
    pub issuer: Option<String>,
    /// The catalog entry this configuration was made from.
    pub catalog: Option<String>,
    pub display_name: String,
    pub auth_type: AuthType,
    pub settings: ProviderSettings,
    pub created_at: i64,
    pub updated_at: i64,
}

impl std::fmt::Debug for ProviderRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderRecord")
            .field("app_id", &self.app_id)
            .field("provider", &self.provider)
            .field("client_id", &self.client_id)
            .field("token_url", &self.token_url)
            .field("api_base_url", &self.api_base_url)
            .finish_non_exhaustive()
    }
}

const COLUMNS: &str = "app_id, provider, client_id, client_secret, authorize_url, token_url, \
    api_base_url, scopes, scope_separator, client_auth, header_name, header_format, \
    created_at, updated_at, refresh_skew_secs, max_token_lifetime_secs, background_window_secs, \
    keepalive_secs, failure_cooldown_secs, issuer, catalog, display_name, auth_type, settings";

impl ProviderRecord {
    /// The placeholder values of a connection: its parameters plus the app's
    /// client id (and, for revocation, the refresh token, added by the caller).
    pub fn values(&self, params: &Values) -> Values {
        let mut values = params.clone();
        values.insert("client_id".into(), self.client_id.clone());
        values
    }

    /// One URL template of this provider filled with a connection's
    /// parameters; `None` when the provider has no such URL.
    pub fn url(&self, template: &str, params: &Values) -> Result<Option<url::Url>, String> {
        if template.is_empty() {
            return Ok(None);
        }
        template::render_url(template, &self.values(params)).map(Some)
    }

    /// Extra token-request form fields of one grant (`token_request_params`)
    /// with a connection's parameters filled in (Auth0's `audience={audience}`).
    pub fn token_params_for(
        &self,
        grant_params: &BTreeMap<String, String>,
        params: &Values,
    ) -> Result<BTreeMap<String, String>, String> {
        let values = self.values(params);
        grant_params
            .iter()
            .map(|(k, v)| Ok((k.clone(), template::render_text(v, &values)?)))
            .collect()
    }

    /// The token endpoint of a connection with parameters `params`.
    pub fn token_url_for(&self, params: &Values) -> Result<url::Url, String> {
        self.url(&self.token_url, params)?
            .ok_or_else(|| "the provider has no token URL".to_owned())
    }

    /// The endpoint of refresh requests: `refresh_url`, else the token URL.
    pub fn refresh_url_for(&self, params: &Values) -> Result<url::Url, String> {
        match &self.settings.refresh_url {
            Some(template) => template::render_url(template, &self.values(params)),
            None => self.token_url_for(params),
        }
    }

    /// The API base URL of a connection with parameters `params` (may need
    /// response-derived values the service does not fill yet).
    pub fn api_base_url_for(&self, params: &Values) -> Result<url::Url, String> {
        self.url(&self.api_base_url, params)?
            .ok_or_else(|| "the provider has no API base URL".to_owned())
    }

    /// Checks that the URLs needed to connect (authorize, token) render with
    /// `params`.
    pub fn check_connect_urls(&self, params: &Values) -> Result<(), String> {
        self.url(&self.authorize_url, params)?;
        self.url(&self.token_url, params)?;
        Ok(())
    }

    /// The URLs of a connection with parameters `params` (every one must render).
    pub fn urls(&self, params: &Values) -> Result<ResolvedUrls, String> {
        let values = self.values(params);
        let optional = |text: &str| -> Result<Option<url::Url>, String> {
            if text.is_empty() {
                Ok(None)
            } else {
                template::render_url(text, &values).map(Some)
            }
        };
        Ok(ResolvedUrls {
            authorize_url: optional(&self.authorize_url)?,
            token_url: optional(&self.token_url)?,
            revocation_url: match &self.settings.revocation_url {
                // {refresh_token} is only filled at revocation time.
                Some(url) if !url.contains("{refresh_token}") => optional(url)?,
                _ => None,
            },
            api_base_url: template::render_url(&self.api_base_url, &values)?,
        })
    }

    /// The hosts a credential of a connection with `params` may go to.
    pub fn api_hosts(&self, params: &Values) -> Result<Vec<String>, String> {
        let values = self.values(params);
        self.settings
            .api_hosts
            .iter()
            .map(|h| template::render_host(h, &values))
            .collect()
    }

    /// The name shown to users: the display name, else the provider name.
    pub fn shown_name(&self) -> &str {
        if self.display_name.is_empty() {
            &self.provider
        } else {
            &self.display_name
        }
    }
}

impl ProviderRecord {
    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            app_id: row.try_get("app_id")?,
            provider: row.try_get("provider")?,
            client_id: row.try_get("client_id")?,
            client_secret: row.try_get("client_secret")?,
            authorize_url: row.try_get("authorize_url")?,
            token_url: row.try_get("token_url")?,
            api_base_url: row.try_get("api_base_url")?,
            scopes: super::json_column(&row.try_get::<String, _>("scopes")?)?,
            scope_separator: row.try_get("scope_separator")?,
            client_auth: ClientAuth::parse(&row.try_get::<String, _>("client_auth")?)?,
            header_name: row.try_get("header_name")?,
            header_format: row.try_get("header_format")?,
            policy: PolicyOverrides::from_columns([
                row.try_get("refresh_skew_secs")?,
                row.try_get("max_token_lifetime_secs")?,
                row.try_get("background_window_secs")?,
                row.try_get("keepalive_secs")?,
                row.try_get("failure_cooldown_secs")?,
            ]),
            issuer: row.try_get("issuer")?,
            catalog: row.try_get("catalog")?,
            display_name: row.try_get("display_name")?,
            auth_type: {
                let text: String = row.try_get("auth_type")?;
                AuthType::parse(&text).ok_or_else(|| {
                    sqlx::Error::Decode(format!("unknown auth_type {text:?}").into())
                })?
            },
            settings: super::json_column(&row.try_get::<String, _>("settings")?)?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }
}

/// Inserts or replaces the configuration (keeping its `created_at`) and
/// returns the stored row.
pub async fn upsert(db: &Db, p: &ProviderRecord) -> Result<ProviderRecord, sqlx::Error> {
    let sql = format!(
        "INSERT INTO providers ({COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, \
           $15, $16, $17, $18, $19, $20, $21, $22, $23, $24) \
         ON CONFLICT (app_id, provider) DO UPDATE SET \
           client_id = excluded.client_id, client_secret = excluded.client_secret, \
           authorize_url = excluded.authorize_url, token_url = excluded.token_url, \
           api_base_url = excluded.api_base_url, scopes = excluded.scopes, \
           scope_separator = excluded.scope_separator, client_auth = excluded.client_auth, \
           header_name = excluded.header_name, header_format = excluded.header_format, \
           updated_at = excluded.updated_at, refresh_skew_secs = excluded.refresh_skew_secs, \
           max_token_lifetime_secs = excluded.max_token_lifetime_secs, \
           background_window_secs = excluded.background_window_secs, \
           keepalive_secs = excluded.keepalive_secs, \
           failure_cooldown_secs = excluded.failure_cooldown_secs, \
           issuer = excluded.issuer, \
           catalog = excluded.catalog, display_name = excluded.display_name, \
           auth_type = excluded.auth_type, settings = excluded.settings \
         RETURNING {COLUMNS}"
    );
    let mut query = sqlx::query(&sql)
        .bind(&p.app_id)
        .bind(&p.provider)
        .bind(&p.client_id)
        .bind(&p.client_secret)
        .bind(&p.authorize_url)
        .bind(&p.token_url)
        .bind(&p.api_base_url)
        .bind(super::to_json(&p.scopes)?)
        .bind(&p.scope_separator)
        .bind(p.client_auth.as_str())
        .bind(&p.header_name)
        .bind(&p.header_format)
        .bind(p.created_at)
        .bind(p.updated_at);
    for column in p.policy.to_columns() {
        query = query.bind(column);
    }
    query = query.bind(p.issuer.clone());
    query = query
        .bind(&p.catalog)
        .bind(&p.display_name)
        .bind(p.auth_type.as_str())
        .bind(super::to_json(&p.settings)?);
    let row = query.fetch_one(db.pool()).await?;
    ProviderRecord::from_row(&row)
}

pub async fn get(
    db: &Db,
    app_id: &str,
    provider: &str,
) -> Result<Option<ProviderRecord>, sqlx::Error> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM providers WHERE app_id = $1 AND provider = $2"
    ))
    .bind(app_id)
    .bind(provider)
    .fetch_optional(db.pool())
    .await?
    .as_ref()
    .map(ProviderRecord::from_row)
    .transpose()
}

/// Every provider configuration (a small table: one row per app and provider).
pub async fn all(db: &Db) -> Result<Vec<ProviderRecord>, sqlx::Error> {
    sqlx::query(&format!("SELECT {COLUMNS} FROM providers"))
        .fetch_all(db.pool())
        .await?
        .iter()
        .map(ProviderRecord::from_row)
        .collect()
}
