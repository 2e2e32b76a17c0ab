//! The bot's commands: parsing a message into a [`Command`], running it on the node (reads
//! directly, operations through the shared [`Admin`] layer so that a Telegram request gets
//! the same outcome and reason as the HTTP API or `quorate ctl`), and readable replies.

use std::fmt::Write as _;
use std::time::Duration;

use quorate_health_api::HealthStatus;
use quorate_membership_api::MemberState;
use quorate_startup::NodeContext;
use quorate_startup::admin::{Admin, AdminRequest, Principal};

/// The default length of a `/pause` without a ttl.
pub(crate) const PAUSE_DEFAULT: Duration = Duration::from_secs(3600);

/// History entries shown per role.
const HISTORY_SHOWN: usize = 10;

/// One command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Command {
    /// `/help` or `/start`.
    Help,
    /// `/status`.
    Status,
    /// `/nodes`.
    Nodes,
    /// `/roles`.
    Roles,
    /// `/history [role]`.
    History(Option<String>),
    /// `/health`.
    Health,
    /// `/explain <role>`.
    Explain(String),
    /// An operation: `/switchover`, `/failback`, `/postpone`, `/pause`, `/resume`.
    Admin(AdminRequest),
}

impl Command {
    /// Whether it changes the cluster (then it is claimed before it runs, so that a failover
    /// of the bot never runs it twice).
    pub(crate) fn operates(&self) -> bool {
        matches!(self, Command::Admin(_))
    }
}

/// The help text.
pub(crate) const HELP: &str = "quorate bot commands:
/status - the cluster at a glance
/nodes - members, their state and health
/roles - each role's primary
/history [role] - recent role changes
/health - this node's checks
/explain <role> - who can take the role, and why not
/switchover <role> [node] - hand the role over (to node, or the best candidate)
/failback <role> [node] - hand the role back to the preferred node (approves a waiting failback)
/postpone <role> [ttl] - no automatic failback for ttl (default 1h)
/pause <role> [ttl] - no automatic moves for ttl (default 1h), e.g. /pause app 30m
/resume <role> - automatic moves again";

/// Parses a message. `Err` holds the reply for text that is not a valid command.
pub(crate) fn parse(text: &str) -> Result<Command, String> {
    let mut words = text.split_whitespace();
    let Some(first) = words.next() else {
        return Err(HELP.to_owned());
    };
    let Some(cmd) = first.strip_prefix('/') else {
        return Err(format!(
            "I only understand commands. {}",
            HELP.trim_start_matches("quorate bot commands:")
                .trim_start()
                .lines()
                .next()
                .map_or(String::new(), |l| format!("Try {l}, or /help."))
        ));
    };
    // `/cmd@BotName` in groups.
    let cmd = cmd.split('@').next().unwrap_or(cmd).to_ascii_lowercase();
    let args: Vec<&str> = words.collect();
    let usage = |u: &str| Err(format!("usage: {u}"));
    let role = |i: usize| args.get(i).map(|s| (*s).to_owned());
    Ok(match (cmd.as_str(), args.len()) {
        ("help" | "start", _) => Command::Help,
        ("status", 0) => Command::Status,
        ("nodes", 0) => Command::Nodes,
        ("roles", 0) => Command::Roles,
        ("health", 0) => Command::Health,
        ("history", 0 | 1) => Command::History(role(0)),
        ("explain", 1) => Command::Explain(args[0].to_owned()),
        ("explain", _) => return usage("/explain <role>"),
        ("switchover", 1 | 2) => Command::Admin(AdminRequest::Switchover {
            role: args[0].to_owned(),
            to: role(1),
        }),
        ("switchover", _) => return usage("/switchover <role> [node]"),
        ("failback", 1 | 2) => Command::Admin(AdminRequest::Failback {
            role: args[0].to_owned(),
            to: role(1),
        }),
        ("failback", _) => return usage("/failback <role> [node]"),
        ("postpone", 1 | 2) => Command::Admin(AdminRequest::PostponeFailback {
            role: args[0].to_owned(),
            ttl_ms: ttl_ms("/postpone", args.get(1).copied())?,
        }),
        ("postpone", _) => return usage("/postpone <role> [ttl]"),
        ("pause", 1 | 2) => Command::Admin(AdminRequest::Pause {
            role: args[0].to_owned(),
            ttl_ms: ttl_ms("/pause", args.get(1).copied())?,
        }),
        ("pause", _) => return usage("/pause <role> [ttl]"),
        ("resume", 1) => Command::Admin(AdminRequest::Resume {
            role: args[0].to_owned(),
        }),
        ("resume", _) => return usage("/resume <role>"),
        ("status" | "nodes" | "roles" | "health", _) => {
            return Err(format!("/{cmd} takes no arguments"));
        }
        ("history", _) => return usage("/history [role]"),
        _ => return Err(format!("unknown command /{cmd}.\n{HELP}")),
    })
}

/// A command's optional duration argument in milliseconds ([`PAUSE_DEFAULT`] when absent).
fn ttl_ms(cmd: &str, arg: Option<&str>) -> Result<u64, String> {
    let ttl = match arg {
        None => PAUSE_DEFAULT,
        Some(t) => humantime::parse_duration(t)
            .map_err(|e| format!("{cmd}: {t:?} is not a duration ({e}); e.g. 30m, 2h"))?,
    };
    Ok(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
}

/// Runs `cmd` for `who` on the node and returns the reply.
pub(crate) async fn run(ctx: &NodeContext, admin: &Admin, who: &Principal, cmd: Command) -> String {
    match cmd {
        Command::Help => HELP.to_owned(),
        Command::Status => status(ctx).await,
        Command::Nodes => nodes(ctx),
        Command::Roles => roles(ctx),
        Command::History(role) => history(ctx, admin, role.as_deref()),
        Command::Health => health(ctx),
        Command::Explain(role) => match admin.role(&role) {
            Err(e) => format!("❌ {e}"),
            Ok(r) => match ctx.failover.explain(&r).await {
                Ok(x) => format!("{role}: {x}"),
                Err(e) => format!("❌ {}", quorate_startup::admin::admin_error(e)),
            },
        },
        Command::Admin(req) => match admin.run(who, req).await {
            Ok(o) => format!("✅ {}", o.message),
            Err(e) => format!("❌ {e}"),
        },
    }
}

async fn status(ctx: &NodeContext) -> String {
    let me = &ctx.config.node_id;
    let mut s = format!("cluster {}, seen from {me}\n", ctx.config.raw.cluster_name);
    match tokio::time::timeout(Duration::from_secs(2), ctx.coord.status()).await {
        Ok(Ok(c)) => {
            let _ = writeln!(
                s,
                "coordination: leader {}, term {}, {} voters",
                c.leader.map_or("none".to_owned(), |l| l.to_string()),
                c.term,
                c.voters.len()
            );
        }
        Ok(Err(e)) => {
            let _ = writeln!(s, "coordination: unavailable ({e})");
        }
        Err(_) => {
            let _ = writeln!(s, "coordination: no answer within 2 s");
        }
    }
    let m = ctx.membership.snapshot();
    let alive = m
        .members
        .iter()
        .filter(|x| x.state == MemberState::Alive)
        .count();
    let _ = writeln!(
        s,
        "members: {alive} of {} alive; {} of {} voters reachable{}",
        m.members.len(),
        m.quorum.voters_reachable,
        m.quorum.voters.len(),
        if m.quorum.has_majority {
            ""
        } else {
            " (NO MAJORITY)"
        }
    );
    let h = ctx.health.snapshot();
    let _ = writeln!(
        s,
        "health of {me}: {} ({} of {} checks passing)",
        h.status.as_str(),
        h.healthy,
        h.total
    );
    s.push_str(&roles(ctx));
    s
}

fn state_word(s: MemberState) -> &'static str {
    quorate_startup::report::member_state(s)
}

fn nodes(ctx: &NodeContext) -> String {
    let m = ctx.membership.snapshot();
    let mut s = format!("{} members:\n", m.members.len());
    for x in &m.members {
        let roles: Vec<String> = x.meta.node.roles.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            s,
            "• {}: {}, health {}{}{}",
            x.id,
            state_word(x.state),
            x.meta.health.status.as_str(),
            if m.quorum.voters.contains(&x.id) {
                ", voter"
            } else {
                ""
            },
            if roles.is_empty() {
                String::new()
            } else {
                format!(", can take {}", roles.join(", "))
            }
        );
    }
    s.trim_end().to_owned()
}

fn roles(ctx: &NodeContext) -> String {
    let mut s = String::from("roles:\n");
    for r in ctx.failover.roles() {
        let Ok(st) = ctx.failover.status(r) else {
            continue;
        };
        let st = st.borrow().clone();
        let _ = writeln!(
            s,
            "• {r}: primary {}{} ({})",
            st.primary.map_or("none".to_owned(), |p| p.to_string()),
            st.token.map_or(String::new(), |t| format!(", {t}")),
            st.last_action
        );
    }
    s.trim_end().to_owned()
}

fn history(ctx: &NodeContext, admin: &Admin, role: Option<&str>) -> String {
    let roles = match role {
        Some(r) => match admin.role(r) {
            Ok(r) => vec![r],
            Err(e) => return format!("❌ {e}"),
        },
        None => admin.roles(),
    };
    let mut s = String::new();
    for r in roles {
        let h = ctx.failover.history(&r).unwrap_or_default();
        let _ = writeln!(s, "{r}: {} change(s) recorded by this node", h.len());
        for c in h.iter().rev().take(HISTORY_SHOWN) {
            let _ = writeln!(s, "• t+{:.1}s {c}", c.at.as_secs_f64());
        }
    }
    if s.is_empty() {
        "no roles".to_owned()
    } else {
        s.trim_end().to_owned()
    }
}

fn health(ctx: &NodeContext) -> String {
    let h = ctx.health.snapshot();
    let mut s = format!(
        "health of {}: {} ({} of {} checks passing)",
        ctx.config.node_id,
        h.status.as_str(),
        h.healthy,
        h.total
    );
    for c in h.checks.values().filter(|c| c.enabled) {
        let mark = match c.status {
            HealthStatus::Passing => "✅",
            HealthStatus::Warning => "⚠️",
            HealthStatus::Unknown => "❔",
            HealthStatus::Critical => "🚨",
        };
        let _ = write!(s, "\n{mark} {}: {}", c.id, c.status.as_str());
        if !c.message.is_empty() {
            let _ = write!(s, " ({})", c.message);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(text: &str, want: Result<Command, &str>) {
        let got = parse(text);
        match (&got, &want) {
            (Ok(g), Ok(w)) => assert_eq!(g, w, "{text}"),
            (Err(g), Err(w)) => assert!(g.contains(w), "{text}: {g}"),
            _ => panic!("{text}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn commands_parse_with_their_arguments_and_bad_ones_get_their_usage() {
        check("/status", Ok(Command::Status));
        check("/status@quorate_bot", Ok(Command::Status));
        check("/STATUS", Ok(Command::Status));
        check("/nodes", Ok(Command::Nodes));
        check("/roles", Ok(Command::Roles));
        check("/health", Ok(Command::Health));
        check("/history", Ok(Command::History(None)));
        check("/history app", Ok(Command::History(Some("app".into()))));
        check("/explain app", Ok(Command::Explain("app".into())));
        check("/explain", Err("usage: /explain <role>"));
        check(
            "/switchover app",
            Ok(Command::Admin(AdminRequest::Switchover {
                role: "app".into(),
                to: None,
            })),
        );
        check(
            "/switchover app n2",
            Ok(Command::Admin(AdminRequest::Switchover {
                role: "app".into(),
                to: Some("n2".into()),
            })),
        );
        check(
            "/pause app",
            Ok(Command::Admin(AdminRequest::Pause {
                role: "app".into(),
                ttl_ms: 3_600_000,
            })),
        );
        check(
            "/pause app 30m",
            Ok(Command::Admin(AdminRequest::Pause {
                role: "app".into(),
                ttl_ms: 1_800_000,
            })),
        );
        check("/pause app soon", Err("is not a duration"));
        check(
            "/resume app",
            Ok(Command::Admin(AdminRequest::Resume { role: "app".into() })),
        );
        check("/resume", Err("usage: /resume <role>"));
        check(
            "/failback app",
            Ok(Command::Admin(AdminRequest::Failback {
                role: "app".into(),
                to: None,
            })),
        );
        check(
            "/failback app n1",
            Ok(Command::Admin(AdminRequest::Failback {
                role: "app".into(),
                to: Some("n1".into()),
            })),
        );
        check("/failback", Err("usage: /failback <role> [node]"));
        check(
            "/postpone app",
            Ok(Command::Admin(AdminRequest::PostponeFailback {
                role: "app".into(),
                ttl_ms: 3_600_000,
            })),
        );
        check(
            "/postpone app 2h",
            Ok(Command::Admin(AdminRequest::PostponeFailback {
                role: "app".into(),
                ttl_ms: 7_200_000,
            })),
        );
        check(
            "/postpone app later",
            Err("/postpone: \"later\" is not a duration"),
        );
        check("/postpone", Err("usage: /postpone <role> [ttl]"));
        check("/status now", Err("takes no arguments"));
        check("/frobnicate", Err("unknown command /frobnicate"));
        check("hello", Err("I only understand commands"));
        check("", Err("quorate bot commands"));
        check("/help", Ok(Command::Help));
    }
}
