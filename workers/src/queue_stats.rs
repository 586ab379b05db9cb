//! The queue as the broker sees it, exported as gauges: how many ballots
//! wait, how many are delivered but unacked, how much the stream holds.

use std::time::Duration;

use tally_common::Deps;
use tokio_util::sync::CancellationToken;

const EVERY: Duration = Duration::from_secs(5);

pub async fn poll(deps: Deps, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(EVERY);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        if let Err(e) = sample(&deps).await {
            tracing::debug!(error = format!("{e:#}"), "queue statistics unavailable");
        }
    }
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
