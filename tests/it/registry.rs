//! The `tally` CLI against a test database: registry import and generate,
//! and admin role changes.

use std::process::{Command, Output};

use crate::helpers::{Cleanup, Namespace, add_citizen, code_of, spawn_app};

fn tally(settings: &tally_platform::Settings, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(args)
        .env("TALLY_DATABASE__URL", settings.database.url.expose())
        .env("TALLY_REDIS__KEY_PREFIX", &settings.redis.key_prefix)
        .env("TALLY_LOG__FILTER", "warn")
        .output()
        .expect("run tally")
}

fn write_temp(ns: &Namespace, name: &str, contents: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("{}-{name}", ns.id));
    std::fs::write(&path, contents).expect("write temp file");
    path
}

async fn count(db: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM citizens").fetch_one(db).await.expect("count")
}

const PLANTED: &str = "\
citizen_id,full_name,dob,pob,permanent_address,province
1,Ada Lovelace,1990-12-10,Capital,\"1 Oak Street, Capital\",Capital
2,,1980-01-01,Capital,2 Mill Lane,Capital
3,Bob Byte,1980-02-30,Capital,3 Mill Lane,Capital
4,Cy Cell,1970-01-01,Capital,4 Mill Lane,capital city!
1,Ada Again,1990-12-10,Capital,1 Oak Street,Capital
5,Di Data,2001-07-04,Eastmarch,5 Park Row,Eastmarch
6,Ed Edge,1999-01-01,Capital,6 Park Row
";

#[tokio::test]
async fn import_reports_bad_rows_and_is_all_or_nothing() {
    let ns = Namespace::new();
    let _cleanup = Cleanup(ns.clone());
    let db = ns.create_database().await;
    let file = write_temp(&ns, "planted.csv", PLANTED);
    let path = file.to_str().expect("utf-8");

    let refused = tally(&ns.settings(), &["citizens", "import", path]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    for expected in [
        ":3: missing full_name",
        ":4: dob `1980-02-30`",
        ":5: province `capital city!`",
        ":6: duplicate citizen_id 1",
        ":8: missing province",
    ] {
        assert!(stderr.contains(expected), "{expected} not in:\n{stderr}");
    }
    assert!(stderr.contains("nothing imported: 5 of 7 rows are bad"), "{stderr}");
    assert_eq!(count(&db).await, 0, "all or nothing");

    let skipped = tally(&ns.settings(), &["citizens", "import", "--skip-bad-rows", path]);
    assert!(skipped.status.success(), "{}", String::from_utf8_lossy(&skipped.stderr));
    let stdout = String::from_utf8_lossy(&skipped.stdout);
    assert!(
        stdout.contains("imported 2 citizens from 7 rows") && stdout.contains("5 bad rows skipped"),
        "{stdout}"
    );
    let address: String = sqlx::query_scalar("SELECT permanent_address FROM citizens WHERE citizen_id = 1")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(address, "1 Oak Street, Capital");

    // Ids already in the registry are bad rows too.
    let again = tally(&ns.settings(), &["citizens", "import", path]);
    assert!(String::from_utf8_lossy(&again.stderr).contains(":2: citizen_id 1 is already in the registry"));
    std::fs::remove_file(file).ok();
}

#[tokio::test]
async fn a_file_without_the_registry_columns_is_refused() {
    let ns = Namespace::new();
    let _cleanup = Cleanup(ns.clone());
    ns.create_database().await;
    let file = write_temp(&ns, "wrong.csv", "id,name\n1,Ada\n");
    let output = tally(&ns.settings(), &["citizens", "import", file.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("lacks column `citizen_id`"));
    std::fs::remove_file(file).ok();
}

#[tokio::test]
async fn generated_registries_are_deterministic_and_import_cleanly() {
    let ns = Namespace::new();
    let _cleanup = Cleanup(ns.clone());
    let db = ns.create_database().await;
    let settings = ns.settings();
    let first = tally(&settings, &["citizens", "generate", "--count", "500", "--seed", "9"]);
    let second = tally(&settings, &["citizens", "generate", "--count", "500", "--seed", "9"]);
    let other = tally(&settings, &["citizens", "generate", "--count", "500", "--seed", "10"]);
    assert!(first.status.success());
    assert_eq!(first.stdout, second.stdout);
    assert_ne!(first.stdout, other.stdout);
    assert_eq!(String::from_utf8_lossy(&first.stdout).lines().count(), 501);

    let file = write_temp(&ns, "generated.csv", &String::from_utf8_lossy(&first.stdout));
    let imported = tally(&settings, &["citizens", "import", file.to_str().unwrap()]);
    assert!(imported.status.success(), "{}", String::from_utf8_lossy(&imported.stderr));
    assert_eq!(count(&db).await, 500);

    let direct =
        tally(&settings, &["citizens", "generate", "--count", "100", "--first-id", "1001", "--into-db"]);
    assert!(direct.status.success(), "{}", String::from_utf8_lossy(&direct.stderr));
    assert_eq!(count(&db).await, 600);
    std::fs::remove_file(file).ok();
}

#[tokio::test]
async fn admin_grant_and_revoke_change_the_role_and_are_audited() {
    let app = spawn_app().await;
    let voter = app.voter(5).await;
    let forbidden = app.get_as("/v1/me", &voter.access).await;
    assert_eq!(forbidden.status(), 200);

    let granted = tally(&app.settings, &["admin", "grant", "5"]);
    assert!(granted.status.success(), "{}", String::from_utf8_lossy(&granted.stderr));
    let relogin: serde_json::Value = app.login(5, crate::helpers::PASSWORD).await.json().await.unwrap();
    let admin_token = relogin["access_token"].as_str().unwrap();
    let me: serde_json::Value = app.get_as("/v1/me", admin_token).await.json().await.unwrap();
    assert_eq!(me["role"], "admin");

    let revoked = tally(&app.settings, &["admin", "revoke", "5"]);
    assert!(revoked.status.success(), "{}", String::from_utf8_lossy(&revoked.stderr));
    assert_eq!(code_of(app.get_as("/v1/me", admin_token).await).await, (401, "session_revoked".into()));

    let actions: Vec<String> =
        sqlx::query_scalar("SELECT action FROM audit_log ORDER BY id").fetch_all(&app.db).await.unwrap();
    assert_eq!(actions, ["admin.grant", "admin.revoke"]);
    let actor: String =
        sqlx::query_scalar("SELECT actor FROM audit_log LIMIT 1").fetch_one(&app.db).await.unwrap();
    assert!(actor.starts_with("cli:"));

    add_citizen(&app.db, 6, "Capital", "1990-01-01").await;
    let no_account = tally(&app.settings, &["admin", "grant", "6"]);
    assert!(!no_account.status.success());
    assert!(String::from_utf8_lossy(&no_account.stderr).contains("citizen 6 has no account"));
}

#[tokio::test]
async fn import_refuses_nul_and_terminal_control_characters_naming_the_line() {
    let ns = Namespace::new();
    let _cleanup = Cleanup(ns.clone());
    let db = ns.create_database().await;
    let csv = "citizen_id,full_name,dob,pob,permanent_address,province\n\
               1,Ada Lovelace,1990-12-10,Capital,1 Oak Street,Capital\n\
               2,Evil\u{1b}[2JName,1980-01-01,Capital,2 Mill Lane,Capital\n\
               3,Nul Byte,1980-01-01,Cap\u{0}ital,3 Mill Lane,Capital\n\
               4,Bell Ringer,1980-01-01,Capital,4 Mill Lane\u{7},Capital\n\
               5,Csi Person,1980-01-01,Capital,5 Mill Lane\u{9b}2J,Capital\n";
    let file = write_temp(&ns, "control.csv", csv);
    let refused = tally(&ns.settings(), &["citizens", "import", file.to_str().unwrap()]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    for expected in [
        ":3: full_name contains the control character U+001B",
        ":4: pob contains the control character U+0000",
        ":5: permanent_address contains the control character U+0007",
        ":6: permanent_address contains the control character U+009B",
    ] {
        assert!(stderr.contains(expected), "{expected} not in:\n{stderr}");
    }
    assert!(!stderr.contains('\u{1b}'), "the report itself carries no escape");
    assert_eq!(count(&db).await, 0);
    std::fs::remove_file(file).ok();
}

#[tokio::test]
async fn seed_demo_refuses_production() {
    let ns = Namespace::new();
    // Settings production accepts, so only the command's own refusal stops it.
    let production = [
        ("TALLY_ENV", "production"),
        ("TALLY_AUTH__KEYS__DEV", "a-signing-key-that-is-long-enough-for-production"),
        ("TALLY_DATABASE__URL", "postgres://tally:a-real-password@127.0.0.1:5432/nowhere?sslmode=require"),
        ("TALLY_REDIS__URL", "redis://:a-real-password@127.0.0.1:6379"),
        ("TALLY_NATS__URL", "nats://tally:a-real-password@localhost:4222"),
    ];
    let output = Command::new(env!("CARGO_BIN_EXE_tally"))
        .arg("seed-demo")
        .envs(production)
        .env("TALLY_REDIS__KEY_PREFIX", &ns.id)
        .output()
        .expect("run tally");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("refuses to run with TALLY_ENV=production"), "{stderr}");
}
