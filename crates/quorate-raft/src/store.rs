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
//! **The committed id costs no fsync of its own.** openraft reports the committed log id
//! after every commit (and a follower after every heartbeat); committing it alone cost one
//! more fsync per write, on the critical path (the next append queued behind it). The writer
//! keeps the newest one and writes it inside the next commit that has real work (append,
//! vote, truncate, purge), alone once the writer has been idle for 50 ms, and at shutdown. A crash can lose it: openraft allows that (the
//! committed id is a hint for re-applying the log at start; the node re-learns the rest from
//! the leader), and it never runs ahead of the log, since it is written in a commit that
//! holds every append queued before it.
//!
//! Appended entries are readable at once (openraft's rule) from an in-memory overlay of
//! not-yet-flushed entries, which the writer drains after each commit.
//!
//! Tables: `raft_log` (index -> postcard `Entry`), `raft_meta` (`vote`, `committed`,
//! `purged`, `store_id`), `raft_snapshot` (`meta`, `data`).
//!
//! **Identity marker.** Next to the database file `F` sits `F.identity` (0600, fsynced),
//! written once when the store is created: a random store id (also kept in `raft_meta`),
//! and, from the first start of a node on it, the node name and cluster name. On open, a
//! marker whose store is missing, empty, of another id, or failing redb's integrity check is
//! refused with an error naming the file and the fix: a node must never start over silently,
//! since a new store forgets the node's vote and it could vote twice in one term.
//!
//! **Files are private.** [`create_data_dir`] makes the data directory 0700; the database and
//! the marker are created 0600, and existing ones with group or other bits are tightened.
//!
//! **The writer is a tracked task.** [`LogStore::new`] spawns its group-commit writer on the
//! node's `TaskTracker`; on shutdown it commits what is queued and ends, so the node's
//! `shutdown` returns only after the last write is durable.

#![allow(
    clippy::result_large_err,
    reason = "openraft's StorageError is what the storage traits return; boxing it here only adds a conversion"
)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::io::Write;
use std::ops::{Bound, RangeBounds};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, RaftLogReader, StorageIOError};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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
    /// The identity marker file (none for an in-memory store).
    marker: Option<Arc<Path>>,
}

/// What an identity marker file records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Identity {
    store_id: String,
    node: Option<String>,
    cluster: Option<String>,
}

impl Identity {
    fn render(&self) -> String {
        let mut out = String::from(
            "# quorate raft store identity: written once when this store was created.\n\
             # Do not delete it while the store is in use: it is how the node notices that its\n\
             # store was lost (and refuses to start over with no memory of its vote).\n",
        );
        out.push_str(&format!("store_id = {}\n", self.store_id));
        if let Some(n) = &self.node {
            out.push_str(&format!("node = {n}\n"));
        }
        if let Some(c) = &self.cluster {
            out.push_str(&format!("cluster = {c}\n"));
        }
        out
    }

    fn parse(text: &str) -> Option<Self> {
        let mut id = Identity::default();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line.split_once('=')?;
            let v = v.trim().to_owned();
            match k.trim() {
                "store_id" => id.store_id = v,
                "node" => id.node = Some(v),
                "cluster" => id.cluster = Some(v),
                _ => {}
            }
        }
        (!id.store_id.is_empty()).then_some(id)
    }
}

/// The identity marker of the database file at `path`: `path` with `.identity` appended.
pub fn marker_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".identity");
    PathBuf::from(p)
}

/// Creates the data directory `dir` (and its parents) with mode 0700; an existing one with
/// group or other permission bits is tightened to 0700 (its contents are the node's vote,
/// log and state).
pub fn create_data_dir(dir: &Path) -> Result<(), NodeError> {
    let fail = |what: &str, e: io::Error| NodeError::Storage {
        path: dir.display().to_string(),
        reason: format!("{what}: {e}"),
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| fail("cannot create the data directory", e))?;
    let meta = std::fs::metadata(dir).map_err(|e| fail("cannot read the data directory", e))?;
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(dir = %dir.display(), mode = format_args!("{:o}", meta.permissions().mode() & 0o777),
            "data directory is readable by others; tightening it to 0700");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| fail("cannot make the data directory private (chmod 0700)", e))?;
    }
    Ok(())
}

/// Makes the existing file at `path` 0600 if it has group or other bits.
fn tighten_file(path: &Path) -> io::Result<()> {
    let mode = std::fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// Writes `text` to `path` atomically: a 0600 temporary file, fsynced, renamed over `path`,
/// then the directory fsynced.
fn write_private_durable(path: &Path, text: &str) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn random_store_id() -> Result<String, String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| format!("no OS randomness for a store id: {e}"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
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
    /// Opens (or creates) the database file at `path`, checking it against its identity
    /// marker (see the module docs) and with redb's full integrity check.
    pub fn open(path: &Path) -> Result<Self, NodeError> {
        let name: Arc<str> = path.display().to_string().into();
        let fail = |reason: String| NodeError::Storage {
            path: name.to_string(),
            reason,
        };
        let marker = marker_path(path);
        let identity = match std::fs::read_to_string(&marker) {
            Ok(text) => Some(Identity::parse(&text).ok_or_else(|| {
                fail(format!(
                    "its identity marker {} is unreadable (no store_id line): restore it from \
                     a backup, or wipe the whole data directory deliberately and re-add this \
                     node as a new member",
                    marker.display()
                ))
            })?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(fail(format!("cannot read {}: {e}", marker.display()))),
        };
        let len = match std::fs::metadata(path) {
            Ok(m) => Some(m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(fail(format!("cannot stat the store: {e}"))),
        };
        if let Some(id) = &identity
            && len.unwrap_or(0) == 0
        {
            let what = if len.is_none() {
                "is missing"
            } else {
                "is empty"
            };
            return Err(fail(lost_store(what, &marker, id)));
        }
        if len.is_none() {
            // Create it private: redb would create it with the umask's mode.
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| fail(format!("cannot create the store: {e}")))?;
        }
        tighten_file(path).map_err(|e| fail(format!("cannot make the store private: {e}")))?;
        let db = open_checked(path).map_err(&fail)?;
        let storage = Self::init(
            db,
            name.clone(),
            IoMode::Blocking,
            Some(marker.clone().into()),
        )?;
        let stored = storage.store_id().map_err(|e| fail(e.to_string()))?;
        match (&identity, stored) {
            (Some(id), Some(stored)) if stored == id.store_id => {}
            (Some(id), _) => {
                return Err(fail(lost_store(
                    "is not the store its identity marker names (it was replaced or recreated)",
                    &marker,
                    id,
                )));
            }
            (None, Some(stored)) => {
                tracing::warn!(store = %name, marker = %marker.display(),
                    "raft store has no identity marker; writing it again");
                storage.write_marker(&Identity {
                    store_id: stored,
                    ..Identity::default()
                })?;
            }
            (None, None) => {
                // A new store (or one from before markers): give it an id, durably in the
                // store first, then in the marker.
                let id = random_store_id().map_err(&fail)?;
                storage.set_store_id(&id)?;
                storage.write_marker(&Identity {
                    store_id: id,
                    ..Identity::default()
                })?;
            }
        }
        if identity.is_some() {
            tighten_file(&marker)
                .map_err(|e| fail(format!("cannot make {} private: {e}", marker.display())))?;
        }
        Ok(storage)
    }

    /// Checks (and on first use records) that this store belongs to node `node` of cluster
    /// `cluster`; a store of another node or cluster is refused. In-memory stores are not
    /// checked.
    pub fn check_identity(&self, node: &str, cluster: &str) -> Result<(), NodeError> {
        let Some(marker) = &self.marker else {
            return Ok(());
        };
        let fail = |reason: String| NodeError::Storage {
            path: self.name.to_string(),
            reason,
        };
        let text = std::fs::read_to_string(marker)
            .map_err(|e| fail(format!("cannot read {}: {e}", marker.display())))?;
        let mut id = Identity::parse(&text)
            .ok_or_else(|| fail(format!("{} has no store_id line", marker.display())))?;
        for (field, have, want) in [("node", &id.node, node), ("cluster", &id.cluster, cluster)] {
            if let Some(have) = have
                && have != want
            {
                return Err(fail(format!(
                    "this store belongs to {field} {have:?} (see {}), not {want:?}: point \
                     data_dir at this node's own directory",
                    marker.display()
                )));
            }
        }
        if id.node.is_none() || id.cluster.is_none() {
            id.node = Some(node.to_owned());
            id.cluster = Some(cluster.to_owned());
            self.write_marker(&id)?;
        }
        Ok(())
    }

    fn write_marker(&self, id: &Identity) -> Result<(), NodeError> {
        let Some(marker) = &self.marker else {
            return Ok(());
        };
        write_private_durable(marker, &id.render()).map_err(|e| NodeError::Storage {
            path: self.name.to_string(),
            reason: format!("cannot write the identity marker {}: {e}", marker.display()),
        })
    }

    fn store_id(&self) -> Result<Option<String>, StorageError> {
        let txn = self.db.begin_read().map_err(read_err)?;
        let t = txn.open_table(META).map_err(read_err)?;
        Ok(t.get("store_id")
            .map_err(read_err)?
            .map(|v| String::from_utf8_lossy(v.value()).into_owned()))
    }

    fn set_store_id(&self, id: &str) -> Result<(), NodeError> {
        let fail = |e: &dyn std::fmt::Display| NodeError::Storage {
            path: self.name.to_string(),
            reason: format!("recording the store id: {e}"),
        };
        let txn = self.db.begin_write().map_err(|e| fail(&e))?;
        {
            let mut t = txn.open_table(META).map_err(|e| fail(&e))?;
            t.insert("store_id", id.as_bytes()).map_err(|e| fail(&e))?;
        }
        txn.commit().map_err(|e| fail(&e))
    }

    /// A fresh in-memory database (simulation and tests); commits run inline.
    pub fn in_memory() -> Result<Self, NodeError> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| NodeError::Storage {
                path: "memory".to_owned(),
                reason: e.to_string(),
            })?;
        Self::init(db, "memory".into(), IoMode::Inline, None)
    }

    fn init(
        db: Database,
        name: Arc<str>,
        io: IoMode,
        marker: Option<Arc<Path>>,
    ) -> Result<Self, NodeError> {
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
            marker,
        })
    }

    pub(crate) fn db(&self) -> &Database {
        &self.db
    }

    /// How this store runs its blocking commits.
    pub(crate) fn io(&self) -> IoMode {
        self.io
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

/// The error text for a store that its identity marker says existed but is gone or replaced.
fn lost_store(what: &str, marker: &Path, id: &Identity) -> String {
    let node = id.node.as_deref().unwrap_or("this node");
    format!(
        "the store {what}, but its identity marker {} says {node} already ran on store {}: \
         starting over would forget its vote and could let it vote twice in one term, so it \
         does not start. Restore the store file from a backup; or, to rejoin as a new member \
         deliberately, remove {node} from the cluster, delete the whole data directory (store \
         and marker), and add it again",
        marker.display(),
        id.store_id
    )
}

/// Opens the redb file at `path` and runs redb's full integrity check. redb can panic on a
/// corrupted file; that is caught and reported as corruption.
fn open_checked(path: &Path) -> Result<Database, String> {
    let corrupt = |detail: String| {
        format!(
            "the store failed redb's integrity check (corrupt: {detail}): restore it from a \
             backup, or wipe the whole data directory deliberately and re-add this node as a \
             new member"
        )
    };
    let opened = std::panic::catch_unwind(|| {
        let mut db = Database::create(path)?;
        let clean = db.check_integrity()?;
        Ok::<_, redb::DatabaseError>((db, clean))
    });
    match opened {
        Ok(Ok((db, true))) => Ok(db),
        Ok(Ok((_, false))) => Err(corrupt(
            "redb had to repair it, possibly by rolling back committed writes".to_owned(),
        )),
        Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => Err(
            "the store is already open (is another process using this data directory?)".to_owned(),
        ),
        Ok(Err(e)) => Err(corrupt(e.to_string())),
        Err(panic) => {
            let detail = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "redb panicked while opening it".to_owned());
            Err(corrupt(detail))
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
    /// A log store on `storage`; spawns its writer task on `tracker`, which ends when the
    /// store is dropped or `stop` fires (after committing what is queued). `queue_max` bounds
    /// the queued writes, `batch_max` the operations per commit.
    pub fn new(
        storage: Storage,
        queue_max: usize,
        batch_max: usize,
        tracker: &TaskTracker,
        stop: CancellationToken,
    ) -> Result<Self, NodeError> {
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
        tracker.spawn(writer(shared.clone(), rx, batch_max.max(1), stop));
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
async fn writer(
    shared: Arc<LogShared>,
    mut rx: mpsc::Receiver<WriteOp>,
    batch_max: usize,
    stop: CancellationToken,
) {
    let mut batch = Vec::with_capacity(batch_max);
    // The newest committed id openraft reported that is not yet in a commit. It rides along
    // with the next commit that has real work (an append, vote, truncate or purge) instead
    // of costing an fsync of its own: a committed id that is lost in a crash only means the
    // node re-learns it from the leader (openraft allows `save_committed` to be lost).
    let mut committed: Option<Option<LogId>> = None;
    loop {
        // With a committed id waiting and nothing else to do for `COMMITTED_IDLE_FLUSH`, it
        // is committed alone: off the critical path (the node is idle), and it bounds how far
        // a restarted node's state starts behind what it had applied.
        let waiting = committed.is_some();
        let idle_flush = async move {
            if waiting {
                tokio::time::sleep(COMMITTED_IDLE_FLUSH).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let first = tokio::select! {
            biased;
            op = rx.recv() => op,
            // Shutting down: commit what is queued, then end.
            _ = stop.cancelled() => rx.try_recv().ok(),
            () = idle_flush => {
                let result = match encode_batch(&[], committed.take()) {
                    Ok(ops) => commit_ops(&shared.storage, ops).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = result {
                    tracing::error!(error = %e, "saving the committed log id failed");
                }
                continue;
            }
        };
        let Some(first) = first else {
            break;
        };
        batch.push(first);
        while batch.len() < batch_max {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let mut durable_work = false;
        batch.retain(|op| match op {
            WriteOp::Committed { committed: c } => {
                committed = Some(*c);
                false
            }
            _ => {
                durable_work = true;
                true
            }
        });
        if !durable_work {
            continue;
        }
        let encoded = encode_batch(&batch, committed.take());
        let result = match encoded {
            Ok(ops) => commit_ops(&shared.storage, ops).await,
            Err(e) => Err(e),
        };
        finish_batch(&shared, batch.drain(..), &result);
    }
    // Closing: save the last committed id (best effort, as before; see above).
    if let Some(c) = committed {
        let result = match encode_batch(&[], Some(c)) {
            Ok(ops) => commit_ops(&shared.storage, ops).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "saving the committed log id failed");
        }
    }
}

/// How long the writer waits, idle, before committing a committed id alone.
const COMMITTED_IDLE_FLUSH: std::time::Duration = std::time::Duration::from_millis(50);

/// Commits `ops` on `storage`: inline or on the blocking pool, by its `IoMode`.
async fn commit_ops(storage: &Storage, ops: Vec<Encoded>) -> Result<(), String> {
    match storage.io {
        IoMode::Inline => commit_batch(&storage.db, &ops),
        IoMode::Blocking => {
            let db = storage.db.clone();
            tokio::task::spawn_blocking(move || commit_batch(&db, &ops))
                .await
                .unwrap_or_else(|e| Err(format!("log writer thread failed: {e}")))
        }
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

fn encode_batch(
    batch: &[WriteOp],
    committed: Option<Option<LogId>>,
) -> Result<Vec<Encoded>, String> {
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
    if let Some(c) = committed {
        out.push(Encoded::Meta("committed", enc(&c)?));
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
