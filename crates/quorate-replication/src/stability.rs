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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]

    use super::*;
    use crate::{CausalContext, Dot};

    fn n(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    fn ts(ms: u64) -> HlcTimestamp {
        HlcTimestamp {
            physical_ms: ms,
            logical: 0,
            node: n("a"),
        }
    }

    #[test]
    fn horizon_waits_for_every_replica_moves_forward_only_and_ignores_strangers() {
        let mut s = Stability::new([n("a"), n("b"), n("c")]);
        assert!(s.ack(&n("a"), ts(50)));
        assert!(s.ack(&n("b"), ts(40)));
        assert!(
            !s.ack(&n("zz"), ts(99)),
            "an unknown node's ack is not taken"
        );
        assert_eq!(s.stable(), None, "c (maybe down) holds the horizon back");
        assert!(s.ack(&n("c"), ts(60)));
        assert_eq!(s.stable(), Some(ts(40)));
        assert!(!s.ack(&n("b"), ts(30)), "a reordered older ack is ignored");
        assert_eq!(s.stable(), Some(ts(40)));
        s.remove_replica(&n("b"));
        assert_eq!(s.stable(), Some(ts(50)));
        assert_eq!(Stability::new([]).stable(), None);
    }

    #[test]
    fn a_departed_replica_is_forgotten_from_a_context() {
        let mut cc = CausalContext::new();
        cc.insert(Dot {
            node: n("gone"),
            counter: 1,
        });
        cc.insert(Dot {
            node: n("gone"),
            counter: 3,
        });
        cc.insert(Dot {
            node: n("a"),
            counter: 1,
        });
        assert!(cc.forget_replica(&n("gone")));
        assert_eq!(cc.cloud_len(), 0);
        assert_eq!(cc.version_vector().len(), 1);
        assert!(!cc.forget_replica(&n("gone")));
    }
}
