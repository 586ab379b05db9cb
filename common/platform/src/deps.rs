//! The connections every role shares, made once per process.

use std::sync::Arc;

use async_nats::jetstream;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::readiness::Readiness;
use crate::redis::{Keys, Redis};
use crate::retry::until_ok;

#[derive(Clone)]
pub struct Deps {
    pub settings: Arc<Settings>,
    pub db: PgPool,
    pub redis: Redis,
    pub nats: async_nats::Client,
    pub jetstream: jetstream::Context,
    pub keys: Keys,
}

impl Deps {
    /// Reaches every dependency, retrying with backoff, and registers each
    /// with `readiness` as soon as it answers. `None` if shutdown came first.
    pub async fn connect(
        settings: Arc<Settings>,
        readiness: &Readiness,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<Deps>> {
        let db = crate::postgres::pool(&settings.database)?;
        readiness.set_postgres(db.clone());
        let nats = crate::nats::connect(&settings.nats).await?;
        readiness.set_nats(nats.clone());

        let reachable = until_ok("postgres", shutdown, || sqlx::query("SELECT 1").execute(&db)).await;
        if reachable.is_none() {
            return Ok(None);
        }
        if settings.database.migrate_on_start
            && until_ok("postgres migrations", shutdown, || crate::postgres::migrate(&db)).await.is_none()
        {
            return Ok(None);
        }
        let Some(redis) = until_ok("redis", shutdown, || crate::redis::connect(&settings.redis)).await else {
            return Ok(None);
        };
        readiness.set_redis(redis.clone());
        let js = crate::nats::jetstream(nats.clone(), &settings.nats);
        // Looked up, never created: serving identities may not change
        // streams. Waited for, since `tally migrate` may still be running,
        // by a process that needs NATS; one that does not (an API or a
        // broadcaster alone) starts without it and serves what it can.
        if readiness.needs_nats()
            && until_ok("nats streams", shutdown, || crate::streams::require(&js, &settings.nats))
                .await
                .is_none()
        {
            return Ok(None);
        }
        let keys = Keys::new(&settings.redis.key_prefix);
        Ok(Some(Deps { settings, db, redis, nats, jetstream: js, keys }))
    }
}
