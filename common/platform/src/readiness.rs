//! Whether this process is ready: every dependency its roles need answers
//! now, and its roles have started and are not draining. Only the workers
//! need NATS to be ready: an API whose NATS is down still serves every
//! read (its ballots get 503 on their own), and a broadcaster never uses
//! it, so a NATS outage must not take them out of their load balancers.
//!
//! Probes run on each request, so readiness tells the truth after a
//! dependency is lost, not only at start-up.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sqlx::PgPool;

use crate::redis::Redis;

const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// What `/readyz` probes. Each handle is filled in once its dependency is
/// first reached; until then it reports `connecting`.
#[derive(Clone)]
pub struct Readiness {
    inner: Arc<Handles>,
}

/// Every dependency needed: what admin commands and tests that run every
/// role expect.
impl Default for Readiness {
    fn default() -> Self {
        Readiness::needing_nats(true)
    }
}

#[derive(Default)]
struct Handles {
    /// NATS counts towards readiness (and start-up waits for its streams).
    needs_nats: bool,
    postgres: OnceLock<PgPool>,
    redis: OnceLock<Redis>,
    nats: OnceLock<async_nats::Client>,
    roles_started: AtomicBool,
    draining: AtomicBool,
}

impl Readiness {
    /// A process whose roles need NATS (`true` when it runs workers).
    pub fn needing_nats(needs_nats: bool) -> Readiness {
        Readiness { inner: Arc::new(Handles { needs_nats, ..Handles::default() }) }
    }

    pub fn needs_nats(&self) -> bool {
        self.inner.needs_nats
    }

    pub fn set_postgres(&self, pool: PgPool) {
        let _ = self.inner.postgres.set(pool);
    }
    pub fn set_redis(&self, redis: Redis) {
        let _ = self.inner.redis.set(redis);
    }
    pub fn set_nats(&self, client: async_nats::Client) {
        let _ = self.inner.nats.set(client);
    }
    pub fn roles_started(&self) {
        self.inner.roles_started.store(true, Ordering::SeqCst);
    }
    /// Shutdown has begun: report not-ready so load balancers stop sending.
    pub fn draining(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
    }

    pub async fn check(&self) -> (bool, serde_json::Value) {
        let (postgres, redis, nats) = tokio::join!(self.postgres(), self.redis(), self.nats());
        let roles = if self.inner.draining.load(Ordering::SeqCst) {
            "draining"
        } else if self.inner.roles_started.load(Ordering::SeqCst) {
            "ok"
        } else {
            "starting"
        };
        for (name, state) in [("postgres", postgres), ("redis", redis), ("nats", nats)] {
            metrics::gauge!("tally_dependency_up", "dependency" => name).set(if state == "ok" {
                1.0
            } else {
                0.0
            });
        }
        let nats_ok = nats == "ok" || !self.inner.needs_nats;
        let ready = nats_ok && [postgres, redis, roles].iter().all(|s| *s == "ok");
        let body = serde_json::json!({
            "status": if ready { "ready" } else { "not_ready" },
            "checks": { "postgres": postgres, "redis": redis, "nats": nats, "roles": roles },
        });
        (ready, body)
    }

    async fn postgres(&self) -> &'static str {
        let Some(pool) = self.inner.postgres.get() else {
            return "connecting";
        };
        let probe = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(pool);
        match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
            Ok(Ok(_)) => "ok",
            _ => "unreachable",
        }
    }

    async fn redis(&self) -> &'static str {
        let Some(redis) = self.inner.redis.get() else {
            return "connecting";
        };
        let mut conn = redis.clone();
        let ping = redis::cmd("PING");
        let probe = ping.query_async::<String>(&mut conn);
        match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
            Ok(Ok(_)) => "ok",
            _ => "unreachable",
        }
    }

    async fn nats(&self) -> &'static str {
        let Some(client) = self.inner.nats.get() else {
            return "connecting";
        };
        if client.connection_state() != async_nats::connection::State::Connected {
            return "unreachable";
        }
        match tokio::time::timeout(PROBE_TIMEOUT, client.flush()).await {
            Ok(Ok(())) => "ok",
            _ => "unreachable",
        }
    }
}
