//! Hand-written hostile input: SQL metacharacters and markup in every
//! string field, numbers out of range, odd ids, Unicode edge cases, broken
//! and deeply nested JSON, huge headers. Each gets a clear 4xx (never a
//! 5xx), and text that is accepted comes back exactly as it was sent.

use reqwest::Method;
use serde_json::json;

use crate::helpers::*;

const NASTY: [&str; 6] = [
    "'); DROP TABLE citizens; --",
    "\" OR 1=1 --",
    "<script>alert(1)</script><img src=x onerror=alert(2)>",
    "\u{202E}evil\u{200D}👩‍👩‍👧\u{0301}",
    "%00%27 ${jndi:ldap://x} {{7*7}}",
    "Ω≈ç√∫ 𝕿𝖊𝖘𝖙 \u{FEFF}",
];

#[tokio::test]
async fn markup_and_sql_in_names_are_stored_as_text() {
    let app = spawn_app().await;
    let admin = app.admin(7001).await;
    add_citizen(&app.db, 7002, "Capital", "1980-01-01").await;
    for nasty in NASTY {
        let created = app
            .send_as(
                Method::POST,
                "/v1/elections",
                &admin,
                Some(json!({
                    "name": nasty, "start_at": "2099-01-01T00:00:00Z", "end_at": "2099-01-02T00:00:00Z",
                    "vote_restriction": "@everyone", "results_visibility": "live"
                })),
            )
            .await;
        assert_eq!(created.status(), 201, "{nasty:?}");
        let id = created.json::<serde_json::Value>().await.unwrap()["election_id"].as_i64().unwrap();
        let runner = app
            .send_as(
                Method::POST,
                &format!("/v1/elections/{id}/runners"),
                &admin,
                Some(json!({"citizen_id": 7002, "post": nasty})),
            )
            .await;
        assert_eq!(runner.status(), 201, "{nasty:?}");
        let shown = app.get_json(&format!("/v1/elections/{id}")).await;
        assert_eq!(shown["name"], nasty.trim());
        assert_eq!(shown["posts"][0]["post"], nasty.trim());
    }
    let citizens: i64 = sqlx::query_scalar("SELECT count(*) FROM citizens").fetch_one(&app.db).await.unwrap();
    assert!(citizens >= 2, "the citizens table is intact");
}

#[tokio::test]
async fn nul_characters_are_refused_not_crashed_on() {
    let app = spawn_app().await;
    let admin = app.admin(7011).await;
    let election = json!({
        "name": "a\u{0}b", "start_at": "2099-01-01T00:00:00Z", "end_at": "2099-01-02T00:00:00Z",
        "vote_restriction": "@everyone"
    });
    let (status, code) =
        code_of(app.send_as(Method::POST, "/v1/elections", &admin, Some(election)).await).await;
    assert_eq!((status, code.as_str()), (422, "invalid_body"));
    let login = app.post_json("/v1/auth/login", json!({"citizen_id": 7011, "password": "x\u{0}"})).await;
    assert_eq!(code_of(login).await, (422, "invalid_body".to_owned()));
    let signup = app
        .post_json(
            "/v1/auth/signup",
            json!({"citizen_id": 7012, "password": "p\u{0}ssword-long", "phone": "+1"}),
        )
        .await;
    assert_eq!(code_of(signup).await, (422, "invalid_body".to_owned()));
}

#[tokio::test]
async fn numbers_and_ids_out_of_range_get_4xx() {
    let app = spawn_app().await;
    let voter = app.voter(7021).await;
    let election = insert_election(&app.db, ElectionSpec::default()).await;
    for selections in ["[1e400]", "[\"9001\"]", "[99999999999999999999]", "[-1]", "[]", "[9001.5]", "null"] {
        let answer = app
            .client
            .post(format!("{}/v1/elections/{election}/ballots", app.api))
            .bearer_auth(&voter.access)
            .header("content-type", "application/json")
            .body(format!("{{\"selections\": {selections}}}"))
            .send()
            .await
            .unwrap();
        let status = answer.status().as_u16();
        assert!((400..500).contains(&status), "{selections}: {status}");
    }
    for path in [
        "/v1/elections/-1",
        "/v1/elections/0",
        "/v1/elections/99999999999999999999",
        "/v1/elections/1e3",
        "/v1/elections/%27%20OR%201=1",
        "/v1/receipts/not-a-uuid",
        "/v1/elections?limit=-5",
        "/v1/elections?limit=99999999999999999999",
        "/v1/elections?status=%3Cscript%3E",
        "/v1/elections?status=%00",
    ] {
        let status = app.client.get(format!("{}{path}", app.api)).send().await.unwrap().status().as_u16();
        assert!((400..500).contains(&status), "{path}: {status}");
    }
}

#[tokio::test]
async fn truncated_and_deeply_nested_json_is_refused() {
    let app = spawn_app().await;
    let url = format!("{}/v1/auth/login", app.api);
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let deep_object = format!("{{\"citizen_id\": {}1{}}}", "{\"a\":".repeat(2000), "}".repeat(2000));
    for body in ["{\"citizen_id\": 1, \"password\": \"", "{", "", "nul", &deep, &deep_object, "\u{FEFF}{}"] {
        let answer = app
            .client
            .post(&url)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await;
        let (status, code) = code_of(answer.unwrap()).await;
        assert!(
            matches!((status, code.as_str()), (400, "malformed_json") | (422, "invalid_body")),
            "{}…: {status} {code}",
            &body[..body.len().min(20)]
        );
    }
}

#[tokio::test]
async fn very_long_headers_are_refused_without_a_server_error() {
    let app = spawn_app().await;
    let huge = "a".repeat(200 * 1024);
    let answer = app.client.get(format!("{}/v1/me", app.api)).bearer_auth(&huge).send().await;
    match answer {
        // Refused at the HTTP layer, or the connection closed: both are fine.
        Ok(response) => assert!(response.status().is_client_error(), "{}", response.status()),
        Err(e) => assert!(e.is_request() || e.is_connect() || e.to_string().contains("connection"), "{e}"),
    }
    let long_token = "x".repeat(16 * 1024);
    let (status, code) = code_of(app.get_as("/v1/me", &long_token).await).await;
    assert_eq!((status, code.as_str()), (401, "invalid_token"));
    let many = (0..200).fold(app.client.get(format!("{}/v1/elections", app.api)), |r, i| {
        r.header(format!("x-filler-{i}"), "y".repeat(100))
    });
    let status = many.send().await.map(|r| r.status().as_u16()).unwrap_or(431);
    assert!(status == 200 || status == 431, "{status}");
}
