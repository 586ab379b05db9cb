//! One voter's proof that their receipt is a leaf of the checkpoint's
//! tree: its place, the tree size and the audit path. Made from
//! `receipts.txt`, checked against the checkpoint's root alone.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use super::checkpoint::Checkpoint;
use super::merkle::{Hash, audit_path, leaf_hash, verify_inclusion};
use super::parse_receipt;

/// As `GET /v1/receipts/{receipt}/proof` answers and `tally record prove` prints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InclusionProof {
    pub election_id: i64,
    pub leaf_index: u64,
    pub tree_size: u64,
    /// Base64 hashes, from the leaf's sibling up to the root's child.
    pub audit_path: Vec<String>,
    /// The signed checkpoint note the path leads to.
    pub checkpoint: String,
}

/// The receipts of `receipts.txt`, in its order; `None` if a line is not a receipt.
pub fn parse_receipts(text: &str) -> Option<Vec<[u8; 16]>> {
    text.lines().map(|line| (line.len() == 32).then(|| parse_receipt(line)).flatten()).collect()
}

/// The proof for `receipt`, or `None` if it is not among `receipts` (sorted).
pub fn prove(
    election_id: i64,
    receipts: &[[u8; 16]],
    receipt: &[u8; 16],
    checkpoint: &str,
) -> Option<InclusionProof> {
    let index = receipts.binary_search(receipt).ok()?;
    let leaves: Vec<Hash> = receipts.iter().map(|r| leaf_hash(r)).collect();
    let path = audit_path(&leaves, index)?;
    Some(InclusionProof {
        election_id,
        leaf_index: index as u64,
        tree_size: leaves.len() as u64,
        audit_path: path.iter().map(|h| STANDARD.encode(h)).collect(),
        checkpoint: checkpoint.to_string(),
    })
}

/// Whether `proof` places `receipt` in the tree of `checkpoint` (the
/// checkpoint's text, its signature already checked by the caller).
pub fn check(proof: &InclusionProof, receipt: &[u8; 16], checkpoint: &Checkpoint) -> bool {
    let path: Option<Vec<Hash>> =
        proof.audit_path.iter().map(|h| STANDARD.decode(h).ok().and_then(|b| b.try_into().ok())).collect();
    let Some(path) = path else { return false };
    proof.tree_size == checkpoint.size
        && verify_inclusion(proof.leaf_index, proof.tree_size, &leaf_hash(receipt), &path, &checkpoint.root)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::merkle::root;

    fn receipts(n: usize) -> Vec<[u8; 16]> {
        let mut all: Vec<[u8; 16]> = (0..n as u32)
            .map(|i| {
                let mut r = [0u8; 16];
                r[..4].copy_from_slice(&i.wrapping_mul(2_654_435_761).to_be_bytes());
                r[15] = 1;
                r
            })
            .collect();
        all.sort_unstable();
        all
    }

    #[test]
    fn the_first_last_and_a_middle_receipt_are_proven_at_every_size() {
        for size in [1usize, 2, 3, 7, 1000] {
            let all = receipts(size);
            let leaves: Vec<Hash> = all.iter().map(|r| leaf_hash(r)).collect();
            let head =
                Checkpoint { origin: "o/tally/election/1".into(), size: size as u64, root: root(&leaves) };
            for index in [0, size / 2, size - 1] {
                let proof = prove(1, &all, &all[index], "").unwrap();
                assert_eq!(proof.leaf_index, index as u64);
                assert!(check(&proof, &all[index], &head), "receipt {index} of {size}");
            }
            let stranger = [0xee; 16];
            assert!(prove(1, &all, &stranger, "").is_none(), "a receipt not in the tree has no proof");
            let borrowed = prove(1, &all, &all[0], "").unwrap();
            assert!(!check(&borrowed, &stranger, &head), "another receipt's proof does not fit it");
        }
    }

    #[test]
    fn receipts_text_is_read_strictly() {
        let text = "00000000000000000000000000000001\n0000000000000000000000000000000f\n";
        assert_eq!(parse_receipts(text).map(|r| r.len()), Some(2));
        assert!(parse_receipts("0000-0000\n").is_none());
    }
}
