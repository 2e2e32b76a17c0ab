//! Data-driven tests of the pure policy core: one `check` function per area, one line per case.
#![allow(clippy::unwrap_used, reason = "test")]

use std::num::NonZeroU32;
use std::time::Duration;

use quorate_failover::FailoverError;
use quorate_failover::policy::config::{PolicyConfig, RoleConfig};
use quorate_failover::policy::lease::{HolderLease, LeaseConfig};
use quorate_failover::policy::{
    Action, Cause, NodeHealth, NodeView, Notice, Observations, Refusal, RolePolicy,
};
use quorate_types::lease::Drift;

type N = &'static str;

fn ms(x: u64) -> Duration {
    Duration::from_millis(x)
}

fn n(id: N) -> NodeView<N> {
    NodeView::new(id)
}

/// Builder-style modifiers for node views in test tables.
trait Mods: Sized {
    fn map(self, f: impl FnOnce(&mut NodeView<N>)) -> Self;
    fn prio(self, p: u32) -> Self {
        self.map(|v| v.priority = p)
    }
    fn lag(self, l: u64) -> Self {
        self.map(|v| v.lag = Some(l))
    }
    fn health(self, h: NodeHealth) -> Self {
        self.map(|v| v.health = h)
    }
    fn sick(self) -> Self {
        self.health(NodeHealth::Unhealthy)
    }
    fn unreachable(self) -> Self {
        self.map(|v| v.reachable = false)
    }
    fn minority(self) -> Self {
        self.map(|v| v.in_majority = false)
    }
    fn nofailover(self) -> Self {
        self.map(|v| v.no_failover = true)
    }
    fn maint(self) -> Self {
        self.map(|v| v.maintenance = true)
    }
    fn leads(self) -> Self {
        self.map(|v| v.coord_leader = true)
    }
}

impl Mods for NodeView<N> {
    fn map(mut self, f: impl FnOnce(&mut NodeView<N>)) -> Self {
        f(&mut self);
        self
    }
}

fn cfg() -> PolicyConfig {
    let mut c = PolicyConfig::lan();
    c.unhealthy_grace = ms(1000);
    c.veto_backoff = ms(10_000);
    c.handover_timeout = ms(5_000);
    c.anti_flap.max_failovers = NonZeroU32::new(2).unwrap();
    c.anti_flap.window = ms(60_000);
    c.maintenance_max = ms(3_600_000);
    c
}

// ---- eligibility ------------------------------------------------------------------------

/// `want`: the node's reasons as explain prints them, "" for a candidate.
#[track_caller]
fn check_eligibility(max_lag: Option<u64>, lag_tracked: bool, view: NodeView<N>, want: &str) {
    let mut c = cfg();
    c.max_lag = max_lag;
    let policy = RolePolicy::new(c);
    let id = view.id;
    let mut obs = Observations::new(None, vec![view]);
    obs.lag_tracked = lag_tracked;
    let ex = policy.explain(&obs, ms(0));
    let report = ex.node(&id).unwrap();
    let got = report
        .reasons
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    assert_eq!(got, want);
    assert_eq!(report.candidate, want.is_empty());
}

#[test]
fn eligibility_reasons() {
    check_eligibility(None, false, n("a"), "");
    check_eligibility(None, false, n("a").health(NodeHealth::Degraded), "");
    check_eligibility(None, false, n("a").sick(), "health is unhealthy");
    check_eligibility(
        None,
        false,
        n("a").health(NodeHealth::Unknown),
        "health is unknown",
    );
    check_eligibility(None, false, n("a").unreachable(), "unreachable");
    check_eligibility(None, false, n("a").minority(), "not in the majority");
    check_eligibility(None, false, n("a").nofailover(), "tagged no-failover");
    check_eligibility(None, false, n("a").prio(0), "priority 0 (never primary)");
    check_eligibility(None, false, n("a").maint(), "node in maintenance");
    // Lag counts only when a lag source exists.
    check_eligibility(Some(100), false, n("a").lag(500), "");
    check_eligibility(Some(100), false, n("a"), "");
    check_eligibility(Some(100), true, n("a").lag(100), "");
    check_eligibility(
        Some(100),
        true,
        n("a").lag(101),
        "replication lag 101 above the limit 100",
    );
    check_eligibility(Some(100), true, n("a"), "replication lag unknown");
    check_eligibility(None, true, n("a").lag(u64::MAX), "");
    check_eligibility(None, true, n("a"), "replication lag unknown");
    // Every reason is listed, not just the first.
    check_eligibility(
        Some(10),
        true,
        n("a")
            .sick()
            .unreachable()
            .minority()
            .nofailover()
            .prio(0)
            .maint()
            .lag(11),
        "health is unhealthy, unreachable, not in the majority, tagged no-failover, \
         priority 0 (never primary), node in maintenance, replication lag 11 above the limit 10",
    );
}

// ---- preference -------------------------------------------------------------------------

/// `want`: candidate ids, best first, separated by spaces.
#[track_caller]
fn check_order(lag_tracked: bool, nodes: Vec<NodeView<N>>, want: &str) {
    let policy = RolePolicy::new(cfg());
    let mut obs = Observations::new(None, nodes);
    obs.lag_tracked = lag_tracked;
    let ex = policy.explain(&obs, ms(0));
    let mut ranked: Vec<_> = ex
        .nodes
        .iter()
        .filter_map(|r| r.rank.map(|k| (k, r.id)))
        .collect();
    ranked.sort();
    let got = ranked
        .iter()
        .map(|(_, id)| *id)
        .collect::<Vec<_>>()
        .join(" ");
    assert_eq!(got, want);
}

#[test]
fn preference_order() {
    check_order(false, vec![n("c"), n("a"), n("b")], "a b c");
    check_order(false, vec![n("a"), n("b").prio(3), n("c").prio(2)], "b c a");
    // Priority beats lag; lag beats id; untracked lag is ignored.
    check_order(true, vec![n("a").lag(0), n("b").prio(2).lag(900)], "b a");
    check_order(
        true,
        vec![n("a").lag(7), n("b").lag(3), n("c").lag(3)],
        "b c a",
    );
    check_order(false, vec![n("a").lag(7), n("b").lag(3)], "a b");
    // The coordination leader goes after equal nodes, but priority and lag come first, and
    // it stays a candidate when it is the only one.
    check_order(false, vec![n("a").leads(), n("b"), n("c")], "b c a");
    check_order(false, vec![n("a").prio(2).leads(), n("b")], "a b");
    check_order(true, vec![n("a").lag(1).leads(), n("b").lag(2)], "a b");
    check_order(true, vec![n("a").lag(2).leads(), n("b").lag(2)], "b a");
    check_order(false, vec![n("a").leads(), n("b").sick()], "a");
    // Ineligible nodes are not ranked; duplicates count once (the first view).
    check_order(false, vec![n("a").sick(), n("b"), n("b").prio(9)], "b");
    check_order(false, vec![n("a").prio(0), n("b").nofailover()], "");
}

// ---- scenarios: failover triggers, failback, anti-flap, maintenance, vetoes, manual ops ---

/// One scripted event.
enum Ev {
    /// Replace (or add) a node view in the world.
    Set(NodeView<N>),
    /// Set the lease holder.
    Holder(Option<N>),
    /// Set whether a lag source exists.
    LagTracked(bool),
    /// Set whether the coordination store reports no leader.
    Leaderless(bool),
    /// Run a step; expect its action and notices.
    Step,
    /// `before_promote` of the node vetoed.
    Veto(N, &'static str),
    /// Pause until the given ms.
    Pause(u64),
    /// Resume.
    Resume,
    /// Manual switchover.
    Switchover(Option<N>),
    /// Manual failover.
    Failover(Option<N>),
    /// Manual failback.
    Failback,
    /// Manual failback approving the one to the given node.
    Approve(N),
    /// Postpone failbacks until the given ms.
    Postpone(u64),
    /// Cancel the handover under way.
    Cancel,
    /// Expect `explain` to print this.
    Explain,
}

/// Notices in a compact form, for scripts.
fn notice(n: &Notice<N>) -> String {
    match n {
        Notice::PrimaryChanged {
            old,
            new,
            cause,
            detected_at,
            at,
            counted,
        } => {
            let detect = detected_at
                .map(|d| format!(", detected {}ms before", at.saturating_sub(d).as_millis()))
                .unwrap_or_default();
            format!(
                "changed {}->{new} ({cause}{detect}{})",
                old.unwrap_or("-"),
                if *counted { ", counted" } else { "" }
            )
        }
        Notice::PrimaryLost {
            old,
            cause: Cause::LeaseLost,
            ..
        } => format!("lost {old}"),
        Notice::PrimaryLost { old, cause, .. } => format!("lost {old} ({cause})"),
        Notice::PrimaryRegained { node, .. } => format!("regained {node}"),
        Notice::MaintenanceExpired { .. } => "maintenance expired".to_owned(),
        Notice::HandoverAbandoned { to, cause, why } => {
            format!("handover to {to} ({cause}) abandoned: {why}")
        }
    }
}

fn with_notices(head: String, notices: &[Notice<N>]) -> String {
    let mut s = head;
    for n in notices {
        s.push_str(" [");
        s.push_str(&notice(n));
        s.push(']');
    }
    s
}

fn refusal_or<T>(r: Result<T, Refusal<N>>, ok: impl FnOnce(T) -> String) -> String {
    match r {
        Ok(v) => ok(v),
        Err(e) => format!("refused: {e}"),
    }
}

/// Runs `script` (at ms, event, expected output; "" for world changes) against one policy.
#[track_caller]
fn check_scenario(config: PolicyConfig, nodes: Vec<NodeView<N>>, script: &[(u64, Ev, &str)]) {
    let mut policy = RolePolicy::new(config);
    let mut obs = Observations::new(None, nodes);
    for (i, (at, ev, want)) in script.iter().enumerate() {
        let now = ms(*at);
        let got = match ev {
            Ev::Set(v) => {
                match obs.nodes.iter_mut().find(|x| x.id == v.id) {
                    Some(x) => *x = v.clone(),
                    None => obs.nodes.push(v.clone()),
                }
                String::new()
            }
            Ev::Holder(h) => {
                obs.primary = *h;
                String::new()
            }
            Ev::LagTracked(t) => {
                obs.lag_tracked = *t;
                String::new()
            }
            Ev::Leaderless(l) => {
                obs.coord_leaderless = *l;
                String::new()
            }
            Ev::Step => {
                let d = policy.step(&obs, now);
                with_notices(d.action.to_string(), &d.notices)
            }
            Ev::Veto(node, reason) => {
                with_notices("vetoed".to_owned(), &policy.record_veto(node, reason, now))
            }
            Ev::Pause(until) => refusal_or(policy.pause(ms(*until), now), |ns| {
                with_notices("paused".to_owned(), &ns)
            }),
            Ev::Resume => format!("resumed {}", policy.resume()),
            Ev::Switchover(t) => {
                refusal_or(policy.switchover(&obs, t.as_ref(), now), |a| a.to_string())
            }
            Ev::Failover(t) => {
                refusal_or(policy.failover(&obs, t.as_ref(), now), |a| a.to_string())
            }
            Ev::Failback => refusal_or(policy.failback(&obs, None, now), |a| a.to_string()),
            Ev::Approve(to) => refusal_or(policy.failback(&obs, Some(to), now), |a| a.to_string()),
            Ev::Postpone(until) => refusal_or(policy.postpone_failback(ms(*until), now), |ns| {
                with_notices("postponed".to_owned(), &ns)
            }),
            Ev::Cancel => policy
                .cancel_handover()
                .map_or("nothing to cancel".to_owned(), |n| notice(&n)),
            Ev::Explain => policy.explain(&obs, now).to_string(),
        };
        assert_eq!(got, *want, "script line {i} (t={at}ms)");
    }
}

use Ev::*;

#[test]
fn failover_triggers() {
    // First election, then a lost lease.
    check_scenario(
        cfg(),
        vec![n("a").prio(2), n("b"), n("c")],
        &[
            (0, Step, "promote a: initial election"),
            (10, Holder(Some("a")), ""),
            (
                10,
                Step,
                "hold: primary healthy [changed -->a (initial election)]",
            ),
            (20, Holder(None), ""),
            (
                20,
                Set(n("a").prio(2).unreachable().health(NodeHealth::Unknown)),
                "",
            ),
            (20, Step, "promote b: primary lease lost [lost a]"),
            (25, Step, "promote b: primary lease lost"),
            (30, Holder(Some("b")), ""),
            (
                30,
                Step,
                "hold: primary healthy [changed a->b (primary lease lost, detected 10ms before, counted)]",
            ),
            // A primary whose lease lapsed but that still looks fit may be picked again; taking
            // the lease back after a lapse is not a failover.
            (40, Holder(None), ""),
            (40, Step, "promote b: primary lease lost [lost b]"),
            (50, Holder(Some("b")), ""),
            (50, Step, "hold: primary healthy [regained b]"),
            // A manual failover into a vacancy is moot if the old primary comes back first.
            (60, Holder(None), ""),
            (60, Step, "promote b: primary lease lost [lost b]"),
            (61, Failover(Some("c")), "promote c: manual failover"),
            (62, Holder(Some("b")), ""),
            (
                62,
                Step,
                "hold: primary healthy [handover to c (manual failover) abandoned: another node became primary] [regained b]",
            ),
        ],
    );
    // The coordination leader is passed over while an equal node is fit, but a primary that
    // becomes coordination leader is not moved for it, and it is picked when it is the only
    // candidate left.
    check_scenario(
        cfg(),
        vec![n("a").leads(), n("b"), n("c")],
        &[
            // No coordination leader yet: the vacancy waits (and it is not a failover).
            (0, Leaderless(true), ""),
            (
                0,
                Step,
                "hold: initial election, waiting for a coordination leader",
            ),
            (0, Leaderless(false), ""),
            (
                0,
                Explain,
                "primary: none; automatic failover on (0/2 automatic failovers in window)\n  a: candidate #3 (priority 1, coordination leader)\n  b: candidate #1 (priority 1)\n  c: candidate #2 (priority 1)",
            ),
            (0, Step, "promote b: initial election"),
            (10, Holder(Some("b")), ""),
            (
                10,
                Step,
                "hold: primary healthy [changed -->b (initial election)]",
            ),
            (20, Set(n("a")), ""),
            (20, Set(n("b").leads()), ""),
            (20, Step, "hold: primary healthy"),
            (30, Holder(None), ""),
            (
                30,
                Set(n("b").unreachable().health(NodeHealth::Unknown)),
                "",
            ),
            (30, Set(n("c").leads()), ""),
            (30, Step, "promote a: primary lease lost [lost b]"),
            (40, Set(n("a").sick()), ""),
            (40, Step, "promote c: primary lease lost"),
        ],
    );
    // An unhealthy primary is replaced after the grace, through a handover.
    check_scenario(
        cfg(),
        vec![n("a").sick(), n("b"), n("c").prio(2).sick()],
        &[
            (0, Holder(Some("a")), ""),
            (
                0,
                Step,
                "hold: primary unhealthy, grace until t=1.000s [changed -->a (initial election)]",
            ),
            (999, Step, "hold: primary unhealthy, grace until t=1.000s"),
            (1000, Step, "demote a for b: primary unhealthy"),
            // Until a resigns, the handover is repeated, even if the better c recovers.
            (1100, Set(n("c").prio(2)), ""),
            (1100, Step, "demote a for b: primary unhealthy"),
            (1200, Holder(None), ""),
            (
                1200,
                Step,
                "promote b: primary unhealthy [lost a (primary unhealthy)]",
            ),
            (1300, Holder(Some("b")), ""),
            (
                1300,
                Step,
                "hold: primary healthy [changed a->b (primary unhealthy, detected 1300ms before, counted)]",
            ),
        ],
    );
    // Recovery within the grace resets it; Unknown health never triggers; no candidate holds.
    check_scenario(
        cfg(),
        vec![n("a").sick(), n("b")],
        &[
            (0, Holder(Some("a")), ""),
            (
                0,
                Step,
                "hold: primary unhealthy, grace until t=1.000s [changed -->a (initial election)]",
            ),
            (500, Set(n("a")), ""),
            (500, Step, "hold: primary healthy"),
            (600, Set(n("a").sick()), ""),
            (600, Step, "hold: primary unhealthy, grace until t=1.600s"),
            (700, Set(n("a").health(NodeHealth::Unknown)), ""),
            (5000, Step, "hold: primary healthy"),
            (6000, Set(n("a").sick()), ""),
            (6000, Set(n("b").sick()), ""),
            (6000, Step, "hold: primary unhealthy, grace until t=7.000s"),
            (7000, Step, "hold: primary unhealthy, but no candidate"),
        ],
    );
    // A minority primary is demoted at once, with or without a successor, even when paused.
    check_scenario(
        cfg(),
        vec![n("a").minority(), n("b").unreachable()],
        &[
            (0, Holder(Some("a")), ""),
            (0, Pause(60_000), "paused"),
            (
                0,
                Step,
                "demote a: primary not in the majority [changed -->a (initial election)]",
            ),
            (10, Set(n("b")), ""),
            (10, Step, "demote a for b: primary not in the majority"),
        ],
    );
    // No candidate at all.
    check_scenario(
        cfg(),
        vec![n("a").sick(), n("b").nofailover()],
        &[(0, Step, "hold: initial election, but no candidate")],
    );
}

fn failback_cfg() -> PolicyConfig {
    let mut c = cfg();
    c.failback.enabled = true;
    c.failback.hold_down = ms(10_000);
    c
}

#[test]
fn failback() {
    // Disabled: a healthy primary stays even if a preferred node is back.
    check_scenario(
        cfg(),
        vec![n("a"), n("b").prio(2)],
        &[
            (0, Holder(Some("a")), ""),
            (
                0,
                Step,
                "hold: primary healthy [changed -->a (initial election)]",
            ),
            (100_000, Step, "hold: primary healthy"),
        ],
    );
    // Enabled: only after the hold-down, counted from the later of "preferred node eligible"
    // and "primary took over"; a flap of the preferred node restarts it.
    check_scenario(
        failback_cfg(),
        vec![n("a"), n("b").prio(2).sick()],
        &[
            (0, Holder(Some("a")), ""),
            (
                0,
                Step,
                "hold: primary healthy [changed -->a (initial election)]",
            ),
            (2000, Set(n("b").prio(2)), ""),
            (2000, Step, "hold: failback to b held down until t=12.000s"),
            (5000, Set(n("b").prio(2).sick()), ""),
            (5000, Step, "hold: primary healthy"),
            (6000, Set(n("b").prio(2)), ""),
            (6000, Step, "hold: failback to b held down until t=16.000s"),
            (
                15_999,
                Step,
                "hold: failback to b held down until t=16.000s",
            ),
            (16_000, Step, "demote a for b: failback to preferred node"),
            (16_100, Holder(None), ""),
            (
                16_100,
                Step,
                "promote b: failback to preferred node [lost a (failback to preferred node)]",
            ),
            (16_200, Holder(Some("b")), ""),
            (
                16_200,
                Step,
                "hold: primary healthy [changed a->b (failback to preferred node, detected 200ms before, counted)]",
            ),
        ],
    );
    // Hold-down also runs from the primary's takeover; equal priority never fails back.
    check_scenario(
        failback_cfg(),
        vec![n("a"), n("b").prio(2), n("c")],
        &[
            (0, Holder(Some("a")), ""),
            (
                0,
                Step,
                "hold: failback to b held down until t=10.000s [changed -->a (initial election)]",
            ),
            (9000, Set(n("b").prio(2).sick()), ""),
            (9000, Step, "hold: primary healthy"),
            (9500, Holder(Some("c")), ""),
            (
                9500,
                Step,
                "hold: primary healthy [changed a->c (primary lease lost, counted)]",
            ),
        ],
    );
    // Catch-up guard.
    let mut c = failback_cfg();
    c.failback.max_lag = Some(0);
    check_scenario(
        c,
        vec![n("a").lag(0), n("b").prio(2).lag(5)],
        &[
            (0, LagTracked(true), ""),
            (0, Holder(Some("a")), ""),
            (
                0,
                Step,
                "hold: failback to b waits for catch-up (lag 5 > 0) [changed -->a (initial election)]",
            ),
            (20_000, Set(n("b").prio(2).lag(0)), ""),
            (20_000, Step, "demote a for b: failback to preferred node"),
        ],
    );
    // Paused: no automatic failback; manual failback works and ignores the hold-down.
    check_scenario(
        failback_cfg(),
        vec![n("a"), n("b").prio(2), n("c").prio(3).nofailover()],
        &[
            (0, Holder(Some("a")), ""),
            (0, Pause(60_000), "paused"),
            (
                0,
                Step,
                "hold: failback to preferred node, but paused until t=60.000s [changed -->a (initial election)]",
            ),
            (1, Failback, "demote a for b: manual switchover"),
        ],
    );
    check_scenario(
        failback_cfg(),
        vec![n("a").prio(2), n("b").prio(2)],
        &[
            (0, Holder(Some("a")), ""),
            (
                0,
                Failback,
                "refused: no candidate has a higher priority than the primary a",
            ),
            (0, Holder(None), ""),
            (
                0,
                Failback,
                "refused: the role has no primary; use a manual failover instead",
            ),
        ],
    );
}

#[test]
fn failback_approval_waits_for_an_operator_and_can_be_postponed() {
    let mut c = failback_cfg();
    c.failback.approval = true;
    // Due after the hold-down: it waits for approval (no wake-up needed: nothing changes by
    // itself), a postponement delays it, a stale approval is refused, a matching one moves it.
    check_scenario(
        c,
        vec![n("a"), n("b").prio(2), n("c")],
        &[
            (0, Holder(Some("a")), ""),
            (
                0,
                Step,
                "hold: failback to b held down until t=10.000s [changed -->a (initial election)]",
            ),
            (
                10_000,
                Step,
                "hold: failback to b awaits an operator's approval",
            ),
            (
                60_000,
                Step,
                "hold: failback to b awaits an operator's approval",
            ),
            (60_000, Postpone(120_000), "postponed"),
            (
                60_000,
                Step,
                "hold: failback to b postponed until t=120.000s",
            ),
            (
                60_000,
                Postpone(60_000),
                "refused: a postponement must last more than 0 s and at most 3600 s (maintenance_max); 0 s requested",
            ),
            (
                120_000,
                Step,
                "hold: failback to b awaits an operator's approval",
            ),
            (
                120_000,
                Approve("c"),
                "refused: the failback asked for was to c, but the preferred candidate now is b; look at the role again and repeat",
            ),
            (120_000, Set(n("b").prio(2).sick()), ""),
            (
                120_000,
                Approve("b"),
                "refused: the failback asked for was to b, but no candidate now has a higher priority than the primary",
            ),
            (120_000, Set(n("b").prio(2)), ""),
            (120_000, Approve("b"), "demote a for b: manual switchover"),
        ],
    );
    // Without approval, a postponement still holds a due failback, and cancels one under way.
    check_scenario(
        failback_cfg(),
        vec![n("a"), n("b").prio(2)],
        &[
            (0, Holder(Some("a")), ""),
            (
                0,
                Step,
                "hold: failback to b held down until t=10.000s [changed -->a (initial election)]",
            ),
            (0, Postpone(20_000), "postponed"),
            (
                10_000,
                Step,
                "hold: failback to b postponed until t=20.000s",
            ),
            (20_000, Step, "demote a for b: failback to preferred node"),
            (
                20_001,
                Postpone(30_000),
                "postponed [handover to b (failback to preferred node) abandoned: cancelled]",
            ),
            (
                20_002,
                Step,
                "hold: failback to b postponed until t=30.000s",
            ),
        ],
    );
}

#[test]
fn anti_flap_budget() {
    // K = 2 per 60 s. The first election is free; two lease losses spend the budget; the third
    // holds with the reason until the oldest failover leaves the window. Manual moves still work
    // and are not counted.
    check_scenario(
        cfg(),
        vec![n("a"), n("b"), n("c")],
        &[
            (0, Holder(Some("a")), ""),
            (
                0,
                Step,
                "hold: primary healthy [changed -->a (initial election)]",
            ),
            (1000, Holder(Some("b")), ""),
            (
                1000,
                Step,
                "hold: primary healthy [changed a->b (primary lease lost, counted)]",
            ),
            (2000, Holder(None), ""),
            (2000, Step, "promote a: primary lease lost [lost b]"),
            (2100, Holder(Some("a")), ""),
            (
                2100,
                Step,
                "hold: primary healthy [changed b->a (primary lease lost, detected 100ms before, counted)]",
            ),
            (3000, Holder(None), ""),
            (
                3000,
                Step,
                "hold: primary lease lost, but anti-flap budget spent (2/2), manual only until t=61.000s [lost a]",
            ),
            (
                3000,
                Explain,
                "primary: none; anti-flap budget spent, manual only until t=61.000s (2/2 automatic failovers in window)\n  a: candidate #1 (priority 1)\n  b: candidate #2 (priority 1)\n  c: candidate #3 (priority 1)",
            ),
            (4000, Failover(Some("c")), "promote c: manual failover"),
            (4100, Holder(Some("c")), ""),
            (
                4100,
                Step,
                "hold: primary healthy [changed a->c (manual failover, detected 100ms before)]",
            ),
            (5000, Holder(None), ""),
            (
                5000,
                Step,
                "hold: primary lease lost, but anti-flap budget spent (2/2), manual only until t=61.000s [lost c]",
            ),
            (
                60_999,
                Step,
                "hold: primary lease lost, but anti-flap budget spent (2/2), manual only until t=61.000s",
            ),
            (61_000, Step, "promote a: primary lease lost"),
        ],
    );
    // The unhealthy-primary rule obeys the budget too; the minority rule does not.
    check_scenario(
        cfg(),
        vec![n("a"), n("b"), n("c")],
        &[
            (0, Holder(Some("a")), ""),
            (
                0,
                Step,
                "hold: primary healthy [changed -->a (initial election)]",
            ),
            (10, Holder(Some("b")), ""),
            (
                10,
                Step,
                "hold: primary healthy [changed a->b (primary lease lost, counted)]",
            ),
            (20, Holder(Some("c")), ""),
            (
                20,
                Step,
                "hold: primary healthy [changed b->c (primary lease lost, counted)]",
            ),
            (30, Set(n("c").sick()), ""),
            (30, Step, "hold: primary unhealthy, grace until t=1.030s"),
            (
                1030,
                Step,
                "hold: primary unhealthy, but anti-flap budget spent (2/2), manual only until t=60.010s",
            ),
            (1040, Set(n("c").minority()), ""),
            (1040, Step, "demote c for a: primary not in the majority"),
        ],
    );
}

#[test]
fn maintenance_mode() {
    check_scenario(
        cfg(),
        vec![n("a"), n("b")],
        &[
            (
                0,
                Pause(0),
                "refused: a pause must last more than 0 s and at most 3600 s (maintenance_max); 0 s requested",
            ),
            (
                0,
                Pause(3_600_001),
                "refused: a pause must last more than 0 s and at most 3600 s (maintenance_max); 3600.001 s requested",
            ),
            (0, Pause(60_000), "paused"),
            (
                0,
                Step,
                "hold: initial election, but paused until t=60.000s",
            ),
            (
                0,
                Explain,
                "primary: none; paused until t=60.000s (0/2 automatic failovers in window)\n  a: candidate #1 (priority 1)\n  b: candidate #2 (priority 1)",
            ),
            (
                59_999,
                Step,
                "hold: initial election, but paused until t=60.000s",
            ),
            // Expiry is by time alone.
            (
                60_000,
                Step,
                "promote a: initial election [maintenance expired]",
            ),
            (60_100, Holder(Some("a")), ""),
            (
                60_100,
                Step,
                "hold: primary healthy [changed -->a (initial election)]",
            ),
            (60_100, Pause(120_000), "paused"),
            (60_100, Holder(None), ""),
            (
                60_100,
                Step,
                "hold: primary lease lost, but paused until t=120.000s [lost a]",
            ),
            // Manual failover works while paused.
            (60_200, Failover(None), "promote a: manual failover"),
            (60_300, Step, "promote a: manual failover"),
            (60_400, Holder(Some("a")), ""),
            (60_400, Step, "hold: primary healthy [regained a]"),
            (60_500, Resume, "resumed true"),
            (60_500, Resume, "resumed false"),
        ],
    );
    // Pausing cancels an automatic handover but not a manual one.
    check_scenario(
        cfg(),
        vec![n("a").sick(), n("b")],
        &[
            (0, Holder(Some("a")), ""),
            (
                0,
                Step,
                "hold: primary unhealthy, grace until t=1.000s [changed -->a (initial election)]",
            ),
            (1000, Step, "demote a for b: primary unhealthy"),
            (
                1100,
                Pause(10_000),
                "paused [handover to b (primary unhealthy) abandoned: cancelled]",
            ),
            (
                1100,
                Step,
                "hold: primary unhealthy, but paused until t=10.000s",
            ),
            (
                1200,
                Switchover(Some("b")),
                "demote a for b: manual switchover",
            ),
            (1300, Pause(20_000), "paused"),
            (1300, Step, "demote a for b: manual switchover"),
        ],
    );
}

#[test]
fn before_promote_veto() {
    let mut c = cfg();
    c.veto_backoff = ms(3000);
    check_scenario(
        c,
        vec![n("a"), n("b"), n("c").prio(0)],
        &[
            (0, Step, "promote a: initial election"),
            (10, Veto("a", "disk not mounted"), "vetoed"),
            (10, Step, "promote b: initial election"),
            (
                10,
                Explain,
                "primary: none; automatic failover on (0/2 automatic failovers in window)\n  a: not a candidate: before_promote vetoed (disk not mounted), back-off until t=3.010s\n  b: candidate #1 (priority 1)\n  c: not a candidate: priority 0 (never primary)",
            ),
            (20, Veto("b", "no"), "vetoed"),
            (20, Step, "hold: initial election, but no candidate"),
            (
                20,
                Switchover(None),
                "refused: the role has no primary; use a manual failover instead",
            ),
            (
                20,
                Failover(None),
                "refused: no node is fit to be primary: a: before_promote vetoed (disk not mounted), back-off until t=3.010s; b: before_promote vetoed (no), back-off until t=3.020s; c: priority 0 (never primary)",
            ),
            (3009, Step, "hold: initial election, but no candidate"),
            (3010, Step, "promote a: initial election"),
        ],
    );
    // A veto by a handover's successor abandons the handover; the next step picks another.
    check_scenario(
        cfg(),
        vec![n("a"), n("b").prio(3), n("c").prio(2)],
        &[
            (0, Holder(Some("a")), ""),
            (
                0,
                Step,
                "hold: primary healthy [changed -->a (initial election)]",
            ),
            (0, Switchover(None), "demote a for b: manual switchover"),
            (10, Holder(None), ""),
            (
                10,
                Step,
                "promote b: manual switchover [lost a (manual switchover)]",
            ),
            (
                20,
                Veto("b", "still replaying"),
                "vetoed [handover to b (manual switchover) abandoned: successor vetoed]",
            ),
            (20, Step, "promote c: manual switchover"),
        ],
    );
    // A long reason is cut to 256 bytes on a char boundary.
    let mut policy = RolePolicy::new(cfg());
    let long = "é".repeat(200);
    let _ = policy.record_veto(&"a", &long, ms(0));
    let ex = policy.explain(&Observations::new(None, vec![n("a")]), ms(0));
    let text = ex.node(&"a").unwrap().reasons[0].to_string();
    assert!(
        text.contains(&"é".repeat(128)) && !text.contains(&"é".repeat(129)),
        "{text}"
    );
}

#[test]
fn manual_operations() {
    check_scenario(
        cfg(),
        vec![n("a"), n("b").sick().nofailover(), n("c").lag(50)],
        &[
            (
                0,
                Switchover(None),
                "refused: the role has no primary; use a manual failover instead",
            ),
            (0, Holder(Some("a")), ""),
            (
                0,
                Step,
                "hold: primary healthy [changed -->a (initial election)]",
            ),
            (
                0,
                Failover(None),
                "refused: the role has a primary (a); use a switchover instead",
            ),
            (
                0,
                Switchover(Some("a")),
                "refused: a already is the primary",
            ),
            (
                0,
                Switchover(Some("z")),
                "refused: z is not a member of this role",
            ),
            (
                0,
                Switchover(Some("b")),
                "refused: b is not fit to be primary: health is unhealthy, tagged no-failover",
            ),
            (0, Switchover(None), "demote a for c: manual switchover"),
            (
                0,
                Switchover(Some("c")),
                "refused: a handover to c is under way; cancel it or wait for it to finish",
            ),
            (1, Step, "demote a for c: manual switchover"),
            (2, Holder(Some("c")), ""),
            (
                2,
                Step,
                "hold: primary healthy [changed a->c (manual switchover, detected 2ms before)]",
            ),
            (
                3,
                Explain,
                "primary: c; automatic failover on (0/2 automatic failovers in window)\n  a: candidate #1 (priority 1)\n  b: not a candidate: health is unhealthy, tagged no-failover\n  c: primary",
            ),
        ],
    );
    // Manual failover waives the lag limit (and only it); switchover does not.
    let mut c = cfg();
    c.max_lag = Some(10);
    check_scenario(
        c,
        vec![
            n("a").lag(0).minority(),
            n("b").lag(99),
            n("c").lag(99).maint(),
        ],
        &[
            (0, LagTracked(true), ""),
            (0, Holder(Some("a")), ""),
            (
                0,
                Switchover(Some("b")),
                "refused: b is not fit to be primary: replication lag 99 above the limit 10",
            ),
            (0, Holder(None), ""),
            (0, Step, "hold: initial election, but no candidate"),
            (
                0,
                Failover(Some("c")),
                "refused: c is not fit to be primary: node in maintenance",
            ),
            (0, Failover(None), "promote b: manual failover"),
            (10, Step, "promote b: manual failover"),
            // Another node taking the lease first makes the manual failover moot (and this
            // one is in a minority).
            (20, Holder(Some("a")), ""),
            (
                20,
                Step,
                "demote a: primary not in the majority [handover to b (manual failover) abandoned: another node became primary] [changed -->a (initial election)]",
            ),
        ],
    );
    // A handover that does not complete in time is given up; cancel works; a different node
    // winning supersedes it.
    check_scenario(
        cfg(),
        vec![n("a"), n("b"), n("c")],
        &[
            (0, Holder(Some("a")), ""),
            (0, Cancel, "nothing to cancel"),
            (
                0,
                Switchover(Some("b")),
                "demote a for b: manual switchover",
            ),
            (
                4999,
                Step,
                "demote a for b: manual switchover [changed -->a (initial election)]",
            ),
            (
                5000,
                Step,
                "hold: primary healthy [handover to b (manual switchover) abandoned: timed out]",
            ),
            (
                5001,
                Switchover(Some("b")),
                "demote a for b: manual switchover",
            ),
            (
                5002,
                Cancel,
                "handover to b (manual switchover) abandoned: cancelled",
            ),
            (5003, Step, "hold: primary healthy"),
            (
                5004,
                Switchover(Some("b")),
                "demote a for b: manual switchover",
            ),
            (5005, Holder(Some("c")), ""),
            (
                5005,
                Step,
                "hold: primary healthy [handover to b (manual switchover) abandoned: another node became primary] [changed a->c (primary lease lost, counted)]",
            ),
            (
                5006,
                Switchover(Some("b")),
                "demote c for b: manual switchover",
            ),
            (5007, Set(n("b").unreachable()), ""),
            (
                5007,
                Step,
                "hold: primary healthy [handover to b (manual switchover) abandoned: successor unfit: unreachable]",
            ),
        ],
    );
}

#[test]
fn wake_at_points_to_the_next_deadline() {
    let mut policy = RolePolicy::new(cfg());
    let sick = Observations::new(Some("a"), vec![n("a").sick(), n("b")]);
    assert_eq!(policy.step(&sick, ms(0)).wake_at, Some(ms(1000)));
    let d = policy.step(&sick, ms(1000));
    assert!(matches!(
        d.action,
        Action::Demote {
            cause: Cause::PrimaryUnhealthy,
            ..
        }
    ));
    assert_eq!(d.wake_at, Some(ms(6000)), "handover deadline");
    let _ = policy.pause(ms(3000), ms(1500));
    let d = policy.step(&sick, ms(1500));
    assert_eq!(d.wake_at, Some(ms(3000)), "pause expiry");
    let _ = policy.resume();
    let healthy = Observations::new(Some("a"), vec![n("a"), n("b")]);
    assert_eq!(policy.step(&healthy, ms(4000)).wake_at, None);
}

// ---- lease arithmetic and config validation ----------------------------------------------

fn lease(ttl: u64, drift_ppm: u32, margin: u64) -> LeaseConfig {
    LeaseConfig {
        ttl: ms(ttl),
        renew_interval: ms(ttl / 5),
        renew_timeout: ms(ttl / 10),
        margin: ms(margin),
        drift: Drift::from_ppm(drift_ppm).unwrap(),
    }
}

/// Holder deadline and leader expiry for a renew sent (and received) at `sent`.
#[track_caller]
fn check_lease(l: LeaseConfig, sent: u64, holder_stops: Duration, leader_expires: Duration) {
    assert_eq!(l.holder_deadline(ms(sent)), holder_stops, "holder deadline");
    assert_eq!(l.leader_expiry(ms(sent)), leader_expires, "leader expiry");
    assert!(holder_stops < leader_expires || l.ttl.is_zero());
}

#[test]
fn lease_arithmetic() {
    // sent + ttl * (1 - drift) - margin, and received + ttl * (1 + drift).
    check_lease(lease(1000, 10_000, 50), 0, ms(940), ms(1010));
    check_lease(lease(1000, 10_000, 50), 5000, ms(5940), ms(6010));
    check_lease(lease(1000, 0, 50), 0, ms(950), ms(1000));
    check_lease(lease(600, 10_000, 50), 100, ms(644), ms(706));
    // Rounding: down for the holder, up for the leader.
    check_lease(
        lease(1, 1, 0),
        0,
        Duration::from_nanos(999_999),
        Duration::from_nanos(1_000_001),
    );
    // Saturation instead of overflow.
    assert_eq!(
        lease(1000, 0, 0).holder_deadline(Duration::MAX),
        Duration::MAX
    );
    assert_eq!(
        lease(1000, 0, 0).leader_expiry(Duration::MAX),
        Duration::MAX
    );
    // The holder stops before the leader could expire, even with the holder's clock slow and
    // the leader's fast by the full drift bound: holder-local deadline d_h = ttl(1-e) - m runs
    // for at most d_h / (1-e) <= ttl in global time; the leader waits ttl(1+e) local, at least
    // ttl in global time.
    let l = LeaseConfig::lan();
    let e = f64::from(l.drift.ppm()) / 1e6;
    let holder_global = l.window().as_secs_f64() / (1.0 - e);
    let leader_global = l.ttl_fast().as_secs_f64() / (1.0 + e);
    assert!(holder_global + l.margin.as_secs_f64() <= leader_global + 1e-9);
}

#[test]
fn holder_lease_validity() {
    let mut h = HolderLease::new(lease(1000, 0, 100));
    assert!(!h.is_valid(ms(0)));
    h.acknowledged(ms(0));
    assert_eq!(h.valid_until(), Some(ms(900)));
    assert!(h.is_valid(ms(899)));
    assert!(!h.is_valid(ms(900)), "stops exactly at the deadline");
    h.acknowledged(ms(300));
    assert_eq!(h.valid_until(), Some(ms(1200)));
    // A late acknowledgement of an older renew never shortens validity.
    h.acknowledged(ms(200));
    assert_eq!(h.valid_until(), Some(ms(1200)));
    assert_eq!(h.remaining(ms(1000)), ms(200));
    h.clear();
    assert!(!h.is_valid(ms(1000)));
    assert_eq!(h.remaining(ms(1000)), ms(0));
}

/// `want`: the fields with a problem, in order ("" for a valid config).
#[track_caller]
fn check_config(c: RoleConfig, want: &str) {
    let got = match c.validate() {
        Ok(()) => String::new(),
        Err(FailoverError::Config(errors)) => {
            for p in &errors.problems {
                assert!(
                    p.message.contains(&p.field),
                    "message names the field: {}",
                    p.message
                );
            }
            errors
                .problems
                .iter()
                .map(|p| p.field.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        }
        Err(other) => format!("unexpected {other}"),
    };
    assert_eq!(got, want);
}

#[test]
fn config_validation() {
    let with = |f: &dyn Fn(&mut RoleConfig)| {
        let mut c = RoleConfig::lan();
        f(&mut c);
        c
    };
    check_config(RoleConfig::lan(), "");
    check_config(RoleConfig::wan(), "");
    check_config(with(&|c| c.lease.ttl = ms(0)), "lease.ttl");
    check_config(with(&|c| c.lease.margin = ms(0)), "lease.margin");
    check_config(with(&|c| c.lease.drift = Drift::MAX), "");
    check_config(with(&|c| c.lease.margin = ms(594)), "lease.margin");
    check_config(with(&|c| c.lease.margin = ms(300)), "lease.renew_interval");
    check_config(
        with(&|c| c.lease.renew_interval = ms(250)),
        "lease.renew_interval",
    );
    check_config(
        with(&|c| c.policy.handover_timeout = ms(605)),
        "policy.handover_timeout",
    );
    check_config(with(&|c| c.policy.handover_timeout = ms(606)), "");
    check_config(
        with(&|c| c.policy.anti_flap.window = ms(0)),
        "policy.anti_flap.window",
    );
    check_config(
        with(&|c| c.policy.maintenance_max = ms(0)),
        "policy.maintenance_max",
    );
    check_config(
        with(&|c| c.policy.failback.approval = true),
        "policy.failback.approval",
    );
    check_config(
        with(&|c| {
            c.policy.failback.enabled = true;
            c.policy.failback.approval = true;
        }),
        "",
    );
    check_config(
        with(&|c| {
            c.policy.failback.enabled = true;
            c.policy.failback.hold_down = ms(0);
        }),
        "policy.failback.hold_down policy.failback.hold_down",
    );
    check_config(
        with(&|c| {
            c.policy.max_lag = Some(10);
            c.policy.failback.max_lag = Some(11);
        }),
        "policy.failback.max_lag",
    );
    // Every problem is reported at once.
    check_config(
        with(&|c| {
            c.lease.margin = ms(0);
            c.policy.maintenance_max = ms(0);
        }),
        "lease.margin policy.maintenance_max",
    );
    let err = with(&|c| c.lease.margin = ms(594)).validate().unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid failover config: lease.margin = 594 ms leaves no validity window: lease ttl 600 ms \
         x (1 - drift) = 594 ms must exceed the margin; raise lease.ttl or lower lease.margin"
    );
}

#[test]
fn a_settled_candidate_is_preferred_to_one_that_just_came_back() {
    // b was away and has just come back: among equal priorities the settled c is chosen, and b
    // only once it has been a candidate for `settle` (2 s).
    let back = |at_switchover: u64, want: &'static str| {
        check_scenario(
            cfg(),
            vec![n("a"), n("b"), n("c")],
            &[
                (0, Holder(Some("a")), ""),
                (
                    0,
                    Step,
                    "hold: primary healthy [changed -->a (initial election)]",
                ),
                (100, Set(n("b").unreachable()), ""),
                (100, Step, "hold: primary healthy"),
                (5_000, Set(n("b")), ""),
                (5_000, Step, "hold: primary healthy"),
                (at_switchover, Step, "hold: primary healthy"),
                (at_switchover, Switchover(None), want),
            ],
        );
    };
    back(5_100, "demote a for c: manual switchover");
    back(7_000, "demote a for b: manual switchover");
    // A preference only: a lone fresh candidate is chosen at once.
    check_scenario(
        cfg(),
        vec![n("a"), n("b").unreachable()],
        &[
            (0, Holder(Some("a")), ""),
            (
                0,
                Step,
                "hold: primary healthy [changed -->a (initial election)]",
            ),
            (5_000, Set(n("b")), ""),
            (5_000, Step, "hold: primary healthy"),
            (5_000, Switchover(None), "demote a for b: manual switchover"),
        ],
    );
    // Priority still comes first.
    check_scenario(
        cfg(),
        vec![n("a"), n("b").prio(2).unreachable(), n("c")],
        &[
            (0, Holder(Some("a")), ""),
            (
                0,
                Step,
                "hold: primary healthy [changed -->a (initial election)]",
            ),
            (5_000, Set(n("b").prio(2)), ""),
            (5_000, Step, "hold: primary healthy"),
            (5_000, Switchover(None), "demote a for b: manual switchover"),
        ],
    );
}

/// Placement after the deciding primary's own restart, and against a coordination leader. A
/// policy that has just started judges no peer new (all were candidates at its first step),
/// so the coordination-leader tiebreak applies; and keeping the role off the coordination
/// leader outranks settling (on the leader, its crash costs a Raft election on top of the
/// role failover: about 1.2 s instead of 0.6 s in the rolling-restart bench).
#[test]
fn a_new_policy_sees_no_one_as_new_and_the_coordination_leader_tiebreak_outranks_settling() {
    check_scenario(
        cfg(),
        vec![n("a"), n("b"), n("c").leads()],
        &[
            (0, Holder(Some("a")), ""),
            (
                0,
                Step,
                "hold: primary healthy [changed -->a (initial election)]",
            ),
            (300, Step, "hold: primary healthy"),
            (300, Switchover(None), "demote a for b: manual switchover"),
        ],
    );
    // b came back 100 ms ago (fresh), c is settled but leads the store: b still.
    check_scenario(
        cfg(),
        vec![n("a"), n("b").unreachable(), n("c").leads()],
        &[
            (0, Holder(Some("a")), ""),
            (
                0,
                Step,
                "hold: primary healthy [changed -->a (initial election)]",
            ),
            (5_000, Set(n("b")), ""),
            (5_000, Step, "hold: primary healthy"),
            (5_100, Step, "hold: primary healthy"),
            (5_100, Switchover(None), "demote a for b: manual switchover"),
        ],
    );
}

/// The policy checks its invariants after every step (debug builds: tests and simulations).
/// Its clock must never go backwards; a step fed an earlier `now` than the last one stops on
/// the assertion, naming it.
#[test]
fn debug_invariants_fire_when_time_goes_backwards() {
    if !cfg!(debug_assertions) {
        return;
    }
    let mut policy = RolePolicy::new(cfg());
    let obs = Observations::new(None, vec![n("a"), n("b")]);
    let _ = policy.step(&obs, ms(5_000));
    let msg = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = policy.step(&obs, ms(1_000));
    })) {
        Ok(()) => String::new(),
        Err(p) => p.downcast_ref::<String>().cloned().unwrap_or_default(),
    };
    assert!(
        msg.contains("failover policy invariant broken at step 1s")
            && msg.contains("time went backwards"),
        "{msg}"
    );
}
