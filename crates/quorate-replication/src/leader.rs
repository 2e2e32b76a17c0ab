//! Leader mode: a keyspace whose writes go through one primary, carry its fencing token, and
//! are replicated as an ordered log.
//!
//! - **Fenced writes.** [`LeaderKeyspace::promote`] makes this node the primary for a fencing
//!   token (from the failover role's grant); every write names that token. A replica keeps
//!   (durably) the highest token it has seen and refuses an append carrying a lower one, and
//!   a primary told of a higher token stops acting at once: a stale primary's writes are
//!   rejected everywhere.
//! - **Replication.** Each write is appended to the primary's redb log (durable) and sent to
//!   every replica by a per-replica sender. [`SyncMode::Sync`] acknowledges a write only once
//!   `replicas` replicas have persisted it (or fails it with
//!   [`ReplicationError::NotReplicated`] after `timeout`); [`SyncMode::Async`] acknowledges
//!   once the primary has persisted it.
//! - **Authority after failover.** A replica that receives an append whose entries disagree
//!   with its log at some index (a different token there) truncates its log from that index,
//!   undoing those writes, and appends the new primary's. The truncated entries (a demoted
//!   primary's unreplicated suffix) are reported as a [`SuffixConflict`] with their count
//!   and age (the RPO of that failover), never merged.
//! - **Lag** in entries and in time, per replica, at every node: the primary piggybacks each
//!   replica's persisted index on its appends ([`LeaderKeyspace::lag`],
//!   [`LeaderKeyspace::lag_entries`] for the failover policy's lag source).
//! - **Reads**: [`LeaderKeyspace::get`] reads locally (read-your-writes at the primary);
//!   [`LeaderKeyspace::get_within`] refuses at a replica that has not heard from the primary
//!   within a staleness bound.
//! - **Bounds**: the in-memory log keeps at most `log_entries_max` entries; entries every
//!   replica has persisted are purged first, and a write that would exceed the bound while a
//!   replica lags is refused ([`ReplicationError::Busy`]) instead of growing it.

use std::collections::{BTreeMap, VecDeque};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use quorate_types::{FencingToken, NodeId};
use quorate_wire::net::Net;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;

use crate::disk::{LogRecord, ReplicaDb};
use crate::error::ReplicationError;
use crate::msg::{LogEntry, LogPos, Refusal, Request, Response};
use crate::node::{Inbound, NodeInner, ReplicationNode};

/// When a leader-mode write is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// Once the primary has persisted it. A failover may lose the writes its replicas had
    /// not persisted; they are reported as a [`SuffixConflict`] when the old primary rejoins.
    Async,
    /// Once the primary and `replicas` replicas have persisted it, within `timeout`.
    Sync {
        /// Replicas that must persist a write before it is acknowledged.
        replicas: NonZeroUsize,
        /// How long a write waits for them.
        timeout: Duration,
    },
}

/// Settings of one leader-mode keyspace.
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    /// The keyspace name (at most 128 bytes), the same on every node.
    pub name: String,
    /// When writes are acknowledged.
    pub mode: SyncMode,
    /// Log entries kept in memory and on disk.
    pub log_entries_max: NonZeroUsize,
    /// Entries sent in one append (also bounded by the frame size).
    pub append_entries_max: NonZeroUsize,
    /// The largest value, in bytes.
    pub value_bytes_max: NonZeroUsize,
    /// How often the primary sends an append (empty if nothing is new) to each replica: it
    /// carries the token and the lag table, and retries a replica that did not answer.
    pub heartbeat_interval: Duration,
    /// Suffix conflicts kept.
    pub conflicts_max: NonZeroUsize,
}

impl LeaderConfig {
    /// LAN profile: 100k log entries, appends of up to 512 entries, values up to 64 KiB, a
    /// heartbeat every 100 ms, 256 conflict records.
    pub fn lan(name: impl Into<String>, mode: SyncMode) -> Self {
        let nz = |n: usize| NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN);
        Self {
            name: name.into(),
            mode,
            log_entries_max: nz(100_000),
            append_entries_max: nz(512),
            value_bytes_max: nz(64 * 1024),
            heartbeat_interval: Duration::from_millis(100),
            conflicts_max: nz(256),
        }
    }
}

/// A replica's lag behind the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaLag {
    /// Entries the primary had that the replica had not persisted. At a replica: behind the
    /// primary's last position as of its last append (or this node's own log, when newer or
    /// when no primary was heard since start); the other replicas' positions come from the
    /// primary's appends, and are unknown (no lag) before the first.
    pub entries: u64,
    /// At the primary: how old the oldest such entry is, in ms of the primary's wall clock.
    /// At a replica: how long since this node last heard from the primary (0 when it has
    /// heard from none since it started).
    pub time_ms: u64,
}

/// A demoted primary's writes that the new primary's history replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuffixConflict {
    /// The token of the history that won.
    pub winner_token: u64,
    /// The first replaced index.
    pub from_index: u64,
    /// The replaced entries (their keys, values and tokens), oldest first.
    pub replaced: Vec<LogEntry>,
    /// RPO of the failover in time: from the first replaced write to the last, in ms.
    pub span_ms: u64,
}

/// This node's role in the keyspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaderRole {
    /// Primary for this fencing token.
    Primary(u64),
    /// A replica.
    Replica,
}

/// What a leader-mode keyspace reports.
#[derive(Debug, Clone)]
pub struct LeaderStatus {
    /// The keyspace.
    pub name: String,
    /// This node's role.
    pub role: LeaderRole,
    /// The last entry of this node's log.
    pub last: LogPos,
    /// The highest fencing token seen.
    pub highest_token: u64,
    /// Keys held.
    pub keys: usize,
    /// Lag of every replica known here.
    pub lag: BTreeMap<NodeId, ReplicaLag>,
    /// Suffix conflicts, oldest first.
    pub conflicts: Vec<SuffixConflict>,
    /// Appends refused for a stale token (at this node as a replica).
    pub stale_rejected: u64,
}

struct State {
    role: LeaderRole,
    highest: u64,
    /// Position just before the first retained record.
    base: LogPos,
    log: VecDeque<LogRecord>,
    kv: BTreeMap<String, Vec<u8>>,
    /// At the primary: each replica's persisted index in this term.
    matched: BTreeMap<NodeId, u64>,
    /// At a replica: the primary's last position and the lag table, as of its last append.
    primary_last: LogPos,
    heard_at: Option<Instant>,
    conflicts: VecDeque<SuffixConflict>,
    stale_rejected: u64,
}

impl State {
    fn last(&self) -> LogPos {
        self.log.back().map_or(self.base, |r| r.entry.pos)
    }

    fn at(&self, index: u64) -> Option<&LogRecord> {
        let first = self.base.index.checked_add(1)?;
        let off = index.checked_sub(first)?;
        self.log.get(usize::try_from(off).ok()?)
    }

    fn pos_at(&self, index: u64) -> Option<LogPos> {
        if index == self.base.index {
            return Some(self.base);
        }
        self.at(index).map(|r| r.entry.pos)
    }
}

struct Shared<N: Net> {
    inner: Arc<NodeInner<N>>,
    config: LeaderConfig,
    state: Mutex<State>,
    /// Wakes the per-replica senders (a new entry, a promotion).
    wake: Notify,
    /// Bumped whenever a replica's persisted index changes (sync writers wait on it).
    acked: watch::Sender<u64>,
}

impl<N: Net> Shared<N> {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn db(&self) -> &ReplicaDb {
        &self.inner.db
    }

    fn name(&self) -> &str {
        &self.config.name
    }
}

/// A handle to a running leader-mode keyspace. Cheap to clone.
pub struct LeaderKeyspace<N: Net> {
    shared: Arc<Shared<N>>,
}

impl<N: Net> Clone for LeaderKeyspace<N> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<N: Net> std::fmt::Debug for LeaderKeyspace<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderKeyspace")
            .field("name", &self.shared.config.name)
            .finish_non_exhaustive()
    }
}

impl<N: Net> ReplicationNode<N> {
    /// Starts leader-mode keyspace `config.name` as a replica: recovers its log, values and
    /// highest token from the database, then serves appends. Call
    /// [`LeaderKeyspace::promote`] when this node becomes the role's primary.
    ///
    /// # Errors
    /// [`ReplicationError::Config`] for a bad or duplicate name; [`ReplicationError::Storage`]
    /// when recovery fails.
    pub fn leader(&self, config: LeaderConfig) -> Result<LeaderKeyspace<N>, ReplicationError> {
        if config.name.is_empty() || config.name.len() > 128 {
            return Err(ReplicationError::Config {
                field: "keyspace name length",
                value: config.name.len() as u64,
                fix: "use a name of 1 to 128 bytes",
            });
        }
        if let SyncMode::Sync { replicas, .. } = config.mode {
            let peers = self
                .inner
                .config
                .peers
                .keys()
                .filter(|p| **p != self.inner.config.node)
                .count();
            if replicas.get() > peers {
                return Err(ReplicationError::Config {
                    field: "sync_replicas",
                    value: replicas.get() as u64,
                    fix: "sync replication cannot wait for more replicas than there are peers",
                });
            }
        }
        let disk = self.inner.db.leader_load(&config.name)?;
        let inbound = self.inner.register(&config.name)?;
        let state = State {
            role: LeaderRole::Replica,
            highest: disk.highest_token,
            base: disk.base,
            log: disk.log.into(),
            kv: disk.kv.into_iter().collect(),
            matched: BTreeMap::new(),
            primary_last: LogPos::ZERO,
            heard_at: None,
            conflicts: VecDeque::new(),
            stale_rejected: 0,
        };
        let (acked, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            inner: self.inner.clone(),
            config,
            state: Mutex::new(state),
            wake: Notify::new(),
            acked,
        });
        self.inner
            .tracker
            .spawn(serve_inbound(shared.clone(), inbound));
        for (peer, addr) in &self.inner.config.peers {
            if *peer != self.inner.config.node {
                self.inner
                    .tracker
                    .spawn(sender(shared.clone(), peer.clone(), addr.clone()));
            }
        }
        Ok(LeaderKeyspace { shared })
    }
}

impl<N: Net> LeaderKeyspace<N> {
    /// Makes this node the primary for `token` (the failover role's fencing token). From now
    /// on this node's history is authoritative: replicas whose logs disagree replace the
    /// disagreeing suffix with it.
    ///
    /// # Errors
    /// [`ReplicationError::StaleToken`] when a higher token has been seen here (nothing
    /// changed); [`ReplicationError::Storage`].
    pub fn promote(&self, token: FencingToken) -> Result<(), ReplicationError> {
        let sh = &self.shared;
        {
            let mut st = sh.lock();
            if token.0 < st.highest {
                return Err(ReplicationError::StaleToken {
                    keyspace: sh.name().to_owned(),
                    token: token.0,
                    highest: st.highest,
                });
            }
            if token.0 > st.highest {
                sh.db().leader_commit(sh.name(), &[], &[], None, token.0)?;
                st.highest = token.0;
            }
            st.role = LeaderRole::Primary(token.0);
            st.matched.clear();
        }
        sh.wake.notify_waiters();
        Ok(())
    }

    /// Stops acting as primary (writes are refused from now on).
    pub fn demote(&self) {
        self.shared.lock().role = LeaderRole::Replica;
    }

    /// Writes `value` to `key` (or deletes it with `None`) as the primary of term `token`.
    /// Returns the entry's position once it is acknowledged per the keyspace's [`SyncMode`].
    ///
    /// # Errors
    /// [`ReplicationError::NotPrimary`] / [`ReplicationError::StaleToken`] (nothing written);
    /// [`ReplicationError::KeyTooLong`] / [`ReplicationError::TooLarge`] (nothing written);
    /// [`ReplicationError::Busy`] when the log is full behind a lagging replica;
    /// [`ReplicationError::NotReplicated`] in sync mode when too few replicas confirmed in
    /// time (durable here, not acknowledged); [`ReplicationError::Storage`].
    pub async fn write(
        &self,
        token: FencingToken,
        key: &str,
        value: Option<Vec<u8>>,
    ) -> Result<LogPos, ReplicationError> {
        let sh = &self.shared;
        if key.len() > crate::KEY_BYTES_MAX {
            return Err(ReplicationError::KeyTooLong {
                len: key.len(),
                max: crate::KEY_BYTES_MAX,
            });
        }
        if let Some(v) = &value
            && v.len() > sh.config.value_bytes_max.get()
        {
            return Err(ReplicationError::TooLarge {
                what: "leader-mode value bytes",
                len: v.len(),
                max: sh.config.value_bytes_max.get(),
            });
        }
        // The commit below blocks this task for an fsync and an asynchronous write awaits
        // nothing else: yield first, so that a caller writing in a loop cannot starve the
        // runtime's other tasks (timers, the senders).
        tokio::task::yield_now().await;
        let mut acked = sh.acked.subscribe();
        let pos = {
            let mut st = sh.lock();
            match st.role {
                LeaderRole::Primary(t) if t == token.0 && t == st.highest => {}
                _ if token.0 < st.highest => {
                    return Err(ReplicationError::StaleToken {
                        keyspace: sh.name().to_owned(),
                        token: token.0,
                        highest: st.highest,
                    });
                }
                _ => {
                    return Err(ReplicationError::NotPrimary {
                        keyspace: sh.name().to_owned(),
                    });
                }
            }
            let purge = purge_point(&st, sh.inner.config.peers.len());
            let retained_after =
                st.log.len() + 1 - purge.map_or(0, |p| (p.index - st.base.index) as usize);
            if retained_after > sh.config.log_entries_max.get() {
                return Err(ReplicationError::Busy {
                    what: "leader-mode log (a replica lags)",
                    max: sh.config.log_entries_max.get(),
                });
            }
            let pos = LogPos {
                index: st.last().index + 1,
                token: token.0,
            };
            let rec = LogRecord {
                before: st.kv.get(key).cloned(),
                entry: LogEntry {
                    pos,
                    key: key.to_owned(),
                    value,
                    written_ms: sh.inner.now_ms(),
                },
            };
            sh.db().leader_commit(
                sh.name(),
                &[],
                std::slice::from_ref(&rec),
                purge,
                st.highest,
            )?;
            if let Some(p) = purge {
                let n = ((p.index - st.base.index) as usize).min(st.log.len());
                st.log.drain(..n);
                st.base = p;
            }
            apply(&mut st.kv, &rec.entry);
            st.log.push_back(rec);
            pos
        };
        sh.wake.notify_waiters();
        let SyncMode::Sync { replicas, timeout } = sh.config.mode else {
            return Ok(pos);
        };
        let enough = |st: &State| st.matched.values().filter(|m| **m >= pos.index).count();
        let deadline = Instant::now() + timeout;
        loop {
            {
                let st = sh.lock();
                if st.role != LeaderRole::Primary(token.0) {
                    return Err(ReplicationError::StaleToken {
                        keyspace: sh.name().to_owned(),
                        token: token.0,
                        highest: st.highest,
                    });
                }
                if enough(&st) >= replicas.get() {
                    return Ok(pos);
                }
            }
            if tokio::time::timeout_at(deadline, acked.changed())
                .await
                .is_err()
            {
                let st = sh.lock();
                return Err(ReplicationError::NotReplicated {
                    keyspace: sh.name().to_owned(),
                    index: pos.index,
                    acked: enough(&st),
                    required: replicas.get(),
                    timeout_ms: timeout.as_millis() as u64,
                });
            }
        }
    }

    /// The value of `key` at this node (read-your-writes at the primary).
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.shared.lock().kv.get(key).cloned()
    }

    /// The value of `key` at this node, refused at a replica that has not heard from the
    /// primary within `max_staleness`.
    ///
    /// # Errors
    /// [`ReplicationError::Peer`] naming the staleness.
    pub fn get_within(
        &self,
        key: &str,
        max_staleness: Duration,
    ) -> Result<Option<Vec<u8>>, ReplicationError> {
        let st = self.shared.lock();
        if let LeaderRole::Replica = st.role {
            let fresh = st
                .heard_at
                .is_some_and(|t| Instant::now().duration_since(t) <= max_staleness);
            if !fresh {
                return Err(ReplicationError::Peer {
                    peer: "primary".to_owned(),
                    reason: format!(
                        "keyspace {}: no append from the primary within {max_staleness:?}: this \
                         replica may be stale; read at the primary or allow more staleness",
                        self.shared.name()
                    ),
                });
            }
        }
        Ok(st.kv.get(key).cloned())
    }

    /// The lag of `node` as known here (see [`ReplicaLag`]).
    pub fn lag(&self, node: &NodeId) -> Option<ReplicaLag> {
        let st = self.shared.lock();
        lag_of(
            &st,
            node,
            &self.shared.inner.config.node,
            self.shared.inner.now_ms(),
        )
    }

    /// The lag of `node` in entries: what the failover policy's lag source returns.
    pub fn lag_entries(&self, node: &NodeId) -> Option<u64> {
        self.lag(node).map(|l| l.entries)
    }

    /// The keyspace's status.
    pub fn status(&self) -> LeaderStatus {
        let st = self.shared.lock();
        let me = &self.shared.inner.config.node;
        let now = self.shared.inner.now_ms();
        let mut lag = BTreeMap::new();
        for p in self.shared.inner.config.peers.keys() {
            if let Some(l) = lag_of(&st, p, me, now) {
                lag.insert(p.clone(), l);
            }
        }
        LeaderStatus {
            name: self.shared.config.name.clone(),
            role: st.role,
            last: st.last(),
            highest_token: st.highest,
            keys: st.kv.len(),
            lag,
            conflicts: st.conflicts.iter().cloned().collect(),
            stale_rejected: st.stale_rejected,
        }
    }
}

fn apply(kv: &mut BTreeMap<String, Vec<u8>>, e: &LogEntry) {
    match &e.value {
        Some(v) => {
            kv.insert(e.key.clone(), v.clone());
        }
        None => {
            kv.remove(&e.key);
        }
    }
}

/// The position up to which every replica has persisted this term's log, when entries can
/// be purged (only at a primary that knows every replica's index).
fn purge_point(st: &State, nodes: usize) -> Option<LogPos> {
    let LeaderRole::Primary(_) = st.role else {
        return None;
    };
    let replicas = nodes.saturating_sub(1);
    if replicas == 0 || st.matched.len() < replicas {
        return None;
    }
    let min = st.matched.values().copied().min()?;
    if min <= st.base.index {
        return None;
    }
    st.pos_at(min)
}

fn lag_of(st: &State, node: &NodeId, me: &NodeId, now_ms: u64) -> Option<ReplicaLag> {
    match st.role {
        LeaderRole::Primary(_) => {
            if node == me {
                return Some(ReplicaLag {
                    entries: 0,
                    time_ms: 0,
                });
            }
            let m = *st.matched.get(node)?;
            let last = st.last().index;
            let entries = last.saturating_sub(m);
            let time_ms = st
                .at(m + 1)
                .map_or(0, |r| now_ms.saturating_sub(r.entry.written_ms));
            Some(ReplicaLag { entries, time_ms })
        }
        LeaderRole::Replica => {
            // Since the last append from a primary (0 if none was heard since this start:
            // nothing is known to lag behind).
            let since = st
                .heard_at
                .map_or(0, |t| Instant::now().duration_since(t).as_millis() as u64);
            let m = if node == me {
                st.last().index
            } else {
                *st.matched.get(node)?
            };
            // Behind the newest history known here: the primary's last position as of its
            // last append, or our own log.
            let newest = st.primary_last.index.max(st.last().index);
            Some(ReplicaLag {
                entries: newest.saturating_sub(m),
                time_ms: since,
            })
        }
    }
}

async fn serve_inbound<N: Net>(shared: Arc<Shared<N>>, mut rx: mpsc::Receiver<Inbound>) {
    let cancel = shared.inner.cancel.clone();
    loop {
        let inb = tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            inb = rx.recv() => match inb { Some(i) => i, None => return },
        };
        let resp = match inb.req {
            Request::Append {
                from,
                token,
                prev,
                entries,
                primary_last,
                matched,
                ..
            } => match append(&shared, &from, token, prev, entries, primary_last, matched) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(keyspace = %shared.name(), error = %e, "leader-mode append failed");
                    Response::Refused(Refusal::Invalid(e.to_string()))
                }
            },
            _ => Response::Refused(Refusal::Invalid(
                "a multi-master request was sent to a leader-mode keyspace: declare the \
                 keyspace with the same mode on every node"
                    .to_owned(),
            )),
        };
        let _ = inb.reply.send(resp);
    }
}

/// A replica's handling of one append.
fn append<N: Net>(
    sh: &Shared<N>,
    from: &str,
    token: u64,
    prev: LogPos,
    entries: Vec<LogEntry>,
    primary_last: LogPos,
    matched: Vec<(String, u64)>,
) -> Result<Response, ReplicationError> {
    let mut st = sh.lock();
    if token < st.highest {
        st.stale_rejected = st.stale_rejected.saturating_add(1);
        tracing::warn!(keyspace = %sh.name(), from, token, highest = st.highest,
            "leader mode: rejected an append from a stale primary");
        return Ok(Response::Refused(Refusal::StaleToken {
            highest: st.highest,
        }));
    }
    if token == st.highest && st.role == LeaderRole::Primary(token) {
        return Ok(Response::Refused(Refusal::Invalid(format!(
            "two primaries with token {token} (this node and {from}): fencing tokens must be \
             unique per grant"
        ))));
    }
    // Validate before changing anything: entries in order, after prev, within limits.
    let mut expect = prev.index;
    for e in &entries {
        expect += 1;
        if e.pos.index != expect
            || e.pos.token > token
            || e.key.len() > crate::KEY_BYTES_MAX
            || e.value
                .as_ref()
                .is_some_and(|v| v.len() > sh.config.value_bytes_max.get())
        {
            return Ok(Response::Refused(Refusal::Invalid(
                "append entries out of order, from a later term, or beyond a limit".to_owned(),
            )));
        }
    }
    let mut highest = st.highest;
    if token > st.highest {
        highest = token;
        if let LeaderRole::Primary(_) = st.role {
            tracing::warn!(keyspace = %sh.name(), from, token,
                "leader mode: a primary with a higher token exists; demoting");
            st.role = LeaderRole::Replica;
        }
    }
    st.heard_at = Some(Instant::now());
    st.primary_last = primary_last;
    st.matched = matched
        .into_iter()
        .filter_map(|(n, m)| NodeId::new(n).ok().map(|n| (n, m)))
        .collect();
    // Does our log hold prev?
    let ours = st.pos_at(prev.index);
    if prev.index < st.base.index || ours != Some(prev) {
        let last = st.last();
        // Point the primary at the newest index we can vouch for below prev.
        let hint = if prev.index > last.index {
            last
        } else {
            let i = prev.index.saturating_sub(1).max(st.base.index);
            st.pos_at(i).unwrap_or(st.base)
        };
        if highest != st.highest {
            sh.db().leader_commit(sh.name(), &[], &[], None, highest)?;
            st.highest = highest;
        }
        return Ok(Response::Refused(Refusal::Mismatch { last: hint }));
    }
    // Find the first entry that disagrees with our log; everything from there is replaced.
    // When the append reaches the primary's last entry, anything we hold beyond it is not in
    // the primary's history either (a demoted primary's suffix): replaced as well.
    let end = entries.last().map_or(prev, |e| e.pos);
    let mut cut: Option<u64> = None;
    let mut new: Vec<LogEntry> = Vec::new();
    for e in entries {
        if cut.is_some() || !new.is_empty() {
            new.push(e);
            continue;
        }
        match st.at(e.pos.index) {
            Some(r) if r.entry.pos == e.pos => {}
            Some(_) => {
                cut = Some(e.pos.index);
                new.push(e);
            }
            None => new.push(e),
        }
    }
    if cut.is_none() && end == primary_last && st.last().index > end.index {
        cut = Some(end.index + 1);
    }
    let mut truncate: Vec<LogRecord> = match cut {
        Some(i) => st
            .log
            .iter()
            .skip((i - st.base.index - 1) as usize)
            .cloned()
            .collect(),
        None => Vec::new(),
    };
    if st.log.len() + new.len() - truncate.len() > sh.config.log_entries_max.get() {
        // Purge our oldest entries: the primary retains what lagging replicas need.
        let excess = st.log.len() + new.len() - truncate.len() - sh.config.log_entries_max.get();
        let keep_from = excess.min(st.log.len() - truncate.len());
        if keep_from > 0 {
            let base = st.log[keep_from - 1].entry.pos;
            sh.db()
                .leader_commit(sh.name(), &[], &[], Some(base), highest)?;
            st.log.drain(..keep_from);
            st.base = base;
        }
    }
    // Undo newest first, then append.
    truncate.reverse();
    let mut kv = st.kv.clone();
    for r in &truncate {
        match &r.before {
            Some(v) => {
                kv.insert(r.entry.key.clone(), v.clone());
            }
            None => {
                kv.remove(&r.entry.key);
            }
        }
    }
    let mut records = Vec::with_capacity(new.len());
    for e in new {
        records.push(LogRecord {
            before: kv.get(&e.key).cloned(),
            entry: e,
        });
        if let Some(r) = records.last() {
            apply(&mut kv, &r.entry);
        }
    }
    sh.db()
        .leader_commit(sh.name(), &truncate, &records, None, highest)?;
    st.highest = highest;
    st.kv = kv;
    if !truncate.is_empty() {
        let keep = st.log.len() - truncate.len();
        st.log.truncate(keep);
        truncate.reverse();
        let span_ms = match (truncate.first(), truncate.last()) {
            (Some(a), Some(b)) => b.entry.written_ms.saturating_sub(a.entry.written_ms),
            _ => 0,
        };
        let conflict = SuffixConflict {
            winner_token: token,
            from_index: truncate.first().map_or(0, |r| r.entry.pos.index),
            replaced: truncate.into_iter().map(|r| r.entry).collect(),
            span_ms,
        };
        tracing::warn!(keyspace = %sh.name(), replaced = conflict.replaced.len(), token,
            "leader mode: this node's unreplicated suffix was replaced by the new primary's history");
        if st.conflicts.len() >= sh.config.conflicts_max.get() {
            st.conflicts.pop_front();
        }
        st.conflicts.push_back(conflict);
    }
    st.log.extend(records);
    Ok(Response::Appended { last: st.last() })
}

/// The primary's sender to one replica: appends from the replica's next index, on every new
/// entry and every heartbeat.
async fn sender<N: Net>(sh: Arc<Shared<N>>, peer: NodeId, addr: String) {
    let cancel = sh.inner.cancel.clone();
    let mut next: Option<u64> = None;
    let mut term = 0u64;
    loop {
        let notified = sh.wake.notified();
        let built = {
            let st = sh.lock();
            match st.role {
                LeaderRole::Primary(token) => {
                    Some(build_append(&sh, &st, token, &mut term, &mut next))
                }
                LeaderRole::Replica => None,
            }
        };
        let Some((req, sent_last)) = built else {
            next = None;
            tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                () = notified => {}
                () = tokio::time::sleep(sh.config.heartbeat_interval) => {}
            }
            continue;
        };

        let resp = tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            r = sh.inner.transport.call(&addr, &req) => r,
        };
        let mut more = false;
        match resp {
            Ok(Response::Appended { last }) => {
                let mut st = sh.lock();
                if st.role == LeaderRole::Primary(term) && last == sent_last {
                    st.matched.insert(peer.clone(), last.index);
                    next = Some(last.index + 1);
                    more = last.index < st.last().index;
                    drop(st);
                    sh.acked.send_modify(|n| *n = n.wrapping_add(1));
                }
            }
            Ok(Response::Refused(Refusal::Mismatch { last })) => {
                let cur = next.unwrap_or(u64::MAX);
                next = Some((last.index + 1).min(cur.saturating_sub(1)).max(1));
                more = true;
            }
            Ok(Response::Refused(Refusal::StaleToken { highest })) => {
                let mut st = sh.lock();
                if highest > st.highest {
                    tracing::warn!(keyspace = %sh.name(), %peer, highest,
                        "leader mode: a replica has seen a higher token; this primary demotes");
                    st.role = LeaderRole::Replica;
                    // Remember the token durably so this node refuses its own stale term.
                    if sh
                        .db()
                        .leader_commit(sh.name(), &[], &[], None, highest)
                        .is_ok()
                    {
                        st.highest = highest;
                    }
                }
                drop(st);
                sh.acked.send_modify(|n| *n = n.wrapping_add(1));
            }
            Ok(other) => {
                tracing::debug!(keyspace = %sh.name(), %peer, response = ?other, "append refused");
            }
            Err(e) => {
                tracing::debug!(keyspace = %sh.name(), %peer, error = %e, "append failed");
            }
        }
        if more {
            continue;
        }
        tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            () = notified => {}
            () = tokio::time::sleep(sh.config.heartbeat_interval) => {}
        }
    }
}

/// The next append for one replica, from its next index.
fn build_append<N: Net>(
    sh: &Shared<N>,
    st: &State,
    token: u64,
    term: &mut u64,
    next: &mut Option<u64>,
) -> (Request, LogPos) {
    if token != *term {
        *term = token;
        *next = None;
    }
    let last = st.last();
    let from = next.unwrap_or(last.index + 1).max(st.base.index + 1);
    let prev = st.pos_at(from - 1).unwrap_or(st.base);
    let mut entries = Vec::new();
    let mut bytes = 0usize;
    let budget = sh
        .inner
        .config
        .transport
        .payload_bytes_max()
        .saturating_sub(4096);
    let mut i = from;
    while i <= last.index && entries.len() < sh.config.append_entries_max.get() {
        let Some(r) = st.at(i) else { break };
        let cost = r.entry.key.len() + r.entry.value.as_ref().map_or(0, Vec::len) + 32;
        if !entries.is_empty() && bytes + cost > budget {
            break;
        }
        bytes += cost;
        entries.push(r.entry.clone());
        i += 1;
    }
    let sent_last = entries.last().map_or(prev, |e| e.pos);
    let req = Request::Append {
        keyspace: sh.name().to_owned(),
        from: sh.inner.config.node.to_string(),
        token,
        prev,
        entries,
        primary_last: last,
        matched: st
            .matched
            .iter()
            .map(|(n, m)| (n.to_string(), *m))
            .collect(),
    };
    (req, sent_last)
}
