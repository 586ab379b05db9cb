//! The consuming loop: admit a batch (open, set aside what is already
//! decided, hold the rest), then commit group by group (see `commit`).

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::Message;
use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use futures_util::StreamExt;
use tally_domain::ballot::VoteCommand;
use tally_domain::seal::Opener;
use tally_platform::Deps;
use tally_platform::retry::{Backoff, until_ok};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::commit::{Group, Halt, commit, hand_back};
use crate::hold::{HeldBallot, Holds};

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
#[tracing::instrument(name = "step", skip_all, fields(batch = batch.len()))]
pub async fn step(deps: &Deps, opener: &Opener, holds: &mut Holds, batch: Vec<Message>) -> bool {
    let Some(round) = Round::admit(deps, opener, holds, batch).await else { return false };
    commit_round(deps, holds, round).await
}

/// The clock's step: keeps held ballots alive, re-reads held elections
/// and commits what is due, so an election that ends is flushed even when
/// no ballot arrives.
#[tracing::instrument(name = "tick", level = "debug", skip_all)]
pub async fn on_tick(deps: &Deps, holds: &mut Holds, ack_wait: Duration) -> bool {
    holds.keep_alive(ack_wait).await;
    commit_round(deps, holds, Round::default()).await
}

/// Commits a round's groups one after the other. Returns false when a
/// dependency failed; that group was handed back.
async fn commit_round(deps: &Deps, holds: &mut Holds, mut round: Round) -> bool {
    loop {
        match round.next(deps, holds).await {
            Ok(Some(group)) => {
                if commit(deps, holds, group).await == Err(Halt::Failed) {
                    return false;
                }
            }
            Ok(None) => return true,
            Err(e) => {
                tracing::warn!(error = format!("{e:#}"), "cannot read held elections");
                return false;
            }
        }
    }
}

/// What a step or a tick has yet to commit, group by group: first the
/// ballots admitted already decided, then, with the held elections re-read,
/// what the hold says is due. A group that lost a refused ballot is judged
/// again; each pass removes one at least.
#[derive(Default)]
pub struct Round {
    decided: Vec<HeldBallot>,
    refreshed: bool,
}

impl Round {
    /// Opens each message and takes it into the hold; what cannot be
    /// opened is quarantined. A ballot whose fate is already known (a
    /// redelivery of one recorded or rejected, or a second ballot of a
    /// recorded voter) is kept apart, to be settled at once and never held:
    /// counted in a group, it would leave the group's new voters fewer
    /// than K. `None` when they could not be checked (the batch was then
    /// handed back).
    #[tracing::instrument(name = "admit", skip_all, fields(batch = batch.len()))]
    pub async fn admit(
        deps: &Deps,
        opener: &Opener,
        holds: &mut Holds,
        batch: Vec<Message>,
    ) -> Option<Round> {
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
                tracing::warn!(
                    error = format!("{e:#}"),
                    "cannot check ballots against the record; handed back"
                );
                hand_back(opened.iter().filter_map(HeldBallot::handle)).await;
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
        Some(Round { decided, refreshed: false })
    }

    /// Messages the round has taken and not yet given to a group.
    pub fn messages(&self) -> impl Iterator<Item = &Message> {
        self.decided.iter().filter_map(HeldBallot::handle)
    }

    /// The next group to commit; `None` once nothing is due.
    pub async fn next(&mut self, deps: &Deps, holds: &mut Holds) -> anyhow::Result<Option<Group>> {
        if !self.decided.is_empty() {
            return Ok(Some(Group::decided(std::mem::take(&mut self.decided))));
        }
        if !self.refreshed {
            holds.refresh(deps).await?;
            self.refreshed = true;
        }
        let due = Group::due(holds);
        if due.is_none() {
            holds.settle().await;
        }
        Ok(due)
    }
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
