//! Replication nodes in the deterministic simulation (quorate-sim / turmoil): three hosts,
//! each a `ReplicationNode` over `TurmoilNet` with its redb database kept outside the host (it
//! survives the host's crash, as a disk would), under a seeded schedule of partitions, crashes
//! and restarts, pauses, slow and lossy links, and wall-clock skew and rate drift within the
//! HLC bound.
//!
//! - `multi_master_nodes_converge_to_the_merge_of_acknowledged_writes`: every host increments
//!   counters and adds unique elements to an OR-set (writes stop when the faults stop). A
//!   strong-eventual-consistency checker requires that, within 8 s of the heal, every
//!   replica holds the same state, that each counter lies between the acknowledged and the
//!   attempted increments, and that every acknowledged add is present (no removes here) and
//!   nothing never attempted is.
//! - `leader_mode_sync_loses_no_acknowledged_write_across_failovers`: a controller stands in
//!   for the failover role (it is not the Raft-backed election): it moves the primary with a
//!   strictly increasing fencing token, demoting the old primary first except when the old
//!   one is paused (a stale primary that keeps believing). Writes are synchronous to both
//!   replicas. The durability checker requires every acknowledged write to be readable at
//!   every node after recovery; every write of a primary whose token had been superseded at
//!   both replicas must have failed.
//!
//! Seeds: `QUORATE_SIM_SEEDS` (default 100 per scenario), one seed: `QUORATE_SIM_SEED=n`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    reason = "test; the summary goes to stderr"
)]

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::num::{NonZeroU64, NonZeroUsize};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use quorate_replication::{
    HlcConfig, Keyspace, LeaderConfig, LeaderKeyspace, LeaderRole, MultiMasterConfig, NodeConfig,
    OrSet, PnCounter, ReplicaDb, ReplicationError, ReplicationNode, SyncMode, TransportConfig,
};
use quorate_sim::{
    ClockRate, Cluster, ClusterBuilder, Fault, FaultKind, NemesisConfig, NodeCtx, Runner,
    ScenarioFailure, Schedule, TurmoilNet,
};
use quorate_types::{FencingToken, NodeId};
use quorate_wire::{ClusterKey, KeyRing, WireConfig};

const PORT: u16 = 9400;
const NODES: usize = 3;
const DEFAULT_SEEDS: u64 = 100;
const FAULTS_END: Duration = Duration::from_secs(8);
const CONVERGE_WITHIN: Duration = Duration::from_secs(8);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

/// SplitMix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

fn node_config(ctx: &NodeCtx) -> NodeConfig {
    let clock = ctx.clock.clone();
    let mut wire = WireConfig::new("sim", KeyRing::new(ClusterKey::from_bytes([7; 32]), vec![]))
        .expect("wire config");
    // The node's own (skewable) wall clock: its HLC's physical time and its frames' stamps.
    wire.wall_clock = Arc::new(move || {
        use quorate_sim::Clock as _;
        clock
            .wall()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    });
    let mut transport = TransportConfig::lan(wire);
    transport.call_timeout = ms(500);
    transport.connect_timeout = ms(200);
    NodeConfig {
        node: NodeId::new(&ctx.name).unwrap(),
        listen: format!("0.0.0.0:{PORT}"),
        peers: (1..=NODES)
            .map(|i| {
                (
                    NodeId::new(format!("n{i}")).unwrap(),
                    format!("n{i}:{PORT}"),
                )
            })
            .collect(),
        transport,
        inbound_queue_max: NonZeroUsize::new(64).unwrap(),
    }
}

fn cluster(seed: u64) -> Cluster<'static> {
    ClusterBuilder::new(seed)
        .duration(Duration::from_secs(60))
        .tick(ms(2))
        .tcp_capacity(4096)
        .build()
        .unwrap()
}

fn disks() -> Rc<RefCell<BTreeMap<String, ReplicaDb>>> {
    Rc::default()
}

fn disk(d: &Rc<RefCell<BTreeMap<String, ReplicaDb>>>, name: &str) -> ReplicaDb {
    d.borrow_mut()
        .entry(name.to_owned())
        .or_insert_with(|| ReplicaDb::in_memory().unwrap())
        .clone()
}

fn schedule(seed: u64, names: &[String]) -> Schedule {
    let mut cfg = NemesisConfig::with_kinds([
        FaultKind::PartitionHalves,
        FaultKind::Isolate,
        FaultKind::Bridge,
        FaultKind::OneWay,
        FaultKind::Heal,
        FaultKind::Crash,
        FaultKind::Pause,
        FaultKind::SlowLink,
        FaultKind::LossyLink,
        FaultKind::ClockSkew,
        FaultKind::ClockRate,
    ])
    .window(ms(500), FAULTS_END)
    .interval(ms(200), ms(1200));
    // Within the HLC bound (500 ms): steps up to 200 ms, rates within 1 % (8 s x 1 % = 80 ms).
    cfg.clock_skew_max_ms = 200;
    cfg.clock_rate_min = ClockRate::from_ppm(990_000).unwrap();
    cfg.clock_rate_max = ClockRate::from_ppm(1_010_000).unwrap();
    Schedule::generate(seed, names, &cfg).unwrap()
}

// ---------------------------------------------------------------- multi-master

#[derive(Default)]
struct MmWorld {
    /// Per key: increments acknowledged, and attempted.
    acked: BTreeMap<String, u64>,
    attempted: BTreeMap<String, u64>,
    adds_acked: BTreeSet<u64>,
    adds_attempted: BTreeSet<u64>,
    /// Per node: its latest state (counters, set) and when it last changed.
    states: BTreeMap<String, (BTreeMap<String, i128>, BTreeSet<u64>)>,
    changed_at: BTreeMap<String, Duration>,
}

type MmShared = Rc<RefCell<MmWorld>>;

fn mm_config(name: &str) -> MultiMasterConfig {
    let hlc = HlcConfig {
        max_offset_ms: NonZeroU64::new(500).unwrap(),
    };
    let mut c = MultiMasterConfig::lan(name, hlc);
    c.anti_entropy_interval = Duration::from_secs(1);
    c.hint_retry_interval = ms(200);
    c.digest = quorate_replication::DigestConfig::new(4, 2).unwrap();
    c
}

async fn mm_host(
    ctx: NodeCtx,
    db: ReplicaDb,
    world: MmShared,
) -> Result<(), Box<dyn std::error::Error>> {
    let node = ReplicationNode::start(ctx.net, node_config(&ctx), db).await?;
    let ctr: Keyspace<PnCounter> = node.multi_master(mm_config("ctr"), None)?;
    let set: Keyspace<OrSet<u64>> = node.multi_master(mm_config("set"), None)?;
    let mut rng = Rng(ctx.seed);
    let index = ctx.name.trim_start_matches('n').parse::<u64>().unwrap_or(0);
    let mut n = 0u64;
    while now() < FAULTS_END {
        tokio::time::sleep(ms(rng.range(40, 120))).await;
        if rng.next().is_multiple_of(2) {
            let key = format!("k{}", rng.range(0, 7));
            *world.borrow_mut().attempted.entry(key.clone()).or_default() += 1;
            if ctr
                .write(&key, |c, w| c.increment(&w.node, 1))
                .await
                .is_ok()
            {
                *world.borrow_mut().acked.entry(key).or_default() += 1;
            }
        } else {
            // Unique per node, incarnation and write.
            let e = index * 1_000_000_000 + ctx.incarnation * 1_000_000 + n;
            n += 1;
            world.borrow_mut().adds_attempted.insert(e);
            if set
                .write("s", move |s, w| s.add(&w.node, e, 100_000))
                .await
                .is_ok()
            {
                world.borrow_mut().adds_acked.insert(e);
            }
        }
    }
    loop {
        let counters: BTreeMap<String, i128> = ctr
            .entries()
            .await?
            .into_iter()
            .map(|(k, v)| (k, v.value()))
            .collect();
        let elems: BTreeSet<u64> = set
            .get("s")
            .await?
            .map(|s| s.elements().copied().collect())
            .unwrap_or_default();
        {
            let mut w = world.borrow_mut();
            let state = (counters, elems);
            if w.states.get(&ctx.name) != Some(&state) {
                w.states.insert(ctx.name.clone(), state);
                w.changed_at.insert(ctx.name.clone(), now());
            }
        }
        tokio::time::sleep(ms(100)).await;
    }
}

struct MmStats {
    converge: Duration,
    writes: u64,
}

fn mm_scenario(seed: u64) -> Result<MmStats, ScenarioFailure> {
    let mut c = cluster(seed);
    let world: MmShared = Rc::default();
    let d = disks();
    let w = world.clone();
    let names = c
        .add_nodes(NODES, move |ctx: NodeCtx| {
            mm_host(ctx.clone(), disk(&d, &ctx.name), w.clone())
        })
        .unwrap();
    let sched = schedule(seed, &names);
    let fail = |m: String| ScenarioFailure::new(m).with_schedule(&sched);
    c.run_schedule(&sched).map_err(|e| fail(e.to_string()))?;
    c.run_until(FAULTS_END + CONVERGE_WITHIN)
        .map_err(|e| fail(e.to_string()))?;
    let w = world.borrow();
    let states: Vec<_> = names.iter().map(|n| w.states.get(n)).collect();
    let Some(Some(first)) = states.first() else {
        return Err(fail("no state reported".into()));
    };
    for (n, s) in names.iter().zip(&states) {
        if *s != Some(first) {
            return Err(fail(format!(
                "diverged {CONVERGE_WITHIN:?} after the heal: {} holds {:?}, {n} holds {:?}",
                names[0], first, s
            )));
        }
    }
    let (counters, elems) = first;
    for (k, acked) in &w.acked {
        let v = counters.get(k).copied().unwrap_or(0);
        let attempted = w.attempted.get(k).copied().unwrap_or(0);
        if v < i128::from(*acked) || v > i128::from(attempted) {
            return Err(fail(format!(
                "counter {k} = {v}, acknowledged {acked}, attempted {attempted}"
            )));
        }
    }
    if let Some(lost) = w.adds_acked.iter().find(|e| !elems.contains(e)) {
        return Err(fail(format!("acknowledged add {lost} is missing")));
    }
    if let Some(ghost) = elems.iter().find(|e| !w.adds_attempted.contains(e)) {
        return Err(fail(format!("element {ghost} was never added")));
    }
    let converged_at = w.changed_at.values().max().copied().unwrap_or_default();
    Ok(MmStats {
        converge: converged_at.saturating_sub(FAULTS_END),
        writes: w.acked.values().sum::<u64>() + w.adds_acked.len() as u64,
    })
}

#[test]
fn multi_master_nodes_converge_to_the_merge_of_acknowledged_writes() {
    let mut worst = Duration::ZERO;
    let mut writes = 0;
    let summary = Runner::new(
        env!("CARGO_PKG_NAME"),
        "multi_master_nodes_converge_to_the_merge_of_acknowledged_writes",
    )
    .default_seeds(DEFAULT_SEEDS)
    .run(|seed| {
        let s = mm_scenario(seed)?;
        worst = worst.max(s.converge);
        writes += s.writes;
        Ok(())
    });
    eprintln!(
        "multi-master: {summary:?}; {writes} acknowledged writes; slowest convergence after \
         the heal {worst:?} (bound {CONVERGE_WITHIN:?})"
    );
}

// ---------------------------------------------------------------- leader mode

#[derive(Default)]
struct LeaderWorld {
    /// The keyspace handle of each running node.
    handles: BTreeMap<String, LeaderKeyspace<TurmoilNet>>,
    /// Acknowledged writes: key -> (value, token).
    acked: BTreeMap<String, (String, u64)>,
    /// Writes refused for a stale token, and writes attempted.
    stale_refused: u64,
    attempted: u64,
    /// (token, time every other node had seen a higher token) for superseded primaries, and
    /// writes acknowledged with a token after that time (must be none).
    late_acks: Vec<String>,
    /// Final reads: node -> key -> value.
    finals: BTreeMap<String, BTreeMap<String, String>>,
}

type LeaderShared = Rc<RefCell<LeaderWorld>>;

fn leader_config() -> LeaderConfig {
    let mut c = LeaderConfig::lan(
        "orders",
        SyncMode::Sync {
            replicas: NonZeroUsize::new(2).unwrap(),
            timeout: ms(300),
        },
    );
    c.heartbeat_interval = ms(50);
    c
}

async fn leader_host(
    ctx: NodeCtx,
    db: ReplicaDb,
    world: LeaderShared,
) -> Result<(), Box<dyn std::error::Error>> {
    let node = ReplicationNode::start(ctx.net, node_config(&ctx), db).await?;
    let ks = node.leader(leader_config())?;
    world
        .borrow_mut()
        .handles
        .insert(ctx.name.clone(), ks.clone());
    let mut rng = Rng(ctx.seed);
    let mut n = 0u64;
    while now() < FAULTS_END {
        tokio::time::sleep(ms(rng.range(5, 30))).await;
        let LeaderRole::Primary(token) = ks.status().role else {
            continue;
        };
        let key = format!("{}-{}-{n}", ctx.name, ctx.incarnation);
        n += 1;
        world.borrow_mut().attempted += 1;
        match ks
            .write(FencingToken(token), &key, Some(key.as_bytes().to_vec()))
            .await
        {
            Ok(_) => {
                let mut w = world.borrow_mut();
                // Fencing: once every other node had seen a higher token, nothing with this
                // one may be acknowledged.
                let superseded = w
                    .handles
                    .iter()
                    .filter(|(name, _)| **name != ctx.name)
                    .all(|(_, h)| h.status().highest_token > token);
                if superseded {
                    w.late_acks
                        .push(format!("{key} acknowledged with superseded token {token}"));
                }
                w.acked.insert(key.clone(), (key, token));
            }
            Err(ReplicationError::StaleToken { .. }) => world.borrow_mut().stale_refused += 1,
            Err(_) => {}
        }
    }
    // After the faults: report what this node holds, every 100 ms.
    loop {
        tokio::time::sleep(ms(100)).await;
        let keys: Vec<String> = world.borrow().acked.keys().cloned().collect();
        let mut seen = BTreeMap::new();
        for k in keys {
            if let Some(v) = ks.get(&k) {
                seen.insert(k, String::from_utf8_lossy(&v).into_owned());
            }
        }
        world.borrow_mut().finals.insert(ctx.name.clone(), seen);
    }
}

struct LeaderStats {
    acked: u64,
    failovers: u64,
    stale_refused: u64,
}

fn leader_scenario(seed: u64) -> Result<LeaderStats, ScenarioFailure> {
    let mut c = cluster(seed);
    let world: LeaderShared = Rc::default();
    let d = disks();
    let w = world.clone();
    let names = c
        .add_nodes(NODES, move |ctx: NodeCtx| {
            leader_host(ctx.clone(), disk(&d, &ctx.name), w.clone())
        })
        .unwrap();
    let sched = schedule(seed, &names);
    let fail = |m: String| ScenarioFailure::new(m).with_schedule(&sched);
    let mut rng = Rng(seed ^ 0x5eed);
    let mut faults = sched.faults.iter().peekable();
    let mut token = 0u64;
    let mut primary: Option<String> = None;
    let mut paused: BTreeSet<String> = BTreeSet::new();
    let mut next_move = ms(300);
    let mut failovers = 0;
    while c.elapsed() < FAULTS_END + ms(3000) {
        while let Some(f) = faults.peek().filter(|f| f.at <= c.elapsed()) {
            match &f.fault {
                Fault::Pause { node } => {
                    paused.insert(node.clone());
                }
                Fault::Resume { node } => {
                    paused.remove(node.as_str());
                }
                Fault::RecoverAll => paused.clear(),
                _ => {}
            }
            c.apply(&f.fault).map_err(|e| fail(e.to_string()))?;
            faults.next();
        }
        if c.elapsed() >= next_move {
            // The role moves: to the most up-to-date running node that is not paused (what the
            // failover policy picks with the keyspace as its lag source).
            let w = world.borrow();
            let best = names
                .iter()
                .filter(|n| !c.is_crashed(n) && !paused.contains(*n))
                .filter_map(|n| w.handles.get(n).map(|h| (n, h.status().last)))
                .max_by_key(|(n, last)| (last.token, last.index, std::cmp::Reverse((*n).clone())))
                .map(|(n, _)| n.clone());
            drop(w);
            if let Some(best) = best
                && (primary.as_ref() != Some(&best) || rng.next().is_multiple_of(3))
            {
                let w = world.borrow();
                // The old primary stops acting first (its lease), unless it is paused: then it
                // keeps believing (a stale primary beyond the drift bound).
                if let Some(old) = &primary
                    && !paused.contains(old)
                    && let Some(h) = w.handles.get(old)
                {
                    h.demote();
                }
                token += 1 + rng.range(0, 2);
                if let Some(h) = w.handles.get(&best)
                    && h.promote(FencingToken(token)).is_ok()
                {
                    failovers += 1;
                    primary = Some(best);
                }
            }
            next_move = c.elapsed() + ms(rng.range(300, 1500));
        }
        c.step().map_err(|e| fail(e.to_string()))?;
    }
    c.apply(&Fault::RecoverAll)
        .map_err(|e| fail(e.to_string()))?;
    c.run_until(FAULTS_END + CONVERGE_WITHIN)
        .map_err(|e| fail(e.to_string()))?;
    let w = world.borrow();
    if let Some(late) = w.late_acks.first() {
        return Err(fail(late.clone()));
    }
    for n in &names {
        let seen = w.finals.get(n).cloned().unwrap_or_default();
        for (k, (v, t)) in &w.acked {
            if seen.get(k) != Some(v) {
                return Err(fail(format!(
                    "acknowledged write {k} (token {t}) is lost at {n} after recovery \
                     (it holds {:?})",
                    seen.get(k)
                )));
            }
        }
    }
    Ok(LeaderStats {
        acked: w.acked.len() as u64,
        failovers,
        stale_refused: w.stale_refused,
    })
}

#[test]
fn leader_mode_sync_loses_no_acknowledged_write_across_failovers() {
    let (mut acked, mut failovers, mut stale) = (0, 0, 0);
    let summary = Runner::new(
        env!("CARGO_PKG_NAME"),
        "leader_mode_sync_loses_no_acknowledged_write_across_failovers",
    )
    .default_seeds(DEFAULT_SEEDS)
    .run(|seed| {
        let s = leader_scenario(seed)?;
        acked += s.acked;
        failovers += s.failovers;
        stale += s.stale_refused;
        Ok(())
    });
    assert!(acked > 0 && failovers > 0, "the scenario did nothing");
    eprintln!(
        "leader mode: {summary:?}; {acked} acknowledged writes, {failovers} failovers, {stale} \
         writes refused for a stale token"
    );
}
