//! Shared helpers of the node tests: real loopback sockets, real redb files.
#![allow(dead_code, reason = "each test file uses a subset")]
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test")]

use std::collections::BTreeMap;
use std::num::{NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quorate_replication::{HlcConfig, NodeConfig, ReplicaDb, ReplicationNode, TransportConfig};
use quorate_types::NodeId;
use quorate_wire::net::TokioNet;
use quorate_wire::{ClusterKey, KeyRing, WireConfig};

pub(crate) fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

pub(crate) fn hlc() -> HlcConfig {
    HlcConfig {
        max_offset_ms: NonZeroU64::new(500).unwrap(),
    }
}

pub(crate) fn nz(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap()
}

/// A loopback address of its own for each cluster of this process (127.P.C.1, P from the
/// process id, C a counter), so that a port freed here cannot be taken by a test of another
/// process between "free" and "bound" (nextest runs tests as parallel processes).
pub(crate) fn cluster_ip() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("127.{}.{}.1", std::process::id() % 250 + 1, n % 250 + 1)
}

/// A free port on `ip` (bound then released; the node binds it again with SO_REUSEADDR).
pub(crate) fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) fn wire(key_byte: &str, skew_ms: i64) -> WireConfig {
    let key = ClusterKey::from_hex(&key_byte.repeat(32)).unwrap();
    let mut w = WireConfig::new("repl-test", KeyRing::new(key, vec![])).unwrap();
    if skew_ms != 0 {
        let real = quorate_wire::system_wall_clock();
        w.wall_clock = Arc::new(move || real().saturating_add_signed(skew_ms));
    }
    w
}

/// Node names and their addresses: n1..nN on fresh loopback ports.
pub(crate) struct Cluster {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) addrs: BTreeMap<NodeId, String>,
}

impl Cluster {
    pub(crate) fn new(n: usize) -> Self {
        let ip = cluster_ip();
        let addrs = (1..=n)
            .map(|i| (id(&format!("n{i}")), format!("{ip}:{}", free_port(&ip))))
            .collect();
        Self {
            dir: tempfile::tempdir().unwrap(),
            addrs,
        }
    }

    pub(crate) fn db_path(&self, node: &str) -> PathBuf {
        self.dir.path().join(format!("{node}.redb"))
    }

    pub(crate) fn config(&self, node: &str, wire: WireConfig) -> NodeConfig {
        let mut transport = TransportConfig::lan(wire);
        transport.call_timeout = Duration::from_millis(1000);
        transport.connect_timeout = Duration::from_millis(300);
        NodeConfig {
            node: id(node),
            listen: self.addrs[&id(node)].clone(),
            peers: self.addrs.clone(),
            transport,
            inbound_queue_max: nz(64),
        }
    }

    pub(crate) async fn start(&self, node: &str) -> ReplicationNode<TokioNet> {
        self.start_with(node, wire("11", 0)).await
    }

    pub(crate) async fn start_with(
        &self,
        node: &str,
        wire: WireConfig,
    ) -> ReplicationNode<TokioNet> {
        let db = open_db(&self.db_path(node));
        ReplicationNode::start(TokioNet, self.config(node, wire), db)
            .await
            .unwrap()
    }
}

pub(crate) fn open_db(path: &Path) -> ReplicaDb {
    ReplicaDb::open(path).unwrap()
}

/// Polls `f` every 10 ms until it returns `Some`, for at most 20 s (a bound for a stuck
/// test, not a timing assertion).
pub(crate) async fn until<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
