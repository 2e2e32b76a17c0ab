//! The health monitor's benchmark, run tiny so it keeps working (figures are not asserted).
#![allow(clippy::unwrap_used, reason = "test")]

use std::time::Duration;

#[test]
fn bench_tiny_run_reports_numbers() {
    let report = quorate_bench::health::run(quorate_bench::health::BenchConfig {
        checks: 20,
        interval: Duration::from_millis(20),
        duration: Duration::from_millis(200),
        worker_threads: 1,
    })
    .unwrap();
    assert!(report.runs > 0, "{report}");
    assert!(report.to_string().contains("per 1,000 runs/s"), "{report}");
}
