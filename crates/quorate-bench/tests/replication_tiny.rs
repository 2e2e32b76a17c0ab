//! A tiny run of the replication benchmark (real loopback sockets and redb files), so the
//! benchmark cannot rot. Timings are printed, never asserted.
#![allow(clippy::unwrap_used, clippy::print_stderr, reason = "test")]

use quorate_bench::replication::{self, ReplBenchConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_replication_bench_runs_every_row() {
    let report = replication::run(&ReplBenchConfig::tiny()).await.unwrap();
    eprintln!("{}", report.table());
    // 2 modes x 2 client counts x 3 figures, 2 lag rows, 2 x 2 multi-master, 3 convergence.
    assert_eq!(report.rows.len(), 12 + 2 + 4 + 3, "{}", report.table());
    for row in report.rows.iter().filter(|r| r.unit == "ops/s") {
        assert!(row.value > 0.0, "{row:?}");
    }
}
