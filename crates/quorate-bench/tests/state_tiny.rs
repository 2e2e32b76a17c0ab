//! A tiny run of the state benchmark against a real 3-member etcd cluster, so the benchmark
//! cannot rot. Timings are printed, never asserted.
#![allow(clippy::unwrap_used, clippy::print_stderr, reason = "test")]

use std::sync::Arc;

use quorate_bench::state::{self, StateBenchConfig};
use quorate_coord_api::Coord;
use quorate_testkit::etcd::{EtcdCluster, EtcdClusterConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_state_bench_runs_every_workload() {
    let cluster = EtcdCluster::start(EtcdClusterConfig::members(3))
        .await
        .unwrap();
    let coord: Arc<dyn Coord> = Arc::new(cluster.coord(0).unwrap());
    let report = state::run(&cluster, coord, &StateBenchConfig::tiny())
        .await
        .unwrap();
    eprintln!("{}", report.table());
    assert_eq!(report.rows.len(), 5, "{}", report.table());
    for row in &report.rows {
        assert!(row.quorate > 0.0, "{row:?}");
    }
    let one = report.get("lock+unlock, 1 client: cycles/s").unwrap();
    assert!(one.etcd.is_some_and(|e| e > 0.0), "{one:?}");
}
