//! Live tallies in Redis: one hash per election holding each runner's
//! absolute count, the turnout and the version they belong to.

use std::collections::HashMap;
use std::sync::LazyLock;

use redis::Script;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::redis::{Keys, Redis};

pub const VERSION_FIELD: &str = "_version";
pub const TURNOUT_FIELD: &str = "_turnout";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub version: i64,
    pub turnout: i64,
    pub votes: HashMap<i64, i64>,
}

/// The election's tally as Redis holds it; all zero before the first vote.
pub async fn read(redis: &Redis, keys: &Keys, election_id: i64) -> anyhow::Result<Snapshot> {
    read_with(&mut redis.clone(), keys, election_id).await
}

/// Like `read`, on a connection of the caller's choosing.
pub async fn read_with(
    conn: &mut (impl redis::aio::ConnectionLike + Send),
    keys: &Keys,
    election_id: i64,
) -> anyhow::Result<Snapshot> {
    let fields: HashMap<String, i64> = redis::cmd("HGETALL")
        .arg(keys.tally(election_id))
        .query_async(conn)
        .await
        .map_err(|e| anyhow::anyhow!("reading the tally of election {election_id}: {e}"))?;
    let mut snapshot = Snapshot::default();
    for (field, value) in fields {
        match field.as_str() {
            VERSION_FIELD => snapshot.version = value,
            TURNOUT_FIELD => snapshot.turnout = value,
            runner => {
                if let Ok(id) = runner.parse() {
                    snapshot.votes.insert(id, value);
                }
            }
        }
    }
    Ok(snapshot)
}

/// Sets an election's absolute counts, turnout and version, and announces
/// them on its pub/sub channel, in one atomic step. A version older than
/// the stored one is ignored, so late or repeated writes never move a
/// tally backwards; an equal version is rewritten only when forced
/// (reconcile repairing drift).
const APPLY: &str = r"
local current = tonumber(redis.call('HGET', KEYS[1], '_version') or '-1')
local version = tonumber(ARGV[1])
if version < current or (version == current and ARGV[2] ~= '1') then return 0 end
redis.call('HSET', KEYS[1], '_version', ARGV[1], '_turnout', ARGV[3])
for i = 6, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
";

/// An election's totals as Postgres has them after a commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Totals {
    pub election_id: i64,
    pub version: i64,
    pub turnout: i64,
    pub votes: Vec<(i64, i64)>,
    /// The earliest `accepted_at` among the ballots this version added, so
    /// viewers' delay can be measured from acceptance.
    pub oldest_accepted_at: Option<OffsetDateTime>,
}

/// The pub/sub message announcing a new version.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TallyEvent {
    pub election_id: i64,
    pub version: i64,
    pub turnout: i64,
    pub votes: HashMap<i64, i64>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub oldest_accepted_at: Option<OffsetDateTime>,
}

/// Writes each election's totals (one script call each, all in one round
/// trip) and adds the recorded voters to the elections' voter sets.
/// Returns how many tallies were newer than what Redis held.
pub async fn apply(
    redis: &Redis,
    keys: &Keys,
    totals: &[Totals],
    voters: &[(i64, i64)],
    force: bool,
) -> anyhow::Result<usize> {
    if totals.is_empty() && voters.is_empty() {
        return Ok(0);
    }
    static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(APPLY));
    let script = &*SCRIPT;
    let mut pipe = redis::pipe();
    pipe.load_script(script).ignore();
    for t in totals {
        let event = TallyEvent {
            election_id: t.election_id,
            version: t.version,
            turnout: t.turnout,
            votes: t.votes.iter().copied().collect(),
            oldest_accepted_at: t.oldest_accepted_at,
        };
        let mut invocation = script.prepare_invoke();
        invocation
            .key(keys.tally(t.election_id))
            .arg(t.version)
            .arg(if force { "1" } else { "0" })
            .arg(t.turnout)
            .arg(keys.tally_channel(t.election_id))
            .arg(serde_json::to_string(&event)?);
        for (runner, votes) in &t.votes {
            invocation.arg(runner).arg(votes);
        }
        pipe.invoke_script(&invocation);
    }
    crate::voters::queue_voted(&mut pipe, keys, voters);
    let mut conn = redis.clone();
    let applied: Vec<i64> =
        pipe.query_async(&mut conn).await.map_err(|e| anyhow::anyhow!("writing tallies to Redis: {e}"))?;
    Ok(applied.iter().filter(|a| **a == 1).count())
}
