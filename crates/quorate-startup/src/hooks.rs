//! Sidecar hooks: a role's hooks as shell commands, so that a program not written in Rust can be
//! managed. Each command runs with `sh -c` and these environment variables: `QUORATE_EVENT`
//! (`before_promote`, `on_promote`, `on_demote`, `on_role_change`), `QUORATE_ROLE`,
//! `QUORATE_NODE`, `QUORATE_FENCING_TOKEN` (when known), and for `on_role_change`
//! `QUORATE_OLD_PRIMARY`, `QUORATE_NEW_PRIMARY`, `QUORATE_CAUSE`. A `before_promote` that exits
//! non-zero vetoes the promotion. Every role change is also sent as a
//! [`NodeEvent::RoleChange`] (the agent prints it as one JSON line, which `quorate demo` reads).

use std::time::Duration;

use quorate_failover::shell::{HookContext, RoleChange, RoleHooks};
use quorate_health::process::{self, ProcessEnd};

use crate::config::RoleSection;
use crate::report::{NodeEvent, RoleChangeEvent};
use tokio::sync::broadcast;

/// The most bytes of each of a hook's stdout and stderr kept for the log; the rest is read and
/// dropped, so a hook printing without end costs the agent this much memory and no more.
pub const OUTPUT_BYTES_MAX: usize = 4096;

/// Hooks that run the commands of one `[[role]]` section, each through quorate's one process
/// runner ([`quorate_health::process::run`]): in its own process group, killed as a group at the
/// section's `hook_timeout` (or when the failover manager gives up on the call), output bounded.
#[derive(Clone, Debug)]
pub struct CommandHooks {
    section: RoleSection,
    /// Bound on one command's run (the section's `hook_timeout`).
    timeout: Duration,
    /// Where role changes go as [`NodeEvent::RoleChange`].
    events: broadcast::Sender<NodeEvent>,
}

impl CommandHooks {
    /// Hooks for one role section, with its `hook_timeout`; role changes are sent to
    /// `events`.
    pub fn new(section: RoleSection, events: broadcast::Sender<NodeEvent>) -> Self {
        let timeout = section.hook_timeout();
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
        let env = env
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .chain([("QUORATE_EVENT", event)]);
        let out = process::run(
            "sh",
            ["-c", cmd.as_str()],
            env,
            Some(self.timeout),
            OUTPUT_BYTES_MAX,
        )
        .await;
        let mut text = out.output_text();
        if out.output_bytes_dropped > 0 {
            text.push_str(&format!(
                " [{} more bytes of output dropped]",
                out.output_bytes_dropped
            ));
        }
        match out.end {
            ProcessEnd::Exited(0) => {
                tracing::info!(event, output = %text, "hook ran");
                Ok(())
            }
            ProcessEnd::Exited(code) => Err(format!("{event} hook exited with {code}: {text}")),
            ProcessEnd::Signaled(sig) => {
                Err(format!("{event} hook was killed by signal {sig}: {text}"))
            }
            ProcessEnd::TimedOut(after) => Err(format!(
                "{event} hook timed out after {after:?} (hook_timeout); its process group was \
                 killed: {text}"
            )),
            ProcessEnd::NotStarted(e) => Err(format!("{event} hook could not start: {e}")),
            ProcessEnd::WaitFailed(e) => Err(format!("{event} hook could not be waited for: {e}")),
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
