//! `cargo xtask bench NAME`: benchmarks that print figures (never asserted in tests).
//!
//! Each benchmark is an example of the crate it measures, run in release; xtask names them so
//! there is one entry point. Output also goes to `target/bench-NAME.txt`.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::phases::root;

/// `(name, package, example, what it reports)`.
const BENCHES: &[(&str, &str, &str, &str)] = &[
    (
        "wire",
        "quorate-wire",
        "bench_wire",
        "seal and open throughput per frame size",
    ),
    (
        "health",
        "quorate-health",
        "bench",
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
        "quorate-membership",
        "bench_membership",
        "simulated detection time, traffic, convergence and false downs for N = 8..512",
    ),
    (
        "coord",
        "quorate-raft",
        "bench_coord",
        "3-node quorate-raft on loopback: write/read throughput and latency, failover",
    ),
    (
        "failover",
        "quorate",
        "bin:quorate demo --chaos 20",
        "kill -9 of the primary of a 3-agent loopback cluster, 20 trials: kill-to-promotion times",
    ),
    (
        "etcd",
        "quorate-etcd",
        "bench_coord",
        "the same coordination workload against a real 3-member etcd cluster",
    ),
];

pub(crate) fn run(args: &[String]) -> Result<()> {
    let Some(name) = args.first() else {
        println!("benchmarks:");
        for (n, _, _, what) in BENCHES {
            println!("  {n:<12} {what}");
        }
        return Ok(());
    };
    let Some((_, package, example, _)) = BENCHES.iter().find(|b| b.0 == name) else {
        let names: Vec<_> = BENCHES.iter().map(|b| b.0).collect();
        bail!(
            "unknown benchmark {name:?}; available: {}",
            names.join(", ")
        );
    };
    let root = root()?;
    let out = root.join("target").join(format!("bench-{name}.txt"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&root)
        .args([
            "run",
            "--release",
            "--quiet",
            "-p",
            package,
            "--example",
            example,
            "--",
        ])
        .args(&args[1..])
        .env("QUORATE_BENCH_OUT", &out)
        .status()
        .context("starting the benchmark")?;
    if !status.success() {
        bail!("benchmark {name} exited with {status}");
    }
    println!("(written to {})", out.display());
    Ok(())
}
