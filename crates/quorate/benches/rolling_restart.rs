//! `cargo bench -p quorate --bench rolling_restart -- [--handoffs N] [--kills N]` (what
//! `cargo xtask bench rolling-restart` runs): three real `quorate agent` processes in network
//! namespaces, the role's application acting every 10 ms while primary; N planned hand-offs
//! (SIGTERM of the primary, which hands its role over first, then its restart; default 20) and
//! N unplanned kill -9 failovers (default 10) in the same run. Reports the role's
//! unavailability per hand-off (median, p99) and the overlapping primaries the hook-log checker
//! found (must be 0). Needs root (see `quorate_chaos::world`). Figures are printed, never
//! asserted; also written to `$QUORATE_BENCH_OUT` when set.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a benchmark prints its figures"
)]

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use quorate_chaos::rolling::{RollingOptions, rolling_restart};

fn main() -> Result<()> {
    let mut o = RollingOptions {
        agent_exe: PathBuf::from(env!("CARGO_BIN_EXE_quorate")),
        handoffs: 20,
        kills: 10,
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
            "--handoffs" => o.handoffs = num("--handoffs")?,
            "--kills" => o.kills = num("--kills")?,
            "--quiet" => o.verbose = false,
            "--bench" => {}
            other => bail!("unknown argument {other:?}; use --handoffs N --kills N [--quiet]"),
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!(
        "rolling-restart bench: {} planned hand-offs (SIGTERM + restart), {} kill -9, 3 agents in network namespaces (lan profile), application acting every 10 ms",
        o.handoffs, o.kills
    );
    let report = rt.block_on(rolling_restart(&o))?;
    let text = format!("{report}");
    println!("\n{text}");
    if let Ok(out) = std::env::var("QUORATE_BENCH_OUT") {
        std::fs::write(&out, format!("{text}\n")).with_context(|| format!("writing {out}"))?;
    }
    Ok(())
}
