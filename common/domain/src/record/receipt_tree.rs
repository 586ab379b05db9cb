//! An election's receipt tree kept in memory, so that serving a voter's
//! proof costs a search and a few hashes instead of hashing every
//! receipt again: a published record never changes, so neither does its
//! tree. Its proofs are `proof::prove`'s, byte for byte.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::merkle::{Hash, leaf_hash, node_hash, root, split};
use super::proof::InclusionProof;

/// Levels below this are hashed again on demand: at most 2^LOW - 1
/// nodes per proof, while keeping them would cost more memory than the
/// receipts themselves.
const LOW: u32 = 4;

/// The sorted receipts of one record, the heads of its complete aligned
/// subtrees of 2^LOW leaves and more, and the checkpoint they lead to.
pub struct ReceiptTree {
    election_id: i64,
    /// Sorted, as in `receipts.txt`: a receipt's leaf index is its place.
    receipts: Vec<[u8; 16]>,
    /// `levels[j][i]`: the head of leaves `[i·2^(LOW+j), (i+1)·2^(LOW+j))`.
    levels: Vec<Vec<Hash>>,
    checkpoint: String,
}

impl ReceiptTree {
    /// Hashes the whole tree once. `receipts` must be sorted, as
    /// `receipts.txt` holds them.
    pub fn new(election_id: i64, receipts: Vec<[u8; 16]>, checkpoint: String) -> ReceiptTree {
        let full = 1usize << LOW;
        let mut level: Vec<Hash> = receipts
            .chunks_exact(full)
            .map(|chunk| root(&chunk.iter().map(|r| leaf_hash(r)).collect::<Vec<_>>()))
            .collect();
        let mut levels = Vec::new();
        while !level.is_empty() {
            let up = level.chunks_exact(2).map(|pair| node_hash(&pair[0], &pair[1])).collect();
            levels.push(std::mem::replace(&mut level, up));
        }
        ReceiptTree { election_id, receipts, levels, checkpoint }
    }

    /// The proof for `receipt`, or `None` if it is not a leaf.
    pub fn prove(&self, receipt: &[u8; 16]) -> Option<InclusionProof> {
        let index = self.receipts.binary_search(receipt).ok()?;
        let mut path = Vec::new();
        self.collect_path(0, self.receipts.len(), index, &mut path);
        Some(InclusionProof {
            election_id: self.election_id,
            leaf_index: index as u64,
            tree_size: self.receipts.len() as u64,
            audit_path: path.iter().map(|h| STANDARD.encode(h)).collect(),
            checkpoint: self.checkpoint.clone(),
        })
    }

    /// RFC 6962 §2.1.1's PATH(index, D[start:start+size]), siblings
    /// first to last.
    fn collect_path(&self, start: usize, size: usize, index: usize, path: &mut Vec<Hash>) {
        if size <= 1 {
            return;
        }
        let k = split(size);
        if index < k {
            self.collect_path(start, k, index, path);
            path.push(self.head(start + k, size - k));
        } else {
            self.collect_path(start + k, size - k, index - k, path);
            path.push(self.head(start, k));
        }
    }

    /// MTH(D[start:start+size]) of a subtree of the RFC's split. Each
    /// such subtree starts at a multiple of the largest power of two not
    /// above its size, so a full one is a stored head once large enough.
    fn head(&self, start: usize, size: usize) -> Hash {
        if size.is_power_of_two() && size.trailing_zeros() >= LOW {
            let j = (size.trailing_zeros() - LOW) as usize;
            return self.levels[j][start >> size.trailing_zeros()];
        }
        if size < 1 << LOW {
            let leaves: Vec<Hash> = self.receipts[start..start + size].iter().map(|r| leaf_hash(r)).collect();
            return root(&leaves);
        }
        let k = split(size);
        node_hash(&self.head(start, k), &self.head(start + k, size - k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::proof::prove;

    fn receipts(n: usize) -> Vec<[u8; 16]> {
        let mut all: Vec<[u8; 16]> = (0..n as u32)
            .map(|i| {
                let mut r = [0u8; 16];
                r[..4].copy_from_slice(&i.wrapping_mul(2_654_435_761).to_be_bytes());
                r
            })
            .collect();
        all.sort_unstable();
        all
    }

    #[test]
    fn every_proof_is_the_one_hashed_from_scratch() {
        let sizes = (1..=70).chain([127, 128, 129, 255, 256, 257, 1000, 1025]);
        for size in sizes {
            let all = receipts(size);
            let tree = ReceiptTree::new(7, all.clone(), format!("checkpoint {size}\n"));
            for (index, receipt) in all.iter().enumerate() {
                let expected = prove(7, &all, receipt, &format!("checkpoint {size}\n"));
                assert_eq!(tree.prove(receipt), expected, "receipt {index} of {size}");
            }
            assert!(tree.prove(&[0xee; 16]).is_none(), "a receipt not in the tree has no proof");
        }
    }

    #[test]
    fn an_empty_record_proves_nothing() {
        assert!(ReceiptTree::new(1, Vec::new(), String::new()).prove(&[0; 16]).is_none());
    }
}
