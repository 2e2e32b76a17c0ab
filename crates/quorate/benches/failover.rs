//! `cargo bench -p quorate --bench failover -- [--kill N] [--partition N] [--sym-partition N]
//! [--kill-both N] [--kill-raft-leader N] [--partition-secondary N] [--flap-secs S]` (what
//! `cargo xtask bench failover` runs): three real `quorate agent` processes in network
//! namespaces with flapping non-critical checks and equal failover priorities; N SIGKILLs, N
//! one-way partitions (the primary's input drops its peers) and N symmetric partitions of the
//! primary (default 20 each), each timed from the fault to the new primary's `on_promote`; N
//! SIGKILLs (default 10) of a primary that is also the Raft leader (the worst case; the role is
//! first moved onto the Raft leader by making the other nodes critical); N SIGKILLs (default
//! 20) of the Raft leader when it is not the primary, counting role moves (must be 0) and
//! interruptions of the primary's application, with its longest pause; N symmetric 2 s
//! partitions of a secondary and their heals (default 20), counting interruptions of the
//! primary's application; then S seconds (default 600) without faults counting false failovers. Needs root, nftables and
//! faketime (see `quorate_chaos::world`). Prints figures and never asserts them; also writes them to
//! `$QUORATE_BENCH_OUT` when set.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a benchmark prints its figures"
)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use quorate_chaos::world::{BenchOptions, bench};

fn parse(args: &[String]) -> Result<BenchOptions> {
    let mut o = BenchOptions {
        agent_exe: PathBuf::from(env!("CARGO_BIN_EXE_quorate")),
        kill_trials: 20,
        partition_trials: 20,
        sym_partition_trials: 20,
        kill_both_trials: 10,
        raft_leader_kills: 20,
        secondary_partitions: 20,
        flap: Duration::from_secs(600),
        verbose: true,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut num = |what: &str| -> Result<u64> {
            it.next()
                .with_context(|| format!("{what} needs a number"))?
                .parse()
                .with_context(|| format!("{what} needs a number"))
        };
        match a.as_str() {
            "--kill" => o.kill_trials = u32::try_from(num("--kill")?)?,
            "--partition" => o.partition_trials = u32::try_from(num("--partition")?)?,
            "--sym-partition" => {
                o.sym_partition_trials = u32::try_from(num("--sym-partition")?)?;
            }
            "--partition-secondary" => {
                o.secondary_partitions = u32::try_from(num("--partition-secondary")?)?;
            }
            "--kill-both" => o.kill_both_trials = u32::try_from(num("--kill-both")?)?,
            "--kill-raft-leader" => {
                o.raft_leader_kills = u32::try_from(num("--kill-raft-leader")?)?;
            }
            "--flap-secs" => o.flap = Duration::from_secs(num("--flap-secs")?),
            "--quiet" => o.verbose = false,
            // `cargo bench` passes `--bench` to every bench target.
            "--bench" => {}
            other => bail!(
                "unknown argument {other:?}; use --kill N --partition N --sym-partition N --kill-both N --kill-raft-leader N --partition-secondary N --flap-secs S [--quiet]"
            ),
        }
    }
    Ok(o)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = parse(&args)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!(
        "failover bench: {} kill + {} partition + {} sym-partition + {} kill-both trials, {} Raft leader kills, {} secondary partitions, {} s flapping run, 3 agents in network namespaces (lan profile)",
        opts.kill_trials,
        opts.partition_trials,
        opts.sym_partition_trials,
        opts.kill_both_trials,
        opts.raft_leader_kills,
        opts.secondary_partitions,
        opts.flap.as_secs()
    );
    let report = rt.block_on(bench(&opts))?;
    let text = format!("{report}");
    println!("\n{text}");
    if let Ok(out) = std::env::var("QUORATE_BENCH_OUT") {
        std::fs::write(&out, format!("{text}\n")).with_context(|| format!("writing {out}"))?;
    }
    Ok(())
}
