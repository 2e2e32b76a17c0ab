//! Durable keyspaces in redb: one database file per node, tables per keyspace.
//!
//! - Multi-master keyspace `NAME`: table `mm:NAME` maps each key to the postcard bytes of its
//!   merged state; the node's hybrid-clock reading is kept under `mm:NAME` in table `meta`,
//!   written in the same transaction, so a restarted node issues timestamps above every one
//!   it issued before.
//! - Leader-mode keyspace `NAME`: table `log:NAME` maps each log index to the entry and the
//!   value the key held before it (so that a divergent suffix can be undone); table `kv:NAME`
//!   holds the applied values; `meta` holds the highest fencing token seen and the first
//!   retained index.
//!
//! Every commit uses redb's default `Durability::Immediate` (fsync before `commit` returns):
//! a write is acknowledged only after it. Commits run inline on the keyspace's task.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::error::ReplicationError;
use crate::hlc::HlcTimestamp;
use crate::msg::{EncodedEntry, LogEntry, LogPos};

const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");

/// One node's replication database. Cheap to clone.
#[derive(Clone)]
pub struct ReplicaDb {
    db: Arc<Database>,
    path: Arc<str>,
}

impl std::fmt::Debug for ReplicaDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaDb")
            .field("path", &self.path)
            .finish()
    }
}

/// A leader-mode log record on disk: the entry and the value its key held before it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LogRecord {
    pub(crate) entry: LogEntry,
    pub(crate) before: Option<Vec<u8>>,
}

/// What a leader-mode keyspace recovers from disk.
#[derive(Debug, Default)]
pub(crate) struct LeaderDisk {
    pub(crate) log: Vec<LogRecord>,
    pub(crate) kv: Vec<(String, Vec<u8>)>,
    pub(crate) highest_token: u64,
    /// The position just before the first retained record.
    pub(crate) base: LogPos,
}

impl ReplicaDb {
    /// Opens (or creates) the database file at `path` and checks its integrity.
    ///
    /// # Errors
    /// [`ReplicationError::Storage`] when the file cannot be opened, is in use by another
    /// process, or fails redb's integrity check.
    pub fn open(path: &Path) -> Result<Self, ReplicationError> {
        let name = path.display().to_string();
        let err = |detail: String| ReplicationError::Storage {
            path: name.clone(),
            detail,
        };
        let opened = std::panic::catch_unwind(|| {
            let mut db = Database::create(path)?;
            let clean = db.check_integrity()?;
            Ok::<_, redb::DatabaseError>((db, clean))
        });
        let db = match opened {
            Ok(Ok((db, true))) => db,
            Ok(Ok((_, false))) => {
                return Err(err(
                    "redb repaired the file, possibly rolling back committed writes: restore it \
                     from a backup or remove it to resync this node from its peers"
                        .to_owned(),
                ));
            }
            Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => {
                return Err(err(
                    "already open (is another process using this data directory?)".to_owned(),
                ));
            }
            Ok(Err(e)) => return Err(err(format!("cannot open: {e}"))),
            Err(_) => {
                return Err(err(
                    "redb panicked opening it (corrupt): restore it or remove it to resync"
                        .to_owned(),
                ));
            }
        };
        Ok(Self {
            db: Arc::new(db),
            path: name.into(),
        })
    }

    /// A database in memory (simulation and benchmarks: the "disk" is kept outside a
    /// simulated host so that it survives the host's crash).
    ///
    /// # Errors
    /// [`ReplicationError::Storage`] if redb cannot create it.
    pub fn in_memory() -> Result<Self, ReplicationError> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| ReplicationError::Storage {
                path: "(memory)".to_owned(),
                detail: e.to_string(),
            })?;
        Ok(Self {
            db: Arc::new(db),
            path: "(memory)".into(),
        })
    }

    /// The file path (for messages).
    pub fn path(&self) -> &str {
        &self.path
    }

    fn err(&self, what: &str, e: impl std::fmt::Display) -> ReplicationError {
        ReplicationError::Storage {
            path: self.path.to_string(),
            detail: format!("{what}: {e}"),
        }
    }

    /// Every key and encoded state of multi-master keyspace `ks`, and its clock reading.
    pub(crate) fn mm_load(
        &self,
        ks: &str,
    ) -> Result<(Vec<EncodedEntry>, Option<HlcTimestamp>), ReplicationError> {
        let tname = format!("mm:{ks}");
        let table_def: TableDefinition<'_, &str, &[u8]> = TableDefinition::new(&tname);
        let txn = self.db.begin_read().map_err(|e| self.err("read", e))?;
        let mut entries = Vec::new();
        match txn.open_table(table_def) {
            Ok(t) => {
                for row in t.iter().map_err(|e| self.err("read", e))? {
                    let (k, v) = row.map_err(|e| self.err("read", e))?;
                    entries.push((k.value().to_owned(), v.value().to_vec()));
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(self.err("read", e)),
        }
        let clock = match txn.open_table(META) {
            Ok(t) => match t.get(tname.as_str()).map_err(|e| self.err("read", e))? {
                Some(v) => Some(
                    postcard::from_bytes(v.value())
                        .map_err(|e| self.err("decode the stored clock", e))?,
                ),
                None => None,
            },
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(self.err("read", e)),
        };
        Ok((entries, clock))
    }

    /// Writes the given states of `ks` and the clock reading in one durable transaction.
    pub(crate) fn mm_commit(
        &self,
        ks: &str,
        entries: &[EncodedEntry],
        clock: &HlcTimestamp,
    ) -> Result<(), ReplicationError> {
        let tname = format!("mm:{ks}");
        let table_def: TableDefinition<'_, &str, &[u8]> = TableDefinition::new(&tname);
        let clock = postcard::to_allocvec(clock).map_err(|e| self.err("encode", e))?;
        let txn = self.db.begin_write().map_err(|e| self.err("write", e))?;
        {
            let mut t = txn
                .open_table(table_def)
                .map_err(|e| self.err("write", e))?;
            for (k, v) in entries {
                t.insert(k.as_str(), v.as_slice())
                    .map_err(|e| self.err("write", e))?;
            }
            let mut m = txn.open_table(META).map_err(|e| self.err("write", e))?;
            m.insert(tname.as_str(), clock.as_slice())
                .map_err(|e| self.err("write", e))?;
        }
        txn.commit().map_err(|e| self.err("commit", e))
    }

    /// Recovers leader-mode keyspace `ks`.
    pub(crate) fn leader_load(&self, ks: &str) -> Result<LeaderDisk, ReplicationError> {
        let (lname, kname) = (format!("log:{ks}"), format!("kv:{ks}"));
        let log_def: TableDefinition<'_, u64, &[u8]> = TableDefinition::new(&lname);
        let kv_def: TableDefinition<'_, &str, &[u8]> = TableDefinition::new(&kname);
        let txn = self.db.begin_read().map_err(|e| self.err("read", e))?;
        let mut out = LeaderDisk::default();
        match txn.open_table(log_def) {
            Ok(t) => {
                for row in t.iter().map_err(|e| self.err("read", e))? {
                    let (_, v) = row.map_err(|e| self.err("read", e))?;
                    let rec: LogRecord = postcard::from_bytes(v.value())
                        .map_err(|e| self.err("decode a log record", e))?;
                    out.log.push(rec);
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(self.err("read", e)),
        }
        match txn.open_table(kv_def) {
            Ok(t) => {
                for row in t.iter().map_err(|e| self.err("read", e))? {
                    let (k, v) = row.map_err(|e| self.err("read", e))?;
                    out.kv.push((k.value().to_owned(), v.value().to_vec()));
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(self.err("read", e)),
        }
        match txn.open_table(META) {
            Ok(t) => {
                if let Some(v) = t
                    .get(format!("token:{ks}").as_str())
                    .map_err(|e| self.err("read", e))?
                {
                    out.highest_token = postcard::from_bytes(v.value())
                        .map_err(|e| self.err("decode the stored token", e))?;
                }
                if let Some(v) = t
                    .get(format!("base:{ks}").as_str())
                    .map_err(|e| self.err("read", e))?
                {
                    out.base = postcard::from_bytes(v.value())
                        .map_err(|e| self.err("decode the stored log base", e))?;
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(self.err("read", e)),
        }
        Ok(out)
    }

    /// One durable leader-mode change: undo and delete `truncate` (records after the common
    /// prefix, newest first), append `append`, purge records at or below `purge_to`, and
    /// record the highest token and the log base.
    pub(crate) fn leader_commit(
        &self,
        ks: &str,
        truncate: &[LogRecord],
        append: &[LogRecord],
        purge_to: Option<LogPos>,
        highest_token: u64,
    ) -> Result<(), ReplicationError> {
        let (lname, kname) = (format!("log:{ks}"), format!("kv:{ks}"));
        let log_def: TableDefinition<'_, u64, &[u8]> = TableDefinition::new(&lname);
        let kv_def: TableDefinition<'_, &str, &[u8]> = TableDefinition::new(&kname);
        let txn = self.db.begin_write().map_err(|e| self.err("write", e))?;
        {
            let mut log = txn.open_table(log_def).map_err(|e| self.err("write", e))?;
            let mut kv = txn.open_table(kv_def).map_err(|e| self.err("write", e))?;
            for rec in truncate {
                log.remove(rec.entry.pos.index)
                    .map_err(|e| self.err("write", e))?;
                match &rec.before {
                    Some(v) => kv.insert(rec.entry.key.as_str(), v.as_slice()).map(drop),
                    None => kv.remove(rec.entry.key.as_str()).map(drop),
                }
                .map_err(|e| self.err("write", e))?;
            }
            for rec in append {
                let bytes = postcard::to_allocvec(rec).map_err(|e| self.err("encode", e))?;
                log.insert(rec.entry.pos.index, bytes.as_slice())
                    .map_err(|e| self.err("write", e))?;
                match &rec.entry.value {
                    Some(v) => kv.insert(rec.entry.key.as_str(), v.as_slice()).map(drop),
                    None => kv.remove(rec.entry.key.as_str()).map(drop),
                }
                .map_err(|e| self.err("write", e))?;
            }
            let mut meta = txn.open_table(META).map_err(|e| self.err("write", e))?;
            if let Some(base) = purge_to {
                log.retain_in(..=base.index, |_, _| false)
                    .map_err(|e| self.err("write", e))?;
                let b = postcard::to_allocvec(&base).map_err(|e| self.err("encode", e))?;
                meta.insert(format!("base:{ks}").as_str(), b.as_slice())
                    .map_err(|e| self.err("write", e))?;
            }
            let t = postcard::to_allocvec(&highest_token).map_err(|e| self.err("encode", e))?;
            meta.insert(format!("token:{ks}").as_str(), t.as_slice())
                .map_err(|e| self.err("write", e))?;
        }
        txn.commit().map_err(|e| self.err("commit", e))
    }
}
