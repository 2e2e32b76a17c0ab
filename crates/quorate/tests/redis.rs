//! The Redis adapter (`quorate-redis`) end to end: three real `quorate agent` processes, each
//! managing its own real `redis-server` (Debian package `redis-server`; a missing binary fails
//! the test) on loopback ports in a temporary directory.
//!
//! - one master is elected, the others replicate from it, the fencing token is in the
//!   `quorate:fencing-token` key, and every node's Sentinel-compatible listener names it;
//! - a graceful demotion (SIGTERM of the primary's agent), a kill -9 of the primary's agent
//!   alone (its Redis keeps running) and a kill -9 of the primary's whole node each fail over;
//!   the old master never acknowledges a write invoked after the new master acknowledged one
//!   (monotonic client timestamps), the token grows, exactly one master remains, and the old
//!   server ends up replicating from the new master;
//! - a replica whose replication offset falls behind `max_lag_bytes` is passed over.
//!
//! Real time: every wait polls with a generous deadline; nothing asserts a duration.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "test"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use quorate_redis::info::{Replication, parse_replication};
use quorate_testkit::redis::ManagedRedis;
use redis::aio::MultiplexedConnection;

const DEADLINE: Duration = Duration::from_secs(60);

async fn conn(port: u16) -> Option<MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).ok()?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Duration::from_millis(300))
        .set_response_timeout(Duration::from_millis(500));
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

async fn get(port: u16, key: &str) -> Option<String> {
    let mut c = conn(port).await?;
    redis::cmd("GET").arg(key).query_async(&mut c).await.ok()?
}

async fn set(port: u16, key: &str, value: &str) -> bool {
    let Some(mut c) = conn(port).await else {
        return false;
    };
    let r: Result<String, _> = tokio::time::timeout(
        Duration::from_millis(500),
        redis::cmd("SET").arg(key).arg(value).query_async(&mut c),
    )
    .await
    .unwrap_or_else(|_| {
        Err(redis::RedisError::from((
            redis::ErrorKind::IoError,
            "timeout",
        )))
    });
    r.is_ok_and(|s| s == "OK")
}

async fn token(port: u16) -> Option<u64> {
    get(port, "quorate:fencing-token").await?.parse().ok()
}

/// What the Sentinel-compatible listener on `port` says the master is.
async fn sentinel_master(port: u16) -> Option<String> {
    let mut c = conn(port).await?;
    let v: Option<Vec<String>> = redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg("mymaster")
        .query_async(&mut c)
        .await
        .ok()?;
    let v = v?;
    Some(format!("{}:{}", v.first()?, v.get(1)?))
}

/// Polls `probe` every 50 ms until it returns `Some` or `DEADLINE` passes (then panics with
/// `what` and the agents' logs).
async fn until<T, F, Fut>(m: &ManagedRedis, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        if Instant::now() > end {
            let logs: Vec<String> = (0..m.names.len())
                .map(|i| {
                    let l = m.agent_log(i);
                    let tail: Vec<&str> = l.lines().rev().take(40).collect();
                    format!(
                        "--- {} ---\n{}",
                        m.names[i],
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    )
                })
                .collect();
            panic!("{what}: not within {DEADLINE:?}\n{}", logs.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The index of the one master that the given live nodes' listeners all name, that says it
/// is a master, whose live peers replicate from it, and that takes a write.
async fn settled_master(m: &ManagedRedis, live: &[usize]) -> Option<usize> {
    settled_master_seen_by(m, live, live).await
}

/// As [`settled_master`], asking only the listeners of `agents` (nodes whose agent runs).
async fn settled_master_seen_by(
    m: &ManagedRedis,
    live: &[usize],
    agents: &[usize],
) -> Option<usize> {
    let mut named = None;
    for &i in agents {
        let a = sentinel_master(m.sentinel_ports[i]).await?;
        if named.get_or_insert_with(|| a.clone()) != &a {
            return None;
        }
    }
    let named = named?;
    let p = live
        .iter()
        .copied()
        .find(|&i| m.servers[i].addr() == named)?;
    let port = m.servers[p].port;
    if !info(port).await?.master {
        return None;
    }
    for &i in live.iter().filter(|&&i| i != p) {
        let r = info(m.servers[i].port).await?;
        if r.master || r.following != Some(("127.0.0.1".to_owned(), port)) || !r.link_up {
            return None;
        }
    }
    set(port, "probe", "x").await.then_some(p)
}

/// How many of the `live` servers say they are a master.
async fn masters(m: &ManagedRedis, live: &[usize]) -> usize {
    let mut n = 0;
    for &i in live {
        if info(m.servers[i].port).await.is_some_and(|r| r.master) {
            n += 1;
        }
    }
    n
}

fn start(
    dir: &std::path::Path,
    customize: impl Fn(usize, &mut quorate::config::AgentConfig),
) -> ManagedRedis {
    ManagedRedis::start(
        dir,
        3,
        std::path::Path::new(env!("CARGO_BIN_EXE_quorate")),
        customize,
    )
    .expect("start 3 redis-servers and 3 agents (needs the Debian package redis-server)")
}

/// One write attempt against a server: when it was invoked and when its answer came, on this
/// process's monotonic clock, and whether it was acknowledged (`OK`).
#[derive(Clone, Copy, Debug)]
struct Attempt {
    invoked: Instant,
    answered: Instant,
    ok: bool,
}

/// Writes sequential keys to `port` until `stop`, one at a time, each bounded by a timeout.
fn writer(port: u16, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<Attempt>> {
    tokio::spawn(async move {
        let mut out = Vec::new();
        let mut c = None;
        let mut i = 0u64;
        while !stop.load(Ordering::SeqCst) {
            if c.is_none() {
                c = conn(port).await;
            }
            let invoked = Instant::now();
            let ok = match c.as_mut() {
                Some(conn) => {
                    let r: Result<Result<String, _>, _> = tokio::time::timeout(
                        Duration::from_millis(300),
                        redis::cmd("SET")
                            .arg(format!("w:{i}"))
                            .arg(i)
                            .query_async(conn),
                    )
                    .await;
                    match r {
                        Ok(Ok(s)) => s == "OK",
                        Ok(Err(e)) => {
                            // A refusal (READONLY) keeps the connection; a broken one is
                            // dropped. Either way, pace the retries.
                            if e.code().is_none() {
                                c = None;
                            }
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            false
                        }
                        Err(_) => {
                            c = None;
                            false
                        }
                    }
                }
                None => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    false
                }
            };
            out.push(Attempt {
                invoked,
                answered: Instant::now(),
                ok,
            });
            i += 1;
        }
        out
    })
}

/// Runs `fault` against the settled master `old` while a writer hammers it; waits for a new
/// master among `live` (which excludes `old` when its node is gone); returns it. Checks that
/// the old server acknowledged no write invoked after the new master's first acknowledged
/// write, that the token grew, and that exactly one master remains.
async fn failover_with_writer(
    m: &mut ManagedRedis,
    old: usize,
    live: &[usize],
    fault: impl FnOnce(&mut ManagedRedis),
) -> usize {
    eprintln!("failover from {}", m.names[old]);
    let old_port = m.servers[old].port;
    let old_token = token(old_port).await.expect("the master holds a token");
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(old_port, stop.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;
    fault(m);
    // The new master: the first write it acknowledges (answered time), probed every few ms
    // on held connections, so that the instant is close to the promotion.
    let candidates: Vec<usize> = live.iter().copied().filter(|&i| i != old).collect();
    let mut held: Vec<Option<MultiplexedConnection>> = Vec::new();
    for &i in &candidates {
        held.push(conn(m.servers[i].port).await);
    }
    let end = Instant::now() + DEADLINE;
    let (new, first_ack) = 'found: loop {
        for (k, &i) in candidates.iter().enumerate() {
            if held[k].is_none() {
                held[k] = conn(m.servers[i].port).await;
            }
            if let Some(c) = held[k].as_mut() {
                let r: Result<Result<String, _>, _> = tokio::time::timeout(
                    Duration::from_millis(300),
                    redis::cmd("SET").arg("after").arg(1).query_async(c),
                )
                .await;
                match r {
                    Ok(Ok(s)) if s == "OK" => break 'found (i, Instant::now()),
                    Ok(Err(e)) if e.code().is_some() => {}
                    _ => held[k] = None,
                }
            }
        }
        assert!(
            Instant::now() < end,
            "no new master took a write within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    eprintln!("new master {}", m.names[new]);
    // Keep writing to the old server a while after the new master took writes.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::SeqCst);
    let attempts = w.await.unwrap();
    let late: Vec<&Attempt> = attempts
        .iter()
        .filter(|a| a.ok && a.invoked > first_ack)
        .collect();
    assert!(
        late.is_empty(),
        "the old master acknowledged {} writes invoked after the new master acknowledged one (first: {:?} after)",
        late.len(),
        late.first().map(|a| a.invoked - first_ack)
    );
    assert!(
        attempts.iter().any(|a| a.ok),
        "the writer never reached the old master"
    );
    let _ = attempts.last().map(|a| a.answered);
    eprintln!(
        "{} attempts on the old master, {} acknowledged",
        attempts.len(),
        attempts.iter().filter(|a| a.ok).count()
    );
    let new_token = until(m, "the new master's token", || token(m.servers[new].port)).await;
    assert!(new_token > old_token, "token {new_token} after {old_token}");
    let agents: Vec<usize> = live.iter().copied().filter(|&i| i != old).collect();
    let settled = until(m, "the cluster settles on the new master", || {
        settled_master_seen_by(m, live, &agents)
    })
    .await;
    assert_eq!(settled, new);
    assert_eq!(
        masters(m, live).await,
        1,
        "exactly one master among {live:?}"
    );
    new
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_master_replicas_follow_token_visible_and_sentinel_clients_find_it() {
    let dir = tempfile::tempdir().unwrap();
    let m = start(dir.path(), |_, _| {});
    let all = [0, 1, 2];
    let p = until(&m, "one master settled", || settled_master(&m, &all)).await;
    let port = m.servers[p].port;
    assert_eq!(masters(&m, &all).await, 1);
    let t = token(port).await.expect("token key on the master");
    assert!(t > 0);
    assert!(set(port, "hello", "world").await);
    for i in all.into_iter().filter(|&i| i != p) {
        let rp = m.servers[i].port;
        until(&m, "a replica has the write", || async {
            (get(rp, "hello").await.as_deref() == Some("world")).then_some(())
        })
        .await;
        assert_eq!(token(rp).await, Some(t), "the token is replicated");
        assert!(!set(rp, "x", "1").await, "a replica refuses writes");
    }
    // Sentinel's other commands answer from the same view.
    let mut c = conn(m.sentinel_ports[0]).await.unwrap();
    let masters: Vec<Vec<String>> = redis::cmd("SENTINEL")
        .arg("masters")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(masters.len(), 1);
    assert_eq!(masters[0][1], "mymaster");
    let pong: String = redis::cmd("PING").query_async(&mut c).await.unwrap();
    assert_eq!(pong, "PONG");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demotion_agent_crash_and_node_crash_fail_over_without_late_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = start(dir.path(), |_, _| {});
    let all = [0, 1, 2];
    let p0 = until(&m, "one master settled", || settled_master(&m, &all)).await;

    // 1. Graceful demotion: SIGTERM of the primary's agent hands the role over; its Redis
    //    pauses writes at once and then follows the new master.
    let p1 = failover_with_writer(&mut m, p0, &all, |m| {
        m.stop_agent(p0, Duration::from_secs(30));
    })
    .await;
    assert_ne!(p1, p0);
    m.start_agent(p0).unwrap();
    until(&m, "all three settled again", || settled_master(&m, &all)).await;

    // 2. kill -9 of the primary's agent alone: its Redis keeps running and is fenced by the
    //    new primary (paused, then made a replica).
    let p2 = failover_with_writer(&mut m, p1, &all, |m| m.kill_agent(p1)).await;
    assert_ne!(p2, p1);
    m.start_agent(p1).unwrap();
    until(&m, "all three settled again", || settled_master(&m, &all)).await;

    // 3. kill -9 of the primary's whole node (agent and Redis).
    let live: Vec<usize> = all.into_iter().filter(|&i| i != p2).collect();
    let p3 = failover_with_writer(&mut m, p2, &live, |m| m.kill_node(p2)).await;
    assert_ne!(p3, p2);
    // The node comes back empty and rejoins as a replica of the new master.
    m.restart_node(p2).unwrap();
    let back = until(&m, "the restarted node rejoins", || {
        settled_master(&m, &all)
    })
    .await;
    assert_eq!(back, p3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_too_far_behind_is_passed_over() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = start(dir.path(), |_, c| {
        if let Some(r) = c.redis.as_mut() {
            r.max_lag_bytes = Some(4096);
        }
    });
    let all = [0, 1, 2];
    let p = until(&m, "one master settled", || settled_master(&m, &all)).await;
    let others: Vec<usize> = all.into_iter().filter(|&i| i != p).collect();
    // Hold back one replica: a replica whose clients are paused does not advance its
    // reported replication offset.
    let (behind, good) = (others[0], others[1]);
    let mut c = conn(m.servers[behind].port).await.unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(120_000)
        .arg("WRITE")
        .query_async(&mut c)
        .await
        .unwrap();
    let big = "v".repeat(8192);
    for i in 0..8 {
        assert!(set(m.servers[p].port, &format!("big:{i}"), &big).await);
    }
    let (pp, bp, gp) = (
        m.servers[p].port,
        m.servers[behind].port,
        m.servers[good].port,
    );
    until(
        &m,
        "the held-back replica is more than 4 KiB behind, the other caught up",
        || async {
            let (pi, bi, gi) = (info(pp).await?, info(bp).await?, info(gp).await?);
            (pi.offset.saturating_sub(bi.offset) > 4096 && gi.offset == pi.offset).then_some(())
        },
    )
    .await;
    // Give the agents' lag sources a few polls to see it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    m.kill_node(p);
    let live = [behind, good];
    let new = until(&m, "a new master", || async {
        for &i in &live {
            if info(m.servers[i].port).await.is_some_and(|r| r.master)
                && set(m.servers[i].port, "after", "1").await
            {
                return Some(i);
            }
        }
        None
    })
    .await;
    assert_eq!(
        new, good,
        "the replica that was behind must not be promoted"
    );
    let log = m.agent_log(behind);
    assert!(
        !log.contains("redis: promoted to master"),
        "the lagging node promoted itself"
    );
    let _: () = redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query_async(&mut c)
        .await
        .unwrap();
    let settled = until(&m, "the held-back replica follows the new master", || {
        settled_master(&m, &live)
    })
    .await;
    assert_eq!(settled, good);
}

/// `cargo xtask bench redis` still works: one trial managed by quorate and one by tuned
/// Sentinel (Debian package `redis-sentinel`); the figures are printed, never asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_bench_runs_tiny() {
    let o = quorate_bench::redis::RedisBenchOptions {
        agent_exe: std::path::PathBuf::from(env!("CARGO_BIN_EXE_quorate")),
        quorate_trials: 1,
        tuned_trials: 1,
        default_trials: 0,
        verbose: true,
    };
    let report = quorate_bench::redis::run(&o).await.unwrap();
    println!("{report}");
    assert_eq!(report.sides.len(), 2);
    for s in &report.sides {
        assert_eq!(s.write.len() + u64::from(s.failed), 1, "{}", s.name);
    }
}

/// Acknowledged-write mode (`min_replicas_to_write = 2`): the master is configured by the
/// adapter, `WAIT 2` confirms both replicas, and with one replica's node gone the master
/// refuses writes (`NOREPLICAS`) instead of acknowledging what a failover could lose.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_write_mode_refuses_writes_without_enough_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = start(dir.path(), |_, c| {
        if let Some(r) = c.redis.as_mut() {
            r.min_replicas_to_write = Some(2);
            r.min_replicas_max_lag = Some(Duration::from_secs(1));
        }
    });
    let all = [0, 1, 2];
    let p = until(&m, "one master settled", || settled_master(&m, &all)).await;
    let port = m.servers[p].port;
    let mut c = conn(port).await.unwrap();
    let got: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("min-replicas-to-write")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(
        got,
        vec!["min-replicas-to-write".to_owned(), "2".to_owned()]
    );
    let _: String = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query_async(&mut c)
        .await
        .unwrap();
    let acked: i64 = redis::cmd("WAIT")
        .arg(2)
        .arg(5000)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(acked, 2, "both replicas acknowledged the write");
    let replica = all.into_iter().find(|&i| i != p).unwrap();
    m.kill_node(replica);
    let refusal = until(
        &m,
        "the master refuses writes with one replica gone",
        || async {
            let mut c = conn(port).await?;
            match redis::cmd("SET")
                .arg("k2")
                .arg("v")
                .query_async::<String>(&mut c)
                .await
            {
                Err(e) if e.code() == Some("NOREPLICAS") => Some(e.to_string()),
                _ => None,
            }
        },
    )
    .await;
    assert!(refusal.contains("NOREPLICAS"), "{refusal}");
    assert!(
        info(port).await.unwrap().master,
        "the primary kept its role"
    );
}

/// A real Sentinel-aware client, unchanged: redis-py's `Sentinel` (Debian package
/// `python3-redis`, run with Debian's `/usr/bin/python3`) pointed at the agents' listeners
/// finds the master, writes through it, discovers the replicas, and after a kill -9 of the
/// master's node finds the new master and no longer offers the dead server as a replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_sentinel_client_works_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = start(dir.path(), |_, _| {});
    let all = [0, 1, 2];
    let p = until(&m, "one master settled", || settled_master(&m, &all)).await;
    let script = r#"
import sys, time
from redis.sentinel import Sentinel
ports = [int(p) for p in sys.argv[1].split(",")]
s = Sentinel([("127.0.0.1", p) for p in ports], socket_timeout=0.5)
host, port = s.discover_master("mymaster")
print("master", port)
master = s.master_for("mymaster", socket_timeout=0.5)
master.set(sys.argv[2], "from-python")
print("replicas", len(s.discover_slaves("mymaster")))
"#;
    let run = |ports: Vec<u16>, key: &str| {
        let ports = ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let out = std::process::Command::new("/usr/bin/python3")
            .args(["-c", script, &ports, key])
            .output()
            .expect("run /usr/bin/python3 (Debian packages python3 and python3-redis)");
        assert!(
            out.status.success(),
            "redis-py Sentinel client failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = run(m.sentinel_ports.clone(), "py1");
    assert!(
        out.contains(&format!("master {}", m.servers[p].port)),
        "{out}"
    );
    assert!(out.contains("replicas 2"), "{out}");
    assert_eq!(
        get(m.servers[p].port, "py1").await.as_deref(),
        Some("from-python")
    );
    m.kill_node(p);
    let live: Vec<usize> = all.into_iter().filter(|&i| i != p).collect();
    let new = until(&m, "a new master settled", || settled_master(&m, &live)).await;
    let ports: Vec<u16> = live.iter().map(|&i| m.sentinel_ports[i]).collect();
    let out = run(ports, "py2");
    assert!(
        out.contains(&format!("master {}", m.servers[new].port)),
        "{out}"
    );
    // The dead node's server is listed as down, so the client offers one replica for reads.
    assert!(out.contains("replicas 1"), "{out}");
    assert_eq!(
        get(m.servers[new].port, "py2").await.as_deref(),
        Some("from-python")
    );
}
