//! The consuming loop: open, hold, commit due groups, publish tallies, ack.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use async_nats::jetstream::{AckKind, Message};
use futures_util::StreamExt;
use tally_domain::ballot::VoteCommand;
use tally_domain::seal::Opener;
use tally_platform::Deps;
use tally_platform::retry::{Backoff, until_ok};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::hold::{HeldBallot, Holds};
use crate::record::{self, Fate, Refusal, record};

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
    if !decided.is_empty() && matches!(commit(deps, holds, decided, Origin::Decided).await, Committed::Failed)
    {
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
            Err(error) => crate::quarantine::set_aside(deps, message, error).await,
        }
    }
    let commands: Vec<&VoteCommand> = opened.iter().map(|b| &b.command).collect();
    let settled = match settled_receipts(deps, &commands).await {
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
/// by an earlier delivery (see below for keyed receipts), or from a
/// citizen already on the voter roll.
pub(crate) async fn settled_receipts(deps: &Deps, ballots: &[&VoteCommand]) -> anyhow::Result<HashSet<Uuid>> {
    if ballots.is_empty() {
        return Ok(HashSet::new());
    }
    let receipts: Vec<Uuid> = ballots.iter().map(|c| c.receipt).collect();
    let elections: Vec<i64> = ballots.iter().map(|c| c.election_id).collect();
    let citizens: Vec<i64> = ballots.iter().map(|c| c.citizen_id).collect();
    let found: Vec<Uuid> = sqlx::query_scalar(
        "SELECT t.r FROM UNNEST($1::uuid[], $2::bigint[], $3::bigint[]) AS t(r, e, c)
         WHERE EXISTS (SELECT 1 FROM recorded_receipts x WHERE x.receipt = t.r)
            OR (EXISTS (SELECT 1 FROM rejected_ballots x WHERE x.receipt = t.r)
                -- A receipt derived from an Idempotency-Key (version 8)
                -- names every copy of its ballot: one copy rejected as
                -- late says nothing of another stored before the fence.
                AND get_byte(uuid_send(t.r), 6) >> 4 <> 8)
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
/// when a dependency failed; the group is then handed back. A group that
/// lost a refused ballot is judged again; each pass removes one at least.
async fn commit_due(deps: &Deps, holds: &mut Holds) -> bool {
    loop {
        let group = holds.take_due();
        if group.is_empty() {
            holds.settle().await;
            return true;
        }
        match commit(deps, holds, group, Origin::Hold).await {
            Committed::Yes => return true,
            Committed::Failed => return false,
            Committed::Isolated => continue,
        }
    }
}

/// Where a group came from, and so where its good ballots go when a bad
/// one is taken out.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// Out of the hold: the rest goes back to it.
    Hold,
    /// Already decided (see `admit`): the rest goes back to the broker.
    Decided,
}

enum Committed {
    Yes,
    Failed,
    /// Postgres refused the data of some ballots; they were rejected and
    /// the rest returned (see `Origin`).
    Isolated,
}

async fn commit(deps: &Deps, holds: &mut Holds, group: Vec<HeldBallot>, origin: Origin) -> Committed {
    let started = Instant::now();
    metrics::histogram!("tally_worker_batch_size").record(group.len() as f64);
    let commands: Vec<VoteCommand> = group.iter().map(|b| b.command.clone()).collect();
    let late = match late(deps, &group).await {
        Ok(late) => late,
        Err(e) => {
            tracing::warn!(error = format!("{e:#}"), "cannot read fences; group handed back");
            metrics::counter!("tally_worker_failures_total", "stage" => "nats").increment(1);
            return give_back(holds, &group).await;
        }
    };
    let outcome = match record(&deps.db, &commands, &late).await {
        Ok(outcome) => outcome,
        Err(e) if matches!(record::refusal(&e), Refusal::Data(_)) => {
            return isolate(deps, holds, group, origin).await;
        }
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
            return give_back(holds, &group).await;
        }
    };
    if let Err(e) =
        tally_platform::tallies::apply(&deps.redis, &deps.keys, &outcome.totals, &outcome.voters, false).await
    {
        // Postgres has the group; its redelivery is settled at once (see
        // `take`) and rewrites Redis from Postgres's totals.
        tracing::warn!(error = format!("{e:#}"), "tally write failed; group handed back");
        metrics::counter!("tally_worker_failures_total", "stage" => "redis").increment(1);
        return give_back(holds, &group).await;
    }
    release(deps, &outcome.released).await;
    for fate in &outcome.fates {
        match fate {
            Fate::Recorded => metrics::counter!("tally_votes_recorded_total").increment(1),
            Fate::AlreadyRecorded => metrics::counter!("tally_votes_duplicates_skipped_total").increment(1),
            Fate::Rejected(reason) => {
                metrics::counter!("tally_votes_rejected_total", "reason" => *reason).increment(1)
            }
        }
    }
    ack(group.iter().map(|b| &b.message)).await;
    holds.settle().await;
    metrics::histogram!("tally_worker_batch_duration_seconds").record(started.elapsed().as_secs_f64());
    Committed::Yes
}

/// For each ballot, whether the broker stored it after its election's
/// first fence. Read from the stream itself, at commit time: a fence
/// stored before a ballot we hold is always found.
pub async fn late(deps: &Deps, group: &[HeldBallot]) -> anyhow::Result<Vec<bool>> {
    let settings = &deps.settings.nats;
    let votes = tally_platform::fence::votes_stream(&deps.jetstream, settings).await?;
    let mut fences: std::collections::HashMap<i64, Option<u64>> = std::collections::HashMap::new();
    let mut late = Vec::with_capacity(group.len());
    for ballot in group {
        let election = ballot.command.election_id;
        let fence = match fences.get(&election) {
            Some(fence) => *fence,
            None => {
                let fence = tally_platform::fence::first(&votes, settings, election).await?;
                fences.insert(election, fence);
                fence
            }
        };
        late.push(fence.is_some_and(|f| ballot.stored_at() > f));
    }
    Ok(late)
}

/// Postgres refused the group for the data of some ballot: finds the
/// culprits, rejects each with a reason its voter can read, and returns
/// the others. Savepoints would find them faster, but each would give its
/// rows a transaction id of their own (see `record`).
async fn isolate(deps: &Deps, holds: &mut Holds, group: Vec<HeldBallot>, origin: Origin) -> Committed {
    let commands: Vec<VoteCommand> = group.iter().map(|b| b.command.clone()).collect();
    let culprits = match culprits(deps, &commands).await {
        Ok(culprits) if !culprits.is_empty() => culprits,
        found => {
            let error = found.err().map_or("no single ballot is refused alone".into(), |e| format!("{e:#}"));
            tracing::warn!(
                error,
                ballots = commands.len(),
                "a refused group could not be split; handed back"
            );
            metrics::counter!("tally_worker_failures_total", "stage" => "postgres").increment(1);
            return give_back(holds, &group).await;
        }
    };
    let rejected: Vec<(&VoteCommand, &'static str)> =
        culprits.iter().map(|(i, reason)| (&commands[*i], *reason)).collect();
    match record::reject(&deps.db, &rejected).await {
        Ok(released) => release(deps, &released).await,
        Err(e) => {
            tracing::warn!(error = format!("{e:#}"), "cannot reject refused ballots; group handed back");
            return give_back(holds, &group).await;
        }
    }
    for (_, reason) in &culprits {
        tracing::warn!(reason, "a ballot Postgres refuses was rejected");
        metrics::counter!("tally_votes_rejected_total", "reason" => *reason).increment(1);
    }
    let (refused, rest): (Vec<_>, Vec<_>) =
        group.into_iter().enumerate().partition(|(i, _)| culprits.iter().any(|(c, _)| c == i));
    ack(refused.iter().map(|(_, b)| &b.message)).await;
    let rest: Vec<HeldBallot> = rest.into_iter().map(|(_, b)| b).collect();
    match origin {
        Origin::Hold => holds.restore(rest),
        Origin::Decided => hand_back(rest.iter().map(|b| &b.message)).await,
    }
    Committed::Isolated
}

/// The ballots Postgres refuses on their own, with the reason for each:
/// table by table, halving only the parts a probe (rolled back) finds
/// refused. The ballot box is probed in an order unrelated to the voter
/// roll's, so not even the order of probes in the WAL pairs the two.
async fn culprits(deps: &Deps, commands: &[VoteCommand]) -> anyhow::Result<Vec<(usize, &'static str)>> {
    let mut found: Vec<(usize, &'static str)> = Vec::new();
    for table in [record::Table::VoterRoll, record::Table::BallotBox] {
        let mut order: Vec<usize> =
            (0..commands.len()).filter(|i| !found.iter().any(|(f, _)| f == i)).collect();
        if table == record::Table::BallotBox {
            order.sort_by_cached_key(|_| Uuid::new_v4());
        }
        let mut suspects = vec![order];
        while let Some(part) = suspects.pop() {
            if part.is_empty() {
                continue;
            }
            let ballots: Vec<VoteCommand> = part.iter().map(|&i| commands[i].clone()).collect();
            let Err(e) = record::probe(&deps.db, table, &ballots).await else { continue };
            match record::refusal(&e) {
                Refusal::Transient => return Err(e),
                Refusal::Data(reason) if part.len() == 1 => found.push((part[0], reason)),
                Refusal::Data(_) => {
                    let (left, right) = part.split_at(part.len() / 2);
                    suspects.push(left.to_vec());
                    suspects.push(right.to_vec());
                }
            }
        }
    }
    Ok(found)
}

/// Frees rejected voters in the voter set. Logged only on failure: the
/// voter is then refused as having voted, and can read why on the receipt.
async fn release(deps: &Deps, voters: &[(i64, i64)]) {
    if let Err(e) = tally_platform::tallies::release_voters(&deps.redis, &deps.keys, voters).await {
        tracing::warn!(error = format!("{e:#}"), "rejected voters stay in the voter set");
    }
}

async fn ack<'a>(messages: impl Iterator<Item = &'a Message>) {
    for result in futures_util::future::join_all(messages.map(|m| m.ack())).await {
        if let Err(e) = result {
            // Harmless: the ballot is settled; a redelivery is settled again.
            tracing::debug!(error = %e, "ack not sent");
        }
    }
}

/// A group that could not be committed goes back to the broker whole.
async fn give_back(holds: &mut Holds, group: &[HeldBallot]) -> Committed {
    hand_back(group.iter().map(|b| &b.message)).await;
    holds.settle().await;
    Committed::Failed
}

async fn hand_back<'a>(messages: impl Iterator<Item = &'a Message>) {
    let naks = messages.map(|m| m.ack_with(AckKind::Nak(Some(RETRY_DELAY))));
    futures_util::future::join_all(naks).await;
}
