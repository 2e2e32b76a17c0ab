//! `quorate demo`: three agents on loopback as child processes in a temporary directory, one
//! demo role, every role change printed as it happens (who, why, how long). With `--chaos N`
//! the demo itself kills the primary's process with SIGKILL N times, measures the time from the
//! kill to the new primary's promotion, restarts the killed node, and exits non-zero if a
//! failover did not happen.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::config::{AgentConfig, CheckSection, GossipSection, RaftSection, RoleSection};
use crate::report::{NodeEvent, RoleChangeEvent, StatusFile};

/// The demo role's name.
pub const ROLE: &str = "demo-primary";

/// Options of `quorate demo`.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Kill the primary this many times, then exit (0: run until Ctrl-C).
    pub chaos: u32,
    /// Keep the temporary directory (configs, data, hook log) after exit.
    pub keep: bool,
    /// How long to wait for a primary or a failover before giving up.
    pub wait: Duration,
}

struct Node {
    name: String,
    config: PathBuf,
    child: Option<Child>,
    pid: Option<u32>,
}

/// A loopback port free for both TCP and UDP (Raft and gossip listeners).
pub fn free_port() -> Result<u16> {
    for _ in 0..64 {
        let t = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = t.local_addr()?.port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free loopback port found")
}

/// The configs of a loopback cluster, built from the agent's own config types.
#[derive(Clone, Debug)]
pub struct LoopbackPlan {
    /// The cluster's name.
    pub cluster_name: String,
    /// The key, as hex.
    pub key_hex: String,
    /// The key file every node's config names (mode 0600).
    pub key_file: std::path::PathBuf,
    /// Node names (`n1`, `n2`, ...).
    pub names: Vec<String>,
    /// Raft listen addresses, by node.
    pub raft: Vec<String>,
    /// Gossip listen addresses, by node.
    pub gossip: Vec<String>,
}

impl LoopbackPlan {
    /// `n` nodes on free loopback ports with a fresh key, written to `dir/cluster.key`
    /// (mode 0600: the config may not hold the key itself).
    pub fn new(cluster_name: &str, n: usize, dir: &Path) -> Result<LoopbackPlan> {
        let key_file = dir.join("cluster.key");
        quorate_startup::config::write_new_key_file(&key_file).map_err(anyhow::Error::msg)?;
        let key_hex = std::fs::read_to_string(&key_file)?.trim().to_owned();
        let mut plan = LoopbackPlan {
            cluster_name: cluster_name.to_owned(),
            key_hex,
            key_file,
            names: (1..=n).map(|i| format!("n{i}")).collect(),
            raft: Vec::new(),
            gossip: Vec::new(),
        };
        for _ in 0..n {
            plan.raft.push(format!("127.0.0.1:{}", free_port()?));
            plan.gossip.push(format!("127.0.0.1:{}", free_port()?));
        }
        Ok(plan)
    }

    /// Node `i`'s config: `lan` profile, every node a voter, node 0 bootstraps and the others
    /// join through every other node's gossip address; no checks, no roles.
    pub fn agent(&self, i: usize, data_dir: &Path) -> AgentConfig {
        AgentConfig {
            cluster_name: self.cluster_name.clone(),
            cluster_key: None,
            accepted_key_files: Vec::new(),
            client_key_files: Vec::new(),
            cluster_key_file: Some(self.key_file.clone()),
            node_id: self.names[i].clone(),
            data_dir: data_dir.to_path_buf(),
            profile: "lan".to_owned(),
            raft: RaftSection {
                listen: self.raft[i].clone(),
                advertise: None,
                store_bytes_max: None,
                voters: self
                    .names
                    .iter()
                    .cloned()
                    .zip(self.raft.iter().cloned())
                    .collect(),
            },
            gossip: GossipSection {
                listen: self.gossip[i].clone(),
                advertise: None,
                seeds: self
                    .gossip
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, g)| g.clone())
                    .collect(),
                bootstrap: i == 0,
                tags: BTreeMap::new(),
            },
            checks: Vec::new(),
            roles: Vec::new(),
            startup: Default::default(),
            telegram: None,
            redis: None,
            replication: None,
            api: None,
        }
    }
}

/// A config as TOML text.
pub fn to_toml(config: &AgentConfig) -> Result<String> {
    toml::to_string(config).context("writing an agent config as TOML")
}

fn write_configs(dir: &Path) -> Result<Vec<Node>> {
    let plan = LoopbackPlan::new("quorate-demo", 3, dir)?;
    let log = dir.join("actions.log");
    let hook = |what: &str| {
        format!(
            "echo \"$(date +%s.%N) $QUORATE_NODE {what} token=$QUORATE_FENCING_TOKEN\" >> {}",
            log.display()
        )
    };
    let mut nodes = Vec::new();
    for (i, name) in plan.names.iter().enumerate() {
        // Equal failover priorities (the default), as in most deployments: the policy's own
        // tiebreaks then keep the role off the Raft leader, so a kill of the primary is one
        // failure, not a Raft election followed by the role lease.
        let mut c = plan.agent(i, &dir.join(name));
        c.checks.push(CheckSection {
            id: "data-disk".to_owned(),
            kind: "disk".to_owned(),
            target: dir.display().to_string(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            critical: true,
        });
        c.roles.push(RoleSection {
            on_promote: Some(hook("promote")),
            on_demote: Some(hook("demote")),
            ..RoleSection::named(ROLE)
        });
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, to_toml(&c)?)?;
        nodes.push(Node {
            name: name.clone(),
            config,
            child: None,
            pid: None,
        });
    }
    Ok(nodes)
}

fn spawn(node: &mut Node, tx: &mpsc::Sender<(String, NodeEvent)>) -> Result<()> {
    let exe = std::env::current_exe().context("finding the quorate executable")?;
    let mut child = Command::new(exe)
        .arg("agent")
        .arg("--config")
        .arg(&node.config)
        // Killed peers make openraft log connection errors by design; keep the demo readable.
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,openraft=off".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting agent {}", node.name))?;
    node.pid = child.id();
    let stdout = child.stdout.take().context("agent stdout")?;
    let (name, tx) = (node.name.clone(), tx.clone());
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(e) = NodeEvent::parse(&line)
                && tx.send((name.clone(), e)).await.is_err()
            {
                break;
            }
        }
    });
    node.child = Some(child);
    Ok(())
}

fn describe(from: &str, e: &RoleChangeEvent, t0: Instant) -> String {
    let s = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".to_owned());
    let ms = |m: Option<u64>| m.map_or("-".to_owned(), |m| format!("{m} ms"));
    format!(
        "[{:>7.2} s] {}: {} -> {} ({}); detection {}, promotion {}, token {} (reported by {from})",
        t0.elapsed().as_secs_f64(),
        e.role,
        s(&e.old_primary),
        s(&e.new_primary),
        e.cause,
        ms(e.detection_ms),
        ms(e.promotion_ms),
        e.token.map_or("-".to_owned(), |t| t.to_string()),
    )
}

fn read_status(dir: &Path, name: &str) -> Option<StatusFile> {
    crate::status::read(&dir.join(name).join("status.json")).ok()
}

/// Each node's health and role decision from its `status.json`, to say why nothing happened.
fn why(dir: &Path) -> String {
    let mut out = String::new();
    for name in ["n1", "n2", "n3"] {
        let line = read_status(dir, name).map_or_else(
            || "no status yet".to_owned(),
            |s| {
                format!(
                    "health {}, {}",
                    s.health.status,
                    s.roles.first().map_or("?", |r| r.last_action.as_str())
                )
            },
        );
        out.push_str(&format!("\n  {name}: {line}"));
    }
    out
}

/// Waits for a role change naming a new primary other than `not`; returns it. On timeout the
/// error carries each node's health and last role decision (read from `dir`).
async fn wait_primary(
    rx: &mut mpsc::Receiver<(String, NodeEvent)>,
    not: Option<&str>,
    t0: Instant,
    wait: Duration,
    dir: &Path,
) -> Result<String> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let (from, e) = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "no new primary within {wait:?}; the nodes say (a critical check keeps a node \
                     from being a candidate):{}",
                    why(dir)
                )
            })?
            .context("all agents exited")?;
        match e {
            NodeEvent::RoleChange(rc) => {
                println!("{}", describe(&from, &rc, t0));
                if let Some(p) = rc.new_primary
                    && Some(p.as_str()) != not
                {
                    return Ok(p);
                }
            }
            NodeEvent::Started { component, pid, .. } if component == "failover" => {
                println!(
                    "[{:>7.2} s] {from} is up (pid {pid})",
                    t0.elapsed().as_secs_f64(),
                );
            }
            _ => {}
        }
    }
}

/// Waits until the restarted node `name` (process `pid`) has rejoined: its own status is
/// written by that process, it sees every node alive, its Raft log has caught up with the
/// primary's, and every other node sees it alive again. Drains events meanwhile (printing role
/// changes). Only then can the next kill be a single failure, not a double one.
async fn wait_rejoined(
    dir: &Path,
    names: &[String],
    name: &str,
    pid: u32,
    primary: &str,
    wait: Duration,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let all: Vec<Option<StatusFile>> = names.iter().map(|n| read_status(dir, n)).collect();
        let me = names
            .iter()
            .position(|n| n == name)
            .and_then(|i| all[i].as_ref());
        let prim = names
            .iter()
            .position(|n| n == primary)
            .and_then(|i| all[i].as_ref());
        let ready = match (me, prim) {
            (Some(me), Some(prim)) => {
                me.pid == pid
                    && me.alive() == names.len()
                    && me.raft.leader.is_some()
                    && me.raft.applied_index >= prim.raft.applied_index.saturating_sub(2)
                    && all.iter().flatten().all(|s| s.alive() == names.len())
            }
            _ => false,
        };
        if ready {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "{name} did not rejoin within {wait:?} (member alive everywhere, Raft caught up); the nodes say:{}",
                why(dir)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn pids_line(nodes: &[Node]) -> String {
    nodes
        .iter()
        .map(|n| {
            format!(
                "{} {}",
                n.name,
                n.pid.map_or("-".to_owned(), |p| p.to_string())
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `min / median / max` of failover times, in milliseconds.
pub fn summary(times: &[Duration]) -> Option<String> {
    let mut ms: Vec<u128> = times.iter().map(Duration::as_millis).collect();
    ms.sort_unstable();
    let (min, max) = (*ms.first()?, *ms.last()?);
    let median = if ms.len() % 2 == 1 {
        ms[ms.len() / 2]
    } else {
        (ms[ms.len() / 2 - 1] + ms[ms.len() / 2]) / 2
    };
    Some(format!(
        "{} failovers, kill -9 to the new primary's promotion: min {min} ms, median {median} ms, max {max} ms",
        ms.len()
    ))
}

/// Runs the demo.
pub async fn run(opts: DemoOptions) -> Result<()> {
    let tmp = tempfile::Builder::new().prefix("quorate-demo-").tempdir()?;
    let dir = tmp.path().to_path_buf();
    let mut nodes = write_configs(&dir)?;
    println!(
        "quorate demo: 3 agents on loopback, role {ROLE:?}, files in {}",
        dir.display()
    );
    let (tx, mut rx) = mpsc::channel(1024);
    let t0 = Instant::now();
    for n in &mut nodes {
        spawn(n, &tx)?;
        // Staggered starts avoid simultaneous candidacies.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let mut primary = wait_primary(&mut rx, None, t0, opts.wait, &dir).await?;
    println!("\nprimary is {primary}. pids: {}", pids_line(&nodes));
    let result = if opts.chaos == 0 {
        if let Some(pid) = nodes.iter().find(|n| n.name == primary).and_then(|n| n.pid) {
            println!("Kill it to watch a failover:  kill -9 {pid}     (Ctrl-C stops the demo)\n");
        }
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break Ok(()),
                got = wait_primary(&mut rx, Some(&primary), t0, Duration::from_secs(3600), &dir) => {
                    match got {
                        Ok(p) => primary = p,
                        Err(e) => break Err(e),
                    }
                }
            }
        }
    } else {
        let mut times = Vec::new();
        let mut r = Ok(());
        for round in 1..=opts.chaos {
            let Some(node) = nodes.iter_mut().find(|n| n.name == primary) else {
                r = Err(anyhow::anyhow!("primary {primary} is not a demo node"));
                break;
            };
            println!(
                "\n[{:>7.2} s] round {round}: kill -9 {} (pid {})",
                t0.elapsed().as_secs_f64(),
                node.name,
                node.pid.map_or("-".to_owned(), |p| p.to_string())
            );
            let killed_at = Instant::now();
            if let Some(c) = node.child.as_mut() {
                c.start_kill()?;
                c.wait().await?;
            }
            match wait_primary(&mut rx, Some(&primary), t0, opts.wait, &dir).await {
                Ok(p) => {
                    let took = killed_at.elapsed();
                    println!(
                        "[{:>7.2} s] failover {primary} -> {p} took {} ms from the kill",
                        t0.elapsed().as_secs_f64(),
                        took.as_millis()
                    );
                    times.push(took);
                    let old = primary.clone();
                    primary = p;
                    if round == opts.chaos {
                        continue;
                    }
                    let Some(n) = nodes.iter_mut().find(|n| n.name == old) else {
                        continue;
                    };
                    spawn(n, &tx)?;
                    let pid = n.pid.unwrap_or(0);
                    println!(
                        "[{:>7.2} s] restarted {old} (pid {pid}); waiting until it has rejoined",
                        t0.elapsed().as_secs_f64()
                    );
                    // The next kill must be a single failure: the restarted node is alive to
                    // every member and its Raft log has caught up. Events are drained meanwhile.
                    let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
                    let current = primary.clone();
                    let rejoin = wait_rejoined(&dir, &names, &old, pid, &current, opts.wait);
                    tokio::pin!(rejoin);
                    loop {
                        tokio::select! {
                            r = &mut rejoin => { r?; break; }
                            Some((from, e)) = rx.recv() => {
                                if let NodeEvent::RoleChange(rc) = e {
                                    println!("{}", describe(&from, &rc, t0));
                                    if let Some(p) = rc.new_primary {
                                        primary = p;
                                    }
                                }
                            }
                        }
                    }
                    println!(
                        "[{:>7.2} s] {old} has rejoined; pids: {}",
                        t0.elapsed().as_secs_f64(),
                        pids_line(&nodes)
                    );
                }
                Err(e) => {
                    r = Err(e);
                    break;
                }
            }
        }
        if let Some(line) = summary(&times) {
            let each: Vec<String> = times.iter().map(|t| t.as_millis().to_string()).collect();
            println!("\nfailover times (ms): {}", each.join(", "));
            println!("{line}");
        }
        r
    };
    println!("\nstopping the agents");
    for n in &mut nodes {
        if let Some(pid) = n.pid {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status()
                .await;
        }
    }
    for n in &mut nodes {
        if let Some(c) = n.child.as_mut() {
            let _ = tokio::time::timeout(Duration::from_secs(10), c.wait()).await;
            let _ = c.start_kill();
        }
    }
    if let Ok(log) = std::fs::read_to_string(dir.join("actions.log")) {
        println!("hook log (actions.log):\n{log}");
    }
    if opts.keep {
        let kept = tmp.keep();
        println!("kept {}", kept.display());
    }
    result
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test")]
mod tests {
    use super::*;

    #[test]
    fn summary_gives_min_median_max() {
        let t: Vec<Duration> = [700, 500, 900, 600].map(Duration::from_millis).to_vec();
        assert_eq!(
            summary(&t).unwrap(),
            "4 failovers, kill -9 to the new primary's promotion: min 500 ms, median 650 ms, max 900 ms"
        );
        assert_eq!(summary(&[]), None);
    }

    #[test]
    fn configs_are_written_from_the_config_types_and_parse_back() {
        let dir = tempfile::tempdir().unwrap();
        let nodes = write_configs(dir.path()).unwrap();
        assert_eq!(nodes.len(), 3);
        for n in &nodes {
            let v = crate::config::load(&n.config).unwrap();
            assert_eq!(v.roles.len(), 1);
            assert_eq!(v.voters.len(), 3);
            assert_eq!(v.check_kinds, vec![crate::config::CheckKind::Disk]);
        }
    }
}
