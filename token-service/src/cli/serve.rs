//! `authstamp serve`: resolve secrets, open the database, bind the app-facing
//! and the filter listener, announce both addresses on stdout, serve until
//! SIGINT/SIGTERM.

use crate::cli::{ServeArgs, StoreArgs};
use crate::config::{self, PublicUrl, SecretEnv};
use crate::db::Db;
use crate::http::filter_tls::{FilterTls, FilterTlsFiles};
use crate::http::server::HttpLimits;
use crate::http::{app, filter_app};
use crate::policy::RefreshPolicy;
use crate::ratelimit::RateLimits;
use crate::service::state::{AppState, BackgroundOptions, StateOptions};
use anyhow::Context as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything `serve` runs with, as plain values: from the command line
/// (`TryFrom<ServeArgs>`) or built by code.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub store: StoreArgs,
    pub listen: SocketAddr,
    pub filter_listen: SocketAddr,
    pub admin_token_file: Option<PathBuf>,
    pub filter_token_file: Option<PathBuf>,
    pub filter_tls: FilterTlsFiles,
    /// `None`: `http://` and the app listener's address.
    pub public_url: Option<PublicUrl>,
    pub db_timeout: Duration,
    pub http: HttpLimits,
    pub policy: RefreshPolicy,
    pub max_failure_cooldown: Duration,
    pub provider_timeout: Duration,
    pub refresh_lease: Option<Duration>,
    pub valid_token_max_wait: Duration,
    pub background_interval: Duration,
    pub connect_session_ttl: Duration,
    pub rate_limits: RateLimits,
}

impl TryFrom<ServeArgs> for ServeConfig {
    type Error = anyhow::Error;

    fn try_from(args: ServeArgs) -> anyhow::Result<Self> {
        Ok(Self {
            public_url: args
                .public_url
                .as_deref()
                .map(PublicUrl::parse)
                .transpose()?,
            store: args.store,
            listen: args.listen,
            filter_listen: args.filter_listen,
            admin_token_file: args.admin_token_file,
            filter_token_file: args.filter_token_file,
            filter_tls: FilterTlsFiles {
                cert: args.filter_tls_cert,
                key: args.filter_tls_key,
                client_ca: args.filter_client_ca,
            },
            db_timeout: args.db_timeout,
            http: args.http,
            policy: RefreshPolicy {
                skew: args.refresh_skew,
                max_token_lifetime: args.max_token_lifetime,
                background_window: args.background_window,
                keepalive: args.keepalive,
                failure_cooldown: args.failure_cooldown,
                forced_refresh_interval: args.forced_refresh_interval,
            },
            max_failure_cooldown: args.max_failure_cooldown,
            provider_timeout: args.provider_timeout,
            refresh_lease: args.refresh_lease,
            valid_token_max_wait: args.valid_token_max_wait,
            background_interval: args.background_interval,
            connect_session_ttl: args.connect_session_ttl,
            rate_limits: RateLimits {
                lookups: args.rate_limit_lookups,
                connect_sessions: args.rate_limit_connect,
            },
        })
    }
}

pub async fn run(args: ServeConfig, env: SecretEnv) -> anyhow::Result<()> {
    if args.filter_listen == args.listen && args.listen.port() != 0 {
        anyhow::bail!("--filter-listen must differ from --listen: the lookup answers raw tokens and has its own listener");
    }
    let store = &args.store;
    args.http.validate()?;
    // Secrets first: without a key nothing else happens.
    let vault = crate::cli::load_vault(store, &env)?;
    let admin_token = config::load_admin_token(
        &env,
        args.admin_token_file.as_deref(),
        store.local,
        &store.data_dir,
    )?;
    if admin_token.is_none() {
        tracing::warn!("no admin token configured (AUTHSTAMP_ADMIN_TOKEN or --admin-token-file): the admin API answers 401");
    }
    let filter_token = config::load_filter_token(
        &env,
        args.filter_token_file.as_deref(),
        store.local,
        &store.data_dir,
    )?;
    let filter_tls = FilterTls::load(&args.filter_tls)?;
    let mutual_tls = filter_tls.as_ref().is_some_and(|tls| tls.mutual);
    if filter_token.is_none() && !mutual_tls {
        tracing::warn!("no filter token configured (AUTHSTAMP_FILTER_TOKEN or --filter-token-file) and no --filter-client-ca: every token lookup answers 401");
    }
    let db = Db::open_with(
        store.database_url.as_deref(),
        &store.data_dir,
        args.db_timeout,
    )
    .await?;
    // A key that does not open this vault's key checks means no start.
    let key_version = crate::service::keys::attach(&db, &vault).await?;
    // Tokens a previous process journalled while the database was away.
    let (journal, journalled) = crate::service::journal::Journal::open(&store.data_dir)?;

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("could not listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let filter_listener = tokio::net::TcpListener::bind(args.filter_listen)
        .await
        .with_context(|| {
            format!(
                "could not listen on {} (--filter-listen)",
                args.filter_listen
            )
        })?;
    let filter_addr = filter_listener.local_addr()?;
    let public_url = match args.public_url {
        Some(url) => url,
        None => PublicUrl::parse(&format!("http://{addr}"))?,
    };
    let state = AppState::new(
        db.clone(),
        vault,
        StateOptions {
            public_url: public_url.clone(),
            admin_token,
            filter_token,
            policy: args.policy,
            max_failure_cooldown: args.max_failure_cooldown,
            provider_timeout: args.provider_timeout,
            refresh_lease: args.refresh_lease,
            valid_token_max_wait: args.valid_token_max_wait,
            background: BackgroundOptions {
                interval: args.background_interval,
                ..BackgroundOptions::default()
            },
            connect_session_ttl: args.connect_session_ttl,
            rate_limits: args.rate_limits,
            journal: Some(journal),
        },
    )?;
    crate::service::refresh::replay_journal(&state, journalled).await;

    let shutdown = shutdown_signal()?;
    {
        // The one line on stdout; tests and scripts read both ports from it.
        let mut out = std::io::stdout().lock();
        let filter_scheme = if filter_tls.is_some() {
            "https"
        } else {
            "http"
        };
        writeln!(
            out,
            "authstamp listening on http://{addr} (app API) and {filter_scheme}://{filter_addr} (filter API)"
        )?;
        out.flush()?;
    }
    tracing::info!(%addr, %filter_addr, redirect_uri = %public_url.redirect_uri(), replica = state.lease_owners.replica(), backend = ?db.backend(), key_version, "listening");
    // The background refresher stops with the server.
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let mut stop_keys = stop_rx.clone();
    let mut stop_webhooks = stop_rx.clone();
    let background = tokio::spawn(crate::service::background::run(state.clone(), async move {
        let _ = stop_rx.wait_for(|stop| *stop).await;
    }));
    // Webhook events waiting in the outbox, from this or any replica.
    let webhooks = tokio::spawn(crate::service::webhooks::run_outbox(
        state.clone(),
        async move {
            let _ = stop_webhooks.wait_for(|stop| *stop).await;
        },
    ));
    // Key versions activated by `authstamp keys rotate` while we run.
    let key_poller = tokio::spawn(crate::service::keys::run_poller(
        state.clone(),
        async move {
            let _ = stop_keys.wait_for(|stop| *stop).await;
        },
    ));
    // One signal stops both listeners.
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let stopped = move |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let signal_task = tokio::spawn(async move {
        shutdown.await;
        let _ = shutdown_tx.send(true);
    });
    // Both listeners with the same header, idle and request timeouts and
    // connection limit (the TLS one has its own handshake timeout).
    let app_server = crate::http::server::serve(
        listener,
        app(state.clone()),
        args.http,
        stopped(shutdown_rx.clone()),
    );
    let filter_limits = args.http;
    let filter_router = filter_app(state.clone());
    let filter_server = async move {
        match filter_tls {
            Some(tls) => {
                crate::http::filter_tls::serve(
                    filter_listener,
                    tls,
                    filter_router,
                    stopped(shutdown_rx),
                )
                .await
            }
            None => {
                crate::http::server::serve(
                    filter_listener,
                    filter_router,
                    filter_limits,
                    stopped(shutdown_rx),
                )
                .await
            }
        }
    };
    let (app_served, filter_served) = tokio::join!(app_server, filter_server);
    signal_task.abort();
    let served = app_served
        .context("server error (app API)")
        .and(filter_served.context("server error (filter API)"));
    let _ = stop_tx.send(true);
    let _ = background.await;
    let _ = webhooks.await;
    let _ = key_poller.await;
    // Refreshes whose callers went away still finish and store their tokens.
    state.drain_refreshes(state.refresh_lease).await;
    served?;
    db.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Installs the SIGINT and SIGTERM handlers at once, before the ready line is
/// printed, so a signal sent right after that line is never missed.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).context("could not handle SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("could not handle SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("shutting down");
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser as _;

    fn serve_args(extra: &[&str]) -> ServeConfig {
        let mut argv = vec!["authstamp", "serve", "--listen", "127.0.0.1:0"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Serve(args) => ServeConfig::try_from(*args).unwrap(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn the_command_line_becomes_the_plain_config() {
        let config = serve_args(&[
            "--refresh-skew",
            "90s",
            "--rate-limit-lookups",
            "5/s",
            "--filter-tls-cert",
            "/c.pem",
            "--public-url",
            "https://auth.example.com/base",
        ]);
        assert_eq!(config.policy.skew, Duration::from_secs(90));
        assert_eq!(config.policy.max_token_lifetime, Duration::from_secs(3600));
        assert_eq!(config.rate_limits.lookups.to_string(), "5/s");
        assert_eq!(config.filter_tls.cert, Some(PathBuf::from("/c.pem")));
        assert!(config.public_url.as_ref().is_some_and(PublicUrl::is_https));
        let bad = Cli::try_parse_from(["authstamp", "serve", "--public-url", "ftp://x"]).unwrap();
        let Command::Serve(args) = bad.command else {
            unreachable!()
        };
        assert!(ServeConfig::try_from(*args).is_err());
    }

    #[tokio::test]
    async fn serve_without_a_master_key_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let args = serve_args(&["--data-dir", data.to_str().unwrap()]);
        let err = run(args, SecretEnv::default()).await.unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("AUTHSTAMP_MASTER_KEY"), "{text}");
        assert!(text.contains("--master-key-file"), "{text}");
        // Nothing was created: no database, no key.
        assert!(!data.exists());
    }

    #[tokio::test]
    async fn a_refresh_lease_not_longer_than_the_provider_timeout_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let args = serve_args(&[
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--provider-timeout",
            "10s",
            "--refresh-lease",
            "10s",
        ]);
        let env = SecretEnv {
            master_key: Some(
                crate::crypto::secrets::MasterKey::generate()
                    .to_base64()
                    .to_string(),
            ),
            ..SecretEnv::default()
        };
        let err = run(args, env).await.unwrap_err();
        assert!(format!("{err:#}").contains("refresh lease"), "{err:#}");
    }

    #[tokio::test]
    async fn the_filter_listener_cannot_be_the_app_listener() {
        let dir = tempfile::tempdir().unwrap();
        let mut args = serve_args(&["--data-dir", dir.path().to_str().unwrap()]);
        args.listen = "127.0.0.1:18080".parse().unwrap();
        args.filter_listen = args.listen;
        let err = run(args, SecretEnv::default()).await.unwrap_err();
        assert!(format!("{err:#}").contains("--filter-listen"), "{err:#}");
    }

    #[tokio::test]
    async fn serve_with_a_missing_key_file_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.key");
        let args = serve_args(&[
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--master-key-file",
            missing.to_str().unwrap(),
        ]);
        assert!(run(args, SecretEnv::default()).await.is_err());
    }
}
