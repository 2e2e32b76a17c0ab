//! The coordination conformance suite against quorate-raft on real loopback TCP: one node, and
//! three nodes with one client per node (followers forward to the leader). One test per suite
//! area, so a failure names its area and the others still run.
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
    let mut c = common::Cluster::start(n).await;
    c.leader().await;
    let clients: Vec<Arc<dyn Coord>> = (0..n)
        .map(|i| Arc::new(c.node(i).backend()) as Arc<dyn Coord>)
        .collect();
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
    };
}

areas!(kv, txn, watch, leases, locks, elections, cluster);
