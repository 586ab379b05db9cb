//! Fixed-window counters in Redis, shared by every replica: one script,
//! one round trip per check.

use std::sync::LazyLock;

use redis::Script;

use crate::store::Redis;

const WINDOW: &str = r"
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
local ttl = redis.call('TTL', KEYS[1])
return {count, ttl}
";

/// Refused: retry after this many seconds.
#[derive(Debug, PartialEq, Eq)]
pub struct Exceeded {
    pub retry_after_secs: u64,
}

/// Counts one attempt against `key`; `Err` once more than `limit` were made
/// within the window. `scope` names the limit in metrics.
pub async fn hit(
    redis: &Redis,
    scope: &'static str,
    key: &str,
    limit: u32,
    window_secs: u64,
) -> anyhow::Result<Result<(), Exceeded>> {
    let mut conn = redis.clone();
    static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(WINDOW));
    let (count, ttl): (u64, i64) = SCRIPT
        .key(key)
        .arg(window_secs)
        .invoke_async(&mut conn)
        .await
        .map_err(|e| anyhow::anyhow!("rate limit check: {e}"))?;
    if count > u64::from(limit) {
        metrics::counter!("tally_rate_limited_total", "scope" => scope).increment(1);
        Ok(Err(Exceeded { retry_after_secs: ttl.max(1) as u64 }))
    } else {
        Ok(Ok(()))
    }
}
