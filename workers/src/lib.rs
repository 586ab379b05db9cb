//! The workers role: takes ballots from JetStream in batches, records each
//! batch in one Postgres transaction, then writes the absolute tallies to
//! Redis, and only then acks. A crash anywhere in that sequence leads to
//! redelivery and the same end state.

pub mod consume;
pub mod reconcile;
pub mod record;

use std::time::Duration;

use tally_common::Deps;
use tokio_util::sync::CancellationToken;

pub async fn run(deps: Deps, shutdown: CancellationToken) -> anyhow::Result<()> {
    let reconciler = tokio::spawn(reconcile::periodically(
        deps.clone(),
        Duration::from_secs(deps.settings.workers.reconcile_interval_secs),
        shutdown.clone(),
    ));
    let consumed = consume::run(&deps, &shutdown).await;
    reconciler.abort();
    consumed
}
