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
