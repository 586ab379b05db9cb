use base64::Engine;
use tally::app::Roles;
use tally_domain::citizen::Role;
use tally_platform::auth::TokenKeys;

use crate::helpers::{PASSWORD, TestApp, add_citizen, code_of, phone_of, spawn_app, spawn_app_with};

#[tokio::test]
async fn signup_statuses_and_codes() {
    let app = spawn_app().await;
    add_citizen(&app.db, 10, "Capital", "1990-01-01").await;
    add_citizen(&app.db, 11, "Capital", "1990-01-01").await;
    let (code10, code11) = (app.code_for(10).await, app.code_for(11).await);

    let signup = |id: i64, password: &str, phone: &str, code: &str| {
        app.post_json(
            "/v1/auth/signup",
            serde_json::json!({"citizen_id": id, "password": password, "phone": phone, "enrollment_code": code}),
        )
    };
    let created = signup(10, PASSWORD, &phone_of(10), &code10).await;
    assert_eq!(created.status(), 201);
    assert_eq!(created.json::<serde_json::Value>().await.unwrap(), serde_json::json!({"citizen_id": 10}));

    let used = signup(10, PASSWORD, &phone_of(99), &code10).await;
    assert_eq!(code_of(used).await, (403, "invalid_enrollment_code".into()), "a code works once");
    let fresh = app.code_for(10).await;
    assert_eq!(code_of(signup(10, PASSWORD, &phone_of(99), &fresh).await).await, (409, "user_exists".into()));
    assert_eq!(
        code_of(signup(404, PASSWORD, &phone_of(404), &code11).await).await,
        (404, "citizen_not_found".into())
    );
    assert_eq!(code_of(signup(11, PASSWORD, "555-0101", &code11).await).await, (422, "invalid_phone".into()));
    assert_eq!(
        code_of(signup(11, PASSWORD, &phone_of(10), &code11).await).await,
        (409, "phone_taken".into())
    );
    assert_eq!(
        code_of(signup(11, "too short", &phone_of(11), &code11).await).await,
        (422, "weak_password".into())
    );
    assert_eq!(
        code_of(signup(11, &phone_of(11), &phone_of(11), &code11).await).await,
        (422, "weak_password".into())
    );
    assert_eq!(
        code_of(signup(11, &"p".repeat(129), &phone_of(11), &code11).await).await,
        (422, "weak_password".into())
    );
    // None of the refusals used the code up.
    assert_eq!(signup(11, PASSWORD, &phone_of(11), &code11).await.status(), 201);

    let stored: String = sqlx::query_scalar("SELECT password_hash FROM users WHERE citizen_id = 10")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(stored.starts_with("$argon2id$") && !stored.contains(PASSWORD));
}

#[tokio::test]
async fn fifty_concurrent_signups_of_one_citizen_make_one_account() {
    // Limits off: this is about the race, not the limits.
    let app = spawn_app_with(Roles::ALL, |s| {
        s.auth.attempts_per_citizen_address = 0;
        s.auth.attempts_per_citizen = 0;
    })
    .await;
    add_citizen(&app.db, 77, "Capital", "1990-01-01").await;
    let code = app.code_for(77).await;
    let attempts = (0..50).map(|_| app.signup_with(77, &code));
    let statuses: Vec<u16> =
        futures_util::future::join_all(attempts).await.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "{statuses:?}");
    // The losers either found the account (409) or the code used (403).
    assert!(statuses.iter().all(|s| [201, 403, 409].contains(s)), "{statuses:?}");
    let codes_left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM enrollment_codes").fetch_one(&app.db).await.unwrap();
    assert_eq!(codes_left, 0, "the code was consumed");
}

#[tokio::test]
async fn bad_bodies_get_problem_json() {
    let app = spawn_app().await;
    let url = format!("{}/v1/auth/signup", app.api);
    let send = |body: String, content_type: &'static str| {
        app.client.post(&url).header("content-type", content_type).body(body).send()
    };
    let cases = [
        (send("{\"citizen_id\": 1,".into(), "application/json").await.unwrap(), 400, "malformed_json"),
        (
            send(
                "{\"citizen_id\": \"one\", \"password\": \"x\", \"phone\": \"y\"}".into(),
                "application/json",
            )
            .await
            .unwrap(),
            422,
            "invalid_body",
        ),
        (
            send(
                "{\"citizen_id\": 1, \"password\": \"x\", \"phone\": \"y\", \"admin\": true}".into(),
                "application/json",
            )
            .await
            .unwrap(),
            422,
            "invalid_body",
        ),
        (
            send("citizen_id=1".into(), "application/x-www-form-urlencoded").await.unwrap(),
            415,
            "unsupported_media_type",
        ),
        (
            send(format!("{{\"password\": \"{}\"}}", "x".repeat(64 * 1024)), "application/json")
                .await
                .unwrap(),
            413,
            "payload_too_large",
        ),
    ];
    for (response, status, code) in cases {
        assert_eq!(response.headers()["content-type"], "application/problem+json");
        assert_eq!(code_of(response).await, (status, code.to_string()));
    }
}

#[tokio::test]
async fn login_issues_a_bearer_pair_and_refuses_alike() {
    let app = spawn_app().await;
    let voter = app.voter(20).await;
    let response = app.login(20, PASSWORD).await;
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    assert!(body["refresh_token"].as_str().unwrap().len() >= 43);

    let wrong_password = code_of(app.login(20, "not the password at all").await).await;
    let unknown_user = code_of(app.login(999, "not the password at all").await).await;
    assert_eq!(wrong_password, (401, "invalid_credentials".into()));
    assert_eq!(wrong_password, unknown_user, "no hint whether the account exists");

    let me: serde_json::Value = app.get_as("/v1/me", &voter.access).await.json().await.unwrap();
    assert_eq!(me["citizen_id"], 20);
    assert_eq!(me["full_name"], "Citizen 20");
    assert_eq!(me["province"], "Capital");
    assert_eq!(me["role"], "voter");
    assert!(me["age"].as_i64().unwrap() >= 36);
    assert!(me.get("password_hash").is_none() && !me.to_string().contains("argon2"));
}

#[tokio::test]
async fn refresh_rotates_and_a_reused_token_ends_the_session() {
    let app = spawn_app().await;
    let voter = app.voter(30).await;
    let refresh =
        |token: String| app.post_json("/v1/auth/refresh", serde_json::json!({"refresh_token": token}));

    let rotated = refresh(voter.refresh.clone()).await;
    assert_eq!(rotated.status(), 200);
    let pair: serde_json::Value = rotated.json().await.unwrap();
    let (new_access, new_refresh) = (
        pair["access_token"].as_str().unwrap().to_string(),
        pair["refresh_token"].as_str().unwrap().to_string(),
    );
    assert_ne!(new_refresh, voter.refresh);
    assert_eq!(app.get_as("/v1/me", &new_access).await.status(), 200);

    // Its successor used, then the old token again: two parties hold the
    // chain, and the whole session ends.
    let next: serde_json::Value = refresh(new_refresh.clone()).await.json().await.unwrap();
    let (next_access, next_refresh) = (
        next["access_token"].as_str().unwrap().to_string(),
        next["refresh_token"].as_str().unwrap().to_string(),
    );
    assert_eq!(code_of(refresh(voter.refresh.clone()).await).await, (401, "invalid_refresh_token".into()));
    assert_eq!(code_of(refresh(next_refresh).await).await, (401, "invalid_refresh_token".into()));
    assert_eq!(code_of(app.get_as("/v1/me", &next_access).await).await, (401, "session_revoked".into()));
    assert_eq!(code_of(app.get_as("/v1/me", &new_access).await).await, (401, "session_revoked".into()));
    assert_eq!(code_of(refresh("made-up".into()).await).await, (401, "invalid_refresh_token".into()));
}

#[tokio::test]
async fn logout_takes_effect_on_every_replica() {
    let app = spawn_app().await;
    let second = app.another_instance(Roles { api: true, workers: false, broadcaster: false }).await;
    let voter = app.voter(40).await;
    assert_eq!(second.get_as("/v1/me", &voter.access).await.status(), 200);

    let logout = app
        .client
        .post(format!("{}/v1/auth/logout", app.api))
        .bearer_auth(&voter.access)
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), 204);
    assert_eq!(code_of(second.get_as("/v1/me", &voter.access).await).await, (401, "session_revoked".into()));
    let refreshed =
        app.post_json("/v1/auth/refresh", serde_json::json!({"refresh_token": voter.refresh})).await;
    assert_eq!(refreshed.status(), 401, "a logged-out session cannot be refreshed");
}

#[tokio::test]
async fn logout_all_ends_every_session() {
    let app = spawn_app().await;
    let phone = app.voter(41).await;
    let laptop: serde_json::Value = app.login(41, PASSWORD).await.json().await.unwrap();
    let laptop = laptop["access_token"].as_str().unwrap().to_string();
    let response = app
        .client
        .post(format!("{}/v1/auth/logout-all", app.api))
        .bearer_auth(&phone.access)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    for token in [&phone.access, &laptop] {
        assert_eq!(code_of(app.get_as("/v1/me", token).await).await, (401, "session_revoked".into()));
    }
}

#[tokio::test]
async fn every_kind_of_bad_token_is_refused() {
    let app = spawn_app().await;
    let voter = app.voter(50).await;
    let settings = &app.settings.auth;
    let keys = TokenKeys::from_settings(settings);
    let sid = uuid::Uuid::new_v4();
    let dob = time::macros::date!(1990 - 01 - 01);
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let mut claims = keys.claims(50, sid, Role::Voter, "Capital", dob);
    let [header, body, signature]: [&str; 3] =
        voter.access.split('.').collect::<Vec<_>>().try_into().unwrap();

    let expired = {
        claims.exp = claims.iat - 3600;
        keys.sign(&claims).unwrap()
    };
    // A token minted by a server configured differently from ours.
    let minted_with = |change: &dyn Fn(&mut tally_platform::config::AuthSettings)| {
        let mut other = settings.clone();
        change(&mut other);
        let keys = TokenKeys::from_settings(&other);
        keys.sign(&keys.claims(50, sid, Role::Voter, "Capital", dob)).unwrap()
    };
    let secret = tally_domain::secret::Secret::new;
    let wrong_issuer = minted_with(&|s| s.issuer = "someone-else".into());
    let wrong_audience = minted_with(&|s| s.audience = "another-api".into());
    let unknown_kid = minted_with(&|s| {
        s.keys.insert("rogue".into(), secret("a key the server does not know of"));
        s.signing_key_id = "rogue".into();
    });
    let bad_signature = minted_with(&|s| {
        s.keys.insert("dev".into(), secret("same kid, different secret entirely"));
    });
    let valid_elsewhere = minted_with(&|_| {});
    let alg_none = format!("{}.{body}.", b64(r#"{"alg":"none","typ":"JWT","kid":"dev"}"#));
    let alg_hs512 = format!("{}.{body}.{signature}", b64(r#"{"alg":"HS512","typ":"JWT","kid":"dev"}"#));
    let tampered = format!("{header}.{}.{signature}", b64(&body.replace('A', "B")));

    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("no token", None, "missing_token"),
        ("malformed", Some("not.a.jwt".into()), "invalid_token"),
        ("alg none", Some(alg_none), "invalid_token"),
        ("another algorithm", Some(alg_hs512), "invalid_token"),
        ("bad signature", Some(bad_signature), "invalid_token"),
        ("tampered body", Some(tampered), "invalid_token"),
        ("unknown kid", Some(unknown_kid), "invalid_token"),
        ("expired", Some(expired), "token_expired"),
        ("wrong issuer", Some(wrong_issuer), "invalid_token"),
        ("wrong audience", Some(wrong_audience), "invalid_token"),
    ];
    assert_eq!(app.get_as("/v1/me", &valid_elsewhere).await.status(), 200, "the control token is accepted");
    for (what, token, code) in cases {
        let mut request = app.client.get(format!("{}/v1/me", app.api));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(
            response.headers().get("www-authenticate").map(|v| v.to_str().unwrap()),
            Some("Bearer"),
            "{what}"
        );
        assert_eq!(code_of(response).await, (401, code.to_string()), "{what}");
    }
}

#[tokio::test]
async fn login_attempts_are_limited_per_citizen_and_address_across_replicas() {
    let app = spawn_app_with(Roles::ALL, |s| s.auth.attempts_per_citizen_address = 3).await;
    let second = app.another_instance(Roles { api: true, workers: false, broadcaster: false }).await;
    add_citizen(&app.db, 60, "Capital", "1990-01-01").await;
    for instance in [&app, &second, &app] {
        assert_eq!(code_of(instance.login(60, "wrong password here").await).await.0, 401);
    }
    let limited = second.login(60, "wrong password here").await;
    assert!(limited.headers().get("retry-after").is_some());
    assert_eq!(code_of(limited).await, (429, "rate_limited".into()));
    assert_eq!(code_of(app.login(61, "wrong password here").await).await.0, 401, "other citizens unaffected");
}

#[tokio::test]
async fn login_attempts_are_limited_per_client_address() {
    let app = spawn_app_with(Roles::ALL, |s| s.auth.login_attempts_per_ip = 2).await;
    assert_eq!(code_of(app.login(70, "wrong password here").await).await.0, 401);
    assert_eq!(code_of(app.login(71, "wrong password here").await).await.0, 401);
    assert_eq!(code_of(app.login(72, "wrong password here").await).await, (429, "rate_limited".into()));
}

async fn login_from(app: &TestApp, citizen_id: i64, forwarded_for: &str) -> (u16, String) {
    let answer = app
        .client
        .post(format!("{}/v1/auth/login", app.api))
        .header("x-forwarded-for", forwarded_for)
        .json(&serde_json::json!({"citizen_id": citizen_id, "password": "wrong password here"}))
        .send()
        .await
        .unwrap();
    code_of(answer).await
}

#[tokio::test]
async fn forwarded_addresses_count_only_from_a_trusted_proxy() {
    // Not trusted: a client cannot escape its limit by inventing X-Forwarded-For.
    let app = spawn_app_with(Roles::ALL, |s| s.auth.login_attempts_per_ip = 2).await;
    for (n, spoofed) in ["203.0.113.1", "203.0.113.2"].iter().enumerate() {
        assert_eq!(login_from(&app, 90 + n as i64, spoofed).await.0, 401);
    }
    assert_eq!(login_from(&app, 92, "203.0.113.3").await, (429, "rate_limited".into()));

    // Trusted (the proxy is on loopback): each forwarded client has its own budget.
    let app = spawn_app_with(Roles::ALL, |s| {
        s.auth.login_attempts_per_ip = 2;
        s.http.trusted_proxies = vec!["127.0.0.0/8".into(), "::1".into()];
    })
    .await;
    for citizen in [93, 94] {
        assert_eq!(login_from(&app, citizen, "198.51.100.7").await.0, 401);
    }
    assert_eq!(login_from(&app, 95, "198.51.100.7").await, (429, "rate_limited".into()));
    assert_eq!(login_from(&app, 96, "198.51.100.8").await.0, 401, "another client behind the proxy");
}

#[tokio::test]
async fn the_audit_log_is_for_admins_and_pages() {
    let app = spawn_app().await;
    let voter = app.voter(80).await;
    assert_eq!(code_of(app.get_as("/v1/audit", &voter.access).await).await, (403, "forbidden".into()));
    assert_eq!(code_of(app.client.get(format!("{}/v1/audit", app.api)).send().await.unwrap()).await.0, 401);

    app.voter(81).await;
    sqlx::query("UPDATE users SET role = 'admin' WHERE citizen_id = 81").execute(&app.db).await.unwrap();
    let tokens: serde_json::Value = app.login(81, PASSWORD).await.json().await.unwrap();
    let admin = tokens["access_token"].as_str().unwrap();
    for (n, election) in [(1, Some(7_i64)), (2, None), (3, Some(7))] {
        sqlx::query("INSERT INTO audit_log (actor, action, election_id) VALUES ('citizen:81', $1, $2)")
            .bind(format!("action.{n}"))
            .bind(election)
            .execute(&app.db)
            .await
            .unwrap();
    }
    let page: serde_json::Value = app.get_as("/v1/audit?limit=2", admin).await.json().await.unwrap();
    let actions: Vec<&str> =
        page["entries"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["action.3", "action.2"]);
    let next = page["next"].as_i64().unwrap();
    let rest: serde_json::Value =
        app.get_as(&format!("/v1/audit?limit=2&before={next}"), admin).await.json().await.unwrap();
    assert_eq!(rest["entries"][0]["action"], "action.1");
    assert!(rest["next"].is_null());

    let for_election: serde_json::Value =
        app.get_as("/v1/audit?election_id=7", admin).await.json().await.unwrap();
    assert_eq!(for_election["entries"].as_array().unwrap().len(), 2);
    assert_eq!(
        code_of(app.get_as("/v1/audit?limit=0", admin).await).await,
        (422, "validation_failed".into())
    );
    assert_eq!(code_of(app.get_as("/v1/audit?limit=many", admin).await).await, (400, "invalid_query".into()));
}
