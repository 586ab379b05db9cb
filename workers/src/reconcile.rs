//! Rewriting Redis tallies from Postgres, and measuring how far they had
//! drifted. Run by `tally reconcile` and periodically by workers.

use std::time::Duration;

use tally_common::Deps;
use tally_common::tally::{self, Totals};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub elections: usize,
    /// Sum over elections of |turnout difference| + Σ |runner difference|.
    pub drift: i64,
    pub repaired: usize,
}

pub async fn reconcile(deps: &Deps, election: Option<i64>) -> anyhow::Result<Report> {
    let heads: Vec<(i64, i64, i64)> = sqlx::query_as(
        "SELECT election_id, tally_version, turnout FROM elections
         WHERE $1::bigint IS NULL OR election_id = $1 ORDER BY election_id",
    )
    .bind(election)
    .fetch_all(&deps.db)
    .await?;
    let mut report = Report::default();
    for (election_id, version, turnout) in heads {
        let votes: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT citizen_id, total_votes FROM runners WHERE election_id = $1 ORDER BY citizen_id",
        )
        .bind(election_id)
        .fetch_all(&deps.db)
        .await?;
        let cached = tally::read(&deps.redis, &deps.keys, election_id).await?;
        report.elections += 1;
        if cached.version > version {
            // A worker committed and wrote Redis after we read Postgres.
            continue;
        }
        let drift = (cached.turnout - turnout).abs()
            + votes
                .iter()
                .map(|(runner, n)| (cached.votes.get(runner).copied().unwrap_or(0) - n).abs())
                .sum::<i64>();
        if drift == 0 && cached.version == version {
            continue;
        }
        report.drift += drift;
        let totals = Totals { election_id, version, turnout, votes, oldest_accepted_at: None };
        report.repaired += tally::apply(&deps.redis, &deps.keys, &[totals], &[], true).await?;
    }
    metrics::gauge!("tally_reconcile_drift").set(report.drift as f64);
    metrics::counter!("tally_reconcile_drift_total").increment(report.drift.max(0) as u64);
    if report.drift > 0 {
        tracing::warn!(
            drift = report.drift,
            repaired = report.repaired,
            "Redis tallies had drifted; rewritten from Postgres"
        );
    }
    Ok(report)
}

pub async fn periodically(deps: Deps, every: Duration, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(every);
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        if let Err(e) = reconcile(&deps, None).await {
            tracing::warn!(error = format!("{e:#}"), "reconcile pass failed");
        }
    }
}
