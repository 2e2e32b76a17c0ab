//! The coordination benchmark behind `cargo xtask bench coord`: a 3-node quorate-raft cluster
//! on loopback TCP (real redb files, fsync on every group commit), driven by remote clients
//! over the authenticated transport, as etcd's benchmark drives etcd over gRPC.
//!
//! Measures write throughput and p50/p99 latency at several client counts (256-byte values,
//! every client writes its own keys, requests go to the leader), linearizable read
//! throughput, and leader failover time: the leader is killed (its runtime dropped at once:
//! an **in-process** kill, not a separate process and SIGKILL) and the time until the first
//! acknowledged write through any other node is taken; the killed node then restarts from its
//! files before the next trial.
//!
//! Timings are reported, never asserted.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use quorate_types::NodeId;
use quorate_wire::net::TokioNet;
use quorate_wire::{ClusterKey, KeyRing, WireConfig};

use quorate_raft::NodeError;
use quorate_raft::client::RemoteClient;
use quorate_raft::machine::{Command, Outcome};
use quorate_raft::network::TransportConfig;
use quorate_raft::node::{NodeConfig, RaftNode};
use quorate_raft::store::Storage;

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// Directory for the three nodes' redb files (must exist; the caller removes it).
    pub dir: PathBuf,
    /// Concurrent clients per write round.
    pub write_clients: Vec<usize>,
    /// Writes per round (split over the clients).
    pub writes_per_round: usize,
    /// Value size of every write.
    pub value_bytes: usize,
    /// Concurrent clients of the read round.
    pub read_clients: usize,
    /// Linearizable reads in the read round.
    pub reads: usize,
    /// Leader failover trials.
    pub failover_trials: usize,
}

impl BenchConfig {
    /// The full benchmark: 1/16/64 clients, 256-byte values, 20 failover trials.
    pub fn full(dir: PathBuf) -> Self {
        Self {
            dir,
            write_clients: vec![1, 16, 64],
            writes_per_round: 5000,
            value_bytes: 256,
            read_clients: 16,
            reads: 10_000,
            failover_trials: 20,
        }
    }

    /// A tiny run that proves the benchmark still works (used as a test).
    pub fn tiny(dir: PathBuf) -> Self {
        Self {
            dir,
            write_clients: vec![1, 4],
            writes_per_round: 40,
            value_bytes: 256,
            read_clients: 2,
            reads: 40,
            failover_trials: 1,
        }
    }
}

/// One round of operations.
#[derive(Clone, Debug, PartialEq)]
pub struct Round {
    /// Concurrent clients.
    pub clients: usize,
    /// Operations acknowledged.
    pub ops: usize,
    /// Operations that failed.
    pub errors: usize,
    /// Acknowledged operations per second.
    pub per_sec: f64,
    /// Median latency.
    pub p50: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
}

/// The benchmark's results.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchReport {
    /// One row per write client count.
    pub writes: Vec<Round>,
    /// The linearizable read round.
    pub reads: Round,
    /// Failover time of each trial (kill of the leader to first acknowledged write).
    pub failovers: Vec<Duration>,
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    crate::stats::quantile(sorted, p)
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "quorate-raft, 3 nodes on loopback (redb, fsync per group commit)"
        )?;
        for r in &self.writes {
            writeln!(
                f,
                "write  {:>3} clients: {:>9.0} ops/s  p50 {:>8.2?}  p99 {:>8.2?}  ({} ok, {} errors)",
                r.clients, r.per_sec, r.p50, r.p99, r.ops, r.errors
            )?;
        }
        let r = &self.reads;
        writeln!(
            f,
            "read   {:>3} clients: {:>9.0} ops/s  p50 {:>8.2?}  p99 {:>8.2?}  (linearizable, {} ok, {} errors)",
            r.clients, r.per_sec, r.p50, r.p99, r.ops, r.errors
        )?;
        let mut fo = self.failovers.clone();
        fo.sort();
        write!(
            f,
            "failover ({} trials, in-process kill of the leader to first acknowledged write): \
             min {} ms, median {} ms, p99 {} ms",
            fo.len(),
            fo.first().map_or(0, Duration::as_millis),
            pct(&fo, 0.5).as_millis(),
            pct(&fo, 0.99).as_millis()
        )
    }
}

fn wire() -> Result<WireConfig, NodeError> {
    WireConfig::new(
        "bench",
        KeyRing::new(ClusterKey::from_bytes([0x42; 32]), vec![]),
    )
    .map_err(|e| NodeError::Config(e.to_string()))
}

fn transport(wire: WireConfig, timeout: Duration) -> TransportConfig {
    TransportConfig {
        frame_bytes_max: quorate_raft::Limits::default().frame_bytes_max,
        connect_timeout: Duration::from_millis(300),
        rpc_timeout: timeout,
        idle_per_peer_max: 4,
        inbound_connections_max: 256,
        inbound_idle_timeout: Duration::from_secs(60),
        ..TransportConfig::from_limits(wire, &quorate_raft::Limits::default())
    }
}

struct BenchNode {
    node: RaftNode<TokioNet>,
    rt: tokio::runtime::Runtime,
}

struct BenchCluster {
    dir: PathBuf,
    addrs: Vec<String>,
    nodes: Vec<Option<BenchNode>>,
    wire: WireConfig,
}

fn free_addr() -> Result<String, NodeError> {
    quorate_testports::free_port()
        .map(|p| format!("127.0.0.1:{p}"))
        .map_err(|source| NodeError::Bind {
            addr: "127.0.0.1:0".to_owned(),
            source,
        })
}

fn name(i: usize) -> Result<NodeId, NodeError> {
    NodeId::new(format!("b{i}")).map_err(|e| NodeError::Config(e.to_string()))
}

impl BenchCluster {
    async fn start(dir: PathBuf) -> Result<Self, NodeError> {
        let addrs = (0..3).map(|_| free_addr()).collect::<Result<Vec<_>, _>>()?;
        let mut c = Self {
            dir,
            addrs,
            nodes: vec![None, None, None],
            wire: wire()?,
        };
        for i in 0..3 {
            c.start_node(i).await?;
        }
        Ok(c)
    }

    async fn start_node(&mut self, i: usize) -> Result<(), NodeError> {
        let mut cfg = NodeConfig::new(name(i)?, self.addrs[i].clone(), self.wire.clone());
        if i == 0 {
            let mut voters = std::collections::BTreeMap::new();
            for (j, a) in self.addrs.iter().enumerate() {
                voters.insert(name(j)?, a.clone());
            }
            cfg.bootstrap = Some(voters);
        }
        let path = self.dir.join(format!("b{i}.redb"));
        // `kill` waited for the killed node's runtime to end: nothing holds the store.
        let storage = Storage::open(&path)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| NodeError::Config(format!("bench runtime: {e}")))?;
        let node = rt
            .spawn(RaftNode::start(cfg, storage, TokioNet))
            .await
            .map_err(|e| NodeError::Openraft(e.to_string()))??;
        self.nodes[i] = Some(BenchNode { node, rt });
        Ok(())
    }

    /// Kills node `i`: aborts every task of its runtime at once (as `kill -9` would), and
    /// waits until the runtime's threads have ended, so that its store is closed.
    async fn kill(&mut self, i: usize) {
        if let Some(n) = self.nodes[i].take() {
            let rt = n.rt;
            let _ =
                tokio::task::spawn_blocking(move || rt.shutdown_timeout(Duration::from_secs(10)))
                    .await;
            drop(n.node);
        }
    }

    /// Waits for a leader with a valid lease; returns its index.
    async fn leader(&self, within: Duration) -> Option<usize> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            for (i, n) in self.nodes.iter().enumerate() {
                if n.as_ref().is_some_and(|n| n.node.view().borrow().can_act) {
                    return Some(i);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn client(&self, first: usize, timeout: Duration) -> RemoteClient<TokioNet> {
        let mut addrs = self.addrs.clone();
        addrs.rotate_left(first);
        RemoteClient::new(TokioNet, transport(self.wire.clone(), timeout), addrs)
    }

    async fn shutdown(&mut self) {
        for i in 0..3 {
            self.kill(i).await;
        }
    }
}

async fn round<F, Fut>(clients: usize, total: usize, op: F) -> Round
where
    F: Fn(usize, usize) -> Fut,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let per = total.div_ceil(clients.max(1));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let ops: Vec<Fut> = (0..per).map(|k| op(c, k)).collect();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(ops.len());
            let mut errors = 0;
            for fut in ops {
                let t = Instant::now();
                if fut.await {
                    lat.push(t.elapsed());
                } else {
                    errors += 1;
                }
            }
            (lat, errors)
        }));
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((l, e)) = t.await {
            lat.extend(l);
            errors += e;
        }
    }
    let elapsed = start.elapsed().as_secs_f64().max(1e-9);
    lat.sort();
    Round {
        clients,
        ops: lat.len(),
        errors,
        per_sec: lat.len() as f64 / elapsed,
        p50: pct(&lat, 0.5),
        p99: pct(&lat, 0.99),
    }
}

/// Runs the benchmark. Call from a multi-threaded tokio runtime.
pub async fn run(config: &BenchConfig) -> Result<BenchReport, NodeError> {
    let mut cluster = BenchCluster::start(config.dir.clone()).await?;
    let result = run_on(&mut cluster, config).await;
    cluster.shutdown().await;
    result
}

async fn run_on(
    cluster: &mut BenchCluster,
    config: &BenchConfig,
) -> Result<BenchReport, NodeError> {
    let no_leader = || NodeError::Openraft("no leader elected within 10 s".to_owned());
    let leader = cluster
        .leader(Duration::from_secs(10))
        .await
        .ok_or_else(no_leader)?;
    let value = vec![0x5a; config.value_bytes];
    let mut writes = Vec::new();
    for (r, &clients) in config.write_clients.iter().enumerate() {
        let shared: Vec<_> = (0..clients)
            .map(|_| {
                std::sync::Arc::new(tokio::sync::Mutex::new(
                    cluster.client(leader, Duration::from_secs(5)),
                ))
            })
            .collect();
        let value = value.clone();
        writes.push(
            round(clients, config.writes_per_round, |c, k| {
                let client = shared[c].clone();
                let cmd = Command::Put {
                    key: format!("bench/w{r}/c{c}/{k}"),
                    value: value.clone(),
                    lease: None,
                };
                async move {
                    let mut client = client.lock().await;
                    matches!(client.propose(&cmd, 3).await, Ok((_, Outcome::Put(_))))
                }
            })
            .await,
        );
    }
    let shared: Vec<_> = (0..config.read_clients)
        .map(|_| {
            std::sync::Arc::new(tokio::sync::Mutex::new(
                cluster.client(leader, Duration::from_secs(5)),
            ))
        })
        .collect();
    let reads = round(config.read_clients, config.reads, |c, k| {
        let client = shared[c].clone();
        let key = format!("bench/w0/c0/{}", k % config.writes_per_round.max(1));
        async move {
            let mut client = client.lock().await;
            client.get(&key, 3).await.is_ok()
        }
    })
    .await;

    let mut failovers = Vec::new();
    for t in 0..config.failover_trials {
        let leader = cluster
            .leader(Duration::from_secs(10))
            .await
            .ok_or_else(no_leader)?;
        let survivor = (leader + 1) % 3;
        let mut client = cluster.client(survivor, Duration::from_millis(200));
        // Make sure the client is connected before the kill.
        let cmd = |k: usize| Command::Put {
            key: format!("bench/failover/{t}/{k}"),
            value: b"x".to_vec(),
            lease: None,
        };
        let _ = client.propose(&cmd(0), 3).await;
        let killed_at = Instant::now();
        cluster.kill(leader).await;
        let mut k = 1;
        let took = loop {
            k += 1;
            if let Ok((_, Outcome::Put(_))) = client.propose(&cmd(k), 1).await {
                break killed_at.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
            if killed_at.elapsed() > Duration::from_secs(30) {
                return Err(NodeError::Openraft(
                    "no write acknowledged within 30 s of the kill".to_owned(),
                ));
            }
        };
        failovers.push(took);
        cluster.start_node(leader).await?;
        // Let the restarted node catch up and the cluster settle before the next trial.
        let _ = cluster.leader(Duration::from_secs(10)).await;
        if let Some(n) = &cluster.nodes[leader] {
            let mut view = n.node.view();
            let _ = tokio::time::timeout(
                Duration::from_secs(10),
                view.wait_for(|v| v.leader.is_some()),
            )
            .await;
            // And until it has caught up with the others: if the next trial kills the leader
            // while this node is still behind, its campaign is refused for its shorter log and
            // the election takes a second or two longer (openraft then delays the refused
            // candidate by 2 x election_max); that measured the bench, not the failover.
            let target = cluster
                .nodes
                .iter()
                .flatten()
                .map(|n| n.node.view().borrow().applied_index)
                .max()
                .unwrap_or(0);
            let _ = tokio::time::timeout(
                Duration::from_secs(10),
                view.wait_for(|v| v.applied_index >= target),
            )
            .await;
        }
    }
    Ok(BenchReport {
        writes,
        reads,
        failovers,
    })
}
