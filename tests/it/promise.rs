//! A 202 is a promise (docs/architecture.md, "The promise of a 202"):
//! every accepted ballot is counted, rejected with a reason the voter can
//! read, or quarantined and alerted on; never silently dropped.

use std::time::Duration;

use tally_common::ballot::VoteCommand;
use tally_common::bus;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::helpers::{
    API_ONLY, ElectionSpec, RUNNERS, TestApp, WORKERS_ONLY, eventually, insert_election, spawn_app_with,
};

/// Registers citizens `first..first + n` straight in the registry.
async fn register(app: &TestApp, first: i64, n: i64) {
    sqlx::query(
        "INSERT INTO citizens (citizen_id, full_name, dob, pob, permanent_address, province)
         SELECT id, 'Citizen ' || id, DATE '1990-01-01', 'Capital', '1 Oak Street', 'Capital'
         FROM generate_series($1::bigint, $2::bigint) AS id",
    )
    .bind(first)
    .bind(first + n - 1)
    .execute(&app.db)
    .await
    .unwrap();
}

/// Publishes a ballot sealed as the API seals it, and notes its voter in
/// the voter set as the API does after the broker's ack.
async fn publish(app: &TestApp, deps: &tally_common::Deps, command: &VoteCommand) {
    let sealer = app.settings.sealing.sealer().unwrap();
    let sealed = command.seal(&sealer, 1);
    let stored = bus::publish_acked(
        &deps.jetstream,
        bus::ballot_subject(&app.settings.nats, command.election_id),
        sealed.headers,
        sealed.payload,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(stored, bus::Stored::New);
    let _: i64 = redis::cmd("SADD")
        .arg(app.keys().voters(command.election_id))
        .arg(command.citizen_id)
        .query_async(&mut deps.redis.clone())
        .await
        .unwrap();
}

fn ballot(election_id: i64, citizen_id: i64, runner: i64) -> VoteCommand {
    VoteCommand {
        receipt: Uuid::new_v4(),
        election_id,
        citizen_id,
        selections: vec![runner],
        accepted_at: OffsetDateTime::now_utc(),
    }
}

async fn in_voter_set(app: &TestApp, deps: &tally_common::Deps, election: i64, citizen: i64) -> bool {
    redis::cmd("SISMEMBER")
        .arg(app.keys().voters(election))
        .arg(citizen)
        .query_async(&mut deps.redis.clone())
        .await
        .unwrap()
}

/// One ballot Postgres refuses (its voter left the registry while it
/// waited) among 999 good ones in the same batch: the good ones are
/// recorded, the bad one is rejected with a reason on its receipt and its
/// voter freed, and nothing stays stuck in the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_poison_ballot_among_999_good_ones() {
    let app = spawn_app_with(API_ONLY, |s| s.workers.batch_size = 1000).await;
    let deps = app.deps().await;
    let election = insert_election(&app.db, ElectionSpec { anonymity_set: 20, ..Default::default() }).await;
    const FIRST: i64 = 5_100_000;
    register(&app, FIRST, 1000).await;
    let poison = FIRST + 500;
    let mut receipts = Vec::new();
    for citizen in FIRST..FIRST + 1000 {
        let command = ballot(election, citizen, RUNNERS[(citizen % 2) as usize]);
        publish(&app, &deps, &command).await;
        receipts.push((citizen, command.receipt));
    }
    sqlx::query("DELETE FROM citizens WHERE citizen_id = $1").bind(poison).execute(&app.db).await.unwrap();

    let workers = app.another_instance(WORKERS_ONLY).await;
    app.close(election).await;
    app.recorded(election, 999).await;
    let rejected: (String,) = eventually("the poison ballot to be rejected", || async {
        sqlx::query_as("SELECT reason FROM rejected_ballots WHERE election_id = $1")
            .bind(election)
            .fetch_optional(&app.db)
            .await
            .unwrap()
    })
    .await;
    assert_eq!(rejected.0, "not_registered");
    let poison_receipt = receipts.iter().find(|(c, _)| *c == poison).unwrap().1;
    let status = app.settled(&poison_receipt.to_string()).await;
    assert_eq!(status["status"], "rejected");
    assert_eq!(status["reason"], "not_registered");
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM recorded_receipts WHERE election_id = $1")
        .bind(election)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(recorded, 999);
    let (pg, redis) = app.totals(election).await;
    assert_eq!(pg.iter().map(|(_, n)| n).sum::<i64>(), 999);
    assert_eq!(pg, redis);
    eventually("the stream to be empty", || async { (app.queued(&deps).await == 0).then_some(()) }).await;
    assert!(!in_voter_set(&app, &deps, election, poison).await, "a rejected voter is freed");
    assert!(in_voter_set(&app, &deps, election, FIRST).await, "a recorded voter stays");
    // No group of the final flush fell below K for the poison's sake.
    let smallest: i64 = sqlx::query_scalar(
        "SELECT min(n) FROM (SELECT count(*) AS n FROM voter_roll WHERE election_id = $1 GROUP BY xmin::text) g",
    )
    .bind(election)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert!(smallest >= 20, "a group of {smallest} voters");
    workers.stop().await;
}
