//! Voters as a careful client would be: each casts one ballot, retries
//! what may be retried (503, 429, a dropped connection) on the next API
//! process, and every answer is kept so the run can be accounted for.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::schedule::Schedule;
use crate::Latencies;

/// Status recorded for a request that got no HTTP answer at all.
pub const NO_ANSWER: u16 = 0;

/// How ballots are offered.
#[derive(Clone, Copy)]
pub struct Pace {
    /// New voters per second.
    pub rate: u32,
    /// Voters casting at once; beyond it the client waits.
    pub in_flight: usize,
    /// Attempts per voter, the first included.
    pub attempts: usize,
}

/// What every answer looked like, whoever got it.
#[derive(Default)]
pub struct Answers {
    pub latency: Latencies,
    /// 429 and 503 answers that did not say when to come back.
    pub without_retry_after: AtomicU64,
    /// When each uncertain answer (no answer, 5xx) came, and its status:
    /// how long voters saw the system fail, for the HA run's measures.
    pub failed_at: Mutex<Vec<(Instant, u16)>>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct VoterLog {
    pub citizen_id: i64,
    pub runner: i64,
    /// Every answer in order: the HTTP status, or 0 for no answer.
    pub statuses: Vec<u16>,
    pub receipt: Option<Uuid>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Unsent,
    /// 202: the ballot must be recorded exactly once.
    Accepted,
    /// A 4xx with nothing uncertain before it: the ballot must not be recorded.
    Refused,
    /// Only 503s or no answers: it may or may not be recorded.
    Unknown,
    /// 409 after an uncertain attempt: the earlier attempt was stored.
    StoredEarlier,
}

impl VoterLog {
    pub fn outcome(&self) -> Outcome {
        let Some((&last, earlier)) = self.statuses.split_last() else { return Outcome::Unsent };
        let uncertain = earlier.iter().any(|&s| uncertain(s));
        match last {
            202 => Outcome::Accepted,
            409 if uncertain => Outcome::StoredEarlier,
            s if (400..500).contains(&s) && s != 429 && !uncertain => Outcome::Refused,
            _ => Outcome::Unknown,
        }
    }
}

/// An answer after which the ballot may have been stored.
fn uncertain(status: u16) -> bool {
    status == NO_ANSWER || status >= 500
}

fn retryable(status: u16) -> bool {
    uncertain(status) || status == 429
}

/// (citizen id, token, runner) for each provisioned voter, alternating
/// between the two runners.
pub fn ballots(provisioned: &crate::provision::Provisioned, first: i64) -> Vec<(i64, String, i64)> {
    provisioned
        .tokens
        .iter()
        .enumerate()
        .map(|(i, token)| (first + i as i64, token.clone(), provisioned.runners[i % 2]))
        .collect()
}

pub struct Voters {
    pub logs: Arc<Vec<Mutex<VoterLog>>>,
    pub answers: Arc<Answers>,
    tasks: JoinSet<()>,
}

impl Voters {
    /// Starts casting at the pace's rate, one voter after the other, until
    /// every voter has cast or `stop` fires.
    pub fn start(
        apis: Vec<u16>,
        election: i64,
        voters: Vec<(i64, String, i64)>,
        pace: Pace,
        stop: CancellationToken,
    ) -> Voters {
        let logs: Arc<Vec<Mutex<VoterLog>>> = Arc::new(
            voters
                .iter()
                .map(|(citizen_id, _, runner)| {
                    Mutex::new(VoterLog { citizen_id: *citizen_id, runner: *runner, ..Default::default() })
                })
                .collect(),
        );
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        let mut tasks = JoinSet::new();
        let answers = Arc::new(Answers::default());
        let (shared, shared_answers) = (logs.clone(), answers.clone());
        tasks.spawn(async move {
            let in_flight = Arc::new(tokio::sync::Semaphore::new(pace.in_flight));
            let mut casting = JoinSet::new();
            let mut schedule = Schedule::new(pace.rate);
            let mut ticks = tokio::time::interval(schedule.tick());
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let started = Instant::now();
            let mut voters = voters.into_iter().enumerate();
            'casting: loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = ticks.tick() => {}
                }
                for _ in 0..schedule.due(started.elapsed()) {
                    let Some((index, (_, token, runner))) = voters.next() else { break 'casting };
                    let permit = tokio::select! {
                        _ = stop.cancelled() => break 'casting,
                        permit = in_flight.clone().acquire_owned() => match permit {
                            Ok(permit) => permit,
                            Err(_) => break 'casting,
                        },
                    };
                    let (client, apis, logs) = (client.clone(), apis.clone(), shared.clone());
                    let answers = shared_answers.clone();
                    casting.spawn(async move {
                        let ballot =
                            Ballot { election, index, token: &token, runner, attempts: pace.attempts };
                        cast(&client, &apis, ballot, &logs[index], &answers).await;
                        drop(permit);
                    });
                }
            }
            while casting.join_next().await.is_some() {}
        });
        Voters { logs, answers, tasks }
    }

    /// Waits until every ballot started has its final answer.
    pub async fn finish(mut self) -> Vec<VoterLog> {
        while self.tasks.join_next().await.is_some() {}
        self.logs.iter().map(|log| log.lock().unwrap_or_else(|e| e.into_inner()).clone()).collect()
    }
}

struct Ballot<'a> {
    election: i64,
    index: usize,
    token: &'a str,
    runner: i64,
    attempts: usize,
}

async fn cast(
    client: &reqwest::Client,
    apis: &[u16],
    ballot: Ballot<'_>,
    log: &Mutex<VoterLog>,
    answers: &Answers,
) {
    let body = serde_json::json!({ "selections": [ballot.runner] });
    for attempt in 0..ballot.attempts {
        let api = apis[(ballot.index + attempt) % apis.len()];
        let sent = std::time::Instant::now();
        let answer = client
            .post(format!("http://127.0.0.1:{api}/v1/elections/{}/ballots", ballot.election))
            .bearer_auth(ballot.token)
            .json(&body)
            .send()
            .await;
        answers.latency.record(sent.elapsed());
        let (status, retry_after, receipt) = match answer {
            Ok(response) => {
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                let receipt = if status == 202 {
                    response.json::<serde_json::Value>().await.ok().and_then(|v| {
                        v.get("receipt").and_then(|r| r.as_str()).and_then(|r| Uuid::parse_str(r).ok())
                    })
                } else {
                    None
                };
                (status, retry_after, receipt)
            }
            Err(_) => (NO_ANSWER, None, None),
        };
        if uncertain(status) {
            answers.failed_at.lock().unwrap_or_else(|e| e.into_inner()).push((Instant::now(), status));
        }
        if matches!(status, 429 | 503) && retry_after.is_none() {
            answers.without_retry_after.fetch_add(1, Ordering::Relaxed);
        }
        {
            let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
            log.statuses.push(status);
            log.receipt = receipt.or(log.receipt);
        }
        if !retryable(status) {
            return;
        }
        // A real client's back-off: what the server asked for, else growing.
        let wait =
            retry_after.map(Duration::from_secs).unwrap_or(Duration::from_millis(200 * (attempt as u64 + 1)));
        tokio::time::sleep(wait.min(Duration::from_secs(2))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(statuses: &[u16]) -> VoterLog {
        VoterLog { statuses: statuses.to_vec(), ..Default::default() }
    }

    #[test]
    fn outcomes_follow_what_the_client_was_told() {
        assert_eq!(log(&[]).outcome(), Outcome::Unsent);
        assert_eq!(log(&[202]).outcome(), Outcome::Accepted);
        assert_eq!(log(&[503, 0, 202]).outcome(), Outcome::Accepted);
        assert_eq!(log(&[409]).outcome(), Outcome::Refused);
        assert_eq!(log(&[429, 409]).outcome(), Outcome::Refused);
        assert_eq!(log(&[503, 409]).outcome(), Outcome::StoredEarlier);
        assert_eq!(log(&[0, 503]).outcome(), Outcome::Unknown);
        assert_eq!(log(&[0, 422]).outcome(), Outcome::Unknown);
    }
}
