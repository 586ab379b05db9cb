//! Runs the real binary with every log level on and checks that an auth
//! flow leaves no secret or personal datum in its output.

use std::process::Stdio;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::helpers::{
    Cleanup, ElectionSpec, Namespace, PASSWORD, RUNNERS, add_citizen, insert_election, phone_of,
    provision_streams,
};

#[tokio::test]
async fn a_vote_flow_logs_no_secrets_or_personal_data_at_any_level() {
    let ns = Namespace::new();
    let _cleanup = Cleanup(ns.clone());
    let db = ns.create_database().await;
    add_citizen(&db, 4242, "Capital", "1990-01-01").await;
    let election = insert_election(&db, ElectionSpec::default()).await;
    let settings = ns.settings();
    let key = tally_domain::enrollment::EnrollmentKey::new(settings.auth.enrollment_key().expect("key"));
    let code = tally::registry::codes::issue(&db, &key, &[4242]).await.expect("code").remove(0).1;
    provision_streams(&settings).await;

    let mut child = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["serve"])
        .env("TALLY_DATABASE__URL", settings.database.url.expose())
        .env("TALLY_REDIS__KEY_PREFIX", &settings.redis.key_prefix)
        .env("TALLY_NATS__STREAM", &settings.nats.stream)
        .env("TALLY_NATS__SUBJECT_PREFIX", &settings.nats.subject_prefix)
        .env("TALLY_HTTP__API_ADDR", "127.0.0.1:0")
        .env("TALLY_HTTP__BROADCASTER_ADDR", "127.0.0.1:0")
        .env("TALLY_HTTP__ADMIN_ADDR", "127.0.0.1:0")
        .env("TALLY_LOG__FILTER", "trace")
        .env("TALLY_LOG__FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start tally");

    let output = Arc::new(Mutex::new(String::new()));
    let (api_tx, api_rx) = tokio::sync::oneshot::channel::<String>();
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut errors = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let sink = output.clone();
    let readers = tokio::spawn(async move {
        let mut api_tx = Some(api_tx);
        loop {
            let line = tokio::select! {
                Ok(Some(line)) = lines.next_line() => line,
                Ok(Some(line)) = errors.next_line() => line,
                else => break,
            };
            if let Some(url) =
                line.strip_prefix("API").map(|rest| rest.trim().trim_end_matches("/v1").to_string())
                && let Some(tx) = api_tx.take()
            {
                let _ = tx.send(url);
            }
            let mut all = sink.lock().expect("log buffer");
            all.push_str(&line);
            all.push('\n');
        }
    });
    let api = api_rx.await.expect("the binary prints its API address when ready");

    let client = reqwest::Client::new();
    let phone = phone_of(4242);
    let signup = client
        .post(format!("{api}/v1/auth/signup"))
        .json(&serde_json::json!({
            "citizen_id": 4242, "password": PASSWORD, "phone": phone, "enrollment_code": code,
        }))
        .send()
        .await
        .expect("signup");
    assert_eq!(signup.status(), 201);
    let bad_login = client
        .post(format!("{api}/v1/auth/login"))
        .json(&serde_json::json!({"citizen_id": 4242, "password": "a wrong password given"}))
        .send()
        .await
        .expect("login");
    assert_eq!(bad_login.status(), 401);
    let tokens: serde_json::Value = post_json(
        &client,
        &format!("{api}/v1/auth/login"),
        serde_json::json!({"citizen_id": 4242, "password": PASSWORD}),
    )
    .await;
    let access = tokens["access_token"].as_str().expect("access").to_string();
    let refresh = tokens["refresh_token"].as_str().expect("refresh").to_string();
    let rotated: serde_json::Value =
        post_json(&client, &format!("{api}/v1/auth/refresh"), serde_json::json!({"refresh_token": refresh}))
            .await;
    let access2 = rotated["access_token"].as_str().expect("access").to_string();
    let refresh2 = rotated["refresh_token"].as_str().expect("refresh").to_string();
    // Its successor used, reuse of the first refresh token is theft, logged
    // as a warning; the token must not be.
    post_json(&client, &format!("{api}/v1/auth/refresh"), serde_json::json!({"refresh_token": refresh2}))
        .await;
    client
        .post(format!("{api}/v1/auth/refresh"))
        .json(&serde_json::json!({"refresh_token": refresh}))
        .send()
        .await
        .ok();
    client.get(format!("{api}/v1/me")).bearer_auth(&access2).send().await.expect("me");
    // The reuse above ended that session; sign in again to vote.
    let fresh: serde_json::Value = post_json(
        &client,
        &format!("{api}/v1/auth/login"),
        serde_json::json!({"citizen_id": 4242, "password": PASSWORD}),
    )
    .await;
    let access3 = fresh["access_token"].as_str().expect("access").to_string();
    let idempotency_key = uuid::Uuid::new_v4().to_string();
    let ballot = client
        .post(format!("{api}/v1/elections/{election}/ballots"))
        .bearer_auth(&access3)
        .header("Idempotency-Key", &idempotency_key)
        .json(&serde_json::json!({"selections": [RUNNERS[1]]}))
        .send()
        .await
        .expect("ballot");
    assert_eq!(ballot.status(), 202);
    let receipt = ballot.json::<serde_json::Value>().await.expect("json")["receipt"]
        .as_str()
        .expect("receipt")
        .to_string();
    // One ballot is fewer than K: workers hold it until the election ends.
    sqlx::query("UPDATE elections SET closed_at = now(), updated_at = now() WHERE election_id = $1")
        .bind(election)
        .execute(&db)
        .await
        .expect("close the election");
    crate::helpers::eventually("the ballot to be recorded", || async {
        let status: serde_json::Value =
            client.get(format!("{api}/v1/receipts/{receipt}")).send().await.ok()?.json().await.ok()?;
        (status["status"] == "recorded").then_some(())
    })
    .await;
    client.post(format!("{api}/v1/auth/logout")).bearer_auth(&access).send().await.expect("logout");

    // SIGTERM: the process drains and exits cleanly.
    let pid = child.id().expect("pid").to_string();
    let term = std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
    assert!(term.success());
    let status = tokio::time::timeout(std::time::Duration::from_secs(20), child.wait())
        .await
        .expect("exits")
        .expect("status");
    assert!(status.success(), "graceful shutdown exits 0: {status:?}");
    readers.await.expect("readers");

    let logs = output.lock().expect("log buffer").clone();
    let hash: String = sqlx::query_scalar("SELECT password_hash FROM users WHERE citizen_id = 4242")
        .fetch_one(&db)
        .await
        .expect("hash");
    assert!(logs.contains("/v1/auth/login"), "requests were logged with their route:\n{logs}");
    let request_line = logs
        .lines()
        .find(|l| l.contains("\"route\":\"/v1/elections/{id}/ballots\"") && l.contains("\"status\":202"))
        .expect("the ballot request has a JSON log line");
    let fields: serde_json::Value = serde_json::from_str(request_line).expect("one JSON object per line");
    for field in ["timestamp", "level", "target"] {
        assert!(fields[field].is_string(), "{field} in {request_line}");
    }
    for field in ["request_id", "route", "method", "status", "latency_ms"] {
        assert!(!fields["span"][field].is_null(), "span.{field} in {request_line}");
    }
    assert!(logs.contains("refresh token reused"), "the reuse warning was logged");
    for (what, secret) in [
        ("password", PASSWORD),
        ("wrong password", "a wrong password given"),
        ("password hash", hash.as_str()),
        ("argon2 salt", hash.split('$').nth(4).expect("salt")),
        ("phone", phone.as_str()),
        ("enrollment code", code.as_str()),
        ("access token", access.as_str()),
        ("rotated access token", access2.as_str()),
        ("voting access token", access3.as_str()),
        ("refresh token", refresh.as_str()),
        ("rotated refresh token", refresh2.as_str()),
        ("token signature", access.rsplit('.').next().expect("signature")),
        ("the ballot's selections", &format!("[{}]", RUNNERS[1])),
        ("date of birth", "1990-01-01"),
        ("idempotency key", idempotency_key.as_str()),
    ] {
        let leak = logs.lines().find(|l| l.contains(secret)).unwrap_or_default();
        assert!(leak.is_empty(), "the {what} appears in the logs: {leak}");
    }
    // A runner id is a short number, so it is looked for as a whole word:
    // "9002" inside the hex of a TLS handshake trace is chance, not a leak.
    let runner = RUNNERS[1].to_string();
    let leak = logs.lines().find(|l| contains_word(l, &runner)).unwrap_or_default();
    assert!(leak.is_empty(), "the ballot's runner appears in the logs: {leak}");
}

/// Whether `needle` occurs in `line` with no letter or digit on either side.
fn contains_word(line: &str, needle: &str) -> bool {
    line.match_indices(needle).any(|(at, _)| {
        let before = line[..at].chars().next_back();
        let after = line[at + needle.len()..].chars().next();
        [before, after].iter().all(|c| !c.is_some_and(|c| c.is_ascii_alphanumeric()))
    })
}

#[test]
fn a_runner_id_is_found_only_as_a_whole_word() {
    assert!(contains_word(r#"{"runner":9002}"#, "9002"));
    assert!(contains_word("selections=[9002, 9001]", "9002"));
    assert!(!contains_word("random: 8a9002ff", "9002"));
    assert!(!contains_word("payload: 04190020", "9002"));
}

/// POSTs a JSON body and reads the JSON answer.
async fn post_json(client: &reqwest::Client, url: &str, body: serde_json::Value) -> serde_json::Value {
    client.post(url).json(&body).send().await.expect("sent").json().await.expect("json")
}
