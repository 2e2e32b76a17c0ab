//! Sidecar hooks: a role's hooks as shell commands, so that a program not written in Rust can be
//! managed. Each command runs with `sh -c` and these environment variables: `QUORATE_EVENT`
//! (`before_promote`, `on_promote`, `on_demote`, `on_role_change`), `QUORATE_ROLE`,
//! `QUORATE_NODE`, `QUORATE_FENCING_TOKEN` (when known), and for `on_role_change`
//! `QUORATE_OLD_PRIMARY`, `QUORATE_NEW_PRIMARY`, `QUORATE_CAUSE`. A `before_promote` that exits
//! non-zero vetoes the promotion. Every role change is also sent as a
//! [`NodeEvent::RoleChange`] (the agent prints it as one JSON line, which `quorate demo` reads).

use std::process::Stdio;
use std::time::Duration;

use quorate_failover::shell::{HookContext, RoleChange, RoleHooks};
use tokio::process::Command;

use crate::config::RoleSection;
use crate::report::{NodeEvent, RoleChangeEvent};
use tokio::sync::broadcast;

/// The most bytes of a hook's output kept for the log.
const OUTPUT_BYTES_MAX: usize = 4096;

/// Hooks that run the commands of one `[[role]]` section.
#[derive(Clone, Debug)]
pub struct CommandHooks {
    section: RoleSection,
    /// Bound on one command's run; the failover manager applies its own hook timeout too.
    timeout: Duration,
    /// Where role changes go as [`NodeEvent::RoleChange`].
    events: broadcast::Sender<NodeEvent>,
}

impl CommandHooks {
    /// Hooks for one role section; role changes are sent to `events`.
    pub fn new(
        section: RoleSection,
        timeout: Duration,
        events: broadcast::Sender<NodeEvent>,
    ) -> Self {
        Self {
            section,
            timeout,
            events,
        }
    }

    async fn run(
        &self,
        event: &str,
        cmd: Option<&String>,
        env: &[(&str, String)],
    ) -> Result<(), String> {
        let Some(cmd) = cmd else { return Ok(()) };
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(cmd)
            .env("QUORATE_EVENT", event)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            c.env(k, v);
        }
        let out = match tokio::time::timeout(self.timeout, c.output()).await {
            Err(_) => return Err(format!("{event} hook timed out after {:?}", self.timeout)),
            Ok(Err(e)) => return Err(format!("{event} hook could not start: {e}")),
            Ok(Ok(o)) => o,
        };
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        if text.len() > OUTPUT_BYTES_MAX {
            let mut cut = OUTPUT_BYTES_MAX;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        if out.status.success() {
            tracing::info!(event, output = %text.trim(), "hook ran");
            Ok(())
        } else {
            Err(format!(
                "{event} hook exited with {}: {}",
                out.status,
                text.trim()
            ))
        }
    }

    fn ctx_env(ctx: &HookContext) -> Vec<(&'static str, String)> {
        vec![
            ("QUORATE_ROLE", ctx.role.to_string()),
            ("QUORATE_NODE", ctx.node.to_string()),
            ("QUORATE_FENCING_TOKEN", ctx.token.0.to_string()),
        ]
    }
}

#[async_trait::async_trait]
impl RoleHooks for CommandHooks {
    async fn before_promote(&self, ctx: &HookContext) -> Result<(), String> {
        self.run(
            "before_promote",
            self.section.before_promote.as_ref(),
            &Self::ctx_env(ctx),
        )
        .await
    }

    async fn on_promote(&self, ctx: &HookContext) {
        if let Err(e) = self
            .run(
                "on_promote",
                self.section.on_promote.as_ref(),
                &Self::ctx_env(ctx),
            )
            .await
        {
            tracing::warn!("{e}");
        }
    }

    async fn on_demote(&self, ctx: &HookContext) {
        if let Err(e) = self
            .run(
                "on_demote",
                self.section.on_demote.as_ref(),
                &Self::ctx_env(ctx),
            )
            .await
        {
            tracing::warn!("{e}");
        }
    }

    async fn on_role_change(&self, change: &RoleChange) {
        let _ = self.events.send(role_change_event(change));
        let opt = |n: &Option<quorate_types::NodeId>| {
            n.as_ref().map(ToString::to_string).unwrap_or_default()
        };
        let env = vec![
            ("QUORATE_ROLE", change.role.to_string()),
            ("QUORATE_OLD_PRIMARY", opt(&change.old_primary)),
            ("QUORATE_NEW_PRIMARY", opt(&change.new_primary)),
            ("QUORATE_CAUSE", change.cause.to_string()),
            (
                "QUORATE_FENCING_TOKEN",
                change.token.map(|t| t.0.to_string()).unwrap_or_default(),
            ),
        ];
        if let Err(e) = self
            .run("on_role_change", self.section.on_role_change.as_ref(), &env)
            .await
        {
            tracing::warn!("{e}");
        }
    }
}

/// A role change as its typed event (what `quorate demo` and the e2e tests read).
pub fn role_change_event(change: &RoleChange) -> NodeEvent {
    let ms = |d: Option<Duration>| d.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    NodeEvent::RoleChange(RoleChangeEvent {
        role: change.role.to_string(),
        old_primary: change.old_primary.as_ref().map(ToString::to_string),
        new_primary: change.new_primary.as_ref().map(ToString::to_string),
        cause: change.cause.to_string(),
        token: change.token.map(|t| t.0),
        detection_ms: ms(change.detection),
        promotion_ms: ms(change.promotion),
        at_ms: u64::try_from(change.at.as_millis()).unwrap_or(u64::MAX),
    })
}
