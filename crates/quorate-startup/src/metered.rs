//! [`MeteredCoord`]: the node's coordination store, timed. Every request this node makes to
//! its store (lease renewals of its roles, the failover loop's reads and transactions, the
//! plugins' calls) goes through it, so `quorate-api` can export the store's request latency
//! per operation, whichever backend (embedded Raft, etcd) answers. For writes it is the commit
//! latency as this node sees it: proposal, replication to a majority, apply, answer.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use quorate_coord_api::{
    Capabilities, ClusterStatus, Consistency, Coord, CoordError, DeleteResponse, ElectionLeader,
    GetResponse, LeaderKey, LeaseGrant, LeaseId, LeaseInfo, LockGrant, ObserveStream, PutResponse,
    RangeRequest, RangeResponse, Revision, Txn, TxnResponse, WatchStream,
};
use quorate_types::NodeId;
use quorate_types::latency::{LatencySnapshot, LatencyStats};

/// The operations timed, in the order of [`CoordStats::snapshot`]. `lock` and `campaign`
/// include the wait in the queue; watches, observes and membership changes are not timed.
pub const METERED_OPS: [&str; 15] = [
    "put",
    "get",
    "range",
    "delete",
    "txn",
    "lease_grant",
    "lease_keep_alive",
    "lease_revoke",
    "lock",
    "unlock",
    "campaign",
    "proclaim",
    "resign",
    "leader",
    "status",
];

#[derive(Clone, Copy)]
enum Op {
    Put,
    Get,
    Range,
    Delete,
    Txn,
    LeaseGrant,
    LeaseKeepAlive,
    LeaseRevoke,
    Lock,
    Unlock,
    Campaign,
    Proclaim,
    Resign,
    Leader,
    Status,
}

/// Request latencies of one node's store, per operation (answered requests in the
/// histogram, errors counted apart).
#[derive(Debug, Default)]
pub struct CoordStats {
    ops: [LatencyStats; METERED_OPS.len()],
}

impl CoordStats {
    /// Every operation of [`METERED_OPS`] with what was counted so far.
    pub fn snapshot(&self) -> Vec<(&'static str, LatencySnapshot)> {
        METERED_OPS
            .iter()
            .zip(&self.ops)
            .map(|(name, s)| (*name, s.snapshot()))
            .collect()
    }

    fn record(&self, op: Op, took: Duration, ok: bool) {
        if let Some(s) = self.ops.get(op as usize) {
            if ok {
                s.record(took);
            } else {
                s.record_failure();
            }
        }
    }
}

/// A [`Coord`] that times every request to `inner` into [`CoordStats`].
pub struct MeteredCoord {
    inner: Arc<dyn Coord>,
    stats: Arc<CoordStats>,
}

impl MeteredCoord {
    /// Wraps `inner`; the latencies go to `stats`.
    pub fn new(inner: Arc<dyn Coord>, stats: Arc<CoordStats>) -> Self {
        Self { inner, stats }
    }

    async fn timed<T>(
        &self,
        op: Op,
        f: impl Future<Output = Result<T, CoordError>>,
    ) -> Result<T, CoordError> {
        let start = tokio::time::Instant::now();
        let r = f.await;
        self.stats.record(op, start.elapsed(), r.is_ok());
        r
    }
}

#[async_trait]
impl Coord for MeteredCoord {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<PutResponse, CoordError> {
        self.timed(Op::Put, self.inner.put(key, value, lease)).await
    }

    async fn get(&self, key: &str, consistency: Consistency) -> Result<GetResponse, CoordError> {
        self.timed(Op::Get, self.inner.get(key, consistency)).await
    }

    async fn range(&self, req: RangeRequest) -> Result<RangeResponse, CoordError> {
        self.timed(Op::Range, self.inner.range(req)).await
    }

    async fn delete(&self, key: &str) -> Result<DeleteResponse, CoordError> {
        self.timed(Op::Delete, self.inner.delete(key)).await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, CoordError> {
        self.timed(Op::Txn, self.inner.txn(txn)).await
    }

    async fn watch(&self, prefix: &str, from: Option<Revision>) -> Result<WatchStream, CoordError> {
        self.inner.watch(prefix, from).await
    }

    async fn lease_grant(&self, ttl: Duration) -> Result<LeaseGrant, CoordError> {
        self.timed(Op::LeaseGrant, self.inner.lease_grant(ttl))
            .await
    }

    async fn lease_keep_alive(&self, id: LeaseId) -> Result<LeaseGrant, CoordError> {
        self.timed(Op::LeaseKeepAlive, self.inner.lease_keep_alive(id))
            .await
    }

    async fn lease_revoke(&self, id: LeaseId) -> Result<Revision, CoordError> {
        self.timed(Op::LeaseRevoke, self.inner.lease_revoke(id))
            .await
    }

    async fn lease_time_to_live(&self, id: LeaseId) -> Result<LeaseInfo, CoordError> {
        self.inner.lease_time_to_live(id).await
    }

    async fn lock(&self, name: &str, lease: LeaseId) -> Result<LockGrant, CoordError> {
        self.timed(Op::Lock, self.inner.lock(name, lease)).await
    }

    async fn unlock(&self, lock: &LockGrant) -> Result<Revision, CoordError> {
        self.timed(Op::Unlock, self.inner.unlock(lock)).await
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
        self.timed(Op::Campaign, self.inner.campaign(election, value, lease))
            .await
    }

    async fn proclaim(&self, leader: &LeaderKey, value: Vec<u8>) -> Result<Revision, CoordError> {
        self.timed(Op::Proclaim, self.inner.proclaim(leader, value))
            .await
    }

    async fn resign(&self, leader: &LeaderKey) -> Result<Revision, CoordError> {
        self.timed(Op::Resign, self.inner.resign(leader)).await
    }

    async fn leader(&self, election: &str) -> Result<Option<ElectionLeader>, CoordError> {
        self.timed(Op::Leader, self.inner.leader(election)).await
    }

    async fn observe(&self, election: &str) -> Result<ObserveStream, CoordError> {
        self.inner.observe(election).await
    }

    async fn status(&self) -> Result<ClusterStatus, CoordError> {
        self.timed(Op::Status, self.inner.status()).await
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
