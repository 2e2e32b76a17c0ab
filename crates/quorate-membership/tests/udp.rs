//! Real sockets on 127.0.0.1: three nodes form a cluster and detect a killed one; and the
//! configuration errors every operator will meet first.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::time::Duration;

use quorate_membership::{MembershipConfig, MembershipError, MembershipHandle, Profile, start};
use quorate_membership_api::{MemberState, Membership, MembershipEvent, conformance};
use quorate_types::NodeId;
use quorate_wire::net::TokioNet;
use quorate_wire::{ClusterKey, KeyRing, WireConfig};

fn wire() -> WireConfig {
    WireConfig::new(
        "udp-test",
        KeyRing::new(ClusterKey::from_bytes([3; 32]), vec![]),
    )
    .unwrap()
}

fn config(id: &str) -> MembershipConfig {
    let mut c = MembershipConfig::new(NodeId::new(id).unwrap(), "127.0.0.1:0");
    c.profile = Profile::fast_lan();
    c.voters = ["a", "b", "c"]
        .iter()
        .map(|v| NodeId::new(*v).unwrap())
        .collect();
    c
}

/// Waits (bounded) until `cond` holds on `h`'s snapshot; the bound is a failure limit only.
async fn until(
    h: &MembershipHandle,
    what: &str,
    cond: impl FnMut(&quorate_membership_api::MembershipSnapshot) -> bool,
) {
    tokio::time::timeout(Duration::from_secs(20), h.wait_for(cond))
        .await
        .unwrap_or_else(|_| panic!("{what}: not reached within 20 s"))
        .unwrap();
}

fn sees(snap: &quorate_membership_api::MembershipSnapshot, id: &str, state: MemberState) -> bool {
    snap.member(&NodeId::new(id).unwrap())
        .is_some_and(|m| m.state == state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_on_loopback_form_and_detect_a_killed_one() {
    let mut ca = config("a");
    ca.bootstrap = true;
    let a = start(TokioNet, ca, wire(), None).await.unwrap();
    let seed = a.advertised_addr().to_string();
    let mut cb = config("b");
    cb.seeds = vec![seed.clone()];
    let b = start(TokioNet, cb, wire(), None).await.unwrap();
    let mut cc = config("c");
    cc.seeds = vec![seed];
    let c = start(TokioNet, cc, wire(), None).await.unwrap();
    let mut events = a.subscribe();

    for h in [&a, &b, &c] {
        until(h, "all three alive", |s| {
            ["a", "b", "c"]
                .iter()
                .all(|id| sees(s, id, MemberState::Alive))
        })
        .await;
        let snap = h.snapshot();
        conformance::check_snapshot(&snap).unwrap();
        assert!(snap.quorum.has_majority);
    }

    c.shutdown();
    for h in [&a, &b] {
        until(h, "c detected down", |s| sees(s, "c", MemberState::Down)).await;
        assert!(
            h.snapshot().quorum.has_majority,
            "2 of 3 voters is a majority"
        );
    }
    // The event stream tells the same story as the snapshot.
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match events.recv().await {
                Ok(MembershipEvent::MemberDown(m)) if m.id.as_str() == "c" => break,
                Ok(_) => {}
                Err(e) => panic!("event stream: {e}"),
            }
        }
    })
    .await
    .expect("MemberDown(c) event");
    let m = a.metrics();
    assert!(m.packets_in > 0 && m.packets_out > 0);
    assert_eq!(
        m.dropped_auth + m.dropped_wrong_cluster + m.dropped_malformed,
        0,
        "{m:?}"
    );
    a.shutdown();
    b.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leave_is_reported_as_left_over_real_sockets() {
    let mut ca = config("a");
    ca.bootstrap = true;
    let a = start(TokioNet, ca, wire(), None).await.unwrap();
    let mut cb = config("b");
    cb.seeds = vec![a.advertised_addr().to_string()];
    let b = start(TokioNet, cb, wire(), None).await.unwrap();
    until(&a, "b alive", |s| sees(s, "b", MemberState::Alive)).await;
    b.leave().await.unwrap();
    until(&a, "b left", |s| sees(s, "b", MemberState::Left)).await;
    assert!(matches!(
        b.set_meta(Default::default()).await,
        Err(MembershipError::Stopped)
    ));
    a.shutdown();
}

#[tokio::test]
async fn config_errors_are_clear() {
    // No seeds, not bootstrapping.
    let err = start(TokioNet, config("a"), wire(), None)
        .await
        .unwrap_err();
    assert!(matches!(err, MembershipError::NoSeeds), "{err}");
    assert!(err.to_string().contains("bootstrap = true"));

    // Address not bindable (taken).
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut c = config("a");
    c.bootstrap = true;
    c.bind_addr = taken.local_addr().unwrap().to_string();
    let err = start(TokioNet, c, wire(), None).await.unwrap_err();
    assert!(matches!(err, MembershipError::Bind { .. }), "{err}");
    assert!(err.to_string().contains("cannot bind"));

    // Unspecified bind address without an advertise address.
    let mut c = config("a");
    c.bootstrap = true;
    c.bind_addr = "0.0.0.0:0".into();
    let err = start(TokioNet, c, wire(), None).await.unwrap_err();
    assert!(matches!(err, MembershipError::Advertise(_)), "{err}");
    assert!(err.to_string().contains("advertise_addr"));

    // Metadata over the limit.
    let mut c = config("a");
    c.bootstrap = true;
    c.meta.node.version = "v".repeat(100);
    c.meta_bytes_max = std::num::NonZeroUsize::new(64).unwrap();
    let err = start(TokioNet, c, wire(), None).await.unwrap_err();
    assert!(matches!(err, MembershipError::MetaTooLarge { .. }), "{err}");
}
