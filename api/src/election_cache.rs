//! Elections held in memory so casting a ballot needs no database read.
//!
//! The status is computed from the cached times at each request, so an
//! election opens and closes on time without any refresh. Admin changes
//! are announced on Redis and reloaded here; a periodic full reload covers
//! any announcement missed while Redis was away.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use sqlx::PgPool;
use tally_domain::election::Election;
use tally_platform::elections;
use tally_platform::redis::Master;
use tally_platform::retry::Backoff;
use tokio_util::sync::CancellationToken;

const FULL_RELOAD: Duration = Duration::from_secs(30);
/// How long an id Postgres did not know is answered from memory. Short:
/// an election created on another replica is announced, which clears it,
/// and elections are made well before they open anyway.
const MISSING_FOR: Duration = Duration::from_secs(5);
/// Unknown ids remembered at most; past it the expired ones are swept, and
/// if none has expired, all are forgotten (an enumeration must not grow
/// memory without end).
const MISSING_AT_MOST: usize = 10_000;

#[derive(Clone)]
pub struct ElectionCache {
    elections: Arc<RwLock<HashMap<i64, Arc<Election>>>>,
    /// Ids Postgres answered "no such election" for, until when.
    missing: Arc<Mutex<HashMap<i64, Instant>>>,
    db: PgPool,
}

/// What memory knows of an election id.
pub enum Cached {
    Found(Arc<Election>),
    /// Postgres said moments ago that there is none.
    Missing,
    /// Not in memory: only Postgres can tell.
    Unknown,
}

impl ElectionCache {
    pub fn new(db: PgPool) -> Self {
        ElectionCache { elections: Arc::default(), missing: Arc::default(), db }
    }

    /// The election as memory knows it, without a database read.
    pub fn cached(&self, id: i64) -> Cached {
        if let Some(found) = self.read().get(&id) {
            return Cached::Found(found.clone());
        }
        let missing = self.missing.lock().unwrap_or_else(|e| e.into_inner());
        match missing.get(&id) {
            Some(until) if *until > Instant::now() => Cached::Missing,
            _ => Cached::Unknown,
        }
    }

    /// Loads one election from Postgres (created on another replica a
    /// moment ago, or changed by an admin), remembering briefly if there
    /// is none.
    pub async fn reload(&self, id: i64) -> anyhow::Result<Option<Arc<Election>>> {
        let loaded = elections::load(&self.db, id).await?.map(Arc::new);
        let mut elections = self.elections.write().unwrap_or_else(|e| e.into_inner());
        let mut missing = self.missing.lock().unwrap_or_else(|e| e.into_inner());
        match &loaded {
            Some(e) => {
                elections.insert(id, e.clone());
                missing.remove(&id);
            }
            None => {
                elections.remove(&id);
                let now = Instant::now();
                if missing.len() >= MISSING_AT_MOST {
                    missing.retain(|_, until| *until > now);
                    if missing.len() >= MISSING_AT_MOST {
                        missing.clear();
                    }
                }
                missing.insert(id, now + MISSING_FOR);
            }
        };
        Ok(loaded)
    }

    pub async fn reload_all(&self) -> anyhow::Result<()> {
        let all: HashMap<i64, Arc<Election>> =
            elections::load_all(&self.db).await?.into_iter().map(|e| (e.id, Arc::new(e))).collect();
        // What workers may rightly hold back unrecorded: the alert on
        // ballots accepted but not recorded compares against it, from
        // this role, which outlives the workers.
        let now = time::OffsetDateTime::now_utc();
        let holdable: i64 = all
            .values()
            .filter(|e| e.status(now) == tally_domain::lifecycle::Status::Open)
            .map(|e| i64::from(e.anonymity_set))
            .sum();
        metrics::gauge!("tally_ballots_holdable").set(holdable as f64);
        *self.elections.write().unwrap_or_else(|e| e.into_inner()) = all;
        Ok(())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<i64, Arc<Election>>> {
        self.elections.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps the cache current until shutdown: reloads an election when it
    /// is announced, and everything every 30 s and after a reconnect.
    pub async fn follow(self, master: Master, channel: String, shutdown: CancellationToken) {
        let mut backoff = Backoff::default();
        loop {
            if let Err(e) = self.reload_all().await {
                tracing::warn!(error = format!("{e:#}"), "reloading elections failed");
            }
            // The master is asked anew: after a failover it is another node.
            let subscribed = async {
                let mut pubsub = master.client().await?.get_async_pubsub().await?;
                pubsub.subscribe(&channel).await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            let mut pubsub = match subscribed.await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot subscribe to election changes; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff.next_delay()) => continue,
                    }
                }
            };
            backoff = Backoff::default();
            let mut changes = pubsub.on_message();
            let mut full = tokio::time::interval(FULL_RELOAD);
            full.tick().await;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = full.tick() => {
                        if let Err(e) = self.reload_all().await {
                            tracing::warn!(error = format!("{e:#}"), "reloading elections failed");
                        }
                    }
                    message = changes.next() => {
                        let Some(message) = message else { break };
                        if let Ok(id) = message.get_payload::<i64>()
                            && let Err(e) = self.reload(id).await
                        {
                            tracing::warn!(election_id = id, error = format!("{e:#}"), "reloading an election failed");
                        }
                    }
                }
            }
        }
    }
}
