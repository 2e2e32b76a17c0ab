//! The quorate column of the side-by-side coordination benchmark (`quorate_bench::coord`): a
//! [`BenchTarget`] that runs three `quorate agent` processes on loopback ([`QuorateTarget`]),
//! and a `Coord` client that drives them from outside over the authenticated Raft client
//! transport (`quorate_raft::client::CoordClient`, the one remote client), as etcd's benchmark
//! drives etcd over gRPC.
//!
//! - Each agent gets a generated TOML config in a temporary directory (`lan` profile by
//!   default, no checks, no roles), its own data dir, and fresh loopback ports.
//! - `kill_leader` finds the Raft leader by proposing a tiny write to every live node (only
//!   the leader accepts a remote proposal: followers answer `NotLeader`), sends SIGKILL to its
//!   process and reaps it. `restore` restarts it on the same data dir and waits until it runs
//!   again as a voter that has applied a write made after its restart.
//! - Peak RSS is each agent's `VmHWM` (the whole agent: health, gossip, Raft, failover).
//!
//! Timings are reported, never asserted.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use quorate_coord_api::Coord;
use quorate_raft::client::{ClientConfig, CoordClient};
use quorate_raft::machine::Outcome;
use quorate_raft::network::{ClientRequest, ClientResponse, ClientWrite};
use quorate_testkit::TestkitError as EtcdError;
use quorate_testkit::agents::{LoopbackPlan, write_config};
use quorate_wire::net::TokioNet;
use quorate_wire::{ClusterKey, KeyRing, WireConfig};
use tokio::process::Child;
use tokio::time::Instant;

use crate::coord::BenchTarget;

pub use quorate_testkit::process::QUORATE_BIN_ENV;

/// The cluster name written into the generated configs.
const CLUSTER_NAME: &str = "quorate-bench";

/// The client settings the benchmark uses: the `lan` client, with room for 64 concurrent
/// callers per node and a bound on one lock wait (a benchmark must not hang).
pub fn bench_client_config(wire: WireConfig) -> ClientConfig {
    let mut c = ClientConfig::lan(wire);
    c.idle_connections_per_node = 128;
    c.lock_wait_max = Some(Duration::from_secs(30));
    c.capabilities.lease_ttl_min = Duration::from_millis(500);
    c
}

/// Which of `alive`'s nodes accepts a write now (only the leader does), or `None`.
async fn leader_index(client: &CoordClient<TokioNet>, alive: &[bool]) -> Option<usize> {
    for (i, _) in alive.iter().enumerate().filter(|(_, a)| **a) {
        let probe = ClientRequest::Write(ClientWrite::Put {
            key: "__bench/leader-probe".to_owned(),
            value: Vec::new(),
            lease: None,
        });
        if let Ok(ClientResponse::Written(_, Outcome::Put(_))) = client.call_node(i, probe).await {
            return Some(i);
        }
    }
    None
}

/// How to run the three agents.
#[derive(Clone, Debug)]
pub struct QuorateClusterConfig {
    /// The program started as each agent, with `args` then `--config <file>` appended
    /// (`quorate` with `["agent"]`).
    pub program: PathBuf,
    /// Arguments before `--config <file>`.
    pub args: Vec<String>,
    /// Number of agents (voters).
    pub nodes: usize,
    /// Timing profile written into the configs (`lan` or `wan`).
    pub profile: String,
    /// How long start-up and each restore may take.
    pub ready_wait: Duration,
    /// Adjusts the client's settings ([`bench_client_config`] by default).
    pub client: fn(&mut ClientConfig),
}

impl QuorateClusterConfig {
    /// Three `<program> agent` processes, `lan` profile, the default client.
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: vec!["agent".to_owned()],
            nodes: 3,
            profile: "lan".to_owned(),
            ready_wait: Duration::from_secs(30),
            client: |_| {},
        }
    }
}

struct Agent {
    name: String,
    config: PathBuf,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    pid: Option<u32>,
}

/// A 3-process quorate cluster on loopback as a benchmark target (see the module docs).
pub struct QuorateTarget {
    agents: Vec<Agent>,
    coord: Arc<CoordClient<TokioNet>>,
    killed: Option<usize>,
    config: QuorateClusterConfig,
    // Last: removed after the children are gone.
    dir: tempfile::TempDir,
}

fn io(what: impl Into<String>, e: impl std::fmt::Display) -> EtcdError {
    EtcdError::Io {
        what: what.into(),
        reason: e.to_string(),
    }
}

impl QuorateTarget {
    /// Writes the configs, starts the agents, and waits until every one has applied a write.
    pub async fn start(config: QuorateClusterConfig) -> Result<QuorateTarget, EtcdError> {
        let dir = tempfile::Builder::new()
            .prefix("quorate-bench-")
            .tempdir()
            .map_err(|e| io("creating the benchmark directory", e))?;
        let n = config.nodes.max(1);
        let layout = LoopbackPlan::new(CLUSTER_NAME, n, dir.path())
            .map_err(|e| io("planning the agents", e))?;
        let key = ClusterKey::from_hex(&layout.key_hex).map_err(|e| io("reading the key", e))?;
        let wire = WireConfig::new(CLUSTER_NAME, KeyRing::new(key, vec![]))
            .map_err(|e| io("building the wire config", e))?;
        let mut agents = Vec::new();
        for (i, name) in layout.names.iter().enumerate() {
            let data_dir = dir.path().join(name);
            let profile = config.profile.clone();
            let path = write_config(&layout, i, dir.path(), |c| c.profile = profile)?;
            agents.push(Agent {
                name: name.clone(),
                config: path,
                data_dir,
                log: dir.path().join(format!("{name}.log")),
                child: None,
                pid: None,
            });
        }
        let mut client_config = bench_client_config(wire);
        (config.client)(&mut client_config);
        let coord = Arc::new(CoordClient::new(
            TokioNet,
            client_config,
            layout.raft.clone(),
        ));
        let mut target = QuorateTarget {
            agents,
            coord,
            killed: None,
            config,
            dir,
        };
        for i in 0..n {
            target.spawn(i)?;
        }
        let all: Vec<usize> = (0..n).collect();
        target.wait_ready(&all).await?;
        Ok(target)
    }

    /// The directory holding configs, data dirs and agent logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The concrete client (the same one `coord()` returns).
    pub fn remote(&self) -> Arc<CoordClient<TokioNet>> {
        Arc::clone(&self.coord)
    }

    /// Process ids of the running agents, by name.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.agents
            .iter()
            .filter(|a| a.child.is_some())
            .filter_map(|a| a.pid.map(|p| (a.name.clone(), p)))
            .collect()
    }

    fn spawn(&mut self, i: usize) -> Result<(), EtcdError> {
        let a = &mut self.agents[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&a.log)
            .map_err(|e| io(format!("opening {}", a.log.display()), e))?;
        let child = tokio::process::Command::new(&self.config.program)
            .args(&self.config.args)
            .arg("--config")
            .arg(&a.config)
            .env(
                "RUST_LOG",
                std::env::var("QUORATE_BENCH_LOG").unwrap_or_else(|_| "warn,openraft=off".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                io(
                    format!(
                        "starting agent {} ({})",
                        a.name,
                        self.config.program.display()
                    ),
                    e,
                )
            })?;
        a.pid = child.id();
        a.child = Some(child);
        Ok(())
    }

    fn status_of(&self, i: usize) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(self.agents[i].data_dir.join("status.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Waits until a write is acknowledged, then until every agent in `which` (running its
    /// current process) reports a leader, all voters, and has applied that write.
    async fn wait_ready(&mut self, which: &[usize]) -> Result<(), EtcdError> {
        let deadline = Instant::now() + self.config.ready_wait;
        let mut last;
        let revision = loop {
            match self.coord.put("__bench/ready", b"1".to_vec(), None).await {
                Ok(r) => break r.revision.0,
                Err(e) => last = e.to_string(),
            }
            self.check_alive(which)?;
            if Instant::now() >= deadline {
                return Err(self.not_ready(which, &last));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let voters = self.agents.len();
        for &i in which {
            loop {
                let ok = self.status_of(i).is_some_and(|s| {
                    s["pid"].as_u64() == self.agents[i].pid.map(u64::from)
                        && !s["raft"]["leader"].is_null()
                        && s["raft"]["voters"].as_array().map(Vec::len) == Some(voters)
                        && s["raft"]["applied_index"].as_u64().unwrap_or(0) >= revision
                });
                if ok {
                    break;
                }
                self.check_alive(which)?;
                if Instant::now() >= deadline {
                    last = format!(
                        "{} has not reported applying revision {revision} (status: {:?})",
                        self.agents[i].name,
                        self.status_of(i)
                    );
                    return Err(self.not_ready(which, &last));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    fn check_alive(&mut self, which: &[usize]) -> Result<(), EtcdError> {
        for &i in which {
            if let Some(c) = self.agents[i].child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                let a = &self.agents[i];
                let tail = std::fs::read_to_string(&a.log).unwrap_or_default();
                let tail: String = tail
                    .lines()
                    .rev()
                    .take(10)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join(" | ");
                return Err(io(
                    format!("agent {} exited ({status})", a.name),
                    format!("log {}: {tail}", a.log.display()),
                ));
            }
        }
        Ok(())
    }

    fn not_ready(&self, which: &[usize], last: &str) -> EtcdError {
        let i = which.first().copied().unwrap_or(0);
        EtcdError::NotHealthy {
            member: self.agents[i].name.clone(),
            waited: self.config.ready_wait,
            last: last.to_owned(),
            log: self.agents[i].log.clone(),
        }
    }

    /// The index of the agent that accepts proposals now (the Raft leader).
    pub async fn leader(&self) -> Option<usize> {
        let alive: Vec<bool> = self.agents.iter().map(|a| a.child.is_some()).collect();
        leader_index(&self.coord, &alive).await
    }
}

#[async_trait]
impl BenchTarget for QuorateTarget {
    fn name(&self) -> String {
        "quorate".into()
    }

    fn coord(&self) -> Arc<dyn Coord> {
        Arc::clone(&self.coord) as Arc<dyn Coord>
    }

    async fn kill_leader(&mut self) -> Result<(), EtcdError> {
        let deadline = Instant::now() + self.config.ready_wait;
        let leader = loop {
            if let Some(i) = self.leader().await {
                break i;
            }
            if Instant::now() >= deadline {
                return Err(self.not_ready(&[0], "no agent accepts proposals before the kill"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let a = &mut self.agents[leader];
        if let Some(mut c) = a.child.take() {
            // SIGKILL, then reap: when `wait` returns the process is gone.
            c.start_kill()
                .map_err(|e| io(format!("kill -9 of agent {}", a.name), e))?;
            c.wait()
                .await
                .map_err(|e| io(format!("reaping agent {}", a.name), e))?;
        }
        self.killed = Some(leader);
        Ok(())
    }

    async fn restore(&mut self) -> Result<(), EtcdError> {
        if let Some(i) = self.killed.take() {
            self.spawn(i)?;
            self.wait_ready(&[i]).await?;
        }
        Ok(())
    }

    fn peak_rss_kib(&self) -> Vec<(String, u64)> {
        self.pids()
            .into_iter()
            .filter_map(|(n, p)| quorate_testkit::etcd::peak_rss_kib(p).map(|k| (n, k)))
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test")]
mod tests {
    use super::*;

    #[test]
    fn generated_configs_validate() {
        let dir = tempfile::tempdir().unwrap();
        let layout = LoopbackPlan::new(CLUSTER_NAME, 3, dir.path()).unwrap();
        for i in 0..3 {
            let path = write_config(&layout, i, dir.path(), |c| c.profile = "wan".into()).unwrap();
            let v = quorate::config::load(&path).unwrap();
            assert_eq!(v.voters.len(), 3);
            assert!(v.profile.is_wan());
            assert_eq!(v.raw.gossip.bootstrap, i == 0);
        }
    }

    #[tokio::test]
    async fn a_client_without_nodes_fails_with_a_clear_error() {
        let wire = WireConfig::new(
            CLUSTER_NAME,
            KeyRing::new(ClusterKey::generate().unwrap(), vec![]),
        )
        .unwrap();
        let c = CoordClient::new(TokioNet, bench_client_config(wire), vec![]);
        let err = c.put("k", b"v".to_vec(), None).await.unwrap_err();
        assert!(
            matches!(err, quorate_coord_api::CoordError::InvalidArgument { .. }),
            "{err}"
        );
        let err = c.watch("", None).await.err().unwrap();
        assert!(
            matches!(err, quorate_coord_api::CoordError::InvalidArgument { .. }),
            "{err}"
        );
    }
}
