//! The end of an election, decided in one place: a marker (the fence) in
//! the votes stream. A ballot counts when the broker stored it before the
//! election's first fence, and only then; the API, every worker and the
//! final count all read that one order, so no two clocks are compared.
//!
//! Workers publish the fence once an election is closed or past its end
//! by their clock. The API, after the broker's ack of a ballot, looks for
//! a fence stored before it and answers 409 instead of 202 if there is
//! one. The lookup goes to the stream's leader: a fence stored before the
//! ballot is always there by then.

use anyhow::Context;
use async_nats::jetstream::{self, stream};

use crate::config::NatsSettings;

/// Where an election's fences are published: inside the votes stream, so
/// they share its order, but outside the workers' filter (`<prefix>.*`).
pub fn subject(settings: &NatsSettings, election_id: i64) -> String {
    format!("{}.fence.{election_id}", settings.subject_prefix)
}

pub fn subjects(settings: &NatsSettings) -> String {
    format!("{}.fence.*", settings.subject_prefix)
}

/// The stream sequence of the election's first fence, if it has one. Only
/// the first matters: any later one was stored after it.
pub async fn first<I>(
    votes: &stream::Stream<I>,
    settings: &NatsSettings,
    election_id: i64,
) -> anyhow::Result<Option<u64>> {
    let subject = subject(settings, election_id);
    // Whether there is one at all first, from the subject index: a search
    // from the start would walk the stream's blocks.
    if !crate::bus::holds_any(votes, &subject).await? {
        return Ok(None);
    }
    match votes.get_first_raw_message_by_subject(&subject, 1).await {
        Ok(message) => Ok(Some(message.sequence)),
        Err(e) => Err(anyhow::anyhow!("looking for the fence of election {election_id}: {e}")),
    }
}

/// Stores the election's fence, or finds the one already there: workers
/// racing to publish it agree, through the broker's dedup window and the
/// lookup of the first fence.
pub async fn raise<I>(
    js: &jetstream::Context,
    votes: &stream::Stream<I>,
    settings: &NatsSettings,
    election_id: i64,
    timeout: std::time::Duration,
) -> anyhow::Result<u64> {
    if let Some(sequence) = first(votes, settings, election_id).await? {
        return Ok(sequence);
    }
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, format!("fence:{election_id}").as_str());
    crate::bus::publish_acked(js, subject(settings, election_id), headers, bytes::Bytes::new(), timeout)
        .await
        .with_context(|| format!("publishing the fence of election {election_id}"))?;
    first(votes, settings, election_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the fence of election {election_id} was stored but is not found"))
}

/// A handle on the votes stream for fence lookups, without a round trip.
pub async fn votes_stream(
    js: &jetstream::Context,
    settings: &NatsSettings,
) -> anyhow::Result<stream::Stream<()>> {
    js.get_stream_no_info(&settings.stream).await.context("naming the votes stream")
}
