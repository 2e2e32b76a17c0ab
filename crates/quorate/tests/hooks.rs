//! The agent's shell-command hooks (`quorate::hooks::CommandHooks`) against real processes:
//! a timed-out hook leaves nothing of its process group behind, a hook printing 1 GB leaves the
//! agent's memory flat, and the configured hook timeout (not a shorter one of the failover
//! manager) is the one that applies.
//!
//! Real time (the hooks run real programs); every wait polls with a generous deadline and
//! nothing asserts a duration.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test")]

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quorate::config::RoleSection;
use quorate::startup::hooks::CommandHooks;
use quorate_failover::shell::{FailoverManager, HookContext, RoleHooks};
use quorate_health_api::{HealthStatus, ManualHealthView};
use quorate_membership_api::{HealthSummary, MemberMeta, StaticMembership};
use quorate_raft::backend::{Backend, LocalConfig, LocalProposer, capabilities};
use quorate_raft::machine::MachineLimits;
use quorate_types::{FencingToken, NodeId, NodeMeta, RoleName};

fn section(toml_text: &str) -> RoleSection {
    toml::from_str(toml_text).unwrap()
}

fn ctx() -> HookContext {
    HookContext {
        role: RoleName::new("poller").unwrap(),
        node: NodeId::new("n1").unwrap(),
        token: FencingToken(7),
    }
}

/// Live (not zombie) processes whose environment holds `marker`, with their process group.
fn live_with_marker(marker: &str) -> Vec<(u32, u32, String)> {
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in dir.filter_map(Result::ok) {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(environ) = std::fs::read(e.path().join("environ")) else {
            continue;
        };
        if !environ.split(|b| *b == 0).any(|kv| kv == marker.as_bytes()) {
            continue;
        }
        let Some((state, pgid)) = stat(pid) else {
            continue;
        };
        if state != 'Z' {
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            found.push((pid, pgid, cmd));
        }
    }
    found
}

/// State and process group of `pid`, from /proc/PID/stat.
fn stat(pid: u32) -> Option<(char, u32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let mut f = rest.split(' ');
    let state = f.next()?.chars().next()?;
    let _ppid = f.next()?;
    let pgid = f.next()?.parse().ok()?;
    Some((state, pgid))
}

/// Live processes in process group `pgid`.
fn live_in_group(pgid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .filter(|pid| matches!(stat(*pid), Some((s, g)) if g == pgid && s != 'Z'))
        .collect()
}

fn vm_hwm_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn read_pid(path: &Path) -> u32 {
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// A node-event sender nobody listens to.
fn events() -> tokio::sync::broadcast::Sender<quorate::report::NodeEvent> {
    tokio::sync::broadcast::channel(16).0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_out_hook_leaves_nothing_of_its_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("sh.pid");
    let marker = format!("QUORATE_TEST_MARK=hook-group-{}", std::process::id());
    let hooks = CommandHooks::new(
        section(&format!(
            "name = \"poller\"\nhook_timeout = \"500ms\"\n\
             before_promote = \"echo $$ > {}; export {marker}; sleep 100 & sleep 100\"",
            pidfile.display()
        )),
        events(),
    );
    let err = hooks.before_promote(&ctx()).await.unwrap_err();
    assert!(err.contains("timed out"), "{err}");
    let sh = read_pid(&pidfile);
    // SIGKILL is delivered asynchronously: poll until the group is gone (or give up).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let (left, group) = loop {
        let left = live_with_marker(&marker);
        let group = live_in_group(sh);
        if (left.is_empty() && group.is_empty()) || std::time::Instant::now() > deadline {
            break (left, group);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Clean up whatever survived, so a failing run leaves no sleeps behind.
    for (pid, _, _) in &left {
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
    }
    assert!(
        left.is_empty(),
        "processes of the timed-out hook survive (pid, pgid, cmdline): {left:?}"
    );
    assert!(
        group.is_empty(),
        "process group {sh} still has members: {group:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hook_printing_1_gb_leaves_the_agent_rss_flat() {
    let hooks = CommandHooks::new(
        section(
            "name = \"poller\"\nhook_timeout = \"120s\"\n\
             before_promote = \"yes | head -c 1000000000\"",
        ),
        events(),
    );
    let before = vm_hwm_kib();
    hooks.before_promote(&ctx()).await.unwrap();
    let after = vm_hwm_kib();
    let grown_mib = after.saturating_sub(before) / 1024;
    assert!(
        grown_mib < 64,
        "peak RSS grew by {grown_mib} MiB ({before} kB -> {after} kB) while a hook printed 1 GB"
    );
}

fn member_meta(role: &RoleName) -> MemberMeta {
    MemberMeta {
        node: NodeMeta {
            api_addr: None,
            version: "test".to_owned(),
            roles: BTreeSet::from([role.clone()]),
            tags: Default::default(),
        },
        health: HealthSummary {
            status: HealthStatus::Passing,
            healthy: 1,
            total: 1,
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_hook_timeout_applies() {
    // A `before_promote` that takes 6 s, under a configured hook timeout of 8 s: the node must
    // be promoted, not vetoed by some shorter limit.
    let role = RoleName::new("poller").unwrap();
    let v = quorate::config::parse_with(
        r#"
cluster_name = "hooks"
node_id = "n1"
data_dir = "/nonexistent/unused"
[raft]
listen = "127.0.0.1:1"
voters = { n1 = "127.0.0.1:1" }
[gossip]
listen = "127.0.0.1:2"
bootstrap = true
[[role]]
name = "poller"
before_promote = "sleep 6"
hook_timeout = "8s"
"#,
        "hooks.toml",
        &[(
            "QUORATE_CLUSTER_KEY".to_owned(),
            "1111111111111111111111111111111111111111111111111111111111111111".to_owned(),
        )],
    )
    .unwrap();
    // What `quorate agent` builds.
    let (manager_config, specs) = quorate::startup::node::failover_setup(&v, &events(), &[]);

    let mut limits = MachineLimits::lan();
    limits.lease_ttl_min_ms = 100;
    let caps = capabilities("local", &limits, Duration::from_millis(100), false);
    let mut local = LocalConfig::new(NodeId::new("store").unwrap());
    local.limits = limits;
    let store = Arc::new(Backend::new(LocalProposer::new(local), caps));
    let membership = Arc::new(StaticMembership::for_tests("n1", &["n1"]));
    membership.set_meta("n1", member_meta(&role));
    let health = Arc::new(ManualHealthView::new(std::num::NonZeroUsize::MIN));
    let manager = FailoverManager::start(manager_config, store, health, membership, specs)
        .await
        .unwrap();
    let status = manager.status(&role).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !status.borrow().acting {
        if std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let acting = status.borrow().acting;
    let history = manager.history(&role).unwrap();
    let explain = manager.explain(&role).await.map(|e| format!("{e}"));
    manager.shutdown().await;
    assert!(
        acting,
        "the node was not promoted; history: {history:?}; explain: {explain:?}"
    );
}
