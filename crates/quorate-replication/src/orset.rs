//! Add-wins observed-remove set.
// tidy:pure-core

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use quorate_types::NodeId;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::ReplicationError;
use crate::conflict::CrdtKind;
use crate::crdt::Crdt;
use crate::dot::{CausalContext, Dot, join_dots};

/// A set where every add is tagged with a fresh dot and a remove deletes only the dots its
/// replica had observed. An add concurrent with a remove therefore survives (add wins).
///
/// Guarantee: an element is present after every replica has merged everything if and only if
/// some add of it was not observed by any remove of it. No acknowledged add is lost unless a
/// replica that had seen it removed the element afterwards.
///
/// Removal leaves no per-element tombstone: what was removed is remembered only as dots in the
/// causal context, which compacts to one counter per writer (see [`CausalContext`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(serialize = "E: Serialize", deserialize = "E: DeserializeOwned + Ord"))]
pub struct OrSet<E> {
    entries: BTreeMap<E, BTreeSet<Dot>>,
    ctx: CausalContext,
}

impl<E> OrSet<E>
where
    E: Clone + Ord + fmt::Debug + Serialize + DeserializeOwned,
{
    /// Whether `e` is in the set.
    pub fn contains(&self, e: &E) -> bool {
        self.entries.contains_key(e)
    }

    /// The elements, in order.
    pub fn elements(&self) -> impl Iterator<Item = &E> {
        self.entries.keys()
    }

    /// How many elements there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The dots currently supporting `e` (empty when absent).
    pub fn dots_of(&self, e: &E) -> BTreeSet<Dot> {
        self.entries.get(e).cloned().unwrap_or_default()
    }

    /// Adds `e` on behalf of `node` and returns the delta.
    ///
    /// # Errors
    /// [`ReplicationError::TooLarge`] when `e` is new and the set already holds `max_len`
    /// elements; nothing changed.
    pub fn add(&mut self, node: &NodeId, e: E, max_len: usize) -> Result<Self, ReplicationError> {
        if !self.entries.contains_key(&e) && self.entries.len() >= max_len {
            return Err(ReplicationError::TooLarge {
                what: "or-set elements",
                len: self.entries.len().saturating_add(1),
                max: max_len,
            });
        }
        let dot = self.ctx.next_dot(node);
        let mut ctx = CausalContext::new();
        for d in self.dots_of(&e) {
            ctx.insert(d);
        }
        ctx.insert(dot.clone());
        let delta = Self {
            entries: BTreeMap::from([(e, BTreeSet::from([dot]))]),
            ctx,
        };
        self.merge(&delta);
        Ok(delta)
    }

    /// Removes `e` (the adds of it observed here) and returns the delta. Removing an absent
    /// element returns an empty delta.
    pub fn remove(&mut self, e: &E) -> Self {
        let mut ctx = CausalContext::new();
        for d in self.dots_of(e) {
            ctx.insert(d);
        }
        let delta = Self {
            entries: BTreeMap::new(),
            ctx,
        };
        self.merge(&delta);
        delta
    }

    /// The causal context (what this replica has observed).
    pub fn context(&self) -> &CausalContext {
        &self.ctx
    }
}

impl<E> Crdt for OrSet<E>
where
    E: Clone + Ord + fmt::Debug + Serialize + DeserializeOwned,
{
    const KIND: CrdtKind = CrdtKind::OrSet;

    fn bottom() -> Self {
        Self {
            entries: BTreeMap::new(),
            ctx: CausalContext::new(),
        }
    }

    fn merge(&mut self, other: &Self) {
        let empty = BTreeSet::new();
        let keys: BTreeSet<E> = self
            .entries
            .keys()
            .chain(other.entries.keys())
            .cloned()
            .collect();
        let mut entries = BTreeMap::new();
        for k in keys {
            let ours = self.entries.get(&k).unwrap_or(&empty);
            let theirs = other.entries.get(&k).unwrap_or(&empty);
            let dots = join_dots(ours, &self.ctx, theirs, &other.ctx);
            if !dots.is_empty() {
                entries.insert(k, dots);
            }
        }
        self.entries = entries;
        self.ctx.merge(&other.ctx);
    }

    fn size(&self) -> usize {
        self.entries.len() + self.ctx.cloud_len()
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
    fn concurrent_add_wins_over_remove() {
        let mut a = OrSet::bottom();
        let mut b = OrSet::bottom();
        let d = a.add(&n("a"), 1u32, 10).unwrap();
        b.merge(&d);
        let rm = b.remove(&1);
        let re_add = a.add(&n("a"), 1, 10).unwrap();
        a.merge(&rm);
        b.merge(&re_add);
        assert_eq!(a, b);
        assert!(a.contains(&1));
    }

    #[test]
    fn observed_remove_removes() {
        let mut a = OrSet::bottom();
        let mut b = OrSet::bottom();
        b.merge(&a.add(&n("a"), 7u32, 10).unwrap());
        a.merge(&b.remove(&7));
        assert!(!a.contains(&7) && !b.contains(&7));
    }

    #[test]
    fn bound_refuses_a_new_element_and_changes_nothing() {
        let mut a = OrSet::bottom();
        a.add(&n("a"), 1u32, 1).unwrap();
        let before = a.clone();
        let err = a.add(&n("a"), 2, 1).unwrap_err();
        assert_eq!(
            err,
            ReplicationError::TooLarge {
                what: "or-set elements",
                len: 2,
                max: 1
            }
        );
        assert_eq!(a, before);
        a.add(&n("a"), 1, 1).unwrap();
    }
}
