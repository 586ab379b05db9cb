//! The consuming loop: open, hold, commit due groups, publish tallies, ack.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use async_nats::jetstream::{AckKind, Message};
use futures_util::StreamExt;
use tally_common::Deps;
use tally_common::ballot::VoteCommand;
use tally_common::retry::{Backoff, until_ok};
use tally_common::seal::Opener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::hold::{HeldBallot, Holds};
use crate::record::{Fate, record};

/// How long a failed group waits before the broker offers it again.
const RETRY_DELAY: Duration = Duration::from_secs(1);
/// How often held ballots are kept alive and held elections re-read, so
/// an election is flushed within this long of its end.
const HOLD_TICK: Duration = Duration::from_secs(1);

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
    let opener = deps.settings.sealing.opener()?;
    let Some(consumer) = until_ok("nats consumer", shutdown, || consumer(deps)).await else { return Ok(()) };
    let mut holds = Holds::default();
    let ran = consume(deps, &opener, &consumer, &mut holds, shutdown).await;
    holds.release_all().await;
    ran
}

async fn consume(
    deps: &Deps,
    opener: &Opener,
    consumer: &PullConsumer,
    holds: &mut Holds,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let batch_size = deps.settings.workers.batch_size;
    let batch_wait = Duration::from_millis(deps.settings.workers.batch_wait_ms);
    let ack_wait = Duration::from_secs(deps.settings.nats.ack_wait_secs);
    let mut backoff = Backoff::default();
    let mut tick = tokio::time::interval(HOLD_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                _ = tick.tick() => {
                    if !on_tick(deps, holds, ack_wait).await && pause(shutdown, backoff.next_delay()).await {
                        return Ok(());
                    }
                    continue;
                }
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
            if step(deps, opener, holds, batch).await {
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

/// One worker step: takes a batch into the hold, then commits what is
/// due. Returns false when a dependency failed.
pub async fn step(deps: &Deps, opener: &Opener, holds: &mut Holds, batch: Vec<Message>) -> bool {
    let Some(decided) = admit(deps, opener, holds, batch).await else { return false };
    // Recording them again adds no row; it rewrites Redis from Postgres's
    // totals, which a failed Redis write may have left behind.
    if !decided.is_empty() && !commit(deps, holds, decided).await {
        return false;
    }
    if let Err(e) = holds.refresh(deps).await {
        tracing::warn!(error = format!("{e:#}"), "cannot read held elections");
        return false;
    }
    commit_due(deps, holds).await
}

/// The clock's step: keeps held ballots alive, re-reads held elections
/// and commits what is due, so an election that ends is flushed even when
/// no ballot arrives.
pub async fn on_tick(deps: &Deps, holds: &mut Holds, ack_wait: Duration) -> bool {
    holds.keep_alive(ack_wait).await;
    if let Err(e) = holds.refresh(deps).await {
        tracing::warn!(error = format!("{e:#}"), "cannot read held elections");
        return false;
    }
    commit_due(deps, holds).await
}

/// Opens each message and takes it into the hold; what cannot be opened
/// is quarantined. A ballot whose fate is already known (a redelivery of
/// one recorded or rejected, or a second ballot of a recorded voter) is
/// settled at once and never held: counted in a group, it would leave the
/// group's new voters fewer than K. Returns the ballots already decided, to be settled
/// by the caller, or `None` when they could not be checked (the batch
/// was then handed back).
pub async fn admit(
    deps: &Deps,
    opener: &Opener,
    holds: &mut Holds,
    batch: Vec<Message>,
) -> Option<Vec<HeldBallot>> {
    let mut opened = Vec::with_capacity(batch.len());
    for message in batch {
        if message.info().is_ok_and(|info| info.delivered > 1) {
            metrics::counter!("tally_worker_redeliveries_total").increment(1);
        }
        let command =
            VoteCommand::open(opener, message.headers.as_ref(), &message.payload).and_then(|command| {
                let on_subject =
                    message.subject.rsplit('.').next() == Some(command.election_id.to_string().as_str());
                if on_subject { Ok(command) } else { Err("election differs from the subject's".into()) }
            });
        match command {
            Ok(command) => opened.push(HeldBallot::new(message, command)),
            Err(error) => quarantine(deps, message, error).await,
        }
    }
    let settled = match settled_receipts(deps, &opened).await {
        Ok(settled) => settled,
        Err(e) => {
            tracing::warn!(error = format!("{e:#}"), "cannot check ballots against the record; handed back");
            hand_back(opened.iter().map(|b| &b.message)).await;
            return None;
        }
    };
    let mut decided = Vec::new();
    for ballot in opened {
        if settled.contains(&ballot.command.receipt) {
            decided.push(ballot);
        } else {
            holds.take(deps.settings.database.url.expose(), ballot).await;
        }
    }
    Some(decided)
}

/// Receipts of ballots whose fate is already known: recorded or rejected
/// by an earlier delivery, or from a citizen already on the voter roll.
async fn settled_receipts(deps: &Deps, ballots: &[HeldBallot]) -> anyhow::Result<HashSet<Uuid>> {
    if ballots.is_empty() {
        return Ok(HashSet::new());
    }
    let receipts: Vec<Uuid> = ballots.iter().map(|b| b.command.receipt).collect();
    let elections: Vec<i64> = ballots.iter().map(|b| b.command.election_id).collect();
    let citizens: Vec<i64> = ballots.iter().map(|b| b.command.citizen_id).collect();
    let found: Vec<Uuid> = sqlx::query_scalar(
        "SELECT t.r FROM UNNEST($1::uuid[], $2::bigint[], $3::bigint[]) AS t(r, e, c)
         WHERE EXISTS (SELECT 1 FROM recorded_receipts x WHERE x.receipt = t.r)
            OR EXISTS (SELECT 1 FROM rejected_ballots x WHERE x.receipt = t.r)
            OR EXISTS (SELECT 1 FROM voter_roll v WHERE v.election_id = t.e AND v.citizen_id = t.c)",
    )
    .bind(&receipts)
    .bind(&elections)
    .bind(&citizens)
    .fetch_all(&deps.db)
    .await
    .context("checking ballots against the record")?;
    Ok(found.into_iter().collect())
}

/// Commits what the hold says is due, in one transaction. Returns false
/// when a dependency failed; the group is then handed back.
async fn commit_due(deps: &Deps, holds: &mut Holds) -> bool {
    let group = holds.take_due();
    if group.is_empty() {
        holds.settle().await;
        return true;
    }
    commit(deps, holds, group).await
}

async fn commit(deps: &Deps, holds: &mut Holds, group: Vec<HeldBallot>) -> bool {
    let started = Instant::now();
    metrics::histogram!("tally_worker_batch_size").record(group.len() as f64);
    let commands: Vec<VoteCommand> = group.iter().map(|b| b.command.clone()).collect();
    let outcome = match record(&deps.db, &commands).await {
        Ok(outcome) => outcome,
        Err(e) => {
            tracing::warn!(
                error = format!("{e:#}"),
                ballots = commands.len(),
                "recording failed; group handed back"
            );
            metrics::counter!("tally_worker_failures_total", "stage" => "postgres").increment(1);
            // Handed back, not held again: the commit may have succeeded
            // unseen (a connection lost at COMMIT), and a redelivery is
            // checked against the record before it can count in a group.
            hand_back(group.iter().map(|b| &b.message)).await;
            holds.settle().await;
            return false;
        }
    };
    if let Err(e) =
        tally_common::tally::apply(&deps.redis, &deps.keys, &outcome.totals, &outcome.voters, false).await
    {
        // Postgres has the group; its redelivery is settled at once (see
        // `take`) and rewrites Redis from Postgres's totals.
        tracing::warn!(error = format!("{e:#}"), "tally write failed; group handed back");
        metrics::counter!("tally_worker_failures_total", "stage" => "redis").increment(1);
        hand_back(group.iter().map(|b| &b.message)).await;
        holds.settle().await;
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
    let acks = group.iter().map(|b| b.message.ack());
    for result in futures_util::future::join_all(acks).await {
        if let Err(e) = result {
            // Harmless: the ballot is recorded; a redelivery is settled.
            tracing::debug!(error = %e, "ack not sent");
        }
    }
    holds.settle().await;
    metrics::histogram!("tally_worker_batch_duration_seconds").record(started.elapsed().as_secs_f64());
    true
}

async fn hand_back<'a>(messages: impl Iterator<Item = &'a Message>) {
    let naks = messages.map(|m| m.ack_with(AckKind::Nak(Some(RETRY_DELAY))));
    futures_util::future::join_all(naks).await;
}

/// A message no worker can open or check is never dropped: it is copied
/// whole, headers and all, to the quarantine stream for an operator, noted
/// by subject and error (never its bytes or size), and only then acked.
async fn quarantine(deps: &Deps, message: Message, error: String) {
    metrics::counter!("tally_dead_letters_total").increment(1);
    tracing::warn!(subject = %message.subject, error = %error, "ballot quarantined: it cannot be opened or checked");
    let election = message.subject.rsplit('.').next().unwrap_or("unknown").to_string();
    let subject = tally_common::bus::quarantine_subject(&deps.settings.nats, &election);
    // Every header but the dedup id, which would make the quarantine drop
    // a second copy of the same citizen's message.
    let mut headers = async_nats::HeaderMap::new();
    for (name, values) in message.headers.iter().flat_map(|h| h.iter()) {
        if *name != async_nats::header::NATS_MESSAGE_ID {
            for value in values {
                headers.append(name.clone(), value.clone());
            }
        }
    }
    let kept = async {
        deps.jetstream.publish_with_headers(subject, headers, message.payload.clone()).await?.await?;
        sqlx::query("INSERT INTO dead_letters (subject, error) VALUES ($1, $2)")
            .bind(message.subject.as_str())
            .bind(&error)
            .execute(&deps.db)
            .await?;
        anyhow::Ok(())
    }
    .await;
    let kind = match kept {
        Ok(()) => AckKind::Ack,
        Err(e) => {
            tracing::warn!(error = format!("{e:#}"), "quarantine failed; the message stays in the queue");
            AckKind::Nak(Some(RETRY_DELAY))
        }
    };
    if let Err(e) = message.ack_with(kind).await {
        tracing::debug!(error = %e, "quarantine ack not sent");
    }
}
