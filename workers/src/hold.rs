//! Holding ballots back so that every commit hides each voter among at
//! least K others (the election's anonymity set).
//!
//! A commit pairs voter-roll rows with ballot-box rows by their shared
//! transaction id, so a group is the finest thing an insider can see. A
//! worker therefore keeps at least K ballots of an election uncommitted,
//! and commits only when more than 2K are held, leaving K behind: every
//! group holds more than K ballots. When the election ends, everything
//! held goes at once (at least K, unless the election had fewer).
//!
//! Held ballots stay un-acked in JetStream, kept alive with in-progress
//! acks, so a crash or restart redelivers them and loses nothing. One
//! worker owns an election's held set at a time (a Postgres advisory lock
//! on a connection of its own); other workers hand those ballots back, so
//! two workers cannot each sit on K−1 for ever.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::{AckKind, Message};
use sqlx::{Connection, PgConnection};
use tally_common::ballot::VoteCommand;
use tally_common::election::{Schedule, Status};
use time::OffsetDateTime;

/// How long another worker's ballot waits before the broker offers it again.
const NOT_OURS_DELAY: Duration = Duration::from_millis(500);
/// Advisory-lock keys are election ids under this namespace.
const LOCK_NAMESPACE: i64 = 0x5441_4c4c_0000_0000;

pub struct HeldBallot {
    pub message: Message,
    pub command: VoteCommand,
    stream_sequence: u64,
    kept_alive: Instant,
}

impl HeldBallot {
    pub fn new(message: Message, command: VoteCommand) -> HeldBallot {
        let stream_sequence = message.info().map(|i| i.stream_sequence).unwrap_or(0);
        HeldBallot { message, command, stream_sequence, kept_alive: Instant::now() }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Facts {
    pub anonymity_set: usize,
    pub ended: bool,
}

/// How many of `held` ballots to commit now, oldest first.
pub fn due(held: usize, facts: Option<Facts>) -> usize {
    match facts {
        // Unknown elections are rejected by the recorder; nothing to hide.
        None => held,
        Some(Facts { ended: true, .. }) => held,
        Some(Facts { anonymity_set: k, .. }) if held > 2 * k => held - k,
        Some(_) => 0,
    }
}

#[derive(Default)]
pub struct Holds {
    held: HashMap<i64, VecDeque<HeldBallot>>,
    facts: HashMap<i64, Option<Facts>>,
    owned: HashSet<i64>,
    lock_conn: Option<PgConnection>,
}

impl Holds {
    /// Whether this election already has ballots (and facts) here.
    pub fn knows(&self, election: i64) -> bool {
        self.facts.contains_key(&election)
    }

    pub fn count(&self) -> usize {
        self.held.values().map(VecDeque::len).sum()
    }

    /// Takes a ballot into this worker's hold, or hands it back when
    /// another worker owns its election.
    pub async fn take(&mut self, db_url: &str, ballot: HeldBallot) {
        let election = ballot.command.election_id;
        if !self.own(db_url, election).await {
            if let Err(e) = ballot.message.ack_with(AckKind::Nak(Some(NOT_OURS_DELAY))).await {
                tracing::debug!(error = %e, "hand-back not sent");
            }
            return;
        }
        let redelivered = ballot.message.info().is_ok_and(|i| i.delivered > 1);
        let queue = self.held.entry(election).or_default();
        // A redelivery of a ballot we already hold replaces the old handle.
        if redelivered
            && let Some(existing) = queue.iter_mut().find(|h| h.stream_sequence == ballot.stream_sequence)
        {
            existing.message = ballot.message;
            existing.kept_alive = Instant::now();
            return;
        }
        queue.push_back(ballot);
        metrics::gauge!("tally_ballots_held").set(self.count() as f64);
    }

    async fn own(&mut self, db_url: &str, election: i64) -> bool {
        if self.owned.contains(&election) {
            return true;
        }
        if self.lock_conn.is_none() {
            match PgConnection::connect(db_url).await {
                Ok(conn) => self.lock_conn = Some(conn),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot open the hold-ownership connection");
                    return false;
                }
            }
        }
        let Some(conn) = self.lock_conn.as_mut() else { return false };
        let locked: Result<bool, _> = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(LOCK_NAMESPACE ^ election)
            .fetch_one(conn)
            .await;
        match locked {
            Ok(true) => {
                self.owned.insert(election);
                true
            }
            Ok(false) => false,
            Err(e) => {
                // The connection is gone, and with it every lock we held.
                tracing::warn!(error = %e, "hold-ownership connection lost");
                self.lock_conn = None;
                self.owned.clear();
                false
            }
        }
    }

    /// Re-reads each held election's K and whether it has ended.
    pub async fn refresh(&mut self, db: &sqlx::PgPool) -> anyhow::Result<()> {
        let ids: Vec<i64> = self.held.keys().copied().collect();
        if ids.is_empty() {
            return Ok(());
        }
        type Row =
            (i64, OffsetDateTime, OffsetDateTime, Option<OffsetDateTime>, Option<OffsetDateTime>, i32, bool);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT e.election_id, e.start_at, e.end_at, e.closed_at, e.cancelled_at, e.anonymity_set,
                    EXISTS (SELECT 1 FROM runners r WHERE r.election_id = e.election_id
                            GROUP BY r.post HAVING count(*) >= 2)
             FROM elections e WHERE e.election_id = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(db)
        .await
        .context("reading held elections")?;
        let now = OffsetDateTime::now_utc();
        self.facts = ids.iter().map(|id| (*id, None)).collect();
        for (id, start_at, end_at, closed_at, cancelled_at, k, contested) in rows {
            let status = Schedule { start_at, end_at, closed_at, cancelled_at, contested }.status(now);
            let ended = matches!(status, Status::Closed | Status::Cancelled);
            self.facts.insert(id, Some(Facts { anonymity_set: k.max(1) as usize, ended }));
        }
        Ok(())
    }

    /// The ballots to commit now, taken out of the hold (oldest first).
    /// Elections whose facts are not known yet are left alone.
    pub fn take_due(&mut self) -> Vec<HeldBallot> {
        let mut group = Vec::new();
        for (election, queue) in &mut self.held {
            let Some(facts) = self.facts.get(election) else { continue };
            let n = due(queue.len(), *facts);
            group.extend(queue.drain(..n));
        }
        group
    }

    /// Puts ballots back at the front after a failed commit.
    pub fn restore(&mut self, ballots: Vec<HeldBallot>) {
        for ballot in ballots.into_iter().rev() {
            self.held.entry(ballot.command.election_id).or_default().push_front(ballot);
        }
    }

    /// After a commit: forgets elections that ended and are empty, and
    /// gives up their locks.
    pub async fn settle(&mut self) {
        let finished: Vec<i64> = self
            .held
            .iter()
            .filter(|(id, queue)| {
                queue.is_empty() && !matches!(self.facts.get(*id), Some(Some(f)) if !f.ended)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in finished {
            self.held.remove(&id);
            self.facts.remove(&id);
            if self.owned.remove(&id)
                && let Some(conn) = self.lock_conn.as_mut()
            {
                let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
                    .bind(LOCK_NAMESPACE ^ id)
                    .execute(conn)
                    .await;
            }
        }
        metrics::gauge!("tally_ballots_held").set(self.count() as f64);
    }

    /// Tells the broker we are still working on what we hold, well before
    /// `ack_wait` would redeliver it.
    pub async fn keep_alive(&mut self, ack_wait: Duration) {
        let every = ack_wait / 3;
        let now = Instant::now();
        let mut sends = Vec::new();
        for ballot in self.held.values_mut().flatten() {
            if now.duration_since(ballot.kept_alive) >= every {
                ballot.kept_alive = now;
                sends.push(ballot.message.ack_with(AckKind::Progress));
            }
        }
        for result in futures_util::future::join_all(sends).await {
            if let Err(e) = result {
                tracing::debug!(error = %e, "in-progress ack not sent");
            }
        }
    }

    /// At shutdown: everything held goes back to the broker at once, for
    /// another worker to hold.
    pub async fn release_all(&mut self) {
        let naks: Vec<_> =
            self.held.values().flatten().map(|b| b.message.ack_with(AckKind::Nak(None))).collect();
        futures_util::future::join_all(naks).await;
        self.held.clear();
        self.owned.clear();
        if let Some(conn) = self.lock_conn.take() {
            let _ = conn.close().await;
        }
        metrics::gauge!("tally_ballots_held").set(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(k: usize) -> Option<Facts> {
        Some(Facts { anonymity_set: k, ended: false })
    }

    #[test]
    fn commits_only_the_excess_over_k_once_more_than_2k_are_held() {
        assert_eq!(due(10, open(5)), 0);
        assert_eq!(due(11, open(5)), 6);
        assert_eq!(due(40, open(20)), 0);
        assert_eq!(due(41, open(20)), 21);
        assert_eq!(due(3, Some(Facts { anonymity_set: 5, ended: true })), 3);
        assert_eq!(due(3, None), 3);
    }

    proptest::proptest! {
        #[test]
        fn every_group_before_the_end_exceeds_k_and_leaves_k(k in 2usize..50, arrivals in 1usize..500) {
            let mut held = 0;
            for _ in 0..arrivals {
                held += 1;
                let n = due(held, open(k));
                if n > 0 {
                    proptest::prop_assert!(n > k);
                    proptest::prop_assert_eq!(held - n, k);
                }
                held -= n;
            }
            let last = due(held, Some(Facts { anonymity_set: k, ended: true }));
            proptest::prop_assert!(last >= k.min(arrivals));
        }
    }
}
