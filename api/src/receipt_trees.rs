//! Receipt trees of published records, kept per election so that a
//! proof request costs a search and a few hashes, not a pass over every
//! receipt (which for a million receipts takes about a second: a lever for
//! anyone wanting to tie the API up). A record never changes once built,
//! so a tree never goes stale; only a few elections are final at once, so
//! a few trees are kept and the one used longest ago makes room.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

/// Trees kept at most: the records voters are checking at one time.
pub const ELECTIONS_KEPT: usize = 8;

type Slot<T> = Arc<OnceCell<Arc<T>>>;

/// One tree per election, built once per process on first use. Generic
/// so its tests need no database.
pub struct ReceiptTrees<T> {
    kept: usize,
    /// Least recently used first.
    slots: Mutex<VecDeque<(i64, Slot<T>)>>,
}

impl<T> ReceiptTrees<T> {
    pub fn new(kept: usize) -> ReceiptTrees<T> {
        ReceiptTrees { kept: kept.max(1), slots: Mutex::new(VecDeque::new()) }
    }

    /// The election's tree, built by `build` if this process has none.
    /// Requests that arrive while it is being built wait for that one
    /// build. Only a built tree takes a place: an election without a
    /// record yet (a failed build) pushes out none that has one.
    pub async fn get_or_build<E, F, Fut>(&self, election: i64, build: F) -> Result<Arc<T>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let slot = self.slot(election);
        let built = slot.get_or_try_init(|| async { build().await.map(Arc::new) }).await.cloned();
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if built.is_err() {
            slots.retain(|(_, kept)| !Arc::ptr_eq(kept, &slot) || kept.initialized());
        }
        while slots.len() > self.kept {
            let Some(at) = slots.iter().position(|(_, kept)| kept.initialized() && !Arc::ptr_eq(kept, &slot))
            else {
                break;
            };
            slots.remove(at);
        }
        built
    }

    /// The election's slot, moved to the most recently used end.
    fn slot(&self, election: i64) -> Slot<T> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let slot = match slots.iter().position(|(id, _)| *id == election) {
            Some(at) => slots.remove(at).map(|(_, slot)| slot).unwrap_or_default(),
            None => Slot::default(),
        };
        slots.push_back((election, slot.clone()));
        slot
    }

    /// The elections whose trees are kept, least recently used first.
    #[cfg(test)]
    fn elections(&self) -> Vec<i64> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(id, _)| *id).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn a_tree_is_built_once_however_many_ask_at_first() {
        let trees = ReceiptTrees::<u64>::new(2);
        let builds = AtomicUsize::new(0);
        let build = || async {
            builds.fetch_add(1, Ordering::SeqCst);
            tokio::task::yield_now().await;
            Ok::<_, ()>(42)
        };
        let asked = futures_util::future::join_all((0..16).map(|_| trees.get_or_build(1, build))).await;
        let first = asked[0].clone().unwrap();
        assert!(asked.iter().all(|tree| Arc::ptr_eq(tree.as_ref().unwrap(), &first)), "one tree, shared");
        let later = trees.get_or_build(1, build).await.unwrap();
        assert!(Arc::ptr_eq(&later, &first), "later requests get the kept tree");
        assert_eq!(builds.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn the_tree_used_longest_ago_makes_room() {
        let trees = ReceiptTrees::<i64>::new(2);
        let build = |id: i64| async move { Ok::<_, ()>(id) };
        trees.get_or_build(1, || build(1)).await.unwrap();
        trees.get_or_build(2, || build(2)).await.unwrap();
        trees.get_or_build(1, || build(1)).await.unwrap();
        trees.get_or_build(3, || build(3)).await.unwrap();
        assert_eq!(trees.elections(), [1, 3], "2 was used longest ago");
    }

    #[tokio::test]
    async fn an_election_without_a_record_keeps_no_place() {
        let trees = ReceiptTrees::<i64>::new(1);
        trees.get_or_build(1, || async { Ok::<_, &str>(1) }).await.unwrap();
        let refused = trees.get_or_build(2, || async { Err("record_not_ready") }).await;
        assert_eq!(refused.unwrap_err(), "record_not_ready");
        assert_eq!(trees.elections(), [1], "a failed build neither stays nor pushes a tree out");
        let retried = trees.get_or_build(2, || async { Ok::<_, &str>(2) }).await.unwrap();
        assert_eq!(*retried, 2, "it is tried again next time");
        assert_eq!(trees.elections(), [2]);
    }
}
