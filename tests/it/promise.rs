//! A 202 is a promise (docs/architecture.md, "The promise of a 202"):
//! every accepted ballot is counted, rejected with a reason the voter can
//! read, or quarantined and alerted on; never silently dropped.

use std::time::Duration;

use tally::app::Roles;
use tally_domain::ballot::{self, SealedBallot, VoteCommand};
use tally_domain::seal::Sealer;
use tally_domain::secret::Secret;
use tally_platform::nats;
use tally_workers::quarantine;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::helpers::{
    API_ONLY, ElectionSpec, RUNNERS, TestApp, WORKERS_ONLY, eventually, insert_election, spawn_app_with,
    start_with,
};
use crate::secrecy::{poll_results, shown_votes, watch};

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
async fn publish(app: &TestApp, deps: &tally_platform::Deps, command: &VoteCommand) {
    let sealed = command.seal(&app.settings.sealing.sealer().unwrap(), 1);
    publish_sealed(app, deps, command, sealed).await;
}

async fn publish_sealed(
    app: &TestApp,
    deps: &tally_platform::Deps,
    command: &VoteCommand,
    sealed: SealedBallot,
) {
    let stored = nats::publish_acked(
        &deps.jetstream,
        nats::ballot_subject(&app.settings.nats, command.election_id),
        sealed.headers,
        sealed.payload,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert!(matches!(stored, nats::Stored::New(_)), "{stored:?}");
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

async fn in_voter_set(app: &TestApp, deps: &tally_platform::Deps, election: i64, citizen: i64) -> bool {
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

/// During a rolling upgrade an API one minor version ahead adds a field;
/// the workers of today record its ballots all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ballot_from_a_newer_api_is_recorded() {
    let app = spawn_app_with(Roles::ALL, |_| {}).await;
    let deps = app.deps().await;
    let election = insert_election(&app.db, ElectionSpec::default()).await;
    register(&app, 5_200_000, 3).await;
    let sealer = app.settings.sealing.sealer().unwrap();
    let newer = (ballot::SCHEMA_MAJOR, ballot::SCHEMA_MINOR + 1);
    let mut receipts = Vec::new();
    for citizen in 5_200_000..5_200_003 {
        let command = ballot(election, citizen, RUNNERS[0]);
        publish_sealed(&app, &deps, &command, command.seal_as(&sealer, 1, newer, b"\x01\x02a later field"))
            .await;
        receipts.push(command.receipt);
    }
    app.close(election).await;
    for receipt in receipts {
        assert_eq!(app.settled(&receipt.to_string()).await["status"], "recorded");
    }
    app.recorded(election, 3).await;
    let quarantined: i64 =
        sqlx::query_scalar("SELECT count(*) FROM dead_letters").fetch_one(&app.db).await.unwrap();
    assert_eq!(quarantined, 0);
}

fn is_final(results: &serde_json::Value) -> bool {
    results["final"] == true
}

/// Ballots no worker can open wait in quarantine, and the election is not
/// final until an operator replays them (once workers have the key) or
/// rejects them; a rejected one says why on its receipt.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quarantined_ballots_hold_the_final_count_until_replayed_or_rejected() {
    let app = spawn_app_with(API_ONLY, |_| {}).await;
    let old_workers = app.another_instance(WORKERS_ONLY).await;
    let deps = app.deps().await;
    let replayed = insert_election(&app.db, ElectionSpec::default()).await;
    let rejected = insert_election(&app.db, ElectionSpec::default()).await;
    register(&app, 5_300_000, 4).await;
    // A key the API was pointed at before the workers were given it.
    let rotated = tally_domain::seal::generate();
    let early = Sealer::new(
        "k2",
        &tally_domain::seal::public_key(&rotated.public).unwrap(),
        &tally_domain::seal::private_key(app.settings.sealing.api_private_key.expose()).unwrap(),
    )
    .unwrap();
    let x = ballot(replayed, 5_300_000, RUNNERS[1]);
    publish_sealed(&app, &deps, &x, x.seal(&early, 1)).await;
    let z = ballot(rejected, 5_300_001, RUNNERS[1]);
    publish_sealed(&app, &deps, &z, z.seal(&early, 1)).await;
    // And one from a future major version nobody here reads.
    let y = ballot(rejected, 5_300_002, RUNNERS[0]);
    let future = y.seal_as(&app.settings.sealing.sealer().unwrap(), 1, (ballot::SCHEMA_MAJOR + 1, 0), &[]);
    publish_sealed(&app, &deps, &y, future).await;

    let listed = eventually("three ballots in quarantine", || async {
        let listed = quarantine::list(&deps, None).await.unwrap();
        (listed.len() == 3).then_some(listed)
    })
    .await;
    let keys: Vec<&str> = listed.iter().map(|q| q.key_id.as_str()).collect();
    assert_eq!(keys.iter().filter(|k| **k == "k2").count(), 2, "{listed:?}");
    assert!(listed.iter().any(|q| q.reason.contains("major")), "{listed:?}");
    assert!(listed.iter().all(|q| q.election == replayed.to_string() || q.election == rejected.to_string()));

    app.close(replayed).await;
    app.close(rejected).await;
    let results = |election: i64| {
        let app = &app;
        async move { app.get_json(&format!("/v1/elections/{election}/results")).await }
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!is_final(&results(replayed).await), "final with a ballot in quarantine");
    assert!(!is_final(&results(rejected).await), "final with ballots in quarantine");

    // The workers are upgraded with the key; the operator replays.
    old_workers.stop().await;
    let mut upgraded = app.settings.clone();
    upgraded.sealing.private_keys.insert("k2".into(), Secret::new(rotated.private.clone()));
    let workers = start_with(&app, upgraded.clone(), WORKERS_ONLY).await;
    assert_eq!(quarantine::replay(&deps, Some(replayed)).await.unwrap(), 1);
    eventually("the replayed election to be final", || async {
        is_final(&results(replayed).await).then_some(())
    })
    .await;
    app.recorded(replayed, 1).await;
    assert_eq!(app.settled(&x.receipt.to_string()).await["status"], "recorded");

    // The other election's are rejected: the one a key here opens says so
    // on its receipt and frees its voter; the future one cannot.
    let operator = tally_platform::Deps { settings: std::sync::Arc::new(upgraded), ..deps.clone() };
    let done = quarantine::reject(&operator, rejected).await.unwrap();
    assert_eq!((done.with_receipt, done.without_receipt), (1, 1));
    let status = app.settled(&z.receipt.to_string()).await;
    assert_eq!(
        (status["status"].as_str(), status["reason"].as_str()),
        (Some("rejected"), Some("unreadable"))
    );
    assert!(!in_voter_set(&app, &deps, rejected, z.citizen_id).await);
    eventually("the rejected election to be final", || async {
        is_final(&results(rejected).await).then_some(())
    })
    .await;
    assert_eq!(results(rejected).await["turnout"], 0);
    assert!(quarantine::list(&deps, None).await.unwrap().is_empty());
    workers.stop().await;
}

/// Ballots cast every 25 ms while the election closes, through an API
/// replica that has not heard of the close (its cache says open): every
/// 202 is in the final count, ballots stored after the fence are refused
/// with 409 at once, and no count moves once `final: true` is shown, on
/// REST or in live frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_202_around_the_close_is_in_the_final_count() {
    let app = spawn_app_with(Roles::ALL, |s| s.limits.per_client_per_minute = 0).await;
    let election = insert_election(&app.db, ElectionSpec::default()).await;
    let mut voters = Vec::new();
    for citizen in 5_400_000..5_400_100 {
        voters.push((citizen, app.voter(citizen).await));
    }
    let frames = watch(&app, election).await;
    let (results, poller) = poll_results(&app, election);

    let mut accepted: Vec<(String, i64)> = Vec::new();
    let mut refused = 0;
    let mut accepted_after_close = 0;
    for (i, (citizen, voter)) in voters.iter().enumerate() {
        if i == 40 {
            // Closed in Postgres only, unannounced: the API goes on
            // accepting until the fence says otherwise.
            sqlx::query("UPDATE elections SET closed_at = now() WHERE election_id = $1")
                .bind(election)
                .execute(&app.db)
                .await
                .unwrap();
        }
        let choice = RUNNERS[(*citizen % 2) as usize];
        let answer = app.cast(&voter.access, election, &[choice]).await;
        match answer.status().as_u16() {
            202 => {
                let body: serde_json::Value = answer.json().await.unwrap();
                accepted.push((body["receipt"].as_str().unwrap().to_string(), choice));
                accepted_after_close += usize::from(i >= 40);
            }
            409 => {
                let body: serde_json::Value = answer.json().await.unwrap();
                assert_eq!(body["code"], "election_not_open", "{body}");
                refused += 1;
            }
            other => panic!("ballot of {citizen}: {other} {}", answer.text().await.unwrap()),
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(accepted_after_close > 0, "the close was not straddled");

    let last = eventually("the election to be final", || async {
        let body = app.get_json(&format!("/v1/elections/{election}/results")).await;
        (body["final"] == true).then_some(body)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    poller.abort();
    let n = accepted.len() as i64;
    assert_eq!(last["turnout"], n, "every 202 is counted, and nothing else");
    assert!(refused > 0, "no ballot reached the stream after the fence");
    for runner in RUNNERS {
        let chosen = accepted.iter().filter(|(_, c)| *c == runner).count() as i64;
        let (pg, _) = app.totals(election).await;
        assert_eq!(pg.iter().find(|(r, _)| *r == runner).unwrap().1, chosen, "runner {runner}");
    }
    for (receipt, _) in &accepted {
        assert_eq!(app.settled(receipt).await["status"], "recorded");
    }
    for (what, seen) in [("results", &results), ("frames", &frames)] {
        let seen = seen.lock().unwrap();
        let after: Vec<Option<i64>> =
            seen.iter().skip_while(|(_, b)| b["final"] != true).map(|(_, b)| shown_votes(b)).collect();
        assert!(!after.is_empty(), "{what}: saw final");
        assert!(after.iter().all(|v| *v == Some(n)), "{what}: a count moved after final: {after:?}");
    }
}

/// A ballot cast with an Idempotency-Key, as a client sends it.
async fn cast_keyed(
    app: &TestApp,
    token: &str,
    election: i64,
    key: &str,
    selections: &[i64],
) -> reqwest::Response {
    app.client
        .post(format!("{}/v1/elections/{election}/ballots", app.api))
        .bearer_auth(token)
        .header("Idempotency-Key", key)
        .json(&serde_json::json!({ "selections": selections }))
        .send()
        .await
        .unwrap()
}

async fn status_and_body(answer: reqwest::Response) -> (u16, serde_json::Value) {
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap())
}

/// The same key and ballot get the same 202 and receipt; the same key
/// with other selections, another key or no key are refused; a key that
/// is not a UUID is refused before anything is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_with_the_same_key_is_the_same_ballot() {
    let app = spawn_app_with(Roles::ALL, |_| {}).await;
    let election = insert_election(&app.db, ElectionSpec::default()).await;
    let voter = app.voter(5_500_000).await;
    let key = Uuid::new_v4().to_string();
    // As after a Redis restart: the reservation script must be loaded again.
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut app.deps().await.redis).await.unwrap();

    let (status, bad) =
        status_and_body(cast_keyed(&app, &voter.access, election, "7", &[RUNNERS[0]]).await).await;
    assert_eq!((status, bad["code"].as_str()), (400, Some("invalid_idempotency_key")));
    let (status, first) =
        status_and_body(cast_keyed(&app, &voter.access, election, &key, &[RUNNERS[0]]).await).await;
    assert_eq!(status, 202, "{first}");
    let (status, again) =
        status_and_body(cast_keyed(&app, &voter.access, election, &key, &[RUNNERS[0]]).await).await;
    assert_eq!((status, &again["receipt"]), (202, &first["receipt"]), "{again}");
    let (status, other) =
        status_and_body(cast_keyed(&app, &voter.access, election, &key, &[RUNNERS[1]]).await).await;
    assert_eq!((status, other["code"].as_str()), (422, Some("idempotency_key_mismatch")));
    let another_key = Uuid::new_v4().to_string();
    let (status, second) =
        status_and_body(cast_keyed(&app, &voter.access, election, &another_key, &[RUNNERS[0]]).await).await;
    assert_eq!((status, second["code"].as_str()), (409, Some("already_voted")));
    let (status, keyless) = status_and_body(app.cast(&voter.access, election, &[RUNNERS[0]]).await).await;
    assert_eq!((status, keyless["code"].as_str()), (409, Some("already_voted")));

    app.close(election).await;
    let receipt = first["receipt"].as_str().unwrap();
    assert_eq!(app.settled(receipt).await["status"], "recorded");
    app.recorded(election, 1).await;
}

/// The API stored a keyed ballot and then lost its answer (it crashed, or
/// the client's connection dropped): the retry, inside the broker's
/// duplicate window or long after it, gets the same 202 and receipt, and
/// the ballot counts once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_after_a_lost_answer_counts_once() {
    let app = spawn_app_with(Roles::ALL, |s| s.nats.duplicate_window_secs = 2).await;
    let deps = app.deps().await;
    let election = insert_election(&app.db, ElectionSpec::default()).await;
    let secret = app.settings.sealing.receipt_key().unwrap();
    for (citizen, wait) in [(5_600_000, Duration::ZERO), (5_600_001, Duration::from_secs(3))] {
        let voter = app.voter(citizen).await;
        let key = Uuid::new_v4();
        // What the first attempt did before its answer was lost: reserve,
        // then publish.
        let first = tally_api::idempotency::Keyed::new(secret, election, citizen, key, &[RUNNERS[1]]);
        let _: i64 = redis::cmd("HSET")
            .arg(app.keys().intents(election))
            .arg(citizen)
            .arg(&first.intent)
            .query_async(&mut deps.redis.clone())
            .await
            .unwrap();
        let command = VoteCommand { receipt: first.receipt, ..ballot(election, citizen, RUNNERS[1]) };
        let sealed = command.seal(&app.settings.sealing.sealer().unwrap(), 1);
        let stored = nats::publish_acked(
            &deps.jetstream,
            nats::ballot_subject(&app.settings.nats, election),
            sealed.headers,
            sealed.payload,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert!(matches!(stored, nats::Stored::New(_)));
        tokio::time::sleep(wait).await;

        let (status, retry) =
            status_and_body(cast_keyed(&app, &voter.access, election, &key.to_string(), &[RUNNERS[1]]).await)
                .await;
        assert_eq!(status, 202, "citizen {citizen}: {retry}");
        assert_eq!(retry["receipt"], first.receipt.to_string());
    }
    app.close(election).await;
    app.recorded(election, 2).await;
    let rejected: i64 =
        sqlx::query_scalar("SELECT count(*) FROM rejected_ballots").fetch_one(&app.db).await.unwrap();
    assert_eq!(rejected, 0, "the second copy is the same ballot, not a second one");
    let final_results = eventually("final", || async {
        let body = app.get_json(&format!("/v1/elections/{election}/results")).await;
        (body["final"] == true).then_some(body)
    })
    .await;
    assert_eq!(final_results["turnout"], 2);
}

/// A voter whose ballot the workers rejected is freed, and casts again at
/// once (inside the broker's duplicate window) with a new key: that ballot
/// is stored and counted, not mistaken for the rejected one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_voter_freed_by_a_rejection_casts_again_and_counts() {
    let app = spawn_app_with(Roles::ALL, |_| {}).await;
    let deps = app.deps().await;
    let election = insert_election(&app.db, ElectionSpec::default()).await;
    let citizen = 5_700_000;
    let voter = app.voter(citizen).await;
    register(&app, 5_700_001, 5).await;
    // Their first ballot names a runner of no post here (no API of today
    // sends one): the workers reject it. Five more make a group commit.
    let rejected = VoteCommand { selections: vec![424_242], ..ballot(election, citizen, RUNNERS[0]) };
    publish(&app, &deps, &rejected).await;
    for other in 5_700_001..5_700_006 {
        publish(&app, &deps, &ballot(election, other, RUNNERS[1])).await;
    }
    let status = app.settled(&rejected.receipt.to_string()).await;
    assert_eq!(
        (status["status"].as_str(), status["reason"].as_str()),
        (Some("rejected"), Some("invalid_selection"))
    );
    eventually("the voter to be freed", || async {
        (!in_voter_set(&app, &deps, election, citizen).await).then_some(())
    })
    .await;

    let (status, again) = status_and_body(
        cast_keyed(&app, &voter.access, election, &Uuid::new_v4().to_string(), &[RUNNERS[0]]).await,
    )
    .await;
    assert_eq!(status, 202, "{again}");
    app.close(election).await;
    let receipt = again["receipt"].as_str().unwrap();
    assert_eq!(app.settled(receipt).await["status"], "recorded");
    app.recorded(election, 6).await;
}
