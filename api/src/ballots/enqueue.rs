//! Sealing a ballot and handing it to JetStream; then, once it is stored,
//! noting its voter so a second ballot is refused at once.

use std::time::Duration;

use tally_domain::ballot::VoteCommand;
use tally_domain::election::Election;
use tally_http::ApiError;
use tally_http::error::Counted;
use tally_platform::nats::{self, PublishError, Stored};

use crate::ApiState;
use crate::idempotency;

/// Seals the ballot and publishes it; `Ok` only with the broker's PubAck,
/// the one point after which the ballot may be promised to the voter.
/// `keyed_intent`: the intent of a ballot sent with an Idempotency-Key.
#[tracing::instrument(level = "debug", skip_all, fields(election_id = command.election_id))]
pub async fn enqueue(
    state: &ApiState,
    election: &Election,
    command: &VoteCommand,
    keyed_intent: Option<&str>,
) -> Result<Stored, PublishError> {
    let settings = &state.deps.settings.nats;
    let started = std::time::Instant::now();
    let mut sealed = command.seal(&state.sealer, election.ballot_slots());
    if let Some(intent) = keyed_intent {
        // The broker's dedup then joins the copies of this ballot only: a
        // voter freed by a rejection may cast anew under another key.
        let id = format!("{}:{}", command.msg_id(), idempotency::key_tag(intent));
        sealed.headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
    }
    let stored = nats::publish_acked(
        &state.deps.jetstream,
        nats::ballot_subject(settings, command.election_id),
        sealed.headers,
        sealed.payload,
        Duration::from_millis(settings.publish_timeout_ms),
    )
    .await;
    metrics::histogram!("tally_publish_duration_seconds").record(started.elapsed().as_secs_f64());
    stored
}

/// The answer to a ballot the queue did not confirm, counted in
/// `tally_publish_failures_total`.
pub fn not_confirmed(error: PublishError, keyed: bool) -> ApiError {
    let kind = if matches!(error, PublishError::Timeout) { "timeout" } else { "refused" };
    let detail = match (&error, keyed) {
        (PublishError::Refused(_), _) => "the queue refused the ballot; it was not stored",
        (PublishError::Timeout, true) => {
            "the queue did not confirm in time; send the ballot again with the same \
             Idempotency-Key to learn whether it was stored"
        }
        (PublishError::Timeout, false) => {
            "the queue did not confirm in time; the ballot may have been stored. Sending it \
             again is safe: one ballot per voter counts (an Idempotency-Key keeps the receipt)"
        }
    };
    ApiError::unavailable(error, 1).with_detail(detail).counted(Counted::PublishFailed(kind))
}

/// Notes the voter as having voted (see `voter_notes`). Nothing here
/// names the receipt: a Redis reader must not pair the two.
pub fn note_pending(state: &ApiState, command: &VoteCommand) {
    state.voter_notes.note(command.election_id, command.citizen_id);
}
