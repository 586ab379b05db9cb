//! End to end: N ballots through a running stack (all roles in a child
//! process) from M concurrent connections, the clock stopped when the
//! Redis tally shows all of them. Workers hold the last K ballots of an
//! open election, so once every ballot has its answer the election is
//! closed, and the clock stops at the tally that the close flush
//! publishes. Then the same machine and schema with the naive design: one
//! synchronous Postgres transaction per vote.
//!
//! With `viewers`, that many WebSocket viewers watch the election on the
//! stack's broadcaster from before the first ballot, and the report adds
//! when the tally counting each ballot reached them.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Serialize;
use tally_platform::Settings;
use tally_platform::tallies::TallyEvent;
use uuid::Uuid;

use crate::ballot_client::BallotClient;
use crate::kit::{cancel, close};
use crate::live::{self, Audience, Watch};
use crate::process::Tally;
use crate::provision::{RUNNERS, next_voter_id, open_election, provision};
use crate::{Latencies, free_port, serve_ready};

pub struct Options {
    pub voters: u64,
    pub connections: usize,
    /// Ballots per second to offer; as fast as accepted when absent.
    pub rate: Option<u32>,
    /// Ballots for the naive comparison (0 to skip it).
    pub naive_votes: u64,
    /// WebSocket viewers of the election (0: none).
    pub viewers: usize,
}

#[derive(Serialize, Default)]
pub struct Report {
    pub ballots: u64,
    pub connections: usize,
    pub offered_rate: Option<u32>,
    /// The election's K: tallies move in steps of more than K ballots.
    pub anonymity_set: i32,
    pub accepted: u64,
    pub refused: u64,
    /// From the first ballot to the tally that counts every accepted one,
    /// the close and its flush included.
    pub seconds_to_tally: f64,
    pub votes_per_sec: f64,
    /// Ballots the tally did not count yet when the last answer came and
    /// the election was closed: those the workers held (K to 2K once they
    /// have caught up) and any still on their way to a worker.
    pub uncounted_at_close: i64,
    /// From the close to the tally that counts every accepted ballot.
    pub close_to_tally_ms: f64,
    pub api_p50_ms: Option<f64>,
    pub api_p99_ms: Option<f64>,
    pub api_p999_ms: Option<f64>,
    pub visible_p50_ms: Option<f64>,
    pub visible_p99_ms: Option<f64>,
    /// Only with viewers, so a run without them reports as it always did.
    #[serde(flatten)]
    pub viewers: Option<ViewerReport>,
    pub naive_votes_per_sec: Option<f64>,
    pub pipeline_over_naive: Option<f64>,
}

/// Accept-to-viewer: from the k-th 202 until a viewer first receives a
/// frame whose turnout counts k ballots, over every viewer and ballot. Like
/// accept-to-visible it includes the workers' hold of K ballots, and also
/// the broadcaster's cap on frames per viewer per second.
#[derive(Serialize)]
pub struct ViewerReport {
    pub viewers: usize,
    /// Viewers that did not connect, or whose connection ended early;
    /// the quantiles are over the others.
    pub viewers_dropped: u64,
    pub viewer_p50_ms: Option<f64>,
    pub viewer_p99_ms: Option<f64>,
}

pub async fn run(settings: &Settings, tally: &Tally, options: Options) -> anyhow::Result<Report> {
    // The stack it starts only looks the streams up, as `make up` would
    // have left them.
    tally.migrate(&[]).await?;
    let db = tally_platform::postgres::pool(&settings.database)?;
    let first = next_voter_id(&db).await?;
    let provisioned = provision(settings, options.voters, first).await?;
    let election = provisioned.election_id;

    let (api, live_port, admin) = (free_port()?, free_port()?, free_port()?);
    let mut settings_for_stack = vec![
        ("TALLY_HTTP__API_ADDR", format!("127.0.0.1:{api}")),
        ("TALLY_HTTP__BROADCASTER_ADDR", format!("127.0.0.1:{live_port}")),
    ];
    if options.viewers > 0 {
        // They all come from this one address.
        settings_for_stack
            .push(("TALLY_BROADCASTER__MAX_VIEWERS_PER_IP", (options.viewers + 100).to_string()));
    }
    let _stack = serve_ready(tally, "api,workers,broadcaster", admin, &settings_for_stack).await?;

    // Attached before the tally subscription below, whose wait for the
    // next event would otherwise include the connecting.
    let reached: Vec<Arc<AtomicI64>> = (0..options.viewers).map(|_| Arc::default()).collect();
    let mut audience = (options.viewers > 0).then(|| {
        let watches = reached.iter().map(|r| Turnouts { reached: r.clone(), steps: Vec::new() });
        Audience::start(&live::url(live_port, election), watches)
    });
    if let Some(audience) = &audience {
        audience.wait_connected(Duration::from_secs(120)).await;
    }

    // Every tally event: when, and how many ballots it counts.
    let master = tally_platform::redis::master(&settings.redis)?;
    let redis = tally_platform::redis::connect(&settings.redis).await?;
    let mut pubsub = master.client().await?.get_async_pubsub().await?;
    let keys = tally_platform::redis::Keys::new(&settings.redis.key_prefix);
    pubsub.subscribe(keys.tally_channel(election)).await?;
    // Every ballot counts until the senders are done; then every accepted one.
    let (target, mut wanted) = tokio::sync::watch::channel(provisioned.tokens.len() as i64);
    let events = tokio::spawn(async move {
        let mut seen: Vec<(Instant, i64)> = Vec::new();
        let mut messages = pubsub.on_message();
        loop {
            let counted = seen.iter().map(|(_, turnout)| *turnout).max().unwrap_or(0);
            if counted >= *wanted.borrow_and_update() {
                break;
            }
            let message = tokio::select! {
                changed = wanted.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    continue;
                }
                message = tokio::time::timeout(Duration::from_secs(30), messages.next()) => message,
            };
            let Ok(Some(message)) = message else { break };
            if let Ok(event) =
                serde_json::from_str::<TallyEvent>(&message.get_payload::<String>().unwrap_or_default())
            {
                seen.push((Instant::now(), event.turnout));
            }
        }
        seen
    });

    let api_addr: std::net::SocketAddr = ([127, 0, 0, 1], api).into();
    let tokens = Arc::new(provisioned.tokens);
    let next = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(Latencies::default());
    let started = Instant::now();
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..options.connections {
        let (tokens, next) = (tokens.clone(), next.clone());
        let (rate, latencies) = (options.rate, latencies.clone());
        senders.spawn(async move {
            let mut accepted_at = Vec::new();
            let mut refused = 0u64;
            let mut client: Option<BallotClient> = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(token) = tokens.get(i) else { break };
                if let Some(rate) = rate {
                    tokio::time::sleep_until(
                        (started + Duration::from_secs_f64(i as f64 / f64::from(rate))).into(),
                    )
                    .await;
                }
                let sent = Instant::now();
                let status = match &mut client {
                    Some(client) => client.cast(token, RUNNERS[i % 2]).await,
                    None => match BallotClient::connect(api_addr, election).await {
                        Ok(connected) => client.insert(connected).cast(token, RUNNERS[i % 2]).await,
                        Err(e) => Err(e),
                    },
                };
                let done = Instant::now();
                latencies.record(done - sent);
                match status {
                    Ok(status) if status == 202 => accepted_at.push(done),
                    Ok(_) => refused += 1,
                    Err(_) => {
                        // A broken connection is made again for the next ballot.
                        client = None;
                        refused += 1;
                    }
                }
            }
            (accepted_at, refused)
        });
    }
    let mut accepted_at = Vec::new();
    let mut refused = 0;
    while let Some(done) = senders.join_next().await {
        let (a, r) = done?;
        accepted_at.extend(a);
        refused += r;
    }
    // The last K or more ballots are held until the election ends.
    let _ = target.send(accepted_at.len() as i64);
    let closed_at = Instant::now();
    let counted_before_close = tally_platform::tallies::read(&redis, &keys, election).await?.turnout;
    close(&db, &redis, &keys, election).await?;
    let seen = events.await?;
    let watched = match &mut audience {
        Some(audience) => {
            // The final frame follows the final tally within the
            // broadcaster's gap between frames; waiting longer only costs
            // time, as a viewer's steps are timed as they arrive.
            let everyone = accepted_at.len() as i64;
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                let behind = reached.iter().filter(|r| r.load(Ordering::Relaxed) < everyone).count();
                if behind as u64 <= audience.dropped() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            audience.stop().await
        }
        None => Vec::new(),
    };
    let tallied_at = seen.iter().find(|(_, turnout)| *turnout >= accepted_at.len() as i64).map(|(at, _)| *at);
    let seconds = tallied_at.map_or(f64::NAN, |at| (at - started).as_secs_f64());
    let close_to_tally_ms =
        tallied_at.map_or(f64::NAN, |at| at.saturating_duration_since(closed_at).as_secs_f64() * 1000.0);

    // The k-th accepted ballot is visible once a tally counts k ballots.
    accepted_at.sort();
    let visible = Latencies::default();
    record_visible(&accepted_at, &seen, &visible);
    let on_viewers = Latencies::default();
    for watch in &watched {
        record_visible(&accepted_at, &watch.steps, &on_viewers);
    }

    let mut report = Report {
        ballots: options.voters,
        connections: options.connections,
        offered_rate: options.rate,
        anonymity_set: provisioned.anonymity_set,
        accepted: accepted_at.len() as u64,
        refused,
        seconds_to_tally: seconds,
        votes_per_sec: accepted_at.len() as f64 / seconds,
        uncounted_at_close: accepted_at.len() as i64 - counted_before_close,
        close_to_tally_ms,
        api_p50_ms: latencies.quantile_ms(0.5),
        api_p99_ms: latencies.quantile_ms(0.99),
        api_p999_ms: latencies.quantile_ms(0.999),
        visible_p50_ms: visible.quantile_ms(0.5),
        visible_p99_ms: visible.quantile_ms(0.99),
        viewers: audience.map(|audience| ViewerReport {
            viewers: options.viewers,
            viewers_dropped: audience.dropped(),
            viewer_p50_ms: on_viewers.quantile_ms(0.5),
            viewer_p99_ms: on_viewers.quantile_ms(0.99),
        }),
        ..Report::default()
    };
    if options.naive_votes > 0 {
        let naive = naive(&db, options.naive_votes, options.connections, first).await?;
        report.naive_votes_per_sec = Some(naive);
        report.pipeline_over_naive = Some(report.votes_per_sec / naive);
    }
    Ok(report)
}

/// For the k-th of the sorted 202s, the time until the first of `steps`
/// (when, turnout), in the order they came, that counts k ballots.
fn record_visible(accepted_at: &[Instant], steps: &[(Instant, i64)], into: &Latencies) {
    let mut e = 0;
    for (k, accepted) in accepted_at.iter().enumerate() {
        while e < steps.len() && steps[e].1 < (k + 1) as i64 {
            e += 1;
        }
        if let Some((at, _)) = steps.get(e) {
            into.record(at.saturating_duration_since(*accepted));
        }
    }
}

/// One viewer's frames, kept only when the turnout rose, and the highest
/// turnout so far for the wait for the final frame.
struct Turnouts {
    reached: Arc<AtomicI64>,
    steps: Vec<(Instant, i64)>,
}

impl Watch for Turnouts {
    fn frame(&mut self, text: &str, arrived: Instant) {
        let Some(turnout) = live::number(text, "turnout") else { return };
        if turnout > self.steps.last().map_or(0, |(_, t)| *t) {
            self.steps.push((arrived, turnout));
            self.reached.store(turnout, Ordering::Relaxed);
        }
    }
}

/// One transaction per vote, as a design without the queue would do it:
/// voter roll, ballot box (its own random id), the recorded receipt and
/// the runner's total, committed each time. (It hides nobody: a
/// transaction id pairs each voter with their ballot.)
async fn naive(db: &sqlx::PgPool, votes: u64, connections: usize, first: i64) -> anyhow::Result<f64> {
    let election = open_election(db, "Benchmark election (one transaction per vote)", 2).await?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(connections.min(64) as u32)
        .connect_with(db.connect_options().as_ref().clone())
        .await?;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections.min(64) {
        let (pool, next) = (pool.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i as u64 >= votes {
                    return Ok::<_, sqlx::Error>(());
                }
                let runner = RUNNERS[i % 2];
                let mut tx = pool.begin().await?;
                sqlx::query("INSERT INTO voter_roll (election_id, citizen_id) VALUES ($1, $2)")
                    .bind(election)
                    .bind(first + i as i64)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("INSERT INTO ballot_box (ballot_id, election_id, selections) VALUES ($1, $2, $3)")
                    .bind(Uuid::new_v4())
                    .bind(election)
                    .bind(vec![runner])
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("INSERT INTO recorded_receipts (receipt, election_id) VALUES ($1, $2)")
                    .bind(Uuid::new_v4())
                    .bind(election)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("UPDATE runners SET total_votes = total_votes + 1 WHERE election_id = $1 AND citizen_id = $2")
                    .bind(election)
                    .bind(runner)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let rate = votes as f64 / started.elapsed().as_secs_f64();
    cancel(db, election).await?;
    Ok(rate)
}
