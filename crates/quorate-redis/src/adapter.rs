//! The adapter: [`RedisAdapter`] gives a node the role hooks, the lag source and the plugin
//! (a follower loop and the optional Sentinel-compatible listener) that manage its Redis
//! server.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use futures::future::join_all;
use quorate_failover::shell::{HookContext, LagSource, RoleHooks, RoleStatus};
use quorate_startup::{NodeBuilder, NodeContext, Plugin};
use quorate_types::{FencingToken, NodeId};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::RedisError;
use crate::config::{RedisConfig, ServerAddr};
use crate::info::{Offsets, Replication};
use crate::sentinel;
use crate::server::Server;

/// Manages this node's Redis server as one role. Create it from a [`RedisConfig`], then give
/// the node its parts: [`install`](Self::install) does all three at once.
///
/// ```no_run
/// # async fn run(config: quorate_startup::config::Validated) -> Result<(), Box<dyn std::error::Error>> {
/// let redis = quorate_redis::RedisConfig::from_agent(&config)?.expect("a [redis] section");
/// let adapter = quorate_redis::RedisAdapter::new(redis)?;
/// let node = adapter.install(quorate_startup::Node::builder(config)).start().await?;
/// # drop(node); Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisAdapter {
    shared: Arc<Shared>,
}

struct Shared {
    config: RedisConfig,
    local: Arc<Server>,
    servers: BTreeMap<NodeId, Arc<Server>>,
    offsets: Mutex<Offsets>,
    /// Serialises what is done to the local server between the hooks and the follower loop.
    control: tokio::sync::Mutex<Control>,
    /// The primary as this node sees it (for [`RedisAdapter::primary`]).
    primary: watch::Sender<Option<NodeId>>,
    /// The primary and the servers that are down (for the Sentinel listener).
    discovery: watch::Sender<sentinel::Discovery>,
    /// Wakes the follower loop at once (after a promotion).
    wake: Notify,
    tracker: TaskTracker,
    cancel: CancellationToken,
}

#[derive(Debug, Default)]
struct Control {
    /// This node's term while it acts as primary.
    acting: Option<FencingToken>,
    /// When the local server's writes were last paused (it is a master of a non-primary).
    paused_at: Option<Instant>,
}

impl RedisAdapter {
    /// An adapter for `config` (validated here). Nothing is contacted until the node starts.
    pub fn new(config: RedisConfig) -> Result<Self, RedisError> {
        config.validate()?;
        let mut servers = BTreeMap::new();
        for (node, addr) in &config.servers {
            let s = Server::new(
                addr.clone(),
                config.password.as_ref(),
                config.command_timeout,
            )?;
            servers.insert(node.clone(), Arc::new(s));
        }
        let local = servers
            .get(&config.node)
            .cloned()
            .ok_or_else(|| RedisError::Config {
                field: "servers".to_owned(),
                message: format!("does not list this node ({})", config.node),
            })?;
        let (primary, _) = watch::channel(None);
        let (discovery, _) = watch::channel(sentinel::Discovery::default());
        Ok(RedisAdapter {
            shared: Arc::new(Shared {
                offsets: Mutex::new(Offsets::new(config.offset_memory)),
                config,
                local,
                servers,
                control: tokio::sync::Mutex::new(Control::default()),
                primary,
                discovery,
                wake: Notify::new(),
                tracker: TaskTracker::new(),
                cancel: CancellationToken::new(),
            }),
        })
    }

    /// The role's hooks: promote (`REPLICAOF NO ONE`, fencing token), demote (`CLIENT PAUSE
    /// WRITE`), and a `before_promote` that vetoes when the local server does not answer.
    pub fn hooks(&self) -> Arc<dyn RoleHooks> {
        Arc::new(RedisHooks {
            shared: Arc::clone(&self.shared),
        })
    }

    /// The lag source: each server's replication offset behind the highest seen, in bytes.
    pub fn lag(&self) -> Arc<dyn LagSource> {
        Arc::new(RedisLag {
            shared: Arc::clone(&self.shared),
        })
    }

    /// The plugin that runs the follower loop (and the Sentinel listener) on the node.
    pub fn plugin(&self) -> Arc<dyn Plugin> {
        Arc::new(RedisPlugin {
            shared: Arc::clone(&self.shared),
        })
    }

    /// Gives `builder` the hooks, the lag source (with `max_lag_bytes` as the role's
    /// `max_lag`) and the plugin.
    pub fn install(&self, builder: NodeBuilder) -> NodeBuilder {
        let role = self.shared.config.role.clone();
        builder
            .hooks(role.clone(), self.hooks())
            .lag(role, self.lag(), self.shared.config.max_lag_bytes)
            .plugin(self.plugin())
    }

    /// The primary as this node sees it, and its changes.
    pub fn primary(&self) -> watch::Receiver<Option<NodeId>> {
        self.shared.primary.subscribe()
    }
}

impl Shared {
    fn me(&self) -> &NodeId {
        &self.config.node
    }

    fn publish_primary(&self, primary: Option<NodeId>) {
        self.primary.send_if_modified(|p| {
            let changed = *p != primary;
            *p = primary.clone();
            changed
        });
        self.discovery.send_if_modified(|d| {
            let changed = d.primary != primary;
            d.primary = primary;
            changed
        });
    }

    fn others(&self) -> impl Iterator<Item = (&NodeId, &Arc<Server>)> {
        self.servers.iter().filter(|(n, _)| *n != self.me())
    }

    /// Promotes the local server: other masters paused first (best effort, bounded), then
    /// `REPLICAOF NO ONE`, acknowledged-write settings, unpause, and the fencing token.
    async fn promote(&self, token: FencingToken) -> Result<(), RedisError> {
        let pause = self.config.pause;
        let fence_others = join_all(self.others().map(|(n, s)| async move {
            match s.replication().await {
                Ok(r) if r.master => {
                    if let Err(e) = s.pause_writes(pause).await {
                        tracing::warn!(node = %n, error = %e, "redis: could not pause another master before promoting");
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(node = %n, error = %e, "redis: another server not reachable while promoting"),
            }
        }));
        let local = async {
            self.local.make_master().await?;
            if let Some(ack) = &self.config.ack {
                self.local
                    .config_set("min-replicas-to-write", &ack.min_replicas.to_string())
                    .await?;
                self.local
                    .config_set("min-replicas-max-lag", &ack.max_lag.as_secs().to_string())
                    .await?;
            }
            self.local.unpause().await?;
            let held = self
                .local
                .record_token(&self.config.fencing_key, token)
                .await?;
            if held > token.0 {
                tracing::error!(%token, held, "redis: the server holds a higher fencing token than this term's: a newer primary wrote to it");
            }
            Ok::<(), RedisError>(())
        };
        // Fence first, then take writes: run together, this server could acknowledge a write
        // before the old master's pause landed, and the old master then acknowledge one more
        // (a CI run caught three such late writes after an agent kill -9). Each call is bounded
        // by `command_timeout`, so an unreachable old master delays the promotion by at most
        // that much.
        fence_others.await;
        local.await
    }

    /// One round of the follower loop: read every server, then act on what this node is.
    async fn round(&self, status: &RoleStatus) {
        let now = Instant::now();
        let readings: Vec<(NodeId, Result<Replication, RedisError>)> = join_all(
            self.servers
                .iter()
                .map(|(n, s)| async move { (n.clone(), s.replication().await) }),
        )
        .await;
        {
            let mut o = self.offsets.lock().unwrap_or_else(|e| e.into_inner());
            for (n, r) in &readings {
                match r {
                    Ok(r) => o.record(n, r.offset, now),
                    Err(_) => o.unreachable(n),
                }
            }
        }
        let down: std::collections::BTreeSet<NodeId> = readings
            .iter()
            .filter(|(_, r)| r.is_err())
            .map(|(n, _)| n.clone())
            .collect();
        self.discovery.send_if_modified(|d| {
            let changed = d.down != down;
            d.down = down;
            changed
        });
        let reading = |n: &NodeId| {
            readings
                .iter()
                .find(|(m, _)| m == n)
                .and_then(|(_, r)| r.as_ref().ok())
        };
        let me = self.me().clone();
        let mut control = self.control.lock().await;
        if control.acting.is_some() {
            drop(control);
            // The primary: every other reachable server follows this one.
            let mine = self.local.addr.clone();
            join_all(self.others().map(|(n, s)| {
                let r = reading(n).cloned();
                let mine = mine.clone();
                async move {
                    let Some(r) = r else { return };
                    if !follows(&r, &mine) {
                        match s.follow(&mine).await {
                            Ok(()) => {
                                tracing::info!(node = %n, primary = %mine, "redis: replica now follows this primary");
                                let _ = s.unpause().await;
                            }
                            Err(e) => tracing::warn!(node = %n, error = %e, "redis: could not make a server follow this primary"),
                        }
                    }
                }
            }))
            .await;
            return;
        }
        let Some(local) = reading(&me) else { return };
        let target = status
            .primary
            .as_ref()
            .filter(|p| **p != me)
            .and_then(|p| self.servers.get(p).map(|s| (p.clone(), s.addr.clone())));
        match target {
            Some((p, addr)) if !follows(local, &addr) => match self.local.follow(&addr).await {
                Ok(()) => {
                    tracing::info!(primary = %p, addr = %addr, "redis: following the primary");
                    if self.local.unpause().await.is_ok() {
                        control.paused_at = None;
                    }
                }
                Err(e) => tracing::warn!(primary = %p, error = %e, "redis: REPLICAOF failed"),
            },
            Some(_) => {}
            None if local.master => {
                // A master on a node that is not primary, no primary to follow yet: keep its
                // writes paused.
                let due = control
                    .paused_at
                    .is_none_or(|t| now.saturating_duration_since(t) >= self.config.pause / 2);
                if due {
                    match self.local.pause_writes(self.config.pause).await {
                        Ok(()) => control.paused_at = Some(now),
                        Err(e) => {
                            tracing::warn!(error = %e, "redis: could not pause a master that is not primary")
                        }
                    }
                }
            }
            None => {}
        }
    }
}

/// Whether `r` is a replica of `addr`.
fn follows(r: &Replication, addr: &ServerAddr) -> bool {
    !r.master
        && r.following
            .as_ref()
            .is_some_and(|(h, p)| *h == addr.host && *p == addr.port)
}

struct RedisHooks {
    shared: Arc<Shared>,
}

#[async_trait]
impl RoleHooks for RedisHooks {
    async fn before_promote(&self, _ctx: &HookContext) -> Result<(), String> {
        self.shared
            .local
            .ping()
            .await
            .map_err(|e| format!("the local Redis does not answer: {e}"))
    }

    async fn on_promote(&self, ctx: &HookContext) {
        let s = &self.shared;
        let mut control = s.control.lock().await;
        control.acting = Some(ctx.token);
        control.paused_at = None;
        match s.promote(ctx.token).await {
            Ok(()) => {
                tracing::info!(token = %ctx.token, server = %s.local.addr, "redis: promoted to master")
            }
            Err(e) => {
                tracing::error!(token = %ctx.token, error = %e, "redis: promotion failed; the next round retries what it can")
            }
        }
        drop(control);
        s.publish_primary(Some(s.me().clone()));
        s.wake.notify_one();
    }

    async fn on_demote(&self, ctx: &HookContext) {
        let s = &self.shared;
        // Writes stop first, without waiting for the follower loop: this runs at the holder
        // deadline, before the lease can be granted to anyone else.
        let paused = s.local.pause_writes(s.config.pause).await;
        let mut control = s.control.lock().await;
        control.acting = None;
        match paused {
            Ok(()) => {
                control.paused_at = Some(Instant::now());
                tracing::info!(token = %ctx.token, "redis: demoted, writes paused");
            }
            Err(e) => {
                control.paused_at = None;
                tracing::error!(token = %ctx.token, error = %e, "redis: demoted but CLIENT PAUSE failed; retrying in the follower loop");
            }
        }
        drop(control);
        s.wake.notify_one();
    }
}

struct RedisLag {
    shared: Arc<Shared>,
}

impl LagSource for RedisLag {
    fn lag(&self, node: &NodeId) -> Option<u64> {
        let o = self
            .shared
            .offsets
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        o.lag(node, Instant::now())
    }
}

struct RedisPlugin {
    shared: Arc<Shared>,
}

#[async_trait]
impl Plugin for RedisPlugin {
    fn name(&self) -> &str {
        "redis"
    }

    async fn start(&self, node: &NodeContext) -> Result<(), String> {
        let s = Arc::clone(&self.shared);
        let status = node
            .failover
            .status(&s.config.role)
            .map_err(|e| format!("redis: {e}"))?;
        if let Some(sc) = &s.config.sentinel {
            let listener = tokio::net::TcpListener::bind(&sc.listen)
                .await
                .map_err(|e| {
                    RedisError::Bind {
                        addr: sc.listen.clone(),
                        reason: e.to_string(),
                    }
                    .to_string()
                })?;
            let view = sentinel::View {
                master_name: sc.master_name.clone(),
                servers: s.config.servers.clone(),
                primary: None,
                down: std::collections::BTreeSet::new(),
            };
            s.tracker.spawn(sentinel::serve(
                listener,
                view,
                s.discovery.subscribe(),
                sc.connections_max,
                s.cancel.clone(),
                s.tracker.clone(),
            ));
        }
        // One round now, so that lag figures exist before this stage reports ready.
        let first = status.borrow().clone();
        s.round(&first).await;
        s.tracker.spawn(follower_loop(Arc::clone(&s), status));
        Ok(())
    }

    async fn stop(&self) {
        self.shared.cancel.cancel();
        self.shared.tracker.close();
        self.shared.tracker.wait().await;
    }
}

/// The master this node names (to its follower loop and to Sentinel-aware clients): itself
/// while it acts as primary; otherwise the lease holder it last read, but never itself. A node
/// that stopped acting (its lease window closed: cut off, or stepping down) may still read
/// itself as the holder from its stale view of the store; naming itself would send clients to
/// a paused master for the whole partition, where "no master known" sends them to ask another
/// endpoint.
fn published_primary(me: &NodeId, st: &RoleStatus) -> Option<NodeId> {
    if st.acting {
        Some(me.clone())
    } else {
        st.primary.clone().filter(|p| p != me)
    }
}

async fn follower_loop(s: Arc<Shared>, mut status: watch::Receiver<RoleStatus>) {
    let mut tick = tokio::time::interval(s.config.poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = s.cancel.cancelled() => return,
            () = s.wake.notified() => {}
            changed = status.changed() => if changed.is_err() { return },
            _ = tick.tick() => {}
        }
        let st = status.borrow_and_update().clone();
        s.publish_primary(published_primary(s.me(), &st));
        s.round(&st).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_names_itself_master_only_while_it_acts() {
        let n = |s: &str| NodeId::new(s).expect("node id");
        let st = |acting: bool, primary: Option<&str>| RoleStatus {
            acting,
            primary: primary.map(n),
            ..RoleStatus::default()
        };
        let me = n("n1");
        assert_eq!(
            published_primary(&me, &st(true, Some("n1"))),
            Some(me.clone())
        );
        assert_eq!(
            published_primary(&me, &st(false, Some("n2"))),
            Some(n("n2"))
        );
        // Cut off after its lease window closed, it still reads itself as the holder: it
        // names no master rather than its own paused server.
        assert_eq!(published_primary(&me, &st(false, Some("n1"))), None);
        assert_eq!(published_primary(&me, &st(false, None)), None);
    }
}
