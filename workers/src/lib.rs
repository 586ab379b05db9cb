//! The workers role: records ballots from JetStream.

use tally_common::Deps;
use tokio_util::sync::CancellationToken;

pub async fn run(_deps: Deps, shutdown: CancellationToken) -> anyhow::Result<()> {
    shutdown.cancelled().await;
    Ok(())
}
