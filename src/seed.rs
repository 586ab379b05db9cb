//! `tally seed-demo`: a synthetic registry, one open demo election, and
//! enrollment codes for a few demo citizens, so a newcomer can sign up and
//! vote. Running it again changes nothing but those citizens' codes.

use std::fmt;

use anyhow::Context;
use sqlx::PgPool;
use tally_domain::election::Restriction;
use tally_domain::enrollment::EnrollmentKey;
use tally_domain::visibility::Visibility;
use tally_platform::elections::{self, NewElection, NewRunner};
use time::OffsetDateTime;

use crate::registry::generate::citizens;
use crate::registry::load::{BATCH, insert_batch};

pub const DEMO_SEED: u64 = 2026;
pub const DEMO_ELECTION: &str = "Demo general election";

pub struct SeedReport {
    pub citizens_added: u64,
    pub election_id: i64,
    pub election_created: bool,
    /// Fresh enrollment codes of the demo citizens without an account.
    pub codes: Vec<(i64, String)>,
}

impl fmt::Display for SeedReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "demo seeded: {} new citizens; election {} ({})",
            self.citizens_added,
            self.election_id,
            if self.election_created { "created" } else { "already there" }
        )?;
        if !self.codes.is_empty() {
            write!(f, "\nenrollment codes to sign up with (citizen_id,code; older ones no longer work):")?;
        }
        for (citizen_id, code) in &self.codes {
            write!(f, "\n{citizen_id},{code}")?;
        }
        Ok(())
    }
}

/// Runners of the demo election: (citizen id, post).
const DEMO_RUNNERS: &[(i64, &str)] =
    &[(1, "President"), (2, "President"), (3, "President"), (4, "Senator"), (5, "Senator")];

/// Citizens whose codes the seed prints, so the Quick start can sign up by
/// hand (42 is the one docs/api.md walks through).
const DEMO_VOTERS: &[i64] = &[42, 43, 44, 45, 46];

pub async fn seed_demo(pool: &PgPool, key: &EnrollmentKey, count: u64) -> anyhow::Result<SeedReport> {
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
            let demo = NewElection {
                name: DEMO_ELECTION.into(),
                start_at: now,
                end_at: now + time::Duration::days(7),
                restriction: Restriction::Everyone,
                min_age: 18,
                visibility: Visibility::Live,
                anonymity_set: None,
                runners: DEMO_RUNNERS
                    .iter()
                    .map(|(citizen_id, post)| NewRunner { citizen_id: *citizen_id, post: (*post).into() })
                    .collect(),
            };
            let id = elections::create(&mut *tx, &demo).await.context("creating the demo election")?;
            (id, true)
        }
    };
    tx.commit().await.context("committing the demo")?;
    let without_account: Vec<i64> = sqlx::query_scalar(
        "SELECT c.citizen_id FROM citizens c LEFT JOIN users u USING (citizen_id)
         WHERE c.citizen_id = ANY($1) AND u.enrolled_at IS NULL ORDER BY c.citizen_id",
    )
    .bind(DEMO_VOTERS)
    .fetch_all(pool)
    .await?;
    let codes = crate::registry::codes::issue(pool, key, &without_account).await?;
    Ok(SeedReport { citizens_added, election_id, election_created, codes })
}
