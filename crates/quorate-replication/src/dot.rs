//! Dots and causal contexts: the bookkeeping of the add-wins set, the multi-value register and
//! the OR-map (Almeida, Shoker, Baquero, "Delta State Replicated Data Types", 2018).
// tidy:pure-core

use std::collections::{BTreeMap, BTreeSet};

use quorate_types::NodeId;
use serde::{Deserialize, Serialize};

/// One event: the `counter`-th write made by `node`. Counters start at 1.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    /// The replica that made the write.
    pub node: NodeId,
    /// Its sequence number at that replica, from 1.
    pub counter: u64,
}

/// The set of dots a replica has seen: a version vector (every dot up to a counter, per node)
/// plus a cloud of dots seen out of order. Seen-but-absent dots are the tombstones of the
/// dotted types: a dot in the context but not in the data was removed.
///
/// The cloud folds into the vector as soon as its gaps fill ([`CausalContext::compact`], run by
/// every merge), so a context that has received every delta is one counter per writer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CausalContext {
    vv: BTreeMap<NodeId, u64>,
    cloud: BTreeSet<Dot>,
}

impl CausalContext {
    /// An empty context.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `dot` has been seen.
    pub fn contains(&self, dot: &Dot) -> bool {
        self.vv.get(&dot.node).is_some_and(|&c| dot.counter <= c) || self.cloud.contains(dot)
    }

    /// The next dot for `node` (one past the highest counter seen from it). Does not record it.
    pub fn next_dot(&self, node: &NodeId) -> Dot {
        let top_vv = self.vv.get(node).copied().unwrap_or(0);
        let top_cloud = self
            .cloud
            .iter()
            .filter(|d| &d.node == node)
            .map(|d| d.counter)
            .max()
            .unwrap_or(0);
        Dot {
            node: node.clone(),
            counter: top_vv.max(top_cloud).saturating_add(1),
        }
    }

    /// Records `dot` as seen.
    pub fn insert(&mut self, dot: Dot) {
        if !self.contains(&dot) {
            self.cloud.insert(dot);
            self.compact();
        }
    }

    /// Joins `other` into this context.
    pub fn merge(&mut self, other: &Self) {
        for (node, &c) in &other.vv {
            let e = self.vv.entry(node.clone()).or_insert(0);
            *e = (*e).max(c);
        }
        for d in &other.cloud {
            if !self.contains(d) {
                self.cloud.insert(d.clone());
            }
        }
        self.compact();
    }

    /// Folds contiguous cloud dots into the version vector and drops cloud dots it covers.
    pub fn compact(&mut self) {
        let cloud = std::mem::take(&mut self.cloud);
        for d in cloud {
            let top = self.vv.get(&d.node).copied().unwrap_or(0);
            if d.counter == top.saturating_add(1) {
                self.vv.insert(d.node.clone(), d.counter);
            } else if d.counter > top {
                self.cloud.insert(d);
            }
        }
    }

    /// The version vector part: per node, every counter up to this one has been seen.
    pub fn version_vector(&self) -> &BTreeMap<NodeId, u64> {
        &self.vv
    }

    /// How many dots are held outside the version vector (seen out of order).
    pub fn cloud_len(&self) -> usize {
        self.cloud.len()
    }

    /// Whether every dot of `other` is in this context.
    pub fn covers(&self, other: &Self) -> bool {
        other
            .vv
            .iter()
            .all(|(n, &c)| self.vv.get(n).copied().unwrap_or(0) >= c || c == 0)
            && other.cloud.iter().all(|d| self.contains(d))
    }

    /// Drops the version-vector entry of a replica that has left for good, once every live
    /// replica has acknowledged its final counter (see [`crate::Stability`]). Its dots can then
    /// never be seen again, so forgetting them loses nothing. Returns whether an entry went.
    pub fn forget_replica(&mut self, node: &NodeId) -> bool {
        let had = self.vv.remove(node).is_some();
        let before = self.cloud.len();
        self.cloud.retain(|d| &d.node != node);
        had || before != self.cloud.len()
    }
}

/// The join of two dot sets under their contexts: a dot survives if both sides hold it, or if
/// one side holds it and the other has never seen it (a dot the other side saw and does not
/// hold was removed there).
pub(crate) fn join_dots(
    ours: &BTreeSet<Dot>,
    our_ctx: &CausalContext,
    theirs: &BTreeSet<Dot>,
    their_ctx: &CausalContext,
) -> BTreeSet<Dot> {
    let mut out = BTreeSet::new();
    for d in ours {
        if theirs.contains(d) || !their_ctx.contains(d) {
            out.insert(d.clone());
        }
    }
    for d in theirs {
        if !our_ctx.contains(d) {
            out.insert(d.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]

    use super::*;

    fn dot(n: &str, c: u64) -> Dot {
        Dot {
            node: NodeId::new(n).unwrap(),
            counter: c,
        }
    }

    #[test]
    fn out_of_order_dots_fold_into_the_vector_once_gaps_fill() {
        let mut cc = CausalContext::new();
        cc.insert(dot("a", 3));
        cc.insert(dot("a", 2));
        assert_eq!(cc.cloud_len(), 2);
        assert!(!cc.contains(&dot("a", 1)));
        cc.insert(dot("a", 1));
        assert_eq!(cc.cloud_len(), 0);
        assert_eq!(
            cc.version_vector().get(&NodeId::new("a").unwrap()),
            Some(&3)
        );
        assert_eq!(cc.next_dot(&NodeId::new("a").unwrap()), dot("a", 4));
    }

    #[test]
    fn next_dot_accounts_for_the_cloud() {
        let mut cc = CausalContext::new();
        cc.insert(dot("a", 5));
        assert_eq!(cc.next_dot(&NodeId::new("a").unwrap()), dot("a", 6));
    }
}
