//! A tiny run of the coordination benchmark against a real 3-member etcd cluster, so the
//! benchmark cannot rot. Timings are printed, never asserted.
#![allow(clippy::unwrap_used, clippy::print_stderr, reason = "test")]

use quorate_bench::coord::{self as bench, BenchConfig, BenchTarget, EtcdTarget};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_bench_runs_every_phase() {
    let etcd = EtcdTarget::start(3).await.unwrap();
    let mut targets: Vec<Box<dyn BenchTarget>> = vec![Box::new(etcd)];
    let report = bench::run(&mut targets, &BenchConfig::tiny())
        .await
        .unwrap();
    eprintln!("{}", report.table());
    for metric in [
        "write, 1 client(s): ops/s",
        "write, 4 client(s): p99 ms",
        "linearizable read, 2 client(s): ops/s",
        "lock+unlock cycles, 2 client(s) on one lock: ops/s",
        "leader failover (kill -9 to first ack): median ms",
        "peak RSS per server, max: MiB",
    ] {
        let v = report.get(metric, "etcd");
        assert!(
            v.is_some_and(|v| v > 0.0),
            "{metric}: {v:?}\n{}",
            report.table()
        );
    }
}
