//! `cargo run --release -p quorate-bench --bin bench_health -- [checks] [interval_ms] [seconds]`:
//! the monitor's overhead (CPU per 1,000 check runs per second, scheduling lateness p99).

use std::time::Duration;

use quorate_bench::health::{self as bench, BenchConfig};

#[allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a benchmark's report goes to the terminal"
)]
fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let standard = BenchConfig::standard();
    let config = BenchConfig {
        checks: args.first().map_or(standard.checks, |&n| n as usize),
        interval: args
            .get(1)
            .map_or(standard.interval, |&ms| Duration::from_millis(ms)),
        duration: args
            .get(2)
            .map_or(standard.duration, |&s| Duration::from_secs(s)),
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
