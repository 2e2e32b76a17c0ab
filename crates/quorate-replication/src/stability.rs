//! Causal stability: when every replica has acknowledged a point, what lies below it can be
//! garbage-collected (tombstones of the LWW map, hidden values of the OR-map, the context
//! entries of a replica that left).
// tidy:pure-core

use std::collections::{BTreeMap, BTreeSet};

use quorate_types::NodeId;

use crate::hlc::HlcTimestamp;

/// Tracks each replica's acknowledged frontier and answers the stable horizon.
///
/// **The rule.** A replica acknowledges a frontier `F` only when it has merged every update
/// with a timestamp at or below `F` from every replica (the transport acknowledges
/// cumulatively: per-peer delta streams in order, or a completed anti-entropy round with every
/// peer after `F`). The stable horizon is the minimum frontier over *all* replicas of the
/// keyspace; while any replica has not acknowledged, there is none. A tombstone at or below
/// the horizon has been merged everywhere, so dropping it cannot let an older write come back:
/// every replica already holds something newer than that write.
///
/// ```
/// use quorate_replication::{HlcTimestamp, Stability};
/// use quorate_types::NodeId;
///
/// let (a, b) = (NodeId::new("a").unwrap(), NodeId::new("b").unwrap());
/// let ts = |ms| HlcTimestamp { physical_ms: ms, logical: 0, node: NodeId::new("a").unwrap() };
/// let mut s = Stability::new([a.clone(), b.clone()]);
/// s.ack(&a, ts(50));
/// assert_eq!(s.stable(), None);             // b has not acknowledged anything
/// s.ack(&b, ts(30));
/// assert_eq!(s.stable(), Some(ts(30)));     // the slowest replica bounds the horizon
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stability {
    replicas: BTreeSet<NodeId>,
    acked: BTreeMap<NodeId, HlcTimestamp>,
}

impl Stability {
    /// A tracker for this set of replicas (the keyspace's full membership, including down
    /// ones: a down replica holds the horizon back until it returns or is removed).
    pub fn new(replicas: impl IntoIterator<Item = NodeId>) -> Self {
        Self {
            replicas: replicas.into_iter().collect(),
            acked: BTreeMap::new(),
        }
    }

    /// Records that `node` acknowledged `frontier`. Frontiers only move forward; an older
    /// acknowledgement (reordered on the network) is ignored. Returns whether it was taken;
    /// an unknown node's acknowledgement is not.
    pub fn ack(&mut self, node: &NodeId, frontier: HlcTimestamp) -> bool {
        if !self.replicas.contains(node) {
            return false;
        }
        match self.acked.get(node) {
            Some(old) if *old >= frontier => false,
            _ => {
                self.acked.insert(node.clone(), frontier);
                true
            }
        }
    }

    /// Removes a replica that left the keyspace for good; it no longer holds the horizon back.
    pub fn remove_replica(&mut self, node: &NodeId) {
        self.replicas.remove(node);
        self.acked.remove(node);
    }

    /// The stable horizon: the minimum acknowledged frontier, once every replica has
    /// acknowledged one.
    pub fn stable(&self) -> Option<HlcTimestamp> {
        if self.replicas.is_empty() || self.acked.len() < self.replicas.len() {
            return None;
        }
        self.acked.values().min().cloned()
    }
}
