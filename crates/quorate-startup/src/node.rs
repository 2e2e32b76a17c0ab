//! The node: [`Node::builder`] assembles the components in named stages, in dependency order,
//! each with a readiness condition, a timeout and a line in the [`StartupReport`]:
//!
//! | stage | does | ready when |
//! | --- | --- | --- |
//! | `config` | takes the validated config | at once |
//! | `storage` | creates the data dir (0700), opens `raft.redb` | opened |
//! | `transport` | builds the authenticated wire config from the key ring | built |
//! | `coordination` | starts embedded Raft | a linearizable read succeeds (leader known, caught up) |
//! | `health` | starts the monitor and registers the checks | every check has run once |
//! | `membership` | joins the gossip | joined |
//! | `roles` | starts the failover manager | every role has made one decision |
//! | `plugin:NAME` | each [`Plugin`], in the order added | its `start` returned |
//!
//! A failure names its stage and cause ([`StartupError`]) and stops the stages already started,
//! in reverse order. The running [`Node`] offers a typed [`NodeStatus`] snapshot and a
//! [`NodeEvent`] stream; [`Node::shutdown`] hands each role this node holds to the best
//! candidate and waits for its confirmation before leaving.

use std::future::Future;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use quorate_coord_api::{Consistency, Coord};
use quorate_failover::shell::{FailoverManager, ManagerConfig, PrimaryContext, RoleSpec};
use quorate_health::checks::{
    CommandCheck, DiskSpaceCheck, HttpCheck, MemoryCheck, PostgresCheck, RedisCheck,
    SpaceThreshold, TcpCheck,
};
use quorate_health::{CheckConfig, HealthMonitor, MonitorConfig};
use quorate_health_api::{ComponentType, Criticality, HealthCheck, HealthView};
use quorate_membership::{MembershipConfig, MembershipHandle, Profile};
use quorate_membership_api::{MemberMeta, Membership, MembershipEvent};
use quorate_raft::{NodeConfig, RaftNode, Storage, Timing};
use quorate_types::{NodeId, RoleName};
use quorate_wire::net::TokioNet;
use quorate_wire::{ClientKey, ClusterKey, KeyRing, WireConfig};
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{CheckKind, CheckSection, Validated};
use crate::hooks::CommandHooks;
use crate::notify::{Notifier, NotifyState, SdNotifier};
use crate::report::{NodeEvent, NodeStatus, StageOutcome, StageReport, StartupReport};

/// Why the node could not start: the stage, and its cause. The stages started before it were
/// stopped again (in reverse order) before this error was returned.
#[derive(Debug, thiserror::Error)]
#[error("startup stage `{stage}` failed: {cause}")]
pub struct StartupError {
    /// The stage that failed.
    pub stage: String,
    /// What went wrong, and how to fix it where that is known.
    pub cause: String,
    /// The report up to and including the failed stage.
    pub report: StartupReport,
}

/// A component started as the last stages of the node (HTTP API, Telegram, state,
/// replication): one small trait.
#[async_trait]
pub trait Plugin: Send + Sync {
    /// Its name in the startup report (`plugin:NAME`).
    fn name(&self) -> &str;
    /// Starts it; the node is up to the roles stage. An error fails startup.
    async fn start(&self, node: &NodeContext) -> Result<(), String>;
    /// Stops it (on shutdown or when a later stage fails).
    async fn stop(&self);
}

/// The keys of a validated config (at start and on SIGHUP): the send key, the further
/// accepted cluster keys, the client keys.
fn cluster_keys(v: &Validated) -> Result<(ClusterKey, Vec<ClusterKey>, Vec<ClientKey>), String> {
    let parse =
        |k: &quorate_types::Secret| ClusterKey::from_hex(k.expose()).map_err(|e| e.to_string());
    let key = parse(&v.key_hex)?;
    let accepted = v
        .accepted_keys_hex
        .iter()
        .map(parse)
        .collect::<Result<Vec<_>, _>>()?;
    let clients = v
        .client_keys_hex
        .iter()
        .map(|k| parse(k).map(ClientKey::new))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((key, accepted, clients))
}

/// What [`Node::reload_keys`] took.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeysReloaded {
    /// Keys accepted now (the send key included).
    pub keys: usize,
    /// Client keys accepted now.
    pub client_keys: usize,
    /// The one-byte hint of the send key, as two hex digits (it reveals nothing of the key).
    pub send_key_hint: String,
}

/// What a plugin gets: the node's components.
#[derive(Clone)]
pub struct NodeContext {
    /// The validated config.
    pub config: Arc<Validated>,
    /// The coordination store.
    pub coord: Arc<dyn Coord>,
    /// Aggregated health.
    pub health: Arc<dyn HealthView>,
    /// Membership.
    pub membership: Arc<dyn Membership>,
    /// The failover manager (roles, manual operations, history).
    pub failover: Arc<FailoverManager>,
    /// Node events.
    pub events: broadcast::Sender<NodeEvent>,
    /// Readiness.
    pub ready: watch::Receiver<bool>,
    /// The cluster keys every transport of this node seals and opens with (Raft, gossip, and
    /// a plugin's own, e.g. replication): one shared ring, replaced in place by
    /// [`Node::reload_keys`].
    pub keys: KeyRing,
    /// Latencies of this node's requests to `coord`, per operation (`quorate-api` exports
    /// them).
    pub coord_stats: Arc<crate::metered::CoordStats>,
    /// Counters of this node's Raft port (`quorate-api` exports them as
    /// `quorate_raft_inbound_events_total{event}`).
    pub raft_inbound: Arc<quorate_raft::network::InboundStats>,
    /// Counters of this node's Raft elections (`quorate-api` exports them as
    /// `quorate_raft_election_events_total{event}`).
    pub raft_elections: Arc<quorate_raft::node::ElectorStats>,
    /// Plug-ins' metrics (e.g. the replication stage's), read by the metrics exporter at each
    /// scrape: a plug-in registers its source when it starts.
    pub metric_sources: crate::sources::MetricSources,
}

/// Builds a [`Node`] from a validated config.
pub struct NodeBuilder {
    config: Validated,
    events: broadcast::Sender<NodeEvent>,
    plugins: Vec<Arc<dyn Plugin>>,
    notifier: Arc<dyn Notifier>,
    hooks: Vec<(RoleName, Arc<dyn quorate_failover::shell::RoleHooks>)>,
    lags: Vec<RoleLag>,
    write_status_file: bool,
}

/// A replication-lag source for a role, with the candidate limit that goes with it.
type RoleLag = (
    RoleName,
    Arc<dyn quorate_failover::shell::LagSource>,
    Option<u64>,
);

/// A running node.
pub struct Node {
    ctx: NodeContext,
    raft: RaftNode<TokioNet>,
    monitor: HealthMonitor,
    membership: MembershipHandle,
    plugins: Vec<Arc<dyn Plugin>>,
    notifier: Arc<dyn Notifier>,
    ready_tx: watch::Sender<bool>,
    report: StartupReport,
    tracker: TaskTracker,
    cancel: CancellationToken,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("node", &self.ctx.config.node_id)
            .field("report", &self.report)
            .finish_non_exhaustive()
    }
}

/// Builds the health check a `[[check]]` section describes (also run by config validation, so
/// `quorate check` refuses a target the agent would refuse).
pub fn build_check(
    c: &CheckSection,
    kind: CheckKind,
) -> Result<(ComponentType, Arc<dyn HealthCheck>), String> {
    let t = c.target.as_str();
    let e = |e: quorate_health::HealthError| e.to_string();
    Ok(match kind {
        CheckKind::Tcp => (
            ComponentType::ExternalApi,
            Arc::new(TcpCheck::new(t).map_err(e)?),
        ),
        CheckKind::Http => (
            ComponentType::ExternalApi,
            Arc::new(HttpCheck::new(t).map_err(e)?),
        ),
        CheckKind::Redis => (
            ComponentType::Cache,
            Arc::new(RedisCheck::new(t).map_err(e)?),
        ),
        CheckKind::Postgres => (
            ComponentType::Database,
            Arc::new(PostgresCheck::new(t).map_err(e)?),
        ),
        CheckKind::Command => (
            ComponentType::Custom("command".into()),
            Arc::new(CommandCheck::new("sh", ["-c", t]).map_err(e)?),
        ),
        CheckKind::Disk => (
            ComponentType::NodeResource,
            Arc::new(
                DiskSpaceCheck::new(
                    t,
                    SpaceThreshold::Percent(10.0),
                    SpaceThreshold::Percent(5.0),
                )
                .map_err(e)?,
            ),
        ),
        CheckKind::Memory { critical_mib: crit } => (
            ComponentType::NodeResource,
            Arc::new(MemoryCheck::new(crit * 1024 * 1024 * 8 / 10, crit * 1024 * 1024).map_err(e)?),
        ),
    })
}

/// The failover manager's config and the roles, as the node runs them: each role with its
/// profile's timing, its section's overrides and its hooks (`custom` for an embedding
/// service's Rust hooks, else the section's shell commands); the manager's hook limit derived
/// from the roles' `hook_timeout`s ([`crate::config::manager_hook_timeout`]), so that a hook's
/// own timeout is the one that applies.
pub fn failover_setup(
    v: &Validated,
    events: &broadcast::Sender<NodeEvent>,
    custom: &[(RoleName, Arc<dyn quorate_failover::shell::RoleHooks>)],
) -> (ManagerConfig, Vec<RoleSpec>) {
    let wan = v.profile.is_wan();
    let roles = v
        .raw
        .roles
        .iter()
        .zip(&v.roles)
        .map(|(section, name)| {
            let hooks = custom
                .iter()
                .find(|(r, _)| r == name)
                .map(|(_, h)| Arc::clone(h))
                .unwrap_or_else(|| Arc::new(CommandHooks::new(section.clone(), events.clone())));
            RoleSpec::new(name.clone(), section.role_config(wan)).with_hooks(hooks)
        })
        .collect();
    let mut mgr_config = ManagerConfig::lan(v.node_id.clone());
    if wan {
        mgr_config.tick_interval = Duration::from_millis(250);
    }
    mgr_config.hook_timeout =
        crate::config::manager_hook_timeout(&v.raw.roles, mgr_config.hook_timeout);
    (mgr_config, roles)
}

/// Runs `fut` as one stage: bounded by `timeout`, recorded in `report`.
async fn stage<T, F>(
    report: &mut StartupReport,
    notifier: &dyn Notifier,
    events: &broadcast::Sender<NodeEvent>,
    name: &str,
    timeout: Duration,
    fut: F,
) -> Result<T, (String, String)>
where
    F: Future<Output = Result<T, String>>,
{
    notifier.notify(&[NotifyState::Status(&format!("starting: {name}"))]);
    let t0 = Instant::now();
    let r = match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "not ready within {timeout:?} (raise [startup] stage_timeout if this node needs longer)"
        )),
    };
    let duration = t0.elapsed();
    let outcome = match &r {
        Ok(_) => StageOutcome::Ready,
        Err(e) => StageOutcome::Failed(e.clone()),
    };
    let line = StageReport {
        stage: name.to_owned(),
        duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
        outcome,
    };
    let _ = events.send(NodeEvent::Stage(line.clone()));
    report.stages.push(line);
    r.map_err(|e| (name.to_owned(), e))
}

/// Started components, stopped in reverse order when a later stage fails.
#[derive(Default)]
struct Started {
    raft: Option<RaftNode<TokioNet>>,
    monitor: Option<HealthMonitor>,
    membership: Option<MembershipHandle>,
    manager: Option<Arc<FailoverManager>>,
    plugins: Vec<Arc<dyn Plugin>>,
}

impl Started {
    async fn unwind(self) {
        for p in self.plugins.iter().rev() {
            p.stop().await;
        }
        if let Some(m) = self.manager
            && let Ok(m) = Arc::try_unwrap(m)
        {
            m.shutdown().await;
        }
        if let Some(m) = self.membership {
            m.shutdown();
        }
        if let Some(m) = self.monitor {
            m.shutdown().await;
        }
        if let Some(r) = self.raft {
            r.shutdown().await;
        }
    }
}

impl Node {
    /// A builder for a node run from `config`.
    pub fn builder(config: Validated) -> NodeBuilder {
        let (events, _) = broadcast::channel(config.startup.events_capacity);
        NodeBuilder {
            config,
            events,
            plugins: Vec::new(),
            notifier: Arc::new(SdNotifier),
            hooks: Vec::new(),
            lags: Vec::new(),
            write_status_file: true,
        }
    }

    /// The stages as they started.
    pub fn startup_report(&self) -> &StartupReport {
        &self.report
    }

    /// The node's components, as plugins see them.
    pub fn context(&self) -> &NodeContext {
        &self.ctx
    }

    /// The coordination store.
    pub fn coord(&self) -> Arc<dyn Coord> {
        Arc::clone(&self.ctx.coord)
    }

    /// The failover manager.
    pub fn failover(&self) -> &FailoverManager {
        &self.ctx.failover
    }

    /// Every node event from now on (bounded; a slow receiver gets `Lagged` and resyncs from
    /// [`Node::status`]).
    pub fn events(&self) -> broadcast::Receiver<NodeEvent> {
        self.ctx.events.subscribe()
    }

    /// Takes the cluster keys of `fresh` (the config file read again, on SIGHUP) into the
    /// running node: every transport seals with its `cluster_key` and accepts its
    /// `accepted_key_files` (and the Raft port its `client_key_files`) from the next frame on, with no connection or session restarted.
    /// That is one step of a rotation without downtime (docs/security.md): accept the new key
    /// everywhere, then send it everywhere, then drop the old one. Other settings are not
    /// taken (they need a restart); a config for another cluster or node is refused. Emits
    /// [`NodeEvent::KeysReloaded`] or [`NodeEvent::ReloadRefused`].
    pub fn reload_keys(&self, fresh: &Validated) -> Result<KeysReloaded, String> {
        let result = self.take_keys(fresh);
        self.report_reload(&result);
        result
    }

    /// Emits the event of a reload that failed before [`Node::reload_keys`] (an unreadable or
    /// invalid config file), or of one that ran.
    pub fn report_reload(&self, result: &Result<KeysReloaded, String>) {
        let node = self.ctx.config.node_id.to_string();
        let _ = self.ctx.events.send(match result {
            Ok(r) => NodeEvent::KeysReloaded {
                node,
                send_key_hint: r.send_key_hint.clone(),
                keys: r.keys,
                client_keys: r.client_keys,
            },
            Err(reason) => NodeEvent::ReloadRefused {
                node,
                reason: reason.clone(),
            },
        });
    }

    fn take_keys(&self, fresh: &Validated) -> Result<KeysReloaded, String> {
        let running = &self.ctx.config;
        if fresh.raw.cluster_name != running.raw.cluster_name || fresh.node_id != running.node_id {
            return Err(format!(
                "the file is now for cluster {:?}, node {}; this agent runs cluster {:?}, node {} \
                 (restart the agent to change them)",
                fresh.raw.cluster_name, fresh.node_id, running.raw.cluster_name, running.node_id
            ));
        }
        let (key, accepted, clients) = cluster_keys(fresh)?;
        self.ctx
            .keys
            .replace_all(key, accepted, clients)
            .map_err(|e| e.to_string())?;
        let (send, _) = self.ctx.keys.hints();
        Ok(KeysReloaded {
            keys: self.ctx.keys.len(),
            client_keys: self.ctx.keys.client_key_count(),
            send_key_hint: format!("{send:02x}"),
        })
    }

    /// Readiness: true once every stage is ready, false again from the start of a shutdown.
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.ctx.ready.clone()
    }

    /// A fresh snapshot of this node's view.
    pub fn status(&self) -> NodeStatus {
        crate::report::collect(
            &self.ctx.config,
            &self.raft,
            &self.ctx.membership,
            &self.ctx.health,
            &self.ctx.failover,
        )
    }

    /// Waits until this node is primary of `role`, then runs `f` with the primary context
    /// (its fencing token) until it completes or the term ends (then the future is dropped,
    /// before the lease can lapse).
    pub async fn run_while_primary<F, Fut, T>(
        &self,
        role: &RoleName,
        f: F,
    ) -> Result<Option<T>, quorate_failover::FailoverError>
    where
        F: FnOnce(PrimaryContext) -> Fut,
        Fut: Future<Output = T>,
    {
        self.ctx.failover.run_while_primary(role, f).await
    }

    /// Graceful shutdown within `budget`: readiness turns false; each role this node holds is
    /// switched over to the best candidate, waiting for that node to confirm (it is seen as
    /// primary) within the config's `handover_wait`; plugins stop; the failover manager
    /// stops (a primary that found no successor demotes and revokes its lease); the node
    /// leaves the gossip; Raft stops and its storage is closed. Past `budget`, the rest is cut
    /// short (the returned report says so).
    pub async fn shutdown(self, budget: Duration) -> ShutdownReport {
        let deadline = Instant::now() + budget;
        let _ = self.ready_tx.send(false);
        self.notifier.notify(&[
            NotifyState::Stopping,
            NotifyState::Status("stopping: handing roles over"),
        ]);
        let _ = self.ctx.events.send(NodeEvent::Stopping {
            node: self.ctx.config.node_id.to_string(),
        });
        let mut report = ShutdownReport::default();
        let handover_wait = self.ctx.config.startup.handover_wait;
        for role in self.ctx.config.roles.clone() {
            let acting = self
                .ctx
                .failover
                .status(&role)
                .map(|s| s.borrow().acting)
                .unwrap_or(false);
            if !acting {
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let wait = handover_wait.min(left);
            self.notifier.notify(&[NotifyState::ExtendTimeoutUsec(
                u32::try_from(wait.as_micros().saturating_add(1_000_000)).unwrap_or(u32::MAX),
            )]);
            let outcome = handover(&self.ctx.failover, &role, wait).await;
            report.handovers.push((role.to_string(), outcome));
        }
        self.cancel.cancel();
        self.tracker.close();
        let rest = async {
            for p in self.plugins.iter().rev() {
                p.stop().await;
            }
            if let Ok(m) = Arc::try_unwrap(self.ctx.failover) {
                m.shutdown().await;
            }
            let _ = self.membership.leave().await;
            self.membership.shutdown();
            self.raft.shutdown().await;
            self.monitor.shutdown().await;
            self.tracker.wait().await;
        };
        let left = deadline.saturating_duration_since(Instant::now());
        report.within_budget = tokio::time::timeout(left, rest).await.is_ok();
        let _ = self.ctx.events.send(NodeEvent::Stopped {
            node: self.ctx.config.node_id.to_string(),
        });
        report
    }
}

/// What a graceful shutdown did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Per role held here: the outcome of its hand-off.
    pub handovers: Vec<(String, HandoverOutcome)>,
    /// Whether everything stopped within the budget.
    pub within_budget: bool,
}

/// How one role's hand-off on shutdown ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandoverOutcome {
    /// The successor confirmed: it is seen as primary.
    Confirmed {
        /// The new primary.
        to: String,
    },
    /// No successor confirmed in time, or none was fit; the role is released by stepping down
    /// (the others then elect one).
    Released {
        /// Why.
        why: String,
    },
}

async fn handover(failover: &FailoverManager, role: &RoleName, wait: Duration) -> HandoverOutcome {
    let chosen = match tokio::time::timeout(wait, failover.switchover(role, None)).await {
        Ok(Ok(Some(n))) => n,
        Ok(Ok(None)) => {
            return HandoverOutcome::Released {
                why: "no successor was chosen".to_owned(),
            };
        }
        Ok(Err(e)) => {
            return HandoverOutcome::Released { why: e.to_string() };
        }
        Err(_) => {
            return HandoverOutcome::Released {
                why: format!("the switchover was not accepted within {wait:?}"),
            };
        }
    };
    let Ok(mut rx) = failover.status(role) else {
        return HandoverOutcome::Released {
            why: "role stopped".to_owned(),
        };
    };
    let confirmed = tokio::time::timeout(wait, async {
        loop {
            {
                let s = rx.borrow_and_update();
                if !s.acting && s.primary.as_ref() == Some(&chosen) {
                    return true;
                }
            }
            if rx.changed().await.is_err() {
                return false;
            }
        }
    })
    .await;
    match confirmed {
        Ok(true) => HandoverOutcome::Confirmed {
            to: chosen.to_string(),
        },
        _ => HandoverOutcome::Released {
            why: format!("{chosen} did not confirm within {wait:?}"),
        },
    }
}

impl NodeBuilder {
    /// Node events from the first stage on (subscribe before [`NodeBuilder::start`] to see
    /// the stages as they end; the node's own [`Node::events`] is the same stream).
    pub fn events(&self) -> broadcast::Receiver<NodeEvent> {
        self.events.subscribe()
    }

    /// Adds a plugin, started after the roles stage (in the order added).
    pub fn plugin(mut self, plugin: Arc<dyn Plugin>) -> Self {
        self.plugins.push(plugin);
        self
    }

    /// Where readiness, status and watchdog notifications go (default: systemd's
    /// `NOTIFY_SOCKET`, a no-op when it is not set).
    pub fn notifier(mut self, notifier: Arc<dyn Notifier>) -> Self {
        self.notifier = notifier;
        self
    }

    /// Rust hooks for `role` (an embedding service), instead of the config's commands.
    pub fn hooks(
        mut self,
        role: RoleName,
        hooks: Arc<dyn quorate_failover::shell::RoleHooks>,
    ) -> Self {
        self.hooks.push((role, hooks));
        self
    }

    /// A replication-lag source for `role` (e.g. a managed database's replica offsets), and
    /// the policy's `max_lag` for it (`None`: the profile's). With a lag source, a node whose
    /// lag is unknown or above `max_lag` is not a candidate, and `explain` says so.
    pub fn lag(
        mut self,
        role: RoleName,
        lag: Arc<dyn quorate_failover::shell::LagSource>,
        max_lag: Option<u64>,
    ) -> Self {
        self.lags.push((role, lag, max_lag));
        self
    }

    /// The replication-lag source of `role` (e.g. a leader-mode keyspace's, see
    /// [`crate::replication::ReplicationStage::attach`]), compared with the role's
    /// `max_lag` when choosing a new primary.
    pub fn lag_source(
        self,
        role: RoleName,
        lag: Arc<dyn quorate_failover::shell::LagSource>,
    ) -> Self {
        self.lag(role, lag, None)
    }

    /// The validated config the node will run.
    pub fn config(&self) -> &Validated {
        &self.config
    }

    /// Whether to write `<data_dir>/status.json` every 500 ms (default: yes; `quorate status`
    /// reads it).
    pub fn status_file(mut self, on: bool) -> Self {
        self.write_status_file = on;
        self
    }

    /// Starts the stages in order (see the module docs). On failure, the stages already
    /// started are stopped in reverse order and the error names the failed stage.
    pub async fn start(self) -> Result<Node, StartupError> {
        let events = self.events.clone();
        let mut report = StartupReport::default();
        let mut started = Started::default();
        // Boxed: the stages' state is large, and callers hold this future on their stacks.
        match Box::pin(self.start_stages(&events, &mut report, &mut started)).await {
            Ok(node) => Ok(node),
            Err((stage, cause)) => {
                self.notifier.notify(&[NotifyState::Status(&format!(
                    "startup failed in {stage}: {cause}"
                ))]);
                started.unwind().await;
                Err(StartupError {
                    stage,
                    cause,
                    report,
                })
            }
        }
    }

    async fn start_stages(
        &self,
        events: &broadcast::Sender<NodeEvent>,
        report: &mut StartupReport,
        started: &mut Started,
    ) -> Result<Node, (String, String)> {
        let v = Arc::new(self.config.clone());
        let raw = &v.raw;
        let n = self.notifier.as_ref();
        let timeout = v.startup.stage_timeout;
        let wan = v.profile.is_wan();
        let node = v.node_id.to_string();
        let started_event = |component: &str| NodeEvent::Started {
            component: component.to_owned(),
            node: node.clone(),
            pid: std::process::id(),
        };

        stage(report, n, events, "config", timeout, async { Ok(()) }).await?;

        let storage = stage(report, n, events, "storage", timeout, async {
            quorate_raft::store::create_data_dir(&raw.data_dir)
                .map_err(|e| format!("data_dir {}: {e}", raw.data_dir.display()))?;
            Storage::open(&raw.data_dir.join("raft.redb"))
                .map_err(|e| format!("opening {}: {e}", raw.data_dir.join("raft.redb").display()))
        })
        .await?;

        let wire = stage(report, n, events, "transport", timeout, async {
            let (key, accepted, clients) = cluster_keys(&v)?;
            let keys = KeyRing::new(key, accepted);
            keys.set_client_keys(clients).map_err(|e| e.to_string())?;
            WireConfig::new(raw.cluster_name.clone(), keys).map_err(|e| e.to_string())
        })
        .await?;

        let coord_stats = Arc::new(crate::metered::CoordStats::default());
        let raft_inbound;
        let raft_elections;
        let coord: Arc<dyn Coord> = {
            let wire = wire.clone();
            let v2 = Arc::clone(&v);
            let raft = stage(
                report,
                n,
                events,
                "coordination",
                v.startup.coordination_timeout,
                async move {
                    let mut nc =
                        NodeConfig::new(v2.node_id.clone(), v2.raw.raft.listen.clone(), wire);
                    nc.store_quota_bytes = v2.raw.raft.store_bytes_max;
                    if let Some(a) = &v2.raw.raft.advertise {
                        nc.advertise_addr = a.clone();
                    }
                    nc.timing = if wan { Timing::wan() } else { Timing::lan() };
                    nc.bootstrap = Some(v2.voters.clone());
                    // Role leases (600 ms in the failover `lan` profile) are shorter than etcd's
                    // 2 s floor: a lease only needs to outlive one renew round trip, and its holder
                    // stops acting before the leader can expire it (ARCHITECTURE.md, lease timing).
                    nc.machine.lease_ttl_min_ms = if wan { 2_000 } else { 500 };
                    RaftNode::start(nc, storage, TokioNet)
                        .await
                        .map_err(|e| format!("starting raft: {e}"))
                },
            )
            .await?;
            let backend: Arc<dyn Coord> = Arc::new(raft.backend());
            raft_inbound = raft.inbound_stats();
            raft_elections = raft.elector_stats();
            started.raft = Some(raft);
            // Ready when caught up: a linearizable read needs a known leader and this node's
            // state machine applied up to the read index.
            let probe = Arc::clone(&backend);
            stage(
                report,
                n,
                events,
                "coordination-caught-up",
                v.startup.coordination_timeout,
                async move {
                    loop {
                        match probe
                            .get("__quorate/startup-probe", Consistency::Linearizable)
                            .await
                        {
                            Ok(_) => return Ok(()),
                            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                        }
                    }
                },
            )
            .await?;
            let _ = events.send(started_event("raft"));
            // Every request of this node to its store from here on is timed (metrics).
            Arc::new(crate::metered::MeteredCoord::new(
                backend,
                Arc::clone(&coord_stats),
            ))
        };

        let monitor = stage(report, n, events, "health", timeout, async {
            let monitor =
                HealthMonitor::start(MonitorConfig::standard()).map_err(|e| e.to_string())?;
            for (c, kind) in raw.checks.iter().zip(&v.check_kinds) {
                let (kind, check) =
                    build_check(c, *kind).map_err(|e| format!("check {}: {e}", c.id))?;
                let config = CheckConfig {
                    interval: c.interval,
                    timeout: c.timeout,
                    criticality: if c.critical {
                        Criticality::Critical
                    } else {
                        Criticality::NonCritical
                    },
                    success_threshold: NonZeroU32::MIN,
                    ..CheckConfig::fast()
                };
                monitor
                    .register_arc(&c.id, kind, c.id.clone(), check, config)
                    .map_err(|e| format!("registering check {}: {e}", c.id))?;
            }
            // The first round: every check has run once (its result is in, whatever it is).
            for c in &raw.checks {
                monitor
                    .run_now(&c.id)
                    .await
                    .map_err(|e| format!("first run of check {}: {e}", c.id))?;
            }
            Ok(monitor)
        })
        .await?;
        let health: Arc<dyn HealthView> = Arc::new(monitor.clone());
        started.monitor = Some(monitor.clone());
        let _ = events.send(started_event("health"));

        // This node's gossiped metadata. Its roles are published only once its role loops run
        // (after the `roles` stage): a peer choosing a switchover target must not pick a node
        // that is still starting and cannot take the role yet (it would wait out that startup,
        // 440-500 ms in the rolling-restart bench).
        let mut meta = MemberMeta::default();
        meta.node.version = env!("CARGO_PKG_VERSION").to_owned();
        meta.node.tags = raw.gossip.tags.clone();
        meta.node.api_addr = raw.api.as_ref().map(|a| a.listen.clone());
        let ready_meta = {
            let mut m = meta.node.clone();
            m.roles = v.roles.iter().cloned().collect();
            m
        };
        let membership = stage(report, n, events, "membership", timeout, async {
            let mut mc = MembershipConfig::new(v.node_id.clone(), raw.gossip.listen.clone());
            mc.advertise_addr = raw.gossip.advertise.clone();
            mc.seeds = raw.gossip.seeds.clone();
            mc.bootstrap = raw.gossip.bootstrap;
            mc.voters = v.voters.keys().cloned().collect();
            mc.profile = if wan { Profile::wan() } else { Profile::lan() };
            mc.meta = meta;
            let m = quorate_membership::start(TokioNet, mc, wire.clone(), Some(health.clone()))
                .await
                .map_err(|e| format!("starting membership: {e}"))?;
            // The join flips the snapshot (not necessarily with an event): wait on the snapshot.
            m.wait_for(|s| s.joined)
                .await
                .map_err(|e| format!("membership stopped before joining: {e}"))?;
            Ok(m)
        })
        .await?;
        started.membership = Some(membership.clone());
        let membership_view: Arc<dyn Membership> = Arc::new(membership.clone());
        let _ = events.send(started_event("membership"));

        let manager = stage(report, n, events, "roles", timeout, async {
            let (mgr_config, mut roles) = failover_setup(&v, events, &self.hooks);
            for spec in &mut roles {
                if let Some((_, lag, max_lag)) = self.lags.iter().find(|(r, _, _)| *r == spec.name)
                {
                    spec.lag = Some(Arc::clone(lag));
                    if max_lag.is_some() {
                        spec.config.policy.max_lag = *max_lag;
                    }
                }
            }
            let manager = FailoverManager::start(
                mgr_config,
                Arc::clone(&coord),
                health.clone(),
                membership_view.clone(),
                roles,
            )
            .await
            .map_err(|e| format!("starting the failover manager: {e}"))?;
            for r in &v.roles {
                let mut rx = manager.status(r).map_err(|e| e.to_string())?;
                while rx.borrow_and_update().steps == 0 {
                    rx.changed()
                        .await
                        .map_err(|_| format!("role {r} stopped before its first decision"))?;
                }
            }
            // Every role loop runs: from now on peers may choose this node.
            membership
                .set_meta(ready_meta)
                .await
                .map_err(|e| format!("publishing this node's roles: {e}"))?;
            Ok(Arc::new(manager))
        })
        .await?;
        started.manager = Some(Arc::clone(&manager));
        let _ = events.send(started_event("failover"));

        let (ready_tx, ready_rx) = watch::channel(false);
        let ctx = NodeContext {
            config: Arc::clone(&v),
            coord,
            health,
            membership: membership_view,
            failover: manager,
            events: events.clone(),
            ready: ready_rx,
            keys: wire.keys.clone(),
            coord_stats,
            raft_inbound,
            raft_elections,
            metric_sources: crate::sources::MetricSources::default(),
        };
        for p in &self.plugins {
            let name = format!("plugin:{}", p.name());
            stage(report, n, events, &name, timeout, p.start(&ctx)).await?;
            started.plugins.push(Arc::clone(p));
        }

        let tracker = TaskTracker::new();
        let cancel = CancellationToken::new();
        // Node events from the components: health transitions, membership and quorum.
        spawn_forwarders(&tracker, &cancel, &ctx, &monitor, &membership);
        // The watchdog: pinged from the decision loops' progress, never from a bare timer.
        if let Some(interval) = self.notifier.watchdog_interval() {
            crate::notify::spawn_watchdog(
                &tracker,
                cancel.clone(),
                Arc::clone(&self.notifier),
                decision_steps(&ctx),
                interval,
            );
        }
        let raft = started
            .raft
            .take()
            .ok_or_else(|| ("coordination".to_owned(), "raft missing".to_owned()))?;
        let membership = started
            .membership
            .take()
            .ok_or_else(|| ("membership".to_owned(), "membership missing".to_owned()))?;
        let monitor = started
            .monitor
            .take()
            .ok_or_else(|| ("health".to_owned(), "monitor missing".to_owned()))?;
        started.manager = None;
        let plugins = std::mem::take(&mut started.plugins);
        let node = Node {
            ctx,
            raft,
            monitor,
            membership,
            plugins,
            notifier: Arc::clone(&self.notifier),
            ready_tx,
            report: report.clone(),
            tracker,
            cancel,
        };
        if self.write_status_file {
            node.spawn_status_writer();
        }
        let _ = node.ready_tx.send(true);
        self.notifier
            .notify(&[NotifyState::Ready, NotifyState::Status("ready")]);
        let _ = node.ctx.events.send(NodeEvent::Ready {
            node: node.ctx.config.node_id.to_string(),
        });
        Ok(node)
    }
}

impl Node {
    fn spawn_status_writer(&self) {
        let path = self.ctx.config.raw.data_dir.join("status.json");
        let cancel = self.cancel.clone();
        let ctx = self.ctx.clone();
        let view = self.raft.view();
        self.tracker.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(
                crate::report::STATUS_INTERVAL_MS,
            ));
            loop {
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => break,
                    _ = tick.tick() => {
                        let s = crate::report::collect_from(&ctx.config, &view.borrow(), &ctx.membership, &ctx.health, &ctx.failover);
                        let tmp = path.with_extension("json.tmp");
                        let text = serde_json::to_string(&s).unwrap_or_default();
                        if std::fs::write(&tmp, text).is_ok() {
                            let _ = std::fs::rename(&tmp, &path);
                        }
                    }
                }
            }
        });
    }
}

/// A watch over every role's decision steps (their sum): the watchdog's heartbeat.
fn decision_steps(ctx: &NodeContext) -> Vec<watch::Receiver<quorate_failover::shell::RoleStatus>> {
    ctx.config
        .roles
        .iter()
        .filter_map(|r| ctx.failover.status(r).ok())
        .collect()
}

fn spawn_forwarders(
    tracker: &TaskTracker,
    cancel: &CancellationToken,
    ctx: &NodeContext,
    monitor: &HealthMonitor,
    membership: &MembershipHandle,
) {
    let mut transitions = monitor.transitions();
    let (events, c) = (ctx.events.clone(), cancel.clone());
    tracker.spawn(async move {
        loop {
            tokio::select! {
                biased;
                () = c.cancelled() => break,
                t = transitions.recv() => match t {
                    Ok(t) => {
                        let _ = events.send(NodeEvent::Health {
                            check: t.check.to_string(),
                            from: t.from.as_str().to_owned(),
                            to: t.to.as_str().to_owned(),
                        });
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => break,
                },
            }
        }
    });
    // A membership that stops on its own (a fatal error) publishes a stopped view with no
    // majority, which makes failover give up its roles; the node reports it so that its owner
    // (the agent) stops too, loudly, rather than run on with a frozen view.
    let (m, events, c) = (membership.clone(), ctx.events.clone(), cancel.clone());
    tracker.spawn(async move {
        tokio::select! {
            biased;
            () = c.cancelled() => {}
            died = m.wait_for(|s| s.stopped.is_some()) => {
                let reason = died
                    .ok()
                    .and_then(|s| s.stopped)
                    .map_or_else(|| "stopped".to_owned(), |r| r.to_string());
                let _ = events.send(NodeEvent::ComponentFailed {
                    component: "membership".to_owned(),
                    reason,
                });
            }
        }
    });
    // A due failback waiting for approval, reported by the primary once per wait.
    for role in &ctx.config.roles {
        let Ok(mut rx) = ctx.failover.status(role) else {
            continue;
        };
        let (events, c, role) = (ctx.events.clone(), cancel.clone(), role.clone());
        let node = ctx.config.node_id.to_string();
        tracker.spawn(async move {
            let mut reported: Option<NodeId> = None;
            loop {
                let event = approval_event(&mut reported, &rx.borrow_and_update(), &role, &node);
                if let Some(e) = event {
                    let _ = events.send(e);
                }
                tokio::select! {
                    biased;
                    () = c.cancelled() => break,
                    r = rx.changed() => if r.is_err() { break },
                }
            }
        });
    }
    let mut sub = membership.subscribe();
    let (events, c) = (ctx.events.clone(), cancel.clone());
    tracker.spawn(async move {
        loop {
            tokio::select! {
                biased;
                () = c.cancelled() => break,
                e = sub.recv() => match e {
                    Ok(e) => {
                        if let Some(ev) = membership_event(&e) {
                            let _ = events.send(ev);
                        }
                    }
                    Err(quorate_membership_api::EventsError::Lagged(_)) => {}
                    Err(_) => break,
                },
            }
        }
    });
}

/// The event for a failback awaiting approval, once per wait: when this node acts as primary
/// and its policy waits for approval of a failback to a node it has not reported yet.
/// `reported` remembers the wait in progress (cleared when it ends, so a new wait is reported).
fn approval_event(
    reported: &mut Option<NodeId>,
    s: &quorate_failover::shell::RoleStatus,
    role: &RoleName,
    node: &str,
) -> Option<NodeEvent> {
    let waiting = s.awaiting_approval.clone().filter(|_| s.acting);
    let event = match &waiting {
        Some(to) if reported.as_ref() != Some(to) => Some(NodeEvent::FailbackAwaitingApproval {
            role: role.to_string(),
            primary: node.to_owned(),
            to: to.to_string(),
            token: s.token.map(|t| t.0),
        }),
        _ => None,
    };
    *reported = waiting;
    event
}

fn membership_event(e: &MembershipEvent) -> Option<NodeEvent> {
    use crate::report::member_state;
    Some(match e {
        MembershipEvent::QuorumChanged(q) => NodeEvent::Quorum {
            has_majority: q.has_majority,
            voters_reachable: q.voters_reachable,
        },
        MembershipEvent::MemberUp(m)
        | MembershipEvent::MemberSuspect(m)
        | MembershipEvent::MemberAlive(m)
        | MembershipEvent::MemberDown(m)
        | MembershipEvent::MemberLeft(m) => NodeEvent::Member {
            id: m.id.to_string(),
            state: member_state(m.state).to_owned(),
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorate_failover::shell::RoleStatus;

    #[test]
    fn a_failback_awaiting_approval_is_reported_once_per_wait_by_the_primary_only() {
        let role = RoleName::new("app").expect("role");
        let n1 = NodeId::new("n1").expect("node");
        let status = |acting: bool, waiting: Option<&NodeId>| RoleStatus {
            acting,
            awaiting_approval: waiting.cloned(),
            token: acting.then_some(quorate_types::FencingToken(7)),
            ..RoleStatus::default()
        };
        let mut reported = None;
        let mut step = |s: RoleStatus| approval_event(&mut reported, &s, &role, "n2");
        // A node that does not act never reports (the primary does).
        assert_eq!(step(status(false, Some(&n1))), None);
        // The primary reports the wait once, however many steps it lasts.
        assert_eq!(
            step(status(true, Some(&n1))),
            Some(NodeEvent::FailbackAwaitingApproval {
                role: "app".into(),
                primary: "n2".into(),
                to: "n1".into(),
                token: Some(7),
            })
        );
        assert_eq!(step(status(true, Some(&n1))), None);
        assert_eq!(step(status(true, Some(&n1))), None);
        // A wait that ended (postponed, approved, the preferred node unfit) and came back is a
        // new wait: reported again.
        assert_eq!(step(status(true, None)), None);
        assert!(step(status(true, Some(&n1))).is_some());
    }
}
