//! The provider catalog: `token-service/providers/*.json`, embedded in the
//! binary at build time (see `build.rs`) and validated when first used.
//! `providers/README.md` describes every field and the validation rules this
//! module enforces; an app refers to an entry by name and overrides only
//! what it needs (see [`crate::service::providers::PutProvider`]).

use crate::error::Error;
use crate::template::{self, Values};
use authstamp_protocol::Placement;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

/// How a provider's credential is put on requests: its name, the value
/// template around the token, and its placement (the API field `header`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[derive(utoipa::ToSchema)]
#[schema(as = Header)]
pub struct CredentialSpec {
    pub name: String,
    pub format: String,
    /// `query`: the credential goes into the query parameter `name` instead
    /// of a header (API keys that providers want in the URL).
    #[serde(default, rename = "in", skip_serializing_if = "Placement::is_header")]
    pub placement: Placement,
}

impl Default for CredentialSpec {
    fn default() -> Self {
        Self {
            name: "authorization".into(),
            format: "Bearer {token}".into(),
            placement: Placement::Header,
        }
    }
}

/// How the client authenticates at the token endpoint (RFC 6749 §2.3.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[derive(utoipa::ToSchema)]
pub enum ClientAuth {
    /// HTTP Basic with form-urlencoded id and secret.
    #[default]
    Basic,
    /// `client_id` and `client_secret` in the request body.
    Body,
}

impl ClientAuth {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuth::Basic => "basic",
            ClientAuth::Body => "body",
        }
    }

    pub(crate) fn parse(text: &str) -> Result<Self, sqlx::Error> {
        match text {
            "basic" => Ok(ClientAuth::Basic),
            "body" => Ok(ClientAuth::Body),
            other => Err(sqlx::Error::Decode(
                format!("unknown client_auth {other:?}").into(),
            )),
        }
    }
}

mod files {
    include!(concat!(env!("OUT_DIR"), "/catalog_files.rs"));
}

/// How a connection's credential is obtained.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[derive(utoipa::ToSchema)]
pub enum AuthType {
    /// OAuth 2.0 authorization code grant (a user connects in a browser).
    #[default]
    Oauth2,
    /// OAuth 2.0 client credentials grant: one app-level connection, no user.
    Oauth2ClientCredentials,
    /// An API key the app stores for a user (or for itself).
    ApiKey,
    /// HTTP Basic username and password the app stores for a user.
    Basic,
}

impl AuthType {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthType::Oauth2 => "oauth2",
            AuthType::Oauth2ClientCredentials => "oauth2_client_credentials",
            AuthType::ApiKey => "api_key",
            AuthType::Basic => "basic",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            AuthType::Oauth2,
            AuthType::Oauth2ClientCredentials,
            AuthType::ApiKey,
            AuthType::Basic,
        ]
        .into_iter()
        .find(|t| t.as_str() == text)
    }

    /// Whether the service talks OAuth to the provider (client id and secret).
    pub fn is_oauth(self) -> bool {
        matches!(self, AuthType::Oauth2 | AuthType::Oauth2ClientCredentials)
    }
}

/// PKCE (S256) policy of a provider.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[derive(utoipa::ToSchema)]
pub enum Pkce {
    Required,
    #[default]
    Supported,
    Unsupported,
    /// Accepted only once the app enabled it at the provider (Slack: a
    /// one-way switch to a public client). Not sent unless the app's
    /// provider configuration sets `pkce` to `supported` or `required`.
    OptIn,
    Unknown,
}

impl Pkce {
    /// PKCE is sent unless the provider is known not to support it or the
    /// app has not opted in.
    pub fn send(self) -> bool {
        !matches!(self, Pkce::Unsupported | Pkce::OptIn)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationStyle {
    /// RFC 7009: `token` (+ `token_type_hint`) form-encoded, with client
    /// authentication per `revocation.client_auth`.
    Rfc7009,
    /// The token itself is the bearer credential of the call (Intercom's
    /// `auth/uninstall`, Slack's `auth.revoke`); no body.
    Bearer,
    /// Anything else: not called by the service (see the entry's notes).
    ProviderSpecific,
}

/// How the client authenticates at a revocation endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationClientAuth {
    Basic,
    /// `client_id` and `client_secret` in the form body (Calendly).
    Body,
    None,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    #[default]
    Post,
    Delete,
}

/// Which token a revocation call sends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevokedToken {
    /// The refresh token when the connection has one, else the access token.
    #[default]
    Refresh,
    Access,
}

/// A provider's revocation endpoint and how to call it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revocation {
    pub url: String,
    pub method: HttpMethod,
    pub style: RevocationStyle,
    pub client_auth: RevocationClientAuth,
    pub token: RevokedToken,
}

/// Extra form fields of token requests, per grant.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[derive(utoipa::ToSchema)]
pub struct TokenRequestParams {
    #[serde(default)]
    pub exchange: BTreeMap<String, String>,
    #[serde(default)]
    pub refresh: BTreeMap<String, String>,
    #[serde(default)]
    pub client_credentials: BTreeMap<String, String>,
}

impl TokenRequestParams {
    pub fn is_empty(&self) -> bool {
        self.exchange.is_empty() && self.refresh.is_empty() && self.client_credentials.is_empty()
    }
}

/// Form fields the service writes itself: a catalog cannot override them.
pub const RESERVED_TOKEN_PARAMS: &[&str] = &[
    "grant_type",
    "code",
    "redirect_uri",
    "code_verifier",
    "refresh_token",
    "client_id",
    "client_secret",
    "client_assertion",
    "client_assertion_type",
];

/// A call after the code exchange whose answer fills a placeholder
/// (Mailchimp: `GET login.mailchimp.com/oauth2/metadata` → `dc`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostExchangeMetadata {
    /// GET with the new access token stamped per `header_format`.
    pub url: String,
    /// `authorization` header value, `{token}` once (Mailchimp: `OAuth {token}`).
    pub header_format: String,
    /// Top-level string field of the JSON answer.
    pub field: String,
    /// The placeholder it fills; the value must be one DNS label.
    pub fills: String,
}

/// One field of an API-key or Basic connect form.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[derive(utoipa::ToSchema)]
pub struct ApiKeyField {
    /// `api_key`, `username` or `password` (what the credentials API takes).
    #[schema(pattern = "^(api_key|username|password)$")]
    pub name: String,
    pub label: String,
    pub secret: bool,
    #[serde(default)]
    pub help: Option<String>,
    #[serde(default)]
    pub help_url: Option<String>,
}

/// The HTTP method of a [`KeyCheck`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
#[derive(utoipa::ToSchema)]
pub enum CheckMethod {
    #[default]
    Get,
    Head,
    Post,
}

impl CheckMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckMethod::Get => "GET",
            CheckMethod::Head => "HEAD",
            CheckMethod::Post => "POST",
        }
    }
}

/// One call that tells whether credentials entered on the connect page
/// work: `method` on `path` of the API host, stamped as calls are; any
/// other status than `expect_status` refuses them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[derive(utoipa::ToSchema)]
pub struct KeyCheck {
    #[serde(default)]
    pub method: CheckMethod,
    /// Absolute path (and query) on the API base URL's host.
    pub path: String,
    pub expect_status: u16,
}

impl KeyCheck {
    /// Problems of a check: a path that is not a plain absolute path, a
    /// status that is not a success.
    pub fn problems(&self) -> Vec<String> {
        let mut errors = Vec::new();
        let p = &self.path;
        if !p.starts_with('/')
            || p.starts_with("//")
            || p.len() > 512
            || p.contains(['#', '\\'])
            || p.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            // A URL parser reads `/\host` as `//host`: another host.
            errors.push("key_check.path must be an absolute path of at most 512 bytes without '#', '\\', spaces or control characters".into());
        }
        if !(200..=299).contains(&self.expect_status) {
            errors.push("key_check.expect_status must be a 2xx status".into());
        }
        errors
    }
}

/// Problems of the connect form fields of a provider of `auth_type`: an
/// API-key provider asks for `api_key`, a Basic one for `username` and
/// `password`; each field once, a label, an https help link.
pub fn key_field_problems(auth_type: AuthType, fields: &[ApiKeyField]) -> Vec<String> {
    let mut errors = Vec::new();
    let mut key_names = BTreeSet::new();
    for field in fields {
        if !matches!(field.name.as_str(), "api_key" | "username" | "password")
            || !key_names.insert(field.name.as_str())
        {
            errors.push(format!(
                "api_key_fields name {:?} must be one of api_key, username, password, once",
                field.name
            ));
        }
        if field.label.trim().is_empty()
            || field.label.len() > 100
            || field.label.chars().any(char::is_control)
        {
            errors.push("api_key_fields label must be 1 to 100 bytes".into());
        }
        if field
            .help
            .as_ref()
            .is_some_and(|h| h.len() > 500 || h.chars().any(char::is_control))
        {
            errors.push("api_key_fields help must be at most 500 bytes".into());
        }
        if let Some(url) = &field.help_url {
            if !url.starts_with("https://") || url::Url::parse(url).is_err() {
                errors.push("api_key_fields help_url must be an https URL".into());
            }
        }
    }
    let wanted: &[&str] = match auth_type {
        AuthType::ApiKey => &["api_key"],
        AuthType::Basic => &["password", "username"],
        _ => &[],
    };
    if !fields.is_empty() && key_names.iter().copied().ne(wanted.iter().copied()) {
        errors.push(format!(
            "api_key_fields: {} providers ask for {}",
            auth_type.as_str(),
            if wanted.is_empty() {
                "none".to_owned()
            } else {
                wanted.join(" and ")
            }
        ));
    }
    errors
}

/// A per-tenant value of a connection (a Zendesk subdomain, a Shopify shop).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[derive(utoipa::ToSchema)]
pub struct ConnectionParam {
    pub name: String,
    pub description: String,
    /// Anchored regular expression the value must fully match.
    pub pattern: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
}

/// The quirk codes of `providers/README.md`.
pub const QUIRKS: &[&str] = &[
    "slack_authed_user",
    "salesforce_instance_url",
    "error_in_200",
    "quickbooks_realm_id",
    "stripe_connect_account",
    "pipedrive_api_domain",
    "zoho_api_domain",
    "granted_scopes_in_redirect",
    "scope_as_array",
    "expires_in_string",
];

/// Placeholders filled from the token exchange, and the quirk that fills each.
pub const DERIVED_PLACEHOLDERS: &[(&str, &[&str])] = &[
    ("instance_host", &["salesforce_instance_url"]),
    ("realm_id", &["quickbooks_realm_id"]),
    (
        "api_domain_host",
        &["pipedrive_api_domain", "zoho_api_domain"],
    ),
];

/// Placeholders every entry may use: the app's client id and the stored
/// refresh token (revocation URLs only).
pub const RESERVED_PLACEHOLDERS: &[&str] = &["client_id", "refresh_token"];

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshInfo {
    pub supported: bool,
    pub rotation: bool,
    pub access_token_lifetime: Option<String>,
    pub refresh_token_idle_expiry: Option<String>,
    pub non_expiring_access_tokens: bool,
}

/// One catalog file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogEntry {
    pub name: String,
    pub display_name: String,
    pub category: String,
    pub docs_url: String,
    pub auth_type: AuthType,
    pub authorize_url: Option<String>,
    pub token_url: Option<String>,
    /// Only when refreshing uses another endpoint than `token_url` (Figma).
    pub refresh_url: Option<String>,
    pub token_request_params: TokenRequestParams,
    pub revocation: Option<Revocation>,
    pub api_base_url: Option<String>,
    pub api_hosts: Vec<String>,
    pub scope_separator: String,
    pub default_scopes: Vec<String>,
    pub client_auth: ClientAuth,
    pub pkce: Pkce,
    pub extra_authorize_params: BTreeMap<String, String>,
    pub connection_params: Vec<ConnectionParam>,
    pub token_response_quirks: Vec<String>,
    pub post_exchange_metadata: Option<PostExchangeMetadata>,
    pub header: CredentialSpec,
    pub api_key_fields: Vec<ApiKeyField>,
    /// Optional: the call the connect page makes to check entered credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_check: Option<KeyCheck>,
    pub refresh: RefreshInfo,
    /// Field (or group, or `group.key`) → sources: provider documentation
    /// URLs and `nango@<commit>:<key>`.
    pub references: BTreeMap<String, Vec<String>>,
    pub unverified: Vec<String>,
    pub notes: String,
}

impl CatalogEntry {
    /// The referenced fields: exactly the keys of `references`.
    pub fn verified(&self) -> Vec<&str> {
        self.references.keys().map(String::as_str).collect()
    }

    /// The placeholder filled by the post-exchange metadata call, if any.
    pub fn metadata_fills(&self) -> Option<&str> {
        self.post_exchange_metadata
            .as_ref()
            .map(|m| m.fills.as_str())
    }
}

/// Every field of an entry, each required (`null` where it does not apply).
pub const FIELDS: &[&str] = &[
    "name",
    "display_name",
    "category",
    "docs_url",
    "auth_type",
    "authorize_url",
    "token_url",
    "refresh_url",
    "token_request_params",
    "revocation",
    "api_base_url",
    "api_hosts",
    "scope_separator",
    "default_scopes",
    "client_auth",
    "pkce",
    "extra_authorize_params",
    "connection_params",
    "token_response_quirks",
    "post_exchange_metadata",
    "header",
    "api_key_fields",
    "refresh",
    "references",
    "unverified",
    "notes",
];

/// Fields an entry may leave out; present, they need a reference like any.
pub const OPTIONAL_FIELDS: &[&str] = &["key_check"];

/// Fields that are names, labels or bookkeeping: no reference needed.
const SELF_DESCRIBING: &[&str] = &[
    "name",
    "display_name",
    "category",
    "references",
    "unverified",
    "notes",
];

/// The categories of `providers/README.md`.
pub const CATEGORIES: &[&str] = &[
    "chat",
    "meetings",
    "drive",
    "crm",
    "marketing",
    "email",
    "ticketing",
    "devops",
    "accounting",
    "hr",
    "video",
    "social",
    "esign",
    "calendar",
    "payments",
    "ecommerce",
    "productivity",
    "identity",
    "analytics",
    "other",
];

const REFRESH_KEYS: &[&str] = &[
    "supported",
    "rotation",
    "access_token_lifetime",
    "refresh_token_idle_expiry",
    "non_expiring_access_tokens",
];

const REVOCATION_KEYS: &[&str] = &["url", "method", "style", "client_auth", "token"];
const TOKEN_PARAM_KEYS: &[&str] = &["exchange", "refresh", "client_credentials"];

/// The validated catalog, sorted by name.
#[derive(Debug)]
pub struct Catalog {
    entries: Vec<CatalogEntry>,
}

impl Catalog {
    /// Parses and validates `(file name, JSON)` pairs; every problem of every
    /// file is reported.
    pub fn parse(files: &[(&str, &str)]) -> Result<Self, Vec<String>> {
        let mut errors = Vec::new();
        let mut entries = Vec::new();
        for (file, text) in files {
            match parse_entry(file, text) {
                Ok(entry) => entries.push(entry),
                Err(mut problems) => errors.append(&mut problems),
            }
        }
        let mut names = BTreeSet::new();
        let mut display_names = BTreeSet::new();
        for entry in &entries {
            if !names.insert(entry.name.as_str()) {
                errors.push(format!("{}: duplicate name", entry.name));
            }
            if !display_names.insert(entry.display_name.to_lowercase()) {
                errors.push(format!(
                    "{}: duplicate display_name {:?}",
                    entry.name, entry.display_name
                ));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Self { entries })
    }

    pub fn entries(&self) -> &[CatalogEntry] {
        &self.entries
    }

    pub fn get(&self, name: &str) -> Option<&CatalogEntry> {
        self.entries
            .binary_search_by(|e| e.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.entries[i])
    }
}

static CATALOG: OnceLock<Result<Catalog, Vec<String>>> = OnceLock::new();

/// The embedded catalog (parsed and validated once).
pub fn embedded() -> Result<&'static Catalog, &'static [String]> {
    CATALOG
        .get_or_init(|| Catalog::parse(files::FILES))
        .as_ref()
        .map_err(Vec::as_slice)
}

/// [`embedded`] for request handlers: a broken catalog is an internal error.
pub fn get() -> Result<&'static Catalog, Error> {
    embedded()
        .map_err(|errors| Error::internal("the provider catalog is invalid", errors.join("; ")))
}

fn parse_entry(file: &str, text: &str) -> Result<CatalogEntry, Vec<String>> {
    let stem = file.strip_suffix(".json").unwrap_or(file);
    let fail = |msg: String| vec![format!("{file}: {msg}")];
    let raw: Value = serde_json::from_str(text).map_err(|e| fail(format!("invalid JSON: {e}")))?;
    let Value::Object(object) = &raw else {
        return Err(fail("not a JSON object".into()));
    };
    let mut errors = Vec::new();
    for field in FIELDS {
        if !object.contains_key(*field) {
            errors.push(format!("{file}: missing field {field}"));
        }
    }
    for (group, keys) in [
        ("refresh", REFRESH_KEYS),
        ("revocation", REVOCATION_KEYS),
        ("token_request_params", TOKEN_PARAM_KEYS),
    ] {
        if let Some(Value::Object(inner)) = object.get(group) {
            for key in keys {
                if !inner.contains_key(*key) {
                    errors.push(format!("{file}: missing field {group}.{key}"));
                }
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let entry: CatalogEntry = serde_json::from_value(raw.clone())
        .map_err(|e| vec![format!("{file}: does not fit the schema: {e}")])?;
    if entry.name != stem {
        errors.push(format!(
            "{file}: name {:?} is not the file name",
            entry.name
        ));
    }
    errors.extend(
        validate_entry(&entry)
            .into_iter()
            .map(|e| format!("{file}: {e}")),
    );
    if errors.is_empty() {
        Ok(entry)
    } else {
        Err(errors)
    }
}

fn is_catalog_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_.-".contains(c))
}

/// `^\d+(s|m|h|d|mo)$`
pub fn is_catalog_duration(text: &str) -> bool {
    let unit_start = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    unit_start > 0 && matches!(&text[unit_start..], "s" | "m" | "h" | "d" | "mo")
}

/// Compiles a connection parameter pattern, which must be anchored.
pub fn compile_pattern(pattern: &str) -> Result<regex::Regex, String> {
    if !pattern.starts_with('^') || !pattern.ends_with('$') || pattern.len() > 1024 {
        return Err(format!("pattern {pattern:?} must be anchored with ^…$"));
    }
    regex::Regex::new(pattern).map_err(|e| format!("pattern {pattern:?} does not compile: {e}"))
}

/// Validates connection parameter declarations: names, patterns, defaults.
pub fn validate_params(params: &[ConnectionParam]) -> Vec<String> {
    let mut errors = Vec::new();
    let mut seen = BTreeSet::new();
    for p in params {
        if !is_placeholder_name(&p.name) {
            errors.push(format!(
                "connection param name {:?} must match [a-z0-9_]+",
                p.name
            ));
        }
        if RESERVED_PLACEHOLDERS.contains(&p.name.as_str())
            || DERIVED_PLACEHOLDERS.iter().any(|(n, _)| *n == p.name)
            || p.name == "token"
        {
            errors.push(format!("connection param name {:?} is reserved", p.name));
        }
        if !seen.insert(p.name.as_str()) {
            errors.push(format!("connection param {:?} is declared twice", p.name));
        }
        match compile_pattern(&p.pattern) {
            Ok(re) => {
                if let Some(default) = &p.default {
                    if !re.is_match(default) {
                        errors.push(format!(
                            "default {default:?} of {} does not match its pattern",
                            p.name
                        ));
                    }
                }
            }
            Err(e) => errors.push(e),
        }
    }
    errors
}

fn is_placeholder_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Sample values for every placeholder an entry may use: connection
/// parameters by their default or `sample`, derived and reserved ones by a
/// fixed host-shaped sample.
pub fn sample_values(
    params: &[ConnectionParam],
    sample: &dyn Fn(&ConnectionParam) -> String,
    metadata_fills: Option<&str>,
) -> Values {
    let mut values: Values = RESERVED_PLACEHOLDERS
        .iter()
        .chain(DERIVED_PLACEHOLDERS.iter().map(|(n, _)| n))
        .map(|n| ((*n).to_owned(), "sample-value".to_owned()))
        .collect();
    values.insert("instance_host".into(), "sample.example.com".into());
    values.insert("api_domain_host".into(), "sample.example.com".into());
    if let Some(fills) = metadata_fills {
        values.insert(fills.to_owned(), "sample-value".into());
    }
    for p in params {
        let value = p.default.clone().unwrap_or_else(|| sample(p));
        values.insert(p.name.clone(), value);
    }
    values
}

/// The placeholders an entry with `params`, `quirks` and a metadata call
/// filling `metadata_fills` may use in its URLs and hosts.
pub fn allowed_placeholders<'a>(
    params: &'a [ConnectionParam],
    quirks: &'a [String],
    metadata_fills: Option<&'a str>,
) -> BTreeSet<&'a str> {
    let mut allowed: BTreeSet<&str> = params.iter().map(|p| p.name.as_str()).collect();
    allowed.extend(RESERVED_PLACEHOLDERS.iter().copied());
    allowed.extend(metadata_fills);
    for (name, fillers) in DERIVED_PLACEHOLDERS {
        if quirks.iter().any(|q| fillers.contains(&q.as_str())) {
            allowed.insert(name);
        }
    }
    allowed
}

fn validate_entry(e: &CatalogEntry) -> Vec<String> {
    let mut errors = Vec::new();
    let mut check = |ok: bool, msg: &str| {
        if !ok {
            errors.push(msg.to_owned());
        }
    };
    check(
        is_catalog_name(&e.name),
        "name must match [a-z0-9][a-z0-9_.-]*",
    );
    check(
        !e.display_name.trim().is_empty() && e.display_name.len() <= 100,
        "display_name must be 1 to 100 bytes",
    );
    check(
        CATEGORIES.contains(&e.category.as_str()),
        "category is not a known category",
    );
    check(
        matches!(e.scope_separator.as_str(), " " | ","),
        "scope_separator must be \" \" or \",\"",
    );
    check(
        e.token_response_quirks
            .iter()
            .all(|q| QUIRKS.contains(&q.as_str())),
        "token_response_quirks holds an unknown code",
    );
    if e.auth_type == AuthType::Oauth2 {
        check(e.authorize_url.is_some(), "oauth2 needs authorize_url");
    }
    if e.auth_type.is_oauth() {
        check(e.token_url.is_some(), "oauth2 needs token_url");
    } else {
        check(
            e.authorize_url.is_none()
                && e.token_url.is_none()
                && e.refresh_url.is_none()
                && e.revocation.is_none()
                && e.token_request_params.is_empty()
                && e.post_exchange_metadata.is_none(),
            "api_key and basic entries have no OAuth endpoints or token parameters",
        );
        check(
            !e.api_key_fields.is_empty(),
            "api_key and basic entries describe their api_key_fields",
        );
    }
    if e.auth_type == AuthType::Oauth2ClientCredentials {
        check(
            e.authorize_url.is_none(),
            "client credentials entries have no authorize_url",
        );
    }
    if e.auth_type == AuthType::Basic {
        // The stored credential is `base64(username:password)` (RFC 7617).
        check(
            e.header.name == "authorization"
                && e.header.format == "Basic {token}"
                && e.header.placement == authstamp_protocol::Placement::Header,
            "basic entries stamp authorization: Basic {token}",
        );
    }
    check(
        crate::validate::credential_name(e.header.placement, &e.header.name).is_ok(),
        "header.name must be a lowercase, unreserved header name",
    );
    check(
        crate::validate::header_format(&e.header.format).is_ok(),
        "header.format must contain {token} once",
    );
    for scope in &e.default_scopes {
        check(
            !scope.is_empty()
                && !scope.contains(e.scope_separator.as_str())
                && !scope.chars().any(char::is_whitespace),
            "default_scopes entries must be non-empty without the separator",
        );
    }
    for (grant, params) in [
        ("exchange", &e.token_request_params.exchange),
        ("refresh", &e.token_request_params.refresh),
        (
            "client_credentials",
            &e.token_request_params.client_credentials,
        ),
    ] {
        for (key, value) in params {
            // Zoom's server-to-server apps: `grant_type=account_credentials`.
            let grant_override = grant == "client_credentials" && key == "grant_type";
            if key.is_empty()
                || key.chars().any(char::is_control)
                || value.chars().any(char::is_control)
                || (RESERVED_TOKEN_PARAMS.contains(&key.as_str()) && !grant_override)
            {
                errors.push(format!(
                    "token_request_params.{grant} key {key:?} is invalid or written by the service"
                ));
            }
            // Filled from the connection's parameters when the request is sent.
            match crate::template::placeholders(value) {
                Ok(names)
                    if names.iter().all(|n| {
                        e.connection_params.iter().any(|p| p.name == *n) || *n == "client_id"
                    }) => {}
                _ => errors.push(format!(
                    "token_request_params.{grant} value of {key:?} names an unknown placeholder"
                )),
            }
        }
    }
    if let Some(m) = &e.post_exchange_metadata {
        if crate::validate::header_format(&m.header_format).is_err() {
            errors.push("post_exchange_metadata.header_format must contain {token} once".into());
        }
        if !is_placeholder_name(&m.fills)
            || e.connection_params.iter().any(|p| p.name == m.fills)
            || RESERVED_PLACEHOLDERS.contains(&m.fills.as_str())
            || DERIVED_PLACEHOLDERS.iter().any(|(n, _)| *n == m.fills)
        {
            errors.push("post_exchange_metadata.fills must be a new placeholder name".into());
        }
        if m.field.is_empty() || m.field.len() > 64 {
            errors.push("post_exchange_metadata.field must be 1 to 64 bytes".into());
        }
    }
    errors.extend(key_field_problems(e.auth_type, &e.api_key_fields));
    if let Some(check) = &e.key_check {
        if e.auth_type.is_oauth() {
            errors.push("key_check is for api_key and basic entries".into());
        }
        errors.extend(check.problems());
    }
    // Refresh.
    let r = &e.refresh;
    if r.rotation && !r.supported {
        errors.push("refresh.rotation without refresh.supported".into());
    }
    if e.refresh_url.is_some() && !r.supported {
        errors.push("refresh_url without refresh.supported".into());
    }
    for d in [&r.access_token_lifetime, &r.refresh_token_idle_expiry]
        .into_iter()
        .flatten()
    {
        if !is_catalog_duration(d) {
            errors.push("refresh durations must match ^\\d+(s|m|h|d|mo)$".into());
        }
    }
    errors.extend(validate_params(&e.connection_params));
    errors.extend(validate_templates(&Templates::of_entry(e, true), &|_| {
        "acme".to_owned()
    }));
    if let Err(msg) = template::render_url(&e.docs_url, &Values::new()) {
        errors.push(format!("docs_url: {msg}"));
    } else if !e.docs_url.starts_with("https://") {
        errors.push("docs_url must be https".into());
    }
    if e.api_base_url.is_none() {
        errors.push("api_base_url is required".into());
    }
    errors.extend(validate_references(e));
    errors
}

/// The templated parts of a provider (catalog entry or app configuration).
pub struct Templates<'a> {
    pub authorize_url: Option<&'a str>,
    pub token_url: Option<&'a str>,
    pub refresh_url: Option<&'a str>,
    pub revocation_url: Option<&'a str>,
    pub metadata_url: Option<&'a str>,
    pub api_base_url: Option<&'a str>,
    pub api_hosts: &'a [String],
    pub extra_authorize_params: &'a BTreeMap<String, String>,
    pub connection_params: &'a [ConnectionParam],
    pub quirks: &'a [String],
    pub metadata_fills: Option<&'a str>,
    /// Catalog entries: every URL is https and has no query. App
    /// configurations may use http (test providers on a trusted network)
    /// and a query in the authorize and token URLs.
    pub https_only: bool,
}

impl<'a> Templates<'a> {
    pub fn of_entry(e: &'a CatalogEntry, https_only: bool) -> Self {
        Self {
            authorize_url: e.authorize_url.as_deref(),
            token_url: e.token_url.as_deref(),
            refresh_url: e.refresh_url.as_deref(),
            revocation_url: e.revocation.as_ref().map(|r| r.url.as_str()),
            metadata_url: e.post_exchange_metadata.as_ref().map(|m| m.url.as_str()),
            api_base_url: e.api_base_url.as_deref(),
            api_hosts: &e.api_hosts,
            extra_authorize_params: &e.extra_authorize_params,
            connection_params: &e.connection_params,
            quirks: &e.token_response_quirks,
            metadata_fills: e.metadata_fills(),
            https_only,
        }
    }
}

/// Rules 3 to 5 of `providers/README.md`: placeholders are known, URLs
/// parse after substitution (without query or fragment), `api_hosts` are
/// valid lowercase hosts and hold the host of `api_base_url`.
pub fn validate_templates(
    t: &Templates<'_>,
    sample: &dyn Fn(&ConnectionParam) -> String,
) -> Vec<String> {
    let mut errors = Vec::new();
    let allowed = allowed_placeholders(t.connection_params, t.quirks, t.metadata_fills);
    let values = sample_values(t.connection_params, sample, t.metadata_fills);
    let check_placeholders =
        |what: &str, text: &str, errors: &mut Vec<String>| match template::placeholders(text) {
            Ok(names) => {
                for name in names {
                    if !allowed.contains(name) {
                        errors.push(format!("{what}: unknown placeholder {{{name}}}"));
                    }
                    if name == "refresh_token" && what != "revocation_url" {
                        errors.push(format!("{what}: {{refresh_token}} only in revocation_url"));
                    }
                    // The metadata call runs before its placeholder is known.
                    if Some(name) == t.metadata_fills
                        && matches!(what, "authorize_url" | "token_url" | "metadata_url")
                    {
                        errors.push(format!("{what}: {{{name}}} is not known yet there"));
                    }
                }
            }
            Err(e) => errors.push(format!("{what}: {e}")),
        };
    for (what, url) in [
        ("authorize_url", t.authorize_url),
        ("token_url", t.token_url),
        ("refresh_url", t.refresh_url),
        ("revocation_url", t.revocation_url),
        ("metadata_url", t.metadata_url),
        ("api_base_url", t.api_base_url),
    ] {
        let Some(url) = url else { continue };
        check_placeholders(what, url, &mut errors);
        match template::render_url(url, &values) {
            Ok(parsed) => {
                if t.https_only && parsed.scheme() != "https" {
                    errors.push(format!("{what} must be https"));
                }
                // Catalog URLs carry no query (README rule 3); an app's own
                // authorize and token URLs may (kept as they are).
                // Dropbox Sign refreshes at `/oauth/token?refresh`.
                let query_allowed =
                    (!t.https_only && what != "api_base_url") || what == "refresh_url";
                if (parsed.query().is_some() && !query_allowed) || parsed.fragment().is_some() {
                    errors.push(format!("{what} must not carry a query or fragment"));
                }
            }
            Err(e) => errors.push(format!("{what}: {e}")),
        }
    }
    for (key, value) in t.extra_authorize_params {
        check_placeholders("extra_authorize_params", value, &mut errors);
        if key.is_empty() || key.chars().any(char::is_control) {
            errors.push(format!("extra_authorize_params key {key:?} is invalid"));
        }
    }
    if t.api_hosts.is_empty() {
        errors.push("api_hosts must not be empty".into());
    }
    let mut hosts = BTreeSet::new();
    for host in t.api_hosts {
        check_placeholders("api_hosts", host, &mut errors);
        match template::render_host(host, &values) {
            Ok(h) if template::is_host_name(&h) && *host == host.to_ascii_lowercase() => {
                hosts.insert(h);
            }
            _ => errors.push(format!("api_hosts entry {host:?} is not a lowercase host")),
        }
    }
    if let Some(base) = t.api_base_url {
        if let Ok(url) = template::render_url(base, &values) {
            let host = url.host_str().unwrap_or_default().to_owned();
            if !hosts.contains(&host) {
                errors.push(format!(
                    "the host of api_base_url ({host}) is not in api_hosts"
                ));
            }
        }
    }
    errors
}

/// A reference: a provider documentation URL (https) or Nango's catalog at
/// a named commit, `nango@<hex commit>:<entry key>`.
pub fn is_reference(source: &str) -> bool {
    if let Some(rest) = source.strip_prefix("nango@") {
        let Some((commit, key)) = rest.split_once(':') else {
            return false;
        };
        return (7..=40).contains(&commit.len())
            && commit.bytes().all(|b| b.is_ascii_hexdigit())
            && !key.is_empty()
            && key.len() <= 100
            && !key.chars().any(char::is_whitespace);
    }
    source.starts_with("https://") && source.len() <= 2048 && url::Url::parse(source).is_ok()
}

/// The sub-keys of a grouped field that a reference may name one by one.
fn sub_keys(e: &CatalogEntry, field: &str) -> Vec<String> {
    let fixed: &[&str] = match field {
        "refresh" => REFRESH_KEYS,
        "revocation" if e.revocation.is_some() => REVOCATION_KEYS,
        "token_request_params" => TOKEN_PARAM_KEYS,
        "post_exchange_metadata" if e.post_exchange_metadata.is_some() => {
            &["url", "header_format", "field", "fills"]
        }
        "extra_authorize_params" => {
            return e.extra_authorize_params.keys().cloned().collect();
        }
        _ => &[],
    };
    fixed.iter().map(|k| (*k).to_owned()).collect()
}

/// Item 2 of issue 15: every field is referenced (by itself, its group, or
/// each of its sub-keys) or listed unverified, never both; every source is a
/// reference.
fn validate_references(e: &CatalogEntry) -> Vec<String> {
    let mut errors = Vec::new();
    let known = |name: &str| -> bool {
        if FIELDS.contains(&name) || OPTIONAL_FIELDS.contains(&name) {
            return true;
        }
        match name.split_once('.') {
            Some((field, key)) => sub_keys(e, field).iter().any(|k| k == key),
            None => false,
        }
    };
    let referenced: BTreeSet<&str> = e.references.keys().map(String::as_str).collect();
    let unverified: BTreeSet<&str> = e.unverified.iter().map(String::as_str).collect();
    for name in referenced.iter().chain(unverified.iter()) {
        if !known(name) {
            errors.push(format!(
                "references/unverified name {name:?} is not a field"
            ));
        }
    }
    for name in referenced.intersection(&unverified) {
        errors.push(format!("{name:?} is both referenced and unverified"));
    }
    for (field, sources) in &e.references {
        if sources.is_empty() {
            errors.push(format!("references.{field} names no source"));
        }
        for source in sources {
            if !is_reference(source) {
                errors.push(format!(
                    "references.{field}: {source:?} is neither an https URL nor nango@<commit>:<key>"
                ));
            }
        }
    }
    let covered = |name: &str| referenced.contains(name) || unverified.contains(name);
    for field in FIELDS.iter().filter(|f| !SELF_DESCRIBING.contains(f)) {
        if covered(field) {
            let parts = sub_keys(e, field);
            for key in parts {
                let dotted = format!("{field}.{key}");
                if covered(&dotted) {
                    let parent_referenced = referenced.contains(field);
                    let child_referenced = referenced.contains(dotted.as_str());
                    if parent_referenced != child_referenced {
                        errors.push(format!("{dotted:?} contradicts its parent {field:?}"));
                    }
                }
            }
            continue;
        }
        let parts = sub_keys(e, field);
        let all_parts =
            !parts.is_empty() && parts.iter().all(|key| covered(&format!("{field}.{key}")));
        if !all_parts {
            errors.push(format!("{field} is neither referenced nor unverified"));
        }
    }
    if e.key_check.is_some() && !covered("key_check") {
        errors.push("key_check is neither referenced nor unverified".into());
    }
    errors
}

/// Checks connection parameter values against their declarations and fills
/// defaults: unknown names are refused, a parameter without default is
/// required, and every value must fully match its pattern.
pub fn resolve_params(
    declared: &[ConnectionParam],
    given: &BTreeMap<String, String>,
) -> Result<Values, Error> {
    for name in given.keys() {
        if !declared.iter().any(|p| &p.name == name) {
            return Err(Error::bad_request(format!(
                "unknown connection parameter {name:?}"
            )));
        }
    }
    let mut values = Values::new();
    for p in declared {
        let value = match (given.get(&p.name), &p.default) {
            (Some(v), _) => v.clone(),
            (None, Some(d)) => d.clone(),
            (None, None) => {
                return Err(Error::bad_request(format!(
                    "connection parameter {:?} is required ({})",
                    p.name, p.description
                )))
            }
        };
        let re = compile_pattern(&p.pattern)
            .map_err(|e| Error::internal("stored connection parameter pattern", e))?;
        if value.len() > 253 || !re.is_match(&value) {
            return Err(Error::bad_request(format!(
                "connection parameter {:?} does not match {}",
                p.name, p.pattern
            )));
        }
        values.insert(p.name.clone(), value);
    }
    Ok(values)
}

/// A summary line per entry, for `authstamp providers list`.
#[derive(Debug, Serialize)]
pub struct Summary<'a> {
    pub name: &'a str,
    pub display_name: &'a str,
    pub auth_type: AuthType,
    pub connection_params: Vec<&'a str>,
    pub docs_url: &'a str,
}

impl<'a> From<&'a CatalogEntry> for Summary<'a> {
    fn from(e: &'a CatalogEntry) -> Self {
        Self {
            name: &e.name,
            display_name: &e.display_name,
            auth_type: e.auth_type,
            connection_params: e
                .connection_params
                .iter()
                .map(|p| p.name.as_str())
                .collect(),
            docs_url: &e.docs_url,
        }
    }
}

impl Catalog {
    /// The table of `docs/providers.md`: one row per entry with what is
    /// referenced, and the totals above it.
    pub fn markdown_table(&self) -> String {
        let mut by_type: BTreeMap<&str, usize> = BTreeMap::new();
        let (mut referenced, mut unverified) = (0, 0);
        for e in &self.entries {
            *by_type.entry(e.auth_type.as_str()).or_default() += 1;
            referenced += e.references.len();
            unverified += e.unverified.len();
        }
        let mut out = format!(
            "{} entries ({}); {referenced} referenced fields or field groups, {unverified} unverified.\n\n",
            self.entries.len(),
            by_type
                .iter()
                .map(|(t, n)| format!("{n} {t}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        out.push_str(
            "| name | provider | category | auth type | referenced | unverified | docs |\n",
        );
        out.push_str("| --- | --- | --- | --- | --- | --- | --- |\n");
        let cell = |text: &str| text.replace('|', "\\|");
        for e in &self.entries {
            out.push_str(&format!(
                "| `{}` | {} | {} | {} | {} | {} | [docs]({}) |\n",
                e.name,
                cell(&e.display_name),
                e.category,
                e.auth_type.as_str(),
                e.references.len(),
                if e.unverified.is_empty() {
                    "-".to_owned()
                } else {
                    cell(&e.unverified.join(", "))
                },
                e.docs_url
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values that satisfy the patterns of the parameters without default.
    const SAMPLES: &[&str] = &[
        "acme",
        "acme.okta.com",
        "acme.us.auth0.com",
        "acme.my.salesforce.com",
        "us",
        "eu",
        "live",
        "api",
        "gcp",
        "na",
        "12345",
        "123-ABC-456",
        "2024-01-01",
        "ABCDEFGH12",
        "abcdefghij0123456789",
        "0123456789abcdef0123456789abcdef",
        "01234567-89ab-cdef-0123-456789abcdef",
        "amzn1.acme",
        "acct_0123456789abcdef",
        "https://api.acme.example/",
        "sellercentral.amazon.com",
        "restacme.bullhornstaffing.com",
        "www.clover.com",
        "api.clover.com",
        "us-central1",
        "acme.cloud.databricks.com",
        "datadoghq.com",
        "app.datadoghq.com",
        "acme.docusign.net",
        "acme.myfreshworks.com",
        "acme.api.gong.io",
        "acme.grafana.net",
        "acme.looker.com",
        "acme.onmicrosoft.com",
        "mixpanel.com",
        "acme.service-now.com",
        "sentry.io",
        "smartsheet.com",
        "acme.snowflakecomputing.com",
        "acme.teamwork.com",
        "www.wrike.com",
        "acme.yahooapis.com",
        "business.revolut.com",
        "b2b.revolut.com",
        "sandbox-api",
        "gitlab.com",
        "acme.api-us1.com",
        "pub_00000000-0000-0000-0000-000000000000",
        "api.teamtailor.com",
        "cdp",
        "",
    ];

    fn sample_for(p: &ConnectionParam) -> String {
        let re = compile_pattern(&p.pattern).unwrap();
        SAMPLES
            .iter()
            .find(|s| re.is_match(s))
            .unwrap_or_else(|| panic!("add a sample value for {} ({})", p.name, p.pattern))
            .to_string()
    }

    pub(crate) fn catalog() -> &'static Catalog {
        match embedded() {
            Ok(c) => c,
            Err(errors) => panic!("catalog errors:\n{}", errors.join("\n")),
        }
    }

    #[test]
    fn every_embedded_entry_is_valid() {
        let catalog = catalog();
        assert_eq!(catalog.entries().len(), files::FILES.len());
        assert!(catalog.entries().len() >= 40);
        for required in [
            "slack",
            "microsoft",
            "google",
            "github",
            "gitlab",
            "hubspot",
            "salesforce",
            "dropbox",
            "box",
            "zoom",
            "notion",
            "atlassian",
            "asana",
            "linear",
            "intercom",
            "zendesk",
            "xero",
            "quickbooks",
            "shopify",
            "discord",
            "linkedin",
            "x",
            "spotify",
            "mailchimp",
            "calendly",
            "airtable",
            "figma",
            "miro",
            "monday",
            "clickup",
            "pipedrive",
            "stripe",
            "paypal",
            "twitch",
            "reddit",
            "strava",
            "webex",
            "okta",
            "auth0",
        ] {
            assert!(catalog.get(required).is_some(), "{required} is missing");
        }
        // With a value matching each pattern (not only "acme"), every URL and
        // host still renders.
        for e in catalog.entries() {
            let errors = validate_templates(&Templates::of_entry(e, true), &sample_for);
            assert!(errors.is_empty(), "{}: {errors:?}", e.name);
            let values = sample_values(&e.connection_params, &sample_for, e.metadata_fills());
            resolve_params(
                &e.connection_params,
                &e.connection_params
                    .iter()
                    .map(|p| (p.name.clone(), values[&p.name].clone()))
                    .collect(),
            )
            .unwrap_or_else(|err| panic!("{}: {err}", e.name));
        }
    }

    fn slack_text() -> String {
        files::FILES
            .iter()
            .find(|(f, _)| *f == "slack.json")
            .unwrap()
            .1
            .to_owned()
    }

    fn errors_of(text: &str) -> String {
        Catalog::parse(&[("slack.json", text)])
            .unwrap_err()
            .join("\n")
    }

    fn mutate(f: impl FnOnce(&mut serde_json::Map<String, Value>)) -> String {
        let mut v: Value = serde_json::from_str(&slack_text()).unwrap();
        f(v.as_object_mut().unwrap());
        v.to_string()
    }

    /// Moves `field` (and its sub-keys) out of `references` into `unverified`.
    fn unverify(o: &mut serde_json::Map<String, Value>, field: &str) {
        let refs = o["references"].as_object_mut().unwrap();
        refs.retain(|k, _| k != field && !k.starts_with(&format!("{field}.")));
        let list = o["unverified"].as_array_mut().unwrap();
        list.retain(|v| {
            let v = v.as_str().unwrap();
            v != field && !v.starts_with(&format!("{field}."))
        });
        list.push(field.into());
    }

    /// `anthropic.json` (an API-key entry) changed by `f`: the parse errors.
    fn key_entry_errors(f: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Vec<String> {
        let text = files::FILES
            .iter()
            .find(|(f, _)| *f == "anthropic.json")
            .unwrap()
            .1;
        let mut v: Value = serde_json::from_str(text).unwrap();
        f(v.as_object_mut().unwrap());
        Catalog::parse(&[("anthropic.json", &v.to_string())])
            .err()
            .unwrap_or_default()
    }

    #[test]
    fn a_key_check_is_optional_checked_and_referenced() {
        let check =
            serde_json::json!({"method": "GET", "path": "/v1/models", "expect_status": 200});
        assert!(key_entry_errors(|_| {}).is_empty());
        let with_check = |check: Value, referenced: bool| {
            key_entry_errors(move |o| {
                o.insert("key_check".into(), check);
                if referenced {
                    o["references"].as_object_mut().unwrap().insert(
                        "key_check".into(),
                        serde_json::json!(["https://docs.anthropic.com/en/api/models-list"]),
                    );
                }
            })
            .join("\n")
        };
        assert_eq!(with_check(check.clone(), true), "");
        assert!(with_check(check.clone(), false)
            .contains("key_check is neither referenced nor unverified"));
        for path in ["https://evil.test/x", "//evil.test/x", "/\\evil.test/x"] {
            let bad = serde_json::json!({"path": path, "expect_status": 200});
            assert!(
                with_check(bad, true).contains("key_check.path must be an absolute path"),
                "{path}"
            );
        }
        let bad = serde_json::json!({"path": "/v1/models", "expect_status": 401});
        assert!(with_check(bad, true).contains("key_check.expect_status must be a 2xx"));
        let errors = key_entry_errors(|o| {
            o["api_key_fields"][0]["name"] = "username".into();
        })
        .join("\n");
        assert!(
            errors.contains("api_key_fields: api_key providers ask for api_key"),
            "{errors}"
        );
        let errors = errors_of(&mutate(|o| {
            o.insert("key_check".into(), check);
        }));
        assert!(
            errors.contains("key_check is for api_key and basic entries"),
            "{errors}"
        );
    }

    #[test]
    fn broken_entries_are_refused_with_a_reason() {
        assert!(Catalog::parse(&[("slack.json", &slack_text())]).is_ok());
        let cases: Vec<(String, &str)> = vec![
            (
                mutate(|o| {
                    o.remove("notes");
                }),
                "missing field notes",
            ),
            (
                mutate(|o| {
                    o["refresh"].as_object_mut().unwrap().remove("rotation");
                }),
                "missing field refresh.rotation",
            ),
            (
                mutate(|o| {
                    o.insert("extra".into(), Value::Null);
                }),
                "does not fit the schema",
            ),
            (
                mutate(|o| {
                    o.insert("name".into(), "other".into());
                }),
                "not the file name",
            ),
            (
                mutate(|o| {
                    o.insert("category".into(), "nope".into());
                }),
                "known category",
            ),
            (
                mutate(|o| {
                    o.insert("token_url".into(), "https://slack.com/x?a=1".into());
                }),
                "query",
            ),
            (
                mutate(|o| {
                    o.insert("refresh_url".into(), "http://slack.com/x".into());
                }),
                "refresh_url must be https",
            ),
            (
                mutate(|o| {
                    o.insert("token_url".into(), "https://{nope}.slack.com/x".into());
                }),
                "unknown placeholder",
            ),
            (
                mutate(|o| {
                    o.insert("api_hosts".into(), serde_json::json!(["files.slack.com"]));
                }),
                "not in api_hosts",
            ),
            (
                mutate(|o| {
                    o.insert("api_hosts".into(), serde_json::json!([]));
                }),
                "must not be empty",
            ),
            (
                mutate(|o| {
                    o.insert("api_hosts".into(), serde_json::json!(["Slack.com"]));
                }),
                "lowercase host",
            ),
            (
                mutate(|o| {
                    o["revocation"]["style"] = "nope".into();
                }),
                "does not fit the schema",
            ),
            (
                mutate(|o| {
                    o.insert("token_response_quirks".into(), serde_json::json!(["nope"]));
                }),
                "unknown code",
            ),
            (
                mutate(|o| {
                    o["token_request_params"]["refresh"] =
                        serde_json::json!({"grant_type": "password"});
                }),
                "written by the service",
            ),
            (
                mutate(|o| {
                    o["post_exchange_metadata"] = serde_json::json!({"url": "https://slack.com/m", "header_format": "Bearer {token}", "field": "dc", "fills": "client_id"});
                }),
                "new placeholder name",
            ),
            (
                mutate(|o| {
                    o["post_exchange_metadata"] = serde_json::json!({"url": "https://{dc}.slack.com/m", "header_format": "Bearer {token}", "field": "dc", "fills": "dc"});
                }),
                "not known yet",
            ),
            (
                mutate(|o| {
                    o.insert(
                        "header".into(),
                        serde_json::json!({"name": "authorization", "format": "Bearer"}),
                    );
                }),
                "{token}",
            ),
            (
                mutate(|o| {
                    o["refresh"]["supported"] = false.into();
                }),
                "rotation without",
            ),
            (
                mutate(|o| {
                    o["refresh"]["access_token_lifetime"] = "12 hours".into();
                }),
                "durations",
            ),
            (
                mutate(|o| {
                    let first = o["unverified"][0].clone();
                    o["references"][first.as_str().unwrap()] =
                        serde_json::json!(["https://docs.slack.dev/x"]);
                }),
                "both referenced",
            ),
            (
                mutate(|o| {
                    o["unverified"] = serde_json::json!(["nope"]);
                }),
                "not a field",
            ),
            (
                mutate(|o| {
                    o["references"]
                        .as_object_mut()
                        .unwrap()
                        .retain(|k, _| k != "token_url");
                    o["unverified"]
                        .as_array_mut()
                        .unwrap()
                        .retain(|v| v != "token_url");
                }),
                "token_url is neither referenced nor unverified",
            ),
            (
                mutate(|o| {
                    o["references"]["token_url"] = serde_json::json!(["slack docs"]);
                }),
                "neither an https URL nor nango",
            ),
            (
                mutate(|o| {
                    o["references"]["token_url"] = serde_json::json!([]);
                }),
                "names no source",
            ),
            (
                mutate(|o| {
                    unverify(o, "refresh");
                    o["references"]["refresh.rotation"] =
                        serde_json::json!(["https://docs.slack.dev/x"]);
                }),
                "contradicts its parent",
            ),
            (
                mutate(|o| {
                    o["connection_params"] =
                        serde_json::json!([{"name": "x", "description": "d", "pattern": "[a-z]+"}]);
                }),
                "anchored",
            ),
            (
                mutate(|o| {
                    o["connection_params"] = serde_json::json!([{"name": "x", "description": "d", "pattern": "^[a-z]+$", "default": "A"}]);
                }),
                "does not match",
            ),
            (
                mutate(|o| {
                    o["connection_params"] = serde_json::json!([{"name": "x", "description": "d", "pattern": "^([a-z]+$"}]);
                }),
                "does not compile",
            ),
            (
                mutate(|o| {
                    o["auth_type"] = "api_key".into();
                }),
                "no OAuth endpoints",
            ),
            (
                mutate(|o| {
                    o["auth_type"] = "basic".into();
                }),
                "basic entries stamp authorization: Basic {token}",
            ),
            (
                mutate(|o| {
                    o["token_request_params"]["exchange"] = serde_json::json!({"team": "{team}"});
                }),
                "names an unknown placeholder",
            ),
            ("[]".to_owned(), "not a JSON object"),
            ("{".to_owned(), "invalid JSON"),
        ];
        for (text, expected) in cases {
            let errors = errors_of(&text);
            assert!(errors.contains(expected), "{expected}: {errors}");
        }
        let twice = Catalog::parse(&[("slack.json", &slack_text()), ("slack.json", &slack_text())])
            .unwrap_err()
            .join("\n");
        assert!(twice.contains("duplicate name"), "{twice}");
    }

    /// A parameter that selects a host decides where the client secret and
    /// the user's token go: it must never admit a host outside the
    /// provider's own domains.
    #[test]
    fn no_connection_param_admits_a_foreign_host() {
        for e in catalog().entries() {
            let t = Templates::of_entry(e, true);
            let mut hosts: Vec<&str> = e.api_hosts.iter().map(String::as_str).collect();
            for url in [
                t.authorize_url,
                t.token_url,
                t.refresh_url,
                t.revocation_url,
                t.metadata_url,
                t.api_base_url,
            ]
            .into_iter()
            .flatten()
            {
                let rest = url.split_once("://").map_or(url, |(_, r)| r);
                hosts.push(rest.split('/').next().unwrap_or(rest));
            }
            for p in &e.connection_params {
                let placeholder = format!("{{{}}}", p.name);
                if !hosts.iter().any(|h| h.contains(&placeholder)) {
                    continue;
                }
                let re = compile_pattern(&p.pattern).unwrap();
                for foreign in ["evil.example", "login.evil.example", "evil.example:443"] {
                    assert!(
                        !re.is_match(foreign),
                        "{}: {} admits {foreign}",
                        e.name,
                        p.name
                    );
                }
            }
        }
    }

    #[test]
    fn verified_is_exactly_the_referenced_fields() {
        for e in catalog().entries() {
            let verified: BTreeSet<&str> = e.verified().into_iter().collect();
            let referenced: BTreeSet<&str> = e.references.keys().map(String::as_str).collect();
            assert_eq!(verified, referenced, "{}", e.name);
            for name in &e.unverified {
                assert!(!verified.contains(name.as_str()), "{}: {name}", e.name);
            }
        }
    }

    #[test]
    fn references_name_a_url_or_nango_at_a_commit() {
        assert!(is_reference("https://developers.hubspot.com/docs/x"));
        assert!(is_reference("nango@2f4c0af6:hubspot"));
        for bad in [
            "http://example.com",
            "nango:hubspot",
            "nango@zzzz0000:hubspot",
            "nango@2f4c0af6:",
            "hubspot docs",
        ] {
            assert!(!is_reference(bad), "{bad}");
        }
    }

    #[test]
    fn params_are_checked_and_defaulted() {
        let catalog = catalog();
        let zendesk = &catalog.get("zendesk").unwrap().connection_params;
        let given = |k: &str, v: &str| BTreeMap::from([(k.to_owned(), v.to_owned())]);
        assert_eq!(
            resolve_params(zendesk, &given("subdomain", "acme")).unwrap()["subdomain"],
            "acme"
        );
        for bad in ["evil.com", "acme.evil.com", "-x", "", "acme/../x", "ACME"] {
            assert!(
                resolve_params(zendesk, &given("subdomain", bad)).is_err(),
                "{bad}"
            );
        }
        assert!(
            resolve_params(zendesk, &BTreeMap::new()).is_err(),
            "required"
        );
        assert!(
            resolve_params(zendesk, &given("other", "x")).is_err(),
            "unknown"
        );
        let microsoft = &catalog.get("microsoft").unwrap().connection_params;
        assert_eq!(
            resolve_params(microsoft, &BTreeMap::new()).unwrap()["tenant"],
            "common"
        );
    }

    #[test]
    fn durations() {
        for ok in ["30m", "12h", "90d", "6mo", "1s"] {
            assert!(is_catalog_duration(ok), "{ok}");
        }
        for bad in ["", "h", "1", "1y", "1 h", "-1h"] {
            assert!(!is_catalog_duration(bad), "{bad}");
        }
    }
}
