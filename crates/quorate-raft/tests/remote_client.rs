//! The remote client (`client::CoordClient`) against real-TCP clusters: a watch resumes
//! without a gap when the node it polls is killed, a lock waiter is woken by the holder's
//! unlock (a held watch poll, not a timer), and bad client requests get typed errors.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use quorate_coord_api::{
    Consistency, Coord, CoordError, EventKind, LeaseId, RangeRequest, Revision, Txn, TxnOp,
};
use quorate_raft::Limits;
use quorate_raft::client::RemoteClient;
use quorate_raft::machine::Command;
use quorate_raft::network::{
    ClientRequest, ClientResponse, Request, Response, Transport, TransportConfig, WatchPoll,
};
use quorate_wire::net::TokioNet;

/// Writes `n` puts under `prefix` in one transaction (one revision); returns (key, revision).
async fn txn_puts(c: &dyn Coord, prefix: &str, n: u8) -> Vec<(String, Revision)> {
    let keys: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    let t = c
        .txn(Txn {
            success: keys
                .iter()
                .map(|k| TxnOp::Put {
                    key: k.clone(),
                    value: b"v".to_vec(),
                    lease: None,
                })
                .collect(),
            ..Txn::default()
        })
        .await
        .unwrap();
    keys.into_iter().map(|k| (k, t.revision)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_without_a_gap_after_its_node_is_killed() {
    let mut c = common::Cluster::start_with(3, true, Limits::default()).await;
    let leader = c.leader().await;
    let follower = (leader + 1) % 3;
    // The watcher starts at the follower; reads and polls never move it (no NotLeader). Two
    // events per poll: a transaction's three events at one revision span two polls.
    let mut addrs = c.addrs.clone();
    addrs.rotate_left(follower);
    let mut config = common::remote_config();
    config.watch_events_max = std::num::NonZeroU32::new(2).unwrap();
    let watcher = quorate_raft::client::CoordClient::connect(TokioNet, config, addrs)
        .await
        .unwrap();
    let writer = Arc::new(common::remote_client(c.addrs.clone()).await);
    let mut stream = watcher.watch("resume/", None).await.unwrap();
    assert_eq!(watcher.current(), Some(c.addrs[follower].as_str()));

    let mut written = txn_puts(&*writer, "resume/a", 3).await;
    written.extend(txn_puts(&*writer, "resume/b", 3).await);
    // Four of the six: the cursor now sits inside the second transaction's revision.
    for (key, rev) in &written[..4] {
        let ev = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("an event")
            .expect("the stream goes on")
            .unwrap();
        assert_eq!((&ev.kv.key, ev.revision()), (key, *rev));
    }
    for (key, rev) in &written[4..] {
        let ev = stream.next().await.unwrap().unwrap();
        assert_eq!((&ev.kv.key, ev.revision()), (key, *rev));
    }
    // The next poll is sent (and held by the follower, which has nothing new); then the
    // follower is killed and more is written.
    let sent = watcher.calls_sent();
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < 6 {
            match stream.next().await {
                Some(Ok(ev)) => got.push((ev.kv.key.clone(), ev.revision(), ev.kind)),
                other => panic!("the stream failed: {other:?}"),
            }
        }
        got
    });
    while watcher.calls_sent() == sent {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    c.kill(follower).await;
    let mut after = txn_puts(&*writer, "resume/c", 3).await;
    after.extend(txn_puts(&*writer, "resume/d", 3).await);
    let got = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("events after the kill")
        .unwrap();
    let want: Vec<_> = after
        .into_iter()
        .map(|(k, r)| (k, r, EventKind::Put))
        .collect();
    assert_eq!(got, want, "a gap or a duplicate across the node change");
    assert_ne!(watcher.current(), Some(c.addrs[follower].as_str()));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_waiter_is_woken_by_the_unlock_not_by_polling() {
    let mut c = common::Cluster::start(3).await;
    c.leader().await;
    let holder = common::remote_client(c.addrs.clone()).await;
    let waiter = common::remote_client(c.addrs.clone()).await;
    let ttl = Duration::from_secs(10);
    let l1 = holder.lease_grant(ttl).await.unwrap().id;
    let l2 = waiter.lease_grant(ttl).await.unwrap().id;
    let g1 = holder.lock("wake", l1).await.unwrap();

    let before = waiter.calls_sent();
    let w = waiter.clone();
    let task = tokio::spawn(async move { w.lock("wake", l2).await });
    // Until the waiter's key is queued.
    loop {
        let info = holder.lease_time_to_live(l2).await.unwrap();
        if !info.keys.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Hold the lock a while: a polling waiter (1-16 ms back-off) would send dozens of calls
    // meanwhile; a watching one sends its one held poll.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !task.is_finished(),
        "the waiter got the lock while it was held"
    );
    holder.unlock(&g1).await.unwrap();
    let g2 = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the waiter wakes after the unlock")
        .unwrap()
        .unwrap();
    assert_eq!(g2.lease, l2);
    assert!(g2.token > g1.token);
    let calls = waiter.calls_sent() - before;
    // The lock write (plus a hop or two to the leader), one held poll, one position read.
    assert!(calls <= 6, "the waiter sent {calls} calls: it polls");
    c.shutdown().await;
}

fn transport() -> Transport<TokioNet> {
    let limits = Limits::default();
    Transport::new(
        TokioNet,
        TransportConfig {
            wire: common::wire(),
            frame_bytes_max: limits.frame_bytes_max,
            connect_timeout: Duration::from_secs(5),
            rpc_timeout: Duration::from_secs(10),
            idle_per_peer_max: 1,
            inbound_connections_max: 1,
            inbound_idle_timeout: Duration::from_secs(10),
            ..TransportConfig::from_limits(common::wire(), &limits)
        },
    )
}

#[track_caller]
fn check(
    r: Result<quorate_raft::network::ClientResponse, CoordError>,
    want: fn(&CoordError) -> bool,
) {
    match r {
        Err(e) if want(&e) => {}
        other => panic!("unexpected answer {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_client_requests_get_typed_errors() {
    let mut c = common::Cluster::start(3).await;
    let leader = c.leader().await;
    let client = common::remote_client(c.addrs.clone()).await;
    let caps = client.capabilities();
    client.put("kept", b"1".to_vec(), None).await.unwrap();
    let limits = Limits::default();
    let poll = |prefix: String, max_events: u32, wait: Duration, from: u64| {
        ClientRequest::WatchPoll(WatchPoll {
            prefix,
            from_revision: Revision(from),
            skip: 0,
            max_events,
            wait,
        })
    };
    let invalid = |e: &CoordError| matches!(e, CoordError::InvalidArgument { .. });
    let long = "p".repeat(caps.key_bytes_max + 1);
    for node in 0..3 {
        check(
            client
                .call_node(node, poll(long.clone(), 10, Duration::ZERO, 1))
                .await,
            |e| matches!(e, CoordError::KeyTooLarge { .. }),
        );
        check(
            client
                .call_node(node, poll("a".into(), 0, Duration::ZERO, 1))
                .await,
            invalid,
        );
        check(
            client
                .call_node(node, poll("a".into(), u32::MAX, Duration::ZERO, 1))
                .await,
            invalid,
        );
        check(
            client
                .call_node(
                    node,
                    poll(
                        "a".into(),
                        limits.watch_events_max.get() + 1,
                        Duration::ZERO,
                        1,
                    ),
                )
                .await,
            invalid,
        );
        check(
            client
                .call_node(
                    node,
                    poll(
                        "a".into(),
                        10,
                        limits.watch_wait_max + Duration::from_millis(1),
                        1,
                    ),
                )
                .await,
            invalid,
        );
        check(
            client
                .call_node(
                    node,
                    poll("a".into(), 10, Duration::from_secs(u64::MAX / 4), 1),
                )
                .await,
            invalid,
        );
        check(
            client
                .call_node(node, poll("a".into(), 10, Duration::ZERO, 0))
                .await,
            invalid,
        );
        check(
            client
                .call_node(
                    node,
                    ClientRequest::Range(RangeRequest::prefix(long.clone())),
                )
                .await,
            |e| matches!(e, CoordError::KeyTooLarge { .. }),
        );
        check(
            client
                .call_node(
                    node,
                    ClientRequest::LockHolder {
                        name: "n".repeat(10_000),
                        consistency: Consistency::Local,
                    },
                )
                .await,
            invalid,
        );
        check(
            client
                .call_node(
                    node,
                    ClientRequest::Position {
                        key: "not/a/queue/key".into(),
                        lease: LeaseId(1),
                    },
                )
                .await,
            invalid,
        );
    }
    // A client cannot propose a lease expiry: refused by the client layer, and by a node that
    // receives one as a raw proposal.
    let expire = Command::LeaseExpire {
        leases: vec![(LeaseId(1), 1)],
    };
    let mut old = RemoteClient::new(
        TokioNet,
        TransportConfig {
            wire: common::wire(),
            frame_bytes_max: limits.frame_bytes_max,
            connect_timeout: Duration::from_secs(5),
            rpc_timeout: Duration::from_secs(10),
            idle_per_peer_max: 1,
            inbound_connections_max: 1,
            inbound_idle_timeout: Duration::from_secs(10),
            ..TransportConfig::from_limits(common::wire(), &limits)
        },
        c.addrs.clone(),
    );
    let e = old.propose(&expire, 3).await.unwrap_err();
    assert!(invalid(&e), "{e:?}");
    let t = transport();
    match t
        .call(&c.addrs[leader], &Request::Propose(expire), None)
        .await
        .unwrap()
    {
        Response::Propose(Err(e)) => assert!(invalid(&e), "{e:?}"),
        other => panic!("{other:?}"),
    }
    // A poll within the bounds is answered (held, then empty); the cluster still works.
    let got = client
        .call_node(
            leader,
            poll("nothing/".into(), 10, Duration::from_millis(50), 1),
        )
        .await
        .unwrap();
    assert!(
        matches!(&got, quorate_raft::network::ClientResponse::Watch(b) if b.events.is_empty()),
        "{got:?}"
    );
    let kept = client.get("kept", Consistency::Linearizable).await.unwrap();
    assert_eq!(kept.kv.map(|kv| kv.value), Some(b"1".to_vec()));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_watch_polls_are_bounded_per_node() {
    let limits = Limits {
        watch_polls_held_max: std::num::NonZeroUsize::new(1).unwrap(),
        ..Limits::default()
    };
    let mut c = common::Cluster::start_with(1, false, limits).await;
    c.leader().await;
    let client = common::remote_client(c.addrs.clone()).await;
    let poll = ClientRequest::WatchPoll(WatchPoll {
        prefix: "held/".into(),
        from_revision: Revision(1_000_000),
        skip: 0,
        max_events: 1,
        wait: Duration::from_secs(2),
    });
    // Two polls at once: one holds the only slot, the other is refused. (Both answered
    // normally only if the second arrived after the first's whole hold: then try again.)
    let mut refused = false;
    for _ in 0..5 {
        let (a, b) = tokio::join!(
            client.call_node(0, poll.clone()),
            client.call_node(0, poll.clone())
        );
        let exhausted = |r: &Result<ClientResponse, CoordError>| {
            matches!(r, Err(CoordError::ResourceExhausted { .. }))
        };
        let held = |r: &Result<ClientResponse, CoordError>| matches!(r, Ok(ClientResponse::Watch(b)) if b.events.is_empty());
        assert!(
            (exhausted(&a) || held(&a)) && (exhausted(&b) || held(&b)),
            "{a:?} {b:?}"
        );
        assert!(!(exhausted(&a) && exhausted(&b)), "both refused: {a:?}");
        if exhausted(&a) || exhausted(&b) {
            refused = true;
            break;
        }
    }
    assert!(
        refused,
        "a second poll was never refused while one was held"
    );
    // The node still answers.
    client.put("held/x", b"1".to_vec(), None).await.unwrap();
    c.shutdown().await;
}

/// An application holding only a client key (issue 14): it reads everything and writes its
/// own keys, locks and elections, but cannot change membership, write the keys of quorate's
/// own components (under `quorate/`), campaign in their elections, or revoke or keep alive a
/// lease holding one; a cluster-internal message under a client key closes the connection
/// unanswered. The same requests under the cluster key are what the components do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_key_gets_client_requests_only() {
    let mut c = common::Cluster::start(3).await;
    c.leader().await;
    let cluster = common::remote_client(c.addrs.clone()).await;
    let mut app_config = common::remote_config();
    app_config.wire = common::client_wire();
    let app = common::remote_client_with(app_config, c.addrs.clone()).await;
    let ttl = Duration::from_secs(30);

    // What the application may do.
    app.put("app/x", b"1".to_vec(), None).await.unwrap();
    let own = app.lease_grant(ttl).await.unwrap().id;
    app.lock("app/jobs", own).await.unwrap();
    app.campaign("app/leader", b"me".to_vec(), own)
        .await
        .unwrap();
    app.lease_keep_alive(own).await.unwrap();

    // The components' keys, written under the cluster key.
    let ops = "quorate/failover/ops/db/request";
    let election = "quorate/failover/election/db";
    cluster
        .put(ops, b"switchover".to_vec(), None)
        .await
        .unwrap();
    let role_lease = cluster.lease_grant(ttl).await.unwrap().id;
    cluster
        .campaign(election, b"n0".to_vec(), role_lease)
        .await
        .unwrap();
    // ... which the application reads ...
    let read = app.get(ops, Consistency::Linearizable).await.unwrap();
    assert_eq!(read.kv.unwrap().value, b"switchover");
    // ... and cannot change.
    let denied = |r: Result<(), CoordError>, what: &str| match r {
        Err(CoordError::PermissionDenied { reason }) => {
            assert!(reason.contains("client key"), "{what}: {reason}");
        }
        other => panic!("{what}: a client key was not refused: {other:?}"),
    };
    denied(
        app.put(ops, b"forged".to_vec(), None).await.map(drop),
        "put",
    );
    denied(app.delete(ops).await.map(drop), "delete");
    denied(
        app.txn(Txn {
            success: vec![TxnOp::Delete {
                key: ops.to_owned(),
            }],
            ..Txn::default()
        })
        .await
        .map(drop),
        "txn",
    );
    denied(
        app.campaign(election, b"app".to_vec(), own).await.map(drop),
        "campaign",
    );
    denied(app.lease_revoke(role_lease).await.map(drop), "revoke");
    denied(
        app.lease_keep_alive(role_lease).await.map(drop),
        "keep-alive",
    );
    denied(app.remove_node(common::name(2)).await, "membership change");
    let leader = cluster.leader(election).await.unwrap().unwrap();
    assert_eq!(leader.value, b"n0", "the role's election is untouched");
    let read = cluster.get(ops, Consistency::Linearizable).await.unwrap();
    assert_eq!(read.kv.unwrap().value, b"switchover");
    assert_eq!(cluster.status().await.unwrap().voters.len(), 3);

    // Raw cluster-internal requests under the client key: the connection is closed with no
    // answer (whatever the node would have done with them).
    let limits = Limits::default();
    let raw = Transport::new(
        TokioNet,
        TransportConfig {
            connect_timeout: Duration::from_secs(5),
            rpc_timeout: Duration::from_secs(10),
            ..TransportConfig::from_limits(common::client_wire(), &limits)
        },
    );
    for req in [
        Request::Propose(Command::LeaseRevoke { id: role_lease }),
        Request::ReadIndex,
    ] {
        let r = raw.call(&c.addrs[0], &req, None).await;
        assert!(r.is_err(), "{req:?} under a client key was answered: {r:?}");
    }
    assert!(cluster.lease_time_to_live(role_lease).await.is_ok());
    c.shutdown().await;
}

/// A node's store quota (`NodeConfig::store_quota_bytes`, the agent's `raft.store_bytes_max`):
/// the leader refuses a write that would grow the store past it with NOSPACE, for remote and
/// local callers alike; reads, deletes, shrinking writes and locks still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_store_quota_refuses_growth_with_nospace() {
    let mut c = common::Cluster::start(1).await;
    c.leader().await;
    c.kill(0).await;
    c.store_quota = Some(1 << 20);
    c.restart(0).await;
    c.leader().await;
    let client = common::remote_client(c.addrs.clone()).await;
    let local: Arc<dyn Coord> = Arc::new(c.node(0).backend());
    let big = vec![7u8; 600 << 10];
    client.put("big/1", big.clone(), None).await.unwrap();
    for (who, r) in [
        ("remote", client.put("big/2", big.clone(), None).await),
        ("local", local.put("big/2", big.clone(), None).await),
    ] {
        match r {
            Err(CoordError::ResourceExhausted { what, max }) => {
                assert!(what.contains("NOSPACE"), "{who}: {what}");
                assert_eq!(max, 1 << 20, "{who}");
            }
            other => panic!("{who}: a write past the quota was not refused: {other:?}"),
        }
    }
    let read = client
        .get("big/1", Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(read.kv.map(|kv| kv.value.len()), Some(big.len()));
    client.put("big/1", vec![1u8; 10], None).await.unwrap();
    let lease = client
        .lease_grant(Duration::from_secs(10))
        .await
        .unwrap()
        .id;
    client.lock("still-works", lease).await.unwrap();
    client.put("big/2", big, None).await.unwrap();
    client.delete("big/2").await.unwrap();
    c.shutdown().await;
}
