//! The consuming loop: batch, record, publish tallies, ack.

use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use async_nats::jetstream::{AckKind, Message};
use futures_util::StreamExt;
use tally_common::Deps;
use tally_common::ballot::VoteCommand;
use tally_common::retry::{Backoff, until_ok};
use tokio_util::sync::CancellationToken;

use crate::record::{Fate, record};

/// How long a failed batch waits before the broker offers it again.
const RETRY_DELAY: Duration = Duration::from_secs(1);

pub async fn consumer(deps: &Deps) -> anyhow::Result<PullConsumer> {
    let settings = &deps.settings;
    let stream =
        deps.jetstream.get_stream(&settings.nats.stream).await.context("opening the votes stream")?;
    stream
        .get_or_create_consumer(
            &settings.nats.consumer,
            pull::Config {
                durable_name: Some(settings.nats.consumer.clone()),
                filter_subject: format!("{}.*", settings.nats.subject_prefix),
                ack_policy: AckPolicy::Explicit,
                ack_wait: Duration::from_secs(settings.nats.ack_wait_secs),
                max_ack_pending: settings.workers.max_ack_pending,
                max_batch: settings.workers.batch_size as i64,
                ..Default::default()
            },
        )
        .await
        .context("creating the workers' consumer")
}

pub async fn run(deps: &Deps, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let Some(consumer) = until_ok("nats consumer", shutdown, || consumer(deps)).await else { return Ok(()) };
    let batch_size = deps.settings.workers.batch_size;
    let batch_wait = Duration::from_millis(deps.settings.workers.batch_wait_ms);
    let mut backoff = Backoff::default();
    'connect: loop {
        let stream =
            consumer.stream().max_messages_per_batch(batch_size).heartbeat(Duration::from_secs(5)).messages();
        let mut messages = match stream.await {
            Ok(messages) => messages,
            Err(e) => {
                tracing::warn!(error = %e, "cannot pull ballots; retrying");
                if pause(shutdown, backoff.next_delay()).await {
                    return Ok(());
                }
                continue 'connect;
            }
        };
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                next = messages.next() => next,
            };
            let first = match first {
                Some(Ok(message)) => message,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "pull failed; reconnecting");
                    continue 'connect;
                }
                None => continue 'connect,
            };
            let mut batch = vec![first];
            let deadline = tokio::time::Instant::now() + batch_wait;
            while batch.len() < batch_size {
                match tokio::time::timeout_at(deadline, messages.next()).await {
                    Ok(Some(Ok(message))) => batch.push(message),
                    _ => break,
                }
            }
            // A batch in hand is finished even during shutdown, so that it
            // is acked (or released) rather than left to time out.
            if process(deps, batch).await {
                backoff = Backoff::default();
            } else if pause(shutdown, backoff.next_delay()).await {
                return Ok(());
            }
        }
    }
}

/// Sleeps, or returns true at once if shutdown came first.
async fn pause(shutdown: &CancellationToken, delay: Duration) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(delay) => false,
    }
}

/// Records one batch. Returns false when a dependency failed and the batch
/// was handed back for redelivery.
pub async fn process(deps: &Deps, batch: Vec<Message>) -> bool {
    let started = Instant::now();
    metrics::histogram!("tally_worker_batch_size").record(batch.len() as f64);
    let mut ballots = Vec::with_capacity(batch.len());
    let mut commands = Vec::with_capacity(batch.len());
    for message in batch {
        if message.info().is_ok_and(|info| info.delivered > 1) {
            metrics::counter!("tally_worker_redeliveries_total").increment(1);
        }
        match VoteCommand::decode(&message.payload) {
            Ok(command) => {
                commands.push(command);
                ballots.push(message);
            }
            Err(error) => dead_letter(deps, message, error).await,
        }
    }
    if commands.is_empty() {
        return true;
    }
    let outcome = match record(&deps.db, &commands).await {
        Ok(outcome) => outcome,
        Err(e) => {
            tracing::warn!(
                error = format!("{e:#}"),
                ballots = commands.len(),
                "recording failed; batch handed back"
            );
            metrics::counter!("tally_worker_failures_total", "stage" => "postgres").increment(1);
            hand_back(ballots).await;
            return false;
        }
    };
    if let Err(e) =
        tally_common::tally::apply(&deps.redis, &deps.keys, &outcome.totals, &outcome.voters, false).await
    {
        // Postgres has the batch; the redelivery finds every ballot already
        // recorded and rewrites Redis from Postgres's totals.
        tracing::warn!(error = format!("{e:#}"), "tally write failed; batch handed back");
        metrics::counter!("tally_worker_failures_total", "stage" => "redis").increment(1);
        hand_back(ballots).await;
        return false;
    }
    for fate in &outcome.fates {
        match fate {
            Fate::Recorded => metrics::counter!("tally_votes_recorded_total").increment(1),
            Fate::AlreadyRecorded => metrics::counter!("tally_votes_duplicates_skipped_total").increment(1),
            Fate::Rejected(reason) => {
                metrics::counter!("tally_votes_rejected_total", "reason" => *reason).increment(1)
            }
        }
    }
    let acks = ballots.iter().map(|m| m.ack());
    for result in futures_util::future::join_all(acks).await {
        if let Err(e) = result {
            // Harmless: the ballot is recorded; a redelivery is skipped.
            tracing::debug!(error = %e, "ack not sent");
        }
    }
    metrics::histogram!("tally_worker_batch_duration_seconds").record(started.elapsed().as_secs_f64());
    true
}

async fn hand_back(ballots: Vec<Message>) {
    let naks = ballots.iter().map(|m| m.ack_with(AckKind::Nak(Some(RETRY_DELAY))));
    futures_util::future::join_all(naks).await;
}

/// A message no worker can read is kept out of the way: counted, noted by
/// size and error (never its bytes, which may pair a citizen with a
/// choice), and terminated so it is not redelivered forever.
async fn dead_letter(deps: &Deps, message: Message, error: String) {
    metrics::counter!("tally_dead_letters_total").increment(1);
    tracing::warn!(subject = %message.subject, size = message.payload.len(), "undecodable message");
    let stored = sqlx::query("INSERT INTO dead_letters (subject, payload_size, error) VALUES ($1, $2, $3)")
        .bind(message.subject.as_str())
        .bind(message.payload.len() as i32)
        .bind(&error)
        .execute(&deps.db)
        .await;
    let kind = if stored.is_ok() { AckKind::Term } else { AckKind::Nak(Some(RETRY_DELAY)) };
    if let Err(e) = message.ack_with(kind).await {
        tracing::debug!(error = %e, "dead-letter ack not sent");
    }
}
