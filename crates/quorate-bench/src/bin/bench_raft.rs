//! `cargo run --release -p quorate-bench --bin bench_raft [-- --tiny]`: the coordination
//! benchmark (see `quorate_bench::raft`); prints the report.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a benchmark prints its report"
)]

use quorate_bench::raft::{BenchConfig, run};

/// Command line.
#[derive(clap::Parser, Debug)]
struct Args {
    /// A tiny run (seconds, for CI), not the full one.
    #[arg(long)]
    tiny: bool,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let args = <Args as clap::Parser>::parse();
    let config = if args.tiny {
        BenchConfig::tiny(dir.path().to_owned())
    } else {
        BenchConfig::full(dir.path().to_owned())
    };
    let report = run(&config).await?;
    println!("{report}");
    Ok(())
}
