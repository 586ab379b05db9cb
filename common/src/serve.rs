//! The public listeners' server loop: HTTP/1.1 and HTTP/2, optionally over
//! TLS (rustls), with a deadline for request headers and TLS handshakes so
//! slow clients cannot hold connections open (slowloris), and a graceful
//! drain on shutdown.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::config::HttpSettings;

const HSTS: HeaderValue = HeaderValue::from_static("max-age=31536000");

/// Serves until `shutdown` fires, then stops accepting and lets open
/// connections finish their requests.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: &HttpSettings,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let tls = acceptor(settings)?;
    let deadline = Duration::from_millis(settings.header_read_timeout_ms);
    let mut builder = Builder::new(TokioExecutor::new());
    // Request heads over 32 KiB (a 16 KiB token fits) are refused with 431.
    builder.http1().timer(TokioTimer::new()).header_read_timeout(deadline).max_buf_size(32 * 1024);
    builder.http2().timer(TokioTimer::new()).max_header_list_size(32 * 1024);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, typically: wait, do not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let secure = tls.is_some();
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            let answer = router.clone().oneshot(request.map(axum::body::Body::new));
            async move {
                let mut response = answer.await?;
                if secure {
                    response.headers_mut().insert(header::STRICT_TRANSPORT_SECURITY, HSTS);
                }
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        let (builder, watcher, tls) = (builder.clone(), graceful.watcher(), tls.clone());
        tokio::spawn(async move {
            let served = match tls {
                None => {
                    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    watcher.watch(connection.into_owned()).await
                }
                Some(tls) => {
                    let Ok(Ok(stream)) = tokio::time::timeout(deadline, tls.accept(stream)).await else {
                        return;
                    };
                    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    watcher.watch(connection.into_owned()).await
                }
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// rustls's process-wide crypto provider (ring), which TLS connections to
/// Redis and Postgres (`rediss://`, `sslmode=require`) look up. Idempotent.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    });
}

/// The TLS acceptor for `http.tls_certificate` and `http.tls_private_key`.
fn acceptor(settings: &HttpSettings) -> anyhow::Result<Option<TlsAcceptor>> {
    let (Some(certificate), Some(key)) = (&settings.tls_certificate, &settings.tls_private_key) else {
        return Ok(None);
    };
    let chain = CertificateDer::pem_file_iter(certificate)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading http.tls_certificate {}", certificate.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading http.tls_private_key {}", key.display()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("http.tls_certificate does not match http.tls_private_key")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}
