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
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

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

fn free_port() -> Result<u16> {
    // Bind TCP and UDP on the same port so that both the Raft and gossip listener can use it.
    for _ in 0..64 {
        let t = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = t.local_addr()?.port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free loopback port found")
}

fn write_configs(dir: &Path) -> Result<Vec<Node>> {
    let key = quorate_wire::ClusterKey::generate()?.to_hex();
    let names = ["n1", "n2", "n3"];
    let mut raft = Vec::new();
    let mut gossip = Vec::new();
    for _ in names {
        raft.push(format!("127.0.0.1:{}", free_port()?));
        gossip.push(format!("127.0.0.1:{}", free_port()?));
    }
    let voters: Vec<String> = names
        .iter()
        .zip(&raft)
        .map(|(n, a)| format!("{n} = \"{a}\""))
        .collect();
    let log = dir.join("actions.log");
    let mut nodes = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let seeds: Vec<String> = gossip
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, g)| format!("\"{g}\""))
            .collect();
        let text = format!(
            r#"cluster_name = "quorate-demo"
cluster_key = "{key}"
node_id = "{name}"
data_dir = "{data}"
profile = "lan"

[raft]
listen = "{raft}"
voters = {{ {voters} }}

[gossip]
listen = "{gossip}"
seeds = [{seeds}]
bootstrap = {bootstrap}
tags = {{ failover-priority = "{priority}" }}

[[check]]
id = "data-disk"
kind = "disk"
target = "{dir}"

[[role]]
name = "{ROLE}"
on_promote = "echo \"$(date +%s.%N) $QUORATE_NODE promote token=$QUORATE_FENCING_TOKEN\" >> {log}"
on_demote = "echo \"$(date +%s.%N) $QUORATE_NODE demote token=$QUORATE_FENCING_TOKEN\" >> {log}"
"#,
            data = dir.join(name).display(),
            raft = raft[i],
            voters = voters.join(", "),
            gossip = gossip[i],
            seeds = seeds.join(", "),
            bootstrap = i == 0,
            priority = 100 - i,
            dir = dir.display(),
            log = log.display(),
        );
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, text)?;
        nodes.push(Node {
            name: (*name).to_owned(),
            config,
            child: None,
            pid: None,
        });
    }
    Ok(nodes)
}

fn spawn(node: &mut Node, tx: &mpsc::Sender<(String, Value)>) -> Result<()> {
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
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && tx.send((name.clone(), v)).await.is_err()
            {
                break;
            }
        }
    });
    node.child = Some(child);
    Ok(())
}

fn describe(from: &str, v: &Value, t0: Instant) -> String {
    let s = |k: &str| v[k].as_str().unwrap_or("-").to_owned();
    let ms = |k: &str| v[k].as_u64().map_or("-".to_owned(), |m| format!("{m} ms"));
    format!(
        "[{:>7.2} s] {}: {} -> {} ({}); detection {}, promotion {}, token {} (reported by {from})",
        t0.elapsed().as_secs_f64(),
        s("role"),
        s("old_primary"),
        s("new_primary"),
        s("cause"),
        ms("detection_ms"),
        ms("promotion_ms"),
        v["token"],
    )
}

/// Each node's health and role decision from its `status.json`, to say why nothing happened.
fn why(dir: &std::path::Path) -> String {
    let mut out = String::new();
    for name in ["n1", "n2", "n3"] {
        let line = std::fs::read_to_string(dir.join(name).join("status.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .map_or_else(
                || "no status yet".to_owned(),
                |v| {
                    format!(
                        "health {}, {}",
                        v["health"]["status"].as_str().unwrap_or("?"),
                        v["roles"][0]["last_action"].as_str().unwrap_or("?")
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
    rx: &mut mpsc::Receiver<(String, Value)>,
    not: Option<&str>,
    t0: Instant,
    wait: Duration,
    dir: &std::path::Path,
) -> Result<String> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let (from, v) = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "no new primary within {wait:?}; the nodes say (a critical check keeps a node \
                     from being a candidate):{}",
                    why(dir)
                )
            })?
            .context("all agents exited")?;
        match v["event"].as_str() {
            Some("role_change") => {
                println!("{}", describe(&from, &v, t0));
                if let Some(p) = v["new_primary"].as_str()
                    && Some(p) != not
                {
                    return Ok(p.to_owned());
                }
            }
            Some("started") if v["component"] == "failover" => {
                println!(
                    "[{:>7.2} s] {from} is up (pid {})",
                    t0.elapsed().as_secs_f64(),
                    v["pid"]
                );
            }
            _ => {}
        }
    }
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
    let pids: BTreeMap<&str, Option<u32>> =
        nodes.iter().map(|n| (n.name.as_str(), n.pid)).collect();
    println!("\nprimary is {primary}. Pids: {pids:?}");
    let result = if opts.chaos == 0 {
        if let Some(Some(pid)) = pids.get(primary.as_str()) {
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
                "\n[{:>7.2} s] round {round}: kill -9 {} (pid {:?})",
                t0.elapsed().as_secs_f64(),
                node.name,
                node.pid
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
                    if let Some(n) = nodes.iter_mut().find(|n| n.name == old) {
                        spawn(n, &tx)?;
                    }
                    // Let the restarted node rejoin before the next round.
                    tokio::time::sleep(Duration::from_secs(3)).await;
                }
                Err(e) => {
                    r = Err(e);
                    break;
                }
            }
        }
        if !times.is_empty() {
            let ms: Vec<u128> = times.iter().map(Duration::as_millis).collect();
            println!("\nfailover times from kill -9 to the new primary's promotion: {ms:?} ms");
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
    fn why_reports_each_nodes_health_and_decision() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("n1")).unwrap();
        std::fs::write(
            dir.path().join("n1").join("status.json"),
            r#"{"health":{"status":"critical"},"roles":[{"last_action":"hold: initial election, but no candidate"}]}"#,
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("n2")).unwrap();
        std::fs::write(dir.path().join("n2").join("status.json"), "{ not json").unwrap();
        let text = why(dir.path());
        assert!(
            text.contains("n1: health critical, hold: initial election, but no candidate"),
            "{text}"
        );
        assert!(text.contains("n2: no status yet"), "{text}");
        assert!(text.contains("n3: no status yet"), "{text}");
    }
}
