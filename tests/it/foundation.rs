use std::time::Duration;

use futures_util::StreamExt;
use tally::app::Roles;
use tally_platform::nats::{self, Stored};

use crate::helpers::{Cleanup, Namespace, Proxy, eventually, spawn_app, spawn_app_with};

#[tokio::test]
async fn migrations_apply_and_the_schema_refuses_bad_rows() {
    let ns = Namespace::new();
    let _cleanup = Cleanup(ns.clone());
    let db = ns.create_database().await;

    sqlx::query(
        "INSERT INTO citizens (citizen_id, full_name, dob, pob, permanent_address, province)
         VALUES (1, 'Ada Voter', '1990-01-01', 'Capital', '1 Oak Street', 'Capital')",
    )
    .execute(&db)
    .await
    .expect("a citizen inserts");
    let user = "INSERT INTO users (citizen_id, password_hash, phone) VALUES ($1, '$argon2id$v=19$x', $2)";
    sqlx::query(user).bind(1_i64).bind("+15550000001").execute(&db).await.expect("a user inserts");

    let duplicate_user = sqlx::query(user).bind(1_i64).bind("+15550000002").execute(&db).await.unwrap_err();
    assert_eq!(tally_platform::postgres::violated_constraint(&duplicate_user), Some("users_pkey"));

    let user_without_citizen =
        sqlx::query(user).bind(99_i64).bind("+15550000003").execute(&db).await.unwrap_err();
    assert_eq!(
        tally_platform::postgres::violated_constraint(&user_without_citizen),
        Some("users_citizen_fkey")
    );

    let election: i64 = sqlx::query_scalar(
        "INSERT INTO elections (name, start_at, end_at) VALUES ('E', now(), now() + interval '1 day')
         RETURNING election_id",
    )
    .fetch_one(&db)
    .await
    .expect("an election inserts");

    let roll = "INSERT INTO voter_roll (election_id, citizen_id) VALUES ($1, $2)";
    sqlx::query(roll).bind(election).bind(1_i64).execute(&db).await.expect("first vote recorded");
    let second = sqlx::query(roll).bind(election).bind(1_i64).execute(&db).await.unwrap_err();
    assert_eq!(tally_platform::postgres::violated_constraint(&second), Some("voter_roll_pkey"));

    let runner =
        sqlx::query("INSERT INTO runners (election_id, citizen_id, post) VALUES ($1, 4242, 'President')")
            .bind(election)
            .execute(&db)
            .await
            .unwrap_err();
    assert_eq!(tally_platform::postgres::violated_constraint(&runner), Some("runners_citizen_fkey"));

    let backwards = sqlx::query(
        "INSERT INTO elections (name, start_at, end_at) VALUES ('E', now(), now() - interval '1 hour')",
    )
    .execute(&db)
    .await
    .unwrap_err();
    assert_eq!(tally_platform::postgres::violated_constraint(&backwards), Some("elections_window_check"));

    let bad_restriction = sqlx::query(
        "INSERT INTO elections (name, start_at, end_at, vote_restriction) VALUES ('E', now(), now() + interval '1 day', 'everyone')",
    )
    .execute(&db)
    .await
    .unwrap_err();
    assert_eq!(
        tally_platform::postgres::violated_constraint(&bad_restriction),
        Some("elections_restriction_check")
    );

    let rewrite_audit =
        sqlx::query("INSERT INTO audit_log (actor, action) VALUES ('cli:test', 'test')").execute(&db).await;
    assert!(rewrite_audit.is_ok());
    let tamper = sqlx::query("UPDATE audit_log SET action = 'changed'").execute(&db).await;
    assert!(tamper.is_err(), "the audit log is append-only");
}

#[tokio::test]
async fn jetstream_publish_is_acked_deduplicated_and_consumed() {
    let ns = Namespace::new();
    let _cleanup = Cleanup(ns.clone());
    let settings = ns.settings();
    let client = nats::connect(&settings.nats).await.expect("NATS client");
    let js = nats::jetstream(client, &settings.nats);
    tally_platform::streams::provision(&js, &settings.nats).await.expect("stream created");
    tally_platform::streams::provision(&js, &settings.nats).await.expect("provisioning twice is harmless");
    tally_platform::streams::require(&js, &settings.nats).await.expect("streams as provisioned");
    let stream = js.get_stream(&settings.nats.stream).await.expect("the votes stream");
    // Beside it, the quarantine for messages no worker can open.
    let quarantine = js
        .get_stream(format!("{}_QUARANTINE", settings.nats.stream))
        .await
        .expect("the quarantine stream is created with the votes stream");
    assert_eq!(
        quarantine.cached_info().config.subjects,
        [format!("quarantine.{}.*", settings.nats.subject_prefix)]
    );

    let subject = nats::ballot_subject(&settings.nats, 7);
    let timeout = Duration::from_secs(2);
    let msg_id = || {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, "7:1");
        headers
    };
    let first =
        nats::publish_acked(&js, subject.clone(), msg_id(), "hello".into(), timeout).await.expect("stored");
    let again =
        nats::publish_acked(&js, subject.clone(), msg_id(), "hello".into(), timeout).await.expect("acked");
    assert!(matches!(first, Stored::New(_)), "{first:?}");
    // The duplicate's ack names where the original lies, which is what a
    // retry needs to learn whether it came before the close.
    assert_eq!(again, Stored::Duplicate(first.sequence()));

    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("roundtrip".into()),
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut messages =
        consumer.fetch().max_messages(10).expires(Duration::from_secs(1)).messages().await.expect("fetch");
    let message = messages.next().await.expect("one message").expect("readable");
    assert_eq!(message.subject.as_str(), subject);
    assert_eq!(&message.payload[..], b"hello");
    message.ack().await.expect("ack");
    assert!(messages.next().await.is_none(), "the duplicate was never stored");
}

#[tokio::test]
async fn redis_round_trip_through_the_shared_client() {
    let ns = Namespace::new();
    let _cleanup = Cleanup(ns.clone());
    let settings = ns.settings();
    let mut redis = tally_platform::redis::connect(&settings.redis).await.expect("Redis");
    let keys = tally_platform::redis::Keys::new(&settings.redis.key_prefix);
    let key = keys.tally(3);
    assert!(key.starts_with(&ns.id));
    let _: () = redis::cmd("HSET").arg(&key).arg("12").arg(5).query_async(&mut redis).await.expect("HSET");
    let votes: i64 = redis::cmd("HGET").arg(&key).arg("12").query_async(&mut redis).await.expect("HGET");
    assert_eq!(votes, 5);
    assert_eq!(keys.election_of_channel(&keys.tally_channel(3)), Some(3));
    assert_eq!(keys.election_of_channel("other:3"), None);
}

#[tokio::test]
async fn health_readiness_and_metrics_on_the_admin_port() {
    let app = spawn_app().await;
    let health = app.client.get(format!("{}/healthz", app.admin)).send().await.expect("healthz");
    assert_eq!(health.status(), 200);

    let ready = app.client.get(format!("{}/readyz", app.admin)).send().await.expect("readyz");
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.expect("json");
    assert_eq!(body["checks"]["postgres"], "ok");
    assert_eq!(body["checks"]["redis"], "ok");
    assert_eq!(body["checks"]["nats"], "ok");

    // One request so the HTTP metrics exist.
    app.client.get(format!("{}/nowhere", app.api)).send().await.expect("request");
    let metrics = app.client.get(format!("{}/metrics", app.admin)).send().await.expect("metrics");
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.expect("text");
    assert!(text.contains("tally_http_requests_total"), "{text}");
    assert!(text.contains("tally_dependency_up"), "{text}");
    assert!(text.contains("process_resident_memory_bytes"), "{text}");
    assert!(!text.contains("/nowhere"), "raw paths never become labels");
}

#[tokio::test]
async fn readyz_is_not_ready_while_a_dependency_is_unreachable() {
    let ns = Namespace::new();
    let _cleanup = Cleanup(ns.clone());
    ns.create_database().await;
    // Nothing listens on a port we bound and released.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let mut settings = ns.settings();
    settings.redis.url = tally_domain::secret::Secret::new(format!("redis://{closed}"));
    let app = tally::app::App::start(settings, Roles::ALL, tokio_util::sync::CancellationToken::new())
        .await
        .expect("starts without its dependencies");
    let client = reqwest::Client::new();
    let health = client.get(format!("http://{}/healthz", app.admin_addr)).send().await.expect("healthz");
    assert_eq!(health.status(), 200, "alive even when not ready");
    let ready = client.get(format!("http://{}/readyz", app.admin_addr)).send().await.expect("readyz");
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.expect("json");
    assert_eq!(body["checks"]["redis"], "connecting");
    assert_eq!(body["checks"]["postgres"], "ok");
    app.stop().await.expect("stops while still connecting");
}

/// Only workers need NATS: an API and a broadcaster whose NATS is down are
/// ready and serve reads (so a NATS outage keeps the results pages up),
/// while a worker process is not ready.
#[tokio::test]
async fn readiness_needs_nats_only_for_workers() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let without_nats = |s: &mut tally_platform::Settings| {
        s.nats.url = tally_domain::secret::Secret::new(format!("nats://{closed}"));
    };
    let ns = Namespace::new();
    let cleanup = std::sync::Arc::new(Cleanup(ns.clone()));
    let db = ns.create_database().await;
    let mut settings = ns.settings();
    without_nats(&mut settings);
    let roles = Roles { api: true, workers: false, broadcaster: true };
    let readers = crate::helpers::start(ns, settings, roles, db, cleanup).await;
    let ready = readers.client.get(format!("{}/readyz", readers.admin)).send().await.expect("readyz");
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.expect("json");
    assert_ne!(body["checks"]["nats"], "ok", "NATS is reported, though not required: {body}");
    let list = readers.client.get(format!("{}/v1/elections", readers.api)).send().await.expect("list");
    assert_eq!(list.status(), 200, "the API's reads work without NATS");
    let live = readers.client.get(format!("{}/v1/live/elections", readers.broadcaster)).send().await.unwrap();
    assert_eq!(live.status(), 200, "the live page's list works without NATS");

    let workers = tally::app::App::start(
        readers.settings.clone(),
        Roles { api: false, workers: true, broadcaster: false },
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .expect("starts without NATS");
    let ready = readers.client.get(format!("http://{}/readyz", workers.admin_addr)).send().await.unwrap();
    assert_eq!(ready.status(), 503, "workers are not ready without NATS");
    workers.stop().await.expect("stops while still connecting");
}

#[tokio::test]
async fn readyz_follows_a_dependency_that_goes_away_and_returns() {
    let proxy = Proxy::start("127.0.0.1:6379".parse().expect("addr")).await;
    let app = spawn_app_with(Roles { api: true, workers: false, broadcaster: false }, |s| {
        s.redis.url = tally_domain::secret::Secret::new(format!("redis://{}", proxy.addr));
    })
    .await;
    let readyz = || async {
        let response = reqwest::get(format!("{}/readyz", app.admin)).await.expect("readyz");
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.expect("json");
        (status, body["checks"]["redis"].as_str().unwrap_or_default().to_string())
    };
    assert_eq!(readyz().await, (200, "ok".to_string()));
    proxy.cut();
    eventually("readyz to report Redis lost", || async {
        let (status, redis) = readyz().await;
        (status == 503 && redis == "unreachable").then_some(())
    })
    .await;
    proxy.restore();
    eventually("readyz to recover", || async { (readyz().await.0 == 200).then_some(()) }).await;
}

#[tokio::test]
async fn one_role_runs_alone() {
    let app = spawn_app_with(Roles { api: true, workers: false, broadcaster: false }, |_| {}).await;
    assert!(app.broadcaster.is_empty(), "no broadcaster listener");
    let response = app.client.get(format!("{}/v1/nothing-here", app.api)).send().await.expect("request");
    assert_eq!(response.status(), 404);
    app.stop().await;
}

#[tokio::test]
async fn unknown_routes_get_problem_json_and_a_request_id() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(format!("{}/v1/nothing-here", app.api))
        .header("x-request-id", "req-123")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 404);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    assert_eq!(response.headers()["x-request-id"], "req-123");
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["code"], "not_found");

    let generated = app.client.get(format!("{}/v1/nothing-here", app.api)).send().await.expect("request");
    assert!(!generated.headers()["x-request-id"].is_empty(), "an id is generated when absent");
}

#[test]
fn a_bad_setting_stops_start_up_with_one_line_naming_it() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
        .arg("migrate")
        .env("TALLY_WORKERS__BATCH_SIZE", "lots")
        .output()
        .expect("run tally");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("workers.batch_size") && stderr.contains("TALLY_WORKERS__BATCH_SIZE"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}
