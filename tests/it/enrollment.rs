//! Sign-up proves identity: one-time enrollment codes, issued by the CLI,
//! consumed by the sign-up that uses them; accounts made before codes
//! existed must re-enroll.

use std::process::{Command, Output};
use std::sync::Arc;

use sqlx::{Connection, PgConnection, PgPool};
use tally::app::Roles;

use crate::helpers::*;

fn tally(settings: &tally_platform::Settings, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(args)
        .env("TALLY_DATABASE__URL", settings.database.url.expose())
        .env("TALLY_LOG__FILTER", "warn")
        .output()
        .expect("run tally")
}

fn signup_body(citizen_id: i64, code: Option<&str>) -> serde_json::Value {
    let mut body =
        serde_json::json!({"citizen_id": citizen_id, "password": PASSWORD, "phone": phone_of(citizen_id)});
    if let Some(code) = code {
        body["enrollment_code"] = code.into();
    }
    body
}

#[tokio::test]
async fn signup_needs_the_citizens_own_current_code() {
    let app = spawn_app().await;
    for id in [12, 13] {
        add_citizen(&app.db, id, "Capital", "1990-01-01").await;
    }
    let signup = |body: serde_json::Value| app.post_json("/v1/auth/signup", body);
    let refused = (403, "invalid_enrollment_code".to_string());

    assert_eq!(code_of(signup(signup_body(12, None)).await).await, refused, "no code");
    let older = app.code_for(12).await;
    let current = app.code_for(12).await;
    let others = app.code_for(13).await;
    assert_eq!(code_of(signup(signup_body(12, Some("0000-0000-0000-0000"))).await).await, refused, "wrong");
    assert_eq!(code_of(signup(signup_body(12, Some("not a code"))).await).await, refused, "malformed");
    assert_eq!(code_of(signup(signup_body(12, Some(&older))).await).await, refused, "replaced");
    assert_eq!(code_of(signup(signup_body(12, Some(&others))).await).await, refused, "another citizen's");
    let accounts: i64 = sqlx::query_scalar("SELECT count(*) FROM users").fetch_one(&app.db).await.unwrap();
    assert_eq!(accounts, 0, "no refused sign-up made an account");

    // Typed as a person would: lower case, without the dashes.
    let typed = current.replace('-', "").to_lowercase();
    assert_eq!(signup(signup_body(12, Some(&typed))).await.status(), 201);
    assert_eq!(app.login(12, PASSWORD).await.status(), 200);
    let left: Vec<i64> = sqlx::query_scalar("SELECT citizen_id FROM enrollment_codes ORDER BY citizen_id")
        .fetch_all(&app.db)
        .await
        .unwrap();
    assert_eq!(left, [13], "the code used is gone; the other citizen's is untouched");
}

#[tokio::test]
async fn codes_are_stored_only_as_keyed_hashes() {
    let app = spawn_app().await;
    add_citizen(&app.db, 14, "Capital", "1990-01-01").await;
    let code = app.code_for(14).await;
    let stored: Vec<u8> = sqlx::query_scalar("SELECT code_hash FROM enrollment_codes WHERE citizen_id = 14")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(Some(stored.clone()), app.enrollment_key().hash(14, &code));
    let other_key = tally_domain::enrollment::EnrollmentKey::new(b"not the server's key, 32 bytes long");
    assert_ne!(Some(stored.clone()), other_key.hash(14, &code), "the hash needs the key");
    let text = String::from_utf8_lossy(&stored);
    assert!(!text.contains(&code) && !text.contains(&code.replace('-', "")));
}

/// A database at the schema before enrollment codes, with one account
/// and its live session; then every migration, as an upgrade would run.
async fn upgraded_with_an_old_account(ns: &Namespace) -> PgPool {
    let mut admin = PgConnection::connect(&format!("{PG_SERVER}/postgres")).await.unwrap();
    sqlx::raw_sql(&format!("CREATE DATABASE \"{}\"", ns.database())).execute(&mut admin).await.unwrap();
    admin.close().await.ok();
    let db = PgPool::connect(&format!("{PG_SERVER}/{}", ns.database())).await.unwrap();
    let before = std::env::temp_dir().join(format!("{}-migrations", ns.id));
    std::fs::create_dir_all(&before).unwrap();
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if name.as_str() < "20261127000001" {
            std::fs::copy(&path, before.join(name)).unwrap();
        }
    }
    sqlx::migrate::Migrator::new(before.as_path()).await.unwrap().run(&db).await.unwrap();
    std::fs::remove_dir_all(before).ok();

    add_citizen(&db, 15, "Capital", "1990-01-01").await;
    let hash =
        tally_platform::auth::Passwords::new(1).unwrap().hash("the squatter's own password".into()).await;
    sqlx::query(
        "INSERT INTO users (citizen_id, password_hash, phone, role) VALUES (15, $1, '+15559999999', 'admin')",
    )
    .bind(hash.unwrap())
    .execute(&db)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO sessions (session_id, citizen_id, expires_at) VALUES ($1, 15, now() + interval '1 day')",
    )
    .bind(uuid::Uuid::new_v4())
    .execute(&db)
    .await
    .unwrap();
    sqlx::query("INSERT INTO refresh_tokens (token_hash, session_id) SELECT $1, session_id FROM sessions")
        .bind(tally_platform::auth::refresh::hash("an-old-refresh-token"))
        .execute(&db)
        .await
        .unwrap();
    tally_platform::postgres::migrate(&db).await.expect("the enrollment migration applies over data");
    db
}

#[tokio::test]
async fn accounts_made_before_codes_must_re_enroll() {
    let ns = Namespace::new();
    let cleanup = Arc::new(Cleanup(ns.clone()));
    let db = upgraded_with_an_old_account(&ns).await;
    let (enrolled, revoked): (bool, bool) = sqlx::query_as(
        "SELECT u.enrolled_at IS NOT NULL, s.revoked_at IS NOT NULL FROM users u JOIN sessions s USING (citizen_id)",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert!(!enrolled && revoked, "the migration marks the account and ends its session");
    crate::helpers::provision_streams(&ns.settings()).await;
    let app = start(ns.clone(), ns.settings(), Roles::ALL, db, cleanup).await;

    let old_refresh =
        app.post_json("/v1/auth/refresh", serde_json::json!({"refresh_token": "an-old-refresh-token"}));
    assert_eq!(code_of(old_refresh.await).await, (403, "reenrollment_required".into()));
    let login = app.login(15, "the squatter's own password").await;
    assert_eq!(code_of(login).await, (403, "reenrollment_required".into()));
    let wrong = app.login(15, "not the password at all").await;
    assert_eq!(code_of(wrong).await, (401, "invalid_credentials".into()), "no hint without the password");
    assert_eq!(code_of(app.signup_with(15, "0000-0000-0000-0000").await).await.0, 403);

    // The citizen, with the code mailed to them, takes the account back.
    assert_eq!(app.signup(15).await.status(), 201);
    assert_eq!(code_of(app.login(15, "the squatter's own password").await).await.0, 401);
    let tokens: serde_json::Value = app.login(15, PASSWORD).await.json().await.unwrap();
    let me: serde_json::Value =
        app.get_as("/v1/me", tokens["access_token"].as_str().unwrap()).await.json().await.unwrap();
    assert_eq!((me["citizen_id"].as_i64(), me["role"].as_str()), (Some(15), Some("admin")), "the role stays");
    let (phone, enrolled): (String, bool) =
        sqlx::query_as("SELECT phone, enrolled_at IS NOT NULL FROM users WHERE citizen_id = 15")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!((phone, enrolled), (phone_of(15), true));
    assert_eq!(code_of(app.signup(15).await).await, (409, "user_exists".into()), "once is enough");
}

#[tokio::test]
async fn the_cli_issues_replaces_and_audits_codes_without_recording_them() {
    let app = spawn_app().await;
    for id in [21, 22, 23] {
        add_citizen(&app.db, id, "Capital", "1990-01-01").await;
    }
    let issued = tally(&app.settings, &["citizens", "codes", "--ids", "21,22"]);
    assert!(issued.status.success(), "{}", String::from_utf8_lossy(&issued.stderr));
    let lines: Vec<(i64, String)> = String::from_utf8(issued.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (id, code) = l.split_once(',').unwrap();
            (id.parse().unwrap(), code.to_string())
        })
        .collect();
    assert_eq!(lines.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [21, 22]);
    assert!(lines.iter().all(|(_, code)| code.replace('-', "").len() >= 10));

    let again = tally(&app.settings, &["citizens", "codes", "--ids", "21"]);
    assert!(again.status.success());
    let newer = String::from_utf8(again.stdout).unwrap().trim().split_once(',').unwrap().1.to_string();
    assert_eq!(
        code_of(app.signup_with(21, &lines[0].1).await).await.0,
        403,
        "the older code no longer works"
    );
    assert_eq!(app.signup_with(21, &newer).await.status(), 201);
    assert_eq!(app.signup_with(22, &lines[1].1).await.status(), 201);

    let unknown = tally(&app.settings, &["citizens", "codes", "--ids", "23,999"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("not in the registry: 999"));
    let for_23: i64 = sqlx::query_scalar("SELECT count(*) FROM enrollment_codes WHERE citizen_id = 23")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(for_23, 0, "all or none");

    let audit: Vec<(String, String, serde_json::Value)> =
        sqlx::query_as("SELECT actor, action, after FROM audit_log ORDER BY id")
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(audit.len(), 2);
    assert!(audit.iter().all(|(actor, action, _)| actor.starts_with("cli:") && action == "enrollment.issue"));
    assert_eq!(audit[0].2, serde_json::json!({"citizen_ids": [21, 22]}));
    let recorded = format!("{audit:?}");
    for (_, code) in lines.iter().chain([&(21, newer)]) {
        assert!(!recorded.contains(code.as_str()) && !recorded.contains(&code.replace('-', "")));
    }
}

#[tokio::test]
async fn a_mailing_run_covers_every_citizen_without_an_enrolled_account() {
    let app = spawn_app().await;
    app.voter(31).await;
    for id in [32, 33] {
        add_citizen(&app.db, id, "Capital", "1990-01-01").await;
    }
    app.signup(33).await;
    sqlx::query("UPDATE users SET enrolled_at = NULL WHERE citizen_id = 33").execute(&app.db).await.unwrap();
    let file = std::env::temp_dir().join(format!("{}-mailing.csv", app.ns.id));
    let path = file.to_str().unwrap();

    let run = tally(&app.settings, &["citizens", "codes", "--without-account", "--output", path]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(String::from_utf8_lossy(&run.stderr).contains("100% 2/2 codes"), "progress is reported");
    let mailing = std::fs::read_to_string(&file).unwrap();
    let ids: Vec<&str> = mailing.lines().map(|l| l.split_once(',').unwrap().0).collect();
    assert_eq!(ids, ["32", "33"], "no code for the enrolled account, one for the marked one");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let code_32 = mailing.lines().next().unwrap().split_once(',').unwrap().1;
    assert_eq!(app.signup_with(32, code_32).await.status(), 201);

    let clobber = tally(&app.settings, &["citizens", "codes", "--without-account", "--output", path]);
    assert!(!clobber.status.success(), "an unsent mailing is never overwritten");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), mailing);
    let after: serde_json::Value = sqlx::query_scalar(
        "SELECT after FROM audit_log WHERE action = 'enrollment.issue' ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(after, serde_json::json!({"without_account": true, "issued": 2}));
    std::fs::remove_file(file).ok();
}

#[tokio::test]
async fn seed_demo_prints_codes_the_quick_start_signs_up_with() {
    let app = spawn_app().await;
    let seeded = tally(&app.settings, &["seed-demo", "--citizens", "50"]);
    assert!(seeded.status.success(), "{}", String::from_utf8_lossy(&seeded.stderr));
    let stdout = String::from_utf8(seeded.stdout).unwrap();
    let codes: Vec<(&str, &str)> = stdout
        .lines()
        .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
        .filter_map(|l| l.split_once(','))
        .collect();
    assert_eq!(
        codes.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        ["42", "43", "44", "45", "46"],
        "{stdout}"
    );
    assert_eq!(app.signup_with(42, codes[0].1).await.status(), 201);

    let again = tally(&app.settings, &["seed-demo", "--citizens", "50"]);
    let stdout = String::from_utf8(again.stdout).unwrap();
    assert!(
        !stdout.contains("\n42,") && stdout.contains("\n43,"),
        "only citizens without an account: {stdout}"
    );
}
