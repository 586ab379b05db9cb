//! Rewriting Redis tallies from Postgres, and measuring how far they had
//! drifted. Run by `tally reconcile` and periodically by workers.

use std::time::Duration;

use tally_platform::Deps;
use tally_platform::tallies::{self, Totals};
use tally_platform::voters;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub elections: usize,
    /// Sum over elections of |turnout difference| + Σ |runner difference|.
    pub drift: i64,
    pub repaired: usize,
    /// Voters put back into elections' Redis voter sets.
    pub voters_restored: u64,
}

/// Voter-roll rows copied to Redis per round trip when a voter set is rebuilt.
const VOTER_CHUNK: i64 = 10_000;

/// How long a Redis tally that is behind Postgres gets to catch up before
/// it counts as drift: a worker writes Redis just after it commits.
const CATCH_UP: Duration = Duration::from_millis(250);

pub async fn reconcile(deps: &Deps, election: Option<i64>) -> anyhow::Result<Report> {
    let elections: Vec<(i64, bool)> = sqlx::query_as(
        "SELECT election_id, final_at IS NOT NULL OR cancelled_at IS NOT NULL FROM elections
         WHERE $1::bigint IS NULL OR election_id = $1 ORDER BY election_id",
    )
    .bind(election)
    .fetch_all(&deps.db)
    .await?;
    let mut report = Report::default();
    for (election_id, settled) in elections {
        if settled {
            expire_settled(deps, election_id).await?;
            continue;
        }
        let Some(totals) = committed(deps, election_id).await? else { continue };
        report.elections += 1;
        report.voters_restored += restore_voters(deps, election_id, totals.turnout).await?;
        let mut cached = tallies::read(&deps.redis, &deps.keys, election_id).await?;
        if cached.version < totals.version {
            tokio::time::sleep(CATCH_UP).await;
            cached = tallies::read(&deps.redis, &deps.keys, election_id).await?;
        }
        if cached.version > totals.version {
            // A worker committed and wrote Redis after we read Postgres.
            continue;
        }
        let drift = (cached.turnout - totals.turnout).abs()
            + totals
                .votes
                .iter()
                .map(|(runner, n)| (cached.votes.get(runner).copied().unwrap_or(0) - n).abs())
                .sum::<i64>();
        if drift == 0 && cached.version == totals.version {
            continue;
        }
        report.drift += drift;
        report.repaired += tallies::apply(&deps.redis, &deps.keys, &[totals], &[], true).await?;
    }
    metrics::gauge!("tally_reconcile_last_drift").set(report.drift as f64);
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

/// An election that is final (or cancelled) needs nothing in Redis: its
/// results are read from Postgres, and no ballot can be cast in it. Its
/// keys are let go after `redis.settled_election_ttl_secs`, so Redis does
/// not grow with every election ever held. Only whole-election keys get a
/// time to live: one per citizen or receipt would date a ballot.
async fn expire_settled(deps: &Deps, election_id: i64) -> anyhow::Result<()> {
    let keys = &deps.keys;
    let ttl = deps.settings.redis.settled_election_ttl_secs;
    let mut pipe = redis::pipe();
    // NX: a countdown already running is not restarted by every pass.
    pipe.cmd("EXPIRE").arg(keys.tally(election_id)).arg(ttl).arg("NX").ignore();
    voters::queue_expiry(&mut pipe, keys, election_id, ttl);
    pipe.query_async::<()>(&mut deps.redis.clone()).await?;
    Ok(())
}

/// An election's version, turnout and runners' votes as of one commit:
/// read in one snapshot, or a commit landing between two reads would pair
/// one version's turnout with the next one's votes.
pub(crate) async fn committed(deps: &Deps, election_id: i64) -> anyhow::Result<Option<Totals>> {
    let mut tx = deps.db.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
    let head: Option<(i64, i64)> =
        sqlx::query_as("SELECT tally_version, turnout FROM elections WHERE election_id = $1")
            .bind(election_id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((version, turnout)) = head else { return Ok(None) };
    let votes: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT citizen_id, total_votes FROM runners WHERE election_id = $1 ORDER BY citizen_id",
    )
    .bind(election_id)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(Totals { election_id, version, turnout, votes, oldest_accepted_at: None }))
}

/// The voter set answers "already voted" on the API's fast path. If Redis
/// lost it (a restart without persistence), it is rebuilt from the voter
/// roll, so a second ballot is refused at once again rather than accepted
/// and then rejected by a worker.
async fn restore_voters(deps: &Deps, election_id: i64, turnout: i64) -> anyhow::Result<u64> {
    let cached = voters::count(&deps.redis, &deps.keys, election_id).await?;
    if cached >= turnout {
        return Ok(0);
    }
    let mut restored = 0;
    let mut after = 0_i64;
    loop {
        let citizens: Vec<i64> = sqlx::query_scalar(
            "SELECT citizen_id FROM voter_roll WHERE election_id = $1 AND citizen_id > $2
             ORDER BY citizen_id LIMIT $3",
        )
        .bind(election_id)
        .bind(after)
        .bind(VOTER_CHUNK)
        .fetch_all(&deps.db)
        .await?;
        let Some(last) = citizens.last().copied() else { break };
        let added = voters::restore(&deps.redis, &deps.keys, election_id, &citizens).await?;
        restored += added;
        after = last;
    }
    if restored > 0 {
        tracing::warn!(election_id, restored, "voter set rebuilt from the voter roll");
    }
    Ok(restored)
}
