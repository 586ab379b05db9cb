//! A broker that loses ballots it stored, and numbers new ones from where
//! its log now ends, offers a worker a new ballot at the sequence of one it
//! already holds. nats-server 2.9 did this after a partition in `make ha`:
//! the voter's 202'd ballot was taken for a redelivery of their earlier,
//! unanswered one, acked with it, and its receipt stayed pending for ever.
//! Here the loss is made by deleting and recreating the stream.

use super::*;

fn ballot(election: i64, voter: i64) -> VoteCommand {
    VoteCommand {
        receipt: Uuid::new_v4(),
        election_id: election,
        citizen_id: voter,
        selections: vec![RUNNERS[0]],
        accepted_at: OffsetDateTime::now_utc(),
    }
}

async fn settled(db: &PgPool, receipt: Uuid) -> Option<String> {
    sqlx::query_scalar(
        "SELECT 'recorded' FROM recorded_receipts WHERE receipt = $1
         UNION ALL SELECT 'rejected: ' || reason FROM rejected_ballots WHERE receipt = $1",
    )
    .bind(receipt)
    .fetch_optional(db)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_new_ballot_at_a_held_sequence_is_not_taken_for_a_redelivery() {
    let ns = Namespace::new();
    let _cleanup = Cleanup(ns.clone());
    let db = ns.create_database().await;
    let election = insert_election(&db, ElectionSpec { anonymity_set: 2, ..ElectionSpec::default() }).await;
    add_citizen(&db, 1, "Capital", "1990-01-01").await;
    let deps = workers_deps(&ns).await;
    let settings = deps.settings.clone();
    let sealer = settings.sealing.sealer().unwrap();
    let opener = settings.sealing.opener().unwrap();

    // The voter's first ballot, held back by the owner of the election.
    let mut owner = Worker::start(&deps).await;
    let first = ballot(election, 1);
    let Stored::New(at) = publish(&deps, &sealer, &first, None).await else {
        panic!("stored as a duplicate")
    };
    owner.step(&deps, &opener, 10).await;
    assert_eq!(owner.holds.count(), 1);

    // The broker loses it, and the voter's second ballot gets its number.
    deps.jetstream.delete_stream(&settings.nats.stream).await.unwrap();
    crate::helpers::provision_streams(&settings).await;
    let second = ballot(election, 1);
    let Stored::New(again) = publish(&deps, &sealer, &second, None).await else { panic!("a duplicate") };
    assert_eq!(again, at, "the recreated stream numbers from the start again");

    // Offered first to a worker that does not own the election, it comes
    // back to the owner as a redelivery of that same sequence.
    let mut other = Worker::start(&deps).await;
    other.step(&deps, &opener, 10).await;
    for _ in 0..20 {
        if owner.holds.count() == 2 {
            break;
        }
        tokio::time::sleep(HAND_BACK_WAIT / 4).await;
        owner.step(&deps, &opener, 10).await;
    }
    assert_eq!(owner.holds.count(), 2, "the second ballot is held beside the first, not in its place");

    close(&deps, election).await;
    owner.tick(&deps, Duration::from_secs(ACK_WAIT_SECS)).await;
    assert_eq!(settled(&db, first.receipt).await.as_deref(), Some("recorded"));
    assert_eq!(settled(&db, second.receipt).await.as_deref(), Some("rejected: already_voted"));
    other.stop(&deps).await;
    owner.stop(&deps).await;
}
