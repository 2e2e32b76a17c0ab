//! `cargo run --release -p quorate-bench --bin bench_raft [-- --tiny]`: the coordination
//! benchmark (see `quorate_bench::raft`); prints the report.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a benchmark prints its report"
)]

use quorate_bench::raft::{BenchConfig, run};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let tiny = std::env::args().any(|a| a == "--tiny");
    let config = if tiny {
        BenchConfig::tiny(dir.path().to_owned())
    } else {
        BenchConfig::full(dir.path().to_owned())
    };
    let report = run(&config).await?;
    println!("{report}");
    Ok(())
}
