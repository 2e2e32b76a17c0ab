//! HAProxy in front of real agents under kills and partitions (issue 18's load-balancer
//! acceptance): three `quorate agent` processes, each in its own network namespace with a tiny
//! HTTP application ([`ClusterSpec::http_app`]: it answers `<node> <token>` while the role's
//! hooks say it is primary); Debian's HAProxy runs on the world's bridge with one backend
//! server per node, `option httpchk GET /role/<role>/primary` against the node's quorate API.
//! A client on the bridge sends requests through HAProxy without pause while the primary is
//! alternately killed (kill -9, then restarted) and partitioned symmetrically from its peers
//! (HAProxy still reaches it, as a load balancer outside the cut would; then healed).
//!
//! The report holds what the caller asserts: every 200 came from the node that held the role
//! at that moment, seen through the tokens (each token belongs to one node, and the tokens the
//! client sees never go back: a stale primary answering after its successor would show an
//! older token); and measures, per fault, the time until HAProxy routes to the new primary.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::world::{API_PORT, APP_PORT, BridgeConnector, Cluster, ClusterSpec, ROLE, World};

/// HAProxy's frontend port on the bridge.
const FRONT_PORT: u16 = 8000;
/// Bound on a failover being routed, and on a node rejoining.
const WAIT: Duration = Duration::from_secs(90);

/// What to run.
#[derive(Clone, Debug)]
pub struct HaproxyOptions {
    /// The `quorate` executable.
    pub agent_exe: PathBuf,
    /// The `haproxy` executable.
    pub haproxy: PathBuf,
    /// Kills of the primary (each followed by its restart).
    pub kills: usize,
    /// Symmetric partitions of the primary (each healed once HAProxy routes elsewhere).
    pub partitions: usize,
    /// Print progress lines.
    pub verbose: bool,
}

/// One answer through HAProxy: when it arrived, and the node and token of a 200.
#[derive(Clone, Debug)]
struct Seen {
    at: Instant,
    node: String,
    token: u64,
}

/// One fault and how long HAProxy took to route to the new primary.
#[derive(Clone, Debug)]
pub struct FaultRouted {
    /// `kill` or `partition`.
    pub kind: &'static str,
    /// The primary it hit.
    pub from: String,
    /// The node HAProxy routed to next.
    pub to: String,
    /// From the fault to the first 200 from the new primary, in milliseconds.
    pub routed_ms: u64,
}

/// What happened.
#[derive(Clone, Debug, Default)]
pub struct HaproxyReport {
    /// Requests sent through HAProxy.
    pub requests: u64,
    /// Of those, answered 200 (by an application that said it was primary).
    pub ok: usize,
    /// Every token seen, with the node that answered with it.
    pub terms: BTreeMap<u64, String>,
    /// Per fault.
    pub faults: Vec<FaultRouted>,
    /// Tokens answered by two nodes, and stale answers (a token older than one seen before).
    pub violations: Vec<String>,
}

fn quantile(v: &[u64], q: f64) -> u64 {
    let mut s = v.to_vec();
    s.sort_unstable();
    if s.is_empty() {
        return 0;
    }
    let i = ((s.len() as f64 * q).ceil() as usize).clamp(1, s.len()) - 1;
    s[i]
}

impl fmt::Display for HaproxyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let of = |kind: &str| -> Vec<u64> {
            self.faults
                .iter()
                .filter(|x| x.kind == kind)
                .map(|x| x.routed_ms)
                .collect()
        };
        let all: Vec<u64> = self.faults.iter().map(|x| x.routed_ms).collect();
        writeln!(
            f,
            "HAProxy in front of real agents: {} requests, {} answered 200; {} terms; {} violations",
            self.requests,
            self.ok,
            self.terms.len(),
            self.violations.len()
        )?;
        for (kind, v) in [
            ("kill", of("kill")),
            ("partition", of("partition")),
            ("all", all),
        ] {
            writeln!(
                f,
                "  fault to HAProxy routing to the new primary, {kind} ({} faults): median {} ms, p99 {} ms",
                v.len(),
                quantile(&v, 0.5),
                quantile(&v, 0.99)
            )?;
        }
        for x in &self.faults {
            writeln!(
                f,
                "  {:<9} {} -> {}: routed after {} ms",
                x.kind, x.from, x.to, x.routed_ms
            )?;
        }
        for v in &self.violations {
            writeln!(f, "  VIOLATION: {v}")?;
        }
        Ok(())
    }
}

/// One GET through HAProxy; `Some((node, token))` for a 200.
async fn get(conn: &BridgeConnector, front: std::net::SocketAddr) -> Option<(String, u64)> {
    let io = async {
        let mut s = conn.connect(front, Duration::from_millis(500)).await.ok()?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        Some(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(2), io)
        .await
        .ok()??;
    let text = String::from_utf8_lossy(&buf);
    if !text.starts_with("HTTP/1.1 200") && !text.starts_with("HTTP/1.0 200") {
        return None;
    }
    let body = text.split("\r\n\r\n").nth(1)?;
    let mut words = body.split_whitespace();
    let node = words.next()?.to_owned();
    let token = words.next()?.parse().ok()?;
    Some((node, token))
}

/// Runs the trial (needs root: network namespaces).
pub async fn haproxy_under_faults(opts: &HaproxyOptions) -> Result<HaproxyReport> {
    let size = 3;
    let mut c = Cluster::start(ClusterSpec {
        agent_exe: opts.agent_exe.clone(),
        size,
        flapping: false,
        equal_priority: true,
        verbose: opts.verbose,
        act_interval_ms: 50,
        telegram: None,
        http_app: true,
    })
    .await?;
    let servers: String = (0..size)
        .map(|i| {
            format!(
                "    server n{} {}:{APP_PORT} check port {API_PORT}\n",
                i + 1,
                World::addr(i)
            )
        })
        .collect();
    let cfg = format!(
        "global\n    maxconn 512\n\
         defaults\n    mode http\n    timeout connect 300ms\n    timeout client 5s\n    timeout server 1s\n    timeout check 300ms\n    retries 0\n\
         frontend fe\n    bind {}:{FRONT_PORT}\n    default_backend be\n\
         backend be\n    option httpchk GET /role/{ROLE}/primary\n    http-check expect status 200\n\
         \x20   default-server inter 100ms fall 1 rise 1 on-marked-down shutdown-sessions\n{servers}",
        World::BRIDGE_ADDR
    );
    let cfg_path = c.dir().join("haproxy.cfg");
    std::fs::write(&cfg_path, cfg)?;
    let mut lb = c
        .world()
        .command(&opts.haproxy.to_string_lossy())
        .arg("-db")
        .arg("-f")
        .arg(&cfg_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting haproxy in the world")?;

    let conn = c.world().bridge_connector()?;
    let front: std::net::SocketAddr = format!("{}:{FRONT_PORT}", World::BRIDGE_ADDR).parse()?;
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let stop = tokio_util_like::Stop::default();
    let client = {
        let (seen, stop, conn) = (seen.clone(), stop.clone(), conn.clone());
        tokio::spawn(async move {
            let mut sent = 0u64;
            while !stop.is_set() {
                sent += 1;
                match get(&conn, front).await {
                    Some((node, token)) => {
                        seen.lock().unwrap_or_else(|p| p.into_inner()).push(Seen {
                            at: Instant::now(),
                            node,
                            token,
                        })
                    }
                    None => tokio::time::sleep(Duration::from_millis(2)).await,
                }
            }
            sent
        })
    };
    let last = |seen: &Arc<Mutex<Vec<Seen>>>| {
        seen.lock()
            .unwrap_or_else(|p| p.into_inner())
            .last()
            .cloned()
    };
    let wait_for = async |what: &str, f: &dyn Fn(&Option<Seen>) -> bool| -> Result<Seen> {
        let deadline = Instant::now() + WAIT;
        loop {
            let l = last(&seen);
            if f(&l)
                && let Some(s) = l
            {
                return Ok(s);
            }
            if Instant::now() > deadline {
                bail!("{what}: not within {WAIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };

    let mut report = HaproxyReport::default();
    let faults = opts.kills + opts.partitions;
    let (mut kills, mut partitions) = (0, 0);
    for round in 0..faults {
        let before = wait_for("HAProxy routing to a primary", &|l| {
            l.as_ref()
                .is_some_and(|s| s.at.elapsed() < Duration::from_millis(200))
        })
        .await?;
        let p = c.index(&before.node)?;
        let kill = (round % 2 == 0 && kills < opts.kills) || partitions >= opts.partitions;
        let t0 = Instant::now();
        if kill {
            kills += 1;
            c.kill(p).await?;
        } else {
            partitions += 1;
            c.isolate_symmetric(p).await?;
        }
        let from = before.node.clone();
        let after = wait_for("HAProxy routing to the new primary", &|l| {
            l.as_ref().is_some_and(|s| s.at > t0 && s.node != from)
        })
        .await?;
        report.faults.push(FaultRouted {
            kind: if kill { "kill" } else { "partition" },
            from: before.node.clone(),
            to: after.node.clone(),
            routed_ms: u64::try_from(after.at.duration_since(t0).as_millis()).unwrap_or(u64::MAX),
        });
        // Bring the node back and let it rejoin before the next fault.
        if kill {
            let priority = c.priority(p);
            c.spawn(p, false, priority).await?;
        } else {
            c.heal_symmetric(p).await?;
        }
        let deadline = Instant::now() + WAIT;
        while c.status(p).is_none_or(|s| s.alive != size) {
            if Instant::now() > deadline {
                bail!(
                    "{} did not see every member alive within {WAIT:?}",
                    c.name(p)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    stop.set();
    report.requests = client.await.context("the client")?;
    let _ = lb.kill().await;
    c.shutdown().await?;

    let seen = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    report.ok = seen.len();
    for s in &seen {
        let o = report
            .terms
            .entry(s.token)
            .or_insert_with(|| s.node.clone());
        if *o != s.node {
            report
                .violations
                .push(format!("token {} answered by {} and {o}", s.token, s.node));
        }
    }
    for w in seen.windows(2) {
        if w[1].token < w[0].token {
            report.violations.push(format!(
                "a stale primary answered: {} (token {}) after {} (token {})",
                w[1].node, w[1].token, w[0].node, w[0].token
            ));
        }
    }
    Ok(report)
}

/// A stop flag shared with the client task.
mod tokio_util_like {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[derive(Clone, Default)]
    pub(super) struct Stop(Arc<AtomicBool>);

    impl Stop {
        pub(super) fn set(&self) {
            self.0.store(true, Ordering::Relaxed);
        }
        pub(super) fn is_set(&self) -> bool {
            self.0.load(Ordering::Relaxed)
        }
    }
}
