//! The node's view ([`crate::report::StatusFile`], written by the agent to
//! `<data_dir>/status.json`) and `quorate status`, which prints it for people and says when it
//! is stale.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use quorate_failover::shell::FailoverManager;
use quorate_health_api::HealthView;
use quorate_membership_api::{MemberState, Membership, SplitBrainStatus};
use quorate_raft::RaftNode;
use quorate_wire::net::TokioNet;

use crate::config::Validated;
use crate::report::{
    HealthStatusView, MemberStatus, MembershipStatus, RaftStatus, RoleStatus, StatusFile,
    unix_ms_now,
};

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
) -> StatusFile {
    let view = raft.view().borrow().clone();
    let m = membership.snapshot();
    let h = health.snapshot();
    let roles = v
        .roles
        .iter()
        .filter_map(|r| {
            let s = manager.status(r).ok()?.borrow().clone();
            Some(RoleStatus {
                role: r.to_string(),
                primary: s.primary.map(|n| n.to_string()),
                acting_here: s.acting,
                token: s.token.map(|t| t.0),
                last_action: s.last_action,
            })
        })
        .collect();
    StatusFile {
        node: v.node_id.to_string(),
        pid: std::process::id(),
        written_at_unix_ms: unix_ms_now(),
        interval_ms: STATUS_INTERVAL_MS,
        raft: RaftStatus {
            leader: view.leader.map(|n| n.to_string()),
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

/// Reads and parses a status file.
pub fn read(path: &std::path::Path) -> Result<StatusFile> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "reading {}: is `quorate agent` running with this config?",
            path.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a status file of this quorate version",
            path.display()
        )
    })
}

/// `quorate status --config node.toml`: prints the view the node's agent last wrote. Fails
/// (non-zero exit) when the view is stale: the agent is not running, or the file is old.
pub fn print(v: &Validated) -> Result<()> {
    let path = v.raw.data_dir.join("status.json");
    let s = read(&path)?;
    println!("{}", render(&s));
    if let Some(stale) = s.staleness(unix_ms_now()) {
        bail!("{} is stale: {stale}", path.display());
    }
    Ok(())
}

/// Renders a status as a short table.
pub fn render(s: &StatusFile) -> String {
    let or_dash = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".to_owned());
    let mut out = format!(
        "node {} (pid {})  raft leader {} term {}  majority {}  health {}\n",
        s.node,
        s.pid,
        or_dash(&s.raft.leader),
        s.raft.term,
        if s.membership.has_majority {
            "yes"
        } else {
            "NO"
        },
        s.health.status,
    );
    out.push_str("members:\n");
    for m in &s.membership.members {
        out.push_str(&format!(
            "  {:<12} {:<22} {:<8} health {}\n",
            m.id, m.address, m.state, m.health
        ));
    }
    out.push_str("roles:\n");
    for r in &s.roles {
        out.push_str(&format!(
            "  {:<20} primary {:<8} token {:<6} here {}\n",
            r.role,
            or_dash(&r.primary),
            r.token.map_or("-".to_owned(), |t| t.to_string()),
            if r.acting_here { "yes" } else { "no" }
        ));
    }
    out
}
