//! The async shell: a [`FailoverManager`] per node runs one task per named role, feeding the
//! pure [`RolePolicy`](crate::policy::RolePolicy) with observations from the coordination
//! store, membership and health, and carrying out its decisions: campaign for the role's
//! election with a lease (fencing token = revision of the grant), keep the lease alive,
//! **stop acting before the lease can expire** (at `sent + ttl * (1 - drift) - margin`),
//! call the hooks, hand the fencing token to the application, and record history.
//!
//! ```no_run
//! use std::sync::Arc;
//! use quorate_failover::policy::config::RoleConfig;
//! use quorate_failover::shell::{FailoverManager, ManagerConfig, RoleSpec};
//! use quorate_types::{NodeId, RoleName};
//! # async fn demo(
//! #     coord: Arc<dyn quorate_coord_api::Coord>,
//! #     health: Arc<dyn quorate_health_api::HealthView>,
//! #     membership: Arc<dyn quorate_membership_api::Membership>,
//! # ) -> Result<(), quorate_failover::FailoverError> {
//! let role = RoleName::new("telegram-poller").expect("valid name");
//! let node = NodeId::new("n1").expect("valid id");
//! let manager = FailoverManager::start(
//!     ManagerConfig::lan(node),
//!     coord,
//!     health,
//!     membership,
//!     vec![RoleSpec::new(role.clone(), RoleConfig::lan())],
//! )
//! .await?;
//! loop {
//!     // Runs only while this node is primary; cancelled on demotion.
//!     manager
//!         .run_while_primary(&role, |ctx| async move {
//!             let token = ctx.token(); // send it with every write
//!             ctx.demoted().await;
//!         })
//!         .await?;
//! }
//! # }
//! ```

mod hooks;
pub mod observe;
mod role;

pub use hooks::{ChangeCause, HookContext, LagSource, NoHooks, RoleChange, RoleHooks};

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quorate_clock::{Clock, SharedClock, SystemClock};
use quorate_coord_api::Coord;
use quorate_health_api::HealthView;
use quorate_membership_api::Membership;
use quorate_types::{FencingToken, NodeId, RoleName};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::{ConfigErrors, FailoverError};
use crate::policy::Explanation;
use crate::policy::config::RoleConfig;

/// Settings of the manager itself (per-role timing is in [`RoleConfig`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManagerConfig {
    /// This node.
    pub node: NodeId,
    /// Prefix of the coordination keys: each role's election is `<prefix>election/<role>`,
    /// its manual requests `<prefix>ops/<role>/request`, its vetoes
    /// `<prefix>ops/<role>/veto/<node>`.
    pub key_prefix: String,
    /// How often each role's policy is stepped (and the leader read).
    pub tick_interval: Duration,
    /// Timeout of one coordination call (reads, campaign, resign, revoke).
    pub coord_timeout: Duration,
    /// Timeout of one hook call; a `before_promote` that times out vetoes.
    pub hook_timeout: Duration,
    /// Entries kept in each role's history.
    pub history_max: NonZeroUsize,
    /// Manual operations queued per role before callers wait.
    pub command_queue_max: NonZeroUsize,
    /// How long a primary whose renews go unanswered keeps its lease after its holder deadline
    /// (not acting: the application's work is cancelled and `on_demote` runs at the deadline)
    /// in case the coordination store answers again, e.g. after its own leader election. A
    /// renew acknowledged in that time resumes the term with the same fencing token
    /// (`on_promote` runs again) instead of a needless handover; otherwise the term ends.
    /// Zero ends the term at the holder deadline.
    pub lease_resume_window: Duration,
}

impl ManagerConfig {
    /// LAN profile: step every 100 ms, 500 ms per coordination call, 5 s per hook, 256
    /// history entries, 16 queued commands, a 1.5 s lease resume window (a quorate-raft `lan`
    /// leader election takes about one second).
    pub fn lan(node: NodeId) -> Self {
        ManagerConfig {
            node,
            key_prefix: "quorate/failover/".to_owned(),
            tick_interval: Duration::from_millis(100),
            coord_timeout: Duration::from_millis(500),
            hook_timeout: Duration::from_secs(5),
            history_max: NonZeroUsize::new(256).unwrap_or(NonZeroUsize::MIN),
            command_queue_max: NonZeroUsize::new(16).unwrap_or(NonZeroUsize::MIN),
            lease_resume_window: Duration::from_millis(1500),
        }
    }

    fn collect_errors(&self, errors: &mut ConfigErrors) {
        for (name, v) in [
            ("tick_interval", self.tick_interval),
            ("coord_timeout", self.coord_timeout),
            ("hook_timeout", self.hook_timeout),
        ] {
            if v.is_zero() {
                errors.push(
                    format!("manager.{name}"),
                    format!("manager.{name} = 0 ms; it must be positive"),
                );
            }
        }
        if self.key_prefix.is_empty() {
            errors.push(
                "manager.key_prefix".to_owned(),
                "manager.key_prefix is empty; use e.g. \"quorate/failover/\"".to_owned(),
            );
        }
    }
}

/// One role this node can hold.
#[derive(Clone)]
pub struct RoleSpec {
    /// The role's name.
    pub name: RoleName,
    /// Its lease timing and policy.
    pub config: RoleConfig,
    /// Its hooks.
    pub hooks: Arc<dyn RoleHooks>,
    /// Its replication-lag source, if any.
    pub lag: Option<Arc<dyn LagSource>>,
}

impl RoleSpec {
    /// A role without hooks or lag source.
    pub fn new(name: RoleName, config: RoleConfig) -> Self {
        RoleSpec {
            name,
            config,
            hooks: Arc::new(NoHooks),
            lag: None,
        }
    }

    /// With these hooks.
    pub fn with_hooks(mut self, hooks: Arc<dyn RoleHooks>) -> Self {
        self.hooks = hooks;
        self
    }

    /// With this lag source.
    pub fn with_lag(mut self, lag: Arc<dyn LagSource>) -> Self {
        self.lag = Some(lag);
        self
    }
}

/// What the application holds while this node is primary of a role.
#[derive(Clone, Debug)]
pub struct PrimaryContext {
    role: RoleName,
    node: NodeId,
    token: FencingToken,
    cancel: CancellationToken,
    valid_until: watch::Receiver<Duration>,
    clock: SharedClock,
}

impl PrimaryContext {
    /// The role.
    pub fn role(&self) -> &RoleName {
        &self.role
    }

    /// This node.
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// The fencing token of this term: send it with every action on the protected resource.
    pub fn token(&self) -> FencingToken {
        self.token
    }

    /// Whether this node may still act as primary right now (not demoted, lease window open).
    pub fn is_valid(&self) -> bool {
        !self.cancel.is_cancelled() && self.clock.now() < *self.valid_until.borrow()
    }

    /// When the current lease window closes, on the manager's clock (compare with
    /// [`now`](Self::now)); renews push it forward.
    pub fn valid_until(&self) -> Duration {
        *self.valid_until.borrow()
    }

    /// The manager's clock reading now (the time base of [`valid_until`](Self::valid_until)).
    pub fn now(&self) -> Duration {
        self.clock.now()
    }

    /// Resolves when this term ends (demotion, lease not renewed, shutdown).
    pub async fn demoted(&self) {
        self.cancel.cancelled().await;
    }

    /// The cancellation token of this term, for `select!` and child tasks.
    pub fn cancellation(&self) -> CancellationToken {
        self.cancel.clone()
    }
}

/// A manual operation on a role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ManualOp {
    /// Planned handover to the named node, or the best candidate.
    Switchover(Option<NodeId>),
    /// Promotion when the role has no primary, of the named node or the best candidate.
    Failover(Option<NodeId>),
    /// Switchover to the preferred (highest-priority) candidate; with a node, only if that node
    /// still is the preferred candidate (an approval of the failback the policy waits for).
    Failback(Option<NodeId>),
    /// Postpone automatic failbacks for this long (see
    /// [`RolePolicy::postpone_failback`](crate::policy::RolePolicy::postpone_failback)).
    PostponeFailback(Duration),
    /// Maintenance mode for this long (no automatic moves).
    Pause(Duration),
    /// Leave maintenance mode.
    Resume,
    /// Cancel a handover under way.
    Cancel,
}

/// The role as this node sees it (published on every step).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RoleStatus {
    /// The lease holder per the coordination store, at the last step.
    pub primary: Option<NodeId>,
    /// Whether this node acts as primary now.
    pub acting: bool,
    /// This node's current fencing token, when acting.
    pub token: Option<FencingToken>,
    /// The policy's last action, as text.
    pub last_action: String,
    /// A failback that is due and waits for an operator's approval (`failback.approval`): the
    /// node it would hand the role to.
    pub awaiting_approval: Option<NodeId>,
    /// The nodes that could be promoted now, best first (the policy's `explain` at the last
    /// step): a rolling restart waits until the node it is about to stop has a successor here.
    pub candidates: Vec<NodeId>,
    /// Decision steps completed so far: it advances on every step of the role's loop, so a
    /// supervisor (e.g. the systemd watchdog in quorate-startup) can tell a live decision loop
    /// from a stuck one.
    pub steps: u64,
}

pub(crate) enum Command {
    Manual {
        op: ManualOp,
        reply: oneshot::Sender<Result<Option<NodeId>, FailoverError>>,
    },
    Explain {
        reply: oneshot::Sender<Result<Explanation<NodeId>, FailoverError>>,
    },
}

struct RoleHandle {
    commands: mpsc::Sender<Command>,
    primary: watch::Receiver<Option<PrimaryContext>>,
    status: watch::Receiver<RoleStatus>,
    history: Arc<Mutex<VecDeque<RoleChange>>>,
    renews: Arc<RenewStats>,
}

/// Upper bounds of the lease renew latency buckets, in seconds (`quorate-api` exports them as
/// a histogram).
pub const RENEW_BUCKETS_SECONDS: [f64; 10] = quorate_types::latency::LATENCY_BUCKETS_SECONDS;

/// Lease renew round trips of one role on this node (while it holds the role).
pub(crate) type RenewStats = quorate_types::latency::LatencyStats;

/// The lease renewals of one role on this node so far (acknowledged ones in the histogram,
/// failed or timed-out ones counted apart).
pub type RenewSnapshot = quorate_types::latency::LatencySnapshot;

/// Manages this node's roles. Dropping it does not stop the tasks: call
/// [`shutdown`](Self::shutdown), which demotes cleanly (hooks, resign, revoke).
pub struct FailoverManager {
    node: NodeId,
    roles: BTreeMap<RoleName, RoleHandle>,
    tracker: TaskTracker,
    cancel: CancellationToken,
}

impl FailoverManager {
    /// Validates the config against itself and the backend's capabilities, then starts one
    /// task per role (on the current tokio runtime) on the [`SystemClock`]. Reports every
    /// config problem at once.
    pub async fn start(
        config: ManagerConfig,
        coord: Arc<dyn Coord>,
        health: Arc<dyn HealthView>,
        membership: Arc<dyn Membership>,
        roles: Vec<RoleSpec>,
    ) -> Result<Self, FailoverError> {
        Self::start_with_clock(
            config,
            SystemClock::shared(),
            coord,
            health,
            membership,
            roles,
        )
        .await
    }

    /// As [`start`](Self::start), reading every time (lease deadline, renew schedule, policy
    /// steps, timeouts, [`PrimaryContext::is_valid`], measured durations) through `clock`.
    /// Simulations pass a clock with a skewed rate here.
    pub async fn start_with_clock(
        config: ManagerConfig,
        clock: SharedClock,
        coord: Arc<dyn Coord>,
        health: Arc<dyn HealthView>,
        membership: Arc<dyn Membership>,
        roles: Vec<RoleSpec>,
    ) -> Result<Self, FailoverError> {
        let caps = coord.capabilities();
        let mut errors = ConfigErrors::default();
        config.collect_errors(&mut errors);
        let mut seen = std::collections::BTreeSet::new();
        for spec in &roles {
            let section = format!("roles.{}", spec.name);
            if !seen.insert(spec.name.clone()) {
                errors.push(
                    section.clone(),
                    format!("{section}: role {} is listed twice", spec.name),
                );
            }
            if let Err(FailoverError::Config(e)) = spec.config.validate() {
                for p in e.problems {
                    errors.push(
                        format!("{section}.{}", p.field),
                        format!("{section}: {}", p.message),
                    );
                }
            }
            let ttl = spec.config.lease.ttl;
            if ttl < caps.lease_ttl_min || ttl > caps.lease_ttl_max {
                errors.push(
                    format!("{section}.lease.ttl"),
                    format!(
                        "{section}.lease.ttl = {} ms is outside what the {} backend grants ({} ms ..= {} ms)",
                        ttl.as_millis(),
                        caps.backend,
                        caps.lease_ttl_min.as_millis(),
                        caps.lease_ttl_max.as_millis()
                    ),
                );
            }
        }
        errors.into_result()?;

        let config = Arc::new(config);
        let tracker = TaskTracker::new();
        let cancel = CancellationToken::new();
        let mut handles = BTreeMap::new();
        for spec in roles {
            let (commands, command_rx) = mpsc::channel(config.command_queue_max.get());
            let (primary_tx, primary) = watch::channel(None);
            let (status_tx, status) = watch::channel(RoleStatus::default());
            let history = Arc::new(Mutex::new(VecDeque::new()));
            let renews = Arc::new(RenewStats::default());
            let name = spec.name.clone();
            let task = role::RoleTask::new(role::RoleTaskParts {
                config: config.clone(),
                spec,
                coord: coord.clone(),
                health: health.clone(),
                membership: membership.clone(),
                clock: clock.clone(),
                cancel: cancel.child_token(),
                tracker: tracker.clone(),
                commands: command_rx,
                primary: primary_tx,
                status: status_tx,
                history: history.clone(),
                renews: renews.clone(),
            });
            tracker.spawn(Box::pin(task.run()));
            handles.insert(
                name,
                RoleHandle {
                    commands,
                    primary,
                    status,
                    history,
                    renews,
                },
            );
        }
        Ok(FailoverManager {
            node: config.node.clone(),
            roles: handles,
            tracker,
            cancel,
        })
    }

    /// This node.
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// The managed roles.
    pub fn roles(&self) -> impl Iterator<Item = &RoleName> {
        self.roles.keys()
    }

    fn handle(&self, role: &RoleName) -> Result<&RoleHandle, FailoverError> {
        self.roles
            .get(role)
            .ok_or_else(|| FailoverError::UnknownRole {
                role: role.to_string(),
            })
    }

    /// The role's status as of the last step, and future updates.
    pub fn status(&self, role: &RoleName) -> Result<watch::Receiver<RoleStatus>, FailoverError> {
        Ok(self.handle(role)?.status.clone())
    }

    /// The primary context while this node acts as primary (`None` otherwise), and updates.
    pub fn primary(
        &self,
        role: &RoleName,
    ) -> Result<watch::Receiver<Option<PrimaryContext>>, FailoverError> {
        Ok(self.handle(role)?.primary.clone())
    }

    /// The role's history, oldest first (at most `history_max` entries).
    pub fn history(&self, role: &RoleName) -> Result<Vec<RoleChange>, FailoverError> {
        let h = self.handle(role)?;
        let guard = h.history.lock().unwrap_or_else(|e| e.into_inner());
        Ok(guard.iter().cloned().collect())
    }

    /// The lease renew latencies of `role` on this node so far (while it held the role).
    pub fn renew_stats(&self, role: &RoleName) -> Result<RenewSnapshot, FailoverError> {
        Ok(self.handle(role)?.renews.snapshot())
    }

    /// Waits until this node is primary of `role`, then runs `f` with the primary context
    /// until it completes (`Some(output)`) or the term ends (`None`: the future is dropped at
    /// once, before the lease window closes).
    pub async fn run_while_primary<F, Fut, T>(
        &self,
        role: &RoleName,
        f: F,
    ) -> Result<Option<T>, FailoverError>
    where
        F: FnOnce(PrimaryContext) -> Fut,
        Fut: Future<Output = T>,
    {
        let mut rx = self.handle(role)?.primary.clone();
        let ctx = loop {
            let current = rx.borrow_and_update().clone();
            if let Some(ctx) = current
                && ctx.is_valid()
            {
                break ctx;
            }
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => {
                    return Err(FailoverError::Stopped { role: role.to_string() });
                }
                changed = rx.changed() => {
                    if changed.is_err() {
                        return Err(FailoverError::Stopped { role: role.to_string() });
                    }
                }
            }
        };
        let term = ctx.cancellation();
        let work = Box::pin(f(ctx));
        tokio::select! {
            biased;
            () = term.cancelled() => Ok(None),
            out = work => Ok(Some(out)),
        }
    }

    /// Runs a manual operation on `role`: checked by this node's policy (refused with the
    /// reason when unfit), published to every node through the coordination store, and
    /// applied. Returns the chosen node for switchover, failover and failback.
    pub async fn manual(
        &self,
        role: &RoleName,
        op: ManualOp,
    ) -> Result<Option<NodeId>, FailoverError> {
        let h = self.handle(role)?;
        let (reply, rx) = oneshot::channel();
        let stopped = || FailoverError::Stopped {
            role: role.to_string(),
        };
        h.commands
            .send(Command::Manual { op, reply })
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Manual switchover to `target` or the best candidate.
    pub async fn switchover(
        &self,
        role: &RoleName,
        target: Option<NodeId>,
    ) -> Result<Option<NodeId>, FailoverError> {
        self.manual(role, ManualOp::Switchover(target)).await
    }

    /// Manual failover (no primary) to `target` or the best candidate.
    pub async fn failover(
        &self,
        role: &RoleName,
        target: Option<NodeId>,
    ) -> Result<Option<NodeId>, FailoverError> {
        self.manual(role, ManualOp::Failover(target)).await
    }

    /// For each member: candidate or not, and why not; whether automatic moves are on.
    pub async fn explain(&self, role: &RoleName) -> Result<Explanation<NodeId>, FailoverError> {
        let h = self.handle(role)?;
        let (reply, rx) = oneshot::channel();
        let stopped = || FailoverError::Stopped {
            role: role.to_string(),
        };
        h.commands
            .send(Command::Explain { reply })
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Stops every role: a primary cancels its work, runs `on_demote`, resigns and revokes its
    /// lease. Returns when every task has ended.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

#[cfg(test)]
mod renew_tests {
    use super::*;

    #[test]
    fn renew_latencies_land_in_cumulative_buckets() {
        let s = RenewStats::default();
        s.record(Duration::from_micros(800));
        s.record(Duration::from_millis(30));
        s.record(Duration::from_secs(3));
        s.record_failure();
        let snap = s.snapshot();
        assert_eq!(snap.count, 3);
        assert_eq!(snap.failed, 1);
        assert_eq!(snap.buckets.len(), RENEW_BUCKETS_SECONDS.len() + 1);
        assert_eq!(snap.buckets[0], (0.001, 1));
        // 30 ms is in the 0.05 s bucket (index 5), cumulative 2 from there on.
        assert_eq!(snap.buckets[4], (0.025, 1));
        assert_eq!(snap.buckets[5], (0.05, 2));
        assert_eq!(snap.buckets[9], (1.0, 2));
        assert!(snap.buckets[10].0.is_infinite());
        assert_eq!(snap.buckets[10].1, 3);
        assert!(
            (snap.sum_seconds - 3.0308).abs() < 1e-9,
            "{}",
            snap.sum_seconds
        );
    }
}
