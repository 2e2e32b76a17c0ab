//! Values up to the machine's `value_bytes_max` commit on a 3-node real-TCP cluster, are read
//! back through a follower, and the log keeps committing after them. (A 1 MiB entry takes
//! longer than one heartbeat interval, openraft's AppendEntries timeout, in a debug build; an
//! earlier build was seen to resend it forever and stall the log behind it.)
#![allow(clippy::unwrap_used, reason = "test")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use quorate_coord_api::{Consistency, Coord};

/// A liveness bound, not a timing assertion: a stalled log fails instead of hanging.
const STALL: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_up_to_the_limit_commit_and_the_log_goes_on() {
    let mut c = common::Cluster::start(3).await;
    let leader = c.leader().await;
    let follower = (leader + 1) % 3;
    let to_leader: Arc<dyn Coord> = Arc::new(c.node(leader).backend());
    let to_follower: Arc<dyn Coord> = Arc::new(c.node(follower).backend());
    let max = c.config(leader).machine.value_bytes_max;
    for (i, size) in [256 * 1024, 1024 * 1024, max].into_iter().enumerate() {
        let key = format!("big-{i}");
        let value = vec![u8::try_from(i).unwrap(); size];
        tokio::time::timeout(STALL, to_leader.put(&key, value.clone(), None))
            .await
            .unwrap_or_else(|_| panic!("a {size}-byte put did not commit within {STALL:?}"))
            .unwrap();
        tokio::time::timeout(STALL, to_leader.put("small", vec![1], None))
            .await
            .unwrap_or_else(|_| panic!("the log stalled after a {size}-byte entry"))
            .unwrap();
        let got = tokio::time::timeout(STALL, to_follower.get(&key, Consistency::Linearizable))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.kv.map(|kv| kv.value.len()), Some(size));
    }
    // One byte over the limit is refused with a clear error, and nothing is written.
    let err = to_leader
        .put("too-big", vec![0; max + 1], None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("value"), "{err}");
    let got = to_follower
        .get("too-big", Consistency::Linearizable)
        .await
        .unwrap();
    assert!(got.kv.is_none());
    c.shutdown().await;
}
