//! The system's books after a run: what Postgres, Redis and the stream
//! hold, and the checks of every voter's answers against them.
//!
//! Workers hold at least K ballots of an open election and commit only
//! groups of more than K, so a run settles twice: live (the stores and
//! viewers agree, with no more than 2K accepted ballots still held), then,
//! after the election is closed and the held ballots flushed, finally
//! (every accepted ballot recorded and every viewer on the final tally).

use std::collections::{BTreeMap, HashMap, HashSet};

use futures_util::StreamExt;
use serde::Serialize;
use sqlx::PgPool;
use tally_platform::redis::{Keys, Redis};
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
    /// `recorded_receipts` rows of the election.
    pub receipt_rows: i64,
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
        let receipt_rows: i64 =
            sqlx::query_scalar("SELECT count(*) FROM recorded_receipts WHERE election_id = $1")
                .bind(election)
                .fetch_one(db)
                .await?;
        let receipts: Vec<(Uuid, Option<String>)> = sqlx::query_as(
            "SELECT receipt, NULL FROM recorded_receipts WHERE election_id = $1
             UNION ALL SELECT receipt, reason FROM rejected_ballots WHERE election_id = $1",
        )
        .bind(election)
        .fetch_all(db)
        .await?;
        let dead_letters: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters").fetch_one(db).await?;
        let cached = tally_platform::tallies::read(redis, keys, election).await?;
        let recorded_votes: BTreeMap<i64, i64> = runners.into_iter().collect();
        let redis_votes =
            recorded_votes.keys().map(|r| (*r, cached.votes.get(r).copied().unwrap_or(0))).collect();
        Ok(Books {
            roll: roll.into_iter().collect(),
            ballot_box: ballot_box.into_iter().collect(),
            ballot_box_rows,
            receipt_rows,
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
        Books::settle_until(db, redis, keys, election, within, |books| books.settled(logs, &viewers())).await
    }

    /// Reads the books until `done` says so or `within` passes.
    pub async fn settle_until(
        db: &PgPool,
        redis: &Redis,
        keys: &Keys,
        election: i64,
        within: std::time::Duration,
        done: impl Fn(&Books) -> bool,
    ) -> anyhow::Result<Books> {
        let deadline = std::time::Instant::now() + within;
        loop {
            let books = Books::read(db, redis, keys, election).await?;
            if done(&books) || std::time::Instant::now() > deadline {
                return Ok(books);
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }

    /// Whether Postgres's ballot box, its totals and Redis agree.
    fn counts_agree(&self) -> bool {
        self.redis == self.recorded
            && self.ballot_box_rows == self.recorded.turnout
            && self.receipt_rows == self.recorded.turnout
            && self.recorded.votes.iter().all(|(r, n)| self.ballot_box.get(r).copied().unwrap_or(0) == *n)
    }

    /// Accepted ballots (202) whose receipt is neither recorded nor rejected.
    pub fn unresolved(&self, logs: &[VoterLog]) -> usize {
        logs.iter()
            .filter(|log| log.outcome() == Outcome::Accepted)
            .filter_map(|log| log.receipt)
            .filter(|receipt| !self.resolved_receipts.contains_key(receipt))
            .count()
    }

    /// Whether every store and viewer agrees and no accepted ballot waits:
    /// the final state, once the election has ended.
    /// The checks every harness makes once the election is closed: each
    /// viewer on the final tally, Redis equal to Postgres, and every
    /// answer final in time. Returns whether it was final.
    pub fn check_final(
        &self,
        logs: &[VoterLog],
        viewers: &[Option<Seen>],
        within: std::time::Duration,
        violations: &mut Vec<String>,
    ) -> bool {
        let behind = viewers.iter().filter(|seen| seen.as_ref() != Some(&self.recorded)).count();
        if behind > 0 {
            violations.push(format!("{behind} viewers' last tally differs from the final tally"));
        }
        if self.redis != self.recorded {
            violations.push(format!("Redis {:?} differs from Postgres {:?}", self.redis, self.recorded));
        }
        let settled = self.settled(logs, viewers);
        if !settled {
            violations.push(format!("not final within {}s of the close", within.as_secs()));
        }
        settled
    }

    pub fn settled(&self, logs: &[VoterLog], viewers: &[Option<Seen>]) -> bool {
        let nothing_pending = logs
            .iter()
            .filter_map(|log| log.receipt)
            .all(|receipt| self.resolved_receipts.contains_key(&receipt));
        self.counts_agree()
            && nothing_pending
            && viewers.iter().all(|seen| seen.as_ref() == Some(&self.recorded))
    }

    /// The live state while the election is open: stores and viewers
    /// agree, and what is still unrecorded is no more than workers may
    /// hold once quiet (2K: a commit happens as soon as more are held).
    pub fn settled_live(&self, logs: &[VoterLog], viewers: &[Option<Seen>], anonymity_set: usize) -> bool {
        self.counts_agree()
            && self.unresolved(logs) <= 2 * anonymity_set
            && viewers.iter().all(|seen| seen.as_ref() == Some(&self.recorded))
    }
}

/// Voter-roll rows per commit (transaction id) of the election, in commit
/// order: each group is what an insider reading system columns sees.
pub async fn commit_groups(db: &PgPool, election: i64) -> anyhow::Result<Vec<i64>> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM voter_roll WHERE election_id = $1
         GROUP BY xmin::text::bigint ORDER BY xmin::text::bigint",
    )
    .bind(election)
    .fetch_all(db)
    .await?)
}

/// What the stream and the workers' consumer hold: a snapshot for a run
/// that did not settle, to tell where the missing ballots wait.
#[derive(Debug, Default, Serialize)]
pub struct Queue {
    pub stream_messages: u64,
    pub consumer_pending: u64,
    pub consumer_ack_pending: usize,
    pub consumer_redelivered: usize,
    pub consumer_waiting_pulls: usize,
}

pub async fn queue(nats: &tally_platform::config::NatsSettings) -> anyhow::Result<Queue> {
    let js = tally_platform::nats::jetstream(tally_platform::nats::connect(nats).await?, nats);
    let stream_messages = tally_platform::nats::ballots_waiting(&js, nats).await?;
    let info: serde_json::Value =
        js.request(format!("CONSUMER.INFO.{}.{}", nats.stream, nats.consumer), &()).await?;
    let number = |field: &str| info[field].as_u64().unwrap_or(0);
    Ok(Queue {
        stream_messages,
        consumer_pending: number("num_pending"),
        consumer_ack_pending: number("num_ack_pending") as usize,
        consumer_redelivered: number("num_redelivered") as usize,
        consumer_waiting_pulls: number("num_waiting") as usize,
    })
}

/// Counts the messages in the quarantine stream (`<stream>_QUARANTINE`),
/// ballots that no worker could open: every ballot of a run is valid, so
/// any is a violation.
pub async fn note_quarantine(
    report: &mut Accounting,
    nats: &tally_platform::config::NatsSettings,
) -> anyhow::Result<()> {
    let js = tally_platform::nats::jetstream(tally_platform::nats::connect(nats).await?, nats);
    let name = tally_platform::nats::quarantine_stream(nats);
    report.quarantined = match js.get_stream(&name).await {
        Ok(mut stream) => stream.info().await?.state.messages,
        Err(_) => 0,
    };
    if report.quarantined > 0 {
        report.violations.push(format!("{} valid ballots were quarantined", report.quarantined));
    }
    Ok(())
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
    /// Messages set aside in the quarantine stream.
    pub quarantined: u64,
    /// Ballots the run published itself (a newer API's, a poison's
    /// neighbours), accounted for like the voters' 202s.
    pub direct_ballots: usize,
    /// Poison ballots: each must be rejected as `not_registered`.
    pub poison_ballots: usize,
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
        match problem {
            Ok(None) => {}
            Ok(Some(problem)) => report.violations.push(problem),
            Err(e) => report.violations.push(format!("{}: cannot be checked: {e:#}", log.citizen_id)),
        }
    }
    let turnout = books.recorded.turnout;
    if books.roll.len() as i64 != turnout || books.ballot_box_rows != turnout || books.receipt_rows != turnout
    {
        report.violations.push(format!(
            "roll {} / ballot box {} / recorded receipts {} / turnout {turnout} disagree",
            books.roll.len(),
            books.ballot_box_rows,
            books.receipt_rows,
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
            let told = ask(client.get(format!("http://127.0.0.1:{api}/v1/receipts/{receipt}"))).await?;
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
            let told = ask(client
                .get(format!("http://127.0.0.1:{api}/v1/elections/{election}/ballot"))
                .bearer_auth(token))
            .await?;
            (told["voted"].as_bool() != Some(on_roll)).then(|| {
                format!("{who}: uncertain; the API says voted={}, on roll: {on_roll}", told["voted"])
            })
        }
        Outcome::Unsent => None,
    })
}

/// A question the accounting asks the API, asked again after a 429 or a
/// 503 (stores still settling, or the limit on one client address): only
/// a 200's answer is evidence about a voter.
async fn ask(request: reqwest::RequestBuilder) -> anyhow::Result<serde_json::Value> {
    let mut last = String::new();
    for _ in 0..20 {
        let Some(attempt) = request.try_clone() else { anyhow::bail!("a request that cannot be repeated") };
        match attempt.send().await {
            Ok(response) if response.status() == reqwest::StatusCode::OK => {
                return Ok(response.json().await?);
            }
            Ok(response) if matches!(response.status().as_u16(), 429 | 503) => {
                last = format!("status {}", response.status());
            }
            Ok(response) => {
                anyhow::bail!("the API answered {}: {}", response.status(), response.text().await?)
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    anyhow::bail!("no answer after 20 attempts: {last}")
}
