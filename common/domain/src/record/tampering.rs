//! A record built here, then changed the ways a dishonest operator or a
//! middleman would: each change is caught, by the check named for it.
//! "Outsider" changes leave the signatures alone (no key); "insider"
//! changes re-sign with the record key, so the deeper checks must catch them.

use std::collections::BTreeMap;

use time::macros::datetime;

use super::build::{Recorded, build};
use super::checkpoint::Checkpoint;
use super::merkle::{leaf_hash, root};
use super::note::NoteSigner;
use super::proof::parse_receipts;
use super::verify::{Check, verify};
use super::*;
use crate::election::{Election, Restriction, Runner};
use crate::lifecycle::Schedule;
use crate::visibility::Visibility;

fn runner(citizen_id: i64, post: &str, total_votes: i64) -> Runner {
    Runner { citizen_id, full_name: format!("Runner {citizen_id}"), post: post.into(), total_votes }
}

/// 40 ballots: President 1 or 2, Treasurer 3, 4 or nobody.
fn ballots() -> Vec<Vec<i64>> {
    (0..40)
        .map(|i| match i % 4 {
            0 => vec![1, 3],
            1 => vec![2, 4],
            2 => vec![1],
            _ => vec![2, 3],
        })
        .collect()
}

fn election() -> Election {
    Election {
        id: 7,
        name: "Board".into(),
        schedule: Schedule {
            start_at: datetime!(2026-06-01 08:00 UTC),
            end_at: datetime!(2026-06-01 20:00 UTC),
            closed_at: None,
            cancelled_at: None,
            contested: true,
        },
        restriction: Restriction::Everyone,
        min_age: 18,
        visibility: Visibility::Live,
        tally_version: 3,
        turnout: 40,
        anonymity_set: 5,
        final_at: Some(datetime!(2026-06-01 20:01 UTC)),
        runners: vec![
            runner(1, "President", 20),
            runner(2, "President", 20),
            runner(3, "Treasurer", 20),
            runner(4, "Treasurer", 10),
        ],
    }
}

fn key() -> NoteSigner {
    NoteSigner::from_seed("vote.example/tally", [9; 32]).unwrap()
}

fn record() -> Files {
    let election = election();
    let receipts = (0..40u8).map(|i| [i.wrapping_mul(37); 16]).collect();
    let recorded = Recorded {
        election: &election,
        ballots: ballots(),
        receipts,
        voter_roll: 40,
        rejected: BTreeMap::from([("already_voted".to_string(), 2)]),
        audit: "{\"action\":\"create_election\"}\n".into(),
    };
    build(recorded, "vote.example", &key(), &mut rand_core::UnwrapErr(rand_core::OsRng)).unwrap()
}

fn text(files: &Files, name: &str) -> String {
    String::from_utf8(files[name].clone()).unwrap()
}

/// What an insider with the key does after changing files: a fresh MANIFEST.
fn resign_manifest(files: &mut Files) {
    files.remove(MANIFEST);
    let manifest = key().sign(&manifest::text(files)).unwrap();
    files.insert(MANIFEST.into(), manifest.into_bytes());
}

fn resign_checkpoint(files: &mut Files, checkpoint: &Checkpoint) {
    files.insert(CHECKPOINT.into(), key().sign(&checkpoint.text()).unwrap().into_bytes());
}

fn failed(files: &Files) -> Check {
    verify(files, &key().verifier()).expect_err("tampering must be caught").check
}

fn open_checkpoint(files: &Files) -> Checkpoint {
    Checkpoint::parse(key().verifier().open(&text(files, CHECKPOINT)).unwrap()).unwrap()
}

#[test]
fn a_built_record_verifies() {
    let files = record();
    let verified = verify(&files, &key().verifier()).unwrap();
    assert_eq!((verified.election_id, verified.ballots, verified.posts), (7, 40, 2));
    assert!(verified.to_string().starts_with("election 7 verified: 40 ballots"));
    assert_eq!(text(&files, CHECKPOINT).lines().next(), Some("vote.example/tally/election/7"));
    assert!(text(&files, MANIFEST).contains(&format!("  {}\n", ballots_file(2))));
}

#[test]
fn one_ballot_changed() {
    let mut files = record();
    let changed = text(&files, &ballots_file(1)).replacen("1\n", "2\n", 1);
    files.insert(ballots_file(1), changed.into_bytes());
    assert_eq!(failed(&files), Check::FileHashes, "outsider");
    resign_manifest(&mut files);
    assert_eq!(failed(&files), Check::Recount, "insider");
}

#[test]
fn one_ballot_dropped_and_the_totals_fixed() {
    let mut files = record();
    let ballots = text(&files, &ballots_file(2));
    let dropped = ballots.lines().position(|l| l == "4").unwrap();
    let kept: String =
        ballots.lines().enumerate().filter(|(i, _)| *i != dropped).map(|(_, l)| format!("{l}\n")).collect();
    files.insert(ballots_file(2), kept.into_bytes());
    let totals = text(&files, TOTALS).replace("\"votes\": 10", "\"votes\": 9");
    files.insert(TOTALS.into(), totals.into_bytes());
    assert_eq!(failed(&files), Check::FileHashes, "outsider");
    resign_manifest(&mut files);
    assert_eq!(failed(&files), Check::Counts, "insider");
}

#[test]
fn a_receipt_removed() {
    let mut files = record();
    let receipts: String = text(&files, RECEIPTS).lines().skip(1).map(|l| format!("{l}\n")).collect();
    files.insert(RECEIPTS.into(), receipts.clone().into_bytes());
    assert_eq!(failed(&files), Check::FileHashes, "outsider");
    resign_manifest(&mut files);
    assert_eq!(failed(&files), Check::TreeSize, "insider, old checkpoint");
    let leaves: Vec<_> = parse_receipts(&receipts).unwrap().iter().map(|r| leaf_hash(r)).collect();
    let checkpoint = Checkpoint { size: leaves.len() as u64, root: root(&leaves), ..open_checkpoint(&files) };
    resign_checkpoint(&mut files, &checkpoint);
    resign_manifest(&mut files);
    assert_eq!(failed(&files), Check::Counts, "insider, checkpoint re-signed");
}

#[test]
fn a_file_replaced() {
    let mut files = record();
    files.insert(AUDIT.into(), b"{\"action\":\"nothing happened\"}\n".to_vec());
    assert_eq!(failed(&files), Check::FileHashes);
}

#[test]
fn the_checkpoint_re_signed_with_another_key() {
    let mut files = record();
    let other = NoteSigner::from_seed("vote.example/tally", [1; 32]).unwrap();
    let note = other.sign(&open_checkpoint(&files).text()).unwrap();
    files.insert(CHECKPOINT.into(), note.into_bytes());
    assert_eq!(failed(&files), Check::CheckpointSignature);
}

#[test]
fn the_tree_size_changed() {
    let mut files = record();
    let edited = text(&files, CHECKPOINT).replacen("\n40\n", "\n41\n", 1);
    files.insert(CHECKPOINT.into(), edited.into_bytes());
    assert_eq!(failed(&files), Check::CheckpointSignature, "outsider");
    let checkpoint = Checkpoint { size: 41, ..open_checkpoint(&record()) };
    resign_checkpoint(&mut files, &checkpoint);
    resign_manifest(&mut files);
    assert_eq!(failed(&files), Check::TreeSize, "insider");
}

#[test]
fn a_line_naming_someone_else_and_a_stray_file() {
    let mut files = record();
    let changed = text(&files, &ballots_file(1)).replacen("1\n", "3\n", 1);
    files.insert(ballots_file(1), changed.into_bytes());
    resign_manifest(&mut files);
    assert_eq!(failed(&files), Check::Runners, "a Treasurer runner on the President's file");
    let mut files = record();
    files.insert("pairs.csv".into(), Vec::new());
    assert_eq!(failed(&files), Check::Files);
}

/// The per-post files are shuffled each on its own: line i of one says
/// nothing about line i of the other. Ballots here choose (1, 3) or
/// (2, 4) together half the time; in step, every line would agree.
#[test]
fn posts_are_shuffled_apart() {
    let election = Election {
        turnout: 400,
        runners: vec![
            runner(1, "President", 200),
            runner(2, "President", 200),
            runner(3, "Treasurer", 200),
            runner(4, "Treasurer", 200),
        ],
        ..election()
    };
    let ballots: Vec<Vec<i64>> = (0..400).map(|i| if i % 2 == 0 { vec![1, 3] } else { vec![2, 4] }).collect();
    let receipts = (0..400u16)
        .map(|i| {
            let mut r = [0; 16];
            r[..2].copy_from_slice(&i.to_be_bytes());
            r
        })
        .collect();
    let recorded = Recorded {
        election: &election,
        ballots,
        receipts,
        voter_roll: 400,
        rejected: BTreeMap::new(),
        audit: String::new(),
    };
    let files = build(recorded, "vote.example", &key(), &mut rand_core::UnwrapErr(rand_core::OsRng)).unwrap();
    let (first, second) = (text(&files, &ballots_file(1)), text(&files, &ballots_file(2)));
    let in_step = first.lines().zip(second.lines()).filter(|(a, b)| (*a == "1") == (*b == "3")).count();
    // Independent shuffles agree on about half the lines; 300 of 400 is
    // about ten standard deviations away.
    assert!(in_step < 300, "{in_step} of 400 lines still pair the posts");
}
