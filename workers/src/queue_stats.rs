//! The queue as the broker sees it, exported as gauges: how many ballots
//! wait, how many are delivered but unacked, how much the stream holds,
//! and how many of each election's ballots are in quarantine.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::TryStreamExt;

use tally_platform::Deps;
use tokio_util::sync::CancellationToken;

const EVERY: Duration = Duration::from_secs(5);

pub async fn poll(deps: Deps, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(EVERY);
    let mut quarantined = HashSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        if let Err(e) = sample(&deps).await {
            tracing::debug!(error = format!("{e:#}"), "queue statistics unavailable");
        }
        if let Err(e) = sample_quarantine(&deps, &mut quarantined).await {
            tracing::debug!(error = format!("{e:#}"), "quarantine statistics unavailable");
        }
    }
}

/// `tally_quarantine_waiting_ballots{election}`: what the quarantine holds now,
/// per election, so the alert can name the election that cannot be final.
/// An election seen before and now empty is set to zero, not dropped.
async fn sample_quarantine(deps: &Deps, seen: &mut HashSet<String>) -> anyhow::Result<()> {
    let settings = &deps.settings.nats;
    let stream = deps.jetstream.get_stream(tally_platform::nats::quarantine_stream(settings)).await?;
    let all = tally_platform::nats::quarantine_subject(settings, "*");
    let mut subjects = stream.info_with_subjects(&all).await?;
    let mut now = HashSet::new();
    while let Some((subject, count)) = subjects.try_next().await? {
        let election = subject.rsplit('.').next().unwrap_or_default().to_string();
        metrics::gauge!("tally_quarantine_waiting_ballots", "election" => election.clone()).set(count as f64);
        now.insert(election);
    }
    for gone in seen.difference(&now) {
        metrics::gauge!("tally_quarantine_waiting_ballots", "election" => gone.clone()).set(0.0);
    }
    seen.extend(now);
    Ok(())
}

async fn sample(deps: &Deps) -> anyhow::Result<()> {
    let settings = &deps.settings.nats;
    let mut stream = deps.jetstream.get_stream(&settings.stream).await?;
    let info = stream.info().await?;
    metrics::gauge!("tally_stream_messages").set(info.state.messages as f64);
    metrics::gauge!("tally_stream_bytes").set(info.state.bytes as f64);
    let mut consumer: async_nats::jetstream::consumer::PullConsumer =
        stream.get_consumer(&settings.consumer).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let info = consumer.info().await?;
    metrics::gauge!("tally_consumer_pending_messages").set(info.num_pending as f64);
    metrics::gauge!("tally_consumer_ack_pending_messages").set(info.num_ack_pending as f64);
    metrics::gauge!("tally_consumer_redelivered_messages").set(info.num_redelivered as f64);
    metrics::gauge!("tally_consumer_waiting_pulls").set(info.num_waiting as f64);
    Ok(())
}
