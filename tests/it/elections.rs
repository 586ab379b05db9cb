use reqwest::Method;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::helpers::{ElectionSpec, RUNNERS, add_citizen, code_of, eventually, insert_election, spawn_app};

fn at(offset_secs: i64) -> String {
    (OffsetDateTime::now_utc() + time::Duration::seconds(offset_secs)).format(&Rfc3339).expect("format")
}

#[tokio::test]
async fn admins_create_elections_and_manage_runners_with_an_audit_trail() {
    let app = spawn_app().await;
    let admin = app.admin(1).await;
    let voter = app.voter(2).await;
    add_citizen(&app.db, 10, "Northland", "1970-01-01").await;
    add_citizen(&app.db, 11, "Northland", "1971-01-01").await;

    let body = serde_json::json!({
        "name": "  Northland assembly  ", "start_at": at(3600), "end_at": at(7200),
        "vote_restriction": "@provincial:Northland", "results_visibility": "turnout_only"
    });
    assert_eq!(
        code_of(app.send_as(Method::POST, "/v1/elections", &voter.access, Some(body.clone())).await).await,
        (403, "forbidden".into())
    );
    let created = app.send_as(Method::POST, "/v1/elections", &admin, Some(body)).await;
    assert_eq!(created.status(), 201);
    let election: serde_json::Value = created.json().await.unwrap();
    let id = election["election_id"].as_i64().unwrap();
    assert_eq!(election["name"], "Northland assembly");
    assert_eq!(election["min_age"], 18, "default minimum age");
    assert_eq!(election["status"], "scheduled");
    assert_eq!(election["results_visibility"], "turnout_only");
    assert_eq!(election["anonymity_set"], 20, "default K from workers.anonymity_set");

    let runners = format!("/v1/elections/{id}/runners");
    let added = app
        .send_as(
            Method::POST,
            &runners,
            &admin,
            Some(serde_json::json!({"citizen_id": 10, "post": "Speaker"})),
        )
        .await;
    assert_eq!(added.status(), 201);
    app.send_as(
        Method::POST,
        &runners,
        &admin,
        Some(serde_json::json!({"citizen_id": 11, "post": "Speaker"})),
    )
    .await;
    let again = app
        .send_as(
            Method::POST,
            &runners,
            &admin,
            Some(serde_json::json!({"citizen_id": 10, "post": "Deputy"})),
        )
        .await;
    assert_eq!(code_of(again).await, (409, "runner_exists".into()));
    let unknown = app
        .send_as(
            Method::POST,
            &runners,
            &admin,
            Some(serde_json::json!({"citizen_id": 404, "post": "Speaker"})),
        )
        .await;
    assert_eq!(code_of(unknown).await, (404, "citizen_not_found".into()));

    let shown = app.get_json(&format!("/v1/elections/{id}")).await;
    assert_eq!(shown["posts"][0]["post"], "Speaker");
    assert_eq!(shown["posts"][0]["runners"][0]["full_name"], "Citizen 10");

    let removed = app.send_as(Method::DELETE, &format!("{runners}/11"), &admin, None).await;
    assert_eq!(removed.status(), 200);
    let missing = app.send_as(Method::DELETE, &format!("{runners}/11"), &admin, None).await;
    assert_eq!(code_of(missing).await, (404, "runner_not_found".into()));

    let renamed = app
        .send_as(
            Method::PATCH,
            &format!("/v1/elections/{id}"),
            &admin,
            Some(serde_json::json!({"name": "Assembly"})),
        )
        .await;
    assert_eq!(renamed.status(), 200);

    let audit: serde_json::Value =
        app.get_as(&format!("/v1/audit?election_id={id}"), &admin).await.json().await.unwrap();
    let actions: Vec<&str> =
        audit["entries"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["election.update", "runner.remove", "runner.add", "runner.add", "election.create"]);
    let update = &audit["entries"][0];
    assert_eq!(update["actor"], "citizen:1");
    assert_eq!(update["before"]["name"], "Northland assembly");
    assert_eq!(update["after"]["name"], "Assembly");
}

#[tokio::test]
async fn invalid_settings_get_every_problem_at_once() {
    let app = spawn_app().await;
    let admin = app.admin(1).await;
    let body = serde_json::json!({
        "name": "", "start_at": at(-60), "end_at": at(-120),
        "vote_restriction": "@provincial:Atlantis", "min_age": 200, "results_visibility": "sometimes"
    });
    let response = app.send_as(Method::POST, "/v1/elections", &admin, Some(body)).await;
    assert_eq!(response.status(), 422);
    let problem: serde_json::Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "validation_failed");
    let mut fields: Vec<&str> =
        problem["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
    fields.sort();
    assert_eq!(fields, ["end_at", "min_age", "name", "results_visibility", "start_at", "vote_restriction"]);

    let bad_time = serde_json::json!({"name": "E", "start_at": "tomorrow", "end_at": at(60), "vote_restriction": "@everyone"});
    let problem: serde_json::Value =
        app.send_as(Method::POST, "/v1/elections", &admin, Some(bad_time)).await.json().await.unwrap();
    assert_eq!(problem["errors"][0]["field"], "start_at");
    let bad_syntax = serde_json::json!({"name": "E", "start_at": at(60), "end_at": at(120), "vote_restriction": "everyone"});
    let problem: serde_json::Value =
        app.send_as(Method::POST, "/v1/elections", &admin, Some(bad_syntax)).await.json().await.unwrap();
    assert_eq!(problem["errors"][0]["field"], "vote_restriction");
}

#[tokio::test]
async fn elections_open_and_close_by_the_clock_without_a_restart() {
    let app = spawn_app().await;
    let admin = app.admin(1).await;
    add_citizen(&app.db, 10, "Capital", "1970-01-01").await;
    add_citizen(&app.db, 11, "Capital", "1970-01-01").await;
    let body = serde_json::json!({"name": "Snap vote", "start_at": at(2), "end_at": at(4), "vote_restriction": "@everyone"});
    let created: serde_json::Value =
        app.send_as(Method::POST, "/v1/elections", &admin, Some(body)).await.json().await.unwrap();
    let id = created["election_id"].as_i64().unwrap();
    for runner in [10, 11] {
        let added = app
            .send_as(
                Method::POST,
                &format!("/v1/elections/{id}/runners"),
                &admin,
                Some(serde_json::json!({"citizen_id": runner, "post": "Chair"})),
            )
            .await;
        assert_eq!(added.status(), 201);
    }
    let path = format!("/v1/elections/{id}");
    let status = || async { app.get_json(&path).await["status"].as_str().unwrap_or_default().to_string() };
    eventually("the election to open", || async { (status().await == "open").then_some(()) }).await;
    let late = app
        .send_as(
            Method::PATCH,
            &format!("/v1/elections/{id}"),
            &admin,
            Some(serde_json::json!({"name": "Late"})),
        )
        .await;
    assert_eq!(code_of(late).await, (409, "election_started".into()));
    let late_runner = app
        .send_as(
            Method::POST,
            &format!("/v1/elections/{id}/runners"),
            &admin,
            Some(serde_json::json!({"citizen_id": 1, "post": "Chair"})),
        )
        .await;
    assert_eq!(code_of(late_runner).await, (409, "election_started".into()));
    eventually("the election to close", || async { (status().await == "closed").then_some(()) }).await;
}

#[tokio::test]
async fn close_cancel_and_the_uncontested_election() {
    let app = spawn_app().await;
    let admin = app.admin(1).await;
    let open = insert_election(&app.db, ElectionSpec::default()).await;
    let closed = app.send_as(Method::POST, &format!("/v1/elections/{open}/close"), &admin, None).await;
    assert_eq!(closed.status(), 200);
    assert_eq!(closed.json::<serde_json::Value>().await.unwrap()["status"], "closed");
    let again = app.send_as(Method::POST, &format!("/v1/elections/{open}/close"), &admin, None).await;
    assert_eq!(code_of(again).await, (409, "election_not_open".into()));
    let cancel_closed =
        app.send_as(Method::POST, &format!("/v1/elections/{open}/cancel"), &admin, None).await;
    assert_eq!(code_of(cancel_closed).await, (409, "election_ended".into()));

    let scheduled =
        insert_election(&app.db, ElectionSpec { starts_in_secs: 600, ..Default::default() }).await;
    let cancelled =
        app.send_as(Method::POST, &format!("/v1/elections/{scheduled}/cancel"), &admin, None).await;
    assert_eq!(cancelled.json::<serde_json::Value>().await.unwrap()["status"], "cancelled");

    let uncontested = insert_election(&app.db, ElectionSpec::default()).await;
    sqlx::query("DELETE FROM runners WHERE election_id = $1 AND citizen_id = $2")
        .bind(uncontested)
        .bind(RUNNERS[1])
        .execute(&app.db)
        .await
        .unwrap();
    assert_eq!(app.get_json(&format!("/v1/elections/{uncontested}")).await["status"], "cancelled");

    assert_eq!(
        code_of(app.send_as(Method::POST, "/v1/elections/999999/close", &admin, None).await).await,
        (404, "election_not_found".into())
    );
    assert_eq!(
        code_of(app.client.get(format!("{}/v1/elections/abc", app.api)).send().await.unwrap()).await,
        (400, "invalid_path".into())
    );
}

#[tokio::test]
async fn eligibility_reasons() {
    let app = spawn_app().await;
    let adult = app.voter_in(20, "Capital", "1990-01-01").await;
    let minor = app.voter_in(21, "Capital", "2015-01-01").await;
    let northerner = app.voter_in(22, "Northland", "1990-01-01").await;
    let capital_only =
        insert_election(&app.db, ElectionSpec { restriction: "@provincial:Capital", ..Default::default() })
            .await;
    let federal =
        insert_election(&app.db, ElectionSpec { restriction: "@federal", ..Default::default() }).await;
    let later = insert_election(&app.db, ElectionSpec { starts_in_secs: 600, ..Default::default() }).await;
    let cancelled = insert_election(&app.db, ElectionSpec::default()).await;
    sqlx::query("UPDATE elections SET cancelled_at = now() WHERE election_id = $1")
        .bind(cancelled)
        .execute(&app.db)
        .await
        .unwrap();

    let check = |token: String, id: i64| {
        let app = &app;
        async move {
            let v: serde_json::Value =
                app.get_as(&format!("/v1/elections/{id}/eligibility"), &token).await.json().await.unwrap();
            (v["eligible"].as_bool().unwrap(), v["reason"].as_str().map(str::to_string))
        }
    };
    assert_eq!(check(adult.access.clone(), capital_only).await, (true, None));
    assert_eq!(check(northerner.access.clone(), capital_only).await, (false, Some("wrong_province".into())));
    assert_eq!(check(northerner.access.clone(), federal).await, (true, None));
    assert_eq!(check(minor.access.clone(), federal).await, (false, Some("too_young".into())));
    assert_eq!(check(adult.access.clone(), later).await, (false, Some("not_open".into())));
    assert_eq!(check(adult.access.clone(), cancelled).await, (false, Some("cancelled".into())));
    assert_eq!(
        code_of(
            app.client.get(format!("{}/v1/elections/{federal}/eligibility", app.api)).send().await.unwrap()
        )
        .await
        .0,
        401
    );
}

#[tokio::test]
async fn results_follow_the_visibility() {
    let app = spawn_app().await;
    let live = insert_election(&app.db, ElectionSpec::default()).await;
    let turnout_only =
        insert_election(&app.db, ElectionSpec { visibility: "turnout_only", ..Default::default() }).await;
    let after_close =
        insert_election(&app.db, ElectionSpec { visibility: "after_close", ..Default::default() }).await;
    let mut redis = tally_platform::redis::connect(&app.settings.redis).await.unwrap();
    let keys = tally_platform::redis::Keys::new(&app.settings.redis.key_prefix);
    for id in [live, turnout_only] {
        let _: () = redis::cmd("HSET")
            .arg(keys.tally(id))
            .arg(&[("_version", 3), ("_turnout", 5), ("9001", 3), ("9002", 2)])
            .query_async(&mut redis)
            .await
            .unwrap();
    }

    let results = app.get_json(&format!("/v1/elections/{live}/results")).await;
    assert_eq!(
        (results["status"].as_str(), results["version"].as_i64(), results["turnout"].as_i64()),
        (Some("open"), Some(3), Some(5))
    );
    assert_eq!(results["final"], false);
    assert_eq!(results["posts"][0]["runners"][0]["votes"], 3);
    assert_eq!(results["posts"][0]["runners"][1]["full_name"], "Runner 9002");

    let hidden_counts = app.get_json(&format!("/v1/elections/{turnout_only}/results")).await;
    assert_eq!(hidden_counts["turnout"], 5);
    assert!(hidden_counts.get("version").is_none(), "the version counts commits: {hidden_counts}");
    assert!(hidden_counts["posts"][0]["runners"][0].get("votes").is_none(), "{hidden_counts}");

    // Hidden the way a live frame hides it (one rule, `Visibility::shown`):
    // the status and the runners, no figure.
    let hidden = app.get_json(&format!("/v1/elections/{after_close}/results")).await;
    assert_eq!(hidden["status"], "open");
    for figure in ["version", "turnout"] {
        assert!(hidden.get(figure).is_none(), "{figure} is hidden: {hidden}");
    }
    assert!(hidden["posts"][0]["runners"][0].get("votes").is_none(), "{hidden}");
    assert_eq!(hidden["posts"][0]["runners"][0]["full_name"], "Runner 9001");

    // Closed: the counts come from Postgres, and are final with nothing pending.
    sqlx::query("UPDATE runners SET total_votes = 7 WHERE election_id = $1 AND citizen_id = 9001")
        .bind(after_close)
        .execute(&app.db)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE elections SET closed_at = now(), turnout = 7, tally_version = 9 WHERE election_id = $1",
    )
    .bind(after_close)
    .execute(&app.db)
    .await
    .unwrap();
    // Final once the workers have fenced it and found nothing waiting.
    let closed = eventually("the closed election to be final", || async {
        let closed = app.get_json(&format!("/v1/elections/{after_close}/results")).await;
        (closed["final"] == true).then_some(closed)
    })
    .await;
    assert_eq!(closed["status"], "closed");
    assert_eq!((closed["turnout"].as_i64(), closed["version"].as_i64()), (Some(7), Some(9)));
    assert_eq!(closed["posts"][0]["runners"][0]["votes"], 7);
    assert_eq!(closed["posts"][0]["runners"][1]["votes"], 0);
}

#[tokio::test]
async fn the_election_list_filters_by_status_and_pages() {
    let app = spawn_app().await;
    let open_a = insert_election(&app.db, ElectionSpec::default()).await;
    let open_b = insert_election(&app.db, ElectionSpec::default()).await;
    let scheduled =
        insert_election(&app.db, ElectionSpec { starts_in_secs: 600, ..Default::default() }).await;
    let ids = |v: &serde_json::Value| -> Vec<i64> {
        v["elections"].as_array().unwrap().iter().map(|e| e["election_id"].as_i64().unwrap()).collect()
    };
    let open = app.get_json("/v1/elections?status=open").await;
    assert_eq!(ids(&open), [open_b, open_a], "newest first");
    assert_eq!(ids(&app.get_json("/v1/elections?status=scheduled").await), [scheduled]);
    let page_two = app.get_json("/v1/elections?per_page=2&page=2").await;
    assert_eq!((ids(&page_two), page_two["total"].as_i64()), (vec![open_a], Some(3)));
    let bad = app.client.get(format!("{}/v1/elections?status=finished", app.api)).send().await.unwrap();
    assert_eq!(code_of(bad).await, (422, "validation_failed".into()));
    assert_eq!(
        code_of(app.client.get(format!("{}/v1/elections/999999", app.api)).send().await.unwrap()).await,
        (404, "election_not_found".into())
    );
}
