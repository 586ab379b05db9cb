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
//! acks, so a crash or restart redelivers them and loses nothing (except
//! a ballot the broker itself lost while it was held: see `take`). One
//! worker owns an election's held set at a time (a Postgres advisory lock
//! on a connection of its own); other workers hand those ballots back, so
//! two workers cannot each sit on K−1 for ever.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::{AckKind, Message};
use sqlx::{Connection, PgConnection};
use tally_domain::ballot::VoteCommand;
use tally_platform::Deps;

/// How long another worker's ballot waits before the broker offers it
/// again: 250 to 750 ms, varied by message and delivery so that no two
/// workers fall into step and pass a ballot back and forth for ever.
fn not_ours_delay(message: &Message) -> Duration {
    let (sequence, delivered) =
        message.info().map(|i| (i.stream_sequence, i.delivered as u64)).unwrap_or((0, 0));
    Duration::from_millis(250 + sequence.wrapping_add(delivered).wrapping_mul(7919) % 500)
}
/// After the end, how long beyond the ack wait the flush waits for
/// stragglers: the longest hand-back delay and a tick, with room to spare.
const STRAGGLER_MARGIN: Duration = Duration::from_secs(3);
/// Advisory-lock keys are election ids under this namespace.
const LOCK_NAMESPACE: i64 = 0x5441_4c4c_0000_0000;

pub struct HeldBallot {
    message: Message,
    pub command: VoteCommand,
    stream_sequence: u64,
    kept_alive: Instant,
    /// The broker gave this ballot's sequence to another ballot: its
    /// handle now names that one, so it is never used again (an ack
    /// would settle the other ballot). The ballot is still recorded.
    detached: bool,
}

impl HeldBallot {
    pub fn new(message: Message, command: VoteCommand) -> HeldBallot {
        let stream_sequence = message.info().map(|i| i.stream_sequence).unwrap_or(0);
        HeldBallot { message, command, stream_sequence, kept_alive: Instant::now(), detached: false }
    }

    /// The broker's handle on this ballot, to ack, nak or keep alive;
    /// `None` once the broker has given its sequence to another ballot.
    pub fn handle(&self) -> Option<&Message> {
        (!self.detached).then_some(&self.message)
    }

    /// Where the broker first stored it, to compare with its election's
    /// fence: for a ballot replayed from quarantine, where the original
    /// was stored.
    pub fn stored_at(&self) -> u64 {
        let replayed = self
            .message
            .headers
            .as_ref()
            .and_then(|h| h.get(crate::quarantine::STORED_AT_HEADER))
            .and_then(|v| v.as_str().parse::<u64>().ok());
        replayed.map_or(self.stream_sequence, |first| first.min(self.stream_sequence))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Facts {
    pub anonymity_set: usize,
    pub ended: bool,
    /// Once ended: this election's messages still in the stream, held here
    /// or not (handed back, undelivered, or with a worker that died).
    pub in_stream: usize,
    /// Once ended: whether every straggler has had time to come back (a
    /// dead worker's after the ack wait). The stream's per-subject count
    /// can stay too high after a broker crash; this bounds the wait.
    pub waited_long_enough: bool,
}

/// How many voters to commit now, oldest first, when `voters` distinct
/// citizens are held in `held` messages.
pub fn due(voters: usize, held: usize, facts: Option<Facts>) -> usize {
    match facts {
        // Unknown elections are rejected by the recorder; nothing to hide.
        None => voters,
        // After the end, one flush of everything: it waits until every
        // ballot still in the stream is here, so no straggler is left to
        // make a group of its own.
        Some(Facts { ended: true, in_stream, waited_long_enough, .. })
            if held >= in_stream || waited_long_enough =>
        {
            voters
        }
        Some(Facts { ended: true, .. }) => 0,
        Some(Facts { anonymity_set: k, .. }) if voters > 2 * k => voters - k,
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
    /// Distinct citizens held, summed over elections: what K counts.
    pub fn voters(&self) -> usize {
        self.held.values().map(|q| q.iter().map(|b| b.command.citizen_id).collect::<HashSet<_>>().len()).sum()
    }

    pub fn count(&self) -> usize {
        self.held.values().map(VecDeque::len).sum()
    }

    /// Takes a ballot into this worker's hold, or hands it back when
    /// another worker owns its election.
    pub async fn take(&mut self, db_url: &str, ballot: HeldBallot) {
        let election = ballot.command.election_id;
        if !self.own(db_url, election).await {
            let delay = not_ours_delay(&ballot.message);
            if let Err(e) = ballot.message.ack_with(AckKind::Nak(Some(delay))).await {
                tracing::debug!(error = %e, "hand-back not sent");
            }
            return;
        }
        // A redelivery of a ballot we already hold replaces the old handle.
        // The same sequence with another receipt is another ballot: a broker
        // that lost what it stored (a replica that reset its stream after a
        // partition) numbers new ballots from where its log now ends.
        // Taken for a redelivery, it would be acked and never recorded; and
        // the held ballot's handle now names the new one, so it is detached.
        let (sequence, receipt) = (ballot.stream_sequence, ballot.command.receipt);
        let mut redelivery = None;
        let mut reused = false;
        for held in self.held.values_mut().flatten().filter(|h| h.stream_sequence == sequence) {
            if held.command.receipt == receipt {
                redelivery = Some(held);
                break;
            }
            held.detached = true;
            reused = true;
        }
        if let Some(existing) = redelivery {
            existing.message = ballot.message;
            existing.kept_alive = Instant::now();
            return;
        }
        if reused {
            metrics::counter!("tally_worker_sequences_reused_total").increment(1);
            tracing::warn!(
                election_id = election,
                stream_sequence = sequence,
                "the stream gave a held ballot's sequence to another ballot; both are held, \
                 the older only in this worker's memory"
            );
        }
        let queue = self.held.entry(election).or_default();
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

    /// Re-reads each held election's K, whether it has ended, and once it
    /// has, how many of its messages the stream still holds. An election
    /// ends at its fence (see `tally_platform::fence`), not by a clock: a
    /// ballot stored before the fence still counts, and must not arrive
    /// after the flush to make a group of its own. A cancelled one ends
    /// at its cancellation (its ballots are all rejected).
    pub async fn refresh(&mut self, deps: &Deps) -> anyhow::Result<()> {
        self.check_ownership().await;
        let ids: Vec<i64> = self.held.keys().copied().collect();
        if ids.is_empty() {
            return Ok(());
        }
        let straggling = Duration::from_secs(deps.settings.nats.ack_wait_secs) + STRAGGLER_MARGIN;
        let rows: Vec<(i64, i32, bool, bool)> = sqlx::query_as(
            "SELECT election_id, anonymity_set, ended,
                    COALESCE(ended AND now() - ended_at > make_interval(secs => $2::double precision), false)
             FROM (SELECT election_id, anonymity_set,
                          fence_seq IS NOT NULL OR COALESCE(cancelled_at <= now(), false) AS ended,
                          COALESCE(fenced_at, cancelled_at) AS ended_at
                   FROM elections WHERE election_id = ANY($1)) e",
        )
        .bind(&ids)
        .bind(straggling.as_secs_f64())
        .fetch_all(&deps.db)
        .await
        .context("reading held elections")?;
        let mut facts: HashMap<i64, Option<Facts>> = ids.iter().map(|id| (*id, None)).collect();
        for (id, k, ended, waited_long_enough) in rows {
            let in_stream = if ended { in_stream(deps, id).await? } else { 0 };
            facts.insert(
                id,
                Some(Facts { anonymity_set: k.max(1) as usize, ended, in_stream, waited_long_enough }),
            );
        }
        self.facts = facts;
        Ok(())
    }

    /// The ballots to commit now, taken out of the hold (oldest first).
    /// Groups are counted in voters: a citizen's second ballot (possible
    /// only when the API's voter set was lost) travels with their first
    /// and counts for nothing, so it cannot thin a group. Elections whose
    /// facts are not known yet are left alone.
    pub fn take_due(&mut self) -> Vec<HeldBallot> {
        let mut group = Vec::new();
        for (election, queue) in &mut self.held {
            let Some(facts) = self.facts.get(election) else { continue };
            let voters = queue.iter().map(|b| b.command.citizen_id).collect::<HashSet<_>>().len();
            let n = due(voters, queue.len(), *facts);
            if n == 0 {
                continue;
            }
            let mut going: HashSet<i64> = HashSet::new();
            for ballot in queue.iter() {
                if going.len() == n {
                    break;
                }
                going.insert(ballot.command.citizen_id);
            }
            let (taken, kept): (VecDeque<_>, VecDeque<_>) =
                queue.drain(..).partition(|b| going.contains(&b.command.citizen_id));
            *queue = kept;
            group.extend(taken);
        }
        group
    }

    /// Puts ballots that `take_due` gave out back at the front of the
    /// hold, in their order: their group lost a ballot Postgres refused,
    /// and what is left is judged again against K.
    pub fn restore(&mut self, ballots: Vec<HeldBallot>) {
        for ballot in ballots.into_iter().rev() {
            self.held.entry(ballot.command.election_id).or_default().push_front(ballot);
        }
    }

    /// After a commit: forgets elections that ended and have nothing left,
    /// here or in the stream, and gives up their locks. Until then the
    /// lock is kept, so stragglers come here and join the flush.
    pub async fn settle(&mut self) {
        let finished: Vec<i64> = self
            .held
            .iter()
            .filter(|(id, queue)| {
                queue.is_empty()
                    && match self.facts.get(*id) {
                        Some(None) => true,
                        Some(Some(f)) => f.ended && (f.in_stream == 0 || f.waited_long_enough),
                        None => false,
                    }
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
                if let Some(handle) = ballot.handle() {
                    sends.push(handle.ack_with(AckKind::Progress));
                }
            }
        }
        for result in futures_util::future::join_all(sends).await {
            if let Err(e) = result {
                tracing::debug!(error = %e, "in-progress ack not sent");
            }
        }
    }

    /// Our locks live as long as the lock connection. If it died (Postgres
    /// restarted, say), another worker may own our elections now: what we
    /// hold goes back to the broker, for the new owner.
    async fn check_ownership(&mut self) {
        let Some(conn) = self.lock_conn.as_mut() else {
            if !self.owned.is_empty() {
                self.release_all().await;
            }
            return;
        };
        if self.owned.is_empty() {
            return;
        }
        if let Err(e) = sqlx::query("SELECT 1").execute(conn).await {
            tracing::warn!(error = %e, "hold-ownership connection lost; held ballots handed back");
            self.release_all().await;
        }
    }

    /// At shutdown: everything held goes back to the broker at once, for
    /// another worker to hold.
    pub async fn release_all(&mut self) {
        let detached = self.held.values().flatten().filter(|b| b.detached).count();
        if detached > 0 {
            // The broker lost them; nothing can hand them back.
            tracing::error!(ballots = detached, "ballots the broker lost are dropped at shutdown unrecorded");
        }
        let naks: Vec<_> = self
            .held
            .values()
            .flatten()
            .filter_map(HeldBallot::handle)
            .map(|m| m.ack_with(AckKind::Nak(None)))
            .collect();
        futures_util::future::join_all(naks).await;
        self.held.clear();
        self.owned.clear();
        if let Some(conn) = self.lock_conn.take() {
            let _ = conn.close().await;
        }
        metrics::gauge!("tally_ballots_held").set(0.0);
    }
}

/// Messages of the election still in the stream (a work queue: every one
/// not yet acked).
async fn in_stream(deps: &Deps, election: i64) -> anyhow::Result<usize> {
    let settings = &deps.settings.nats;
    let subject = tally_platform::nats::ballot_subject(settings, election);
    Ok(tally_platform::nats::count_on(&deps.jetstream, &settings.stream, &subject).await? as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(k: usize) -> Option<Facts> {
        Some(Facts { anonymity_set: k, ended: false, in_stream: 0, waited_long_enough: false })
    }

    fn ended(k: usize, in_stream: usize) -> Option<Facts> {
        Some(Facts { anonymity_set: k, ended: true, in_stream, waited_long_enough: false })
    }

    #[test]
    fn commits_only_the_excess_over_k_once_more_than_2k_are_held() {
        assert_eq!(due(10, 10, open(5)), 0);
        assert_eq!(due(11, 11, open(5)), 6);
        assert_eq!(due(40, 40, open(20)), 0);
        assert_eq!(due(41, 41, open(20)), 21);
        assert_eq!(due(10, 14, open(5)), 0, "second ballots do not count");
        assert_eq!(due(3, 3, None), 3);
    }

    #[test]
    fn the_flush_after_the_end_waits_for_every_straggler() {
        assert_eq!(due(3, 3, ended(5, 4)), 0);
        assert_eq!(due(4, 4, ended(5, 4)), 4);
        let late = Some(Facts { waited_long_enough: true, ..ended(5, 9).unwrap() });
        assert_eq!(due(3, 3, late), 3, "but not beyond the ack wait");
    }

    proptest::proptest! {
        #[test]
        fn every_group_before_the_end_exceeds_k_and_leaves_k(k in 2usize..50, arrivals in 1usize..500) {
            let mut held = 0;
            for _ in 0..arrivals {
                held += 1;
                let n = due(held, held, open(k));
                if n > 0 {
                    proptest::prop_assert!(n > k);
                    proptest::prop_assert_eq!(held - n, k);
                }
                held -= n;
            }
            let last = due(held, held, ended(k, held));
            proptest::prop_assert!(last >= k.min(arrivals));
        }
    }
}
