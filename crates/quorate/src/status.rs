//! `quorate status`: prints the node's view (`quorate_startup::report::StatusFile`, written
//! by the agent to `<data_dir>/status.json`) for people, and says when it is stale.

use anyhow::{Context, Result, bail};
use quorate_startup::config::Validated;
use quorate_startup::report::{StatusFile, unix_ms_now};

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
