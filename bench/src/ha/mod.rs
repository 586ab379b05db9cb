//! `tally-bench ha`: Tally on clustered engines, all on this machine from
//! Debian's packages (and NATS from `--nats-server`): three NATS servers with `VOTES` replicated three
//! times, a Postgres primary with a synchronous standby behind HAProxy, a
//! Redis master and replica with three Sentinels, and two processes of
//! each Tally role. Faults come one at a time under a steady ballot load
//! with live viewers; after each the books must agree, and at the end
//! every voter's answers are checked as `tally-bench chaos` checks them.

mod faults;
mod haproxy;
mod nats_cluster;
mod partition;
mod phase;
mod postgres_pair;
mod sentinel;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tally_domain::secret::Secret;
use tally_platform::Settings;
use tokio_util::sync::CancellationToken;

pub use faults::Fault;

use crate::chaos::audience::{Audience, Seen};
use crate::chaos::books::{self, Accounting, Books};
use crate::chaos::voters::{Pace, VoterLog, ballots};
use crate::cluster::Cluster;
use crate::kit::close;
use crate::process::Tally;
use crate::provision::{FIRST_VOTER, provision};
use faults::Stores;
use haproxy::Haproxy;
use nats_cluster::{NatsCluster, NatsServer};
use partition::Net;
use phase::{FaultReport, Load};
use postgres_pair::PostgresPair;
use sentinel::RedisGroup;

pub struct Options {
    pub rate: u32,
    pub viewers: usize,
    pub faults: Vec<Fault>,
    /// Steady load before each fault.
    pub gap: Duration,
    /// Load after each fault is undone, before it stops for the books.
    pub tail: Duration,
    /// Kill -9 one Tally process of each role during each fault.
    pub roles: bool,
    /// The nats-server binary.
    pub nats_server: PathBuf,
    pub out: PathBuf,
}

#[derive(Serialize)]
pub struct Report {
    pub passed: bool,
    pub seconds: f64,
    /// What `nats-server --version` said.
    pub nats_server: String,
    pub faults: Vec<FaultReport>,
    pub votes: Accounting,
    /// Accepted ballots not recorded at the end (must be 0).
    pub lost: usize,
    /// Ballot-box rows beyond the voters on the roll (must be 0).
    pub doubled: i64,
    pub viewers: usize,
    pub viewer_reconnects: u64,
    pub final_tally: Seen,
    pub seconds_close_to_final: f64,
    /// Only when the run did not reach its final state: what the stream
    /// and the workers' consumer hold, read at the deadline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unsettled: Option<books::Queue>,
}

/// Small, so that live tallies move (and are checked) all through the run.
const ANONYMITY_SET: i32 = 5;
const ACK_WAIT_SECS: u64 = 3;
const CONVERGE_WITHIN: Duration = Duration::from_secs(120);
/// Voters set aside per phase beyond gap and tail: the fault's own time.
const FAULT_BUDGET: Duration = Duration::from_secs(60);

/// Runs until done, or until SIGINT/SIGTERM (`timeout`), when every child,
/// data directory and namespace is removed before the error is returned.
pub async fn run(settings: &Settings, tally: &Tally, options: Options) -> anyhow::Result<Report> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        report = run_inner(settings, tally, options) => report,
        _ = term.recv() => anyhow::bail!("terminated; the HA stack was torn down"),
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted; the HA stack was torn down"),
    }
}

async fn run_inner(settings: &Settings, tally: &Tally, options: Options) -> anyhow::Result<Report> {
    let started = Instant::now();
    let scratch = Scratch::new(&options.out)?;
    let dir = &scratch.dir;
    let net = if options.faults.contains(&Fault::NatsPartition) { Some(Net::create(3).await?) } else { None };
    let server = NatsServer::find(&options.nats_server).await?;
    let nats_server = server.version.clone();
    let nats = NatsCluster::start(&dir.join("nats"), net.as_ref(), server)
        .await
        .context("starting the NATS cluster")?;
    let postgres = PostgresPair::start(&dir.join("pg")).await.context("starting the Postgres pair")?;
    let haproxy = Haproxy::start(&dir.join("haproxy"), &postgres.ports).await?;
    let redis = RedisGroup::start(&dir.join("redis")).await.context("starting Redis and Sentinel")?;
    wait_writable(&haproxy).await?;
    let mut database = settings.database.clone();
    database.url = Secret::new(haproxy.database_url());
    let db = tally_platform::postgres::pool(&database)?;
    let stream = settings.nats.stream.clone();
    let mut stores = Stores { nats, postgres, redis, net, stream, db: db.clone() };

    let env = stack_env(&stores, &haproxy);
    tally.migrate(&env).await.context("tally migrate on the HA stack")?;
    let mut settings = settings.clone();
    settings.database.url = Secret::new(haproxy.database_url());
    settings.nats.url = Secret::new(stores.nats.urls());
    settings.workers.anonymity_set = ANONYMITY_SET;

    let per_phase = u64::from(options.rate) * (options.gap + options.tail + FAULT_BUDGET).as_secs();
    let provisioned = provision(&settings, per_phase * options.faults.len() as u64, FIRST_VOTER).await?;
    let election = provisioned.election_id;
    let cluster_env = [
        ("TALLY_NATS__ACK_WAIT_SECS", ACK_WAIT_SECS.to_string()),
        ("TALLY_WORKERS__ANONYMITY_SET", ANONYMITY_SET.to_string()),
        ("TALLY_WORKERS__RECONCILE_INTERVAL_SECS", "2".to_owned()),
        ("TALLY_BROADCASTER__MAX_VIEWERS_PER_IP", "100000".to_owned()),
        ("TALLY_LOG__FILTER", "warn".to_owned()),
    ];
    let layout = [("api", 2), ("workers", 2), ("broadcaster", 2)];
    let all_env = env.into_iter().chain(cluster_env).collect();
    let mut cluster = Cluster::start(tally, &options.out.join("logs"), all_env, &layout).await?;
    let ports = |role: &str, pick: fn(&crate::cluster::Node) -> u16| {
        cluster.with_role(role).into_iter().map(|i| pick(&cluster.nodes[i])).collect::<Vec<u16>>()
    };
    let (apis, lives) = (ports("api", |n| n.api), ports("broadcaster", |n| n.live));

    let stop_watching = CancellationToken::new();
    let audience = Audience::start(lives, election, options.viewers, stop_watching.clone());
    let pace = Pace { rate: options.rate, in_flight: 128, attempts: 10 };
    let load = Load { apis: &apis, election, pace, gap: options.gap, tail: options.tail };
    let mut cast = ballots(&provisioned, FIRST_VOTER);
    let keys = tally_platform::redis::Keys::new(&settings.redis.key_prefix);
    let k = ANONYMITY_SET as usize;
    let mut logs: Vec<VoterLog> = Vec::new();
    let mut reports = Vec::new();
    let mut phase_ranges = Vec::new();
    for (round, fault) in options.faults.iter().copied().enumerate() {
        let voters: Vec<_> = cast.drain(..(per_phase as usize).min(cast.len())).collect();
        let first = logs.len();
        let mut report = phase::run(
            fault,
            round,
            options.roles,
            &load,
            voters,
            &mut stores,
            &mut cluster,
            &mut logs,
            started,
        )
        .await
        .with_context(|| format!("fault {fault:?}"))?;
        let stopped = Instant::now();
        let redis = bench_redis(&stores.redis, &settings).await?;
        let live = Books::settle_until(&db, &redis, &keys, election, CONVERGE_WITHIN, |b| {
            b.settled_live(&logs, &audience.snapshot(), k)
        })
        .await?;
        report.converged = live.settled_live(&logs, &audience.snapshot(), k);
        report.seconds_to_converge = (stopped.elapsed().as_secs_f64() * 100.0).round() / 100.0;
        eprintln!(
            "ha: {fault:?} at {:.1}s: {} sent, errors seen for {:.2}s (503s for {:.2}s), converged {} in {:.2}s",
            report.at,
            report.ballots_sent,
            report.voter_error_seconds,
            report.voter_503_seconds,
            report.converged,
            report.seconds_to_converge
        );
        phase_ranges.push(first..logs.len());
        reports.push(report);
    }

    // Final: the close makes the workers flush what they hold.
    let redis = bench_redis(&stores.redis, &settings).await?;
    let closed = Instant::now();
    close(&db, &redis, &keys, election).await?;
    let books =
        Books::settle(&db, &redis, &keys, election, &logs, || audience.snapshot(), CONVERGE_WITHIN).await?;
    let seconds_close_to_final = closed.elapsed().as_secs_f64();
    let viewers_seen = audience.snapshot();
    let mut votes = books::account(&books, &logs, &provisioned.tokens, apis[0], election).await?;
    books::note_quarantine(&mut votes, &settings.nats).await?;
    for (report, range) in reports.iter_mut().zip(&phase_ranges) {
        report.lost = phase::lost(&books, &logs[range.clone()]);
        if let Some(problem) = report.detail.get("problem").and_then(|p| p.as_str()) {
            votes.violations.push(format!("after {:?}: {problem}", report.fault));
        }
        if !report.converged {
            votes
                .violations
                .push(format!("the books did not agree within {CONVERGE_WITHIN:?} after {:?}", report.fault));
        }
    }
    let lost = phase::lost(&books, &logs);
    if lost > 0 {
        votes.violations.push(format!("{lost} accepted ballots were not recorded"));
    }
    let doubled = books.ballot_box_rows - books.roll.len() as i64;
    let mut unsettled = None;
    if !books.check_final(&logs, &viewers_seen, CONVERGE_WITHIN, &mut votes.violations) {
        unsettled = books::queue(&settings.nats).await.ok();
        let pending: Vec<String> = logs
            .iter()
            .filter(|l| l.receipt.is_some_and(|r| !books.resolved_receipts.contains_key(&r)))
            .map(|l| format!("{} {:?} {:?}", l.citizen_id, l.statuses, l.receipt))
            .collect();
        votes.violations.push(format!("unresolved receipts: {pending:?}"));
    }
    crate::chaos::write_log(&options.out, &logs)?;
    stop_watching.cancel();
    let viewer_reconnects = audience.reconnects.load(std::sync::atomic::Ordering::Relaxed);
    audience.finish().await;
    cluster.stop().await;
    let report = Report {
        passed: votes.violations.is_empty(),
        seconds: started.elapsed().as_secs_f64(),
        nats_server,
        faults: reports,
        votes,
        lost,
        doubled,
        viewers: options.viewers,
        viewer_reconnects,
        final_tally: books.recorded,
        seconds_close_to_final,
        unsettled,
    };
    std::fs::write(options.out.join("report.json"), serde_json::to_vec_pretty(&report)?)
        .context("writing report.json")?;
    drop(stores);
    drop(scratch);
    Ok(report)
}

/// The settings every `tally` process of the run needs: HAProxy for
/// Postgres, the NATS list, Sentinel for Redis.
fn stack_env(stores: &Stores, haproxy: &Haproxy) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("TALLY_DATABASE__URL", haproxy.database_url()),
        ("TALLY_NATS__URL", stores.nats.urls()),
        ("TALLY_NATS__REPLICAS", "3".to_owned()),
        ("TALLY_REDIS__URL", stores.redis.url(0)),
    ];
    env.push(("TALLY_REDIS__SENTINEL__MASTER_NAME", sentinel::MASTER_NAME.to_owned()));
    env.push(("TALLY_REDIS__SENTINEL__URLS", stores.redis.sentinel_urls()));
    env
}

/// The harness's own Redis connection, through the Sentinels as Tally's.
async fn bench_redis(
    group: &RedisGroup,
    settings: &Settings,
) -> anyhow::Result<tally_platform::redis::Redis> {
    let mut redis = settings.redis.clone();
    // Its host is ignored: the Sentinels name the master.
    redis.url = Secret::new(group.url(0));
    let urls = group.sentinel_urls().split(',').map(|u| Secret::new(u.to_owned())).collect();
    let master_name = sentinel::MASTER_NAME.to_owned();
    redis.sentinel = Some(tally_platform::config::SentinelSettings { master_name, urls });
    tally_platform::redis::connect(&redis).await
}

/// Until HAProxy sends every new connection to the primary (its servers
/// start up before their first checks).
async fn wait_writable(haproxy: &Haproxy) -> anyhow::Result<()> {
    use sqlx::Connection;
    let url = haproxy.database_url().replace("/tally", "/postgres");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut in_a_row = 0;
    while in_a_row < 6 {
        anyhow::ensure!(Instant::now() < deadline, "HAProxy did not settle on the Postgres primary");
        let writable = match sqlx::PgConnection::connect(&url).await {
            Ok(mut conn) => {
                let standby: Option<bool> =
                    sqlx::query_scalar("SELECT pg_is_in_recovery()").fetch_one(&mut conn).await.ok();
                let _ = conn.close().await;
                standby == Some(false)
            }
            Err(_) => false,
        };
        in_a_row = if writable { in_a_row + 1 } else { 0 };
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

/// The run's scratch directory (stores' data, configuration and logs),
/// removed at the end, even on failure, once the logs and configuration
/// files are copied beside the report (`<out>/stores`).
struct Scratch {
    dir: PathBuf,
    keep: PathBuf,
}

impl Scratch {
    fn new(out: &std::path::Path) -> anyhow::Result<Scratch> {
        let dir =
            std::env::temp_dir().join(format!("tally-ha-{}-{}", std::process::id(), crate::infra::nonce()));
        std::fs::create_dir_all(&dir).context("creating the scratch directory")?;
        let keep = out.join("stores");
        let _ = std::fs::remove_dir_all(&keep);
        std::fs::create_dir_all(&keep).with_context(|| format!("creating {}", keep.display()))?;
        Ok(Scratch { dir, keep })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        keep_logs(&self.dir, &self.keep, 0);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn keep_logs(from: &std::path::Path, to: &std::path::Path, depth: usize) {
    let Ok(entries) = std::fs::read_dir(from) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        // Two levels (stores, then nodes' directories) hold every log.
        if path.is_dir() && depth < 2 && !name.ends_with("-store") {
            let _ = std::fs::create_dir_all(to.join(&name));
            keep_logs(&path, &to.join(&name), depth + 1);
        } else if name.ends_with(".log") || name.ends_with(".conf") || name.ends_with(".cfg") {
            let _ = std::fs::copy(&path, to.join(&name));
        }
    }
}
