//! The Merkle tree of RFC 6962 §2.1 over the sorted receipts, and its
//! inclusion proofs. The same tree Certificate Transparency and Go's
//! checksum database publish, so any of their verifiers can check ours.

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

/// A leaf's hash: the 0x00 prefix keeps a leaf from passing as a node.
pub fn leaf_hash(leaf: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(leaf);
    h.finalize().into()
}

/// An interior node's hash, prefixed 0x01.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The largest power of two smaller than `n` (n > 1): where RFC 6962
/// splits a tree into a full left part and the rest.
pub(crate) fn split(n: usize) -> usize {
    let mut k = 1;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

/// The tree head of `leaves` (already hashed). An empty tree's head is
/// the hash of nothing, as the RFC says.
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => Sha256::digest([]).into(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// The audit path of leaf `index`: the sibling subtree heads from the
/// leaf up to the root (RFC 6962 §2.1.1). `None` for an index outside.
pub fn audit_path(leaves: &[Hash], index: usize) -> Option<Vec<Hash>> {
    if index >= leaves.len() {
        return None;
    }
    let mut path = Vec::new();
    collect_path(leaves, index, &mut path);
    Some(path)
}

fn collect_path(leaves: &[Hash], index: usize, path: &mut Vec<Hash>) {
    if leaves.len() <= 1 {
        return;
    }
    let k = split(leaves.len());
    if index < k {
        collect_path(&leaves[..k], index, path);
        path.push(root(&leaves[k..]));
    } else {
        collect_path(&leaves[k..], index - k, path);
        path.push(root(&leaves[..k]));
    }
}

/// Whether `leaf` sits at `index` in the tree of `size` leaves whose head
/// is `root`, by `path`. It walks the path as RFC 9162 §2.1.3.2 does:
/// the index's bits say on which side each sibling goes.
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, path: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in path {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && r == *root
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n as u32).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    #[test]
    fn the_empty_and_single_trees_follow_the_rfc() {
        // SHA-256 of nothing, as every RFC 6962 implementation has it.
        assert_eq!(hex(&root(&[])), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        let one = leaves(1);
        assert_eq!(root(&one), one[0]);
        assert_eq!(root(&leaves(2)), node_hash(&leaves(2)[0], &leaves(2)[1]));
        let three = leaves(3);
        assert_eq!(root(&three), node_hash(&node_hash(&three[0], &three[1]), &three[2]));
    }

    #[test]
    fn first_last_and_middle_proofs_verify_at_every_size() {
        for size in [1usize, 2, 3, 7, 1000] {
            let tree = leaves(size);
            let head = root(&tree);
            for index in [0, size / 2, size - 1] {
                let path = audit_path(&tree, index).unwrap();
                assert!(
                    verify_inclusion(index as u64, size as u64, &tree[index], &path, &head),
                    "leaf {index} of {size}"
                );
                // The same path says nothing for another leaf or place.
                let stranger = leaf_hash(b"not in the tree");
                assert!(!verify_inclusion(index as u64, size as u64, &stranger, &path, &head));
                if size > 1 {
                    let elsewhere = (index + 1) % size;
                    assert!(!verify_inclusion(elsewhere as u64, size as u64, &tree[index], &path, &head));
                }
            }
        }
    }

    #[test]
    fn an_index_outside_the_tree_has_no_path() {
        assert!(audit_path(&leaves(3), 3).is_none());
        assert!(!verify_inclusion(3, 3, &leaves(3)[0], &[], &root(&leaves(3))));
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}
