//! `cargo run --release -p quorate-bench --bin bench_state -- [--tiny] [--members N]
//! [--out PATH]` (or `cargo xtask bench state`): quorate-state's `Mutex` and `Semaphore` on a
//! real etcd cluster (3 members by default) beside etcd's own lock recipe on the same cluster,
//! in one run. Prints the table and writes it to `QUORATE_BENCH_OUT` or
//! `target/bench-state.txt`.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line program"
)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quorate_bench::state::{self, StateBenchConfig};
use quorate_coord_api::Coord;
use quorate_testkit::etcd::{EtcdCluster, EtcdClusterConfig};

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let mut cfg = StateBenchConfig::full();
    let mut members = 3;
    let mut out = std::env::var_os("QUORATE_BENCH_OUT").map_or_else(
        || quorate_bench::default_out("bench-state.txt"),
        PathBuf::from,
    );
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--tiny" => cfg = StateBenchConfig::tiny(),
            "--members" => {
                members = args.next().and_then(|n| n.parse().ok()).unwrap_or(members);
            }
            "--out" => {
                if let Some(p) = args.next() {
                    out = PathBuf::from(p);
                }
            }
            other => {
                eprintln!("unknown argument {other:?}; use --tiny, --members N, --out PATH");
                std::process::exit(2);
            }
        }
    }
    let started = Instant::now();
    let cluster = match EtcdCluster::start(EtcdClusterConfig::members(members)).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bench_state: {e}");
            std::process::exit(1);
        }
    };
    let leader = cluster.leader().await.unwrap_or(0);
    let mut etcd_config = cluster.etcd_config(leader);
    etcd_config.request_timeout = Duration::from_secs(5);
    let coord: Arc<dyn Coord> = match quorate_etcd::EtcdCoord::new(etcd_config) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("bench_state: {e}");
            std::process::exit(1);
        }
    };
    let report = match state::run(&cluster, coord, &cfg).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bench_state: {e}");
            std::process::exit(1);
        }
    };
    let text = format!(
        "state benchmark: quorate-state (on quorate-etcd) vs etcd's own Lock recipe, same {members}-member etcd on loopback\ncpus: {}\ncommand: cargo run --release -p quorate-bench --bin bench_state{}\nwall time: {:.0} s\n\n{}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::env::args()
            .skip(1)
            .map(|a| format!(" {a}"))
            .collect::<String>(),
        started.elapsed().as_secs_f64(),
        report.table()
    );
    println!("{text}");
    if let Some(dir) = out.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(&out, &text) {
        Ok(()) => println!("written to {}", out.display()),
        Err(e) => eprintln!("could not write {}: {e}", out.display()),
    }
}
