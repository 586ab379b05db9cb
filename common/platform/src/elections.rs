//! Reading elections and their runners from Postgres into the domain
//! types every role shares.

use anyhow::Context;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use time::OffsetDateTime;

use std::collections::BTreeMap;

use tally_domain::election::{Election, Runner, Schedule, contested};

type ElectionRow = (
    i64,
    String,
    OffsetDateTime,
    OffsetDateTime,
    String,
    i16,
    String,
    Option<OffsetDateTime>,
    Option<OffsetDateTime>,
    i64,
    i64,
    i32,
    Option<OffsetDateTime>,
);

/// The election columns, with a literal tail: SQL fixed at compile time.
macro_rules! select_elections {
    ($tail:literal) => {
        concat!(
            "SELECT election_id, name, start_at, end_at, vote_restriction, min_age,
             results_visibility, closed_at, cancelled_at, tally_version, turnout, anonymity_set, final_at
             FROM elections ",
            $tail
        )
    };
}

pub async fn load(db: &PgPool, election_id: i64) -> anyhow::Result<Option<Election>> {
    let mut conn = db.acquire().await.context("connecting to Postgres")?;
    load_with(&mut conn, election_id).await
}

/// As the transaction sees it, its own uncommitted changes included.
pub async fn load_tx(
    tx: &mut Transaction<'_, Postgres>,
    election_id: i64,
) -> anyhow::Result<Option<Election>> {
    load_with(tx, election_id).await
}

async fn load_with(conn: &mut PgConnection, election_id: i64) -> anyhow::Result<Option<Election>> {
    let row: Option<ElectionRow> = sqlx::query_as(select_elections!("WHERE election_id = $1"))
        .bind(election_id)
        .fetch_optional(&mut *conn)
        .await
        .context("loading an election")?;
    let Some(row) = row else { return Ok(None) };
    let runners = load_runners(&mut *conn, Some(election_id)).await?;
    Ok(Some(assemble(row, runners.into_iter().map(|(_, r)| r).collect())?))
}

pub async fn load_all(db: &PgPool) -> anyhow::Result<Vec<Election>> {
    let rows: Vec<ElectionRow> = sqlx::query_as(select_elections!("ORDER BY election_id"))
        .fetch_all(db)
        .await
        .context("loading elections")?;
    let mut by_election: BTreeMap<i64, Vec<Runner>> = BTreeMap::new();
    let mut conn = db.acquire().await.context("connecting to Postgres")?;
    for (election_id, runner) in load_runners(&mut conn, None).await? {
        by_election.entry(election_id).or_default().push(runner);
    }
    rows.into_iter()
        .map(|row| {
            let runners = by_election.remove(&row.0).unwrap_or_default();
            assemble(row, runners)
        })
        .collect()
}

async fn load_runners(
    conn: &mut PgConnection,
    election_id: Option<i64>,
) -> anyhow::Result<Vec<(i64, Runner)>> {
    let rows: Vec<(i64, i64, String, String, i64)> = sqlx::query_as(
        "SELECT r.election_id, r.citizen_id, c.full_name, r.post, r.total_votes
         FROM runners r JOIN citizens c USING (citizen_id)
         WHERE $1::bigint IS NULL OR r.election_id = $1
         ORDER BY r.election_id, r.post, r.citizen_id",
    )
    .bind(election_id)
    .fetch_all(conn)
    .await
    .context("loading runners")?;
    Ok(rows
        .into_iter()
        .map(|(e, citizen_id, full_name, post, total_votes)| {
            (e, Runner { citizen_id, full_name, post, total_votes })
        })
        .collect())
}

fn assemble(row: ElectionRow, runners: Vec<Runner>) -> anyhow::Result<Election> {
    let (
        id,
        name,
        start_at,
        end_at,
        restriction,
        min_age,
        visibility,
        closed_at,
        cancelled_at,
        tally_version,
        turnout,
        anonymity_set,
        final_at,
    ) = row;
    Ok(Election {
        id,
        name,
        schedule: Schedule { start_at, end_at, closed_at, cancelled_at, contested: contested(&runners) },
        restriction: restriction
            .parse()
            .map_err(|e| anyhow::anyhow!("election {id}: vote_restriction {e}"))?,
        min_age,
        visibility: visibility
            .parse()
            .map_err(|e| anyhow::anyhow!("election {id}: results_visibility {e}"))?,
        tally_version,
        turnout,
        anonymity_set,
        final_at,
        runners,
    })
}
