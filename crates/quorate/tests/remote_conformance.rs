//! The coordination conformance suite through the remote client
//! (`quorate_raft::client::CoordClient`) against three real `quorate agent` processes on
//! loopback: every `Coord` method crosses the authenticated client transport of a real
//! cluster. One client per agent, each starting at its own node.
//!
//! The agents' configs come from the test kit (`quorate_testkit::agents`, built from the
//! agent's own config types); children are killed on drop.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test")]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use quorate_coord_api::Coord;
use quorate_coord_api::conformance::{SuiteConfig, run_all};
use quorate_raft::client::{ClientConfig, CoordClient};
use quorate_testkit::agents::{LoopbackPlan, write_config};
use quorate_wire::net::TokioNet;
use quorate_wire::{ClusterKey, KeyRing, WireConfig};

const CLUSTER: &str = "remote-conformance";

/// Three agents; killed and reaped on drop.
struct Agents {
    children: Vec<Child>,
    logs: Vec<PathBuf>,
    raft: Vec<String>,
    wire: WireConfig,
    _dir: tempfile::TempDir,
}

impl Agents {
    fn start(n: usize) -> Agents {
        let dir = tempfile::tempdir().unwrap();
        let plan = LoopbackPlan::new(CLUSTER, n, dir.path()).unwrap();
        let key = ClusterKey::from_hex(&plan.key_hex).unwrap();
        let wire = WireConfig::new(CLUSTER, KeyRing::new(key, vec![])).unwrap();
        let mut children = Vec::new();
        let mut logs = Vec::new();
        for i in 0..n {
            // `wan` timing: three agents and the test share two busy cores, where `lan`'s
            // 300 ms election timeout fires spuriously.
            let config = write_config(&plan, i, dir.path(), |c| c.profile = "wan".into()).unwrap();
            let log = dir.path().join(format!("{}.log", plan.names[i]));
            let child = Command::new(env!("CARGO_BIN_EXE_quorate"))
                .arg("agent")
                .arg("--config")
                .arg(&config)
                .env("RUST_LOG", "warn,openraft=off")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap();
            children.push(child);
            logs.push(log);
        }
        Agents {
            children,
            logs,
            raft: plan.raft.clone(),
            wire,
            _dir: dir,
        }
    }

    fn logs(&self) -> String {
        self.logs
            .iter()
            .map(|p| tail(p))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn tail(p: &Path) -> String {
    let text = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(20);
    format!("--- {} ---\n{}", p.display(), lines[from..].join("\n"))
}

impl Drop for Agents {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A client starting at `first`, with capabilities read from the cluster (retried while
/// the agents start and elect a leader).
async fn client(agents: &Agents, first: usize) -> CoordClient<TokioNet> {
    let mut config = ClientConfig::lan(agents.wire.clone());
    config.attempts = std::num::NonZeroUsize::new(40).unwrap();
    config.retry_pause = Duration::from_millis(100);
    config.connect_timeout = Duration::from_secs(2);
    let mut addrs = agents.raft.clone();
    addrs.rotate_left(first);
    let mut last = None;
    for _ in 0..300 {
        match CoordClient::connect(TokioNet, config.clone(), addrs.clone()).await {
            Ok(c) => match c.put("remote-conformance/ready", b"1".to_vec(), None).await {
                Ok(_) => return c,
                Err(e) => last = Some(e),
            },
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "the agents did not serve the remote client: {last:?}\n{}",
        agents.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_remote_client_passes_the_conformance_suite_against_three_agent_processes() {
    let agents = Agents::start(3);
    let mut clients: Vec<Arc<dyn Coord>> = Vec::new();
    for i in 0..3 {
        clients.push(Arc::new(client(&agents, i).await));
    }
    let report = run_all(&clients, &SuiteConfig::new("remote-conformance/")).await;
    match report {
        Ok(r) => {
            assert!(
                r.passed.iter().any(|p| p.starts_with("watch/"))
                    && r.passed.iter().any(|p| p.starts_with("elections/"))
                    && r.passed.iter().any(|p| p.starts_with("cluster/")),
                "{r:?}"
            );
        }
        Err(f) => panic!("{f}\n{}", agents.logs()),
    }
}
