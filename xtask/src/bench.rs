//! `cargo xtask bench NAME`: benchmarks that print figures (never asserted in tests).
//!
//! Each benchmark is a binary of the test-only crate `quorate-bench` (or, for the failover
//! benchmark, a `[[bench]]` target of `quorate`, which Cargo builds with the binary it drives),
//! run in release; xtask names them so there is one entry point. Output also goes to
//! `target/bench-NAME.txt` (in `CARGO_TARGET_DIR` when set).

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::phases::root;

/// `(name, package, target, what it reports)`: `target` is a binary of `package`, or
/// `bench:NAME` for a `[[bench]]` target (built by Cargo with the binary it drives).
const BENCHES: &[(&str, &str, &str, &str)] = &[
    (
        "wire",
        "quorate-bench",
        "bench_wire",
        "seal and open throughput per frame size",
    ),
    (
        "health",
        "quorate-bench",
        "bench_health",
        "monitor CPU per 1,000 checks/s and scheduling lateness (args: checks interval_ms seconds)",
    ),
    (
        "checker",
        "quorate-sim",
        "check_bench",
        "linearizability checker on a generated history (args: ops keys processes seed)",
    ),
    (
        "membership",
        "quorate-bench",
        "bench_membership",
        "simulated detection time, traffic, convergence and false downs for N = 8..512",
    ),
    (
        "coord",
        "quorate-bench",
        "bench_raft",
        "3-node quorate-raft on loopback: write/read throughput and latency, failover; `coord --vs etcd` runs the side-by-side",
    ),
    (
        "coord-vs-etcd",
        "quorate-bench",
        "bench_coord_vs_etcd",
        "3 quorate agents vs 3 etcd members, interleaved: writes, reads, locks, kill -9 failover, RSS",
    ),
    (
        "failover",
        "quorate",
        "bench:failover",
        "3 agents in network namespaces (root): 20 kill -9, 20 partition, 10 kill -9 of primary+Raft leader, 10 min of flapping checks",
    ),
    (
        "rolling-restart",
        "quorate",
        "bench:rolling_restart",
        "3 agents in network namespaces (root): 20 planned hand-offs (SIGTERM + restart) and 10 kill -9, role unavailability per hand-off",
    ),
    (
        "redis",
        "quorate",
        "bench:redis",
        "3 real redis-servers: failover managed by quorate vs redis-sentinel (tuned, defaults), 20 kill -9 each; then lost acknowledged writes under a partition, with and without WAIT, in network namespaces (root) (args: --trials N, --default-trials N, --partition-trials N, --partition-ms MS)",
    ),
    (
        "api",
        "quorate",
        "bench:api",
        "3 agents with [api]: probe and /metrics req/s at 1 and 64 connections, kill -9 role failover idle vs under load (args: --secs S --trials N)",
    ),
    (
        "state",
        "quorate-bench",
        "bench_state",
        "quorate-state locks and semaphores vs etcd's own lock recipe on one 3-member etcd: cycles/s, hand-off latency",
    ),
    (
        "replication",
        "quorate-bench",
        "bench_replication",
        "replicated keyspaces on loopback nodes: leader-mode writes/s sync/async at 1/16/64 clients with p99, lag p99, multi-master writes/s, convergence after a heal (1k, 100k keys)",
    ),
    (
        "etcd",
        "quorate-bench",
        "bench_etcd",
        "the same coordination workload against a real 3-member etcd cluster",
    ),
];

pub(crate) fn run(args: &[String]) -> Result<()> {
    let Some(name) = args.first() else {
        println!("benchmarks:");
        for (n, _, _, what) in BENCHES {
            println!("  {n:<14} {what}");
        }
        return Ok(());
    };
    // `cargo xtask bench coord --vs etcd` is the side-by-side run (issue 7's spelling).
    let (name, rest): (&str, Vec<String>) =
        if name == "coord" && args.get(1).map(String::as_str) == Some("--vs") {
            match args.get(2).map(String::as_str) {
                Some("etcd") => ("coord-vs-etcd", args[3..].to_vec()),
                other => bail!("`coord --vs` compares with etcd only (got {other:?})"),
            }
        } else {
            (name.as_str(), args[1..].to_vec())
        };
    let Some((_, package, target, _)) = BENCHES.iter().find(|b| b.0 == name) else {
        let names: Vec<_> = BENCHES.iter().map(|b| b.0).collect();
        bail!(
            "unknown benchmark {name:?}; available: {}",
            names.join(", ")
        );
    };
    let root = root()?;
    // Beside the build: `CARGO_TARGET_DIR` when set (relative to the repository), else
    // `target/`; created if missing (the benchmark writes its table there at the end).
    let target_dir =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), |d| root.join(d));
    std::fs::create_dir_all(&target_dir)
        .with_context(|| format!("creating {}", target_dir.display()))?;
    let out = target_dir.join(format!("bench-{name}.txt"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root);
    match target.strip_prefix("bench:") {
        Some(bench) => cmd.args(["bench", "--quiet", "-p", package, "--bench", bench, "--"]),
        None => cmd.args([
            "run",
            "--release",
            "--quiet",
            "-p",
            package,
            if *package == "quorate-sim" {
                "--example"
            } else {
                "--bin"
            },
            target,
            "--",
        ]),
    };
    let status = cmd
        .args(&rest)
        .env("QUORATE_BENCH_OUT", &out)
        .status()
        .context("starting the benchmark")?;
    if !status.success() {
        bail!("benchmark {name} exited with {status}");
    }
    println!("(written to {})", out.display());
    Ok(())
}
