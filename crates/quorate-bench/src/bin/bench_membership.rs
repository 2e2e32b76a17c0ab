//! Prints the membership benchmark table (simulation). Run in release:
//! `cargo run --release -p quorate-bench --bin bench_membership [sizes...]`,
//! e.g. `... --bin bench_membership 8 32` for a subset.

#![allow(clippy::print_stdout, reason = "the benchmark prints its table")]

use quorate_bench::membership::{BenchConfig, render, run_size};

/// Command line.
#[derive(clap::Parser, Debug)]
struct Args {
    /// Cluster sizes to simulate (default: 8 to 512).
    sizes: Vec<usize>,
}

fn main() {
    let args = <Args as clap::Parser>::parse();
    let mut cfg = BenchConfig::full();
    if !args.sizes.is_empty() {
        cfg.sizes = args.sizes;
    }
    let mut reports = Vec::new();
    for n in cfg.sizes.clone() {
        let r = run_size(n, &cfg);
        println!("{}", render(&cfg, std::slice::from_ref(&r)));
        reports.push(r);
    }
    println!("\n{}", render(&cfg, &reports));
}
