//! Which Redis node is the master: the one `redis.url` names, or the one
//! the sentinels name at the moment of asking; and a command connection
//! that asks again when the master it holds stops answering as one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    Cmd, ConnectionAddr, ErrorKind, IntoConnectionInfo, Pipeline, RedisError, RedisResult, TlsMode, Value,
};

use crate::config::{RedisSettings, SentinelSettings, env_var_for};
use crate::retry::Backoff;

/// How long asking the sentinels (and checking the master's role) may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// Where connections to the master come from. Cheap to clone.
#[derive(Clone)]
pub struct Master(Arc<Source>);

enum Source {
    Fixed(redis::Client),
    /// The sentinel client caches a connection per sentinel, so it is
    /// shared, one question at a time.
    Sentinel(tokio::sync::Mutex<SentinelClient>),
}

impl Master {
    pub(super) fn new(settings: &RedisSettings) -> anyhow::Result<Master> {
        let source = match &settings.sentinel {
            None => Source::Fixed(super::client(settings)?),
            Some(sentinel) => Source::Sentinel(tokio::sync::Mutex::new(sentinel_client(settings, sentinel)?)),
        };
        Ok(Master(Arc::new(source)))
    }

    /// A client for the master as of now: the sentinels are asked each
    /// time, so a subscription made after a failover reaches the new one.
    pub async fn client(&self) -> RedisResult<redis::Client> {
        let sentinel = match &*self.0 {
            Source::Fixed(client) => return Ok(client.clone()),
            Source::Sentinel(sentinel) => sentinel,
        };
        let asked = async { sentinel.lock().await.async_get_client().await };
        tokio::time::timeout(ASK_TIMEOUT, asked).await.unwrap_or_else(|_| {
            Err(RedisError::from((
                ErrorKind::MasterNameNotFoundBySentinel,
                "the sentinels did not answer in time",
            )))
        })
    }
}

/// Sentinel's client, with `redis.url`'s scheme, user, password and
/// database (and private CA) for the master it names.
fn sentinel_client(settings: &RedisSettings, sentinel: &SentinelSettings) -> anyhow::Result<SentinelClient> {
    crate::tls::install_crypto_provider();
    let invalid = |setting: &'static str| {
        move |e: RedisError| {
            anyhow::anyhow!("invalid setting `{setting}` (env {}): {e}", env_var_for(setting))
        }
    };
    let node = settings.url.expose().into_connection_info().map_err(invalid("redis.url"))?;
    let sentinels = (sentinel.urls.iter().map(|url| url.expose().into_connection_info()))
        .collect::<RedisResult<Vec<_>>>()
        .map_err(invalid("redis.sentinel.urls"))?;
    let addresses = sentinels.iter().map(|s| s.addr.clone());
    let mut builder =
        SentinelClientBuilder::new(addresses, sentinel.master_name.clone(), SentinelServerType::Master)
            .map_err(invalid("redis.sentinel.urls"))?
            .set_client_to_redis_db(node.redis.db)
            .set_client_to_redis_protocol(node.redis.protocol);
    if let Some(username) = node.redis.username {
        builder = builder.set_client_to_redis_username(username);
    }
    if let Some(password) = node.redis.password {
        builder = builder.set_client_to_redis_password(password);
    }
    let certificates = super::certificates(settings)?;
    if let ConnectionAddr::TcpTls { insecure, .. } = node.addr {
        builder =
            builder.set_client_to_redis_tls_mode(if insecure { TlsMode::Insecure } else { TlsMode::Secure });
        if let Some(certificates) = certificates.clone() {
            builder = builder.set_client_to_redis_certificates(certificates);
        }
    }
    // The sentinels share one password (their `requirepass`): the first given.
    if let Some(first) = sentinels.iter().find(|s| s.redis.password.is_some()) {
        if let Some(username) = first.redis.username.clone() {
            builder = builder.set_client_to_sentinel_username(username);
        }
        if let Some(password) = first.redis.password.clone() {
            builder = builder.set_client_to_sentinel_password(password);
        }
    }
    let all_tls = sentinels.iter().all(|s| matches!(s.addr, ConnectionAddr::TcpTls { .. }));
    if let Some(certificates) = certificates.filter(|_| all_tls) {
        builder = builder.set_client_to_sentinel_certificates(certificates);
    }
    builder.build().map_err(invalid("redis.sentinel.urls"))
}

/// A connection manager for the master, replaced by one for the new
/// master once the sentinels have moved it.
pub(super) struct Followed {
    master: Master,
    config: ConnectionManagerConfig,
    manager: RwLock<ConnectionManager>,
    db: i64,
    /// A search for the master is under way; one at a time.
    asking: AtomicBool,
}

impl Followed {
    pub(super) async fn connect(
        master: Master,
        config: ConnectionManagerConfig,
    ) -> RedisResult<Arc<Followed>> {
        let client = master.client().await?;
        let db = client.get_connection_info().redis.db;
        let manager = RwLock::new(ConnectionManager::new_with_config(client, config.clone()).await?);
        Ok(Arc::new(Followed { master, config, manager, db, asking: AtomicBool::new(false) }))
    }

    pub(super) fn db(&self) -> i64 {
        self.db
    }

    fn manager(&self) -> ConnectionManager {
        self.manager.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(super) async fn command(self: &Arc<Self>, cmd: &Cmd) -> RedisResult<Value> {
        let reply = self.manager().send_packed_command(cmd).await;
        if reply.as_ref().map_or_else(master_may_have_moved, is_read_only) {
            self.follow();
        }
        reply
    }

    pub(super) async fn commands(
        self: &Arc<Self>,
        pipeline: &Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        let replies = self.manager().send_packed_commands(pipeline, offset, count).await;
        if replies.as_ref().map_or_else(master_may_have_moved, |values| values.iter().any(is_read_only)) {
            self.follow();
        }
        replies
    }

    /// Asks the sentinels for the master in the background until one
    /// answers, then sends every later command there. The failed command
    /// is not sent again: it may have been applied before the connection
    /// broke, and callers already treat a Redis error as "try later".
    fn follow(self: &Arc<Self>) {
        if self.asking.swap(true, Ordering::AcqRel) {
            return;
        }
        let followed: Weak<Followed> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
            // Weak, so a Redis dropped during an outage stops the search.
            while let Some(this) = followed.upgrade() {
                let found = async {
                    let client = this.master.client().await?;
                    let address = client.get_connection_info().addr.to_string();
                    Ok::<_, RedisError>((
                        ConnectionManager::new_with_config(client, this.config.clone()).await?,
                        address,
                    ))
                };
                match found.await {
                    Ok((manager, address)) => {
                        *this.manager.write().unwrap_or_else(|e| e.into_inner()) = manager;
                        this.asking.store(false, Ordering::Release);
                        tracing::info!(master = %address, "following the Redis master the sentinels name");
                        return;
                    }
                    Err(e) => tracing::warn!(error = %e, "the sentinels name no reachable Redis master yet"),
                }
                drop(this);
                tokio::time::sleep(backoff.next_delay()).await;
            }
        });
    }
}

/// A broken or refused connection: the master may be gone.
fn master_may_have_moved(error: &RedisError) -> bool {
    error.is_io_error() || error.is_unrecoverable_error() || error.kind() == ErrorKind::ReadOnly
}

/// A READONLY reply: the node was demoted to a replica.
fn is_read_only(reply: &Value) -> bool {
    matches!(reply, Value::ServerError(e) if e.code() == "READONLY")
}
