//! The node's view as JSON (written by the agent to `<data_dir>/status.json`) and
//! `quorate status`, which prints it for people.

use std::sync::Arc;

use anyhow::{Context, Result};
use quorate_failover::shell::FailoverManager;
use quorate_health_api::HealthView;
use quorate_membership_api::Membership;
use quorate_raft::RaftNode;
use quorate_wire::net::TokioNet;
use serde_json::{Value, json};

use crate::config::Validated;

/// Collects this node's view of the cluster, its roles and its health.
pub fn collect(
    v: &Validated,
    raft: &RaftNode<TokioNet>,
    membership: &Arc<dyn Membership>,
    health: &Arc<dyn HealthView>,
    manager: &FailoverManager,
) -> Value {
    let view = raft.view().borrow().clone();
    let m = membership.snapshot();
    let h = health.snapshot();
    let roles: Vec<Value> = v
        .roles
        .iter()
        .filter_map(|r| {
            let s = manager.status(r).ok()?.borrow().clone();
            Some(json!({
                "role": r.to_string(),
                "primary": s.primary.map(|n| n.to_string()),
                "acting_here": s.acting,
                "token": s.token.map(|t| t.0),
                "last_action": s.last_action,
            }))
        })
        .collect();
    json!({
        "node": v.node_id.to_string(),
        "pid": std::process::id(),
        "raft": {
            "leader": view.leader.map(|n| n.to_string()),
            "term": view.term,
            "is_leader": view.is_leader,
            "can_act": view.can_act,
            "applied_index": view.applied_index,
            "voters": view.voters.iter().map(ToString::to_string).collect::<Vec<_>>(),
        },
        "membership": {
            "joined": m.joined,
            "has_majority": m.quorum.has_majority,
            "voters_reachable": m.quorum.voters_reachable,
            "split_brain": format!("{:?}", m.split_brain),
            "members": m.members.iter().map(|mm| json!({
                "id": mm.id.to_string(),
                "address": mm.address.to_string(),
                "state": format!("{:?}", mm.state),
                "health": mm.meta.health.status.as_str(),
            })).collect::<Vec<_>>(),
        },
        "health": {
            "status": h.status.as_str(),
            "healthy": h.healthy,
            "total": h.total,
        },
        "roles": roles,
    })
}

/// `quorate status --config node.toml`: prints the view the node's agent last wrote.
pub fn print(v: &Validated) -> Result<()> {
    let path = v.raw.data_dir.join("status.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {}: is `quorate agent` running with this config?",
            path.display()
        )
    })?;
    let s: Value = serde_json::from_str(&text).context("status.json is not JSON")?;
    println!("{}", render(&s));
    Ok(())
}

/// Renders a status JSON as a short table.
pub fn render(s: &Value) -> String {
    let str_of = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    let mut out = format!(
        "node {} (pid {})  raft leader {} term {}  majority {}  health {}\n",
        str_of(&s["node"]),
        s["pid"],
        str_of(&s["raft"]["leader"]),
        s["raft"]["term"],
        s["membership"]["has_majority"],
        str_of(&s["health"]["status"]),
    );
    out.push_str("members:\n");
    for m in s["membership"]["members"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {:<12} {:<22} {:<8} health {}\n",
            str_of(&m["id"]),
            str_of(&m["address"]),
            str_of(&m["state"]),
            str_of(&m["health"])
        ));
    }
    out.push_str("roles:\n");
    for r in s["roles"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {:<20} primary {:<8} token {:<6} here {}\n",
            str_of(&r["role"]),
            str_of(&r["primary"]),
            r["token"],
            r["acting_here"]
        ));
    }
    out
}
