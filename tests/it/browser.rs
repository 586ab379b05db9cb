//! The live page in a real browser: headless Chromium (Debian's package)
//! driven by playwright-core from `tests/browser/`.

use crate::helpers::{ElectionSpec, RUNNERS, add_citizen, insert_election, phone_of, spawn_app};

#[tokio::test]
async fn the_live_page_shows_new_votes_as_they_are_cast() {
    let app = spawn_app().await;
    let election = insert_election(&app.db, ElectionSpec::default()).await;
    // A name that would run as script if the page inserted it as HTML.
    let hostile = "<img src=x onerror=alert(1)>";
    sqlx::query("UPDATE citizens SET full_name = $1 WHERE citizen_id = $2")
        .bind(hostile)
        .bind(RUNNERS[1])
        .execute(&app.db)
        .await
        .unwrap();
    // Workers hold K (2) ballots back and commit only groups of more than
    // K. Two ballots cast before the page opens are held, so the page
    // starts at 0; the script's three make 2K + 1, and the workers commit
    // the oldest three: the page then shows 3, all for this runner.
    app.ballots_from_new_voters(election, 790, 2, RUNNERS[0]).await;
    let mut tokens = Vec::new();
    for citizen in 800..803 {
        tokens.push(app.voter(citizen).await.access);
    }
    let root = env!("CARGO_MANIFEST_DIR");
    std::fs::create_dir_all(format!("{root}/artifacts")).unwrap();
    let screenshot = format!("{root}/artifacts/live-page.png");
    let script = format!("{root}/tests/browser/live_page.mjs");
    let output = tokio::process::Command::new("node")
        .arg(&script)
        .arg(format!("{}/elections/{election}", app.broadcaster))
        .arg(&app.api)
        .arg(election.to_string())
        .arg(RUNNERS[0].to_string())
        .arg(&screenshot)
        .args(&tokens)
        .output()
        .await
        .expect("node runs (make tools installs playwright-core and Chromium)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the browser check failed: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("the script's JSON report");
    assert_eq!(report["before"], "0 (0.0%)");
    assert_eq!(report["after"], "3 (100.0%)");
    assert_eq!(report["width"], "100%");
    assert_eq!(report["names"], serde_json::json!(["Runner 9001", hostile]), "names shown as text");
    assert_eq!(report["injected"], 0);
    assert_eq!(report["errors"], serde_json::json!([]));
    assert!(std::fs::metadata(&screenshot).unwrap().len() > 1000, "a screenshot was saved");
}

#[tokio::test]
async fn the_api_documentation_renders_every_operation() {
    let app = spawn_app().await;
    let root = env!("CARGO_MANIFEST_DIR");
    std::fs::create_dir_all(format!("{root}/artifacts")).unwrap();
    let screenshot = format!("{root}/artifacts/api-docs.png");
    let output = tokio::process::Command::new("node")
        .arg(format!("{root}/tests/browser/docs_page.mjs"))
        .arg(format!("{}/docs/", app.api))
        .arg(&screenshot)
        .output()
        .await
        .expect("node runs (make tools installs playwright-core and Chromium)");
    assert!(output.status.success(), "the docs check failed: {}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("the script's JSON report");
    assert!(report["title"].as_str().unwrap().starts_with("Tally API"), "{report}");
    let operations: Vec<&str> =
        report["operations"].as_array().unwrap().iter().filter_map(|o| o.as_str()).collect();
    let documented: serde_json::Value = app.get_json("/openapi.json").await;
    let expected: usize =
        documented["paths"].as_object().unwrap().values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(operations.len(), expected, "every documented operation is on the page: {operations:?}");
    assert!(operations.iter().any(|o| o.contains("/v1/elections/{id}/ballots")));
}

#[tokio::test]
async fn a_voter_signs_up_votes_and_sees_the_receipt_recorded_on_the_voter_page() {
    let app = spawn_app().await;
    let election = insert_election(&app.db, ElectionSpec::default()).await;
    let elsewhere =
        insert_election(&app.db, ElectionSpec { restriction: "@provincial:North", ..Default::default() })
            .await;
    let hostile = "<img src=x onerror=alert(1)>";
    sqlx::query("UPDATE citizens SET full_name = $1 WHERE citizen_id = $2")
        .bind(hostile)
        .bind(RUNNERS[1])
        .execute(&app.db)
        .await
        .unwrap();
    let page = app.client.get(format!("{}/vote", app.api)).send().await.unwrap();
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe"), "{csp}");

    let citizen = 700;
    add_citizen(&app.db, citizen, "Capital", "1990-01-01").await;
    let code = app.code_for(citizen).await;
    // K is 2: the page's ballot and four after it make 2K + 1, and the
    // workers record the oldest three, the page's among them.
    let mut tokens = Vec::new();
    for other in 810..814 {
        tokens.push(app.voter(other).await.access);
    }
    let root = env!("CARGO_MANIFEST_DIR");
    std::fs::create_dir_all(format!("{root}/artifacts")).unwrap();
    let screenshot = format!("{root}/artifacts/vote-page.png");
    let output = tokio::process::Command::new("node")
        .arg(format!("{root}/tests/browser/vote_page.mjs"))
        .arg(format!("{}/vote", app.api))
        .arg(citizen.to_string())
        .arg(&code)
        .arg(phone_of(citizen))
        .arg(election.to_string())
        .arg(RUNNERS[0].to_string())
        .arg(&screenshot)
        .args(&tokens)
        .output()
        .await
        .expect("node runs (make tools installs playwright-core and Chromium)");
    assert!(output.status.success(), "the browser check failed: {}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("the script's JSON report");
    assert_eq!(report["signedInAs"], citizen.to_string());
    assert_eq!(
        report["verdicts"][election.to_string()],
        "You may vote: choose one runner per post (or leave a post out)."
    );
    assert_eq!(report["verdicts"][elsewhere.to_string()], "This election is for another province.");
    assert_eq!(report["names"], serde_json::json!(["Runner 9001", hostile]), "names shown as text");
    assert_eq!(report["injected"], 0);
    let live = format!("{}/elections/{election}", app.broadcaster);
    assert_eq!(report["liveLink"], live);
    assert_eq!(report["receiptLink"], live);
    assert_eq!(report["first"], "pending", "held until more ballots arrive");
    assert_eq!(report["last"], "recorded");
    // The record check is wired to the proof route: an open election has none yet.
    assert_eq!(report["record"], "not-ready");
    assert_eq!(app.settled(report["receipt"].as_str().unwrap()).await["status"], "recorded");
    assert_eq!(report["errors"], serde_json::json!([]));
    assert!(std::fs::metadata(&screenshot).unwrap().len() > 1000, "a screenshot was saved");
}
