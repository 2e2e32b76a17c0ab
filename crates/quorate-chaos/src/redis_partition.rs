//! Lost acknowledged writes under a partition, side by side (issue 22's partition trial, run
//! by `cargo xtask bench redis`): three nodes in a [`World`], each running its own
//! `redis-server` and either a `quorate agent` with a `[redis]` section (and its
//! Sentinel-compatible listener) or a `redis-sentinel` (quorum 2, tuned:
//! `down-after-milliseconds 1000`, `failover-timeout 3000`), all inside the node's network
//! namespace, so partitioning the node cuts its Redis off too.
//!
//! The clients run outside the nodes, on the bridge (`10.77.0.254`, which no partition rule
//! drops), like a client population that still reaches both sides of the partition. They
//! behave as a Sentinel-aware client library such as redis-py's `Sentinel` does (as in
//! Jepsen's Redis test, they keep writing to the master they believe in): ask the discovery
//! endpoints (`SENTINEL get-master-addr-by-name`) in order, starting with the one that answered
//! last, keep one connection to the master named, and only re-ask after a failed write. Four clients write sequential keys at once for the whole trial
//! ([`CLIENTS`]): two first ask the endpoint on the master's (to be partitioned) node, two the
//! endpoint on a node of the majority; of each pair one counts a write acknowledged when `SET`
//! returns `OK`, the other only when `WAIT 1 <timeout>` after it returns at least 1 (otherwise
//! it also re-asks). Besides the lost writes, each client's longest time without an
//! acknowledgement is its unavailability, and a write the old master acknowledged although it
//! was sent after the new master's first acknowledgement is a "stale" one (two masters taking
//! writes at once).
//!
//! One trial: wait until settled (one master, two linked replicas, every endpoint naming the
//! master); write for 1 s; symmetric partition of the master's node for the partition time
//! (meanwhile the two other servers must never both be masters; polled every 200 ms); check
//! that they hold exactly one master at its end; heal; wait until settled again
//! (the old master rejoins as a replica); write 0.5 s more on the final master; then read every
//! acknowledged key back from the final master and count the missing ones. A trial that does
//! not end with exactly one master among the servers reaching the majority is a violation.

use std::fmt;
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use quorate::config::{
    AgentConfig, CheckSection, GossipSection, RaftSection, RedisSection, RoleSection,
};
use quorate::demo::to_toml;
use quorate_redis::info::{Replication, parse_replication};
use tokio::process::Child;

use crate::world::{World, preflight};

/// The master name every discovery endpoint answers for.
const MASTER_NAME: &str = "mymaster";
/// Every node's Redis port (each node has its own address).
const REDIS_PORT: u16 = 6379;
/// Every node's discovery port: quorate's Sentinel-compatible listener or a real Sentinel.
const DISCOVERY_PORT: u16 = 26379;
/// The role quorate's agents manage Redis as.
const ROLE: &str = "redis";
/// The nodes.
const NODES: usize = 3;
/// Sentinel's fastest documented safe settings (as in the failover trials).
const SENTINEL_TUNED: [&str; 2] = [
    "sentinel down-after-milliseconds mymaster 1000",
    "sentinel failover-timeout mymaster 3000",
];

/// What to run.
#[derive(Clone, Debug)]
pub struct PartitionOptions {
    /// The `quorate` binary the agents run.
    pub agent_exe: PathBuf,
    /// Trials per side.
    pub trials: u32,
    /// How long the primary's node stays partitioned.
    pub partition: Duration,
    /// The `WAIT 1 <timeout>` of the acknowledged-write client.
    pub wait_timeout: Duration,
    /// Run the quorate side.
    pub quorate: bool,
    /// Run the Sentinel (tuned) side.
    pub sentinel: bool,
    /// Print each trial.
    pub verbose: bool,
}

/// One client mode's totals on one side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ModeFigures {
    /// Writes sent (`SET`s).
    pub attempted: u64,
    /// Writes the client counted as acknowledged.
    pub acknowledged: u64,
    /// Acknowledged writes missing from the final master.
    pub lost: u64,
    /// Writes the old master acknowledged although they were sent after the new master had
    /// acknowledged one (two masters taking writes at once; the lease-fenced old master must
    /// not).
    pub stale_acks: u64,
    /// The longest time without an acknowledged write in any trial (the client's
    /// unavailability).
    pub longest_gap: Duration,
    /// The latest any lost write was acknowledged, after the partition began (the old
    /// master's window of lost acknowledgements), over all trials.
    pub lost_window: Option<Duration>,
}

impl ModeFigures {
    fn add(&mut self, o: ModeFigures) {
        self.attempted += o.attempted;
        self.acknowledged += o.acknowledged;
        self.lost += o.lost;
        self.stale_acks += o.stale_acks;
        self.longest_gap = self.longest_gap.max(o.longest_gap);
        self.lost_window = self.lost_window.max(o.lost_window);
    }

    /// Lost as a percentage of acknowledged.
    pub fn lost_percent(&self) -> f64 {
        if self.acknowledged == 0 {
            0.0
        } else {
            self.lost as f64 * 100.0 / self.acknowledged as f64
        }
    }
}

/// Which discovery endpoint a client asks first (it then sticks to the one that answered).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirstAsked {
    /// The endpoint on the partitioned (master's) node: a client placed with the old master.
    Partitioned,
    /// The endpoint on the next node, in the majority.
    Majority,
}

impl FirstAsked {
    fn label(self) -> &'static str {
        match self {
            FirstAsked::Partitioned => "partitioned node",
            FirstAsked::Majority => "majority node",
        }
    }
}

/// The clients of every trial, all writing at once: which endpoint each asks first, and
/// whether it confirms its writes with `WAIT 1`.
pub const CLIENTS: [(FirstAsked, bool); 4] = [
    (FirstAsked::Partitioned, false),
    (FirstAsked::Partitioned, true),
    (FirstAsked::Majority, false),
    (FirstAsked::Majority, true),
];

/// One side's figures.
#[derive(Clone, Debug)]
pub struct PartitionSide {
    /// Which side.
    pub name: String,
    /// Trials that completed (read back).
    pub trials: u32,
    /// Each client's totals, in the order of [`CLIENTS`].
    pub clients: [ModeFigures; 4],
    /// Trials that ended without exactly one master among the servers reaching the majority
    /// (or could not be read back), with what went wrong.
    pub violations: Vec<String>,
}

/// The whole partition run.
#[derive(Clone, Debug, Default)]
pub struct PartitionReport {
    /// The partition time.
    pub partition: Duration,
    /// The `WAIT` timeout.
    pub wait_timeout: Duration,
    /// quorate, then Sentinel (those that ran).
    pub sides: Vec<PartitionSide>,
}

impl PartitionReport {
    /// Every violation on every side.
    pub fn violations(&self) -> usize {
        self.sides.iter().map(|s| s.violations.len()).sum()
    }
}

impl fmt::Display for PartitionReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "lost acknowledged writes: symmetric partition of the master's node for {} ms, then heal",
            self.partition.as_millis()
        )?;
        writeln!(
            f,
            "{:<28} {:<17} {:<15} {:>6} {:>10} {:>12} {:>8} {:>8} {:>11} {:>11} {:>12}",
            "side",
            "client asks first",
            "mode",
            "trials",
            "attempted",
            "acknowledged",
            "lost",
            "lost %",
            "stale acks",
            "max gap ms",
            "lost until"
        )?;
        for s in &self.sides {
            let wait = format!("WAIT 1 {} ms", self.wait_timeout.as_millis());
            for ((first, waits), m) in CLIENTS.iter().zip(&s.clients) {
                writeln!(
                    f,
                    "{:<28} {:<17} {:<15} {:>6} {:>10} {:>12} {:>8} {:>7.2}% {:>11} {:>11} {:>12}",
                    s.name,
                    first.label(),
                    if *waits { wait.as_str() } else { "no WAIT" },
                    s.trials,
                    m.attempted,
                    m.acknowledged,
                    m.lost,
                    m.lost_percent(),
                    m.stale_acks,
                    m.longest_gap.as_millis(),
                    m.lost_window
                        .map_or_else(|| "-".to_owned(), |w| format!("+{} ms", w.as_millis()))
                )?;
            }
        }
        writeln!(
            f,
            "stale acks: acknowledged by the old master though sent after the new master's first \
             acknowledgement; max gap: longest time without an acknowledged write; lost until: the \
             latest acknowledgement of a lost write, from the start of the partition"
        )?;
        writeln!(
            f,
            "trials without exactly one master among the servers reaching the majority: {}",
            self.violations()
        )?;
        for s in &self.sides {
            for v in &s.violations {
                writeln!(f, "  {}: {v}", s.name)?;
            }
        }
        Ok(())
    }
}

/// Runs the partition trials: checks root and the tools first (an error says what is missing),
/// then each side in a world of its own. The clients' sockets must live in the world's bridge
/// namespace, so the trials run on a thread of their own that enters it (`setns`), with a
/// single-threaded runtime.
pub fn partition_bench(o: &PartitionOptions) -> Result<PartitionReport> {
    preflight().context(
        "the Redis partition trials run the nodes in network namespaces with nftables \
         (run the bench as root, or pass --partition-trials 0)",
    )?;
    for bin in [
        quorate_testkit::redis::redis_server_binary(),
        quorate_testkit::redis::redis_sentinel_binary(),
    ] {
        bin.map_err(|e| anyhow!("{e}"))?;
    }
    let o = o.clone();
    std::thread::Builder::new()
        .name("redis-partition".to_owned())
        .spawn(move || -> Result<PartitionReport> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("building the trials' runtime")?;
            rt.block_on(run(&o))
        })
        .context("starting the trials' thread")?
        .join()
        .map_err(|_| anyhow!("the partition trials' thread panicked"))?
}

async fn run(o: &PartitionOptions) -> Result<PartitionReport> {
    let mut report = PartitionReport {
        partition: o.partition,
        wait_timeout: o.wait_timeout,
        sides: Vec::new(),
    };
    if o.quorate {
        report.sides.push(side(o, Manager::Quorate).await?);
    }
    if o.sentinel {
        report.sides.push(side(o, Manager::Sentinel).await?);
    }
    Ok(report)
}

/// Who manages the Redis servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Manager {
    Quorate,
    Sentinel,
}

impl Manager {
    fn name(self) -> &'static str {
        match self {
            Manager::Quorate => "quorate",
            Manager::Sentinel => "sentinel (tuned: 1 s / 3 s)",
        }
    }
}

fn redis_addr(i: usize) -> String {
    format!("{}:{REDIS_PORT}", World::addr(i))
}

fn discovery_addr(i: usize) -> String {
    format!("{}:{DISCOVERY_PORT}", World::addr(i))
}

/// The processes of one side; dropping it kills them (`kill_on_drop`).
struct Nodes {
    _redis: Vec<Child>,
    _managers: Vec<Child>,
}

fn log_file(path: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

fn spawn_redis(world: &World, i: usize, dir: &Path, replica_of: Option<usize>) -> Result<Child> {
    let bin = quorate_testkit::redis::redis_server_binary().map_err(|e| anyhow!("{e}"))?;
    let d = dir.join(format!("redis-n{}", i + 1));
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    let mut c = world.node_command(i, &bin.to_string_lossy());
    c.args(["--port", &REDIS_PORT.to_string(), "--bind", &World::addr(i)])
        .args(["--protected-mode", "no", "--save", "", "--appendonly", "no"])
        .args(["--daemonize", "no", "--dir"])
        .arg(&d)
        .arg("--logfile")
        .arg(d.join("redis.log"));
    if let Some(m) = replica_of {
        c.args(["--replicaof", &World::addr(m), &REDIS_PORT.to_string()]);
    }
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting redis-server in node {}", i + 1))
}

fn spawn_sentinel(world: &World, i: usize, dir: &Path) -> Result<Child> {
    let bin = quorate_testkit::redis::redis_sentinel_binary().map_err(|e| anyhow!("{e}"))?;
    let d = dir.join(format!("sentinel-n{}", i + 1));
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    let mut text = format!(
        "port {DISCOVERY_PORT}\nbind {}\nprotected-mode no\ndir {}\nlogfile {}\n\
         sentinel monitor {MASTER_NAME} {} {REDIS_PORT} 2\n",
        World::addr(i),
        d.display(),
        d.join("sentinel.log").display(),
        World::addr(0),
    );
    for s in SENTINEL_TUNED {
        text.push_str(s);
        text.push('\n');
    }
    let conf = d.join("sentinel.conf");
    std::fs::write(&conf, text).with_context(|| format!("writing {}", conf.display()))?;
    world
        .node_command(i, &bin.to_string_lossy())
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting redis-sentinel in node {}", i + 1))
}

fn agent_config(i: usize, dir: &Path) -> Result<String> {
    let name = format!("n{}", i + 1);
    let config = AgentConfig {
        cluster_name: "quorate-redis-partition".to_owned(),
        cluster_key: None,
        accepted_key_files: Vec::new(),
        client_key_files: Vec::new(),
        cluster_key_file: Some(dir.join("cluster.key")),
        node_id: name.clone(),
        data_dir: dir.join(&name),
        profile: "lan".to_owned(),
        raft: RaftSection {
            listen: format!("{}:7201", World::addr(i)),
            advertise: None,
            store_bytes_max: None,
            voters: (0..NODES)
                .map(|j| (format!("n{}", j + 1), format!("{}:7201", World::addr(j))))
                .collect(),
        },
        gossip: GossipSection {
            listen: format!("{}:7101", World::addr(i)),
            advertise: None,
            seeds: (0..NODES)
                .filter(|j| *j != i)
                .map(|j| format!("{}:7101", World::addr(j)))
                .collect(),
            bootstrap: i == 0,
            tags: Default::default(),
        },
        checks: vec![CheckSection {
            id: "redis".to_owned(),
            kind: "redis".to_owned(),
            target: format!("redis://{}", redis_addr(i)),
            interval: Duration::from_millis(500),
            timeout: Duration::from_millis(400),
            critical: true,
        }],
        roles: vec![RoleSection {
            // Every trial fails the role over; the default anti-flap budget would stop that.
            anti_flap_max_failovers: Some(100_000),
            ..RoleSection::named(ROLE)
        }],
        startup: Default::default(),
        telegram: None,
        redis: Some(RedisSection {
            role: ROLE.to_owned(),
            servers: (0..NODES)
                .map(|j| (format!("n{}", j + 1), redis_addr(j)))
                .collect(),
            password_file: None,
            max_lag_bytes: None,
            min_replicas_to_write: None,
            min_replicas_max_lag: None,
            sentinel_listen: Some(discovery_addr(i)),
            sentinel_master_name: Some(MASTER_NAME.to_owned()),
            poll_interval: None,
            command_timeout: None,
        }),
        replication: None,
        api: None,
    };
    to_toml(&config).map_err(|e| anyhow!("{e}"))
}

fn spawn_agent(world: &World, i: usize, dir: &Path, agent_exe: &Path) -> Result<Child> {
    let name = format!("n{}", i + 1);
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(&config, agent_config(i, dir)?)
        .with_context(|| format!("writing {}", config.display()))?;
    world
        .node_command(i, &agent_exe.to_string_lossy())
        .arg("agent")
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn,openraft=off")
        .stdin(Stdio::null())
        .stdout(log_file(&dir.join(format!("{name}.out")))?)
        .stderr(log_file(&dir.join(format!("{name}.err")))?)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting agent {name}"))
}

/// A connection to `addr` with these timeouts, or `None`.
async fn conn(addr: &str, response: Duration) -> Option<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://{addr}/")).ok()?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Duration::from_millis(300))
        .set_response_timeout(response);
    tokio::time::timeout(
        Duration::from_millis(500) + response,
        client.get_multiplexed_async_connection_with_config(&config),
    )
    .await
    .ok()?
    .ok()
}

async fn info(addr: &str) -> Option<Replication> {
    let mut c = conn(addr, Duration::from_millis(500)).await?;
    let text: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(&mut c)
        .await
        .ok()?;
    parse_replication(&text).ok()
}

/// The master `host:port` the discovery endpoint at `addr` names.
async fn discovered(addr: &str) -> Option<String> {
    let mut c = conn(addr, Duration::from_millis(500)).await?;
    let v: Option<Vec<String>> = redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(MASTER_NAME)
        .query_async(&mut c)
        .await
        .ok()?;
    let v = v?;
    Some(format!("{}:{}", v.first()?, v.get(1)?))
}

/// The master's index when all nodes' servers are one master and two replicas with their link
/// up, and every endpoint names that master.
async fn settled(manager: Manager) -> Option<usize> {
    let mut master = None;
    let mut infos = Vec::new();
    for i in 0..NODES {
        let r = info(&redis_addr(i)).await?;
        if r.master {
            if master.is_some() {
                return None;
            }
            master = Some(i);
        }
        infos.push(r);
    }
    let m = master?;
    for (_, r) in infos.iter().enumerate().filter(|(i, _)| *i != m) {
        if r.following != Some((World::addr(m), REDIS_PORT)) || !r.link_up {
            return None;
        }
    }
    for e in 0..NODES {
        if discovered(&discovery_addr(e)).await? != redis_addr(m) {
            return None;
        }
    }
    if manager == Manager::Sentinel {
        // Every Sentinel knows the two others and two healthy replicas (otherwise the next
        // partition could leave too few to authorise a failover).
        for e in 0..NODES {
            let mut c = conn(&discovery_addr(e), Duration::from_millis(500)).await?;
            let v: Vec<String> = redis::cmd("SENTINEL")
                .arg("master")
                .arg(MASTER_NAME)
                .query_async(&mut c)
                .await
                .ok()?;
            let field = |k: &str| {
                v.iter()
                    .position(|x| x == k)
                    .and_then(|i| v.get(i + 1))
                    .cloned()
                    .unwrap_or_default()
            };
            if field("num-other-sentinels") != "2" || field("flags") != "master" {
                return None;
            }
            let replicas: Vec<Vec<String>> = redis::cmd("SENTINEL")
                .arg("replicas")
                .arg(MASTER_NAME)
                .query_async(&mut c)
                .await
                .ok()?;
            let healthy = replicas
                .iter()
                .filter(|r| {
                    r.iter()
                        .position(|x| x == "flags")
                        .and_then(|i| r.get(i + 1))
                        .is_some_and(|f| f == "slave")
                })
                .count();
            if healthy != 2 {
                return None;
            }
        }
    }
    Some(m)
}

async fn wait_settled(manager: Manager, limit: Duration) -> Option<usize> {
    let end = Instant::now() + limit;
    loop {
        if let Some(m) = settled(manager).await {
            return Some(m);
        }
        if Instant::now() > end {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One acknowledged write.
#[derive(Clone, Copy, Debug)]
struct Ack {
    seq: u64,
    /// The node whose server acknowledged it.
    server: Option<usize>,
    /// When the `SET` was sent.
    sent: Instant,
    /// When the acknowledgement (`OK`, or `WAIT`'s count) arrived.
    done: Instant,
}

/// What one client did.
#[derive(Debug, Default)]
struct Written {
    attempted: u64,
    acknowledged: Vec<Ack>,
}

/// One client: writes `prefix<n>` for n = 1, 2, ... to the master the discovery endpoints
/// name, until `stop`; with `wait`, a write counts only when `WAIT 1` confirms it.
async fn writer(
    prefix: String,
    first_endpoint: usize,
    wait: Option<Duration>,
    stop: Arc<AtomicBool>,
) -> Written {
    let mut out = Written::default();
    let mut sticky = first_endpoint;
    let mut master: Option<(redis::aio::MultiplexedConnection, Option<usize>)> = None;
    let response = Duration::from_millis(1000) + wait.unwrap_or_default();
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let Some((c, server)) = master.as_mut() else {
            for k in 0..NODES {
                let e = (sticky + k) % NODES;
                if let Some(addr) = discovered(&discovery_addr(e)).await
                    && let Some(c) = conn(&addr, response).await
                {
                    sticky = e;
                    master = Some((c, (0..NODES).find(|j| redis_addr(*j) == addr)));
                    break;
                }
            }
            if master.is_none() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            continue;
        };
        seq += 1;
        out.attempted += 1;
        let key = format!("{prefix}{seq}");
        let sent = Instant::now();
        let set: Result<Result<String, _>, _> = tokio::time::timeout(
            response,
            redis::cmd("SET").arg(&key).arg(seq).query_async(c),
        )
        .await;
        let ok = matches!(&set, Ok(Ok(s)) if s == "OK");
        let acked = match (ok, wait) {
            (false, _) => false,
            (true, None) => true,
            (true, Some(t)) => {
                let ms = u64::try_from(t.as_millis()).unwrap_or(u64::MAX);
                let r: Result<Result<i64, _>, _> = tokio::time::timeout(
                    response,
                    redis::cmd("WAIT").arg(1).arg(ms).query_async(c),
                )
                .await;
                matches!(r, Ok(Ok(n)) if n >= 1)
            }
        };
        if acked {
            out.acknowledged.push(Ack {
                seq,
                server: *server,
                sent,
                done: Instant::now(),
            });
        } else {
            // A failed or unconfirmed write: ask the endpoints again (as a Sentinel-aware
            // client does on a connection error or READONLY).
            master = None;
        }
    }
    out
}

/// Those of `acked` (`prefix<n>`) the server at `addr` does not have.
async fn missing(addr: &str, prefix: &str, acked: &[Ack]) -> Result<Vec<Ack>> {
    let mut c = conn(addr, Duration::from_secs(10))
        .await
        .with_context(|| format!("connecting to the final master {addr}"))?;
    let mut lost = Vec::new();
    for chunk in acked.chunks(500) {
        let keys: Vec<String> = chunk.iter().map(|a| format!("{prefix}{}", a.seq)).collect();
        let vals: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut c)
            .await
            .with_context(|| format!("MGET on the final master {addr}"))?;
        lost.extend(
            chunk
                .iter()
                .zip(&vals)
                .filter(|(_, v)| v.is_none())
                .map(|(a, _)| *a),
        );
    }
    Ok(lost)
}

/// The longest time between consecutive acknowledgements, from `from` to `to`, and when it
/// began.
fn longest_gap_at(acks: &[Ack], from: Instant, to: Instant) -> (Duration, Instant) {
    let mut times: Vec<Instant> = acks.iter().map(|a| a.done).collect();
    times.sort();
    let mut last = from;
    let mut gap = (Duration::ZERO, from);
    for t in times.into_iter().chain([to]) {
        let d = t.saturating_duration_since(last);
        if d > gap.0 {
            gap = (d, last);
        }
        last = last.max(t);
    }
    gap
}

/// The longest time between consecutive acknowledgements, from `from` to `to`.
fn longest_gap(acks: &[Ack], from: Instant, to: Instant) -> Duration {
    longest_gap_at(acks, from, to).0
}

#[allow(
    clippy::print_stdout,
    reason = "a benchmark's progress lines, only with `verbose`"
)]
fn say(o: &PartitionOptions, msg: &str) {
    if o.verbose {
        println!("  {msg}");
    }
}

async fn side(o: &PartitionOptions, manager: Manager) -> Result<PartitionSide> {
    let tmp = tempfile::Builder::new()
        .prefix("quorate-redis-partition-")
        .tempdir()?;
    let dir = tmp.path();
    let world = World::create(NODES, dir).await?;
    // The bridge has its own address (`World::BRIDGE_ADDR`), the clients' here.
    // From here on this thread's sockets are the clients': on the bridge.
    let ns = std::fs::File::open(world.netns_path()).context("opening the world's netns")?;
    rustix::thread::move_into_link_name_space(
        ns.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .context("entering the world's network namespace (setns)")?;

    let mut redis = Vec::new();
    for i in 0..NODES {
        let replica_of = (manager == Manager::Sentinel && i != 0).then_some(0);
        redis.push(spawn_redis(&world, i, dir, replica_of)?);
    }
    for i in 0..NODES {
        let end = Instant::now() + Duration::from_secs(10);
        while info(&redis_addr(i)).await.is_none() {
            if Instant::now() > end {
                bail!(
                    "redis-server in node {} did not answer within 10 s; see {}",
                    i + 1,
                    dir.join(format!("redis-n{}/redis.log", i + 1)).display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut managers = Vec::new();
    match manager {
        Manager::Quorate => {
            quorate::config::write_new_key_file(&dir.join("cluster.key"))
                .map_err(anyhow::Error::msg)?;
            for i in 0..NODES {
                managers.push(spawn_agent(&world, i, dir, &o.agent_exe)?);
            }
        }
        Manager::Sentinel => {
            for i in 0..NODES {
                managers.push(spawn_sentinel(&world, i, dir)?);
            }
        }
    }
    let _nodes = Nodes {
        _redis: redis,
        _managers: managers,
    };
    let mut s = PartitionSide {
        name: manager.name().to_owned(),
        trials: 0,
        clients: [ModeFigures::default(); 4],
        violations: Vec::new(),
    };
    for trial in 1..=o.trials {
        let Some(p) = wait_settled(manager, Duration::from_secs(120)).await else {
            bail!(
                "{}: the cluster did not settle within 120 s before trial {trial} (one master, \
                 two linked replicas, every endpoint naming it); logs in {}",
                s.name,
                tmp.keep().display()
            );
        };
        let started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = CLIENTS
            .iter()
            .enumerate()
            .map(|(k, (first, waits))| {
                tokio::spawn(writer(
                    format!("t{trial}:c{k}:"),
                    match first {
                        FirstAsked::Partitioned => p,
                        FirstAsked::Majority => (p + 1) % NODES,
                    },
                    waits.then_some(o.wait_timeout),
                    stop.clone(),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(1)).await;
        world.partition_symmetric(p, true).await?;
        let t0 = Instant::now();
        // During the partition the two majority servers never hold two masters at once (none
        // is fine while the failover runs); polled every 200 ms.
        let mut doubled = None;
        while t0.elapsed() + Duration::from_millis(200) < o.partition {
            let mut n = Vec::new();
            for i in (0..NODES).filter(|i| *i != p) {
                if info(&redis_addr(i)).await.is_some_and(|r| r.master) {
                    n.push(i);
                }
            }
            if n.len() > 1 && doubled.is_none() {
                doubled = Some(t0.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(o.partition.saturating_sub(t0.elapsed())).await;
        // Before the heal: the two servers that reach the majority hold exactly one master.
        let mut masters = Vec::new();
        let mut unreachable = Vec::new();
        for i in (0..NODES).filter(|i| *i != p) {
            match info(&redis_addr(i)).await {
                Some(r) if r.master => masters.push(i),
                Some(_) => {}
                None => unreachable.push(i),
            }
        }
        // What each discovery endpoint names at the end of the partition.
        let mut named = Vec::new();
        for e in 0..NODES {
            let answer = discovered(&discovery_addr(e)).await;
            named.push(format!(
                "n{}->{}",
                e + 1,
                answer
                    .and_then(|a| (0..NODES).find(|j| redis_addr(*j) == a))
                    .map_or_else(|| "none".to_owned(), |j| format!("n{}", j + 1))
            ));
        }
        let partitioned = t0.elapsed();
        world.partition_symmetric(p, false).await?;
        let mut violation = None;
        if masters.len() != 1 || !unreachable.is_empty() {
            violation = Some(format!(
                "trial {trial}: after {} ms of partition of n{}, the majority side had {} master(s) \
                 {:?}{}",
                partitioned.as_millis(),
                p + 1,
                masters.len(),
                masters
                    .iter()
                    .map(|i| format!("n{}", i + 1))
                    .collect::<Vec<_>>(),
                if unreachable.is_empty() {
                    String::new()
                } else {
                    format!(", unreachable {unreachable:?}")
                }
            ));
        }
        if let Some(at) = doubled {
            s.violations.push(format!(
                "trial {trial}: both majority servers were masters at +{} ms of the partition",
                at.as_millis()
            ));
        }
        let healed = Instant::now();
        let fin = wait_settled(manager, Duration::from_secs(120)).await;
        let converged = healed.elapsed();
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::Relaxed);
        let stopped = Instant::now();
        let mut written = Vec::new();
        for w in writers {
            written.push(w.await.context("a client task")?);
        }
        let Some(m) = fin else {
            s.violations.push(format!(
                "trial {trial}: not exactly one master with two linked replicas within 120 s of the heal"
            ));
            if let Some(v) = violation {
                s.violations.push(v);
            }
            say(
                o,
                &format!("{} trial {trial}: no convergence after the heal", s.name),
            );
            continue;
        };
        if let Some(v) = violation {
            s.violations.push(v);
        }
        say(
            o,
            &format!(
                "{} trial {trial}: partition from +0 ms to +{} ms, heal converged at +{} ms",
                s.name,
                partitioned.as_millis(),
                (healed + converged)
                    .saturating_duration_since(t0)
                    .as_millis()
            ),
        );
        // The new master's first acknowledgement, by any client.
        let first_new = written
            .iter()
            .flat_map(|w| &w.acknowledged)
            .filter(|a| a.server == Some(m) && m != p)
            .map(|a| a.done)
            .min();
        let mut figures = [ModeFigures::default(); 4];
        for (k, (f, w)) in figures.iter_mut().zip(&written).enumerate() {
            let lost = missing(&redis_addr(m), &format!("t{trial}:c{k}:"), &w.acknowledged).await?;
            *f = ModeFigures {
                attempted: w.attempted,
                acknowledged: w.acknowledged.len() as u64,
                lost: lost.len() as u64,
                stale_acks: first_new.map_or(0, |t| {
                    w.acknowledged
                        .iter()
                        .filter(|a| a.server == Some(p) && a.sent > t)
                        .count() as u64
                }),
                longest_gap: longest_gap(&w.acknowledged, started, stopped),
                lost_window: lost
                    .iter()
                    .map(|a| a.done.saturating_duration_since(t0))
                    .max(),
            };
        }
        for (total, f) in s.clients.iter_mut().zip(figures) {
            total.add(f);
        }
        s.trials += 1;
        let per_client: Vec<String> = CLIENTS
            .iter()
            .zip(figures)
            .zip(&written)
            .map(|(((first, waits), f), w)| {
                let (_, at) = longest_gap_at(&w.acknowledged, started, stopped);
                let at = if at >= t0 {
                    format!("+{}", at.duration_since(t0).as_millis())
                } else {
                    format!("-{}", t0.duration_since(at).as_millis())
                };
                format!(
                    "[{}, {}: {} acknowledged, {} lost, {} stale, gap {} ms from {at} ms]",
                    first.label(),
                    if *waits { "WAIT" } else { "no WAIT" },
                    f.acknowledged,
                    f.lost,
                    f.stale_acks,
                    f.longest_gap.as_millis()
                )
            })
            .collect();
        say(
            o,
            &format!(
                "{} trial {trial}: partitioned n{} for {} ms (endpoints then named {}), final master n{} ({} ms after the heal); {}",
                s.name,
                p + 1,
                partitioned.as_millis(),
                named.join(" "),
                m + 1,
                converged.as_millis(),
                per_client.join(" "),
            ),
        );
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(seq: u64, base: Instant, ms: u64) -> Ack {
        let t = base + Duration::from_millis(ms);
        Ack {
            seq,
            server: Some(0),
            sent: t,
            done: t,
        }
    }

    #[test]
    fn the_longest_gap_counts_the_edges_and_ignores_order() {
        let base = Instant::now();
        let acks = [ack(2, base, 300), ack(1, base, 100), ack(3, base, 1200)];
        let gap = longest_gap(&acks, base, base + Duration::from_millis(1300));
        assert_eq!(gap, Duration::from_millis(900));
        // No acknowledgement at all: the whole trial.
        assert_eq!(
            longest_gap(&[], base, base + Duration::from_millis(700)),
            Duration::from_millis(700)
        );
        // The end is the longest stretch.
        let end = base + Duration::from_millis(5000);
        assert_eq!(longest_gap(&acks, base, end), Duration::from_millis(3800));
    }

    #[test]
    fn figures_add_up_and_the_table_names_every_side_and_violation() {
        let mut total = ModeFigures::default();
        total.add(ModeFigures {
            attempted: 10,
            acknowledged: 8,
            lost: 2,
            stale_acks: 1,
            longest_gap: Duration::from_millis(500),
            lost_window: Some(Duration::from_millis(300)),
        });
        total.add(ModeFigures {
            attempted: 5,
            acknowledged: 2,
            lost: 0,
            stale_acks: 0,
            longest_gap: Duration::from_millis(900),
            lost_window: None,
        });
        assert_eq!(
            (total.attempted, total.acknowledged, total.lost),
            (15, 10, 2)
        );
        assert_eq!(total.longest_gap, Duration::from_millis(900));
        assert_eq!(total.lost_window, Some(Duration::from_millis(300)));
        assert!((total.lost_percent() - 20.0).abs() < 1e-9);
        assert_eq!(ModeFigures::default().lost_percent(), 0.0);
        let report = PartitionReport {
            partition: Duration::from_millis(8000),
            wait_timeout: Duration::from_millis(1000),
            sides: vec![PartitionSide {
                name: "quorate".to_owned(),
                trials: 2,
                clients: [total, ModeFigures::default(), ModeFigures::default(), total],
                violations: vec!["trial 2: two masters".to_owned()],
            }],
        };
        assert_eq!(report.violations(), 1);
        let text = report.to_string();
        assert!(text.contains("WAIT 1 1000 ms"), "{text}");
        assert!(text.contains("20.00%"), "{text}");
        assert!(text.contains("+300 ms"), "{text}");
        assert!(text.contains("quorate: trial 2: two masters"), "{text}");
        assert!(text.contains("majority: 1"), "{text}");
    }
}
