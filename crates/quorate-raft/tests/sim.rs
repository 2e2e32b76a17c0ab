//! Whole-cluster simulation of quorate-raft on turmoil (quorate-sim harness): 3 nodes with
//! in-memory redb "disks" that survive crashes, remote clients over the authenticated
//! transport, seeded fault schedules.
//!
//! Scenarios:
//! - `raft_kv_linearizable`: partitions, crashes, restarts, pauses and lossy links while 3
//!   clients read and write 3 keys; the history is linearizable, every acknowledged write
//!   survives recovery, and at no simulated instant do two nodes claim `can_act`.
//! - `raft_minority_leader_stops`: the leader is cut off from both followers while a client
//!   keeps talking to it; it stops claiming `can_act` within its leader lease, before another
//!   node is elected, and serves no write or linearizable read invoked after that.
//! - `raft_lock_mutual_exclusion`: 3 clients queue for one lock under partitions, crashes and
//!   pauses, hold it while renewing every ttl/3, release it or vanish (the lease must expire);
//!   no two validity windows overlap and fencing tokens strictly increase.
//!
//! - `raft_heal_keeps_the_leader`: a follower isolated for 3 s and healed: the leader acts
//!   throughout, nobody else acts, no term rises (the pre-vote, `node/elector.rs`).
//! - `raft_leader_crash_is_repaired_within_the_elector_bound`: after the leader crashes a new
//!   one acts within the elector's longest wait, one retry and 200 ms.
//!
//! - `raft_scenarios_replay_byte_for_byte`: every scenario run twice per seed records
//!   byte-identical traces (determinism of the whole stack under turmoil, see
//!   `quorate_sim::replay`).
//!
//! Seeds: `QUORATE_SIM_SEEDS` overrides every scenario's default; one seed:
//! `QUORATE_SIM_SEED=n`. Defaults: 100 per scenario (minority, KV, lock) and seeds 3, 14, 15
//! for the replay check (seeds that once did not replay). The whole target takes about 95 s on a loaded 2-core
//! machine with the workspace's dev profile, which optimises dependencies and quorate-wire (a
//! quarter of a seed's CPU was AEAD code instantiated in quorate-wire, another sixth redb
//! commits; unoptimised, 100 seeds each took ~4 min of CPU).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test")]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use quorate_raft::client::RemoteClient;
use quorate_raft::lease::LeaderLease;
use quorate_raft::machine::{Command, Outcome};
use quorate_raft::network::TransportConfig;
use quorate_raft::{ClusterView, NodeConfig, RaftNode, Storage, Timing};
use quorate_sim::check::{CheckConfig, Grant, check_durability, check_kv, check_mutual_exclusion};
use quorate_sim::{
    Cluster, ClusterBuilder, Fault, FaultKind, KvOp, KvRet, NemesisConfig, NodeCtx, Recorder,
    Runner, ScenarioFailure, Schedule, ScheduledFault, SimClock,
};
use quorate_types::NodeId;
use quorate_wire::{ClusterKey, KeyRing, WireConfig};
use tokio::sync::watch;

const PORT: u16 = 9000;
const NODES: usize = 3;

/// The wire config of a host: its session ids and challenges come from `seed` (so the bytes on
/// the wire replay), its wall clock from `clock` (a node's skewable clock) or simulated time.
fn wire(clock: Option<SimClock>, seed: u64) -> WireConfig {
    let mut w = WireConfig::new("sim", KeyRing::new(ClusterKey::from_bytes([3; 32]), vec![]))
        .expect("wire config");
    w.random = quorate_sim::replay::seeded_random(seed);
    if let Some(clock) = clock {
        let shared = clock.shared();
        w.wall_clock = std::sync::Arc::new(move || {
            shared
                .wall()
                .duration_since(UNIX_EPOCH)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .unwrap_or(0)
        });
    } else {
        w.wall_clock = std::sync::Arc::new(|| {
            1_700_000_000_000
                + u64::try_from(turmoil::sim_elapsed().unwrap_or_default().as_millis()).unwrap_or(0)
        });
    }
    w
}

fn addr(i: usize) -> String {
    format!("n{i}:{PORT}")
}

fn transport(timeout: Duration, seed: u64) -> TransportConfig {
    TransportConfig {
        frame_bytes_max: std::num::NonZeroU32::new(16 << 20).unwrap(),
        connect_timeout: Duration::from_millis(200),
        rpc_timeout: timeout,
        idle_per_peer_max: 2,
        inbound_connections_max: 64,
        inbound_idle_timeout: Duration::from_secs(60),
        ..TransportConfig::from_limits(wire(None, seed), &quorate_raft::Limits::default())
    }
}

type Views = Rc<RefCell<BTreeMap<String, watch::Receiver<ClusterView>>>>;

thread_local! {
    /// Each node's elector counters, by name (turmoil runs every host on this thread).
    static ELECTORS: RefCell<BTreeMap<String, std::sync::Arc<quorate_raft::node::ElectorStats>>> =
        RefCell::default();
}

fn elector(name: &str) -> [(&'static str, u64); 5] {
    ELECTORS.with(|m| m.borrow().get(name).map(|s| s.counts()).unwrap_or_default())
}

/// Builds a 3-node cluster whose nodes publish their views into `views`.
fn cluster(seed: u64) -> (Cluster<'static>, Views) {
    quorate_raft::rt::seed_thread_rng(seed);
    let mut c = ClusterBuilder::new(seed)
        .duration(Duration::from_secs(60))
        // Connects queued behind a paused (held) node all arrive at once when it resumes;
        // turmoil panics when a socket's queue passes its capacity instead of refusing.
        .tcp_capacity(4096)
        .build()
        .unwrap();
    let disks: Rc<RefCell<BTreeMap<String, Storage>>> = Rc::default();
    let views: Views = Rc::default();
    let v = views.clone();
    c.add_nodes(NODES, move |ctx: NodeCtx| {
        let storage = disks
            .borrow_mut()
            .entry(ctx.name.clone())
            .or_insert_with(|| Storage::in_memory().unwrap())
            .clone();
        let views = v.clone();
        async move {
            let name = NodeId::new(&ctx.name)?;
            let mut cfg = NodeConfig::new(
                name,
                format!("{}:{PORT}", ctx.name),
                wire(Some(ctx.clock.clone()), ctx.seed),
            );
            cfg.listen_addr = format!("0.0.0.0:{PORT}");
            cfg.timing = Timing::lan();
            if ctx.index == 0 {
                cfg.bootstrap = Some(
                    (1..=NODES)
                        .map(|i| (NodeId::new(format!("n{i}")).unwrap(), addr(i)))
                        .collect(),
                );
            }
            let node = RaftNode::start(cfg, storage, ctx.net).await?;
            views.borrow_mut().insert(ctx.name.clone(), node.view());
            ELECTORS.with(|m| {
                m.borrow_mut()
                    .insert(ctx.name.clone(), node.elector_stats())
            });
            std::future::pending::<()>().await;
            drop(node);
            Ok(())
        }
    })
    .unwrap();
    (c, views)
}

/// Nodes (not crashed) that claim `can_act` now.
fn acting(c: &Cluster<'_>, views: &Views) -> Vec<String> {
    views
        .borrow()
        .iter()
        .filter(|(n, v)| !c.is_crashed(n) && v.borrow().can_act)
        .map(|(n, _)| n.clone())
        .collect()
}

/// Steps until `until` (or until every client is done and `until` passed), failing if two
/// nodes ever claim `can_act` at once.
fn run_checked(
    c: &mut Cluster<'_>,
    views: &Views,
    schedule: &Schedule,
) -> Result<(), ScenarioFailure> {
    let mut faults = schedule.faults.iter().peekable();
    loop {
        while let Some(f) = faults.next_if(|f| f.at <= c.elapsed()) {
            c.apply(&f.fault)?;
        }
        let done = c.step()?;
        let a = acting(c, views);
        if a.len() > 1 {
            return Err(ScenarioFailure::new(format!(
                "two nodes claim can_act at {:?}: {a:?}",
                c.elapsed()
            )));
        }
        if done && faults.peek().is_none() {
            return Ok(());
        }
    }
}

fn value_of(kv: Option<quorate_coord_api::KeyValue>) -> Result<Option<u64>, String> {
    match kv {
        None => Ok(None),
        Some(kv) => {
            let b: [u8; 8] = kv
                .value
                .as_slice()
                .try_into()
                .map_err(|_| format!("value of {} is not 8 bytes", kv.key))?;
            Ok(Some(u64::from_be_bytes(b)))
        }
    }
}

/// The KV scenario (see the module docs).
fn kv_scenario(seed: u64) -> Result<(), ScenarioFailure> {
    let (mut c, views) = cluster(seed);
    let nodes = c.node_names();
    let fault_end = Duration::from_secs(4);
    let clients_end = Duration::from_millis(4500);
    let cfg = NemesisConfig::with_kinds([
        FaultKind::PartitionHalves,
        FaultKind::Isolate,
        FaultKind::Crash,
        FaultKind::Pause,
        FaultKind::LossyLink,
    ])
    .window(Duration::from_millis(600), fault_end)
    .interval(Duration::from_millis(200), Duration::from_millis(600));
    let schedule = Schedule::generate(seed, &nodes, &cfg)?;
    let rec = Recorder::<KvOp, KvRet>::turmoil();
    let addrs: Vec<String> = (1..=NODES).map(addr).collect();
    for k in 0..3u64 {
        let rec = rec.clone();
        let addrs = addrs.clone();
        c.add_client(&format!("c{k}"), move |ctx| async move {
            let mut rng = ctx.seed;
            let mut next = move || {
                rng = rng
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                rng >> 33
            };
            let mut client = RemoteClient::new(
                ctx.net,
                transport(Duration::from_millis(800), ctx.seed),
                addrs,
            );
            let mut p = rec.process();
            let mut counter = 0u64;
            tokio::time::sleep(Duration::from_millis(300)).await;
            while turmoil::sim_elapsed().unwrap_or_default() < clients_end {
                let key = format!("k{}", next() % 3);
                if next() % 2 == 0 {
                    counter += 1;
                    let value = (k + 1) * 1_000_000 + counter;
                    p.invoke(KvOp::Write {
                        key: key.clone(),
                        value,
                    });
                    let cmd = Command::Put {
                        key,
                        value: value.to_be_bytes().to_vec(),
                        lease: None,
                    };
                    match client.propose(&cmd, 3).await {
                        Ok((_, Outcome::Put(_))) => p.ok(KvRet::Done),
                        Ok((_, o)) => p.fail(format!("{o:?}")),
                        Err(e) if e.outcome_unknown() => {
                            p.info(e.to_string());
                            p = rec.process();
                        }
                        Err(e) => p.fail(e.to_string()),
                    }
                } else {
                    p.invoke(KvOp::Read { key: key.clone() });
                    match client.get(&key, 3).await {
                        Ok((_, kv)) => match value_of(kv) {
                            Ok(v) => p.ok(KvRet::Read(v)),
                            Err(e) => return Err(e.into()),
                        },
                        Err(e) => p.fail(e.to_string()),
                    }
                }
                tokio::time::sleep(Duration::from_millis(5 + next() % 20)).await;
            }
            Ok(())
        })?;
    }
    let finals: Rc<RefCell<BTreeMap<String, Option<u64>>>> = Rc::default();
    let f = finals.clone();
    let addrs2 = addrs.clone();
    c.add_client("final", move |ctx| async move {
        // After recovery (the schedule ends with RecoverAll at `fault_end`), read every key.
        tokio::time::sleep(clients_end + Duration::from_millis(1500)).await;
        let mut client = RemoteClient::new(
            ctx.net,
            transport(Duration::from_millis(800), ctx.seed),
            addrs2,
        );
        for k in 0..3 {
            let key = format!("k{k}");
            let mut got = None;
            for _ in 0..50 {
                match client.get(&key, 3).await {
                    Ok((_, kv)) => {
                        got = Some(value_of(kv)?);
                        break;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
            let v = got.ok_or_else(|| format!("final read of {key} never succeeded"))?;
            f.borrow_mut().insert(key, v);
        }
        Ok(())
    })?;
    let fail = |e: ScenarioFailure, rec: &Recorder<KvOp, KvRet>| {
        e.with_schedule(&schedule)
            .with_history_json(rec.history().to_json().unwrap_or_default())
    };
    run_checked(&mut c, &views, &schedule).map_err(|e| fail(e, &rec))?;
    let history = rec.history();
    let acked = history
        .events
        .iter()
        .filter(|e| matches!(e.kind, quorate_sim::EventKind::Ok(_)))
        .count();
    if acked < 30 {
        return Err(fail(
            ScenarioFailure::new(format!(
                "only {acked} operations succeeded: the run proves little"
            )),
            &rec,
        ));
    }
    check_kv(&history, &CheckConfig::default()).map_err(|e| fail(e.into(), &rec))?;
    check_durability(&history, &finals.borrow()).map_err(|e| fail(e.into(), &rec))?;
    Ok(())
}

fn minority_scenario(seed: u64) -> Result<(), ScenarioFailure> {
    let (mut c, views) = cluster(seed);
    let usable = LeaderLease::new(&Timing::lan()).usable();
    let target: Rc<RefCell<Option<String>>> = Rc::default();
    // (invoked at, succeeded) of every request the client sent to the isolated leader.
    let log: Rc<RefCell<Vec<(Duration, bool, String)>>> = Rc::default();
    let (t, l) = (target.clone(), log.clone());
    let isolate_at = Duration::from_millis(1500);
    c.add_client("c", move |ctx| async move {
        tokio::time::sleep(isolate_at).await;
        let Some(leader) = t.borrow().clone() else {
            return Err("no leader to talk to".into());
        };
        let mut client = RemoteClient::new(
            ctx.net,
            transport(Duration::from_millis(300), ctx.seed),
            vec![format!("{leader}:{PORT}")],
        );
        let mut i = 0u64;
        while turmoil::sim_elapsed().unwrap_or_default() < isolate_at + Duration::from_secs(2) {
            i += 1;
            let at = turmoil::sim_elapsed().unwrap_or_default();
            let cmd = Command::Put {
                key: "m".into(),
                value: i.to_be_bytes().to_vec(),
                lease: None,
            };
            let w = client.propose(&cmd, 1).await;
            l.borrow_mut().push((at, w.is_ok(), format!("write {w:?}")));
            let at = turmoil::sim_elapsed().unwrap_or_default();
            let r = client.get("m", 1).await;
            l.borrow_mut().push((at, r.is_ok(), format!("read {r:?}")));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    })?;
    // Find the leader before the isolation.
    c.run_until(isolate_at - Duration::from_millis(10))?;
    let leader = match acting(&c, &views).as_slice() {
        [one] => one.clone(),
        other => {
            return Err(ScenarioFailure::new(format!(
                "expected one leader at 1.5 s, got {other:?}"
            )));
        }
    };
    *target.borrow_mut() = Some(leader.clone());
    let others: Vec<String> = c
        .node_names()
        .into_iter()
        .filter(|n| *n != leader)
        .collect();
    let schedule = Schedule::fixed(
        seed,
        &c.node_names(),
        vec![ScheduledFault {
            at: isolate_at,
            fault: Fault::Partition {
                left: vec![leader.clone()],
                right: others.clone(),
            },
        }],
    );
    // Step, watching when the old leader stops acting and when a new one starts.
    let mut stopped = None;
    let mut new_leader = None;
    let mut faults = schedule.faults.iter().peekable();
    loop {
        while let Some(f) = faults.next_if(|f| f.at <= c.elapsed()) {
            c.apply(&f.fault)?;
        }
        let done = c.step()?;
        let now = c.elapsed();
        let a = acting(&c, &views);
        if a.len() > 1 {
            return Err(ScenarioFailure::new(format!(
                "two nodes claim can_act at {now:?}: {a:?}"
            )));
        }
        if now > isolate_at && stopped.is_none() && !a.contains(&leader) {
            stopped = Some(now);
        }
        if new_leader.is_none() && a.iter().any(|n| others.contains(n)) {
            new_leader = Some(now);
        }
        if done {
            break;
        }
    }
    let stopped =
        stopped.ok_or_else(|| ScenarioFailure::new("the isolated leader never stopped acting"))?;
    let tick = Duration::from_millis(2);
    if stopped > isolate_at + usable + tick {
        return Err(ScenarioFailure::new(format!(
            "the isolated leader acted until {stopped:?}, beyond isolation {isolate_at:?} + lease {usable:?}"
        )));
    }
    match new_leader {
        None => {
            return Err(ScenarioFailure::new(
                "the majority side never elected a leader",
            ));
        }
        Some(n) if n <= stopped => {
            return Err(ScenarioFailure::new(format!(
                "a new leader acted at {n:?}, before the old one stopped at {stopped:?}"
            )));
        }
        Some(_) => {}
    }
    let cutoff = isolate_at + usable + tick;
    for (at, ok, what) in log.borrow().iter() {
        if *at > cutoff && *ok {
            return Err(ScenarioFailure::new(format!(
                "the isolated leader served a request invoked at {at:?} (after {cutoff:?}): {what}"
            )));
        }
    }
    let errs = log
        .borrow()
        .iter()
        .filter(|(at, ok, _)| *at > cutoff && !ok)
        .count();
    if errs == 0 {
        return Err(ScenarioFailure::new(
            "the client sent nothing to the isolated leader after its lease",
        ));
    }
    Ok(())
}

/// The one node claiming `can_act` at 1.5 s (the steady leader), or a failure.
fn steady_leader(
    c: &mut Cluster<'_>,
    views: &Views,
    at: Duration,
) -> Result<String, ScenarioFailure> {
    c.run_until(at)?;
    match acting(c, views).as_slice() {
        [one] => Ok(one.clone()),
        other => Err(ScenarioFailure::new(format!(
            "expected one leader at {at:?}, got {other:?}"
        ))),
    }
}

/// A follower is cut off from both peers for 3 s (symmetric), then the network heals: the
/// leader never stops acting, no other node ever acts, and no node's term rises. Without a
/// pre-vote the isolated follower campaigns at ever higher terms and deposes the leader on the
/// heal (openraft 0.9's own election timer; `node/elector.rs`).
fn heal_scenario(seed: u64) -> Result<(), ScenarioFailure> {
    let (mut c, views) = cluster(seed);
    c.add_client("idle", |_ctx| async { Ok(()) })?;
    let cut_at = Duration::from_millis(1500);
    let leader = steady_leader(&mut c, &views, cut_at)?;
    let term = views.borrow()[&leader].borrow().term;
    let names = c.node_names();
    let follower = names
        .iter()
        .find(|n| **n != leader)
        .cloned()
        .ok_or_else(|| ScenarioFailure::new("no follower"))?;
    let rest: Vec<String> = names.iter().filter(|n| **n != follower).cloned().collect();
    let heal_at = cut_at + Duration::from_secs(3);
    let end = heal_at + Duration::from_secs(3);
    let schedule = Schedule::fixed(
        seed,
        &names,
        vec![
            ScheduledFault {
                at: cut_at,
                fault: Fault::Partition {
                    left: vec![follower.clone()],
                    right: rest,
                },
            },
            ScheduledFault {
                at: heal_at,
                fault: Fault::Heal,
            },
        ],
    );
    let mut faults = schedule.faults.iter().peekable();
    while c.elapsed() < end {
        while let Some(f) = faults.next_if(|f| f.at <= c.elapsed()) {
            c.apply(&f.fault)?;
        }
        c.step()?;
        let now = c.elapsed();
        let a = acting(&c, &views);
        if a != [leader.clone()] {
            return Err(ScenarioFailure::new(format!(
                "at {now:?} the acting nodes are {a:?}, not only the leader {leader}"
            ))
            .with_schedule(&schedule));
        }
        for (name, v) in views.borrow().iter() {
            let t = v.borrow().term;
            if t > term {
                return Err(ScenarioFailure::new(format!(
                    "at {now:?} {name} is at term {t}, above the leader's {term}"
                ))
                .with_schedule(&schedule));
            }
        }
    }
    Ok(())
}

/// The leader crashes: with openraft's own election timer off, the elector alone must elect a
/// new leader, within its longest first wait (`2 x election_max - election_min`) plus one
/// retry after a split vote (`election_max`), a heartbeat of staleness and 150 ms for the
/// pre-votes, the vote and the first commit.
fn crash_scenario(seed: u64) -> Result<(), ScenarioFailure> {
    let (mut c, views) = cluster(seed);
    c.add_client("idle", |_ctx| async { Ok(()) })?;
    let crash_at = Duration::from_millis(1500);
    let leader = steady_leader(&mut c, &views, crash_at)?;
    c.apply(&Fault::Crash {
        node: leader.clone(),
    })?;
    let t = Timing::lan();
    let bound = t.election_max * 3 - t.election_min + t.heartbeat + Duration::from_millis(150);
    let deadline = crash_at + bound;
    while c.elapsed() <= deadline {
        c.step()?;
        let a = acting(&c, &views);
        match a.as_slice() {
            [] => {}
            [one] if *one != leader => {
                // The elector did it: the winner won a pre-vote round and started an
                // election, and the other survivor granted its pre-vote (the only quorum).
                let other = c
                    .node_names()
                    .into_iter()
                    .find(|n| n != one && *n != leader)
                    .unwrap_or_default();
                let (w, o) = (elector(one), elector(&other));
                let get = |c: &[(&str, u64); 5], k: &str| {
                    c.iter().find(|(n, _)| *n == k).map_or(0, |(_, v)| *v)
                };
                if get(&w, "prevote_round_won") == 0
                    || get(&w, "election_started") == 0
                    || get(&o, "prevote_granted") == 0
                {
                    return Err(ScenarioFailure::new(format!(
                        "new leader {one} without the elector's counts: {w:?}; {other}: {o:?}"
                    )));
                }
                return Ok(());
            }
            other => {
                return Err(ScenarioFailure::new(format!(
                    "at {:?} the acting nodes are {other:?}",
                    c.elapsed()
                )));
            }
        }
    }
    Err(ScenarioFailure::new(format!(
        "no new leader acted within {bound:?} of the crash of {leader} at {crash_at:?}"
    )))
}

/// A lock client: grant a lease, queue for lock `L`, hold it for a while renewing every
/// ttl/3, then unlock, or (some rounds) vanish without unlocking so that the lease must
/// expire. Validity counts from the acknowledgement of the grant to the holder's own deadline
/// `last renew sent + ttl * (1 - drift) - margin` (or the unlock, if earlier).
async fn lock_client(
    net: quorate_sim::TurmoilNet,
    seed: u64,
    who: String,
    addrs: Vec<String>,
    until_t: Duration,
    grants: Rc<RefCell<Vec<Grant>>>,
) -> Result<(), Box<dyn std::error::Error>> {
    let now = || turmoil::sim_elapsed().unwrap_or_default();
    let ttl = Duration::from_millis(2000);
    let keep = |sent: Duration| sent + ttl.mul_f64(0.99) - Duration::from_millis(100);
    let mut rng = seed;
    let mut next = move || {
        rng = rng
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        rng >> 33
    };
    let mut client = RemoteClient::new(net, transport(Duration::from_millis(500), seed), addrs);
    let mut round = 0u64;
    while now() < until_t {
        round += 1;
        let sent = now();
        let id = match client
            .propose(
                &Command::LeaseGrant {
                    id: None,
                    ttl_ms: 2000,
                },
                3,
            )
            .await
        {
            Ok((_, Outcome::Lease { id, .. })) => id,
            _ => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let mut deadline = keep(sent);
        let lock = Command::Lock {
            name: "L".into(),
            lease: id,
        };
        // Queue, renewing while waiting; give up this lease when it runs out.
        let granted = loop {
            if now() >= deadline || now() >= until_t {
                break None;
            }
            let sent = now();
            match client.propose(&Command::LeaseKeepAlive { id }, 1).await {
                Ok((_, Outcome::Lease { .. })) => deadline = keep(sent),
                Ok((_, Outcome::Rejected(_))) => break None,
                _ => {}
            }
            match client.propose(&lock, 1).await {
                Ok((_, Outcome::Queued(pos))) => {
                    if let Some(token) = pos.token {
                        break Some((token, pos));
                    }
                }
                Ok((_, Outcome::Rejected(_))) => break None,
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let Some((token, pos)) = granted else {
            continue;
        };
        let from = now();
        if from >= deadline {
            continue;
        }
        let vanish = next() % 3 == 0;
        let hold_until = from + Duration::from_millis(300 + next() % 1500);
        let until = loop {
            let t = now();
            if t >= deadline {
                break deadline;
            }
            if t >= hold_until && !vanish {
                // Stop acting first, then release.
                let _ = client
                    .propose(
                        &Command::Unlock {
                            key: pos.key.clone(),
                            create_revision: pos.create_revision,
                        },
                        2,
                    )
                    .await;
                break t;
            }
            if !vanish || t < hold_until {
                let sent = now();
                match client.propose(&Command::LeaseKeepAlive { id }, 1).await {
                    Ok((_, Outcome::Lease { .. })) => deadline = keep(sent),
                    Ok((_, Outcome::Rejected(_))) => break now().min(deadline),
                    _ => {}
                }
            }
            tokio::time::sleep(ttl / 3 - Duration::from_millis(next() % 100)).await;
        };
        grants.borrow_mut().push(Grant {
            resource: "L".into(),
            holder: format!("{who}/{round}"),
            token: token.0,
            from,
            until,
        });
    }
    Ok(())
}

fn lock_scenario(seed: u64) -> Result<(), ScenarioFailure> {
    let (mut c, views) = cluster(seed);
    let nodes = c.node_names();
    let cfg = NemesisConfig::with_kinds([
        FaultKind::PartitionHalves,
        FaultKind::Isolate,
        FaultKind::Crash,
        FaultKind::Pause,
    ])
    .window(Duration::from_millis(800), Duration::from_millis(4500))
    .interval(Duration::from_millis(300), Duration::from_millis(900));
    let schedule = Schedule::generate(seed, &nodes, &cfg)?;
    let grants: Rc<RefCell<Vec<Grant>>> = Rc::default();
    let addrs: Vec<String> = (1..=NODES).map(addr).collect();
    for k in 0..3 {
        let (g, a) = (grants.clone(), addrs.clone());
        c.add_client(&format!("l{k}"), move |ctx| async move {
            tokio::time::sleep(Duration::from_millis(300 + 50 * k)).await;
            lock_client(
                ctx.net,
                ctx.seed,
                ctx.name,
                a,
                Duration::from_millis(9500),
                g,
            )
            .await
        })?;
    }
    run_checked(&mut c, &views, &schedule).map_err(|e| e.with_schedule(&schedule))?;
    let grants = grants.borrow().clone();
    if grants.len() < 2 {
        let list: Vec<String> = grants.iter().map(ToString::to_string).collect();
        return Err(ScenarioFailure::new(format!(
            "only {} grant(s): no handover was exercised: {list:?}",
            grants.len()
        ))
        .with_schedule(&schedule));
    }
    check_mutual_exclusion(&grants).map_err(|e| {
        let list: Vec<String> = grants.iter().map(ToString::to_string).collect();
        ScenarioFailure::new(format!("{e}\ngrants:\n{}", list.join("\n"))).with_schedule(&schedule)
    })?;
    Ok(())
}

#[test]
fn raft_kv_linearizable() {
    Runner::new(env!("CARGO_PKG_NAME"), "raft_kv_linearizable")
        .default_seeds(100)
        .run(kv_scenario);
}

#[test]
fn raft_minority_leader_stops() {
    Runner::new(env!("CARGO_PKG_NAME"), "raft_minority_leader_stops")
        .default_seeds(100)
        .run(minority_scenario);
}

#[test]
fn raft_heal_keeps_the_leader() {
    Runner::new(env!("CARGO_PKG_NAME"), "raft_heal_keeps_the_leader")
        .default_seeds(100)
        .run(heal_scenario);
}

#[test]
fn raft_leader_crash_is_repaired_within_the_elector_bound() {
    Runner::new(
        env!("CARGO_PKG_NAME"),
        "raft_leader_crash_is_repaired_within_the_elector_bound",
    )
    .default_seeds(100)
    .run(crash_scenario);
}

#[test]
fn raft_lock_mutual_exclusion() {
    Runner::new(env!("CARGO_PKG_NAME"), "raft_lock_mutual_exclusion")
        .default_seeds(100)
        .run(lock_scenario);
}

/// The same seed gives the same run: each scenario (partitions, crashes, pauses, loss;
/// openraft's election timeouts from the seeded thread RNG) is run twice per seed, with tokio's
/// process-wide task-id counter and std's hash keys advanced in between, and the two runs'
/// traces (every segment turmoil sent and delivered, in hex, and quorate's debug events) must
/// be identical.
///
/// Seeds 3, 14 and 15 once diverged on their second run in one process: a crash drops a host's
/// tasks in an order that depended on the task-id counter, and every closed stream draws its
/// FIN's latency from turmoil's one RNG (fixed in `quorate_sim::net`, issue 17).
#[test]
fn raft_scenarios_replay_byte_for_byte() {
    type Scenario = fn(u64) -> Result<(), ScenarioFailure>;
    let scenarios: [(&str, Scenario); 3] = [
        ("raft_replay_kv_linearizable", |s| {
            quorate_sim::replay::check_replay(s, kv_scenario)?.verdict
        }),
        ("raft_replay_minority_leader_stops", |s| {
            quorate_sim::replay::check_replay(s, minority_scenario)?.verdict
        }),
        ("raft_replay_lock_mutual_exclusion", |s| {
            quorate_sim::replay::check_replay(s, lock_scenario)?.verdict
        }),
    ];
    for (name, scenario) in scenarios {
        Runner::new(env!("CARGO_PKG_NAME"), name)
            .test_name("raft_scenarios_replay_byte_for_byte")
            .default_seed_list(&[3, 14, 15])
            .run(scenario);
    }
}
