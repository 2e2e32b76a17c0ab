//! openraft's state machine storage around [`Machine`]: applies committed entries, publishes
//! their watch events, feeds the lease clock, and keeps the latest snapshot in redb.
//!
//! Durability model: the machine itself lives in memory. Its durable form is the latest
//! snapshot (in the `raft_snapshot` table) plus the log after it; on restart openraft restores
//! the snapshot and re-applies the log up to the saved committed id
//! (`RaftLogStorage::read_committed`). Snapshots are taken every
//! `Limits::snapshot_every_entries` entries, after which openraft purges the log up to
//! `log_keep_entries` behind the snapshot, so the log stays bounded.

use std::io::Cursor;
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, EntryPayload, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageIOError,
};
use quorate_coord_api::WatchEvent;
use redb::ReadableDatabase;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::error::NodeError;
use crate::lease_glue::LeaseTracker;
use crate::machine::{Machine, MachineLimits};
use crate::store::{IoMode, SNAPSHOT, Storage};
use crate::types::{Applied, Entry, LogId, PeerNode, StorageError, StoredMembership, TypeConfig};

fn any(e: impl std::fmt::Display) -> AnyError {
    AnyError::error(e.to_string())
}

/// The snapshot's metadata as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredSnapshotMeta {
    meta: SnapshotMeta<u64, PeerNode>,
}

/// The in-memory state behind the state machine.
#[derive(Debug)]
pub struct SmState {
    /// The coordination state machine.
    pub machine: Machine,
    /// The last applied log id.
    pub last_applied: Option<LogId>,
    /// The last applied membership.
    pub membership: StoredMembership,
    /// The leader-side lease expiry clock (fed on every node).
    pub(crate) lease_clock: LeaseTracker,
    snapshot_seq: u64,
}

/// The state machine shared between openraft (apply) and the node (reads).
#[derive(Debug)]
pub struct SmShared {
    state: Mutex<SmState>,
    storage: Storage,
    events: broadcast::Sender<WatchEvent>,
}

impl SmShared {
    /// Opens the state machine: restores the latest snapshot from `storage`, if any.
    /// `events_max` bounds the watch event channel; `start` is the local time (the lease
    /// clock's "no record" default).
    pub(crate) fn open(
        storage: Storage,
        limits: MachineLimits,
        events_max: usize,
        lease_clock: LeaseTracker,
    ) -> Result<Arc<Self>, NodeError> {
        let fail = |e: &dyn std::fmt::Display| NodeError::Storage {
            path: format!("{storage:?}"),
            reason: e.to_string(),
        };
        let mut state = SmState {
            machine: Machine::new(limits),
            last_applied: None,
            membership: StoredMembership::default(),
            lease_clock,
            snapshot_seq: 0,
        };
        if let Some((meta, data)) = read_snapshot(&storage).map_err(|e| fail(&e))? {
            state.machine = Machine::restore(&data).map_err(|e| fail(&e))?;
            state.last_applied = meta.last_log_id;
            state.membership = meta.last_membership.clone();
            state.lease_clock.restored(&state.machine);
        }
        let (events, _) = broadcast::channel(events_max.max(1));
        Ok(Arc::new(Self {
            state: Mutex::new(state),
            storage,
            events,
        }))
    }

    /// Locks the state (short critical sections only; never held across an await).
    pub fn lock(&self) -> MutexGuard<'_, SmState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Subscribes to watch events applied from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<WatchEvent> {
        self.events.subscribe()
    }
}

/// A stored snapshot: its metadata and the machine bytes.
type StoredSnapshot = (SnapshotMeta<u64, PeerNode>, Vec<u8>);

fn read_snapshot(storage: &Storage) -> Result<Option<StoredSnapshot>, String> {
    let s = |e: &dyn std::fmt::Display| e.to_string();
    let txn = storage.db().begin_read().map_err(|e| s(&e))?;
    let t = txn.open_table(SNAPSHOT).map_err(|e| s(&e))?;
    let meta = match t.get("meta").map_err(|e| s(&e))? {
        Some(m) => {
            let m: StoredSnapshotMeta = postcard::from_bytes(m.value()).map_err(|e| s(&e))?;
            m.meta
        }
        None => return Ok(None),
    };
    let data = t
        .get("data")
        .map_err(|e| s(&e))?
        .map(|d| d.value().to_vec())
        .ok_or("snapshot data missing next to its metadata")?;
    Ok(Some((meta, data)))
}

fn write_snapshot(
    storage: &Storage,
    meta: &SnapshotMeta<u64, PeerNode>,
    data: &[u8],
) -> Result<(), String> {
    let s = |e: &dyn std::fmt::Display| e.to_string();
    let m = postcard::to_allocvec(&StoredSnapshotMeta { meta: meta.clone() }).map_err(|e| s(&e))?;
    let txn = storage.db().begin_write().map_err(|e| s(&e))?;
    {
        let mut t = txn.open_table(SNAPSHOT).map_err(|e| s(&e))?;
        t.insert("meta", m.as_slice()).map_err(|e| s(&e))?;
        t.insert("data", data).map_err(|e| s(&e))?;
    }
    txn.commit().map_err(|e| s(&e))
}

/// openraft's state machine handle.
#[derive(Clone)]
pub struct StateMachineStore {
    shared: Arc<SmShared>,
}

impl StateMachineStore {
    /// A handle on `shared`.
    pub fn new(shared: Arc<SmShared>) -> Self {
        Self { shared }
    }
}

/// Builds a snapshot from a copy of the machine taken when openraft asked for the builder.
pub struct SnapshotBuilder {
    storage: Storage,
    meta: SnapshotMeta<u64, PeerNode>,
    data: Vec<u8>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let sig = Some(self.meta.signature());
        let data = std::mem::take(&mut self.data);
        // The snapshot can be megabytes: its commit (and fsync) runs on the blocking pool in
        // production, not on a runtime worker (it stalled client and Raft tasks there).
        let (written, data) = match self.storage.io() {
            IoMode::Inline => (write_snapshot(&self.storage, &self.meta, &data), data),
            IoMode::Blocking => {
                let (storage, meta) = (self.storage.clone(), self.meta.clone());
                tokio::task::spawn_blocking(move || {
                    let r = write_snapshot(&storage, &meta, &data);
                    (r, data)
                })
                .await
                .map_err(|e| {
                    StorageError::from(StorageIOError::write_snapshot(sig.clone(), any(e)))
                })?
            }
        };
        written.map_err(|e| StorageError::from(StorageIOError::write_snapshot(sig, any(e))))?;
        Ok(Snapshot {
            meta: self.meta.clone(),
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let st = self.shared.lock();
        Ok((st.last_applied, st.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut out = Vec::new();
        let mut events = Vec::new();
        {
            let mut st = self.shared.lock();
            for entry in entries {
                let index = entry.log_id.index;
                st.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => {
                        st.machine.skip(index);
                        out.push(Applied(None));
                    }
                    EntryPayload::Membership(m) => {
                        st.machine.skip(index);
                        st.membership = StoredMembership::new(Some(entry.log_id), m);
                        out.push(Applied(None));
                    }
                    EntryPayload::Normal(cmd) => {
                        let (outcome, evs) = st.machine.apply(index, &cmd);
                        st.lease_clock.applied(index, &cmd, &outcome);
                        events.extend(evs);
                        out.push(Applied(Some(outcome)));
                    }
                }
            }
        }
        for ev in events {
            // No receiver is fine: nobody watches.
            let _ = self.shared.events.send(ev);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let mut st = self.shared.lock();
        st.snapshot_seq += 1;
        let last = st.last_applied;
        let snapshot_id = match last {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, st.snapshot_seq),
            None => format!("empty-{}", st.snapshot_seq),
        };
        SnapshotBuilder {
            storage: self.shared.storage.clone(),
            meta: SnapshotMeta {
                last_log_id: last,
                last_membership: st.membership.clone(),
                snapshot_id,
            },
            data: st.machine.snapshot(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, PeerNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let sig = Some(meta.signature());
        let machine = Machine::restore(&data)
            .map_err(|e| StorageError::from(StorageIOError::read_snapshot(sig.clone(), any(e))))?;
        write_snapshot(&self.shared.storage, meta, &data)
            .map_err(|e| StorageError::from(StorageIOError::write_snapshot(sig, any(e))))?;
        let mut st = self.shared.lock();
        st.machine = machine;
        st.last_applied = meta.last_log_id;
        st.membership = meta.last_membership.clone();
        let SmState {
            machine,
            lease_clock,
            ..
        } = &mut *st;
        lease_clock.restored(machine);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let snap = read_snapshot(&self.shared.storage)
            .map_err(|e| StorageError::from(StorageIOError::read_snapshot(None, any(e))))?;
        Ok(snap.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}
