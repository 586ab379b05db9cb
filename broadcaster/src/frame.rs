//! The message viewers receive, serialised once per change and shared by
//! every viewer of the election.

use bytes::Bytes;
use serde::Serialize;
use std::collections::HashMap;
use tally_domain::election::Election;
use tally_domain::lifecycle::Status;
use time::OffsetDateTime;

/// One snapshot of an election as viewers see it.
#[derive(Debug)]
pub struct Frame {
    pub version: i64,
    /// When the oldest ballot in this version was accepted, for the
    /// accepted-to-viewer delay.
    pub oldest_accepted_at: Option<OffsetDateTime>,
    /// UTF-8 JSON, shared by every viewer: cloning it copies no bytes.
    pub json: Bytes,
}

impl Frame {
    /// The JSON as text, for Server-Sent Events.
    pub fn text(&self) -> &str {
        // The fallback is unreachable: `json` is built from a `String`.
        std::str::from_utf8(&self.json).unwrap_or_default()
    }
}

/// The counts a frame is built from.
#[derive(Clone, Debug, Default)]
pub struct Counts {
    pub version: i64,
    pub turnout: i64,
    pub votes: HashMap<i64, i64>,
    pub oldest_accepted_at: Option<OffsetDateTime>,
}

impl From<tally_platform::tallies::Snapshot> for Counts {
    fn from(s: tally_platform::tallies::Snapshot) -> Counts {
        Counts { version: s.version, turnout: s.turnout, votes: s.votes, oldest_accepted_at: None }
    }
}

impl Counts {
    /// The totals Postgres holds for the election.
    pub fn recorded(election: &Election) -> Counts {
        Counts {
            version: election.tally_version,
            turnout: election.turnout,
            votes: election.runners.iter().map(|r| (r.citizen_id, r.total_votes)).collect(),
            oldest_accepted_at: None,
        }
    }
}

#[derive(Serialize)]
struct Message<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    election_id: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<i64>,
    status: &'static str,
    /// Counts move in steps of more than this many ballots.
    anonymity_set: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    turnout: Option<i64>,
    #[serde(rename = "final")]
    is_final: bool,
    posts: Vec<Post<'a>>,
    #[serde(with = "time::serde::rfc3339")]
    at: OffsetDateTime,
}

#[derive(Serialize)]
struct Post<'a> {
    post: &'a str,
    runners: Vec<Runner<'a>>,
}

#[derive(Serialize)]
struct Runner<'a> {
    citizen_id: i64,
    full_name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    votes: Option<i64>,
}

/// Builds the frame, hiding what `Visibility::shown` hides.
pub fn build(election: &Election, counts: &Counts, status: Status, is_final: bool) -> Frame {
    let shown = election.visibility.shown(status, is_final);
    let show_votes = shown.votes;
    let message = Message {
        kind: "tally",
        election_id: election.id,
        version: shown.version.then_some(counts.version),
        status: status.as_str(),
        anonymity_set: election.anonymity_set,
        turnout: shown.turnout.then_some(counts.turnout),
        is_final,
        posts: election
            .posts()
            .into_iter()
            .map(|(post, runners)| Post {
                post,
                runners: runners
                    .into_iter()
                    .map(|r| Runner {
                        citizen_id: r.citizen_id,
                        full_name: &r.full_name,
                        votes: show_votes.then(|| counts.votes.get(&r.citizen_id).copied().unwrap_or(0)),
                    })
                    .collect(),
            })
            .collect(),
        at: OffsetDateTime::now_utc(),
    };
    Frame {
        version: counts.version,
        oldest_accepted_at: counts.oldest_accepted_at,
        json: Bytes::from(serde_json::to_string(&message).unwrap_or_default()),
    }
}
