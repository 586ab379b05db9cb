//! A dependency that cannot answer is the client's 503 with `Retry-After`
//! on every route, never a 500: the client may retry, and an operator's
//! alert on 5xx tells an outage from a fault.

use reqwest::Method;

use crate::helpers::{API_ONLY, ElectionSpec, Proxy, RUNNERS, insert_election, spawn_app_with, start_with};

/// Every documented route, with a body and ids that reach the handler's
/// work rather than stopping at input checks.
fn requests(election: i64, refresh: &str) -> Vec<(Method, String, Option<serde_json::Value>)> {
    let e = election;
    vec![
        (
            Method::POST,
            "/v1/auth/signup".into(),
            Some(serde_json::json!({
                "citizen_id": 77, "phone": crate::helpers::phone_of(77),
                "password": "a long enough password", "enrollment_code": "0000-0000-0000-0000"
            })),
        ),
        (
            Method::POST,
            "/v1/auth/login".into(),
            Some(serde_json::json!({"citizen_id": 71, "password": crate::helpers::PASSWORD})),
        ),
        (Method::POST, "/v1/auth/refresh".into(), Some(serde_json::json!({"refresh_token": refresh}))),
        (Method::POST, "/v1/auth/logout".into(), Some(serde_json::json!({"refresh_token": refresh}))),
        (Method::POST, "/v1/auth/logout-all".into(), None),
        (Method::GET, "/v1/me".into(), None),
        (Method::GET, "/v1/audit".into(), None),
        (Method::GET, "/v1/elections".into(), None),
        (
            Method::POST,
            "/v1/elections".into(),
            Some(serde_json::json!({
                "name": "Outage", "start_at": "2030-01-01T00:00:00Z", "end_at": "2030-01-02T00:00:00Z"
            })),
        ),
        (Method::GET, format!("/v1/elections/{e}"), None),
        (Method::PATCH, format!("/v1/elections/{e}"), Some(serde_json::json!({"name": "Renamed"}))),
        (
            Method::POST,
            format!("/v1/elections/{e}/runners"),
            Some(serde_json::json!({"citizen_id": 71, "post": "President"})),
        ),
        (Method::DELETE, format!("/v1/elections/{e}/runners/{}", RUNNERS[0]), None),
        (Method::POST, format!("/v1/elections/{e}/close"), None),
        (Method::POST, format!("/v1/elections/{e}/cancel"), None),
        (Method::GET, format!("/v1/elections/{e}/eligibility"), None),
        (Method::GET, format!("/v1/elections/{e}/results"), None),
        (
            Method::POST,
            format!("/v1/elections/{e}/ballots"),
            Some(serde_json::json!({"selections": [RUNNERS[0]]})),
        ),
        (Method::GET, format!("/v1/elections/{e}/ballot"), None),
        (Method::GET, "/v1/receipts/00000000-0000-4000-8000-000000000000".into(), None),
        (Method::GET, "/v1/receipts/00000000-0000-4000-8000-000000000000/proof".into(), None),
        (Method::GET, format!("/v1/elections/{e}/record/checkpoint"), None),
        (Method::GET, format!("/v1/elections/{e}/record/totals.json"), None),
    ]
}

#[tokio::test]
async fn a_postgres_outage_is_503_with_retry_after_on_every_route() {
    let proxy = Proxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let app = spawn_app_with(API_ONLY, |_| {}).await;
    let election = insert_election(
        &app.db,
        ElectionSpec { starts_in_secs: 3600, ends_in_secs: 7200, ..Default::default() },
    )
    .await;
    let admin = app.admin(70).await;
    app.voter(71).await;
    let session: serde_json::Value = app.login(71, crate::helpers::PASSWORD).await.json().await.unwrap();
    let refresh = session["refresh_token"].as_str().unwrap().to_string();
    let settings = crate::helpers::with_database_through(&app, &proxy);
    let api = start_with(&app, settings, API_ONLY).await;

    let documented = app.get_json("/openapi.json").await;
    let documented: usize =
        documented["paths"].as_object().unwrap().values().map(|m| m.as_object().unwrap().len()).sum();
    let requests = requests(election, &refresh);
    // The verifier key comes from the settings: it is served through an
    // outage, and checked apart below.
    assert_eq!(requests.len() + 1, documented, "this test covers every documented route");

    proxy.cut();
    let mut unavailable = 0;
    for (method, path, body) in requests {
        let mut request =
            api.client.request(method.clone(), format!("{}{path}", api.api)).bearer_auth(&admin);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let retry_after = response.headers().get("retry-after").is_some();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        assert_eq!(status, 503, "{method} {path} while Postgres was down: {body}");
        assert!(retry_after, "{method} {path}: a 503 carries Retry-After");
        unavailable += 1;
    }
    // Every other route reads or writes Postgres (the cast route through
    // its election cache, which an outage empties of anything not yet cached).
    assert_eq!(unavailable + 1, documented, "every route but the verifier key reports the outage");
    let key = api.client.get(format!("{}/v1/record/verifier-key", api.api)).send().await.unwrap();
    assert_eq!(key.status(), 200, "the verifier key needs no Postgres");
    proxy.restore();
    api.stop().await;
}
