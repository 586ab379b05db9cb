//! `tally citizens codes`: issues enrollment codes, as the registry would
//! mail them. A new code replaces the citizen's older one. Only keyed
//! hashes are stored; the codes themselves go to the caller once, and the
//! audit log records that codes were issued, never the codes.

use std::io::Write;

use anyhow::Context;
use sqlx::PgPool;
use tally_domain::enrollment::{EnrollmentKey, new_code};
use tally_platform::audit;

use super::load::BATCH;

/// Fresh codes for `ids`, all or none: every id must be in the registry.
/// Returns `(citizen_id, code)` in the order given.
pub async fn issue(pool: &PgPool, key: &EnrollmentKey, ids: &[i64]) -> anyhow::Result<Vec<(i64, String)>> {
    let mut seen = std::collections::HashSet::new();
    let ids: Vec<i64> = ids.iter().copied().filter(|id| seen.insert(*id)).collect();
    let ids = ids.as_slice();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let known: Vec<i64> = sqlx::query_scalar("SELECT citizen_id FROM citizens WHERE citizen_id = ANY($1)")
        .bind(ids)
        .fetch_all(pool)
        .await
        .context("looking the citizens up")?;
    let unknown: Vec<String> = ids.iter().filter(|id| !known.contains(id)).map(i64::to_string).collect();
    anyhow::ensure!(unknown.is_empty(), "not in the registry: {}; no code issued", unknown.join(","));
    let mut tx = pool.begin().await.context("starting the issue")?;
    let issued = store(&mut tx, key, ids).await?;
    audit(&mut tx, serde_json::json!({"citizen_ids": ids})).await?;
    tx.commit().await.context("saving the codes")?;
    Ok(issued)
}

/// The mailing run: a fresh code for every citizen without an enrolled
/// account (none, or one made before codes), written as `citizen_id,code`
/// lines to `out`, batch by batch. `progress` hears the running count.
/// Returns how many codes were issued.
pub async fn issue_without_account(
    pool: &PgPool,
    key: &EnrollmentKey,
    out: &mut impl Write,
    mut progress: impl FnMut(u64),
) -> anyhow::Result<u64> {
    let mut after = 0_i64;
    let mut issued = 0_u64;
    loop {
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT c.citizen_id FROM citizens c
             LEFT JOIN users u USING (citizen_id)
             WHERE c.citizen_id > $1 AND u.enrolled_at IS NULL
             ORDER BY c.citizen_id LIMIT $2",
        )
        .bind(after)
        .bind(BATCH as i64)
        .fetch_all(pool)
        .await
        .context("listing citizens without an account")?;
        let Some(last) = ids.last() else { break };
        after = *last;
        let mut tx = pool.begin().await.context("starting a batch")?;
        let codes = store(&mut tx, key, &ids).await?;
        tx.commit().await.context("saving a batch of codes")?;
        for (citizen_id, code) in &codes {
            writeln!(out, "{citizen_id},{code}").context("writing the codes")?;
        }
        issued += codes.len() as u64;
        progress(issued);
    }
    out.flush().context("writing the codes")?;
    let mut tx = pool.begin().await?;
    audit(&mut tx, serde_json::json!({"without_account": true, "issued": issued})).await?;
    tx.commit().await.context("recording the mailing run")?;
    Ok(issued)
}

/// How many citizens a mailing run would issue codes to now.
pub async fn without_account(pool: &PgPool) -> anyhow::Result<u64> {
    let count: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM citizens c LEFT JOIN users u USING (citizen_id) WHERE u.enrolled_at IS NULL",
    )
    .fetch_one(pool)
    .await
    .context("counting citizens without an account")?;
    Ok(count.max(0) as u64)
}

async fn store(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    key: &EnrollmentKey,
    ids: &[i64],
) -> anyhow::Result<Vec<(i64, String)>> {
    let mut codes = Vec::with_capacity(ids.len());
    let mut hashes = Vec::with_capacity(ids.len());
    for &citizen_id in ids {
        let code = new_code()?;
        hashes.push(key.hash(citizen_id, &code).context("a fresh code is well formed")?);
        codes.push((citizen_id, code));
    }
    sqlx::query(
        "INSERT INTO enrollment_codes (citizen_id, code_hash)
         SELECT * FROM UNNEST($1::bigint[], $2::bytea[])
         ON CONFLICT (citizen_id) DO UPDATE SET code_hash = EXCLUDED.code_hash, issued_at = now()",
    )
    .bind(ids)
    .bind(&hashes)
    .execute(&mut **tx)
    .await
    .context("storing the codes")?;
    Ok(codes)
}

async fn audit(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    after: serde_json::Value,
) -> anyhow::Result<()> {
    let entry = audit::Entry {
        actor: crate::admin::operator(),
        action: audit::Action::EnrollmentIssue,
        election_id: None,
        before: None,
        after: Some(after),
    };
    audit::record(tx, entry).await
}
