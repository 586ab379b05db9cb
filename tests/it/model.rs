//! Property test: random interleavings of submissions, duplicates, two
//! workers holding ballots (issue 15), workers dying or stalling between
//! any two stages of a commit and while holding, redeliveries, restarts,
//! Redis flushes and the election's close always end with Postgres, Redis
//! (before any reconcile) and a simple model of "one ballot per voter" in
//! agreement, with every group committed before the close holding more
//! than K ballots and none after it fewer than K (unless the election had
//! fewer). After every operation, Redis is never ahead of Postgres, never
//! moves back, and at Postgres's version holds Postgres's totals.
//!
//! Ballots are sealed and published exactly as the API does. The workers
//! are the product's own code, two of them on the one durable consumer,
//! each with its own advisory-lock connection: `consume::step` and
//! `consume::on_tick`, or, to stop between stages, the same `Round` and
//! commit stages walked one at a time (see `worker`).

mod found;
mod rewritten;
mod worker;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use sqlx::PgPool;
use tally_domain::ballot::VoteCommand;
use tally_domain::seal::Sealer;
use tally_platform::Deps;
use tally_platform::nats::{self, Stored};
use time::OffsetDateTime;
use uuid::Uuid;

use self::worker::{Stage, Worker};
use crate::helpers::{Cleanup, ElectionSpec, Namespace, RUNNERS, add_citizen, insert_election};

const VOTERS: i64 = 8;
const WORKERS: usize = 2;
/// The shortest the configuration allows, so a worker killed without
/// handing back its ballots costs the test only this long; held ballots
/// are kept alive by the workers' ticks (`Op::Tick` and the final drain).
const ACK_WAIT_SECS: u64 = 3;
/// Longer than the delay with which a worker hands back another's ballots.
const HAND_BACK_WAIT: Duration = Duration::from_millis(600);

#[derive(Clone, Debug)]
enum Op {
    /// A voter submits; `resubmit` simulates a retry after the broker's
    /// duplicate window (another message id), so the broker cannot drop it.
    Submit {
        voter: i64,
        choice: usize,
        resubmit: bool,
    },
    /// A worker's step over a batch of at most `max` messages.
    Step {
        worker: usize,
        max: usize,
    },
    /// A worker's clock tick: keep-alive, re-read elections, commit what is due.
    Tick {
        worker: usize,
    },
    /// A worker dies at `at` in a step over at most `max` messages.
    Crash {
        worker: usize,
        max: usize,
        at: Stage,
    },
    /// A worker stops at `at` in a step and waits there (a long pause, a
    /// slow network) while the others go on; its next operation resumes it.
    Stall {
        worker: usize,
        max: usize,
        at: Stage,
    },
    Resume {
        worker: usize,
    },
    /// A worker is killed, stalled or holding: no nak, no unlock; the
    /// broker redelivers after the ack wait and Postgres frees its lock
    /// when the connection drops.
    Kill {
        worker: usize,
    },
    /// A graceful restart: the step under way ends, everything held is
    /// handed back, then a new process.
    Restart {
        worker: usize,
    },
    /// Time passes, so ballots handed back with a delay are offered again.
    Wait,
    FlushRedis,
    /// An admin closes the election (`closed_at = now()`).
    Close,
}

fn op() -> impl Strategy<Value = Op> {
    let worker = 0..WORKERS;
    let stage = || prop_oneof![Just(Stage::Ready), Just(Stage::Recorded), Just(Stage::Published)];
    prop_oneof![
        16 => (1..=VOTERS, 0..2usize, proptest::bool::weighted(0.3))
            .prop_map(|(voter, choice, resubmit)| Op::Submit { voter, choice, resubmit }),
        10 => (worker.clone(), 1..8usize).prop_map(|(worker, max)| Op::Step { worker, max }),
        3 => worker.clone().prop_map(|worker| Op::Tick { worker }),
        5 => (worker.clone(), 1..8usize, stage()).prop_map(|(worker, max, at)| Op::Crash { worker, max, at }),
        4 => (worker.clone(), 1..8usize, stage()).prop_map(|(worker, max, at)| Op::Stall { worker, max, at }),
        2 => worker.clone().prop_map(|worker| Op::Resume { worker }),
        1 => worker.clone().prop_map(|worker| Op::Kill { worker }),
        1 => worker.prop_map(|worker| Op::Restart { worker }),
        2 => Just(Op::Wait),
        2 => Just(Op::FlushRedis),
        1 => Just(Op::Close),
    ]
}

#[test]
fn random_interleavings_converge_on_one_ballot_per_voter() {
    let config = ProptestConfig {
        cases: 8,
        failure_persistence: None,
        max_shrink_iters: 64,
        max_shrink_time: 30_000,
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runner
        .run(&(2..=3i32, proptest::collection::vec(op(), 1..40)), |(k, ops)| {
            runtime.block_on(run_case(k, ops));
            Ok(())
        })
        .unwrap();
}

/// A ballot the broker stored.
#[derive(Clone, Copy, Debug)]
struct Cast {
    voter: i64,
    runner: i64,
    /// Accepted before the close, so it must be counted or refused as a
    /// second ballot; after the close it must be refused as late.
    in_time: bool,
}

/// What the election looked like when it closed.
struct Closed {
    /// Voter-roll groups (transaction ids) committed before the close.
    groups_before: BTreeSet<i64>,
}

async fn run_case(k: i32, ops: Vec<Op>) {
    let ns = Namespace::new();
    let _cleanup = Cleanup(ns.clone());
    let db = ns.create_database().await;
    let election = insert_election(&db, ElectionSpec { anonymity_set: k, ..ElectionSpec::default() }).await;
    for voter in 1..=VOTERS {
        add_citizen(&db, voter, "Capital", "1990-01-01").await;
    }
    let deps = workers_deps(&ns).await;
    let settings = deps.settings.clone();
    let ack_wait = Duration::from_secs(ACK_WAIT_SECS);
    // One sealing context, as one API process has.
    let sealer = settings.sealing.sealer().unwrap();
    let opener = settings.sealing.opener().unwrap();
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        workers.push(Worker::start(&deps).await);
    }
    let mut stored: HashMap<Uuid, Cast> = HashMap::new();
    let mut resubmissions = 0;
    let mut closed: Option<Closed> = None;
    // Postgres's tally version when Redis was last flushed.
    let mut flushed_at_version: Option<i64> = None;
    // The newest version Redis has shown since it was last flushed.
    let mut redis_version = 0;

    for op in ops {
        match op.clone() {
            Op::Submit { voter, choice, resubmit } => {
                let command = VoteCommand {
                    receipt: Uuid::new_v4(),
                    election_id: election,
                    citizen_id: voter,
                    selections: vec![RUNNERS[choice]],
                    accepted_at: OffsetDateTime::now_utc(),
                };
                let outcome = publish(
                    &deps,
                    &sealer,
                    &command,
                    resubmit.then(|| {
                        resubmissions += 1;
                        format!("{}:resubmitted:{resubmissions}", command.msg_id())
                    }),
                )
                .await;
                if matches!(outcome, Stored::New(_)) {
                    let cast = Cast { voter, runner: RUNNERS[choice], in_time: closed.is_none() };
                    stored.insert(command.receipt, cast);
                }
            }
            Op::Step { worker, max } => workers[worker].step(&deps, &opener, max).await,
            Op::Tick { worker } => workers[worker].tick(&deps, ack_wait).await,
            Op::Crash { worker, max, at } => {
                workers[worker].stall(&deps, &opener, max, at).await;
                let dead = std::mem::replace(&mut workers[worker], Worker::start(&deps).await);
                dead.crash().await;
            }
            Op::Stall { worker, max, at } => workers[worker].stall(&deps, &opener, max, at).await,
            Op::Resume { worker } => workers[worker].resume(&deps).await,
            Op::Kill { worker } => {
                // Dropped as is: its lock connection closes, nothing is acked.
                workers[worker] = Worker::start(&deps).await;
            }
            Op::Restart { worker } => {
                let old = std::mem::replace(&mut workers[worker], Worker::start(&deps).await);
                old.stop(&deps).await;
            }
            Op::Wait => tokio::time::sleep(HAND_BACK_WAIT).await,
            Op::FlushRedis => {
                let _: () = redis::cmd("DEL")
                    .arg(deps.keys.tally(election))
                    .query_async(&mut deps.redis.clone())
                    .await
                    .unwrap();
                flushed_at_version = Some(tally_version(&db, election).await);
                redis_version = 0;
            }
            Op::Close => {
                if closed.is_none() {
                    closed = Some(close(&deps, election).await);
                }
            }
        }
        // One worker owns the election's held set at a time, and while the
        // election is open a step or tick never leaves more than 2K voters
        // held (more are committed); one stalled mid-step may. After the
        // end, the owner gathers stragglers for the one flush, so it may
        // hold more.
        let holding: Vec<usize> = workers.iter().map(|w| w.holds.voters()).collect();
        assert!(
            holding.iter().filter(|n| **n > 0).count() <= 1,
            "two workers hold ballots of one election: {holding:?}"
        );
        assert!(
            closed.is_some() || workers.iter().all(|w| w.is_stalled() || w.holds.voters() <= 2 * k as usize),
            "more than 2K = {} held while open: {holding:?}",
            2 * k
        );
        redis_version = redis_follows_postgres(&deps, election, redis_version, &op).await;
    }

    // The end: the election closes, and healthy workers drain the queue.
    if closed.is_none() {
        closed = Some(close(&deps, election).await);
    }
    let closed = closed.unwrap();
    for w in &mut workers {
        w.resume(&deps).await;
    }
    // The close flush: it waits for every straggler (handed back, not yet
    // delivered, or with a worker that died), then commits them all.
    let deadline = Instant::now() + Duration::from_secs(20);
    for round in 0.. {
        // Both workers pull, first one then the other, as live workers'
        // waiting pulls take turns.
        if round % 2 == 1 {
            workers.reverse();
        }
        for w in &mut workers {
            w.step(&deps, &opener, 50).await;
            w.tick(&deps, ack_wait).await;
        }
        let left = queued(&deps).await;
        if left == 0 {
            assert!(workers.iter().all(|w| w.holds.count() == 0), "nothing is held once the stream is empty");
            break;
        }
        let holding: Vec<usize> = workers.iter().map(|w| w.holds.count()).collect();
        assert!(
            Instant::now() < deadline,
            "{left} ballots never left the stream after the close; held {holding:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The model: of each voter's ballots accepted in time, exactly one is
    // recorded; every other one is refused as a second ballot, and every
    // ballot accepted after the close as late.
    let recorded: Vec<Uuid> =
        sqlx::query_scalar("SELECT receipt FROM recorded_receipts WHERE election_id = $1")
            .bind(election)
            .fetch_all(&db)
            .await
            .unwrap();
    let rejected: HashMap<Uuid, String> =
        sqlx::query_as("SELECT receipt, reason FROM rejected_ballots WHERE election_id = $1")
            .bind(election)
            .fetch_all(&db)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let voters_in_time: BTreeSet<i64> = stored.values().filter(|c| c.in_time).map(|c| c.voter).collect();
    let mut counted_voters = BTreeSet::new();
    let mut model: BTreeMap<i64, i64> = RUNNERS.iter().map(|r| (*r, 0)).collect();
    let mut chosen: Vec<Vec<i64>> = Vec::new();
    for receipt in &recorded {
        let cast =
            stored.get(receipt).unwrap_or_else(|| panic!("recorded receipt {receipt} was never stored"));
        assert!(cast.in_time, "a ballot accepted after the close was recorded");
        assert!(counted_voters.insert(cast.voter), "voter {} counted twice", cast.voter);
        assert!(!rejected.contains_key(receipt), "receipt {receipt} both recorded and rejected");
        *model.get_mut(&cast.runner).unwrap() += 1;
        chosen.push(vec![cast.runner]);
    }
    assert_eq!(counted_voters, voters_in_time, "every voter who submitted in time is counted once");
    for (receipt, cast) in stored.iter().filter(|(r, _)| !recorded.contains(r)) {
        let expected = if cast.in_time { "already_voted" } else { "election_closed" };
        assert_eq!(rejected.get(receipt).map(String::as_str), Some(expected), "fate of {receipt} ({cast:?})");
    }
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters").fetch_one(&db).await.unwrap();
    assert_eq!(dead, 0, "no sealed ballot was quarantined");

    let roll: BTreeSet<i64> = sqlx::query_scalar("SELECT citizen_id FROM voter_roll WHERE election_id = $1")
        .bind(election)
        .fetch_all(&db)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(roll, counted_voters, "the voter roll names exactly the counted voters");
    let mut in_box: Vec<Vec<i64>> =
        sqlx::query_scalar("SELECT selections FROM ballot_box WHERE election_id = $1")
            .bind(election)
            .fetch_all(&db)
            .await
            .unwrap();
    in_box.sort();
    chosen.sort();
    assert_eq!(in_box, chosen, "the ballot box holds the counted choices (as a multiset)");

    let pg: BTreeMap<i64, i64> =
        sqlx::query_as("SELECT citizen_id, total_votes FROM runners WHERE election_id = $1")
            .bind(election)
            .fetch_all(&db)
            .await
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(pg, model, "Postgres equals the model");
    let (version, turnout): (i64, i64) =
        sqlx::query_as("SELECT tally_version, turnout FROM elections WHERE election_id = $1")
            .bind(election)
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(turnout, counted_voters.len() as i64, "Postgres's turnout");

    // Redis, before any reconcile: the held ballots and the close flush
    // reached it. Only a flush of Redis after the last commit may leave it
    // empty (no commit since to rewrite it); it is then never partial.
    let snapshot = tally_platform::tallies::read(&deps.redis, &deps.keys, election).await.unwrap();
    let cached: BTreeMap<i64, i64> =
        RUNNERS.iter().map(|r| (*r, snapshot.votes.get(r).copied().unwrap_or(0))).collect();
    let lost = snapshot == tally_platform::tallies::Snapshot::default()
        && flushed_at_version == Some(version)
        && turnout > 0;
    if !lost {
        assert_eq!(cached, model, "Redis equals the model before any reconcile");
        assert_eq!(snapshot.turnout, turnout, "Redis's turnout before any reconcile");
        assert_eq!(snapshot.version, version, "Redis's version before any reconcile");
    }

    tally_workers::reconcile::reconcile(&deps, Some(election)).await.unwrap();
    let snapshot = tally_platform::tallies::read(&deps.redis, &deps.keys, election).await.unwrap();
    let cached: BTreeMap<i64, i64> =
        RUNNERS.iter().map(|r| (*r, snapshot.votes.get(r).copied().unwrap_or(0))).collect();
    assert_eq!(cached, model, "Redis equals the model after a reconcile");
    assert_eq!(snapshot.turnout, turnout);
    let voter_set: BTreeSet<i64> = redis::cmd("SMEMBERS")
        .arg(deps.keys.voters(election))
        .query_async(&mut deps.redis.clone())
        .await
        .unwrap();
    assert_eq!(voter_set, counted_voters, "Redis's voter set after a reconcile");

    // Groups: a committed group is one transaction, and shares its xmin
    // across the three tables it writes.
    let groups = groups(&db, "voter_roll", election).await;
    assert_eq!(groups, self::groups(&db, "ballot_box", election).await, "ballot-box groups match the roll's");
    assert_eq!(
        groups,
        self::groups(&db, "recorded_receipts", election).await,
        "receipt groups match the roll's"
    );
    assert_eq!(version, groups.len() as i64, "one tally version per committed group");
    let k = i64::from(k);
    let sizes = |before_close: bool| -> Vec<i64> {
        let committed_before = |xmin: &i64| closed.groups_before.contains(xmin);
        groups.iter().filter(|(x, _)| committed_before(x) == before_close).map(|(_, n)| *n).collect()
    };
    let (before, after) = (sizes(true), sizes(false));
    // Secrecy (checked last, so a failure here means all of the above held):
    // a commit before the end leaves K held and takes only the excess over
    // 2K, so each group hides its voters among more than K.
    for n in &before {
        assert!(
            *n > k,
            "a group committed before the close holds {n} ballots, not more than K = {k} \
             (groups by xmin: {groups:?})"
        );
    }
    // At the end everything still held is flushed at once: at least K,
    // unless the whole election had fewer (then it is one group of all).
    for n in &after {
        assert!(
            *n >= k.min(turnout),
            "a group committed after the close holds {n} ballots, fewer than K = {k} (turnout {turnout}; \
             groups before the close: {before:?}, after: {after:?})"
        );
    }
}

/// The namespace's streams and clients, with the model's short ack wait.
async fn workers_deps(ns: &Namespace) -> Deps {
    let mut settings = ns.settings();
    settings.nats.ack_wait_secs = ACK_WAIT_SECS;
    crate::helpers::provision_streams(&settings).await;
    Deps::connect(
        Arc::new(settings),
        &tally_platform::readiness::Readiness::default(),
        &tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap()
    .unwrap()
}

/// Seals and publishes as the API does, optionally under another message id.
async fn publish(deps: &Deps, sealer: &Sealer, command: &VoteCommand, msg_id: Option<String>) -> Stored {
    let mut sealed = command.seal(sealer, 1);
    if let Some(id) = msg_id {
        sealed.headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
    }
    let subject = nats::ballot_subject(&deps.settings.nats, command.election_id);
    nats::publish_acked(&deps.jetstream, subject, sealed.headers, sealed.payload, Duration::from_secs(2))
        .await
        .unwrap()
}

/// Closes the election as an admin would, and raises its fence as a
/// worker's next round would: ballots stored from here on are late.
/// Notes the groups committed so far.
async fn close(deps: &Deps, election: i64) -> Closed {
    sqlx::query("UPDATE elections SET closed_at = now(), updated_at = now() WHERE election_id = $1")
        .bind(election)
        .execute(&deps.db)
        .await
        .unwrap();
    tally_workers::close::step(deps, &deps.settings.sealing.opener().unwrap()).await.unwrap();
    Closed { groups_before: groups(&deps.db, "voter_roll", election).await.into_keys().collect() }
}

/// A table's rows of the election by the transaction that wrote them.
async fn groups(db: &PgPool, table: &str, election: i64) -> BTreeMap<i64, i64> {
    let rows: Vec<(String, i64)> = sqlx::query_as(&format!(
        "SELECT xmin::text, count(*) FROM {table} WHERE election_id = $1 GROUP BY 1"
    ))
    .bind(election)
    .fetch_all(db)
    .await
    .unwrap();
    rows.into_iter().map(|(xmin, n)| (xmin.parse().unwrap(), n)).collect()
}

async fn tally_version(db: &PgPool, election: i64) -> i64 {
    sqlx::query_scalar("SELECT tally_version FROM elections WHERE election_id = $1")
        .bind(election)
        .fetch_one(db)
        .await
        .unwrap()
}

/// Ballots no worker has acked yet (the stream is a work queue).
async fn queued(deps: &Deps) -> u64 {
    tally_platform::nats::ballots_waiting(&deps.jetstream, &deps.settings.nats).await.unwrap()
}

/// Redis, between operations and with no reconcile: never ahead of
/// Postgres, never back from a version it has shown (`seen`, unless
/// flushed since), and at Postgres's version exactly Postgres's totals.
/// Returns the version it shows now.
async fn redis_follows_postgres(deps: &Deps, election: i64, seen: i64, op: &Op) -> i64 {
    let redis = tally_platform::tallies::read(&deps.redis, &deps.keys, election).await.unwrap();
    let (version, turnout): (i64, i64) =
        sqlx::query_as("SELECT tally_version, turnout FROM elections WHERE election_id = $1")
            .bind(election)
            .fetch_one(&deps.db)
            .await
            .unwrap();
    assert!(
        redis.version <= version,
        "after {op:?}: Redis at version {} is ahead of Postgres's {version}",
        redis.version
    );
    assert!(
        redis.version >= seen,
        "after {op:?}: Redis went back from version {seen} to {} (Postgres is at {version})",
        redis.version
    );
    if redis.version == version && version > 0 {
        let votes: HashMap<i64, i64> =
            sqlx::query_as("SELECT citizen_id, total_votes FROM runners WHERE election_id = $1")
                .bind(election)
                .fetch_all(&deps.db)
                .await
                .unwrap()
                .into_iter()
                .collect();
        assert_eq!(
            (redis.turnout, &redis.votes),
            (turnout, &votes),
            "after {op:?}: Redis at Postgres's version {version} holds other totals"
        );
    }
    redis.version
}
