//! The coordination conformance suite against `Backend<LocalProposer>` (single node, in
//! memory) under paused tokio time: proves the semantics of machine + backend without
//! consensus. The openraft backend runs the same suite on real 1- and 3-node clusters.
//! Also proves the suite itself: wrapped in deliberate contract violations, the backend must
//! fail the suite at the check that covers the violation.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use quorate_coord_api::Coord;
use quorate_coord_api::conformance::{self, Outcome, SuiteConfig};
use quorate_coord_api::{
    Capabilities, ClusterStatus, Consistency, CoordError, DeleteResponse, ElectionLeader,
    GetResponse, LeaderKey, LeaseGrant, LeaseId, LeaseInfo, LockGrant, ObserveStream, PutResponse,
    RangeRequest, RangeResponse, Revision, Txn, TxnResponse, WatchStream,
};
use quorate_raft::backend::{Backend, LocalConfig, LocalProposer, capabilities};
use quorate_raft::machine::MachineLimits;
use quorate_types::NodeId;

/// A small history and event channel, so the suite provokes `Compacted` and exercises the
/// recovery of a lagging watcher from the machine's history.
fn clients() -> Vec<Arc<dyn Coord>> {
    let mut limits = MachineLimits::lan();
    limits.history_events_max = 300;
    let Ok(node) = NodeId::new("local-1") else {
        panic!("node id")
    };
    let mut config = LocalConfig::new(node);
    config.limits = limits.clone();
    config.events_capacity = 64;
    let caps = capabilities("quorate-raft/local", &limits, Duration::from_secs(1), false);
    let backend: Arc<dyn Coord> = Arc::new(Backend::new(LocalProposer::new(config), caps));
    vec![Arc::clone(&backend), backend]
}

fn config() -> SuiteConfig {
    SuiteConfig::new("conformance/")
}

#[track_caller]
fn check(outcome: Outcome) {
    match outcome {
        Ok(report) => assert!(!report.passed.is_empty(), "no check ran: {report:?}"),
        Err(failure) => panic!("{failure}"),
    }
}

#[tokio::test(start_paused = true)]
async fn kv() {
    check(conformance::kv(&clients(), &config()).await);
}

#[tokio::test(start_paused = true)]
async fn txn() {
    check(conformance::txn(&clients(), &config()).await);
}

#[tokio::test(start_paused = true)]
async fn watch() {
    check(conformance::watch(&clients(), &config()).await);
}

#[tokio::test(start_paused = true)]
async fn leases() {
    check(conformance::leases(&clients(), &config()).await);
}

#[tokio::test(start_paused = true)]
async fn locks() {
    check(conformance::locks(&clients(), &config()).await);
}

#[tokio::test(start_paused = true)]
async fn elections() {
    check(conformance::elections(&clients(), &config()).await);
}

#[tokio::test(start_paused = true)]
async fn cluster() {
    check(conformance::cluster(&clients(), &config()).await);
}

/// All areas in one run on one backend, with the LAN limits (history of 10,000 events).
#[tokio::test(start_paused = true)]
async fn run_all_with_lan_limits() {
    let Ok(node) = NodeId::new("local-1") else {
        panic!("node id")
    };
    let limits = MachineLimits::lan();
    let caps = capabilities("quorate-raft/local", &limits, Duration::from_secs(1), false);
    let backend: Arc<dyn Coord> = Arc::new(Backend::new(
        LocalProposer::new(LocalConfig::new(node)),
        caps,
    ));
    let report = conformance::run_all(&[backend], &config()).await;
    match report {
        Ok(report) => {
            assert!(report.passed.len() >= 40, "{report:?}");
            assert_eq!(report.backend, "quorate-raft/local");
        }
        Err(failure) => panic!("{failure}"),
    }
}

// ---- the suite must reject broken backends ----

/// One deliberate contract violation.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Transactions ignore their compares (lost updates).
    IgnoreCompares,
    /// Watches silently drop every third event.
    DropEvents,
    /// Keep-alive answers without renewing.
    KeepAliveNoop,
    /// Unlock answers without releasing.
    UnlockNoop,
}

struct Broken {
    inner: Arc<dyn Coord>,
    fault: Fault,
}

#[async_trait]
impl Coord for Broken {
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
    async fn get(&self, key: &str, c: Consistency) -> Result<GetResponse, CoordError> {
        self.inner.get(key, c).await
    }
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse, CoordError> {
        self.inner.range(req).await
    }
    async fn delete(&self, key: &str) -> Result<DeleteResponse, CoordError> {
        self.inner.delete(key).await
    }
    async fn txn(&self, mut txn: Txn) -> Result<TxnResponse, CoordError> {
        if let Fault::IgnoreCompares = self.fault {
            txn.compares.clear();
        }
        self.inner.txn(txn).await
    }
    async fn watch(&self, prefix: &str, from: Option<Revision>) -> Result<WatchStream, CoordError> {
        let stream = self.inner.watch(prefix, from).await?;
        Ok(match self.fault {
            Fault::DropEvents => stream
                .enumerate()
                .filter_map(|(i, ev)| async move { (i % 3 != 1).then_some(ev) })
                .boxed(),
            _ => stream,
        })
    }
    async fn lease_grant(&self, ttl: Duration) -> Result<LeaseGrant, CoordError> {
        self.inner.lease_grant(ttl).await
    }
    async fn lease_keep_alive(&self, id: LeaseId) -> Result<LeaseGrant, CoordError> {
        if let Fault::KeepAliveNoop = self.fault {
            let info = self.inner.lease_time_to_live(id).await?;
            return Ok(LeaseGrant {
                id,
                ttl: info.granted_ttl,
            });
        }
        self.inner.lease_keep_alive(id).await
    }
    async fn lease_revoke(&self, id: LeaseId) -> Result<Revision, CoordError> {
        self.inner.lease_revoke(id).await
    }
    async fn lease_time_to_live(&self, id: LeaseId) -> Result<LeaseInfo, CoordError> {
        self.inner.lease_time_to_live(id).await
    }
    async fn lock(&self, name: &str, lease: LeaseId) -> Result<LockGrant, CoordError> {
        self.inner.lock(name, lease).await
    }
    async fn unlock(&self, lock: &LockGrant) -> Result<Revision, CoordError> {
        if let Fault::UnlockNoop = self.fault {
            return Ok(self.inner.get("x", Consistency::Local).await?.revision);
        }
        self.inner.unlock(lock).await
    }
    async fn lock_holder(
        &self,
        name: &str,
        c: Consistency,
    ) -> Result<Option<LockGrant>, CoordError> {
        self.inner.lock_holder(name, c).await
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

/// Runs the suite on a backend with `fault` and expects it to fail at `check`.
async fn rejects(fault: Fault, check: &str) {
    let inner = clients().swap_remove(0);
    let broken: Arc<dyn Coord> = Arc::new(Broken { inner, fault });
    match conformance::run_all(&[broken], &config()).await {
        Ok(report) => panic!("the suite passed a backend with {fault:?}: {report:?}"),
        Err(failure) => assert_eq!(failure.check, check, "{fault:?}: {failure}"),
    }
}

#[tokio::test(start_paused = true)]
async fn suite_rejects_lost_updates() {
    rejects(Fault::IgnoreCompares, "txn/create_if_absent").await;
}

#[tokio::test(start_paused = true)]
async fn suite_rejects_dropped_watch_events() {
    rejects(Fault::DropEvents, "watch/live_events_in_order").await;
}

#[tokio::test(start_paused = true)]
async fn suite_rejects_keep_alive_that_does_not_renew() {
    rejects(Fault::KeepAliveNoop, "leases/keep_alive_outlives_ttl").await;
}

#[tokio::test(start_paused = true)]
async fn suite_rejects_unlock_that_does_not_release() {
    rejects(Fault::UnlockNoop, "locks/fifo_handover").await;
}

/// A watcher that lags in the middle of a revision's events resumes exactly after the last
/// event it delivered (no duplicate, no gap), from the machine's history.
#[tokio::test(start_paused = true)]
async fn watch_recovers_mid_revision_after_lag() {
    use quorate_coord_api::TxnOp;
    let Ok(node) = NodeId::new("local-1") else {
        panic!("node id")
    };
    let mut config = LocalConfig::new(node);
    config.events_capacity = 4;
    let caps = capabilities("local", &config.limits, Duration::from_secs(1), false);
    let coord = Backend::new(LocalProposer::new(config), caps);
    let puts = |keys: &[&str]| Txn {
        success: keys
            .iter()
            .map(|k| TxnOp::Put {
                key: (*k).to_owned(),
                value: b"v".to_vec(),
                lease: None,
            })
            .collect(),
        ..Txn::default()
    };
    let mut w = coord
        .watch("w/", None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let r1 = coord
        .txn(puts(&["w/a", "w/b", "w/c"]))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let first = w.next().await.and_then(Result::ok).map(|e| e.kv.key);
    assert_eq!(first.as_deref(), Some("w/a"));
    // Overflow the 4-event channel while the watcher sits after w/a.
    let r2 = coord
        .txn(puts(&["w/d", "w/e", "w/f", "w/g"]))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut rest = Vec::new();
    for _ in 0..6 {
        match w.next().await {
            Some(Ok(ev)) => rest.push((ev.kv.key.clone(), ev.revision())),
            other => panic!("watch gave {other:?}"),
        }
    }
    let want: Vec<(String, Revision)> = [
        ("w/b", r1.revision),
        ("w/c", r1.revision),
        ("w/d", r2.revision),
        ("w/e", r2.revision),
        ("w/f", r2.revision),
        ("w/g", r2.revision),
    ]
    .into_iter()
    .map(|(k, r)| (k.to_owned(), r))
    .collect();
    assert_eq!(rest, want);
    let r3 = coord
        .put("w/h", b"v".to_vec(), None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let next = w.next().await.and_then(Result::ok).map(|e| e.revision());
    assert_eq!(
        next,
        Some(r3.revision),
        "a duplicate or a gap after recovery"
    );
}

/// A watch from a future revision delivers nothing before it.
#[tokio::test(start_paused = true)]
async fn watch_from_a_future_revision_starts_there() {
    let coord = clients().swap_remove(0);
    let now = coord
        .put("f/0", b"v".to_vec(), None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let from = Revision(now.revision.0 + 3);
    let mut w = coord
        .watch("f/", Some(from))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for i in 1..=4 {
        coord
            .put(&format!("f/{i}"), b"v".to_vec(), None)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let first = w.next().await.and_then(Result::ok).map(|e| e.revision());
    assert_eq!(first, Some(from));
}
