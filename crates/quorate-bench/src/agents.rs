//! The quorate column of the side-by-side coordination benchmark (`quorate_bench::coord`): a
//! [`BenchTarget`] that runs three `quorate agent` processes on loopback ([`QuorateTarget`]),
//! and a `Coord` client that drives them from outside over the authenticated Raft client
//! transport ([`RemoteCoord`]), as etcd's benchmark drives etcd over gRPC.
//!
//! - Each agent gets a generated TOML config in a temporary directory (`lan` profile by
//!   default, no checks, no roles), its own data dir, and fresh loopback ports.
//! - `kill_leader` finds the Raft leader by proposing a tiny write to every live node (only
//!   the leader accepts a remote proposal: followers answer `NotLeader`), sends SIGKILL to its
//!   process and reaps it. `restore` restarts it on the same data dir and waits until it runs
//!   again as a voter that has applied a write made after its restart.
//! - Peak RSS is each agent's `VmHWM` (the whole agent: health, gossip, Raft, failover).
//!
//! Timings are reported, never asserted.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use quorate_coord_api::{
    Capabilities, ClusterStatus, Consistency, Coord, CoordError, DeleteResponse, ElectionLeader,
    GetResponse, KeyValue, LeaderKey, LeaseGrant, LeaseId, LeaseInfo, LockGrant, ObserveStream,
    PutResponse, RangeRequest, RangeResponse, Revision, Txn, TxnResponse, WatchStream,
};
use quorate_testkit::TestkitError as EtcdError;
use quorate_testkit::agents::{LoopbackPlan, write_config};
pub use quorate_testkit::process::locate_quorate_binary;

use crate::coord::BenchTarget;
use quorate_raft::machine::{Command, MachineLimits, Outcome};
use quorate_raft::network::{
    AdminRequest, CallError, Request, Response, Transport, TransportConfig,
};
use quorate_types::NodeId;
use quorate_wire::net::TokioNet;
use quorate_wire::{ClusterKey, KeyRing, WireConfig};
use tokio::process::Child;
use tokio::time::Instant;

pub use quorate_testkit::process::QUORATE_BIN_ENV;

/// The cluster name written into the generated configs.
const CLUSTER_NAME: &str = "quorate-bench";

/// Settings of [`RemoteCoord`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteCoordConfig {
    /// How long a connect to a node may take.
    pub connect_timeout: Duration,
    /// How long one call may take (above the agents' 5 s `write_timeout`).
    pub rpc_timeout: Duration,
    /// Nodes tried per operation before its last error is returned.
    pub attempts: usize,
    /// Pause before the next attempt when no node knows a live leader (election running).
    pub retry_pause: Duration,
    /// A node whose connect was refused is skipped (its leader hints ignored) for this long.
    pub down_for: Duration,
    /// Idle connections kept per node (at least the client count, or calls reconnect).
    pub idle_connections_per_node: usize,
    /// First and longest pause between polls of the lock key ahead of a waiter (the remote
    /// protocol has no watch: waiters poll, backing off).
    pub lock_poll_min: Duration,
    /// See `lock_poll_min`.
    pub lock_poll_max: Duration,
    /// Longest wait for a lock before `Timeout`.
    pub lock_wait_max: Duration,
    /// The agents' shortest lease TTL (500 ms under `lan`, as `quorate agent` sets it).
    pub lease_ttl_min: Duration,
}

impl Default for RemoteCoordConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_millis(300),
            rpc_timeout: Duration::from_secs(6),
            attempts: 8,
            retry_pause: Duration::from_millis(10),
            down_for: Duration::from_millis(500),
            idle_connections_per_node: 128,
            lock_poll_min: Duration::from_millis(1),
            lock_poll_max: Duration::from_millis(16),
            lock_wait_max: Duration::from_secs(30),
            lease_ttl_min: Duration::from_millis(500),
        }
    }
}

/// A `Coord` client of a quorate-raft cluster from outside, over the authenticated client
/// transport (`Request::Propose` / `Request::Get`), shared by any number of concurrent callers.
///
/// Like `quorate_raft::client::RemoteClient` (which needs `&mut self` and so one client per
/// caller), it follows `NotLeader` hints and rotates over the nodes; in addition the leader it
/// learns is shared by all callers, a node whose connect was refused is skipped for
/// `down_for` (so a follower's hint at the dead leader is not followed again and again), and
/// it pauses `retry_pause` while no node knows a live leader.
///
/// Served: `put`, `get` (always linearizable), `delete`, `txn`, leases (grant, keep-alive,
/// revoke), `lock`/`unlock` (waiters poll the key ahead of them), and the admin calls. Not
/// served (`Unsupported`): `range`, `watch`, `lease_time_to_live`, `lock_holder`, elections,
/// `observe`, `status`: the remote protocol has no request for them.
pub struct RemoteCoord {
    transport: Transport<TokioNet>,
    addrs: Vec<String>,
    current: AtomicUsize,
    down_until: Mutex<Vec<Option<Instant>>>,
    config: RemoteCoordConfig,
    capabilities: Capabilities,
}

impl std::fmt::Debug for RemoteCoord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteCoord")
            .field("addrs", &self.addrs)
            .field("current", &self.current.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

fn unexpected(outcome: &Outcome) -> CoordError {
    CoordError::Internal {
        reason: format!("the cluster answered with an unexpected outcome {outcome:?}"),
    }
}

fn unsupported(what: &str) -> CoordError {
    CoordError::Unsupported {
        what: format!(
            "{what} through the remote benchmark client (the client transport has no request for it; use the agent's embedded backend)"
        ),
    }
}

impl RemoteCoord {
    /// A client of the nodes whose Raft listeners are at `addrs`, authenticated with `wire`.
    pub fn new(wire: WireConfig, addrs: Vec<String>, config: RemoteCoordConfig) -> Self {
        let limits = quorate_raft::Limits::default();
        let transport = Transport::new(
            TokioNet,
            TransportConfig {
                frame_bytes_max: limits.frame_bytes_max,
                connect_timeout: config.connect_timeout,
                rpc_timeout: config.rpc_timeout,
                idle_per_peer_max: config.idle_connections_per_node,
                inbound_connections_max: 1,
                inbound_idle_timeout: Duration::from_secs(1),
                ..TransportConfig::from_limits(wire, &quorate_raft::Limits::default())
            },
        );
        let machine = MachineLimits {
            lease_ttl_min_ms: u64::try_from(config.lease_ttl_min.as_millis()).unwrap_or(u64::MAX),
            ..MachineLimits::lan()
        };
        let capabilities = quorate_raft::backend::capabilities(
            "quorate-raft (remote client)",
            &machine,
            Duration::from_secs(1),
            true,
        );
        Self {
            transport,
            down_until: Mutex::new(vec![None; addrs.len()]),
            addrs,
            current: AtomicUsize::new(0),
            config,
            capabilities,
        }
    }

    /// The node addresses, in index order.
    pub fn addrs(&self) -> &[String] {
        &self.addrs
    }

    /// One call to node `i`. A call that certainly did not reach it is `Unavailable`; one
    /// that may have is `Timeout` (unknown outcome).
    pub async fn call_node(&self, i: usize, req: &Request) -> Result<Response, CoordError> {
        let addr = self
            .addrs
            .get(i)
            .ok_or_else(|| CoordError::invalid(format!("no node with index {i}")))?;
        match self.transport.call(addr, req, None).await {
            Ok(r) => {
                self.set_down(i, None);
                Ok(r)
            }
            Err(e) => {
                // Pooled connections to a node that failed are likely dead too.
                self.transport.forget(addr);
                Err(match e {
                    CallError::Unreachable { reason, .. } => {
                        self.set_down(i, Some(Instant::now() + self.config.down_for));
                        CoordError::Unavailable {
                            reason: format!("{addr}: {reason}"),
                        }
                    }
                    CallError::TooLarge { source, .. } => CoordError::invalid(source.to_string()),
                    other => CoordError::Timeout {
                        what: other.to_string(),
                    },
                })
            }
        }
    }

    fn set_down(&self, i: usize, until: Option<Instant>) {
        let mut d = self.down_until.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = d.get_mut(i) {
            *slot = until;
        }
    }

    fn is_down(&self, i: usize, now: Instant) -> bool {
        let d = self.down_until.lock().unwrap_or_else(|p| p.into_inner());
        d.get(i).copied().flatten().is_some_and(|t| t > now)
    }

    /// After `e` from node `from`: moves the shared current node to the hinted leader (unless
    /// it is known down) or to the next node not known down. Returns whether a usable hint
    /// was followed.
    fn follow(&self, from: usize, e: &CoordError) -> bool {
        let n = self.addrs.len().max(1);
        let now = Instant::now();
        let hinted = match e {
            CoordError::NotLeader {
                leader_addr: Some(a),
                ..
            } => self
                .addrs
                .iter()
                .position(|x| x == a)
                .filter(|&i| !self.is_down(i, now)),
            _ => None,
        };
        let next = hinted.unwrap_or_else(|| {
            (1..=n)
                .map(|k| (from + k) % n)
                .find(|&i| !self.is_down(i, now))
                .unwrap_or((from + 1) % n)
        });
        let _ = self
            .current
            .compare_exchange(from, next, Ordering::Relaxed, Ordering::Relaxed);
        hinted.is_some()
    }

    /// Sends `req` to the current node, following hints over at most `attempts` nodes; only
    /// errors that prove nothing happened move on.
    async fn request(&self, req: Request) -> Result<Response, CoordError> {
        let mut last = CoordError::Unavailable {
            reason: "no attempt made".to_owned(),
        };
        for _ in 0..self.config.attempts.max(1) {
            let i = self.current.load(Ordering::Relaxed) % self.addrs.len().max(1);
            let err = match self.call_node(i, &req).await {
                Ok(Response::Propose(Err(e)))
                | Ok(Response::Get(Err(e)))
                | Ok(Response::Admin(Err(e))) => e,
                Ok(r) => return Ok(r),
                Err(e) => e,
            };
            if !err.is_retryable() || err.outcome_unknown() {
                if matches!(err, CoordError::Timeout { .. }) {
                    // Not retried (the outcome is unknown), but the next call goes elsewhere:
                    // a node that hangs (paused, partitioned, accepting but dead) must not
                    // cost every later call a full `rpc_timeout`.
                    self.follow(i, &err);
                }
                return Err(err);
            }
            let followed = self.follow(i, &err);
            if !followed && !matches!(err, CoordError::Unavailable { .. }) {
                // No node named a live leader: an election is running.
                tokio::time::sleep(self.config.retry_pause).await;
            }
            last = err;
        }
        Err(last)
    }

    /// Proposes `cmd`; a command the machine rejects comes back as its error.
    pub async fn propose(&self, cmd: Command) -> Result<(u64, Outcome), CoordError> {
        match self.request(Request::Propose(cmd)).await? {
            Response::Propose(Ok((_, Outcome::Rejected(e)))) => Err(e),
            Response::Propose(Ok(ok)) => Ok(ok),
            _ => Err(CoordError::Internal {
                reason: "wrong response type to a proposal".to_owned(),
            }),
        }
    }

    /// Reads `key` linearizably: the revision read at and the key.
    pub async fn get_kv(&self, key: &str) -> Result<(u64, Option<KeyValue>), CoordError> {
        match self.request(Request::Get(key.to_owned())).await? {
            Response::Get(Ok(r)) => Ok(r),
            _ => Err(CoordError::Internal {
                reason: "wrong response type to a read".to_owned(),
            }),
        }
    }

    async fn admin(&self, req: AdminRequest) -> Result<(), CoordError> {
        match self.request(Request::Admin(req)).await? {
            Response::Admin(Ok(())) => Ok(()),
            _ => Err(CoordError::Internal {
                reason: "wrong response type to an admin call".to_owned(),
            }),
        }
    }

    /// Which node accepts a proposal now (only the leader does), or `None`.
    async fn leader_index(&self, alive: &[bool]) -> Option<usize> {
        let probe = Request::Propose(Command::Put {
            key: "__bench/leader-probe".to_owned(),
            value: Vec::new(),
            lease: None,
        });
        for (i, _) in alive.iter().enumerate().filter(|(_, a)| **a) {
            if let Ok(Response::Propose(Ok((_, Outcome::Put(_))))) = self.call_node(i, &probe).await
            {
                self.current.store(i, Ordering::Relaxed);
                return Some(i);
            }
        }
        None
    }
}

#[async_trait]
impl Coord for RemoteCoord {
    fn capabilities(&self) -> Capabilities {
        self.capabilities.clone()
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<PutResponse, CoordError> {
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

    async fn get(&self, key: &str, _consistency: Consistency) -> Result<GetResponse, CoordError> {
        // The remote read is always linearizable (stronger than `Local`).
        let (revision, kv) = self.get_kv(key).await?;
        Ok(GetResponse {
            revision: Revision(revision),
            kv,
        })
    }

    async fn range(&self, _req: RangeRequest) -> Result<RangeResponse, CoordError> {
        Err(unsupported("range"))
    }

    async fn delete(&self, key: &str) -> Result<DeleteResponse, CoordError> {
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
        match self.propose(Command::Txn(txn)).await? {
            (_, Outcome::Txn(r)) => Ok(r),
            (_, other) => Err(unexpected(&other)),
        }
    }

    async fn watch(
        &self,
        _prefix: &str,
        _from: Option<Revision>,
    ) -> Result<WatchStream, CoordError> {
        Err(unsupported("watch"))
    }

    async fn lease_grant(&self, ttl: Duration) -> Result<LeaseGrant, CoordError> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
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

    async fn lease_time_to_live(&self, _id: LeaseId) -> Result<LeaseInfo, CoordError> {
        Err(unsupported("lease_time_to_live"))
    }

    async fn lock(&self, name: &str, lease: LeaseId) -> Result<LockGrant, CoordError> {
        let deadline = Instant::now() + self.config.lock_wait_max;
        loop {
            // Idempotent per name and lease: again after the key ahead went, it reports
            // the grant.
            let cmd = Command::Lock {
                name: name.to_owned(),
                lease,
            };
            let pos = match self.propose(cmd).await? {
                (_, Outcome::Queued(pos)) => pos,
                (_, other) => return Err(unexpected(&other)),
            };
            if let Some(token) = pos.token {
                return Ok(LockGrant {
                    name: name.to_owned(),
                    key: pos.key,
                    lease: pos.lease,
                    create_revision: pos.create_revision,
                    token,
                });
            }
            let Some(ahead) = pos.ahead else {
                return Err(CoordError::Internal {
                    reason: format!("queue key {} neither holds nor waits", pos.key),
                });
            };
            let mut pause = self.config.lock_poll_min;
            loop {
                if Instant::now() >= deadline {
                    return Err(CoordError::Timeout {
                        what: format!(
                            "lock {name:?} within lock_wait_max = {:?}",
                            self.config.lock_wait_max
                        ),
                    });
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(self.config.lock_poll_max);
                match self.get_kv(&ahead).await {
                    Ok((_, None)) => break,
                    // The same key created again after ours (its holder unlocked and queued
                    // again with the same lease): the one ahead of us is gone.
                    Ok((_, Some(kv))) if kv.create_revision > pos.create_revision => break,
                    Ok((_, Some(_))) => {}
                    Err(e) if e.is_retryable() => {}
                    Err(e) => return Err(e),
                }
            }
        }
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
        _name: &str,
        _consistency: Consistency,
    ) -> Result<Option<LockGrant>, CoordError> {
        Err(unsupported("lock_holder"))
    }

    async fn campaign(
        &self,
        _election: &str,
        _value: Vec<u8>,
        _lease: LeaseId,
    ) -> Result<LeaderKey, CoordError> {
        Err(unsupported("campaign"))
    }

    async fn proclaim(&self, _leader: &LeaderKey, _value: Vec<u8>) -> Result<Revision, CoordError> {
        Err(unsupported("proclaim"))
    }

    async fn resign(&self, _leader: &LeaderKey) -> Result<Revision, CoordError> {
        Err(unsupported("resign"))
    }

    async fn leader(&self, _election: &str) -> Result<Option<ElectionLeader>, CoordError> {
        Err(unsupported("leader"))
    }

    async fn observe(&self, _election: &str) -> Result<ObserveStream, CoordError> {
        Err(unsupported("observe"))
    }

    async fn status(&self) -> Result<ClusterStatus, CoordError> {
        Err(unsupported("status"))
    }

    async fn add_learner(&self, node: NodeId, addr: String) -> Result<(), CoordError> {
        self.admin(AdminRequest::AddLearner {
            node: node.to_string(),
            addr,
        })
        .await
    }

    async fn promote_voter(&self, node: NodeId) -> Result<(), CoordError> {
        self.admin(AdminRequest::Promote {
            node: node.to_string(),
        })
        .await
    }

    async fn remove_node(&self, node: NodeId) -> Result<(), CoordError> {
        self.admin(AdminRequest::Remove {
            node: node.to_string(),
        })
        .await
    }
}

/// How to run the three agents.
#[derive(Clone, Debug)]
pub struct QuorateClusterConfig {
    /// The program started as each agent, with `args` then `--config <file>` appended
    /// (`quorate` with `["agent"]`).
    pub program: PathBuf,
    /// Arguments before `--config <file>`.
    pub args: Vec<String>,
    /// Number of agents (voters).
    pub nodes: usize,
    /// Timing profile written into the configs (`lan` or `wan`).
    pub profile: String,
    /// How long start-up and each restore may take.
    pub ready_wait: Duration,
    /// The client's settings.
    pub client: RemoteCoordConfig,
}

impl QuorateClusterConfig {
    /// Three `<program> agent` processes, `lan` profile, the default client.
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: vec!["agent".to_owned()],
            nodes: 3,
            profile: "lan".to_owned(),
            ready_wait: Duration::from_secs(30),
            client: RemoteCoordConfig::default(),
        }
    }
}

struct Agent {
    name: String,
    config: PathBuf,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    pid: Option<u32>,
}

/// A 3-process quorate cluster on loopback as a benchmark target (see the module docs).
pub struct QuorateTarget {
    agents: Vec<Agent>,
    coord: Arc<RemoteCoord>,
    killed: Option<usize>,
    config: QuorateClusterConfig,
    // Last: removed after the children are gone.
    dir: tempfile::TempDir,
}

fn io(what: impl Into<String>, e: impl std::fmt::Display) -> EtcdError {
    EtcdError::Io {
        what: what.into(),
        reason: e.to_string(),
    }
}

impl QuorateTarget {
    /// Writes the configs, starts the agents, and waits until every one has applied a write.
    pub async fn start(config: QuorateClusterConfig) -> Result<QuorateTarget, EtcdError> {
        let dir = tempfile::Builder::new()
            .prefix("quorate-bench-")
            .tempdir()
            .map_err(|e| io("creating the benchmark directory", e))?;
        let n = config.nodes.max(1);
        let layout = LoopbackPlan::new(CLUSTER_NAME, n, dir.path())
            .map_err(|e| io("planning the agents", e))?;
        let key = ClusterKey::from_hex(&layout.key_hex).map_err(|e| io("reading the key", e))?;
        let wire = WireConfig::new(CLUSTER_NAME, KeyRing::new(key, vec![]))
            .map_err(|e| io("building the wire config", e))?;
        let mut agents = Vec::new();
        for (i, name) in layout.names.iter().enumerate() {
            let data_dir = dir.path().join(name);
            let profile = config.profile.clone();
            let path = write_config(&layout, i, dir.path(), |c| c.profile = profile)?;
            agents.push(Agent {
                name: name.clone(),
                config: path,
                data_dir,
                log: dir.path().join(format!("{name}.log")),
                child: None,
                pid: None,
            });
        }
        let coord = Arc::new(RemoteCoord::new(wire, layout.raft, config.client.clone()));
        let mut target = QuorateTarget {
            agents,
            coord,
            killed: None,
            config,
            dir,
        };
        for i in 0..n {
            target.spawn(i)?;
        }
        let all: Vec<usize> = (0..n).collect();
        target.wait_ready(&all).await?;
        Ok(target)
    }

    /// The directory holding configs, data dirs and agent logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The concrete client (the same one `coord()` returns).
    pub fn remote(&self) -> Arc<RemoteCoord> {
        Arc::clone(&self.coord)
    }

    /// Process ids of the running agents, by name.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.agents
            .iter()
            .filter(|a| a.child.is_some())
            .filter_map(|a| a.pid.map(|p| (a.name.clone(), p)))
            .collect()
    }

    fn spawn(&mut self, i: usize) -> Result<(), EtcdError> {
        let a = &mut self.agents[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&a.log)
            .map_err(|e| io(format!("opening {}", a.log.display()), e))?;
        let child = tokio::process::Command::new(&self.config.program)
            .args(&self.config.args)
            .arg("--config")
            .arg(&a.config)
            .env(
                "RUST_LOG",
                std::env::var("QUORATE_BENCH_LOG").unwrap_or_else(|_| "warn,openraft=off".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                io(
                    format!(
                        "starting agent {} ({})",
                        a.name,
                        self.config.program.display()
                    ),
                    e,
                )
            })?;
        a.pid = child.id();
        a.child = Some(child);
        Ok(())
    }

    fn status_of(&self, i: usize) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(self.agents[i].data_dir.join("status.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Waits until a write is acknowledged, then until every agent in `which` (running its
    /// current process) reports a leader, all voters, and has applied that write.
    async fn wait_ready(&mut self, which: &[usize]) -> Result<(), EtcdError> {
        let deadline = Instant::now() + self.config.ready_wait;
        let mut last;
        let revision = loop {
            match self.coord.put("__bench/ready", b"1".to_vec(), None).await {
                Ok(r) => break r.revision.0,
                Err(e) => last = e.to_string(),
            }
            self.check_alive(which)?;
            if Instant::now() >= deadline {
                return Err(self.not_ready(which, &last));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let voters = self.agents.len();
        for &i in which {
            loop {
                let ok = self.status_of(i).is_some_and(|s| {
                    s["pid"].as_u64() == self.agents[i].pid.map(u64::from)
                        && !s["raft"]["leader"].is_null()
                        && s["raft"]["voters"].as_array().map(Vec::len) == Some(voters)
                        && s["raft"]["applied_index"].as_u64().unwrap_or(0) >= revision
                });
                if ok {
                    break;
                }
                self.check_alive(which)?;
                if Instant::now() >= deadline {
                    last = format!(
                        "{} has not reported applying revision {revision} (status: {:?})",
                        self.agents[i].name,
                        self.status_of(i)
                    );
                    return Err(self.not_ready(which, &last));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    fn check_alive(&mut self, which: &[usize]) -> Result<(), EtcdError> {
        for &i in which {
            if let Some(c) = self.agents[i].child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                let a = &self.agents[i];
                let tail = std::fs::read_to_string(&a.log).unwrap_or_default();
                let tail: String = tail
                    .lines()
                    .rev()
                    .take(10)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join(" | ");
                return Err(io(
                    format!("agent {} exited ({status})", a.name),
                    format!("log {}: {tail}", a.log.display()),
                ));
            }
        }
        Ok(())
    }

    fn not_ready(&self, which: &[usize], last: &str) -> EtcdError {
        let i = which.first().copied().unwrap_or(0);
        EtcdError::NotHealthy {
            member: self.agents[i].name.clone(),
            waited: self.config.ready_wait,
            last: last.to_owned(),
            log: self.agents[i].log.clone(),
        }
    }

    /// The index of the agent that accepts proposals now (the Raft leader).
    pub async fn leader(&self) -> Option<usize> {
        let alive: Vec<bool> = self.agents.iter().map(|a| a.child.is_some()).collect();
        self.coord.leader_index(&alive).await
    }
}

#[async_trait]
impl BenchTarget for QuorateTarget {
    fn name(&self) -> String {
        "quorate".into()
    }

    fn coord(&self) -> Arc<dyn Coord> {
        Arc::clone(&self.coord) as Arc<dyn Coord>
    }

    async fn kill_leader(&mut self) -> Result<(), EtcdError> {
        let deadline = Instant::now() + self.config.ready_wait;
        let leader = loop {
            if let Some(i) = self.leader().await {
                break i;
            }
            if Instant::now() >= deadline {
                return Err(self.not_ready(&[0], "no agent accepts proposals before the kill"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let a = &mut self.agents[leader];
        if let Some(mut c) = a.child.take() {
            // SIGKILL, then reap: when `wait` returns the process is gone.
            c.start_kill()
                .map_err(|e| io(format!("kill -9 of agent {}", a.name), e))?;
            c.wait()
                .await
                .map_err(|e| io(format!("reaping agent {}", a.name), e))?;
        }
        self.killed = Some(leader);
        Ok(())
    }

    async fn restore(&mut self) -> Result<(), EtcdError> {
        if let Some(i) = self.killed.take() {
            self.spawn(i)?;
            self.wait_ready(&[i]).await?;
        }
        Ok(())
    }

    fn peak_rss_kib(&self) -> Vec<(String, u64)> {
        self.pids()
            .into_iter()
            .filter_map(|(n, p)| quorate_testkit::etcd::peak_rss_kib(p).map(|k| (n, k)))
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test")]
mod tests {
    use super::*;

    #[test]
    fn generated_configs_validate() {
        let dir = tempfile::tempdir().unwrap();
        let layout = LoopbackPlan::new(CLUSTER_NAME, 3, dir.path()).unwrap();
        for i in 0..3 {
            let path = write_config(&layout, i, dir.path(), |c| c.profile = "wan".into()).unwrap();
            let v = quorate::config::load(&path).unwrap();
            assert_eq!(v.voters.len(), 3);
            assert!(v.profile.is_wan());
            assert_eq!(v.raw.gossip.bootstrap, i == 0);
        }
    }

    #[tokio::test]
    async fn a_client_without_nodes_fails_with_a_clear_error() {
        let wire = WireConfig::new(
            CLUSTER_NAME,
            KeyRing::new(ClusterKey::generate().unwrap(), vec![]),
        )
        .unwrap();
        let c = RemoteCoord::new(wire, vec![], RemoteCoordConfig::default());
        let err = c.put("k", b"v".to_vec(), None).await.unwrap_err();
        assert!(matches!(err, CoordError::InvalidArgument { .. }), "{err}");
        let err = c.watch("", None).await.err().unwrap();
        assert!(matches!(err, CoordError::Unsupported { .. }), "{err}");
    }
}
