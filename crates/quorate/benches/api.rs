//! `cargo bench -p quorate --bench api -- [--secs S] [--trials N]` (what `cargo xtask bench
//! api` runs): three real `quorate agent` processes on loopback with an `[api]` each.
//!
//! - Throughput: `GET /role/app/primary` on the primary and `GET /metrics`, for S seconds
//!   each (default 5) at 1 and 64 keep-alive connections: requests per second and p99 latency.
//! - Role failover time, idle and under load: N kill -9 of the primary (default 5 each), from
//!   the kill to the first 200 on a survivor's `/role/app/primary`; "under load" runs the
//!   64-connection probe load against every node throughout. The median's change under load is
//!   printed (the bound is 10%).
//!
//! Figures are printed, never asserted; also written to `$QUORATE_BENCH_OUT` when set.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a benchmark prints its figures"
)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use quorate::config::{ApiSection, RoleSection};
use quorate_bench::stats::{Samples, quantile};
use quorate_testkit::agents::{LoopbackPlan, write_config};
use quorate_testkit::process::free_port;
use tokio::process::{Child, Command};

const ROLE: &str = "app";

fn spawn_agent(config: &Path) -> Result<Child> {
    Command::new(env!("CARGO_BIN_EXE_quorate"))
        .arg("agent")
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting an agent")
}

/// One keep-alive HTTP/1.1 connection.
async fn connect(addr: &str) -> Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// `GET path` on `addr`: its status, or `None` when the call failed.
async fn get(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    addr: &str,
    path: &str,
) -> Option<u16> {
    sender.ready().await.ok()?;
    let req = hyper::Request::get(path)
        .header("host", addr)
        .body(Empty::new())
        .ok()?;
    let res = sender.send_request(req).await.ok()?;
    let status = res.status().as_u16();
    res.into_body().collect().await.ok()?;
    Some(status)
}

/// `conns` connections to each of `addrs` sending `GET path` until `stop`; returns the
/// requests answered and their latencies.
async fn load(
    addrs: Vec<String>,
    path: &str,
    conns: usize,
    stop: Arc<AtomicBool>,
) -> (u64, Samples) {
    let mut tasks = Vec::new();
    for addr in &addrs {
        for _ in 0..conns {
            let (addr, path, stop) = (addr.clone(), path.to_owned(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut samples = Samples::new();
                let mut n = 0u64;
                let mut sender = None;
                while !stop.load(Ordering::Relaxed) {
                    if sender.is_none() {
                        sender = connect(&addr).await.ok();
                        if sender.is_none() {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    }
                    let t = Instant::now();
                    match get(sender.as_mut().expect("connected"), &addr, &path).await {
                        Some(_) => {
                            n += 1;
                            samples.record(t.elapsed());
                        }
                        None => sender = None,
                    }
                }
                (n, samples)
            }));
        }
    }
    let mut total = 0;
    let mut all = Samples::new();
    for t in tasks {
        if let Ok((n, s)) = t.await {
            total += n;
            all.merge(&s);
        }
    }
    (total, all)
}

async fn holder(api: &str) -> Option<String> {
    let roles = quorate::api::client::Client::new(api, None)
        .with_timeout(Duration::from_secs(1))
        .roles()
        .await
        .ok()?;
    roles.into_iter().find(|r| r.role == ROLE)?.holder
}

async fn until<T, F: AsyncFnMut() -> Option<T>>(what: &str, mut f: F) -> Result<T> {
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if let Some(t) = f().await {
                return t;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .with_context(|| format!("{what}: not within 60 s"))
}

struct Cluster {
    configs: Vec<PathBuf>,
    apis: Vec<String>,
    agents: Vec<Child>,
}

impl Cluster {
    async fn primary(&self) -> Result<usize> {
        let name = until("a primary every node sees", async || {
            let mut seen = Vec::new();
            for a in &self.apis {
                seen.push(holder(a).await?);
            }
            seen.windows(2)
                .all(|w| w[0] == w[1])
                .then(|| seen[0].clone())
        })
        .await?;
        Ok(usize::from(name.as_bytes()[1] - b'1'))
    }

    /// kill -9 of the primary; the time to the first 200 on a survivor's primary probe. The
    /// node is restarted and rejoins before this returns.
    async fn failover(&mut self) -> Result<Duration> {
        let p = self.primary().await?;
        let survivors: Vec<String> = (0..3)
            .filter(|&i| i != p)
            .map(|i| self.apis[i].clone())
            .collect();
        let t0 = Instant::now();
        self.agents[p].start_kill()?;
        let took = until("a new primary", async || {
            for a in &survivors {
                if let Ok(mut s) = connect(a).await
                    && get(&mut s, a, "/role/app/primary").await == Some(200)
                {
                    return Some(t0.elapsed());
                }
            }
            None
        })
        .await?;
        let _ = self.agents[p].wait().await;
        self.agents[p] = spawn_agent(&self.configs[p])?;
        let me = self.apis[p].clone();
        until("the restarted node ready", async || {
            let mut s = connect(&me).await.ok()?;
            (get(&mut s, &me, "/readiness").await == Some(200)).then_some(())
        })
        .await?;
        Ok(took)
    }
}

async fn run(secs: u64, trials: usize) -> Result<String> {
    let dir = tempfile::tempdir()?;
    let plan = LoopbackPlan::new("quorate-bench-api", 3, dir.path())?;
    let mut configs = Vec::new();
    let mut apis = Vec::new();
    for i in 0..3 {
        let api = format!("127.0.0.1:{}", free_port()?);
        let a = api.clone();
        configs.push(write_config(&plan, i, dir.path(), move |c| {
            c.roles.push(RoleSection {
                anti_flap_max_failovers: Some(100_000),
                ..RoleSection::named(ROLE)
            });
            c.api = Some(ApiSection {
                listen: a,
                auth: false,
                ..ApiSection::default()
            });
        })?);
        apis.push(api);
    }
    let agents = configs
        .iter()
        .map(|c| spawn_agent(c))
        .collect::<Result<Vec<_>>>()?;
    let mut cluster = Cluster {
        configs,
        apis,
        agents,
    };
    let mut out = String::new();
    let p = cluster.primary().await?;
    let primary_api = vec![cluster.apis[p].clone()];
    for (what, path) in [
        ("probe /role/app/primary", "/role/app/primary"),
        ("/metrics", "/metrics"),
    ] {
        for conns in [1, 64] {
            let stop = Arc::new(AtomicBool::new(false));
            let t0 = Instant::now();
            let run = tokio::spawn(load(primary_api.clone(), path, conns, stop.clone()));
            tokio::time::sleep(Duration::from_secs(secs)).await;
            stop.store(true, Ordering::Relaxed);
            let (n, samples) = run.await?;
            let line = format!(
                "{what:<24} {conns:>2} conn: {:>8.0} req/s, p50 {:.2} ms, p99 {:.2} ms",
                n as f64 / t0.elapsed().as_secs_f64(),
                samples.quantile_ms(0.5),
                samples.quantile_ms(0.99)
            );
            println!("{line}");
            out.push_str(&line);
            out.push('\n');
        }
    }
    let mut idle = Vec::new();
    for i in 0..trials {
        let d = cluster.failover().await?;
        println!("failover idle #{}: {} ms", i + 1, d.as_millis());
        idle.push(d);
    }
    let stop = Arc::new(AtomicBool::new(false));
    // The load runs on a runtime of its own, as it would from other processes: sharing the
    // runtime of the client that times the failover would add the 64 load tasks' queueing in
    // this process to every measured failover (they still share the machine's cores).
    let load_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("api-bench-load")
        .enable_all()
        .build()?;
    let bg = load_rt.spawn(load(
        cluster.apis.clone(),
        "/role/app/primary",
        64,
        stop.clone(),
    ));
    let mut loaded = Vec::new();
    for i in 0..trials {
        let d = cluster.failover().await?;
        println!("failover under load #{}: {} ms", i + 1, d.as_millis());
        loaded.push(d);
    }
    stop.store(true, Ordering::Relaxed);
    let (n, _) = bg.await?;
    load_rt.shutdown_background();
    let (mi, ml) = (quantile(&idle, 0.5), quantile(&loaded, 0.5));
    let line = format!(
        "role failover (kill -9 to the first 200 on a survivor), {trials} trials each: idle median {} ms p99 {} ms; under 64-connection probe load on every node ({n} requests) median {} ms p99 {} ms; median change {:+.1}%",
        mi.as_millis(),
        quantile(&idle, 0.99).as_millis(),
        ml.as_millis(),
        quantile(&loaded, 0.99).as_millis(),
        (ml.as_secs_f64() / mi.as_secs_f64().max(1e-9) - 1.0) * 100.0
    );
    println!("{line}");
    out.push_str(&line);
    out.push('\n');
    for a in &mut cluster.agents {
        let _ = a.kill().await;
    }
    Ok(out)
}

fn main() -> Result<()> {
    let (mut secs, mut trials) = (5u64, 5usize);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut num = |what: &str| -> Result<u64> {
            it.next()
                .with_context(|| format!("{what} needs a number"))?
                .parse()
                .with_context(|| format!("{what} needs a number"))
        };
        match a.as_str() {
            "--secs" => secs = num("--secs")?,
            "--trials" => trials = usize::try_from(num("--trials")?)?,
            "--bench" => {}
            other => bail!("unknown argument {other:?}; use --secs S --trials N"),
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!(
        "api bench: 3 agents on loopback, {secs} s per throughput point, {trials} failovers idle and {trials} under load"
    );
    let text = rt.block_on(run(secs, trials))?;
    if let Ok(out) = std::env::var("QUORATE_BENCH_OUT") {
        std::fs::write(&out, text).with_context(|| format!("writing {out}"))?;
    }
    Ok(())
}
