//! Whole-cluster simulation scenarios of quorate-membership, over many seeds.
//!
//! Two harnesses:
//! - the discrete-event simulator of the crate (`quorate_sim::membership`), which drives
//!   the real cores with seeded loss, latency, partitions, crashes and true pauses: fast enough
//!   for 32 nodes over 10 simulated minutes;
//! - turmoil through `quorate-sim` (`TurmoilNet`): the full stack, sockets and wire
//!   authentication included.
//!
//! Seeds: `QUORATE_SIM_SEEDS` (count), `QUORATE_SIM_SEED` (replay one); a failure prints the
//! scenario, the seed and the replay command.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroUsize;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use quorate_health_api::{CheckId, ComponentType, HealthStatus, HealthView, ManualHealthView};
use quorate_membership::{MembershipConfig, MembershipHandle, Profile, start};
use quorate_membership_api::{
    HealthSummary, MemberMeta, MemberState, Membership, MembershipSnapshot, SplitBrainStatus,
    conformance,
};
use quorate_sim::membership::{Seen, Sim, SimConfig, id_of};
use quorate_sim::{Clock, Cluster, ClusterBuilder, Fault, NodeCtx, Runner, ScenarioFailure};
use quorate_types::{NodeId, NodeMeta, RoleName};
use quorate_wire::{ClusterKey, KeyRing, WireConfig};

type R = Result<(), ScenarioFailure>;

fn fail(msg: impl Into<String>) -> ScenarioFailure {
    ScenarioFailure::new(msg)
}

fn runner(scenario: &str, seeds: u64) -> Runner {
    Runner::new("quorate-membership", scenario).default_seeds(seeds)
}

const TICK: Duration = Duration::from_millis(10);

/// Starts `n` nodes (lan profile) and waits until every node sees every other alive.
fn formed(n: usize, seed: u64, profile: Profile) -> Result<Sim, ScenarioFailure> {
    let mut sim = Sim::new(SimConfig::new(n, profile, seed));
    sim.start_all();
    let all: Vec<usize> = (0..n).collect();
    sim.run_until(Duration::from_secs(30), TICK, |s| {
        s.all_see(&all, &all, MemberState::Alive)
    })
    .ok_or_else(|| fail(format!("{n} nodes did not form within 30 s")))?;
    for i in 0..n {
        let snap = sim
            .snapshot(i)
            .ok_or_else(|| fail(format!("n{i} not running")))?;
        conformance::check_snapshot(&snap).map_err(|e| fail(format!("n{i}: {e}")))?;
    }
    Ok(sim)
}

fn no_false_downs(sim: &Sim, dead: &[usize]) -> R {
    let bad: Vec<_> = sim
        .events()
        .iter()
        .filter(|e| e.seen == Seen::Down && !dead.contains(&e.subject))
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(fail(format!(
            "{} false MemberDown events, first: {:?}",
            bad.len(),
            bad.first()
        )))
    }
}

fn others(n: usize, not: &[usize]) -> Vec<usize> {
    (0..n).filter(|i| !not.contains(i)).collect()
}

#[test]
fn formation_two_and_three_nodes() {
    runner("formation_two_and_three_nodes", 50).run(|seed| {
        for n in [2, 3] {
            let sim = formed(n, seed, Profile::lan())?;
            for i in 0..n {
                let snap = sim.snapshot(i).unwrap();
                if snap.members.len() != n || !snap.quorum.has_majority || !snap.joined {
                    return Err(fail(format!("n{i} of {n}: {snap:?}")));
                }
            }
            no_false_downs(&sim, &[])?;
        }
        Ok(())
    });
}

#[test]
fn formation_five_through_one_seed() {
    // Every node's only seed is n0.
    runner("formation_five_through_one_seed", 50).run(|seed| {
        let sim = formed(5, seed, Profile::lan())?;
        if sim.elapsed() > Duration::from_secs(3) {
            return Err(fail(format!("formation took {:?}", sim.elapsed())));
        }
        no_false_downs(&sim, &[])
    });
}

#[test]
fn crash_detected_by_all() {
    runner("crash_detected_by_all", 50).run(|seed| {
        let mut sim = formed(5, seed, Profile::lan())?;
        sim.run_for(Duration::from_millis(seed % 700));
        let victim = 1 + (seed as usize % 4);
        sim.crash(victim);
        let live = others(5, &[victim]);
        sim.run_until(Duration::from_secs(10), TICK, |s| {
            s.all_see(&live, &[victim], MemberState::Down)
        })
        .ok_or_else(|| fail(format!("crash of n{victim} not detected by all in 10 s")))?;
        no_false_downs(&sim, &[victim])?;
        for i in &live {
            let snap = sim.snapshot(*i).unwrap();
            conformance::check_snapshot(&snap).map_err(fail)?;
            if !snap.quorum.has_majority || snap.quorum.voters_reachable != 4 {
                return Err(fail(format!("n{i} quorum {:?}", snap.quorum)));
            }
        }
        Ok(())
    });
}

#[test]
fn graceful_leave_is_not_a_failure() {
    runner("graceful_leave_is_not_a_failure", 50).run(|seed| {
        let mut sim = formed(5, seed, Profile::lan())?;
        let leaver = 1 + (seed as usize % 4);
        sim.leave(leaver);
        let live = others(5, &[leaver]);
        sim.run_until(Duration::from_secs(5), TICK, |s| {
            s.all_see(&live, &[leaver], MemberState::Left)
        })
        .ok_or_else(|| fail(format!("leave of n{leaver} not seen as Left by all in 5 s")))?;
        sim.run_for(Duration::from_secs(10));
        if !sim.all_see(&live, &[leaver], MemberState::Left) {
            return Err(fail("Left did not stick"));
        }
        if let Some(e) = sim
            .events()
            .iter()
            .find(|e| e.subject == leaver && e.seen == Seen::Down)
        {
            return Err(fail(format!("leave reported as failure: {e:?}")));
        }
        no_false_downs(&sim, &[])
    });
}

#[test]
fn restart_rejoins_with_new_incarnation() {
    runner("restart_rejoins_with_new_incarnation", 50).run(|seed| {
        let mut sim = formed(5, seed, Profile::lan())?;
        let node = 1 + (seed as usize % 4);
        let old = sim.core(node).unwrap().local().incarnation;
        sim.crash(node);
        // Half the seeds restart before the crash is detected, half after.
        if seed % 2 == 0 {
            let live = others(5, &[node]);
            sim.run_until(Duration::from_secs(10), TICK, |s| {
                s.all_see(&live, &[node], MemberState::Down)
            })
            .ok_or_else(|| fail("crash not detected"))?;
        } else {
            sim.run_for(Duration::from_millis(200));
        }
        sim.restart(node);
        let all: Vec<usize> = (0..5).collect();
        let renewed = |s: &Sim| {
            others(5, &[node]).iter().all(|i| {
                s.snapshot(*i)
                    .and_then(|snap| snap.member(&id_of(node)).map(|m| m.incarnation > old))
                    .unwrap_or(false)
            })
        };
        sim.run_until(Duration::from_secs(10), TICK, |s| {
            s.all_see(&all, &all, MemberState::Alive) && renewed(s)
        })
        .ok_or_else(|| fail(format!("n{node} did not rejoin in 10 s")))?;
        for i in others(5, &[node]) {
            let snap = sim.snapshot(i).unwrap();
            let m = snap.member(&id_of(node)).unwrap();
            if m.incarnation <= old {
                return Err(fail(format!(
                    "n{i} holds n{node} at incarnation {} <= {old}",
                    m.incarnation
                )));
            }
        }
        no_false_downs(&sim, &[node])
    });
}

fn split_status(snap: &MembershipSnapshot) -> &'static str {
    match snap.split_brain {
        SplitBrainStatus::NotConfigured => "not-configured",
        SplitBrainStatus::Healthy => "healthy",
        SplitBrainStatus::InMinority { .. } => "minority",
        SplitBrainStatus::ConflictingViews { .. } => "conflict",
    }
}

#[test]
fn partition_minority_reports_split_brain_and_heals() {
    runner("partition_minority_reports_split_brain_and_heals", 30).run(|seed| {
        let mut sim = formed(5, seed, Profile::lan())?;
        // {n0, n1} | {n2, n3, n4}
        sim.partition(vec![0, 0, 1, 1, 1]);
        let (minority, majority) = ([0usize, 1], [2usize, 3, 4]);
        sim.run_until(Duration::from_secs(20), TICK, |s| {
            s.all_see(&minority, &majority, MemberState::Down)
                && s.all_see(&majority, &minority, MemberState::Down)
        })
        .ok_or_else(|| fail("the sides did not see each other down in 20 s"))?;
        for i in minority {
            let snap = sim.snapshot(i).unwrap();
            conformance::check_snapshot(&snap).map_err(fail)?;
            if snap.quorum.has_majority || split_status(&snap) != "minority" {
                return Err(fail(format!(
                    "minority n{i}: {:?} {:?}",
                    snap.quorum, snap.split_brain
                )));
            }
        }
        for i in majority {
            let snap = sim.snapshot(i).unwrap();
            conformance::check_snapshot(&snap).map_err(fail)?;
            if !snap.quorum.has_majority || split_status(&snap) != "healthy" {
                return Err(fail(format!(
                    "majority n{i}: {:?} {:?}",
                    snap.quorum, snap.split_brain
                )));
            }
        }
        sim.heal();
        let all: Vec<usize> = (0..5).collect();
        sim.run_until(Duration::from_secs(40), TICK, |s| {
            s.all_see(&all, &all, MemberState::Alive)
        })
        .ok_or_else(|| fail("did not converge within 40 s of the heal"))?;
        // Views settle (voters republish them after the heal).
        sim.run_for(Duration::from_secs(5));
        for i in all {
            let snap = sim.snapshot(i).unwrap();
            conformance::check_snapshot(&snap).map_err(fail)?;
            if split_status(&snap) != "healthy" || snap.quorum.voters_reachable != 5 {
                return Err(fail(format!(
                    "after heal n{i}: {:?} {:?}",
                    snap.quorum, snap.split_brain
                )));
            }
        }
        Ok(())
    });
}

fn meta(version: &str, health: HealthStatus) -> MemberMeta {
    MemberMeta {
        node: NodeMeta {
            api_addr: Some("10.0.0.3:8080".into()),
            version: version.into(),
            roles: [RoleName::new("telegram-poller").unwrap()].into(),
            tags: [("zone".to_owned(), "b".to_owned())].into(),
        },
        health: HealthSummary {
            status: health,
            healthy: 2,
            total: 3,
        },
    }
}

#[test]
fn metadata_change_reaches_all_members() {
    runner("metadata_change_reaches_all_members", 50).run(|seed| {
        let mut sim = formed(5, seed, Profile::lan())?;
        let who = seed as usize % 5;
        for (round, (v, h)) in [
            ("1.1.0", HealthStatus::Passing),
            ("1.2.0", HealthStatus::Critical),
        ]
        .into_iter()
        .enumerate()
        {
            let m = meta(v, h);
            sim.set_meta(who, m.clone());
            sim.run_until(Duration::from_secs(5), TICK, |s| {
                (0..5).all(|i| {
                    s.snapshot(i)
                        .and_then(|snap| snap.member(&id_of(who)).map(|x| x.meta == m))
                        .unwrap_or(false)
                })
            })
            .ok_or_else(|| {
                fail(format!(
                    "round {round}: metadata of n{who} did not reach all in 5 s"
                ))
            })?;
        }
        let meta_events = sim
            .events()
            .iter()
            .filter(|e| e.subject == who && e.seen == Seen::Meta)
            .count();
        if meta_events < 8 {
            return Err(fail(format!("only {meta_events} MetadataChanged events")));
        }
        Ok(())
    });
}

#[test]
fn no_false_down_32_nodes_5pct_loss_10_minutes() {
    runner("no_false_down_32_nodes_5pct_loss_10_minutes", 2).run(|seed| {
        let mut sim = formed(32, seed, Profile::lan())?;
        sim.clear_events();
        sim.set_loss(0.05);
        sim.run_for(Duration::from_secs(600));
        no_false_downs(&sim, &[])?;
        let all: Vec<usize> = (0..32).collect();
        if !sim.all_see(&all, &all, MemberState::Alive) {
            return Err(fail("not everyone alive at the end"));
        }
        Ok(())
    });
}

#[test]
fn lifeguard_paused_node_declares_no_healthy_peer_down() {
    runner("lifeguard_paused_node_declares_no_healthy_peer_down", 50).run(|seed| {
        let profile = Profile::lan();
        let pause = profile.probe_interval * 2;
        let mut sim = formed(8, seed, profile)?;
        sim.run_for(Duration::from_millis(seed % 997));
        let slow = 1 + seed as usize % 7;
        sim.clear_events();
        sim.pause(slow, pause);
        sim.run_for(Duration::from_secs(30));
        let by_it: Vec<_> = sim
            .events()
            .iter()
            .filter(|e| e.observer == slow && e.seen == Seen::Down)
            .collect();
        if !by_it.is_empty() {
            return Err(fail(format!(
                "paused n{slow} declared healthy peers down: {by_it:?}"
            )));
        }
        let all: Vec<usize> = (0..8).collect();
        if !sim.all_see(&all, &all, MemberState::Alive) {
            return Err(fail("cluster did not settle back to all alive"));
        }
        Ok(())
    });
}

/// Lifeguard's own model: one node processes inbound datagrams 2 s late (above the 1.2 s
/// suspicion timeout) while its timers fire on time. With local health it declares no healthy
/// peer down; with the mechanism disabled (multiplier 1) the same seed does, which shows the
/// scenario exercises it.
#[test]
fn lifeguard_slow_node_declares_no_healthy_peer_down() {
    runner("lifeguard_slow_node_declares_no_healthy_peer_down", 20).run(|seed| {
        let mut downs = [0usize; 2];
        for (k, mult) in [8u8, 1].into_iter().enumerate() {
            let mut profile = Profile::lan();
            profile.local_health_max_multiplier = mult;
            let mut sim = formed(8, seed, profile)?;
            let slow = 1 + seed as usize % 7;
            sim.clear_events();
            sim.set_slow(slow, Duration::from_secs(2));
            sim.run_for(Duration::from_secs(30));
            downs[k] = sim
                .events()
                .iter()
                .filter(|e| e.observer == slow && e.seen == Seen::Down && e.subject != slow)
                .count();
        }
        if downs[0] != 0 {
            return Err(fail(format!(
                "with local health the slow node declared {} peers down",
                downs[0]
            )));
        }
        if downs[1] == 0 {
            return Err(fail(
                "without local health the slow node declared nobody down: scenario too weak",
            ));
        }
        Ok(())
    });
}

// ------------------------------------------------------------------ turmoil, full stack

type Handles = Rc<RefCell<BTreeMap<String, MembershipHandle>>>;
type Outcomes = Rc<RefCell<BTreeMap<String, String>>>;

#[derive(Clone)]
struct Spec {
    id: String,
    cluster: &'static str,
    key: u8,
    seeds: Vec<String>,
    bootstrap: bool,
    voters: BTreeSet<NodeId>,
    health: Option<Arc<ManualHealthView>>,
}

impl Spec {
    fn member(id: &str, voters: &[&str]) -> Self {
        Self {
            id: id.to_owned(),
            cluster: "quorate-test",
            key: 7,
            seeds: vec!["n1:7946".to_owned(), "n2:7946".to_owned()],
            bootstrap: id == "n1",
            voters: voters.iter().map(|v| NodeId::new(*v).unwrap()).collect(),
            health: None,
        }
    }
}

struct World<'a> {
    cluster: Cluster<'a>,
    handles: Handles,
    outcomes: Outcomes,
}

impl<'a> World<'a> {
    fn new(seed: u64) -> Self {
        let cluster = ClusterBuilder::new(seed)
            .duration(Duration::from_secs(600))
            .build()
            .unwrap();
        Self {
            cluster,
            handles: Rc::default(),
            outcomes: Rc::default(),
        }
    }

    fn add(&mut self, host: &str, spec: Spec) {
        let handles = self.handles.clone();
        let outcomes = self.outcomes.clone();
        let host_name = host.to_owned();
        self.cluster
            .add_node(host, move |ctx: NodeCtx| {
                let spec = spec.clone();
                let handles = handles.clone();
                let outcomes = outcomes.clone();
                let host = host_name.clone();
                async move {
                    let mut cfg =
                        MembershipConfig::new(NodeId::new(spec.id.clone())?, "0.0.0.0:7946");
                    cfg.advertise_addr = Some(format!("{}:7946", ctx.name));
                    cfg.seeds = spec.seeds.clone();
                    cfg.bootstrap = spec.bootstrap && ctx.incarnation == 0;
                    cfg.voters = spec.voters.clone();
                    cfg.incarnation = Some(1 + ctx.incarnation);
                    cfg.rng_seed = Some(ctx.seed);
                    let key = ClusterKey::from_bytes([spec.key; 32]);
                    let mut wire = WireConfig::new(spec.cluster, KeyRing::new(key, vec![]))?;
                    // Session ids and challenges from the seed: the datagrams replay.
                    wire.random = quorate_sim::replay::seeded_random(ctx.seed);
                    let clock = ctx.clock.clone();
                    wire.wall_clock = Arc::new(move || {
                        clock
                            .wall()
                            .duration_since(UNIX_EPOCH)
                            .map(|d| d.as_millis() as u64)
                            .unwrap_or(0)
                    });
                    let health = spec.health.clone().map(|h| h as Arc<dyn HealthView>);
                    let handle = start(ctx.net, cfg, wire, health).await?;
                    handles.borrow_mut().insert(host.clone(), handle.clone());
                    let r = handle.stopped().await;
                    outcomes.borrow_mut().insert(host, format!("{r:?}"));
                    Ok(())
                }
            })
            .unwrap();
    }

    fn snap(&self, host: &str) -> Option<MembershipSnapshot> {
        if self.cluster.is_crashed(host) {
            return None;
        }
        self.handles.borrow().get(host).map(|h| h.snapshot())
    }

    /// Every observer holds `state` for every subject node id.
    fn sees(&self, observers: &[&str], subjects: &[&str], state: MemberState) -> bool {
        observers.iter().all(|o| {
            self.snap(o).is_some_and(|snap| {
                subjects.iter().filter(|s| *s != o).all(|s| {
                    snap.member(&NodeId::new(*s).unwrap())
                        .is_some_and(|m| m.state == state)
                })
            })
        })
    }

    fn run_until(&mut self, max: Duration, what: &str, mut cond: impl FnMut(&Self) -> bool) -> R {
        let end = self.cluster.elapsed() + max;
        loop {
            if cond(self) {
                return Ok(());
            }
            if self.cluster.elapsed() >= end {
                return Err(fail(format!(
                    "{what}: not reached within {max:?} (at {:?})",
                    self.cluster.elapsed()
                )));
            }
            for _ in 0..10 {
                self.cluster.step().map_err(ScenarioFailure::from)?;
            }
        }
    }

    fn run_for(&mut self, d: Duration) -> R {
        let end = self.cluster.elapsed() + d;
        self.cluster.run_until(end).map_err(ScenarioFailure::from)
    }
}

const N5: [&str; 5] = ["n1", "n2", "n3", "n4", "n5"];

#[test]
fn turmoil_cluster_crash_restart_partition_heal() {
    runner("turmoil_cluster_crash_restart_partition_heal", 3).run(crash_restart_partition_heal);
}

/// The same seed gives the same run (issue 17): the crash, restart, partition and heal
/// scenario on turmoil, run twice per seed with the process-wide task-id counter and hash keys
/// disturbed in between; the traces (every datagram in hex, quorate's debug events) must be
/// identical.
#[test]
fn membership_scenario_replays_byte_for_byte() {
    runner("membership_replay_crash_restart_partition_heal", 2)
        .test_name("membership_scenario_replays_byte_for_byte")
        .default_seed_list(&[3, 14])
        .run(|seed| quorate_sim::replay::check_replay(seed, crash_restart_partition_heal)?.verdict);
}

fn crash_restart_partition_heal(seed: u64) -> Result<(), ScenarioFailure> {
    {
        let mut w = World::new(seed);
        for n in N5 {
            w.add(n, Spec::member(n, &N5));
        }
        w.run_until(Duration::from_secs(10), "5 nodes form", |w| {
            w.sees(&N5, &N5, MemberState::Alive)
        })?;
        for n in N5 {
            conformance::check_snapshot(&w.snap(n).unwrap()).map_err(fail)?;
        }
        w.cluster.crash("n5").map_err(ScenarioFailure::from)?;
        w.run_until(Duration::from_secs(10), "crash of n5 seen by all", |w| {
            w.sees(&["n1", "n2", "n3", "n4"], &["n5"], MemberState::Down)
        })?;
        w.cluster.restart("n5").map_err(ScenarioFailure::from)?;
        w.run_until(Duration::from_secs(10), "n5 rejoins", |w| {
            w.sees(&N5, &N5, MemberState::Alive)
        })?;
        let minority = ["n1", "n2"];
        let majority = ["n3", "n4", "n5"];
        w.cluster
            .apply(&Fault::Partition {
                left: minority.iter().map(|s| (*s).to_owned()).collect(),
                right: majority.iter().map(|s| (*s).to_owned()).collect(),
            })
            .map_err(ScenarioFailure::from)?;
        w.run_until(
            Duration::from_secs(20),
            "each side sees the other down",
            |w| {
                w.sees(&minority, &majority, MemberState::Down)
                    && w.sees(&majority, &minority, MemberState::Down)
            },
        )?;
        for n in minority {
            let s = w.snap(n).unwrap();
            if s.quorum.has_majority || split_status(&s) != "minority" {
                return Err(fail(format!(
                    "minority {n}: {:?} {:?}",
                    s.quorum, s.split_brain
                )));
            }
        }
        for n in majority {
            let s = w.snap(n).unwrap();
            if !s.quorum.has_majority || split_status(&s) != "healthy" {
                return Err(fail(format!(
                    "majority {n}: {:?} {:?}",
                    s.quorum, s.split_brain
                )));
            }
        }
        w.cluster
            .apply(&Fault::Heal)
            .map_err(ScenarioFailure::from)?;
        w.run_until(Duration::from_secs(40), "heal converges", |w| {
            w.sees(&N5, &N5, MemberState::Alive)
                && N5
                    .iter()
                    .all(|n| w.snap(n).is_some_and(|s| split_status(&s) == "healthy"))
        })?;
        // Every datagram was authenticated: nothing was dropped as foreign.
        for n in N5 {
            let m = w.handles.borrow()[n].metrics();
            if m.dropped_auth + m.dropped_wrong_cluster + m.dropped_malformed > 0 {
                return Err(fail(format!("{n} dropped datagrams: {m:?}")));
            }
        }
        Ok(())
    }
}

#[test]
fn turmoil_node_of_another_cluster_never_joins() {
    runner("turmoil_node_of_another_cluster_never_joins", 3).run(|seed| {
        let mut w = World::new(seed);
        let three = ["n1", "n2", "n3"];
        for n in three {
            w.add(n, Spec::member(n, &three));
        }
        let mut other_key = Spec::member("x1", &[]);
        other_key.key = 9;
        other_key.bootstrap = false;
        w.add("x1", other_key);
        let mut other_name = Spec::member("x2", &[]);
        other_name.cluster = "other-cluster";
        other_name.bootstrap = false;
        w.add("x2", other_name);
        w.run_until(Duration::from_secs(10), "3 nodes form", |w| {
            w.sees(&three, &three, MemberState::Alive)
        })?;
        w.run_for(Duration::from_secs(20))?;
        for n in three {
            let s = w.snap(n).unwrap();
            if s.members.len() != 3 {
                return Err(fail(format!(
                    "{n} sees {} members: {:?}",
                    s.members.len(),
                    s.members
                )));
            }
        }
        for x in ["x1", "x2"] {
            let s = w.snap(x).unwrap();
            if s.joined || s.members.len() != 1 {
                return Err(fail(format!("{x} joined: {s:?}")));
            }
        }
        let (auth, wrong): (u64, u64) = ["n1", "n2"]
            .iter()
            .map(|n| w.handles.borrow()[*n].metrics())
            .fold((0, 0), |(a, b), m| {
                (a + m.dropped_auth, b + m.dropped_wrong_cluster)
            });
        if auth == 0 || wrong == 0 {
            return Err(fail(format!(
                "foreign datagrams not counted: auth {auth}, wrong cluster {wrong}"
            )));
        }
        Ok(())
    });
}

#[test]
fn turmoil_duplicate_node_id_is_reported() {
    runner("turmoil_duplicate_node_id_is_reported", 3).run(|seed| {
        let mut w = World::new(seed);
        w.add("n1", Spec::member("n1", &[]));
        w.add("n2", Spec::member("n2", &[]));
        // Host n3 wrongly reuses node id n2.
        w.add("n3", Spec::member("n2", &[]));
        w.run_until(Duration::from_secs(20), "duplicate reported", |w| {
            w.outcomes
                .borrow()
                .values()
                .any(|o| o.contains("DuplicateNodeId"))
        })?;
        Ok(())
    });
}

#[test]
fn turmoil_health_summary_reaches_all_members() {
    runner("turmoil_health_summary_reaches_all_members", 3).run(|seed| {
        let mut w = World::new(seed);
        let three = ["n1", "n2", "n3"];
        let view = Arc::new(ManualHealthView::new(NonZeroUsize::new(16).unwrap()));
        for n in three {
            let mut spec = Spec::member(n, &three);
            if n == "n2" {
                spec.health = Some(view.clone());
            }
            w.add(n, spec);
        }
        w.run_until(Duration::from_secs(10), "3 nodes form", |w| {
            w.sees(&three, &three, MemberState::Alive)
        })?;
        let n2 = NodeId::new("n2").unwrap();
        let status_of = |w: &World<'_>, n: &str| {
            w.snap(n)
                .and_then(|s| s.member(&n2).map(|m| m.meta.health.status))
        };
        w.run_until(Duration::from_secs(5), "passing health seen", |w| {
            three
                .iter()
                .all(|n| status_of(w, n) == Some(HealthStatus::Passing))
        })?;
        view.set(
            CheckId::new("db").unwrap(),
            ComponentType::Database,
            HealthStatus::Critical,
            "connection refused",
        );
        w.run_until(Duration::from_secs(5), "critical health seen by all", |w| {
            three
                .iter()
                .all(|n| status_of(w, n) == Some(HealthStatus::Critical))
        })?;
        Ok(())
    });
}

/// After a partition heals, every member sees every other `Alive` within 2 s (issue 16). Seeds
/// vary the cluster (3 or 5), the cut (one node isolated, or 2 against 3) and its length (2, 3
/// or 10 s: long enough for both sides to suspect and declare each other down). Before the
/// suspicion was re-sent and down members were contacted every 0.5 s (they were every 10 s),
/// a 2 s cut of one node of three took up to 42 s to heal in the views.
#[test]
fn heal_every_view_is_alive_within_2s() {
    runner("heal_every_view_is_alive_within_2s", 100).run(|seed| {
        let n = if seed % 2 == 0 { 3 } else { 5 };
        let cut = [2u64, 3, 10][(seed / 2 % 3) as usize];
        let groups: Vec<u8> = match (n, seed / 6 % 2) {
            (5, 1) => vec![0, 0, 1, 1, 1],
            _ => (0..n).map(|i| u8::from(i != seed as usize % n)).collect(),
        };
        let mut sim = formed(n, seed, Profile::lan())?;
        sim.partition(groups.clone());
        sim.run_for(Duration::from_secs(cut));
        sim.heal();
        let all: Vec<usize> = (0..n).collect();
        sim.run_until(Duration::from_secs(2), TICK, |s| {
            s.all_see(&all, &all, MemberState::Alive)
        })
        .ok_or_else(|| {
            let views: Vec<String> = all
                .iter()
                .map(|o| {
                    let row: Vec<String> = all
                        .iter()
                        .map(|x| format!("{:?}", sim.state(*o, *x)))
                        .collect();
                    format!("n{o}: {}", row.join(","))
                })
                .collect();
            fail(format!(
                "{n} nodes, groups {groups:?}, cut {cut} s: not all Alive 2 s after the heal: {}",
                views.join(" | ")
            ))
        })?;
        Ok(())
    });
}
