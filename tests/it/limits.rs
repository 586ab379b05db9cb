//! Rate limits shared through Redis: per client address on every route,
//! per citizen on refresh and eligibility (never on ballots), per address
//! on live connections; receipts per address inside each process; logins
//! and sign-ups per address and per (citizen, address), with a per-citizen
//! backstop that slows rather than locks. 429 with Retry-After and
//! RateLimit-* headers.

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
    let refused = app.client.get(format!("{}/v1/elections/1/results", app.api)).send().await.unwrap();
    assert_eq!(refused.status(), 429);
    assert!(header(&refused, "retry-after").is_some_and(|s| (1..=20).contains(&s)));
    assert_eq!(header(&refused, "ratelimit-remaining"), Some(0));
    assert_eq!(code_of(refused).await.1, "rate_limited");
    let live = app.client.get(format!("{}/", app.broadcaster)).send().await.unwrap();
    assert_eq!(live.status(), 429, "the broadcaster's routes share the address's budget");
}

/// A ballot request from `address` (the app trusts loopback as a proxy).
async fn cast_from(app: &TestApp, token: &str, election: i64, address: &str) -> reqwest::Response {
    app.client
        .post(format!("{}/v1/elections/{election}/ballots", app.api))
        .bearer_auth(token)
        .header("x-forwarded-for", address)
        .json(&serde_json::json!({"selections": [RUNNERS[0]]}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_citizen_is_limited_on_refresh_and_eligibility() {
    let app = spawn_app_with(Roles::ALL, |s| {
        s.limits.eligibility_per_citizen_per_minute = 1;
        s.limits.refresh_per_citizen_per_minute = 1;
    })
    .await;
    let voter = app.voter(4101).await;
    let election = insert_election(&app.db, ElectionSpec::default()).await;
    let path = format!("/v1/elections/{election}/eligibility");
    assert_eq!(app.get_as(&path, &voter.access).await.status(), 200);
    assert_eq!(code_of(app.get_as(&path, &voter.access).await).await, (429, "rate_limited".into()));

    let refresh =
        |token: String| app.post_json("/v1/auth/refresh", serde_json::json!({"refresh_token": token}));
    let renewed: serde_json::Value = refresh(voter.refresh.clone()).await.json().await.unwrap();
    let again = refresh(renewed["refresh_token"].as_str().unwrap().to_owned()).await;
    assert_eq!(code_of(again).await, (429, "rate_limited".into()));

    // Another citizen is not affected.
    let other = app.voter(4102).await;
    assert_eq!(app.get_as(&path, &other.access).await.status(), 200);
}

/// Ballots have no per-citizen limit (its Redis timestamp would date the
/// ballot; one ballot per citizen is enforced anyway): a citizen who
/// retries from many addresses always hears "already voted". The
/// per-address limit still holds on the ballot route.
#[tokio::test]
async fn ballots_are_limited_per_address_not_per_citizen() {
    let setup = spawn_app().await;
    let election = insert_election(&setup.db, ElectionSpec::default()).await;
    let voters = [setup.voter(4111).await, setup.voter(4112).await, setup.voter(4113).await];
    // Ballots go through an API replica behind a (loopback) proxy, with a
    // budget of three requests a minute per address.
    let mut settings = setup.settings.clone();
    settings.limits.per_client_per_minute = 3;
    settings.http.trusted_proxies = vec!["127.0.0.0/8".into(), "::1".into()];
    let app = start_with(&setup, settings, API_ONLY).await;

    assert_eq!(cast_from(&app, &voters[0].access, election, "198.51.100.1").await.status(), 202);
    // More retries than the old per-citizen limit allowed (10 a minute),
    // each from a fresh address: never 429.
    for n in 0..12 {
        let address = format!("203.0.113.{}", n + 1);
        assert_eq!(
            code_of(cast_from(&app, &voters[0].access, election, &address).await).await,
            (409, "already_voted".into()),
            "retry {n}"
        );
    }
    let mut redis = app.deps().await.redis;
    let limit_keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:rl:*", app.settings.redis.key_prefix))
        .query_async(&mut redis)
        .await
        .unwrap();
    // Only the per-address limits and the logins of the set-up left keys.
    let scope = |key: &str| key.split(':').nth(2).unwrap_or_default().to_string();
    assert!(
        limit_keys.iter().all(|k| {
            let allowed =
                ["client", "login-ip", "login-pair", "login-citizen", "signup-pair", "signup-citizen"];
            allowed.contains(&scope(k).as_str())
        }),
        "no ballot limit is keyed by the citizen: {limit_keys:?}"
    );

    // One address: three requests a minute, whoever sends them.
    let address = "198.51.100.2";
    assert_eq!(cast_from(&app, &voters[1].access, election, address).await.status(), 202);
    assert_eq!(
        code_of(cast_from(&app, &voters[1].access, election, address).await).await,
        (409, "already_voted".into())
    );
    assert_eq!(cast_from(&app, &voters[2].access, election, address).await.status(), 202);
    let refused = cast_from(&app, &voters[2].access, election, address).await;
    assert!(header(&refused, "retry-after").is_some());
    assert_eq!(code_of(refused).await, (429, "rate_limited".into()));
}

/// Receipt look-ups are limited per address inside each process: a
/// shared Redis key would record when each receipt was polled.
#[tokio::test]
async fn receipt_lookups_are_limited_per_address_in_the_process() {
    let app = spawn_app_with(Roles::ALL, |s| s.limits.receipts_per_client_per_minute = 2).await;
    let other = app.another_instance(API_ONLY).await;
    let lookup = |app: &TestApp| {
        let url = format!("{}/v1/receipts/{}", app.api, uuid::Uuid::new_v4());
        let client = app.client.clone();
        async move { client.get(url).send().await.unwrap() }
    };
    for _ in 0..2 {
        let answer = lookup(&app).await;
        assert_eq!(answer.status(), 200);
        assert_eq!(answer.json::<serde_json::Value>().await.unwrap()["status"], "pending");
    }
    let refused = lookup(&app).await;
    assert!(header(&refused, "retry-after").is_some_and(|s| (1..=60).contains(&s)));
    assert_eq!(code_of(refused).await, (429, "rate_limited".into()));
    // Not counted against the address's shared budget, and not in Redis:
    // other routes and other replicas still answer this address.
    assert_eq!(app.client.get(format!("{}/v1/elections", app.api)).send().await.unwrap().status(), 200);
    assert_eq!(lookup(&other).await.status(), 200, "each replica counts on its own");
    let mut redis = app.deps().await.redis;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", app.settings.redis.key_prefix))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(keys.iter().all(|k| !k.contains("receipt") && !k.contains("pending")), "{keys:?}");
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
async fn without_redis_routes_fail_open_and_logins_and_signups_fail_closed() {
    let proxy = Proxy::start("127.0.0.1:6379".parse().unwrap()).await;
    let app = spawn_app_with(API_ONLY, |s| {
        s.redis.url = tally_domain::secret::Secret::new(format!("redis://{}", proxy.addr));
        s.redis.response_timeout_ms = 300;
    })
    .await;
    add_citizen(&app.db, 4201, "Capital", "1980-01-01").await;
    let enrollment = app.code_for(4201).await;
    proxy.cut();
    let listed = app.client.get(format!("{}/v1/elections", app.api)).send().await.unwrap();
    assert_eq!(listed.status(), 200, "the per-client limit lets requests through without Redis");
    assert!(listed.headers().get("ratelimit-limit").is_none());
    let (status, code) = code_of(app.login(4201, PASSWORD).await).await;
    assert!(
        status == 503 && ["unavailable", "timeout"].contains(&code.as_str()),
        "logins fail closed: {code}"
    );
    let (status, code) = code_of(app.signup_with(4201, &enrollment).await).await;
    assert!(
        status == 503 && ["unavailable", "timeout"].contains(&code.as_str()),
        "sign-ups fail closed too: {code}"
    );
    proxy.restore();
}

fn behind_a_proxy(s: &mut tally_platform::Settings) {
    s.http.trusted_proxies = vec!["127.0.0.0/8".into(), "::1".into()];
}

/// A POST from `address` (the app trusts loopback as a proxy).
async fn post_from(app: &TestApp, path: &str, body: serde_json::Value, address: &str) -> reqwest::Response {
    app.client
        .post(format!("{}{path}", app.api))
        .header("x-forwarded-for", address)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn login_from(app: &TestApp, citizen_id: i64, password: &str, address: &str) -> reqwest::Response {
    post_from(
        app,
        "/v1/auth/login",
        serde_json::json!({"citizen_id": citizen_id, "password": password}),
        address,
    )
    .await
}

async fn signup_from(app: &TestApp, citizen_id: i64, code: &str, address: &str) -> reqwest::Response {
    let body = serde_json::json!({
        "citizen_id": citizen_id, "password": PASSWORD, "phone": phone_of(citizen_id), "enrollment_code": code,
    });
    post_from(app, "/v1/auth/signup", body, address).await
}

/// Guessing from one address exhausts only that address's budget for the
/// citizen: the citizen, elsewhere, still logs in and signs up.
#[tokio::test]
async fn one_address_cannot_lock_a_citizen_out() {
    let app = spawn_app_with(Roles::ALL, |s| {
        s.auth.attempts_per_citizen_address = 3;
        behind_a_proxy(s);
    })
    .await;
    add_citizen(&app.db, 4301, "Capital", "1990-01-01").await;
    add_citizen(&app.db, 4302, "Capital", "1990-01-01").await;
    let code = app.code_for(4301).await;
    assert_eq!(signup_from(&app, 4301, &code, "198.51.100.20").await.status(), 201);
    let attacker = "203.0.113.9";
    for _ in 0..3 {
        assert_eq!(code_of(login_from(&app, 4301, "a guessed password", attacker).await).await.0, 401);
        let guess = signup_from(&app, 4302, "0000-0000-0000-0000", attacker).await;
        assert_eq!(code_of(guess).await, (403, "invalid_enrollment_code".into()));
    }
    let refused = login_from(&app, 4301, "a guessed password", attacker).await;
    assert!(header(&refused, "retry-after").is_some());
    assert_eq!(code_of(refused).await, (429, "rate_limited".into()));
    let refused = signup_from(&app, 4302, "0000-0000-0000-0000", attacker).await;
    assert_eq!(code_of(refused).await, (429, "rate_limited".into()));

    assert_eq!(login_from(&app, 4301, PASSWORD, "198.51.100.20").await.status(), 200);
    let code = app.code_for(4302).await;
    assert_eq!(signup_from(&app, 4302, &code, "198.51.100.21").await.status(), 201);
}

/// Guessing from many addresses meets the per-citizen backstop: past its
/// burst each attempt waits for its slot (so guesses per citizen stay
/// bounded); only attempts that would wait too long are refused, and the
/// citizen, slowed, still gets in.
#[tokio::test]
async fn many_addresses_slow_a_citizen_down_but_never_lock_them_out() {
    let app = spawn_app_with(Roles::ALL, |s| {
        // A burst of 2, then one attempt every 2 s.
        s.auth.attempts_per_citizen = 2;
        s.auth.login_window_secs = 4;
        behind_a_proxy(s);
    })
    .await;
    add_citizen(&app.db, 4311, "Capital", "1990-01-01").await;
    assert_eq!(app.signup(4311).await.status(), 201);
    let started = std::time::Instant::now();
    let guesses = (1..=6).map(|n| {
        let app = &app;
        async move {
            let answer = login_from(app, 4311, "a guessed password", &format!("203.0.113.{n}")).await;
            (code_of(answer).await, started.elapsed())
        }
    });
    let mut outcomes = futures_util::future::join_all(guesses).await;
    outcomes.sort_by_key(|(_, took)| *took);
    let statuses: Vec<u16> = outcomes.iter().map(|((status, _), _)| *status).collect();
    let mut sorted = statuses.clone();
    sorted.sort();
    assert_eq!(sorted, [401, 401, 401, 401, 429, 429], "{outcomes:?}");
    let slowed = outcomes.iter().filter(|((s, _), took)| *s == 401 && took.as_millis() >= 1_500).count();
    assert_eq!(slowed, 2, "two guesses waited for their slots: {outcomes:?}");

    let citizen = std::time::Instant::now();
    assert_eq!(login_from(&app, 4311, PASSWORD, "198.51.100.40").await.status(), 200, "slowed, not locked");
    assert!(citizen.elapsed().as_millis() >= 500, "the citizen waited too: {:?}", citizen.elapsed());
}

#[tokio::test]
async fn signups_are_limited_per_address() {
    let app = spawn_app_with(Roles::ALL, |s| {
        s.auth.signup_attempts_per_ip = 2;
        behind_a_proxy(s);
    })
    .await;
    let mut codes = Vec::new();
    for id in 4321..=4323 {
        add_citizen(&app.db, id, "Capital", "1990-01-01").await;
        codes.push(app.code_for(id).await);
    }
    let address = "198.51.100.30";
    assert_eq!(signup_from(&app, 4321, &codes[0], address).await.status(), 201);
    assert_eq!(signup_from(&app, 4322, &codes[1], address).await.status(), 201);
    assert_eq!(
        code_of(signup_from(&app, 4323, &codes[2], address).await).await,
        (429, "rate_limited".into())
    );
    assert_eq!(signup_from(&app, 4323, &codes[2], "198.51.100.31").await.status(), 201, "another address");
}
