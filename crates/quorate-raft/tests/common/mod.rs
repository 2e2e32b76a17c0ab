//! Shared helpers of the integration tests: real-TCP clusters on loopback.
#![allow(dead_code, reason = "each test target uses a subset")]
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test helpers")]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use quorate_raft::{Limits, NodeConfig, RaftNode, Storage, Timing};
use quorate_types::NodeId;
use quorate_wire::net::TokioNet;
use quorate_wire::{ClientKey, ClusterKey, KeyRing, WireConfig};

/// The test cluster's client key (accepted by every node; see [`client_wire`]).
pub(crate) const CLIENT_KEY: [u8; 32] = [9; 32];

/// The test cluster's wire config (one fixed cluster key; [`CLIENT_KEY`] accepted from
/// clients).
pub(crate) fn wire() -> WireConfig {
    let keys = KeyRing::new(ClusterKey::from_bytes([7; 32]), vec![]);
    keys.set_client_keys(vec![ClientKey::new(ClusterKey::from_bytes(CLIENT_KEY))])
        .expect("client key");
    WireConfig::new("raft-test", keys).expect("wire config")
}

/// What an application holding only the client key uses.
pub(crate) fn client_wire() -> WireConfig {
    WireConfig::new(
        "raft-test",
        KeyRing::new(ClusterKey::from_bytes(CLIENT_KEY), vec![]),
    )
    .expect("wire config")
}

/// A node name.
pub(crate) fn name(i: usize) -> NodeId {
    NodeId::new(format!("n{i}")).unwrap()
}

/// A free loopback address, reserved for this test process (outside the ephemeral range, so
/// no outgoing connection takes it between the pick and a restarted node's bind).
pub(crate) fn free_addr() -> String {
    format!("127.0.0.1:{}", quorate_testports::free_port().unwrap())
}

/// A real-TCP cluster whose nodes keep their data under one temp dir.
pub(crate) struct Cluster {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) addrs: Vec<String>,
    pub(crate) nodes: Vec<Option<RaftNode<TokioNet>>>,
    /// Per-node runtimes (when `own_runtimes`): killing a node drops its runtime, aborting
    /// every task at once, as close to `kill -9` as one process gets.
    pub(crate) runtimes: Vec<Option<tokio::runtime::Runtime>>,
    pub(crate) own_runtimes: bool,
    pub(crate) timing: Timing,
    pub(crate) limits: Limits,
    /// `NodeConfig::store_quota_bytes` of nodes (re)started from now on.
    pub(crate) store_quota: Option<u64>,
}

impl Cluster {
    /// Starts `n` nodes; node 0 bootstraps the cluster.
    pub(crate) async fn start(n: usize) -> Cluster {
        Self::start_with(n, false, Limits::default()).await
    }

    /// Starts `n` nodes, each in its own runtime if `own_runtimes`, with `limits`.
    pub(crate) async fn start_with(n: usize, own_runtimes: bool, limits: Limits) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let addrs: Vec<String> = (0..n).map(|_| free_addr()).collect();
        let mut c = Cluster {
            dir,
            addrs,
            nodes: (0..n).map(|_| None).collect(),
            runtimes: (0..n).map(|_| None).collect(),
            own_runtimes,
            // The `wan` profile (election 1.0-1.5 s): real-time tests share 2 cores with the
            // rest of CI, and `lan`'s 300 ms election timeout fires spuriously under that load.
            timing: Timing::wan(),
            limits,
            store_quota: None,
        };
        for i in 0..n {
            c.restart(i).await;
        }
        c
    }

    pub(crate) fn path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("n{i}.redb"))
    }

    pub(crate) fn config(&self, i: usize) -> NodeConfig {
        let mut cfg = NodeConfig::new(name(i), self.addrs[i].clone(), wire());
        cfg.timing = self.timing;
        cfg.limits = self.limits.clone();
        cfg.store_quota_bytes = self.store_quota;
        if i == 0 {
            cfg.bootstrap = Some(
                self.addrs
                    .iter()
                    .enumerate()
                    .map(|(j, a)| (name(j), a.clone()))
                    .collect::<BTreeMap<_, _>>(),
            );
        }
        cfg
    }

    /// (Re)starts node `i` from its data file.
    pub(crate) async fn restart(&mut self, i: usize) {
        let storage = Storage::open(&self.path(i)).unwrap();
        let config = self.config(i);
        let node = if self.own_runtimes {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let node = rt
                .spawn(RaftNode::start(config, storage, TokioNet))
                .await
                .unwrap()
                .unwrap();
            self.runtimes[i] = Some(rt);
            node
        } else {
            RaftNode::start(config, storage, TokioNet).await.unwrap()
        };
        self.nodes[i] = Some(node);
    }

    /// Starts one more node on a fresh store, not a member yet (add it as a learner); returns
    /// its index.
    pub(crate) async fn add_node(&mut self) -> usize {
        let i = self.addrs.len();
        self.addrs.push(free_addr());
        self.nodes.push(None);
        self.runtimes.push(None);
        self.restart(i).await;
        i
    }

    /// Kills node `i`: drops its runtime (own runtimes) or shuts it down.
    pub(crate) async fn kill(&mut self, i: usize) {
        let node = self.nodes[i].take();
        match self.runtimes[i].take() {
            Some(rt) => {
                // Abort every task at once (as `kill -9` would), then wait for the runtime's
                // threads to finish, so that nothing of the node holds its store any more.
                tokio::task::spawn_blocking(move || rt.shutdown_timeout(Duration::from_secs(10)))
                    .await
                    .unwrap();
                drop(node);
            }
            None => {
                if let Some(n) = node {
                    n.shutdown().await;
                }
            }
        }
    }

    pub(crate) fn node(&self, i: usize) -> &RaftNode<TokioNet> {
        self.nodes[i].as_ref().unwrap()
    }

    /// Waits until a running node reports itself leader with a valid lease; returns its index.
    pub(crate) async fn leader(&self) -> usize {
        let waits: Vec<_> = self
            .nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                let mut view = n.as_ref()?.view();
                Some(Box::pin(async move {
                    let _ = view.wait_for(|v| v.can_act).await;
                    i
                }))
            })
            .collect();
        let (i, _, _) =
            tokio::time::timeout(Duration::from_secs(20), futures::future::select_all(waits))
                .await
                .expect("a leader within 20 s");
        i
    }

    pub(crate) async fn shutdown(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i).await;
        }
    }
}

/// The remote client settings of the tests.
pub(crate) fn remote_config() -> quorate_raft::client::ClientConfig {
    let mut config = quorate_raft::client::ClientConfig::lan(wire());
    // The cluster runs the `wan` profile: an election takes up to ~3 s; keep trying through it.
    config.attempts = std::num::NonZeroUsize::new(40).unwrap();
    config.retry_pause = Duration::from_millis(100);
    config.watch_wait = Duration::from_secs(2);
    config
}

/// A remote client (`CoordClient`) of the test cluster's nodes at `addrs`, with the
/// capabilities read from a node.
pub(crate) async fn remote_client(
    addrs: Vec<String>,
) -> quorate_raft::client::CoordClient<TokioNet> {
    remote_client_with(remote_config(), addrs).await
}

/// A remote client with `config`.
pub(crate) async fn remote_client_with(
    config: quorate_raft::client::ClientConfig,
    addrs: Vec<String>,
) -> quorate_raft::client::CoordClient<TokioNet> {
    let mut last = None;
    for _ in 0..50 {
        match quorate_raft::client::CoordClient::connect(TokioNet, config.clone(), addrs.clone())
            .await
        {
            Ok(c) => return c,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no node answered the remote client: {last:?}");
}
