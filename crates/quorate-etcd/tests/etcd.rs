//! etcd-specific behaviour against real etcd clusters: endpoint failover, watches that survive
//! the death of their member, compaction, no quorum, membership administration, user/password
//! authentication, and interoperation with etcd's own Lock service.
//!
//! Real time; waits poll with deadlines; nothing asserts a duration.
#![allow(clippy::unwrap_used, reason = "test")]

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use quorate_coord_api::{Consistency, Coord, CoordError, EventKind, Revision, WatchStream};
use quorate_etcd::{Credentials, EtcdConfig, EtcdCoord};
use quorate_testkit::etcd::{EtcdCluster, EtcdClusterConfig};
use quorate_types::NodeId;

const WAIT: Duration = Duration::from_secs(30);

async fn cluster(members: usize) -> EtcdCluster {
    EtcdCluster::start(EtcdClusterConfig::members(members))
        .await
        .unwrap()
}

async fn next(w: &mut WatchStream) -> quorate_coord_api::WatchEvent {
    tokio::time::timeout(WAIT, w.next())
        .await
        .expect("an event in time")
        .expect("the watch goes on")
        .expect("no watch error")
}

/// Polls `f` until it returns `Some`, for at most `WAIT`.
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_and_watches_fail_over_when_the_preferred_member_dies() {
    let mut cluster = cluster(3).await;
    let coord = cluster.coord(0).unwrap();
    let before = coord.put("fo/a", b"1".to_vec(), None).await.unwrap();
    let mut w = coord.watch("fo/", Some(before.revision)).await.unwrap();
    assert_eq!(next(&mut w).await.revision(), before.revision);
    assert_eq!(coord.preferred_endpoint(), cluster.client_urls()[0]);

    cluster.kill(0).unwrap();
    // The first write after the kill may race an election (if member 0 led): retry while
    // the error says nothing was done or the outcome is unknown.
    let mut revisions = Vec::new();
    for i in 0..3 {
        let value = format!("after {i}").into_bytes();
        let r = eventually("a write after the kill", || {
            let (coord, value) = (coord.clone(), value.clone());
            async move { coord.put("fo/a", value, None).await.ok() }
        })
        .await;
        revisions.push(r.revision);
    }
    assert_ne!(coord.preferred_endpoint(), cluster.client_urls()[0]);
    // The watch re-opened on a live member and lost nothing written after the kill.
    let mut seen = Vec::new();
    while seen.last() != revisions.last() {
        let ev = next(&mut w).await;
        assert_eq!(ev.kind, EventKind::Put);
        seen.push(ev.revision());
    }
    for r in &revisions {
        assert!(seen.contains(r), "watch missed {r}: saw {seen:?}");
    }
    assert!(
        seen.windows(2).all(|p| p[0] < p[1]),
        "out of order: {seen:?}"
    );

    cluster.restart(0).await.unwrap();
    let got = coord.get("fo/a", Consistency::Linearizable).await.unwrap();
    assert!(got.kv.unwrap().mod_revision >= *revisions.last().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_from_a_compacted_revision_fails_with_compacted() {
    let cluster = cluster(1).await;
    let coord = cluster.coord(0).unwrap();
    let r1 = coord
        .put("cp/k", b"1".to_vec(), None)
        .await
        .unwrap()
        .revision;
    coord.put("cp/k", b"2".to_vec(), None).await.unwrap();
    let r3 = coord
        .put("cp/k", b"3".to_vec(), None)
        .await
        .unwrap()
        .revision;
    coord.compact(r3).await.unwrap();
    match coord.watch("cp/", Some(r1)).await {
        Err(CoordError::Compacted {
            requested,
            compacted,
        }) => {
            assert_eq!(requested, r1);
            assert!(compacted >= r1 && compacted < r3, "compacted {compacted}");
        }
        Err(e) => panic!("expected Compacted, got {e:?}"),
        Ok(_) => panic!("a watch from a compacted revision was opened"),
    }
    let mut w = coord.watch("cp/", Some(r3)).await.unwrap();
    let ev = next(&mut w).await;
    assert_eq!((ev.revision(), ev.kv.value.as_slice()), (r3, &b"3"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cut_off_from_its_peers_refuses_linearizable_calls() {
    let mut cluster = cluster(3).await;
    let coord = cluster.coord(0).unwrap();
    coord.put("nq/k", b"v".to_vec(), None).await.unwrap();
    cluster.kill(1).unwrap();
    cluster.kill(2).unwrap();
    // Wait until member 0 notices it has no leader; meanwhile calls fail retryably.
    let err = eventually("NoQuorum from the lone member", || {
        let coord = coord.clone();
        async move {
            match coord.put("nq/k", b"w".to_vec(), None).await {
                Err(CoordError::NoQuorum) => Some(CoordError::NoQuorum),
                Err(e) => {
                    assert!(e.is_retryable(), "a lost quorum gave a final error: {e:?}");
                    None
                }
                Ok(r) => panic!("a write without quorum succeeded at {}", r.revision),
            }
        }
    })
    .await;
    assert!(err.is_retryable());
    let lin = coord.get("nq/k", Consistency::Linearizable).await;
    assert!(
        matches!(lin, Err(CoordError::NoQuorum | CoordError::Timeout { .. })),
        "{lin:?}"
    );
    // A local (serializable) read still answers from the member's state.
    let local = coord.get("nq/k", Consistency::Local).await.unwrap();
    assert_eq!(local.kv.unwrap().value, b"v");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_is_added_promoted_and_removed() {
    let mut cluster = cluster(1).await;
    let coord = cluster.coord(0).unwrap();
    let reserved = cluster.reserve_member().unwrap();
    let node = NodeId::new(reserved.name.as_str()).unwrap();
    coord
        .add_learner(node.clone(), reserved.peer_url.clone())
        .await
        .unwrap();
    let s = coord.status().await.unwrap();
    assert_eq!((s.voters.len(), s.learners.len()), (1, 1), "{s:?}");
    let index = cluster.start_reserved(reserved).await.unwrap();
    // etcd promotes a learner only once its log has caught up with the leader's.
    eventually("promote", || {
        let (coord, node) = (coord.clone(), node.clone());
        async move {
            match coord.promote_voter(node).await {
                Ok(()) => Some(()),
                Err(CoordError::Unavailable { .. }) => None,
                Err(e) => panic!("promote failed: {e:?}"),
            }
        }
    })
    .await;
    let s = coord.status().await.unwrap();
    assert!(s.voters.contains(&node) && s.learners.is_empty(), "{s:?}");
    let again = coord.promote_voter(node.clone()).await;
    assert!(
        matches!(again, Err(CoordError::UnknownNode { .. })),
        "{again:?}"
    );
    // etcd refuses to remove a voter until the others have been connected for a while.
    eventually("remove", || {
        let (coord, node) = (coord.clone(), node.clone());
        async move {
            match coord.remove_node(node).await {
                Ok(()) => Some(()),
                Err(CoordError::Unavailable { .. }) => None,
                Err(e) => panic!("remove failed: {e:?}"),
            }
        }
    })
    .await;
    cluster.forget(index).unwrap();
    let s = coord.status().await.unwrap();
    assert_eq!(s.voters.len(), 1, "{s:?}");
    let gone = coord.remove_node(node).await;
    assert!(
        matches!(gone, Err(CoordError::UnknownNode { .. })),
        "{gone:?}"
    );
    let bad = coord
        .add_learner(NodeId::new("x").unwrap(), "127.0.0.1:1".into())
        .await;
    assert!(
        matches!(bad, Err(CoordError::InvalidArgument { .. })),
        "{bad:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_password_authentication() {
    let cluster = cluster(1).await;
    let url = cluster.client_urls()[0].clone();
    let mut admin = etcd_client::Client::connect([url.as_str()], None)
        .await
        .unwrap();
    admin.user_add("root", "root-pw", None).await.unwrap();
    let _ = admin.role_add("root").await;
    admin.user_grant_role("root", "root").await.unwrap();
    admin.auth_enable().await.unwrap();

    let mut config = EtcdConfig::etcd_defaults([url.clone()]);
    config.credentials = Some(Credentials {
        user: "root".into(),
        password: "root-pw".into(),
    });
    let coord = EtcdCoord::new(config.clone()).unwrap();
    coord.put("auth/k", b"v".to_vec(), None).await.unwrap();
    let got = coord
        .get("auth/k", Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(got.kv.unwrap().value, b"v");

    let anonymous = EtcdCoord::new(EtcdConfig::etcd_defaults([url.clone()])).unwrap();
    let e = anonymous.get("auth/k", Consistency::Linearizable).await;
    assert!(
        matches!(&e, Err(CoordError::InvalidArgument { reason }) if reason.contains("user")),
        "{e:?}"
    );
    config.credentials = Some(Credentials {
        user: "root".into(),
        password: "wrong".into(),
    });
    let wrong = EtcdCoord::new(config).unwrap();
    let e = wrong.get("auth/k", Consistency::Linearizable).await;
    assert!(
        matches!(&e, Err(CoordError::InvalidArgument { reason } | CoordError::Unavailable { reason }) if reason.contains("auth")),
        "{e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_interoperate_with_etcds_lock_service() {
    let cluster = cluster(1).await;
    let coord = cluster.coord(0).unwrap();
    let lease = coord.lease_grant(Duration::from_secs(10)).await.unwrap();
    let held = coord.lock("shared", lease.id).await.unwrap();
    assert_eq!(held.token.0, held.create_revision.0);

    // etcd's own Lock RPC on the same key layout queues behind the quorate holder.
    let url = cluster.client_urls()[0].clone();
    let mut etcd = etcd_client::Client::connect([url.as_str()], None)
        .await
        .unwrap();
    let other = etcd.lease_grant(10, None).await.unwrap().id();
    let name = format!("{}shared", coord.config().lock_prefix);
    let opts = || Some(etcd_client::LockOptions::new().with_lease(other));
    let blocked =
        tokio::time::timeout(Duration::from_millis(500), etcd.lock(name.clone(), opts())).await;
    assert!(
        blocked.is_err(),
        "etcd's Lock was granted while quorate held the lock"
    );

    // And the other way round: a quorate waiter waits for an etcd holder, and its token is
    // the revision of the etcd holder's release.
    let unlocked = coord.unlock(&held).await.unwrap();
    let etcd_held = tokio::time::timeout(WAIT, etcd.lock(name.clone(), opts()))
        .await
        .expect("etcd's Lock granted after the quorate unlock")
        .unwrap();
    let lease2 = coord.lease_grant(Duration::from_secs(10)).await.unwrap();
    let waiter = tokio::spawn({
        let coord = coord.clone();
        async move { coord.lock("shared", lease2.id).await }
    });
    let holder = coord
        .lock_holder("shared", Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(
        holder.map(|h| h.key),
        Some(String::from_utf8(etcd_held.key().to_vec()).unwrap())
    );
    let released = etcd.unlock(etcd_held.key().to_vec()).await.unwrap();
    let granted = tokio::time::timeout(WAIT, waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let release_rev = Revision(released.header().unwrap().revision() as u64);
    assert_eq!(granted.token.0, release_rev.0);
    assert!(granted.token.0 > unlocked.0);
}
