//! `cargo bench -p quorate --bench redis -- [--trials N] [--tuned-trials N] [--default-trials
//! N] [--quiet]` (what `cargo xtask bench redis` runs): Redis failover on three real
//! redis-servers on loopback, managed by three `quorate agent`s, then by three
//! `redis-sentinel`s tuned (`down-after-milliseconds 1000`, `failover-timeout 3000`) and with
//! their defaults (30 s). kill -9 of the primary's node until a client's write succeeds on the
//! new master, and until discovery names it; 20 trials per side by default (`--trials` sets
//! all three). Needs the Debian packages redis-server and redis-sentinel. Figures are printed,
//! never asserted; also written to `$QUORATE_BENCH_OUT` when set. `QUORATE_BIN` picks another
//! agent binary.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a benchmark prints its figures"
)]

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use quorate_bench::redis::{RedisBenchOptions, run};

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
            "--quiet" => o.verbose = false,
            "--bench" => {}
            other => bail!(
                "unknown argument {other:?}; use --trials N, --quorate-trials N, --tuned-trials N, --default-trials N, --quiet"
            ),
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!(
        "redis bench: kill -9 of the primary's node; quorate {} trials, Sentinel tuned {}, Sentinel defaults {}",
        o.quorate_trials, o.tuned_trials, o.default_trials
    );
    let report = rt.block_on(run(&o))?;
    let text = format!("{report}");
    println!("\n{text}");
    if let Ok(out) = std::env::var("QUORATE_BENCH_OUT") {
        std::fs::write(&out, format!("{text}\n")).with_context(|| format!("writing {out}"))?;
    }
    Ok(())
}
