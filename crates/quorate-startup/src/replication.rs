//! The replication stage: a [`Plugin`] that starts the keyspaces declared in the config's
//! `[replication]` section on a `quorate-replication` node, binds each leader-mode keyspace
//! to its failover role (promoted with the role's fencing token while this node is primary,
//! demoted when the term ends), and feeds the role's lag source.
//!
//! ```toml
//! [replication]
//! listen = "10.0.0.1:7400"
//! peers = { n2 = "10.0.0.2:7400", n3 = "10.0.0.3:7400" }   # the other nodes
//! max_clock_offset = "500ms"
//!
//! [[replication.keyspace]]
//! name = "sessions"
//! mode = "multi_master"
//! type = "lww"            # lww | mv | counter | set
//!
//! [[replication.keyspace]]
//! name = "orders"
//! mode = "leader"
//! role = "db"             # a [[role]] of this config
//! sync_replicas = 1       # 0: asynchronous
//! sync_timeout = "1s"
//! ```
//!
//! An embedding service adds the stage with [`ReplicationStage::attach`], which also
//! registers each leader-mode role's lag source, and reaches the keyspaces through
//! [`ReplicationStage::keyspaces`] once the node has started.

use std::collections::BTreeMap;
use std::num::{NonZeroU64, NonZeroUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use quorate_failover::shell::LagSource;
use quorate_replication::{
    HlcConfig, Keyspace, LeaderConfig, LeaderKeyspace, LwwRegister, MultiMasterConfig, MvRegister,
    NodeConfig, OrSet, PnCounter, ReplicaDb, ReplicationNode, SyncMode, TransportConfig,
};
use quorate_types::{NodeId, RoleName};
use quorate_wire::WireConfig;
use quorate_wire::net::TokioNet;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{ConfigErrors, Validated};
use crate::node::{NodeBuilder, NodeContext, Plugin};
use crate::sources::{MetricSample, MetricSource};

/// `[replication]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReplicationSection {
    /// The replication listen address (`host:port`).
    pub listen: String,
    /// The replication address of every other node, by node id.
    #[serde(default)]
    pub peers: BTreeMap<String, String>,
    /// The hybrid clock's bound on a peer's clock offset (default 500 ms); an update from a
    /// peer further ahead is rejected with a clock alarm.
    #[serde(default = "default_offset", with = "humantime_serde")]
    pub max_clock_offset: Duration,
    /// How often multi-master anti-entropy runs (default 30 s; also at once on a rejoin).
    #[serde(default = "default_anti_entropy", with = "humantime_serde")]
    pub anti_entropy_interval: Duration,
    /// The keyspaces.
    #[serde(default, rename = "keyspace")]
    pub keyspaces: Vec<KeyspaceSection>,
}

fn default_offset() -> Duration {
    Duration::from_millis(500)
}
fn default_anti_entropy() -> Duration {
    Duration::from_secs(30)
}

/// `[[replication.keyspace]]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeyspaceSection {
    /// The keyspace name (the same on every node).
    pub name: String,
    /// `multi_master` or `leader`.
    pub mode: String,
    /// Multi-master: the merge type of every key, `lww` (bytes), `mv` (bytes, siblings),
    /// `counter` or `set` (strings).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Leader mode: the failover role whose primary takes the writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Leader mode: replicas that must persist a write before it is acknowledged (0 =
    /// asynchronous).
    #[serde(default)]
    pub sync_replicas: usize,
    /// Leader mode: how long a synchronous write waits (default 1 s).
    #[serde(default = "default_sync_timeout", with = "humantime_serde")]
    pub sync_timeout: Duration,
}

fn default_sync_timeout() -> Duration {
    Duration::from_secs(1)
}

const KINDS: &[&str] = &["lww", "mv", "counter", "set"];

/// Checks `[replication]` (called by config validation; every problem is reported).
pub(crate) fn validate(
    section: &ReplicationSection,
    node_id: &str,
    roles: &[RoleName],
    errs: &mut ConfigErrors,
) {
    crate::config::check_addr(errs, "replication.listen", &section.listen);
    for (id, addr) in &section.peers {
        if NodeId::new(id.clone()).is_err() {
            errs.push(format!("replication.peers.{id}"), "is not a valid node id");
        }
        if id == node_id {
            errs.push(
                format!("replication.peers.{id}"),
                "is this node: list only the other nodes",
            );
        }
        crate::config::check_addr(errs, &format!("replication.peers.{id}"), addr);
    }
    if section.max_clock_offset.is_zero() || section.max_clock_offset > Duration::from_secs(60) {
        errs.push(
            "replication.max_clock_offset",
            "must be above zero and at most 60 s (set it above your worst NTP offset)",
        );
    }
    if section.anti_entropy_interval < Duration::from_millis(100) {
        errs.push(
            "replication.anti_entropy_interval",
            "must be at least 100 ms",
        );
    }
    let mut names = Vec::new();
    for (i, k) in section.keyspaces.iter().enumerate() {
        let f = |s: &str| format!("replication.keyspace[{i}].{s}");
        if k.name.is_empty() || k.name.len() > 128 {
            errs.push(f("name"), "must be 1 to 128 bytes");
        } else if names.contains(&&k.name) {
            errs.push(f("name"), format!("{} is declared twice", k.name));
        }
        names.push(&k.name);
        match k.mode.as_str() {
            "multi_master" => {
                if !k.kind.as_deref().is_some_and(|t| KINDS.contains(&t)) {
                    errs.push(f("type"), format!("must be one of {KINDS:?}"));
                }
                if k.role.is_some() || k.sync_replicas != 0 {
                    errs.push(
                        f("mode"),
                        "role and sync_replicas belong to mode = \"leader\"",
                    );
                }
            }
            "leader" => {
                match k.role.as_deref().map(|r| RoleName::new(r.to_owned())) {
                    Some(Ok(r)) if roles.contains(&r) => {}
                    Some(Ok(r)) => {
                        errs.push(f("role"), format!("{r} is not a [[role]] of this config"));
                    }
                    Some(Err(e)) => errs.push(f("role"), e.to_string()),
                    None => errs.push(f("role"), "a leader-mode keyspace needs its role"),
                }
                if k.sync_replicas > section.peers.len() {
                    errs.push(
                        f("sync_replicas"),
                        format!(
                            "{} is more than the {} peers listed",
                            k.sync_replicas,
                            section.peers.len()
                        ),
                    );
                }
                if k.kind.is_some() {
                    errs.push(f("type"), "type belongs to mode = \"multi_master\"");
                }
            }
            other => errs.push(
                f("mode"),
                format!("{other:?} is not a mode: use \"multi_master\" or \"leader\""),
            ),
        }
    }
}

/// A lag source whose keyspace is bound once the stage starts (the failover manager takes
/// its lag sources before plugins start). Unknown until then.
#[derive(Default)]
struct LateLag(Mutex<Option<LeaderKeyspace<TokioNet>>>);

impl LateLag {
    fn set(&self, k: Option<LeaderKeyspace<TokioNet>>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = k;
    }
}

impl LagSource for LateLag {
    fn lag(&self, node: &NodeId) -> Option<u64> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(|k| k.lag_entries(node))
    }
}

/// The keyspaces the stage started, by name.
#[derive(Clone, Default)]
pub struct Keyspaces {
    /// `type = "lww"`.
    pub lww: BTreeMap<String, Keyspace<LwwRegister<Vec<u8>>>>,
    /// `type = "mv"`.
    pub mv: BTreeMap<String, Keyspace<MvRegister<Vec<u8>>>>,
    /// `type = "counter"`.
    pub counter: BTreeMap<String, Keyspace<PnCounter>>,
    /// `type = "set"`.
    pub set: BTreeMap<String, Keyspace<OrSet<String>>>,
    /// Leader mode.
    pub leader: BTreeMap<String, LeaderKeyspace<TokioNet>>,
}

impl std::fmt::Debug for Keyspaces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyspaces")
            .field("lww", &self.lww.keys())
            .field("mv", &self.mv.keys())
            .field("counter", &self.counter.keys())
            .field("set", &self.set.keys())
            .field("leader", &self.leader.keys())
            .finish()
    }
}

struct Running {
    node: ReplicationNode<TokioNet>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

/// The replication stage (see the module docs).
pub struct ReplicationStage {
    section: ReplicationSection,
    lags: BTreeMap<RoleName, Arc<LateLag>>,
    keyspaces: Arc<Mutex<Option<Keyspaces>>>,
    running: tokio::sync::Mutex<Option<Running>>,
}

impl std::fmt::Debug for ReplicationStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationStage")
            .field("listen", &self.section.listen)
            .finish_non_exhaustive()
    }
}

impl ReplicationStage {
    /// The stage for `config`'s `[replication]` section, or `None` when it has none.
    pub fn from_config(config: &Validated) -> Option<Arc<Self>> {
        let section = config.raw.replication.clone()?;
        let lags = section
            .keyspaces
            .iter()
            .filter_map(|k| k.role.as_ref())
            .filter_map(|r| RoleName::new(r.clone()).ok())
            .map(|r| (r, Arc::new(LateLag::default())))
            .collect();
        Some(Arc::new(Self {
            section,
            lags,
            keyspaces: Arc::new(Mutex::new(None)),
            running: tokio::sync::Mutex::new(None),
        }))
    }

    /// Adds the stage for `builder`'s config (if it has a `[replication]` section) as a
    /// plugin, and each leader-mode role's lag source; returns the builder and the stage.
    pub fn attach(builder: NodeBuilder) -> (NodeBuilder, Option<Arc<Self>>) {
        let Some(stage) = Self::from_config(builder.config()) else {
            return (builder, None);
        };
        let mut b = builder.plugin(stage.clone());
        for (role, lag) in &stage.lags {
            b = b.lag_source(role.clone(), lag.clone());
        }
        (b, Some(stage))
    }

    /// The keyspaces, once the stage has started.
    pub fn keyspaces(&self) -> Option<Keyspaces> {
        self.keyspaces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    async fn start_inner(&self, ctx: &NodeContext) -> Result<(), String> {
        let v = &ctx.config;
        let s = &self.section;
        // The node's own ring: a key reload (SIGHUP) reaches replication too.
        let wire = WireConfig::new(v.raw.cluster_name.clone(), ctx.keys.clone())
            .map_err(|e| e.to_string())?;
        let mut peers = BTreeMap::new();
        for (id, addr) in &s.peers {
            peers.insert(
                NodeId::new(id.clone()).map_err(|e| e.to_string())?,
                addr.clone(),
            );
        }
        let path = v.raw.data_dir.join("replication.redb");
        let db = ReplicaDb::open(&path).map_err(|e| e.to_string())?;
        let nz = |n: usize| NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN);
        let node = ReplicationNode::start(
            TokioNet,
            NodeConfig {
                node: v.node_id.clone(),
                listen: s.listen.clone(),
                peers,
                transport: TransportConfig::lan(wire),
                inbound_queue_max: nz(256),
            },
            db,
        )
        .await
        .map_err(|e| e.to_string())?;
        let hlc = HlcConfig {
            max_offset_ms: NonZeroU64::new(s.max_clock_offset.as_millis() as u64)
                .unwrap_or(NonZeroU64::MIN),
        };
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let mut ks = Keyspaces::default();
        for k in &s.keyspaces {
            let err = |e: quorate_replication::ReplicationError| {
                format!("replication keyspace {}: {e}", k.name)
            };
            if k.mode == "leader" {
                let mode = match NonZeroUsize::new(k.sync_replicas) {
                    Some(replicas) => SyncMode::Sync {
                        replicas,
                        timeout: k.sync_timeout,
                    },
                    None => SyncMode::Async,
                };
                let leader = node
                    .leader(LeaderConfig::lan(k.name.clone(), mode))
                    .map_err(err)?;
                let role =
                    RoleName::new(k.role.clone().unwrap_or_default()).map_err(|e| e.to_string())?;
                if let Some(lag) = self.lags.get(&role) {
                    lag.set(Some(leader.clone()));
                }
                tracker.spawn(follow_role(
                    ctx.failover.clone(),
                    role,
                    leader.clone(),
                    cancel.clone(),
                ));
                ks.leader.insert(k.name.clone(), leader);
                continue;
            }
            let mut c = MultiMasterConfig::lan(k.name.clone(), hlc);
            c.anti_entropy_interval = s.anti_entropy_interval;
            let events = Some(ctx.membership.subscribe());
            match k.kind.as_deref() {
                Some("lww") => {
                    ks.lww
                        .insert(k.name.clone(), node.multi_master(c, events).map_err(err)?);
                }
                Some("mv") => {
                    ks.mv
                        .insert(k.name.clone(), node.multi_master(c, events).map_err(err)?);
                }
                Some("counter") => {
                    ks.counter
                        .insert(k.name.clone(), node.multi_master(c, events).map_err(err)?);
                }
                Some("set") => {
                    ks.set
                        .insert(k.name.clone(), node.multi_master(c, events).map_err(err)?);
                }
                other => return Err(format!("replication keyspace {}: type {other:?}", k.name)),
            }
        }
        *self.keyspaces.lock().unwrap_or_else(|p| p.into_inner()) = Some(ks);
        ctx.metric_sources.register(
            "replication",
            Arc::new(KeyspaceMetrics(Arc::clone(&self.keyspaces))),
        );
        *self.running.lock().await = Some(Running {
            node,
            cancel,
            tracker,
        });
        Ok(())
    }
}

/// The keyspaces' counters for the metrics exporter (`quorate_replication_*`; docs/api.md).
struct KeyspaceMetrics(Arc<Mutex<Option<Keyspaces>>>);

fn ks_label(name: &str) -> Vec<(&'static str, String)> {
    vec![("keyspace", name.to_owned())]
}

fn crdt_label(kind: quorate_replication::CrdtKind) -> &'static str {
    use quorate_replication::CrdtKind as K;
    match kind {
        K::LwwRegister => "lww",
        K::MvRegister => "mv",
        K::PnCounter => "counter",
        K::OrSet => "set",
        K::LwwMap => "lww_map",
        K::OrMap => "or_map",
        K::Custom => "custom",
    }
}

/// A multi-master keyspace's samples.
fn mm_samples(st: &quorate_replication::KeyspaceStatus, out: &mut Vec<MetricSample>) {
    let m = &st.metrics;
    let l = || ks_label(&st.name);
    out.push(MetricSample::gauge(
        "replication_keys",
        "Keys held in each replicated keyspace",
        l(),
        st.keys as f64,
    ));
    let counters: [(&'static str, &'static str, u64); 11] = [
        (
            "replication_local_writes",
            "Local writes to a multi-master keyspace",
            m.local_writes,
        ),
        (
            "replication_deltas_sent",
            "Deltas or full states sent to peers",
            m.deltas_sent,
        ),
        (
            "replication_deltas_merged",
            "Deltas or full states received and merged",
            m.deltas_merged,
        ),
        (
            "replication_clock_alarms",
            "Updates refused: the sender's clock ran past max_clock_offset",
            m.clock_alarms,
        ),
        (
            "replication_anti_entropy_rounds",
            "Anti-entropy rounds started",
            m.anti_entropy_rounds,
        ),
        (
            "replication_anti_entropy_bytes",
            "Bytes of digests and repairs exchanged by anti-entropy",
            m.anti_entropy_bytes,
        ),
        (
            "replication_keys_repaired",
            "Keys changed by anti-entropy",
            m.keys_repaired,
        ),
        (
            "replication_tombstones_collected",
            "Tombstones and hidden values collected",
            m.tombstones_collected,
        ),
        (
            "replication_merges_refused",
            "Incoming merges refused by a limit",
            st.merges_refused,
        ),
        (
            "replication_hints_dropped",
            "Hints dropped (over hints_max or too old)",
            st.hints_dropped,
        ),
        (
            "replication_pushes_dropped",
            "Pushed batches dropped: a peer's queue was full",
            st.pushes_dropped,
        ),
    ];
    for (family, help, v) in counters {
        out.push(MetricSample::counter(family, help, l(), v));
    }
    out.push(MetricSample::gauge(
        "replication_hints_pending",
        "Hints held for unreachable peers",
        l(),
        m.hints_pending as f64,
    ));
    out.push(MetricSample::gauge(
        "replication_undelivered_age_seconds",
        "Multi-master: how long the oldest write some peer has not received yet has waited (0: every peer has every write)",
        l(),
        m.lag_ms as f64 / 1000.0,
    ));
    for ((kind, resolution), n) in &m.conflicts {
        let mut labels = l();
        labels.push(("type", crdt_label(*kind).to_owned()));
        labels.push(("resolution", (*resolution).to_owned()));
        out.push(MetricSample::counter(
            "replication_conflicts",
            "Concurrent writes merged, by merge type and resolution (lww, siblings, resolver)",
            labels,
            *n,
        ));
    }
}

#[async_trait]
impl MetricSource for KeyspaceMetrics {
    async fn samples(&self) -> Vec<MetricSample> {
        let Some(ks) = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut statuses = Vec::new();
        for k in ks.lww.values() {
            statuses.push(k.status().await);
        }
        for k in ks.mv.values() {
            statuses.push(k.status().await);
        }
        for k in ks.counter.values() {
            statuses.push(k.status().await);
        }
        for k in ks.set.values() {
            statuses.push(k.status().await);
        }
        for st in statuses.into_iter().flatten() {
            mm_samples(&st, &mut out);
        }
        for (name, k) in &ks.leader {
            let st = k.status();
            out.push(MetricSample::gauge(
                "replication_keys",
                "Keys held in each replicated keyspace",
                ks_label(name),
                st.keys as f64,
            ));
            out.push(MetricSample::counter(
                "replication_stale_rejected",
                "Leader-mode writes refused: they carried a fencing token below the highest seen",
                ks_label(name),
                st.stale_rejected,
            ));
            out.push(MetricSample::gauge(
                "replication_suffix_conflicts",
                "Leader-mode writes of a demoted primary that the new primary's history replaced (recorded)",
                ks_label(name),
                st.conflicts.len() as f64,
            ));
            for (replica, lag) in &st.lag {
                let mut labels = ks_label(name);
                labels.push(("replica", replica.to_string()));
                out.push(MetricSample::gauge(
                    "replication_lag_entries",
                    "Leader-mode entries a replica has not persisted, as this node sees it",
                    labels.clone(),
                    lag.entries as f64,
                ));
                out.push(MetricSample::gauge(
                    "replication_lag_seconds",
                    "Leader-mode lag in time: at the primary, the age of the oldest entry a replica lacks; at a replica, the time since it heard the primary",
                    labels,
                    lag.time_ms as f64 / 1000.0,
                ));
            }
        }
        out
    }
}

/// Promotes `leader` with the role's token while this node is the role's primary, and
/// demotes it when the term ends.
async fn follow_role(
    failover: Arc<quorate_failover::shell::FailoverManager>,
    role: RoleName,
    leader: LeaderKeyspace<TokioNet>,
    cancel: CancellationToken,
) {
    loop {
        let term = failover.run_while_primary(&role, |pctx| {
            let leader = leader.clone();
            async move {
                if let Err(e) = leader.promote(pctx.token()) {
                    tracing::error!(%e, "replication: cannot promote the keyspace");
                    return;
                }
                pctx.demoted().await;
            }
        });
        let r = tokio::select! {
            biased;
            () = cancel.cancelled() => {
                leader.demote();
                return;
            }
            r = term => r,
        };
        leader.demote();
        if r.is_err() {
            // The role stopped (manager shutting down).
            return;
        }
    }
}

#[async_trait]
impl Plugin for ReplicationStage {
    fn name(&self) -> &str {
        "replication"
    }

    async fn start(&self, node: &NodeContext) -> Result<(), String> {
        self.start_inner(node).await
    }

    async fn stop(&self) {
        if let Some(r) = self.running.lock().await.take() {
            r.cancel.cancel();
            r.tracker.close();
            r.tracker.wait().await;
            r.node.shutdown().await;
        }
        for lag in self.lags.values() {
            lag.set(None);
        }
        *self.keyspaces.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}
