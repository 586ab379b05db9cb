//! A worker process as the model drives it: the real `consume::step` and
//! `consume::on_tick`, or the same round walked stage by stage with the
//! real `Round` and commit stages, so that it can stall or die between
//! any two of them.

use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{AckKind, Message};
use futures_util::StreamExt;
use tally_domain::seal::Opener;
use tally_platform::Deps;
use tally_workers::commit::{Halt, Published, Recorded};
use tally_workers::consume::{Round, on_tick, step};
use tally_workers::hold::Holds;

/// Where a worker stalls or dies in a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Between groups: the batch admitted (held or set apart as decided),
    /// or a group acked and the next not yet taken.
    Ready,
    /// A group's Postgres transaction committed; Redis not yet written.
    Recorded,
    /// Redis written; the group not yet acked.
    Published,
}

/// A round stopped at a stage, with what it was carrying.
enum Stalled {
    Ready(Round),
    Recorded(Round, Recorded),
    Published(Round, Published),
}

impl Stalled {
    fn stage(&self) -> Stage {
        match self {
            Stalled::Ready(_) => Stage::Ready,
            Stalled::Recorded(..) => Stage::Recorded,
            Stalled::Published(..) => Stage::Published,
        }
    }

    /// Every message taken and not acked.
    fn messages(&self) -> Vec<&Message> {
        match self {
            Stalled::Ready(round) => round.messages().collect(),
            Stalled::Recorded(round, group) => round.messages().chain(group.messages()).collect(),
            Stalled::Published(round, group) => round.messages().chain(group.messages()).collect(),
        }
    }
}

/// One worker process: a handle on the durable consumer, its hold, and
/// the round it stalled in, if any.
pub struct Worker {
    consumer: PullConsumer,
    pub holds: Holds,
    stalled: Option<Stalled>,
}

impl Worker {
    pub async fn start(deps: &Deps) -> Worker {
        let consumer = tally_workers::consume::consumer(deps).await.unwrap();
        Worker { consumer, holds: Holds::default(), stalled: None }
    }

    pub fn is_stalled(&self) -> bool {
        self.stalled.is_some()
    }

    /// `consume::step` over what the broker offers now, at most `max`.
    pub async fn step(&mut self, deps: &Deps, opener: &Opener, max: usize) {
        self.resume(deps).await;
        let batch = fetch(&self.consumer, max).await;
        if !batch.is_empty() {
            assert!(step(deps, opener, &mut self.holds, batch).await, "a step failed");
        }
    }

    pub async fn tick(&mut self, deps: &Deps, ack_wait: Duration) {
        self.resume(deps).await;
        assert!(on_tick(deps, &mut self.holds, ack_wait).await, "a tick failed");
    }

    /// A step that stops at the first point where it reaches `at`, and
    /// waits there for `resume` (or dies there).
    pub async fn stall(&mut self, deps: &Deps, opener: &Opener, max: usize, at: Stage) {
        self.resume(deps).await;
        let batch = fetch(&self.consumer, max).await;
        let Some(round) = Round::admit(deps, opener, &mut self.holds, batch).await else {
            panic!("ballots could not be checked against the record")
        };
        self.walk(deps, Stalled::Ready(round), Some(at)).await;
    }

    /// The stalled round goes on to its end, as `consume::step` would.
    pub async fn resume(&mut self, deps: &Deps) {
        if let Some(stalled) = self.stalled.take() {
            self.walk(deps, stalled, None).await;
        }
    }

    /// Walks a round through the real stages in `consume`'s order, until
    /// it ends or reaches `until`.
    async fn walk(&mut self, deps: &Deps, mut now: Stalled, until: Option<Stage>) {
        let holds = &mut self.holds;
        loop {
            if Some(now.stage()) == until {
                self.stalled = Some(now);
                return;
            }
            now = match now {
                Stalled::Ready(mut round) => {
                    let Some(group) = round.next(deps, holds).await.unwrap() else { return };
                    match group.record(deps, holds).await {
                        Ok(recorded) => Stalled::Recorded(round, recorded),
                        Err(Halt::Isolated) => Stalled::Ready(round),
                        Err(Halt::Failed) => panic!("recording a group failed"),
                    }
                }
                Stalled::Recorded(round, recorded) => {
                    Stalled::Published(round, recorded.publish(deps, holds).await.expect("publishing"))
                }
                Stalled::Published(round, published) => {
                    published.ack(holds).await;
                    Stalled::Ready(round)
                }
            };
        }
    }

    /// Dies where it is. Everything it took and never acked goes back to
    /// the broker at once, as the ack wait would send it back later.
    pub async fn crash(mut self) {
        if let Some(stalled) = &self.stalled {
            for message in stalled.messages() {
                // An ack already sent makes this a no-op, as the crash would.
                let _ = message.ack_with(AckKind::Nak(None)).await;
            }
        }
        self.holds.release_all().await;
    }

    /// A graceful stop: the step under way ends first (shutdown is heeded
    /// only between steps), then everything held goes back.
    pub async fn stop(mut self, deps: &Deps) {
        self.resume(deps).await;
        self.holds.release_all().await;
    }
}

/// What the broker offers a worker now, at most `max` messages.
async fn fetch(consumer: &PullConsumer, max: usize) -> Vec<Message> {
    // A waiting pull, not a no-wait one: the broker serves redeliveries
    // (a dead worker's ballots, after the ack wait) only to those.
    let mut fetched =
        consumer.batch().max_messages(max).expires(Duration::from_millis(200)).messages().await.unwrap();
    let mut messages = Vec::new();
    while let Some(Ok(message)) = fetched.next().await {
        messages.push(message);
    }
    messages
}
