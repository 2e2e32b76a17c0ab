//! `cargo run --release -p quorate-bench --bin bench_health -- [checks] [interval_ms] [seconds]`:
//! the monitor's overhead (CPU per 1,000 check runs per second, scheduling lateness p99).

use std::time::Duration;

use quorate_bench::health::{self as bench, BenchConfig};

/// Command line.
#[derive(clap::Parser, Debug)]
struct Args {
    /// Number of checks (default: the standard run's).
    checks: Option<usize>,
    /// Interval of each check, in milliseconds.
    interval_ms: Option<u64>,
    /// Length of the run, in seconds.
    seconds: Option<u64>,
}

#[allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a benchmark's report goes to the terminal"
)]
fn main() {
    let args = <Args as clap::Parser>::parse();
    let standard = BenchConfig::standard();
    let config = BenchConfig {
        checks: args.checks.unwrap_or(standard.checks),
        interval: args
            .interval_ms
            .map_or(standard.interval, Duration::from_millis),
        duration: args.seconds.map_or(standard.duration, Duration::from_secs),
        ..standard
    };
    match bench::run(config) {
        Ok(report) => println!("{report}"),
        Err(e) => {
            eprintln!("health bench failed: {e}");
            std::process::exit(1);
        }
    }
}
