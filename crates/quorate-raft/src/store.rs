//! Durable Raft storage in redb: the log, the vote, the committed and purged log ids, and the
//! latest state-machine snapshot, all in one database file.
//!
//! **Group commit.** Every write (append, truncate, purge, vote, committed) goes through one
//! bounded queue to one writer task, which merges whatever is queued (up to
//! `Limits::group_commit_max` operations) into a single redb write transaction with
//! `Durability::Immediate`, in queue order, and only after `commit()` returns reports the
//! appends flushed (`LogFlushed`) and answers the vote/truncate/purge waiters. Under load many
//! client writes share one fsync; an idle node commits each write alone.
//!
//! Appended entries are readable at once (openraft's rule) from an in-memory overlay of
//! not-yet-flushed entries, which the writer drains after each commit.
//!
//! Tables: `raft_log` (index -> postcard `Entry`), `raft_meta` (`vote`, `committed`,
//! `purged`), `raft_snapshot` (`meta`, `data`).

#![allow(
    clippy::result_large_err,
    reason = "openraft's StorageError is what the storage traits return; boxing it here only adds a conversion"
)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, RaftLogReader, StorageIOError};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use crate::error::NodeError;
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

const LOG: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("raft_meta");
pub(crate) const SNAPSHOT: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("raft_snapshot");

/// How the storage runs redb's blocking commits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoMode {
    /// On tokio's blocking pool (production: an fsync never stalls a runtime worker, and
    /// writes queue up behind it for the next group commit).
    Blocking,
    /// Inline on the writer task (simulation: deterministic, no threads; use with an
    /// in-memory database).
    Inline,
}

/// A node's redb database. Cheap to clone; in simulation keep one outside the host so that it
/// survives a crash and restart (the "disk").
#[derive(Clone)]
pub struct Storage {
    db: Arc<Database>,
    name: Arc<str>,
    io: IoMode,
}

impl Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("name", &self.name)
            .field("io", &self.io)
            .finish_non_exhaustive()
    }
}

impl Storage {
    /// Opens (or creates) the database file at `path`.
    pub fn open(path: &Path) -> Result<Self, NodeError> {
        let name: Arc<str> = path.display().to_string().into();
        let db = Database::create(path).map_err(|e| NodeError::Storage {
            path: name.to_string(),
            reason: format!("{e} (is another process using this data directory?)"),
        })?;
        Self::init(db, name, IoMode::Blocking)
    }

    /// A fresh in-memory database (simulation and tests); commits run inline.
    pub fn in_memory() -> Result<Self, NodeError> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| NodeError::Storage {
                path: "memory".to_owned(),
                reason: e.to_string(),
            })?;
        Self::init(db, "memory".into(), IoMode::Inline)
    }

    fn init(db: Database, name: Arc<str>, io: IoMode) -> Result<Self, NodeError> {
        let fail = |e: &dyn std::fmt::Display| NodeError::Storage {
            path: name.to_string(),
            reason: e.to_string(),
        };
        let txn = db.begin_write().map_err(|e| fail(&e))?;
        txn.open_table(LOG).map_err(|e| fail(&e))?;
        txn.open_table(META).map_err(|e| fail(&e))?;
        txn.open_table(SNAPSHOT).map_err(|e| fail(&e))?;
        txn.commit().map_err(|e| fail(&e))?;
        Ok(Self {
            db: Arc::new(db),
            name,
            io,
        })
    }

    pub(crate) fn db(&self) -> &Database {
        &self.db
    }

    /// Whether the log has never been written (no vote, no entries): a fresh node that may be
    /// bootstrapped with `initialize`.
    pub fn is_fresh(&self) -> Result<bool, NodeError> {
        let fail = |e: &dyn std::fmt::Display| NodeError::Storage {
            path: self.name.to_string(),
            reason: e.to_string(),
        };
        let txn = self.db.begin_read().map_err(|e| fail(&e))?;
        let meta = txn.open_table(META).map_err(|e| fail(&e))?;
        let log = txn.open_table(LOG).map_err(|e| fail(&e))?;
        let snap = txn.open_table(SNAPSHOT).map_err(|e| fail(&e))?;
        Ok(meta.get("vote").map_err(|e| fail(&e))?.is_none()
            && log.first().map_err(|e| fail(&e))?.is_none()
            && snap.get("meta").map_err(|e| fail(&e))?.is_none())
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StorageError> {
        let txn = self.db.begin_read().map_err(read_err)?;
        let t = txn.open_table(META).map_err(read_err)?;
        match t.get(key).map_err(read_err)? {
            Some(v) => Ok(Some(postcard::from_bytes(v.value()).map_err(read_err)?)),
            None => Ok(None),
        }
    }
}

fn any(e: impl std::fmt::Display) -> AnyError {
    AnyError::error(e.to_string())
}

fn read_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::read_logs(any(e)).into()
}

fn write_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_logs(any(e)).into()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means another thread panicked mid-update of an in-memory cache;
    // the durable state is in redb, so keep going with the data as is.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One queued storage write.
enum WriteOp {
    Append {
        entries: Vec<Entry>,
        callback: LogFlushed<TypeConfig>,
    },
    Truncate {
        since: u64,
        done: oneshot::Sender<Result<(), String>>,
    },
    Purge {
        upto: LogId,
        done: oneshot::Sender<Result<(), String>>,
    },
    Vote {
        vote: Vote,
        done: oneshot::Sender<Result<(), String>>,
    },
    Committed {
        committed: Option<LogId>,
    },
}

struct LogShared {
    storage: Storage,
    /// Appended but not yet durable entries (readable at once).
    pending: Mutex<BTreeMap<u64, Entry>>,
    /// The last purged log id (mirrors `raft_meta/purged`).
    purged: Mutex<Option<LogId>>,
    /// The highest committed index openraft reported (0 before any).
    committed: Arc<AtomicU64>,
}

/// openraft's log storage on redb, with group commit (see the module docs).
pub struct LogStore {
    shared: Arc<LogShared>,
    tx: mpsc::Sender<WriteOp>,
}

/// A reader of the log for openraft's replication tasks.
#[derive(Clone)]
pub struct LogReader {
    shared: Arc<LogShared>,
}

impl LogStore {
    /// A log store on `storage`; spawns its writer task (which ends when the store is
    /// dropped). `queue_max` bounds the queued writes, `batch_max` the operations per commit.
    pub fn new(storage: Storage, queue_max: usize, batch_max: usize) -> Result<Self, NodeError> {
        let purged: Option<LogId> =
            storage
                .read_meta("purged")
                .map_err(|e| NodeError::Storage {
                    path: storage.name.to_string(),
                    reason: e.to_string(),
                })?;
        let committed: Option<LogId> = storage
            .read_meta::<Option<LogId>>("committed")
            .map_err(|e| NodeError::Storage {
                path: storage.name.to_string(),
                reason: e.to_string(),
            })?
            .flatten();
        let shared = Arc::new(LogShared {
            storage,
            pending: Mutex::new(BTreeMap::new()),
            purged: Mutex::new(purged),
            committed: Arc::new(AtomicU64::new(committed.map_or(0, |c| c.index))),
        });
        let (tx, rx) = mpsc::channel(queue_max.max(1));
        tokio::spawn(writer(shared.clone(), rx, batch_max.max(1)));
        Ok(Self { shared, tx })
    }

    /// The committed index as last reported by openraft (shared, updated live).
    pub fn committed_index(&self) -> Arc<AtomicU64> {
        self.shared.committed.clone()
    }

    async fn submit(&self, op: WriteOp) -> Result<(), StorageError> {
        self.tx
            .send(op)
            .await
            .map_err(|_| write_err("the log writer task has stopped"))
    }

    async fn submit_wait(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<(), String>>) -> WriteOp,
    ) -> Result<(), StorageError> {
        let (done, rx) = oneshot::channel();
        self.submit(make(done)).await?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(write_err(e)),
            Err(_) => Err(write_err("the log writer task stopped before committing")),
        }
    }
}

/// The writer task: drains the queue into group commits.
async fn writer(shared: Arc<LogShared>, mut rx: mpsc::Receiver<WriteOp>, batch_max: usize) {
    let mut batch = Vec::with_capacity(batch_max);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < batch_max {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let encoded = encode_batch(&batch);
        let result = match encoded {
            Ok(ops) => match shared.storage.io {
                IoMode::Inline => commit_batch(&shared.storage.db, &ops),
                IoMode::Blocking => {
                    let db = shared.storage.db.clone();
                    tokio::task::spawn_blocking(move || commit_batch(&db, &ops))
                        .await
                        .unwrap_or_else(|e| Err(format!("log writer thread failed: {e}")))
                }
            },
            Err(e) => Err(e),
        };
        finish_batch(&shared, batch.drain(..), &result);
    }
}

/// A batch op with its payload already encoded (the encode runs on the async side, the
/// commit possibly on a blocking thread).
enum Encoded {
    Put(u64, Vec<u8>),
    Truncate(u64),
    Purge(u64, Vec<u8>),
    Meta(&'static str, Vec<u8>),
}

fn encode_batch(batch: &[WriteOp]) -> Result<Vec<Encoded>, String> {
    let mut out = Vec::new();
    for op in batch {
        match op {
            WriteOp::Append { entries, .. } => {
                for e in entries {
                    out.push(Encoded::Put(e.log_id.index, enc(e)?));
                }
            }
            WriteOp::Truncate { since, .. } => out.push(Encoded::Truncate(*since)),
            WriteOp::Purge { upto, .. } => out.push(Encoded::Purge(upto.index, enc(upto)?)),
            WriteOp::Vote { vote, .. } => out.push(Encoded::Meta("vote", enc(vote)?)),
            WriteOp::Committed { committed } => {
                out.push(Encoded::Meta("committed", enc(committed)?));
            }
        }
    }
    Ok(out)
}

fn enc<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, String> {
    postcard::to_allocvec(v).map_err(|e| format!("encode: {e}"))
}

fn commit_batch(db: &Database, ops: &[Encoded]) -> Result<(), String> {
    let s = |e: &dyn std::fmt::Display| e.to_string();
    let txn = db.begin_write().map_err(|e| s(&e))?;
    {
        let mut log = txn.open_table(LOG).map_err(|e| s(&e))?;
        let mut meta = txn.open_table(META).map_err(|e| s(&e))?;
        for op in ops {
            match op {
                Encoded::Put(i, v) => {
                    log.insert(*i, v.as_slice()).map_err(|e| s(&e))?;
                }
                Encoded::Truncate(since) => {
                    log.retain_in(*since.., |_, _| false).map_err(|e| s(&e))?;
                }
                Encoded::Purge(upto, v) => {
                    log.retain_in(..=*upto, |_, _| false).map_err(|e| s(&e))?;
                    meta.insert("purged", v.as_slice()).map_err(|e| s(&e))?;
                }
                Encoded::Meta(k, v) => {
                    meta.insert(*k, v.as_slice()).map_err(|e| s(&e))?;
                }
            }
        }
    }
    txn.commit().map_err(|e| s(&e))
}

fn finish_batch(
    shared: &LogShared,
    batch: impl Iterator<Item = WriteOp>,
    result: &Result<(), String>,
) {
    for op in batch {
        match op {
            WriteOp::Append { entries, callback } => {
                if result.is_ok() {
                    let mut pending = lock(&shared.pending);
                    for e in &entries {
                        if pending
                            .get(&e.log_id.index)
                            .is_some_and(|p| p.log_id == e.log_id)
                        {
                            pending.remove(&e.log_id.index);
                        }
                    }
                }
                callback.log_io_completed(
                    result
                        .clone()
                        .map_err(|e| io::Error::other(format!("raft log commit failed: {e}"))),
                );
            }
            WriteOp::Truncate { done, .. }
            | WriteOp::Purge { done, .. }
            | WriteOp::Vote { done, .. } => {
                let _ = done.send(result.clone());
            }
            WriteOp::Committed { .. } => {
                if let Err(e) = result {
                    tracing::error!(error = %e, "saving the committed log id failed");
                }
            }
        }
    }
}

impl LogShared {
    fn read_range(&self, start: u64, end_incl: Option<u64>) -> Result<Vec<Entry>, StorageError> {
        // Copy the overlay first, then read the database: an entry drained from the overlay
        // after the copy was committed before it was drained, so the read sees it.
        let mut merged: BTreeMap<u64, Entry> = {
            let pending = lock(&self.pending);
            match end_incl {
                Some(end) if end < start => BTreeMap::new(),
                Some(end) => pending
                    .range(start..=end)
                    .map(|(k, v)| (*k, v.clone()))
                    .collect(),
                None => pending
                    .range(start..)
                    .map(|(k, v)| (*k, v.clone()))
                    .collect(),
            }
        };
        if end_incl.is_some_and(|end| end < start) {
            return Ok(Vec::new());
        }
        let txn = self.storage.db.begin_read().map_err(read_err)?;
        let t = txn.open_table(LOG).map_err(read_err)?;
        let iter = match end_incl {
            Some(end) => t.range(start..=end).map_err(read_err)?,
            None => t.range(start..).map_err(read_err)?,
        };
        for item in iter {
            let (k, v) = item.map_err(read_err)?;
            let idx = k.value();
            if merged.contains_key(&idx) {
                continue;
            }
            let e: Entry = postcard::from_bytes(v.value())
                .map_err(|e| StorageError::from(StorageIOError::read_log_at_index(idx, any(e))))?;
            merged.insert(idx, e);
        }
        Ok(merged.into_values().collect())
    }

    fn last_log_id(&self) -> Result<Option<LogId>, StorageError> {
        if let Some((_, e)) = lock(&self.pending).last_key_value() {
            return Ok(Some(e.log_id));
        }
        let txn = self.storage.db.begin_read().map_err(read_err)?;
        let t = txn.open_table(LOG).map_err(read_err)?;
        match t.last().map_err(read_err)? {
            Some((_, v)) => {
                let e: Entry = postcard::from_bytes(v.value()).map_err(read_err)?;
                Ok(Some(e.log_id))
            }
            None => Ok(None),
        }
    }
}

fn bounds(range: &impl RangeBounds<u64>) -> (u64, Option<u64>) {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(e) => Some(*e),
        Bound::Excluded(0) => return (1, Some(0)),
        Bound::Excluded(e) => Some(e - 1),
        Bound::Unbounded => None,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (start, end) = bounds(&range);
        self.shared.read_range(start, end)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (start, end) = bounds(&range);
        self.shared.read_range(start, end)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let purged = *lock(&self.shared.purged);
        let last = self.shared.last_log_id()?.or(purged);
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        LogReader {
            shared: self.shared.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let vote = *vote;
        self.submit_wait(|done| WriteOp::Vote { vote, done })
            .await
            .map_err(|e| StorageIOError::new(ErrorSubject::Vote, ErrorVerb::Write, any(e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.shared.storage.read_meta("vote")
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        if let Some(c) = committed {
            self.shared.committed.fetch_max(c.index, Ordering::Relaxed);
        }
        self.submit(WriteOp::Committed { committed }).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self
            .shared
            .storage
            .read_meta::<Option<LogId>>("committed")?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        {
            let mut pending = lock(&self.shared.pending);
            for e in &entries {
                pending.insert(e.log_id.index, e.clone());
            }
        }
        self.submit(WriteOp::Append { entries, callback }).await
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let since = log_id.index;
        lock(&self.shared.pending).retain(|i, _| *i < since);
        self.submit_wait(|done| WriteOp::Truncate { since, done })
            .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        *lock(&self.shared.purged) = Some(log_id);
        lock(&self.shared.pending).retain(|i, _| *i > log_id.index);
        self.submit_wait(|done| WriteOp::Purge { upto: log_id, done })
            .await
    }
}
