//! Multi-master keyspaces on real nodes: loopback TCP through quorate-wire, redb files.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test")]

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Cluster, hlc, nz, until, wire};
use quorate_membership_api::{MemberState, Membership, StaticMembership};
use quorate_replication::{
    Crdt, DigestConfig, Keyspace, LwwRegister, MultiMasterConfig, OrSet, PnCounter,
    ReplicationError,
};

fn cfg(name: &str) -> MultiMasterConfig {
    let mut c = MultiMasterConfig::lan(name, hlc());
    c.anti_entropy_interval = Duration::from_secs(3600);
    c.hint_retry_interval = Duration::from_millis(50);
    c
}

async fn value(ks: &Keyspace<PnCounter>, key: &str) -> i128 {
    ks.get(key).await.unwrap().map_or(0, |c| c.value())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deltas_pushed_on_write_reach_every_peer() {
    let c = Cluster::new(3);
    let nodes = [
        c.start("n1").await,
        c.start("n2").await,
        c.start("n3").await,
    ];
    let ks: Vec<Keyspace<PnCounter>> = nodes
        .iter()
        .map(|n| n.multi_master(cfg("hits"), None).unwrap())
        .collect();
    for (i, k) in ks.iter().enumerate() {
        for _ in 0..5 {
            k.write("hits", |c, ctx| c.increment(&ctx.node, 1))
                .await
                .unwrap();
        }
        k.write(&format!("only-{i}"), |c, ctx| c.increment(&ctx.node, 7))
            .await
            .unwrap();
    }
    for k in &ks {
        until("every replica counts 15", || async {
            (value(k, "hits").await == 15).then_some(())
        })
        .await;
        for i in 0..3 {
            until("every key everywhere", || async {
                (value(k, &format!("only-{i}")).await == 7).then_some(())
            })
            .await;
        }
        let st = k.status().await.unwrap();
        assert_eq!(st.metrics.local_writes, 6);
        assert_eq!(st.metrics.hints_pending, 0);
        assert_eq!(st.keys, 4);
    }
    // Pushes alone did it: no anti-entropy round ran (interval 1 h).
    assert_eq!(ks[0].status().await.unwrap().metrics.anti_entropy_rounds, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_recovers_states_and_clock_from_redb() {
    let c = Cluster::new(1);
    let first_ts;
    {
        let n = c.start("n1").await;
        let ks: Keyspace<LwwRegister<String>> = n.multi_master(cfg("conf"), None).unwrap();
        let v = ks
            .write(
                "mode",
                |r, ctx| Ok(r.set("fast".to_owned(), ctx.ts.clone())),
            )
            .await
            .unwrap();
        first_ts = v.timestamp().unwrap().clone();
        let s: Keyspace<OrSet<u32>> = n.multi_master(cfg("seen"), None).unwrap();
        for e in 0..3 {
            s.write("chat", move |set, ctx| set.add(&ctx.node, e, 100))
                .await
                .unwrap();
        }
        s.write("chat", |set, _| Ok(set.remove(&1))).await.unwrap();
        n.shutdown().await;
    }
    let n = c.start("n1").await;
    let ks: Keyspace<LwwRegister<String>> = n.multi_master(cfg("conf"), None).unwrap();
    let got = ks.get("mode").await.unwrap().unwrap();
    assert_eq!(got.value().map(String::as_str), Some("fast"));
    // The clock resumed from disk: a new write is ordered after the old one.
    let v = ks
        .write(
            "mode",
            |r, ctx| Ok(r.set("safe".to_owned(), ctx.ts.clone())),
        )
        .await
        .unwrap();
    assert!(v.timestamp().unwrap() > &first_ts);
    let s: Keyspace<OrSet<u32>> = n.multi_master(cfg("seen"), None).unwrap();
    let set = s.get("chat").await.unwrap().unwrap();
    assert_eq!(set.elements().copied().collect::<Vec<_>>(), vec![0, 2]);
    // A new add after restart takes a fresh dot (not one of the removed element's).
    let after = s
        .write("chat", |set, ctx| set.add(&ctx.node, 1, 100))
        .await
        .unwrap();
    assert!(after.contains(&1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyspace_of_another_type_on_disk_is_refused_with_a_decode_error() {
    let c = Cluster::new(1);
    {
        let n = c.start("n1").await;
        let ks: Keyspace<LwwRegister<String>> = n.multi_master(cfg("conf"), None).unwrap();
        ks.write("k", |r, ctx| Ok(r.set("x".repeat(40), ctx.ts.clone())))
            .await
            .unwrap();
        n.shutdown().await;
    }
    let n = c.start("n1").await;
    let r = n.multi_master::<OrSet<u64>>(cfg("conf"), None);
    assert!(
        matches!(r, Err(ReplicationError::Decode { ref keyspace, .. }) if keyspace == "conf"),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_for_a_down_peer_are_bounded_and_replayed_when_it_returns() {
    let c = Cluster::new(2);
    let a = c.start("n1").await;
    let mut conf = cfg("ctr");
    conf.hints_max = nz(4);
    let ka: Keyspace<PnCounter> = a.multi_master(conf.clone(), None).unwrap();
    for i in 0..10 {
        ka.write(&format!("k{i}"), |c, ctx| c.increment(&ctx.node, 1))
            .await
            .unwrap();
    }
    let st = until("ten hints offered, four kept", || async {
        let st = ka.status().await.unwrap();
        (st.metrics.hints_pending + st.hints_dropped == 10).then_some(st)
    })
    .await;
    assert_eq!(st.metrics.hints_pending, 4);
    assert_eq!(st.hints_dropped, 6);
    // The lag gauge is the age of the oldest undelivered write: it grows while the peer is
    // down (polled until it shows, never a wall-clock assertion) and is 0 once delivered.
    until("the lag shows the waiting writes", || async {
        (ka.status().await.unwrap().metrics.lag_ms >= 20).then_some(())
    })
    .await;

    let b = c.start("n2").await;
    let kb: Keyspace<PnCounter> = b.multi_master(conf, None).unwrap();
    // The hint retry delivers the four newest; nothing else runs (anti-entropy every hour).
    until("hints delivered", || async {
        (ka.status().await.unwrap().metrics.hints_pending == 0).then_some(())
    })
    .await;
    assert_eq!(ka.status().await.unwrap().metrics.lag_ms, 0);
    until("b holds the hinted keys", || async {
        (kb.entries().await.unwrap().len() == 4).then_some(())
    })
    .await;
    let keys: Vec<String> = kb
        .entries()
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, vec!["k6", "k7", "k8", "k9"]);
    // Anti-entropy repairs what the bound dropped.
    ka.anti_entropy_now().await.unwrap();
    until("b holds all ten", || async {
        (kb.entries().await.unwrap().len() == 10).then_some(())
    })
    .await;
    assert!(kb.status().await.unwrap().metrics.keys_repaired >= 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_hints_are_dropped_by_age() {
    let c = Cluster::new(2);
    let a = c.start("n1").await;
    let mut conf = cfg("ctr");
    conf.hint_age_max = Duration::from_millis(1);
    let ka: Keyspace<PnCounter> = a.multi_master(conf.clone(), None).unwrap();
    ka.write("k", |c, ctx| c.increment(&ctx.node, 1))
        .await
        .unwrap();
    until("the hint expired", || async {
        let st = ka.status().await.unwrap();
        (st.hints_dropped == 1 && st.metrics.hints_pending == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_rejoin_triggers_anti_entropy_at_once() {
    let c = Cluster::new(2);
    let a = c.start("n1").await;
    let view = StaticMembership::for_tests("n1", &["n1", "n2"]);
    view.set_state("n2", MemberState::Down);
    let mut conf = cfg("ctr");
    conf.hints_max = nz(1);
    conf.hint_retry_interval = Duration::from_secs(3600);
    let ka: Keyspace<PnCounter> = a
        .multi_master(conf.clone(), Some(view.subscribe()))
        .unwrap();
    for i in 0..50 {
        ka.write(&format!("k{i}"), |c, ctx| c.increment(&ctx.node, 2))
            .await
            .unwrap();
    }
    let b = c.start("n2").await;
    let kb: Keyspace<PnCounter> = b.multi_master(conf, None).unwrap();
    assert!(kb.entries().await.unwrap().is_empty());
    // No timer would repair b for an hour; the rejoin event does.
    view.set_state("n2", MemberState::Alive);
    until("b repaired", || async {
        (kb.entries().await.unwrap().len() == 50).then_some(())
    })
    .await;
    let st = ka.status().await.unwrap();
    assert!(st.metrics.anti_entropy_rounds >= 1);
    assert!(st.metrics.anti_entropy_bytes > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_entropy_larger_than_a_frame_repeats_until_equal() {
    let c = Cluster::new(2);
    let mut w = wire("11", 0);
    w.frame_bytes_max = std::num::NonZeroU32::new(16 * 1024).unwrap();
    let a = c.start_with("n1", w.clone()).await;
    let mut conf = cfg("big");
    // A 4,096-bucket digest does not fit a 16 KiB frame: refused at declaration.
    let refused = a.multi_master::<LwwRegister<String>>(conf.clone(), None);
    assert!(
        matches!(
            refused,
            Err(ReplicationError::Config {
                field: "digest buckets",
                ..
            })
        ),
        "{refused:?}"
    );
    conf.digest = DigestConfig::new(16, 2).unwrap();
    conf.hints_max = nz(1);
    conf.hint_retry_interval = Duration::from_secs(3600);
    let ka: Keyspace<LwwRegister<String>> = a.multi_master(conf.clone(), None).unwrap();
    for i in 0..2000 {
        ka.write(&format!("key-{i:05}"), move |r, ctx| {
            Ok(r.set(format!("value-{i}-{}", "x".repeat(20)), ctx.ts.clone()))
        })
        .await
        .unwrap();
    }
    let b = c.start_with("n2", w).await;
    let kb: Keyspace<LwwRegister<String>> = b.multi_master(conf, None).unwrap();
    ka.anti_entropy_now().await.unwrap();
    until("b holds all 2000", || async {
        (kb.entries().await.unwrap().len() == 2000).then_some(())
    })
    .await;
    assert_eq!(ka.entries().await.unwrap(), kb.entries().await.unwrap());
    // 2000 values of ~60 bytes do not fit one 16 KiB frame: several rounds ran.
    assert!(ka.status().await.unwrap().metrics.anti_entropy_rounds >= 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_cluster_key_is_refused_and_changes_nothing() {
    let c = Cluster::new(2);
    let a = c.start("n1").await;
    let ka: Keyspace<PnCounter> = a.multi_master(cfg("ctr"), None).unwrap();
    let b = c.start_with("n2", wire("22", 0)).await;
    let kb: Keyspace<PnCounter> = b.multi_master(cfg("ctr"), None).unwrap();
    kb.write("k", |c, ctx| c.increment(&ctx.node, 1))
        .await
        .unwrap();
    until("b holds a hint (its push was refused)", || async {
        (kb.status().await.unwrap().metrics.hints_pending == 1).then_some(())
    })
    .await;
    until("a rejected the frame", || async {
        (a.transport()
            .inbound_stats()
            .rejected_frames
            .load(Ordering::Relaxed)
            >= 1)
            .then_some(())
    })
    .await;
    assert!(ka.entries().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_clock_beyond_the_bound_is_rejected_with_an_alarm() {
    let c = Cluster::new(2);
    let a = c.start("n1").await;
    let ka: Keyspace<LwwRegister<u32>> = a.multi_master(cfg("reg"), None).unwrap();
    // b's wall clock runs 1.5 s ahead: within the wire's 2 s skew, beyond the HLC's 500 ms.
    let b = c.start_with("n2", wire("11", 1500)).await;
    let kb: Keyspace<LwwRegister<u32>> = b.multi_master(cfg("reg"), None).unwrap();
    kb.write("k", |r, ctx| Ok(r.set(1, ctx.ts.clone())))
        .await
        .unwrap();
    until("alarms at both ends", || async {
        let (sa, sb) = (ka.status().await.unwrap(), kb.status().await.unwrap());
        (sa.metrics.clock_alarms >= 1 && sb.metrics.clock_alarms >= 1).then_some(())
    })
    .await;
    assert!(
        ka.get("k").await.unwrap().is_none(),
        "the update was rejected, never clamped"
    );
    // a's own writes still reach b (a's clock is behind b's, which is fine).
    ka.write("j", |r, ctx| Ok(r.set(2, ctx.ts.clone())))
        .await
        .unwrap();
    until("b has a's write", || async {
        kb.get("j")
            .await
            .unwrap()
            .and_then(|r| r.value().copied())
            .filter(|v| *v == 2)
    })
    .await;
    let _ = LwwRegister::<u32>::bottom();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_refuse_a_write_and_change_nothing() {
    let c = Cluster::new(1);
    let n = c.start("n1").await;
    let mut conf = cfg("small");
    conf.keys_max = nz(2);
    let ks: Keyspace<PnCounter> = n.multi_master(conf, None).unwrap();
    ks.write("a", |c, ctx| c.increment(&ctx.node, 1))
        .await
        .unwrap();
    ks.write("b", |c, ctx| c.increment(&ctx.node, 1))
        .await
        .unwrap();
    let r = ks.write("c", |c, ctx| c.increment(&ctx.node, 1)).await;
    assert_eq!(
        r,
        Err(ReplicationError::TooLarge {
            what: "keyspace keys",
            len: 3,
            max: 2
        })
    );
    let long = "x".repeat(300);
    let r = ks.write(&long, |c, ctx| c.increment(&ctx.node, 1)).await;
    assert!(
        matches!(r, Err(ReplicationError::KeyTooLong { .. })),
        "{r:?}"
    );
    assert_eq!(ks.entries().await.unwrap().len(), 2);
    // Declaring the same keyspace twice on one node is refused.
    let again = n.multi_master::<PnCounter>(cfg("small"), None);
    assert!(
        matches!(again, Err(ReplicationError::Config { .. })),
        "{again:?}"
    );
}
