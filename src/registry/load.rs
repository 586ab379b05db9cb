//! Writes citizens to Postgres in batches with one `UNNEST` insert each:
//! bound arrays rather than built SQL, and thousands of rows per round trip.

use anyhow::Context;
use sqlx::{Executor, Postgres};

use super::Citizen;

pub const BATCH: usize = 5_000;

/// Inserts a batch; rows whose id already exists are left as they are.
/// Returns how many rows were new.
pub async fn insert_batch<'e, E>(executor: E, batch: &[Citizen]) -> anyhow::Result<u64>
where
    E: Executor<'e, Database = Postgres>,
{
    Ok(insert_returning(executor, batch).await?.len() as u64)
}

/// Like `insert_batch`, returning the ids that were new.
pub async fn insert_returning<'e, E>(executor: E, batch: &[Citizen]) -> anyhow::Result<Vec<i64>>
where
    E: Executor<'e, Database = Postgres>,
{
    let mut ids = Vec::with_capacity(batch.len());
    let mut names = Vec::with_capacity(batch.len());
    let mut dobs = Vec::with_capacity(batch.len());
    let mut pobs = Vec::with_capacity(batch.len());
    let mut addresses = Vec::with_capacity(batch.len());
    let mut provinces = Vec::with_capacity(batch.len());
    for c in batch {
        ids.push(c.citizen_id);
        names.push(c.full_name.as_str());
        dobs.push(c.dob);
        pobs.push(c.pob.as_str());
        addresses.push(c.permanent_address.as_str());
        provinces.push(c.province.as_str());
    }
    sqlx::query_scalar(
        "INSERT INTO citizens (citizen_id, full_name, dob, pob, permanent_address, province)
         SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::date[], $4::text[], $5::text[], $6::text[])
         ON CONFLICT (citizen_id) DO NOTHING RETURNING citizen_id",
    )
    .bind(&ids)
    .bind(&names)
    .bind(&dobs)
    .bind(&pobs)
    .bind(&addresses)
    .bind(&provinces)
    .fetch_all(executor)
    .await
    .context("inserting citizens")
}
