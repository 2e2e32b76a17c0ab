//! Kill all three nodes of a real-TCP cluster (each node's runtime dropped at once) and
//! restart them from their redb files: every acknowledged write is there, through snapshots
//! and log compaction.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test")]

mod common;

use std::collections::BTreeMap;
use std::num::NonZeroU64;

use quorate_coord_api::Consistency;
use quorate_raft::Limits;
use quorate_raft::backend::Proposer;
use quorate_raft::machine::{Command, Outcome};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_all_three_and_restart_from_disk() {
    // Snapshot every 40 entries, keep 10 behind it: the restart goes through snapshot restore,
    // log replay and a purged log.
    let limits = Limits {
        snapshot_every_entries: NonZeroU64::new(40).unwrap(),
        log_keep_entries: 10,
        ..Limits::default()
    };
    let mut c = common::Cluster::start_with(3, true, limits).await;
    c.leader().await;
    // 120 writes from 8 concurrent clients spread over all nodes; remember the acknowledged.
    let mut tasks = Vec::new();
    for w in 0..8usize {
        let node = c.node(w % 3).clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = BTreeMap::new();
            for k in 0..15usize {
                let key = format!("k{w}-{k}");
                let value = format!("v{w}-{k}").into_bytes();
                let cmd = Command::Put {
                    key: key.clone(),
                    value: value.clone(),
                    lease: None,
                };
                if let Ok((_, Outcome::Put(_))) = node.propose(cmd).await {
                    acked.insert(key, value);
                }
            }
            acked
        }));
    }
    let mut acked = BTreeMap::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert_eq!(
        acked.len(),
        120,
        "every write on a healthy cluster is acknowledged"
    );
    let before: Vec<u64> = (0..3)
        .map(|i| c.node(i).metrics().borrow().snapshot.map_or(0, |s| s.index))
        .collect();
    assert!(
        before.iter().any(|s| *s > 0),
        "a snapshot was taken: {before:?}"
    );

    for i in 0..3 {
        c.kill(i).await;
    }
    for i in 0..3 {
        c.restart(i).await;
    }
    c.leader().await;
    for i in 0..3 {
        let acked = acked.clone();
        let missing = c
            .node(i)
            .read(
                Consistency::Linearizable,
                Box::new(move |m| {
                    acked
                        .iter()
                        .filter(|(k, v)| m.get(k).map(|kv| &kv.value) != Some(*v))
                        .map(|(k, _)| k.clone())
                        .collect::<Vec<_>>()
                }),
            )
            .await
            .unwrap();
        assert!(
            missing.is_empty(),
            "node {i} lost acknowledged writes: {missing:?}"
        );
    }
    // And the restarted cluster takes writes.
    let l = c.leader().await;
    let r = c
        .node(l)
        .propose(Command::Put {
            key: "after".into(),
            value: b"x".to_vec(),
            lease: None,
        })
        .await
        .unwrap();
    assert!(matches!(r.1, Outcome::Put(_)));
    c.shutdown().await;
}
