//! Property tests of the pure policy core: whatever the observations and operations, it never
//! names a new primary while one holds the role, never picks an ineligible node, and a healthy
//! cluster always ends with exactly one primary.
#![allow(clippy::unwrap_used, reason = "test")]

use std::num::NonZeroU32;
use std::time::Duration;

use proptest::prelude::*;
use quorate_failover::policy::config::PolicyConfig;
use quorate_failover::policy::{
    Action, Cause, Hold, NodeHealth, NodeView, Observations, RolePolicy,
};

const IDS: [&str; 4] = ["a", "b", "c", "d"];

#[derive(Clone, Debug)]
struct ViewSpec {
    health: u8,
    reachable: bool,
    in_majority: bool,
    no_failover: bool,
    maintenance: bool,
    priority: u32,
    lag: Option<u64>,
    coord_leader: bool,
}

fn view_spec() -> impl Strategy<Value = ViewSpec> {
    (
        0u8..8,
        prop::bool::weighted(0.85),
        prop::bool::weighted(0.85),
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.1),
        0u32..4,
        prop::option::weighted(0.8, 0u64..200),
        prop::bool::weighted(0.3),
    )
        .prop_map(
            |(
                health,
                reachable,
                in_majority,
                no_failover,
                maintenance,
                priority,
                lag,
                coord_leader,
            )| {
                ViewSpec {
                    health,
                    reachable,
                    in_majority,
                    no_failover,
                    maintenance,
                    priority,
                    lag,
                    coord_leader,
                }
            },
        )
}

fn to_view(id: &'static str, s: &ViewSpec) -> NodeView<&'static str> {
    let mut v = NodeView::new(id);
    v.health = match s.health {
        0 => NodeHealth::Unhealthy,
        1 => NodeHealth::Unknown,
        2 => NodeHealth::Degraded,
        _ => NodeHealth::Healthy,
    };
    v.reachable = s.reachable;
    v.in_majority = s.in_majority;
    v.no_failover = s.no_failover;
    v.maintenance = s.maintenance;
    v.priority = s.priority;
    v.lag = s.lag;
    v.coord_leader = s.coord_leader;
    v
}

/// What the world does to the lease between steps (other observers, crashes).
#[derive(Clone, Debug)]
enum World {
    /// Apply the policy's last action.
    Apply,
    /// Leave the lease alone.
    Keep,
    /// The lease lapses.
    Lapse,
    /// Some node grabs a free lease (another observer's decision).
    Grab(usize),
}

#[derive(Clone, Debug)]
enum Op {
    Step {
        dt_ms: u64,
        views: Vec<ViewSpec>,
        lag_tracked: bool,
        /// The coordination store reports no leader.
        leaderless: bool,
        world: World,
    },
    Veto(usize),
    Pause(u64),
    Resume,
    Switchover(Option<usize>),
    Failover(Option<usize>),
    Failback,
    /// A manual failback approving the one to this node.
    Approve(usize),
    /// Postpone failbacks this long.
    Postpone(u64),
    Cancel,
}

fn op() -> impl Strategy<Value = Op> {
    let world = prop_oneof![
        6 => Just(World::Apply),
        2 => Just(World::Keep),
        1 => Just(World::Lapse),
        1 => (0..IDS.len()).prop_map(World::Grab),
    ];
    prop_oneof![
        12 => (0u64..3000, prop::collection::vec(view_spec(), IDS.len()), prop::bool::weighted(0.3), prop::bool::weighted(0.1), world)
            .prop_map(|(dt_ms, views, lag_tracked, leaderless, world)| Op::Step { dt_ms, views, lag_tracked, leaderless, world }),
        1 => (0..IDS.len()).prop_map(Op::Veto),
        1 => (0u64..20_000).prop_map(Op::Pause),
        1 => Just(Op::Resume),
        1 => prop::option::of(0..IDS.len()).prop_map(Op::Switchover),
        1 => prop::option::of(0..IDS.len()).prop_map(Op::Failover),
        1 => Just(Op::Failback),
        1 => (0..IDS.len()).prop_map(Op::Approve),
        1 => (0u64..20_000).prop_map(Op::Postpone),
        1 => Just(Op::Cancel),
    ]
}

fn config() -> impl Strategy<Value = PolicyConfig> {
    (
        0u64..2000,
        any::<bool>(),
        0u64..5000,
        1u32..4,
        1u64..20_000,
        0u64..5000,
        1u64..5000,
        (prop::option::of(0u64..100), any::<bool>()),
    )
        .prop_map(
            |(grace, fb, hold, k, window, veto, handover, (max_lag, approval))| {
                let mut c = PolicyConfig::lan();
                c.unhealthy_grace = Duration::from_millis(grace);
                c.failback.enabled = fb;
                c.failback.approval = approval;
                c.failback.hold_down = Duration::from_millis(grace + hold);
                c.anti_flap.max_failovers = NonZeroU32::new(k).unwrap();
                c.anti_flap.window = Duration::from_millis(window);
                c.veto_backoff = Duration::from_millis(veto);
                c.handover_timeout = Duration::from_millis(handover);
                c.maintenance_max = Duration::from_secs(60);
                c.max_lag = max_lag;
                c
            },
        )
}

/// Deterministic in CI: a fixed seed and 512 cases, unless `PROPTEST_RNG_SEED` /
/// `PROPTEST_CASES` ask for another exploration.
fn runner_config() -> ProptestConfig {
    let mut c = ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        c.rng_seed = prop::test_runner::RngSeed::Fixed(0x5eed_fa11);
    }
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = 512;
    }
    c
}

type P = RolePolicy<&'static str>;
type O = Observations<&'static str>;

/// An independent statement of eligibility (not the crate's code): the oracle.
struct Oracle {
    max_lag: Option<u64>,
    veto_backoff: Duration,
    vetoed_until: [Option<Duration>; IDS.len()],
}

impl Oracle {
    fn veto(&mut self, i: usize, now: Duration) {
        self.vetoed_until[i] = Some(now + self.veto_backoff);
    }

    fn fit(&self, obs: &O, node: &str, now: Duration, waive_lag: bool) -> bool {
        let Some(i) = IDS.iter().position(|id| *id == node) else {
            return false;
        };
        let Some(v) = obs.nodes.iter().find(|v| v.id == node) else {
            return false;
        };
        let lag_ok = !obs.lag_tracked
            || waive_lag
            || match (v.lag, self.max_lag) {
                (None, _) => false,
                (Some(l), Some(m)) => l <= m,
                (Some(_), None) => true,
            };
        matches!(v.health, NodeHealth::Healthy | NodeHealth::Degraded)
            && v.reachable
            && v.in_majority
            && !v.no_failover
            && !v.maintenance
            && v.priority > 0
            && lag_ok
            && self.vetoed_until[i].is_none_or(|until| now >= until)
    }
}

/// The safety properties of one action, against the oracle; explain must agree with it too.
fn check_action(
    oracle: &Oracle,
    policy: &P,
    obs: &O,
    now: Duration,
    action: &Action<&'static str>,
) {
    let ex = policy.explain(obs, now);
    for r in &ex.nodes {
        let expect = oracle.fit(obs, r.id, now, false) && obs.primary != Some(r.id);
        assert_eq!(
            r.candidate, expect,
            "explain disagrees with the oracle on {}: {ex}",
            r.id
        );
    }
    match action {
        Action::Hold(_) => {}
        Action::Promote { node, cause } => {
            assert_eq!(
                obs.primary, None,
                "promoted {node} while a primary holds the role"
            );
            let waive = *cause == Cause::ManualFailover;
            assert!(
                oracle.fit(obs, node, now, waive),
                "promoted ineligible {node}: {ex}"
            );
        }
        Action::Demote {
            node,
            successor,
            cause,
        } => {
            assert_eq!(obs.primary.as_ref(), Some(node), "demoted a non-primary");
            assert_ne!(*cause, Cause::ManualFailover);
            if let Some(s) = successor {
                assert_ne!(s, node, "successor is the primary itself");
                assert!(
                    oracle.fit(obs, s, now, false),
                    "successor {s} ineligible: {ex}"
                );
            }
        }
    }
}

fn apply(world_primary: &mut Option<&'static str>, action: &Action<&'static str>) {
    match action {
        Action::Promote { node, .. } if world_primary.is_none() => *world_primary = Some(node),
        Action::Demote { .. } => *world_primary = None,
        _ => {}
    }
}

proptest! {
    #![proptest_config(runner_config())]

    #[test]
    fn never_two_primaries_never_ineligible(cfg in config(), ops in prop::collection::vec(op(), 1..60)) {
        let mut oracle = Oracle { max_lag: cfg.max_lag, veto_backoff: cfg.veto_backoff, vetoed_until: [None; IDS.len()] };
        let mut policy = RolePolicy::new(cfg);
        let mut now = Duration::ZERO;
        let mut obs: O = Observations::new(None, IDS.iter().map(|id| NodeView::new(*id)).collect());
        let mut last = Action::Hold(Hold::PrimaryHealthy);
        for op in ops {
            match op {
                Op::Step { dt_ms, views, lag_tracked, leaderless, world } => {
                    now += Duration::from_millis(dt_ms);
                    match world {
                        World::Apply => apply(&mut obs.primary, &last),
                        World::Keep => {}
                        World::Lapse => obs.primary = None,
                        World::Grab(i) => { obs.primary.get_or_insert(IDS[i]); }
                    }
                    obs.nodes = IDS.iter().zip(&views).map(|(id, s)| to_view(id, s)).collect();
                    obs.lag_tracked = lag_tracked;
                    obs.coord_leaderless = leaderless;
                    let before = policy.clone();
                    let d = policy.step(&obs, now);
                    check_action(&oracle, &before, &obs, now, &d.action);
                    // An automatic failback never starts while failbacks need approval or are
                    // postponed.
                    if matches!(d.action, Action::Demote { cause: Cause::Failback, .. }) {
                        prop_assert!(!before.config().failback.approval);
                        prop_assert!(before.failback_postponed_until(now).is_none());
                    }
                    if let Some(w) = d.wake_at {
                        prop_assert!(w > now);
                    }
                    last = d.action;
                }
                Op::Veto(i) => {
                    let _ = policy.record_veto(&IDS[i], "test", now);
                    oracle.veto(i, now);
                }
                Op::Pause(len) => { let _ = policy.pause(now + Duration::from_millis(len), now); }
                Op::Resume => { policy.resume(); }
                Op::Switchover(t) => {
                    let target = t.map(|i| IDS[i]);
                    let before = policy.clone();
                    if let Ok(a) = policy.switchover(&obs, target.as_ref(), now) {
                        check_action(&oracle, &before, &obs, now, &a);
                        last = a;
                    }
                }
                Op::Failover(t) => {
                    let target = t.map(|i| IDS[i]);
                    let before = policy.clone();
                    if let Ok(a) = policy.failover(&obs, target.as_ref(), now) {
                        check_action(&oracle, &before, &obs, now, &a);
                        last = a;
                    }
                }
                Op::Failback => {
                    let before = policy.clone();
                    if let Ok(a) = policy.failback(&obs, None, now) {
                        check_action(&oracle, &before, &obs, now, &a);
                        last = a;
                    }
                }
                Op::Approve(i) => {
                    let before = policy.clone();
                    if let Ok(a) = policy.failback(&obs, Some(&IDS[i]), now) {
                        // An approval moves the role to the node it named, and no other.
                        prop_assert_eq!(a.new_primary(), Some(&IDS[i]));
                        check_action(&oracle, &before, &obs, now, &a);
                        last = a;
                    }
                }
                Op::Postpone(len) => {
                    let _ = policy.postpone_failback(now + Duration::from_millis(len), now);
                }
                Op::Cancel => { policy.cancel_handover(); }
            }
        }
    }

    #[test]
    fn healthy_majority_ends_with_one_primary(
        cfg in config(),
        ops in prop::collection::vec(op(), 0..40),
        priorities in prop::collection::vec(1u32..4, IDS.len()),
    ) {
        let mut policy = RolePolicy::new(cfg);
        let mut now = Duration::ZERO;
        let mut obs: O = Observations::new(None, IDS.iter().map(|id| NodeView::new(*id)).collect());
        // Chaos first (same driver as above, without the checks).
        for op in ops {
            match op {
                Op::Step { dt_ms, views, lag_tracked, leaderless, world } => {
                    now += Duration::from_millis(dt_ms);
                    match world {
                        World::Lapse => obs.primary = None,
                        World::Grab(i) => { obs.primary.get_or_insert(IDS[i]); }
                        World::Apply | World::Keep => {}
                    }
                    obs.nodes = IDS.iter().zip(&views).map(|(id, s)| to_view(id, s)).collect();
                    obs.lag_tracked = lag_tracked;
                    obs.coord_leaderless = leaderless;
                    let d = policy.step(&obs, now);
                    apply(&mut obs.primary, &d.action);
                }
                Op::Veto(i) => { let _ = policy.record_veto(&IDS[i], "test", now); }
                Op::Pause(len) => { let _ = policy.pause(now + Duration::from_millis(len), now); }
                Op::Switchover(t) => { let _ = policy.switchover(&obs, t.map(|i| IDS[i]).as_ref(), now); }
                Op::Failover(t) => { let _ = policy.failover(&obs, t.map(|i| IDS[i]).as_ref(), now); }
                Op::Failback => { let _ = policy.failback(&obs, None, now); }
                Op::Approve(i) => { let _ = policy.failback(&obs, Some(&IDS[i]), now); }
                Op::Postpone(len) => { let _ = policy.postpone_failback(now + Duration::from_millis(len), now); }
                Op::Resume | Op::Cancel => {}
            }
        }
        // Then a healthy majority, no pause, every back-off and window over.
        policy.resume();
        obs.lag_tracked = false;
        obs.coord_leaderless = false;
        obs.nodes = IDS.iter().zip(&priorities).map(|(id, p)| {
            let mut v = NodeView::new(*id);
            v.priority = *p;
            // The tiebreak never keeps the role vacant.
            v.coord_leader = *id == IDS[0];
            v
        }).collect();
        now += Duration::from_secs(120);
        let mut settled = None;
        for i in 0..8u64 {
            let d = policy.step(&obs, now + Duration::from_secs(10 * i));
            apply(&mut obs.primary, &d.action);
            if let Action::Hold(h) = &d.action
                && obs.primary.is_some()
            {
                settled = Some(h.clone());
                break;
            }
        }
        prop_assert!(settled.is_some(), "no stable primary: {:?}", policy.explain(&obs, now));
    }
}
