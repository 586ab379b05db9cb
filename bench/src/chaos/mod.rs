//! `tally-bench chaos`: the whole system as separate processes on a private
//! Postgres, Redis and NATS, under a steady vote load with live viewers,
//! while processes are killed and paused and the stores crash. When the
//! system is quiet again the live tallies must agree everywhere (with at
//! most 2K ballots still held by the workers); then the election is
//! closed, the held ballots are flushed, and every voter's answers are
//! checked against the books; any violation fails the run.

pub(crate) mod audience;
pub(crate) mod books;
mod cpu;
mod direct;
pub mod faults;
pub mod overload;
pub mod proxy;
mod schedule;
pub(crate) mod voters;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tally_platform::Settings;
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::infra::private_stack;
use crate::kit::close;
use crate::process::Tally;
use crate::provision::{FIRST_VOTER, provision};
use audience::Audience;
use books::{Accounting, Books};
use direct::Direct;
use faults::{Fault, Injected, ROUND, SPARE_PER_ROUND};
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
    /// The election's K: small, so that live tallies move during the run.
    pub anonymity_set: i32,
    /// From the last fault's recovery until stores and viewers agree on
    /// the live tally, with at most 2K accepted ballots still held.
    pub seconds_to_converge: f64,
    /// Accepted ballots (202) still unrecorded when the election was closed.
    pub held_at_close: usize,
    /// `tally_ballots_held` of each worker process just before the close
    /// (`null`: it did not answer). One worker owns an election's held
    /// ballots at a time, so at most one may hold any.
    pub held_per_worker: Vec<Option<f64>>,
    /// From the close until every accepted ballot is recorded and every
    /// viewer shows the final tally.
    pub seconds_close_to_final: f64,
    /// Voter-roll rows per commit (transaction id): how many commits, the
    /// fewest rows in one, and how many commits recorded K voters or fewer
    /// (the close flush may; others should not). Reported, not judged:
    /// `commit_groups.txt` beside the log has every commit's size in order.
    pub commit_groups: usize,
    pub smallest_commit_group: Option<i64>,
    pub commit_groups_of_k_or_fewer: usize,
    /// Only when the run did not reach its final state: where the
    /// unrecorded ballots wait, read at the deadline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unsettled: Option<Unsettled>,
}

#[derive(Serialize)]
pub struct Unsettled {
    pub unrecorded_accepted: usize,
    pub held_per_worker: Vec<Option<f64>>,
    pub queue: Option<books::Queue>,
}

/// Short enough that a paused worker's batch, or the ballots a killed
/// worker held, are redelivered within the run; the least workers accept,
/// since they keep what they hold alive (once a second, at a third of it).
const ACK_WAIT: Duration = Duration::from_secs(3);
const CONVERGE_WITHIN: Duration = Duration::from_secs(120);
/// K for the run's election: small enough that groups (more than K) are
/// committed all through the run, so live tallies keep moving and their
/// convergence under faults is checked, not only the close flush.
const ANONYMITY_SET: i32 = 5;

pub async fn run(settings: &Settings, tally: &Tally, options: Options) -> anyhow::Result<Report> {
    let started = Instant::now();
    let (mut infra, mut settings, db) = private_stack(tally, settings).await?;
    settings.workers.anonymity_set = ANONYMITY_SET;

    let schedule: Vec<Fault> = ROUND.iter().copied().cycle().take(ROUND.len() * options.rounds).collect();
    // Enough voters to keep ballots flowing through every fault.
    let per_fault = options.gap + Duration::from_secs(4);
    let spare = SPARE_PER_ROUND * options.rounds;
    let voters = (options.rate as u64 * per_fault.as_secs() * schedule.len() as u64).max(100) + spare as u64;
    let provisioned = provision(&settings, voters, FIRST_VOTER).await?;
    let election = provisioned.election_id;

    let mut stack_settings = infra.settings();
    stack_settings.extend([
        ("TALLY_NATS__ACK_WAIT_SECS", ACK_WAIT.as_secs().to_string()),
        ("TALLY_WORKERS__ANONYMITY_SET", ANONYMITY_SET.to_string()),
        ("TALLY_WORKERS__RECONCILE_INTERVAL_SECS", "2".to_owned()),
        ("TALLY_BROADCASTER__MAX_VIEWERS_PER_IP", "100000".to_owned()),
        ("TALLY_LOG__FILTER", "warn".to_owned()),
    ]);
    let layout = [("api", 2), ("workers", 2), ("broadcaster", 2)];
    let mut cluster = Cluster::start(tally, &options.out.join("logs"), stack_settings, &layout).await?;
    let port_of = |cluster: &Cluster, role: &str, pick: fn(&crate::cluster::Node) -> u16| {
        cluster.with_role(role).into_iter().map(|i| pick(&cluster.nodes[i])).collect::<Vec<u16>>()
    };
    let apis = port_of(&cluster, "api", |n| n.api);
    let lives = port_of(&cluster, "broadcaster", |n| n.live);

    let stop_voting = CancellationToken::new();
    let stop_watching = CancellationToken::new();
    let audience = Audience::start(lives, election, options.viewers, stop_watching.clone());
    let pace = Pace { rate: options.rate, in_flight: 128, attempts: 8 };
    let mut cast = ballots(&provisioned, FIRST_VOTER);
    // The last voters are the run's own: it publishes their ballots itself.
    let spare_voters = cast.split_off(cast.len() - spare);
    let mut direct = Direct::new(&settings, db.clone(), election, spare_voters).await?;
    let voting = Voters::start(apis.clone(), election, cast, pace, stop_voting.clone());

    let mut injected = Vec::new();
    for fault in schedule {
        tokio::time::sleep(options.gap).await;
        injected.push(faults::inject(fault, &mut cluster, &mut infra, &mut direct, ACK_WAIT, started).await?);
        eprintln!("chaos: {fault:?} done at {:.1}s", started.elapsed().as_secs_f64());
    }
    let last_fault = Instant::now();
    stop_voting.cancel();
    // In provisioned order, the run's own voters last, as `account` reads
    // them beside the tokens.
    let mut logs = voting.finish().await;
    logs.extend(direct.logs.iter().cloned());

    let redis = tally_platform::redis::connect(&settings.redis).await?;
    let keys = tally_platform::redis::Keys::new(&settings.redis.key_prefix);
    let k = ANONYMITY_SET as usize;
    let mut violations = Vec::new();

    // Live: the election is still open, so up to 2K ballots stay held.
    let live = Books::settle_until(&db, &redis, &keys, election, CONVERGE_WITHIN, |books| {
        books.settled_live(&logs, &audience.snapshot(), k)
    })
    .await?;
    let seconds_to_converge = last_fault.elapsed().as_secs_f64();
    if !live.settled_live(&logs, &audience.snapshot(), k) {
        violations.push(format!(
            "live tallies did not converge within {}s of the last fault: Redis {:?}, Postgres {:?}, \
             {} accepted ballots unrecorded (at most {} may be held)",
            CONVERGE_WITHIN.as_secs(),
            live.redis,
            live.recorded,
            live.unresolved(&logs),
            2 * k
        ));
    }

    let mut held_per_worker = Vec::new();
    for i in cluster.with_role("workers") {
        held_per_worker.push(crate::metric(cluster.nodes[i].admin, "tally_ballots_held").await);
    }
    let holders = held_per_worker.iter().filter(|held| held.is_some_and(|n| n > 0.0)).count();
    if holders > 1 {
        violations.push(format!(
            "{holders} workers hold ballots of the one election at once ({held_per_worker:?}); one owner expected"
        ));
    }

    // Final: the close makes the workers flush what they hold.
    let held_at_close = live.unresolved(&logs);
    let closed = Instant::now();
    close(&db, &redis, &keys, election).await?;
    let books =
        Books::settle(&db, &redis, &keys, election, &logs, || audience.snapshot(), CONVERGE_WITHIN).await?;
    let seconds_close_to_final = closed.elapsed().as_secs_f64();
    let viewers_seen = audience.snapshot();
    let mut votes = books::account(&books, &logs, &provisioned.tokens, apis[0], election).await?;
    votes.violations.append(&mut violations);
    books::note_quarantine(&mut votes, &settings.nats).await?;
    votes.violations.extend(direct.check_poison().await?);
    votes.direct_ballots = direct.logs.iter().filter(|l| !l.statuses.is_empty()).count();
    votes.poison_ballots = direct.poison.len();
    let mut unsettled = None;
    if !books.check_final(&logs, &viewers_seen, CONVERGE_WITHIN, &mut votes.violations) {
        let mut held_per_worker = Vec::new();
        for i in cluster.with_role("workers") {
            held_per_worker.push(crate::metric(cluster.nodes[i].admin, "tally_ballots_held").await);
        }
        unsettled = Some(Unsettled {
            unrecorded_accepted: books.unresolved(&logs),
            held_per_worker,
            queue: books::queue(&settings.nats).await.ok(),
        });
    }
    let groups = books::commit_groups(&db, election).await?;
    write_log(&options.out, &logs)?;
    let sizes: String = groups.iter().map(|n| format!("{n}\n")).collect();
    std::fs::write(options.out.join("commit_groups.txt"), sizes).context("writing commit_groups.txt")?;

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
        anonymity_set: ANONYMITY_SET,
        seconds_to_converge,
        held_at_close,
        held_per_worker,
        seconds_close_to_final,
        commit_groups: groups.len(),
        smallest_commit_group: groups.iter().min().copied(),
        commit_groups_of_k_or_fewer: groups.iter().filter(|n| **n <= i64::from(ANONYMITY_SET)).count(),
        unsettled,
    })
}

/// One JSON line per voter: every status it was answered and its receipt.
pub(crate) fn write_log(out: &Path, logs: &[voters::VoterLog]) -> anyhow::Result<()> {
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
