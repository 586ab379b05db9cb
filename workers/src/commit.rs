//! Committing one group of ballots, in stages: recorded in Postgres, its
//! tallies published to Redis, then acked. Each stage takes the one before
//! by value, so no stage can run out of order, and a worker that dies
//! between two stages leaves its ballots unacked: the broker redelivers
//! them, they are found settled (see `consume::admit`) and recording them
//! again rewrites Redis from Postgres. The model test drives these stages
//! one at a time, dying and stalling between them (tests/it/model.rs).

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use async_nats::jetstream::{AckKind, Message};
use tally_domain::ballot::VoteCommand;
use tally_platform::Deps;
use uuid::Uuid;

use crate::hold::{HeldBallot, Holds};
use crate::record::{self, BatchOutcome, Fate, Refusal, record};

/// How long a failed group waits before the broker offers it again.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// Why a group went no further.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Halt {
    /// A dependency failed; the group went back to the broker whole.
    Failed,
    /// Postgres refused the data of some ballots; they were rejected and
    /// the rest returned (see `Origin`), to be judged again.
    Isolated,
}

/// Where a group came from, and so where its good ballots go when a bad
/// one is taken out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    /// Out of the hold: the rest goes back to it.
    Hold,
    /// Already decided (see `consume::admit`): the rest goes back to the broker.
    Decided,
}

/// A group about to be recorded.
pub struct Group {
    ballots: Vec<HeldBallot>,
    origin: Origin,
    started: Instant,
}

/// Recorded in Postgres; Redis not yet written.
pub struct Recorded {
    group: Group,
    outcome: BatchOutcome,
}

/// Recorded, and its tallies in Redis; not yet acked.
pub struct Published {
    group: Group,
    outcome: BatchOutcome,
}

impl Group {
    /// Ballots whose fate is already known: recorded again, they add no
    /// row, and Redis is rewritten from Postgres's totals.
    pub fn decided(ballots: Vec<HeldBallot>) -> Group {
        Group { ballots, origin: Origin::Decided, started: Instant::now() }
    }

    /// What the hold says is due now, if anything.
    pub fn due(holds: &mut Holds) -> Option<Group> {
        let ballots = holds.take_due();
        (!ballots.is_empty()).then(|| Group { ballots, origin: Origin::Hold, started: Instant::now() })
    }

    pub fn messages(&self) -> impl Iterator<Item = &Message> {
        self.ballots.iter().filter_map(HeldBallot::handle)
    }

    /// One Postgres transaction for the whole group (see `record`), each
    /// ballot judged against its election's fence as the stream has it now.
    #[tracing::instrument(name = "record", skip_all, fields(ballots = self.ballots.len(), elections = ?elections(&self.ballots)))]
    pub async fn record(self, deps: &Deps, holds: &mut Holds) -> Result<Recorded, Halt> {
        metrics::histogram!("tally_worker_batch_size").record(self.ballots.len() as f64);
        let commands: Vec<VoteCommand> = self.ballots.iter().map(|b| b.command.clone()).collect();
        let late = match late(deps, &self.ballots).await {
            Ok(late) => late,
            Err(e) => {
                tracing::warn!(error = format!("{e:#}"), "cannot read fences; group handed back");
                metrics::counter!("tally_worker_failures_total", "stage" => "nats").increment(1);
                return Err(give_back(holds, &self.ballots).await);
            }
        };
        match record(&deps.db, &commands, &late).await {
            Ok(outcome) => Ok(Recorded { group: self, outcome }),
            Err(e) if matches!(record::refusal(&e), Refusal::Data(_)) => Err(self.isolate(deps, holds).await),
            Err(e) => {
                tracing::warn!(error = format!("{e:#}"), "recording failed; group handed back");
                metrics::counter!("tally_worker_failures_total", "stage" => "postgres").increment(1);
                // Handed back, not held again: the commit may have succeeded
                // unseen (a connection lost at COMMIT), and a redelivery is
                // checked against the record before it can count in a group.
                Err(give_back(holds, &self.ballots).await)
            }
        }
    }

    /// Postgres refused the group for the data of some ballot: finds the
    /// culprits, rejects each with a reason its voter can read, and returns
    /// the others. Savepoints would find them faster, but each would give
    /// its rows a transaction id of their own (see `record`).
    async fn isolate(self, deps: &Deps, holds: &mut Holds) -> Halt {
        let commands: Vec<VoteCommand> = self.ballots.iter().map(|b| b.command.clone()).collect();
        let culprits = match culprits(deps, &commands).await {
            Ok(culprits) if !culprits.is_empty() => culprits,
            found => {
                let error =
                    found.err().map_or("no single ballot is refused alone".into(), |e| format!("{e:#}"));
                tracing::warn!(error, "a refused group could not be split; handed back");
                metrics::counter!("tally_worker_failures_total", "stage" => "postgres").increment(1);
                return give_back(holds, &self.ballots).await;
            }
        };
        let rejected: Vec<(&VoteCommand, &'static str)> =
            culprits.iter().map(|(i, reason)| (&commands[*i], *reason)).collect();
        match record::reject(&deps.db, &rejected).await {
            Ok(released) => release(deps, &released).await,
            Err(e) => {
                tracing::warn!(error = format!("{e:#}"), "cannot reject refused ballots; group handed back");
                return give_back(holds, &self.ballots).await;
            }
        }
        for (_, reason) in &culprits {
            tracing::warn!(reason, "a ballot Postgres refuses was rejected");
            metrics::counter!("tally_votes_rejected_total", "reason" => *reason).increment(1);
        }
        let (refused, rest): (Vec<_>, Vec<_>) =
            self.ballots.into_iter().enumerate().partition(|(i, _)| culprits.iter().any(|(c, _)| c == i));
        ack(refused.iter().filter_map(|(_, b)| b.handle())).await;
        let rest: Vec<HeldBallot> = rest.into_iter().map(|(_, b)| b).collect();
        match self.origin {
            Origin::Hold => holds.restore(rest),
            Origin::Decided => hand_back(rest.iter().filter_map(HeldBallot::handle)).await,
        }
        Halt::Isolated
    }
}

impl Recorded {
    pub fn messages(&self) -> impl Iterator<Item = &Message> {
        self.group.messages()
    }

    /// Writes the absolute totals Postgres committed, and the voter set.
    /// Redis keeps the newest version it has seen, so a stalled worker
    /// publishing late cannot move a tally back.
    #[tracing::instrument(name = "publish", skip_all, fields(elections = ?elections(&self.group.ballots)))]
    pub async fn publish(self, deps: &Deps, holds: &mut Holds) -> Result<Published, Halt> {
        let Recorded { group, outcome } = self;
        if let Err(e) =
            tally_platform::tallies::apply(&deps.redis, &deps.keys, &outcome.totals, &outcome.voters, false)
                .await
        {
            // Postgres has the group; its redelivery is settled at once (see
            // `consume::admit`) and rewrites Redis from Postgres's totals.
            tracing::warn!(error = format!("{e:#}"), "tally write failed; group handed back");
            metrics::counter!("tally_worker_failures_total", "stage" => "redis").increment(1);
            return Err(give_back(holds, &group.ballots).await);
        }
        release(deps, &outcome.released).await;
        Ok(Published { group, outcome })
    }
}

impl Published {
    pub fn messages(&self) -> impl Iterator<Item = &Message> {
        self.group.messages()
    }

    /// Last of all: an ack before Redis is written would leave a tally
    /// behind that no redelivery repairs.
    #[tracing::instrument(name = "ack", skip_all, fields(ballots = self.group.ballots.len()))]
    pub async fn ack(self, holds: &mut Holds) {
        for fate in &self.outcome.fates {
            match fate {
                Fate::Recorded => metrics::counter!("tally_votes_recorded_total").increment(1),
                Fate::AlreadyRecorded => {
                    metrics::counter!("tally_votes_duplicates_skipped_total").increment(1)
                }
                Fate::Rejected(reason) => {
                    metrics::counter!("tally_votes_rejected_total", "reason" => *reason).increment(1)
                }
            }
        }
        ack(self.group.messages()).await;
        holds.settle().await;
        metrics::histogram!("tally_worker_batch_duration_seconds")
            .record(self.group.started.elapsed().as_secs_f64());
    }
}

/// The three stages in their order.
pub async fn commit(deps: &Deps, holds: &mut Holds, group: Group) -> Result<(), Halt> {
    group.record(deps, holds).await?.publish(deps, holds).await?.ack(holds).await;
    Ok(())
}

/// The elections a group touches, for its span.
fn elections(ballots: &[HeldBallot]) -> BTreeSet<i64> {
    ballots.iter().map(|b| b.command.election_id).collect()
}

/// For each ballot, whether the broker stored it after its election's
/// first fence. Read from the stream itself, at commit time: a fence
/// stored before a ballot we hold is always found.
pub async fn late(deps: &Deps, group: &[HeldBallot]) -> anyhow::Result<Vec<bool>> {
    let settings = &deps.settings.nats;
    let votes = tally_platform::fence::votes_stream(&deps.jetstream, settings).await?;
    let mut fences: HashMap<i64, Option<u64>> = HashMap::new();
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
    if let Err(e) = tally_platform::voters::release_rejected(&deps.redis, &deps.keys, voters).await {
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
async fn give_back(holds: &mut Holds, ballots: &[HeldBallot]) -> Halt {
    hand_back(ballots.iter().filter_map(HeldBallot::handle)).await;
    holds.settle().await;
    Halt::Failed
}

pub(crate) async fn hand_back<'a>(messages: impl Iterator<Item = &'a Message>) {
    let naks = messages.map(|m| m.ack_with(AckKind::Nak(Some(RETRY_DELAY))));
    futures_util::future::join_all(naks).await;
}
