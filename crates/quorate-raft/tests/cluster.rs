//! Real-TCP clusters on loopback: proposals, forwarding, linearizable reads on followers.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test")]

mod common;

use quorate_coord_api::Consistency;
use quorate_raft::backend::Proposer;
use quorate_raft::machine::{Command, Outcome};

fn put(key: &str, value: &[u8]) -> Command {
    Command::Put {
        key: key.to_owned(),
        value: value.to_vec(),
        lease: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_and_forward() {
    let mut c = common::Cluster::start(3).await;
    let leader = c.leader().await;
    let follower = (leader + 1) % 3;
    // On the leader.
    let (i1, o1) = c.node(leader).propose(put("a", b"1")).await.unwrap();
    assert!(matches!(o1, Outcome::Put(_)), "{o1:?}");
    // Through a follower (forwarded).
    let (i2, o2) = c.node(follower).propose(put("b", b"2")).await.unwrap();
    assert!(matches!(o2, Outcome::Put(_)), "{o2:?}");
    assert!(i2 > i1);
    // A linearizable read on the other follower sees both.
    let other = (leader + 2) % 3;
    let got = c
        .node(other)
        .read(
            Consistency::Linearizable,
            Box::new(|m| {
                (
                    m.get("a").map(|kv| kv.value.clone()),
                    m.get("b").map(|kv| kv.value.clone()),
                )
            }),
        )
        .await
        .unwrap();
    assert_eq!(got, (Some(b"1".to_vec()), Some(b"2".to_vec())));
    let status = c.node(other).status().await.unwrap();
    assert_eq!(status.voters.len(), 3);
    assert!(status.applied_index >= i2);
    c.shutdown().await;
}

/// A remote client whose first node is hung (it accepts connections and never answers): the
/// proposal sent there times out with an unknown outcome and is not repeated, but the next
/// call starts at another node instead of paying the full timeout again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_client_moves_on_from_a_hung_node_after_a_timeout() {
    use std::time::Duration;

    use quorate_coord_api::CoordError;
    use quorate_raft::client::RemoteClient;
    use quorate_raft::network::TransportConfig;
    use quorate_wire::net::TokioNet;

    let mut c = common::Cluster::start(3).await;
    c.leader().await;
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung_addr = hung.local_addr().unwrap().to_string();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = hung.accept().await {
            held.push(conn);
        }
    });
    let mut addrs = vec![hung_addr.clone()];
    addrs.extend(c.addrs.iter().cloned());
    let mut client = RemoteClient::new(
        TokioNet,
        TransportConfig {
            frame_bytes_max: std::num::NonZeroU32::new(1 << 20).unwrap(),
            connect_timeout: Duration::from_secs(5),
            rpc_timeout: Duration::from_millis(500),
            idle_per_peer_max: 1,
            inbound_connections_max: 1,
            inbound_idle_timeout: Duration::from_secs(10),
            ..TransportConfig::from_limits(common::wire(), &quorate_raft::Limits::default())
        },
        addrs,
    );
    assert_eq!(client.current(), Some(hung_addr.as_str()));
    let first = client.propose(&put("k", b"1"), 3).await;
    assert!(
        matches!(first, Err(CoordError::Timeout { .. })),
        "a hung node gives an unknown outcome, not a retry: {first:?}"
    );
    assert_ne!(client.current(), Some(hung_addr.as_str()));
    let (_, out) = client.propose(&put("k", b"2"), 3).await.unwrap();
    assert!(matches!(out, Outcome::Put(_)), "{out:?}");
    holder.abort();
    c.shutdown().await;
}
