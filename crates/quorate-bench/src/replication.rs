//! The replication benchmark (`cargo xtask bench replication`): in-process
//! `quorate-replication` nodes on loopback TCP (quorate-wire frames, real redb files in a
//! temporary directory, fsync on every commit), one process.
//!
//! - leader mode, 3 nodes: writes/s and p50/p99 latency through the primary at 1/16/64
//!   concurrent clients, synchronous (both replicas persisted) and asynchronous;
//! - replication lag under the asynchronous 64-client load: p99 in entries and in ms, sampled
//!   at the primary every 10 ms for each replica;
//! - multi-master, 3 nodes: local writes/s (PN-counter increments, durable locally, pushed to
//!   both peers) at 1/16/64 clients;
//! - time to converge after a heal: 2 nodes; the second is down while the first writes `N`
//!   keys (hints disabled beyond one), then it starts and anti-entropy runs at once (as on a
//!   membership rejoin); the time until it holds all `N` keys, for `N` = 1k and 100k.

use std::collections::BTreeMap;
use std::num::{NonZeroU64, NonZeroUsize};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use quorate_replication::{
    HlcConfig, Keyspace, LeaderConfig, LeaderKeyspace, LwwRegister, MultiMasterConfig, NodeConfig,
    PnCounter, ReplicaDb, ReplicationNode, SyncMode, TransportConfig,
};
use quorate_types::{FencingToken, NodeId};
use quorate_wire::net::TokioNet;
use quorate_wire::{ClusterKey, KeyRing, WireConfig};

use crate::stats::Samples;

/// Sizes of one run.
#[derive(Clone, Debug)]
pub struct ReplBenchConfig {
    /// Client counts of the throughput rows.
    pub clients: Vec<usize>,
    /// How long each throughput row runs.
    pub duration: Duration,
    /// Keys diverged in the convergence rows.
    pub diverged: Vec<usize>,
}

impl ReplBenchConfig {
    /// The published run: 1/16/64 clients for 5 s each, 1k and 100k keys diverged.
    pub fn full() -> Self {
        Self {
            clients: vec![1, 16, 64],
            duration: Duration::from_secs(5),
            diverged: vec![1_000, 100_000],
        }
    }

    /// The CI run: 1 and 4 clients for 200 ms, 100 keys diverged.
    pub fn tiny() -> Self {
        Self {
            clients: vec![1, 4],
            duration: Duration::from_millis(200),
            diverged: vec![100],
        }
    }
}

/// One row of the report.
#[derive(Clone, Debug)]
pub struct Row {
    /// What was measured.
    pub what: String,
    /// The figure.
    pub value: f64,
    /// Its unit.
    pub unit: &'static str,
}

/// The whole report.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Rows in run order.
    pub rows: Vec<Row>,
}

impl Report {
    fn push(&mut self, what: impl Into<String>, value: f64, unit: &'static str) {
        self.rows.push(Row {
            what: what.into(),
            value,
            unit,
        });
    }

    /// The report as a text table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        for r in &self.rows {
            out.push_str(&format!("{:<58} {:>12.1} {}\n", r.what, r.value, r.unit));
        }
        out
    }
}

fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap_or_else(|_| unreachable!("literal node ids are valid"))
}

fn nz(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN)
}

fn hlc() -> HlcConfig {
    HlcConfig {
        max_offset_ms: NonZeroU64::new(500).unwrap_or(NonZeroU64::MIN),
    }
}

fn free_port() -> Result<u16, String> {
    quorate_testports::free_port().map_err(|e| format!("no free port: {e}"))
}

struct Nodes {
    _dir: tempfile::TempDir,
    nodes: Vec<ReplicationNode<TokioNet>>,
    addrs: BTreeMap<NodeId, String>,
    dir: std::path::PathBuf,
}

async fn start_node(
    dir: &std::path::Path,
    addrs: &BTreeMap<NodeId, String>,
    name: &str,
) -> Result<ReplicationNode<TokioNet>, String> {
    let key = ClusterKey::from_bytes([9; 32]);
    let wire = WireConfig::new("bench", KeyRing::new(key, vec![])).map_err(|e| e.to_string())?;
    let db = ReplicaDb::open(&dir.join(format!("{name}.redb"))).map_err(|e| e.to_string())?;
    let config = NodeConfig {
        node: id(name),
        listen: addrs[&id(name)].clone(),
        peers: addrs.clone(),
        transport: TransportConfig::lan(wire),
        inbound_queue_max: nz(1024),
    };
    ReplicationNode::start(TokioNet, config, db)
        .await
        .map_err(|e| e.to_string())
}

async fn cluster(n: usize, start: usize) -> Result<Nodes, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut addrs = BTreeMap::new();
    for i in 1..=n {
        addrs.insert(id(&format!("n{i}")), format!("127.0.0.1:{}", free_port()?));
    }
    let mut nodes = Vec::new();
    for i in 1..=start {
        nodes.push(start_node(dir.path(), &addrs, &format!("n{i}")).await?);
    }
    Ok(Nodes {
        dir: dir.path().to_path_buf(),
        _dir: dir,
        nodes,
        addrs,
    })
}

async fn shutdown(c: Nodes) {
    for n in &c.nodes {
        n.shutdown().await;
    }
}

/// Runs `clients` tasks calling `op(client, seq)` for `duration`; ops/s and latencies.
async fn drive<F, Fut>(clients: usize, duration: Duration, op: F) -> (f64, Samples)
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let op = Arc::new(op);
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (op, stop) = (op.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = Samples::new();
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                if op(c, seq).await {
                    s.record(t.elapsed());
                }
                seq += 1;
            }
            s
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Samples::new();
    let mut n = 0u64;
    for t in tasks {
        if let Ok(s) = t.await {
            n += s.len();
            all.merge(&s);
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    (n as f64 / secs, all)
}

async fn leader_rows(cfg: &ReplBenchConfig, report: &mut Report) -> Result<(), String> {
    for (label, mode) in [
        (
            "sync (2 replicas)",
            SyncMode::Sync {
                replicas: nz(2),
                timeout: Duration::from_secs(5),
            },
        ),
        ("async", SyncMode::Async),
    ] {
        for &clients in &cfg.clients {
            let c = cluster(3, 3).await?;
            let ks: Vec<LeaderKeyspace<TokioNet>> = c
                .nodes
                .iter()
                .map(|n| n.leader(LeaderConfig::lan("bench", mode)))
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?;
            ks[0].promote(FencingToken(1)).map_err(|e| e.to_string())?;
            let primary = ks[0].clone();
            let lag_stop = Arc::new(AtomicBool::new(false));
            let sampler = {
                let (p, stop) = (primary.clone(), lag_stop.clone());
                tokio::spawn(async move {
                    let (mut entries, mut ms) = (Samples::new(), Samples::new());
                    while !stop.load(Ordering::Relaxed) {
                        for r in ["n2", "n3"] {
                            if let Some(l) = p.lag(&id(r)) {
                                entries.record_us(l.entries);
                                ms.record_us(l.time_ms);
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    (entries, ms)
                })
            };
            let value = vec![0u8; 256];
            let (ops, lat) = drive(clients, cfg.duration, move |c, seq| {
                let (p, v) = (primary.clone(), value.clone());
                async move {
                    p.write(FencingToken(1), &format!("c{c}-{seq}"), Some(v))
                        .await
                        .is_ok()
                }
            })
            .await;
            lag_stop.store(true, Ordering::Relaxed);
            let (entries, ms) = sampler.await.map_err(|e| e.to_string())?;
            report.push(
                format!("leader {label}, {clients} clients: writes/s"),
                ops,
                "ops/s",
            );
            report.push(
                format!("leader {label}, {clients} clients: p50"),
                lat.quantile_ms(0.5),
                "ms",
            );
            report.push(
                format!("leader {label}, {clients} clients: p99"),
                lat.quantile_ms(0.99),
                "ms",
            );
            if matches!(mode, SyncMode::Async) && Some(&clients) == cfg.clients.last() {
                report.push(
                    format!("leader async, {clients} clients: replica lag p99"),
                    entries.quantile_us(0.99).unwrap_or(0) as f64,
                    "entries",
                );
                report.push(
                    format!("leader async, {clients} clients: replica lag p99 (time)"),
                    ms.quantile_us(0.99).unwrap_or(0) as f64,
                    "ms",
                );
            }
            drop(ks);
            shutdown(c).await;
        }
    }
    Ok(())
}

async fn multi_master_rows(cfg: &ReplBenchConfig, report: &mut Report) -> Result<(), String> {
    for &clients in &cfg.clients {
        let c = cluster(3, 3).await?;
        let ks: Vec<Keyspace<PnCounter>> = c
            .nodes
            .iter()
            .map(|n| n.multi_master(MultiMasterConfig::lan("hits", hlc()), None))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        let local = ks[0].clone();
        let (ops, lat) = drive(clients, cfg.duration, move |c, seq| {
            let k = local.clone();
            async move {
                k.write(&format!("k{}", (c as u64 * 7919 + seq) % 1000), |v, w| {
                    v.increment(&w.node, 1)
                })
                .await
                .is_ok()
            }
        })
        .await;
        report.push(
            format!("multi-master local writes, {clients} clients"),
            ops,
            "ops/s",
        );
        report.push(
            format!("multi-master local writes, {clients} clients: p99"),
            lat.quantile_ms(0.99),
            "ms",
        );
        drop(ks);
        shutdown(c).await;
    }
    Ok(())
}

async fn converge_rows(cfg: &ReplBenchConfig, report: &mut Report) -> Result<(), String> {
    for &n in &cfg.diverged {
        let mut c = cluster(2, 1).await?;
        let mut conf = MultiMasterConfig::lan("conv", hlc());
        conf.hints_max = nz(1);
        conf.hint_retry_interval = Duration::from_secs(3600);
        conf.anti_entropy_interval = Duration::from_secs(3600);
        conf.keys_max = nz(n.max(1) * 2);
        let a: Keyspace<LwwRegister<Vec<u8>>> = c.nodes[0]
            .multi_master(conf.clone(), None)
            .map_err(|e| e.to_string())?;
        // Write the diverged keys from 64 writers (group commit).
        let mut tasks = Vec::new();
        for w in 0..64usize {
            let a = a.clone();
            tasks.push(tokio::spawn(async move {
                let mut i = w;
                while i < n {
                    let _ = a
                        .write(&format!("key-{i:07}"), |r, ctx| {
                            Ok(r.set(vec![7u8; 64], ctx.ts.clone()))
                        })
                        .await;
                    i += 64;
                }
            }));
        }
        for t in tasks {
            t.await.map_err(|e| e.to_string())?;
        }
        let b_node = start_node(&c.dir, &c.addrs, "n2").await?;
        let b: Keyspace<LwwRegister<Vec<u8>>> =
            b_node.multi_master(conf, None).map_err(|e| e.to_string())?;
        c.nodes.push(b_node);
        let t0 = Instant::now();
        a.anti_entropy_now().await.map_err(|e| e.to_string())?;
        let deadline = t0 + Duration::from_secs(600);
        loop {
            let st = b.status().await.map_err(|e| e.to_string())?;
            if st.keys >= n {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("{n} keys did not converge within 600 s"));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let took = t0.elapsed();
        let sa = a.status().await.map_err(|e| e.to_string())?;
        report.push(
            format!("converge after heal, {n} keys diverged (2 nodes)"),
            took.as_secs_f64() * 1000.0,
            "ms",
        );
        report.push(
            format!("converge after heal, {n} keys diverged: anti-entropy rounds"),
            sa.metrics.anti_entropy_rounds as f64,
            "rounds",
        );
        report.push(
            format!("converge after heal, {n} keys diverged: bytes sent"),
            sa.metrics.anti_entropy_bytes as f64,
            "bytes",
        );
        drop((a, b));
        shutdown(c).await;
    }
    Ok(())
}

/// Runs every row.
///
/// # Errors
/// A node that could not start, or a convergence that did not finish within 600 s.
pub async fn run(cfg: &ReplBenchConfig) -> Result<Report, String> {
    let mut report = Report::default();
    leader_rows(cfg, &mut report).await?;
    multi_master_rows(cfg, &mut report).await?;
    converge_rows(cfg, &mut report).await?;
    Ok(report)
}
