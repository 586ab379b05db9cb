//! `tally-bench overload`: the API offered about twice what it can take,
//! with the workers stopped for a while so the stream fills to its limit.
//! The API must keep answering quickly (202, or 503/429 with
//! `Retry-After`), its memory must stay bounded, the stream must not grow
//! past its limit, and every ballot that got 202 must still be recorded
//! (counted after the election is closed: workers hold its last K).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use tally_platform::Settings;
use tokio_util::sync::CancellationToken;

use super::books::{self, Accounting, Books};
use super::cpu::{Quota, pin};
use super::voters::{Pace, Voters, ballots};
use crate::cluster::Cluster;
use crate::infra::private_stack;
use crate::kit::close;
use crate::process::Tally;
use crate::provision::{FIRST_VOTER, provision};
use crate::rss_bytes;

pub struct Options {
    pub seconds: u64,
    /// The share of one core the system under test may use.
    pub system_cpu: f64,
    /// The run fails when the client offers less than this multiple of the
    /// measured capacity: it would not be an overload test.
    pub min_offer_ratio: f64,
    pub out: PathBuf,
}

#[derive(Serialize)]
pub struct Report {
    pub passed: bool,
    /// Ballots per second the API accepted in a closed-loop probe.
    pub capacity_per_sec: f64,
    pub offered_per_sec: f64,
    pub offered_ratio: f64,
    /// The CPU quota the system ran under, if this machine allowed one.
    pub system_cpu_share: Option<f64>,
    pub answered_p50_ms: Option<f64>,
    pub answered_p99_ms: Option<f64>,
    pub answered_max_ms: Option<f64>,
    pub refusals_without_retry_after: u64,
    pub api_rss_mib_before: f64,
    pub api_rss_mib_max: f64,
    pub stream_limit: i64,
    pub stream_max_seen: u64,
    pub votes: Accounting,
}

const PROBE: Duration = Duration::from_secs(3);
const PROBE_VOTERS: u64 = 30_000;
const IN_FLIGHT_LIMIT: usize = 256;
/// Generous: a bound, not a target. Growth without end would pass it.
const RSS_CEILING_MIB: f64 = 1024.0;

pub async fn run(settings: &Settings, tally: &Tally, options: Options) -> anyhow::Result<Report> {
    let (infra, settings, db) = private_stack(tally, settings).await?;
    let probe = provision(&settings, PROBE_VOTERS, FIRST_VOTER).await?;

    let mut stack = infra.settings();
    stack.extend([
        ("TALLY_HTTP__MAX_IN_FLIGHT", IN_FLIGHT_LIMIT.to_string()),
        ("TALLY_LOG__FILTER", "warn".to_owned()),
    ]);
    let mut cluster =
        Cluster::start(tally, &options.out.join("logs"), stack, &[("api", 1), ("workers", 1)]).await?;
    let (api, worker) = (cluster.with_role("api")[0], cluster.with_role("workers")[0]);
    let port = cluster.nodes[api].api;
    // The system under test (servers and Tally) gets part of one core and
    // this load generator the other, so that on a small machine the client
    // can offer far more than the system can take.
    let quota = Quota::new(options.system_cpu);
    let quota_share = quota.as_ref().map(|_| options.system_cpu);
    let confine = |pid: u32| {
        pin(pid, 0);
        if let Some(quota) = &quota {
            quota.add(pid);
        }
    };
    infra.pids().into_iter().chain(cluster.nodes.iter().filter_map(|n| n.pid())).for_each(confine);
    pin(std::process::id(), 1);

    // Closed loop: as many ballots as the API takes from 64 connections.
    let probing = Voters::start(
        vec![port],
        probe.election_id,
        ballots(&probe, FIRST_VOTER),
        Pace { rate: 1_000_000, in_flight: 64, attempts: 1 },
        cancel_after(PROBE),
    );
    let probed = probing.finish().await;
    let capacity = probed.iter().filter(|l| l.statuses == [202]).count() as f64 / PROBE.as_secs_f64();
    // The probe's election ends here, so that the ballots workers hold for
    // it are flushed instead of staying in the stream through the run.
    let redis = tally_platform::redis::connect(&settings.redis).await?;
    let keys = tally_platform::redis::Keys::new(&settings.redis.key_prefix);
    close(&db, &redis, &keys, probe.election_id).await?;

    let offered = (2.0 * capacity).max(100.0) as u32;
    let first = FIRST_VOTER + PROBE_VOTERS as i64;
    let voters = provision(&settings, offered as u64 * options.seconds, first).await?;
    // The API loads elections at start; this one is new.
    cluster.restart(api).await?;
    cluster.nodes[api].pid().into_iter().for_each(confine);
    let js =
        tally_platform::nats::jetstream(tally_platform::nats::connect(&settings.nats).await?, &settings.nats);
    let mut limited = settings.nats.clone();
    // About one second of what the API takes: full soon after the workers stop.
    limited.max_messages = (capacity as i64).max(500);
    tally_platform::streams::provision(&js, &limited).await?;

    let api_pid = cluster.nodes[api].pid().unwrap_or(0);
    let rss_before = rss_bytes(api_pid).unwrap_or(0);
    let stop = cancel_after(Duration::from_secs(options.seconds));
    let pace = Pace { rate: offered, in_flight: 4096, attempts: 1 };
    let voting = Voters::start(vec![port], voters.election_id, ballots(&voters, first), pace, stop.clone());
    let answers = voting.answers.clone();

    // Workers stop a third of the way in, until the stream has refused
    // publishes for a while, then catch up.
    let started = Instant::now();
    let (mut rss_max, mut stream_max, mut full_since, mut paused) = (rss_before, 0u64, None, false);
    while !stop.is_cancelled() {
        tokio::time::sleep(Duration::from_millis(200)).await;
        rss_max = rss_max.max(rss_bytes(api_pid).unwrap_or(0));
        let messages = js.get_stream(&limited.stream).await?.info().await?.state.messages;
        stream_max = stream_max.max(messages);
        if !paused && full_since.is_none() && started.elapsed().as_secs() * 3 >= options.seconds {
            cluster.pause(worker, true)?;
            paused = true;
        }
        if paused && messages as i64 >= limited.max_messages && full_since.is_none() {
            full_since = Some(Instant::now());
        }
        if paused && full_since.is_some_and(|t| t.elapsed() > Duration::from_secs(2)) {
            cluster.pause(worker, false)?;
            paused = false;
        }
    }
    if paused {
        cluster.pause(worker, false)?;
    }
    let offered_per_sec =
        voting.logs.iter().filter(|l| l.lock().is_ok_and(|l| !l.statuses.is_empty())).count() as f64
            / started.elapsed().as_secs_f64();
    let logs = voting.finish().await;
    let offered_ratio = offered_per_sec / capacity.max(1.0);

    // Every ballot counts once the election is closed and the held ones flushed.
    close(&db, &redis, &keys, voters.election_id).await?;
    let books =
        Books::settle(&db, &redis, &keys, voters.election_id, &logs, Vec::new, Duration::from_secs(120))
            .await?;
    let mut votes = books::account(&books, &logs, &voters.tokens, port, voters.election_id).await?;
    books::note_quarantine(&mut votes, &settings.nats).await?;
    let refusals_without_retry_after = answers.without_retry_after.load(std::sync::atomic::Ordering::Relaxed);
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let mut problems = Vec::new();
    if refusals_without_retry_after > 0 {
        problems.push(format!("{refusals_without_retry_after} refusals without Retry-After"));
    }
    if votes.statuses.contains_key(&0) {
        problems.push("some requests got no answer (timed out or dropped)".to_owned());
    }
    if full_since.is_none() {
        problems.push("the stream never reached its limit; offer more load".to_owned());
    }
    if stream_max as i64 > limited.max_messages {
        problems.push(format!("the stream grew to {stream_max}, past its limit"));
    }
    if offered_ratio < options.min_offer_ratio {
        problems.push(format!(
            "the client offered only {offered_ratio:.2}× the capacity (at least {} wanted); \
             give the system less CPU (--system-cpu) or run the client on another machine",
            options.min_offer_ratio
        ));
    }
    if mib(rss_max) > RSS_CEILING_MIB {
        problems.push(format!("the API grew to {:.0} MiB", mib(rss_max)));
    }
    votes.violations.extend(problems);
    cluster.stop().await;
    // The stores first, so the CPU group is empty when it is removed.
    drop(infra);
    drop(quota);
    Ok(Report {
        passed: votes.violations.is_empty(),
        capacity_per_sec: capacity,
        offered_per_sec,
        offered_ratio,
        system_cpu_share: quota_share,
        answered_p50_ms: answers.latency.quantile_ms(0.5),
        answered_p99_ms: answers.latency.quantile_ms(0.99),
        answered_max_ms: answers.latency.quantile_ms(1.0),
        refusals_without_retry_after,
        api_rss_mib_before: mib(rss_before),
        api_rss_mib_max: mib(rss_max),
        stream_limit: limited.max_messages,
        stream_max_seen: stream_max,
        votes,
    })
}

fn cancel_after(after: Duration) -> CancellationToken {
    let token = CancellationToken::new();
    let fire = token.clone();
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        fire.cancel();
    });
    token
}
