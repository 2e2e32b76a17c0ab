//! Conflicts: which merge type met them, how they were resolved, and a bounded log of them.
// tidy:pure-core

use std::collections::VecDeque;
use std::num::NonZeroUsize;

use serde::{Deserialize, Serialize};

use crate::dot::Dot;
use crate::hlc::HlcTimestamp;

/// The merge type of a replicated key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum CrdtKind {
    /// [`crate::LwwRegister`].
    LwwRegister,
    /// [`crate::MvRegister`].
    MvRegister,
    /// [`crate::PnCounter`].
    PnCounter,
    /// [`crate::OrSet`].
    OrSet,
    /// [`crate::LwwMap`].
    LwwMap,
    /// [`crate::OrMap`].
    OrMap,
    /// [`crate::Custom`].
    Custom,
}

/// One concurrent version that took part in a conflict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Version {
    /// A last-writer-wins write, named by its timestamp.
    Timestamp(HlcTimestamp),
    /// A dotted write (a sibling of a multi-value register), named by its dot.
    Dot(Dot),
}

/// How a conflict was resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Resolution {
    /// The version with the greatest timestamp won; the others were discarded.
    LastWriterWins {
        /// The winning timestamp.
        winner: HlcTimestamp,
    },
    /// Concurrent versions were all kept as siblings for the application to read.
    SiblingsKept {
        /// How many siblings the register now holds.
        count: usize,
    },
    /// Siblings went over the cap and the resolver callback collapsed them into one write.
    ResolverCollapsed {
        /// The dot of the collapsing write.
        into: Dot,
    },
}

impl Resolution {
    /// A short name for metrics labels.
    pub fn label(&self) -> &'static str {
        match self {
            Resolution::LastWriterWins { .. } => "lww",
            Resolution::SiblingsKept { .. } => "siblings",
            Resolution::ResolverCollapsed { .. } => "resolver",
        }
    }
}

/// One entry of the conflict log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictRecord {
    /// The replicated key.
    pub key: String,
    /// Its merge type.
    pub kind: CrdtKind,
    /// The versions that met (ours first, then theirs).
    pub versions: Vec<Version>,
    /// What the merge did.
    pub resolution: Resolution,
}

/// A bounded log of the most recent conflicts. When full, the oldest entry is dropped and
/// counted in [`ConflictLog::dropped`], so the log never grows and never hides that it lost
/// entries.
#[derive(Debug, Clone)]
pub struct ConflictLog {
    cap: NonZeroUsize,
    entries: VecDeque<ConflictRecord>,
    dropped: u64,
    total: u64,
}

impl ConflictLog {
    /// A log that keeps the last `cap` conflicts.
    pub fn new(cap: NonZeroUsize) -> Self {
        Self {
            cap,
            entries: VecDeque::with_capacity(cap.get().min(1024)),
            dropped: 0,
            total: 0,
        }
    }

    /// Appends a record, dropping the oldest when full.
    pub fn push(&mut self, record: ConflictRecord) {
        if self.entries.len() == self.cap.get() {
            self.entries.pop_front();
            self.dropped = self.dropped.saturating_add(1);
        }
        self.entries.push_back(record);
        self.total = self.total.saturating_add(1);
    }

    /// The kept records, oldest first.
    pub fn entries(&self) -> impl ExactSizeIterator<Item = &ConflictRecord> {
        self.entries.iter()
    }

    /// How many records were dropped because the log was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// How many records were ever pushed.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The capacity.
    pub fn cap(&self) -> NonZeroUsize {
        self.cap
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]

    use super::*;
    use quorate_types::NodeId;

    fn rec(i: u64) -> ConflictRecord {
        let ts = HlcTimestamp {
            physical_ms: i,
            logical: 0,
            node: NodeId::new("a").unwrap(),
        };
        ConflictRecord {
            key: format!("k{i}"),
            kind: CrdtKind::LwwRegister,
            versions: vec![Version::Timestamp(ts.clone())],
            resolution: Resolution::LastWriterWins { winner: ts },
        }
    }

    #[test]
    fn log_keeps_the_newest_and_counts_what_it_dropped() {
        let mut log = ConflictLog::new(NonZeroUsize::new(3).unwrap());
        for i in 0..5 {
            log.push(rec(i));
        }
        let keys: Vec<_> = log.entries().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, ["k2", "k3", "k4"]);
        assert_eq!((log.dropped(), log.total()), (2, 5));
    }
}
