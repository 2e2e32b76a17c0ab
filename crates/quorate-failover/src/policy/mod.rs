//! The pure failover policy of one role: `(state, observations, now) -> decision`.
//!
//! [`RolePolicy`] holds what the policy must remember (last primary, when trouble started, the
//! anti-flap record, maintenance, vetoes, a handover under way) and turns an [`Observations`]
//! taken at `now` into a [`Decision`]. It reads no clock, opens no socket and draws no random
//! number: the async shell feeds it and applies its actions. Every node of the role runs the
//! same policy on its own observations; the coordination store's election and lease make sure
//! at most one of them ends up primary whatever the policies say.
//!
//! Rules, in the order [`RolePolicy::step`] applies them:
//! 1. A primary not in the majority is demoted at once (safety; ignores pause and budget).
//! 2. A handover under way (switchover, failback, unhealthy primary) continues while its
//!    successor stays fit and `handover_timeout` has not passed.
//! 3. Maintenance (pause) stops every other automatic action until it expires.
//! 4. With a primary: unhealthy for longer than `unhealthy_grace` -> hand over to the best
//!    candidate; else, failback to a higher-priority node when enabled and after the hold-down.
//! 5. Without a primary: promote the best candidate, once the coordination store has a leader
//!    (no grant can commit before, and the pick should keep the role off that leader).
//! 6. Automatic failovers (not the first election, not manual ones) spend the anti-flap budget;
//!    once it is spent, steps 4 and 5 hold and say so, and only manual operations move the role.
//!
//! Eligibility: healthy or degraded, reachable, in the majority, not tagged no-failover,
//! priority above 0, not in node maintenance, lag within `max_lag` when a lag source exists,
//! no recent `before_promote` veto. Preference: priority (higher), then lag (lower), then not
//! the coordination (Raft) leader, then id. The third key keeps the role off the coordination
//! leader when it costs nothing: a crash of a node that is both waits for a coordination
//! election before the role lease can move (ARCHITECTURE.md, "Role placement").

// tidy:pure-core

pub mod config;
pub mod lease;
mod types;

pub use types::{
    Abandoned, Action, Cause, Decision, Hold, Ineligible, NodeHealth, NodeKey, NodeView, Notice,
    Observations, Refusal,
};

use std::cmp::Reverse;
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::Duration;

use config::PolicyConfig;
use types::{fmt_at, write_list};

/// Longest `before_promote` veto reason kept, in bytes (hook output is outside input).
pub const VETO_REASON_BYTES_MAX: usize = 256;

/// A handover under way: the primary was asked to step down for `to`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Pending<N> {
    /// The primary when the handover started (it may still hold the role).
    from: Option<N>,
    to: N,
    cause: Cause,
    detected_at: Duration,
    deadline: Duration,
}

/// A pause of automatic actions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pause {
    until: Duration,
}

/// The state of the anti-flap budget at one instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Automatic failovers counted in the current window.
    pub used: u32,
    /// The budget (K).
    pub max: u32,
    /// When spent: the instant automatic failovers are allowed again.
    pub blocked_until: Option<Duration>,
}

/// Whether the role may move automatically, and if not why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Automatic {
    /// Automatic failover and failback (when enabled) are on.
    Enabled,
    /// Maintenance mode until the given instant.
    Paused {
        /// Expiry.
        until: Duration,
    },
    /// The anti-flap budget is spent until the given instant.
    BudgetSpent {
        /// When it recovers.
        until: Duration,
    },
}

/// One member's line in an [`Explanation`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeReport<N> {
    /// The node.
    pub id: N,
    /// Whether it holds the role now.
    pub is_primary: bool,
    /// Whether it could be promoted now (never true for the primary itself).
    pub candidate: bool,
    /// Its place in the preference order among candidates (1 = best).
    pub rank: Option<usize>,
    /// Its priority.
    pub priority: u32,
    /// Its lag, if known.
    pub lag: Option<u64>,
    /// Whether it leads the coordination store (ranked after equal nodes that do not).
    pub coord_leader: bool,
    /// Why it is not a candidate (for the primary: why it could not be re-elected).
    pub reasons: Vec<Ineligible>,
}

/// Answer to "who could take this role, and why not the others?".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation<N> {
    /// The primary, if any.
    pub primary: Option<N>,
    /// Whether automatic moves are on.
    pub automatic: Automatic,
    /// The anti-flap budget.
    pub budget: Budget,
    /// A handover under way: its successor and cause.
    pub handover: Option<(N, Cause)>,
    /// Every member, ordered by id.
    pub nodes: Vec<NodeReport<N>>,
}

impl<N: PartialEq> Explanation<N> {
    /// The report for one node.
    pub fn node(&self, id: &N) -> Option<&NodeReport<N>> {
        self.nodes.iter().find(|r| &r.id == id)
    }
}

impl<N: fmt::Display> fmt::Display for Explanation<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.primary {
            Some(p) => write!(f, "primary: {p}")?,
            None => f.write_str("primary: none")?,
        }
        match self.automatic {
            Automatic::Enabled => f.write_str("; automatic failover on")?,
            Automatic::Paused { until } => write!(f, "; paused until {}", fmt_at(until))?,
            Automatic::BudgetSpent { until } => write!(
                f,
                "; anti-flap budget spent, manual only until {}",
                fmt_at(until)
            )?,
        }
        write!(
            f,
            " ({}/{} automatic failovers in window)",
            self.budget.used, self.budget.max
        )?;
        if let Some((to, cause)) = &self.handover {
            write!(f, "; handover to {to} under way ({cause})")?;
        }
        for r in &self.nodes {
            write!(f, "\n  {}: ", r.id)?;
            if r.is_primary {
                f.write_str("primary")?;
                if !r.reasons.is_empty() {
                    f.write_str(" (")?;
                    write_list(f, &r.reasons)?;
                    f.write_str(")")?;
                }
            } else if let Some(rank) = r.rank {
                write!(f, "candidate #{rank} (priority {}", r.priority)?;
                if let Some(lag) = r.lag {
                    write!(f, ", lag {lag}")?;
                }
                if r.coord_leader {
                    f.write_str(", coordination leader")?;
                }
                f.write_str(")")?;
            } else {
                f.write_str("not a candidate: ")?;
                write_list(f, &r.reasons)?;
            }
        }
        Ok(())
    }
}

/// The policy state of one role, as seen by one node.
#[derive(Clone, Debug)]
pub struct RolePolicy<N> {
    config: PolicyConfig,
    /// Lease holder at the last step.
    holder: Option<N>,
    /// Last node that held the role (kept across a lapse).
    previous: Option<N>,
    /// When `previous` became primary.
    primary_since: Option<Duration>,
    /// When the trouble that ended the last primary's tenure was first seen (the lapse, or
    /// the start of its unhealthiness), and what it was.
    lost_at: Option<Duration>,
    lost_cause: Cause,
    /// When the current primary was first seen unhealthy.
    unhealthy_since: Option<Duration>,
    /// Since when each node has been a candidate without interruption.
    eligible_since: BTreeMap<N, Duration>,
    /// The first step's time: a node already a candidate then did not just become one.
    watching_since: Option<Duration>,
    /// Times of the last K automatic failovers, oldest first.
    failovers: VecDeque<Duration>,
    pause: Option<Pause>,
    /// Failbacks postponed by an operator until this instant.
    failback_postponed: Option<Duration>,
    vetoes: BTreeMap<N, (Duration, String)>,
    pending: Option<Pending<N>>,
}

impl<N: NodeKey> RolePolicy<N> {
    /// A fresh policy (no primary seen yet). The config is assumed validated
    /// ([`PolicyConfig::validate`]); nothing here panics on an odd one.
    pub fn new(config: PolicyConfig) -> Self {
        RolePolicy {
            config,
            holder: None,
            previous: None,
            primary_since: None,
            lost_at: None,
            lost_cause: Cause::LeaseLost,
            unhealthy_since: None,
            eligible_since: BTreeMap::new(),
            watching_since: None,
            failovers: VecDeque::new(),
            pause: None,
            failback_postponed: None,
            vetoes: BTreeMap::new(),
            pending: None,
        }
    }

    /// The policy knobs.
    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// The primary seen at the last step.
    pub fn primary(&self) -> Option<&N> {
        self.holder.as_ref()
    }

    /// Advances the policy to `now` with a fresh observation and returns what to do.
    pub fn step(&mut self, obs: &Observations<N>, now: Duration) -> Decision<N> {
        let mut notices = Vec::new();
        self.expire(now, &mut notices);
        let views = dedup(&obs.nodes);
        self.observe_primary(obs, now, &mut notices);
        self.track_eligibility(&views, obs.lag_tracked, now);
        let action = self.decide(&views, obs, now, &mut notices);
        let wake_at = self.wake_at(&action, now);
        #[cfg(debug_assertions)]
        {
            let v = self.invariant_violation(now, wake_at);
            debug_assert!(
                v.is_none(),
                "failover policy invariant broken at step {now:?}: {}",
                v.unwrap_or_default()
            );
        }
        Decision {
            action,
            notices,
            wake_at,
        }
    }

    /// The first broken invariant after a step at `now`, if any: nothing recorded lies in the
    /// future (so `now` never went backwards), the failover window holds at most
    /// `max_failovers` times in order, a handover's deadline follows its start, and the next
    /// wake-up is after `now`.
    #[cfg(debug_assertions)]
    fn invariant_violation(&self, now: Duration, wake_at: Option<Duration>) -> Option<String> {
        if let Some((node, since)) = self.eligible_since.iter().find(|(_, s)| **s > now) {
            return Some(format!(
                "{node:?} is eligible since {since:?}, after now: time went backwards"
            ));
        }
        let max = self.config.anti_flap.max_failovers.get() as usize;
        let ordered = self
            .failovers
            .iter()
            .zip(self.failovers.iter().skip(1))
            .all(|(a, b)| a <= b);
        if self.failovers.len() > max || !ordered || self.failovers.back().is_some_and(|t| *t > now)
        {
            return Some(format!(
                "failover times {:?} are not at most {max}, ordered and at or before now",
                self.failovers
            ));
        }
        if let Some(p) = &self.pending
            && (p.detected_at > now || p.deadline < p.detected_at)
        {
            return Some(format!(
                "handover to {:?} started {:?} with deadline {:?}",
                p.to, p.detected_at, p.deadline
            ));
        }
        wake_at
            .filter(|w| *w <= now)
            .map(|w| format!("wake-up {w:?} is not after now"))
    }

    /// Why each member is or is not a candidate, and whether automatic moves are on.
    pub fn explain(&self, obs: &Observations<N>, now: Duration) -> Explanation<N> {
        let views = dedup(&obs.nodes);
        let ranked = self.candidates(&views, obs, now, obs.primary.as_ref(), false);
        let nodes = views
            .iter()
            .map(|v| {
                let rank = ranked.iter().position(|c| c.id == v.id).map(|i| i + 1);
                NodeReport {
                    id: v.id.clone(),
                    is_primary: obs.primary.as_ref() == Some(&v.id),
                    candidate: rank.is_some(),
                    rank,
                    priority: v.priority,
                    lag: v.lag,
                    coord_leader: v.coord_leader,
                    reasons: self.reasons(v, obs.lag_tracked, now, false),
                }
            })
            .collect();
        let budget = self.budget(now);
        let automatic = match (self.active_pause(now), budget.blocked_until) {
            (Some(p), _) => Automatic::Paused { until: p.until },
            (None, Some(until)) => Automatic::BudgetSpent { until },
            (None, None) => Automatic::Enabled,
        };
        Explanation {
            primary: obs.primary.clone(),
            automatic,
            budget,
            handover: self.pending.as_ref().map(|p| (p.to.clone(), p.cause)),
            nodes,
        }
    }

    /// The anti-flap budget at `now`.
    pub fn budget(&self, now: Duration) -> Budget {
        let max = self.config.anti_flap.max_failovers.get();
        let window = self.config.anti_flap.window;
        let in_window: Vec<Duration> = self
            .failovers
            .iter()
            .copied()
            .filter(|t| now.saturating_sub(*t) < window)
            .collect();
        let used = u32::try_from(in_window.len()).unwrap_or(u32::MAX);
        let blocked_until = match in_window.first() {
            Some(oldest) if used >= max => Some(oldest.saturating_add(window)),
            _ => None,
        };
        Budget {
            used,
            max,
            blocked_until,
        }
    }

    // ---- manual operations -------------------------------------------------------------

    /// Manual switchover: the primary steps down for `target`, or for the best candidate when
    /// `target` is `None`. Refused (nothing changes) when there is no primary, the target is
    /// unfit, or a handover is under way. Allowed while paused or with the budget spent.
    pub fn switchover(
        &mut self,
        obs: &Observations<N>,
        target: Option<&N>,
        now: Duration,
    ) -> Result<Action<N>, Refusal<N>> {
        let Some(primary) = obs.primary.clone() else {
            return Err(Refusal::NoPrimary);
        };
        self.refuse_if_pending()?;
        let to = self.pick(obs, target, now, Some(&primary), false)?;
        self.start_handover(Some(primary.clone()), to.clone(), Cause::Switchover, now);
        Ok(Action::Demote {
            node: primary,
            successor: Some(to),
            cause: Cause::Switchover,
        })
    }

    /// Manual failover when the role has no primary: promote `target`, or the best candidate
    /// when `None`. The lag limit is waived (the operator accepts the data loss it may mean);
    /// every other rule holds. Refused when a primary exists or the target is unfit.
    pub fn failover(
        &mut self,
        obs: &Observations<N>,
        target: Option<&N>,
        now: Duration,
    ) -> Result<Action<N>, Refusal<N>> {
        if let Some(primary) = obs.primary.clone() {
            return Err(Refusal::PrimaryExists { primary });
        }
        self.refuse_if_pending()?;
        let to = self.pick(obs, target, now, None, true)?;
        self.start_handover(None, to.clone(), Cause::ManualFailover, now);
        Ok(Action::Promote {
            node: to,
            cause: Cause::ManualFailover,
        })
    }

    /// Manual failback: switchover to the best candidate, if it has a higher priority than the
    /// primary (no hold-down, no approval, no postponement: the operator decides). With
    /// `expected` (an approval of the failback the policy waited for), refused unless that
    /// node still is the preferred candidate, so a stale approval moves nothing.
    pub fn failback(
        &mut self,
        obs: &Observations<N>,
        expected: Option<&N>,
        now: Duration,
    ) -> Result<Action<N>, Refusal<N>> {
        let Some(primary) = obs.primary.clone() else {
            return Err(Refusal::NoPrimary);
        };
        let views = dedup(&obs.nodes);
        let primary_priority = views
            .iter()
            .find(|v| v.id == primary)
            .map_or(0, |v| v.priority);
        let best = self
            .candidates(&views, obs, now, Some(&primary), false)
            .first()
            .map(|v| (v.id.clone(), v.priority));
        let preferred = best
            .filter(|(_, priority)| *priority > primary_priority)
            .map(|(to, _)| to);
        match (preferred, expected) {
            (Some(to), Some(e)) if to != *e => Err(Refusal::FailbackTargetChanged {
                expected: e.clone(),
                now: Some(to),
            }),
            (None, Some(e)) => Err(Refusal::FailbackTargetChanged {
                expected: e.clone(),
                now: None,
            }),
            (Some(to), _) => self.switchover(obs, Some(&to), now),
            (None, None) => Err(Refusal::AlreadyPreferred { primary }),
        }
    }

    /// Postpones automatic failbacks until `until` (an operator's "not now" to a failback
    /// awaiting approval, or ahead of one): a failback that falls due before then holds, and
    /// an automatic failback under way is cancelled. Failovers are not affected; a manual
    /// failback still works. Refused when `until` is not in the future or the postponement
    /// would exceed `maintenance_max`.
    pub fn postpone_failback(
        &mut self,
        until: Duration,
        now: Duration,
    ) -> Result<Vec<Notice<N>>, Refusal<N>> {
        let requested = until.saturating_sub(now);
        if requested.is_zero() || requested > self.config.maintenance_max {
            return Err(Refusal::BadPostpone {
                requested,
                max: self.config.maintenance_max,
            });
        }
        self.failback_postponed = Some(until);
        let mut notices = Vec::new();
        if self
            .pending
            .as_ref()
            .is_some_and(|p| p.cause == Cause::Failback)
        {
            self.abandon(Abandoned::Cancelled, &mut notices);
        }
        Ok(notices)
    }

    /// The end of a postponement of failbacks in force at `now`, if any.
    pub fn failback_postponed_until(&self, now: Duration) -> Option<Duration> {
        self.failback_postponed.filter(|until| *until > now)
    }

    /// Maintenance (pause) mode until `until`: no automatic promotion, failover or failback.
    /// A minority primary is still demoted and manual operations still work. Expires by itself;
    /// cancels an automatic handover under way. Refused when `until` is not in the future or
    /// the pause would exceed `maintenance_max`.
    pub fn pause(&mut self, until: Duration, now: Duration) -> Result<Vec<Notice<N>>, Refusal<N>> {
        let requested = until.saturating_sub(now);
        if requested.is_zero() || requested > self.config.maintenance_max {
            return Err(Refusal::BadPause {
                requested,
                max: self.config.maintenance_max,
            });
        }
        self.pause = Some(Pause { until });
        let mut notices = Vec::new();
        if self.pending.as_ref().is_some_and(|p| !p.cause.is_manual()) {
            self.abandon(Abandoned::Cancelled, &mut notices);
        }
        Ok(notices)
    }

    /// Leaves maintenance mode. Returns whether the role was paused.
    pub fn resume(&mut self) -> bool {
        self.pause.take().is_some()
    }

    /// The pause in force at `now`, if any: its expiry.
    pub fn paused_until(&self, now: Duration) -> Option<Duration> {
        self.active_pause(now).map(|p| p.until)
    }

    /// `node`'s `before_promote` hook vetoed its promotion: it is not a candidate for
    /// `veto_backoff`, and a handover to it is given up. `reason` is cut to
    /// [`VETO_REASON_BYTES_MAX`] bytes.
    pub fn record_veto(&mut self, node: &N, reason: &str, now: Duration) -> Vec<Notice<N>> {
        let until = now.saturating_add(self.config.veto_backoff);
        self.vetoes.insert(
            node.clone(),
            (until, truncate(reason, VETO_REASON_BYTES_MAX)),
        );
        let mut notices = Vec::new();
        if self.pending.as_ref().is_some_and(|p| &p.to == node) {
            self.abandon(Abandoned::Vetoed, &mut notices);
        }
        notices
    }

    /// Follows a handover decided on another node (a published manual request, already
    /// resolved to its successor `to`): the same fitness checks on `to` as the local operation
    /// (lag waived for `Cause::ManualFailover`), but it works whether or not the old primary
    /// has stepped down yet, and it replaces a handover under way.
    pub fn accept_handover(
        &mut self,
        obs: &Observations<N>,
        to: &N,
        cause: Cause,
        now: Duration,
    ) -> Result<Vec<Notice<N>>, Refusal<N>> {
        let mut notices = Vec::new();
        if obs.primary.as_ref() == Some(to) {
            return Ok(notices);
        }
        let to = self.pick(obs, Some(to), now, None, cause == Cause::ManualFailover)?;
        if self.pending.as_ref().is_some_and(|p| p.to != to) {
            self.abandon(Abandoned::Replaced, &mut notices);
        }
        self.start_handover(obs.primary.clone(), to, cause, now);
        Ok(notices)
    }

    /// Cancels a handover under way; returns its notice, if there was one.
    pub fn cancel_handover(&mut self) -> Option<Notice<N>> {
        let mut notices = Vec::new();
        self.abandon(Abandoned::Cancelled, &mut notices);
        notices.pop()
    }

    // ---- internals --------------------------------------------------------------------

    fn expire(&mut self, now: Duration, notices: &mut Vec<Notice<N>>) {
        if self.pause.is_some_and(|p| now >= p.until) {
            self.pause = None;
            notices.push(Notice::MaintenanceExpired { at: now });
        }
        self.vetoes.retain(|_, (until, _)| now < *until);
        if self.pending.as_ref().is_some_and(|p| now >= p.deadline) {
            self.abandon(Abandoned::TimedOut, notices);
        }
    }

    fn observe_primary(
        &mut self,
        obs: &Observations<N>,
        now: Duration,
        notices: &mut Vec<Notice<N>>,
    ) {
        if obs.primary == self.holder {
            return;
        }
        match &obs.primary {
            None => {
                if let Some(old) = self.holder.take() {
                    // A primary that was unhealthy and then went away most likely stepped
                    // down because of it (its own grace ran out first).
                    // A handover asked of it explains its going best.
                    (self.lost_cause, self.lost_at) = match (&self.pending, self.unhealthy_since) {
                        (Some(p), _) if p.from.as_ref() == Some(&old) => {
                            (p.cause, Some(p.detected_at))
                        }
                        (_, Some(since)) => (Cause::PrimaryUnhealthy, Some(since)),
                        _ => (Cause::LeaseLost, Some(now)),
                    };
                    self.unhealthy_since = None;
                    notices.push(Notice::PrimaryLost {
                        old,
                        cause: self.lost_cause,
                        at: now,
                    });
                }
            }
            Some(new) if self.previous.as_ref() == Some(new) => {
                // A handover to it is done; one that asks it to step down goes on; any other
                // (a manual failover into the vacancy) is moot now.
                match &self.pending {
                    Some(p) if &p.to == new => self.pending = None,
                    Some(p) if p.from.as_ref() == Some(new) => {}
                    Some(_) => self.abandon(Abandoned::Superseded, notices),
                    None => {}
                }
                self.holder = Some(new.clone());
                self.lost_at = None;
                self.lost_cause = Cause::LeaseLost;
                notices.push(Notice::PrimaryRegained {
                    node: new.clone(),
                    at: now,
                });
            }
            Some(new) => {
                let pending = self.pending.take();
                let (mut cause, mut detected_at) = match &pending {
                    Some(p) if &p.to == new => (p.cause, Some(p.detected_at)),
                    _ if self.previous.is_some() => (self.lost_cause, self.lost_at),
                    _ => (Cause::Initial, None),
                };
                match pending {
                    // The old primary seen for the first time: the handover goes on.
                    Some(p) if p.from.as_ref() == Some(new) => {
                        self.pending = Some(p);
                        (cause, detected_at) = if self.previous.is_some() {
                            (self.lost_cause, self.lost_at)
                        } else {
                            (Cause::Initial, None)
                        };
                    }
                    Some(p) if &p.to != new => notices.push(Notice::HandoverAbandoned {
                        to: p.to,
                        cause: p.cause,
                        why: Abandoned::Superseded,
                    }),
                    _ => {}
                }
                let counted = self.previous.is_some() && !cause.is_manual();
                if counted {
                    self.failovers.push_back(now);
                    let max = self.config.anti_flap.max_failovers.get() as usize;
                    while self.failovers.len() > max {
                        self.failovers.pop_front();
                    }
                }
                notices.push(Notice::PrimaryChanged {
                    old: self.previous.clone(),
                    new: new.clone(),
                    cause,
                    detected_at,
                    at: now,
                    counted,
                });
                self.holder = Some(new.clone());
                self.previous = Some(new.clone());
                self.primary_since = Some(now);
                self.lost_at = None;
                self.lost_cause = Cause::LeaseLost;
                self.unhealthy_since = None;
            }
        }
    }

    fn track_eligibility(&mut self, views: &[&NodeView<N>], lag_tracked: bool, now: Duration) {
        self.watching_since.get_or_insert(now);
        let mut next = BTreeMap::new();
        for v in views {
            if self.reasons(v, lag_tracked, now, false).is_empty() {
                let since = self.eligible_since.get(&v.id).copied().unwrap_or(now);
                next.insert(v.id.clone(), since);
            }
        }
        self.eligible_since = next;
    }

    fn decide(
        &mut self,
        views: &[&NodeView<N>],
        obs: &Observations<N>,
        now: Duration,
        notices: &mut Vec<Notice<N>>,
    ) -> Action<N> {
        let primary_view = obs
            .primary
            .as_ref()
            .and_then(|p| views.iter().copied().find(|v| &v.id == p));
        // Track how long the primary has been unhealthy.
        match primary_view {
            Some(v) if v.health == NodeHealth::Unhealthy => {
                self.unhealthy_since.get_or_insert(now);
            }
            _ => self.unhealthy_since = None,
        }

        // A handover under way: check its successor is still fit.
        if let Some(p) = &self.pending {
            let waive_lag = p.cause == Cause::ManualFailover;
            let reasons = match views.iter().find(|v| v.id == p.to) {
                Some(v) => self.reasons(v, obs.lag_tracked, now, waive_lag),
                None => vec![Ineligible::Unreachable],
            };
            if !reasons.is_empty() {
                self.abandon(Abandoned::Unfit(reasons), notices);
            }
        }

        if let Some(primary) = obs.primary.clone() {
            // 1. A minority primary goes, whatever else holds.
            if primary_view.is_some_and(|v| !v.in_majority) {
                let successor = self
                    .candidates(views, obs, now, Some(&primary), false)
                    .first()
                    .map(|v| v.id.clone());
                return Action::Demote {
                    node: primary,
                    successor,
                    cause: Cause::NotInMajority,
                };
            }
            // 2. A handover under way continues.
            if let Some(p) = &self.pending {
                return Action::Demote {
                    node: primary,
                    successor: Some(p.to.clone()),
                    cause: p.cause,
                };
            }
            // 4a. Unhealthy primary.
            if let Some(since) = self.unhealthy_since {
                let until = since.saturating_add(self.config.unhealthy_grace);
                if now < until {
                    return Action::Hold(Hold::UnhealthyGrace { until });
                }
                let cause = Cause::PrimaryUnhealthy;
                if let Some(hold) = self.blocked(now, cause) {
                    return Action::Hold(hold);
                }
                let Some(to) = self
                    .candidates(views, obs, now, Some(&primary), false)
                    .first()
                    .map(|v| v.id.clone())
                else {
                    return Action::Hold(Hold::NoCandidate { wanted: cause });
                };
                self.pending = Some(Pending {
                    from: Some(primary.clone()),
                    to: to.clone(),
                    cause,
                    detected_at: since,
                    deadline: now.saturating_add(self.config.handover_timeout),
                });
                return Action::Demote {
                    node: primary,
                    successor: Some(to),
                    cause,
                };
            }
            // 4b. Failback.
            return self.consider_failback(views, obs, primary, primary_view, now);
        }

        // No primary.
        if let Some(p) = &self.pending {
            return Action::Promote {
                node: p.to.clone(),
                cause: p.cause,
            };
        }
        let cause = if self.previous.is_some() {
            self.lost_cause
        } else {
            Cause::Initial
        };
        if obs.coord_leaderless {
            return Action::Hold(Hold::NoCoordinationLeader { wanted: cause });
        }
        if let Some(hold) = self.blocked(now, cause) {
            return Action::Hold(hold);
        }
        match self.candidates(views, obs, now, None, false).first() {
            Some(best) => Action::Promote {
                node: best.id.clone(),
                cause,
            },
            None => Action::Hold(Hold::NoCandidate { wanted: cause }),
        }
    }

    fn consider_failback(
        &mut self,
        views: &[&NodeView<N>],
        obs: &Observations<N>,
        primary: N,
        primary_view: Option<&NodeView<N>>,
        now: Duration,
    ) -> Action<N> {
        let fb = self.config.failback;
        let Some(pv) = primary_view else {
            return Action::Hold(Hold::PrimaryHealthy);
        };
        if !fb.enabled {
            return Action::Hold(Hold::PrimaryHealthy);
        }
        let Some(best) = self
            .candidates(views, obs, now, Some(&primary), false)
            .first()
            .copied()
        else {
            return Action::Hold(Hold::PrimaryHealthy);
        };
        if best.priority <= pv.priority {
            return Action::Hold(Hold::PrimaryHealthy);
        }
        if let Some(hold) = self.blocked(now, Cause::Failback) {
            return Action::Hold(hold);
        }
        if obs.lag_tracked
            && let Some(max) = fb.max_lag
            && best.lag.is_none_or(|lag| lag > max)
        {
            return Action::Hold(Hold::FailbackNotCaughtUp {
                to: best.id.clone(),
                lag: best.lag,
                max,
            });
        }
        let eligible_since = self.eligible_since.get(&best.id).copied().unwrap_or(now);
        let primary_since = self.primary_since.unwrap_or(now);
        let until = eligible_since
            .max(primary_since)
            .saturating_add(fb.hold_down);
        if now < until {
            return Action::Hold(Hold::FailbackHoldDown {
                to: best.id.clone(),
                until,
            });
        }
        if let Some(until) = self.failback_postponed_until(now) {
            return Action::Hold(Hold::FailbackPostponed {
                to: best.id.clone(),
                until,
            });
        }
        if fb.approval {
            return Action::Hold(Hold::FailbackAwaitingApproval {
                to: best.id.clone(),
            });
        }
        let to = best.id.clone();
        self.pending = Some(Pending {
            from: Some(primary.clone()),
            to: to.clone(),
            cause: Cause::Failback,
            detected_at: now,
            deadline: now.saturating_add(self.config.handover_timeout),
        });
        Action::Demote {
            node: primary,
            successor: Some(to),
            cause: Cause::Failback,
        }
    }

    /// Why an automatic move with `cause` may not happen now (pause, budget), if it may not.
    fn blocked(&self, now: Duration, cause: Cause) -> Option<Hold<N>> {
        if let Some(p) = self.active_pause(now) {
            return Some(Hold::Paused {
                until: p.until,
                wanted: cause,
            });
        }
        // The first election is not a failover and does not spend the budget.
        if cause == Cause::Initial {
            return None;
        }
        let budget = self.budget(now);
        budget.blocked_until.map(|until| Hold::AntiFlap {
            used: budget.used,
            max: budget.max,
            until,
            wanted: cause,
        })
    }

    fn active_pause(&self, now: Duration) -> Option<Pause> {
        self.pause.filter(|p| now < p.until)
    }

    /// Every reason `v` is not a candidate (empty: it is one).
    fn reasons(
        &self,
        v: &NodeView<N>,
        lag_tracked: bool,
        now: Duration,
        waive_lag: bool,
    ) -> Vec<Ineligible> {
        let mut out = Vec::new();
        if !v.health.is_eligible() {
            out.push(Ineligible::Health(v.health));
        }
        if !v.reachable {
            out.push(Ineligible::Unreachable);
        }
        if !v.in_majority {
            out.push(Ineligible::NotInMajority);
        }
        if v.no_failover {
            out.push(Ineligible::NoFailoverTag);
        }
        if v.priority == 0 {
            out.push(Ineligible::PriorityZero);
        }
        if v.maintenance {
            out.push(Ineligible::NodeMaintenance);
        }
        if lag_tracked && !waive_lag {
            match (v.lag, self.config.max_lag) {
                (None, _) => out.push(Ineligible::LagUnknown),
                (Some(lag), Some(max)) if lag > max => {
                    out.push(Ineligible::LagTooHigh { lag, max });
                }
                _ => {}
            }
        }
        if let Some((until, reason)) = self.vetoes.get(&v.id)
            && now < *until
        {
            out.push(Ineligible::Vetoed {
                until: *until,
                reason: reason.clone(),
            });
        }
        out
    }

    /// Candidates other than `exclude`, best first: priority (higher), lag (lower, when
    /// tracked), not the coordination leader, settled, id.
    fn candidates<'a>(
        &self,
        views: &[&'a NodeView<N>],
        obs: &Observations<N>,
        now: Duration,
        exclude: Option<&N>,
        waive_lag: bool,
    ) -> Vec<&'a NodeView<N>> {
        let mut out: Vec<&NodeView<N>> = views
            .iter()
            .copied()
            .filter(|v| Some(&v.id) != exclude)
            .filter(|v| self.reasons(v, obs.lag_tracked, now, waive_lag).is_empty())
            .collect();
        out.sort_by(|a, b| {
            let lag = |v: &NodeView<N>| {
                if obs.lag_tracked {
                    v.lag.unwrap_or(u64::MAX)
                } else {
                    0
                }
            };
            // A candidate that became one within `settle` while this policy watched (rejoined,
            // recovered) comes after the settled ones of its priority, lag and coordination
            // leadership. One already a candidate at this policy's first step is not new: right
            // after this node's own restart every peer would look new. (A peer still starting
            // is no candidate at all: it gossips its roles only once its role loops run.)
            let fresh = |v: &NodeView<N>| {
                let since = self.eligible_since.get(&v.id).copied().unwrap_or(now);
                self.watching_since.is_none_or(|w| since > w)
                    && now.saturating_sub(since) < self.config.settle
            };
            (Reverse(a.priority), lag(a), a.coord_leader, fresh(a), &a.id).cmp(&(
                Reverse(b.priority),
                lag(b),
                b.coord_leader,
                fresh(b),
                &b.id,
            ))
        });
        out
    }

    /// The node a manual operation targets: `target` if fit, else the best candidate.
    fn pick(
        &self,
        obs: &Observations<N>,
        target: Option<&N>,
        now: Duration,
        exclude: Option<&N>,
        waive_lag: bool,
    ) -> Result<N, Refusal<N>> {
        let views = dedup(&obs.nodes);
        match target {
            Some(t) => {
                if exclude == Some(t) {
                    return Err(Refusal::AlreadyPrimary { node: t.clone() });
                }
                let Some(v) = views.iter().find(|v| &v.id == t) else {
                    return Err(Refusal::UnknownNode { node: t.clone() });
                };
                let reasons = self.reasons(v, obs.lag_tracked, now, waive_lag);
                if reasons.is_empty() {
                    Ok(t.clone())
                } else {
                    Err(Refusal::Unfit {
                        node: t.clone(),
                        reasons,
                    })
                }
            }
            None => match self
                .candidates(&views, obs, now, exclude, waive_lag)
                .first()
            {
                Some(v) => Ok(v.id.clone()),
                None => Err(Refusal::NoCandidate {
                    nodes: views
                        .iter()
                        .filter(|v| Some(&v.id) != exclude)
                        .map(|v| {
                            (
                                v.id.clone(),
                                self.reasons(v, obs.lag_tracked, now, waive_lag),
                            )
                        })
                        .collect(),
                }),
            },
        }
    }

    fn refuse_if_pending(&self) -> Result<(), Refusal<N>> {
        match &self.pending {
            Some(p) => Err(Refusal::HandoverInProgress { to: p.to.clone() }),
            None => Ok(()),
        }
    }

    fn start_handover(&mut self, from: Option<N>, to: N, cause: Cause, now: Duration) {
        self.pending = Some(Pending {
            from,
            to,
            cause,
            detected_at: now,
            deadline: now.saturating_add(self.config.handover_timeout),
        });
    }

    fn abandon(&mut self, why: Abandoned, notices: &mut Vec<Notice<N>>) {
        if let Some(p) = self.pending.take() {
            notices.push(Notice::HandoverAbandoned {
                to: p.to,
                cause: p.cause,
                why,
            });
        }
    }

    fn wake_at(&self, action: &Action<N>, now: Duration) -> Option<Duration> {
        let mut at: Vec<Duration> = Vec::new();
        if let Some(p) = self.active_pause(now) {
            at.push(p.until);
        }
        if let Some(p) = &self.pending {
            at.push(p.deadline);
        }
        at.extend(self.vetoes.values().map(|(until, _)| *until));
        if let Some(until) = self.budget(now).blocked_until {
            at.push(until);
        }
        if let Action::Hold(
            Hold::UnhealthyGrace { until }
            | Hold::FailbackHoldDown { until, .. }
            | Hold::FailbackPostponed { until, .. },
        ) = action
        {
            at.push(*until);
        }
        at.into_iter().filter(|t| *t > now).min()
    }
}

/// The views, one per node (the first wins), ordered by id.
fn dedup<N: NodeKey>(nodes: &[NodeView<N>]) -> Vec<&NodeView<N>> {
    let mut by_id: BTreeMap<&N, &NodeView<N>> = BTreeMap::new();
    for v in nodes {
        by_id.entry(&v.id).or_insert(v);
    }
    by_id.into_values().collect()
}

/// `s` cut to at most `max` bytes on a char boundary.
fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}
