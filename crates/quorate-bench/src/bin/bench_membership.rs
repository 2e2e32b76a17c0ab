//! Prints the membership benchmark table (simulation). Run in release:
//! `cargo run --release -p quorate-bench --bin bench_membership [sizes...]`,
//! e.g. `... --bin bench_membership 8 32` for a subset.

#![allow(clippy::print_stdout, reason = "the benchmark prints its table")]

use quorate_bench::membership::{BenchConfig, render, run_size};

fn main() {
    let mut cfg = BenchConfig::full();
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    if !sizes.is_empty() {
        cfg.sizes = sizes;
    }
    let mut reports = Vec::new();
    for n in cfg.sizes.clone() {
        let r = run_size(n, &cfg);
        println!("{}", render(&cfg, std::slice::from_ref(&r)));
        reports.push(r);
    }
    println!("\n{}", render(&cfg, &reports));
}
