//! Synthetic voters for load: citizens with accounts and pre-issued
//! tokens (see `kit`), and an open election with the two bench runners.

use sqlx::PgPool;
use tally_platform::Settings;

use crate::kit::{self, ElectionSpec, Residence};

pub const RUNNERS: [i64; 2] = [990_000_001, 990_000_002];
/// Bench voters' ids start here, far from demo and registry ids.
pub const FIRST_VOTER: i64 = 800_000_000;

/// Printed as JSON by `tally-bench provision` for k6 and
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
    let voters = kit::add_voters(&db, settings, first..first + voters as i64, &Residence::default()).await?;
    let anonymity_set = settings.workers.anonymity_set;
    let election_id = open_election(&db, "Benchmark election", anonymity_set).await?;
    let tokens = voters.into_iter().map(|voter| voter.token).collect();
    Ok(Provisioned { election_id, runners: RUNNERS.to_vec(), tokens, anonymity_set })
}

/// An open election for a day with the two bench runners and anonymity set `k`.
pub async fn open_election(db: &PgPool, name: &str, k: i32) -> anyhow::Result<i64> {
    let spec = ElectionSpec {
        name: name.into(),
        anonymity_set: k,
        post: "Chair".into(),
        runners: RUNNERS.to_vec(),
        ..ElectionSpec::default()
    };
    kit::insert_election(db, &spec).await
}
