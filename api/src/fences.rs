//! What this API process knows of elections' fences (see
//! `tally_platform::fence`). A fence, once found, never moves: any later
//! one is stored after it. Until one is found, every ballot asks the
//! stream's leader, since the fence may have been stored a moment ago.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tally_platform::{Deps, fence};

#[derive(Clone, Default)]
pub struct Fences {
    known: Arc<Mutex<HashMap<i64, u64>>>,
}

impl Fences {
    /// Whether the broker stored the ballot at `sequence` after the
    /// election's first fence: then it does not count.
    pub async fn is_late(&self, deps: &Deps, election_id: i64, sequence: u64) -> anyhow::Result<bool> {
        if let Some(fence) = self.known.lock().unwrap_or_else(|e| e.into_inner()).get(&election_id) {
            return Ok(sequence > *fence);
        }
        let settings = &deps.settings.nats;
        let votes = fence::votes_stream(&deps.jetstream, settings).await?;
        match fence::first(&votes, settings, election_id).await? {
            Some(fence) => {
                self.known.lock().unwrap_or_else(|e| e.into_inner()).insert(election_id, fence);
                Ok(sequence > fence)
            }
            None => Ok(false),
        }
    }
}
