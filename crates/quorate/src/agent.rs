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

use crate::config::{CheckSection, Validated};
use crate::hooks::CommandHooks;

/// Prints one JSON event line on stdout (flushed at once: `quorate demo` reads it live).
pub fn emit(v: &serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

fn build_check(c: &CheckSection) -> Result<(ComponentType, Arc<dyn HealthCheck>)> {
    let t = c.target.as_str();
    Ok(match c.kind.as_str() {
        "tcp" => (ComponentType::ExternalApi, Arc::new(TcpCheck::new(t)?)),
        "http" => (ComponentType::ExternalApi, Arc::new(HttpCheck::new(t)?)),
        "redis" => (ComponentType::Cache, Arc::new(RedisCheck::new(t)?)),
        "postgres" => (ComponentType::Database, Arc::new(PostgresCheck::new(t)?)),
        "command" => (
            ComponentType::Custom("command".into()),
            Arc::new(CommandCheck::new("sh", ["-c", t])?),
        ),
        "disk" => (
            ComponentType::NodeResource,
            Arc::new(DiskSpaceCheck::new(
                t,
                SpaceThreshold::Percent(10.0),
                SpaceThreshold::Percent(5.0),
            )?),
        ),
        "memory" => {
            let crit: u64 = t.parse().context("memory target: MiB")?;
            (
                ComponentType::NodeResource,
                Arc::new(MemoryCheck::new(
                    crit * 1024 * 1024 * 8 / 10,
                    crit * 1024 * 1024,
                )?),
            )
        }
        other => anyhow::bail!("unknown check kind {other:?}"),
    })
}

/// Runs the agent until SIGTERM or Ctrl-C.
pub async fn run(v: Validated) -> Result<()> {
    let raw = &v.raw;
    quorate_raft::store::create_data_dir(&raw.data_dir)
        .with_context(|| format!("creating data_dir {}", raw.data_dir.display()))?;
    let wan = raw.profile == "wan";
    let key = ClusterKey::from_hex(&v.key_hex)?;
    let wire = WireConfig::new(raw.cluster_name.clone(), KeyRing::new(key, vec![]))?;

    // 1. Health.
    let monitor = HealthMonitor::start(MonitorConfig::standard())?;
    for c in &raw.checks {
        let (kind, check) = build_check(c).with_context(|| format!("check {}", c.id))?;
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
    emit(
        &serde_json::json!({"event": "started", "component": "health", "node": v.node_id.to_string()}),
    );

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
    emit(
        &serde_json::json!({"event": "started", "component": "membership", "node": v.node_id.to_string()}),
    );

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
    emit(
        &serde_json::json!({"event": "started", "component": "raft", "node": v.node_id.to_string()}),
    );

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
    emit(
        &serde_json::json!({"event": "started", "component": "failover", "node": v.node_id.to_string(), "pid": std::process::id()}),
    );

    // Status file, until a signal.
    let status_path = raw.data_dir.join("status.json");
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let s = crate::status::collect(&v, &raft, &membership_view, &health, &manager);
                let tmp = status_path.with_extension("json.tmp");
                if std::fs::write(&tmp, s.to_string()).is_ok() {
                    let _ = std::fs::rename(&tmp, &status_path);
                }
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
    }
    emit(&serde_json::json!({"event": "stopping", "node": v.node_id.to_string()}));
    manager.shutdown().await;
    let _ = membership.leave().await;
    membership.shutdown();
    raft.shutdown().await;
    monitor.shutdown().await;
    emit(&serde_json::json!({"event": "stopped", "node": v.node_id.to_string()}));
    Ok(())
}
