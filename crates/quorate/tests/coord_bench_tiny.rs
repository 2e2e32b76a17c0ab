//! A tiny run of the side-by-side coordination benchmark (etcd and three `quorate agent`
//! processes, interleaved) so that it cannot rot: asserts that the table has both columns and
//! a number in each, never a timing.
#![allow(clippy::unwrap_used, clippy::print_stdout, reason = "test")]

use quorate_bench::agents::{QuorateClusterConfig, QuorateTarget};
use quorate_bench::coord::{self as bench, BenchConfig, BenchTarget, EtcdTarget};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_side_by_side_run_reports_both_columns() {
    let etcd = EtcdTarget::start(3).await.unwrap();
    let quorate = QuorateTarget::start(QuorateClusterConfig::new(env!("CARGO_BIN_EXE_quorate")))
        .await
        .unwrap();
    let mut targets: Vec<Box<dyn BenchTarget>> = vec![Box::new(etcd), Box::new(quorate)];
    let report = bench::run(&mut targets, &BenchConfig::tiny())
        .await
        .unwrap();
    drop(targets);
    let table = report.table();
    println!("{table}");
    assert_eq!(
        report.targets,
        vec!["etcd".to_owned(), "quorate".to_owned()]
    );
    assert!(table.contains("quorate/etcd"), "{table}");
    for metric in [
        "write, 1 client(s): ops/s",
        "write, 4 client(s): ops/s",
        "linearizable read, 2 client(s): ops/s",
        "lock+unlock cycles, 2 client(s) on one lock: ops/s",
        "leader failover (kill -9 to first ack): median ms",
        "peak RSS per server, max: MiB",
    ] {
        for target in ["etcd", "quorate"] {
            let v = report.get(metric, target);
            assert!(
                v.is_some_and(|v| v.is_finite() && v >= 0.0),
                "{metric} for {target}: {v:?}\n{table}"
            );
        }
    }
    for target in ["etcd", "quorate"] {
        let rss = report.get("peak RSS per server, max: MiB", target);
        assert!(
            rss.is_some_and(|v| v > 0.0),
            "{target} RSS: {rss:?}\n{table}"
        );
    }
}
