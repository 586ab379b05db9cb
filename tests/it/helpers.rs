//! Test harness: every test gets its own database, Redis key prefix and
//! NATS stream, runs the real app on port 0, and cleans up when dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sqlx::{Connection, PgConnection, PgPool};
use tally::app::{App, Roles};
use tally_domain::secret::Secret;
use tally_platform::Settings;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub const PG_SERVER: &str = "postgres://postgres@127.0.0.1:5432";

/// Names that keep one test's data apart from every other's.
#[derive(Clone, Debug)]
pub struct Namespace {
    pub id: String,
}

impl Namespace {
    pub fn new() -> Self {
        let id = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        Namespace { id }
    }

    pub fn database(&self) -> String {
        format!("tally_{}", self.id)
    }

    /// Settings for this namespace, every listener on an ephemeral port.
    pub fn settings(&self) -> Settings {
        let mut s = Settings::default();
        s.database.url = Secret::new(format!("{PG_SERVER}/{}", self.database()));
        s.database.max_connections = 8;
        s.redis.key_prefix = self.id.clone();
        s.nats.stream = format!("VOTES_{}", self.id.to_uppercase());
        s.nats.subject_prefix = format!("{}.votes", self.id);
        s.nats.consumer = format!("workers_{}", self.id);
        s.nats.max_bytes = 64 << 20;
        s.http.api_addr = ([127, 0, 0, 1], 0).into();
        s.http.broadcaster_addr = ([127, 0, 0, 1], 0).into();
        s.http.admin_addr = ([127, 0, 0, 1], 0).into();
        s.http.shutdown_grace_secs = 5;
        s.log.filter = "warn".into();
        // Tests sign up hundreds of voters from one address; the limits
        // tests set this themselves.
        s.auth.signup_attempts_per_ip = 0;
        s
    }

    pub async fn create_database(&self) -> PgPool {
        let mut admin =
            PgConnection::connect(&format!("{PG_SERVER}/postgres")).await.expect("reach Postgres");
        sqlx::raw_sql(&format!("CREATE DATABASE \"{}\"", self.database()))
            .execute(&mut admin)
            .await
            .expect("create test database");
        admin.close().await.ok();
        let pool =
            PgPool::connect(&format!("{PG_SERVER}/{}", self.database())).await.expect("connect test db");
        tally_platform::postgres::migrate(&pool).await.expect("migrations apply to a fresh database");
        pool
    }

    /// Removes the database, Redis keys and stream. Runs on its own thread
    /// and runtime because it is called from `Drop`.
    fn clean_up(&self) {
        let ns = self.clone();
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                if let Ok(mut admin) = PgConnection::connect(&format!("{PG_SERVER}/postgres")).await {
                    let drop = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", ns.database());
                    let _ = sqlx::raw_sql(&drop).execute(&mut admin).await;
                }
                if let Ok(client) = redis::Client::open("redis://127.0.0.1:6379")
                    && let Ok(mut conn) = client.get_multiplexed_async_connection().await
                {
                    let pattern = format!("{}*", ns.id);
                    let keys: Vec<String> =
                        redis::cmd("KEYS").arg(pattern).query_async(&mut conn).await.unwrap_or_default();
                    if !keys.is_empty() {
                        let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
                    }
                }
                if let Ok(client) = async_nats::connect("nats://127.0.0.1:4222").await {
                    let js = async_nats::jetstream::new(client);
                    let stream = format!("VOTES_{}", ns.id.to_uppercase());
                    let _ = js.delete_stream(format!("{stream}_QUARANTINE")).await;
                    let _ = js.delete_stream(stream).await;
                }
            });
        });
        let _ = done.join();
    }
}

/// The namespace's NATS streams, as `tally migrate` makes them: roles
/// only look them up. Left alone if a test provisioned them already (with
/// an identity of its own).
pub async fn provision_streams(settings: &Settings) {
    let client = tally_platform::nats::connect(&settings.nats).await.expect("NATS client");
    let js = tally_platform::nats::jetstream(client, &settings.nats);
    if tally_platform::streams::require(&js, &settings.nats).await.is_err() {
        tally::app::provision_streams(&settings.nats).await.expect("NATS streams provisioned");
    }
}

/// Deletes the namespace's data when the test ends, pass or fail.
pub struct Cleanup(pub Namespace);

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.0.clean_up();
    }
}

pub struct TestApp {
    pub api: String,
    pub broadcaster: String,
    pub admin: String,
    pub db: PgPool,
    pub settings: Settings,
    pub client: reqwest::Client,
    pub ns: Namespace,
    app: Option<App>,
    /// The shared clients, connected on first use and then kept.
    deps: Arc<tokio::sync::OnceCell<tally_platform::Deps>>,
    _cleanup: Arc<Cleanup>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Roles::ALL, |_| {}).await
}

pub async fn spawn_app_with(roles: Roles, configure: impl FnOnce(&mut Settings)) -> TestApp {
    let ns = Namespace::new();
    let cleanup = Arc::new(Cleanup(ns.clone()));
    let db = ns.create_database().await;
    let mut settings = ns.settings();
    configure(&mut settings);
    provision_streams(&settings).await;
    start(ns, settings, roles, db, cleanup).await
}

pub async fn start(
    ns: Namespace,
    settings: Settings,
    roles: Roles,
    db: PgPool,
    cleanup: Arc<Cleanup>,
) -> TestApp {
    let mut app = App::start(settings.clone(), roles, CancellationToken::new()).await.expect("app starts");
    app.ready().await.expect("app becomes ready");
    let url = |addr: Option<SocketAddr>| addr.map(|a| format!("http://{a}")).unwrap_or_default();
    TestApp {
        api: url(app.api_addr),
        broadcaster: url(app.broadcaster_addr),
        admin: format!("http://{}", app.admin_addr),
        db,
        settings,
        client: reqwest::Client::new(),
        ns,
        app: Some(app),
        deps: Arc::default(),
        _cleanup: cleanup,
    }
}

impl TestApp {
    /// A second process of the same deployment (same database, stream and
    /// Redis namespace), e.g. another API replica.
    pub async fn another_instance(&self, roles: Roles) -> TestApp {
        let settings = self.settings.clone();
        start(self.ns.clone(), settings, roles, self.db.clone(), self._cleanup.clone()).await
    }

    pub async fn stop(mut self) {
        if let Some(app) = self.app.take() {
            app.stop().await.expect("app stops cleanly");
        }
    }

    pub async fn post_json(&self, path: &str, body: serde_json::Value) -> reqwest::Response {
        self.client.post(format!("{}{path}", self.api)).json(&body).send().await.expect("request sent")
    }
}

/// A TCP forwarder between the app and a dependency that a test can cut
/// and restore, to watch the app lose and regain it.
pub struct Proxy {
    pub addr: SocketAddr,
    open: Arc<AtomicBool>,
    cut: Arc<tokio::sync::Notify>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let open = Arc::new(AtomicBool::new(true));
        let cut = Arc::new(tokio::sync::Notify::new());
        let (open2, cut2) = (open.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !open2.load(Ordering::SeqCst) {
                    let _ = inbound.shutdown().await;
                    continue;
                }
                let cut = cut2.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.notified() => {}
                    }
                });
            }
        });
        Proxy { addr, open, cut }
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        self.cut.notify_waiters();
    }

    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

/// Polls `probe` until it returns `Some` or the deadline passes. For
/// conditions that only an outside observer can see change (no event to
/// await); each poll is an ordinary request.
pub async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Adds a registry citizen.
pub async fn add_citizen(db: &PgPool, citizen_id: i64, province: &str, dob: &str) {
    sqlx::query(
        "INSERT INTO citizens (citizen_id, full_name, dob, pob, permanent_address, province)
         VALUES ($1, $2, $3::date, 'Capital', '1 Oak Street', $4)",
    )
    .bind(citizen_id)
    .bind(format!("Citizen {citizen_id}"))
    .bind(dob)
    .bind(province)
    .execute(db)
    .await
    .expect("insert citizen");
}

pub const PASSWORD: &str = "correct horse battery staple";

pub fn phone_of(citizen_id: i64) -> String {
    format!("+1555{:07}", citizen_id % 10_000_000)
}

/// A citizen with an account, logged in.
pub struct Voter {
    pub access: String,
    pub refresh: String,
}

impl TestApp {
    /// Issues the citizen a fresh enrollment code, as `tally citizens codes`
    /// does (any older one stops working), but without the audit entry
    /// that command adds, so tests that read the audit log see only theirs.
    pub async fn code_for(&self, citizen_id: i64) -> String {
        let code = tally_domain::enrollment::new_code().expect("a code");
        sqlx::query(
            "INSERT INTO enrollment_codes (citizen_id, code_hash) VALUES ($1, $2)
             ON CONFLICT (citizen_id) DO UPDATE SET code_hash = EXCLUDED.code_hash",
        )
        .bind(citizen_id)
        .bind(self.enrollment_key().hash(citizen_id, &code).expect("well formed"))
        .execute(&self.db)
        .await
        .expect("code issued");
        code
    }

    pub fn enrollment_key(&self) -> tally_domain::enrollment::EnrollmentKey {
        tally_domain::enrollment::EnrollmentKey::new(
            self.settings.auth.enrollment_key().expect("an enrollment key"),
        )
    }

    /// Signs the citizen up with a freshly issued code.
    pub async fn signup(&self, citizen_id: i64) -> reqwest::Response {
        let code = self.code_for(citizen_id).await;
        self.signup_with(citizen_id, &code).await
    }

    pub async fn signup_with(&self, citizen_id: i64, code: &str) -> reqwest::Response {
        self.post_json(
            "/v1/auth/signup",
            serde_json::json!({
                "citizen_id": citizen_id, "password": PASSWORD, "phone": phone_of(citizen_id),
                "enrollment_code": code,
            }),
        )
        .await
    }

    pub async fn login(&self, citizen_id: i64, password: &str) -> reqwest::Response {
        self.post_json("/v1/auth/login", serde_json::json!({"citizen_id": citizen_id, "password": password}))
            .await
    }

    /// Registers a citizen (born 1990, province Capital unless given),
    /// signs them up and logs them in.
    pub async fn voter(&self, citizen_id: i64) -> Voter {
        self.voter_in(citizen_id, "Capital", "1990-01-01").await
    }

    pub async fn voter_in(&self, citizen_id: i64, province: &str, dob: &str) -> Voter {
        add_citizen(&self.db, citizen_id, province, dob).await;
        assert_eq!(self.signup(citizen_id).await.status(), 201);
        let tokens: serde_json::Value =
            self.login(citizen_id, PASSWORD).await.json().await.expect("token json");
        Voter {
            access: tokens["access_token"].as_str().expect("access token").to_string(),
            refresh: tokens["refresh_token"].as_str().expect("refresh token").to_string(),
        }
    }

    pub async fn get_as(&self, path: &str, token: &str) -> reqwest::Response {
        self.client.get(format!("{}{path}", self.api)).bearer_auth(token).send().await.expect("request sent")
    }
}

/// The problem+json `code` of a response.
pub async fn code_of(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    (status, body["code"].as_str().unwrap_or_default().to_string())
}

impl TestApp {
    /// A logged-in administrator.
    pub async fn admin(&self, citizen_id: i64) -> String {
        self.voter(citizen_id).await;
        sqlx::query("UPDATE users SET role = 'admin' WHERE citizen_id = $1")
            .bind(citizen_id)
            .execute(&self.db)
            .await
            .expect("grant admin");
        let tokens: serde_json::Value = self.login(citizen_id, PASSWORD).await.json().await.expect("json");
        tokens["access_token"].as_str().expect("token").to_string()
    }

    pub async fn send_as(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<serde_json::Value>,
    ) -> reqwest::Response {
        let mut request = self.client.request(method, format!("{}{path}", self.api)).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.expect("request sent")
    }

    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        self.client.get(format!("{}{path}", self.api)).send().await.expect("sent").json().await.expect("json")
    }

    pub async fn get_text(&self, path: &str) -> String {
        self.client.get(format!("{}{path}", self.api)).send().await.expect("sent").text().await.expect("text")
    }
}

/// An election written straight to the database, its window relative to
/// now, with runners 9001 and 9002 for President (citizens created here).
pub struct ElectionSpec {
    pub starts_in_secs: i64,
    pub ends_in_secs: i64,
    pub restriction: &'static str,
    pub visibility: &'static str,
    pub min_age: i16,
    /// K: workers hold this many ballots back until the end.
    pub anonymity_set: i32,
}

impl Default for ElectionSpec {
    fn default() -> Self {
        ElectionSpec {
            starts_in_secs: -60,
            ends_in_secs: 3600,
            restriction: "@everyone",
            visibility: "live",
            min_age: 18,
            anonymity_set: 2,
        }
    }
}

pub const RUNNERS: [i64; 2] = [9001, 9002];

/// Through the test kit, which the benchmarks share.
pub async fn insert_election(db: &PgPool, spec: ElectionSpec) -> i64 {
    let spec = tally_bench::kit::ElectionSpec {
        starts_in_secs: spec.starts_in_secs,
        ends_in_secs: spec.ends_in_secs,
        restriction: spec.restriction.into(),
        visibility: spec.visibility.into(),
        min_age: spec.min_age,
        anonymity_set: spec.anonymity_set,
        runners: RUNNERS.to_vec(),
        ..Default::default()
    };
    tally_bench::kit::insert_election(db, &spec).await.expect("insert election")
}

impl TestApp {
    pub async fn cast(&self, token: &str, election: i64, selections: &[i64]) -> reqwest::Response {
        self.client
            .post(format!("{}/v1/elections/{election}/ballots", self.api))
            .bearer_auth(token)
            .json(&serde_json::json!({ "selections": selections }))
            .send()
            .await
            .expect("ballot sent")
    }

    /// Waits until the receipt is no longer pending; returns its status.
    /// Workers hold the last K ballots of an election until it ends, so
    /// callers cast more than 2K ballots or close the election first. A
    /// 429 from the receipt route's own limit only means "ask again later".
    pub async fn settled(&self, receipt: &str) -> serde_json::Value {
        eventually("the ballot to be processed", || async {
            let answer =
                self.client.get(format!("{}/v1/receipts/{receipt}", self.api)).send().await.expect("sent");
            if answer.status() == 429 {
                return None;
            }
            assert_eq!(answer.status(), 200, "the receipt route answers");
            let status: serde_json::Value = answer.json().await.expect("json");
            (status["status"] != "pending").then_some(status)
        })
        .await
    }

    /// New voters `first..first + n` (province Capital, born 1990), each
    /// casting one accepted ballot for `choice`; their receipts in order.
    pub async fn ballots_from_new_voters(
        &self,
        election: i64,
        first: i64,
        n: i64,
        choice: i64,
    ) -> Vec<String> {
        let mut receipts = Vec::new();
        for citizen in first..first + n {
            let voter = self.voter(citizen).await;
            let answer = self.cast(&voter.access, election, &[choice]).await;
            assert_eq!(answer.status(), 202, "ballot of citizen {citizen} accepted");
            let body: serde_json::Value = answer.json().await.expect("json");
            receipts.push(body["receipt"].as_str().expect("receipt").to_string());
        }
        receipts
    }

    /// Closes the election now, as an admin would: workers then flush the
    /// ballots they hold. Every test that waits for all ballots closes
    /// first, since up to K of them are held until the end.
    pub async fn close(&self, election: i64) {
        sqlx::query("UPDATE elections SET closed_at = now(), updated_at = now() WHERE election_id = $1")
            .bind(election)
            .execute(&self.db)
            .await
            .expect("close");
        let mut redis = self.deps().await.redis;
        redis::cmd("PUBLISH")
            .arg(self.keys().elections_channel())
            .arg(election)
            .query_async::<i64>(&mut redis)
            .await
            .expect("announce");
    }

    /// Waits until Postgres holds `turnout` recorded ballots for the election.
    pub async fn recorded(&self, election: i64, turnout: i64) {
        eventually("ballots to be recorded", || async {
            let n: i64 = sqlx::query_scalar("SELECT turnout FROM elections WHERE election_id = $1")
                .bind(election)
                .fetch_one(&self.db)
                .await
                .expect("turnout");
            (n == turnout).then_some(())
        })
        .await
    }

    /// (runner, votes) in Postgres, and in Redis.
    pub async fn totals(&self, election: i64) -> (Vec<(i64, i64)>, Vec<(i64, i64)>) {
        let pg: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT citizen_id, total_votes FROM runners WHERE election_id = $1 ORDER BY citizen_id",
        )
        .bind(election)
        .fetch_all(&self.db)
        .await
        .expect("runner totals");
        let snapshot = tally_platform::tallies::read(&self.deps().await.redis, &self.keys(), election)
            .await
            .expect("tally");
        let mut cached: Vec<(i64, i64)> =
            pg.iter().map(|(r, _)| (*r, snapshot.votes.get(r).copied().unwrap_or(0))).collect();
        cached.sort();
        (pg, cached)
    }

    pub fn keys(&self) -> tally_platform::redis::Keys {
        tally_platform::redis::Keys::new(&self.settings.redis.key_prefix)
    }

    /// The shared clients, as a role would have them: connected once per
    /// test, on first use.
    pub async fn deps(&self) -> tally_platform::Deps {
        self.deps
            .get_or_init(|| async {
                tally_platform::Deps::connect(
                    Arc::new(self.settings.clone()),
                    &tally_platform::readiness::Readiness::default(),
                    &CancellationToken::new(),
                )
                .await
                .expect("dependencies reachable")
                .expect("not shut down")
            })
            .await
            .clone()
    }
}

pub const API_ONLY: Roles = Roles { api: true, workers: false, broadcaster: false };
pub const WORKERS_ONLY: Roles = Roles { api: false, workers: true, broadcaster: false };

/// Another process of `app`'s deployment with its own settings (e.g. a
/// dependency reached through a proxy).
pub async fn start_with(app: &TestApp, settings: Settings, roles: Roles) -> TestApp {
    start(app.ns.clone(), settings, roles, app.db.clone(), app._cleanup.clone()).await
}

impl TestApp {
    /// Kills the process's work mid-flight, as `kill -9` would.
    pub fn abort(mut self) {
        if let Some(app) = self.app.take() {
            app.abort();
        }
    }
}

impl TestApp {
    /// Ballots still in the stream (the stream is a work queue, so these
    /// are the ones no worker has acked).
    pub async fn queued(&self, deps: &tally_platform::Deps) -> u64 {
        tally_platform::nats::ballots_waiting(&deps.jetstream, &self.settings.nats).await.expect("stream")
    }
}
pub const API_AND_WORKERS: Roles = Roles { api: true, workers: true, broadcaster: false };
pub const BROADCASTER_ONLY: Roles = Roles { api: false, workers: false, broadcaster: true };

/// A fresh directory holding `cert.pem`, a self-signed certificate for
/// `localhost`, and its `key.pem`, made with openssl.
pub async fn self_signed_localhost() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tally-tls-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let made = tokio::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .output()
        .await
        .expect("openssl (make tools installs it)");
    assert!(made.status.success(), "openssl could not make a certificate");
    dir
}

/// The app's settings with Postgres reached through `proxy`, which a test
/// can cut.
pub fn with_database_through(app: &TestApp, proxy: &Proxy) -> Settings {
    let mut settings = app.settings.clone();
    settings.database.url = Secret::new(format!("postgres://postgres@{}/{}", proxy.addr, app.ns.database()));
    settings.database.acquire_timeout_ms = 500;
    settings
}

/// Writes a tally straight to Redis, as a worker does after a commit:
/// `version` votes for the first runner, turnout `version`.
pub async fn publish_version(
    redis: &tally_platform::redis::Redis,
    app: &TestApp,
    election: i64,
    version: i64,
) {
    let totals = tally_platform::tallies::Totals {
        election_id: election,
        version,
        turnout: version,
        votes: vec![(RUNNERS[0], version)],
        oldest_accepted_at: None,
    };
    tally_platform::tallies::apply(redis, &app.keys(), &[totals], &[], false).await.expect("tally written");
}
