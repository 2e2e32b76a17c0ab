//! The behaviour suite (`common::suite::run_all`) on every backend: in memory under paused
//! time, embedded Raft with 1 and 3 nodes on loopback TCP, real etcd with 1 and 3 members.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test")]

mod common;

use common::suite::{Env, run_all};
use quorate_testkit::etcd::{EtcdCluster, EtcdClusterConfig};

#[tokio::test(start_paused = true)]
async fn in_memory_paused_time() {
    let c = common::local();
    run_all(&Env::new(vec![c.clone(), c], "state/local/")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_one_node() {
    let cluster = common::RaftCluster::start(1).await;
    run_all(&Env::new(cluster.clients(), "state/raft1/")).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_three_nodes() {
    let cluster = common::RaftCluster::start(3).await;
    run_all(&Env::new(cluster.clients(), "state/raft3/")).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_one_member() {
    let cluster = EtcdCluster::start(EtcdClusterConfig::members(1))
        .await
        .unwrap();
    let clients = cluster
        .coords()
        .unwrap()
        .into_iter()
        .map(|c| std::sync::Arc::new(c) as std::sync::Arc<dyn quorate_coord_api::Coord>)
        .collect();
    run_all(&Env::new(clients, "state/etcd1/")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_three_members() {
    let cluster = EtcdCluster::start(EtcdClusterConfig::members(3))
        .await
        .unwrap();
    let clients = cluster
        .coords()
        .unwrap()
        .into_iter()
        .map(|c| std::sync::Arc::new(c) as std::sync::Arc<dyn quorate_coord_api::Coord>)
        .collect();
    run_all(&Env::new(clients, "state/etcd3/")).await;
}
