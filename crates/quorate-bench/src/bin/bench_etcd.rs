//! `cargo run --release -p quorate-bench --bin bench_etcd -- [--tiny] [--trials N]
//! [--out PATH]`: the coordination benchmark through the `Coord` trait against a 3-member
//! etcd cluster on loopback (and quorate, once a `BenchTarget` for it is plugged in: see
//! `quorate_bench::coord`). Prints the table and writes it to `target/bench-coord.txt`.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line program"
)]

use std::path::PathBuf;
use std::time::Instant;

use quorate_bench::coord::{self as bench, BenchConfig, BenchTarget, EtcdTarget};

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned())
        })
        .and_then(|kib| kib.parse::<u64>().ok())
        .map_or_else(String::new, |kib| {
            format!(", {} GiB RAM", kib / 1024 / 1024)
        });
    let etcd = std::process::Command::new(
        std::env::var_os(quorate_testkit::etcd::ETCD_BIN_ENV).unwrap_or_else(|| "etcd".into()),
    )
    .arg("--version")
    .output()
    .ok()
    .and_then(|o| String::from_utf8(o.stdout).ok())
    .and_then(|s| s.lines().next().map(str::to_owned))
    .unwrap_or_else(|| "etcd version unknown".into());
    format!("{cpus} CPU(s) ({model}){mem}; {etcd}")
}

/// Command line of the coordination benchmarks.
#[derive(clap::Parser, Debug)]
struct Args {
    /// A tiny run (seconds, for CI), not the full one.
    #[arg(long)]
    tiny: bool,
    /// Failover trials (default: the run's own number).
    #[arg(long)]
    trials: Option<usize>,
    /// Where to write the table.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args = <Args as clap::Parser>::parse();
    let mut cfg = if args.tiny {
        BenchConfig::tiny()
    } else {
        BenchConfig::full()
    };
    if let Some(t) = args.trials {
        cfg.failover_trials = t;
    }
    let out = args
        .out
        .unwrap_or_else(|| quorate_bench::default_out("bench-coord.txt"));
    let started = Instant::now();
    let etcd = match EtcdTarget::start(3).await {
        Ok(t) => t,
        Err(e) => {
            eprintln!("bench_coord: {e}");
            std::process::exit(1);
        }
    };
    // The quorate column: plug a `BenchTarget` for a 3-process quorate cluster in here
    // (pushed second, so the ratio column reads quorate/etcd).
    let mut targets: Vec<Box<dyn BenchTarget>> = vec![Box::new(etcd)];
    let report = match bench::run(&mut targets, &cfg).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bench_coord: {e}");
            std::process::exit(1);
        }
    };
    drop(targets);
    let mut text = format!(
        "coord benchmark through the Coord trait, 3 nodes per system on loopback\nmachine: {}\ncommand: cargo run --release -p quorate-bench --bin bench_etcd{}\nwall time: {:.0} s\n\n",
        machine(),
        std::env::args()
            .skip(1)
            .map(|a| format!(" {a}"))
            .collect::<String>(),
        started.elapsed().as_secs_f64()
    );
    if report.targets.len() < 2 {
        text.push_str("quorate column: not plugged in (no BenchTarget for a 3-process quorate cluster yet)\n\n");
    }
    text.push_str(&report.table());
    println!("{text}");
    if let Some(dir) = out.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(&out, &text) {
        Ok(()) => println!("written to {}", out.display()),
        Err(e) => eprintln!("could not write {}: {e}", out.display()),
    }
}
