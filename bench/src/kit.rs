//! The test kit: registry citizens, voters with accounts, their access
//! tokens and elections, written straight to the database, for the
//! benchmarks and for tests. Tokens are minted with the configured key,
//! so no password is hashed: the accounts made here never log in.
//!
//! Workers hold the last K ballots of an open election (its anonymity
//! set) until it ends, so anything that waits for every ballot to be
//! recorded calls `close` first.

use std::ops::Range;

use anyhow::Context;
use sqlx::PgPool;
use tally_domain::citizen::Role;
use tally_domain::enrollment::{EnrollmentKey, new_code};
use tally_platform::Settings;
use tally_platform::auth::TokenKeys;
use tally_platform::elections::{self, NewElection, NewRunner};
use tally_platform::redis::{Keys, Redis};
use time::Date;
use uuid::Uuid;

/// Rows per insert: thousands per round trip, a bounded statement each.
const BATCH: i64 = 5_000;

/// Where and when the kit's citizens live and were born.
#[derive(Clone, Debug)]
pub struct Residence {
    pub province: String,
    pub dob: Date,
}

impl Default for Residence {
    fn default() -> Self {
        Residence { province: "Capital".into(), dob: time::macros::date!(1980 - 01 - 01) }
    }
}

/// A citizen with an account and a signed access token.
#[derive(Clone, Debug)]
pub struct Voter {
    pub citizen_id: i64,
    pub token: String,
}

/// Registry citizens with these ids; ids that exist are left as they are.
pub async fn add_citizens(db: &PgPool, ids: Range<i64>, residence: &Residence) -> anyhow::Result<()> {
    for chunk in chunks(ids) {
        sqlx::query(
            "INSERT INTO citizens (citizen_id, full_name, dob, pob, permanent_address, province)
             SELECT c, 'Citizen ' || c, $3, 'Capital', '1 Oak Street', $4
             FROM generate_series($1::bigint, $2::bigint - 1) AS c ON CONFLICT DO NOTHING",
        )
        .bind(chunk.start)
        .bind(chunk.end)
        .bind(residence.dob)
        .bind(&residence.province)
        .execute(db)
        .await
        .context("adding citizens")?;
    }
    Ok(())
}

/// Accounts for these citizens, each with a distinct phone number and a
/// hash that no password verifies against.
pub async fn add_accounts(db: &PgPool, ids: Range<i64>) -> anyhow::Result<()> {
    for chunk in chunks(ids) {
        sqlx::query(
            "INSERT INTO users (citizen_id, password_hash, phone)
             SELECT c, '$argon2id$v=19$m=19456,t=2,p=1$kit$account-without-password', '+1' || (2000000000 + c)::text
             FROM generate_series($1::bigint, $2::bigint - 1) AS c ON CONFLICT DO NOTHING",
        )
        .bind(chunk.start)
        .bind(chunk.end)
        .execute(db)
        .await
        .context("adding accounts")?;
    }
    Ok(())
}

/// An access token for the citizen, as a login would issue it.
pub fn access_token(
    settings: &Settings,
    citizen_id: i64,
    role: Role,
    residence: &Residence,
) -> anyhow::Result<String> {
    let keys = TokenKeys::from_settings(&settings.auth);
    keys.sign(&keys.claims(citizen_id, Uuid::new_v4(), role, &residence.province, residence.dob))
}

/// Citizens with accounts and access tokens, in id order.
pub async fn add_voters(
    db: &PgPool,
    settings: &Settings,
    ids: Range<i64>,
    residence: &Residence,
) -> anyhow::Result<Vec<Voter>> {
    add_citizens(db, ids.clone(), residence).await?;
    add_accounts(db, ids.clone()).await?;
    let keys = TokenKeys::from_settings(&settings.auth);
    ids.map(|citizen_id| {
        let claims = keys.claims(citizen_id, Uuid::new_v4(), Role::Voter, &residence.province, residence.dob);
        Ok(Voter { citizen_id, token: keys.sign(&claims)? })
    })
    .collect()
}

/// A fresh one-time enrollment code for the citizen, replacing any older
/// one, for a signup through the API. Unlike `tally citizens codes` it
/// writes nothing to the audit log.
pub async fn enrollment_code(db: &PgPool, settings: &Settings, citizen_id: i64) -> anyhow::Result<String> {
    let key = EnrollmentKey::new(settings.auth.enrollment_key()?);
    let code = new_code()?;
    let hash = key.hash(citizen_id, &code).context("an enrollment code of the wrong shape")?;
    sqlx::query(
        "INSERT INTO enrollment_codes (citizen_id, code_hash) VALUES ($1, $2)
         ON CONFLICT (citizen_id) DO UPDATE SET code_hash = EXCLUDED.code_hash",
    )
    .bind(citizen_id)
    .bind(hash)
    .execute(db)
    .await
    .context("issuing an enrollment code")?;
    Ok(code)
}

/// An election, its window relative to now.
#[derive(Clone, Debug)]
pub struct ElectionSpec {
    pub name: String,
    pub starts_in_secs: i64,
    pub ends_in_secs: i64,
    pub restriction: String,
    pub visibility: String,
    pub min_age: i16,
    /// K: workers hold this many ballots back until the end.
    pub anonymity_set: i32,
    pub post: String,
    /// Made registry citizens here if they are not already.
    pub runners: Vec<i64>,
}

impl Default for ElectionSpec {
    fn default() -> Self {
        ElectionSpec {
            name: "Test election".into(),
            starts_in_secs: -60,
            ends_in_secs: 86_400,
            restriction: "@everyone".into(),
            visibility: "live".into(),
            min_age: 18,
            anonymity_set: 2,
            post: "President".into(),
            runners: vec![9001, 9002],
        }
    }
}

/// The election and its runners, through the product's own
/// `elections::create`; returns its id.
pub async fn insert_election(db: &PgPool, spec: &ElectionSpec) -> anyhow::Result<i64> {
    for runner in &spec.runners {
        sqlx::query(
            "INSERT INTO citizens (citizen_id, full_name, dob, pob, permanent_address, province)
             VALUES ($1, 'Runner ' || $1, '1970-01-01', 'Capital', '1 Oak Street', 'Capital')
             ON CONFLICT DO NOTHING",
        )
        .bind(runner)
        .execute(db)
        .await
        .context("adding a runner to the registry")?;
    }
    let now = time::OffsetDateTime::now_utc();
    let new = NewElection {
        name: spec.name.clone(),
        start_at: now + time::Duration::seconds(spec.starts_in_secs),
        end_at: now + time::Duration::seconds(spec.ends_in_secs),
        restriction: spec.restriction.parse().map_err(|e| anyhow::anyhow!("restriction: {e}"))?,
        min_age: spec.min_age,
        visibility: spec.visibility.parse().map_err(|e| anyhow::anyhow!("visibility: {e}"))?,
        anonymity_set: Some(spec.anonymity_set),
        runners: spec
            .runners
            .iter()
            .map(|&citizen_id| NewRunner { citizen_id, post: spec.post.clone() })
            .collect(),
    };
    elections::create(db, &new).await
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

/// Cancels the election so it does not linger in live lists. Its held
/// ballots are flushed and count for nothing: use `close` to count them.
pub async fn cancel(db: &PgPool, election_id: i64) -> anyhow::Result<()> {
    sqlx::query("UPDATE elections SET cancelled_at = now() WHERE election_id = $1")
        .bind(election_id)
        .execute(db)
        .await
        .context("cancelling the election")?;
    Ok(())
}

fn chunks(ids: Range<i64>) -> impl Iterator<Item = Range<i64>> {
    ids.clone().step_by(BATCH as usize).map(move |start| start..(start + BATCH).min(ids.end))
}

#[cfg(test)]
mod tests {
    use super::chunks;

    #[test]
    fn ids_go_in_bounded_chunks_with_none_left_out() {
        let parts: Vec<_> = chunks(10..10_012).collect();
        assert_eq!(parts, vec![10..5_010, 5_010..10_010, 10_010..10_012]);
        assert_eq!(chunks(5..5).count(), 0);
    }
}
