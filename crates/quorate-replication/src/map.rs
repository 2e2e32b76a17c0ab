//! Maps of replicated values: a last-writer-wins map and an observed-remove map of CRDTs.
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
use crate::hlc::HlcTimestamp;

/// A map whose every key is a last-writer-wins register; a remove writes a timestamped
/// tombstone so that it wins over older writes and loses to newer ones.
///
/// Tombstones are kept until they are *stable*: [`LwwMap::collect_tombstones`] drops those at
/// or below a horizon that every replica has acknowledged (see [`crate::Stability`] for the
/// rule). The map remembers the horizon, and a merge drops an entry at or below the other
/// side's horizon that the other side does not hold (it was collected there, so it is either
/// superseded or already everywhere): a late duplicate cannot bring a removed key back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(
    serialize = "K: Serialize, V: Serialize",
    deserialize = "K: DeserializeOwned + Ord, V: DeserializeOwned"
))]
pub struct LwwMap<K, V> {
    entries: BTreeMap<K, (HlcTimestamp, Option<V>)>,
    horizon: Option<HlcTimestamp>,
}

impl<K, V> LwwMap<K, V>
where
    K: Clone + Ord + fmt::Debug + Serialize + DeserializeOwned,
    V: Clone + Ord + fmt::Debug + Serialize + DeserializeOwned,
{
    /// The live value of `key`.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.entries.get(key).and_then(|(_, v)| v.as_ref())
    }

    /// The live entries, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.entries
            .iter()
            .filter_map(|(k, (_, v))| v.as_ref().map(|v| (k, v)))
    }

    /// How many tombstones are held.
    pub fn tombstones(&self) -> usize {
        self.entries.values().filter(|(_, v)| v.is_none()).count()
    }

    fn write(
        &mut self,
        key: K,
        value: Option<V>,
        ts: HlcTimestamp,
        max_len: usize,
    ) -> Result<Self, ReplicationError> {
        if !self.entries.contains_key(&key) && self.entries.len() >= max_len {
            return Err(ReplicationError::TooLarge {
                what: "lww-map entries",
                len: self.entries.len().saturating_add(1),
                max: max_len,
            });
        }
        let delta = Self {
            entries: BTreeMap::from([(key, (ts, value))]),
            horizon: None,
        };
        self.merge(&delta);
        Ok(delta)
    }

    /// Sets `key` to `value` at `ts` (fresh from the writer's clock); returns the delta.
    ///
    /// # Errors
    /// [`ReplicationError::TooLarge`] when `key` is new and the map holds `max_len` entries
    /// (tombstones included); nothing changed.
    pub fn set(
        &mut self,
        key: K,
        value: V,
        ts: HlcTimestamp,
        max_len: usize,
    ) -> Result<Self, ReplicationError> {
        self.write(key, Some(value), ts, max_len)
    }

    /// Removes `key` at `ts` by writing a tombstone; returns the delta.
    ///
    /// # Errors
    /// As for [`LwwMap::set`].
    pub fn remove(
        &mut self,
        key: K,
        ts: HlcTimestamp,
        max_len: usize,
    ) -> Result<Self, ReplicationError> {
        self.write(key, None, ts, max_len)
    }

    /// Drops every tombstone at or below `stable` (a horizon every replica acknowledged, from
    /// [`crate::Stability::stable`]) and remembers the horizon. Returns how many were dropped.
    /// This is a local step, outside the join laws.
    pub fn collect_tombstones(&mut self, stable: &HlcTimestamp) -> usize {
        let before = self.entries.len();
        self.entries
            .retain(|_, (ts, v)| v.is_some() || *ts > *stable);
        if self.horizon.as_ref().is_none_or(|h| h < stable) {
            self.horizon = Some(stable.clone());
        }
        before - self.entries.len()
    }
}

impl<K, V> Crdt for LwwMap<K, V>
where
    K: Clone + Ord + fmt::Debug + Serialize + DeserializeOwned,
    V: Clone + Ord + fmt::Debug + Serialize + DeserializeOwned,
{
    const KIND: CrdtKind = CrdtKind::LwwMap;

    fn bottom() -> Self {
        Self {
            entries: BTreeMap::new(),
            horizon: None,
        }
    }

    fn merge(&mut self, other: &Self) {
        let collected_by =
            |h: &Option<HlcTimestamp>, ts: &HlcTimestamp| h.as_ref().is_some_and(|h| ts <= h);
        let ours_h = self.horizon.clone();
        self.entries.retain(|k, (ts, _)| {
            other.entries.contains_key(k) || !collected_by(&other.horizon, ts)
        });
        for (k, theirs) in &other.entries {
            match self.entries.get_mut(k) {
                Some(ours) => {
                    if (&theirs.0, &theirs.1) > (&ours.0, &ours.1) {
                        *ours = theirs.clone();
                    }
                }
                None => {
                    if !collected_by(&ours_h, &theirs.0) {
                        self.entries.insert(k.clone(), theirs.clone());
                    }
                }
            }
        }
        if let Some(h) = &other.horizon
            && self.horizon.as_ref().is_none_or(|o| o < h)
        {
            self.horizon = Some(h.clone());
        }
    }

    fn size(&self) -> usize {
        self.entries.len()
    }
}

/// An observed-remove map: each key holds a CRDT value `V`, and key presence is add-wins (an
/// update is tagged with a dot; a remove deletes only the dots it observed, so an update
/// concurrent with a remove keeps the key).
///
/// Values merge with `V`'s own merge. A removed key's value state is kept, hidden, as its
/// tombstone; if the key is written again, the new write merges into that state (a counter
/// continues from its old total). [`OrMap::collect_hidden`] drops hidden values once the
/// remove is stable (every replica acknowledged it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(
    serialize = "K: Serialize, V: Serialize",
    deserialize = "K: DeserializeOwned + Ord, V: Crdt"
))]
pub struct OrMap<K, V> {
    entries: BTreeMap<K, (BTreeSet<Dot>, V)>,
    ctx: CausalContext,
}

impl<K, V> OrMap<K, V>
where
    K: Clone + Ord + fmt::Debug + Serialize + DeserializeOwned,
    V: Crdt,
{
    /// The value of `key` when the key is present.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.entries
            .get(key)
            .filter(|(dots, _)| !dots.is_empty())
            .map(|(_, v)| v)
    }

    /// The present keys and their values.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.entries
            .iter()
            .filter(|(_, (dots, _))| !dots.is_empty())
            .map(|(k, (_, v))| (k, v))
    }

    /// Updates `key` on behalf of `node`: `f` mutates the current value (bottom when absent)
    /// and returns its delta. Returns the map delta.
    ///
    /// # Errors
    /// [`ReplicationError::TooLarge`] when `key` is new and the map holds `max_len` entries,
    /// or the error `f` returns; nothing changed in either case.
    pub fn update(
        &mut self,
        node: &NodeId,
        key: K,
        max_len: usize,
        f: impl FnOnce(&mut V) -> Result<V, ReplicationError>,
    ) -> Result<Self, ReplicationError> {
        if !self.entries.contains_key(&key) && self.entries.len() >= max_len {
            return Err(ReplicationError::TooLarge {
                what: "or-map entries",
                len: self.entries.len().saturating_add(1),
                max: max_len,
            });
        }
        let mut value = self
            .entries
            .get(&key)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(V::bottom);
        let value_delta = f(&mut value)?;
        let dot = self.ctx.next_dot(node);
        let mut ctx = CausalContext::new();
        if let Some((dots, _)) = self.entries.get(&key) {
            for d in dots {
                ctx.insert(d.clone());
            }
        }
        ctx.insert(dot.clone());
        let delta = Self {
            entries: BTreeMap::from([(key, (BTreeSet::from([dot]), value_delta))]),
            ctx,
        };
        self.merge(&delta);
        Ok(delta)
    }

    /// Removes `key` (the updates of it observed here); returns the delta.
    pub fn remove(&mut self, key: &K) -> Self {
        let mut ctx = CausalContext::new();
        if let Some((dots, _)) = self.entries.get(key) {
            for d in dots {
                ctx.insert(d.clone());
            }
        }
        let delta = Self {
            entries: BTreeMap::new(),
            ctx,
        };
        self.merge(&delta);
        delta
    }

    /// Drops the hidden values of removed keys; call once the removes are stable. Returns how
    /// many went. A local step, outside the join laws.
    pub fn collect_hidden(&mut self) -> usize {
        let before = self.entries.len();
        self.entries.retain(|_, (dots, _)| !dots.is_empty());
        before - self.entries.len()
    }
}

impl<K, V> Crdt for OrMap<K, V>
where
    K: Clone + Ord + fmt::Debug + Serialize + DeserializeOwned,
    V: Crdt,
{
    const KIND: CrdtKind = CrdtKind::OrMap;

    fn bottom() -> Self {
        Self {
            entries: BTreeMap::new(),
            ctx: CausalContext::new(),
        }
    }

    fn merge(&mut self, other: &Self) {
        let empty = BTreeSet::new();
        let keys: BTreeSet<K> = self
            .entries
            .keys()
            .chain(other.entries.keys())
            .cloned()
            .collect();
        let mut entries = BTreeMap::new();
        for k in keys {
            let ours = self.entries.get(&k);
            let theirs = other.entries.get(&k);
            let dots = join_dots(
                ours.map_or(&empty, |(d, _)| d),
                &self.ctx,
                theirs.map_or(&empty, |(d, _)| d),
                &other.ctx,
            );
            let mut value = ours.map_or_else(V::bottom, |(_, v)| v.clone());
            if let Some((_, v)) = theirs {
                value.merge(v);
            }
            if !dots.is_empty() || value != V::bottom() {
                entries.insert(k, (dots, value));
            }
        }
        self.entries = entries;
        self.ctx.merge(&other.ctx);
    }

    fn size(&self) -> usize {
        self.entries
            .values()
            .map(|(_, v)| 1 + v.size())
            .sum::<usize>()
            + self.ctx.cloud_len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]

    use super::*;
    use crate::PnCounter;

    fn n(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    fn ts(ms: u64, node: &str) -> HlcTimestamp {
        HlcTimestamp {
            physical_ms: ms,
            logical: 0,
            node: n(node),
        }
    }

    fn k() -> String {
        "k".to_owned()
    }

    #[test]
    fn lww_map_tombstone_wins_over_older_and_loses_to_newer() {
        let mut m: LwwMap<String, u8> = LwwMap::bottom();
        m.set(k(), 1, ts(10, "a"), 8).unwrap();
        let rm = m.clone().remove(k(), ts(20, "b"), 8).unwrap();
        let newer = LwwMap::bottom().set(k(), 2, ts(30, "a"), 8).unwrap();
        m.merge(&rm);
        assert_eq!(m.get(&k()), None);
        m.merge(&newer);
        assert_eq!(m.get(&k()), Some(&2));
    }

    #[test]
    fn collected_tombstone_is_not_resurrected_by_a_late_duplicate() {
        let mut m: LwwMap<String, u8> = LwwMap::bottom();
        let old = m.set(k(), 1, ts(10, "a"), 8).unwrap();
        m.remove(k(), ts(20, "b"), 8).unwrap();
        assert_eq!(m.tombstones(), 1);
        assert_eq!(m.collect_tombstones(&ts(25, "a")), 1);
        assert_eq!(m.tombstones(), 0);
        m.merge(&old);
        assert_eq!(
            m.get(&k()),
            None,
            "a late duplicate of the old write came back"
        );
        // A stale replica that never collected learns the horizon and drops its old copy.
        let mut stale: LwwMap<String, u8> = LwwMap::bottom();
        stale.merge(&old);
        stale.merge(&m);
        assert_eq!(stale.get(&k()), None);
        // Writes above the horizon are accepted as usual.
        m.merge(&LwwMap::bottom().set(k(), 3, ts(30, "a"), 8).unwrap());
        assert_eq!(m.get(&k()), Some(&3));
    }

    #[test]
    fn or_map_update_concurrent_with_remove_keeps_the_key() {
        let mut a: OrMap<String, PnCounter> = OrMap::bottom();
        let mut b = OrMap::bottom();
        let d = a
            .update(&n("a"), "hits".into(), 8, |c| c.increment(&n("a"), 1))
            .unwrap();
        b.merge(&d);
        let rm = b.remove(&"hits".to_string());
        let d2 = a
            .update(&n("a"), "hits".into(), 8, |c| c.increment(&n("a"), 1))
            .unwrap();
        a.merge(&rm);
        b.merge(&d2);
        assert_eq!(a, b);
        assert_eq!(a.get(&"hits".to_string()).map(PnCounter::value), Some(2));
        let rm2 = a.remove(&"hits".to_string());
        b.merge(&rm2);
        assert_eq!(b.get(&"hits".to_string()), None);
        assert_eq!(b.collect_hidden(), 1);
    }
}
