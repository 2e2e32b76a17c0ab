//! Merkle digests of a keyspace for anti-entropy: a fixed-fanout hash tree over buckets of the
//! key-hash space, and the diff that names the buckets (key ranges) whose contents differ.
//!
//! Keys are placed in buckets by the hash of the key, not by their sorted position, so two
//! replicas with different key sets still have aligned trees: a bucket's hash depends only on
//! the keys that fall in it. See ARCHITECTURE.md for why this is not `merkle-search-tree`.
// tidy:pure-core

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::ReplicationError;

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// The shape of a digest tree. Every replica of a keyspace must use the same shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestConfig {
    fanout: u16,
    depth: u8,
}

/// The most leaves (buckets) a digest may have.
pub const DIGEST_LEAVES_MAX: u32 = 1 << 16;

impl DigestConfig {
    /// 16 children per node, 3 levels: 4,096 buckets (about 25 keys each at 100k keys; a
    /// digest of 140 KB).
    pub const LAN: DigestConfig = DigestConfig {
        fanout: 16,
        depth: 3,
    };

    /// A tree with `fanout` children per node and `depth` levels below the root, so
    /// `fanout ^ depth` buckets.
    ///
    /// # Errors
    /// [`ReplicationError::Config`] when `fanout < 2`, `depth < 1`, or there would be more
    /// than [`DIGEST_LEAVES_MAX`] buckets.
    pub fn new(fanout: u16, depth: u8) -> Result<Self, ReplicationError> {
        if fanout < 2 {
            return Err(ReplicationError::Config {
                field: "digest_fanout",
                value: u64::from(fanout),
                fix: "use 2 or more (16 is a good default)",
            });
        }
        if depth < 1 {
            return Err(ReplicationError::Config {
                field: "digest_depth",
                value: u64::from(depth),
                fix: "use 1 or more (2 is a good default)",
            });
        }
        let leaves = u32::from(fanout).checked_pow(u32::from(depth));
        if leaves.is_none_or(|l| l > DIGEST_LEAVES_MAX) {
            return Err(ReplicationError::Config {
                field: "digest_depth",
                value: u64::from(depth),
                fix: "fanout ^ depth must be at most 65536 buckets",
            });
        }
        Ok(Self { fanout, depth })
    }

    /// The number of buckets.
    pub fn leaves(&self) -> u32 {
        u32::from(self.fanout).pow(u32::from(self.depth))
    }

    /// The bucket `key` falls in.
    pub fn bucket_of(&self, key: &str) -> u32 {
        let h = Sha256::digest(key.as_bytes());
        let x = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
        x % self.leaves()
    }
}

/// The hash of a replicated value: SHA-256 of its postcard encoding. The CRDT states of this
/// crate encode canonically (ordered maps, compacted contexts), so equal states hash equal.
///
/// # Errors
/// [`ReplicationError::Encode`] when postcard cannot encode the value.
pub fn value_hash<V: Serialize>(value: &V) -> Result<Hash, ReplicationError> {
    let bytes = postcard::to_stdvec(value).map_err(|e| ReplicationError::Encode(e.to_string()))?;
    Ok(Sha256::digest(&bytes).into())
}

/// A Merkle digest of a keyspace. Sent whole to a peer (with fanout 16 and depth 2, that is
/// 273 hashes, 8.7 KiB), which answers with the contents of the buckets that differ.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MerkleDigest {
    config: DigestConfig,
    /// `levels[0]` is the root; `levels[depth]` are the bucket hashes.
    levels: Vec<Vec<Hash>>,
}

impl MerkleDigest {
    /// Builds the digest of `entries` (key and value hash, in any order).
    pub fn build<'a>(
        config: DigestConfig,
        entries: impl IntoIterator<Item = (&'a str, Hash)>,
    ) -> Self {
        let leaves = config.leaves() as usize;
        let mut buckets: Vec<Vec<(&'a str, Hash)>> = vec![Vec::new(); leaves];
        for (k, h) in entries {
            if let Some(b) = buckets.get_mut(config.bucket_of(k) as usize) {
                b.push((k, h));
            }
        }
        let mut level: Vec<Hash> = buckets
            .iter_mut()
            .map(|b| {
                b.sort_unstable();
                let mut hasher = Sha256::new();
                for (k, h) in b.iter() {
                    hasher.update((k.len() as u64).to_be_bytes());
                    hasher.update(k.as_bytes());
                    hasher.update(h);
                }
                hasher.finalize().into()
            })
            .collect();
        let mut levels = vec![level.clone()];
        let fanout = usize::from(config.fanout);
        while level.len() > 1 {
            level = level
                .chunks(fanout)
                .map(|c| {
                    let mut hasher = Sha256::new();
                    for h in c {
                        hasher.update(h);
                    }
                    hasher.finalize().into()
                })
                .collect();
            levels.push(level.clone());
        }
        levels.reverse();
        Self { config, levels }
    }

    /// The root hash: equal roots mean equal keyspaces (up to SHA-256 collisions).
    pub fn root(&self) -> Hash {
        self.levels
            .first()
            .and_then(|l| l.first())
            .copied()
            .unwrap_or_default()
    }

    /// The shape.
    pub fn config(&self) -> DigestConfig {
        self.config
    }

    /// The buckets whose contents differ between `self` and `other`, in order, found by
    /// descending only into subtrees whose hashes differ.
    ///
    /// # Errors
    /// [`ReplicationError::DigestShape`] when the shapes differ, or `other` (from the network)
    /// is malformed.
    pub fn diff(&self, other: &Self) -> Result<Vec<u32>, ReplicationError> {
        let shape_err = || ReplicationError::DigestShape {
            ours_fanout: self.config.fanout,
            ours_depth: self.config.depth,
            theirs_fanout: other.config.fanout,
            theirs_depth: other.config.depth,
        };
        if self.config != other.config || !other.well_formed() {
            return Err(shape_err());
        }
        let fanout = usize::from(self.config.fanout);
        let mut frontier: Vec<usize> = vec![0];
        for (depth, (ours, theirs)) in self.levels.iter().zip(&other.levels).enumerate() {
            frontier.retain(|&i| ours.get(i) != theirs.get(i));
            if depth + 1 == self.levels.len() {
                break;
            }
            frontier = frontier
                .iter()
                .flat_map(|&i| i * fanout..(i + 1) * fanout)
                .collect();
        }
        Ok(frontier
            .into_iter()
            .filter_map(|i| u32::try_from(i).ok())
            .collect())
    }

    fn well_formed(&self) -> bool {
        let fanout = usize::from(self.config.fanout);
        self.levels.len() == usize::from(self.config.depth) + 1
            && self
                .levels
                .iter()
                .enumerate()
                .all(|(d, l)| Some(l.len()) == fanout.checked_pow(d as u32))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]

    use super::*;

    fn h(b: u8) -> Hash {
        [b; 32]
    }

    #[test]
    fn equal_contents_give_equal_roots_in_any_order() {
        let cfg = DigestConfig::new(4, 2).unwrap();
        let a = MerkleDigest::build(cfg, [("x", h(1)), ("y", h(2))]);
        let b = MerkleDigest::build(cfg, [("y", h(2)), ("x", h(1))]);
        assert_eq!(a.root(), b.root());
        assert_eq!(a.diff(&b).unwrap(), Vec::<u32>::new());
    }

    #[test]
    fn diff_names_exactly_the_buckets_of_the_changed_keys() {
        let cfg = DigestConfig::new(16, 2).unwrap();
        let keys: Vec<String> = (0..500).map(|i| format!("key-{i}")).collect();
        let base: Vec<(&str, Hash)> = keys.iter().map(|k| (k.as_str(), h(1))).collect();
        let mut changed = base.clone();
        changed[7].1 = h(2);
        changed.remove(300);
        let a = MerkleDigest::build(cfg, base.clone());
        let b = MerkleDigest::build(cfg, changed);
        let mut want = vec![cfg.bucket_of(&keys[7]), cfg.bucket_of(&keys[300])];
        want.sort_unstable();
        want.dedup();
        assert_eq!(a.diff(&b).unwrap(), want);
        assert_eq!(b.diff(&a).unwrap(), want);
    }

    #[test]
    fn shapes_must_match_and_bad_configs_are_refused() {
        let a = MerkleDigest::build(DigestConfig::new(4, 2).unwrap(), []);
        let b = MerkleDigest::build(DigestConfig::new(16, 2).unwrap(), []);
        assert!(matches!(
            a.diff(&b),
            Err(ReplicationError::DigestShape { .. })
        ));
        assert!(DigestConfig::new(1, 2).is_err());
        assert!(DigestConfig::new(16, 0).is_err());
        assert!(DigestConfig::new(256, 3).is_err());
        let mut broken = a.clone();
        broken.levels[2].pop();
        assert!(matches!(
            a.diff(&broken),
            Err(ReplicationError::DigestShape { .. })
        ));
    }
}
