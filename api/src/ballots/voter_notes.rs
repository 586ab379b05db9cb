//! Voters whose ballot the queue has stored, noted in the voter set so a
//! second ballot is refused at once: many ballots' notes in one Redis
//! pipeline, sent while the previous one is out.
//!
//! A note is a courtesy, not the guard. Until it lands (a Redis round
//! trip, or the end of the pipeline before it), a second ballot is still
//! refused: one with the same Idempotency-Key or none by the broker's
//! duplicate window (its message id names the election and the citizen),
//! one with another key by the reservation a keyed first ballot made, and
//! whatever gets past those by the workers, who record one ballot per
//! voter and reject the other with a reason. The one case left to the
//! workers alone is a keyless ballot followed, within that moment, by a
//! keyed one. So the 202 waits only for the PubAck.

use std::time::Duration;

use tally_platform::redis::{Keys, Redis};
use tally_platform::voters;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Notes at most this many voters per pipeline.
const PER_PIPELINE: usize = 512;
/// How long shutdown waits for the last notes.
const FINISH_WITHIN: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct VoterNotes {
    to_send: mpsc::UnboundedSender<(i64, i64)>,
}

/// The sender's task, to be finished once no request can note any more.
pub struct Sending {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl VoterNotes {
    pub fn start(redis: Redis, keys: Keys) -> (VoterNotes, Sending) {
        let (to_send, noted) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let task = tokio::spawn(send(redis, keys, noted, stop.clone()));
        (VoterNotes { to_send }, Sending { stop, task })
    }

    /// Notes one voter of one election; returns at once.
    pub fn note(&self, election_id: i64, citizen_id: i64) {
        if self.to_send.send((election_id, citizen_id)).is_err() {
            tracing::warn!(
                election_id,
                "the voter notes' sender has stopped; the workers will note the voter"
            );
        }
    }
}

impl Sending {
    /// Sends what is still queued, then stops (at most a few seconds).
    pub async fn finish(self) {
        self.stop.cancel();
        if tokio::time::timeout(FINISH_WITHIN, self.task).await.is_err() {
            tracing::warn!("voter notes still unsent at shutdown; the workers will note those voters");
        }
    }
}

async fn send(
    redis: Redis,
    keys: Keys,
    mut noted: mpsc::UnboundedReceiver<(i64, i64)>,
    stop: CancellationToken,
) {
    let mut batch = Vec::with_capacity(PER_PIPELINE);
    loop {
        tokio::select! {
            received = noted.recv_many(&mut batch, PER_PIPELINE) => if received == 0 { return },
            () = stop.cancelled() => {
                noted.close();
                while noted.recv_many(&mut batch, PER_PIPELINE).await > 0 {
                    pipeline(&redis, &keys, &batch).await;
                    batch.clear();
                }
                return;
            }
        }
        pipeline(&redis, &keys, &batch).await;
        batch.clear();
    }
}

async fn pipeline(redis: &Redis, keys: &Keys, voters: &[(i64, i64)]) {
    let mut pipe = redis::pipe();
    voters::queue_voted(&mut pipe, keys, voters);
    if let Err(e) = pipe.query_async::<()>(&mut redis.clone()).await {
        // The ballots are safe in the stream; the workers add these
        // voters when they record them.
        tracing::warn!(error = %e, voters = voters.len(), "could not note voters in Redis");
    }
}
