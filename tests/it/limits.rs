//! Rate limits shared through Redis: per client address on every route,
//! per citizen on ballots, refresh and eligibility, per address on live
//! connections; 429 with Retry-After and RateLimit-* headers.

use tally::app::Roles;

use crate::helpers::*;

fn header(response: &reqwest::Response, name: &str) -> Option<u64> {
    response.headers().get(name)?.to_str().ok()?.parse().ok()
}

#[tokio::test]
async fn every_route_is_limited_per_client_across_replicas() {
    let app = spawn_app_with(Roles::ALL, |s| s.limits.per_client_per_minute = 3).await;
    let other = app.another_instance(Roles::ALL).await;
    for remaining in [2, 1] {
        let answer = app.client.get(format!("{}/v1/elections", app.api)).send().await.unwrap();
        assert_eq!(answer.status(), 200);
        assert_eq!(header(&answer, "ratelimit-limit"), Some(3));
        assert_eq!(header(&answer, "ratelimit-remaining"), Some(remaining));
        assert!(header(&answer, "ratelimit-reset").is_some_and(|s| s <= 60));
    }
    // The third request goes to the other replica: the budget is shared.
    assert_eq!(other.client.get(format!("{}/v1/elections", other.api)).send().await.unwrap().status(), 200);
    let refused =
        app.client.get(format!("{}/v1/receipts/{}", app.api, uuid::Uuid::new_v4())).send().await.unwrap();
    assert_eq!(refused.status(), 429);
    assert!(header(&refused, "retry-after").is_some_and(|s| (1..=20).contains(&s)));
    assert_eq!(header(&refused, "ratelimit-remaining"), Some(0));
    assert_eq!(code_of(refused).await.1, "rate_limited");
    let live = app.client.get(format!("{}/", app.broadcaster)).send().await.unwrap();
    assert_eq!(live.status(), 429, "the broadcaster's routes share the address's budget");
}

#[tokio::test]
async fn a_citizen_is_limited_on_ballots_refresh_and_eligibility() {
    let app = spawn_app_with(Roles::ALL, |s| {
        s.limits.ballots_per_citizen_per_minute = 2;
        s.limits.eligibility_per_citizen_per_minute = 1;
        s.limits.refresh_per_citizen_per_minute = 1;
    })
    .await;
    let voter = app.voter(4101).await;
    let election = insert_election(&app.db, ElectionSpec::default()).await;
    assert_eq!(app.cast(&voter.access, election, &[RUNNERS[0]]).await.status(), 202);
    assert_eq!(code_of(app.cast(&voter.access, election, &[RUNNERS[0]]).await).await.0, 409);
    let third = app.cast(&voter.access, election, &[RUNNERS[0]]).await;
    assert_eq!((third.status().as_u16(), header(&third, "retry-after").is_some()), (429, true));

    let path = format!("/v1/elections/{election}/eligibility");
    assert_eq!(app.get_as(&path, &voter.access).await.status(), 200);
    assert_eq!(code_of(app.get_as(&path, &voter.access).await).await, (429, "rate_limited".into()));

    let refresh =
        |token: String| app.post_json("/v1/auth/refresh", serde_json::json!({"refresh_token": token}));
    let renewed: serde_json::Value = refresh(voter.refresh.clone()).await.json().await.unwrap();
    let again = refresh(renewed["refresh_token"].as_str().unwrap().to_owned()).await;
    assert_eq!(code_of(again).await, (429, "rate_limited".into()));

    // Another citizen from the same address is not affected.
    let other = app.voter(4102).await;
    assert_eq!(app.cast(&other.access, election, &[RUNNERS[1]]).await.status(), 202);
}

#[tokio::test]
async fn live_connections_are_limited_per_address() {
    let app = spawn_app_with(Roles::ALL, |s| s.limits.live_connects_per_client_per_minute = 1).await;
    let election = insert_election(&app.db, ElectionSpec::default()).await;
    let url = format!("{}/v1/elections/{election}/events", app.broadcaster);
    let first = app.client.get(&url).send().await.unwrap();
    assert_eq!(first.status(), 200);
    let second = app.client.get(&url).send().await.unwrap();
    assert_eq!(code_of(second).await, (429, "rate_limited".into()));
    drop(first);
}

#[tokio::test]
async fn without_redis_routes_fail_open_and_logins_fail_closed() {
    let proxy = Proxy::start("127.0.0.1:6379".parse().unwrap()).await;
    let app = spawn_app_with(API_ONLY, |s| {
        s.redis.url = tally_common::secret::Secret::new(format!("redis://{}", proxy.addr));
        s.redis.response_timeout_ms = 300;
    })
    .await;
    add_citizen(&app.db, 4201, "Capital", "1980-01-01").await;
    proxy.cut();
    let listed = app.client.get(format!("{}/v1/elections", app.api)).send().await.unwrap();
    assert_eq!(listed.status(), 200, "the per-client limit lets requests through without Redis");
    assert!(listed.headers().get("ratelimit-limit").is_none());
    let (status, code) = code_of(app.login(4201, PASSWORD).await).await;
    assert!(
        status == 503 && ["unavailable", "timeout"].contains(&code.as_str()),
        "logins fail closed: {code}"
    );
    proxy.restore();
}
