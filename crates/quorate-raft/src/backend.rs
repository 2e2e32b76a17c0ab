//! The seam between the coordination semantics and the consensus engine.
//!
//! [`Proposer`] is what an engine offers: propose a [`Command`] and learn its log index and
//! [`Outcome`] once committed, read the applied [`Machine`] (after a linearizable barrier when
//! asked), subscribe to applied watch events, report status, change membership.
//! [`Backend`] turns every `quorate_coord_api::Coord` call into commands and reads on any
//! `Proposer`. The openraft engine implements `Proposer` in this crate; [`LocalProposer`] is a
//! single-node, in-memory one used to prove the semantics without consensus.

mod local;

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use quorate_coord_api::{
    Capabilities, ClusterStatus, Consistency, Coord, CoordError, DeleteResponse, ElectionLeader,
    EventKind, GetResponse, LeaderKey, LeaseGrant, LeaseId, LeaseInfo, LockGrant, ObserveStream,
    PutResponse, RangeRequest, RangeResponse, Revision, Txn, TxnOp, TxnResponse, WatchEvent,
    WatchStream,
};
use quorate_types::{FencingToken, NodeId};
use tokio::sync::broadcast;

use crate::machine::{Command, ELECTION_PREFIX, Machine, MachineLimits, Outcome, QueuePosition};

pub use local::{LocalConfig, LocalProposer};

/// A read run against the applied state machine.
pub type ReadFn<R> = Box<dyn FnOnce(&Machine) -> R + Send>;

/// What a consensus engine offers to [`Backend`]. Implementations: the openraft node of this
/// crate, and [`LocalProposer`].
///
/// Contract:
/// - `propose` returns only after the command is committed (durable on a majority) and
///   applied; the index is the log index of its entry (= the revision of its changes).
///   Errors: `NotLeader` / `NoQuorum` / `Unavailable` when it was not proposed (nothing
///   changed), `Timeout` when it may or may not commit. A command the machine rejects is *not*
///   an error here: it comes back as `Ok((index, Outcome::Rejected(..)))`.
/// - `read` with `Consistency::Linearizable` runs `f` on a machine that reflects every write
///   committed before the call (ReadIndex barrier); with `Local`, on this node's applied
///   machine as is.
/// - `events` delivers every [`WatchEvent`] produced by `Machine::apply` on this node, in
///   apply order, each exactly once per receiver (bounded channel: a slow receiver sees
///   `Lagged` and recovers from `Machine::history_since`).
/// - Leases: the engine keeps a [`LeaseClock`](crate::lease_clock::LeaseClock) per node, feeds
///   it every applied command, and on the leader proposes `LeaseClock::expire_command` when
///   `LeaseClock::next_deadline` passes.
pub trait Proposer: Send + Sync + 'static {
    /// Proposes `cmd` and waits until it is committed and applied; returns its log index and
    /// the machine's outcome.
    fn propose(
        &self,
        cmd: Command,
    ) -> impl Future<Output = Result<(u64, Outcome), CoordError>> + Send;

    /// Runs `f` on the applied machine, after a linearizable barrier when asked.
    fn read<R: Send + 'static>(
        &self,
        consistency: Consistency,
        f: ReadFn<R>,
    ) -> impl Future<Output = Result<R, CoordError>> + Send;

    /// Subscribes to the watch events of entries applied on this node from now on.
    fn events(&self) -> broadcast::Receiver<WatchEvent>;

    /// Time left before this node's lease clock expires lease `id` (the leader's clock when
    /// this node leads). `Ok(None)` if the lease does not exist.
    fn lease_remaining(
        &self,
        id: LeaseId,
    ) -> impl Future<Output = Result<Option<Duration>, CoordError>> + Send;

    /// The cluster as seen by this node.
    fn status(&self) -> impl Future<Output = Result<ClusterStatus, CoordError>> + Send;

    /// Adds `node` at `addr` as a learner.
    fn add_learner(
        &self,
        node: NodeId,
        addr: String,
    ) -> impl Future<Output = Result<(), CoordError>> + Send;

    /// Promotes learner `node` to voter.
    fn promote_voter(&self, node: NodeId) -> impl Future<Output = Result<(), CoordError>> + Send;

    /// Removes `node` (voter or learner).
    fn remove_node(&self, node: NodeId) -> impl Future<Output = Result<(), CoordError>> + Send;
}

/// The `Coord` implementation over any [`Proposer`].
pub struct Backend<P: Proposer> {
    proposer: Arc<P>,
    capabilities: Capabilities,
}

/// The [`Capabilities`] of a [`Backend`] whose machine enforces `limits`.
/// `lease_expiry_slack` is how late after its TTL a lease may still exist (drift allowance,
/// the engine's expiry check period, one commit); `admin` whether the engine supports
/// membership changes.
pub fn capabilities(
    backend: &str,
    limits: &MachineLimits,
    lease_expiry_slack: Duration,
    admin: bool,
) -> Capabilities {
    Capabilities {
        backend: backend.to_owned(),
        lease_ttl_min: Duration::from_millis(limits.lease_ttl_min_ms),
        lease_ttl_max: Duration::from_millis(limits.lease_ttl_max_ms),
        lease_expiry_slack,
        value_bytes_max: limits.value_bytes_max,
        key_bytes_max: limits.key_bytes_max,
        txn_ops_max: limits.txn_ops_max,
        range_keys_max: limits.range_keys_max,
        watch_history_events: Some(limits.history_events_max),
        admin,
    }
}

pub(crate) fn unexpected(outcome: &Outcome) -> CoordError {
    CoordError::Internal {
        reason: format!("the state machine answered with an unexpected outcome {outcome:?}"),
    }
}

pub(crate) fn lock_grant(name: &str, pos: QueuePosition, token: FencingToken) -> LockGrant {
    LockGrant {
        name: name.to_owned(),
        key: pos.key,
        lease: pos.lease,
        create_revision: pos.create_revision,
        token,
    }
}

pub(crate) fn leader_key(election: &str, pos: QueuePosition, token: FencingToken) -> LeaderKey {
    LeaderKey {
        election: election.to_owned(),
        key: pos.key,
        lease: pos.lease,
        create_revision: pos.create_revision,
        token,
    }
}

pub(crate) fn election_leader(machine: &Machine, election: &str) -> Option<ElectionLeader> {
    let (pos, kv) = machine.election_leader(election)?;
    let token = pos.token?;
    Some(ElectionLeader {
        value: kv.value.clone(),
        mod_revision: kv.mod_revision,
        key: leader_key(election, pos, token),
    })
}

impl<P: Proposer> Backend<P> {
    /// A backend over `proposer`, advertising `capabilities` (see [`capabilities`]).
    pub fn new(proposer: P, capabilities: Capabilities) -> Backend<P> {
        Backend {
            proposer: Arc::new(proposer),
            capabilities,
        }
    }

    /// The engine underneath.
    pub fn proposer(&self) -> &Arc<P> {
        &self.proposer
    }

    fn check_key(&self, key: &str) -> Result<(), CoordError> {
        if key.len() > self.capabilities.key_bytes_max {
            return Err(CoordError::KeyTooLarge {
                len: key.len(),
                max: self.capabilities.key_bytes_max,
            });
        }
        Ok(())
    }

    /// Rejects oversized values before they reach the log.
    fn check_value(&self, value: &[u8]) -> Result<(), CoordError> {
        if value.len() > self.capabilities.value_bytes_max {
            return Err(CoordError::ValueTooLarge {
                len: value.len(),
                max: self.capabilities.value_bytes_max,
            });
        }
        Ok(())
    }

    async fn propose(&self, cmd: Command) -> Result<(u64, Outcome), CoordError> {
        match self.proposer.propose(cmd).await? {
            (_, Outcome::Rejected(e)) => Err(e),
            ok => Ok(ok),
        }
    }

    async fn read<R: Send + 'static>(
        &self,
        consistency: Consistency,
        f: impl FnOnce(&Machine) -> R + Send + 'static,
    ) -> Result<R, CoordError> {
        self.proposer.read(consistency, Box::new(f)).await
    }

    /// Joins a lock or election queue and waits until it is at the head; returns the head's
    /// position and token.
    async fn queue_wait(&self, cmd: Command) -> Result<(QueuePosition, FencingToken), CoordError> {
        // Subscribe before proposing, so no deletion after our entry can be missed.
        let mut events = self.proposer.events();
        let mut pos = match self.propose(cmd).await? {
            (_, Outcome::Queued(pos)) => pos,
            (_, other) => return Err(unexpected(&other)),
        };
        loop {
            if let Some(token) = pos.token {
                return Ok((pos, token));
            }
            let Some(ahead) = pos.ahead.clone() else {
                return Err(CoordError::Internal {
                    reason: format!("queue key {} neither holds nor waits", pos.key),
                });
            };
            loop {
                match events.recv().await {
                    Ok(ev)
                        if ev.kind == EventKind::Delete
                            && (ev.kv.key == ahead || ev.kv.key == pos.key) =>
                    {
                        break;
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => {
                        return Err(CoordError::Unavailable {
                            reason: "the node is shutting down".into(),
                        });
                    }
                }
            }
            let key = pos.key.clone();
            let lease = pos.lease;
            pos = self
                .read(Consistency::Linearizable, move |m| {
                    m.position(&key).ok_or_else(|| m.lease_error(lease))
                })
                .await??;
        }
    }
}

/// State of one watch stream.
struct WatchState<P: Proposer> {
    proposer: Arc<P>,
    prefix: String,
    rx: broadcast::Receiver<WatchEvent>,
    /// History events still to deliver.
    buffered: VecDeque<WatchEvent>,
    /// Every event at or below this revision came from the history (skip it when live).
    seen: Revision,
    /// Revision of the last delivered event, and how many events of that revision went out.
    last: Revision,
    delivered_at_last: usize,
    done: bool,
}

impl<P: Proposer> WatchState<P> {
    fn deliver(&mut self, ev: WatchEvent) -> WatchEvent {
        if ev.revision() == self.last {
            self.delivered_at_last += 1;
        } else {
            self.last = ev.revision();
            self.delivered_at_last = 1;
        }
        ev
    }

    /// Refills the buffer from the machine's history after the live channel lagged.
    async fn recover(&mut self) -> Result<(), CoordError> {
        let (from, skip) = if self.last > self.seen {
            (self.last, self.delivered_at_last)
        } else {
            (self.seen.next(), 0)
        };
        let prefix = self.prefix.clone();
        let (events, revision) = self
            .proposer
            .read(
                Consistency::Local,
                Box::new(move |m: &Machine| (m.history_since(&prefix, from), m.revision())),
            )
            .await?;
        let events = events?;
        let mut skipped = 0;
        for ev in events {
            if ev.revision() == from && skipped < skip {
                skipped += 1;
                continue;
            }
            self.buffered.push_back(ev);
        }
        self.seen = revision;
        Ok(())
    }

    async fn next(&mut self) -> Option<Result<WatchEvent, CoordError>> {
        if self.done {
            return None;
        }
        loop {
            if let Some(ev) = self.buffered.pop_front() {
                return Some(Ok(self.deliver(ev)));
            }
            match self.rx.recv().await {
                Ok(ev) => {
                    if ev.revision() > self.seen && ev.kv.key.starts_with(&self.prefix) {
                        return Some(Ok(self.deliver(ev)));
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    if let Err(e) = self.recover().await {
                        self.done = true;
                        return Some(Err(e));
                    }
                }
                Err(broadcast::error::RecvError::Closed) => {
                    self.done = true;
                    return Some(Err(CoordError::Unavailable {
                        reason: "the node is shutting down: watch again on another node".into(),
                    }));
                }
            }
        }
    }
}

/// State of one observe stream.
struct ObserveState<P: Proposer> {
    proposer: Arc<P>,
    election: String,
    queue: String,
    rx: broadcast::Receiver<WatchEvent>,
    /// The state to send first, if not sent yet.
    first: Option<Option<ElectionLeader>>,
    last: Option<ElectionLeader>,
    done: bool,
}

impl<P: Proposer> ObserveState<P> {
    async fn next(&mut self) -> Option<Result<Option<ElectionLeader>, CoordError>> {
        if self.done {
            return None;
        }
        if let Some(first) = self.first.take() {
            self.last.clone_from(&first);
            return Some(Ok(first));
        }
        loop {
            match self.rx.recv().await {
                Ok(ev) if !ev.kv.key.starts_with(&self.queue) => continue,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => {
                    self.done = true;
                    return Some(Err(CoordError::Unavailable {
                        reason: "the node is shutting down: observe again on another node".into(),
                    }));
                }
            }
            let election = self.election.clone();
            let now = self
                .proposer
                .read(
                    Consistency::Local,
                    Box::new(move |m: &Machine| election_leader(m, &election)),
                )
                .await;
            match now {
                Ok(now) if now != self.last => {
                    self.last.clone_from(&now);
                    return Some(Ok(now));
                }
                Ok(_) => {}
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

#[async_trait]
impl<P: Proposer> Coord for Backend<P> {
    fn capabilities(&self) -> Capabilities {
        self.capabilities.clone()
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<PutResponse, CoordError> {
        self.check_key(key)?;
        self.check_value(&value)?;
        let cmd = Command::Put {
            key: key.to_owned(),
            value,
            lease,
        };
        match self.propose(cmd).await? {
            (_, Outcome::Put(r)) => Ok(r),
            (_, other) => Err(unexpected(&other)),
        }
    }

    async fn get(&self, key: &str, consistency: Consistency) -> Result<GetResponse, CoordError> {
        let key = key.to_owned();
        self.read(consistency, move |m| GetResponse {
            revision: m.revision(),
            kv: m.get(&key).cloned(),
        })
        .await
    }

    async fn range(&self, req: RangeRequest) -> Result<RangeResponse, CoordError> {
        let consistency = req.consistency;
        self.read(consistency, move |m| {
            let (kvs, more) = m.range(&req.prefix, req.start_after.as_deref(), req.limit);
            RangeResponse {
                revision: m.revision(),
                kvs,
                more,
            }
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<DeleteResponse, CoordError> {
        self.check_key(key)?;
        match self
            .propose(Command::Delete {
                key: key.to_owned(),
            })
            .await?
        {
            (_, Outcome::Delete(r)) => Ok(r),
            (_, other) => Err(unexpected(&other)),
        }
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, CoordError> {
        let ops = txn.compares.len() + txn.success.len() + txn.failure.len();
        if ops > self.capabilities.txn_ops_max {
            return Err(CoordError::invalid(format!(
                "transaction has {ops} compares and operations; the limit txn_ops_max is {}: split it",
                self.capabilities.txn_ops_max
            )));
        }
        for op in txn.success.iter().chain(&txn.failure) {
            if let TxnOp::Put { key, value, .. } = op {
                self.check_key(key)?;
                self.check_value(value)?;
            }
        }
        match self.propose(Command::Txn(txn)).await? {
            (_, Outcome::Txn(r)) => Ok(r),
            (_, other) => Err(unexpected(&other)),
        }
    }

    async fn watch(&self, prefix: &str, from: Option<Revision>) -> Result<WatchStream, CoordError> {
        let rx = self.proposer.events();
        let owned = prefix.to_owned();
        // The starting point is read linearizably: a lagging follower would otherwise replay
        // history the leader has already compacted, or start "now" in the past.
        let (history, seen) = self
            .read(Consistency::Linearizable, move |m| match from {
                Some(from) => m.history_since(&owned, from).map(|h| (h, m.revision())),
                None => Ok((Vec::new(), m.revision())),
            })
            .await??;
        let state = WatchState {
            proposer: Arc::clone(&self.proposer),
            prefix: prefix.to_owned(),
            rx,
            buffered: history.into(),
            // A watch from a future revision must not deliver the changes before it.
            seen: seen.max(Revision(from.map_or(0, |f| f.0.saturating_sub(1)))),
            last: Revision(0),
            delivered_at_last: 0,
            done: false,
        };
        Ok(futures::stream::unfold(state, |mut st| async move {
            let item = st.next().await?;
            Some((item, st))
        })
        .boxed())
    }

    async fn lease_grant(&self, ttl: Duration) -> Result<LeaseGrant, CoordError> {
        // Whole milliseconds, rounded up.
        let ttl_ms = u64::try_from(ttl.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
        match self
            .propose(Command::LeaseGrant { id: None, ttl_ms })
            .await?
        {
            (_, Outcome::Lease { id, ttl_ms }) => Ok(LeaseGrant {
                id,
                ttl: Duration::from_millis(ttl_ms),
            }),
            (_, other) => Err(unexpected(&other)),
        }
    }

    async fn lease_keep_alive(&self, id: LeaseId) -> Result<LeaseGrant, CoordError> {
        match self.propose(Command::LeaseKeepAlive { id }).await? {
            (_, Outcome::Lease { id, ttl_ms }) => Ok(LeaseGrant {
                id,
                ttl: Duration::from_millis(ttl_ms),
            }),
            (_, other) => Err(unexpected(&other)),
        }
    }

    async fn lease_revoke(&self, id: LeaseId) -> Result<Revision, CoordError> {
        match self.propose(Command::LeaseRevoke { id }).await? {
            (index, Outcome::LeasesEnded { .. }) => Ok(Revision(index)),
            (_, other) => Err(unexpected(&other)),
        }
    }

    async fn lease_time_to_live(&self, id: LeaseId) -> Result<LeaseInfo, CoordError> {
        let (ttl_ms, keys) = self
            .read(Consistency::Linearizable, move |m| match m.lease(id) {
                Some(l) => Ok((l.ttl_ms, l.keys.iter().cloned().collect::<Vec<_>>())),
                None => Err(m.lease_error(id)),
            })
            .await??;
        // No record (the lease ended in between, or the clock has not seen it yet): report
        // the granted TTL rather than fail a call that is informational.
        let remaining = self
            .proposer
            .lease_remaining(id)
            .await?
            .unwrap_or(Duration::from_millis(ttl_ms));
        Ok(LeaseInfo {
            id,
            granted_ttl: Duration::from_millis(ttl_ms),
            remaining,
            keys,
        })
    }

    async fn lock(&self, name: &str, lease: LeaseId) -> Result<LockGrant, CoordError> {
        let cmd = Command::Lock {
            name: name.to_owned(),
            lease,
        };
        let (pos, token) = self.queue_wait(cmd).await?;
        Ok(lock_grant(name, pos, token))
    }

    async fn unlock(&self, lock: &LockGrant) -> Result<Revision, CoordError> {
        let cmd = Command::Unlock {
            key: lock.key.clone(),
            create_revision: lock.create_revision,
        };
        match self.propose(cmd).await? {
            (_, Outcome::Done { revision, .. }) => Ok(revision),
            (_, other) => Err(unexpected(&other)),
        }
    }

    async fn lock_holder(
        &self,
        name: &str,
        consistency: Consistency,
    ) -> Result<Option<LockGrant>, CoordError> {
        let name = name.to_owned();
        self.read(consistency, move |m| {
            let pos = m.lock_holder(&name)?;
            let token = pos.token?;
            Some(lock_grant(&name, pos, token))
        })
        .await
    }

    async fn campaign(
        &self,
        election: &str,
        value: Vec<u8>,
        lease: LeaseId,
    ) -> Result<LeaderKey, CoordError> {
        self.check_value(&value)?;
        let cmd = Command::Campaign {
            election: election.to_owned(),
            value,
            lease,
        };
        let (pos, token) = self.queue_wait(cmd).await?;
        Ok(leader_key(election, pos, token))
    }

    async fn proclaim(&self, leader: &LeaderKey, value: Vec<u8>) -> Result<Revision, CoordError> {
        self.check_value(&value)?;
        let cmd = Command::Proclaim {
            key: leader.key.clone(),
            create_revision: leader.create_revision,
            value,
        };
        match self.propose(cmd).await? {
            (_, Outcome::Done { revision, .. }) => Ok(revision),
            (_, other) => Err(unexpected(&other)),
        }
    }

    async fn resign(&self, leader: &LeaderKey) -> Result<Revision, CoordError> {
        let cmd = Command::Resign {
            key: leader.key.clone(),
            create_revision: leader.create_revision,
        };
        match self.propose(cmd).await? {
            (_, Outcome::Done { revision, .. }) => Ok(revision),
            (_, other) => Err(unexpected(&other)),
        }
    }

    async fn leader(&self, election: &str) -> Result<Option<ElectionLeader>, CoordError> {
        let election = election.to_owned();
        self.read(Consistency::Linearizable, move |m| {
            election_leader(m, &election)
        })
        .await
    }

    async fn observe(&self, election: &str) -> Result<ObserveStream, CoordError> {
        let rx = self.proposer.events();
        let first = self.leader(election).await?;
        let state = ObserveState {
            proposer: Arc::clone(&self.proposer),
            election: election.to_owned(),
            queue: format!("{ELECTION_PREFIX}{election}/"),
            rx,
            first: Some(first),
            last: None,
            done: false,
        };
        Ok(futures::stream::unfold(state, |mut st| async move {
            let item = st.next().await?;
            Some((item, st))
        })
        .boxed())
    }

    async fn status(&self) -> Result<ClusterStatus, CoordError> {
        self.proposer.status().await
    }

    async fn add_learner(&self, node: NodeId, addr: String) -> Result<(), CoordError> {
        self.proposer.add_learner(node, addr).await
    }

    async fn promote_voter(&self, node: NodeId) -> Result<(), CoordError> {
        self.proposer.promote_voter(node).await
    }

    async fn remove_node(&self, node: NodeId) -> Result<(), CoordError> {
        self.proposer.remove_node(node).await
    }
}
