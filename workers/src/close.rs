//! Ending elections: every worker, every second, raises the fence of each
//! election that is closed or past its end (see `tally_platform::fence`),
//! and marks an election final once none of its ballots is left to record
//! or in quarantine. Postgres's clock decides when; the stream's order
//! decides which ballots count.

use std::time::Duration;

use anyhow::Context;
use tally_domain::ballot::VoteCommand;
use tally_domain::seal::Opener;
use tally_platform::{Deps, fence, nats, tallies};
use tokio_util::sync::CancellationToken;

const EVERY: Duration = Duration::from_secs(1);

pub async fn periodically(deps: Deps, opener: Opener, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        if let Err(e) = step(&deps, &opener).await {
            tracing::warn!(error = format!("{e:#}"), "cannot end elections this round");
        }
    }
}

/// One round: fences, then leftovers swept, then final marks.
pub async fn step(deps: &Deps, opener: &Opener) -> anyhow::Result<()> {
    let settings = &deps.settings.nats;
    let votes = tally_platform::fence::votes_stream(&deps.jetstream, settings).await?;
    let ended: Vec<i64> = sqlx::query_scalar(
        "SELECT election_id FROM elections
         WHERE fence_seq IS NULL AND cancelled_at IS NULL AND (closed_at IS NOT NULL OR end_at <= now())",
    )
    .fetch_all(&deps.db)
    .await
    .context("finding ended elections")?;
    let timeout = Duration::from_millis(settings.publish_timeout_ms);
    for election in ended {
        let sequence = fence::raise(&deps.jetstream, &votes, settings, election, timeout).await?;
        sqlx::query(
            "UPDATE elections SET fence_seq = $2, fenced_at = now()
             WHERE election_id = $1 AND fence_seq IS NULL",
        )
        .bind(election)
        .bind(sequence as i64)
        .execute(&deps.db)
        .await
        .context("noting a fence")?;
        tracing::info!(election, sequence, "election fenced");
    }
    // The publish timeout after the fence: an API still waiting for an
    // ack it will turn into 409 or 202 has had its answer by then.
    let fenced: Vec<i64> = sqlx::query_scalar(
        "SELECT election_id FROM elections
         WHERE fence_seq IS NOT NULL AND final_at IS NULL
           AND fenced_at <= now() - make_interval(secs => $1::double precision)",
    )
    .bind(timeout.as_secs_f64())
    .fetch_all(&deps.db)
    .await
    .context("finding fenced elections")?;
    for election in fenced {
        sweep(deps, opener, &votes, election).await?;
        // The quarantine first: a replay stores its copy in VOTES before
        // it leaves the quarantine, so in this order no check misses it.
        if nats::quarantined(&deps.jetstream, settings, election).await? {
            continue;
        }
        // Waiting ballots, late ones too: a replayed ballot can be stored
        // after the fence and still be on time.
        if nats::holds_any(&votes, &nats::ballot_subject(settings, election)).await? {
            continue;
        }
        let marked =
            sqlx::query("UPDATE elections SET final_at = now() WHERE election_id = $1 AND final_at IS NULL")
                .bind(election)
                .execute(&deps.db)
                .await
                .context("marking an election final")?;
        if marked.rows_affected() == 1 {
            tracing::info!(election, "election final");
        }
    }
    Ok(())
}

/// Most messages of an ended election looked at in one round.
const SWEEP_AT_MOST: usize = 2_000;

/// Removes the election's messages whose fate is already settled
/// (recorded, rejected, or their citizen on the voter roll). A broker
/// crash can keep messages that were acked (NATS 2.9 loses the removal):
/// no worker is given them again, and left there they would keep the
/// election from being final, and the hold from knowing when it has
/// every straggler. One not settled is left alone: it is being held or
/// is yet to be delivered. One settled may still be owed its Redis write,
/// which the sweep then makes in its place.
async fn sweep(
    deps: &Deps,
    opener: &Opener,
    votes: &async_nats::jetstream::stream::Stream<()>,
    election: i64,
) -> anyhow::Result<()> {
    let subject = nats::ballot_subject(&deps.settings.nats, election);
    let mut found = Vec::new();
    let mut next = 1;
    while found.len() < SWEEP_AT_MOST {
        let message = match votes.get_first_raw_message_by_subject(&subject, next).await {
            Ok(message) => message,
            Err(e) if e.kind() == async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound => break,
            Err(e) => return Err(anyhow::anyhow!("reading waiting ballots: {e}")),
        };
        next = message.sequence + 1;
        // One that does not open is the consumer's to quarantine.
        if let Ok(command) = VoteCommand::open(opener, Some(&message.headers), &message.payload) {
            found.push((message.sequence, command));
        }
    }
    let commands: Vec<&VoteCommand> = found.iter().map(|(_, c)| c).collect();
    let settled = crate::consume::settled_receipts(deps, &commands).await?;
    let leftovers: Vec<u64> =
        found.iter().filter(|(_, c)| settled.contains(&c.receipt)).map(|(sequence, _)| *sequence).collect();
    if leftovers.is_empty() {
        return Ok(());
    }
    // Settled in Postgres is not yet in Redis: a leftover may be unacked
    // because its worker died between recording and writing Redis, and
    // only its redelivery would have rewritten the tally (see `commit`).
    // Removed, it is never redelivered, so Redis is rewritten here first,
    // from Postgres; the version guard leaves a newer tally alone.
    if let Some(totals) = crate::reconcile::committed(deps, election).await? {
        tallies::apply(&deps.redis, &deps.keys, &[totals], &[], false).await?;
    }
    for sequence in leftovers {
        votes.delete_message(sequence).await.map_err(|e| anyhow::anyhow!("removing a leftover: {e}"))?;
        tracing::info!(election, sequence, "a settled ballot left in the stream was removed");
    }
    Ok(())
}
