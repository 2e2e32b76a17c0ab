//! Multi-value register: concurrent writes are kept as siblings.
// tidy:pure-core

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use quorate_types::NodeId;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::conflict::{CrdtKind, Resolution, Version};
use crate::crdt::Crdt;
use crate::dot::{CausalContext, Dot, join_dots};

/// A register that keeps every concurrent write (its *siblings*) instead of picking one. A
/// write replaces exactly the siblings its writer had seen; writes nobody had seen survive.
///
/// Guarantee: no write is discarded unless a later write was made by a replica that had seen
/// it. Siblings are bounded: when a merge leaves more than the cap, the owner calls
/// [`MvRegister::resolve`] with a resolver callback, which collapses them into one ordinary
/// write (recorded in the conflict log as [`Resolution::ResolverCollapsed`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(serialize = "T: Serialize", deserialize = "T: DeserializeOwned"))]
pub struct MvRegister<T> {
    siblings: BTreeMap<Dot, T>,
    ctx: CausalContext,
}

impl<T> MvRegister<T>
where
    T: Clone + Eq + fmt::Debug + Serialize + DeserializeOwned,
{
    /// The current siblings, in dot order (one value when there is no conflict).
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.siblings.values()
    }

    /// The dots of the current siblings.
    pub fn dots(&self) -> impl Iterator<Item = &Dot> {
        self.siblings.keys()
    }

    /// How many siblings there are.
    pub fn sibling_count(&self) -> usize {
        self.siblings.len()
    }

    /// Writes `value` on behalf of `node`, replacing every sibling seen here, and returns the
    /// delta.
    pub fn set(&mut self, node: &NodeId, value: T) -> Self {
        let dot = self.ctx.next_dot(node);
        let mut ctx = CausalContext::new();
        for d in self.siblings.keys() {
            ctx.insert(d.clone());
        }
        ctx.insert(dot.clone());
        let delta = Self {
            siblings: BTreeMap::from([(dot, value)]),
            ctx,
        };
        self.merge(&delta);
        delta
    }

    /// When there are more than `cap` siblings, collapses them with `resolver` (given every
    /// sibling's value, in dot order) into one write by `node`. Returns the delta to push and
    /// the resolution for the conflict log, or `None` when within the cap.
    pub fn resolve(
        &mut self,
        node: &NodeId,
        cap: usize,
        resolver: impl FnOnce(&[&T]) -> T,
    ) -> Option<(Self, Resolution)> {
        if self.siblings.len() <= cap {
            return None;
        }
        let values: Vec<&T> = self.siblings.values().collect();
        let merged = resolver(&values);
        let delta = self.set(node, merged);
        let into = delta.siblings.keys().next()?.clone();
        Some((delta, Resolution::ResolverCollapsed { into }))
    }
}

impl<T> Crdt for MvRegister<T>
where
    T: Clone + Eq + fmt::Debug + Serialize + DeserializeOwned,
{
    const KIND: CrdtKind = CrdtKind::MvRegister;

    fn bottom() -> Self {
        Self {
            siblings: BTreeMap::new(),
            ctx: CausalContext::new(),
        }
    }

    fn merge(&mut self, other: &Self) {
        let ours: BTreeSet<Dot> = self.siblings.keys().cloned().collect();
        let theirs: BTreeSet<Dot> = other.siblings.keys().cloned().collect();
        let keep = join_dots(&ours, &self.ctx, &theirs, &other.ctx);
        let mut siblings = BTreeMap::new();
        for d in keep {
            // A dot names one write, so its value is the same on both sides.
            let v = self.siblings.get(&d).or_else(|| other.siblings.get(&d));
            if let Some(v) = v {
                siblings.insert(d, v.clone());
            }
        }
        self.siblings = siblings;
        self.ctx.merge(&other.ctx);
    }

    fn size(&self) -> usize {
        self.siblings.len() + self.ctx.cloud_len()
    }

    /// A conflict when the merge keeps a sibling from each side that the other side had not
    /// seen (concurrent writes meeting); siblings both sides already knew are not counted again.
    fn conflict(&self, other: &Self) -> Option<Resolution> {
        let mut joined = self.clone();
        joined.merge(other);
        let ours_new = joined
            .siblings
            .keys()
            .any(|d| self.siblings.contains_key(d) && !other.ctx.contains(d));
        let theirs_new = joined
            .siblings
            .keys()
            .any(|d| other.siblings.contains_key(d) && !self.ctx.contains(d));
        (ours_new && theirs_new).then_some(Resolution::SiblingsKept {
            count: joined.siblings.len(),
        })
    }

    fn versions(&self) -> Vec<Version> {
        self.siblings.keys().cloned().map(Version::Dot).collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]

    use super::*;

    fn n(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    #[test]
    fn concurrent_writes_become_siblings_and_a_later_write_replaces_them() {
        let mut a = MvRegister::bottom();
        let mut b = MvRegister::bottom();
        let da = a.set(&n("a"), 1u8);
        let db = b.set(&n("b"), 2);
        assert_eq!(a.conflict(&db), Some(Resolution::SiblingsKept { count: 2 }));
        a.merge(&db);
        b.merge(&da);
        assert_eq!(a, b);
        // Merging what both already know is not a new conflict.
        assert_eq!(a.conflict(&b), None);
        assert_eq!(a.conflict(&da), None);
        assert_eq!(a.values().copied().collect::<Vec<_>>(), [1, 2]);
        let dc = a.set(&n("a"), 3);
        b.merge(&dc);
        assert_eq!(b.values().copied().collect::<Vec<_>>(), [3]);
    }

    #[test]
    fn resolver_collapses_siblings_over_the_cap() {
        let mut r = MvRegister::bottom();
        for (i, node) in ["a", "b", "c"].iter().enumerate() {
            let mut other = MvRegister::bottom();
            r.merge(&other.set(&n(node), i as u64));
        }
        assert_eq!(r.sibling_count(), 3);
        assert!(r.resolve(&n("a"), 3, |_| 0).is_none());
        let (delta, res) = r
            .resolve(&n("a"), 2, |vs| {
                vs.iter().copied().copied().max().unwrap_or(0)
            })
            .unwrap();
        assert!(matches!(res, Resolution::ResolverCollapsed { .. }));
        assert_eq!(r.values().copied().collect::<Vec<_>>(), [2]);
        // A replica that still has the three siblings collapses to the same value.
        let mut other = MvRegister::bottom();
        for (i, node) in ["a", "b", "c"].iter().enumerate() {
            let mut w = MvRegister::bottom();
            other.merge(&w.set(&n(node), i as u64));
        }
        other.merge(&delta);
        assert_eq!(other.values().copied().collect::<Vec<_>>(), [2]);
    }
}
