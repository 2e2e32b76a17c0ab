//! Typed state: [`StateMap<K, V>`] (postcard-encoded keys and values under a prefix, with a
//! bounded number of entries kept by a count key updated in the same transaction as every
//! insert and delete) and its [`watch`](StateMap::watch) stream, which resumes after a broken
//! connection from the revision after the last one delivered, so no change is skipped; and
//! [`Counter`].

use std::marker::PhantomData;
use std::num::{NonZeroU32, NonZeroU64};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use quorate_coord_api::{
    Compare, Consistency, Coord, CoordError, EventKind, KeyValue, RangeRequest, Revision, Txn,
    TxnOp, WatchStream,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::StateError;

/// Limits of a [`StateMap`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateMapConfig {
    /// The most entries the map holds; inserting beyond fails with [`StateError::Full`].
    pub entries_max: NonZeroU64,
    /// The most compare-and-set attempts of one operation under contention.
    pub cas_attempts_max: NonZeroU32,
    /// The most reconnects in a row of a watch that makes no progress.
    pub watch_reconnects_max: u32,
    /// Wait before a watch reconnects.
    pub watch_reconnect_backoff: Duration,
}

impl StateMapConfig {
    /// At most `entries_max` entries; 32 CAS attempts; 10 reconnects 100 ms apart.
    pub fn new(entries_max: NonZeroU64) -> StateMapConfig {
        StateMapConfig {
            entries_max,
            cas_attempts_max: NonZeroU32::MIN.saturating_add(31),
            watch_reconnects_max: 10,
            watch_reconnect_backoff: Duration::from_millis(100),
        }
    }
}

/// A value with its history stamps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned<V> {
    /// The value.
    pub value: V,
    /// Revision of its last change (pass it to [`StateMap::compare_and_set`]).
    pub revision: Revision,
    /// Number of writes since the key was created.
    pub version: u64,
}

/// One change delivered by [`StateMap::watch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change<K, V> {
    /// The key.
    pub key: K,
    /// The revision of the change.
    pub revision: Revision,
    /// The new value, or `None` for a delete.
    pub value: Option<V>,
}

/// A typed, bounded map in the coordination store. Linearizable reads and writes.
///
/// ```no_run
/// # async fn demo(coord: std::sync::Arc<dyn quorate_coord_api::Coord>) -> Result<(), quorate_state::StateError> {
/// use std::num::NonZeroU64;
/// use quorate_state::{StateMap, StateMapConfig};
/// let cfg = StateMapConfig::new(NonZeroU64::new(1000).unwrap_or(NonZeroU64::MIN));
/// let chats: StateMap<i64, String> = StateMap::new(coord, "bot/chats/", cfg)?;
/// let rev = chats.put(&42, &"en".to_owned()).await?;
/// // Only if nobody changed it since:
/// let won = chats.compare_and_set(&42, Some(rev), &"de".to_owned()).await?;
/// assert!(won.is_some());
/// # Ok(()) }
/// ```
pub struct StateMap<K, V> {
    coord: Arc<dyn Coord>,
    prefix: String,
    config: StateMapConfig,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> std::fmt::Debug for StateMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMap")
            .field("prefix", &self.prefix)
            .field("config", &self.config)
            .finish()
    }
}

impl<K, V> Clone for StateMap<K, V> {
    fn clone(&self) -> Self {
        StateMap {
            coord: Arc::clone(&self.coord),
            prefix: self.prefix.clone(),
            config: self.config.clone(),
            _types: PhantomData,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn encode<T: Serialize>(what: &str, t: &T) -> Result<Vec<u8>, StateError> {
    postcard::to_stdvec(t).map_err(|e| StateError::Codec {
        what: format!("encode {what}"),
        reason: e.to_string(),
    })
}

fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, StateError> {
    postcard::from_bytes(bytes).map_err(|e| StateError::Codec {
        what: format!("decode {what}"),
        reason: format!(
            "{e}: the stored bytes are not this map's type (another writer, or a changed type)"
        ),
    })
}

impl<K, V> StateMap<K, V>
where
    K: Serialize + DeserializeOwned + Send + 'static,
    V: Serialize + DeserializeOwned + Send + 'static,
{
    /// The map stored under `prefix` (which must be non-empty and end with `/`).
    pub fn new(
        coord: Arc<dyn Coord>,
        prefix: impl Into<String>,
        config: StateMapConfig,
    ) -> Result<StateMap<K, V>, StateError> {
        let prefix = prefix.into();
        if prefix.is_empty() || !prefix.ends_with('/') {
            return Err(StateError::Config {
                reason: format!("state map prefix {prefix:?} must be non-empty and end with '/'"),
            });
        }
        Ok(StateMap {
            coord,
            prefix,
            config,
            _types: PhantomData,
        })
    }

    fn entries_prefix(&self) -> String {
        format!("{}e/", self.prefix)
    }

    fn count_key(&self) -> String {
        format!("{}n", self.prefix)
    }

    fn entry_key(&self, k: &K) -> Result<String, StateError> {
        Ok(format!(
            "{}{}",
            self.entries_prefix(),
            hex(&encode("key", k)?)
        ))
    }

    fn value_bytes(&self, v: &V) -> Result<Vec<u8>, StateError> {
        let bytes = encode("value", v)?;
        let max = self.coord.capabilities().value_bytes_max;
        if bytes.len() > max {
            return Err(StateError::Codec {
                what: format!("value for {:?}", self.prefix),
                reason: format!(
                    "{} bytes exceed the backend's value_bytes_max = {max}",
                    bytes.len()
                ),
            });
        }
        Ok(bytes)
    }

    fn versioned(kv: &KeyValue) -> Result<Versioned<V>, StateError> {
        Ok(Versioned {
            value: decode("value", &kv.value)?,
            revision: kv.mod_revision,
            version: kv.version,
        })
    }

    async fn read(&self, key: &str) -> Result<Option<KeyValue>, StateError> {
        Ok(self
            .coord
            .get(key, Consistency::Linearizable)
            .await
            .map_err(StateError::coord("read state map"))?
            .kv)
    }

    /// The count and a compare that holds while it is unchanged.
    async fn count(&self) -> Result<(u64, Compare), StateError> {
        let key = self.count_key();
        Ok(match self.read(&key).await? {
            Some(kv) => (
                decode("entry count", &kv.value)?,
                Compare::mod_revision_eq(key, kv.mod_revision),
            ),
            None => (0, Compare::absent(key)),
        })
    }

    async fn run(&self, txn: Txn) -> Result<(bool, Revision), StateError> {
        let r = self
            .coord
            .txn(txn)
            .await
            .map_err(StateError::coord("write state map"))?;
        Ok((r.succeeded, r.revision))
    }

    fn contention(&self, what: &str) -> StateError {
        StateError::Contention {
            what: format!("{what} in {:?}", self.prefix),
            attempts: self.config.cas_attempts_max.get(),
        }
    }

    /// Reads one entry.
    pub async fn get(&self, k: &K) -> Result<Option<Versioned<V>>, StateError> {
        let key = self.entry_key(k)?;
        self.read(&key)
            .await?
            .as_ref()
            .map(Self::versioned)
            .transpose()
    }

    /// The number of entries.
    pub async fn len(&self) -> Result<u64, StateError> {
        Ok(self.count().await?.0)
    }

    /// Whether the map is empty.
    pub async fn is_empty(&self) -> Result<bool, StateError> {
        Ok(self.len().await? == 0)
    }

    /// Inserts a new entry if `k` is absent: `Some(revision)` on success, `None` if it exists.
    async fn insert_new(&self, key: &str, value: &[u8]) -> Result<Option<Revision>, StateError> {
        for _ in 0..self.config.cas_attempts_max.get() {
            let (count, count_cmp) = self.count().await?;
            if count >= self.config.entries_max.get() {
                if self.read(key).await?.is_some() {
                    return Ok(None);
                }
                return Err(StateError::Full {
                    prefix: self.prefix.clone(),
                    max: self.config.entries_max.get(),
                });
            }
            let txn = Txn {
                compares: vec![Compare::absent(key), count_cmp],
                success: vec![
                    TxnOp::Put {
                        key: key.to_owned(),
                        value: value.to_vec(),
                        lease: None,
                    },
                    TxnOp::Put {
                        key: self.count_key(),
                        value: encode("entry count", &(count + 1))?,
                        lease: None,
                    },
                ],
                failure: vec![TxnOp::Get {
                    key: key.to_owned(),
                }],
            };
            let r = self
                .coord
                .txn(txn)
                .await
                .map_err(StateError::coord("insert into state map"))?;
            if r.succeeded {
                return Ok(Some(r.revision));
            }
            if matches!(
                r.results.first(),
                Some(quorate_coord_api::TxnOpResult::Get(Some(_)))
            ) {
                return Ok(None);
            }
        }
        Err(self.contention("insert"))
    }

    /// Writes `v` under `k` (insert or overwrite); returns the revision of the write.
    pub async fn put(&self, k: &K, v: &V) -> Result<Revision, StateError> {
        let key = self.entry_key(k)?;
        let value = self.value_bytes(v)?;
        for _ in 0..self.config.cas_attempts_max.get() {
            match self.read(&key).await? {
                Some(kv) => {
                    let txn = Txn {
                        compares: vec![Compare::mod_revision_eq(&key, kv.mod_revision)],
                        success: vec![TxnOp::Put {
                            key: key.clone(),
                            value: value.clone(),
                            lease: None,
                        }],
                        failure: vec![],
                    };
                    let (ok, rev) = self.run(txn).await?;
                    if ok {
                        return Ok(rev);
                    }
                }
                None => {
                    if let Some(rev) = self.insert_new(&key, &value).await? {
                        return Ok(rev);
                    }
                }
            }
        }
        Err(self.contention("put"))
    }

    /// Writes `v` under `k` only if the entry's last change is `expected` (`None`: only if
    /// absent). Returns the new revision, or `None` if the entry had changed.
    pub async fn compare_and_set(
        &self,
        k: &K,
        expected: Option<Revision>,
        v: &V,
    ) -> Result<Option<Revision>, StateError> {
        let key = self.entry_key(k)?;
        let value = self.value_bytes(v)?;
        match expected {
            None => self.insert_new(&key, &value).await,
            Some(rev) => {
                let txn = Txn {
                    compares: vec![Compare::mod_revision_eq(&key, rev)],
                    success: vec![TxnOp::Put {
                        key,
                        value,
                        lease: None,
                    }],
                    failure: vec![],
                };
                let (ok, rev) = self.run(txn).await?;
                Ok(ok.then_some(rev))
            }
        }
    }

    /// Deletes `k`; returns whether it existed.
    pub async fn delete(&self, k: &K) -> Result<bool, StateError> {
        let key = self.entry_key(k)?;
        for _ in 0..self.config.cas_attempts_max.get() {
            let Some(kv) = self.read(&key).await? else {
                return Ok(false);
            };
            let (count, count_cmp) = self.count().await?;
            let txn = Txn {
                compares: vec![Compare::mod_revision_eq(&key, kv.mod_revision), count_cmp],
                success: vec![
                    TxnOp::Delete { key: key.clone() },
                    TxnOp::Put {
                        key: self.count_key(),
                        value: encode("entry count", &count.saturating_sub(1))?,
                        lease: None,
                    },
                ],
                failure: vec![],
            };
            if self.run(txn).await?.0 {
                return Ok(true);
            }
        }
        Err(self.contention("delete"))
    }

    /// Every entry, in key-byte order (at most `entries_max`).
    pub async fn entries(&self) -> Result<Vec<(K, Versioned<V>)>, StateError> {
        let mut out = Vec::new();
        let mut req = RangeRequest::prefix(self.entries_prefix());
        loop {
            let r = self
                .coord
                .range(req.clone())
                .await
                .map_err(StateError::coord("list state map"))?;
            for kv in &r.kvs {
                out.push((self.decode_key(&kv.key)?, Self::versioned(kv)?));
            }
            let last = r.kvs.last().map(|kv| kv.key.clone());
            if !r.more || last.is_none() || out.len() as u64 >= self.config.entries_max.get() {
                return Ok(out);
            }
            req.start_after = last;
        }
    }

    fn decode_key(&self, key: &str) -> Result<K, StateError> {
        let bad = || StateError::Codec {
            what: format!("key {key:?}"),
            reason: "not a key written by this state map".to_owned(),
        };
        let raw = key.strip_prefix(&self.entries_prefix()).ok_or_else(bad)?;
        decode("key", &unhex(raw).ok_or_else(bad)?)
    }

    fn change(&self, ev: &quorate_coord_api::WatchEvent) -> Result<Change<K, V>, StateError> {
        Ok(Change {
            key: self.decode_key(&ev.kv.key)?,
            revision: ev.revision(),
            value: match ev.kind {
                EventKind::Put => Some(decode("value", &ev.kv.value)?),
                EventKind::Delete => None,
            },
        })
    }

    /// Streams typed changes from revision `from` (`None`: from now). When the connection
    /// breaks, it reconnects from the revision after the last change delivered, so no change
    /// is missed or repeated; if the backend compacted those revisions it yields
    /// [`StateError::WatchGap`] and ends. A change that does not decode is yielded as an error
    /// and the stream goes on.
    pub async fn watch(
        &self,
        from: Option<Revision>,
    ) -> Result<BoxStream<'static, Result<Change<K, V>, StateError>>, StateError> {
        let from = match from {
            Some(r) => r,
            None => self
                .coord
                .get(&self.count_key(), Consistency::Linearizable)
                .await
                .map_err(StateError::coord("read current revision"))?
                .revision
                .next(),
        };
        let state = WatchState {
            map: self.clone(),
            from,
            stream: None,
            failures: 0,
            done: false,
        };
        Ok(futures::stream::unfold(state, |mut s| async move {
            let item = s.next_item().await?;
            Some((item, s))
        })
        .boxed())
    }
}

struct WatchState<K, V> {
    map: StateMap<K, V>,
    from: Revision,
    stream: Option<WatchStream>,
    failures: u32,
    done: bool,
}

impl<K, V> WatchState<K, V>
where
    K: Serialize + DeserializeOwned + Send + 'static,
    V: Serialize + DeserializeOwned + Send + 'static,
{
    fn gap(&mut self, compacted: Revision) -> Result<Change<K, V>, StateError> {
        self.done = true;
        Err(StateError::WatchGap {
            prefix: self.map.prefix.clone(),
            from: self.from,
            compacted,
        })
    }

    async fn next_item(&mut self) -> Option<Result<Change<K, V>, StateError>> {
        if self.done {
            return None;
        }
        loop {
            let Some(stream) = self.stream.as_mut() else {
                if self.failures > self.map.config.watch_reconnects_max {
                    self.done = true;
                    return Some(Err(StateError::Coord {
                        what: "watch state map",
                        source: CoordError::Unavailable {
                            reason: format!("{} reconnects in a row failed", self.failures),
                        },
                    }));
                }
                if self.failures > 0 {
                    tokio::time::sleep(self.map.config.watch_reconnect_backoff).await;
                }
                match self
                    .map
                    .coord
                    .watch(&self.map.entries_prefix(), Some(self.from))
                    .await
                {
                    Ok(s) => self.stream = Some(s),
                    Err(CoordError::Compacted { compacted, .. }) => {
                        return Some(self.gap(compacted));
                    }
                    Err(e) if e.is_retryable() => self.failures += 1,
                    Err(e) => {
                        self.done = true;
                        return Some(Err(StateError::coord("watch state map")(e)));
                    }
                }
                continue;
            };
            match stream.next().await {
                Some(Ok(ev)) => {
                    if ev.revision() < self.from {
                        continue;
                    }
                    self.from = ev.revision().next();
                    self.failures = 0;
                    return Some(self.map.change(&ev));
                }
                Some(Err(CoordError::Compacted { compacted, .. })) => {
                    self.stream = None;
                    return Some(self.gap(compacted));
                }
                Some(Err(_)) | None => {
                    self.stream = None;
                    self.failures += 1;
                }
            }
        }
    }
}

/// A shared integer counter (postcard `i64` under one key), changed by compare-and-set.
#[derive(Clone)]
pub struct Counter {
    coord: Arc<dyn Coord>,
    key: String,
    attempts_max: NonZeroU32,
}

impl std::fmt::Debug for Counter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counter").field("key", &self.key).finish()
    }
}

impl Counter {
    /// The counter stored at `key`; an add gives up after `attempts_max` lost races.
    pub fn new(coord: Arc<dyn Coord>, key: impl Into<String>, attempts_max: NonZeroU32) -> Counter {
        Counter {
            coord,
            key: key.into(),
            attempts_max,
        }
    }

    async fn read(&self) -> Result<(i64, Compare), StateError> {
        let kv = self
            .coord
            .get(&self.key, Consistency::Linearizable)
            .await
            .map_err(StateError::coord("read counter"))?
            .kv;
        Ok(match kv {
            Some(kv) => (
                decode("counter", &kv.value)?,
                Compare::mod_revision_eq(&self.key, kv.mod_revision),
            ),
            None => (0, Compare::absent(&self.key)),
        })
    }

    /// The current value (0 if never written).
    pub async fn get(&self) -> Result<i64, StateError> {
        Ok(self.read().await?.0)
    }

    /// Adds `delta` (saturating) and returns the new value.
    pub async fn add(&self, delta: i64) -> Result<i64, StateError> {
        for _ in 0..self.attempts_max.get() {
            let (cur, cmp) = self.read().await?;
            let new = cur.saturating_add(delta);
            let txn = Txn {
                compares: vec![cmp],
                success: vec![TxnOp::Put {
                    key: self.key.clone(),
                    value: encode("counter", &new)?,
                    lease: None,
                }],
                failure: vec![],
            };
            let r = self
                .coord
                .txn(txn)
                .await
                .map_err(StateError::coord("add to counter"))?;
            if r.succeeded {
                return Ok(new);
            }
        }
        Err(StateError::Contention {
            what: format!("counter {:?}", self.key),
            attempts: self.attempts_max.get(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test")]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_rejects_junk() {
        for bytes in [vec![], vec![0u8], vec![0xab, 0x01, 0xff]] {
            assert_eq!(unhex(&hex(&bytes)).unwrap(), bytes);
        }
        assert_eq!(hex(&[0xab, 0x01]), "ab01");
        assert!(unhex("abc").is_none());
        assert!(unhex("zz").is_none());
        assert!(unhex("é1").is_none());
    }
}
