//! `tally seed-demo`: a synthetic registry and one open demo election, so a
//! newcomer has something to vote in. Running it again changes nothing.

use std::fmt;

use anyhow::Context;
use sqlx::PgPool;
use time::OffsetDateTime;

use crate::registry::generate::citizens;
use crate::registry::load::{BATCH, insert_batch};

pub const DEMO_SEED: u64 = 2026;
pub const DEMO_ELECTION: &str = "Demo general election";

pub struct SeedReport {
    pub citizens_added: u64,
    pub election_id: i64,
    pub election_created: bool,
}

impl fmt::Display for SeedReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "demo seeded: {} new citizens; election {} ({})",
            self.citizens_added,
            self.election_id,
            if self.election_created { "created" } else { "already there" }
        )
    }
}

/// Runners of the demo election: (citizen id, post).
const DEMO_RUNNERS: &[(i64, &str)] =
    &[(1, "President"), (2, "President"), (3, "President"), (4, "Senator"), (5, "Senator")];

pub async fn seed_demo(pool: &PgPool, count: u64) -> anyhow::Result<SeedReport> {
    let count = count.max(DEMO_RUNNERS.len() as u64);
    let mut citizens_added = 0;
    let all: Vec<_> = citizens(DEMO_SEED, 1, count).collect();
    for chunk in all.chunks(BATCH) {
        citizens_added += insert_batch(pool, chunk).await?;
    }

    let mut tx = pool.begin().await.context("starting the seed transaction")?;
    // Serialises concurrent seeders so the demo election is made once.
    sqlx::query("SELECT pg_advisory_xact_lock(20261125)").execute(&mut *tx).await?;
    let existing: Option<i64> = sqlx::query_scalar("SELECT election_id FROM elections WHERE name = $1")
        .bind(DEMO_ELECTION)
        .fetch_optional(&mut *tx)
        .await?;
    let (election_id, election_created) = match existing {
        Some(id) => (id, false),
        None => {
            let now = OffsetDateTime::now_utc();
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO elections (name, start_at, end_at, vote_restriction, min_age, results_visibility)
                 VALUES ($1, $2, $3, '@everyone', 18, 'live') RETURNING election_id",
            )
            .bind(DEMO_ELECTION)
            .bind(now)
            .bind(now + time::Duration::days(7))
            .fetch_one(&mut *tx)
            .await
            .context("creating the demo election")?;
            for (citizen_id, post) in DEMO_RUNNERS {
                sqlx::query("INSERT INTO runners (election_id, citizen_id, post) VALUES ($1, $2, $3)")
                    .bind(id)
                    .bind(citizen_id)
                    .bind(post)
                    .execute(&mut *tx)
                    .await
                    .context("adding a demo runner")?;
            }
            (id, true)
        }
    };
    tx.commit().await.context("committing the demo")?;
    Ok(SeedReport { citizens_added, election_id, election_created })
}
