//! `quorate agent`: one node. Starts, in order, the health monitor, membership (gossip), the
//! embedded coordination (Raft) and the failover manager; writes the node's view to
//! `<data_dir>/status.json` every 500 ms; prints one JSON line per event on stdout; and on
//! SIGTERM or Ctrl-C stops in reverse order (demote first, then leave, then stop Raft).

use std::io::Write as _;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use quorate_coord_api::Coord;
use quorate_failover::shell::{FailoverManager, ManagerConfig, RoleSpec};
use quorate_health::checks::{
    CommandCheck, DiskSpaceCheck, HttpCheck, MemoryCheck, PostgresCheck, RedisCheck,
    SpaceThreshold, TcpCheck,
};
use quorate_health::{CheckConfig, HealthMonitor, MonitorConfig};
use quorate_health_api::{ComponentType, Criticality, HealthCheck, HealthView};
use quorate_membership::{MembershipConfig, Profile};
use quorate_membership_api::{MemberMeta, Membership};
use quorate_raft::{NodeConfig, RaftNode, Storage, Timing};
use quorate_wire::net::TokioNet;
use quorate_wire::{ClusterKey, KeyRing, WireConfig};

use crate::config::{CheckKind, CheckSection, Validated};
use crate::hooks::CommandHooks;
use crate::report::AgentEvent;

/// Prints one event line on stdout (flushed at once: `quorate demo` reads it live).
pub fn emit(e: &AgentEvent) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", e.to_line());
    let _ = out.flush();
}

fn started(component: &str, v: &Validated) -> AgentEvent {
    AgentEvent::Started {
        component: component.to_owned(),
        node: v.node_id.to_string(),
        pid: std::process::id(),
    }
}

/// Builds the health check a `[[check]]` section describes (also run by config validation, so
/// `quorate check` refuses a target the agent would refuse).
pub fn build_check(
    c: &CheckSection,
    kind: CheckKind,
) -> Result<(ComponentType, Arc<dyn HealthCheck>)> {
    let t = c.target.as_str();
    Ok(match kind {
        CheckKind::Tcp => (ComponentType::ExternalApi, Arc::new(TcpCheck::new(t)?)),
        CheckKind::Http => (ComponentType::ExternalApi, Arc::new(HttpCheck::new(t)?)),
        CheckKind::Redis => (ComponentType::Cache, Arc::new(RedisCheck::new(t)?)),
        CheckKind::Postgres => (ComponentType::Database, Arc::new(PostgresCheck::new(t)?)),
        CheckKind::Command => (
            ComponentType::Custom("command".into()),
            Arc::new(CommandCheck::new("sh", ["-c", t])?),
        ),
        CheckKind::Disk => (
            ComponentType::NodeResource,
            Arc::new(DiskSpaceCheck::new(
                t,
                SpaceThreshold::Percent(10.0),
                SpaceThreshold::Percent(5.0),
            )?),
        ),
        CheckKind::Memory { critical_mib: crit } => (
            ComponentType::NodeResource,
            Arc::new(MemoryCheck::new(
                crit * 1024 * 1024 * 8 / 10,
                crit * 1024 * 1024,
            )?),
        ),
    })
}

/// Runs the agent until SIGTERM or Ctrl-C.
pub async fn run(v: Validated) -> Result<()> {
    let raw = &v.raw;
    std::fs::create_dir_all(&raw.data_dir)
        .with_context(|| format!("creating data_dir {}", raw.data_dir.display()))?;
    let wan = v.profile.is_wan();
    let key = ClusterKey::from_hex(v.key_hex.expose())?;
    let accepted = v
        .accepted_keys_hex
        .iter()
        .map(|k| ClusterKey::from_hex(k.expose()))
        .collect::<Result<Vec<_>, _>>()?;
    let wire = WireConfig::new(raw.cluster_name.clone(), KeyRing::new(key, accepted))?;

    // 1. Health.
    let monitor = HealthMonitor::start(MonitorConfig::standard())?;
    for (c, kind) in raw.checks.iter().zip(&v.check_kinds) {
        let (kind, check) = build_check(c, *kind).with_context(|| format!("check {}", c.id))?;
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
            .with_context(|| format!("registering check {}", c.id))?;
    }
    let health: Arc<dyn HealthView> = Arc::new(monitor.clone());
    emit(&started("health", &v));

    // 2. Membership.
    let mut mc = MembershipConfig::new(v.node_id.clone(), raw.gossip.listen.clone());
    mc.advertise_addr = raw.gossip.advertise.clone();
    mc.seeds = raw.gossip.seeds.clone();
    mc.bootstrap = raw.gossip.bootstrap;
    mc.voters = v.voters.keys().cloned().collect();
    mc.profile = if wan { Profile::wan() } else { Profile::lan() };
    let mut meta = MemberMeta::default();
    meta.node.version = env!("CARGO_PKG_VERSION").to_owned();
    meta.node.tags = raw.gossip.tags.clone();
    meta.node.roles = v.roles.iter().cloned().collect();
    mc.meta = meta;
    let membership = quorate_membership::start(TokioNet, mc, wire.clone(), Some(health.clone()))
        .await
        .context("starting membership")?;
    let membership_view: Arc<dyn Membership> = Arc::new(membership.clone());
    emit(&started("membership", &v));

    // 3. Coordination.
    let mut nc = NodeConfig::new(v.node_id.clone(), raw.raft.listen.clone(), wire.clone());
    if let Some(a) = &raw.raft.advertise {
        nc.advertise_addr = a.clone();
    }
    nc.timing = if wan { Timing::wan() } else { Timing::lan() };
    nc.bootstrap = Some(v.voters.clone());
    // Role leases (600 ms in the failover `lan` profile) are shorter than etcd's 2 s floor:
    // a lease only needs to outlive one renew round trip, and its holder stops acting before
    // the leader can expire it (see ARCHITECTURE.md, lease timing).
    nc.machine.lease_ttl_min_ms = if wan { 2_000 } else { 500 };
    let storage = Storage::open(&raw.data_dir.join("raft.redb")).context("opening raft storage")?;
    let raft = RaftNode::start(nc, storage, TokioNet)
        .await
        .context("starting raft")?;
    let coord: Arc<dyn Coord> = Arc::new(raft.backend());
    emit(&started("raft", &v));

    // 4. Failover.
    let roles: Vec<RoleSpec> = raw
        .roles
        .iter()
        .zip(&v.roles)
        .map(|(section, name)| {
            let config = section.role_config(wan);
            RoleSpec::new(name.clone(), config).with_hooks(Arc::new(CommandHooks::new(
                section.clone(),
                Duration::from_secs(10),
            )))
        })
        .collect();
    let mut mgr_config = ManagerConfig::lan(v.node_id.clone());
    if wan {
        mgr_config.tick_interval = Duration::from_millis(250);
    }
    let manager = FailoverManager::start(
        mgr_config,
        coord,
        health.clone(),
        membership_view.clone(),
        roles,
    )
    .await
    .context("starting the failover manager")?;
    emit(&started("failover", &v));

    // Status file, until a signal.
    let status_path = raw.data_dir.join("status.json");
    let mut tick = tokio::time::interval(Duration::from_millis(crate::status::STATUS_INTERVAL_MS));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let s = crate::status::collect(&v, &raft, &membership_view, &health, &manager);
                let tmp = status_path.with_extension("json.tmp");
                let text = serde_json::to_string(&s).unwrap_or_default();
                if std::fs::write(&tmp, text).is_ok() {
                    let _ = std::fs::rename(&tmp, &status_path);
                }
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
    }
    emit(&AgentEvent::Stopping {
        node: v.node_id.to_string(),
    });
    manager.shutdown().await;
    let _ = membership.leave().await;
    membership.shutdown();
    raft.shutdown().await;
    monitor.shutdown().await;
    emit(&AgentEvent::Stopped {
        node: v.node_id.to_string(),
    });
    Ok(())
}
