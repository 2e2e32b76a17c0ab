//! Application hooks called around role changes, the replication-lag source, and the history
//! record of role changes.

use std::fmt;
use std::time::Duration;

use quorate_types::{FencingToken, NodeId, RoleName};

use crate::policy::Cause;

/// What a hook is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookContext {
    /// The role.
    pub role: RoleName,
    /// This node.
    pub node: NodeId,
    /// The fencing token of this term of office: pass it along with every action on the
    /// protected resource, which must reject tokens lower than the highest it has seen.
    pub token: FencingToken,
}

/// Hooks of one role, called in this order on this node: `before_promote` (may veto) ->
/// `on_promote` -> (the application runs as primary) -> `on_demote`; `on_role_change` after
/// every change of this node's role. Each call is bounded by `ManagerConfig::hook_timeout`.
///
/// ```
/// use quorate_failover::shell::{HookContext, RoleHooks};
///
/// struct Postgres;
///
/// #[async_trait::async_trait]
/// impl RoleHooks for Postgres {
///     async fn before_promote(&self, ctx: &HookContext) -> Result<(), String> {
///         // e.g. refuse while WAL replay is still running
///         let replaying = false;
///         if replaying { Err("WAL replay not finished".into()) } else { Ok(()) }
///     }
///     async fn on_promote(&self, ctx: &HookContext) {
///         // pg_ctl promote, remembering ctx.token for fenced writes
///     }
/// }
/// ```
#[async_trait::async_trait]
pub trait RoleHooks: Send + Sync + 'static {
    /// Called after the lease is won and before anything else. `Err(reason)` (or a timeout)
    /// vetoes: the lease is given back, the node is not a candidate for `veto_backoff`.
    async fn before_promote(&self, ctx: &HookContext) -> Result<(), String> {
        let _ = ctx;
        Ok(())
    }

    /// Called once the promotion is decided, before the application is told it is primary.
    async fn on_promote(&self, ctx: &HookContext) {
        let _ = ctx;
    }

    /// Called after this node stopped acting as primary (the application's primary work has
    /// already been cancelled).
    async fn on_demote(&self, ctx: &HookContext) {
        let _ = ctx;
    }

    /// Called after every recorded change that involves this node.
    async fn on_role_change(&self, change: &RoleChange) {
        let _ = change;
    }
}

/// Hooks that do nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoHooks;

impl RoleHooks for NoHooks {}

/// Where replication lag comes from (e.g. WAL positions of each replica). Lag is in the
/// source's unit and compared with `PolicyConfig::max_lag`.
pub trait LagSource: Send + Sync + 'static {
    /// The lag of `node` behind the primary, if known.
    fn lag(&self, node: &NodeId) -> Option<u64>;
}

/// Why a role changed, as recorded in the history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeCause {
    /// A policy decision (or a primary change observed in the coordination store).
    Policy(Cause),
    /// This node could not renew its lease in time and stopped acting.
    LeaseExpired,
    /// The coordination store no longer knows this node's lease or leadership.
    LeadershipLost,
    /// This node's `before_promote` hook vetoed.
    Vetoed(String),
    /// The manager was shut down.
    Shutdown,
}

impl fmt::Display for ChangeCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChangeCause::Policy(c) => write!(f, "{c}"),
            ChangeCause::LeaseExpired => f.write_str("lease not renewed in time"),
            ChangeCause::LeadershipLost => f.write_str("leadership lost in the coordination store"),
            ChangeCause::Vetoed(r) => write!(f, "before_promote vetoed: {r}"),
            ChangeCause::Shutdown => f.write_str("shutdown"),
        }
    }
}

/// One entry of a role's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleChange {
    /// The role.
    pub role: RoleName,
    /// When it was recorded (time since the manager started).
    pub at: Duration,
    /// The primary before.
    pub old_primary: Option<NodeId>,
    /// The primary after (None: no primary, or not known yet).
    pub new_primary: Option<NodeId>,
    /// Why.
    pub cause: ChangeCause,
    /// The new term's fencing token, when this node is the new primary.
    pub token: Option<FencingToken>,
    /// Detection part of RTO: from when the problem (or request) was first seen to the change.
    pub detection: Option<Duration>,
    /// Promotion part of RTO (this node's promotions): from starting to campaign to the end of
    /// `on_promote`.
    pub promotion: Option<Duration>,
    /// RPO when a lag source exists: the new primary's lag when it was last observed before
    /// the change (what the old primary had that it may not have).
    pub rpo: Option<u64>,
}

impl fmt::Display for RoleChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = |n: &Option<NodeId>| n.as_ref().map_or("none".to_owned(), |n| n.to_string());
        write!(
            f,
            "{}: {} -> {} ({})",
            self.role,
            name(&self.old_primary),
            name(&self.new_primary),
            self.cause
        )?;
        if let Some(t) = self.token {
            write!(f, ", {t}")?;
        }
        if let Some(d) = self.detection {
            write!(f, ", detected in {} ms", d.as_millis())?;
        }
        if let Some(p) = self.promotion {
            write!(f, ", promoted in {} ms", p.as_millis())?;
        }
        if let Some(r) = self.rpo {
            write!(f, ", lag lost {r}")?;
        }
        Ok(())
    }
}
