//! Last-writer-wins register on the hybrid logical clock.
// tidy:pure-core

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt;

use crate::conflict::{CrdtKind, Resolution, Version};
use crate::crdt::Crdt;
use crate::hlc::HlcTimestamp;

/// A register holding the value of the write with the greatest [`HlcTimestamp`] (physical
/// time, then logical counter, then node id as the tiebreak).
///
/// Guarantee: every replica that has merged the same writes holds the same value, and a write
/// made after its writer observed another write (a causal overwrite) always wins over it,
/// because the hybrid logical clock orders it later. Concurrent writes are decided by the
/// timestamp: one of them is discarded (and recorded as a conflict).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(serialize = "T: Serialize", deserialize = "T: DeserializeOwned"))]
pub struct LwwRegister<T> {
    entry: Option<(HlcTimestamp, T)>,
}

impl<T> LwwRegister<T> {
    /// The current value.
    pub fn value(&self) -> Option<&T> {
        self.entry.as_ref().map(|(_, v)| v)
    }

    /// The timestamp of the current value.
    pub fn timestamp(&self) -> Option<&HlcTimestamp> {
        self.entry.as_ref().map(|(t, _)| t)
    }
}

impl<T> LwwRegister<T>
where
    T: Clone + Ord + fmt::Debug + Serialize + DeserializeOwned,
{
    /// Writes `value` at `ts` (a fresh timestamp from the writer's [`crate::Hlc::now`]) and
    /// returns the delta to push to peers.
    pub fn set(&mut self, value: T, ts: HlcTimestamp) -> Self {
        let delta = Self {
            entry: Some((ts, value)),
        };
        self.merge(&delta);
        delta
    }
}

impl<T> Crdt for LwwRegister<T>
where
    T: Clone + Ord + fmt::Debug + Serialize + DeserializeOwned,
{
    const KIND: CrdtKind = CrdtKind::LwwRegister;

    fn bottom() -> Self {
        Self { entry: None }
    }

    fn merge(&mut self, other: &Self) {
        let Some(theirs) = &other.entry else { return };
        // Timestamps are unique per write; the value comparison only makes the join total
        // should two different values ever carry the same timestamp.
        let take = match &self.entry {
            None => true,
            Some(ours) => (&theirs.0, &theirs.1) > (&ours.0, &ours.1),
        };
        if take {
            self.entry = Some(theirs.clone());
        }
    }

    fn size(&self) -> usize {
        usize::from(self.entry.is_some())
    }

    fn conflict(&self, other: &Self) -> Option<Resolution> {
        match (&self.entry, &other.entry) {
            (Some(a), Some(b)) if a.0 != b.0 && a.1 != b.1 => Some(Resolution::LastWriterWins {
                winner: a.0.clone().max(b.0.clone()),
            }),
            _ => None,
        }
    }

    fn versions(&self) -> Vec<Version> {
        self.timestamp()
            .cloned()
            .map(Version::Timestamp)
            .into_iter()
            .collect()
    }
}
