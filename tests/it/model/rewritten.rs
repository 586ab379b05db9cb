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

/// An election with K = 2, its first `voters` citizens, and the workers'
/// clients.
struct Case {
    _cleanup: Cleanup,
    db: PgPool,
    election: i64,
    deps: Deps,
}

impl Case {
    async fn start(voters: i64) -> Case {
        let ns = Namespace::new();
        let _cleanup = Cleanup(ns.clone());
        let db = ns.create_database().await;
        let election =
            insert_election(&db, ElectionSpec { anonymity_set: 2, ..ElectionSpec::default() }).await;
        for voter in 1..=voters {
            add_citizen(&db, voter, "Capital", "1990-01-01").await;
        }
        let deps = workers_deps(&ns).await;
        Case { _cleanup, db, election, deps }
    }
}

/// The broker loses every ballot it stored and numbers new ones from the
/// start again.
async fn lose_the_stream(deps: &Deps) {
    deps.jetstream.delete_stream(&deps.settings.nats.stream).await.unwrap();
    crate::helpers::provision_streams(&deps.settings).await;
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
    let Case { _cleanup, db, election, deps } = Case::start(1).await;
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
    lose_the_stream(&deps).await;
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

/// Three held ballots lose their sequences to three new voters' ballots.
/// The held ones' handles now name the new ones, so the group that
/// records the held ones must not ack through them: the new ballots would
/// leave the stream while only this worker's memory holds them.
#[tokio::test]
async fn a_detached_handle_does_not_settle_the_ballot_that_took_its_sequence() {
    let Case { _cleanup, db, election, deps } = Case::start(6).await;
    let settings = deps.settings.clone();
    let sealer = settings.sealing.sealer().unwrap();
    let opener = settings.sealing.opener().unwrap();
    let subject = nats::ballot_subject(&settings.nats, election);
    let in_stream = || nats::count_on(&deps.jetstream, &settings.nats.stream, &subject);
    let roll = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM voter_roll WHERE election_id = $1")
            .bind(election)
            .fetch_one(&db)
            .await
            .unwrap()
    };

    let mut owner = Worker::start(&deps).await;
    let held: Vec<VoteCommand> = (1..=3).map(|voter| ballot(election, voter)).collect();
    for command in &held {
        publish(&deps, &sealer, command, None).await;
    }
    owner.step(&deps, &opener, 10).await;
    assert_eq!(owner.holds.count(), 3, "2K = 4 voters may wait");

    lose_the_stream(&deps).await;
    let newer: Vec<VoteCommand> = (4..=6).map(|voter| ballot(election, voter)).collect();
    for command in &newer {
        publish(&deps, &sealer, command, None).await;
    }
    let mut other = Worker::start(&deps).await;
    other.step(&deps, &opener, 10).await;
    // Once all six are taken, those beyond K go in groups of more than K,
    // oldest first: the held three with some of the newer ones.
    for _ in 0..20 {
        if roll().await + owner.holds.count() as i64 == 6 {
            break;
        }
        tokio::time::sleep(HAND_BACK_WAIT / 4).await;
        owner.step(&deps, &opener, 10).await;
    }
    assert_eq!(roll().await + owner.holds.count() as i64, 6);
    let mut waiting = 0;
    for command in &newer {
        waiting += usize::from(settled(&db, command.receipt).await.is_none());
    }
    assert!(waiting > 0, "some newer ballots are still held");
    assert_eq!(
        in_stream().await.unwrap(),
        waiting as u64,
        "every newer ballot still held is still in the stream"
    );

    close(&deps, election).await;
    owner.tick(&deps, Duration::from_secs(ACK_WAIT_SECS)).await;
    for command in held.iter().chain(&newer) {
        assert_eq!(settled(&db, command.receipt).await.as_deref(), Some("recorded"));
    }
    other.stop(&deps).await;
    owner.stop(&deps).await;
}
