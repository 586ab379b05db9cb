//! Recording one group of ballots in one Postgres transaction.
//!
//! Each table is written by one statement, in an order of its own, and no
//! savepoint is ever taken: a subtransaction would give its rows their own
//! transaction id and pair them again. So inside a group, nothing links a
//! voter-roll row to a ballot-box row or to a receipt.
//!
//! The voter roll's primary key decides which ballot of a citizen counts:
//! every ballot inserts its (election, citizen) row with ON CONFLICT DO
//! NOTHING, and only the rows actually inserted get a ballot-box row and a
//! count. So redeliveries, retries and concurrent workers add nothing twice.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use anyhow::Context;
use sqlx::{Acquire, PgPool, Postgres, Transaction};
use tally_domain::ballot::{VoteCommand, check_selections};
use tally_domain::election::{Nominee, contested};
use tally_domain::lifecycle::{Schedule, Status};
use tally_platform::postgres;
use tally_platform::tallies::Totals;
use time::OffsetDateTime;
use uuid::Uuid;

/// What became of one ballot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    Recorded,
    /// Recorded by an earlier delivery of the same message.
    AlreadyRecorded,
    Rejected(&'static str),
}

#[derive(Debug, Default)]
pub struct BatchOutcome {
    pub fates: Vec<Fate>,
    /// Every election the batch touched, with its totals after commit.
    pub totals: Vec<Totals>,
    /// (election, citizen) of each ballot recorded now.
    pub voters: Vec<(i64, i64)>,
    /// (election, citizen) of voters whose ballot was rejected and who are
    /// not on the voter roll: nothing of theirs counts, so the voter set
    /// must stop saying they voted.
    pub released: Vec<(i64, i64)>,
}

/// Why Postgres refused a group, as far as the worker must know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The data of some ballot (SQLSTATE classes 22 and 23): another try
    /// fails the same way, so the culprit must be found. The reason is
    /// what its voter reads on the receipt.
    Data(&'static str),
    /// Anything else (a lost connection, a failover, a full disk): the
    /// group is blameless and is tried again whole.
    Transient,
}

/// Classifies an error from `record` or `probe`.
pub fn refusal(error: &anyhow::Error) -> Refusal {
    let code = error
        .chain()
        .find_map(|e| e.downcast_ref::<sqlx::Error>())
        .and_then(|e| e.as_database_error())
        .and_then(|e| e.code().map(|c| c.into_owned()));
    match code.as_deref() {
        // A voter removed from the registry while their ballot waited.
        Some("23503") => Refusal::Data("not_registered"),
        Some(code) if code.starts_with("22") || code.starts_with("23") => Refusal::Data("unrecordable"),
        _ => Refusal::Transient,
    }
}

struct ElectionFacts {
    schedule: Schedule,
    runners: Vec<Nominee>,
}

/// Records a group of ballots in one transaction. `late[i]` says the
/// broker stored ballot `i` after its election's fence (see
/// `tally_platform::fence`): it is rejected as `election_closed`. A short or
/// empty `late` means none is.
pub async fn record(db: &PgPool, commands: &[VoteCommand], late: &[bool]) -> anyhow::Result<BatchOutcome> {
    let mut conn = db.acquire().await.context("starting a batch")?;
    let written = async {
        let mut tx = conn.begin().await.context("starting a batch")?;
        let outcome = write(&mut tx, commands, late).await?;
        tx.commit().await.context("committing a batch")?;
        Ok(outcome)
    };
    let written = written.await;
    postgres::evict_if_read_only(&mut conn, written)
}

/// The tables a probe may write; see `probe`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    VoterRoll,
    BallotBox,
}

/// Writes one table's rows for these ballots, then rolls back: tells
/// whether Postgres accepts them. One table per transaction, because even
/// an aborted transaction leaves its rows, with one transaction id, in the
/// WAL: a probe holding a voter-roll row and a ballot-box row would pair
/// a citizen with a choice there.
pub async fn probe(db: &PgPool, table: Table, commands: &[VoteCommand]) -> anyhow::Result<()> {
    let mut tx = db.begin().await.context("starting a probe")?;
    match table {
        Table::VoterRoll => insert_voter_roll(&mut tx, commands.iter()).await.map(drop)?,
        Table::BallotBox => insert_ballots(&mut tx, commands.iter()).await?,
    }
    tx.rollback().await.context("rolling a probe back")?;
    Ok(())
}

/// Rejects ballots that no group can hold, each with the reason its voter
/// reads on the receipt. Returns the voters this frees (see
/// `BatchOutcome::released`).
pub async fn reject(
    db: &PgPool,
    rejected: &[(&VoteCommand, &'static str)],
) -> anyhow::Result<Vec<(i64, i64)>> {
    let commands: Vec<VoteCommand> = rejected.iter().map(|(c, _)| (*c).clone()).collect();
    let fates: Vec<Fate> = rejected.iter().map(|(_, reason)| Fate::Rejected(reason)).collect();
    let mut conn = db.acquire().await.context("starting a rejection")?;
    let written = async {
        let mut tx = conn.begin().await.context("starting a rejection")?;
        insert_rejections(&mut tx, &commands, &fates).await?;
        let released = released_voters(&mut tx, &commands, &fates).await?;
        tx.commit().await.context("committing a rejection")?;
        Ok(released)
    };
    let written = written.await;
    postgres::evict_if_read_only(&mut conn, written)
}

async fn write(
    tx: &mut Transaction<'_, Postgres>,
    commands: &[VoteCommand],
    late: &[bool],
) -> anyhow::Result<BatchOutcome> {
    let election_ids: Vec<i64> =
        commands.iter().map(|c| c.election_id).collect::<BTreeSet<_>>().into_iter().collect();
    let elections = lock_elections(tx, &election_ids).await?;

    let mut fates: Vec<Option<Fate>> = vec![None; commands.len()];
    let mut candidates: Vec<usize> = Vec::new();
    let mut first_in_batch: HashMap<(i64, i64), Uuid> = HashMap::new();
    for (i, command) in commands.iter().enumerate() {
        let verdict = match elections.get(&command.election_id) {
            None => Err("unknown_election"),
            // The end is the fence, not a clock: see `tally_platform::fence`.
            Some(_) if late.get(i).copied().unwrap_or(false) => Err("election_closed"),
            // Before the start, or cancelled: no clock of ours says the
            // end, but the API's said it was open when it was not.
            Some(e) if !matches!(e.schedule.status(command.accepted_at), Status::Open | Status::Closed) => {
                Err("election_closed")
            }
            Some(e) if check_selections(&command.selections, &e.runners).is_err() => Err("invalid_selection"),
            Some(_) => Ok(()),
        };
        let key = (command.election_id, command.citizen_id);
        match verdict {
            Err(reason) => fates[i] = Some(Fate::Rejected(reason)),
            Ok(()) => match first_in_batch.get(&key) {
                None => {
                    first_in_batch.insert(key, command.receipt);
                    candidates.push(i);
                }
                Some(receipt) if *receipt == command.receipt => fates[i] = Some(Fate::AlreadyRecorded),
                Some(_) => fates[i] = Some(Fate::Rejected("already_voted")),
            },
        }
    }

    let inserted = insert_voter_roll(tx, candidates.iter().map(|&i| &commands[i])).await?;
    let mut recorded: Vec<usize> = Vec::new();
    let mut conflicting: Vec<usize> = Vec::new();
    for &i in &candidates {
        if inserted.contains(&(commands[i].election_id, commands[i].citizen_id)) {
            recorded.push(i);
        } else {
            conflicting.push(i);
        }
    }
    let refused: Vec<usize> = (0..commands.len()).filter(|&i| fates[i].is_some()).collect();
    let known =
        recorded_receipts(tx, conflicting.iter().chain(&refused).map(|&i| commands[i].receipt)).await?;
    for &i in &conflicting {
        fates[i] = Some(if known.contains(&commands[i].receipt) {
            Fate::AlreadyRecorded
        } else {
            Fate::Rejected("already_voted")
        });
    }
    for &i in &recorded {
        fates[i] = Some(Fate::Recorded);
    }
    // A copy of a recorded ballot refused for its own sake (a retry that
    // reached the stream after the close) is still that recorded ballot:
    // its receipt must not read both recorded and rejected.
    let recorded_now: HashSet<Uuid> = recorded.iter().map(|&i| commands[i].receipt).collect();
    for &i in &refused {
        let receipt = commands[i].receipt;
        if matches!(fates[i], Some(Fate::Rejected(_)))
            && (known.contains(&receipt) || recorded_now.contains(&receipt))
        {
            fates[i] = Some(Fate::AlreadyRecorded);
        }
    }

    insert_ballots(tx, recorded.iter().map(|&i| &commands[i])).await?;
    insert_receipts(tx, recorded.iter().map(|&i| &commands[i])).await?;
    add_counts(tx, recorded.iter().map(|&i| &commands[i])).await?;
    let fates: Vec<Fate> =
        fates.into_iter().map(|f| f.unwrap_or(Fate::Rejected("invalid_selection"))).collect();
    insert_rejections(tx, commands, &fates).await?;
    let released = released_voters(tx, commands, &fates).await?;
    let totals = read_totals(tx, &election_ids, commands, &fates).await?;

    let voters = recorded.iter().map(|&i| (commands[i].election_id, commands[i].citizen_id)).collect();
    Ok(BatchOutcome { fates, totals, voters, released })
}

/// Voters of ballots rejected for a reason of their own (not a second
/// ballot) who, in this same transaction, have no voter-roll row.
async fn released_voters(
    tx: &mut Transaction<'_, Postgres>,
    commands: &[VoteCommand],
    fates: &[Fate],
) -> anyhow::Result<Vec<(i64, i64)>> {
    let (elections, citizens): (Vec<i64>, Vec<i64>) = commands
        .iter()
        .zip(fates)
        .filter(|(_, fate)| matches!(fate, Fate::Rejected(reason) if *reason != "already_voted"))
        .map(|(c, _)| (c.election_id, c.citizen_id))
        .unzip();
    if elections.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_as(
        "SELECT DISTINCT t.e, t.c FROM UNNEST($1::bigint[], $2::bigint[]) AS t(e, c)
         WHERE NOT EXISTS (SELECT 1 FROM voter_roll v WHERE v.election_id = t.e AND v.citizen_id = t.c)",
    )
    .bind(&elections)
    .bind(&citizens)
    .fetch_all(&mut **tx)
    .await
    .context("finding rejected voters with no ballot on the roll")
}

/// Locks the batch's elections in id order: workers recording the same
/// election take turns (each transaction is short), and cannot deadlock.
async fn lock_elections(
    tx: &mut Transaction<'_, Postgres>,
    ids: &[i64],
) -> anyhow::Result<HashMap<i64, ElectionFacts>> {
    type Row = (i64, OffsetDateTime, OffsetDateTime, Option<OffsetDateTime>, Option<OffsetDateTime>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT election_id, start_at, end_at, closed_at, cancelled_at FROM elections
         WHERE election_id = ANY($1) ORDER BY election_id FOR UPDATE",
    )
    .bind(ids)
    .fetch_all(&mut **tx)
    .await
    .context("locking elections")?;
    let runner_rows: Vec<(i64, i64, String)> =
        sqlx::query_as("SELECT election_id, citizen_id, post FROM runners WHERE election_id = ANY($1)")
            .bind(ids)
            .fetch_all(&mut **tx)
            .await
            .context("loading runners")?;
    let mut runners: HashMap<i64, Vec<Nominee>> = HashMap::new();
    for (election, citizen_id, post) in runner_rows {
        runners.entry(election).or_default().push(Nominee { citizen_id, post });
    }
    Ok(rows
        .into_iter()
        .map(|(id, start_at, end_at, closed_at, cancelled_at)| {
            let runners = runners.remove(&id).unwrap_or_default();
            let schedule =
                Schedule { start_at, end_at, closed_at, cancelled_at, contested: contested(&runners) };
            (id, ElectionFacts { schedule, runners })
        })
        .collect())
}

async fn insert_voter_roll<'a>(
    tx: &mut Transaction<'_, Postgres>,
    ballots: impl Iterator<Item = &'a VoteCommand>,
) -> anyhow::Result<HashSet<(i64, i64)>> {
    // In (election, citizen) order: nothing of the arrival order, and
    // nothing shared with the order of the other tables.
    let mut rows: Vec<(i64, i64)> = ballots.map(|c| (c.election_id, c.citizen_id)).collect();
    rows.sort_unstable();
    let (elections, citizens): (Vec<i64>, Vec<i64>) = rows.into_iter().unzip();
    if elections.is_empty() {
        return Ok(HashSet::new());
    }
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "INSERT INTO voter_roll (election_id, citizen_id)
         SELECT * FROM UNNEST($1::bigint[], $2::bigint[])
         ON CONFLICT DO NOTHING RETURNING election_id, citizen_id",
    )
    .bind(&elections)
    .bind(&citizens)
    .fetch_all(&mut **tx)
    .await
    .context("writing the voter roll")?;
    Ok(rows.into_iter().collect())
}

async fn recorded_receipts(
    tx: &mut Transaction<'_, Postgres>,
    receipts: impl Iterator<Item = Uuid>,
) -> anyhow::Result<HashSet<Uuid>> {
    let receipts: Vec<Uuid> = receipts.collect();
    if receipts.is_empty() {
        return Ok(HashSet::new());
    }
    let found: Vec<Uuid> =
        sqlx::query_scalar("SELECT receipt FROM recorded_receipts WHERE receipt = ANY($1)")
            .bind(&receipts)
            .fetch_all(&mut **tx)
            .await
            .context("looking up receipts")?;
    Ok(found.into_iter().collect())
}

/// Ballot-box rows get a random id of their own and go in ordered by it,
/// so neither their key nor their physical order relates to the voter
/// roll or to the receipts.
async fn insert_ballots<'a>(
    tx: &mut Transaction<'_, Postgres>,
    ballots: impl Iterator<Item = &'a VoteCommand>,
) -> anyhow::Result<()> {
    let mut rows: Vec<(Uuid, i64, String)> = ballots
        .map(|c| {
            let list: Vec<String> = c.selections.iter().map(i64::to_string).collect();
            (Uuid::new_v4(), c.election_id, format!("{{{}}}", list.join(",")))
        })
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    rows.sort_unstable_by_key(|r| r.0);
    let mut ids = Vec::with_capacity(rows.len());
    let mut elections = Vec::with_capacity(rows.len());
    let mut selections = Vec::with_capacity(rows.len());
    for (id, election, list) in rows {
        ids.push(id);
        elections.push(election);
        selections.push(list);
    }
    sqlx::query(
        "INSERT INTO ballot_box (ballot_id, election_id, selections)
         SELECT b, e, s::bigint[] FROM UNNEST($1::uuid[], $2::bigint[], $3::text[]) AS t(b, e, s)",
    )
    .bind(&ids)
    .bind(&elections)
    .bind(&selections)
    .execute(&mut **tx)
    .await
    .context("filling the ballot box")?;
    Ok(())
}

/// Receipts in receipt order (random, and unrelated to ballot ids).
async fn insert_receipts<'a>(
    tx: &mut Transaction<'_, Postgres>,
    ballots: impl Iterator<Item = &'a VoteCommand>,
) -> anyhow::Result<()> {
    let mut rows: Vec<(Uuid, i64)> = ballots.map(|c| (c.receipt, c.election_id)).collect();
    if rows.is_empty() {
        return Ok(());
    }
    rows.sort_unstable();
    let (receipts, elections): (Vec<Uuid>, Vec<i64>) = rows.into_iter().unzip();
    sqlx::query(
        "INSERT INTO recorded_receipts (receipt, election_id)
         SELECT * FROM UNNEST($1::uuid[], $2::bigint[])",
    )
    .bind(&receipts)
    .bind(&elections)
    .execute(&mut **tx)
    .await
    .context("recording receipts")?;
    Ok(())
}

/// One UPDATE for all runners (each row touched once, never once per
/// vote), then each election's turnout and version.
async fn add_counts<'a>(
    tx: &mut Transaction<'_, Postgres>,
    ballots: impl Iterator<Item = &'a VoteCommand>,
) -> anyhow::Result<()> {
    let mut per_runner: BTreeMap<(i64, i64), i64> = BTreeMap::new();
    let mut per_election: BTreeMap<i64, i64> = BTreeMap::new();
    for ballot in ballots {
        *per_election.entry(ballot.election_id).or_default() += 1;
        for runner in &ballot.selections {
            *per_runner.entry((ballot.election_id, *runner)).or_default() += 1;
        }
    }
    if per_election.is_empty() {
        return Ok(());
    }
    let mut elections = Vec::new();
    let mut runners = Vec::new();
    let mut counts = Vec::new();
    for ((election, runner), n) in per_runner {
        elections.push(election);
        runners.push(runner);
        counts.push(n);
    }
    sqlx::query(
        "UPDATE runners r SET total_votes = r.total_votes + d.n
         FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[]) AS d(e, c, n)
         WHERE r.election_id = d.e AND r.citizen_id = d.c",
    )
    .bind(&elections)
    .bind(&runners)
    .bind(&counts)
    .execute(&mut **tx)
    .await
    .context("adding runner counts")?;
    let (ids, turnouts): (Vec<i64>, Vec<i64>) = per_election.into_iter().unzip();
    sqlx::query(
        "UPDATE elections e SET tally_version = e.tally_version + 1, turnout = e.turnout + d.n
         FROM UNNEST($1::bigint[], $2::bigint[]) AS d(id, n) WHERE e.election_id = d.id",
    )
    .bind(&ids)
    .bind(&turnouts)
    .execute(&mut **tx)
    .await
    .context("raising tally versions")?;
    Ok(())
}

async fn insert_rejections(
    tx: &mut Transaction<'_, Postgres>,
    commands: &[VoteCommand],
    fates: &[Fate],
) -> anyhow::Result<()> {
    let mut receipts = Vec::new();
    let mut elections = Vec::new();
    let mut reasons = Vec::new();
    for (command, fate) in commands.iter().zip(fates) {
        if let Fate::Rejected(reason) = fate {
            receipts.push(command.receipt);
            elections.push(command.election_id);
            reasons.push(*reason);
        }
    }
    if receipts.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO rejected_ballots (receipt, election_id, reason)
         SELECT * FROM UNNEST($1::uuid[], $2::bigint[], $3::text[]) ON CONFLICT DO NOTHING",
    )
    .bind(&receipts)
    .bind(&elections)
    .bind(&reasons)
    .execute(&mut **tx)
    .await
    .context("recording rejections")?;
    Ok(())
}

/// Absolute totals after this batch, for Redis. Read inside the
/// transaction, so they are exactly what it commits.
async fn read_totals(
    tx: &mut Transaction<'_, Postgres>,
    ids: &[i64],
    commands: &[VoteCommand],
    fates: &[Fate],
) -> anyhow::Result<Vec<Totals>> {
    let heads: Vec<(i64, i64, i64)> = sqlx::query_as(
        "SELECT election_id, tally_version, turnout FROM elections WHERE election_id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(&mut **tx)
    .await
    .context("reading versions")?;
    let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
        "SELECT election_id, citizen_id, total_votes FROM runners WHERE election_id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(&mut **tx)
    .await
    .context("reading totals")?;
    let mut oldest: HashMap<i64, OffsetDateTime> = HashMap::new();
    for (command, fate) in commands.iter().zip(fates) {
        if *fate == Fate::Recorded {
            let entry = oldest.entry(command.election_id).or_insert(command.accepted_at);
            *entry = (*entry).min(command.accepted_at);
        }
    }
    Ok(heads
        .into_iter()
        .map(|(election_id, version, turnout)| Totals {
            election_id,
            version,
            turnout,
            votes: rows.iter().filter(|r| r.0 == election_id).map(|r| (r.1, r.2)).collect(),
            oldest_accepted_at: oldest.get(&election_id).copied(),
        })
        .collect())
}
