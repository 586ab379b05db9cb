//! Election records in Postgres: built once per final election, by one
//! process, and stored immutably (`election_records`,
//! `election_record_files`). The formats are `tally_domain::record`'s.

use std::collections::BTreeMap;

use anyhow::Context;
use sqlx::{Connection, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

use tally_domain::lifecycle::Status;
use tally_domain::record::Files;
use tally_domain::record::build::{Recorded, build};
use tally_domain::record::note::NoteSigner;

use crate::{Deps, elections, nats};

/// Advisory-lock class of record builds (RFC 6962's number), beside the
/// election: the two-key form never meets the workers' one-key holds.
const BUILD_LOCK_CLASS: i32 = 6962;

/// Final elections that lack a record and will get one: not those
/// cancelled, and not those uncontested (no post with two runners), which
/// count as cancelled from their start (`lifecycle::Schedule`). Final
/// means started, and runners change only before the start, so an
/// uncontested final election stays so: asking about it again each round
/// would be work for nothing, for ever.
pub async fn unbuilt(db: &PgPool) -> anyhow::Result<Vec<i64>> {
    sqlx::query_scalar(
        "SELECT e.election_id FROM elections e
         WHERE e.final_at IS NOT NULL AND e.cancelled_at IS NULL
           AND EXISTS (SELECT 1 FROM runners r WHERE r.election_id = e.election_id
                       GROUP BY r.post HAVING count(*) >= 2)
           AND NOT EXISTS (SELECT 1 FROM election_records r WHERE r.election_id = e.election_id)
         ORDER BY e.election_id",
    )
    .fetch_all(db)
    .await
    .context("finding final elections without a record")
}

/// What became of one attempt to build a record.
#[derive(Debug, PartialEq, Eq)]
pub enum Built {
    Now,
    /// It exists already, or another process is building it.
    Elsewhere,
    /// Not final, or ballots still wait in quarantine.
    NotYet,
    /// Cancelled, or uncontested at its start: it never gets a record.
    Never,
}

/// Builds and stores the record of `election_id` if it is final and has
/// none. One transaction, under a transaction-level advisory lock that a
/// second builder does not wait for: only one process ever signs a
/// shuffle, and the primary key stops a second record in any case.
pub async fn build_once(deps: &Deps, signer: &NoteSigner, election_id: i64) -> anyhow::Result<Built> {
    let mut conn = deps.db.acquire().await.context("connecting to Postgres")?;
    let built = build_on(&mut conn, deps, signer, election_id).await;
    crate::postgres::evict_if_read_only(&mut conn, built)
}

async fn build_on(
    conn: &mut sqlx::PgConnection,
    deps: &Deps,
    signer: &NoteSigner,
    election_id: i64,
) -> anyhow::Result<Built> {
    let mut tx = conn.begin().await.context("connecting to Postgres")?;
    // One snapshot for every read below, so the files agree with each other.
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ").execute(&mut *tx).await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1, ($2 % 2147483647)::int)")
        .bind(BUILD_LOCK_CLASS)
        .bind(election_id)
        .fetch_one(&mut *tx)
        .await
        .context("taking the record lock")?;
    // Asked outside this transaction: its snapshot, taken with the lock,
    // may predate the commit of a builder that held the lock just before.
    if !locked || built(&deps.db, election_id).await? {
        return Ok(Built::Elsewhere);
    }
    let Some(election) = elections::load_tx(&mut tx, election_id).await? else { return Ok(Built::NotYet) };
    let status = election.status(OffsetDateTime::now_utc());
    if status == Status::Cancelled {
        return Ok(Built::Never);
    }
    if !election.is_final(status) {
        return Ok(Built::NotYet);
    }
    // Final already implies an empty quarantine; a ballot quarantined
    // after that (a late copy that would not open) waits for its operator.
    if nats::quarantined(&deps.jetstream, &deps.settings.nats, election_id).await? {
        return Ok(Built::NotYet);
    }
    let recorded = read(&mut tx, &election).await?;
    let files = build(
        recorded,
        deps.settings.record.origin_host()?,
        signer,
        &mut rand_core::UnwrapErr(rand_core::OsRng),
    )?;
    sqlx::query("INSERT INTO election_records (election_id) VALUES ($1)")
        .bind(election_id)
        .execute(&mut *tx)
        .await
        .context("noting the record")?;
    let (names, contents): (Vec<String>, Vec<Vec<u8>>) = files.into_iter().unzip();
    sqlx::query(
        "INSERT INTO election_record_files (election_id, name, contents)
         SELECT $1, * FROM UNNEST($2::text[], $3::bytea[])",
    )
    .bind(election_id)
    .bind(&names)
    .bind(&contents)
    .execute(&mut *tx)
    .await
    .context("storing the record's files")?;
    tx.commit().await.context("committing the record")?;
    Ok(Built::Now)
}

async fn exists(conn: &mut sqlx::PgConnection, election_id: i64) -> anyhow::Result<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM election_records WHERE election_id = $1)")
        .bind(election_id)
        .fetch_one(conn)
        .await
        .context("looking for a record")
}

/// The ballot box, the receipts, the roll's size, the rejections and the
/// audit log, each read apart: no query joins a receipt to a ballot.
async fn read<'e>(
    tx: &mut sqlx::PgConnection,
    election: &'e tally_domain::election::Election,
) -> anyhow::Result<Recorded<'e>> {
    let id = election.id;
    let ballots: Vec<Vec<i64>> =
        sqlx::query_scalar("SELECT selections FROM ballot_box WHERE election_id = $1")
            .bind(id)
            .fetch_all(&mut *tx)
            .await
            .context("reading the ballot box")?;
    let receipts: Vec<Uuid> =
        sqlx::query_scalar("SELECT receipt FROM recorded_receipts WHERE election_id = $1")
            .bind(id)
            .fetch_all(&mut *tx)
            .await
            .context("reading the receipts")?;
    let voter_roll: i64 = sqlx::query_scalar("SELECT count(*) FROM voter_roll WHERE election_id = $1")
        .bind(id)
        .fetch_one(&mut *tx)
        .await
        .context("counting the voter roll")?;
    let rejected: Vec<(String, i64)> = sqlx::query_as(
        "SELECT reason, count(*) FROM rejected_ballots WHERE election_id = $1 GROUP BY reason",
    )
    .bind(id)
    .fetch_all(&mut *tx)
    .await
    .context("counting rejections")?;
    let audit: Vec<String> = sqlx::query_scalar(
        "SELECT jsonb_build_object('id', id, 'actor', actor, 'action', action, 'election_id', election_id,
                                   'before', before, 'after', after, 'at', at)::text
         FROM audit_log WHERE election_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(&mut *tx)
    .await
    .context("reading the audit log")?;
    Ok(Recorded {
        election,
        ballots,
        receipts: receipts.into_iter().map(|r| r.into_bytes()).collect(),
        voter_roll,
        rejected: rejected.into_iter().collect::<BTreeMap<_, _>>(),
        audit: audit.into_iter().map(|line| line + "\n").collect(),
    })
}

/// Whether the election has a record.
pub async fn built(db: &PgPool, election_id: i64) -> anyhow::Result<bool> {
    let mut conn = db.acquire().await.context("connecting to Postgres")?;
    exists(&mut conn, election_id).await
}

/// One file of an election's record; `None` if there is no such file (or no record).
pub async fn file(db: &PgPool, election_id: i64, name: &str) -> anyhow::Result<Option<Vec<u8>>> {
    sqlx::query_scalar("SELECT contents FROM election_record_files WHERE election_id = $1 AND name = $2")
        .bind(election_id)
        .bind(name)
        .fetch_optional(db)
        .await
        .context("reading a record file")
}

/// Every file of an election's record; empty if it has none.
pub async fn files(db: &PgPool, election_id: i64) -> anyhow::Result<Files> {
    let rows: Vec<(String, Vec<u8>)> =
        sqlx::query_as("SELECT name, contents FROM election_record_files WHERE election_id = $1")
            .bind(election_id)
            .fetch_all(db)
            .await
            .context("reading a record")?;
    Ok(rows.into_iter().collect())
}
