//! An in-memory keyspace of one merge type: what the redb storage will later persist.
// tidy:pure-core

use std::collections::BTreeMap;
use std::num::NonZeroUsize;

use crate::ReplicationError;
use crate::conflict::ConflictRecord;
use crate::crdt::Crdt;
use crate::digest::{DigestConfig, Hash, MerkleDigest, value_hash};

/// The longest replicated key, in bytes.
pub const KEY_BYTES_MAX: usize = 256;

/// What merging into a key did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeOutcome {
    /// Whether the key's state changed.
    pub changed: bool,
    /// The conflict the merge resolved, for the conflict log.
    pub conflict: Option<ConflictRecord>,
}

/// A keyspace whose every key holds a `V`, bounded in keys and in the size of each value.
#[derive(Debug, Clone, PartialEq)]
pub struct Store<V> {
    entries: BTreeMap<String, V>,
    keys_max: NonZeroUsize,
    value_size_max: NonZeroUsize,
}

impl<V: Crdt> Store<V> {
    /// An empty keyspace of at most `keys_max` keys, each value holding at most
    /// `value_size_max` entries ([`Crdt::size`]).
    pub fn new(keys_max: NonZeroUsize, value_size_max: NonZeroUsize) -> Self {
        Self {
            entries: BTreeMap::new(),
            keys_max,
            value_size_max,
        }
    }

    /// The state of `key`.
    pub fn get(&self, key: &str) -> Option<&V> {
        self.entries.get(key)
    }

    /// Every key and state, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Merges `incoming` (a delta or a full state from a peer, or a local write's delta) into
    /// `key`.
    ///
    /// # Errors
    /// [`ReplicationError::KeyTooLong`], or [`ReplicationError::TooLarge`] for a new key
    /// beyond `keys_max` or a merged value beyond `value_size_max`; nothing changed. A refused
    /// merge leaves this replica behind its peers on that key until the limit is raised: the
    /// error is for the operator, never silent.
    pub fn merge(&mut self, key: &str, incoming: &V) -> Result<MergeOutcome, ReplicationError> {
        if key.len() > KEY_BYTES_MAX {
            return Err(ReplicationError::KeyTooLong {
                len: key.len(),
                max: KEY_BYTES_MAX,
            });
        }
        let too_large = |len: usize| ReplicationError::TooLarge {
            what: "replicated value entries",
            len,
            max: self.value_size_max.get(),
        };
        if incoming.size() > self.value_size_max.get() {
            return Err(too_large(incoming.size()));
        }
        match self.entries.get_mut(key) {
            Some(cur) => {
                let mut merged = cur.clone();
                merged.merge(incoming);
                if merged.size() > self.value_size_max.get() {
                    return Err(too_large(merged.size()));
                }
                let conflict = cur.conflict(incoming).map(|resolution| ConflictRecord {
                    key: key.to_owned(),
                    kind: V::KIND,
                    versions: [cur.versions(), incoming.versions()].concat(),
                    resolution,
                });
                let changed = merged != *cur;
                *cur = merged;
                Ok(MergeOutcome { changed, conflict })
            }
            None => {
                if self.entries.len() >= self.keys_max.get() {
                    return Err(ReplicationError::TooLarge {
                        what: "keyspace keys",
                        len: self.entries.len().saturating_add(1),
                        max: self.keys_max.get(),
                    });
                }
                let mut v = V::bottom();
                v.merge(incoming);
                self.entries.insert(key.to_owned(), v);
                Ok(MergeOutcome {
                    changed: true,
                    conflict: None,
                })
            }
        }
    }

    /// The Merkle digest of the keyspace.
    ///
    /// # Errors
    /// [`ReplicationError::Encode`] when a value cannot be encoded for hashing.
    pub fn digest(&self, config: DigestConfig) -> Result<MerkleDigest, ReplicationError> {
        let hashes: Vec<(&str, Hash)> = self
            .entries
            .iter()
            .map(|(k, v)| Ok((k.as_str(), value_hash(v)?)))
            .collect::<Result<_, ReplicationError>>()?;
        Ok(MerkleDigest::build(config, hashes))
    }

    /// The keys and states in the given buckets (in any order, as a peer sent them): what to
    /// send a peer whose digest differs in those buckets.
    pub fn entries_in_buckets(&self, config: DigestConfig, buckets: &[u32]) -> Vec<(String, V)> {
        let mut wanted = buckets.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        self.entries
            .iter()
            .filter(|(k, _)| wanted.binary_search(&config.bucket_of(k)).is_ok())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]

    use super::*;
    use crate::PnCounter;
    use quorate_types::NodeId;

    fn store(keys_max: usize) -> Store<PnCounter> {
        Store::new(
            NonZeroUsize::new(keys_max).unwrap(),
            NonZeroUsize::new(2).unwrap(),
        )
    }

    #[test]
    fn limits_refuse_and_change_nothing() {
        let mut s = store(1);
        let d = PnCounter::bottom()
            .increment(&NodeId::new("a").unwrap(), 1)
            .unwrap();
        assert!(s.merge("k", &d).unwrap().changed);
        assert!(
            !s.merge("k", &d).unwrap().changed,
            "a redelivered delta changes nothing"
        );
        assert_eq!(
            s.merge("other", &d),
            Err(ReplicationError::TooLarge {
                what: "keyspace keys",
                len: 2,
                max: 1
            })
        );
        let long = "x".repeat(KEY_BYTES_MAX + 1);
        assert_eq!(
            s.merge(&long, &d),
            Err(ReplicationError::KeyTooLong {
                len: KEY_BYTES_MAX + 1,
                max: KEY_BYTES_MAX
            })
        );
        assert_eq!(s.len(), 1);
        // A value that would hold more entries than the limit is refused whole.
        let b = PnCounter::bottom()
            .decrement(&NodeId::new("b").unwrap(), 1)
            .unwrap();
        assert!(s.merge("k", &b).unwrap().changed);
        let before = s.clone();
        let c = PnCounter::bottom()
            .increment(&NodeId::new("c").unwrap(), 1)
            .unwrap();
        assert_eq!(
            s.merge("k", &c),
            Err(ReplicationError::TooLarge {
                what: "replicated value entries",
                len: 3,
                max: 2
            })
        );
        assert_eq!(s, before);
    }

    #[test]
    fn digest_diff_and_bucket_entries_repair_a_peer() {
        let cfg = DigestConfig::new(4, 2).unwrap();
        let n = NodeId::new("a").unwrap();
        let (mut a, mut b) = (store(100), store(100));
        for i in 0..20 {
            let d = PnCounter::bottom().increment(&n, i + 1).unwrap();
            a.merge(&format!("k{i}"), &d).unwrap();
            if i % 3 != 0 {
                b.merge(&format!("k{i}"), &d).unwrap();
            }
        }
        let mut want = a
            .digest(cfg)
            .unwrap()
            .diff(&b.digest(cfg).unwrap())
            .unwrap();
        assert!(!want.is_empty());
        want.reverse(); // a peer may send the buckets in any order
        for (k, v) in a.entries_in_buckets(cfg, &want) {
            b.merge(&k, &v).unwrap();
        }
        assert_eq!(a, b);
        assert_eq!(a.digest(cfg).unwrap().root(), b.digest(cfg).unwrap().root());
    }
}
