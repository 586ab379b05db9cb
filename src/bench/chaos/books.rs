//! The system's books after a run: what Postgres, Redis and the stream
//! hold, and the checks of every voter's answers against them.

use std::collections::{BTreeMap, HashMap, HashSet};

use futures_util::StreamExt;
use serde::Serialize;
use sqlx::PgPool;
use tally_common::store::{Keys, Redis};
use uuid::Uuid;

use super::audience::Seen;
use super::voters::{Outcome, VoterLog};

/// Everything the stores say about the election.
#[derive(Debug)]
pub struct Books {
    pub roll: HashSet<i64>,
    /// Ballot-box rows per runner.
    pub ballot_box: BTreeMap<i64, i64>,
    pub ballot_box_rows: i64,
    /// `runners.total_votes` and `elections.turnout`.
    pub recorded: Seen,
    pub redis: Seen,
    pub resolved_receipts: HashMap<Uuid, Option<String>>,
    pub dead_letters: i64,
}

impl Books {
    pub async fn read(db: &PgPool, redis: &Redis, keys: &Keys, election: i64) -> anyhow::Result<Books> {
        let roll: Vec<i64> = sqlx::query_scalar("SELECT citizen_id FROM voter_roll WHERE election_id = $1")
            .bind(election)
            .fetch_all(db)
            .await?;
        let ballot_box: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT s, count(*) FROM ballot_box, unnest(selections) AS s WHERE election_id = $1 GROUP BY s",
        )
        .bind(election)
        .fetch_all(db)
        .await?;
        let ballot_box_rows: i64 =
            sqlx::query_scalar("SELECT count(*) FROM ballot_box WHERE election_id = $1")
                .bind(election)
                .fetch_one(db)
                .await?;
        let runners: Vec<(i64, i64)> =
            sqlx::query_as("SELECT citizen_id, total_votes FROM runners WHERE election_id = $1")
                .bind(election)
                .fetch_all(db)
                .await?;
        let turnout: i64 = sqlx::query_scalar("SELECT turnout FROM elections WHERE election_id = $1")
            .bind(election)
            .fetch_one(db)
            .await?;
        let receipts: Vec<(Uuid, Option<String>)> = sqlx::query_as(
            "SELECT receipt, NULL FROM ballot_box WHERE election_id = $1
             UNION ALL SELECT receipt, reason FROM rejected_ballots WHERE election_id = $1",
        )
        .bind(election)
        .fetch_all(db)
        .await?;
        let dead_letters: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters").fetch_one(db).await?;
        let cached = tally_common::tally::read(redis, keys, election).await?;
        let recorded_votes: BTreeMap<i64, i64> = runners.into_iter().collect();
        let redis_votes =
            recorded_votes.keys().map(|r| (*r, cached.votes.get(r).copied().unwrap_or(0))).collect();
        Ok(Books {
            roll: roll.into_iter().collect(),
            ballot_box: ballot_box.into_iter().collect(),
            ballot_box_rows,
            recorded: Seen { turnout, votes: recorded_votes },
            redis: Seen { turnout: cached.turnout, votes: redis_votes },
            resolved_receipts: receipts.into_iter().collect(),
            dead_letters,
        })
    }

    /// Reads the books until they settle (see `settled`) or `within` passes.
    pub async fn settle(
        db: &PgPool,
        redis: &Redis,
        keys: &Keys,
        election: i64,
        logs: &[VoterLog],
        viewers: impl Fn() -> Vec<Option<Seen>>,
        within: std::time::Duration,
    ) -> anyhow::Result<Books> {
        let deadline = std::time::Instant::now() + within;
        loop {
            let books = Books::read(db, redis, keys, election).await?;
            if books.settled(logs, &viewers()) || std::time::Instant::now() > deadline {
                return Ok(books);
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }

    /// Whether every store and viewer agrees and no accepted ballot waits.
    pub fn settled(&self, logs: &[VoterLog], viewers: &[Option<Seen>]) -> bool {
        let counts_agree = self.redis == self.recorded
            && self.ballot_box_rows == self.recorded.turnout
            && self.recorded.votes.iter().all(|(r, n)| self.ballot_box.get(r).copied().unwrap_or(0) == *n);
        let nothing_pending = logs
            .iter()
            .filter_map(|log| log.receipt)
            .all(|receipt| self.resolved_receipts.contains_key(&receipt));
        counts_agree && nothing_pending && viewers.iter().all(|seen| seen.as_ref() == Some(&self.recorded))
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Accounting {
    pub sent: usize,
    pub accepted: usize,
    pub refused: usize,
    pub unknown: usize,
    pub stored_earlier: usize,
    pub recorded: usize,
    pub unknown_recorded: usize,
    pub statuses: BTreeMap<u16, u64>,
    pub violations: Vec<String>,
}

/// Every voter's answers against the books and against what the API
/// itself tells the voter now (receipt status, "have I voted?").
pub async fn account(
    books: &Books,
    logs: &[VoterLog],
    tokens: &[String],
    api: u16,
    election: i64,
) -> anyhow::Result<Accounting> {
    let client = reqwest::Client::new();
    let mut report = Accounting { recorded: books.roll.len(), ..Default::default() };
    let sent: HashSet<i64> =
        logs.iter().filter(|l| l.outcome() != Outcome::Unsent).map(|l| l.citizen_id).collect();
    report.sent = sent.len();
    for stranger in books.roll.difference(&sent) {
        report.violations.push(format!("citizen {stranger} is on the roll but never voted"));
    }
    let checks = futures_util::stream::iter(logs.iter().zip(tokens).filter(|(l, _)| !l.statuses.is_empty()))
        .map(|(log, token)| check_voter(&client, books, log, token, api, election))
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    for (log, problem) in logs.iter().filter(|l| !l.statuses.is_empty()).zip(checks) {
        for status in &log.statuses {
            *report.statuses.entry(*status).or_default() += 1;
        }
        match log.outcome() {
            Outcome::Accepted => report.accepted += 1,
            Outcome::Refused => report.refused += 1,
            Outcome::StoredEarlier => report.stored_earlier += 1,
            Outcome::Unknown => {
                report.unknown += 1;
                report.unknown_recorded += usize::from(books.roll.contains(&log.citizen_id));
            }
            Outcome::Unsent => {}
        }
        if let Some(problem) = problem? {
            report.violations.push(problem);
        }
    }
    if books.roll.len() as i64 != books.recorded.turnout || books.ballot_box_rows != books.recorded.turnout {
        report.violations.push(format!(
            "roll {} / ballot box {} / turnout {} disagree",
            books.roll.len(),
            books.ballot_box_rows,
            books.recorded.turnout
        ));
    }
    if books.dead_letters != 0 {
        report.violations.push(format!("{} dead letters from valid ballots", books.dead_letters));
    }
    // 502 and 504 come from a proxy whose upstream died mid-request; 503
    // is Tally's own "retry later". Anything else in 5xx is a fault.
    for status in report.statuses.keys().filter(|s| **s >= 500 && !matches!(**s, 502..=504)) {
        report.violations.push(format!("the API answered {status}"));
    }
    Ok(report)
}

async fn check_voter(
    client: &reqwest::Client,
    books: &Books,
    log: &VoterLog,
    token: &str,
    api: u16,
    election: i64,
) -> anyhow::Result<Option<String>> {
    let on_roll = books.roll.contains(&log.citizen_id);
    let who = log.citizen_id;
    Ok(match log.outcome() {
        Outcome::Accepted => {
            let Some(receipt) = log.receipt else { return Ok(Some(format!("{who}: 202 without a receipt"))) };
            let told: serde_json::Value = client
                .get(format!("http://127.0.0.1:{api}/v1/receipts/{receipt}"))
                .send()
                .await?
                .json()
                .await?;
            let status = told["status"].as_str().unwrap_or("missing");
            let earlier_uncertain = log.statuses.len() > 1;
            match (status, on_roll) {
                ("recorded", true) => None,
                // Its first, uncertain attempt was the one recorded.
                ("rejected", true) if earlier_uncertain && told["reason"] == "already_voted" => None,
                _ => Some(format!("{who}: accepted, receipt says {status}, on roll: {on_roll}")),
            }
        }
        Outcome::Refused => on_roll.then(|| format!("{who}: refused ({:?}) yet on the roll", log.statuses)),
        Outcome::StoredEarlier => (!on_roll).then(|| format!("{who}: told already voted, not on the roll")),
        Outcome::Unknown => {
            let told: serde_json::Value = client
                .get(format!("http://127.0.0.1:{api}/v1/elections/{election}/ballot"))
                .bearer_auth(token)
                .send()
                .await?
                .json()
                .await?;
            (told["voted"].as_bool() != Some(on_roll)).then(|| {
                format!("{who}: uncertain; the API says voted={}, on roll: {on_roll}", told["voted"])
            })
        }
        Outcome::Unsent => None,
    })
}
