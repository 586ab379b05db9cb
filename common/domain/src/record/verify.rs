//! Checking a whole record offline, from its files alone and a verifier
//! key obtained some other way. Each check has a name, and the first that
//! fails is the answer: `tally record verify` prints it.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use super::checkpoint::Checkpoint;
use super::contents::{Definition, Totals};
use super::merkle::{leaf_hash, root};
use super::note::NoteVerifier;
use super::proof::parse_receipts;
use super::{
    AUDIT, CHECKPOINT, ELECTION, Files, MANIFEST, RECEIPTS, TOTALS, ballots_file, manifest, receipt_hex,
};

/// The checks, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// Every file the record must have, and nothing else.
    Files,
    /// MANIFEST signed by the verifier key (name, key id, signature).
    ManifestSignature,
    /// The checkpoint signed by the same key.
    CheckpointSignature,
    /// Every other file hashes to what MANIFEST lists.
    FileHashes,
    /// The checkpoint's origin names this record's election.
    Origin,
    /// `receipts.txt`: 32 hex characters a line, sorted, no repeats.
    Receipts,
    /// The checkpoint's tree size is the number of receipts.
    TreeSize,
    /// The root recomputed from `receipts.txt` is the checkpoint's.
    MerkleRoot,
    /// Every ballots line is a runner of that post, or empty.
    Runners,
    /// A recount of each ballots file equals `totals.json`.
    Recount,
    /// Lines of each ballots file = receipts = turnout = voter-roll rows.
    Counts,
}

impl Check {
    pub fn name(self) -> &'static str {
        match self {
            Check::Files => "files",
            Check::ManifestSignature => "manifest-signature",
            Check::CheckpointSignature => "checkpoint-signature",
            Check::FileHashes => "file-hashes",
            Check::Origin => "origin",
            Check::Receipts => "receipts",
            Check::TreeSize => "tree-size",
            Check::MerkleRoot => "merkle-root",
            Check::Runners => "runners",
            Check::Recount => "recount",
            Check::Counts => "counts",
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct Failure {
    pub check: Check,
    pub detail: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "check `{}` failed: {}", self.check.name(), self.detail)
    }
}

impl std::error::Error for Failure {}

/// What a record that passed every check says.
#[derive(Debug)]
pub struct Verified {
    pub election_id: i64,
    pub ballots: u64,
    pub posts: usize,
    pub checkpoint: Checkpoint,
    pub key_name: String,
}

impl fmt::Display for Verified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "election {} verified: {} ballots over {} posts recount to totals.json, \
             {} receipts under root {} signed by {}",
            self.election_id,
            self.ballots,
            self.posts,
            self.checkpoint.size,
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, self.checkpoint.root),
            self.key_name
        )
    }
}

fn fail<T>(check: Check, detail: impl Into<String>) -> Result<T, Failure> {
    Err(Failure { check, detail: detail.into() })
}

fn text<'f>(files: &'f Files, name: &str, check: Check) -> Result<&'f str, Failure> {
    let bytes = files
        .get(name)
        .ok_or_else(|| Failure { check: Check::Files, detail: format!("{name} is missing") })?;
    std::str::from_utf8(bytes).or_else(|_| fail(check, format!("{name} is not UTF-8")))
}

pub fn verify(files: &Files, key: &NoteVerifier) -> Result<Verified, Failure> {
    let definition: Definition = serde_json::from_str(text(files, ELECTION, Check::Files)?)
        .or_else(|e| fail(Check::Files, format!("{ELECTION} cannot be read: {e}")))?;
    let expected: BTreeMap<String, ()> = [ELECTION, RECEIPTS, TOTALS, AUDIT, CHECKPOINT, MANIFEST]
        .into_iter()
        .map(str::to_string)
        .chain((1..=definition.posts.len()).map(ballots_file))
        .map(|name| (name, ()))
        .collect();
    for name in expected.keys() {
        if !files.contains_key(name) {
            return fail(Check::Files, format!("{name} is missing"));
        }
    }
    if let Some(extra) = files.keys().find(|name| !expected.contains_key(*name)) {
        return fail(Check::Files, format!("{extra} is not part of a record"));
    }

    let manifest_text = key
        .open(text(files, MANIFEST, Check::ManifestSignature)?)
        .or_else(|e| fail(Check::ManifestSignature, e.to_string()))?;
    let checkpoint_text = key
        .open(text(files, CHECKPOINT, Check::CheckpointSignature)?)
        .or_else(|e| fail(Check::CheckpointSignature, e.to_string()))?;

    let listed = manifest::parse(manifest_text).or_else(|e| fail(Check::FileHashes, e))?;
    for name in expected.keys().filter(|name| *name != MANIFEST) {
        let Some(hash) = listed.get(name) else {
            return fail(Check::FileHashes, format!("MANIFEST does not list {name}"));
        };
        if *hash != manifest::sha256_hex(&files[name]) {
            return fail(Check::FileHashes, format!("{name} does not hash to what MANIFEST lists"));
        }
    }
    if let Some(extra) = listed.keys().find(|name| !expected.contains_key(*name) || *name == MANIFEST) {
        return fail(Check::FileHashes, format!("MANIFEST lists {extra}, which is not part of the record"));
    }

    let checkpoint = Checkpoint::parse(checkpoint_text).or_else(|e| fail(Check::Origin, e))?;
    if checkpoint.election_id() != Some(definition.election_id) {
        return fail(
            Check::Origin,
            format!(
                "the checkpoint's origin {} is not election {}",
                checkpoint.origin, definition.election_id
            ),
        );
    }

    let receipts_text = text(files, RECEIPTS, Check::Receipts)?;
    let receipts = parse_receipts(receipts_text).ok_or_else(|| Failure {
        check: Check::Receipts,
        detail: "a line is not 32 hex characters".into(),
    })?;
    if receipts.windows(2).any(|w| w[0] >= w[1]) {
        return fail(Check::Receipts, "receipts are not sorted, or one repeats");
    }
    if receipts.iter().map(|r| format!("{}\n", receipt_hex(r))).collect::<String>() != receipts_text {
        return fail(Check::Receipts, "receipts are not written as 32 lower-case hex characters a line");
    }
    if checkpoint.size != receipts.len() as u64 {
        return fail(
            Check::TreeSize,
            format!("the checkpoint says {} leaves, receipts.txt has {}", checkpoint.size, receipts.len()),
        );
    }
    let leaves: Vec<_> = receipts.iter().map(|r| leaf_hash(r)).collect();
    if root(&leaves) != checkpoint.root {
        return fail(Check::MerkleRoot, "the root of receipts.txt is not the checkpoint's");
    }

    let totals: Totals = serde_json::from_str(text(files, TOTALS, Check::Recount)?)
        .or_else(|e| fail(Check::Recount, format!("{TOTALS} cannot be read: {e}")))?;
    let counted = recount(files, &definition)?;
    compare(&definition, &totals, &counted)?;
    let n = receipts.len() as i64;
    for (post, (lines, _)) in definition.posts.iter().zip(&counted) {
        if *lines != n {
            return fail(Check::Counts, format!("post {}: {lines} ballots, but {n} receipts", post.post));
        }
    }
    if totals.turnout != n || totals.voter_roll != n {
        return fail(
            Check::Counts,
            format!("{n} receipts, turnout {}, voter roll {}", totals.turnout, totals.voter_roll),
        );
    }
    Ok(Verified {
        election_id: definition.election_id,
        ballots: n as u64,
        posts: definition.posts.len(),
        checkpoint,
        key_name: key.name.clone(),
    })
}

/// One post's ballots file, recounted: its number of lines, and how many
/// name each runner (`None`: abstentions).
type Recounted = (i64, BTreeMap<Option<i64>, i64>);

/// Per post: its number of lines, and the count of each line's value
/// (`None` for an abstention). Fails `runners` on a line that names
/// anybody but a runner of that post.
fn recount(files: &Files, definition: &Definition) -> Result<Vec<Recounted>, Failure> {
    let mut all = Vec::new();
    for (n, post) in definition.posts.iter().enumerate() {
        let name = ballots_file(n + 1);
        let runners: HashSet<i64> = post.runners.iter().map(|r| r.citizen_id).collect();
        let mut counts = BTreeMap::new();
        let content = text(files, &name, Check::Runners)?;
        if !content.is_empty() && !content.ends_with('\n') {
            return fail(Check::Runners, format!("{name} does not end in a newline"));
        }
        let mut lines = 0;
        for line in content.lines() {
            lines += 1;
            let choice = if line.is_empty() {
                None
            } else {
                match line.parse::<i64>() {
                    Ok(id) if runners.contains(&id) && line == id.to_string() => Some(id),
                    _ => {
                        return fail(
                            Check::Runners,
                            format!("{name} line {lines}: {line:?} is not a runner for {}", post.post),
                        );
                    }
                }
            };
            *counts.entry(choice).or_insert(0) += 1;
        }
        all.push((lines, counts));
    }
    Ok(all)
}

fn compare(definition: &Definition, totals: &Totals, counted: &[Recounted]) -> Result<(), Failure> {
    if totals.election_id != definition.election_id || totals.posts.len() != definition.posts.len() {
        return fail(Check::Recount, "totals.json is not for this election's posts");
    }
    for ((post, stated), (_, counts)) in definition.posts.iter().zip(&totals.posts).zip(counted) {
        if stated.post != post.post || stated.runners.len() != post.runners.len() {
            return fail(Check::Recount, format!("totals.json lists other runners for {}", post.post));
        }
        for (runner, total) in post.runners.iter().zip(&stated.runners) {
            let found = counts.get(&Some(runner.citizen_id)).copied().unwrap_or(0);
            if total.citizen_id != runner.citizen_id || total.votes != found {
                return fail(
                    Check::Recount,
                    format!(
                        "{}: runner {} has {found} ballots, totals.json says {}",
                        post.post, runner.citizen_id, total.votes
                    ),
                );
            }
        }
        let abstentions = counts.get(&None).copied().unwrap_or(0);
        if stated.abstentions != abstentions {
            return fail(
                Check::Recount,
                format!("{}: {abstentions} abstentions, totals.json says {}", post.post, stated.abstentions),
            );
        }
    }
    Ok(())
}
