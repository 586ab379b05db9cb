//! Synthetic voters for load: registry citizens and user accounts written
//! in bulk, an open election, and access tokens minted directly with the
//! configured key, so that password hashing is not what gets measured.
//!
//! Workers hold the last K ballots of an open election (its anonymity
//! set) until it ends, so anything that waits for every ballot to be
//! recorded calls `close` first.

use anyhow::Context;
use sqlx::PgPool;
use tally_domain::citizen::Role;
use tally_platform::Settings;
use tally_platform::auth::TokenKeys;
use tally_platform::redis::{Keys, Redis};
use time::macros::date;
use uuid::Uuid;

use crate::registry::Citizen;
use crate::registry::load::{BATCH, insert_batch};

pub const RUNNERS: [i64; 2] = [990_000_001, 990_000_002];
/// Bench voters' ids start here, far from demo and registry ids.
pub const FIRST_VOTER: i64 = 800_000_000;

/// Printed as JSON by `tally bench provision` for k6 and
/// `../shared/perf/ratio.sh`: keep `election_id`, `runners` and `tokens`.
#[derive(serde::Serialize)]
pub struct Provisioned {
    pub election_id: i64,
    pub runners: Vec<i64>,
    pub tokens: Vec<String>,
    /// K: live counts move in steps of more than this many ballots, and
    /// the last K or more are recorded only once the election ends.
    pub anonymity_set: i32,
}

/// The first unused bench voter id, so each run's voters are new and all
/// their ballots are first ballots.
pub async fn next_voter_id(db: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT GREATEST(COALESCE(MAX(citizen_id) + 1, $1), $1) FROM citizens WHERE citizen_id < $2",
    )
    .bind(FIRST_VOTER)
    .bind(RUNNERS[0])
    .fetch_one(db)
    .await?)
}

/// `voters` adults with accounts, ids from `first`, and a new open election
/// whose anonymity set is `workers.anonymity_set`.
pub async fn provision(settings: &Settings, voters: u64, first: i64) -> anyhow::Result<Provisioned> {
    let db = tally_platform::postgres::pool(&settings.database)?;
    let mut id = first;
    let end = first + voters as i64;
    while id < end {
        let chunk_end = (id + BATCH as i64).min(end);
        let citizens: Vec<Citizen> = (id..chunk_end)
            .map(|citizen_id| Citizen {
                citizen_id,
                full_name: format!("Bench Voter {citizen_id}"),
                dob: date!(1980 - 01 - 01),
                pob: "Capital".into(),
                permanent_address: "1 Bench Road".into(),
                province: "Capital".into(),
            })
            .collect();
        insert_batch(&db, &citizens).await?;
        let ids: Vec<i64> = (id..chunk_end).collect();
        // A hash no password verifies against: these accounts never log in.
        sqlx::query(
            "INSERT INTO users (citizen_id, password_hash, phone)
             SELECT c, '$argon2id$v=19$m=19456,t=2,p=1$bench$account-without-password', '+1' || (2000000000 + c)::text
             FROM UNNEST($1::bigint[]) AS c ON CONFLICT DO NOTHING",
        )
        .bind(&ids)
        .execute(&db)
        .await
        .context("creating bench accounts")?;
        id = chunk_end;
    }
    let anonymity_set = settings.workers.anonymity_set;
    let election_id = open_election(&db, "Benchmark election", anonymity_set).await?;
    let keys = TokenKeys::from_settings(&settings.auth);
    let tokens = (first..end)
        .map(|citizen| {
            keys.sign(&keys.claims(citizen, Uuid::new_v4(), Role::Voter, "Capital", date!(1980 - 01 - 01)))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Provisioned { election_id, runners: RUNNERS.to_vec(), tokens, anonymity_set })
}

/// An open election with the two bench runners and anonymity set `k`.
pub async fn open_election(db: &PgPool, name: &str, k: i32) -> anyhow::Result<i64> {
    for (id, runner) in RUNNERS.iter().zip(["Bench Runner A", "Bench Runner B"]) {
        sqlx::query(
            "INSERT INTO citizens (citizen_id, full_name, dob, pob, permanent_address, province)
             VALUES ($1, $2, '1970-01-01', 'Capital', '1 Bench Road', 'Capital') ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(runner)
        .execute(db)
        .await?;
    }
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO elections (name, start_at, end_at, anonymity_set)
         VALUES ($1, now(), now() + interval '1 day', $2) RETURNING election_id",
    )
    .bind(name)
    .bind(k)
    .fetch_one(db)
    .await?;
    for runner in RUNNERS {
        sqlx::query("INSERT INTO runners (election_id, citizen_id, post) VALUES ($1, $2, 'Chair')")
            .bind(id)
            .bind(runner)
            .execute(db)
            .await?;
    }
    Ok(id)
}

/// Closes the election now, as `POST /v1/elections/{id}/close` does, and
/// announces the change on the elections channel so that API replicas
/// stop taking its ballots and broadcasters push its final frame. Workers
/// notice the end within about a second and flush the ballots they hold.
pub async fn close(db: &PgPool, redis: &Redis, keys: &Keys, election_id: i64) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE elections SET closed_at = now(), updated_at = now()
         WHERE election_id = $1 AND closed_at IS NULL AND cancelled_at IS NULL",
    )
    .bind(election_id)
    .execute(db)
    .await
    .context("closing the election")?;
    redis::cmd("PUBLISH")
        .arg(keys.elections_channel())
        .arg(election_id)
        .query_async::<i64>(&mut redis.clone())
        .await
        .context("announcing the close")?;
    Ok(())
}

/// Ends a bench election so it does not linger in live lists. Its held
/// ballots are flushed and count for nothing: use `close` to count them.
pub async fn retire(db: &PgPool, election_id: i64) -> anyhow::Result<()> {
    sqlx::query("UPDATE elections SET cancelled_at = now() WHERE election_id = $1")
        .bind(election_id)
        .execute(db)
        .await?;
    Ok(())
}
