//! A hybrid logical clock (Kulkarni et al., 2014) that takes physical time as an argument.
//!
//! The clock is sans-IO: [`Hlc::now`] and [`Hlc::observe`] are given the physical time in
//! milliseconds by the caller (the shell reads it from its clock, a simulation from its
//! per-node skewed clock). It never reads a clock or the environment itself. See the
//! `quorate-replication` section of ARCHITECTURE.md for why this is not the `uhlc` crate.
// tidy:pure-core

use std::fmt;
use std::num::NonZeroU64;

use quorate_types::NodeId;
use serde::{Deserialize, Serialize};

use crate::ReplicationError;

/// A timestamp of the hybrid logical clock. Ordered by physical milliseconds, then the
/// logical counter, then the node id (the tiebreak that makes the order total across nodes).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HlcTimestamp {
    /// Physical part: the greatest physical time (ms) this clock has seen.
    pub physical_ms: u64,
    /// Logical part: counts events within one physical millisecond.
    pub logical: u32,
    /// The node that issued the timestamp.
    pub node: NodeId,
}

impl fmt::Debug for HlcTimestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}@{}", self.physical_ms, self.logical, self.node)
    }
}

impl fmt::Display for HlcTimestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The configuration of a [`Hlc`]. There is no default: the offset bound is chosen explicitly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HlcConfig {
    /// The most a peer's timestamp may run ahead of our physical clock, in milliseconds. A
    /// timestamp further ahead is rejected with [`ReplicationError::ClockAhead`]. Pick it above
    /// the worst NTP offset you accept (e.g. 500 ms on a LAN) and well below the time in which
    /// a wrong last-writer-wins decision would matter.
    pub max_offset_ms: NonZeroU64,
}

/// A hybrid logical clock owned by one node.
///
/// ```
/// use std::num::NonZeroU64;
/// use quorate_replication::{Hlc, HlcConfig, ReplicationError};
/// use quorate_types::NodeId;
///
/// let cfg = HlcConfig { max_offset_ms: NonZeroU64::new(500).unwrap() };
/// let mut a = Hlc::new(NodeId::new("a").unwrap(), cfg);
/// let mut b = Hlc::new(NodeId::new("b").unwrap(), cfg);
/// let t1 = a.now(10_000);
/// // b's physical clock is behind, yet its next event is ordered after t1 once it saw t1.
/// b.observe(&t1, 9_900).unwrap();
/// assert!(b.now(9_901) > t1);
/// // A peer 2 s ahead is beyond the bound: rejected, never clamped.
/// let far = a.now(12_000);
/// assert!(matches!(b.observe(&far, 9_902), Err(ReplicationError::ClockAhead { .. })));
/// ```
#[derive(Debug, Clone)]
pub struct Hlc {
    node: NodeId,
    config: HlcConfig,
    physical_ms: u64,
    logical: u32,
}

impl Hlc {
    /// A clock for `node` that has seen nothing yet.
    pub fn new(node: NodeId, config: HlcConfig) -> Self {
        Self {
            node,
            config,
            physical_ms: 0,
            logical: 0,
        }
    }

    /// A clock for `node` resumed after a restart from the last timestamp it issued or
    /// observed (as persisted by the storage), so that its next timestamp is above every one it
    /// issued before, even if the physical clock went back meanwhile. No bound is checked: the
    /// timestamp is this node's own record.
    pub fn resume(node: NodeId, config: HlcConfig, last: &HlcTimestamp) -> Self {
        Self {
            node,
            config,
            physical_ms: last.physical_ms,
            logical: last.logical,
        }
    }

    /// The node this clock belongs to.
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// The configured bound.
    pub fn config(&self) -> HlcConfig {
        self.config
    }

    /// The latest timestamp issued or observed (without issuing a new one).
    pub fn last(&self) -> HlcTimestamp {
        self.stamp()
    }

    fn stamp(&self) -> HlcTimestamp {
        HlcTimestamp {
            physical_ms: self.physical_ms,
            logical: self.logical,
            node: self.node.clone(),
        }
    }

    /// Advances the logical counter; on (theoretical) overflow moves to the next millisecond,
    /// which keeps the order strict.
    fn bump(&mut self) {
        match self.logical.checked_add(1) {
            Some(l) => self.logical = l,
            None => {
                self.physical_ms = self.physical_ms.saturating_add(1);
                self.logical = 0;
            }
        }
    }

    /// A new timestamp for a local event at physical time `physical_ms`. Strictly greater than
    /// every timestamp this clock issued or observed before.
    pub fn now(&mut self, physical_ms: u64) -> HlcTimestamp {
        if physical_ms > self.physical_ms {
            self.physical_ms = physical_ms;
            self.logical = 0;
        } else {
            self.bump();
        }
        self.stamp()
    }

    /// Takes in a timestamp received from a peer at physical time `physical_ms`, so that later
    /// local timestamps are ordered after it.
    ///
    /// # Errors
    /// [`ReplicationError::ClockAhead`] when `remote` is more than `max_offset_ms` ahead of
    /// `physical_ms`. The clock is unchanged and the update carrying `remote` must be rejected.
    pub fn observe(
        &mut self,
        remote: &HlcTimestamp,
        physical_ms: u64,
    ) -> Result<(), ReplicationError> {
        let ahead_ms = remote.physical_ms.saturating_sub(physical_ms);
        if ahead_ms > self.config.max_offset_ms.get() {
            return Err(ReplicationError::ClockAhead {
                peer: remote.node.clone(),
                ahead_ms,
                bound_ms: self.config.max_offset_ms.get(),
            });
        }
        let max_pt = physical_ms.max(self.physical_ms).max(remote.physical_ms);
        let logical = if max_pt == self.physical_ms && max_pt == remote.physical_ms {
            self.logical.max(remote.logical)
        } else if max_pt == self.physical_ms {
            self.logical
        } else if max_pt == remote.physical_ms {
            remote.logical
        } else {
            // Physical time moved past both: the counter restarts (set to 0 after the bump
            // below would make it 1; use the plain value to keep `now` semantics).
            self.physical_ms = max_pt;
            self.logical = 0;
            return Ok(());
        };
        self.physical_ms = max_pt;
        self.logical = logical;
        self.bump();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]

    use super::*;

    fn clock(name: &str, bound: u64) -> Hlc {
        Hlc::new(
            NodeId::new(name).unwrap(),
            HlcConfig {
                max_offset_ms: NonZeroU64::new(bound).unwrap(),
            },
        )
    }

    #[test]
    fn local_timestamps_strictly_increase_even_when_physical_time_goes_back() {
        let mut c = clock("a", 100);
        let t1 = c.now(1_000);
        let t2 = c.now(1_000);
        let t3 = c.now(900);
        let t4 = c.now(1_001);
        assert!(t1 < t2 && t2 < t3 && t3 < t4, "{t1} {t2} {t3} {t4}");
    }

    #[test]
    fn observed_timestamp_orders_later_events_after_it() {
        let mut a = clock("a", 500);
        let mut b = clock("b", 500);
        let ta = a.now(5_400);
        b.observe(&ta, 5_000).unwrap();
        let tb = b.now(5_001);
        assert!(tb > ta, "{tb} must follow {ta}");
        assert_eq!(tb.physical_ms, 5_400);
    }

    #[test]
    fn peer_beyond_the_bound_is_rejected_and_the_clock_is_unchanged() {
        let mut a = clock("a", 10_000);
        let mut b = clock("b", 500);
        let before = b.now(1_000);
        let far = a.now(1_501);
        let err = b.observe(&far, 1_000).unwrap_err();
        assert_eq!(
            err,
            ReplicationError::ClockAhead {
                peer: NodeId::new("a").unwrap(),
                ahead_ms: 501,
                bound_ms: 500
            }
        );
        assert_eq!(b.last(), before);
        // Exactly at the bound is accepted.
        let edge = a.now(1_500);
        assert!(edge.physical_ms == 1_501 || edge.physical_ms == 1_500);
        let at_bound = HlcTimestamp {
            physical_ms: 1_500,
            logical: 0,
            node: NodeId::new("a").unwrap(),
        };
        b.observe(&at_bound, 1_000).unwrap();
    }

    #[test]
    fn node_id_breaks_ties() {
        let mut a = clock("a", 1);
        let mut b = clock("b", 1);
        assert!(a.now(7) < b.now(7));
    }

    #[test]
    fn logical_overflow_moves_to_the_next_millisecond() {
        let mut c = clock("a", 1);
        c.physical_ms = 10;
        c.logical = u32::MAX;
        let t = c.now(10);
        assert_eq!((t.physical_ms, t.logical), (11, 0));
    }
}
