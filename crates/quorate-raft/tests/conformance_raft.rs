//! The coordination conformance suite against quorate-raft on real loopback TCP: one node, and
//! three nodes with one client per node (followers forward to the leader), and three nodes
//! driven from outside through the remote client (`client::CoordClient`, one per node, each
//! starting at its own node). One test per suite area, so a failure names its area and the
//! others still run.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test")]

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use quorate_coord_api::Coord;
use quorate_coord_api::conformance::{self, Outcome, SuiteConfig};

type Area = for<'a> fn(
    &'a [Arc<dyn Coord>],
    &'a SuiteConfig,
) -> Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

async fn run(n: usize, name: &str, area: Area) {
    run_with(n, name, area, false).await;
}

async fn run_with(n: usize, name: &str, area: Area, remote: bool) {
    let mut c = common::Cluster::start(n).await;
    c.leader().await;
    let mut clients: Vec<Arc<dyn Coord>> = Vec::new();
    for i in 0..n {
        if remote {
            let mut addrs = c.addrs.clone();
            addrs.rotate_left(i);
            let client = common::remote_client(addrs).await;
            clients.push(Arc::new(client));
        } else {
            clients.push(Arc::new(c.node(i).backend()));
        }
    }
    let name = if remote {
        format!("remote-{name}")
    } else {
        name.to_owned()
    };
    let report = area(
        &clients,
        &SuiteConfig::new(format!("conformance/{n}/{name}/")),
    )
    .await;
    c.shutdown().await;
    match report {
        Ok(r) => assert!(!r.passed.is_empty(), "{r:?}"),
        Err(f) => panic!("{n} node(s): {f}"),
    }
}

macro_rules! areas {
    ($($area:ident),*) => {
        mod one_node {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $area() {
                    run(1, stringify!($area), |c, s| Box::pin(conformance::$area(c, s))).await;
                }
            )*
        }
        mod three_nodes {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $area() {
                    run(3, stringify!($area), |c, s| Box::pin(conformance::$area(c, s))).await;
                }
            )*
        }
        mod three_nodes_remote_client {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $area() {
                    run_with(3, stringify!($area), |c, s| Box::pin(conformance::$area(c, s)), true).await;
                }
            )*
        }
    };
}

areas!(kv, txn, watch, leases, locks, elections, cluster);
