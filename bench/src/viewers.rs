//! Fan-out: N WebSocket viewers on one broadcaster process (started as a
//! child, so its memory is measured alone) while tallies change at a given
//! rate. Reports the broadcaster's RSS, messages per second and the delay
//! from a tally's publication in Redis to its arrival at a viewer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tally_platform::Settings;
use tally_platform::tallies::{self, Totals};
use time::OffsetDateTime;

use crate::kit::cancel;
use crate::live::{self, Audience, Watch};
use crate::process::{End, Tally, end};
use crate::provision::RUNNERS;
use crate::{Latencies, free_port, rss_bytes, serve_ready};

pub struct Options {
    pub viewers: usize,
    pub updates_per_sec: u32,
    pub duration: Duration,
}

#[derive(Serialize)]
pub struct Report {
    pub viewers_requested: usize,
    pub viewers_connected: u64,
    pub viewers_dropped: u64,
    pub seconds: f64,
    pub versions_published: i64,
    pub messages_received: u64,
    pub messages_per_sec: f64,
    pub delay_p50_ms: Option<f64>,
    pub delay_p99_ms: Option<f64>,
    pub delay_max_ms: Option<f64>,
    pub broadcaster_rss_mib: Option<f64>,
}

pub async fn run(settings: &Settings, tally: &Tally, options: Options) -> anyhow::Result<Report> {
    let db = tally_platform::postgres::pool(&settings.database)?;
    let redis = tally_platform::redis::connect(&settings.redis).await?;
    let keys = tally_platform::redis::Keys::new(&settings.redis.key_prefix);
    // Tallies are written to Redis directly here, as a worker's commits
    // would be; the election's K does not pace them.
    let election =
        crate::provision::open_election(&db, "Benchmark election (viewers)", settings.workers.anonymity_set)
            .await?;

    let (port, admin) = (free_port()?, free_port()?);
    let broadcaster_settings = [
        ("TALLY_HTTP__BROADCASTER_ADDR", format!("127.0.0.1:{port}")),
        ("TALLY_BROADCASTER__MAX_VIEWERS_PER_IP", (options.viewers + 100).to_string()),
    ];
    let child = serve_ready(tally, "broadcaster", admin, &broadcaster_settings).await?;
    let pid = child.id().context("broadcaster pid")?;

    // Version → when it was published, to measure each arrival against.
    let published: Arc<Mutex<HashMap<i64, Instant>>> = Arc::default();
    let latencies = Arc::new(Latencies::default());
    let watches =
        (0..options.viewers).map(|_| Delays { published: published.clone(), latencies: latencies.clone() });
    let mut audience = Audience::start(&live::url(port, election), watches);
    audience.wait_connected(Duration::from_secs(120)).await;

    let started = Instant::now();
    let mut version = current_version(&redis, &keys, election).await?;
    let first_version = version;
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / options.updates_per_sec.max(1));
    while started.elapsed() < options.duration {
        ticks.tick().await;
        version += 1;
        published.lock().unwrap_or_else(|e| e.into_inner()).insert(version, Instant::now());
        let totals = Totals {
            election_id: election,
            version,
            turnout: version,
            votes: vec![(RUNNERS[0], version), (RUNNERS[1], 0)],
            oldest_accepted_at: Some(OffsetDateTime::now_utc()),
        };
        tallies::apply(&redis, &keys, &[totals], &[], false).await?;
    }
    // Let the last versions arrive, then measure.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seconds = started.elapsed().as_secs_f64();
    let rss = rss_bytes(pid);
    audience.stop().await;
    end(&mut Some(child), End::Term(Duration::from_secs(10))).await;
    // The benchmark's election should not linger in the live lists.
    cancel(&db, election).await?;

    let messages = latencies.count();
    Ok(Report {
        viewers_requested: options.viewers,
        viewers_connected: audience.connected(),
        viewers_dropped: audience.dropped(),
        seconds,
        versions_published: version - first_version,
        messages_received: messages,
        messages_per_sec: messages as f64 / seconds,
        delay_p50_ms: latencies.quantile_ms(0.5),
        delay_p99_ms: latencies.quantile_ms(0.99),
        delay_max_ms: latencies.quantile_ms(1.0),
        broadcaster_rss_mib: rss.map(|b| b as f64 / (1024.0 * 1024.0)),
    })
}

/// A viewer's delays: each frame's arrival after its version's publication.
struct Delays {
    published: Arc<Mutex<HashMap<i64, Instant>>>,
    latencies: Arc<Latencies>,
}

impl Watch for Delays {
    fn frame(&mut self, text: &str, arrived: Instant) {
        if let Some(version) = live::number(text, "version")
            && let Some(at) = self.published.lock().unwrap_or_else(|e| e.into_inner()).get(&version)
        {
            self.latencies.record(arrived.saturating_duration_since(*at));
        }
    }
}

async fn current_version(
    redis: &tally_platform::redis::Redis,
    keys: &tally_platform::redis::Keys,
    election: i64,
) -> anyhow::Result<i64> {
    Ok(tallies::read(redis, keys, election).await?.version)
}
