//! Shared helpers of the integration tests: a fault-injecting `Coord` wrapper (cuts one
//! client's keep-alives, as a partition between that holder and the cluster would), and the
//! backends: in-memory (paused time), embedded Raft on loopback TCP, real etcd.
#![allow(dead_code, reason = "each test target uses a subset")]
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test helpers")]

pub(crate) mod suite;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex as StdMutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use quorate_clock::{Clock, SharedClock, SystemClock};
use quorate_coord_api::{
    Capabilities, ClusterStatus, Consistency, Coord, CoordError, DeleteResponse, ElectionLeader,
    GetResponse, LeaderKey, LeaseGrant, LeaseId, LeaseInfo, LockGrant, ObserveStream, PutResponse,
    RangeRequest, RangeResponse, Revision, Txn, TxnResponse, WatchStream,
};
use quorate_types::NodeId;

/// What the wrapper does to `lease_keep_alive`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum KeepAlive {
    /// Pass through.
    Pass = 0,
    /// Never answer (the request is lost in a partition).
    Hang = 1,
    /// Fail with a non-retryable error.
    Refuse = 2,
    /// Fail with a retryable error (`Unavailable`).
    Unavailable = 3,
}

/// A `Coord` that passes every call through, except keep-alives (and, when they hang, revokes:
/// a partition between holder and cluster loses both) when told to cut them; it
/// records when each keep-alive was sent and whether it was acknowledged.
pub(crate) struct Faulty {
    inner: Arc<dyn Coord>,
    keep_alive: AtomicU8,
    /// Delay added before a passed-through keep-alive's answer reaches the holder, in ms.
    latency_ms: std::sync::atomic::AtomicU64,
    /// Every watch stream ends (as a broken connection does) after this many events; 0 = never.
    watch_events_max: std::sync::atomic::AtomicU64,
    /// The clock the renewals are timed on.
    clock: SharedClock,
    /// (sent, acknowledged) of every keep-alive, on `clock`.
    pub(crate) renewals: StdMutex<Vec<(Duration, bool)>>,
}

impl Faulty {
    pub(crate) fn new(inner: Arc<dyn Coord>) -> Arc<Faulty> {
        Faulty::with_clock(inner, SystemClock::shared())
    }

    pub(crate) fn with_clock(inner: Arc<dyn Coord>, clock: SharedClock) -> Arc<Faulty> {
        Arc::new(Faulty {
            clock,
            inner,
            keep_alive: AtomicU8::new(KeepAlive::Pass as u8),
            latency_ms: std::sync::atomic::AtomicU64::new(0),
            watch_events_max: std::sync::atomic::AtomicU64::new(0),
            renewals: StdMutex::new(Vec::new()),
        })
    }

    pub(crate) fn set_keep_alive(&self, k: KeepAlive) {
        self.keep_alive.store(k as u8, Ordering::SeqCst);
    }

    /// Delays every passed-through keep-alive answer by `d`.
    pub(crate) fn set_latency(&self, d: Duration) {
        self.latency_ms
            .store(u64::try_from(d.as_millis()).unwrap(), Ordering::SeqCst);
    }

    /// Ends every watch stream opened from now on after `n` events.
    pub(crate) fn cut_watches_after(&self, n: u64) {
        self.watch_events_max.store(n, Ordering::SeqCst);
    }

    /// The send time of the last acknowledged keep-alive.
    pub(crate) fn last_acknowledged(&self) -> Option<Duration> {
        self.renewals
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(_, ok)| *ok)
            .map(|(t, _)| *t)
    }
}

#[async_trait]
impl Coord for Faulty {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<PutResponse, CoordError> {
        self.inner.put(key, value, lease).await
    }
    async fn get(&self, key: &str, consistency: Consistency) -> Result<GetResponse, CoordError> {
        self.inner.get(key, consistency).await
    }
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse, CoordError> {
        self.inner.range(req).await
    }
    async fn delete(&self, key: &str) -> Result<DeleteResponse, CoordError> {
        self.inner.delete(key).await
    }
    async fn txn(&self, txn: Txn) -> Result<TxnResponse, CoordError> {
        self.inner.txn(txn).await
    }
    async fn watch(&self, prefix: &str, from: Option<Revision>) -> Result<WatchStream, CoordError> {
        use futures::StreamExt;
        let s = self.inner.watch(prefix, from).await?;
        match self.watch_events_max.load(Ordering::SeqCst) {
            0 => Ok(s),
            n => Ok(s.take(usize::try_from(n).unwrap()).boxed()),
        }
    }
    async fn lease_grant(&self, ttl: Duration) -> Result<LeaseGrant, CoordError> {
        self.inner.lease_grant(ttl).await
    }
    async fn lease_keep_alive(&self, id: LeaseId) -> Result<LeaseGrant, CoordError> {
        let sent = self.clock.now();
        let mode = self.keep_alive.load(Ordering::SeqCst);
        if mode == KeepAlive::Hang as u8 {
            self.renewals.lock().unwrap().push((sent, false));
            return std::future::pending().await;
        }
        if mode == KeepAlive::Refuse as u8 {
            self.renewals.lock().unwrap().push((sent, false));
            return Err(CoordError::invalid("refused by the test"));
        }
        if mode == KeepAlive::Unavailable as u8 {
            self.renewals.lock().unwrap().push((sent, false));
            return Err(CoordError::Unavailable {
                reason: "cut by the test".into(),
            });
        }
        let r = self.inner.lease_keep_alive(id).await;
        let latency = self.latency_ms.load(Ordering::SeqCst);
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        self.renewals.lock().unwrap().push((sent, r.is_ok()));
        r
    }
    async fn lease_revoke(&self, id: LeaseId) -> Result<Revision, CoordError> {
        if self.keep_alive.load(Ordering::SeqCst) == KeepAlive::Hang as u8 {
            // The partition that loses keep-alives loses the holder's revoke too.
            return std::future::pending().await;
        }
        self.inner.lease_revoke(id).await
    }
    async fn lease_time_to_live(&self, id: LeaseId) -> Result<LeaseInfo, CoordError> {
        self.inner.lease_time_to_live(id).await
    }
    async fn lock(&self, name: &str, lease: LeaseId) -> Result<LockGrant, CoordError> {
        self.inner.lock(name, lease).await
    }
    async fn unlock(&self, lock: &LockGrant) -> Result<Revision, CoordError> {
        self.inner.unlock(lock).await
    }
    async fn lock_holder(
        &self,
        name: &str,
        consistency: Consistency,
    ) -> Result<Option<LockGrant>, CoordError> {
        self.inner.lock_holder(name, consistency).await
    }
    async fn campaign(
        &self,
        election: &str,
        value: Vec<u8>,
        lease: LeaseId,
    ) -> Result<LeaderKey, CoordError> {
        self.inner.campaign(election, value, lease).await
    }
    async fn proclaim(&self, leader: &LeaderKey, value: Vec<u8>) -> Result<Revision, CoordError> {
        self.inner.proclaim(leader, value).await
    }
    async fn resign(&self, leader: &LeaderKey) -> Result<Revision, CoordError> {
        self.inner.resign(leader).await
    }
    async fn leader(&self, election: &str) -> Result<Option<ElectionLeader>, CoordError> {
        self.inner.leader(election).await
    }
    async fn observe(&self, election: &str) -> Result<ObserveStream, CoordError> {
        self.inner.observe(election).await
    }
    async fn status(&self) -> Result<ClusterStatus, CoordError> {
        self.inner.status().await
    }
    async fn add_learner(&self, node: NodeId, addr: String) -> Result<(), CoordError> {
        self.inner.add_learner(node, addr).await
    }
    async fn promote_voter(&self, node: NodeId) -> Result<(), CoordError> {
        self.inner.promote_voter(node).await
    }
    async fn remove_node(&self, node: NodeId) -> Result<(), CoordError> {
        self.inner.remove_node(node).await
    }
}

/// The in-memory single-node backend (paused-time tests).
pub(crate) fn local() -> Arc<dyn Coord> {
    local_with_history(quorate_raft::machine::MachineLimits::lan().history_events_max)
}

/// The in-memory backend keeping only `events` past events for watches to resume from.
pub(crate) fn local_with_history(events: u64) -> Arc<dyn Coord> {
    use quorate_raft::backend::{Backend, LocalConfig, LocalProposer, capabilities};
    use quorate_raft::machine::MachineLimits;
    let mut limits = MachineLimits::lan();
    limits.history_events_max = events;
    let mut config = LocalConfig::new(NodeId::new("local-1").unwrap());
    config.limits = limits.clone();
    let caps = capabilities("quorate-raft/local", &limits, Duration::from_secs(1), false);
    Arc::new(Backend::new(LocalProposer::new(config), caps))
}

/// A real-TCP embedded Raft cluster on loopback (the `wan` timing: 2 shared cores).
pub(crate) struct RaftCluster {
    _dir: tempfile::TempDir,
    nodes: Vec<quorate_raft::RaftNode<quorate_wire::net::TokioNet>>,
}

impl RaftCluster {
    pub(crate) async fn start(n: usize) -> RaftCluster {
        use quorate_raft::{NodeConfig, RaftNode, Timing};
        use quorate_wire::net::TokioNet;
        use quorate_wire::{ClusterKey, KeyRing, WireConfig};
        let dir = tempfile::tempdir().unwrap();
        let name = |i: usize| NodeId::new(format!("n{i}")).unwrap();
        let addrs: Vec<String> = (0..n)
            .map(|_| format!("127.0.0.1:{}", quorate_testports::free_port().unwrap()))
            .collect();
        let wire = WireConfig::new(
            "state-test",
            KeyRing::new(ClusterKey::from_bytes([9; 32]), vec![]),
        )
        .unwrap();
        let mut nodes = Vec::new();
        for i in 0..n {
            let storage = open(&dir.path().join(format!("n{i}.redb")));
            let mut cfg = NodeConfig::new(name(i), addrs[i].clone(), wire.clone());
            cfg.timing = Timing::wan();
            if i == 0 {
                cfg.bootstrap = Some(
                    addrs
                        .iter()
                        .enumerate()
                        .map(|(j, a)| (name(j), a.clone()))
                        .collect::<BTreeMap<_, _>>(),
                );
            }
            nodes.push(RaftNode::start(cfg, storage, TokioNet).await.unwrap());
        }
        let c = RaftCluster { _dir: dir, nodes };
        c.wait_leader().await;
        c
    }

    async fn wait_leader(&self) {
        let waits: Vec<_> = self
            .nodes
            .iter()
            .map(|n| {
                let mut view = n.view();
                Box::pin(async move {
                    let _ = view.wait_for(|v| v.can_act).await;
                })
            })
            .collect();
        tokio::time::timeout(Duration::from_secs(30), futures::future::select_all(waits))
            .await
            .expect("a raft leader within 30 s");
    }

    /// One client per node.
    pub(crate) fn clients(&self) -> Vec<Arc<dyn Coord>> {
        self.nodes
            .iter()
            .map(|n| Arc::new(n.backend()) as Arc<dyn Coord>)
            .collect()
    }

    /// The index of a node that is not the Raft leader (a node's own view).
    pub(crate) fn follower(&self) -> usize {
        (0..self.nodes.len())
            .find(|&i| !self.nodes[i].view().borrow().is_leader)
            .expect("a follower")
    }

    /// The index of the node that leads.
    pub(crate) fn leader_index(&self) -> usize {
        (0..self.nodes.len())
            .find(|&i| self.nodes[i].view().borrow().is_leader)
            .expect("a leader")
    }

    /// Shuts node `i` down: its clients' calls fail from now on, as for a holder cut off with
    /// its node.
    pub(crate) async fn stop(&self, i: usize) {
        self.nodes[i].shutdown().await;
    }

    pub(crate) async fn shutdown(self) {
        for n in &self.nodes {
            n.shutdown().await;
        }
    }
}

fn open(path: &Path) -> quorate_raft::Storage {
    quorate_raft::Storage::open(path).unwrap()
}

/// Whether the backend behind `f` no longer knows `lease`.
pub(crate) async fn local_lease_gone(f: &Faulty, lease: LeaseId) -> bool {
    matches!(
        f.lease_time_to_live(lease).await,
        Err(CoordError::LeaseNotFound { .. } | CoordError::LeaseExpired { .. })
    )
}
