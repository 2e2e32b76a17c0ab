//! Replication counters as plain data. The node's metrics adapter reads them; no metrics
//! library is linked here.
// tidy:pure-core

use std::collections::BTreeMap;

use crate::conflict::{ConflictRecord, CrdtKind};

/// Counters and gauges of one replica's replication. Counters only grow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicationMetrics {
    /// Deltas produced by local writes.
    pub local_writes: u64,
    /// Deltas (or full states) sent to peers.
    pub deltas_sent: u64,
    /// Deltas (or full states) received and merged.
    pub deltas_merged: u64,
    /// Updates rejected because the sender's clock ran beyond the bound (each is an alarm).
    pub clock_alarms: u64,
    /// Conflicts by merge type and resolution label ([`crate::Resolution::label`]).
    pub conflicts: BTreeMap<(CrdtKind, &'static str), u64>,
    /// Anti-entropy rounds started.
    pub anti_entropy_rounds: u64,
    /// Bytes of digests and repair states exchanged by anti-entropy.
    pub anti_entropy_bytes: u64,
    /// Keys repaired (changed) by anti-entropy.
    pub keys_repaired: u64,
    /// Tombstones and hidden values collected.
    pub tombstones_collected: u64,
    /// Gauge: hints held for unreachable peers (set by `Keyspace::status`).
    pub hints_pending: u64,
    /// Gauge (multi-master): how long the oldest local write some peer has not received yet
    /// has waited, in milliseconds (the age of the oldest hint held for an unreachable peer);
    /// 0 when every peer has every write this node sent. Set by `Keyspace::status`. Leader
    /// mode reports lag per replica in `LeaderStatus`.
    pub lag_ms: u64,
}

impl ReplicationMetrics {
    /// Counts a conflict.
    pub fn record_conflict(&mut self, record: &ConflictRecord) {
        let e = self
            .conflicts
            .entry((record.kind, record.resolution.label()))
            .or_insert(0);
        *e = e.saturating_add(1);
    }

    /// The total number of conflicts.
    pub fn conflicts_total(&self) -> u64 {
        self.conflicts.values().sum()
    }
}
