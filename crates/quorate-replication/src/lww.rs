//! Last-writer-wins register on the hybrid logical clock.
// tidy:pure-core

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt;

use crate::conflict::{CrdtKind, Resolution, Version};
use crate::crdt::Crdt;
use crate::hlc::HlcTimestamp;

/// One write of a register: its timestamp, its value, and the timestamp of the value its writer
/// held when it wrote (what it knowingly overwrote).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct Entry<T> {
    ts: HlcTimestamp,
    value: T,
    overwrote: Option<HlcTimestamp>,
}

/// A register holding the value of the write with the greatest [`HlcTimestamp`] (physical
/// time, then logical counter, then node id as the tiebreak).
///
/// Guarantee: every replica that has merged the same writes holds the same value, and a write
/// made after its writer observed another write (a causal overwrite) always wins over it,
/// because the hybrid logical clock orders it later. Concurrent writes are decided by the
/// timestamp: one of them is discarded.
///
/// Each write also carries the timestamp of the value its writer overwrote, so a merge can tell
/// an ordinary overwrite (the loser is at or below what the winner's writer had seen: not a
/// conflict) from a concurrent write (the winner's writer had not seen anything as new as the
/// loser: a conflict, see [`Crdt::conflict`]). A conflict between two writes that are both
/// overwritten before they meet at any replica is not seen, so conflict counts are a lower
/// bound.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(serialize = "T: Serialize", deserialize = "T: DeserializeOwned"))]
pub struct LwwRegister<T> {
    entry: Option<Entry<T>>,
}

impl<T> LwwRegister<T> {
    /// The current value.
    pub fn value(&self) -> Option<&T> {
        self.entry.as_ref().map(|e| &e.value)
    }

    /// The timestamp of the current value.
    pub fn timestamp(&self) -> Option<&HlcTimestamp> {
        self.entry.as_ref().map(|e| &e.ts)
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
            entry: Some(Entry {
                ts,
                value,
                overwrote: self.timestamp().cloned(),
            }),
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
        // Timestamps are unique per write; comparing the whole entry only makes the join total
        // should two different writes ever carry the same timestamp.
        if self.entry.as_ref().is_none_or(|ours| theirs > ours) {
            self.entry = Some(theirs.clone());
        }
    }

    fn size(&self) -> usize {
        usize::from(self.entry.is_some())
    }

    /// A conflict when the two values differ and the winner's writer had not seen a value as
    /// new as the loser (the writes were concurrent); an ordinary overwrite is none.
    fn conflict(&self, other: &Self) -> Option<Resolution> {
        let (Some(a), Some(b)) = (&self.entry, &other.entry) else {
            return None;
        };
        let (winner, loser) = if a > b { (a, b) } else { (b, a) };
        let concurrent = winner
            .overwrote
            .as_ref()
            .is_none_or(|seen| *seen < loser.ts);
        (winner.value != loser.value && concurrent).then(|| Resolution::LastWriterWins {
            winner: winner.ts.clone(),
        })
    }

    fn versions(&self) -> Vec<Version> {
        self.timestamp()
            .cloned()
            .map(Version::Timestamp)
            .into_iter()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]

    use super::*;
    use quorate_types::NodeId;

    fn ts(ms: u64, node: &str) -> HlcTimestamp {
        HlcTimestamp {
            physical_ms: ms,
            logical: 0,
            node: NodeId::new(node).unwrap(),
        }
    }

    #[test]
    fn an_overwrite_is_not_a_conflict_and_a_concurrent_write_is() {
        let mut a = LwwRegister::bottom();
        let first = a.set(1u8, ts(10, "a"));
        // b saw the first write, then overwrote it: not a conflict, in either direction.
        let mut b = LwwRegister::bottom();
        b.merge(&first);
        let overwrite = b.set(2, ts(20, "b"));
        assert_eq!(a.conflict(&overwrite), None);
        assert_eq!(overwrite.conflict(&a), None);
        // c never saw the first write: its later write is concurrent with it.
        let concurrent = LwwRegister::bottom().set(3, ts(15, "c"));
        assert_eq!(
            a.conflict(&concurrent),
            Some(Resolution::LastWriterWins {
                winner: ts(15, "c")
            })
        );
        // The same value written twice concurrently is no conflict.
        let same = LwwRegister::bottom().set(1, ts(12, "d"));
        assert_eq!(a.conflict(&same), None);
        a.merge(&concurrent);
        a.merge(&overwrite);
        assert_eq!(a.value(), Some(&2));
    }
}
