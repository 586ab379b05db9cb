//! Rate limits shared by every replica: GCRA (the generic cell rate
//! algorithm) in one Lua script, so a check is one Redis call that can
//! ride in the same pipeline as other work. A quota of `limit` per
//! `period` allows bursts of up to `limit` and refills smoothly.
//!
//! The script reads Redis's own clock, so replicas with skewed clocks
//! still agree. It is sent by its hash (`EVALSHA`, `redis::Script`), and
//! loaded again when a restarted Redis has forgotten it.

use std::sync::LazyLock;

use redis::Script;

use crate::redis::Redis;
use crate::round_trip::{Reply, RoundTrip};

const GCRA: &str = r"
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local tolerance = interval * burst
local next_tat = tat + interval
local allowed_at = next_tat - tolerance
if allowed_at > now then
  return {0, 0, allowed_at - now, tat - now}
end
redis.call('SET', KEYS[1], next_tat, 'PX', next_tat - now)
return {1, math.floor((now + tolerance - next_tat) / interval), 0, next_tat - now}
";

static GCRA_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(GCRA));

/// What the script answers: allowed (1 or 0), remaining, and the
/// milliseconds until a retry and until the quota is full again.
pub type GcraReply = (i64, i64, i64, i64);

/// `limit` requests per `period_secs`; a limit of 0 turns the check off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    pub limit: u32,
    pub period_secs: u64,
}

impl Quota {
    pub fn per_minute(limit: u32) -> Quota {
        Quota { limit, period_secs: 60 }
    }

    pub fn is_off(&self) -> bool {
        self.limit == 0 || self.period_secs == 0
    }

    /// Milliseconds between two requests at the sustained rate.
    pub fn interval_ms(&self) -> u64 {
        (self.period_secs * 1000 / u64::from(self.limit.max(1))).max(1)
    }
}

/// The outcome of one check, with what the `RateLimit-*` headers report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the quota is full again.
    pub reset_secs: u64,
    /// Seconds until the next request would be allowed (0 when allowed).
    pub retry_after_secs: u64,
}

impl Decision {
    /// What a disabled quota answers.
    pub fn unlimited() -> Decision {
        Decision { allowed: true, limit: 0, remaining: 0, reset_secs: 0, retry_after_secs: 0 }
    }
}

/// Queues one check in a round trip, named `what`; read its reply with [`read`].
pub fn ask(trip: &mut RoundTrip, what: &'static str, key: &str, quota: Quota) -> Reply<GcraReply> {
    let mut invocation = GCRA_SCRIPT.key(key);
    invocation.arg(quota.interval_ms()).arg(quota.limit);
    trip.ask_script(what, &GCRA_SCRIPT, &invocation)
}

/// Turns a pipeline reply from [`add_to`] into a decision.
pub fn read(quota: Quota, (allowed, remaining, retry_ms, reset_ms): GcraReply) -> Decision {
    let secs = |ms: i64| (ms.max(0) as u64).div_ceil(1000);
    Decision {
        allowed: allowed == 1,
        limit: quota.limit,
        remaining: remaining.clamp(0, i64::from(quota.limit)) as u32,
        reset_secs: secs(reset_ms),
        retry_after_secs: secs(retry_ms).max(u64::from(allowed != 1)),
    }
}

/// How long a check may take. While Redis is away its client may wait on
/// reconnection far longer than one reply takes; a limit that cannot
/// answer by then is treated as unavailable (let through, or refused for
/// logins) rather than holding the request until its own timeout.
const CHECK_WITHIN: std::time::Duration = std::time::Duration::from_secs(1);

/// One check on its own: one round trip.
pub async fn check(redis: &Redis, key: &str, quota: Quota) -> anyhow::Result<Decision> {
    if quota.is_off() {
        return Ok(Decision::unlimited());
    }
    let mut trip = RoundTrip::new();
    let reply = ask(&mut trip, "the rate limit", key, quota);
    let replies = tokio::time::timeout(CHECK_WITHIN, trip.send(redis))
        .await
        .map_err(|_| anyhow::anyhow!("rate limit check: no answer within {CHECK_WITHIN:?}"))?
        .map_err(|e| anyhow::anyhow!("rate limit check: {e}"))?;
    Ok(read(quota, replies.read(reply)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_become_decisions() {
        let quota = Quota::per_minute(10);
        assert_eq!(quota.interval_ms(), 6000);
        let allowed = read(quota, (1, 9, 0, 6000));
        assert_eq!(
            allowed,
            Decision { allowed: true, limit: 10, remaining: 9, reset_secs: 6, retry_after_secs: 0 }
        );
        let refused = read(quota, (0, 0, 1200, 60_000));
        assert_eq!(refused.retry_after_secs, 2, "rounded up, never 0");
        assert!(!refused.allowed);
        assert!(Quota::per_minute(0).is_off());
    }
}
