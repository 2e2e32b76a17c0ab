//! `cargo bench -p quorate --bench redis -- [--trials N] [--tuned-trials N] [--default-trials
//! N] [--partition-trials N] [--partition-ms MS] [--wait-timeout-ms MS] [--quiet]` (what
//! `cargo xtask bench redis` runs):
//!
//! 1. Redis failover on three real redis-servers on loopback, managed by three `quorate
//!    agent`s, then by three `redis-sentinel`s tuned (`down-after-milliseconds 1000`,
//!    `failover-timeout 3000`) and with their defaults (30 s). kill -9 of the primary's node
//!    until a client's write succeeds on the new master, and until discovery names it; 20
//!    trials per side by default (`--trials` sets all three).
//! 2. Lost acknowledged writes (`quorate_chaos::redis_partition`): the nodes in network
//!    namespaces, clients writing sequential keys with and without `WAIT 1`, a symmetric
//!    partition of the master's node (default 8000 ms, more than twice tuned Sentinel's
//!    failover) then a heal; 5 trials per side by default, quorate and tuned Sentinel. Needs
//!    root, nftables and util-linux (the bench fails at once, saying what is missing, unless
//!    `--partition-trials 0`). A trial without exactly one master among the servers reaching
//!    the majority makes the bench fail after printing its figures.
//!
//! Needs the Debian packages redis-server and redis-sentinel. Figures are printed, never
//! asserted; also written to `$QUORATE_BENCH_OUT` when set. `QUORATE_BIN` picks another agent
//! binary.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a benchmark prints its figures"
)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use quorate_bench::redis::{RedisBenchOptions, run};
use quorate_chaos::redis_partition::{PartitionOptions, partition_bench};

fn main() -> Result<()> {
    let mut o = RedisBenchOptions {
        // `QUORATE_BIN` runs another build of the agent (e.g. release agents under a dev
        // runner); by default the binary Cargo built with this bench.
        agent_exe: std::env::var_os(quorate_testkit::process::QUORATE_BIN_ENV).map_or_else(
            || PathBuf::from(env!("CARGO_BIN_EXE_quorate")),
            PathBuf::from,
        ),
        quorate_trials: 20,
        tuned_trials: 20,
        default_trials: 20,
        verbose: true,
    };
    let mut p = PartitionOptions {
        agent_exe: o.agent_exe.clone(),
        trials: 5,
        partition: Duration::from_millis(8000),
        wait_timeout: Duration::from_millis(1000),
        quorate: true,
        sentinel: true,
        verbose: true,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut num = |what: &str| -> Result<u32> {
            it.next()
                .with_context(|| format!("{what} needs a number"))?
                .parse()
                .with_context(|| format!("{what} needs a number"))
        };
        match a.as_str() {
            "--trials" => {
                let n = num("--trials")?;
                (o.quorate_trials, o.tuned_trials, o.default_trials) = (n, n, n);
            }
            "--quorate-trials" => o.quorate_trials = num("--quorate-trials")?,
            "--tuned-trials" => o.tuned_trials = num("--tuned-trials")?,
            "--default-trials" => o.default_trials = num("--default-trials")?,
            "--partition-trials" => p.trials = num("--partition-trials")?,
            "--partition-ms" => {
                p.partition = Duration::from_millis(u64::from(num("--partition-ms")?));
            }
            "--wait-timeout-ms" => {
                p.wait_timeout = Duration::from_millis(u64::from(num("--wait-timeout-ms")?));
            }
            "--quiet" => (o.verbose, p.verbose) = (false, false),
            "--bench" => {}
            other => bail!(
                "unknown argument {other:?}; use --trials N, --quorate-trials N, --tuned-trials N, --default-trials N, --partition-trials N, --partition-ms MS, --wait-timeout-ms MS, --quiet"
            ),
        }
    }
    if p.wait_timeout.is_zero() || p.partition.is_zero() {
        bail!(
            "--wait-timeout-ms and --partition-ms must be at least 1 (`WAIT 1 0` blocks forever)"
        );
    }
    if p.trials > 0 {
        // Fail before the long failover trials, not after them.
        quorate_chaos::world::preflight().context(
            "the partition trials run the nodes in network namespaces (run the bench as root, \
             or pass --partition-trials 0)",
        )?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!(
        "redis bench: kill -9 of the primary's node; quorate {} trials, Sentinel tuned {}, Sentinel defaults {}",
        o.quorate_trials, o.tuned_trials, o.default_trials
    );
    let mut text = String::new();
    if o.quorate_trials + o.tuned_trials + o.default_trials > 0 {
        let report = rt.block_on(run(&o))?;
        text = format!("{report}");
        println!("\n{text}");
    }
    drop(rt);
    let mut violations = 0;
    if p.trials > 0 {
        println!(
            "redis bench: lost acknowledged writes; {} trials per side, partition {} ms, WAIT 1 {} ms",
            p.trials,
            p.partition.as_millis(),
            p.wait_timeout.as_millis()
        );
        let report = partition_bench(&p)?;
        let table = format!("{report}");
        println!("\n{table}");
        text.push_str(&format!("\n{table}"));
        violations = report.violations();
    }
    if let Ok(out) = std::env::var("QUORATE_BENCH_OUT") {
        std::fs::write(&out, format!("{text}\n")).with_context(|| format!("writing {out}"))?;
    }
    if violations > 0 {
        bail!(
            "{violations} partition trial(s) did not end with exactly one master among the servers reaching the majority"
        );
    }
    Ok(())
}
