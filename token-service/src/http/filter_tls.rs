//! TLS, and optionally mTLS, on the filter listener (`--filter-tls-cert`,
//! `--filter-tls-key`, `--filter-client-ca`): rustls with the ring provider,
//! HTTP/1.1 by hyper over each accepted TLS stream.
//!
//! With a client CA every connection must present a certificate that CA
//! signed; its requests carry [`VerifiedClientCert`], which is the filter
//! credential's alternative (see [`crate::http::auth::FilterAuth`]).

use crate::http::auth::VerifiedClientCert;
use anyhow::{bail, Context as _};
use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// A TLS handshake that takes longer is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the filter listener's TLS material is.
#[derive(Clone, Debug, Default)]
pub struct FilterTlsFiles {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
}

/// The filter listener's TLS: the acceptor and whether clients are verified.
#[derive(Clone)]
pub struct FilterTls {
    acceptor: TlsAcceptor,
    pub mutual: bool,
}

impl std::fmt::Debug for FilterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilterTls")
            .field("mutual", &self.mutual)
            .finish_non_exhaustive()
    }
}

impl FilterTls {
    /// `None`: plaintext. Certificate and key go together; a client CA
    /// needs them.
    pub fn load(files: &FilterTlsFiles) -> anyhow::Result<Option<FilterTls>> {
        let (cert, key) = match (&files.cert, &files.key, &files.client_ca) {
            (None, None, None) => return Ok(None),
            (Some(cert), Some(key), _) => (cert, key),
            (_, _, Some(_)) if files.cert.is_none() || files.key.is_none() => {
                bail!("--filter-client-ca needs --filter-tls-cert and --filter-tls-key")
            }
            _ => bail!("--filter-tls-cert and --filter-tls-key go together"),
        };
        let chain = read_certificates(cert, "--filter-tls-cert")?;
        let key = PrivateKeyDer::from_pem_file(key).with_context(|| {
            format!("--filter-tls-key: no PEM private key in {}", key.display())
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?;
        let builder = match &files.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for certificate in read_certificates(ca, "--filter-client-ca")? {
                    roots.add(certificate).with_context(|| {
                        format!(
                            "--filter-client-ca: a certificate in {} is invalid",
                            ca.display()
                        )
                    })?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .context("--filter-client-ca: cannot verify clients with these certificates")?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .context("--filter-tls-cert/--filter-tls-key: the key does not fit the certificate")?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Some(FilterTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            mutual: files.client_ca.is_some(),
        }))
    }
}

fn read_certificates(path: &Path, flag: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certificates = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("{flag}: cannot read {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{flag}: {} is not PEM certificates", path.display()))?;
    if certificates.is_empty() {
        bail!("{flag}: no certificate in {}", path.display());
    }
    Ok(certificates)
}

/// Serves `router` over TLS on `listener` until `shutdown` resolves; open
/// connections finish their request in flight.
pub async fn serve(
    listener: TcpListener,
    tls: FilterTls,
    router: Router,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    // Requests of a verified client carry the proof.
    let router = if tls.mutual {
        router.layer(axum::Extension(VerifiedClientCert))
    } else {
        router
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!(error = %err, "filter listener: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = tls.acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        let mut stop = stop_rx.clone();
        connections.spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                .await
            {
                Ok(Ok(stream)) => stream,
                Ok(Err(err)) => {
                    tracing::info!(%peer, error = %err, "filter listener: TLS handshake refused");
                    return;
                }
                Err(_) => {
                    tracing::info!(%peer, "filter listener: TLS handshake timed out");
                    return;
                }
            };
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let stopping = async move {
                let _ = stop.wait_for(|stop| *stop).await;
            };
            tokio::select! {
                _ = connection.as_mut() => {}
                () = stopping => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
        // Reap finished connections as we go.
        while connections.try_join_next().is_some() {}
    }
    let _ = stop_tx.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(files: FilterTlsFiles) -> String {
        match FilterTls::load(&files) {
            Ok(_) => panic!("accepted {files:?}"),
            Err(err) => format!("{err:#}"),
        }
    }

    #[test]
    fn tls_settings_are_checked_at_start() {
        assert!(FilterTls::load(&FilterTlsFiles::default())
            .unwrap()
            .is_none());
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "not a certificate").unwrap();
        let some = |p: &Path| Some(p.to_path_buf());
        let half = error_of(FilterTlsFiles {
            cert: some(&not_pem),
            ..FilterTlsFiles::default()
        });
        assert!(half.contains("go together"), "{half}");
        let ca_alone = error_of(FilterTlsFiles {
            client_ca: some(&not_pem),
            ..FilterTlsFiles::default()
        });
        assert!(ca_alone.contains("--filter-client-ca needs"), "{ca_alone}");
        let garbage = error_of(FilterTlsFiles {
            cert: some(&not_pem),
            key: some(&not_pem),
            client_ca: None,
        });
        assert!(garbage.contains("--filter-tls-cert"), "{garbage}");
        let missing = error_of(FilterTlsFiles {
            cert: some(&dir.path().join("missing.pem")),
            key: some(&not_pem),
            client_ca: None,
        });
        assert!(missing.contains("missing.pem"), "{missing}");
    }
}
