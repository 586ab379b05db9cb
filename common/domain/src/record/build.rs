//! Building a record from what Postgres holds of a final election. The
//! ballots are split by post and each post's file is shuffled on its own,
//! so no line of one file lines up with a line of another, or with a
//! receipt: whole ballots would fingerprint a voter to a coercer.

use std::collections::{BTreeMap, HashMap};

use rand::RngCore;
use rand::seq::SliceRandom;
use time::format_description::well_known::Rfc3339;

use super::checkpoint::{Checkpoint, origin};
use super::contents::{Candidate, Definition, Post, PostTotals, RunnerTotal, Totals};
use super::merkle::{leaf_hash, root};
use super::note::{NoteError, NoteSigner};
use super::{
    AUDIT, CHECKPOINT, ELECTION, Files, MANIFEST, RECEIPTS, TOTALS, ballots_file, manifest, receipt_hex,
};
use crate::election::Election;

/// Everything a record is made of, read in one snapshot.
pub struct Recorded<'a> {
    /// Loaded after its final mark, so its counts are the final ones.
    pub election: &'a Election,
    /// Each recorded ballot's selections (runner citizen ids).
    pub ballots: Vec<Vec<i64>>,
    pub receipts: Vec<[u8; 16]>,
    pub voter_roll: i64,
    pub rejected: BTreeMap<String, i64>,
    /// The audit log's lines, one JSON object each.
    pub audit: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("a recorded ballot chose citizen {0}, who is not a runner")]
    NotARunner(i64),
    #[error("a recorded ballot chose twice for post {0}")]
    TwoForOnePost(String),
    #[error("signing: {0}")]
    Sign(#[from] NoteError),
}

pub fn definition(election: &Election) -> Definition {
    let time = |t: time::OffsetDateTime| t.format(&Rfc3339).unwrap_or_else(|_| t.to_string());
    Definition {
        election_id: election.id,
        name: election.name.clone(),
        start_at: time(election.schedule.start_at),
        end_at: time(election.schedule.end_at),
        closed_at: election.schedule.closed_at.map(time),
        vote_restriction: election.restriction.to_string(),
        min_age: election.min_age,
        anonymity_set: election.anonymity_set,
        results_visibility: election.visibility.as_str().to_string(),
        posts: election
            .posts()
            .into_iter()
            .map(|(post, runners)| Post {
                post: post.to_string(),
                runners: runners
                    .into_iter()
                    .map(|r| Candidate { citizen_id: r.citizen_id, full_name: r.full_name.clone() })
                    .collect(),
            })
            .collect(),
    }
}

/// The record's files, signed by `signer`. `rng` must be a CSPRNG: a
/// predictable shuffle would let whoever predicts it pair the files.
pub fn build(
    recorded: Recorded<'_>,
    public_host: &str,
    signer: &NoteSigner,
    rng: &mut impl RngCore,
) -> Result<Files, BuildError> {
    let election = recorded.election;
    let definition = definition(election);
    let mut files = Files::new();
    let lines = ballot_lines(&definition, &recorded.ballots)?;
    for (n, mut lines) in lines.into_iter().enumerate() {
        lines.shuffle(rng);
        files.insert(ballots_file(n + 1), lines.concat().into_bytes());
    }
    let mut receipts = recorded.receipts;
    receipts.sort_unstable();
    let receipts_text: String = receipts.iter().map(|r| format!("{}\n", receipt_hex(r))).collect();
    files.insert(RECEIPTS.into(), receipts_text.into_bytes());
    files.insert(TOTALS.into(), json(&totals(election, &definition, recorded.voter_roll, recorded.rejected)));
    files.insert(ELECTION.into(), json(&definition));
    files.insert(AUDIT.into(), recorded.audit.into_bytes());
    let leaves: Vec<_> = receipts.iter().map(|r| leaf_hash(r)).collect();
    let checkpoint = Checkpoint {
        origin: origin(public_host, election.id),
        size: receipts.len() as u64,
        root: root(&leaves),
    };
    files.insert(CHECKPOINT.into(), signer.sign(&checkpoint.text())?.into_bytes());
    let manifest = signer.sign(&manifest::text(&files))?;
    files.insert(MANIFEST.into(), manifest.into_bytes());
    Ok(files)
}

/// Per post, one line per ballot: the chosen runner, or empty.
fn ballot_lines(definition: &Definition, ballots: &[Vec<i64>]) -> Result<Vec<Vec<String>>, BuildError> {
    let post_of: HashMap<i64, usize> = definition
        .posts
        .iter()
        .enumerate()
        .flat_map(|(n, post)| post.runners.iter().map(move |r| (r.citizen_id, n)))
        .collect();
    let mut lines = vec![Vec::with_capacity(ballots.len()); definition.posts.len()];
    for ballot in ballots {
        let mut chosen: Vec<Option<i64>> = vec![None; definition.posts.len()];
        for &runner in ballot {
            let n = *post_of.get(&runner).ok_or(BuildError::NotARunner(runner))?;
            if chosen[n].replace(runner).is_some() {
                return Err(BuildError::TwoForOnePost(definition.posts[n].post.clone()));
            }
        }
        for (n, choice) in chosen.into_iter().enumerate() {
            lines[n].push(choice.map_or_else(|| "\n".to_string(), |c| format!("{c}\n")));
        }
    }
    Ok(lines)
}

/// The totals as Postgres's counters have them, not recounted here: the
/// verifier's recount is then a check of those counters.
fn totals(
    election: &Election,
    definition: &Definition,
    voter_roll: i64,
    rejected: BTreeMap<String, i64>,
) -> Totals {
    let votes: HashMap<i64, i64> = election.runners.iter().map(|r| (r.citizen_id, r.total_votes)).collect();
    let posts = definition
        .posts
        .iter()
        .map(|post| {
            let runners: Vec<RunnerTotal> = post
                .runners
                .iter()
                .map(|r| RunnerTotal {
                    citizen_id: r.citizen_id,
                    votes: votes.get(&r.citizen_id).copied().unwrap_or(0),
                })
                .collect();
            let chosen: i64 = runners.iter().map(|r| r.votes).sum();
            PostTotals { post: post.post.clone(), runners, abstentions: election.turnout - chosen }
        })
        .collect();
    Totals { election_id: election.id, turnout: election.turnout, voter_roll, posts, rejected }
}

fn json(value: &impl serde::Serialize) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(value).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}
