//! Maps membership, health and lag to the policy's observations (no clock, no I/O).
//!
//! Conventions (documented in ARCHITECTURE.md):
//! - a member takes part in a role when its gossiped `NodeMeta::roles` lists the role; the
//!   local node always takes part in the roles it runs;
//! - tags: `no-failover` = `true`, `maintenance` = `true`, `failover-priority` = an integer
//!   (default 1; an unparsable value counts as 0, never primary, so a typo cannot promote);
//! - health: `Passing` -> healthy, `Warning` -> degraded, `Critical` -> unhealthy, `Unknown`
//!   -> unknown; the local node uses its own health view, others their gossiped summary;
//! - reachable: membership state `Alive` (a `Suspect` member is not a candidate);
//! - majority: the local node's quorum status (when membership has no voters configured, the
//!   coordination store's majority is the only one and the node counts as in the majority);
//!   another member counts as in the majority when this node is and sees it alive;
//! - coordination leader: the node named as leader by the local coordination status (same
//!   node names as membership; a backend whose leader is not a member, such as etcd, marks
//!   nobody).

use quorate_health_api::HealthStatus;
use quorate_membership_api::{MemberState, MembershipSnapshot};
use quorate_types::{NodeId, NodeMeta, RoleName};

use super::hooks::LagSource;
use crate::policy::{NodeHealth, NodeView, Observations};

/// Tag that excludes a node from promotion (`"true"`).
pub const TAG_NO_FAILOVER: &str = "no-failover";
/// Tag that puts a node in maintenance (`"true"`): not a candidate.
pub const TAG_MAINTENANCE: &str = "maintenance";
/// Tag with the node's failover priority (integer, higher preferred, 0 = never).
pub const TAG_PRIORITY: &str = "failover-priority";

/// The policy's view of a health status.
pub fn node_health(status: HealthStatus) -> NodeHealth {
    match status {
        HealthStatus::Passing => NodeHealth::Healthy,
        HealthStatus::Warning => NodeHealth::Degraded,
        HealthStatus::Critical => NodeHealth::Unhealthy,
        HealthStatus::Unknown => NodeHealth::Unknown,
    }
}

fn apply_tags(v: &mut NodeView<NodeId>, meta: &NodeMeta) {
    let flag = |k: &str| meta.tags.get(k).is_some_and(|v| v == "true");
    v.no_failover = flag(TAG_NO_FAILOVER);
    v.maintenance = flag(TAG_MAINTENANCE);
    v.priority = match meta.tags.get(TAG_PRIORITY) {
        None => 1,
        Some(p) => p.trim().parse().unwrap_or(0),
    };
}

/// Builds the observation of `role` taken by `local` (its tags come from its own member entry).
/// `coord_leader` is the coordination store's status read: `Some(leader)` when it answered
/// (`leader` is `None` when it has none), `None` when it could not tell.
pub fn observations(
    role: &RoleName,
    local: &NodeId,
    local_health: HealthStatus,
    snap: &MembershipSnapshot,
    primary: Option<NodeId>,
    coord_leader: Option<Option<&NodeId>>,
    lag: Option<&dyn LagSource>,
) -> Observations<NodeId> {
    let local_majority = snap.quorum.voters.is_empty() || snap.quorum.has_majority;
    let mut nodes = Vec::new();
    let mut me = NodeView::new(local.clone());
    me.health = node_health(local_health);
    me.in_majority = local_majority;
    if let Some(m) = snap.member(local) {
        apply_tags(&mut me, &m.meta.node);
    }
    nodes.push(me);
    for m in &snap.members {
        if &m.id == local || !m.meta.node.roles.contains(role) {
            continue;
        }
        let mut v = NodeView::new(m.id.clone());
        v.health = node_health(m.meta.health.status);
        v.reachable = m.state == MemberState::Alive;
        v.in_majority = local_majority && v.reachable;
        apply_tags(&mut v, &m.meta.node);
        nodes.push(v);
    }
    let leader = coord_leader.flatten();
    for v in &mut nodes {
        v.coord_leader = leader == Some(&v.id);
    }
    if let Some(src) = lag {
        for v in &mut nodes {
            v.lag = src.lag(&v.id);
        }
    }
    Observations {
        primary,
        nodes,
        lag_tracked: lag.is_some(),
        coord_leaderless: coord_leader.is_some_and(|l| l.is_none()),
    }
}
