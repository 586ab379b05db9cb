//! `tally bench chaos`: the whole system as separate processes on a private
//! Postgres, Redis and NATS, under a steady vote load with live viewers,
//! while processes are killed and paused and the stores crash. When the
//! system is quiet again every voter's answers are checked against the
//! books; any violation fails the run.

mod audience;
mod books;
mod cpu;
pub mod faults;
pub mod overload;
pub mod proxy;
mod schedule;
mod voters;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tally_common::Settings;
use tokio_util::sync::CancellationToken;

use super::cluster::Cluster;
use super::infra::private_stack;
use super::provision::{FIRST_VOTER, provision};
use audience::Audience;
use books::{Accounting, Books};
use faults::{Fault, Injected, ROUND};
use voters::{Pace, Voters, ballots};

pub struct Options {
    /// Ballots offered per second.
    pub rate: u32,
    /// Rounds of the fault schedule (each touches every component).
    pub rounds: usize,
    /// Seconds between one fault's recovery and the next fault.
    pub gap: Duration,
    pub viewers: usize,
    /// Where the per-voter log and the processes' logs go.
    pub out: PathBuf,
}

#[derive(Serialize)]
pub struct Report {
    pub passed: bool,
    pub seconds: f64,
    pub faults_injected: usize,
    pub faults: Vec<Injected>,
    pub votes: Accounting,
    pub viewers: usize,
    pub viewer_reconnects: u64,
    pub final_tally: audience::Seen,
    /// From the last fault's recovery until stores, stream and viewers agree.
    pub seconds_to_converge: f64,
}

/// Short enough that a paused worker's batch is redelivered within the run.
const ACK_WAIT: Duration = Duration::from_secs(2);
const CONVERGE_WITHIN: Duration = Duration::from_secs(120);

pub async fn run(settings: &Settings, config: Option<&Path>, options: Options) -> anyhow::Result<Report> {
    let started = Instant::now();
    let (mut infra, settings, db) = private_stack(settings).await?;

    let schedule: Vec<Fault> = ROUND.iter().copied().cycle().take(ROUND.len() * options.rounds).collect();
    // Enough voters to keep ballots flowing through every fault.
    let per_fault = options.gap + Duration::from_secs(4);
    let voters = (options.rate as u64 * per_fault.as_secs() * schedule.len() as u64).max(100);
    let provisioned = provision(&settings, voters, FIRST_VOTER).await?;
    let election = provisioned.election_id;

    let mut stack_settings = infra.settings();
    stack_settings.extend([
        ("TALLY_NATS__ACK_WAIT_SECS", ACK_WAIT.as_secs().to_string()),
        ("TALLY_WORKERS__RECONCILE_INTERVAL_SECS", "2".to_owned()),
        ("TALLY_BROADCASTER__MAX_VIEWERS_PER_IP", "100000".to_owned()),
        ("TALLY_LOG__FILTER", "warn".to_owned()),
    ]);
    let layout = [("api", 2), ("workers", 2), ("broadcaster", 2)];
    let mut cluster = Cluster::start(config, &options.out.join("logs"), stack_settings, &layout).await?;
    let port_of = |cluster: &Cluster, role: &str, pick: fn(&super::cluster::Node) -> u16| {
        cluster.with_role(role).into_iter().map(|i| pick(&cluster.nodes[i])).collect::<Vec<u16>>()
    };
    let apis = port_of(&cluster, "api", |n| n.api);
    let lives = port_of(&cluster, "broadcaster", |n| n.live);

    let stop_voting = CancellationToken::new();
    let stop_watching = CancellationToken::new();
    let audience = Audience::start(lives, election, options.viewers, stop_watching.clone());
    let pace = Pace { rate: options.rate, in_flight: 128, attempts: 8 };
    let voting =
        Voters::start(apis.clone(), election, ballots(&provisioned, FIRST_VOTER), pace, stop_voting.clone());

    let mut injected = Vec::new();
    for fault in schedule {
        tokio::time::sleep(options.gap).await;
        injected.push(faults::inject(fault, &mut cluster, &mut infra, ACK_WAIT, started).await?);
        eprintln!("chaos: {fault:?} done at {:.1}s", started.elapsed().as_secs_f64());
    }
    let last_fault = Instant::now();
    stop_voting.cancel();
    let logs = voting.finish().await;

    let redis = tally_common::store::connect(&settings.redis).await?;
    let keys = tally_common::store::Keys::new(&settings.redis.key_prefix);
    let books =
        Books::settle(&db, &redis, &keys, election, &logs, || audience.snapshot(), CONVERGE_WITHIN).await?;
    let seconds_to_converge = last_fault.elapsed().as_secs_f64();
    let viewers_seen = audience.snapshot();
    let mut votes = books::account(&books, &logs, &provisioned.tokens, apis[0], election).await?;
    let behind = viewers_seen.iter().filter(|seen| seen.as_ref() != Some(&books.recorded)).count();
    if behind > 0 {
        votes.violations.push(format!("{behind} viewers' last tally differs from the final tally"));
    }
    if books.redis != books.recorded {
        votes.violations.push(format!("Redis {:?} differs from Postgres {:?}", books.redis, books.recorded));
    }
    if !books.settled(&logs, &viewers_seen) {
        votes.violations.push(format!("not settled within {}s of the last fault", CONVERGE_WITHIN.as_secs()));
    }
    write_log(&options.out, &logs)?;

    stop_watching.cancel();
    let viewer_reconnects = audience.reconnects.load(std::sync::atomic::Ordering::Relaxed);
    audience.finish().await;
    cluster.stop().await;
    drop(infra);
    Ok(Report {
        passed: votes.violations.is_empty(),
        seconds: started.elapsed().as_secs_f64(),
        faults_injected: injected.len(),
        faults: injected,
        votes,
        viewers: options.viewers,
        viewer_reconnects,
        final_tally: books.recorded,
        seconds_to_converge,
    })
}

/// One JSON line per voter: every status it was answered and its receipt.
fn write_log(out: &Path, logs: &[voters::VoterLog]) -> anyhow::Result<()> {
    use std::io::Write;
    let path = out.join("responses.jsonl");
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(&path).with_context(|| format!("writing {}", path.display()))?,
    );
    for log in logs.iter().filter(|l| !l.statuses.is_empty()) {
        serde_json::to_writer(&mut file, log)?;
        file.write_all(b"\n")?;
    }
    Ok(file.flush()?)
}
