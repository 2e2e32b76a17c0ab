//! The replication listener's admission (`quorate_wire::inbound`, as the Raft transport's): a
//! flood of connections that never authenticate cannot lock a peer out, and one address gets at
//! most `inbound_per_ip_max` connections.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test")]

mod common;

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::wire;
use quorate_replication::msg::{Request, Response};
use quorate_replication::{Handler, HlcTimestamp, Transport, TransportConfig};
use quorate_wire::net::{Net, TokioNet};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

struct AckAll;

impl Handler for AckAll {
    async fn handle(&self, _req: Request) -> Response {
        Response::Ack
    }
}

fn request() -> Request {
    Request::Deltas {
        keyspace: "k".to_owned(),
        from: "n1".to_owned(),
        clock: HlcTimestamp {
            physical_ms: 0,
            logical: 0,
            node: quorate_types::NodeId::new("n1").unwrap(),
        },
        batch: Vec::new(),
    }
}

async fn server(config: TransportConfig) -> (Arc<Transport<TokioNet>>, String, CancellationToken) {
    let listener = TokioNet.bind_tcp("127.0.0.1:0").await.unwrap();
    let addr = quorate_wire::net::Listener::local_addr(&listener)
        .unwrap()
        .to_string();
    let t = Arc::new(Transport::new(TokioNet, config));
    let cancel = CancellationToken::new();
    tokio::spawn(t.clone().serve(
        listener,
        Arc::new(AckAll),
        TaskTracker::new(),
        cancel.clone(),
    ));
    (t, addr, cancel)
}

fn nz(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap()
}

/// Opens a raw connection that reads the challenge and then says nothing.
async fn silent(addr: &str) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut challenge = [0u8; 1];
    s.read_exact(&mut challenge).await.unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_that_never_authenticates_cannot_lock_a_peer_out() {
    let mut config = TransportConfig::lan(wire("21", 0));
    config.inbound_connections_max = nz(8);
    // Everything here comes from 127.0.0.1: the per-address cap must not be what refuses.
    config.inbound_per_ip_max = nz(16);
    config.inbound_unauthenticated_max = nz(8);
    config.pre_auth_timeout = Duration::from_secs(30);
    let (server, addr, cancel) = server(config).await;
    let mut flood = Vec::new();
    for _ in 0..8 {
        flood.push(silent(&addr).await);
    }
    // Every slot holds a silent connection; a real peer still gets its answer at once (the
    // oldest silent one is closed to make room), long before any pre-auth deadline.
    let client = Transport::new(TokioNet, TransportConfig::lan(wire("21", 0)));
    let resp = tokio::time::timeout(Duration::from_secs(5), client.call(&addr, &request()))
        .await
        .expect("the peer was locked out")
        .unwrap();
    assert_eq!(resp, Response::Ack);
    let stats = server.inbound_stats();
    assert!(stats.evicted.load(Ordering::Relaxed) >= 1);
    assert_eq!(stats.refused_full.load(Ordering::Relaxed), 0);
    // The evicted connection was closed by the server.
    let mut byte = [0u8; 64];
    let first = &mut flood[0];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match first.read(&mut byte).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the oldest silent connection was not closed"
    );
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_gets_at_most_its_share_of_connections() {
    let mut config = TransportConfig::lan(wire("22", 0));
    config.inbound_per_ip_max = nz(3);
    config.pre_auth_timeout = Duration::from_secs(30);
    let (server, addr, cancel) = server(config).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(silent(&addr).await);
    }
    // The fourth from the same address is closed at accept, before any challenge.
    let mut fourth = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut byte = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_secs(5), fourth.read(&mut byte))
        .await
        .expect("the fourth connection was neither served nor closed");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    assert_eq!(
        server
            .inbound_stats()
            .refused_per_ip
            .load(Ordering::Relaxed),
        1
    );
    // Closing one frees its place.
    drop(held.pop());
    let client = Transport::new(TokioNet, TransportConfig::lan(wire("22", 0)));
    let mut answered = false;
    for _ in 0..50 {
        if client.call(&addr, &request()).await.is_ok() {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(answered, "a freed place was not reused");
    cancel.cancel();
}
