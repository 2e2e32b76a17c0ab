//! The coord-api conformance suite against real etcd clusters (3 members and 1 member), in
//! real time: the suite polls with deadlines and asserts no timings.
#![allow(clippy::unwrap_used, clippy::print_stderr, reason = "test")]

use std::sync::Arc;

use quorate_coord_api::Coord;
use quorate_coord_api::conformance::{SuiteConfig, run_all};
use quorate_testkit::etcd::{EtcdCluster, EtcdClusterConfig};

async fn run(members: usize) {
    let cluster = EtcdCluster::start(EtcdClusterConfig::members(members))
        .await
        .unwrap();
    let clients: Vec<Arc<dyn Coord>> = cluster
        .coords()
        .unwrap()
        .into_iter()
        .map(|c| Arc::new(c) as Arc<dyn Coord>)
        .collect();
    let report = run_all(
        &clients,
        &SuiteConfig::new(format!("conformance/{members}/")),
    )
    .await
    .unwrap_or_else(|f| panic!("etcd ({members} members): {f}"));
    eprintln!(
        "etcd, {members} members: {} checks passed; notes: {:#?}",
        report.passed.len(),
        report.notes
    );
    assert!(!report.passed.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_three_members() {
    run(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_one_member() {
    run(1).await;
}
