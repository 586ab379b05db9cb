//! Redis: a multiplexed connection that reconnects by itself, behind
//! Sentinel if configured, and the key names every role agrees on.

mod master;

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::config::RedisSettings;
pub use master::Master;

/// Commands to Redis. Without Sentinel it is the connection manager and
/// nothing more: the ballot path runs through it. Behind Sentinel it also
/// follows the master when the sentinels move it.
#[derive(Clone)]
pub struct Redis(Route);

#[derive(Clone)]
enum Route {
    Direct(ConnectionManager),
    Sentinel(Arc<master::Followed>),
}

impl ConnectionLike for Redis {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.0 {
            Route::Direct(manager) => manager.req_packed_command(cmd),
            Route::Sentinel(followed) => Box::pin(followed.command(cmd)),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.0 {
            Route::Direct(manager) => manager.req_packed_commands(cmd, offset, count),
            Route::Sentinel(followed) => Box::pin(followed.commands(cmd, offset, count)),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.0 {
            Route::Direct(manager) => manager.get_db(),
            Route::Sentinel(followed) => followed.db(),
        }
    }
}

/// Connects once (callers retry this with backoff at start-up); afterwards
/// the manager reconnects on its own after a Redis restart, and behind
/// Sentinel asks the sentinels again when the master stops answering as one.
pub async fn connect(settings: &RedisSettings) -> anyhow::Result<Redis> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Duration::from_secs(2))
        .set_response_timeout(Duration::from_millis(settings.response_timeout_ms))
        .set_number_of_retries(2)
        // The crate's default grows the wait between reconnects to about
        // 100 s (1 s times the factor 100): a command caught by a Redis
        // restart would hang that long. Capped, it fails within seconds.
        .set_max_delay(1_000);
    let route = match &settings.sentinel {
        None => ConnectionManager::new_with_config(client(settings)?, config).await.map(Route::Direct),
        Some(_) => master::Followed::connect(master(settings)?, config).await.map(Route::Sentinel),
    };
    route.map(Redis).map_err(|e| anyhow::anyhow!("connecting to Redis: {e}"))
}

/// Where subscriptions connect: ask it again after each lost subscription.
pub fn master(settings: &RedisSettings) -> anyhow::Result<Master> {
    Master::new(settings)
}

/// A client for `redis.url` itself, Sentinel or not.
pub fn client(settings: &RedisSettings) -> anyhow::Result<redis::Client> {
    crate::tls::install_crypto_provider();
    let invalid =
        |e: redis::RedisError| anyhow::anyhow!("invalid setting `redis.url` (env TALLY_REDIS__URL): {e}");
    let Some(certificates) = certificates(settings)? else {
        return redis::Client::open(settings.url.expose()).map_err(invalid);
    };
    redis::Client::build_with_tls(settings.url.expose(), certificates).map_err(invalid)
}

/// The private CA of `redis.tls_root_certificate`, if one is set.
fn certificates(settings: &RedisSettings) -> anyhow::Result<Option<redis::TlsCertificates>> {
    let Some(root) = &settings.tls_root_certificate else { return Ok(None) };
    let root_cert = std::fs::read(root)
        .map_err(|e| anyhow::anyhow!("cannot read redis.tls_root_certificate {}: {e}", root.display()))?;
    Ok(Some(redis::TlsCertificates { client_tls: None, root_cert: Some(root_cert) }))
}

/// Key and channel names, all under the configured prefix.
#[derive(Clone, Debug)]
pub struct Keys {
    /// Shared, not copied: every request's state clones its keys.
    prefix: std::sync::Arc<str>,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Keys { prefix: prefix.into() }
    }

    /// Hash of runner id → votes, plus `_version` and `_turnout`.
    pub fn tally(&self, election_id: i64) -> String {
        format!("{}:tally:{{{election_id}}}", self.prefix)
    }

    /// Set of citizens whose ballot this election has accepted.
    pub fn voters(&self, election_id: i64) -> String {
        format!("{}:voters:{{{election_id}}}", self.prefix)
    }

    /// Hash: citizen → the ballot they reserved before publishing (see
    /// `voters`). Same hash slot as the voter set.
    pub fn intents(&self, election_id: i64) -> String {
        format!("{}:intents:{{{election_id}}}", self.prefix)
    }

    /// Pub/sub channel carrying this election's tally events.
    pub fn tally_channel(&self, election_id: i64) -> String {
        format!("{}:{election_id}", self.prefix)
    }

    pub fn tally_channel_pattern(&self) -> String {
        format!("{}:*", self.prefix)
    }

    /// The election id of a tally channel; `None` for anything else that
    /// the pattern happens to match.
    pub fn election_of_channel(&self, channel: &str) -> Option<i64> {
        channel.strip_prefix(&*self.prefix)?.strip_prefix(':')?.parse().ok()
    }

    pub fn rate_limit(&self, scope: &str, subject: &str) -> String {
        format!("{}:rl:{scope}:{subject}", self.prefix)
    }

    pub fn revoked_session(&self, session_id: &str) -> String {
        format!("{}:revoked:{session_id}", self.prefix)
    }

    /// Present (never expiring) once this Redis holds every revocation
    /// still in force; a new or emptied Redis lacks it (see
    /// `auth::extract`).
    pub fn revocations_loaded(&self) -> String {
        format!("{}:revoked-loaded", self.prefix)
    }

    /// Channel on which admins' election changes are announced, so every
    /// API replica refreshes its cache.
    pub fn elections_channel(&self) -> String {
        format!("{}-control:elections", self.prefix)
    }
}
