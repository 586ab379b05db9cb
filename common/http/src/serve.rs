//! The public listeners' server loop: HTTP/1.1 and HTTP/2, optionally over
//! TLS (rustls), with deadlines so slow clients cannot hold connections
//! open (slowloris), and a graceful drain on shutdown.
//!
//! A connection must deliver its first request (TLS handshake, protocol
//! preface and headers) within `http.header_read_timeout_ms` of being
//! accepted: hyper's own header timeout starts only once the protocol is
//! known, and a client that sends nothing, or half an HTTP/2 preface, would
//! otherwise be kept forever.

mod stall;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use tally_platform::config::HttpSettings;

const HSTS: HeaderValue = HeaderValue::from_static("max-age=31536000");

/// Serves until `shutdown` fires, then stops accepting and lets open
/// connections finish their requests.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: &HttpSettings,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    serve_with_stall_limit(listener, router, settings, None, shutdown).await
}

/// As [`serve`], and a connection whose writes make no progress for
/// `stall_limit` is closed: for long-lived responses, whose client may stop
/// reading while the server keeps producing.
pub async fn serve_with_stall_limit(
    listener: TcpListener,
    router: Router,
    settings: &HttpSettings,
    stall_limit: Option<Duration>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    tally_platform::telemetry::zero_counters(
        "tally_http_connections_dropped_total",
        "reason",
        &["never_started", "stalled_write"],
    );
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
        let started = Arc::new(AtomicBool::new(false));
        let first_request = started.clone();
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            first_request.store(true, Ordering::Relaxed);
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
        let start_by = Instant::now() + deadline;
        tokio::spawn(async move {
            let served = async {
                let stream = match tls {
                    None => Either::Left(stream),
                    Some(tls) => Either::Right(tls.accept(stream).await?),
                };
                let io = TokioIo::new(stall::StallLimit::new(stream, stall_limit));
                let connection = builder.serve_connection_with_upgrades(io, service);
                watcher.watch(connection.into_owned()).await.map_err(std::io::Error::other)
            };
            let never_started = async {
                tokio::time::sleep_until(start_by).await;
                if started.load(Ordering::Relaxed) {
                    std::future::pending::<()>().await;
                }
            };
            // Dropping the connection's future closes its socket.
            tokio::select! {
                served = served => if let Err(e) = served {
                    tracing::debug!(error = %e, "connection ended with an error");
                },
                () = never_started => {
                    metrics::counter!("tally_http_connections_dropped_total", "reason" => "never_started")
                        .increment(1);
                }
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
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
