//! A tiny run of the coordination benchmark, so it cannot rot. Timings are not asserted.
#![allow(clippy::unwrap_used, reason = "test")]

use quorate_bench::raft::{BenchConfig, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_tiny_run_works() {
    let dir = tempfile::tempdir().unwrap();
    let report = run(&BenchConfig::tiny(dir.path().to_owned()))
        .await
        .unwrap();
    assert_eq!(report.writes.len(), 2);
    assert!(report.writes.iter().all(|r| r.ops > 0), "{report}");
    assert!(report.reads.ops > 0, "{report}");
    assert_eq!(report.failovers.len(), 1);
    assert!(!report.to_string().is_empty());
}
