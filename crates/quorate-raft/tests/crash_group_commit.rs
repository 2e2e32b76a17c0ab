//! Durability of the group-commit path: 16 writers keep a real-TCP cluster on redb files busy
//! (so the log writer is always merging appends, votes and committed ids into shared
//! commits), and at seeded-random points a node is killed mid-stream (its runtime dropped at
//! once: the writer task dies wherever it is, between queueing a write, committing it on the
//! blocking pool, and reporting it flushed); the leader is among the victims, and the last
//! round kills all three at once. After every node restarts from its files, every
//! acknowledged write is on every node.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    reason = "test; it prints its seed and crash schedule"
)]

mod common;

use std::collections::BTreeMap;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quorate_coord_api::Consistency;
use quorate_raft::Limits;
use quorate_raft::RaftNode;
use quorate_raft::backend::Proposer;
use quorate_raft::machine::{Command, Outcome};
use quorate_wire::net::TokioNet;

/// A small seeded generator (xorshift64*): the crash points come from the seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// The acknowledged writes, and their count (watched for the crash points).
#[derive(Clone)]
struct Acked {
    writes: Arc<Mutex<BTreeMap<String, Vec<u8>>>>,
    count: Arc<tokio::sync::watch::Sender<usize>>,
}

impl Acked {
    fn insert(&self, key: String, value: Vec<u8>) {
        let n = {
            let mut w = self.writes.lock().unwrap();
            w.insert(key, value);
            w.len()
        };
        self.count.send_replace(n);
    }

    fn len(&self) -> usize {
        self.writes.lock().unwrap().len()
    }
}

/// One writer: unique keys, one at a time, to `node`, until `stop`; records what was
/// acknowledged. A call to a killed node fails or times out (not acknowledged, so not
/// recorded).
async fn writer(node: RaftNode<TokioNet>, id: String, stop: Arc<AtomicBool>, acked: Acked) {
    let mut k = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("{id}-{k}");
        let value = format!("v-{id}-{k}").into_bytes();
        k += 1;
        let cmd = Command::Put {
            key: key.clone(),
            value: value.clone(),
            lease: None,
        };
        match tokio::time::timeout(Duration::from_secs(5), node.propose(cmd)).await {
            Ok(Ok((_, Outcome::Put(_)))) => {
                acked.insert(key, value);
            }
            Ok(Ok(other)) => panic!("a put answered {other:?}"),
            // Failed, or no answer: the outcome is unknown; the check only needs the acked.
            Ok(Err(_)) | Err(_) => tokio::task::yield_now().await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_crashes_in_the_group_commit_path() {
    let seed = std::env::var("QUORATE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_c0de_u64);
    println!("seed {seed} (QUORATE_CRASH_SEED replays the crash schedule)");
    let mut rng = Rng(seed.max(1));
    // Snapshots and compaction run too, so a crash can also land beside a snapshot commit.
    let limits = Limits {
        snapshot_every_entries: NonZeroU64::new(100).unwrap(),
        log_keep_entries: 20,
        ..Limits::default()
    };
    let mut c = common::Cluster::start_with(3, true, limits).await;
    c.leader().await;
    let acked = Acked {
        writes: Arc::new(Mutex::new(BTreeMap::new())),
        count: Arc::new(tokio::sync::watch::Sender::new(0)),
    };
    let rounds = 5;
    for round in 0..rounds {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for w in 0..16usize {
            let node = c.node(w % 3).clone();
            tasks.push(tokio::spawn(writer(
                node,
                format!("r{round}w{w}"),
                stop.clone(),
                acked.clone(),
            )));
        }
        // Let a seeded number of writes be acknowledged, then crash.
        let target = acked.len() + 10 + rng.below(60) as usize;
        let mut count = acked.count.subscribe();
        tokio::time::timeout(Duration::from_secs(60), count.wait_for(|n| *n >= target))
            .await
            .unwrap_or_else(|_| panic!("round {round}: writes stopped being acknowledged"))
            .expect("the count channel lives");
        let leader = c.leader().await;
        let victims: Vec<usize> = if round == rounds - 1 {
            vec![0, 1, 2]
        } else if rng.below(2) == 0 {
            vec![leader]
        } else {
            vec![rng.below(3) as usize]
        };
        println!("round {round}: killing {victims:?} (leader {leader}) after {target} acks");
        for &v in &victims {
            c.kill(v).await;
        }
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.expect("a writer panicked");
        }
        for &v in &victims {
            c.restart(v).await;
        }
        c.leader().await;
    }
    let acked = acked.writes.lock().unwrap().clone();
    assert!(
        acked.len() >= 50,
        "only {} writes acknowledged",
        acked.len()
    );
    for i in 0..3 {
        let want = acked.clone();
        let missing = c
            .node(i)
            .read(
                Consistency::Linearizable,
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
            "seed {seed}: node {i} lost {} of {} acknowledged writes: {:?}",
            missing.len(),
            acked.len(),
            missing.iter().take(10).collect::<Vec<_>>()
        );
    }
    c.shutdown().await;
}
