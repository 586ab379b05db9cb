//! The election record: what Tally publishes once an election is final,
//! so that anyone can recount it and every voter can find their receipt
//! in it without taking Tally's word (docs/record.md).
//!
//! Pure formats only: the files' contents (`contents`, `build`), the
//! RFC 6962 tree over the receipts (`merkle`, `proof`, and `receipt_tree`,
//! its hashes kept for serving proofs), the C2SP checkpoint and signed
//! notes (`checkpoint`, `note`), the MANIFEST (`manifest`), and the
//! offline check of a whole record (`verify`).
//! Reading Postgres and storing the files is `tally-platform`'s.

pub mod build;
pub mod checkpoint;
pub mod contents;
pub mod manifest;
pub mod merkle;
pub mod note;
pub mod proof;
pub mod receipt_tree;
pub mod verify;

#[cfg(test)]
mod tampering;

use std::collections::BTreeMap;

/// A record's files by name, as stored, served and exported.
pub type Files = BTreeMap<String, Vec<u8>>;

pub const ELECTION: &str = "election.json";
pub const RECEIPTS: &str = "receipts.txt";
pub const TOTALS: &str = "totals.json";
pub const AUDIT: &str = "audit.jsonl";
pub const CHECKPOINT: &str = "checkpoint";
pub const MANIFEST: &str = "MANIFEST";

/// The ballots of post `n`, counted from 1 in `election.json`'s order.
pub fn ballots_file(n: usize) -> String {
    format!("ballots-{n}.csv")
}

/// Whether `name` can be a record file: one of the fixed names or a
/// ballots file. Routes and the CLI serve or read nothing else.
pub fn is_file_name(name: &str) -> bool {
    [ELECTION, RECEIPTS, TOTALS, AUDIT, CHECKPOINT, MANIFEST].contains(&name)
        || name
            .strip_prefix("ballots-")
            .and_then(|n| n.strip_suffix(".csv"))
            .is_some_and(|n| !n.is_empty() && !n.starts_with('0') && n.bytes().all(|b| b.is_ascii_digit()))
}

/// A receipt as the record writes it: 32 lower-case hex characters.
pub fn receipt_hex(receipt: &[u8; 16]) -> String {
    note::hex(receipt)
}

/// A receipt from its 32 hex characters, or from a UUID with dashes.
pub fn parse_receipt(text: &str) -> Option<[u8; 16]> {
    let digits: String = text.trim().chars().filter(|c| *c != '-').collect();
    if digits.len() != 32 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut receipt = [0u8; 16];
    for (i, byte) in receipt.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&digits[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(receipt)
}
