//! [`MemStore`]: an in-memory key-value "disk" per simulated node that survives crash and
//! restart, with an explicit `sync` so a crash can lose what was not synced.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::lock;

#[derive(Debug, Default)]
struct Inner {
    durable: BTreeMap<String, Vec<u8>>,
    /// Writes since the last sync; `None` is a pending delete.
    pending: BTreeMap<String, Option<Vec<u8>>>,
    crashes: u64,
}

/// A node's persistent state, held by the harness outside the node's factory so it outlives a
/// crash. Clones share the same store.
///
/// Writes are visible at once but only survive a crash after [`MemStore::sync`], like writes to a
/// file before `fsync`. The cluster calls [`MemStore::lose_unsynced`] when it crashes the node.
#[derive(Clone, Debug, Default)]
pub struct MemStore {
    inner: Arc<Mutex<Inner>>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads a key (pending writes included).
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let st = lock(&self.inner);
        match st.pending.get(key) {
            Some(v) => v.clone(),
            None => st.durable.get(key).cloned(),
        }
    }

    /// Writes a key; durable after the next [`MemStore::sync`].
    pub fn put(&self, key: &str, value: Vec<u8>) {
        lock(&self.inner)
            .pending
            .insert(key.to_owned(), Some(value));
    }

    /// Deletes a key; durable after the next [`MemStore::sync`].
    pub fn delete(&self, key: &str) {
        lock(&self.inner).pending.insert(key.to_owned(), None);
    }

    /// Makes every write so far durable.
    pub fn sync(&self) {
        let mut st = lock(&self.inner);
        let pending = std::mem::take(&mut st.pending);
        for (k, v) in pending {
            match v {
                Some(v) => st.durable.insert(k, v),
                None => st.durable.remove(&k),
            };
        }
    }

    /// Keys (pending writes included) in order, with their values.
    pub fn entries(&self) -> Vec<(String, Vec<u8>)> {
        let st = lock(&self.inner);
        let mut all = st.durable.clone();
        for (k, v) in &st.pending {
            match v {
                Some(v) => all.insert(k.clone(), v.clone()),
                None => all.remove(k),
            };
        }
        all.into_iter().collect()
    }

    /// Drops unsynced writes, as a crash does.
    pub fn lose_unsynced(&self) {
        let mut st = lock(&self.inner);
        st.pending.clear();
        st.crashes += 1;
    }

    /// How many crashes this store has seen.
    pub fn crashes(&self) -> u64 {
        lock(&self.inner).crashes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsynced_writes_are_lost_on_crash() {
        let s = MemStore::new();
        s.put("a", b"1".to_vec());
        s.sync();
        s.put("b", b"2".to_vec());
        s.delete("a");
        assert_eq!(s.get("a"), None);
        assert_eq!(s.entries(), vec![("b".to_owned(), b"2".to_vec())]);
        s.lose_unsynced();
        assert_eq!(s.get("a"), Some(b"1".to_vec()));
        assert_eq!(s.get("b"), None);
        assert_eq!(s.crashes(), 1);
    }
}
