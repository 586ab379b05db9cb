//! Live tallies in Redis: one hash per election holding each runner's
//! absolute count, the turnout and the version they belong to.

use std::collections::HashMap;

use crate::store::{Keys, Redis};

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
    let mut conn = redis.clone();
    let fields: HashMap<String, i64> = redis::cmd("HGETALL")
        .arg(keys.tally(election_id))
        .query_async(&mut conn)
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
