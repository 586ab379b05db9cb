//! The vote pipeline end to end: API → JetStream → workers → Postgres and
//! Redis, under duplicates, redeliveries, crashes and outages.

use std::time::Duration;

use futures_util::StreamExt;
use tally_domain::ballot::VoteCommand;
use time::OffsetDateTime;

use crate::helpers::{
    API_ONLY, ElectionSpec, Proxy, RUNNERS, WORKERS_ONLY, code_of, eventually, insert_election, spawn_app,
    spawn_app_with,
};

async fn receipt_of(response: reqwest::Response) -> String {
    assert_eq!(response.status(), 202);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], "pending");
    body["receipt"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_ballot_flows_to_postgres_redis_and_a_tally_event() {
    let app = spawn_app().await;
    let election = insert_election(&app.db, ElectionSpec::default()).await;
    let voter = app.voter(100).await;
    let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    let mut events = client.get_async_pubsub().await.unwrap();
    events.subscribe(app.keys().tally_channel(election)).await.unwrap();

    let receipt = receipt_of(app.cast(&voter.access, election, &[RUNNERS[0]]).await).await;
    // A random (v4) UUID, so it says nothing of the voter. (A check that
    // the text lacks "100" failed by chance about once in 150 runs.)
    assert_eq!(uuid::Uuid::parse_str(&receipt).unwrap().get_version_num(), 4);
    // One ballot is fewer than K: the workers hold it until the end, and
    // the receipt says only that it is pending, naming no election.
    assert_eq!(
        app.get_json(&format!("/v1/receipts/{receipt}")).await,
        serde_json::json!({"receipt": receipt, "status": "pending"})
    );

    app.close(election).await;
    let event =
        tokio::time::timeout(Duration::from_secs(10), events.on_message().next()).await.unwrap().unwrap();
    let event: tally_platform::tallies::TallyEvent =
        serde_json::from_str(&event.get_payload::<String>().unwrap()).unwrap();
    assert_eq!((event.election_id, event.version, event.turnout), (election, 1, 1));
    assert_eq!(event.votes[&RUNNERS[0]], 1);
    assert!(event.oldest_accepted_at.is_some());

    let status = app.settled(&receipt).await;
    assert_eq!(
        status,
        serde_json::json!({"receipt": receipt, "election_id": election, "status": "recorded"})
    );
    assert_eq!(
        app.totals(election).await,
        (vec![(RUNNERS[0], 1), (RUNNERS[1], 0)], vec![(RUNNERS[0], 1), (RUNNERS[1], 0)])
    );
    let results = eventually("the final results", || async {
        let results = app.get_json(&format!("/v1/elections/{election}/results")).await;
        (results["final"] == true).then_some(results)
    })
    .await;
    assert_eq!(
        (results["turnout"].as_i64(), results["posts"][0]["runners"][0]["votes"].as_i64()),
        (Some(1), Some(1))
    );
    let mine: serde_json::Value =
        app.get_as(&format!("/v1/elections/{election}/ballot"), &voter.access).await.json().await.unwrap();
    assert_eq!(mine["voted"], true);

    // Nothing stored links the voter to the choice, nor the receipt to it:
    // the ballot box is keyed by an id of its own.
    let columns = |table: &'static str| {
        sqlx::query_scalar::<_, String>(
            "SELECT column_name::text FROM information_schema.columns WHERE table_name = $1 ORDER BY 1",
        )
        .bind(table)
        .fetch_all(&app.db)
    };
    assert_eq!(columns("ballot_box").await.unwrap(), ["ballot_id", "election_id", "selections"]);
    assert_eq!(columns("recorded_receipts").await.unwrap(), ["election_id", "receipt"]);
    let ballot_id: uuid::Uuid = sqlx::query_scalar("SELECT ballot_id FROM ballot_box WHERE election_id = $1")
        .bind(election)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_ne!(ballot_id.to_string(), receipt, "the receipt does not lead to the ballot");
    // The stream keeps nothing once the ballot is recorded.
    let deps = app.deps().await;
    eventually("the stream to empty", || async { (app.queued(&deps).await == 0).then_some(()) }).await;
}

#[tokio::test]
async fn casting_refusals() {
    let app = spawn_app().await;
    let open =
        insert_election(&app.db, ElectionSpec { restriction: "@provincial:Capital", ..Default::default() })
            .await;
    let later = insert_election(&app.db, ElectionSpec { starts_in_secs: 600, ..Default::default() }).await;
    let adult = app.voter(110).await;
    let minor = app.voter_in(111, "Capital", "2015-05-05").await;
    let northerner = app.voter_in(112, "Northland", "1980-01-01").await;

    assert_eq!(
        code_of(app.cast(&adult.access, 999_999, &[RUNNERS[0]]).await).await,
        (404, "election_not_found".into())
    );
    assert_eq!(
        code_of(app.cast(&adult.access, later, &[RUNNERS[0]]).await).await,
        (409, "election_not_open".into())
    );
    let young = app.cast(&minor.access, open, &[RUNNERS[0]]).await;
    assert_eq!(young.status(), 403);
    let problem: serde_json::Value = young.json().await.unwrap();
    assert_eq!(
        (problem["code"].as_str(), problem["reason"].as_str()),
        (Some("not_eligible"), Some("too_young"))
    );
    let elsewhere: serde_json::Value =
        app.cast(&northerner.access, open, &[RUNNERS[0]]).await.json().await.unwrap();
    assert_eq!(elsewhere["reason"], "wrong_province");
    for bad in [vec![], vec![RUNNERS[0], RUNNERS[1]], vec![4242], vec![RUNNERS[0], RUNNERS[0]]] {
        assert_eq!(
            code_of(app.cast(&adult.access, open, &bad).await).await,
            (422, "invalid_selection".into()),
            "{bad:?}"
        );
    }
    let unauthenticated = app
        .client
        .post(format!("{}/v1/elections/{open}/ballots", app.api))
        .json(&serde_json::json!({"selections": [RUNNERS[0]]}))
        .send()
        .await
        .unwrap();
    assert_eq!(code_of(unauthenticated).await.0, 401);
    // A receipt nobody was given looks like any ballot still held: pending,
    // without an election, so the answer tells nobody which receipts exist.
    let unknown = uuid::Uuid::new_v4().to_string();
    let answer = app.client.get(format!("{}/v1/receipts/{unknown}", app.api)).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(
        answer.json::<serde_json::Value>().await.unwrap(),
        serde_json::json!({"receipt": unknown, "status": "pending"})
    );
    let recorded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM voter_roll").fetch_one(&app.db).await.unwrap();
    assert_eq!(recorded, 0, "no refused ballot reached the voter roll");
}

#[tokio::test]
async fn a_second_ballot_counts_once_whenever_and_wherever_it_arrives() {
    let app = spawn_app_with(tally::app::Roles::ALL, |s| s.nats.duplicate_window_secs = 1).await;
    let second_api = app.another_instance(API_ONLY).await;
    let election = insert_election(&app.db, ElectionSpec::default()).await;
    let voters = [app.voter(120).await, app.voter(121).await];

    // Two ballots of one voter through two API instances at the same moment.
    let (a, b) = tokio::join!(
        app.cast(&voters[0].access, election, &[RUNNERS[0]]),
        second_api.cast(&voters[0].access, election, &[RUNNERS[1]])
    );
    let mut statuses = [a.status().as_u16(), b.status().as_u16()];
    statuses.sort();
    assert_eq!(statuses, [202, 409]);

    // After the first is processed: refused at once, same or other choice.
    // Workers commit only the oldest ballots beyond K, so K + 1 more
    // ballots after it (2K + 3 held in all) see it recorded.
    let first = receipt_of(app.cast(&voters[1].access, election, &[RUNNERS[0]]).await).await;
    let others = app.ballots_from_new_voters(election, 122, 3, RUNNERS[1]).await;
    assert_eq!(app.settled(&first).await["status"], "recorded");
    for choice in RUNNERS {
        assert_eq!(
            code_of(second_api.cast(&voters[1].access, election, &[choice]).await).await,
            (409, "already_voted".into())
        );
    }

    // If Redis forgot the voter and the broker's duplicate window has
    // passed, the API accepts a second ballot; the workers reject it
    // against the voter roll.
    let _: () = redis::cmd("DEL")
        .arg(app.keys().voters(election))
        .arg(app.keys().intents(election))
        .query_async(&mut app.deps().await.redis)
        .await
        .unwrap();
    let again = eventually("the duplicate window to pass", || async {
        let response = app.cast(&voters[1].access, election, &[RUNNERS[1]]).await;
        if response.status() == 202 { Some(receipt_of(response).await) } else { None }
    })
    .await;
    app.close(election).await;
    let status = app.settled(&again).await;
    assert_eq!(
        (status["status"].as_str(), status["reason"].as_str()),
        (Some("rejected"), Some("already_voted"))
    );

    app.recorded(election, 2 + others.len() as i64).await;
    let (pg, cached) = app.totals(election).await;
    assert_eq!(pg.iter().map(|(_, n)| n).sum::<i64>(), 2 + others.len() as i64);
    assert_eq!(pg, cached);
}

/// Ten ballots cast, then taken by a worker that records them in Postgres
/// and dies before writing Redis or acking. Their receipts.
async fn record_and_die(app: &crate::helpers::TestApp, election: i64) -> Vec<String> {
    let mut receipts = Vec::new();
    for citizen in 130..140 {
        let voter = app.voter(citizen).await;
        receipts.push(
            receipt_of(app.cast(&voter.access, election, &[RUNNERS[(citizen % 2) as usize]]).await).await,
        );
    }
    let deps = app.deps().await;
    let opener = app.settings.sealing.opener().unwrap();
    let consumer = tally_workers::consume::consumer(&deps).await.unwrap();
    let mut batch =
        consumer.fetch().max_messages(100).expires(Duration::from_secs(1)).messages().await.unwrap();
    let mut commands = Vec::new();
    while let Some(Ok(message)) = batch.next().await {
        commands.push(VoteCommand::open(&opener, message.headers.as_ref(), &message.payload).unwrap());
    }
    assert_eq!(commands.len(), 10);
    let outcome = tally_workers::record::record(&deps.db, &commands, &[]).await.unwrap();
    assert_eq!(outcome.voters.len(), 10);
    receipts
}

/// Once the stream is empty: every ballot recorded once, and Redis
/// holding what Postgres does (the dead worker never wrote it).
async fn counted_once_in_postgres_and_redis(
    app: &crate::helpers::TestApp,
    election: i64,
    receipts: &[String],
) {
    for receipt in receipts {
        assert_eq!(app.settled(receipt).await["status"], "recorded");
    }
    let (pg, cached) = app.totals(election).await;
    assert_eq!(pg, vec![(RUNNERS[0], 5), (RUNNERS[1], 5)]);
    assert_eq!(cached, pg, "Redis rewritten from Postgres");
    let ballots: i64 =
        sqlx::query_scalar("SELECT count(*) FROM ballot_box").fetch_one(&app.db).await.unwrap();
    assert_eq!(ballots, 10);
}

#[tokio::test]
async fn a_batch_recorded_but_never_acked_is_redelivered_and_counted_once() {
    let app = spawn_app_with(API_ONLY, |s| s.nats.ack_wait_secs = 3).await;
    let election = insert_election(&app.db, ElectionSpec::default()).await;
    let receipts = record_and_die(&app, election).await;

    // A healthy worker gets the same messages again after the ack wait.
    // The election stays open: recorded ballots are settled at once, never
    // held, and once it ended the closer's sweep could remove them before
    // the redelivery came (the next test), and this one would prove nothing
    // of redelivery.
    let deps = app.deps().await;
    let _workers = app.another_instance(WORKERS_ONLY).await;
    eventually("the redelivered batch to be acked", || async {
        (app.queued(&deps).await == 0).then_some(())
    })
    .await;
    counted_once_in_postgres_and_redis(&app, election, &receipts).await;
}

#[tokio::test]
async fn a_batch_recorded_but_never_acked_and_swept_after_the_end_still_reaches_redis() {
    // An ack wait far beyond `eventually`'s deadline: nothing is redelivered
    // in time, so only the closer's sweep can empty the stream.
    let app = spawn_app_with(API_ONLY, |s| s.nats.ack_wait_secs = 120).await;
    let election = insert_election(&app.db, ElectionSpec::default()).await;
    let receipts = record_and_die(&app, election).await;

    app.close(election).await;
    let deps = app.deps().await;
    let _workers = app.another_instance(WORKERS_ONLY).await;
    eventually("the settled leftovers to be swept", || async {
        (app.queued(&deps).await == 0).then_some(())
    })
    .await;
    counted_once_in_postgres_and_redis(&app, election, &receipts).await;
}

#[tokio::test]
async fn reconcile_restores_a_flushed_tally_and_voter_set() {
    let app = spawn_app().await;
    let election = insert_election(&app.db, ElectionSpec::default()).await;
    let mut voters = Vec::new();
    for citizen in 140..146 {
        let voter = app.voter(citizen).await;
        app.cast(&voter.access, election, &[RUNNERS[usize::from(citizen < 142)]]).await;
        voters.push(voter);
    }
    app.close(election).await;
    app.recorded(election, 6).await;
    let (pg, _) = app.totals(election).await;
    let mut redis = app.deps().await.redis;
    // As if Redis restarted without its data.
    let _: () = redis::cmd("DEL")
        .arg(app.keys().tally(election))
        .arg(app.keys().voters(election))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(app.totals(election).await.1, vec![(RUNNERS[0], 0), (RUNNERS[1], 0)]);

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["reconcile", "--election", &election.to_string()])
        .env("TALLY_DATABASE__URL", app.settings.database.url.expose())
        .env("TALLY_REDIS__KEY_PREFIX", &app.settings.redis.key_prefix)
        .env("TALLY_NATS__STREAM", &app.settings.nats.stream)
        .env("TALLY_NATS__SUBJECT_PREFIX", &app.settings.nats.subject_prefix)
        .env("TALLY_LOG__FILTER", "error")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("drift 12") && stdout.contains("6 voters restored"), "{stdout}");
    assert_eq!(app.totals(election).await.1, pg);
    let snapshot = tally_platform::tallies::read(&redis, &app.keys(), election).await.unwrap();
    assert_eq!(snapshot.turnout, 6);
    // The API's fast path knows these voters again.
    let known: i64 =
        redis::cmd("SCARD").arg(app.keys().voters(election)).query_async(&mut redis).await.unwrap();
    assert_eq!(known, 6);
    let mine: serde_json::Value = app
        .get_as(&format!("/v1/elections/{election}/ballot"), &voters[0].access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(mine["voted"], true);
}

#[tokio::test]
async fn a_worker_killed_mid_run_loses_and_doubles_nothing() {
    let app = spawn_app_with(API_ONLY, |s| {
        s.nats.ack_wait_secs = 3;
        s.workers.batch_size = 20;
    })
    .await;
    let election = insert_election(&app.db, ElectionSpec::default()).await;
    let mut voters = Vec::new();
    for citizen in 200..260 {
        voters.push(app.voter(citizen).await);
    }
    let doomed = app.another_instance(WORKERS_ONLY).await;
    let survivor = app.another_instance(WORKERS_ONLY).await;
    let casts = voters.iter().map(|v| app.cast(&v.access, election, &[RUNNERS[0]]));
    let accepted = futures_util::future::join_all(casts).await.iter().filter(|r| r.status() == 202).count();
    assert_eq!(accepted, 60);
    doomed.abort();
    // The survivor takes over what the doomed worker held once the
    // election ends (its lock went with its connection).
    app.close(election).await;
    app.recorded(election, 60).await;
    let (pg, cached) = app.totals(election).await;
    assert_eq!(pg, vec![(RUNNERS[0], 60), (RUNNERS[1], 0)]);
    assert_eq!(cached, pg);
    survivor.stop().await;
}

#[tokio::test]
async fn ballots_wait_in_the_stream_while_postgres_is_down() {
    let proxy = Proxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let app = spawn_app_with(API_ONLY, |_| {}).await;
    let election = insert_election(&app.db, ElectionSpec::default()).await;
    let mut voters = Vec::new();
    for citizen in 300..320 {
        voters.push(app.voter(citizen).await);
    }
    let settings = crate::helpers::with_database_through(&app, &proxy);
    let workers = crate::helpers::start_with(&app, settings, WORKERS_ONLY).await;

    proxy.cut();
    for voter in &voters {
        assert_eq!(
            app.cast(&voter.access, election, &[RUNNERS[1]]).await.status(),
            202,
            "the API keeps accepting"
        );
    }
    proxy.restore();
    app.close(election).await;
    app.recorded(election, 20).await;
    assert_eq!(app.totals(election).await.0, vec![(RUNNERS[0], 0), (RUNNERS[1], 20)]);
    workers.stop().await;
}

/// The voter set learns of a ballot from the API's notes, long before a
/// worker records it (here it is held for the anonymity set), so the
/// voter's own "have I voted?" and the next attempt's check see it.
#[tokio::test]
async fn a_stored_ballot_is_noted_in_the_voter_set_before_it_is_recorded() {
    let app = spawn_app().await;
    let election =
        insert_election(&app.db, ElectionSpec { anonymity_set: 50, ..ElectionSpec::default() }).await;
    let voter = app.voter(410).await;
    let receipt = receipt_of(app.cast(&voter.access, election, &[RUNNERS[0]]).await).await;
    eventually("the voter noted in the voter set", || async {
        let noted: bool = redis::cmd("SISMEMBER")
            .arg(app.keys().voters(election))
            .arg(410)
            .query_async(&mut app.deps().await.redis)
            .await
            .unwrap();
        noted.then_some(())
    })
    .await;
    let mine: serde_json::Value =
        app.get_as(&format!("/v1/elections/{election}/ballot"), &voter.access).await.json().await.unwrap();
    assert_eq!(mine["voted"], true);
    let told = app.get_json(&format!("/v1/receipts/{receipt}")).await;
    assert_eq!(told["status"], "pending", "held for the anonymity set, not yet recorded");
}

#[tokio::test]
async fn the_api_answers_503_quickly_while_nats_is_down() {
    let proxy = Proxy::start("127.0.0.1:4222".parse().unwrap()).await;
    let app = spawn_app_with(API_ONLY, |s| {
        s.nats.url = tally_domain::secret::Secret::new(format!("nats://{}", proxy.addr));
        s.nats.publish_timeout_ms = 500;
    })
    .await;
    let election = insert_election(&app.db, ElectionSpec::default()).await;
    let voter = app.voter(400).await;
    proxy.cut();
    let started = std::time::Instant::now();
    let response = app.cast(&voter.access, election, &[RUNNERS[0]]).await;
    assert!(started.elapsed() < Duration::from_secs(3), "answered in {:?}", started.elapsed());
    assert!(response.headers().get("retry-after").is_some());
    assert_eq!(code_of(response).await, (503, "unavailable".into()));
    let mine: serde_json::Value =
        app.get_as(&format!("/v1/elections/{election}/ballot"), &voter.access).await.json().await.unwrap();
    assert_eq!(mine["voted"], false, "a refused ballot leaves no trace");
}

#[tokio::test]
async fn unopenable_messages_are_quarantined_whole_and_never_counted() {
    let app = spawn_app().await;
    let election = insert_election(&app.db, ElectionSpec::default()).await;
    let deps = app.deps().await;
    let subject = tally_platform::nats::ballot_subject(&app.settings.nats, election);

    // Garbage, and a well-formed ballot sealed by someone who knows the
    // workers' public key but not the API's private key.
    let junk = bytes::Bytes::from_static(b"{\"citizen_id\": 7, \"selections\": \"secret choice\"");
    let mut junk_headers = async_nats::HeaderMap::new();
    junk_headers.insert(async_nats::header::NATS_MESSAGE_ID, "junk-1");
    junk_headers.insert("X-Test", "garbage");
    let sealing = &app.settings.sealing;
    let forger = tally_domain::seal::Sealer::new(
        &sealing.key_id,
        &tally_domain::seal::public_key(&sealing.public_keys[&sealing.key_id]).unwrap(),
        &tally_domain::seal::private_key(&tally_domain::seal::generate().private).unwrap(),
    )
    .unwrap();
    let forged = VoteCommand {
        receipt: uuid::Uuid::new_v4(),
        election_id: election,
        citizen_id: 7,
        selections: vec![RUNNERS[0]],
        accepted_at: OffsetDateTime::now_utc(),
    }
    .seal(&forger, 1);
    let sent = [(junk_headers, junk.clone()), (forged.headers.clone(), forged.payload.clone())];
    for (headers, payload) in sent.iter().cloned() {
        tally_platform::nats::publish_acked(
            &deps.jetstream,
            subject.clone(),
            headers,
            payload,
            Duration::from_secs(2),
        )
        .await
        .unwrap();
    }

    // Noted in dead_letters by subject and error only: no bytes, no size.
    let rows = eventually("both dead letters", || async {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT subject, error FROM dead_letters ORDER BY id")
                .fetch_all(&app.db)
                .await
                .unwrap();
        (rows.len() == 2).then_some(rows)
    })
    .await;
    for (stored_subject, error) in rows {
        assert_eq!(stored_subject, subject);
        assert!(!error.contains("secret choice"), "the error keeps no payload: {error}");
    }
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns WHERE table_name = 'dead_letters' ORDER BY 1",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(columns, ["error", "id", "received_at", "subject"], "no payload size is kept");

    // Kept whole, headers and all, in the quarantine stream.
    let quarantine = deps
        .jetstream
        .get_stream(format!("{}_QUARANTINE", app.settings.nats.stream))
        .await
        .expect("the quarantine stream exists");
    let kept = eventually("both messages in quarantine", || async {
        let mut kept = Vec::new();
        for sequence in 1..=2 {
            kept.push(quarantine.get_raw_message(sequence).await.ok()?);
        }
        Some(kept)
    })
    .await;
    let expected_subject = format!("quarantine.{}.{election}", app.settings.nats.subject_prefix);
    for (headers, payload) in &sent {
        let message =
            kept.iter().find(|m| m.payload == *payload).expect("the message sent is kept as it was");
        assert_eq!(message.subject.as_str(), expected_subject);
        for (name, values) in headers.iter() {
            if *name != async_nats::header::NATS_MESSAGE_ID {
                assert_eq!(
                    message.headers.get_all(name.clone()).collect::<Vec<_>>(),
                    values.iter().collect::<Vec<_>>()
                );
            }
        }
    }
    // ...and out of the work queue.
    eventually("the quarantined messages to leave the queue", || async {
        (app.queued(&deps).await == 0).then_some(())
    })
    .await;

    // Good ballots still flow; the forged one counts for nothing.
    let voter = app.voter(450).await;
    let receipt = receipt_of(app.cast(&voter.access, election, &[RUNNERS[1]]).await).await;
    app.close(election).await;
    assert_eq!(app.settled(&receipt).await["status"], "recorded");
    app.recorded(election, 1).await;
    assert_eq!(
        app.totals(election).await,
        (vec![(RUNNERS[0], 0), (RUNNERS[1], 1)], vec![(RUNNERS[0], 0), (RUNNERS[1], 1)])
    );
    let forged_voter: i64 = sqlx::query_scalar("SELECT count(*) FROM voter_roll WHERE citizen_id = 7")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(forged_voter, 0, "the forger's citizen is not on the voter roll");
    assert_eq!(quarantine.get_info().await.unwrap().state.messages, 2, "the quarantine keeps both");
}
