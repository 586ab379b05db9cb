//! The end of an election, decided in one place: a marker (the fence) in
//! the votes stream. A ballot counts when the broker stored it before the
//! election's fence, and only then; the API, every worker and the final
//! count all read that one order, so no two clocks are compared.
//!
//! Workers publish the fence once an election is closed or past its end
//! by their clock. The API, after the broker's ack of a ballot, looks for
//! a fence stored before it and answers 409 instead of 202 if there is
//! one.
//!
//! An election has one fence at most: the broker stores it only if its
//! subject holds nothing yet. So the last message on the subject is the
//! fence, and it is read with a direct get by subject, a request whose
//! subject names the fence: the API may send it and no request that
//! could return a ballot.

use std::time::Duration;

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

/// How often a replica that has not caught up is asked again.
const REASK: Duration = Duration::from_millis(20);
const REASKS: usize = 50;

/// The stream sequence of the election's fence, if it has one.
///
/// Whether there is one comes from the stream's leader, which has stored
/// everything it acked: a fence stored before a ballot we hold an ack
/// for is counted. Its sequence comes from a direct get, which any
/// replica may answer: one still behind says "not found", and is asked
/// again, since the leader said it is there.
pub async fn first<I>(
    votes: &stream::Stream<I>,
    settings: &NatsSettings,
    election_id: i64,
) -> anyhow::Result<Option<u64>> {
    let subject = subject(settings, election_id);
    if !crate::nats::holds_any(votes, &subject).await? {
        return Ok(None);
    }
    for _ in 0..REASKS {
        match votes.direct_get_last_for_subject(subject.as_str()).await {
            Ok(message) => return Ok(Some(message.sequence)),
            Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => tokio::time::sleep(REASK).await,
            Err(e) => anyhow::bail!("reading the fence of election {election_id}: {e}"),
        }
    }
    anyhow::bail!("the fence of election {election_id} is counted but no replica returns it")
}

/// Stores the election's fence, or finds the one already there: workers
/// racing to publish it agree, through the broker's dedup window and the
/// condition that the subject be empty.
pub async fn raise<I>(
    js: &jetstream::Context,
    votes: &stream::Stream<I>,
    settings: &NatsSettings,
    election_id: i64,
    timeout: Duration,
) -> anyhow::Result<u64> {
    if let Some(sequence) = first(votes, settings, election_id).await? {
        return Ok(sequence);
    }
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, format!("fence:{election_id}").as_str());
    headers.insert(async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, "0");
    let published =
        crate::nats::publish_acked(js, subject(settings, election_id), headers, bytes::Bytes::new(), timeout)
            .await;
    // Refused because another worker's fence got there first: that one is
    // the fence.
    let found = first(votes, settings, election_id).await?;
    match (published, found) {
        (_, Some(sequence)) => Ok(sequence),
        (Err(e), None) => Err(e).with_context(|| format!("publishing the fence of election {election_id}")),
        (Ok(_), None) => {
            anyhow::bail!("the fence of election {election_id} was stored but is not found")
        }
    }
}

/// A handle on the votes stream for fence lookups, without a round trip.
pub async fn votes_stream(
    js: &jetstream::Context,
    settings: &NatsSettings,
) -> anyhow::Result<stream::Stream<()>> {
    js.get_stream_no_info(&settings.stream).await.context("naming the votes stream")
}
