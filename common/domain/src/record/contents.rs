//! What `election.json` and `totals.json` hold, written by `build` and
//! read back by `verify`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `election.json`: the election as it was defined, posts in the order
/// the ballots files are numbered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Definition {
    pub election_id: i64,
    pub name: String,
    pub start_at: String,
    pub end_at: String,
    /// An administrator's early close, if there was one.
    pub closed_at: Option<String>,
    pub vote_restriction: String,
    pub min_age: i16,
    /// K: the smallest group of ballots the workers recorded together.
    pub anonymity_set: i32,
    pub results_visibility: String,
    pub posts: Vec<Post>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Post {
    pub post: String,
    pub runners: Vec<Candidate>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    pub citizen_id: i64,
    pub full_name: String,
}

/// `totals.json`: the counts Tally announced, which a recount of the
/// ballots files must reproduce.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub election_id: i64,
    /// Recorded ballots.
    pub turnout: i64,
    /// Rows of the voter roll: who voted, counted apart from the ballots.
    pub voter_roll: i64,
    pub posts: Vec<PostTotals>,
    /// Ballots the workers refused, by the reason on their receipts.
    pub rejected: BTreeMap<String, i64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostTotals {
    pub post: String,
    pub runners: Vec<RunnerTotal>,
    /// Ballots that chose nobody for this post.
    pub abstentions: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerTotal {
    pub citizen_id: i64,
    pub votes: i64,
}
