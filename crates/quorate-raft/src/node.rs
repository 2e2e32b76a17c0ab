//! A running Raft node: openraft wired to the redb stores, the TCP transport, the leader lease,
//! the lease-expiry loop and the cluster view; and its [`Proposer`] implementation, which
//! `backend::Backend` turns into `quorate_coord_api::Coord`.
//!
//! Requests reaching a follower are forwarded to the leader (one hop; the leader never
//! forwards again). When no leader is known, or the leader cannot be reached, the caller gets
//! `NotLeader` with the hint. Linearizable reads on a follower ask the leader for a read index
//! (the leader confirms its leadership with a quorum), wait until the follower has applied it,
//! then read locally.

mod client_api;
mod elector;
mod read_batch;

pub use elector::ElectorStats;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError as OpenraftError,
};
use openraft::{ChangeMembers, RaftMetrics, ServerState, SnapshotPolicy};
use quorate_clock::{Clock, SharedClock};
use quorate_coord_api::{ClusterStatus, Consistency, CoordError, LeaseId, WatchEvent};
use quorate_types::NodeId;
use quorate_wire::WireConfig;
use quorate_wire::net::{Listener, Net};
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::{Proposer, ReadFn};
use crate::config::{Limits, Timing, raft_id};
use crate::error::NodeError;
use crate::lease::LeaderLease;
use crate::lease_glue::LeaseTracker;
use crate::machine::{Command, MachineLimits, Outcome};
use crate::network::{
    AdminRequest, CallError, ClientRequest, Handler, NetworkFactory, Request, Response, Transport,
    TransportConfig, serve,
};
use crate::sm::{SmShared, StateMachineStore};
use crate::store::{LogStore, Storage};
use crate::types::{PeerNode, Raft};

/// The default [`NodeConfig::client_protected_prefixes`]: quorate's own components keep their
/// keys under `quorate/` (failover roles and manual operations, Telegram offsets).
pub const CLIENT_PROTECTED_PREFIXES: &[&str] = &["quorate/"];

/// Everything a node needs to start.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This node's name.
    pub name: NodeId,
    /// Where the Raft listener binds (`host:port`).
    pub listen_addr: String,
    /// The address peers use to reach this node (stored in the membership).
    pub advertise_addr: String,
    /// Heartbeat and election timing (a profile: [`Timing::lan`] or [`Timing::wan`]).
    pub timing: Timing,
    /// Queues, frames, batches, timeouts.
    pub limits: Limits,
    /// The state machine's limits.
    pub machine: MachineLimits,
    /// Cluster name and keys (the Raft transport replaces `frame_bytes_max` with
    /// `limits.frame_bytes_max`).
    pub wire: WireConfig,
    /// The initial voters (name -> Raft address), used only when this node's storage is fresh.
    /// Give it to exactly one node of a new cluster (or the same map to all of them); a node
    /// with existing data never re-initialises.
    pub bootstrap: Option<BTreeMap<NodeId, String>>,
    /// Capacity of the applied watch-event channel.
    pub events_max: usize,
    /// This node's store quota in bytes of keys and values: as leader it refuses (NOSPACE) a
    /// user write that would grow the store past it, before proposing
    /// ([`Machine::admit`](crate::machine::Machine::admit)). `None`: only the hard limit
    /// [`MachineLimits::store_bytes_max`] (the same on every node, applied alike) holds.
    pub store_quota_bytes: Option<u64>,
    /// Key prefixes a client key may not write (see `docs/security.md`, "Client keys"): a
    /// key under one, a lock or election so named, or a lease holding such a key. Default
    /// [`CLIENT_PROTECTED_PREFIXES`]: the keys of quorate's own components.
    pub client_protected_prefixes: Vec<String>,
    /// The clock the leader lease and the lease clock read (monotonic time and timers):
    /// [`SystemClock`](quorate_clock::SystemClock) by default; a simulation injects a clock
    /// with its own rate to run one node's lease decisions fast or slow. openraft's own
    /// timers (heartbeat, election) keep tokio time.
    pub clock: SharedClock,
}

impl NodeConfig {
    /// A config with the `lan` profile and default limits.
    pub fn new(name: NodeId, addr: impl Into<String>, wire: WireConfig) -> Self {
        let addr = addr.into();
        Self {
            name,
            listen_addr: addr.clone(),
            advertise_addr: addr,
            timing: Timing::lan(),
            limits: Limits::default(),
            machine: MachineLimits::lan(),
            wire,
            bootstrap: None,
            events_max: 4096,
            store_quota_bytes: None,
            client_protected_prefixes: CLIENT_PROTECTED_PREFIXES
                .iter()
                .map(|p| (*p).to_owned())
                .collect(),
            clock: quorate_clock::SystemClock::shared(),
        }
    }

    fn openraft_config(&self) -> Result<openraft::Config, NodeError> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let chunk = self
            .limits
            .snapshot_chunk_bytes
            .get()
            .min((self.limits.frame_bytes_max.get() as usize).saturating_sub(64 * 1024));
        let c = openraft::Config {
            cluster_name: self.wire.cluster_name.clone(),
            heartbeat_interval: ms(self.timing.heartbeat),
            election_timeout_min: ms(self.timing.election_min),
            election_timeout_max: ms(self.timing.election_max),
            install_snapshot_timeout: ms(self.limits.rpc_timeout),
            max_payload_entries: self.limits.append_entries_max.get(),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(
                self.limits.snapshot_every_entries.get(),
            ),
            max_in_snapshot_log_to_keep: self.limits.log_keep_entries,
            snapshot_max_chunk_size: chunk as u64,
            // Elections are started by `node/elector.rs` after a pre-vote, never by openraft's
            // own timer (which raises the term of an isolated node; see that module).
            enable_elect: false,
            ..Default::default()
        };
        c.validate()
            .map_err(|e| NodeError::Config(format!("openraft rejected the timing: {e}")))
    }
}

/// The cluster-manager view of this node: who leads, in which term, and whether this node may
/// act as leader now (it leads and its leader lease holds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterView {
    /// This node.
    pub node: NodeId,
    /// The leader this node knows of.
    pub leader: Option<NodeId>,
    /// The Raft term.
    pub term: u64,
    /// Whether openraft says this node is the leader.
    pub is_leader: bool,
    /// Whether this node leads *and* a quorum acknowledged it within the leader lease. A
    /// leader cut off from the majority turns this `false` before a new leader can be elected.
    pub can_act: bool,
    /// On the leader: the estimated age of the last quorum acknowledgement.
    pub quorum_ack_age: Option<Duration>,
    /// Voters.
    pub voters: Vec<NodeId>,
    /// Learners.
    pub learners: Vec<NodeId>,
    /// The last applied log index.
    pub applied_index: u64,
}

struct Core<N: Net> {
    id: u64,
    name: NodeId,
    addr: String,
    raft: Raft,
    transport: Arc<Transport<N>>,
    sm: Arc<SmShared>,
    timing: Timing,
    limits: Limits,
    machine_limits: MachineLimits,
    /// [`NodeConfig::client_protected_prefixes`].
    client_protected: Vec<String>,
    /// [`NodeConfig::store_quota_bytes`].
    store_quota: Option<u64>,
    lease: LeaderLease,
    /// The clock of the leader lease and of lease expiry ([`NodeConfig::clock`]).
    clock: SharedClock,
    committed: Arc<AtomicU64>,
    /// The last `millis_since_quorum_ack` and when it was observed (`clock` time).
    ack: Mutex<(Option<u64>, Duration)>,
    view: watch::Sender<ClusterView>,
    /// Slots for held remote watch polls (`Limits::watch_polls_held_max`).
    watch_holds: Arc<tokio::sync::Semaphore>,
    /// Concurrent linearizable reads share one leadership round (`node/read_batch.rs`).
    read_batch: read_batch::ReadBatch<Local<u64>>,
    /// When a leader was last heard from (tokio time, as openraft's own leader lease): the
    /// elector's clock (`node/elector.rs`).
    leader_heard: Mutex<Instant>,
    /// When this node last granted a peer's pre-vote (`node/elector.rs`).
    pre_vote_granted: Mutex<Option<Instant>>,
    /// The elector's counters.
    elector_stats: Arc<ElectorStats>,
    cancel: CancellationToken,
    /// Stops the storage writer (after openraft has shut down).
    store_stop: CancellationToken,
    tracker: TaskTracker,
}

/// A running node. Cheap to clone.
pub struct RaftNode<N: Net> {
    core: Arc<Core<N>>,
}

impl<N: Net> Clone for RaftNode<N> {
    fn clone(&self) -> Self {
        Self {
            core: self.core.clone(),
        }
    }
}

impl<N: Net> std::fmt::Debug for RaftNode<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftNode")
            .field("name", &self.core.name)
            .field("addr", &self.core.addr)
            .finish_non_exhaustive()
    }
}

/// Why a local attempt did not produce an answer.
#[derive(Clone)]
enum Local<T> {
    Done(Result<T, CoordError>),
    Forward(Option<PeerNode>),
}

impl<T> Local<T> {
    fn map<U>(self, f: impl FnOnce(T) -> U) -> Local<U> {
        match self {
            Local::Done(r) => Local::Done(r.map(f)),
            Local::Forward(l) => Local::Forward(l),
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> CoordError {
    CoordError::Unavailable {
        reason: format!("raft node stopped: {e}"),
    }
}

impl<N: Net> RaftNode<N> {
    /// Binds `config.listen_addr` and starts the node on `storage`.
    pub async fn start(config: NodeConfig, storage: Storage, net: N) -> Result<Self, NodeError> {
        let listener =
            net.bind_tcp(&config.listen_addr)
                .await
                .map_err(|source| NodeError::Bind {
                    addr: config.listen_addr.clone(),
                    source,
                })?;
        Self::start_with_listener(config, storage, net, listener).await
    }

    /// Starts the node on an already bound listener (tests bind port 0 first to learn the
    /// addresses).
    pub async fn start_with_listener(
        config: NodeConfig,
        storage: Storage,
        net: N,
        listener: N::TcpListener,
    ) -> Result<Self, NodeError> {
        config.timing.validate()?;
        config.limits.validate()?;
        let raft_config = Arc::new(config.openraft_config()?);
        let id = raft_id(&config.name);
        let transport = Arc::new(Transport::new(
            net,
            TransportConfig::from_limits(config.wire.clone(), &config.limits),
        ));
        storage.check_identity(config.name.as_str(), &config.wire.cluster_name)?;
        let fresh = storage.is_fresh()?;
        let tracker = TaskTracker::new();
        let store_stop = CancellationToken::new();
        let log = LogStore::new(
            storage.clone(),
            config.limits.write_queue_max.get(),
            config.limits.group_commit_max.get(),
            &tracker,
            store_stop.clone(),
        )?;
        let committed = log.committed_index();
        let sm = SmShared::open(
            storage,
            config.machine.clone(),
            config.events_max,
            LeaseTracker::new(config.clock.clone(), config.timing.drift),
        )?;
        let raft = Raft::new(
            id,
            raft_config,
            NetworkFactory::new(transport.clone()),
            log,
            StateMachineStore::new(sm.clone()),
        )
        .await
        .map_err(|e| NodeError::Openraft(e.to_string()))?;
        let (view, _) = watch::channel(ClusterView {
            node: config.name.clone(),
            leader: None,
            term: 0,
            is_leader: false,
            can_act: false,
            quorum_ack_age: None,
            voters: Vec::new(),
            learners: Vec::new(),
            applied_index: 0,
        });
        let core = Arc::new(Core {
            id,
            name: config.name.clone(),
            addr: config.advertise_addr.clone(),
            raft: raft.clone(),
            transport: transport.clone(),
            sm,
            timing: config.timing,
            limits: config.limits.clone(),
            machine_limits: config.machine.clone(),
            client_protected: config.client_protected_prefixes.clone(),
            store_quota: config.store_quota_bytes,
            lease: LeaderLease::new(&config.timing),
            clock: config.clock.clone(),
            committed,
            ack: Mutex::new((None, config.clock.now())),
            view,
            watch_holds: Arc::new(tokio::sync::Semaphore::new(
                config.limits.watch_polls_held_max.get(),
            )),
            read_batch: read_batch::ReadBatch::default(),
            leader_heard: Mutex::new(Instant::now()),
            pre_vote_granted: Mutex::new(None),
            elector_stats: Arc::default(),
            cancel: CancellationToken::new(),
            store_stop,
            tracker,
        });
        core.tracker.spawn(serve(
            listener,
            transport,
            core.clone(),
            core.cancel.clone(),
            core.tracker.clone(),
        ));
        core.tracker.spawn(view_task(core.clone()));
        core.tracker.spawn(lease_expiry_task(core.clone()));
        core.tracker.spawn(elector::elector_task(core.clone()));
        if fresh && let Some(voters) = &config.bootstrap {
            let mut members = BTreeMap::new();
            for (name, addr) in voters {
                let rid = raft_id(name);
                if let Some(prev) = members.insert(
                    rid,
                    PeerNode {
                        name: name.to_string(),
                        addr: addr.clone(),
                    },
                ) {
                    return Err(NodeError::IdCollision {
                        new: name.to_string(),
                        existing: prev.name,
                        id: rid,
                    });
                }
            }
            if let Err(e) = raft.initialize(members).await {
                // Another bootstrap node may have initialised us already.
                tracing::info!(error = %e, "raft initialize skipped");
            }
        }
        Ok(Self { core })
    }

    /// This node's name.
    pub fn name(&self) -> &NodeId {
        &self.core.name
    }

    /// This node's openraft id.
    pub fn raft_id(&self) -> u64 {
        self.core.id
    }

    /// The cluster-manager view, updated on every metrics change and at lease expiry.
    pub fn view(&self) -> watch::Receiver<ClusterView> {
        self.core.view.subscribe()
    }

    /// The openraft metrics (for tests and the API layer).
    pub fn metrics(&self) -> watch::Receiver<RaftMetrics<u64, PeerNode>> {
        self.core.raft.metrics()
    }

    /// Triggers a snapshot now (tests; normally taken by policy).
    pub async fn trigger_snapshot(&self) -> Result<(), CoordError> {
        self.core
            .raft
            .trigger()
            .snapshot()
            .await
            .map_err(unavailable)
    }

    /// Stops the node: the listener, the lease loops and openraft. Storage is left as is.
    pub async fn shutdown(&self) {
        self.core.cancel.cancel();
        if let Err(e) = self.core.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        self.core.store_stop.cancel();
        self.core.tracker.close();
        self.core.tracker.wait().await;
    }

    /// The `Capabilities` this node's backend advertises: the machine's limits, and a lease
    /// expiry slack of drift (1 % of a 10 s TTL), one expiry check period (a heartbeat) and
    /// two election timeouts (a leader change in between).
    pub fn capabilities(&self) -> quorate_coord_api::Capabilities {
        self.core.capabilities()
    }

    /// Counters of this node's Raft port (connections admitted, refused, evicted, timed out;
    /// frames rejected; client-key refusals; client requests).
    pub fn inbound_stats(&self) -> Arc<crate::network::InboundStats> {
        self.core.transport.inbound_stats_shared()
    }

    /// Counters of this node's elections (pre-vote rounds, their outcomes, elections started,
    /// peers' pre-votes granted and refused; `node/elector.rs`).
    pub fn elector_stats(&self) -> Arc<ElectorStats> {
        Arc::clone(&self.core.elector_stats)
    }

    /// This node as a `quorate_coord_api::Coord`.
    pub fn backend(&self) -> crate::backend::Backend<RaftNode<N>> {
        crate::backend::Backend::new(self.clone(), self.capabilities())
    }

    /// Waits until some node is known as leader (up to `timeout`).
    pub async fn wait_for_leader(&self, timeout: Duration) -> Option<NodeId> {
        self.core.wait_for_leader(timeout).await
    }
}

impl<N: Net> Core<N> {
    /// See [`RaftNode::capabilities`].
    fn capabilities(&self) -> quorate_coord_api::Capabilities {
        let t = &self.timing;
        let slack = t.heartbeat + t.election_max * 2 + Duration::from_millis(100);
        crate::backend::capabilities("quorate-raft", &self.machine_limits, slack, true)
    }

    fn name_of(&self, id: u64) -> Option<NodeId> {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.membership_config
            .membership()
            .get_node(&id)
            .and_then(|n| NodeId::new(&n.name).ok())
    }

    async fn wait_for_leader(&self, timeout: Duration) -> Option<NodeId> {
        let mut rx = self.raft.metrics();
        let deadline = Instant::now() + timeout;
        loop {
            let leader = rx.borrow_and_update().current_leader;
            if let Some(l) = leader {
                return self.name_of(l);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
        }
    }

    fn not_leader(&self, leader: Option<&PeerNode>) -> CoordError {
        CoordError::NotLeader {
            leader_hint: leader.and_then(|l| NodeId::new(&l.name).ok()),
            leader_addr: leader.map(|l| l.addr.clone()),
        }
    }

    /// Whether this node leads with a valid leader lease, right now.
    fn lease_valid_now(&self) -> bool {
        let (ms, at) = *self.ack.lock().unwrap_or_else(|p| p.into_inner());
        self.lease.valid(LeaderLease::ack_age(
            ms,
            self.clock.now().saturating_sub(at),
        ))
    }

    /// On a leader: waits (at most `election_max`, the time a partitioned leader needs to be
    /// replaced) for a valid lease, else `NoQuorum`. The wait covers a new leader's first
    /// heartbeat round and slow replication of a large entry; a leader cut off from the
    /// majority answers `NoQuorum` within `election_max`.
    async fn ensure_lease(&self) -> Result<(), CoordError> {
        if self.lease_valid_now() {
            return Ok(());
        }
        let mut view = self.view.subscribe();
        let wait = self.timing.election_max;
        let ok = tokio::time::timeout(wait, async {
            loop {
                if view.borrow_and_update().can_act || self.lease_valid_now() {
                    return;
                }
                if view.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        })
        .await;
        if ok.is_ok() {
            Ok(())
        } else {
            Err(CoordError::NoQuorum)
        }
    }

    fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader
    }

    fn check_size(&self, cmd: &Command) -> Result<(), CoordError> {
        let len = postcard::experimental::serialized_size(cmd).unwrap_or(usize::MAX);
        let max = self.limits.command_bytes_max.get();
        if len > max {
            return Err(CoordError::InvalidArgument {
                reason: format!(
                    "command of {len} bytes exceeds the limit command_bytes_max = {max}: write less per request"
                ),
            });
        }
        Ok(())
    }

    /// Proposes on this node if it leads; never forwards.
    async fn propose_local(&self, cmd: Command) -> Local<(u64, Outcome)> {
        if self.is_leader() {
            if let Err(e) = self.ensure_lease().await {
                return Local::Done(Err(e));
            }
            if let Some(quota) = self.store_quota
                && let Err(e) = self.sm.lock().machine.admit(&cmd, quota)
            {
                return Local::Done(Err(e));
            }
        }
        // Once proposed, the write waits for its commit even if the lease lapses meanwhile
        // (a slow replication of a large entry delays the quorum acks too): it cannot commit
        // without a quorum, so waiting is safe, and the caller gets `Timeout` if it never does.
        let res =
            tokio::time::timeout(self.limits.write_timeout, self.raft.client_write(cmd)).await;
        match res {
            Err(_) => Local::Done(Err(CoordError::Timeout {
                what: format!(
                    "commit within write_timeout = {:?}",
                    self.limits.write_timeout
                ),
            })),
            Ok(Ok(resp)) => match resp.data.0 {
                Some(o) => Local::Done(Ok((resp.log_id.index, o))),
                None => Local::Done(Err(CoordError::Internal {
                    reason: "a command entry produced no outcome".to_owned(),
                })),
            },
            Ok(Err(OpenraftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Local::Forward(f.leader_node)
            }
            Ok(Err(OpenraftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                Local::Done(Err(CoordError::invalid(e.to_string())))
            }
            Ok(Err(OpenraftError::Fatal(e))) => Local::Done(Err(unavailable(e))),
        }
    }

    async fn propose(&self, cmd: Command) -> Result<(u64, Outcome), CoordError> {
        self.check_size(&cmd)?;
        let cmd = &cmd;
        self.local_or_forward(
            || self.propose_local(cmd.clone()),
            |leader| async move {
                let req = Request::Propose(cmd.clone());
                match self.forward(&leader, &req, true).await? {
                    Response::Propose(r) => r,
                    _ => Err(bad_response()),
                }
            },
        )
        .await
    }

    /// The one local-or-forward loop of proposals, reads and membership changes: try `local`;
    /// if another node leads, hand the request to `forward` (one hop); if no leader is known,
    /// wait for one (up to three election timeouts) and try once more; else `NotLeader`.
    async fn local_or_forward<T, F, G>(
        &self,
        local: impl Fn() -> F,
        forward: impl FnOnce(PeerNode) -> G,
    ) -> Result<T, CoordError>
    where
        F: Future<Output = Local<T>>,
        G: Future<Output = Result<T, CoordError>>,
    {
        for _ in 0..2 {
            match local().await {
                Local::Done(r) => return r,
                Local::Forward(Some(leader)) => return forward(leader).await,
                Local::Forward(None) => {
                    if self
                        .wait_for_leader(self.timing.election_max * 3)
                        .await
                        .is_none()
                    {
                        break;
                    }
                }
            }
        }
        Err(self.not_leader(None))
    }

    /// Sends a request to the leader. `mutating`: whether a lost answer means an unknown
    /// outcome (`Timeout`) rather than "nothing happened".
    async fn forward(
        &self,
        leader: &PeerNode,
        req: &Request,
        mutating: bool,
    ) -> Result<Response, CoordError> {
        match self
            .transport
            .call(&leader.addr, req, Some(self.limits.forward_timeout))
            .await
        {
            Ok(r) => Ok(r),
            Err(CallError::Unreachable { .. }) => Err(self.not_leader(Some(leader))),
            Err(CallError::TooLarge { source, .. }) => Err(CoordError::invalid(format!(
                "request does not fit a frame ({source}): write less per request"
            ))),
            Err(e) if mutating => Err(CoordError::Timeout {
                what: format!("the leader's answer ({e})"),
            }),
            Err(_) => Err(self.not_leader(Some(leader))),
        }
    }

    /// On the leader: confirms leadership with a quorum and returns the read index.
    async fn read_index_local(&self) -> Local<u64> {
        if self.is_leader()
            && let Err(e) = self.ensure_lease().await
        {
            return Local::Done(Err(e));
        }
        self.read_batch.run(|| self.read_index_round()).await
    }

    /// One leadership-confirming quorum round and the read index it gives (run by
    /// `read_index_local` for every read waiting on it).
    async fn read_index_round(&self) -> Local<u64> {
        let r =
            tokio::time::timeout(self.limits.rpc_timeout, self.raft.ensure_linearizable()).await;
        match r {
            Err(_) => Local::Done(Err(CoordError::NoQuorum)),
            Ok(Ok(id)) => Local::Done(Ok(id.map_or(0, |l| l.index))),
            Ok(Err(OpenraftError::APIError(CheckIsLeaderError::ForwardToLeader(
                ForwardToLeader { leader_node, .. },
            )))) => Local::Forward(leader_node),
            Ok(Err(OpenraftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))) => {
                Local::Done(Err(CoordError::NoQuorum))
            }
            Ok(Err(OpenraftError::Fatal(e))) => Local::Done(Err(unavailable(e))),
        }
    }

    async fn linearizable_barrier(&self) -> Result<(), CoordError> {
        let local = || async { self.read_index_local().await.map(|_| ()) };
        self.local_or_forward(local, |leader| async move {
            let idx = match self.forward(&leader, &Request::ReadIndex, false).await? {
                Response::ReadIndex(r) => r?,
                _ => return Err(bad_response()),
            };
            self.raft
                .wait(Some(self.limits.forward_timeout))
                .applied_index_at_least(Some(idx), "linearizable read")
                .await
                .map(|_| ())
                .map_err(|e| CoordError::Timeout {
                    what: format!("this follower to apply index {idx}: {e}"),
                })
        })
        .await
    }

    fn member(&self, node: &NodeId) -> Result<(u64, bool, bool), CoordError> {
        let rid = raft_id(node);
        let m = self.raft.metrics();
        let m = m.borrow();
        let mem = m.membership_config.membership();
        if let Some(existing) = mem.get_node(&rid)
            && existing.name != node.as_str()
        {
            return Err(CoordError::invalid(format!(
                "node {node} has the same raft id {rid} as member {}: rename one of them",
                existing.name
            )));
        }
        let voter = mem.voter_ids().any(|v| v == rid);
        let learner = mem.learner_ids().any(|l| l == rid);
        Ok((rid, voter, learner))
    }

    fn voter_count(&self) -> usize {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.membership_config.membership().voter_ids().count()
    }

    async fn admin_local(&self, req: &AdminRequest) -> Local<()> {
        let node = |s: &str| {
            NodeId::new(s).map_err(|e| CoordError::invalid(format!("node name {s:?}: {e}")))
        };
        let write = match req {
            AdminRequest::AddLearner { node: n, addr } => {
                let n = match node(n) {
                    Ok(n) => n,
                    Err(e) => return Local::Done(Err(e)),
                };
                match self.member(&n) {
                    Err(e) => return Local::Done(Err(e)),
                    Ok((_, true, _)) => {
                        return Local::Done(Err(CoordError::invalid(format!(
                            "node {n} is already a voter"
                        ))));
                    }
                    Ok((rid, _, _)) => {
                        let peer = PeerNode {
                            name: n.to_string(),
                            addr: addr.clone(),
                        };
                        tokio::time::timeout(
                            self.limits.write_timeout,
                            self.raft.add_learner(rid, peer, false),
                        )
                        .await
                    }
                }
            }
            AdminRequest::Promote { node: n } => {
                let n = match node(n) {
                    Ok(n) => n,
                    Err(e) => return Local::Done(Err(e)),
                };
                match self.member(&n) {
                    Err(e) => return Local::Done(Err(e)),
                    Ok((_, true, _)) => return Local::Done(Ok(())),
                    Ok((_, false, false)) => {
                        return Local::Done(Err(CoordError::UnknownNode {
                            node: n.to_string(),
                            reason: "not a learner of this cluster: add it as a learner first"
                                .to_owned(),
                        }));
                    }
                    Ok((rid, false, true)) => {
                        tokio::time::timeout(
                            self.limits.write_timeout,
                            self.raft.change_membership(
                                ChangeMembers::AddVoterIds(BTreeSet::from([rid])),
                                false,
                            ),
                        )
                        .await
                    }
                }
            }
            AdminRequest::Remove { node: n } => {
                let n = match node(n) {
                    Ok(n) => n,
                    Err(e) => return Local::Done(Err(e)),
                };
                match self.member(&n) {
                    Err(e) => return Local::Done(Err(e)),
                    Ok((_, false, false)) => {
                        return Local::Done(Err(CoordError::UnknownNode {
                            node: n.to_string(),
                            reason: "not a member of this cluster".to_owned(),
                        }));
                    }
                    Ok((_, true, _)) if self.voter_count() <= 1 => {
                        return Local::Done(Err(CoordError::invalid(format!(
                            "node {n} is the last voter: add and promote another node before removing it"
                        ))));
                    }
                    Ok((rid, true, _)) => {
                        tokio::time::timeout(
                            self.limits.write_timeout,
                            self.raft.change_membership(
                                ChangeMembers::RemoveVoters(BTreeSet::from([rid])),
                                false,
                            ),
                        )
                        .await
                    }
                    Ok((rid, false, true)) => {
                        tokio::time::timeout(
                            self.limits.write_timeout,
                            self.raft.change_membership(
                                ChangeMembers::RemoveNodes(BTreeSet::from([rid])),
                                false,
                            ),
                        )
                        .await
                    }
                }
            }
        };
        match write {
            Err(_) => Local::Done(Err(CoordError::Timeout {
                what: "membership change to commit".to_owned(),
            })),
            Ok(Ok(_)) => Local::Done(Ok(())),
            Ok(Err(OpenraftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Local::Forward(f.leader_node)
            }
            Ok(Err(OpenraftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                Local::Done(Err(CoordError::invalid(format!(
                    "membership change refused: {e}"
                ))))
            }
            Ok(Err(OpenraftError::Fatal(e))) => Local::Done(Err(unavailable(e))),
        }
    }

    async fn admin(&self, req: AdminRequest) -> Result<(), CoordError> {
        let req = &req;
        self.local_or_forward(
            || self.admin_local(req),
            |leader| async move {
                match self
                    .forward(&leader, &Request::Admin(req.clone()), true)
                    .await?
                {
                    Response::Admin(r) => r,
                    _ => Err(bad_response()),
                }
            },
        )
        .await
    }

    fn compute_view(&self, m: &RaftMetrics<u64, PeerNode>, now: Duration) -> ClusterView {
        let mem = m.membership_config.membership();
        let name = |id: u64| mem.get_node(&id).and_then(|n| NodeId::new(&n.name).ok());
        let is_leader = m.state == ServerState::Leader;
        let age = if is_leader {
            let (ms, at) = *self.ack.lock().unwrap_or_else(|p| p.into_inner());
            LeaderLease::ack_age(ms, now.saturating_sub(at))
        } else {
            None
        };
        ClusterView {
            node: self.name.clone(),
            leader: m.current_leader.and_then(name),
            term: m.current_term,
            is_leader,
            can_act: is_leader && self.lease.valid(age),
            quorum_ack_age: age,
            voters: mem.voter_ids().filter_map(name).collect(),
            learners: mem.learner_ids().filter_map(name).collect(),
            applied_index: m.last_applied.map_or(0, |l| l.index),
        }
    }

    fn status(&self) -> ClusterStatus {
        let m = self.raft.metrics();
        let m = m.borrow().clone();
        let v = self.compute_view(&m, self.clock.now());
        ClusterStatus {
            node: self.name.clone(),
            leader: v.leader,
            term: v.term,
            commit_index: self.committed.load(Ordering::Relaxed).max(v.applied_index),
            applied_index: v.applied_index,
            voters: v.voters,
            learners: v.learners,
            quorum_contact_age: v.quorum_ack_age,
        }
    }
}

fn bad_response() -> CoordError {
    CoordError::Internal {
        reason: "the leader answered with the wrong response type (version mismatch?)".to_owned(),
    }
}

/// Keeps the cluster view and the leader lease current: on every metrics change, and at the
/// instant the lease would run out.
async fn view_task<N: Net>(core: Arc<Core<N>>) {
    let mut metrics = core.raft.metrics();
    loop {
        let m = metrics.borrow_and_update().clone();
        let now = core.clock.now();
        {
            let mut ack = core.ack.lock().unwrap_or_else(|p| p.into_inner());
            *ack = if m.state == ServerState::Leader {
                (m.millis_since_quorum_ack, now)
            } else {
                (None, now)
            };
        }
        let view = core.compute_view(&m, now);
        let wake = core
            .lease
            .remaining(view.quorum_ack_age)
            .map(|r| now + r + Duration::from_millis(1));
        core.view.send_if_modified(|v| {
            if *v == view {
                false
            } else {
                if v.can_act && !view.can_act {
                    tracing::warn!(node = %core.name, term = view.term,
                        "lost leadership: no quorum acknowledgement within the leader lease");
                }
                *v = view;
                true
            }
        });
        tokio::select! {
            biased;
            () = core.cancel.cancelled() => return,
            r = metrics.changed() => if r.is_err() { return },
            () = sleep_until_opt(&core.clock, wake) => {}
        }
    }
}

async fn sleep_until_opt(clock: &SharedClock, at: Option<Duration>) {
    match at {
        Some(t) => clock.sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// On the leader (while it can act), proposes lease expiries when the lease clock says they
/// are due. Followers only wait for leadership; nothing here polls or spins.
///
/// Each time this node starts to act as leader (a new term, or quorum regained), it first
/// moves every live lease's deadline to `max(its own apply-time record's expiry, now + grace)`
/// (`LeaseClock::took_over`, grace = half the lease's TTL): no lease ends because the cluster
/// had no leader, or no quorum, for a while, before its holder had a chance to renew with the
/// new leader, yet a lease whose holder died with the old leader ends half a TTL after the
/// takeover rather than a full TTL (etcd's rule). Both are later than the holder's own
/// deadline, so both are safe.
async fn lease_expiry_task<N: Net>(core: Arc<Core<N>>) {
    let mut view = core.view.subscribe();
    let mut acting = false;
    loop {
        if !view.borrow_and_update().can_act {
            acting = false;
            tokio::select! {
                biased;
                () = core.cancel.cancelled() => return,
                r = view.changed() => if r.is_err() { return },
            }
            continue;
        }
        if !acting {
            acting = true;
            let mut st = core.sm.lock();
            let crate::sm::SmState {
                machine,
                lease_clock,
                ..
            } = &mut *st;
            lease_clock.took_over(machine);
        }
        let (cmd, next) = {
            let mut st = core.sm.lock();
            let crate::sm::SmState {
                machine,
                lease_clock,
                ..
            } = &mut *st;
            let cmd = lease_clock.expire_command(machine);
            (cmd, lease_clock.next_deadline())
        };
        let now = core.clock.now();
        let wake = match cmd {
            Some(cmd) => match core.propose_local(cmd).await {
                Local::Done(Ok(_)) => continue,
                Local::Done(Err(e)) => {
                    tracing::debug!(error = %e, "lease expiry proposal failed; retrying");
                    core.clock.now() + core.timing.heartbeat
                }
                Local::Forward(_) => core.clock.now() + core.timing.heartbeat,
            },
            // Nothing due: sleep until the earliest deadline (at most a heartbeat, since new
            // renewals move deadlines), or until the view changes.
            None => next.map_or(now + core.timing.heartbeat, |d| {
                d.max(now + Duration::from_millis(1))
                    .min(now + core.timing.heartbeat)
            }),
        };
        tokio::select! {
            biased;
            () = core.cancel.cancelled() => return,
            () = core.clock.sleep_until(wake) => {}
            r = view.changed() => if r.is_err() { return },
        }
    }
}

impl<N: Net> Handler for Core<N> {
    async fn handle(&self, req: Request) -> Response {
        match req {
            Request::AppendEntries(r) => {
                let r = self.raft.append_entries(r).await;
                if matches!(&r, Ok(a) if !matches!(a, openraft::raft::AppendEntriesResponse::HigherVote(_)))
                {
                    self.touch_leader();
                }
                Response::AppendEntries(r)
            }
            Request::Vote(r) => Response::Vote(self.raft.vote(r).await),
            Request::InstallSnapshot(r) => {
                let vote = r.vote;
                let r = self.raft.install_snapshot(r).await;
                if matches!(&r, Ok(a) if a.vote == vote) {
                    self.touch_leader();
                }
                Response::InstallSnapshot(r)
            }
            Request::PreVote(r) => Response::PreVote(self.pre_vote(&r)),
            Request::Propose(Command::LeaseExpire { .. }) => {
                // Only this node's own expiry loop proposes expiries (`propose_local`).
                Response::Propose(Err(CoordError::invalid(
                    "lease expiries are proposed by the leader's own lease clock, never over the network",
                )))
            }
            Request::Propose(cmd) => {
                let r = match self.check_size(&cmd) {
                    Err(e) => Err(e),
                    Ok(()) => match self.propose_local(cmd).await {
                        Local::Done(r) => r,
                        Local::Forward(l) => Err(self.not_leader(l.as_ref())),
                    },
                };
                Response::Propose(r)
            }
            Request::ReadIndex => Response::ReadIndex(match self.read_index_local().await {
                Local::Done(r) => r,
                Local::Forward(l) => Err(self.not_leader(l.as_ref())),
            }),
            Request::Get(key) => Response::Get(match self.linearizable_barrier().await {
                Err(e) => Err(e),
                Ok(()) => {
                    let st = self.sm.lock();
                    Ok((st.machine.revision().0, st.machine.get(&key).cloned()))
                }
            }),
            Request::Admin(a) => Response::Admin(match self.admin_local(&a).await {
                Local::Done(r) => r,
                Local::Forward(l) => Err(self.not_leader(l.as_ref())),
            }),
            Request::Client(c) => Response::Client(self.handle_client(c).await),
        }
    }

    async fn handle_as_client(&self, req: ClientRequest) -> Response {
        Response::Client(self.handle_as_client_key(req).await)
    }
}

impl<N: Net> Proposer for RaftNode<N> {
    async fn propose(&self, cmd: Command) -> Result<(u64, Outcome), CoordError> {
        self.core.propose(cmd).await
    }

    async fn read<R: Send + 'static>(
        &self,
        consistency: Consistency,
        f: ReadFn<R>,
    ) -> Result<R, CoordError> {
        if consistency == Consistency::Linearizable {
            self.core.linearizable_barrier().await?;
        }
        let st = self.core.sm.lock();
        Ok(f(&st.machine))
    }

    fn events(&self) -> broadcast::Receiver<WatchEvent> {
        self.core.sm.subscribe()
    }

    async fn lease_remaining(&self, id: LeaseId) -> Result<Option<Duration>, CoordError> {
        let st = self.core.sm.lock();
        Ok(st.lease_clock.remaining(id))
    }

    async fn status(&self) -> Result<ClusterStatus, CoordError> {
        Ok(self.core.status())
    }

    async fn add_learner(&self, node: NodeId, addr: String) -> Result<(), CoordError> {
        self.core
            .admin(AdminRequest::AddLearner {
                node: node.to_string(),
                addr,
            })
            .await
    }

    async fn promote_voter(&self, node: NodeId) -> Result<(), CoordError> {
        self.core
            .admin(AdminRequest::Promote {
                node: node.to_string(),
            })
            .await
    }

    async fn remove_node(&self, node: NodeId) -> Result<(), CoordError> {
        self.core
            .admin(AdminRequest::Remove {
                node: node.to_string(),
            })
            .await
    }
}

/// The listener type of a [`Net`] (re-exported for callers of `start_with_listener`).
pub type ListenerOf<N> = <N as Net>::TcpListener;

#[allow(
    dead_code,
    reason = "keeps the Listener trait import used on every cfg"
)]
fn _listener_bound<L: Listener>() {}
