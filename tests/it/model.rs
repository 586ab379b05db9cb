//! Property test: random interleavings of submissions, duplicates,
//! crashes at every point of a worker's sequence, redeliveries, restarts
//! and Redis flushes always end with Postgres, Redis and a simple model of
//! "one ballot per voter" in agreement.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::AckKind;
use futures_util::StreamExt;
use proptest::prelude::*;
use tally_common::ballot::VoteCommand;
use tally_common::bus::{self, Stored};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::helpers::{Cleanup, ElectionSpec, Namespace, RUNNERS, add_citizen, insert_election};

const VOTERS: i64 = 5;

/// Where a worker dies, if it does.
#[derive(Clone, Copy, Debug)]
enum Crash {
    BeforeCommit,
    AfterCommit,
    AfterRedis,
}

#[derive(Clone, Debug)]
enum Op {
    /// A voter submits; `resubmit` simulates a retry after the broker's
    /// duplicate window, so the broker cannot drop it.
    Submit {
        voter: i64,
        choice: usize,
        resubmit: bool,
    },
    Process {
        max: usize,
        crash: Option<Crash>,
    },
    FlushRedis,
    /// A worker process restarts: a fresh handle on the durable consumer.
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    let crash = prop_oneof![
        Just(None),
        Just(Some(Crash::BeforeCommit)),
        Just(Some(Crash::AfterCommit)),
        Just(Some(Crash::AfterRedis))
    ];
    prop_oneof![
        5 => (1..=VOTERS, 0..2usize, proptest::bool::weighted(0.3))
            .prop_map(|(voter, choice, resubmit)| Op::Submit { voter, choice, resubmit }),
        3 => (1..6usize, crash).prop_map(|(max, crash)| Op::Process { max, crash }),
        1 => Just(Op::FlushRedis),
        1 => Just(Op::Restart),
    ]
}

#[test]
fn random_interleavings_converge_on_one_ballot_per_voter() {
    let config = ProptestConfig { cases: 8, failure_persistence: None, ..ProptestConfig::default() };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runner
        .run(&proptest::collection::vec(op(), 1..30), |ops| {
            runtime.block_on(run_case(ops));
            Ok(())
        })
        .unwrap();
}

async fn run_case(ops: Vec<Op>) {
    let ns = Namespace::new();
    let _cleanup = Cleanup(ns.clone());
    let db = ns.create_database().await;
    let election = insert_election(&db, ElectionSpec::default()).await;
    for voter in 1..=VOTERS {
        add_citizen(&db, voter, "Capital", "1990-01-01").await;
    }
    let settings = Arc::new(ns.settings());
    let deps = tally_common::Deps::connect(
        settings.clone(),
        &tally_common::health::Readiness::default(),
        &tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap()
    .unwrap();
    let mut consumer = tally_workers::consume::consumer(&deps).await.unwrap();
    // Every ballot the broker stored, by receipt: (voter, runner).
    let mut stored: HashMap<Uuid, (i64, i64)> = HashMap::new();
    let mut resubmissions = 0;

    for op in ops {
        match op {
            Op::Submit { voter, choice, resubmit } => {
                let command = VoteCommand {
                    receipt: Uuid::new_v4(),
                    election_id: election,
                    citizen_id: voter,
                    selections: vec![RUNNERS[choice]],
                    accepted_at: OffsetDateTime::now_utc(),
                };
                let msg_id = if resubmit {
                    resubmissions += 1;
                    format!("{}:resubmitted:{resubmissions}", command.msg_id())
                } else {
                    command.msg_id()
                };
                let subject = bus::ballot_subject(&settings.nats, election);
                let outcome = bus::publish_acked(
                    &deps.jetstream,
                    subject,
                    &msg_id,
                    command.encode(),
                    Duration::from_secs(2),
                )
                .await;
                if outcome.unwrap() == Stored::New {
                    stored.insert(command.receipt, (voter, RUNNERS[choice]));
                }
            }
            Op::Process { max, crash } => process(&deps, &consumer, max, crash).await,
            Op::FlushRedis => {
                let _: () = redis::cmd("DEL")
                    .arg(deps.keys.tally(election))
                    .query_async(&mut deps.redis.clone())
                    .await
                    .unwrap();
            }
            Op::Restart => consumer = tally_workers::consume::consumer(&deps).await.unwrap(),
        }
    }
    // Quiet period: healthy workers drain the queue, then a reconcile pass.
    loop {
        process(&deps, &consumer, 50, None).await;
        let queued =
            deps.jetstream.get_stream(&settings.nats.stream).await.unwrap().cached_info().state.messages;
        if queued == 0 {
            break;
        }
    }
    tally_workers::reconcile::reconcile(&deps, Some(election)).await.unwrap();

    // The model: of each voter's stored ballots exactly one is in the
    // ballot box; every other one is rejected as a second ballot.
    let in_box: Vec<(Uuid, Vec<i64>)> =
        sqlx::query_as("SELECT receipt, selections FROM ballot_box").fetch_all(&db).await.unwrap();
    let rejected: HashMap<Uuid, String> = sqlx::query_as("SELECT receipt, reason FROM rejected_ballots")
        .fetch_all(&db)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let voters_with_ballots: HashSet<i64> = stored.values().map(|(v, _)| *v).collect();
    let mut counted_voters = HashSet::new();
    let mut model: BTreeMap<i64, i64> = RUNNERS.iter().map(|r| (*r, 0)).collect();
    for (receipt, selections) in &in_box {
        let (voter, runner) = stored[receipt];
        assert!(counted_voters.insert(voter), "voter {voter} counted twice");
        assert_eq!(selections, &vec![runner]);
        *model.get_mut(&runner).unwrap() += 1;
    }
    assert_eq!(counted_voters, voters_with_ballots, "every voter who submitted is counted");
    for receipt in stored.keys().filter(|r| !in_box.iter().any(|(b, _)| b == *r)) {
        assert_eq!(rejected.get(receipt).map(String::as_str), Some("already_voted"));
    }

    let pg: BTreeMap<i64, i64> =
        sqlx::query_as("SELECT citizen_id, total_votes FROM runners WHERE election_id = $1")
            .bind(election)
            .fetch_all(&db)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let snapshot = tally_common::tally::read(&deps.redis, &deps.keys, election).await.unwrap();
    let cached: BTreeMap<i64, i64> =
        RUNNERS.iter().map(|r| (*r, snapshot.votes.get(r).copied().unwrap_or(0))).collect();
    assert_eq!(pg, model, "Postgres equals the model");
    assert_eq!(cached, model, "Redis equals the model");
    assert_eq!(snapshot.turnout, counted_voters.len() as i64);
}

/// One worker step over at most `max` messages, dying at `crash`. A dead
/// worker's messages are handed back (nak) so the next step sees the
/// redelivery at once instead of after the ack wait.
async fn process(
    deps: &tally_common::Deps,
    consumer: &async_nats::jetstream::consumer::PullConsumer,
    max: usize,
    crash: Option<Crash>,
) {
    let mut fetched = consumer.fetch().max_messages(max).messages().await.unwrap();
    let mut messages = Vec::new();
    while let Some(Ok(message)) = fetched.next().await {
        messages.push(message);
    }
    if messages.is_empty() {
        return;
    }
    let commands: Vec<VoteCommand> =
        messages.iter().map(|m| VoteCommand::decode(&m.payload).unwrap()).collect();
    let mut completed = false;
    if !matches!(crash, Some(Crash::BeforeCommit)) {
        let outcome = tally_workers::record::record(&deps.db, &commands).await.unwrap();
        if !matches!(crash, Some(Crash::AfterCommit)) {
            tally_common::tally::apply(&deps.redis, &deps.keys, &outcome.totals, &outcome.voters, false)
                .await
                .unwrap();
            completed = crash.is_none();
        }
    }
    for message in messages {
        let kind = if completed { AckKind::Ack } else { AckKind::Nak(None) };
        message.double_ack_with(kind).await.unwrap();
    }
}
