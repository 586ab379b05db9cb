//! One Redis round trip before a ballot is published: whether the session
//! is still valid, where the voter stands (voted, or reserved by a ballot;
//! see `idempotency`), and the client's limit. No limit is keyed by the
//! citizen: its timestamp would date this ballot in Redis, and one ballot
//! per citizen is enforced anyway.

use std::net::IpAddr;

use tally_http::ApiError;
use tally_http::auth::{AuthUser, RevocationReply};
use tally_platform::limits::Decision;
use tally_platform::round_trip::RoundTrip;
use tally_platform::voters::{self, Standing};

use crate::ApiState;

/// What the round trip answered, each part read by name.
pub struct Preflight {
    /// For `Verifier::settle`.
    pub revocation: RevocationReply,
    pub standing: Standing,
    /// The client's limit, settled as everywhere else (`PerClient::settle`);
    /// unlimited when it was counted before this round trip or is off.
    pub client_limit: Result<Decision, ApiError>,
}

/// `count_client`: whether this round trip should count the client (not
/// when the request was counted already, on its way here).
#[tracing::instrument(level = "debug", skip_all, fields(election_id = election_id))]
pub async fn preflight(
    state: &ApiState,
    client: IpAddr,
    count_client: bool,
    voter: &AuthUser,
    election_id: i64,
    intent: &str,
    keyed: bool,
) -> Result<Preflight, ApiError> {
    let mut trip = RoundTrip::new();
    let revocation = trip.ask("the session's revocation", |pipe| {
        state.verifier.revocation_check(pipe, voter.session_id);
    });
    let keys = &state.deps.keys;
    let standing = voters::ask_standing(&mut trip, keys, election_id, voter.citizen_id, intent, keyed);
    let client_limit = if count_client { state.per_client.ask(&mut trip, client) } else { None };
    let unavailable =
        |e: anyhow::Error| ApiError::unavailable(anyhow::anyhow!("checking session and voter set: {e:#}"), 1);
    let replies = trip.send(&state.deps.redis).await.map_err(|e| unavailable(e.into()))?;
    let client_limit = match client_limit {
        Some(reply) => state.per_client.settle(replies.read(reply).map(|r| state.per_client.read(r))),
        None => Ok(Decision::unlimited()),
    };
    Ok(Preflight {
        revocation: replies.read(revocation).map_err(unavailable)?,
        standing: replies.read(standing).map_err(unavailable)?,
        client_limit,
    })
}
