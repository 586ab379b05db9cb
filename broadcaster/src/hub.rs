//! One latest-value feed per watched election. A `watch` channel holds only
//! the newest frame, so a viewer that falls behind skips straight to it
//! instead of queueing stale ones, and fan-out cost does not grow with the
//! vote rate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tally_domain::election::Election;
use tally_domain::lifecycle::Status;
use tally_platform::Deps;
use tally_platform::elections;
use tally_platform::tallies::{self, TallyEvent};
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::frame::{self, Counts, Frame};

/// How often each feed re-evaluates the status (opening, closing, final).
const STATUS_TICK: Duration = Duration::from_secs(1);

pub struct Feed {
    state: Mutex<FeedState>,
    tx: watch::Sender<Arc<Frame>>,
}

struct FeedState {
    election: Arc<Election>,
    counts: Counts,
    status: Status,
    is_final: bool,
}

impl Feed {
    pub fn subscribe(&self) -> watch::Receiver<Arc<Frame>> {
        self.tx.subscribe()
    }

    /// Applies newer counts; older or equal versions are ignored, so what a
    /// viewer receives never goes backwards.
    fn apply(&self, counts: Counts) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if counts.version <= state.counts.version {
            return;
        }
        state.counts = counts;
        self.publish(&state);
    }

    fn publish(&self, state: &FeedState) {
        self.tx.send_replace(Arc::new(frame::build(
            &state.election,
            &state.counts,
            state.status,
            state.is_final,
        )));
    }
}

#[derive(Clone)]
pub struct Hub {
    deps: Deps,
    feeds: Arc<Mutex<HashMap<i64, Arc<Feed>>>>,
    shutdown: CancellationToken,
}

impl Hub {
    pub fn new(deps: Deps, shutdown: CancellationToken) -> Hub {
        Hub { deps, feeds: Arc::default(), shutdown }
    }

    pub fn deps(&self) -> &Deps {
        &self.deps
    }

    /// The election's feed, created (snapshot read from Redis) for its first
    /// viewer. `None` when there is no such election.
    pub async fn feed(&self, election_id: i64) -> anyhow::Result<Option<Arc<Feed>>> {
        if let Some(feed) = self.feeds.lock().unwrap_or_else(|e| e.into_inner()).get(&election_id) {
            return Ok(Some(feed.clone()));
        }
        let Some(election) = elections::load(&self.deps.db, election_id).await? else { return Ok(None) };
        let counts = self.read_counts(&election).await?;
        let now = OffsetDateTime::now_utc();
        let status = election.status(now);
        let is_final = election.is_final(status);
        let state = FeedState { election: Arc::new(election), counts, status, is_final };
        let first = frame::build(&state.election, &state.counts, state.status, state.is_final);
        let created = Arc::new(Feed { state: Mutex::new(state), tx: watch::Sender::new(Arc::new(first)) });
        let (feed, inserted) = {
            let mut feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
            // Another viewer may have created it meanwhile; keep theirs.
            match feeds.get(&election_id) {
                Some(existing) => (existing.clone(), false),
                None => {
                    feeds.insert(election_id, created.clone());
                    (created, true)
                }
            }
        };
        if inserted {
            tokio::spawn(self.clone().watch_status(election_id, feed.clone()));
        }
        Ok(Some(feed))
    }

    /// Counts as Redis holds them; once the election is over and fully
    /// recorded, as Postgres holds them.
    async fn read_counts(&self, election: &Election) -> anyhow::Result<Counts> {
        let snapshot = tallies::read(&self.deps.redis, &self.deps.keys, election.id).await?;
        if snapshot.version >= election.tally_version {
            return Ok(Counts::from(snapshot));
        }
        Ok(Counts::recorded(election))
    }

    /// A tally event from Redis.
    pub fn on_event(&self, event: TallyEvent) {
        let feed = self.feeds.lock().unwrap_or_else(|e| e.into_inner()).get(&event.election_id).cloned();
        if let Some(feed) = feed {
            feed.apply(Counts {
                version: event.version,
                turnout: event.turnout,
                votes: event.votes,
                oldest_accepted_at: event.oldest_accepted_at,
            });
        }
    }

    /// After (re)subscribing: messages may have been missed, so every
    /// watched election's snapshot is read again, on a fresh connection
    /// (the shared one may still be finding out that Redis went away).
    pub async fn resync(&self, conn: &mut (impl redis::aio::ConnectionLike + Send)) {
        let feeds: Vec<(i64, Arc<Feed>)> = self
            .feeds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        for (id, feed) in feeds {
            match tallies::read_with(conn, &self.deps.keys, id).await {
                Ok(snapshot) => feed.apply(Counts::from(snapshot)),
                Err(e) => {
                    tracing::warn!(election_id = id, error = format!("{e:#}"), "re-reading a tally failed")
                }
            }
        }
    }

    /// An admin changed the election (closed, cancelled, runners): reload it.
    pub async fn reload(&self, election_id: i64) {
        let feed = self.feeds.lock().unwrap_or_else(|e| e.into_inner()).get(&election_id).cloned();
        let Some(feed) = feed else { return };
        match elections::load(&self.deps.db, election_id).await {
            Ok(Some(election)) => {
                let mut state = feed.state.lock().unwrap_or_else(|e| e.into_inner());
                state.status = election.status(OffsetDateTime::now_utc());
                state.election = Arc::new(election);
                feed.publish(&state);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(election_id, error = format!("{e:#}"), "reloading an election failed"),
        }
    }

    /// Pushes status changes (opened, closed, final) as the clock moves,
    /// and retires the feed once nobody watches.
    async fn watch_status(self, election_id: i64, feed: Arc<Feed>) {
        let mut ticks = tokio::time::interval(STATUS_TICK);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            if feed.tx.receiver_count() == 0 {
                self.feeds.lock().unwrap_or_else(|e| e.into_inner()).remove(&election_id);
                return;
            }
            let (election, was_final) = {
                let state = feed.state.lock().unwrap_or_else(|e| e.into_inner());
                (state.election.clone(), state.is_final)
            };
            // Until final, the election afresh each tick: a close or the
            // workers' final mark may not have been announced to us.
            let fresh = if was_final {
                None
            } else {
                elections::load(&self.deps.db, election_id).await.ok().flatten().map(Arc::new)
            };
            let election = fresh.clone().unwrap_or(election);
            let status = election.status(OffsetDateTime::now_utc());
            let is_final = was_final || election.is_final(status);
            let mut state = feed.state.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(fresh) = fresh {
                // Final: the recorded totals, straight from Postgres.
                if is_final && fresh.tally_version >= state.counts.version {
                    state.counts = Counts::recorded(&fresh);
                }
                state.election = fresh;
            }
            if status != state.status || is_final != state.is_final {
                state.status = status;
                state.is_final = is_final;
                feed.publish(&state);
            }
        }
    }
}
