//! Live membership changes and snapshot install on real-TCP clusters on loopback: a learner
//! joins a running 3-node cluster, catches up, is promoted (joint consensus) and takes writes;
//! an old voter is removed while writes go on; admin calls naming unknown nodes or the last
//! voter fail with clear errors and lose nothing; a follower that missed more than the
//! compacted log catches up through a snapshot install.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test")]

mod common;

use std::collections::BTreeMap;
use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::Duration;

use quorate_coord_api::{Consistency, Coord, CoordError};
use quorate_raft::backend::Proposer;
use quorate_raft::machine::{Command, Outcome};
use quorate_raft::{Limits, RaftNode};
use quorate_types::NodeId;
use quorate_wire::net::TokioNet;

fn applied(n: &RaftNode<TokioNet>) -> u64 {
    n.metrics().borrow().last_applied.map_or(0, |l| l.index)
}

/// Waits (up to 20 s) until `n` has applied `index`.
async fn wait_applied(n: &RaftNode<TokioNet>, index: u64) {
    let mut m = n.metrics();
    tokio::time::timeout(
        Duration::from_secs(20),
        m.wait_for(|m| m.last_applied.is_some_and(|l| l.index >= index)),
    )
    .await
    .unwrap_or_else(|_| panic!("{} did not apply index {index} within 20 s", n.name()))
    .unwrap();
}

async fn get(c: &Arc<dyn Coord>, key: &str) -> Option<Vec<u8>> {
    c.get(key, Consistency::Linearizable)
        .await
        .unwrap()
        .kv
        .map(|kv| kv.value)
}

/// The answering node's status once `done` holds (it applies membership changes a little after
/// the leader commits them); fails with the last status after 10 s.
async fn status_until(
    coord: &Arc<dyn Coord>,
    done: impl Fn(&quorate_coord_api::ClusterStatus) -> bool,
) -> quorate_coord_api::ClusterStatus {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let st = coord.status().await.unwrap();
        if done(&st) {
            return st;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never reached: {st:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learner_joins_is_promoted_and_an_old_voter_leaves() {
    let mut c = common::Cluster::start(3).await;
    let leader = c.leader().await;
    let first = c.node(leader).backend();
    first.put("before", b"0".to_vec(), None).await.unwrap();

    // A 4th node on a fresh store joins as a learner (asked through a follower: forwarded).
    let new = c.add_node().await;
    let new_name = common::name(new);
    let via: Arc<dyn Coord> = Arc::new(c.node((leader + 1) % 3).backend());
    via.add_learner(new_name.clone(), c.addrs[new].clone())
        .await
        .unwrap();
    // `status` is the answering node's view: the follower sees the change once it applied it.
    let st = status_until(&via, |st| st.learners.contains(&new_name)).await;
    assert_eq!(st.voters.len(), 3, "{st:?}");
    // A voter cannot be added as a learner.
    let e = via
        .add_learner(common::name(leader), c.addrs[leader].clone())
        .await
        .unwrap_err();
    assert!(matches!(e, CoordError::InvalidArgument { .. }), "{e:?}");

    // It catches up: everything the leader applied, including the write before it joined.
    wait_applied(c.node(new), applied(c.node(leader))).await;
    let local = c
        .node(new)
        .read(
            Consistency::Local,
            Box::new(|m| m.get("before").map(|kv| kv.value.clone())),
        )
        .await
        .unwrap();
    assert_eq!(local, Some(b"0".to_vec()));

    // Promote it (joint consensus), then write through it and read back everywhere.
    let through_new: Arc<dyn Coord> = Arc::new(c.node(new).backend());
    through_new.promote_voter(new_name.clone()).await.unwrap();
    // Promoting a voter again is a no-op.
    through_new.promote_voter(new_name.clone()).await.unwrap();
    let st = status_until(&through_new, |st| st.voters.len() == 4).await;
    assert!(
        st.voters.contains(&new_name) && st.learners.is_empty(),
        "{st:?}"
    );
    let rev = through_new
        .put("via-new", b"1".to_vec(), None)
        .await
        .unwrap();
    for i in 0..4 {
        wait_applied(c.node(i), rev.revision.0).await;
    }
    assert_eq!(get(&through_new, "via-new").await, Some(b"1".to_vec()));

    // Remove an old voter that is not the leader, while a writer keeps going.
    let leader = c.leader().await;
    let victim = (0..3).find(|i| *i != leader).unwrap();
    let victim_name = common::name(victim);
    let writer = {
        let coord = through_new.clone();
        tokio::spawn(async move {
            let mut acked = BTreeMap::new();
            for k in 0..30u32 {
                let key = format!("w{k}");
                if coord
                    .put(&key, k.to_be_bytes().to_vec(), None)
                    .await
                    .is_ok()
                {
                    acked.insert(key, k.to_be_bytes().to_vec());
                }
            }
            acked
        })
    };
    through_new.remove_node(victim_name.clone()).await.unwrap();
    let acked = writer.await.unwrap();
    assert_eq!(acked.len(), 30, "writes during the removal were refused");
    let st = status_until(&through_new, |st| st.voters.len() == 3).await;
    assert!(!st.voters.contains(&victim_name), "{st:?}");
    c.kill(victim).await;

    // Admin errors: unknown nodes, a node no longer present, a voter added as learner.
    let ghost = NodeId::new("ghost").unwrap();
    let e = through_new.promote_voter(ghost.clone()).await.unwrap_err();
    assert!(matches!(e, CoordError::UnknownNode { .. }), "{e:?}");
    let e = through_new.remove_node(ghost).await.unwrap_err();
    assert!(matches!(e, CoordError::UnknownNode { .. }), "{e:?}");
    let e = through_new
        .remove_node(victim_name.clone())
        .await
        .unwrap_err();
    assert!(matches!(e, CoordError::UnknownNode { .. }), "{e:?}");
    let e = through_new.promote_voter(victim_name).await.unwrap_err();
    assert!(matches!(e, CoordError::UnknownNode { .. }), "{e:?}");

    // The 3 remaining voters keep writing; nothing acknowledged was lost.
    through_new.put("after", b"2".to_vec(), None).await.unwrap();
    let survivor: Arc<dyn Coord> =
        Arc::new(c.node((0..3).find(|i| *i != victim).unwrap()).backend());
    for (k, v) in &acked {
        assert_eq!(get(&survivor, k).await.as_ref(), Some(v), "{k}");
    }
    assert_eq!(get(&survivor, "before").await, Some(b"0".to_vec()));
    assert_eq!(get(&survivor, "via-new").await, Some(b"1".to_vec()));
    assert_eq!(get(&survivor, "after").await, Some(b"2".to_vec()));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_last_voter_is_refused() {
    let mut c = common::Cluster::start(1).await;
    c.leader().await;
    let coord: Arc<dyn Coord> = Arc::new(c.node(0).backend());
    coord.put("k", b"v".to_vec(), None).await.unwrap();
    let e = coord.remove_node(common::name(0)).await.unwrap_err();
    match &e {
        CoordError::InvalidArgument { reason } => {
            assert!(reason.contains("last voter"), "{reason}");
        }
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    let st = coord.status().await.unwrap();
    assert_eq!(st.voters, vec![common::name(0)]);
    assert_eq!(get(&coord, "k").await, Some(b"v".to_vec()));
    coord.put("k2", b"v2".to_vec(), None).await.unwrap();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_the_compacted_log_catches_up_by_snapshot() {
    // Snapshot every 20 entries, keep 5 behind it.
    let limits = Limits {
        snapshot_every_entries: NonZeroU64::new(20).unwrap(),
        log_keep_entries: 5,
        ..Limits::default()
    };
    let mut c = common::Cluster::start_with(3, false, limits).await;
    let leader = c.leader().await;
    let lagging = (leader + 1) % 3;
    c.node(leader)
        .propose(Command::Put {
            key: "k-first".into(),
            value: b"f".to_vec(),
            lease: None,
        })
        .await
        .unwrap();
    wait_applied(c.node(lagging), applied(c.node(leader))).await;
    let stopped_at = applied(c.node(lagging));
    c.kill(lagging).await;

    // Write past several snapshots while it is down.
    let mut acked = BTreeMap::new();
    for k in 0..100u32 {
        let key = format!("k{k}");
        let value = format!("v{k}").into_bytes();
        let r = c
            .node(leader)
            .propose(Command::Put {
                key: key.clone(),
                value: value.clone(),
                lease: None,
            })
            .await
            .unwrap();
        assert!(matches!(r.1, Outcome::Put(_)), "{r:?}");
        acked.insert(key, value);
    }
    // The log it needs is gone from the leader (snapshots and purges run in the background
    // after the writes are applied: wait for the purge, bounded).
    let mut metrics = c.node(leader).metrics();
    let purged_past = matches!(
        tokio::time::timeout(
            std::time::Duration::from_secs(20),
            metrics.wait_for(|m| m.purged.map_or(0, |p| p.index) > stopped_at),
        )
        .await,
        Ok(Ok(_))
    );
    let purged = metrics.borrow().purged.map_or(0, |p| p.index);
    assert!(
        purged_past,
        "the leader purged its log only up to {purged}; the follower stopped at {stopped_at}"
    );

    c.restart(lagging).await;
    let target = applied(c.node(leader));
    wait_applied(c.node(lagging), target).await;
    let snap = c
        .node(lagging)
        .metrics()
        .borrow()
        .snapshot
        .map_or(0, |s| s.index);
    assert!(
        snap > stopped_at && snap >= purged,
        "the follower did not install a snapshot: its snapshot index is {snap}, it stopped at \
         {stopped_at}, the leader purged up to {purged}"
    );
    // It serves the data from its own state machine.
    let want = acked.clone();
    let missing = c
        .node(lagging)
        .read(
            Consistency::Local,
            Box::new(move |m| {
                want.iter()
                    .filter(|(k, v)| m.get(k).map(|kv| &kv.value) != Some(*v))
                    .map(|(k, _)| k.clone())
                    .collect::<Vec<_>>()
            }),
        )
        .await
        .unwrap();
    assert!(
        missing.is_empty(),
        "missing after snapshot install: {missing:?}"
    );
    // And linearizably, through the leader's read index.
    let coord: Arc<dyn Coord> = Arc::new(c.node(lagging).backend());
    assert_eq!(get(&coord, "k-first").await, Some(b"f".to_vec()));
    assert_eq!(get(&coord, "k99").await, Some(b"v99".to_vec()));
    c.shutdown().await;
}
