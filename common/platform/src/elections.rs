//! Elections and their runners in Postgres: created here, and read into
//! the domain types every role shares.

use std::collections::BTreeMap;

use anyhow::Context;
use sqlx::{Acquire, PgConnection, PgPool, Postgres, Transaction};
use time::OffsetDateTime;

use tally_domain::election::{Election, Restriction, Runner, contested};
use tally_domain::lifecycle::Schedule;
use tally_domain::visibility::Visibility;

/// An election as an administrator, the demo seed or a test sets it up.
#[derive(Clone, Debug)]
pub struct NewElection {
    pub name: String,
    pub start_at: OffsetDateTime,
    pub end_at: OffsetDateTime,
    pub restriction: Restriction,
    pub min_age: i16,
    pub visibility: Visibility,
    /// `None`: the schema's default.
    pub anonymity_set: Option<i32>,
    pub runners: Vec<NewRunner>,
}

#[derive(Clone, Debug)]
pub struct NewRunner {
    pub citizen_id: i64,
    pub post: String,
}

/// Inserts the election and its runners, all or none, and returns its id.
/// Given a transaction, it joins it (a savepoint); given a pool, it takes
/// a connection of its own.
pub async fn create<'c>(db: impl Acquire<'c, Database = Postgres>, new: &NewElection) -> anyhow::Result<i64> {
    let mut tx = db.begin().await.context("connecting to Postgres")?;
    // DEFAULT cannot be a bound value: without a set, the column is left out.
    let statement = match new.anonymity_set {
        Some(_) => {
            "INSERT INTO elections (name, start_at, end_at, vote_restriction, min_age, results_visibility, anonymity_set)
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING election_id"
        }
        None => {
            "INSERT INTO elections (name, start_at, end_at, vote_restriction, min_age, results_visibility)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING election_id"
        }
    };
    let mut insert = sqlx::query_scalar(statement)
        .bind(&new.name)
        .bind(new.start_at)
        .bind(new.end_at)
        .bind(new.restriction.to_string())
        .bind(new.min_age)
        .bind(new.visibility.as_str());
    if let Some(set) = new.anonymity_set {
        insert = insert.bind(set);
    }
    let id: i64 = insert.fetch_one(&mut *tx).await.context("creating an election")?;
    for runner in &new.runners {
        add_runner(&mut tx, id, runner)
            .await
            .with_context(|| format!("adding runner {} to election {id}", runner.citizen_id))?;
    }
    tx.commit().await.context("committing the election")?;
    Ok(id)
}

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

/// Adds a runner to an election, inside the caller's transaction. The
/// schema refuses a second candidacy of one citizen (`runners_pkey`) and a
/// citizen missing from the registry (`runners_citizen_fkey`).
pub async fn add_runner(
    tx: &mut PgConnection,
    election_id: i64,
    runner: &NewRunner,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO runners (election_id, citizen_id, post) VALUES ($1, $2, $3)")
        .bind(election_id)
        .bind(runner.citizen_id)
        .bind(&runner.post)
        .execute(tx)
        .await?;
    Ok(())
}
