//! An election's voter set in Redis: the citizens whose ballot it has
//! accepted, and beside it (same hash slot) the ballots voters reserved
//! before publishing. The API reads it to refuse a second ballot at once;
//! the API, the workers and reconcile write it. Every operation on those
//! two keys is here, so their meaning cannot differ between roles.
//!
//! Nothing here names a receipt or a choice: a Redis reader must not pair
//! a voter with their ballot.

use std::collections::HashMap;
use std::sync::LazyLock;

use redis::{FromRedisValue, RedisResult, Script, Value};

use crate::redis::{Keys, Redis};
use crate::round_trip::{Reply, RoundTrip};

/// Reserves the voter for this intent (when ARGV[3] is 1: keyed ballots
/// only), unless they have voted or another ballot holds the reservation.
/// Returns whether they voted, the intent reserved, and whether this call
/// reserved it. A keyless ballot reserves nothing: no retry can claim it,
/// and a reservation left by a request that died would lock its voter out.
const RESERVE: &str = r"
local voted = redis.call('SISMEMBER', KEYS[1], ARGV[1])
local held = redis.call('HGET', KEYS[2], ARGV[1])
if (not held) and voted == 0 and ARGV[3] == '1' then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
  return {0, ARGV[2], 1}
end
return {voted, held or '', 0}
";

/// Gives a reservation up, if it is still this intent's.
const RELEASE: &str = r"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
";

static RESERVE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RESERVE));
static RELEASE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RELEASE));

/// Where a voter stands before their ballot is published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    /// In the voter set: a ballot of theirs was accepted.
    pub voted: bool,
    /// The intent reserved for them; empty when none.
    pub held: String,
    /// This request made the reservation (and must give it up if its
    /// ballot is refused before it is stored).
    pub reserved_now: bool,
}

impl FromRedisValue for Standing {
    fn from_redis_value(value: &Value) -> RedisResult<Standing> {
        let (voted, held, reserved_now) = FromRedisValue::from_redis_value(value)?;
        Ok(Standing { voted, held, reserved_now })
    }
}

/// Asks, in `trip`, whether the voter has voted, and reserves them for
/// `intent` when `keyed` and they are free (see `RESERVE`).
pub fn ask_standing(
    trip: &mut RoundTrip,
    keys: &Keys,
    election_id: i64,
    citizen_id: i64,
    intent: &str,
    keyed: bool,
) -> Reply<Standing> {
    let mut invocation = RESERVE_SCRIPT.prepare_invoke();
    invocation
        .key(keys.voters(election_id))
        .key(keys.intents(election_id))
        .arg(citizen_id)
        .arg(intent)
        .arg(if keyed { "1" } else { "0" });
    trip.ask_script("the voter's standing", &RESERVE_SCRIPT, &invocation)
}

/// Gives up a reservation this request made, if it is still `intent`'s.
pub async fn release(
    redis: &Redis,
    keys: &Keys,
    election_id: i64,
    citizen_id: i64,
    intent: &str,
) -> RedisResult<()> {
    RELEASE_SCRIPT
        .key(keys.intents(election_id))
        .arg(citizen_id)
        .arg(intent)
        .invoke_async::<i64>(&mut redis.clone())
        .await
        .map(drop)
}

pub async fn has_voted(redis: &Redis, keys: &Keys, election_id: i64, citizen_id: i64) -> RedisResult<bool> {
    redis::cmd("SISMEMBER")
        .arg(keys.voters(election_id))
        .arg(citizen_id)
        .query_async(&mut redis.clone())
        .await
}

/// Queues adding (election, citizen) pairs to their voter sets, replies
/// ignored, in a pipeline the caller sends: voters whose ballot the queue
/// stored (the API) or Postgres recorded (the workers, with other work).
pub fn queue_voted(pipe: &mut redis::Pipeline, keys: &Keys, voters: &[(i64, i64)]) {
    for (election_id, citizens) in by_election(voters) {
        pipe.cmd("SADD").arg(keys.voters(election_id)).arg(citizens).ignore();
    }
}

/// Takes voters out of their elections' voter sets and reservations:
/// their ballot was rejected and nothing of theirs is on the voter roll,
/// so the API must not go on refusing them as having voted.
pub async fn release_rejected(redis: &Redis, keys: &Keys, voters: &[(i64, i64)]) -> anyhow::Result<()> {
    if voters.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    for (election_id, citizens) in by_election(voters) {
        pipe.cmd("SREM").arg(keys.voters(election_id)).arg(&citizens).ignore();
        pipe.cmd("HDEL").arg(keys.intents(election_id)).arg(&citizens).ignore();
    }
    pipe.query_async::<()>(&mut redis.clone())
        .await
        .map_err(|e| anyhow::anyhow!("releasing rejected voters in Redis: {e}"))
}

/// Queues a time to live on a settled election's voter set and
/// reservations; NX, so a countdown already running is not restarted.
pub fn queue_expiry(pipe: &mut redis::Pipeline, keys: &Keys, election_id: i64, ttl_secs: u64) {
    for key in [keys.voters(election_id), keys.intents(election_id)] {
        pipe.cmd("EXPIRE").arg(key).arg(ttl_secs).arg("NX").ignore();
    }
}

/// How many voters the set holds.
pub async fn count(redis: &Redis, keys: &Keys, election_id: i64) -> RedisResult<i64> {
    redis::cmd("SCARD").arg(keys.voters(election_id)).query_async(&mut redis.clone()).await
}

/// Adds a chunk of the voter roll back to the set (a rebuild after Redis
/// lost it); returns how many were missing.
pub async fn restore(redis: &Redis, keys: &Keys, election_id: i64, citizens: &[i64]) -> RedisResult<u64> {
    redis::cmd("SADD").arg(keys.voters(election_id)).arg(citizens).query_async(&mut redis.clone()).await
}

fn by_election(voters: &[(i64, i64)]) -> HashMap<i64, Vec<i64>> {
    let mut by_election: HashMap<i64, Vec<i64>> = HashMap::new();
    for (election_id, citizen_id) in voters {
        by_election.entry(*election_id).or_default().push(*citizen_id);
    }
    by_election
}
