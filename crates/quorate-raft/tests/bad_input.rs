//! Bad input against a real-TCP cluster: corrupted and oversized frames, unauthenticated
//! peers, oversized values and commands, unknown node ids in admin calls. Each gets a clear
//! error or a closed connection; nothing is lost and no node panics.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use quorate_coord_api::{Consistency, Coord, CoordError};
use quorate_raft::backend::Proposer;
use quorate_raft::client::RemoteClient;
use quorate_raft::machine::{Command, Outcome};
use quorate_raft::network::{KIND_CLIENT_REQ, PRE_AUTH_FRAME_BYTES_MAX, Request, TransportConfig};
use quorate_types::NodeId;
use quorate_wire::net::TokioNet;
use quorate_wire::{ClusterKey, KeyRing, Sealer, WireConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Connects and reads the node's challenge (sent on every accepted connection).
async fn connect(addr: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    quorate_wire::Challenge::read_from(&mut s).await.unwrap();
    s
}

/// Sends `bytes` on a fresh connection and expects the node to close it without answering.
async fn expect_closed(addr: &str, bytes: &[u8]) {
    let mut s = connect(addr).await;
    // The server may close before reading all of it; a reset is also a close.
    let _ = s.write_all(bytes).await;
    // A short frame leaves the node waiting for the rest: end our side so it sees EOF.
    let _ = s.shutdown().await;
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("the node closes a connection that sent a bad frame");
    assert!(
        matches!(r, Ok(0) | Err(_)),
        "got an answer to a bad frame: {r:?}"
    );
}

/// Sends `bytes` on a fresh connection, keeps the connection open, and expects the node to
/// close it without waiting for more.
async fn expect_closed_at_once(addr: &str, bytes: &[u8]) {
    let mut s = connect(addr).await;
    let _ = s.write_all(bytes).await;
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("the node closes the connection on the header, without waiting for the body");
    assert!(
        matches!(r, Ok(0) | Err(_)),
        "got an answer to a bad frame: {r:?}"
    );
}

/// A header (valid magic and version) announcing `len` ciphertext bytes.
fn header_claiming(len: u32) -> Vec<u8> {
    let mut h = Vec::from(*b"QRTW");
    h.push(1);
    h.extend_from_slice(&[0x03, 0x01, 0, 0, 0, 0, 0]);
    h.extend_from_slice(&[0u8; 24]);
    h.extend_from_slice(&len.to_be_bytes());
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_connections_cannot_make_large_allocations() {
    let mut c = common::Cluster::start(3).await;
    let leader = c.leader().await;
    let follower = (leader + 1) % 3;
    let addr = c.addrs[follower].clone();

    // A header announcing 8 MiB (under frame_bytes_max = 16 MiB) on a connection that has not
    // proven the key: refused on the header, before the body is allocated or read (the
    // connection stays open on our side, so a server waiting for the body would not close).
    expect_closed_at_once(&addr, &header_claiming(8 << 20)).await;
    // Even a genuine large frame is refused as the first frame of a connection.
    let big = Request::Propose(Command::Put {
        key: "big-first".into(),
        value: vec![7u8; 200 * 1024],
        lease: None,
    });
    let frame = Sealer::new(&common::wire())
        .seal(KIND_CLIENT_REQ, &big)
        .unwrap();
    assert!(frame.len() > PRE_AUTH_FRAME_BYTES_MAX as usize);
    expect_closed_at_once(&addr, &frame).await;

    // The transport authenticates a fresh connection with a small hello first, so large
    // frames still work: a 100 KiB value from a new remote client (which follows the
    // follower's leader hint) and a linearizable read of it through the follower.
    let mut wire = common::wire();
    wire.frame_bytes_max = std::num::NonZeroU32::new(16 << 20).unwrap();
    let mut client = RemoteClient::new(
        TokioNet,
        TransportConfig {
            frame_bytes_max: std::num::NonZeroU32::new(16 << 20).unwrap(),
            connect_timeout: Duration::from_secs(5),
            rpc_timeout: Duration::from_secs(10),
            idle_per_peer_max: 1,
            inbound_connections_max: 1,
            inbound_idle_timeout: Duration::from_secs(10),
            ..TransportConfig::from_limits(wire, &quorate_raft::Limits::default())
        },
        vec![addr.clone(), c.addrs[leader].clone()],
    );
    let value = vec![5u8; 100 * 1024];
    let put = Command::Put {
        key: "big".into(),
        value: value.clone(),
        lease: None,
    };
    let (_, out) = client.propose(&put, 3).await.unwrap();
    assert!(matches!(out, Outcome::Put(_)), "{out:?}");
    let (_, kv) = client.get("big", 3).await.unwrap();
    assert_eq!(kv.map(|kv| kv.value), Some(value));
    let (_, kv) = client.get("big-first", 3).await.unwrap();
    assert!(kv.is_none());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_and_bad_requests_get_clear_errors() {
    let mut c = common::Cluster::start(3).await;
    let leader = c.leader().await;
    let follower = (leader + 1) % 3;
    let coord: Arc<dyn Coord> = Arc::new(c.node(follower).backend());
    coord.put("before", b"1".to_vec(), None).await.unwrap();
    let addr = c.addrs[follower].clone();

    // Garbage, a truncated header, a header claiming a 1 GiB body.
    expect_closed(
        &addr,
        b"GET / HTTP/1.1\r\nHost: example.invalid\r\nAccept: */*\r\n\r\n",
    )
    .await;
    expect_closed(&addr, b"QRTW\x01").await;
    let mut huge = Vec::from(*b"QRTW");
    huge.push(1);
    huge.extend_from_slice(&[0x03, 0x01, 0, 0, 0, 0, 0]);
    huge.extend_from_slice(&[0u8; 24]);
    huge.extend_from_slice(&(1u32 << 30).to_be_bytes());
    expect_closed(&addr, &huge).await;

    // A well-formed request sealed with another cluster's key (unauthenticated peer).
    let stranger = WireConfig::new(
        "raft-test",
        KeyRing::new(ClusterKey::from_bytes([9; 32]), vec![]),
    )
    .unwrap();
    let req = Request::Propose(Command::Put {
        key: "evil".into(),
        value: b"x".to_vec(),
        lease: None,
    });
    let frame = Sealer::new(&stranger).seal(KIND_CLIENT_REQ, &req).unwrap();
    expect_closed(&addr, &frame).await;

    // A genuine frame with one flipped byte in its ciphertext.
    let mut frame = Sealer::new(&common::wire())
        .seal(KIND_CLIENT_REQ, &req)
        .unwrap();
    let last = frame.len() - 1;
    frame[last] ^= 0x55;
    expect_closed(&addr, &frame).await;

    // Oversized values and commands: typed errors, nothing written.
    let max = coord.capabilities().value_bytes_max;
    let e = coord
        .put("big", vec![0u8; max + 1], None)
        .await
        .unwrap_err();
    assert!(matches!(e, CoordError::ValueTooLarge { .. }), "{e:?}");
    let huge_cmd = Command::Put {
        key: "big".into(),
        value: vec![0u8; 3 << 20],
        lease: None,
    };
    let e = c.node(follower).propose(huge_cmd).await.unwrap_err();
    assert!(matches!(e, CoordError::InvalidArgument { .. }), "{e:?}");

    // Unknown node ids in admin calls.
    let ghost = NodeId::new("ghost").unwrap();
    let e = coord.promote_voter(ghost.clone()).await.unwrap_err();
    assert!(matches!(e, CoordError::UnknownNode { .. }), "{e:?}");
    let e = coord.remove_node(ghost).await.unwrap_err();
    assert!(matches!(e, CoordError::UnknownNode { .. }), "{e:?}");

    // Nothing lost, nothing written by the rejected requests, the cluster still works.
    let got = coord
        .get("before", Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(got.kv.map(|kv| kv.value), Some(b"1".to_vec()));
    let got = coord.get("evil", Consistency::Linearizable).await.unwrap();
    assert!(got.kv.is_none());
    let got = coord.get("big", Consistency::Linearizable).await.unwrap();
    assert!(got.kv.is_none());
    coord.put("after", b"2".to_vec(), None).await.unwrap();
    c.shutdown().await;
}
