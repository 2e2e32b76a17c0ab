//! HAProxy (Debian's package) in front of three `quorate agent` processes on loopback, one
//! backend server per node with `option httpchk GET /role/app/primary`. The "application"
//! behind each server is the node's own primary endpoint, which answers with the node id and
//! its fencing token (200 only while its lease is valid on its own clock). A client sends
//! requests through HAProxy without pause across 10 faults of the primary, alternating
//! `kill -9` (then restart) and `SIGSTOP` (then `SIGCONT`: the stale-leader case).
//!
//! Checked: no 200 ever comes from a node that did not hold the role at that moment, seen
//! through the tokens: each token belongs to one node, and the tokens the client sees never go
//! back (a stale primary answering after its successor would show an older token). Reported
//! (never asserted): the time from each fault to the first answer HAProxy routes to the new
//! primary, median and p99. Without HAProxy the test fails under CI and says so otherwise.
//! Partitions are in `tests/chaos.rs` (`haproxy_routes_only_to_the_holder_across_kills_and_partitions`:
//! agents in network namespaces, a separate tiny application behind HAProxy).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "test"
)]

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{spawn_agent, until};
use quorate::api::client::Client;
use quorate::api::model::ProbeBody;
use quorate::config::{ApiSection, RoleSection};
use quorate_bench::stats::quantile;
use quorate_testkit::agents::{LoopbackPlan, write_config};
use quorate_testkit::process::free_port;
use tokio::process::{Child, Command};

const ROLE: &str = "app";
const FAULTS: usize = 10;

fn haproxy() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .flat_map(|p| [p.join("haproxy")])
            .chain([PathBuf::from("/usr/sbin/haproxy")])
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "haproxy is missing: install Debian's haproxy package (cargo xtask setup)"
        );
        eprintln!("haproxy is missing: the load-balancer test did not run");
    }
    found
}

/// One answer through HAProxy: when it arrived, and the node and token of a 200.
#[derive(Clone, Debug)]
struct Seen {
    at: Instant,
    node: String,
    token: u64,
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_routes_only_to_the_holder_across_faults() {
    let Some(haproxy) = haproxy() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let plan = LoopbackPlan::new("quorate-haproxy", 3, dir.path()).unwrap();
    let mut apis = Vec::new();
    let mut configs = Vec::new();
    for i in 0..3 {
        let api = format!("127.0.0.1:{}", free_port().unwrap());
        let a = api.clone();
        configs.push(
            write_config(&plan, i, dir.path(), move |c| {
                c.roles.push(RoleSection {
                    // Manual restarts of a flapping primary are the point here.
                    anti_flap_max_failovers: Some(1000),
                    ..RoleSection::named(ROLE)
                });
                c.api = Some(ApiSection {
                    listen: a,
                    auth: false,
                    ..ApiSection::default()
                });
            })
            .unwrap(),
        );
        apis.push(api);
    }
    let mut agents: Vec<Child> = configs.iter().map(|c| spawn_agent(c)).collect();

    let front = format!("127.0.0.1:{}", free_port().unwrap());
    let servers: String = apis
        .iter()
        .enumerate()
        .map(|(i, a)| format!("    server n{} {a} check\n", i + 1))
        .collect();
    let cfg = format!(
        "global\n    maxconn 512\n\
         defaults\n    mode http\n    timeout connect 300ms\n    timeout client 5s\n    timeout server 1s\n    timeout check 300ms\n    retries 0\n\
         frontend fe\n    bind {front}\n    default_backend be\n\
         backend be\n    option httpchk GET /role/{ROLE}/primary\n    http-check expect status 200\n\
         \x20   default-server inter 100ms fall 1 rise 1 on-marked-down shutdown-sessions\n{servers}"
    );
    let cfg_path = dir.path().join("haproxy.cfg");
    std::fs::write(&cfg_path, cfg).unwrap();
    let mut lb = Command::new(&haproxy)
        .arg("-db")
        .arg("-f")
        .arg(&cfg_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    // The client: one request after another through HAProxy, recording every 200.
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let client_task = {
        let (seen, stop) = (seen.clone(), stop.clone());
        let client = Client::new(&front, None).with_timeout(Duration::from_secs(2));
        tokio::spawn(async move {
            let mut sent = 0u64;
            while !stop.is_cancelled() {
                sent += 1;
                if let Ok(a) = client
                    .request(
                        hyper::Method::GET,
                        &format!("/role/{ROLE}/primary"),
                        None,
                        &[],
                    )
                    .await
                    && a.status == 200
                {
                    let b: ProbeBody = serde_json::from_slice(&a.body).unwrap();
                    let token = b.token.expect("a 200 carries the token");
                    seen.lock().unwrap().push(Seen {
                        at: Instant::now(),
                        node: b.node,
                        token,
                    });
                } else {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            sent
        })
    };
    let last = |seen: &Arc<Mutex<Vec<Seen>>>| seen.lock().unwrap().last().cloned();

    let mut fault_to_routed = Vec::new();
    for round in 0..FAULTS {
        // A primary that HAProxy routes to.
        let before = until("HAProxy routing to a primary", async || {
            last(&seen).filter(|s| s.at.elapsed() < Duration::from_millis(200))
        })
        .await;
        let p = (before.node.as_bytes()[1] - b'1') as usize;
        let pid = agents[p].id().unwrap();
        let kill = round % 2 == 0;
        let t0 = Instant::now();
        if kill {
            signal(pid, "-KILL");
        } else {
            signal(pid, "-STOP");
        }
        let after = until("HAProxy routing to the new primary", async || {
            last(&seen).filter(|s| s.at > t0 && s.node != before.node)
        })
        .await;
        fault_to_routed.push(after.at - t0);
        // Bring the node back and let it rejoin before the next fault.
        if kill {
            let _ = agents[p].wait().await;
            agents[p] = spawn_agent(&configs[p]);
        } else {
            signal(pid, "-CONT");
        }
        let me = Client::new(&apis[p], None).with_timeout(Duration::from_secs(1));
        until("the faulted node ready again", async || {
            let r = me
                .request(hyper::Method::GET, "/readiness", None, &[])
                .await
                .ok()?;
            (r.status == 200).then_some(())
        })
        .await;
        println!(
            "fault {} ({}): {} -> {}, routed after {} ms",
            round + 1,
            if kill { "kill -9" } else { "SIGSTOP" },
            before.node,
            after.node,
            (after.at - t0).as_millis()
        );
    }
    stop.cancel();
    let sent = client_task.await.unwrap();
    let _ = lb.kill().await;
    for a in &mut agents {
        let _ = a.kill().await;
    }

    let seen = seen.lock().unwrap().clone();
    // Each token belongs to exactly one node, and tokens never go back.
    let mut owner: BTreeMap<u64, String> = BTreeMap::new();
    for s in &seen {
        let o = owner.entry(s.token).or_insert_with(|| s.node.clone());
        assert_eq!(
            o, &s.node,
            "token {} answered by {} and {o}",
            s.token, s.node
        );
    }
    for w in seen.windows(2) {
        assert!(
            w[1].token >= w[0].token,
            "a stale primary answered: {} (token {}) after {} (token {})",
            w[1].node,
            w[1].token,
            w[0].node,
            w[0].token
        );
    }
    assert!(
        owner.len() > FAULTS,
        "every fault changed the holder: {owner:?}"
    );
    println!(
        "{} requests, {} answered 200 by the holder; {} terms; fault to HAProxy routing to the new primary over {FAULTS} faults: median {} ms, p99 {} ms",
        sent,
        seen.len(),
        owner.len(),
        quantile(&fault_to_routed, 0.5).as_millis(),
        quantile(&fault_to_routed, 0.99).as_millis()
    );
}
