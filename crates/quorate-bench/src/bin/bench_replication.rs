//! `cargo run --release -p quorate-bench --bin bench_replication -- [--tiny] [--out PATH]` (or
//! `cargo xtask bench replication`): replicated keyspaces on in-process nodes over loopback
//! (see `quorate_bench::replication`). Prints the table and writes it to `QUORATE_BENCH_OUT`
//! or `target/bench-replication.txt`.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line program"
)]

use std::path::PathBuf;

use quorate_bench::replication::{self, ReplBenchConfig};

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let mut cfg = ReplBenchConfig::full();
    let mut out = std::env::var_os("QUORATE_BENCH_OUT").map_or_else(
        || quorate_bench::default_out("bench-replication.txt"),
        PathBuf::from,
    );
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--tiny" => cfg = ReplBenchConfig::tiny(),
            "--out" => {
                if let Some(p) = args.next() {
                    out = PathBuf::from(p);
                }
            }
            other => {
                eprintln!("unknown argument {other:?}; use --tiny, --out PATH");
                std::process::exit(2);
            }
        }
    }
    match replication::run(&cfg).await {
        Ok(report) => {
            let table = report.table();
            print!("{table}");
            if let Some(dir) = out.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            if let Err(e) = std::fs::write(&out, &table) {
                eprintln!("bench_replication: writing {}: {e}", out.display());
            }
        }
        Err(e) => {
            eprintln!("bench_replication: {e}");
            std::process::exit(1);
        }
    }
}
