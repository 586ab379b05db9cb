//! Voters whose ballot the queue has stored, noted in the voter set so a
//! second ballot is refused at once: many ballots' notes in one Redis
//! pipeline, sent while the previous one is out.
//!
//! A note is a courtesy, not the guard. Until it lands, a second ballot is
//! still refused: a keyed one by the reservation its first made, a keyless
//! one by the broker's duplicate window (its message id is the election and
//! the citizen), and any that gets past both by the workers, who record one
//! ballot per voter. So the 202 does not wait for the note; it waits only
//! for the PubAck. Sent together, notes also say less to a Redis reader
//! about when each ballot came.

use tally_platform::redis::{Keys, Redis};
use tally_platform::voters;
use tokio::sync::mpsc;

/// Notes at most this many voters per pipeline.
const PER_PIPELINE: usize = 512;

#[derive(Clone)]
pub struct VoterNotes {
    to_send: mpsc::UnboundedSender<(i64, i64)>,
}

impl VoterNotes {
    /// Starts the sender; it ends when the last `VoterNotes` is dropped,
    /// after sending what was noted.
    pub fn start(redis: Redis, keys: Keys) -> VoterNotes {
        let (to_send, noted) = mpsc::unbounded_channel();
        tokio::spawn(send(redis, keys, noted));
        VoterNotes { to_send }
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

async fn send(redis: Redis, keys: Keys, mut noted: mpsc::UnboundedReceiver<(i64, i64)>) {
    let mut batch = Vec::with_capacity(PER_PIPELINE);
    while noted.recv_many(&mut batch, PER_PIPELINE).await > 0 {
        let mut pipe = redis::pipe();
        voters::queue_voted(&mut pipe, &keys, &batch);
        if let Err(e) = pipe.query_async::<()>(&mut redis.clone()).await {
            // The ballots are safe in the stream; the workers add these
            // voters when they record them.
            tracing::warn!(error = %e, voters = batch.len(), "could not note voters in Redis");
        }
        batch.clear();
    }
}
