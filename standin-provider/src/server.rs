//! Process plumbing: logging, binding, the "listening" line, graceful shutdown.

use std::io::{IsTerminal as _, Write as _};
use std::net::SocketAddr;
use std::time::Instant;

use anyhow::Context as _;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

use crate::config::Cli;
use crate::{app, AppState};

/// Logs to stderr (colours only on a terminal); `RUST_LOG` filters (default `info`).
pub fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .init();
}

/// Binds, prints `authstamp-standin listening on http://IP:PORT` on stdout, and serves
/// until SIGINT or SIGTERM.
pub async fn serve(cli: Cli) -> anyhow::Result<()> {
    let listener = TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    let addr = listener.local_addr().context("no local address")?;
    let config = cli.into_config(addr);
    tracing::info!(
        %addr,
        client_id = %config.client_id,
        issuer = %config.issuer,
        access_token_ttl = ?config.access_token_ttl,
        rotate_refresh_tokens = config.rotate_refresh_tokens,
        send_iss = config.send_iss,
        "authstamp-standin started"
    );
    let shutdown = shutdown_signal()?;
    announce(addr)?;
    axum::serve(listener, app(AppState::new(config)))
        .with_graceful_shutdown(shutdown)
        .await
        .context("server failed")?;
    tracing::info!("authstamp-standin stopped");
    Ok(())
}

fn announce(addr: SocketAddr) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "authstamp-standin listening on http://{addr}")?;
    out.flush()?;
    Ok(())
}

/// Installs the SIGINT and SIGTERM handlers at once, before the ready line is
/// printed, so a signal sent right after that line is never missed.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("shutting down");
    })
}

/// Logs method, path (never the query: it may carry codes), status and duration.
pub async fn log_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let start = Instant::now();
    let response = next.run(request).await;
    tracing::info!(
        %method,
        %path,
        status = response.status().as_u16(),
        elapsed_ms = start.elapsed().as_millis() as u64,
        "request"
    );
    response
}
