//! Redis failover, side by side: the same three real `redis-server`s (fresh ones per side, on
//! loopback) managed by three `quorate agent`s with a `[redis]` section, then by three
//! `redis-sentinel`s (quorum 2) with Sentinel's defaults and then tuned
//! (`down-after-milliseconds 1000`, `failover-timeout 3000`).
//!
//! One trial: wait until the cluster is settled (one master, two replicas with their link up,
//! every discovery endpoint naming the master); kill -9 the primary's node (its Redis, and its
//! agent or Sentinel); a client then tries `SET` on each surviving server every 10 ms. Measured
//! from the kill: **write** = until a `SET` is acknowledged by a new master; **discovery** =
//! until a surviving discovery endpoint (quorate's Sentinel-compatible listener, or a real
//! Sentinel) names the new master. Then the node is restarted (empty: no persistence) and
//! rejoins before the next trial.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use quorate_redis::info::{Replication, parse_replication};
use quorate_testkit::redis::{ManagedRedis, RedisServer, Sentinel};

use crate::stats::Samples;

/// What to run.
#[derive(Clone, Debug)]
pub struct RedisBenchOptions {
    /// The `quorate` binary the agents run.
    pub agent_exe: PathBuf,
    /// Trials managed by quorate.
    pub quorate_trials: u32,
    /// Trials with Sentinel tuned.
    pub tuned_trials: u32,
    /// Trials with Sentinel's defaults (about 30 s each).
    pub default_trials: u32,
    /// Print each trial.
    pub verbose: bool,
}

/// One side's figures.
#[derive(Clone, Debug)]
pub struct SideReport {
    /// Which side.
    pub name: String,
    /// Kill to the first acknowledged write on the new master.
    pub write: Samples,
    /// Kill to a discovery endpoint naming the new master.
    pub discovery: Samples,
    /// Trials whose failover did not finish within the trial deadline.
    pub failed: u32,
}

impl SideReport {
    fn new(name: &str) -> Self {
        SideReport {
            name: name.to_owned(),
            write: Samples::new(),
            discovery: Samples::new(),
            failed: 0,
        }
    }
}

/// The whole run.
#[derive(Clone, Debug, Default)]
pub struct RedisBenchReport {
    /// quorate, Sentinel tuned, Sentinel defaults (those that ran).
    pub sides: Vec<SideReport>,
}

impl fmt::Display for RedisBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "kill -9 of the Redis primary's node -> first acknowledged write on the new master (ms)"
        )?;
        writeln!(
            f,
            "{:<28} {:>6} {:>10} {:>10} {:>10} {:>14} {:>14}",
            "side",
            "trials",
            "write p50",
            "write p99",
            "write max",
            "discovery p50",
            "discovery p99"
        )?;
        for s in &self.sides {
            writeln!(
                f,
                "{:<28} {:>6} {:>10.0} {:>10.0} {:>10.0} {:>14.0} {:>14.0}{}",
                s.name,
                s.write.len(),
                s.write.quantile_ms(0.5),
                s.write.quantile_ms(0.99),
                s.write.quantile_ms(1.0),
                s.discovery.quantile_ms(0.5),
                s.discovery.quantile_ms(0.99),
                if s.failed > 0 {
                    format!("  ({} trials did not fail over)", s.failed)
                } else {
                    String::new()
                }
            )?;
        }
        if let Some(q) = self.sides.first().filter(|s| !s.write.is_empty()) {
            for s in self.sides.iter().skip(1).filter(|s| !s.write.is_empty()) {
                writeln!(
                    f,
                    "quorate vs {}: median write {:.1}x faster, p99 {:.1}x",
                    s.name,
                    s.write.quantile_ms(0.5) / q.write.quantile_ms(0.5).max(0.001),
                    s.write.quantile_ms(0.99) / q.write.quantile_ms(0.99).max(0.001),
                )?;
            }
        }
        Ok(())
    }
}

async fn conn(port: u16) -> Option<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).ok()?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Duration::from_millis(200))
        .set_response_timeout(Duration::from_millis(300));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .ok()
}

async fn info(port: u16) -> Option<Replication> {
    let mut c = conn(port).await?;
    let text: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(&mut c)
        .await
        .ok()?;
    parse_replication(&text).ok()
}

async fn write(port: u16) -> bool {
    let Some(mut c) = conn(port).await else {
        return false;
    };
    let r: Result<Result<String, _>, _> = tokio::time::timeout(
        Duration::from_millis(300),
        redis::cmd("SET").arg("bench").arg("1").query_async(&mut c),
    )
    .await;
    matches!(r, Ok(Ok(s)) if s == "OK")
}

/// The master's port as the discovery endpoint on `port` names it.
async fn discovered(port: u16) -> Option<u16> {
    let mut c = conn(port).await?;
    let v: Option<Vec<String>> = redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg("mymaster")
        .query_async(&mut c)
        .await
        .ok()?;
    v?.get(1)?.parse().ok()
}

/// The master's index when `servers` (indices into `ports`) are one master and replicas with
/// their link up, and every endpoint in `endpoints` names that master.
async fn settled(ports: &[u16], servers: &[usize], endpoints: &[u16]) -> Option<usize> {
    let mut master = None;
    for &i in servers {
        let r = info(ports[i]).await?;
        if r.master {
            if master.is_some() {
                return None;
            }
            master = Some(i);
        }
    }
    let m = master?;
    for &i in servers.iter().filter(|&&i| i != m) {
        let r = info(ports[i]).await?;
        if r.following != Some(("127.0.0.1".to_owned(), ports[m])) || !r.link_up {
            return None;
        }
    }
    for &e in endpoints {
        if discovered(e).await? != ports[m] {
            return None;
        }
    }
    Some(m)
}

async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = probe().await {
            return Ok(v);
        }
        if Instant::now() > end {
            bail!("{what}: not within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Measures one failover after the kill at `t0`: write and discovery times, or `None` when
/// no new master took a write within `limit`.
async fn measure(
    t0: Instant,
    ports: &[u16],
    survivors: &[usize],
    endpoints: &[u16],
    old_port: u16,
    limit: Duration,
) -> Option<(Duration, Duration)> {
    let (mut wrote, mut found) = (None, None);
    while t0.elapsed() < limit && (wrote.is_none() || found.is_none()) {
        if wrote.is_none() {
            for &i in survivors {
                if write(ports[i]).await {
                    wrote = Some(t0.elapsed());
                    break;
                }
            }
        }
        if found.is_none() {
            for &e in endpoints {
                if discovered(e)
                    .await
                    .is_some_and(|p| p != old_port && survivors.iter().any(|&i| ports[i] == p))
                {
                    found = Some(t0.elapsed());
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Some((wrote?, found.unwrap_or(limit)))
}

#[allow(
    clippy::print_stdout,
    reason = "a benchmark's progress lines, only with `verbose`"
)]
fn record(side: &mut SideReport, r: Option<(Duration, Duration)>, trial: u32, verbose: bool) {
    match r {
        Some((w, d)) => {
            side.write.record(w);
            side.discovery.record(d);
            if verbose {
                println!(
                    "  {} trial {trial}: write {} ms, discovery {} ms",
                    side.name,
                    w.as_millis(),
                    d.as_millis()
                );
            }
        }
        None => {
            side.failed += 1;
            if verbose {
                println!("  {} trial {trial}: no failover", side.name);
            }
        }
    }
}

/// The quorate side.
async fn quorate_side(o: &RedisBenchOptions, dir: &Path) -> Result<SideReport> {
    let mut side = SideReport::new("quorate");
    let mut m = ManagedRedis::start(dir, 3, &o.agent_exe, |_, _| {})
        .context("starting 3 redis-servers and 3 quorate agents")?;
    let all = [0usize, 1, 2];
    for trial in 1..=o.quorate_trials {
        let ports: Vec<u16> = m.servers.iter().map(|s| s.port).collect();
        let endpoints = m.sentinel_ports.clone();
        let p = wait_for("quorate: cluster settled", Duration::from_secs(60), || {
            settled(&ports, &all, &endpoints)
        })
        .await?;
        let survivors: Vec<usize> = all.iter().copied().filter(|&i| i != p).collect();
        let live_endpoints: Vec<u16> = survivors.iter().map(|&i| endpoints[i]).collect();
        let t0 = Instant::now();
        m.kill_node(p);
        let r = measure(
            t0,
            &ports,
            &survivors,
            &live_endpoints,
            ports[p],
            Duration::from_secs(60),
        )
        .await;
        record(&mut side, r, trial, o.verbose);
        m.restart_node(p).context("restarting the killed node")?;
    }
    Ok(side)
}

/// One Sentinel side: fresh servers (node 0 the first master), three Sentinels with
/// `settings` (lines for `mymaster`).
async fn sentinel_side(
    name: &str,
    trials: u32,
    settings: &[String],
    dir: &Path,
    verbose: bool,
    limit: Duration,
) -> Result<SideReport> {
    let mut side = SideReport::new(name);
    let free = quorate_testkit::process::free_port;
    let first = free()?;
    let mut servers = vec![RedisServer::start(&dir.join("redis-0"), first, &[])?];
    for i in 1..3 {
        let port = free()?;
        let master = first.to_string();
        servers.push(RedisServer::start(
            &dir.join(format!("redis-{i}")),
            port,
            &["--replicaof", "127.0.0.1", &master],
        )?);
    }
    let ports: Vec<u16> = servers.iter().map(|s| s.port).collect();
    let sentinel_ports: Vec<u16> = (0..3).map(|_| free()).collect::<Result<_, _>>()?;
    let mut sentinels = Vec::new();
    for (i, sp) in sentinel_ports.iter().enumerate() {
        sentinels.push(Sentinel::start(
            &dir.join(format!("sentinel-{i}")),
            *sp,
            "mymaster",
            first,
            settings,
        )?);
    }
    let all = [0usize, 1, 2];
    for trial in 1..=trials {
        // Settled, and every Sentinel knows the two replicas and the two other Sentinels
        // (otherwise a kill could leave too few to authorise a failover).
        // With Sentinel's defaults a returning node can take minutes to be reconfigured.
        let p = wait_for(
            &format!("{name}: cluster settled"),
            Duration::from_secs(120).max(limit * 2),
            || async {
                let p = settled(&ports, &all, &sentinel_ports).await?;
                for &sp in &sentinel_ports {
                    let mut c = conn(sp).await?;
                    let v: Vec<String> = redis::cmd("SENTINEL")
                        .arg("master")
                        .arg("mymaster")
                        .query_async(&mut c)
                        .await
                        .ok()?;
                    let field = |k: &str| {
                        v.iter()
                            .position(|x| x == k)
                            .and_then(|i| v.get(i + 1))
                            .cloned()
                            .unwrap_or_default()
                    };
                    if field("num-other-sentinels") != "2" || field("flags") != "master" {
                        return None;
                    }
                    let replicas: Vec<Vec<String>> = redis::cmd("SENTINEL")
                        .arg("replicas")
                        .arg("mymaster")
                        .query_async(&mut c)
                        .await
                        .ok()?;
                    let healthy = replicas
                        .iter()
                        .filter(|r| {
                            r.iter()
                                .position(|x| x == "flags")
                                .and_then(|i| r.get(i + 1))
                                .is_some_and(|f| f == "slave")
                        })
                        .count();
                    if healthy != 2 {
                        return None;
                    }
                }
                Some(p)
            },
        )
        .await?;
        let survivors: Vec<usize> = all.iter().copied().filter(|&i| i != p).collect();
        let live_endpoints: Vec<u16> = survivors.iter().map(|&i| sentinel_ports[i]).collect();
        let t0 = Instant::now();
        servers[p].kill();
        sentinels[p].kill();
        let r = measure(t0, &ports, &survivors, &live_endpoints, ports[p], limit).await;
        record(&mut side, r, trial, verbose);
        // The node comes back: its Redis empty (a master until a Sentinel converts it), its
        // Sentinel with the config file it rewrote.
        servers[p].restart()?;
        sentinels[p] = Sentinel::restart(&dir.join(format!("sentinel-{p}")), sentinel_ports[p])?;
    }
    Ok(side)
}

/// Runs the three sides in order (those with trials).
pub async fn run(o: &RedisBenchOptions) -> Result<RedisBenchReport> {
    let dir = tempfile::tempdir().context("temp dir")?;
    let mut report = RedisBenchReport::default();
    if o.quorate_trials > 0 {
        report
            .sides
            .push(quorate_side(o, &dir.path().join("quorate")).await?);
    }
    let tuned = vec![
        "sentinel down-after-milliseconds mymaster 1000".to_owned(),
        "sentinel failover-timeout mymaster 3000".to_owned(),
    ];
    if o.tuned_trials > 0 {
        report.sides.push(
            sentinel_side(
                "sentinel (tuned: 1 s / 3 s)",
                o.tuned_trials,
                &tuned,
                &dir.path().join("tuned"),
                o.verbose,
                Duration::from_secs(60),
            )
            .await?,
        );
    }
    if o.default_trials > 0 {
        report.sides.push(
            sentinel_side(
                "sentinel (defaults: 30 s)",
                o.default_trials,
                &[],
                &dir.path().join("defaults"),
                o.verbose,
                Duration::from_secs(240),
            )
            .await?,
        );
    }
    Ok(report)
}
