//! The workers role: takes sealed ballots from JetStream, opens them, holds
//! them until a group of more than K can be committed (see `hold`), records
//! each group in one Postgres transaction, then writes the absolute tallies
//! to Redis, and only then acks. A crash anywhere in that sequence leads to
//! redelivery and the same end state.

pub mod close;
pub mod commit;
pub mod consume;
pub mod hold;
pub mod quarantine;
pub mod queue_stats;
pub mod reconcile;
pub mod record;
pub mod records;

use std::time::Duration;

use tally_platform::Deps;
use tokio_util::sync::CancellationToken;

/// The workers' counters, at zero before the first event.
fn register_metrics() {
    use tally_platform::telemetry::zero_counters;
    for name in [
        "tally_votes_recorded_total",
        "tally_votes_duplicates_skipped_total",
        "tally_worker_redeliveries_total",
        "tally_worker_sequences_reused_total",
        "tally_quarantined_ballots_total",
        "tally_reconcile_drift_total",
        "tally_records_built_total",
    ] {
        metrics::counter!(name).increment(0);
    }
    zero_counters(
        "tally_votes_rejected_total",
        "reason",
        &[
            "already_voted",
            "election_closed",
            "invalid_selection",
            "unknown_election",
            "not_registered",
            "unrecordable",
        ],
    );
    zero_counters("tally_worker_failures_total", "stage", &["postgres", "redis", "nats"]);
    metrics::gauge!("tally_reconcile_last_drift").set(0.0);
    metrics::gauge!("tally_ballots_held").set(0.0);
}

pub async fn run(deps: Deps, shutdown: CancellationToken) -> anyhow::Result<()> {
    register_metrics();
    // Records are signed by the workers: without a key and a public host
    // of its own, production refuses to start them.
    let signer = deps.settings.record.signer()?;
    deps.settings.record.origin_host()?;
    let reconciler = tokio::spawn(reconcile::periodically(
        deps.clone(),
        Duration::from_secs(deps.settings.workers.reconcile_interval_secs),
        shutdown.clone(),
    ));
    let stats = tokio::spawn(queue_stats::poll(deps.clone(), shutdown.clone()));
    let closer =
        tokio::spawn(close::periodically(deps.clone(), deps.settings.sealing.opener()?, shutdown.clone()));
    let publisher = tokio::spawn(records::periodically(deps.clone(), signer, shutdown.clone()));
    let consumed = consume::run(&deps, &shutdown).await;
    publisher.abort();
    reconciler.abort();
    stats.abort();
    closer.abort();
    consumed
}
