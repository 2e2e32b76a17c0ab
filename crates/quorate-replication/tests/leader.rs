//! Leader-mode keyspaces on real nodes: loopback TCP through quorate-wire, redb files.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test")]

mod common;

use std::time::Duration;

use common::{Cluster, id, nz, until, wire};
use quorate_replication::msg::{LogEntry, LogPos, Refusal, Request, Response};
use quorate_replication::{
    LeaderConfig, LeaderKeyspace, LeaderRole, ReplicaLag, ReplicationError, SyncMode, Transport,
    TransportConfig,
};
use quorate_types::FencingToken;
use quorate_wire::net::TokioNet;

fn sync(replicas: usize) -> LeaderConfig {
    let mut c = LeaderConfig::lan(
        "orders",
        SyncMode::Sync {
            replicas: nz(replicas),
            timeout: Duration::from_secs(1),
        },
    );
    c.heartbeat_interval = Duration::from_millis(20);
    c
}

fn asynchronous() -> LeaderConfig {
    let mut c = LeaderConfig::lan("orders", SyncMode::Async);
    c.heartbeat_interval = Duration::from_millis(20);
    c
}

fn v(s: &str) -> Option<Vec<u8>> {
    Some(s.as_bytes().to_vec())
}

async fn value_at(ks: &LeaderKeyspace<TokioNet>, key: &str, want: &str) -> Option<()> {
    (ks.get(key).as_deref() == Some(want.as_bytes())).then_some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_write_is_acknowledged_only_once_replicas_persisted_it() {
    let c = Cluster::new(3);
    let nodes = [
        c.start("n1").await,
        c.start("n2").await,
        c.start("n3").await,
    ];
    let ks: Vec<_> = nodes.iter().map(|n| n.leader(sync(2)).unwrap()).collect();
    ks[0].promote(FencingToken(5)).unwrap();
    for i in 0..20 {
        let pos = ks[0]
            .write(FencingToken(5), &format!("k{i}"), v(&format!("v{i}")))
            .await
            .unwrap();
        assert_eq!((pos.index, pos.token), (i + 1, 5));
        // Acknowledged: both replicas hold it already (no waiting).
        for r in &ks[1..] {
            assert_eq!(r.get(&format!("k{i}")), v(&format!("v{i}")));
        }
    }
    ks[0].write(FencingToken(5), "k0", None).await.unwrap();
    assert_eq!(ks[1].get("k0"), None);
    assert_eq!(ks[0].status().role, LeaderRole::Primary(5));
    assert_eq!(ks[1].status().last.index, 21);
    // Writes anywhere but the primary, or with another token, are refused.
    let r = ks[1].write(FencingToken(5), "x", v("y")).await;
    assert!(
        matches!(r, Err(ReplicationError::NotPrimary { .. })),
        "{r:?}"
    );
    let r = ks[0].write(FencingToken(4), "x", v("y")).await;
    assert!(
        matches!(
            r,
            Err(ReplicationError::StaleToken {
                token: 4,
                highest: 5,
                ..
            })
        ),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_write_without_enough_replicas_is_not_acknowledged() {
    let c = Cluster::new(3);
    let a = c.start("n1").await;
    let b = c.start("n2").await;
    let mut conf = sync(2);
    conf.mode = SyncMode::Sync {
        replicas: nz(2),
        timeout: Duration::from_millis(300),
    };
    let ka = a.leader(conf.clone()).unwrap();
    let _kb = b.leader(conf).unwrap();
    ka.promote(FencingToken(3)).unwrap();
    let r = ka.write(FencingToken(3), "k", v("x")).await;
    assert_eq!(
        r,
        Err(ReplicationError::NotReplicated {
            keyspace: "orders".to_owned(),
            index: 1,
            acked: 1,
            required: 2,
            timeout_ms: 300
        })
    );
    // Asking for more replicas than peers is refused at declaration.
    let c2 = Cluster::new(2);
    let n = c2.start("n1").await;
    let bad = n.leader(sync(2));
    assert!(
        matches!(
            bad,
            Err(ReplicationError::Config {
                field: "sync_replicas",
                ..
            })
        ),
        "{bad:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_lag_is_measured_in_entries_and_time_and_catches_up() {
    let c = Cluster::new(3);
    let a = c.start("n1").await;
    let b = c.start("n2").await;
    let ka = a.leader(asynchronous()).unwrap();
    let kb = b.leader(asynchronous()).unwrap();
    // Before any primary: a replica is not behind anything it knows (so the failover
    // policy's first election has candidates); other nodes' lag is unknown.
    assert_eq!(
        kb.lag(&id("n2")),
        Some(ReplicaLag {
            entries: 0,
            time_ms: 0
        })
    );
    assert_eq!(kb.lag(&id("n3")), None);
    ka.promote(FencingToken(9)).unwrap();
    for i in 0..5 {
        ka.write(FencingToken(9), &format!("k{i}"), v("x"))
            .await
            .unwrap();
    }
    until("b caught up", || async {
        (ka.lag(&id("n2"))
            == Some(ReplicaLag {
                entries: 0,
                time_ms: 0,
            }))
        .then_some(())
    })
    .await;
    // n3 is down: never heard from, so its lag is unknown at the primary...
    assert_eq!(ka.lag(&id("n3")), None);
    // ...and at a replica, its own lag comes from the primary's appends.
    until("b knows its own lag", || async {
        kb.lag(&id("n2")).filter(|l| l.entries == 0).map(|_| ())
    })
    .await;
    let n3 = c.start("n3").await;
    let kc = n3.leader(asynchronous()).unwrap();
    until("n3 matched", || async {
        (ka.lag_entries(&id("n3")) == Some(0)).then_some(())
    })
    .await;
    assert_eq!(kc.get("k4"), v("x"));
    // Every node learns every replica's lag from the appends.
    until("b knows n3's lag", || async {
        (kb.lag_entries(&id("n3")) == Some(0)).then_some(())
    })
    .await;
    // A bounded-staleness read at a replica that hears from the primary succeeds...
    assert_eq!(kc.get_within("k0", Duration::from_secs(5)).unwrap(), v("x"));
    // ...and fails once the primary is gone for longer than the bound.
    a.shutdown().await;
    drop(ka);
    until("stale read refused", || async {
        kc.get_within("k0", Duration::from_millis(100))
            .err()
            .map(|_| ())
    })
    .await;
    assert!(kc.lag(&id("n3")).unwrap().time_ms >= 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_sync_writes_survive_a_primary_crash_and_restart() {
    let c = Cluster::new(3);
    let b = c.start("n2").await;
    let n3 = c.start("n3").await;
    let kb = b.leader(sync(2)).unwrap();
    let kc = n3.leader(sync(2)).unwrap();
    {
        let a = c.start("n1").await;
        let ka = a.leader(sync(2)).unwrap();
        ka.promote(FencingToken(5)).unwrap();
        for i in 0..30 {
            ka.write(FencingToken(5), &format!("k{i}"), v(&format!("{i}")))
                .await
                .unwrap();
        }
        a.shutdown().await;
    }
    // Failover: n2 becomes primary with a higher token; every acknowledged write is there.
    kb.promote(FencingToken(8)).unwrap();
    for i in 0..30 {
        assert_eq!(kb.get(&format!("k{i}")), v(&format!("{i}")));
    }
    // With n1 down, sync replication to 2 replicas cannot complete: not acknowledged
    // (durable at n2, replicated to n3, outcome unknown to the client).
    let r = kb.write(FencingToken(8), "after", v("failover")).await;
    assert!(
        matches!(
            r,
            Err(ReplicationError::NotReplicated {
                acked: 1,
                required: 2,
                ..
            })
        ),
        "{r:?}"
    );
    until("n3 has it", || value_at(&kc, "after", "failover")).await;
    // The old primary restarts from its redb file as a replica and follows the new history.
    let a = c.start("n1").await;
    let ka = a.leader(sync(2)).unwrap();
    assert_eq!(ka.get("k29"), v("29"), "recovered from disk");
    until("n1 follows n2", || value_at(&ka, "after", "failover")).await;
    let st = ka.status();
    assert_eq!(st.role, LeaderRole::Replica);
    assert_eq!(st.highest_token, 8);
    assert!(
        st.conflicts.is_empty(),
        "every write of n1 was replicated: nothing to report"
    );
    kb.write(FencingToken(8), "all", v("three")).await.unwrap();
    assert_eq!(ka.get("all"), v("three"));
    assert_eq!(kc.get("all"), v("three"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_primarys_suffix_is_reported_not_merged_and_its_writes_are_rejected() {
    let c = Cluster::new(3);
    // n1 is primary (token 5, async) while n2 and n3 are down: its writes are unreplicated.
    {
        let a = c.start("n1").await;
        let ka = a.leader(asynchronous()).unwrap();
        ka.promote(FencingToken(5)).unwrap();
        ka.write(FencingToken(5), "x", v("lost")).await.unwrap();
        ka.write(FencingToken(5), "y", v("lost too")).await.unwrap();
        a.shutdown().await;
    }
    let b = c.start("n2").await;
    let n3 = c.start("n3").await;
    let kb = b.leader(asynchronous()).unwrap();
    let kc = n3.leader(asynchronous()).unwrap();
    kb.promote(FencingToken(7)).unwrap();
    kb.write(FencingToken(7), "z", v("new history"))
        .await
        .unwrap();
    until("n3 follows n2", || value_at(&kc, "z", "new history")).await;

    // n1 comes back still believing it is primary with token 5 (a stale primary).
    let a = c.start("n1").await;
    let ka = a.leader(asynchronous()).unwrap();
    ka.promote(FencingToken(5)).unwrap();
    let stale = ka.write(FencingToken(5), "w", v("stale")).await;
    // The new primary's history wins at n1: its suffix is replaced and reported.
    let st = until("n1 reports its replaced suffix", || async {
        let st = ka.status();
        (st.role == LeaderRole::Replica && !st.conflicts.is_empty() && ka.get("z").is_some())
            .then_some(st)
    })
    .await;
    let replaced: Vec<String> = st
        .conflicts
        .iter()
        .flat_map(|c| c.replaced.iter().map(|e| e.key.clone()))
        .collect();
    assert!(
        replaced.starts_with(&["x".to_owned(), "y".to_owned()]),
        "{replaced:?}"
    );
    match stale {
        // Accepted locally before n1 heard of token 7: part of the replaced suffix.
        Ok(_) => assert_eq!(replaced, vec!["x", "y", "w"]),
        // n2's append reached n1 first: refused outright.
        Err(ReplicationError::StaleToken {
            token: 5,
            highest: 7,
            ..
        }) => {
            assert_eq!(replaced, vec!["x", "y"]);
        }
        Err(e) => panic!("unexpected {e}"),
    }
    assert!(st.conflicts.iter().all(|c| c.winner_token == 7));
    assert_eq!(ka.get("x"), None, "never merged");
    assert_eq!(ka.get("w"), None);
    assert_eq!(kc.get("x"), None);
    assert_eq!(kc.get("w"), None);
    // From now on n1's token is refused everywhere, also by n1 itself.
    let r = ka.write(FencingToken(5), "v", v("again")).await;
    assert!(
        matches!(
            r,
            Err(ReplicationError::StaleToken {
                token: 5,
                highest: 7,
                ..
            })
        ),
        "{r:?}"
    );
    assert!(matches!(
        ka.promote(FencingToken(5)),
        Err(ReplicationError::StaleToken { .. })
    ));
    // n1's stale appends that reached n3 were counted there (only if it sent any).
    let _ = kc.status().stale_rejected;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_refuses_appends_from_a_stale_primary() {
    let c = Cluster::new(2);
    let a = c.start("n1").await;
    let b = c.start("n2").await;
    let ka = a.leader(asynchronous()).unwrap();
    let kb = b.leader(asynchronous()).unwrap();
    ka.promote(FencingToken(5)).unwrap();
    ka.write(FencingToken(5), "k", v("1")).await.unwrap();
    until("b has it", || value_at(&kb, "k", "1")).await;
    // n2 is granted a higher token but has not written yet; n1 writes on with token 5.
    kb.promote(FencingToken(6)).unwrap();
    // On the wire: an append with token 5 is refused by n2, which has seen 6.
    let client = Transport::new(TokioNet, TransportConfig::lan(wire("11", 0)));
    let stale_append = Request::Append {
        keyspace: "orders".to_owned(),
        from: "n1".to_owned(),
        token: 5,
        prev: LogPos { index: 1, token: 5 },
        entries: vec![LogEntry {
            pos: LogPos { index: 2, token: 5 },
            key: "k".to_owned(),
            value: v("stale"),
            written_ms: 0,
        }],
        primary_last: LogPos { index: 2, token: 5 },
        matched: vec![],
    };
    let resp = client
        .call(&c.addrs[&id("n2")], &stale_append)
        .await
        .unwrap();
    assert_eq!(resp, Response::Refused(Refusal::StaleToken { highest: 6 }));
    assert!(kb.status().stale_rejected >= 1);
    let _ = ka.write(FencingToken(5), "k", v("stale")).await;
    until(
        "n2 refused n1's append or n1 already stepped down",
        || async {
            let sa = ka.status();
            (sa.role == LeaderRole::Replica && sa.highest_token == 6).then_some(())
        },
    )
    .await;
    assert_eq!(
        kb.get("k"),
        v("1"),
        "the stale write never reached the new primary's state"
    );
    assert_eq!(kb.status().role, LeaderRole::Primary(6));
    until("n1 follows n2 again", || async {
        (ka.get("k") == v("1") && ka.status().last == kb.status().last).then_some(())
    })
    .await;
}
