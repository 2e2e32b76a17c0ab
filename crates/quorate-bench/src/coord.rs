//! The coordination benchmark: one workload, run through the [`Coord`] trait against several
//! 3-node clusters (etcd, and quorate when the caller plugs it in), interleaved phase by
//! phase (A B A B) so that drift of the machine hits every target alike.
//!
//! Workload (etcd's published benchmark shape: 8-byte keys, 256-byte values):
//! - writes (`put`) at 1, 16 and 64 concurrent clients: throughput, p50, p99;
//! - linearizable reads (`get` of one key) at 1 and 64 clients;
//! - lock acquire/release cycles per second, 1 client, and 16 clients on one lock;
//! - leader failover: kill -9 of the leader, time until the first write sent after the kill
//!   is acknowledged (probe writes every 20 ms, each with its own deadline); the killed server
//!   is restarted before the next trial;
//! - peak RSS of every server process (`VmHWM`, sampled before each kill and at the end).
//!
//! A target is anything implementing [`BenchTarget`]; [`EtcdTarget`] runs a real etcd
//! cluster from [`quorate_testkit::etcd`]. Timings are reported, never asserted.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use quorate_coord_api::{Consistency, Coord};
use tokio::time::Instant;

use quorate_testkit::TestkitError as EtcdError;
use quorate_testkit::etcd::{EtcdCluster, EtcdClusterConfig};

/// A cluster the benchmark drives. Implement it for quorate (3 processes on loopback) to get
/// the side-by-side table; the lead's `cargo xtask bench coord --vs etcd` does.
#[async_trait::async_trait]
pub trait BenchTarget: Send {
    /// The column title ("etcd", "quorate").
    fn name(&self) -> String;
    /// A client for the workload. It must survive the death of one server (fail over).
    fn coord(&self) -> Arc<dyn Coord>;
    /// Kills the current leader's process with SIGKILL; returns when it is dead.
    async fn kill_leader(&mut self) -> Result<(), EtcdError>;
    /// Restarts what `kill_leader` killed and waits until the cluster is whole again.
    async fn restore(&mut self) -> Result<(), EtcdError>;
    /// Peak RSS (KiB) of each running server process, by server name.
    fn peak_rss_kib(&self) -> Vec<(String, u64)>;
}

/// Sizes and durations of one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BenchConfig {
    /// How long each measured phase runs (per target, per round).
    pub phase: Duration,
    /// How many times each phase runs per target (interleaved A B A B).
    pub rounds: usize,
    /// Client counts for writes.
    pub write_clients: Vec<usize>,
    /// Client counts for linearizable reads.
    pub read_clients: Vec<usize>,
    /// Client counts for lock cycles (all on one lock).
    pub lock_clients: Vec<usize>,
    /// Leader failover trials per target.
    pub failover_trials: usize,
    /// Key length in bytes.
    pub key_bytes: usize,
    /// Value length in bytes.
    pub value_bytes: usize,
    /// Deadline of one probe write during failover.
    pub probe_timeout: Duration,
    /// Give up a failover trial after this long without an acknowledged write.
    pub failover_max: Duration,
    /// Most latency samples kept per phase (the rest are counted, not kept).
    pub samples_max: usize,
}

impl BenchConfig {
    /// The full run: 3 s phases, 2 rounds, 20 failover trials (about 3 minutes for etcd
    /// alone, 6 with a second target, on 2 cores).
    pub fn full() -> BenchConfig {
        BenchConfig {
            phase: Duration::from_secs(3),
            rounds: 2,
            write_clients: vec![1, 16, 64],
            read_clients: vec![1, 64],
            lock_clients: vec![1, 16],
            failover_trials: 20,
            key_bytes: 8,
            value_bytes: 256,
            probe_timeout: Duration::from_secs(3),
            failover_max: Duration::from_secs(30),
            samples_max: 1_000_000,
        }
    }

    /// A tiny run that only proves the benchmark still works (a few seconds).
    pub fn tiny() -> BenchConfig {
        BenchConfig {
            phase: Duration::from_millis(200),
            rounds: 1,
            write_clients: vec![1, 4],
            read_clients: vec![2],
            lock_clients: vec![2],
            failover_trials: 1,
            samples_max: 10_000,
            ..BenchConfig::full()
        }
    }
}

/// One measured number of one target.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stat {
    /// The value.
    pub value: f64,
    /// Whether higher is better (throughput) or lower (latency, time, memory).
    pub higher_is_better: bool,
}

/// The results: for each metric (in report order), the value per target.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BenchReport {
    /// Target names, in column order.
    pub targets: Vec<String>,
    /// Metric name -> target name -> value.
    pub rows: Vec<(String, BTreeMap<String, Stat>)>,
    /// Failed operations per target (errors during measured phases; not in the timings).
    pub errors: BTreeMap<String, u64>,
    /// Notes (how it ran).
    pub notes: Vec<String>,
}

impl BenchReport {
    fn set(&mut self, metric: &str, target: &str, value: f64, higher_is_better: bool) {
        let stat = Stat {
            value,
            higher_is_better,
        };
        if let Some((_, row)) = self.rows.iter_mut().find(|(m, _)| m == metric) {
            row.insert(target.to_owned(), stat);
        } else {
            let mut row = BTreeMap::new();
            row.insert(target.to_owned(), stat);
            self.rows.push((metric.to_owned(), row));
        }
    }

    /// The value of `metric` for `target`.
    pub fn get(&self, metric: &str, target: &str) -> Option<f64> {
        self.rows
            .iter()
            .find(|(m, _)| m == metric)
            .and_then(|(_, row)| row.get(target))
            .map(|s| s.value)
    }

    /// The table: one column per target and, with two or more targets, the ratio of the
    /// second to the first (`>1` means the second has more of it).
    pub fn table(&self) -> String {
        let mut out = String::new();
        let width = self
            .rows
            .iter()
            .map(|(m, _)| m.len())
            .max()
            .unwrap_or(6)
            .max(6);
        let _ = write!(out, "{:width$}", "metric");
        for t in &self.targets {
            let _ = write!(out, " | {t:>12}");
        }
        let ratio_title =
            (self.targets.len() >= 2).then(|| format!("{}/{}", self.targets[1], self.targets[0]));
        if let Some(r) = &ratio_title {
            let _ = write!(out, " | {r:>14}");
        }
        out.push('\n');
        let _ = write!(out, "{}", "-".repeat(width));
        for _ in &self.targets {
            let _ = write!(out, "-|-{}", "-".repeat(12));
        }
        if ratio_title.is_some() {
            let _ = write!(out, "-|-{}", "-".repeat(14));
        }
        out.push('\n');
        for (metric, row) in &self.rows {
            let _ = write!(out, "{metric:width$}");
            for t in &self.targets {
                match row.get(t) {
                    Some(s) => {
                        let _ = write!(out, " | {:>12}", format_value(s.value));
                    }
                    None => {
                        let _ = write!(out, " | {:>12}", "n/a");
                    }
                }
            }
            if ratio_title.is_some() {
                let a = row.get(&self.targets[0]).map(|s| s.value);
                let b = row.get(&self.targets[1]).map(|s| s.value);
                match (a, b) {
                    (Some(a), Some(b)) if a > 0.0 => {
                        let _ = write!(out, " | {:>14}", format!("{:.2}x", b / a));
                    }
                    _ => {
                        let _ = write!(out, " | {:>14}", "n/a");
                    }
                }
            }
            out.push('\n');
        }
        for (t, n) in &self.errors {
            let _ = writeln!(out, "failed operations during measured phases, {t}: {n}");
        }
        for n in &self.notes {
            let _ = writeln!(out, "note: {n}");
        }
        out
    }
}

fn format_value(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Latencies of one phase.
#[derive(Default)]
struct Samples {
    ok: u64,
    errors: u64,
    latencies_us: Vec<u64>,
    elapsed: Duration,
}

impl Samples {
    fn merge(&mut self, other: Samples) {
        self.ok += other.ok;
        self.errors += other.errors;
        self.latencies_us.extend(other.latencies_us);
        self.elapsed += other.elapsed;
    }

    fn throughput(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.ok as f64 / secs
        } else {
            0.0
        }
    }

    fn percentile_ms(&mut self, p: f64) -> f64 {
        percentile_ms(&mut self.latencies_us, p)
    }
}

/// The `p` percentile (0..=1) of microsecond samples, in milliseconds ([`crate::stats`]).
fn percentile_ms(us: &mut [u64], p: f64) -> f64 {
    let mut s = crate::stats::Samples::new();
    for &u in us.iter() {
        s.record_us(u);
    }
    s.quantile_ms(p)
}

/// A key of exactly `len` bytes for number `n`.
fn bench_key(prefix: char, n: u64, len: usize) -> String {
    let digits = len.saturating_sub(1).max(1);
    let modulus = 10u64.saturating_pow(u32::try_from(digits.min(19)).unwrap_or(19));
    format!("{prefix}{:0digits$}", n % modulus)
}

/// What one client does in a loop.
#[derive(Clone, Copy, Debug)]
enum Op {
    Write,
    Read,
    Lock,
}

/// Runs `clients` concurrent loops of `op` for `cfg.phase`.
async fn phase(coord: &Arc<dyn Coord>, cfg: &BenchConfig, op: Op, clients: usize) -> Samples {
    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicU64::new(0));
    let keep = cfg.samples_max / clients.max(1);
    let value = vec![b'v'; cfg.value_bytes];
    let read_key = bench_key('r', 0, cfg.key_bytes);
    if matches!(op, Op::Read) {
        let _ = coord.put(&read_key, value.clone(), None).await;
    }
    let lock_name = format!("bench-{clients}");
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (coord, stop, counter) = (Arc::clone(coord), Arc::clone(&stop), Arc::clone(&counter));
        let (value, read_key, lock_name) = (value.clone(), read_key.clone(), lock_name.clone());
        let key_bytes = cfg.key_bytes;
        let ttl = coord
            .capabilities()
            .lease_ttl_min
            .max(Duration::from_secs(5));
        tasks.spawn(async move {
            let mut s = Samples::default();
            let lease = match op {
                Op::Lock => match coord.lease_grant(ttl).await {
                    Ok(g) => Some(g.id),
                    Err(_) => {
                        s.errors += 1;
                        return s;
                    }
                },
                _ => None,
            };
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let ok = match op {
                    Op::Write => {
                        let n = counter.fetch_add(1, Ordering::Relaxed);
                        let key = bench_key('w', n, key_bytes);
                        match coord.put(&key, value.clone(), None).await {
                            Ok(_) => true,
                            Err(e) => {
                                if s.errors == 0
                                    && std::env::var_os("QUORATE_BENCH_ERRORS").is_some()
                                {
                                    #[allow(
                                        clippy::print_stderr,
                                        reason = "diagnostics asked for by the env var"
                                    )]
                                    {
                                        eprintln!("write failed: {e}");
                                    }
                                }
                                false
                            }
                        }
                    }
                    Op::Read => coord
                        .get(&read_key, Consistency::Linearizable)
                        .await
                        .is_ok(),
                    Op::Lock => match lease {
                        Some(lease) => match coord.lock(&lock_name, lease).await {
                            Ok(g) => coord.unlock(&g).await.is_ok(),
                            Err(_) => false,
                        },
                        None => false,
                    },
                };
                if ok {
                    s.ok += 1;
                    if s.latencies_us.len() < keep {
                        let us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
                        s.latencies_us.push(us);
                    }
                } else {
                    s.errors += 1;
                }
            }
            if let Some(lease) = lease {
                let _ = coord.lease_revoke(lease).await;
            }
            s
        });
    }
    tokio::time::sleep(cfg.phase).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Samples::default();
    while let Some(r) = tasks.join_next().await {
        if let Ok(s) = r {
            all.merge(s);
        }
    }
    all.elapsed = start.elapsed();
    all
}

/// Kills the leader of `target` and measures until the first write sent after the kill is
/// acknowledged. Returns `None` if none was within `cfg.failover_max`.
async fn failover_trial(
    target: &mut dyn BenchTarget,
    cfg: &BenchConfig,
    trial: usize,
) -> Result<Option<Duration>, EtcdError> {
    let coord = target.coord();
    // Make sure the client works before the kill.
    coord
        .put("failover", b"before".to_vec(), None)
        .await
        .map_err(|e| EtcdError::coord(format!("{}: write before the kill", target.name()), e))?;
    target.kill_leader().await?;
    let killed = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Duration>(1);
    let mut probes = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let deadline = killed + cfg.failover_max;
    let value = format!("trial {trial}").into_bytes();
    let result = loop {
        tokio::select! {
            biased;
            Some(took) = rx.recv() => break Some(took),
            _ = tick.tick() => {
                if Instant::now() >= deadline {
                    break None;
                }
                let (coord, tx, value) = (Arc::clone(&coord), tx.clone(), value.clone());
                let timeout = cfg.probe_timeout;
                probes.spawn(async move {
                    if let Ok(Ok(_)) = tokio::time::timeout(timeout, coord.put("failover", value, None)).await {
                        let _ = tx.try_send(killed.elapsed());
                    }
                });
            }
        }
    };
    probes.abort_all();
    target.restore().await?;
    Ok(result)
}

/// Records the peak RSS of every server of `targets` (the highest seen so far per server).
fn sample_rss(targets: &[Box<dyn BenchTarget>], rss: &mut BTreeMap<String, BTreeMap<String, u64>>) {
    for t in targets {
        let entry = rss.entry(t.name()).or_default();
        for (server, kib) in t.peak_rss_kib() {
            let e = entry.entry(server).or_insert(0);
            *e = (*e).max(kib);
        }
    }
}

/// Runs the whole benchmark over `targets`, interleaving them phase by phase.
pub async fn run(
    targets: &mut [Box<dyn BenchTarget>],
    cfg: &BenchConfig,
) -> Result<BenchReport, EtcdError> {
    let mut report = BenchReport {
        targets: targets.iter().map(|t| t.name()).collect(),
        ..BenchReport::default()
    };
    report.notes.push(format!(
        "{} B keys, {} B values, {:?} per phase x {} round(s) per target, interleaved; {} failover trial(s) per target",
        cfg.key_bytes, cfg.value_bytes, cfg.phase, cfg.rounds, cfg.failover_trials
    ));
    let mut rss: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();

    let phases: Vec<(Op, usize)> = cfg
        .write_clients
        .iter()
        .map(|&c| (Op::Write, c))
        .chain(cfg.read_clients.iter().map(|&c| (Op::Read, c)))
        .chain(cfg.lock_clients.iter().map(|&c| (Op::Lock, c)))
        .collect();
    for (op, clients) in phases {
        let mut per_target: Vec<Samples> = targets.iter().map(|_| Samples::default()).collect();
        for _ in 0..cfg.rounds {
            for (i, t) in targets.iter().enumerate() {
                let s = phase(&t.coord(), cfg, op, clients).await;
                per_target[i].merge(s);
            }
        }
        for (t, mut s) in targets.iter().zip(per_target) {
            let name = t.name();
            *report.errors.entry(name.clone()).or_insert(0) += s.errors;
            let label = match op {
                Op::Write => format!("write, {clients} client(s)"),
                Op::Read => format!("linearizable read, {clients} client(s)"),
                Op::Lock => format!("lock+unlock cycles, {clients} client(s) on one lock"),
            };
            report.set(&format!("{label}: ops/s"), &name, s.throughput(), true);
            if !matches!(op, Op::Lock) || clients == 1 {
                report.set(
                    &format!("{label}: p50 ms"),
                    &name,
                    s.percentile_ms(0.50),
                    false,
                );
                report.set(
                    &format!("{label}: p99 ms"),
                    &name,
                    s.percentile_ms(0.99),
                    false,
                );
            }
        }
        sample_rss(targets, &mut rss);
    }

    let mut failovers: Vec<Vec<u64>> = targets.iter().map(|_| Vec::new()).collect();
    let mut failed: Vec<usize> = targets.iter().map(|_| 0).collect();
    for trial in 0..cfg.failover_trials {
        for (i, t) in targets.iter_mut().enumerate() {
            sample_rss(std::slice::from_ref(&*t), &mut rss);
            match failover_trial(t.as_mut(), cfg, trial).await? {
                Some(d) => failovers[i].push(u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
                None => failed[i] += 1,
            }
        }
    }
    sample_rss(targets, &mut rss);
    for (i, t) in targets.iter().enumerate() {
        let name = t.name();
        if cfg.failover_trials > 0 {
            report.set(
                "leader failover (kill -9 to first ack): median ms",
                &name,
                percentile_ms(&mut failovers[i], 0.5),
                false,
            );
            report.set(
                "leader failover (kill -9 to first ack): p99 ms",
                &name,
                percentile_ms(&mut failovers[i], 0.99),
                false,
            );
            if failed[i] > 0 {
                report.notes.push(format!(
                    "{name}: {} failover trial(s) saw no acknowledged write within {:?}",
                    failed[i], cfg.failover_max
                ));
            }
        }
        if let Some(servers) = rss.get(&name) {
            let max = servers.values().copied().max().unwrap_or(0);
            report.set(
                "peak RSS per server, max: MiB",
                &name,
                max as f64 / 1024.0,
                false,
            );
            let each: Vec<String> = servers
                .iter()
                .map(|(s, k)| format!("{s} {:.1} MiB", *k as f64 / 1024.0))
                .collect();
            report
                .notes
                .push(format!("{name} peak RSS: {}", each.join(", ")));
        }
    }
    Ok(report)
}

/// A 3-member etcd cluster from [`quorate_testkit::etcd`] as a benchmark target.
pub struct EtcdTarget {
    cluster: EtcdCluster,
    coord: Arc<dyn Coord>,
    killed: Option<usize>,
}

impl EtcdTarget {
    /// Starts a cluster of `members` with etcd's default timings (heartbeat 100 ms, election
    /// 1000 ms) and a client that prefers the leader, failing over to the others.
    pub async fn start(members: usize) -> Result<EtcdTarget, EtcdError> {
        Self::start_with(EtcdClusterConfig::members(members)).await
    }

    /// Starts a cluster as `config` says (e.g. timings tuned like quorate's `lan` profile, so
    /// that a failover compares like with like).
    pub async fn start_with(config: EtcdClusterConfig) -> Result<EtcdTarget, EtcdError> {
        let cluster = EtcdCluster::start(config).await?;
        let leader = cluster.leader().await.unwrap_or(0);
        let mut config = cluster.etcd_config(leader);
        // A write stuck behind a dead leader is abandoned sooner, and tried elsewhere.
        config.request_timeout = Duration::from_secs(2);
        let coord: Arc<dyn Coord> = Arc::new(quorate_etcd::EtcdCoord::new(config)?);
        Ok(EtcdTarget {
            cluster,
            coord,
            killed: None,
        })
    }
}

#[async_trait::async_trait]
impl BenchTarget for EtcdTarget {
    fn name(&self) -> String {
        "etcd".into()
    }

    fn coord(&self) -> Arc<dyn Coord> {
        Arc::clone(&self.coord)
    }

    async fn kill_leader(&mut self) -> Result<(), EtcdError> {
        let leader = self
            .cluster
            .leader()
            .await
            .ok_or_else(|| EtcdError::NotHealthy {
                member: "any".into(),
                waited: Duration::ZERO,
                last: "no member reports a leader before the kill".into(),
                log: self.cluster.log_path(0).unwrap_or_default(),
            })?;
        self.cluster.kill(leader)?;
        self.killed = Some(leader);
        Ok(())
    }

    async fn restore(&mut self) -> Result<(), EtcdError> {
        if let Some(i) = self.killed.take() {
            self.cluster.restart(i).await?;
        }
        Ok(())
    }

    fn peak_rss_kib(&self) -> Vec<(String, u64)> {
        self.cluster
            .names()
            .into_iter()
            .enumerate()
            .filter_map(|(i, n)| self.cluster.peak_rss_kib(i).map(|k| (n, k)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_asked_length() {
        assert_eq!(bench_key('w', 42, 8), "w0000042");
        assert_eq!(bench_key('w', 123_456_789, 8).len(), 8);
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut us: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        assert!((50.0..=50.05).contains(&percentile_ms(&mut us, 0.5)));
        assert!((99.0..=99.1).contains(&percentile_ms(&mut us, 0.99)));
        assert_eq!(percentile_ms(&mut [], 0.5), 0.0);
    }

    #[test]
    fn the_table_shows_the_ratio_of_the_second_target_to_the_first() {
        let mut r = BenchReport {
            targets: vec!["etcd".into(), "quorate".into()],
            ..BenchReport::default()
        };
        r.set("write: ops/s", "etcd", 100.0, true);
        r.set("write: ops/s", "quorate", 250.0, true);
        r.set("rss: MiB", "etcd", 40.0, false);
        let t = r.table();
        assert!(t.contains("quorate/etcd"), "{t}");
        assert!(t.contains("2.50x"), "{t}");
        assert!(t.contains("n/a"), "{t}");
        assert_eq!(r.get("write: ops/s", "quorate"), Some(250.0));
    }
}
