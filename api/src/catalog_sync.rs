//! Telling every API replica that an election changed.

use crate::ApiState;

/// Publishes the election's id on the elections channel. A failure only
/// delays other replicas until their periodic refresh, so it is logged and
/// not returned.
pub async fn announce(state: &ApiState, election_id: i64) {
    if let Err(e) = state.elections.reload(election_id).await {
        tracing::warn!(election_id, error = format!("{e:#}"), "reloading a changed election failed");
    }
    let mut redis = state.deps.redis.clone();
    let published = redis::cmd("PUBLISH")
        .arg(state.deps.keys.elections_channel())
        .arg(election_id)
        .query_async::<i64>(&mut redis)
        .await;
    if let Err(e) = published {
        tracing::warn!(election_id, error = %e, "could not announce an election change");
    }
}
