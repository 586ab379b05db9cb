//! One fault under load, and what voters and the books saw of it: steady
//! ballots, the fault done and undone, a tail of ballots, then the load
//! stops and the books must agree again (the live accounting: stores and
//! viewers on one tally, at most 2K accepted ballots still held).

use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::faults::{self, Fault, Stores};
use crate::chaos::books::Books;
use crate::chaos::voters::{Outcome, Pace, VoterLog, Voters};
use crate::cluster::Cluster;

#[derive(Serialize)]
pub struct FaultReport {
    pub fault: Fault,
    /// Seconds from the start of the run.
    pub at: f64,
    /// What the store did: who was killed, who took over, when.
    pub detail: Value,
    pub ballots_sent: usize,
    pub accepted: usize,
    /// Answers that were no answer or a 5xx; each is retried.
    pub failed_attempts: usize,
    /// From the first failed attempt to the last: how long voters saw it.
    pub voter_error_seconds: f64,
    /// The same for 503s only: the stores' fault as the API reports it,
    /// apart from the dropped connections of killed API processes.
    pub answered_503: usize,
    pub voter_503_seconds: f64,
    /// Attempts beyond each voter's first.
    pub retries: usize,
    /// From the load stopping until the books agreed.
    pub seconds_to_converge: f64,
    pub converged: bool,
    /// Accepted (202) in this phase yet not recorded at the end; must be 0.
    pub lost: usize,
}

pub struct Load<'a> {
    pub apis: &'a [u16],
    pub election: i64,
    pub pace: Pace,
    pub gap: Duration,
    pub tail: Duration,
}

/// Runs the phase up to the load's stop; its voters' logs are appended to
/// `logs`. The caller settles the books and fills in the convergence.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    fault: Fault,
    round: usize,
    roles: bool,
    load: &Load<'_>,
    voters: Vec<(i64, String, i64)>,
    stores: &mut Stores,
    cluster: &mut Cluster,
    logs: &mut Vec<VoterLog>,
    started: Instant,
) -> anyhow::Result<FaultReport> {
    let stop = CancellationToken::new();
    let voting = Voters::start(load.apis.to_vec(), load.election, voters, load.pace, stop.clone());
    let answers = voting.answers.clone();
    tokio::time::sleep(load.gap).await;
    let at = started.elapsed().as_secs_f64();
    let injected = faults::inject(fault, stores, cluster, round, roles).await;
    // Stop the voters even when the fault went wrong, so the error is reported.
    if injected.is_ok() {
        tokio::time::sleep(load.tail).await;
    }
    stop.cancel();
    let mine = voting.finish().await;
    let detail = injected?;
    logs.extend(mine.iter().cloned());
    let failed = answers.failed_at.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let unavailable: Vec<_> = failed.iter().filter(|(_, status)| *status == 503).cloned().collect();
    Ok(FaultReport {
        fault,
        at,
        detail,
        ballots_sent: mine.iter().filter(|l| l.outcome() != Outcome::Unsent).count(),
        accepted: mine.iter().filter(|l| l.outcome() == Outcome::Accepted).count(),
        failed_attempts: failed.len(),
        voter_error_seconds: window(&failed),
        answered_503: unavailable.len(),
        voter_503_seconds: window(&unavailable),
        retries: mine.iter().map(|l| l.statuses.len().saturating_sub(1)).sum(),
        seconds_to_converge: 0.0,
        converged: false,
        lost: 0,
    })
}

/// Seconds from the first to the last of these answers, to 10 ms.
fn window(answers: &[(Instant, u16)]) -> f64 {
    let first = answers.iter().map(|(t, _)| *t).min();
    let last = answers.iter().map(|(t, _)| *t).max();
    match (first, last) {
        (Some(first), Some(last)) => (last.duration_since(first).as_secs_f64() * 100.0).round() / 100.0,
        _ => 0.0,
    }
}

/// Accepted ballots among `logs` that the final books do not show
/// recorded (nor rejected as a repeat of an earlier, uncertain attempt).
pub fn lost(books: &Books, logs: &[VoterLog]) -> usize {
    logs.iter()
        .filter(|l| l.outcome() == Outcome::Accepted)
        .filter(|l| match l.receipt.and_then(|r| books.resolved_receipts.get(&r)) {
            Some(None) => false,
            Some(Some(reason)) => !(reason == "already_voted" && l.statuses.len() > 1),
            None => true,
        })
        .count()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use uuid::Uuid;

    use super::*;

    fn books(resolved: &[(Uuid, Option<&str>)]) -> Books {
        Books {
            roll: Default::default(),
            ballot_box: Default::default(),
            ballot_box_rows: 0,
            receipt_rows: 0,
            recorded: Default::default(),
            redis: Default::default(),
            resolved_receipts: resolved
                .iter()
                .map(|(r, why)| (*r, why.map(str::to_owned)))
                .collect::<HashMap<_, _>>(),
            dead_letters: 0,
        }
    }

    fn accepted(receipt: Uuid, statuses: &[u16]) -> VoterLog {
        VoterLog { statuses: statuses.to_vec(), receipt: Some(receipt), ..Default::default() }
    }

    #[test]
    fn a_202_is_lost_unless_recorded_or_a_repeat_of_an_uncertain_attempt() {
        let (recorded, repeat, refused, missing) =
            (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let books =
            books(&[(recorded, None), (repeat, Some("already_voted")), (refused, Some("already_voted"))]);
        let logs = [
            accepted(recorded, &[202]),
            accepted(repeat, &[503, 202]),
            accepted(refused, &[202]),
            accepted(missing, &[202]),
        ];
        assert_eq!(lost(&books, &logs), 2);
    }
}
