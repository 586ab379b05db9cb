//! TLS shared by every client the process opens.

/// rustls's process-wide crypto provider (ring), which TLS connections to
/// Redis and Postgres (`rediss://`, `sslmode=require`) look up. Idempotent.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    });
}
