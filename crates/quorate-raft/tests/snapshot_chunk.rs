//! An InstallSnapshot chunk at a huge offset (sent by a holder of the cluster key) gets an
//! error, without a huge allocation, and the node keeps working.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test")]

mod common;

use std::time::Duration;

use openraft::raft::InstallSnapshotRequest;
use openraft::{SnapshotMeta, StoredMembership, Vote};
use quorate_coord_api::Coord;
use quorate_raft::network::{Request, Response, Transport, TransportConfig};
use quorate_wire::net::TokioNet;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_chunk_at_a_huge_offset_is_refused() {
    let mut c = common::Cluster::start(3).await;
    let leader = c.leader().await;
    let follower = (leader + 1) % 3;
    let term = c.node(leader).view().borrow().term;
    let chunk = |offset: u64| {
        Request::InstallSnapshot(InstallSnapshotRequest {
            vote: Vote::new_committed(term, c.node(leader).raft_id()),
            meta: SnapshotMeta {
                last_log_id: None,
                last_membership: StoredMembership::default(),
                snapshot_id: "evil".into(),
            },
            offset,
            data: vec![1u8; 16],
            done: false,
        })
    };
    let t = Transport::new(
        TokioNet,
        TransportConfig {
            frame_bytes_max: std::num::NonZeroU32::new(16 << 20).unwrap(),
            connect_timeout: Duration::from_secs(5),
            rpc_timeout: Duration::from_secs(10),
            idle_per_peer_max: 1,
            inbound_connections_max: 1,
            inbound_idle_timeout: Duration::from_secs(10),
            ..TransportConfig::from_limits(common::wire(), &quorate_raft::Limits::default())
        },
    );
    // A first chunk at offset 0 opens the transfer; the next one claims offset 1 TiB.
    let r = t.call(&c.addrs[follower], &chunk(0), None).await;
    assert!(matches!(r, Ok(Response::InstallSnapshot(Ok(_)))), "{r:?}");
    let r = t.call(&c.addrs[follower], &chunk(1 << 40), None).await;
    assert!(
        matches!(r, Ok(Response::InstallSnapshot(Err(_)))),
        "a chunk at offset 1 TiB was not refused: {r:?}"
    );
    // The follower still serves.
    let coord = c.node(follower).backend();
    coord.put("after", b"1".to_vec(), None).await.unwrap();
    c.shutdown().await;
}
