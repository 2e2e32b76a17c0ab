//! The node's typed outputs: [`NodeEvent`] (the event stream; `quorate agent` prints one JSON
//! line per event on stdout), [`NodeStatus`] (a snapshot; the agent also writes it to
//! `<data_dir>/status.json` every 500 ms) and the [`StartupReport`]. All are serde types, read
//! back through the same types by `quorate status`, `quorate demo`, the chaos harness and the
//! adapters; nobody formats or re-parses them by hand.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::sync::Arc;

use quorate_failover::shell::FailoverManager;
use quorate_health_api::HealthView;
use quorate_membership_api::{MemberState, Membership, SplitBrainStatus};
use quorate_raft::{ClusterView, RaftNode};
use quorate_wire::net::TokioNet;
use serde::{Deserialize, Serialize};

use crate::config::Validated;

/// One node event (one line of the agent's stdout).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum NodeEvent {
    /// A component finished starting.
    Started {
        /// `health`, `membership`, `raft` or `failover`.
        component: String,
        /// This node.
        node: String,
        /// The agent's process id.
        pid: u32,
    },
    /// A role changed hands (reported by every node that saw it).
    RoleChange(RoleChangeEvent),
    /// A startup stage ended (ready or failed).
    Stage(StageReport),
    /// Every stage is ready.
    Ready {
        /// This node.
        node: String,
    },
    /// A health check changed status.
    Health {
        /// The check.
        check: String,
        /// Status before.
        from: String,
        /// Status after.
        to: String,
    },
    /// A member changed state, as this node sees it.
    Member {
        /// The member.
        id: String,
        /// `alive`, `suspect`, `down` or `left`.
        state: String,
    },
    /// This node's quorum view changed.
    Quorum {
        /// Whether it sees a majority of voters.
        has_majority: bool,
        /// Voters it can reach.
        voters_reachable: usize,
    },
    /// A component stopped on its own (a fatal error): the node gives up its roles and stops.
    ComponentFailed {
        /// `membership`, ...
        component: String,
        /// Why.
        reason: String,
    },
    /// The agent got SIGTERM or Ctrl-C and is stopping.
    Stopping {
        /// This node.
        node: String,
    },
    /// The agent stopped cleanly.
    Stopped {
        /// This node.
        node: String,
    },
    /// An admin operation was asked for (the audit trail; refusals included).
    Admin(crate::admin::AdminAudit),
    /// A failback of a role is due and waits for an operator's approval
    /// (`failback_approval`). Reported once per wait by the role's primary (the node that
    /// would hand the role over), so a surface that asks operators (the Telegram bot's
    /// Approve and Postpone buttons) asks once.
    FailbackAwaitingApproval {
        /// The role.
        role: String,
        /// The primary (this node).
        primary: String,
        /// The preferred node the failback would move the role to.
        to: String,
        /// The primary's fencing token.
        token: Option<u64>,
    },
    /// SIGHUP: the agent read its config file again and took its cluster keys.
    KeysReloaded {
        /// This node.
        node: String,
        /// The send key's one-byte hint, as two hex digits.
        send_key_hint: String,
        /// Keys accepted now (the send key included).
        keys: usize,
        /// Client keys accepted now (`client_key_files`).
        #[serde(default)]
        client_keys: usize,
    },
    /// SIGHUP: the config file could not be taken (unreadable, invalid, or for another node);
    /// the running keys stay.
    ReloadRefused {
        /// This node.
        node: String,
        /// Why, naming the field.
        reason: String,
    },
}

/// A role change, with the measured times.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleChangeEvent {
    /// The role.
    pub role: String,
    /// The primary before, if any.
    pub old_primary: Option<String>,
    /// The primary after, if any.
    pub new_primary: Option<String>,
    /// Why (failover, switchover, ...).
    pub cause: String,
    /// The new term's fencing token.
    pub token: Option<u64>,
    /// From the old primary's last sign of life to the decision, as measured here.
    pub detection_ms: Option<u64>,
    /// From the decision to the promotion.
    pub promotion_ms: Option<u64>,
    /// When, in milliseconds since the reporting node started.
    pub at_ms: u64,
}

impl NodeEvent {
    /// The event as one JSON line (no newline).
    pub fn to_line(&self) -> String {
        serde_json::to_string(self)
            .unwrap_or_else(|e| format!("{{\"event\":\"error\",\"error\":\"{e}\"}}"))
    }

    /// Parses one stdout line; `None` for lines that are not events (e.g. hook output).
    pub fn parse(line: &str) -> Option<NodeEvent> {
        serde_json::from_str(line).ok()
    }
}

/// The node's view: [`Node::status`](crate::Node::status), and `status.json`.
pub type NodeStatus = StatusFile;

/// How one startup stage ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageOutcome {
    /// Its readiness condition held.
    Ready,
    /// It failed (or was not ready in time): why.
    Failed(String),
}

/// One line of the startup report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageReport {
    /// The stage (`config`, `storage`, ..., `plugin:NAME`).
    pub stage: String,
    /// How long it took, in milliseconds.
    pub duration_ms: u64,
    /// How it ended.
    pub outcome: StageOutcome,
}

/// The stages in the order they ran.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartupReport {
    /// One line per stage.
    pub stages: Vec<StageReport>,
}

impl std::fmt::Display for StartupReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for s in &self.stages {
            match &s.outcome {
                StageOutcome::Ready => {
                    writeln!(f, "  {:<24} ready   {:>6} ms", s.stage, s.duration_ms)?
                }
                StageOutcome::Failed(why) => writeln!(
                    f,
                    "  {:<24} FAILED  {:>6} ms: {why}",
                    s.stage, s.duration_ms
                )?,
            }
        }
        Ok(())
    }
}

/// How often the agent rewrites `status.json`.
pub const STATUS_INTERVAL_MS: u64 = 500;

/// A member state in the status file's words.
pub fn member_state(s: MemberState) -> &'static str {
    match s {
        MemberState::Alive => "alive",
        MemberState::Suspect => "suspect",
        MemberState::Down => "down",
        MemberState::Left => "left",
    }
}

fn split_brain(s: &SplitBrainStatus) -> String {
    match s {
        SplitBrainStatus::NotConfigured => "not-configured".to_owned(),
        SplitBrainStatus::Healthy => "healthy".to_owned(),
        SplitBrainStatus::InMinority {
            reachable, needed, ..
        } => format!("in-minority ({reachable} voters reachable, {needed} needed)"),
        SplitBrainStatus::ConflictingViews { a, b, .. } => {
            format!("conflicting-views ({a} and {b} both claim a majority)")
        }
    }
}

/// Collects this node's view of the cluster, its roles and its health.
pub fn collect(
    v: &Validated,
    raft: &RaftNode<TokioNet>,
    membership: &Arc<dyn Membership>,
    health: &Arc<dyn HealthView>,
    manager: &FailoverManager,
) -> NodeStatus {
    collect_from(v, &raft.view().borrow(), membership, health, manager)
}

/// [`collect`] from a Raft view already read.
pub fn collect_from(
    v: &Validated,
    view: &ClusterView,
    membership: &Arc<dyn Membership>,
    health: &Arc<dyn HealthView>,
    manager: &FailoverManager,
) -> NodeStatus {
    let m = membership.snapshot();
    let h = health.snapshot();
    let roles = v
        .roles
        .iter()
        .filter_map(|r| {
            let s = manager.status(r).ok()?.borrow().clone();
            Some(RoleStatus::of(r, s))
        })
        .collect();
    StatusFile {
        node: v.node_id.to_string(),
        pid: std::process::id(),
        written_at_unix_ms: unix_ms_now(),
        interval_ms: STATUS_INTERVAL_MS,
        raft: RaftStatus {
            leader: view.leader.as_ref().map(ToString::to_string),
            term: view.term,
            is_leader: view.is_leader,
            can_act: view.can_act,
            applied_index: view.applied_index,
            voters: view.voters.iter().map(ToString::to_string).collect(),
        },
        membership: MembershipStatus {
            joined: m.joined,
            has_majority: m.quorum.has_majority,
            voters_reachable: m.quorum.voters_reachable,
            split_brain: split_brain(&m.split_brain),
            members: m
                .members
                .iter()
                .map(|mm| MemberStatus {
                    id: mm.id.to_string(),
                    address: mm.address.to_string(),
                    state: member_state(mm.state).to_owned(),
                    health: mm.meta.health.status.as_str().to_owned(),
                })
                .collect(),
        },
        health: HealthStatusView {
            status: h.status.as_str().to_owned(),
            healthy: h.healthy,
            total: h.total,
        },
        roles,
    }
}

/// The node's view, as written to `status.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusFile {
    /// This node.
    pub node: String,
    /// The agent's process id.
    pub pid: u32,
    /// When this file was written, in milliseconds since the Unix epoch (for staleness).
    pub written_at_unix_ms: u64,
    /// How often the agent rewrites the file, in milliseconds.
    pub interval_ms: u64,
    /// Consensus.
    pub raft: RaftStatus,
    /// Gossip membership.
    pub membership: MembershipStatus,
    /// Aggregated health.
    pub health: HealthStatusView,
    /// Roles this node can take.
    pub roles: Vec<RoleStatus>,
}

/// The Raft part of [`StatusFile`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftStatus {
    /// The leader this node knows.
    pub leader: Option<String>,
    /// The current term.
    pub term: u64,
    /// Whether this node leads.
    pub is_leader: bool,
    /// Whether this node's lease allows it to act as leader.
    pub can_act: bool,
    /// The last applied log index.
    pub applied_index: u64,
    /// The voters.
    pub voters: Vec<String>,
}

/// The membership part of [`StatusFile`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipStatus {
    /// Whether this node has joined.
    pub joined: bool,
    /// Whether this node sees a majority of voters.
    pub has_majority: bool,
    /// Voters this node can reach.
    pub voters_reachable: usize,
    /// The split-brain view (`Healthy`, `InMinority`, ...).
    pub split_brain: String,
    /// Every member this node knows.
    pub members: Vec<MemberStatus>,
}

/// One member in [`MembershipStatus`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// Its id.
    pub id: String,
    /// Its gossip address.
    pub address: String,
    /// `alive`, `suspect`, `down` or `left`.
    pub state: String,
    /// Its gossiped health.
    pub health: String,
}

/// The health part of [`StatusFile`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthStatusView {
    /// Overall status (`passing`, `warning`, `unknown`, `critical`).
    pub status: String,
    /// Checks passing.
    pub healthy: usize,
    /// Checks in all.
    pub total: usize,
}

/// One role in [`StatusFile`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleStatus {
    /// The role.
    pub role: String,
    /// Its primary, as this node sees it.
    pub primary: Option<String>,
    /// Whether this node acts as primary now.
    pub acting_here: bool,
    /// The current term's fencing token.
    pub token: Option<u64>,
    /// The policy's last decision, in words.
    pub last_action: String,
    /// The nodes that could take the role now, best first (empty: no successor is ready).
    #[serde(default)]
    pub candidates: Vec<String>,
    /// A due failback waiting for an operator's approval (`failback_approval`): the node it
    /// would hand the role to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub awaiting_approval: Option<String>,
}

impl RoleStatus {
    /// The status file's form of a failover role status.
    pub fn of(role: &quorate_types::RoleName, s: quorate_failover::shell::RoleStatus) -> Self {
        RoleStatus {
            role: role.to_string(),
            primary: s.primary.map(|n| n.to_string()),
            acting_here: s.acting,
            token: s.token.map(|t| t.0),
            last_action: s.last_action,
            candidates: s.candidates.iter().map(ToString::to_string).collect(),
            awaiting_approval: s.awaiting_approval.map(|n| n.to_string()),
        }
    }
}

/// Milliseconds since the Unix epoch now.
pub fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Why a status file cannot be trusted as a live view, if it cannot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Staleness {
    /// The agent that wrote it is not running.
    AgentNotRunning {
        /// Its process id.
        pid: u32,
    },
    /// The file is older than it should be (the agent is stuck or stopped).
    Old {
        /// How old.
        age: Duration,
    },
}

impl std::fmt::Display for Staleness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Staleness::AgentNotRunning { pid } => write!(
                f,
                "the agent that wrote it (pid {pid}) is not running: this view is stale"
            ),
            Staleness::Old { age } => write!(
                f,
                "it was written {:.1} s ago: the agent is not updating it (stuck or stopped)",
                age.as_secs_f64()
            ),
        }
    }
}

impl StatusFile {
    /// Whether this file is a live view: the writer's process exists (`/proc/PID`) and the file
    /// is at most 3 intervals (at least 2 s) old at `now_unix_ms`.
    pub fn staleness(&self, now_unix_ms: u64) -> Option<Staleness> {
        if !std::path::Path::new(&format!("/proc/{}", self.pid)).exists() {
            return Some(Staleness::AgentNotRunning { pid: self.pid });
        }
        let age = Duration::from_millis(now_unix_ms.saturating_sub(self.written_at_unix_ms));
        let limit = Duration::from_millis((self.interval_ms.saturating_mul(3)).max(2_000));
        (age > limit).then_some(Staleness::Old { age })
    }

    /// The role named `role`.
    pub fn role(&self, role: &str) -> Option<&RoleStatus> {
        self.roles.iter().find(|r| r.role == role)
    }

    /// Members this node sees alive.
    pub fn alive(&self) -> usize {
        self.membership
            .members
            .iter()
            .filter(|m| m.state == "alive")
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_their_json_line() {
        let e = NodeEvent::RoleChange(RoleChangeEvent {
            role: "app".into(),
            old_primary: Some("n1".into()),
            new_primary: Some("n2".into()),
            cause: "failover".into(),
            token: Some(42),
            detection_ms: Some(120),
            promotion_ms: Some(15),
            at_ms: 9,
        });
        let line = e.to_line();
        assert!(line.contains("\"event\":\"role_change\""), "{line}");
        assert_eq!(NodeEvent::parse(&line), Some(e));
        assert_eq!(NodeEvent::parse("hook said hello"), None);
    }

    #[test]
    fn a_status_from_a_dead_agent_or_an_old_file_is_stale() {
        let mut s = StatusFile {
            node: "n1".into(),
            pid: std::process::id(),
            written_at_unix_ms: 10_000,
            interval_ms: 500,
            raft: RaftStatus {
                leader: None,
                term: 1,
                is_leader: false,
                can_act: false,
                applied_index: 0,
                voters: vec![],
            },
            membership: MembershipStatus {
                joined: true,
                has_majority: true,
                voters_reachable: 3,
                split_brain: "Healthy".into(),
                members: vec![],
            },
            health: HealthStatusView {
                status: "passing".into(),
                healthy: 1,
                total: 1,
            },
            roles: vec![],
        };
        assert_eq!(s.staleness(11_000), None);
        assert!(matches!(s.staleness(20_000), Some(Staleness::Old { .. })));
        s.pid = u32::MAX; // no such process
        assert!(matches!(
            s.staleness(11_000),
            Some(Staleness::AgentNotRunning { .. })
        ));
    }
}
