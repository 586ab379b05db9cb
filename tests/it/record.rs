//! The election record end to end: an election run through the real
//! pipeline becomes final, its record is built once, served, exported,
//! verified by `tally record` and by an independent Python verifier, and
//! a voter's receipt is proven to be in it.

use std::path::{Path, PathBuf};
use std::process::Command;

use reqwest::Method;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::helpers::{TestApp, add_citizen, code_of, eventually, spawn_app};

fn at(offset_secs: i64) -> String {
    (OffsetDateTime::now_utc() + time::Duration::seconds(offset_secs)).format(&Rfc3339).expect("format")
}

const PRESIDENT: [i64; 2] = [9001, 9002];
const TREASURER: [i64; 2] = [9003, 9004];

/// An election with two posts, made by an administrator over REST (so the
/// audit log has its story), open a few seconds later.
async fn two_post_election(app: &TestApp) -> i64 {
    let admin = app.admin(1).await;
    for runner in PRESIDENT.iter().chain(&TREASURER) {
        add_citizen(&app.db, *runner, "Capital", "1970-01-01").await;
    }
    let body = serde_json::json!({"name": "Board", "start_at": at(3), "end_at": at(3600),
        "vote_restriction": "@everyone", "anonymity_set": 2});
    let created: serde_json::Value =
        app.send_as(Method::POST, "/v1/elections", &admin, Some(body)).await.json().await.unwrap();
    let id = created["election_id"].as_i64().unwrap();
    for (runners, post) in [(PRESIDENT, "President"), (TREASURER, "Treasurer")] {
        for runner in runners {
            let body = serde_json::json!({"citizen_id": runner, "post": post});
            let path = format!("/v1/elections/{id}/runners");
            assert_eq!(app.send_as(Method::POST, &path, &admin, Some(body)).await.status(), 201);
        }
    }
    eventually("the election to open", || async {
        let e = app.get_json(&format!("/v1/elections/{id}")).await;
        (e["status"] == "open").then_some(())
    })
    .await;
    id
}

/// Ballots from citizens 100.., one a line of `choices`; their receipts.
async fn cast_all(app: &TestApp, election: i64, choices: &[&[i64]]) -> Vec<String> {
    let mut receipts = Vec::new();
    for (i, selections) in choices.iter().enumerate() {
        let voter = app.voter(100 + i as i64).await;
        let answer = app.cast(&voter.access, election, selections).await;
        assert_eq!(answer.status(), 202);
        let body: serde_json::Value = answer.json().await.unwrap();
        receipts.push(body["receipt"].as_str().unwrap().to_string());
    }
    receipts
}

fn tally(app: &TestApp, args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(args)
        .env("TALLY_DATABASE__URL", app.settings.database.url.expose())
        .env("TALLY_LOG__FILTER", "warn")
        .output()
        .expect("run tally");
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

/// The Python verifier's verdict: `OK ...` or `FAIL <check>: ...`.
fn python(dir: &Path, key: &str, extra: &[&str]) -> String {
    let python = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tools/verify_record.py");
    let output = Command::new(python)
        .arg(script)
        .arg(dir)
        .arg(key)
        .args(extra)
        .output()
        .unwrap_or_else(|e| panic!("{python}: {e}; `make tools` installs it"));
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// The live page's checks (common/http/static/record.js), run by Node's
/// WebCrypto on a proof the API served.
fn node_record_check(proof: &Path, receipt: &str, key: &str) -> serde_json::Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/record_check.mjs");
    let output =
        Command::new("node").arg(script).arg(proof).arg(receipt).arg(key).output().expect("node runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("the script's JSON report")
}

/// A change made to a copy of the record's directory.
type Tampering = Box<dyn Fn(&Path)>;

fn scratch(app: &TestApp, what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{}-{what}", app.ns.id));
    std::fs::remove_dir_all(&dir).ok();
    dir
}

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[tokio::test]
async fn a_final_election_gets_one_signed_record_that_both_verifiers_accept() {
    let app = spawn_app().await;
    let id = two_post_election(&app).await;
    let choices: [&[i64]; 7] =
        [&[9001, 9003], &[9002, 9004], &[9001], &[9001, 9004], &[9002, 9003], &[9002], &[9001, 9003]];
    let receipts = cast_all(&app, id, &choices).await;

    // Recorded while the election runs (K = 2), but no record before final.
    app.settled(&receipts[0]).await;
    let proof_path = format!("/v1/receipts/{}/proof", receipts[0]);
    assert_eq!(
        code_of(app.client.get(format!("{}{proof_path}", app.api)).send().await.unwrap()).await,
        (409, "record_not_ready".into())
    );
    let checkpoint_path = format!("/v1/elections/{id}/record/checkpoint");
    assert_eq!(
        code_of(app.client.get(format!("{}{checkpoint_path}", app.api)).send().await.unwrap()).await,
        (409, "record_not_ready".into())
    );

    app.close(id).await;
    let checkpoint = eventually("the record to be built", || async {
        let answer = app.client.get(format!("{}{checkpoint_path}", app.api)).send().await.unwrap();
        if answer.status() == 200 { Some(answer.text().await.unwrap()) } else { None }
    })
    .await;
    assert!(checkpoint.starts_with(&format!("localhost/tally/election/{id}\n7\n")), "{checkpoint}");

    let key = app.get_text("/v1/record/verifier-key").await;
    let key = key.trim().to_string();
    assert_eq!(key, app.settings.record.verifier().unwrap().encode());

    // Exported by the CLI, and the same bytes over REST.
    let dir = scratch(&app, "record");
    let (ok, out) = tally(&app, &["record", "export", &id.to_string(), "--out", dir.to_str().unwrap()]);
    assert!(ok, "{out}");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "MANIFEST",
            "audit.jsonl",
            "ballots-1.csv",
            "ballots-2.csv",
            "checkpoint",
            "election.json",
            "receipts.txt",
            "totals.json"
        ]
    );
    for name in &names {
        let served =
            app.client.get(format!("{}/v1/elections/{id}/record/{name}", app.api)).send().await.unwrap();
        assert_eq!(served.status(), 200, "{name}");
        assert_eq!(served.bytes().await.unwrap().to_vec(), std::fs::read(dir.join(name)).unwrap(), "{name}");
    }
    let missing =
        app.client.get(format!("{}/v1/elections/{id}/record/ballots-3.csv", app.api)).send().await.unwrap();
    assert_eq!(code_of(missing).await, (404, "record_file_not_found".into()));

    // Both verifiers accept it.
    let (ok, out) = tally(&app, &["record", "verify", dir.to_str().unwrap(), "--verifier-key", &key]);
    assert!(ok && out.starts_with(&format!("election {id} verified: 7 ballots over 2 posts")), "{out}");
    assert!(python(&dir, &key, &[]).starts_with(&format!("OK election {id}: 7 ballots, 2 posts")));

    // Every voter's receipt is proven, by the API, the CLI and Python.
    for receipt in &receipts {
        let proof: serde_json::Value = app.get_json(&format!("/v1/receipts/{receipt}/proof")).await;
        assert_eq!((proof["election_id"].as_i64(), proof["tree_size"].as_u64()), (Some(id), Some(7)));
        assert_eq!(proof["checkpoint"], checkpoint.as_str());
        let file = dir.with_extension("proof.json");
        std::fs::write(&file, proof.to_string()).unwrap();
        let verdict = python(&dir, &key, &["--proof", file.to_str().unwrap(), "--receipt", receipt]);
        assert!(verdict.ends_with("the receipt's proof verifies"), "{verdict}");
        let browser = node_record_check(&file, receipt, &key);
        let expected = serde_json::json!({"size": 7, "inRecord": true, "tamperedPath": false,
            "otherReceipt": false, "signed": true, "otherKey": false});
        assert_eq!(browser, expected, "the browser's checks under Node");
        let (ok, out) = tally(
            &app,
            &["record", "prove", receipt, "--dir", dir.to_str().unwrap(), "--verifier-key", &key],
        );
        assert!(ok && out.contains(&format!("is leaf {} of 7", proof["leaf_index"])), "{out}");
        std::fs::remove_file(file).ok();
    }
    let stranger = uuid::Uuid::new_v4();
    let answer = app.client.get(format!("{}/v1/receipts/{stranger}/proof", app.api)).send().await.unwrap();
    assert_eq!(code_of(answer).await, (404, "receipt_not_found".into()));
    let (ok, out) = tally(
        &app,
        &["record", "prove", &stranger.to_string(), "--dir", dir.to_str().unwrap(), "--verifier-key", &key],
    );
    assert!(!ok && out.contains("is not in the record"), "{out}");

    // Tampered copies: both verifiers fail, on the same check.
    let other_key = tally_domain::record::note::NoteSigner::from_seed("localhost/tally", [3; 32]).unwrap();
    let tamperings: [(&str, Tampering, &str); 4] = [
        (
            "one ballot changed",
            Box::new(|d: &Path| {
                let text = std::fs::read_to_string(d.join("ballots-1.csv")).unwrap();
                std::fs::write(d.join("ballots-1.csv"), text.replacen("9001", "9002", 1)).unwrap();
            }),
            "file-hashes",
        ),
        (
            "a receipt removed",
            Box::new(|d: &Path| {
                let text = std::fs::read_to_string(d.join("receipts.txt")).unwrap();
                std::fs::write(d.join("receipts.txt"), text.split_once('\n').unwrap().1).unwrap();
            }),
            "file-hashes",
        ),
        (
            "a file replaced",
            Box::new(|d: &Path| std::fs::write(d.join("audit.jsonl"), "{}\n").unwrap()),
            "file-hashes",
        ),
        (
            "the checkpoint re-signed with another key",
            Box::new(move |d: &Path| {
                let note = std::fs::read_to_string(d.join("checkpoint")).unwrap();
                let text = note.split_once("\n\n").unwrap().0.to_string() + "\n";
                std::fs::write(d.join("checkpoint"), other_key.sign(&text).unwrap()).unwrap();
            }),
            "checkpoint-signature",
        ),
    ];
    for (what, tamper, check) in tamperings {
        let copy_dir = scratch(&app, "tampered");
        copy(&dir, &copy_dir);
        tamper(&copy_dir);
        let (ok, out) =
            tally(&app, &["record", "verify", copy_dir.to_str().unwrap(), "--verifier-key", &key]);
        assert!(!ok && out.contains(&format!("check `{check}` failed")), "{what}: {out}");
        let verdict = python(&copy_dir, &key, &[]);
        assert!(verdict.starts_with(&format!("FAIL {check}:")), "{what}: python says {verdict}");
        std::fs::remove_dir_all(copy_dir).ok();
    }

    // The record pairs no receipt with a choice: receipts appear in
    // receipts.txt and nowhere else, ballots files hold runner ids or
    // nothing, one per line, with no time and no receipt.
    for name in &names {
        let text = std::fs::read_to_string(dir.join(name)).unwrap().to_lowercase();
        for receipt in &receipts {
            let (dashed, bare) = (receipt.to_lowercase(), receipt.replace('-', "").to_lowercase());
            let holds = text.contains(&dashed) || text.contains(&bare);
            assert_eq!(holds, name == "receipts.txt", "{name} and receipt {receipt}");
        }
        if name.starts_with("ballots-") {
            assert!(text.lines().all(|l| l.is_empty() || l.parse::<i64>().is_ok()), "{name}: {text}");
        }
    }
    let treasurer = std::fs::read_to_string(dir.join("ballots-2.csv")).unwrap();
    assert_eq!(treasurer.lines().filter(|l| l.is_empty()).count(), 2, "two ballots left the post blank");

    // Built once, and never changed.
    let deps = app.deps().await;
    let signer = app.settings.record.signer().unwrap();
    let again = tally_platform::records::build_once(&deps, &signer, id).await.unwrap();
    assert_eq!(again, tally_platform::records::Built::Elsewhere);
    let changed = sqlx::query("UPDATE election_record_files SET contents = '' WHERE election_id = $1")
        .bind(id)
        .execute(&app.db)
        .await;
    assert!(changed.is_err(), "a stored record cannot be changed");
    std::fs::remove_dir_all(dir).ok();
}

/// An election the workers already marked final, in an app without
/// workers: no record is built unless the test builds it.
async fn final_without_workers() -> (TestApp, i64) {
    let app = crate::helpers::spawn_app_with(crate::helpers::API_ONLY, |_| {}).await;
    let id = crate::helpers::insert_election(&app.db, crate::helpers::ElectionSpec::default()).await;
    sqlx::query(
        "UPDATE elections SET closed_at = now() - interval '1 minute', fence_seq = 1,
         fenced_at = now() - interval '1 minute', final_at = now() WHERE election_id = $1",
    )
    .bind(id)
    .execute(&app.db)
    .await
    .unwrap();
    (app, id)
}

/// An election nobody could vote in (one runner per post) is final but
/// never gets a record: the workers' rounds pass it by instead of trying
/// again every few seconds for ever.
#[tokio::test]
async fn an_uncontested_final_election_is_passed_by() {
    let (app, id) = final_without_workers().await;
    let deps = app.deps().await;
    assert!(
        tally_platform::records::unbuilt(&app.db).await.unwrap().contains(&id),
        "contested: one to build"
    );
    sqlx::query("DELETE FROM runners WHERE election_id = $1 AND citizen_id = $2")
        .bind(id)
        .bind(crate::helpers::RUNNERS[1])
        .execute(&app.db)
        .await
        .unwrap();
    assert!(!tally_platform::records::unbuilt(&app.db).await.unwrap().contains(&id));
    let signer = app.settings.record.signer().unwrap();
    let built = tally_platform::records::build_once(&deps, &signer, id).await.unwrap();
    assert_eq!(built, tally_platform::records::Built::Never);
    assert!(!tally_platform::records::built(&app.db, id).await.unwrap());
}

/// Two builders at once (two worker replicas noticing the same final
/// election): one signs, the other stands back, and one record is stored.
#[tokio::test]
async fn two_builders_at_once_sign_one_record() {
    let (app, id) = final_without_workers().await;
    let deps = app.deps().await;
    let signer = app.settings.record.signer().unwrap();
    let builds = (0..4).map(|_| tally_platform::records::build_once(&deps, &signer, id));
    let outcomes = futures_util::future::join_all(builds).await;
    let built =
        outcomes.into_iter().filter(|o| *o.as_ref().unwrap() == tally_platform::records::Built::Now).count();
    assert_eq!(built, 1);
    let records: i64 = sqlx::query_scalar("SELECT count(*) FROM election_records WHERE election_id = $1")
        .bind(id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(records, 1);
}

/// The live page's "Verify this election" in Chromium: it appears once
/// the record exists, shows the signed checkpoint and the files, and
/// finds a voter's receipt in the record with the browser's own SHA-256.
#[tokio::test]
async fn the_live_page_verifies_a_receipt_in_the_browser() {
    let app = spawn_app().await;
    let id = crate::helpers::insert_election(&app.db, crate::helpers::ElectionSpec::default()).await;
    let receipts = app.ballots_from_new_voters(id, 700, 3, crate::helpers::RUNNERS[0]).await;
    app.close(id).await;
    eventually("the record to be built", || async {
        let answer =
            app.client.get(format!("{}/v1/elections/{id}/record/checkpoint", app.api)).send().await.unwrap();
        (answer.status() == 200).then_some(())
    })
    .await;
    let root = env!("CARGO_MANIFEST_DIR");
    std::fs::create_dir_all(format!("{root}/artifacts")).unwrap();
    let screenshot = format!("{root}/artifacts/record-page.png");
    let output = tokio::process::Command::new("node")
        .arg(format!("{root}/tests/browser/record_page.mjs"))
        .arg(format!("{}/elections/{id}", app.broadcaster))
        .arg(&app.api)
        .arg(&receipts[1])
        .arg(&screenshot)
        .output()
        .await
        .expect("node runs (make tools installs playwright-core and Chromium)");
    assert!(output.status.success(), "the browser check failed: {}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("the script's JSON report");
    assert!(
        report["checkpoint"].as_str().unwrap().starts_with(&format!("localhost/tally/election/{id}\n3\n"))
    );
    assert_eq!(report["mine"]["status"], "in-record", "{report}");
    assert!(report["mine"]["text"].as_str().unwrap().contains("of 3"), "{report}");
    assert_eq!(report["stranger"]["status"], "unknown");
    assert_eq!(report["files"].as_array().unwrap().len(), 7, "{report}");
    assert!(report["caveat"].as_str().unwrap().contains("prove little"), "{report}");
    assert_ne!(report["signature"], "the checkpoint's signature does NOT check out");
    assert_eq!(report["errors"], serde_json::json!([]));
}

/// A ballot waiting in quarantine holds the record back until an
/// operator replays or rejects it.
#[tokio::test]
async fn a_quarantined_ballot_holds_the_record_back() {
    let (app, id) = final_without_workers().await;
    let deps = app.deps().await;
    let settings = &app.settings.nats;
    let subject = tally_platform::nats::quarantine_subject(settings, &id.to_string());
    let timeout = std::time::Duration::from_secs(5);
    tally_platform::nats::publish_acked(
        &deps.jetstream,
        subject,
        Default::default(),
        "sealed".into(),
        timeout,
    )
    .await
    .unwrap();
    let signer = app.settings.record.signer().unwrap();
    let built = tally_platform::records::build_once(&deps, &signer, id).await.unwrap();
    assert_eq!(built, tally_platform::records::Built::NotYet);
    let path = format!("/v1/elections/{id}/record/checkpoint");
    let answer = app.client.get(format!("{}{path}", app.api)).send().await.unwrap();
    assert_eq!(code_of(answer).await, (409, "record_not_ready".into()));
    // As `tally quarantine reject` leaves it: nothing left in quarantine.
    let quarantine = tally_platform::nats::quarantine_stream(settings);
    deps.jetstream.get_stream(quarantine).await.unwrap().purge().await.unwrap();
    let built = tally_platform::records::build_once(&deps, &signer, id).await.unwrap();
    assert_eq!(built, tally_platform::records::Built::Now);
}
