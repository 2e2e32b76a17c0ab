//! `quorate ctl`: the admin API from the command line (like `patronictl`). Each command is one
//! or two API calls through [`Client`]; the output is a readable table, or the API's own JSON
//! with `--json`. The binary parses the arguments and prints what [`run`] returns.

use std::fmt::Write as _;

use crate::ApiError;
use crate::client::Client;
use crate::model::AdminReply;

/// One `quorate ctl` command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CtlCommand {
    /// Members and roles.
    List,
    /// Role changes with their measured durations.
    History {
        /// One role, or all.
        role: Option<String>,
    },
    /// Who could take the role, and why not the others.
    Explain {
        /// The role.
        role: String,
    },
    /// Planned hand-off.
    Switchover {
        /// The role.
        role: String,
        /// The successor, or the best candidate.
        candidate: Option<String>,
    },
    /// Promotion while the role has no primary.
    Failover {
        /// The role.
        role: String,
        /// The node, or the best candidate.
        candidate: Option<String>,
    },
    /// Switchover to the preferred node; with a candidate, approve the failback to it that
    /// the role waits for (`failback_approval`).
    Failback {
        /// The role.
        role: String,
        /// The node the failback must go to (refused if it no longer is the preferred one).
        candidate: Option<String>,
    },
    /// No automatic failback for a while (a failback waiting for approval waits on).
    Postpone {
        /// The role.
        role: String,
        /// How long (`"2h"`), default 1 h.
        ttl: Option<String>,
    },
    /// Cancel a hand-off (switchover, failback) under way.
    Cancel {
        /// The role.
        role: String,
    },
    /// Maintenance mode on.
    Pause {
        /// The role.
        role: String,
        /// How long (`"30m"`), default 1 h.
        ttl: Option<String>,
    },
    /// Maintenance mode off.
    Resume {
        /// The role.
        role: String,
    },
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// A plain-text table: a header row, then rows, columns padded to the widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            let w = widths.get(i).copied().unwrap_or(0);
            let _ = write!(l, "{c:<w$}  ");
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut out, header.to_vec());
    line(
        &mut out,
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect(),
    );
    for r in rows {
        line(&mut out, r.iter().map(String::as_str).collect());
    }
    out
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map_or("-".to_owned(), ToString::to_string)
}

fn reply_text(r: &AdminReply) -> String {
    let mut s = r.outcome.message.clone();
    if r.status == 202 {
        s.push_str(" (accepted; not yet confirmed: watch `quorate ctl list`)");
    } else if r.confirmed {
        s.push_str(" (confirmed)");
    }
    s.push('\n');
    s
}

/// Runs `cmd` against `client`; returns what to print.
pub async fn run(client: &Client, cmd: &CtlCommand, json: bool) -> Result<String, ApiError> {
    Ok(match cmd {
        CtlCommand::List => {
            let c = client.cluster().await?;
            let roles = client.roles().await?;
            if json {
                return Ok(to_json(
                    &serde_json::json!({ "cluster": c, "roles": roles }),
                ));
            }
            let mut out = String::new();
            let _ = writeln!(
                out,
                "cluster view of {}: quorum {} ({}/{} voters), split-brain {}, coordination leader {}",
                c.node,
                if c.has_majority { "yes" } else { "NO" },
                c.voters_reachable,
                c.voters,
                c.split_brain,
                c.coordination
                    .as_ref()
                    .and_then(|x| x.leader.clone())
                    .unwrap_or_else(|| "none".into()),
            );
            out.push('\n');
            let rows: Vec<Vec<String>> = c
                .members
                .iter()
                .map(|m| {
                    let primary_of: Vec<&str> = roles
                        .iter()
                        .filter(|r| r.holder.as_deref() == Some(m.id.as_str()))
                        .map(|r| r.role.as_str())
                        .collect();
                    vec![
                        m.id.clone(),
                        m.state.clone(),
                        m.health.clone(),
                        if primary_of.is_empty() {
                            "-".into()
                        } else {
                            primary_of.join(",")
                        },
                        opt(&m.api),
                    ]
                })
                .collect();
            out.push_str(&table(
                &["member", "state", "health", "primary of", "api"],
                &rows,
            ));
            out.push('\n');
            let rows: Vec<Vec<String>> = roles
                .iter()
                .map(|r| {
                    vec![
                        r.role.clone(),
                        opt(&r.holder),
                        opt(&r.token),
                        r.lease_remaining_ms
                            .map_or("-".into(), |l| format!("{l}/{} ms", r.lease_ttl_ms)),
                        opt(&r.automatic),
                        r.candidates
                            .iter()
                            .filter(|c| c.candidate)
                            .map(|c| c.node.clone())
                            .collect::<Vec<_>>()
                            .join(","),
                    ]
                })
                .collect();
            out.push_str(&table(
                &[
                    "role",
                    "primary",
                    "token",
                    "lease left",
                    "automatic",
                    "candidates",
                ],
                &rows,
            ));
            out
        }
        CtlCommand::History { role } => {
            let h = client.history(role.as_deref()).await?;
            if json {
                return Ok(to_json(&h));
            }
            let ms = |v: Option<u64>| v.map_or("-".to_owned(), |v| format!("{v} ms"));
            let rows: Vec<Vec<String>> = h
                .iter()
                .map(|e| {
                    vec![
                        format!("{:.1} s", e.at_ms as f64 / 1000.0),
                        e.role.clone(),
                        opt(&e.old_primary),
                        opt(&e.new_primary),
                        e.cause.clone(),
                        opt(&e.token),
                        ms(e.detection_ms),
                        ms(e.promotion_ms),
                        ms(e.total_ms),
                    ]
                })
                .collect();
            table(
                &[
                    "at",
                    "role",
                    "from",
                    "to",
                    "cause",
                    "token",
                    "detection",
                    "promotion",
                    "total",
                ],
                &rows,
            )
        }
        CtlCommand::Explain { role } => {
            let r = client.role(role).await?;
            if json {
                return Ok(to_json(&r));
            }
            let rows: Vec<Vec<String>> = r
                .candidates
                .iter()
                .map(|c| {
                    vec![
                        c.node.clone(),
                        if c.is_primary {
                            "primary".into()
                        } else if c.candidate {
                            format!("candidate #{}", opt(&c.rank))
                        } else {
                            "not a candidate".into()
                        },
                        c.priority.to_string(),
                        opt(&c.lag),
                        if c.reasons.is_empty() {
                            "-".into()
                        } else {
                            c.reasons.join("; ")
                        },
                    ]
                })
                .collect();
            let mut out = format!(
                "{}: primary {}, automatic moves {}\n\n",
                r.role,
                opt(&r.holder),
                opt(&r.automatic)
            );
            out.push_str(&table(
                &["node", "standing", "priority", "lag", "why not"],
                &rows,
            ));
            out
        }
        CtlCommand::Switchover { role, candidate } => {
            let r = client.switchover(role, candidate.as_deref()).await?;
            if json { to_json(&r) } else { reply_text(&r) }
        }
        CtlCommand::Failover { role, candidate } => {
            let r = client.failover(role, candidate.as_deref()).await?;
            if json { to_json(&r) } else { reply_text(&r) }
        }
        CtlCommand::Failback { role, candidate } => {
            let r = client.failback(role, candidate.as_deref()).await?;
            if json { to_json(&r) } else { reply_text(&r) }
        }
        CtlCommand::Postpone { role, ttl } => {
            let r = client.postpone_failback(role, ttl.as_deref()).await?;
            if json { to_json(&r) } else { reply_text(&r) }
        }
        CtlCommand::Cancel { role } => {
            let r = client.cancel(role).await?;
            if json { to_json(&r) } else { reply_text(&r) }
        }
        CtlCommand::Pause { role, ttl } => {
            let r = client.maintenance(role, true, ttl.as_deref()).await?;
            if json { to_json(&r) } else { reply_text(&r) }
        }
        CtlCommand::Resume { role } => {
            let r = client.maintenance(role, false, None).await?;
            if json { to_json(&r) } else { reply_text(&r) }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_pad_columns() {
        let t = table(
            &["a", "bb"],
            &[
                vec!["xxx".into(), "y".into()],
                vec!["z".into(), "wwww".into()],
            ],
        );
        assert_eq!(t, "a    bb\n---  ----\nxxx  y\nz    wwww\n");
    }
}
