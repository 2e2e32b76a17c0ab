//! Positive-negative counter.
// tidy:pure-core

use std::collections::BTreeMap;

use quorate_types::NodeId;
use serde::{Deserialize, Serialize};

use crate::ReplicationError;
use crate::conflict::CrdtKind;
use crate::crdt::Crdt;

/// A counter every replica can increment and decrement while partitioned. Each node keeps its
/// own running totals of increments and decrements; the value is their sum difference.
///
/// Guarantee: once every replica has merged every delta, the value is exactly the sum of all
/// acknowledged increments minus all acknowledged decrements. Never loses an update, never
/// counts one twice (a redelivered delta merges to the same state).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PnCounter {
    p: BTreeMap<NodeId, u64>,
    n: BTreeMap<NodeId, u64>,
}

fn add(map: &mut BTreeMap<NodeId, u64>, node: &NodeId, by: u64) -> Result<u64, ReplicationError> {
    let cur = map.get(node).copied().unwrap_or(0);
    cur.checked_add(by)
        .ok_or(ReplicationError::CounterOverflow { node: node.clone() })
}

impl PnCounter {
    /// Adds `by` on behalf of `node` and returns the delta.
    ///
    /// # Errors
    /// [`ReplicationError::CounterOverflow`] when `node`'s running total would pass `u64::MAX`;
    /// nothing changed.
    pub fn increment(&mut self, node: &NodeId, by: u64) -> Result<Self, ReplicationError> {
        let total = add(&mut self.p, node, by)?;
        let delta = Self {
            p: BTreeMap::from([(node.clone(), total)]),
            n: BTreeMap::new(),
        };
        self.merge(&delta);
        Ok(delta)
    }

    /// Subtracts `by` on behalf of `node` and returns the delta.
    ///
    /// # Errors
    /// [`ReplicationError::CounterOverflow`] as for [`PnCounter::increment`].
    pub fn decrement(&mut self, node: &NodeId, by: u64) -> Result<Self, ReplicationError> {
        let total = add(&mut self.n, node, by)?;
        let delta = Self {
            p: BTreeMap::new(),
            n: BTreeMap::from([(node.clone(), total)]),
        };
        self.merge(&delta);
        Ok(delta)
    }

    /// The counter's value.
    pub fn value(&self) -> i128 {
        let p: i128 = self.p.values().map(|&v| i128::from(v)).sum();
        let n: i128 = self.n.values().map(|&v| i128::from(v)).sum();
        p - n
    }
}

fn join(ours: &mut BTreeMap<NodeId, u64>, theirs: &BTreeMap<NodeId, u64>) {
    for (node, &v) in theirs {
        let e = ours.entry(node.clone()).or_insert(0);
        *e = (*e).max(v);
    }
}

impl Crdt for PnCounter {
    const KIND: CrdtKind = CrdtKind::PnCounter;

    fn bottom() -> Self {
        Self::default()
    }

    fn merge(&mut self, other: &Self) {
        join(&mut self.p, &other.p);
        join(&mut self.n, &other.n);
    }

    fn size(&self) -> usize {
        self.p.len() + self.n.len()
    }
}
