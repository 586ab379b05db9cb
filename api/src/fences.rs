//! What this API process knows of elections' fences (see
//! `tally_platform::fence`). A fence, once found, never moves: any later
//! one is stored after it. Until one is found, every ballot needs an
//! answer from the stream's leader sent after its own ack, since the fence
//! may have been stored a moment ago.
//!
//! One such lookup serves every ballot acked before it was sent: ballots
//! that arrive while a lookup is out wait for the next one. Under load an
//! election costs one lookup per round trip to the leader, not one per
//! ballot, and the rule is kept, since a fence stored before a ballot is
//! visible to any lookup sent after that ballot's ack.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tally_platform::{Deps, fence};
use tokio::sync::oneshot;

type Answer = Result<Option<u64>, Arc<anyhow::Error>>;

#[derive(Clone, Default)]
pub struct Fences {
    known: Arc<Mutex<Known>>,
}

#[derive(Default)]
struct Known {
    found: HashMap<i64, u64>,
    /// Per election, ballots waiting for the next lookup; present while a
    /// lookup task runs for it.
    waiting: HashMap<i64, Vec<oneshot::Sender<Answer>>>,
}

impl Fences {
    /// Whether the broker stored the ballot at `sequence` after the
    /// election's first fence: then it does not count. Call only once the
    /// ballot's ack is in hand.
    pub async fn is_late(&self, deps: &Deps, election_id: i64, sequence: u64) -> anyhow::Result<bool> {
        let (answer, asked) = oneshot::channel();
        {
            let mut known = self.lock();
            if let Some(fence) = known.found.get(&election_id) {
                return Ok(sequence > *fence);
            }
            match known.waiting.get_mut(&election_id) {
                Some(next) => next.push(answer),
                None => {
                    known.waiting.insert(election_id, vec![answer]);
                    tokio::spawn(self.clone().ask(deps.clone(), election_id));
                }
            }
        }
        match asked.await {
            Ok(Ok(fence)) => Ok(fence.is_some_and(|fence| sequence > fence)),
            Ok(Err(e)) => Err(anyhow::anyhow!("{e:#}")),
            Err(_) => Err(anyhow::anyhow!("the fence lookup of election {election_id} stopped")),
        }
    }

    /// Sends one lookup for every ballot waiting when it starts, until none
    /// waits.
    async fn ask(self, deps: Deps, election_id: i64) {
        loop {
            let waiting = {
                let mut known = self.lock();
                match known.waiting.get_mut(&election_id) {
                    Some(next) if !next.is_empty() => std::mem::take(next),
                    _ => {
                        known.waiting.remove(&election_id);
                        return;
                    }
                }
            };
            let answer = lookup(&deps, election_id).await.map_err(Arc::new);
            if let Ok(Some(fence)) = answer {
                self.lock().found.insert(election_id, fence);
            }
            for ballot in waiting {
                // A request that gave up no longer listens.
                let _ = ballot.send(answer.clone());
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }
}

async fn lookup(deps: &Deps, election_id: i64) -> anyhow::Result<Option<u64>> {
    let settings = &deps.settings.nats;
    let votes = fence::votes_stream(&deps.jetstream, settings).await?;
    fence::first(&votes, settings, election_id).await
}
