//! Tokens, limits and lookups an attacker would lean on: each test fails
//! without the mechanism it names.

use reqwest::Method;
use tally::app::Roles;
use tally_domain::citizen::Role;
use tally_platform::Settings;
use tally_platform::auth::TokenKeys;

use crate::helpers::{
    ElectionSpec, Proxy, RUNNERS, TestApp, code_of, insert_election, spawn_app, spawn_app_with, start_with,
};

const API_ONLY: Roles = Roles { api: true, workers: false, broadcaster: false };

/// Deletes every key of the app's namespace, as a Redis restart without
/// persistence (or a failover to an empty replica) would.
async fn forget_redis(app: &TestApp) {
    let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> =
        redis::cmd("KEYS").arg(format!("{}:*", app.ns.id)).query_async(&mut redis).await.unwrap();
    if !keys.is_empty() {
        let () = redis::cmd("DEL").arg(keys).query_async(&mut redis).await.unwrap();
    }
}

#[tokio::test]
async fn a_logged_out_token_stays_refused_after_redis_forgets() {
    let app = spawn_app().await;
    let election = insert_election(&app.db, ElectionSpec::default()).await;
    let gone = app.voter(501).await;
    let kept = app.voter(502).await;
    let logout = app.send_as(Method::POST, "/v1/auth/logout", &gone.access, None).await;
    assert_eq!(logout.status(), 204);

    // The ballot route checks revocation inside its own Redis round trip.
    forget_redis(&app).await;
    assert_eq!(
        code_of(app.cast(&gone.access, election, &[RUNNERS[0]]).await).await,
        (401, "session_revoked".into()),
        "a ballot under a logged-out session, after Redis lost its revocations"
    );
    // Every other route uses the extractor.
    forget_redis(&app).await;
    assert_eq!(
        code_of(app.get_as("/v1/me", &gone.access).await).await,
        (401, "session_revoked".into()),
        "a logged-out session, after Redis lost its revocations"
    );
    // Redis holds them again, and a live session is unaffected.
    assert_eq!(code_of(app.get_as("/v1/me", &gone.access).await).await.0, 401);
    assert_eq!(app.get_as("/v1/me", &kept.access).await.status(), 200);
    assert_eq!(app.cast(&kept.access, election, &[RUNNERS[0]]).await.status(), 202);
}

#[test]
fn a_token_minted_with_the_development_key_is_refused_beside_a_key_of_ones_own() {
    let vars = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    };
    // No TALLY_ENV, as in an image that never set it.
    let own = Settings::load_from(
        None,
        vars(&[
            ("TALLY_AUTH__SIGNING_KEY_ID", "main"),
            ("TALLY_AUTH__KEYS__MAIN", "a-key-of-this-deployment-and-nobody-elses"),
        ]),
    )
    .unwrap();
    let forger = TokenKeys::from_settings(&Settings::default().auth);
    let dob = time::macros::date!(1980 - 01 - 01);
    let forged = forger.sign(&forger.claims(1, uuid::Uuid::new_v4(), Role::Admin, "Capital", dob)).unwrap();
    assert!(forger.verify(&forged).is_ok(), "the forger's own check passes");
    assert!(
        TokenKeys::from_settings(&own.auth).verify(&forged).is_err(),
        "the deployment must not accept the published development key"
    );
}

#[tokio::test]
async fn every_outcome_of_the_ballot_route_counts_against_the_client_limit() {
    let app = spawn_app_with(Roles::ALL, |s| {
        s.limits.per_client_per_minute = 3;
        s.http.trusted_proxies = vec!["127.0.0.0/8".into()];
    })
    .await;
    let open = insert_election(&app.db, ElectionSpec::default()).await;
    let closed = insert_election(&app.db, ElectionSpec { ends_in_secs: -1, ..ElectionSpec::default() }).await;
    let voter = app.voter(601).await;
    let ballot = |from: &'static str, token: &str, election: i64, body: serde_json::Value| {
        app.client
            .post(format!("{}/v1/elections/{election}/ballots", app.api))
            .header("x-forwarded-for", from)
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    let selections = serde_json::json!({"selections": [RUNNERS[0]]});
    let cases: [(&str, &str, i64, serde_json::Value, u16); 5] = [
        ("203.0.113.1", voter.access.as_str(), 987_654, selections.clone(), 404),
        ("203.0.113.2", voter.access.as_str(), closed, selections.clone(), 409),
        ("203.0.113.3", "not-a-token", open, selections.clone(), 401),
        ("203.0.113.4", voter.access.as_str(), open, serde_json::json!({"selections": "all"}), 422),
        ("203.0.113.5", voter.access.as_str(), open, serde_json::json!({"selections": [1]}), 422),
    ];
    for (from, token, election, body, refused) in cases {
        for attempt in 1..=3 {
            let status = ballot(from, token, election, body.clone()).await.unwrap().status();
            assert_eq!(status, refused, "{from}: attempt {attempt}");
        }
        let status = ballot(from, token, election, body.clone()).await.unwrap().status();
        assert_eq!(status, 429, "{from}: the fourth refusal within a minute is over the limit");
    }
}

#[tokio::test]
async fn an_unknown_election_is_remembered_for_a_moment_so_repeats_skip_postgres() {
    let app = spawn_app().await;
    let voter = app.voter(701).await;
    let proxy = Proxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let settings = crate::helpers::with_database_through(&app, &proxy);
    let api = start_with(&app, settings, API_ONLY).await;
    assert_eq!(code_of(api.cast(&voter.access, 424_242, &[RUNNERS[0]]).await).await.0, 404);

    proxy.cut();
    assert_eq!(
        code_of(api.cast(&voter.access, 424_242, &[RUNNERS[0]]).await).await,
        (404, "election_not_found".into()),
        "answered from memory, with Postgres out of reach"
    );
    let other = api.cast(&voter.access, 424_243, &[RUNNERS[0]]).await.status().as_u16();
    assert!(other >= 500, "an id not seen yet needs Postgres, which is cut: {other}");
    proxy.restore();
    api.stop().await;
}

#[tokio::test]
async fn reconcile_sees_no_drift_while_commits_land_under_it() {
    let app = spawn_app_with(API_ONLY, |_| {}).await;
    let election = insert_election(&app.db, ElectionSpec::default()).await;
    let deps = app.deps().await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Commits as a worker makes them: Postgres first, then Redis.
    let writer = {
        let (deps, stop) = (deps.clone(), stop.clone());
        tokio::spawn(async move {
            let mut commits = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut tx = deps.db.begin().await.unwrap();
                let (version, turnout): (i64, i64) = sqlx::query_as(
                    "UPDATE elections SET tally_version = tally_version + 1, turnout = turnout + 1
                     WHERE election_id = $1 RETURNING tally_version, turnout",
                )
                .bind(election)
                .fetch_one(&mut *tx)
                .await
                .unwrap();
                let votes: Vec<(i64, i64)> = sqlx::query_as(
                    "UPDATE runners SET total_votes = total_votes + (citizen_id = $2)::int
                     WHERE election_id = $1 RETURNING citizen_id, total_votes",
                )
                .bind(election)
                .bind(RUNNERS[commits % 2])
                .fetch_all(&mut *tx)
                .await
                .unwrap();
                tx.commit().await.unwrap();
                let totals = tally_platform::tallies::Totals {
                    election_id: election,
                    version,
                    turnout,
                    votes,
                    oldest_accepted_at: None,
                };
                // A worker's Redis write trails its commit by a network hop or more.
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                tally_platform::tallies::apply(&deps.redis, &deps.keys, &[totals], &[], false).await.unwrap();
                commits += 1;
            }
            commits
        })
    };
    let mut drift = 0;
    let mut passes = 0;
    let until = std::time::Instant::now() + std::time::Duration::from_secs(4);
    while std::time::Instant::now() < until {
        drift += tally_workers::reconcile::reconcile(&deps, Some(election)).await.unwrap().drift;
        passes += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let commits = writer.await.unwrap();
    assert!(commits > 50 && passes > 10, "{commits} commits, {passes} passes");
    assert_eq!(drift, 0, "{passes} passes over {commits} commits found drift that was not there");
}

#[tokio::test]
async fn a_recorded_receipt_never_also_reads_rejected() {
    use tally_workers::record::{Fate, record};
    let app = spawn_app_with(API_ONLY, |_| {}).await;
    let election = insert_election(&app.db, ElectionSpec::default()).await;
    crate::helpers::add_citizen(&app.db, 801, "Capital", "1990-01-01").await;
    let ballot = tally_domain::ballot::VoteCommand {
        receipt: uuid::Uuid::new_v4(),
        election_id: election,
        citizen_id: 801,
        selections: vec![RUNNERS[0]],
        accepted_at: time::OffsetDateTime::now_utc(),
    };
    let first = record(&app.db, std::slice::from_ref(&ballot), &[false]).await.unwrap();
    assert_eq!(first.fates, [Fate::Recorded]);
    // The same ballot again, its copy stored after the close (a retry with
    // the same Idempotency-Key), alone and beside its original.
    let again = record(&app.db, std::slice::from_ref(&ballot), &[true]).await.unwrap();
    assert_eq!(again.fates, [Fate::AlreadyRecorded]);
    let rejected: i64 = sqlx::query_scalar("SELECT count(*) FROM rejected_ballots WHERE receipt = $1")
        .bind(ballot.receipt)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(rejected, 0, "the receipt reads recorded and nothing else");

    let twin = tally_domain::ballot::VoteCommand { citizen_id: 802, receipt: uuid::Uuid::new_v4(), ..ballot };
    crate::helpers::add_citizen(&app.db, 802, "Capital", "1990-01-01").await;
    let both = record(&app.db, &[twin.clone(), twin], &[false, true]).await.unwrap();
    assert_eq!(both.fates, [Fate::Recorded, Fate::AlreadyRecorded]);
}

#[tokio::test]
async fn the_audit_log_cannot_be_emptied() {
    let app = spawn_app_with(API_ONLY, |_| {}).await;
    sqlx::query("INSERT INTO audit_log (actor, action) VALUES ('cli:test', 'test')")
        .execute(&app.db)
        .await
        .unwrap();
    for statement in ["TRUNCATE audit_log", "DELETE FROM audit_log", "UPDATE audit_log SET actor = 'someone'"]
    {
        let refused = sqlx::query(statement).execute(&app.db).await.unwrap_err();
        assert!(refused.to_string().contains("append-only"), "{statement}: {refused}");
    }
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log").fetch_one(&app.db).await.unwrap();
    assert_eq!(kept, 1);
}

#[tokio::test]
async fn a_settled_elections_keys_leave_redis_and_an_open_ones_stay() {
    let app = spawn_app_with(API_ONLY, |s| s.redis.settled_election_ttl_secs = 600).await;
    let deps = app.deps().await;
    let settled = insert_election(&app.db, ElectionSpec::default()).await;
    let open = insert_election(&app.db, ElectionSpec::default()).await;
    let mut redis = deps.redis.clone();
    for election in [settled, open] {
        let totals = tally_platform::tallies::Totals {
            election_id: election,
            version: 1,
            turnout: 1,
            votes: vec![(RUNNERS[0], 1), (RUNNERS[1], 0)],
            oldest_accepted_at: None,
        };
        tally_platform::tallies::apply(&deps.redis, &deps.keys, &[totals], &[(election, 900)], false)
            .await
            .unwrap();
        let () = redis::cmd("HSET")
            .arg(deps.keys.intents(election))
            .arg(900)
            .arg("x")
            .query_async(&mut redis)
            .await
            .unwrap();
    }
    sqlx::query("UPDATE elections SET tally_version = 1, turnout = 1, end_at = now(), fence_seq = 1, fenced_at = now(), final_at = now() WHERE election_id = $1")
        .bind(settled)
        .execute(&app.db)
        .await
        .unwrap();
    tally_workers::reconcile::reconcile(&deps, None).await.unwrap();
    let ttl = |key: String| {
        let mut redis = deps.redis.clone();
        async move { redis::cmd("TTL").arg(key).query_async::<i64>(&mut redis).await.unwrap() }
    };
    let keys = |e: i64| [deps.keys.tally(e), deps.keys.voters(e), deps.keys.intents(e)];
    for key in keys(settled) {
        let left = ttl(key.clone()).await;
        assert!((1..=600).contains(&left), "{key}: {left}");
    }
    for key in keys(open) {
        assert_eq!(ttl(key.clone()).await, -1, "{key} of an open election never expires");
    }
    // Gone, it is not rebuilt: its results come from Postgres.
    let () = redis::cmd("DEL").arg(&keys(settled)[..]).query_async(&mut redis).await.unwrap();
    tally_workers::reconcile::reconcile(&deps, None).await.unwrap();
    for key in keys(settled) {
        assert_eq!(ttl(key.clone()).await, -2, "{key} stays gone");
    }
    let results = app.get_json(&format!("/v1/elections/{settled}/results")).await;
    assert_eq!(results["turnout"], 1, "{results}");
}

#[tokio::test]
async fn a_refresh_retried_after_a_lost_answer_keeps_the_session() {
    let app = spawn_app_with(Roles::ALL, |s| s.auth.refresh_reuse_grace_secs = 2).await;
    let voter = app.voter(901).await;
    let refresh =
        |token: &str| app.post_json("/v1/auth/refresh", serde_json::json!({"refresh_token": token}));
    let pair = |body: serde_json::Value| {
        (
            body["access_token"].as_str().unwrap().to_string(),
            body["refresh_token"].as_str().unwrap().to_string(),
        )
    };
    // The answer carrying `lost` never reached the client, which retries.
    let (_, lost) = pair(refresh(&voter.refresh).await.json().await.unwrap());
    let retried = refresh(&voter.refresh).await;
    assert_eq!(retried.status(), 200, "a retry within the grace period is not theft");
    let (access, current) = pair(retried.json().await.unwrap());
    assert_eq!(app.get_as("/v1/me", &access).await.status(), 200);
    let (access, current) = pair(refresh(&current).await.json().await.unwrap());
    assert_eq!(app.get_as("/v1/me", &access).await.status(), 200, "the session lives on");

    // The lost successor surfacing later means someone else had it.
    assert_eq!(code_of(refresh(&lost).await).await, (401, "invalid_refresh_token".into()));
    assert_eq!(code_of(app.get_as("/v1/me", &access).await).await, (401, "session_revoked".into()));
    assert_eq!(code_of(refresh(&current).await).await.0, 401);

    // Past the grace period a rotated token is theft, as before.
    let voter = app.voter(902).await;
    assert_eq!(refresh(&voter.refresh).await.status(), 200);
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    assert_eq!(code_of(refresh(&voter.refresh).await).await, (401, "invalid_refresh_token".into()));
    assert_eq!(code_of(app.get_as("/v1/me", &voter.access).await).await, (401, "session_revoked".into()));
}

#[tokio::test]
async fn one_ipv6_network_shares_one_budget_and_every_forwarded_line_counts() {
    let app = spawn_app_with(API_ONLY, |s| {
        s.limits.per_client_per_minute = 2;
        s.http.trusted_proxies = vec!["127.0.0.0/8".into()];
    })
    .await;
    let get = |lines: &[&str]| {
        let mut request = app.client.get(format!("{}/v1/elections", app.api));
        for line in lines {
            request = request.header("x-forwarded-for", *line);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };
    // Three addresses of one /64: one client.
    assert_eq!(get(&["2001:db8:1:2::1"]).await, 200);
    assert_eq!(get(&["2001:db8:1:2:ffff::9"]).await, 200);
    assert_eq!(get(&["2001:db8:1:2:abcd::1"]).await, 429, "the /64 has spent its budget");
    assert_eq!(get(&["2001:db8:1:3::1"]).await, 200, "the next /64 is another client");

    // A client's own header first, the proxy's appended as a second line:
    // the address the proxy saw is the one counted.
    let spoofed = |n: u8| format!("198.51.100.{n}");
    for n in 1..=2 {
        assert_eq!(get(&[&spoofed(n), "203.0.113.50"]).await, 200);
    }
    assert_eq!(get(&[&spoofed(3), "203.0.113.50"]).await, 429, "a made-up first line changes nothing");
}

#[tokio::test]
async fn the_application_role_cannot_empty_or_rewrite_the_audit_log() {
    let app = spawn_app_with(API_ONLY, |_| {}).await;
    let role = format!("app_{}", app.ns.id);
    let script =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/postgres/app-role.sql"))
            .unwrap()
            .replace("tally_app", &role)
            .replace(":'app_password'", "'not-a-secret'");
    sqlx::raw_sql(&script).execute(&app.db).await.unwrap();
    sqlx::query("INSERT INTO audit_log (actor, action) VALUES ('cli:test', 'test')")
        .execute(&app.db)
        .await
        .unwrap();

    let url = format!(
        "{}/{}",
        crate::helpers::PG_SERVER.replace("postgres@", &format!("{role}@")),
        app.ns.database()
    );
    let as_app = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query("INSERT INTO audit_log (actor, action) VALUES ('cli:test', 'again')")
        .execute(&as_app)
        .await
        .unwrap();
    for statement in [
        "TRUNCATE audit_log",
        "DELETE FROM audit_log",
        "ALTER TABLE audit_log DISABLE TRIGGER ALL",
        "DROP TRIGGER audit_log_no_update ON audit_log",
    ] {
        assert!(sqlx::query(statement).execute(&as_app).await.is_err(), "{statement} must be refused");
    }
    as_app.close().await;
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log").fetch_one(&app.db).await.unwrap();
    assert_eq!(kept, 2);
    sqlx::raw_sql(&format!("DROP OWNED BY {role}; DROP ROLE {role}")).execute(&app.db).await.unwrap();
}

#[tokio::test]
async fn a_revocation_made_while_no_api_listened_reaches_redis_when_one_starts() {
    let app = spawn_app().await;
    let voter = app.voter(951).await;
    assert_eq!(app.get_as("/v1/me", &voter.access).await.status(), 200, "Redis holds the revocations");
    // As a migration or an admin command does: Postgres only.
    sqlx::query("UPDATE sessions SET revoked_at = now() WHERE citizen_id = 951")
        .execute(&app.db)
        .await
        .unwrap();
    let restarted = app.another_instance(API_ONLY).await;
    crate::helpers::eventually("the revocation to reach Redis", || async {
        let (status, code) = code_of(restarted.get_as("/v1/me", &voter.access).await).await;
        (status == 401 && code == "session_revoked").then_some(())
    })
    .await;
    assert_eq!(code_of(app.get_as("/v1/me", &voter.access).await).await.0, 401, "on every replica");
}
