//! The `authstamp` command line: `serve`, and admin commands that open the
//! database directly and call the same service functions as the admin API.
//! Every option also reads an `AUTHSTAMP_*` variable; secrets are never flags.

pub mod serve;

use crate::config::{self, PublicUrl, SecretEnv};
use crate::crypto::secrets::AccessToken;
use crate::crypto::secrets::ClientSecret;
use crate::crypto::vault::Vault;
use crate::db::Db;
use crate::http::logging::{self, LogFormat};
use crate::policy::{PolicyOverrides, RefreshPolicy};
use crate::service::apps;
use crate::service::connections::{self, ConnectionView};
use crate::service::credentials::PutCredentials;
use crate::service::providers::{self, CredentialSpec, PutProvider};
use crate::service::state::{AppState, StateOptions};
use crate::service::webhooks;
use crate::store::connections::ConnectionStatus;
use crate::store::providers::ClientAuth;
use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "authstamp",
    version,
    about = "authstamp token service: OAuth connections, encrypted token vault and token lookup for the Envoy filter"
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, env = "AUTHSTAMP_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
// Parsed once at start: the size of `Serve` does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Run the HTTP service.
    Serve(Box<ServeArgs>),
    /// Manage apps.
    App {
        #[command(subcommand)]
        command: AppCommand,
    },
    /// Manage an app's provider configurations.
    Provider {
        #[command(subcommand)]
        command: ProviderCommand,
    },
    /// The built-in provider catalog (no database needed).
    Providers {
        #[command(subcommand)]
        command: ProvidersCommand,
    },
    /// Connections: inspect (status, last refresh, failures; never tokens),
    /// list by status, disconnect, reconnect.
    Connection {
        #[command(subcommand)]
        command: ConnectionCommand,
    },
    /// Store or replace a user's API key or Basic credentials (secrets from
    /// an environment variable, a file or stdin, never a flag).
    Credentials {
        #[command(subcommand)]
        command: CredentialsCommand,
    },
    /// An app's webhook: set, show, delete, send a signed test event.
    Webhook {
        #[command(subcommand)]
        command: WebhookCommand,
    },
    /// Vault master keys: rotate to a new version, show versions in use.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Print the OpenAPI document of the HTTP API (what `GET /v1/openapi.json`
    /// serves; `make openapi` writes it to token-service/openapi.json).
    Openapi,
    /// Benchmarks only: insert N connected users with fake tokens (see seed.rs).
    #[command(hide = true)]
    BenchSeed(BenchSeedArgs),
}

#[derive(Debug, Clone, Args)]
pub struct BenchSeedArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The app id (app_…).
    #[arg(long, value_name = "APP_ID")]
    pub app: String,
    /// The provider configuration's name (the x-authstamp-provider value).
    #[arg(long, value_name = "NAME")]
    pub provider: String,
    /// How many users: <prefix><start> … <prefix><start + users - 1>.
    #[arg(long)]
    pub users: u64,
    #[arg(long, default_value = "user")]
    pub prefix: String,
    #[arg(long, default_value_t = 0)]
    pub start: u64,
    /// Access token of each user: <token-prefix><user id>.
    #[arg(long, default_value = "seeded_")]
    pub token_prefix: String,
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub expires_in: Duration,
    /// Rows per transaction.
    #[arg(long, default_value_t = 5000)]
    pub batch: u64,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Activate a newer key version and re-encrypt every row with it, online.
    /// With a key file, a new key is generated and added to the file (unless
    /// the file already holds a version newer than the active one); with
    /// AUTHSTAMP_MASTER_KEY, add the new version there (on every replica) first.
    Rotate(KeysRotateArgs),
    /// Print the active key version and how many blobs each version seals.
    Status(KeysStatusArgs),
    /// Print a new random master key (base64 of 32 bytes).
    Generate,
}

#[derive(Debug, Clone, Args)]
pub struct KeysRotateArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Wait this long after activating the new version before the final pass
    /// (running services pick it up within 5 s).
    #[arg(long, default_value = "6s", value_parser = humantime::parse_duration)]
    pub settle: Duration,
    /// Rows per batch.
    #[arg(long, default_value_t = 500)]
    pub batch: i64,
    /// No progress bar on stderr.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Args)]
pub struct KeysStatusArgs {
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Subcommand)]
pub enum ProvidersCommand {
    /// List the catalog: one line per provider, or every field with --json.
    List {
        /// Print every entry in full as a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Print one catalog entry in full (JSON).
    Show {
        /// The catalog name, e.g. slack.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConnectionCommand {
    /// Print one connection.
    Get(ConnectionGetArgs),
    /// Print the connections of one user of an app, or with --status those
    /// of every user in that state.
    List(ConnectionListArgs),
    /// Revoke the grant at the provider (RFC 7009, where it has an endpoint),
    /// then delete the connection locally, always; prints what happened.
    Disconnect(ConnectionGetArgs),
    /// Print a new connect link for an existing OAuth connection (same
    /// connection parameters): send the user's browser to its connect_url.
    Reconnect(ConnectionReconnectArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ConnectionGetArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The app id (app_…).
    #[arg(long, value_name = "APP_ID")]
    pub app: String,
    /// The provider configuration's name (the x-authstamp-provider value).
    #[arg(long, value_name = "NAME")]
    pub provider: String,
    /// The app's id of its end user (the x-authstamp-user value; `-`: the app itself).
    #[arg(long, value_name = "USER")]
    pub user: String,
}

#[derive(Debug, Clone, Args)]
#[group(id = "connection_list", required = true, multiple = true, args = ["user", "status"])]
pub struct ConnectionListArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The app id (app_…).
    #[arg(long, value_name = "APP_ID")]
    pub app: String,
    /// Only this user's connections.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Only connections in this state (every user of the app unless --user).
    #[arg(long, value_enum)]
    pub status: Option<StatusArg>,
    /// At most this many connections without --user.
    #[arg(long, default_value_t = 1000)]
    pub limit: i64,
}

/// A connection's state as `connection list --status` filters it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StatusArg {
    /// Usable, no refresh running.
    Active,
    /// A refresh holds the connection's lease right now.
    Refreshing,
    /// The provider refused the refresh token: the user must connect again.
    ReauthRequired,
    /// Usable, but its last refresh failed (failure_count > 0).
    Failing,
}

impl StatusArg {
    fn stored(self) -> ConnectionStatus {
        match self {
            StatusArg::ReauthRequired => ConnectionStatus::ReauthRequired,
            _ => ConnectionStatus::Active,
        }
    }

    fn matches(self, view: &ConnectionView) -> bool {
        match self {
            StatusArg::Active => view.status == "active",
            StatusArg::Refreshing => view.status == "refreshing",
            StatusArg::ReauthRequired => view.status == "reauth_required",
            StatusArg::Failing => view.status != "reauth_required" && view.failure_count > 0,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ConnectionReconnectArgs {
    /// The connection: store, app, provider and user.
    #[command(flatten)]
    pub connection: ConnectionGetArgs,
    /// Where the browser returns after consent (one of the app's allowed
    /// return URLs); absent: the service's result page.
    #[arg(long, value_name = "URL")]
    pub return_to: Option<String>,
    /// Base of the connect link: the URL browsers reach the service at.
    #[arg(long, env = "AUTHSTAMP_PUBLIC_URL", value_name = "URL")]
    pub public_url: String,
}

#[derive(Debug, Subcommand)]
pub enum CredentialsCommand {
    /// Store (or replace) the credential of a user of an api_key or basic
    /// provider (user `-`: the app's own); prints the connection, never the secret.
    Set(CredentialsSetArgs),
}

#[derive(Debug, Clone, Args)]
#[group(id = "credential", required = true, multiple = false, args = ["api_key_env", "api_key_file", "api_key_stdin", "username"])]
pub struct CredentialsSetArgs {
    /// The connection: store, app, provider and user.
    #[command(flatten)]
    pub connection: ConnectionGetArgs,
    /// api_key providers: read the key from this environment variable.
    #[arg(long, value_name = "VAR")]
    pub api_key_env: Option<String>,
    /// api_key providers: read the key from this file.
    #[arg(long, value_name = "PATH")]
    pub api_key_file: Option<PathBuf>,
    /// api_key providers: read the key from standard input.
    #[arg(long)]
    pub api_key_stdin: bool,
    /// basic providers: the user name (not a secret), with one --password-* source.
    #[arg(long, requires = "password")]
    pub username: Option<String>,
    #[command(flatten)]
    pub password: PasswordSource,
    /// A connection parameter the provider declares, NAME=VALUE (repeatable).
    #[arg(long = "param", value_name = "NAME=VALUE", value_parser = parse_param)]
    pub params: Vec<(String, String)>,
}

/// Where a Basic password comes from.
#[derive(Debug, Clone, Args)]
#[group(id = "password", required = false, multiple = false)]
pub struct PasswordSource {
    /// basic providers: read the password from this environment variable.
    #[arg(long, value_name = "VAR", requires = "username")]
    pub password_env: Option<String>,
    /// basic providers: read the password from this file.
    #[arg(long, value_name = "PATH", requires = "username")]
    pub password_file: Option<PathBuf>,
    /// basic providers: read the password from standard input.
    #[arg(long, requires = "username")]
    pub password_stdin: bool,
}

fn parse_param(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{text:?} is not NAME=VALUE"))
}

#[derive(Debug, Subcommand)]
pub enum WebhookCommand {
    /// Create or replace an app's webhook; prints it, with the signing secret
    /// only when the service made it (no --secret-*).
    Set(WebhookSetArgs),
    /// Print an app's webhook (never its secret).
    Get(WebhookAppArgs),
    /// Remove an app's webhook.
    Delete(WebhookAppArgs),
    /// POST one signed event of type `test` to the webhook now and print the
    /// receiver's status; fails unless it answers 2xx.
    Test(WebhookAppArgs),
}

#[derive(Debug, Clone, Args)]
pub struct WebhookSetArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The app id (app_…).
    #[arg(long, value_name = "APP_ID")]
    pub app: String,
    /// The receiver's URL (http or https).
    #[arg(long, value_name = "URL")]
    pub url: String,
    #[command(flatten)]
    pub secret: WebhookSecretSource,
}

/// Where a webhook signing secret comes from (none: the service makes one).
#[derive(Debug, Clone, Args)]
#[group(required = false, multiple = false)]
pub struct WebhookSecretSource {
    /// Read the signing secret (16 to 512 bytes) from this environment variable.
    #[arg(long, value_name = "VAR")]
    pub secret_env: Option<String>,
    /// Read the signing secret from this file.
    #[arg(long, value_name = "PATH")]
    pub secret_file: Option<PathBuf>,
    /// Read the signing secret from standard input.
    #[arg(long)]
    pub secret_stdin: bool,
}

#[derive(Debug, Clone, Args)]
pub struct WebhookAppArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The app id (app_…).
    #[arg(long, value_name = "APP_ID")]
    pub app: String,
}

/// Reads a secret from the one source given: an environment variable, a
/// file or stdin (a trailing newline is not part of it). `None`: no source.
fn read_secret(
    what: &str,
    env: Option<&str>,
    file: Option<&std::path::Path>,
    stdin: bool,
) -> anyhow::Result<Option<zeroize::Zeroizing<String>>> {
    let raw = if let Some(var) = env {
        std::env::var(var)
            .with_context(|| format!("environment variable {var} ({what}) is not set"))?
    } else if let Some(path) = file {
        std::fs::read_to_string(path)
            .with_context(|| format!("could not read {what} from {}", path.display()))?
    } else if stdin {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .with_context(|| format!("could not read {what} from stdin"))?;
        text
    } else {
        return Ok(None);
    };
    let raw = zeroize::Zeroizing::new(raw);
    Ok(Some(zeroize::Zeroizing::new(
        raw.trim_end_matches(['\r', '\n']).to_owned(),
    )))
}

/// A provider's refresh policy overrides (absent: the service's defaults).
#[derive(Debug, Clone, Default, Args)]
pub struct PolicyArgs {
    /// Refresh on lookup this long before expiry.
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub refresh_skew: Option<Duration>,
    /// Lifetime assumed for tokens sent without expires_in.
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub max_token_lifetime: Option<Duration>,
    /// Background refresh this long before expiry (0s: only on lookup).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub background_window: Option<Duration>,
    /// Refresh connections whose tokens are this old, used or not (0s: off).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub keepalive: Option<Duration>,
    /// Pause after a transient refresh failure (doubles per failure).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub failure_cooldown: Option<Duration>,
}

impl From<PolicyArgs> for PolicyOverrides {
    fn from(a: PolicyArgs) -> Self {
        PolicyOverrides {
            skew: a.refresh_skew,
            max_token_lifetime: a.max_token_lifetime,
            background_window: a.background_window,
            keepalive: a.keepalive,
            failure_cooldown: a.failure_cooldown,
        }
    }
}

/// Where the data lives and how to unlock it.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Directory of the SQLite database and, with --local, the key files.
    #[arg(long, env = "AUTHSTAMP_DATA_DIR", default_value = "./authstamp-data")]
    pub data_dir: PathBuf,
    /// postgres://… to use PostgreSQL instead of <data-dir>/authstamp.db.
    #[arg(long, env = "AUTHSTAMP_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// File holding the master key (base64 of 32 bytes); or set AUTHSTAMP_MASTER_KEY.
    #[arg(long, env = "AUTHSTAMP_MASTER_KEY_FILE")]
    pub master_key_file: Option<PathBuf>,
    /// Local development: create <data-dir>/master.key and admin.token when missing.
    #[arg(long, env = "AUTHSTAMP_LOCAL")]
    pub local: bool,
    /// Refuse blobs sealed with key versions below this one (after a rotation
    /// has re-encrypted everything; older keys may then leave the ring).
    #[arg(long, env = "AUTHSTAMP_MIN_KEY_VERSION", default_value_t = 1)]
    pub min_key_version: u32,
}

/// The vault of the given keys (before it is attached to a database, see
/// [`crate::service::keys::attach`]). A ring from a key file is read again when a
/// newer version appears.
pub fn load_vault(store: &StoreArgs, env: &SecretEnv) -> anyhow::Result<Vault> {
    let source = config::load_key_ring(
        env,
        store.master_key_file.as_deref(),
        store.local,
        &store.data_dir,
    )?;
    let vault = Vault::from_ring(&source.ring, store.min_key_version)?;
    Ok(match source.file {
        Some(path) => vault.with_reload(move || config::read_key_file(&path)),
        None => vault,
    })
}

/// The database and its vault, with the active key version set.
async fn open_vault_db(store: &StoreArgs, env: &SecretEnv) -> anyhow::Result<(Db, Vault)> {
    let vault = load_vault(store, env)?;
    let db = open_db(store).await?;
    if let Err(err) = crate::service::keys::attach(&db, &vault).await {
        db.close().await;
        return Err(err);
    }
    Ok((db, vault))
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Address of the app-facing API: admin, connect, callback (port 0 picks a free port).
    #[arg(long, env = "AUTHSTAMP_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Address of the Envoy-facing API (token lookups, raw tokens): reachable by Envoy only.
    #[arg(
        long,
        env = "AUTHSTAMP_FILTER_LISTEN",
        default_value = "127.0.0.1:8081"
    )]
    pub filter_listen: SocketAddr,
    /// File holding the filter credential Envoy sends; or set AUTHSTAMP_FILTER_TOKEN.
    #[arg(long, env = "AUTHSTAMP_FILTER_TOKEN_FILE")]
    pub filter_token_file: Option<PathBuf>,
    /// PEM certificate chain: the filter listener speaks TLS (with --filter-tls-key).
    #[arg(long, env = "AUTHSTAMP_FILTER_TLS_CERT")]
    pub filter_tls_cert: Option<PathBuf>,
    /// PEM private key of --filter-tls-cert.
    #[arg(long, env = "AUTHSTAMP_FILTER_TLS_KEY")]
    pub filter_tls_key: Option<PathBuf>,
    /// PEM CA certificates: the filter listener requires a client certificate
    /// they signed (mTLS), which then stands in for the filter token.
    #[arg(long, env = "AUTHSTAMP_FILTER_CLIENT_CA")]
    pub filter_client_ca: Option<PathBuf>,
    /// Externally visible base URL (redirect URI, connect links); default http://<bound address>.
    #[arg(long, env = "AUTHSTAMP_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// File holding the admin API token; or set AUTHSTAMP_ADMIN_TOKEN.
    #[arg(long, env = "AUTHSTAMP_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Refresh access tokens this long before they expire (at most half their lifetime).
    #[arg(long, env = "AUTHSTAMP_REFRESH_SKEW", default_value = "60s", value_parser = humantime::parse_duration)]
    pub refresh_skew: Duration,
    /// Lifetime assumed for access tokens sent without expires_in (refreshed after it).
    #[arg(long, env = "AUTHSTAMP_MAX_TOKEN_LIFETIME", default_value = "1h", value_parser = humantime::parse_duration)]
    pub max_token_lifetime: Duration,
    /// The background refresher renews tokens expiring within this window (0s: off).
    #[arg(long, env = "AUTHSTAMP_BACKGROUND_WINDOW", default_value = "5m", value_parser = humantime::parse_duration)]
    pub background_window: Duration,
    /// Refresh connections whose tokens are this old even if unused (0s: off).
    #[arg(long, env = "AUTHSTAMP_KEEPALIVE", default_value = "0s", value_parser = humantime::parse_duration)]
    pub keepalive: Duration,
    /// No refresh attempt this long after a transient failure; doubles per failure.
    #[arg(long, env = "AUTHSTAMP_FAILURE_COOLDOWN", default_value = "5s", value_parser = humantime::parse_duration)]
    pub failure_cooldown: Duration,
    /// Upper bound of the doubling cooldown.
    #[arg(long, env = "AUTHSTAMP_MAX_FAILURE_COOLDOWN", default_value = "5m", value_parser = humantime::parse_duration)]
    pub max_failure_cooldown: Duration,
    /// How often the background refresher looks for due connections (0s: not in this replica).
    #[arg(long, env = "AUTHSTAMP_BACKGROUND_INTERVAL", default_value = "15s", value_parser = humantime::parse_duration)]
    pub background_interval: Duration,
    /// Total timeout of a call to a provider's token endpoint.
    #[arg(long, env = "AUTHSTAMP_PROVIDER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub provider_timeout: Duration,
    /// How long a refresh lease lasts; longer than --provider-timeout (default: it plus 5s).
    #[arg(long, env = "AUTHSTAMP_REFRESH_LEASE", value_parser = humantime::parse_duration)]
    pub refresh_lease: Option<Duration>,
    /// How long a query waits for a database connection before answering
    /// 503 storage_unavailable; keep it below the filter's timeout.
    #[arg(long, env = "AUTHSTAMP_DB_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub db_timeout: Duration,
    /// How long a lookup whose token is still valid waits for a refresh of
    /// it before it is served that token (the refresh goes on).
    #[arg(long, env = "AUTHSTAMP_VALID_TOKEN_MAX_WAIT", default_value = "250ms", value_parser = humantime::parse_duration)]
    pub valid_token_max_wait: Duration,
    /// Token lookups per app (COUNT/s|m|h, or off), per replica: a bucket of
    /// COUNT refilled over the period; past it, 429 rate_limited.
    #[arg(long, env = "AUTHSTAMP_RATE_LIMIT_LOOKUPS", default_value = "10000/s")]
    pub rate_limit_lookups: crate::ratelimit::Rate,
    /// Connect sessions per app (COUNT/s|m|h, or off), per replica.
    #[arg(long, env = "AUTHSTAMP_RATE_LIMIT_CONNECT", default_value = "600/m")]
    pub rate_limit_connect: crate::ratelimit::Rate,
    /// Lifetime of a connect link.
    #[arg(long, env = "AUTHSTAMP_CONNECT_SESSION_TTL", default_value = "10m", value_parser = humantime::parse_duration)]
    pub connect_session_ttl: Duration,
    /// A lookup's force_refresh (provider 401) refreshes a connection at most
    /// once per this interval; within it the current token is served (0s: no bound).
    #[arg(long, env = "AUTHSTAMP_FORCED_REFRESH_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub forced_refresh_interval: Duration,
    #[command(flatten)]
    pub http: crate::http::server::HttpLimits,
}

#[derive(Debug, Subcommand)]
pub enum AppCommand {
    /// Create an app; prints {"app_id", "app_key"} (the key is shown only once).
    Create(AppCreateArgs),
    /// An app's keys: rotate (add one), list, revoke.
    Key {
        #[command(subcommand)]
        command: AppKeyCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum AppKeyCommand {
    /// Add a key (shown only in this output); the others stay valid until
    /// revoked, or until --grace from now. At most 10 valid keys per app.
    Rotate(AppKeyRotateArgs),
    /// Print the app's keys: id, created, expiry, valid (never a key).
    List(AppKeyAppArgs),
    /// Revoke one key at once (never the app's last valid one).
    Revoke(AppKeyRevokeArgs),
}

#[derive(Debug, Clone, Args)]
pub struct AppKeyRotateArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The app id (app_…).
    #[arg(long, value_name = "APP_ID")]
    pub app: String,
    /// The app's other keys expire this long from now (at most 90 days).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub grace: Option<Duration>,
}

#[derive(Debug, Clone, Args)]
pub struct AppKeyAppArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The app id (app_…).
    #[arg(long, value_name = "APP_ID")]
    pub app: String,
}

#[derive(Debug, Clone, Args)]
pub struct AppKeyRevokeArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The app id (app_…).
    #[arg(long, value_name = "APP_ID")]
    pub app: String,
    /// The key id, from `authstamp app key list`.
    #[arg(long, value_name = "KEY_ID")]
    pub key: String,
}

#[derive(Debug, Clone, Args)]
pub struct AppCreateArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The app's display name.
    #[arg(long)]
    pub name: String,
    /// URL prefix that connect sessions may return to (repeatable).
    #[arg(long = "allow-return-to", value_name = "URL")]
    pub allow_return_to: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum ProviderCommand {
    /// Create or replace a provider configuration; prints it (without the secret).
    Set(Box<ProviderSetArgs>),
    /// Print a provider configuration (without the secret).
    Get(ProviderGetArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ClientAuthArg {
    Basic,
    Body,
}

impl From<ClientAuthArg> for ClientAuth {
    fn from(arg: ClientAuthArg) -> Self {
        match arg {
            ClientAuthArg::Basic => ClientAuth::Basic,
            ClientAuthArg::Body => ClientAuth::Body,
        }
    }
}

/// At most one source of the client secret (OAuth providers need one).
#[derive(Debug, Clone, Args)]
#[group(required = false, multiple = false)]
pub struct SecretSource {
    /// Read the client secret from this environment variable.
    #[arg(long, value_name = "VAR")]
    pub client_secret_env: Option<String>,
    /// Read the client secret from this file.
    #[arg(long, value_name = "PATH")]
    pub client_secret_file: Option<PathBuf>,
    /// Read the client secret from standard input.
    #[arg(long)]
    pub client_secret_stdin: bool,
}

impl SecretSource {
    fn given(&self) -> bool {
        self.client_secret_env.is_some()
            || self.client_secret_file.is_some()
            || self.client_secret_stdin
    }

    fn read(&self) -> anyhow::Result<ClientSecret> {
        let raw = zeroize::Zeroizing::new(if let Some(var) = &self.client_secret_env {
            std::env::var(var).with_context(|| format!("environment variable {var} is not set"))?
        } else if let Some(path) = &self.client_secret_file {
            std::fs::read_to_string(path)
                .with_context(|| format!("could not read {}", path.display()))?
        } else if self.client_secret_stdin {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("could not read the client secret from stdin")?;
            text
        } else {
            bail!("give one of --client-secret-env, --client-secret-file, --client-secret-stdin");
        });
        // A trailing newline from a file or a pipe is not part of the secret.
        Ok(ClientSecret::new(raw.trim_end_matches(['\r', '\n'])))
    }
}

#[derive(Debug, Clone, Args)]
pub struct ProviderSetArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The app id (app_…).
    #[arg(long, value_name = "APP_ID")]
    pub app: String,
    /// The provider configuration's name (the x-authstamp-provider value).
    #[arg(long, value_name = "NAME")]
    pub provider: String,
    /// Start from this catalog entry (authstamp providers list); every other
    /// flag overrides one of its fields.
    #[arg(long, value_name = "NAME")]
    pub catalog: Option<String>,
    /// How the credential is obtained (default: the catalog entry's, else oauth2).
    #[arg(long, value_enum)]
    pub auth_type: Option<AuthTypeArg>,
    /// The provider's name as the connect page shows it.
    #[arg(long)]
    pub display_name: Option<String>,
    /// The OAuth client id of your app at the provider.
    #[arg(long)]
    pub client_id: Option<String>,
    #[command(flatten)]
    pub secret: SecretSource,
    /// The provider's issuer: authorization responses must carry it as `iss`
    /// (RFC 9207), and its metadata fills the URLs not given (OIDC / RFC 8414).
    #[arg(long, value_name = "URL")]
    pub issuer: Option<String>,
    /// The provider's authorization endpoint.
    #[arg(long, value_name = "URL")]
    pub authorize_url: Option<String>,
    /// The provider's token endpoint.
    #[arg(long, value_name = "URL")]
    pub token_url: Option<String>,
    /// The provider's RFC 7009 revocation endpoint (disconnect revokes there).
    #[arg(long, value_name = "URL")]
    pub revocation_url: Option<String>,
    /// The API base URL requests are sent to (their path is appended).
    #[arg(long, value_name = "URL")]
    pub api_base_url: Option<String>,
    /// A host the credential may be stamped on (repeatable; default: the API base URL's).
    #[arg(long = "api-host", value_name = "HOST")]
    pub api_hosts: Vec<String>,
    /// Scope to request (repeatable; default: the catalog's).
    #[arg(long = "scope", value_name = "S")]
    pub scopes: Vec<String>,
    /// How scopes are joined in the authorization request (default: a space).
    #[arg(long)]
    pub scope_separator: Option<String>,
    /// How the client authenticates at the token endpoint (default: basic).
    #[arg(long, value_enum)]
    pub client_auth: Option<ClientAuthArg>,
    /// Header (or with --header-in query, query parameter) the filter sets.
    #[arg(long)]
    pub header_name: Option<String>,
    /// Its value; {token} is replaced by the credential.
    #[arg(long)]
    pub header_format: Option<String>,
    /// Stamp the credential in a header (default) or a query parameter.
    #[arg(long, value_enum)]
    pub header_in: Option<StampInArg>,
    /// Public URL of the service, to print the redirect URI to register.
    #[arg(long, env = "AUTHSTAMP_PUBLIC_URL")]
    pub public_url: Option<String>,
    #[command(flatten)]
    pub policy: PolicyArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AuthTypeArg {
    Oauth2,
    Oauth2ClientCredentials,
    ApiKey,
    Basic,
}

impl From<AuthTypeArg> for crate::catalog::AuthType {
    fn from(arg: AuthTypeArg) -> Self {
        use crate::catalog::AuthType;
        match arg {
            AuthTypeArg::Oauth2 => AuthType::Oauth2,
            AuthTypeArg::Oauth2ClientCredentials => AuthType::Oauth2ClientCredentials,
            AuthTypeArg::ApiKey => AuthType::ApiKey,
            AuthTypeArg::Basic => AuthType::Basic,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StampInArg {
    Header,
    Query,
}

#[derive(Debug, Clone, Args)]
pub struct ProviderGetArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The app id (app_…).
    #[arg(long, value_name = "APP_ID")]
    pub app: String,
    /// The provider configuration's name (the x-authstamp-provider value).
    #[arg(long, value_name = "NAME")]
    pub provider: String,
    /// Public URL of the service, to print the redirect URI to register.
    #[arg(long, env = "AUTHSTAMP_PUBLIC_URL")]
    pub public_url: Option<String>,
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    logging::init(cli.log_format);
    let env = SecretEnv::from_process();
    match cli.command {
        Command::Serve(args) => serve::run(serve::ServeConfig::try_from(*args)?, env).await,
        Command::Openapi => {
            let json = crate::http::openapi::openapi_json().map_err(|err| {
                anyhow::anyhow!("could not serialise the OpenAPI document: {err}")
            })?;
            let mut out = std::io::stdout().lock();
            out.write_all(json.as_bytes())?;
            out.flush()?;
            Ok(())
        }
        Command::App {
            command: AppCommand::Create(args),
        } => {
            let input = apps::CreateApp {
                name: Some(args.name),
                allowed_return_to: args.allow_return_to,
            };
            print_json(&with_db(&args.store, async |db| apps::create_app(db, input).await).await?)
        }
        Command::Provider {
            command: ProviderCommand::Set(args),
        } => {
            let store = &args.store;
            let public_url = args
                .public_url
                .as_deref()
                .map(PublicUrl::parse)
                .transpose()?;
            let header = match (&args.header_name, &args.header_format, args.header_in) {
                (None, None, None) => None,
                (name, format, location) => {
                    let default = CredentialSpec::default();
                    Some(CredentialSpec {
                        name: name.clone().unwrap_or(default.name),
                        format: format.clone().unwrap_or_else(|| match location {
                            Some(StampInArg::Query) => "{token}".to_owned(),
                            _ => default.format,
                        }),
                        placement: match location {
                            Some(StampInArg::Query) => authstamp_protocol::Placement::Query,
                            _ => authstamp_protocol::Placement::Header,
                        },
                    })
                }
            };
            let input = PutProvider {
                catalog: args.catalog.clone(),
                auth_type: args.auth_type.map(Into::into),
                display_name: args.display_name.clone(),
                client_id: args.client_id.clone(),
                client_secret: if args.secret.given() {
                    Some(args.secret.read()?)
                } else {
                    None
                },
                issuer: args.issuer.clone(),
                authorize_url: args.authorize_url.clone(),
                token_url: args.token_url.clone(),
                revocation_url: args.revocation_url.clone(),
                api_base_url: args.api_base_url.clone(),
                api_hosts: (!args.api_hosts.is_empty()).then(|| args.api_hosts.clone()),
                scopes: (!args.scopes.is_empty()).then(|| args.scopes.clone()),
                scope_separator: args.scope_separator.clone(),
                client_auth: args.client_auth.map(Into::into),
                pkce: None,
                extra_authorize_params: None,
                connection_params: None,
                header,
                refresh: args.policy.clone().into(),
                ..PutProvider::default()
            };
            let view = with_vault_db(store, &env, async |db, vault| {
                let url = public_url.as_ref();
                providers::put_provider(db, vault, url, &args.app, &args.provider, input).await
            })
            .await?;
            print_json(&view)
        }
        Command::Provider {
            command: ProviderCommand::Get(args),
        } => {
            let public_url = args
                .public_url
                .as_deref()
                .map(PublicUrl::parse)
                .transpose()?;
            let view = with_db(&args.store, async |db| {
                providers::get_provider(db, public_url.as_ref(), &args.app, &args.provider).await
            })
            .await?;
            print_json(&view)
        }
        Command::App {
            command: AppCommand::Key { command },
        } => app_key_command(command).await,
        Command::Credentials {
            command: CredentialsCommand::Set(args),
        } => credentials_set(args, &env).await,
        Command::Webhook { command } => webhook_command(command, &env).await,
        Command::Providers { command } => providers_command(command),
        Command::BenchSeed(args) => {
            let seed = crate::service::seed::Seed {
                app_id: args.app,
                provider: args.provider,
                users: args.users,
                start: args.start,
                prefix: args.prefix,
                token_prefix: args.token_prefix,
                expires_in: args.expires_in,
                batch: args.batch,
            };
            let seeded = with_vault_db(&args.store, &env, async |db, vault| {
                crate::service::seed::run(db, vault, &seed).await
            })
            .await?;
            print_json(&seeded)
        }
        Command::Keys {
            command: KeysCommand::Rotate(args),
        } => {
            let store = &args.store;
            let mut source = config::load_key_ring(
                &env,
                store.master_key_file.as_deref(),
                store.local,
                &store.data_dir,
            )?;
            let options = crate::service::keys::RotateOptions {
                settle: args.settle,
                batch: args.batch,
                progress: !args.quiet,
            };
            let rotated = with_db(store, async |db| {
                crate::service::keys::rotate(db, &mut source, store.min_key_version, options).await
            })
            .await?;
            print_json(&rotated)?;
            if rotated.unreadable > 0 || rotated.remaining_below_active > 0 {
                bail!(
                    "{} rows could not be re-encrypted and {} blobs still use older key versions \
                     (see the log); keep the older keys until they are dealt with",
                    rotated.unreadable,
                    rotated.remaining_below_active
                );
            }
            Ok(())
        }
        Command::Keys {
            command: KeysCommand::Status(args),
        } => {
            let store = &args.store;
            let source = config::load_key_ring(
                &env,
                store.master_key_file.as_deref(),
                store.local,
                &store.data_dir,
            )?;
            let status = with_db(store, async |db| {
                crate::service::keys::status(db, &source, store.min_key_version).await
            })
            .await?;
            print_json(&status)
        }
        Command::Keys {
            command: KeysCommand::Generate,
        } => {
            let key = crate::crypto::secrets::MasterKey::generate();
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", key.to_base64().as_str())?;
            out.flush()?;
            Ok(())
        }
        Command::Connection {
            command: ConnectionCommand::Get(args),
        } => {
            let view = with_db(&args.store, async |db| {
                let defaults = RefreshPolicy::default();
                connections::get_connection(db, &defaults, &args.app, &args.provider, &args.user)
                    .await
            })
            .await?;
            print_json(&view)
        }
        Command::Connection {
            command: ConnectionCommand::List(args),
        } => {
            let defaults = RefreshPolicy::default();
            let stored = args.status.map(StatusArg::stored);
            let mut list = with_db(&args.store, async |db| match &args.user {
                Some(user) => connections::list_connections(db, &defaults, &args.app, user).await,
                None => {
                    connections::list_app_connections(db, &defaults, &args.app, stored, args.limit)
                        .await
                }
            })
            .await?;
            if let Some(status) = args.status {
                list.connections.retain(|view| status.matches(view));
            }
            print_json(&list)
        }
        Command::Connection {
            command: ConnectionCommand::Disconnect(args),
        } => {
            let state = open_state(&args.store, &env, None).await?;
            let done = crate::service::lifecycle::disconnect(
                &state,
                &args.app,
                &args.provider,
                &args.user,
            )
            .await;
            webhooks::settle(EVENT_WRITE_LIMIT).await;
            state.db.close().await;
            print_json(&done?)
        }
        Command::Connection {
            command: ConnectionCommand::Reconnect(args),
        } => {
            let public_url = PublicUrl::parse(&args.public_url)?;
            let state = open_state(&args.connection.store, &env, Some(public_url)).await?;
            let session = reconnect(&state, &args).await;
            state.db.close().await;
            print_json(&session?)
        }
    }
}

/// How long a command waits for the webhook events it caused to reach the
/// outbox before it exits.
const EVENT_WRITE_LIMIT: Duration = Duration::from_secs(5);

/// The service state over the database, for commands that run the same
/// functions as the API's app endpoints (their webhook events are written
/// in the background: call [`webhooks::settle`] before exiting).
async fn open_state(
    store: &StoreArgs,
    env: &SecretEnv,
    public_url: Option<PublicUrl>,
) -> anyhow::Result<AppState> {
    let (db, vault) = open_vault_db(store, env).await?;
    let public_url = match public_url {
        Some(url) => url,
        // Not used by these commands: only connect links carry it.
        None => PublicUrl::parse("http://127.0.0.1:8080")?,
    };
    AppState::new(db, vault, StateOptions::new(public_url))
}

async fn reconnect(
    state: &AppState,
    args: &ConnectionReconnectArgs,
) -> anyhow::Result<crate::service::connect::CreatedSession> {
    let app = crate::store::apps::get(&state.db, &args.connection.app)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no app {:?}", args.connection.app))?;
    let input = crate::service::lifecycle::Reconnect {
        return_to: args.return_to.clone(),
        user_display_name: None,
    };
    let key = &args.connection;
    Ok(crate::service::lifecycle::reconnect(state, &app, &key.provider, &key.user, input).await?)
}

async fn app_key_command(command: AppKeyCommand) -> anyhow::Result<()> {
    match command {
        AppKeyCommand::Rotate(args) => {
            let input = apps::RotateKey { grace: args.grace };
            let key = with_db(&args.store, async |db| {
                apps::rotate(db, &args.app, input).await
            });
            print_json(&key.await?)
        }
        AppKeyCommand::List(args) => {
            let keys = with_db(&args.store, async |db| apps::list(db, &args.app).await).await?;
            print_json(&serde_json::json!({ "keys": keys }))
        }
        AppKeyCommand::Revoke(args) => {
            with_db(&args.store, async |db| {
                apps::revoke(db, &args.app, &args.key).await
            })
            .await?;
            print_json(
                &serde_json::json!({ "app_id": args.app, "key_id": args.key, "revoked": true }),
            )
        }
    }
}

async fn credentials_set(args: CredentialsSetArgs, env: &SecretEnv) -> anyhow::Result<()> {
    let api_key = read_secret(
        "the API key",
        args.api_key_env.as_deref(),
        args.api_key_file.as_deref(),
        args.api_key_stdin,
    )?;
    let password = read_secret(
        "the password",
        args.password.password_env.as_deref(),
        args.password.password_file.as_deref(),
        args.password.password_stdin,
    )?;
    let input = PutCredentials {
        api_key: api_key.map(|k| AccessToken::new(k.as_str())),
        username: args.username.clone(),
        password: password.map(|p| AccessToken::new(p.as_str())),
        params: args.params.iter().cloned().collect(),
    };
    let state = open_state(&args.connection.store, env, None).await?;
    let key = &args.connection;
    let view = crate::service::credentials::put_credentials(
        &state,
        &key.app,
        &key.provider,
        &key.user,
        input,
    )
    .await;
    webhooks::settle(EVENT_WRITE_LIMIT).await;
    state.db.close().await;
    print_json(&view?)
}

async fn webhook_command(command: WebhookCommand, env: &SecretEnv) -> anyhow::Result<()> {
    match command {
        WebhookCommand::Set(args) => {
            let secret = read_secret(
                "the webhook secret",
                args.secret.secret_env.as_deref(),
                args.secret.secret_file.as_deref(),
                args.secret.secret_stdin,
            )?;
            let input = webhooks::PutWebhook {
                url: args.url.clone(),
                secret: secret.map(|s| ClientSecret::new(s.as_str())),
            };
            let view = with_vault_db(&args.store, env, async |db, vault| {
                webhooks::put(db, vault, &args.app, input).await
            })
            .await?;
            print_json(&view)
        }
        WebhookCommand::Get(args) => {
            let hook = with_db(&args.store, async |db| webhooks::get(db, &args.app).await)
                .await?
                .ok_or_else(|| anyhow::anyhow!("app {:?} has no webhook", args.app))?;
            print_json(&webhooks::view_of(&hook))
        }
        WebhookCommand::Delete(args) => {
            if !with_db(&args.store, async |db| {
                webhooks::delete(db, &args.app).await
            })
            .await?
            {
                bail!("app {:?} has no webhook", args.app);
            }
            print_json(&serde_json::json!({ "app_id": args.app, "deleted": true }))
        }
        WebhookCommand::Test(args) => {
            let sent = with_vault_db(&args.store, env, async |db, vault| {
                webhooks::send_test(db, vault, &args.app).await
            })
            .await?;
            print_json(&sent)?;
            if !sent.delivered {
                bail!("the webhook receiver did not accept the test event");
            }
            Ok(())
        }
    }
}

fn providers_command(command: ProvidersCommand) -> anyhow::Result<()> {
    let catalog = crate::catalog::embedded().map_err(|errors| {
        anyhow::anyhow!("the provider catalog is invalid: {}", errors.join("; "))
    })?;
    match command {
        ProvidersCommand::List { json: true } => print_json(&catalog.entries()),
        ProvidersCommand::List { json: false } => {
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "{:<12} {:<36} {:<16} connection params",
                "name", "display name", "auth type"
            )?;
            for entry in catalog.entries() {
                let params: Vec<&str> = entry
                    .connection_params
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect();
                writeln!(
                    out,
                    "{:<12} {:<36} {:<16} {}",
                    entry.name,
                    entry.display_name,
                    entry.auth_type.as_str(),
                    params.join(", ")
                )?;
            }
            out.flush()?;
            Ok(())
        }
        ProvidersCommand::Show { name } => match catalog.get(&name) {
            Some(entry) => print_json(entry),
            None => bail!("no provider {name:?} in the catalog (authstamp providers list)"),
        },
    }
}

async fn open_db(store: &StoreArgs) -> anyhow::Result<Db> {
    Db::open(store.database_url.as_deref(), &store.data_dir).await
}

/// Opens the store's database, runs `call` on it and closes it again, also
/// when the call failed: the shape of every one-shot store command.
async fn with_db<T, E: Into<anyhow::Error>>(
    store: &StoreArgs,
    call: impl AsyncFnOnce(&Db) -> Result<T, E>,
) -> anyhow::Result<T> {
    let db = open_db(store).await?;
    let answer = call(&db).await;
    db.close().await;
    answer.map_err(Into::into)
}

/// [`with_db`] for calls that seal or open secrets: the vault attached to
/// the database's key versions first.
async fn with_vault_db<T, E: Into<anyhow::Error>>(
    store: &StoreArgs,
    env: &SecretEnv,
    call: impl AsyncFnOnce(&Db, &Vault) -> Result<T, E>,
) -> anyhow::Result<T> {
    let (db, vault) = open_vault_db(store, env).await?;
    let answer = call(&db, &vault).await;
    db.close().await;
    answer.map_err(Into::into)
}

fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    /// `--help` of every command explains every command and option.
    #[test]
    fn every_command_and_option_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if arg.is_hide_set() || ["help", "version"].contains(&id) {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} --{id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.is_hide_set() || sub.get_name() == "help" {
                    continue;
                }
                let here = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() {
                    missing.push(here.clone());
                }
                walk(sub, &here, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "authstamp", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
    }

    #[test]
    fn new_commands_parse_and_take_no_secret_as_a_flag() {
        for args in [
            &[
                "authstamp",
                "app",
                "key",
                "rotate",
                "--app",
                "a",
                "--grace",
                "24h",
            ][..],
            &["authstamp", "app", "key", "list", "--app", "a"],
            &[
                "authstamp",
                "app",
                "key",
                "revoke",
                "--app",
                "a",
                "--key",
                "k",
            ],
            &[
                "authstamp",
                "credentials",
                "set",
                "--app",
                "a",
                "--provider",
                "p",
                "--user",
                "u",
                "--api-key-stdin",
            ],
            &[
                "authstamp",
                "credentials",
                "set",
                "--app",
                "a",
                "--provider",
                "p",
                "--user",
                "u",
                "--username",
                "n",
                "--password-env",
                "P",
            ],
            &[
                "authstamp",
                "webhook",
                "set",
                "--app",
                "a",
                "--url",
                "https://h.test/x",
            ],
            &["authstamp", "webhook", "test", "--app", "a"],
            &[
                "authstamp",
                "connection",
                "list",
                "--app",
                "a",
                "--status",
                "reauth-required",
            ],
            &[
                "authstamp",
                "connection",
                "disconnect",
                "--app",
                "a",
                "--provider",
                "p",
                "--user",
                "u",
            ],
            &[
                "authstamp",
                "connection",
                "reconnect",
                "--app",
                "a",
                "--provider",
                "p",
                "--user",
                "u",
                "--public-url",
                "https://x.test",
            ],
        ] {
            assert!(Cli::try_parse_from(args).is_ok(), "{args:?}");
        }
        for args in [
            &[
                "authstamp",
                "credentials",
                "set",
                "--app",
                "a",
                "--provider",
                "p",
                "--user",
                "u",
                "--api-key",
                "k",
            ][..],
            &[
                "authstamp",
                "credentials",
                "set",
                "--app",
                "a",
                "--provider",
                "p",
                "--user",
                "u",
                "--username",
                "n",
                "--password",
                "p",
            ],
            &[
                "authstamp",
                "credentials",
                "set",
                "--app",
                "a",
                "--provider",
                "p",
                "--user",
                "u",
                "--username",
                "n",
            ],
            &[
                "authstamp",
                "credentials",
                "set",
                "--app",
                "a",
                "--provider",
                "p",
                "--user",
                "u",
            ],
            &[
                "authstamp",
                "webhook",
                "set",
                "--app",
                "a",
                "--url",
                "https://h.test/x",
                "--secret",
                "s",
            ],
            &["authstamp", "connection", "list", "--app", "a"],
            &[
                "authstamp",
                "provider",
                "set",
                "--app",
                "a",
                "--provider",
                "p",
                "--catalog",
                "slack",
                "--client-id",
                "i",
                "--client-secret",
                "s",
            ],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn serve_defaults() {
        let cli = Cli::try_parse_from(["authstamp", "serve"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(args.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(args.filter_listen.to_string(), "127.0.0.1:8081");
        assert_eq!(args.refresh_skew, Duration::from_secs(60));
        assert_eq!(args.provider_timeout, Duration::from_secs(10));
        assert_eq!(args.connect_session_ttl, Duration::from_secs(600));
        assert_eq!(args.store.data_dir, PathBuf::from("./authstamp-data"));
        assert!(!args.store.local);
    }

    #[test]
    fn provider_set_takes_at_most_one_secret_source() {
        let base = [
            "authstamp",
            "provider",
            "set",
            "--app",
            "app_1",
            "--provider",
            "p",
            "--client-id",
            "id",
            "--authorize-url",
            "https://p/auth",
            "--token-url",
            "https://p/token",
            "--api-base-url",
            "https://p/api",
        ];
        // No secret parses (API key providers have none; OAuth ones are
        // refused by the service function).
        assert!(Cli::try_parse_from(base).is_ok());
        let mut one = base.to_vec();
        one.extend(["--client-secret-stdin"]);
        assert!(Cli::try_parse_from(&one).is_ok());
        one.extend(["--client-secret-env", "X"]);
        assert!(Cli::try_parse_from(&one).is_err());
    }

    #[test]
    fn refresh_policy_flags() {
        let cli = Cli::try_parse_from([
            "authstamp",
            "provider",
            "set",
            "--app",
            "app_1",
            "--provider",
            "p",
            "--client-id",
            "id",
            "--client-secret-stdin",
            "--authorize-url",
            "https://p/auth",
            "--token-url",
            "https://p/token",
            "--api-base-url",
            "https://p/api",
            "--refresh-skew",
            "2m",
            "--keepalive",
            "30days",
        ])
        .unwrap();
        let Command::Provider {
            command: ProviderCommand::Set(args),
        } = cli.command
        else {
            panic!("not provider set")
        };
        let policy = PolicyOverrides::from(args.policy.clone());
        assert_eq!(policy.skew, Some(Duration::from_secs(120)));
        assert_eq!(policy.keepalive, Some(Duration::from_secs(30 * 86400)));
        assert_eq!(policy.max_token_lifetime, None);

        let cli = Cli::try_parse_from(["authstamp", "serve"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(args.max_token_lifetime, Duration::from_secs(3600));
        assert_eq!(args.background_window, Duration::from_secs(300));
        assert_eq!(args.keepalive, Duration::ZERO);
        assert_eq!(args.failure_cooldown, Duration::from_secs(5));
        assert_eq!(args.background_interval, Duration::from_secs(15));
        assert_eq!(args.refresh_lease, None);
        assert!(Cli::try_parse_from([
            "authstamp",
            "connection",
            "get",
            "--app",
            "a",
            "--provider",
            "p",
            "--user",
            "u"
        ])
        .is_ok());
        assert!(Cli::try_parse_from(["authstamp", "connection", "list", "--app", "a"]).is_err());
    }

    #[test]
    fn provider_set_from_the_catalog_in_one_command() {
        let cli = Cli::try_parse_from([
            "authstamp",
            "provider",
            "set",
            "--app",
            "app_1",
            "--provider",
            "slack",
            "--catalog",
            "slack",
            "--client-id",
            "123.456",
            "--client-secret-env",
            "SLACK_CLIENT_SECRET",
        ])
        .unwrap();
        let Command::Provider {
            command: ProviderCommand::Set(args),
        } = cli.command
        else {
            panic!("not provider set")
        };
        assert_eq!(args.catalog.as_deref(), Some("slack"));
        assert_eq!(args.authorize_url, None);
    }

    #[test]
    fn providers_list_parses() {
        let cli = Cli::try_parse_from(["authstamp", "providers", "list", "--json"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Providers {
                command: ProvidersCommand::List { json: true }
            }
        ));
        assert!(Cli::try_parse_from(["authstamp", "providers", "show", "slack"]).is_ok());
    }

    #[test]
    fn secrets_are_not_flags() {
        assert!(Cli::try_parse_from(["authstamp", "serve", "--master-key", "x"]).is_err());
        assert!(Cli::try_parse_from(["authstamp", "serve", "--admin-token", "x"]).is_err());
    }
}
