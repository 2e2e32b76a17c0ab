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

/// A real partition instead of the wrapper: the holder's node (a follower) is shut down, so
/// its keep-alives fail; its `lost()` fires before the waiter on the leader is granted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_three_nodes_holder_node_stops() {
    use quorate_clock::{Clock, SharedClock, SystemClock};
    use quorate_state::{LostReason, Mutex, Session, SessionConfig};
    use std::sync::Arc;
    use std::time::Duration;

    let cluster = common::RaftCluster::start(3).await;
    let clients = cluster.clients();
    let (f, l) = (cluster.follower(), cluster.leader_index());
    let clock: SharedClock = SystemClock::shared();
    let ttl = clients[0]
        .capabilities()
        .lease_ttl_min
        .max(Duration::from_secs(2));
    let mut cfg = SessionConfig::new(ttl);
    cfg.seed = Some(1);
    let a = Session::start_with_clock(Arc::clone(&clients[f]), cfg.clone(), Arc::clone(&clock))
        .await
        .unwrap();
    let ga = Mutex::new(a.clone(), "partition").lock().await.unwrap();
    let b = Session::start_with_clock(Arc::clone(&clients[l]), cfg, Arc::clone(&clock))
        .await
        .unwrap();
    let mb = Mutex::new(b.clone(), "partition");
    let c2 = Arc::clone(&clock);
    let waiter = tokio::spawn(async move {
        let g = mb.lock().await;
        (g, c2.now())
    });
    loop {
        let info = clients[l].lease_time_to_live(b.lease()).await.unwrap();
        if !info.keys.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cluster.stop(f).await;
    let reason = tokio::time::timeout(Duration::from_secs(30), ga.lost())
        .await
        .expect("lost() fires");
    assert!(
        matches!(
            reason,
            LostReason::DeadlinePassed { .. } | LostReason::RenewFailed { .. }
        ),
        "{reason:?}"
    );
    let (gb, granted_at) = tokio::time::timeout(Duration::from_secs(30), waiter)
        .await
        .expect("the waiter is granted")
        .unwrap();
    let gb = gb.unwrap();
    let lost_at = a.lost_at().unwrap();
    assert!(
        lost_at < granted_at,
        "lost() at {lost_at:?} did not come before the next grant at {granted_at:?}"
    );
    assert!(gb.fencing_token() > ga.fencing_token());
    gb.unlock().await.unwrap();
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
