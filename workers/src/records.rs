//! Publishing election records: every few seconds, each worker builds the
//! record of any final election that lacks one (a cancelled or
//! uncontested election never gets one, so it is not even looked at). Finality is the workers'
//! own mark (`close`), so the role that sets it is the one that notices
//! it; the lock in `records::build_once` lets one worker sign.

use std::time::Duration;

use tally_domain::record::note::NoteSigner;
use tally_platform::Deps;
use tally_platform::records::{self, Built};
use tokio_util::sync::CancellationToken;

const EVERY: Duration = Duration::from_secs(2);

pub async fn periodically(deps: Deps, signer: NoteSigner, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        if let Err(e) = step(&deps, &signer).await {
            tracing::warn!(error = format!("{e:#}"), "cannot build election records this round");
        }
    }
}

/// One round over the final elections still to get a record.
pub async fn step(deps: &Deps, signer: &NoteSigner) -> anyhow::Result<()> {
    for election in records::unbuilt(&deps.db).await? {
        if records::build_once(deps, signer, election).await? == Built::Now {
            metrics::counter!("tally_records_built_total").increment(1);
            tracing::info!(election, "election record built and signed");
        }
    }
    Ok(())
}
