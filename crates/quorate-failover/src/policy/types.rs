//! Plain data the policy core takes in (node views, observations) and gives out (actions,
//! causes, reasons, notices, refusals), with `Display` texts meant for operators.

// tidy:pure-core

use std::fmt;
use std::time::Duration;

/// What the policy needs of a node identifier: ordered (ties in preference break on it),
/// cloneable, printable. `quorate_types::NodeId` and `&str` both qualify.
pub trait NodeKey: Ord + Clone + fmt::Debug + fmt::Display {}

impl<T: Ord + Clone + fmt::Debug + fmt::Display> NodeKey for T {}

/// Health of a node as the policy sees it (mapped from the health view by the shell).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NodeHealth {
    /// Every check passes.
    Healthy,
    /// Non-critical checks fail: still eligible.
    Degraded,
    /// A critical check fails: not eligible; a primary in this state is replaced after the grace.
    Unhealthy,
    /// No fresh health report: not eligible, but never a reason on its own to replace a primary
    /// (a primary that is really gone loses its lease).
    Unknown,
}

impl NodeHealth {
    /// Whether a node in this state may be promoted.
    pub fn is_eligible(self) -> bool {
        matches!(self, NodeHealth::Healthy | NodeHealth::Degraded)
    }
}

impl fmt::Display for NodeHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeHealth::Healthy => "healthy",
            NodeHealth::Degraded => "degraded",
            NodeHealth::Unhealthy => "unhealthy",
            NodeHealth::Unknown => "unknown",
        })
    }
}

/// What the observing node knows about one member of the role, at one instant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView<N> {
    /// The node.
    pub id: N,
    /// Its aggregated health.
    pub health: NodeHealth,
    /// Whether the observer can reach it (membership says alive).
    pub reachable: bool,
    /// Whether it sits in the majority partition of voters.
    pub in_majority: bool,
    /// Tagged `no-failover`: never promoted automatically or by hand.
    pub no_failover: bool,
    /// The node is in maintenance (being drained, upgraded): not a candidate.
    pub maintenance: bool,
    /// Failover priority: higher is preferred; 0 means never primary.
    pub priority: u32,
    /// Replication lag behind the primary, in the lag source's unit, if known.
    pub lag: Option<u64>,
    /// It leads the coordination store (the Raft leader), as far as the observer knows.
    /// Among candidates equal in priority and lag another node is preferred: a primary that
    /// is also the coordination leader turns one crash into a coordination election followed
    /// by a role failover (about 1.6 s instead of 0.6 s on `lan`). Never a reason to refuse
    /// a node, and never a reason to move a primary.
    pub coord_leader: bool,
}

impl<N> NodeView<N> {
    /// A healthy, reachable node in the majority, priority 1, lag unknown, not the
    /// coordination leader.
    pub fn new(id: N) -> Self {
        NodeView {
            id,
            health: NodeHealth::Healthy,
            reachable: true,
            in_majority: true,
            no_failover: false,
            maintenance: false,
            priority: 1,
            lag: None,
            coord_leader: false,
        }
    }
}

/// One observation of a role, taken by one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observations<N> {
    /// The current holder of the role's primary lease, per the coordination store.
    pub primary: Option<N>,
    /// Every member that may hold the role (duplicates: the first view counts).
    pub nodes: Vec<NodeView<N>>,
    /// Whether a replication-lag source exists for this role. When it does, a node without a
    /// lag figure is not a candidate and `max_lag` applies.
    pub lag_tracked: bool,
    /// The coordination store says it has no leader now (false when it cannot tell). A
    /// vacancy is then not filled yet: no grant could commit, and the pick should know the
    /// leader (see [`NodeView::coord_leader`]).
    pub coord_leaderless: bool,
}

impl<N> Observations<N> {
    /// An observation without a lag source.
    pub fn new(primary: Option<N>, nodes: Vec<NodeView<N>>) -> Self {
        Observations {
            primary,
            nodes,
            lag_tracked: false,
            coord_leaderless: false,
        }
    }
}

/// Why a node is not a candidate. A node may have several.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ineligible {
    /// Its health is `Unhealthy` or `Unknown`.
    Health(NodeHealth),
    /// The observer cannot reach it.
    Unreachable,
    /// It is not in the majority partition.
    NotInMajority,
    /// It is tagged `no-failover`.
    NoFailoverTag,
    /// Its priority is 0 (never primary).
    PriorityZero,
    /// It is in maintenance.
    NodeMaintenance,
    /// Its replication lag is above the limit.
    LagTooHigh {
        /// Its lag.
        lag: u64,
        /// The limit that applies.
        max: u64,
    },
    /// A lag source exists but reports nothing for it.
    LagUnknown,
    /// Its `before_promote` hook vetoed a promotion recently.
    Vetoed {
        /// End of the veto back-off.
        until: Duration,
        /// What the hook said.
        reason: String,
    },
}

impl fmt::Display for Ineligible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ineligible::Health(h) => write!(f, "health is {h}"),
            Ineligible::Unreachable => f.write_str("unreachable"),
            Ineligible::NotInMajority => f.write_str("not in the majority"),
            Ineligible::NoFailoverTag => f.write_str("tagged no-failover"),
            Ineligible::PriorityZero => f.write_str("priority 0 (never primary)"),
            Ineligible::NodeMaintenance => f.write_str("node in maintenance"),
            Ineligible::LagTooHigh { lag, max } => {
                write!(f, "replication lag {lag} above the limit {max}")
            }
            Ineligible::LagUnknown => f.write_str("replication lag unknown"),
            Ineligible::Vetoed { until, reason } => write!(
                f,
                "before_promote vetoed ({reason}), back-off until {}",
                fmt_at(*until)
            ),
        }
    }
}

/// Why the primary changes (or should change).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cause {
    /// The role had no primary yet.
    Initial,
    /// The primary's lease lapsed (crash, pause, partition).
    LeaseLost,
    /// The primary reported itself unhealthy for longer than the grace.
    PrimaryUnhealthy,
    /// The primary left the majority partition.
    NotInMajority,
    /// Automatic failback to a preferred node.
    Failback,
    /// Manual switchover (planned, with a primary).
    Switchover,
    /// Manual failover (no primary).
    ManualFailover,
}

impl Cause {
    /// Whether an operator asked for it (manual changes do not use the anti-flap budget).
    pub fn is_manual(self) -> bool {
        matches!(self, Cause::Switchover | Cause::ManualFailover)
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Cause::Initial => "initial election",
            Cause::LeaseLost => "primary lease lost",
            Cause::PrimaryUnhealthy => "primary unhealthy",
            Cause::NotInMajority => "primary not in the majority",
            Cause::Failback => "failback to preferred node",
            Cause::Switchover => "manual switchover",
            Cause::ManualFailover => "manual failover",
        })
    }
}

/// Why nothing moves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hold<N> {
    /// The primary is fine and no failback is due.
    PrimaryHealthy,
    /// The primary is unhealthy, but within the grace; it is replaced at `until`.
    UnhealthyGrace {
        /// When the grace ends.
        until: Duration,
    },
    /// No primary, but the coordination store reports no leader: nothing can be granted
    /// now, and the choice waits so that it can keep the role off the coming leader.
    NoCoordinationLeader {
        /// The cause that would have moved the role.
        wanted: Cause,
    },
    /// A failover is wanted but no node is a candidate (see `explain`).
    NoCandidate {
        /// The cause that would have moved the role.
        wanted: Cause,
    },
    /// Maintenance (pause) mode: no automatic action until `until`.
    Paused {
        /// When the pause expires.
        until: Duration,
        /// The cause that would have moved the role.
        wanted: Cause,
    },
    /// The anti-flap budget is spent: only manual operations until `until`.
    AntiFlap {
        /// Automatic failovers in the current window.
        used: u32,
        /// The budget (K).
        max: u32,
        /// When the oldest counted failover leaves the window.
        until: Duration,
        /// The cause that would have moved the role.
        wanted: Cause,
    },
    /// A preferred node exists, but the failback hold-down runs until `until`.
    FailbackHoldDown {
        /// The preferred node.
        to: N,
        /// End of the hold-down.
        until: Duration,
    },
    /// A failback to `to` is due, but the role's failbacks need an operator's approval
    /// (`failback.approval`): a manual failback to `to` approves it, a postponement delays it.
    FailbackAwaitingApproval {
        /// The preferred node.
        to: N,
    },
    /// A failback to `to` is due, but an operator postponed failbacks until `until`.
    FailbackPostponed {
        /// The preferred node.
        to: N,
        /// End of the postponement.
        until: Duration,
    },
    /// A preferred node exists, but its lag is above the failback catch-up guard.
    FailbackNotCaughtUp {
        /// The preferred node.
        to: N,
        /// Its lag, if known.
        lag: Option<u64>,
        /// The guard.
        max: u64,
    },
}

impl<N: fmt::Display> fmt::Display for Hold<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hold::PrimaryHealthy => f.write_str("primary healthy"),
            Hold::UnhealthyGrace { until } => {
                write!(f, "primary unhealthy, grace until {}", fmt_at(*until))
            }
            Hold::NoCandidate { wanted } => write!(f, "{wanted}, but no candidate"),
            Hold::NoCoordinationLeader { wanted } => {
                write!(f, "{wanted}, waiting for a coordination leader")
            }
            Hold::Paused { until, wanted } => {
                write!(f, "{wanted}, but paused until {}", fmt_at(*until))
            }
            Hold::AntiFlap {
                used,
                max,
                until,
                wanted,
            } => write!(
                f,
                "{wanted}, but anti-flap budget spent ({used}/{max}), manual only until {}",
                fmt_at(*until)
            ),
            Hold::FailbackHoldDown { to, until } => {
                write!(f, "failback to {to} held down until {}", fmt_at(*until))
            }
            Hold::FailbackAwaitingApproval { to } => {
                write!(f, "failback to {to} awaits an operator's approval")
            }
            Hold::FailbackPostponed { to, until } => {
                write!(f, "failback to {to} postponed until {}", fmt_at(*until))
            }
            Hold::FailbackNotCaughtUp { to, lag, max } => match lag {
                Some(lag) => write!(f, "failback to {to} waits for catch-up (lag {lag} > {max})"),
                None => write!(f, "failback to {to} waits for catch-up (lag unknown)"),
            },
        }
    }
}

/// What the policy wants done now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action<N> {
    /// Nothing; the reason says why.
    Hold(Hold<N>),
    /// No primary holds the lease: `node` should campaign for it.
    Promote {
        /// The chosen node.
        node: N,
        /// Why.
        cause: Cause,
    },
    /// The primary `node` should step down (resign its lease); `successor`, if any, is the node
    /// that should be promoted once the lease is free.
    Demote {
        /// The current primary.
        node: N,
        /// The chosen successor.
        successor: Option<N>,
        /// Why.
        cause: Cause,
    },
}

impl<N> Action<N> {
    /// The node this action would make primary, if any.
    pub fn new_primary(&self) -> Option<&N> {
        match self {
            Action::Hold(_) => None,
            Action::Promote { node, .. } => Some(node),
            Action::Demote { successor, .. } => successor.as_ref(),
        }
    }
}

impl<N: fmt::Display> fmt::Display for Action<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Hold(h) => write!(f, "hold: {h}"),
            Action::Promote { node, cause } => write!(f, "promote {node}: {cause}"),
            Action::Demote {
                node,
                successor: Some(s),
                cause,
            } => write!(f, "demote {node} for {s}: {cause}"),
            Action::Demote {
                node,
                successor: None,
                cause,
            } => write!(f, "demote {node}: {cause}"),
        }
    }
}

/// Why a handover was given up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Abandoned {
    /// It did not complete within `handover_timeout`.
    TimedOut,
    /// The chosen successor stopped being a candidate.
    Unfit(Vec<Ineligible>),
    /// The chosen successor vetoed in `before_promote`.
    Vetoed,
    /// Another node became primary.
    Superseded,
    /// An operator cancelled it, or paused the role.
    Cancelled,
    /// A newer manual request replaced it.
    Replaced,
}

impl fmt::Display for Abandoned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Abandoned::TimedOut => f.write_str("timed out"),
            Abandoned::Unfit(reasons) => {
                f.write_str("successor unfit: ")?;
                write_list(f, reasons)
            }
            Abandoned::Vetoed => f.write_str("successor vetoed"),
            Abandoned::Superseded => f.write_str("another node became primary"),
            Abandoned::Cancelled => f.write_str("cancelled"),
            Abandoned::Replaced => f.write_str("replaced by a newer request"),
        }
    }
}

/// Something that happened, for history, logs and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice<N> {
    /// A new node holds the role (observed from the coordination store).
    PrimaryChanged {
        /// The previous primary, if the role had one.
        old: Option<N>,
        /// The new primary.
        new: N,
        /// Why, as far as this observer knows.
        cause: Cause,
        /// When the problem (or the request) was first seen, for the detection part of RTO.
        detected_at: Option<Duration>,
        /// When the change was observed.
        at: Duration,
        /// Whether it used the anti-flap budget.
        counted: bool,
    },
    /// The primary lease lapsed; no node holds the role.
    PrimaryLost {
        /// The primary that was lost.
        old: N,
        /// `LeaseLost`, or `PrimaryUnhealthy` when it was last seen unhealthy.
        cause: Cause,
        /// When it was observed.
        at: Duration,
    },
    /// The previous primary holds the role again after a lapse (not a failover).
    PrimaryRegained {
        /// The node.
        node: N,
        /// When it was observed.
        at: Duration,
    },
    /// Maintenance mode ended by expiry.
    MaintenanceExpired {
        /// When.
        at: Duration,
    },
    /// A handover was given up.
    HandoverAbandoned {
        /// Its chosen successor.
        to: N,
        /// Its cause.
        cause: Cause,
        /// Why it was given up.
        why: Abandoned,
    },
}

/// The outcome of one policy step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision<N> {
    /// What to do.
    pub action: Action<N>,
    /// What happened since the last step.
    pub notices: Vec<Notice<N>>,
    /// The next instant at which a step could decide differently with the same observations
    /// (end of a grace, hold-down, pause, back-off or handover). The shell also steps on every
    /// new observation.
    pub wake_at: Option<Duration>,
}

/// Why a manual operation was refused. Nothing changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal<N> {
    /// A switchover or failback needs a primary; use a manual failover.
    NoPrimary,
    /// A manual failover needs the role to have no primary; use a switchover.
    PrimaryExists {
        /// The primary.
        primary: N,
    },
    /// The named node already is the primary.
    AlreadyPrimary {
        /// The node.
        node: N,
    },
    /// The named node is not a member of the role.
    UnknownNode {
        /// The node.
        node: N,
    },
    /// The named node is not fit to be primary.
    Unfit {
        /// The node.
        node: N,
        /// Every reason.
        reasons: Vec<Ineligible>,
    },
    /// No node is fit to be primary.
    NoCandidate {
        /// Every member other than the primary, with its reasons.
        nodes: Vec<(N, Vec<Ineligible>)>,
    },
    /// A handover to `to` is already under way; cancel it first or wait.
    HandoverInProgress {
        /// Its successor.
        to: N,
    },
    /// Failback: no candidate has a higher priority than the primary.
    AlreadyPreferred {
        /// The primary.
        primary: N,
    },
    /// Failback to `expected` was asked for (an approval), but the preferred candidate now is
    /// another node, or none: the approval is stale; look at the role again.
    FailbackTargetChanged {
        /// The node the request named.
        expected: N,
        /// The preferred candidate now, if any has a higher priority than the primary.
        now: Option<N>,
    },
    /// A postponement of failbacks must end in the future and last at most
    /// `maintenance_max`.
    BadPostpone {
        /// The requested length.
        requested: Duration,
        /// The maximum.
        max: Duration,
    },
    /// A pause must end in the future and last at most `maintenance_max`.
    BadPause {
        /// The requested length.
        requested: Duration,
        /// The maximum.
        max: Duration,
    },
}

impl<N: fmt::Display> fmt::Display for Refusal<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NoPrimary => {
                f.write_str("the role has no primary; use a manual failover instead")
            }
            Refusal::PrimaryExists { primary } => write!(
                f,
                "the role has a primary ({primary}); use a switchover instead"
            ),
            Refusal::AlreadyPrimary { node } => write!(f, "{node} already is the primary"),
            Refusal::UnknownNode { node } => write!(f, "{node} is not a member of this role"),
            Refusal::Unfit { node, reasons } => {
                write!(f, "{node} is not fit to be primary: ")?;
                write_list(f, reasons)
            }
            Refusal::NoCandidate { nodes } => {
                f.write_str("no node is fit to be primary")?;
                for (i, (node, reasons)) in nodes.iter().enumerate() {
                    f.write_str(if i == 0 { ": " } else { "; " })?;
                    write!(f, "{node}: ")?;
                    write_list(f, reasons)?;
                }
                Ok(())
            }
            Refusal::HandoverInProgress { to } => write!(
                f,
                "a handover to {to} is under way; cancel it or wait for it to finish"
            ),
            Refusal::AlreadyPreferred { primary } => write!(
                f,
                "no candidate has a higher priority than the primary {primary}"
            ),
            Refusal::FailbackTargetChanged { expected, now } => match now {
                Some(n) => write!(
                    f,
                    "the failback asked for was to {expected}, but the preferred candidate now is {n}; look at the role again and repeat"
                ),
                None => write!(
                    f,
                    "the failback asked for was to {expected}, but no candidate now has a higher priority than the primary"
                ),
            },
            Refusal::BadPostpone { requested, max } => write!(
                f,
                "a postponement must last more than 0 s and at most {} s (maintenance_max); {} s requested",
                max.as_secs_f64(),
                requested.as_secs_f64()
            ),
            Refusal::BadPause { requested, max } => write!(
                f,
                "a pause must last more than 0 s and at most {} s (maintenance_max); {} s requested",
                max.as_secs_f64(),
                requested.as_secs_f64()
            ),
        }
    }
}

/// Writes `items` separated by ", ".
pub(crate) fn write_list<T: fmt::Display>(f: &mut fmt::Formatter<'_>, items: &[T]) -> fmt::Result {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{item}")?;
    }
    Ok(())
}

/// Formats an instant on the policy's clock (a duration since its origin) as seconds.
pub(crate) fn fmt_at(at: Duration) -> String {
    format!("t={:.3}s", at.as_secs_f64())
}
