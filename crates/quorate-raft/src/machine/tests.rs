//! Tests of the state machine: data-driven cases per area and property tests (apply never
//! panics, invariants hold after every command, replicas stay identical, fencing tokens
//! strictly increase, snapshots round-trip).
#![allow(clippy::unwrap_used, reason = "test")]

use proptest::prelude::*;
use quorate_coord_api::{Compare, CompareOp, CompareTarget, Txn, TxnOp};

use super::*;

fn small_limits() -> MachineLimits {
    MachineLimits {
        key_bytes_max: 64,
        value_bytes_max: 16,
        keys_max: 12,
        leases_max: 4,
        txn_ops_max: 6,
        range_keys_max: 3,
        history_events_max: 8,
        lease_ttl_min_ms: 1_000,
        lease_ttl_max_ms: 60_000,
        store_bytes_max: 120,
    }
}

/// A machine plus the next index, applying commands one by one.
struct Sm {
    m: Machine,
    next: u64,
}

impl Sm {
    fn new() -> Sm {
        Sm {
            m: Machine::new(small_limits()),
            next: 1,
        }
    }

    fn apply(&mut self, cmd: Command) -> Outcome {
        let index = self.next;
        self.next += 1;
        self.m.apply(index, &cmd).0
    }

    #[track_caller]
    fn ok(&mut self, cmd: Command) -> Outcome {
        let out = self.apply(cmd.clone());
        assert!(
            !matches!(out, Outcome::Rejected(_)),
            "{cmd:?} rejected: {out:?}"
        );
        out
    }

    #[track_caller]
    fn rejected(&mut self, cmd: Command) -> CoordError {
        match self.apply(cmd.clone()) {
            Outcome::Rejected(e) => e,
            other => panic!("{cmd:?} was accepted: {other:?}"),
        }
    }

    fn grant(&mut self, id: u64) -> LeaseId {
        match self.ok(Command::LeaseGrant {
            id: Some(LeaseId(id)),
            ttl_ms: 2_000,
        }) {
            Outcome::Lease { id, .. } => id,
            other => panic!("{other:?}"),
        }
    }

    fn lock(&mut self, name: &str, lease: LeaseId) -> QueuePosition {
        match self.ok(Command::Lock {
            name: name.into(),
            lease,
        }) {
            Outcome::Queued(p) => p,
            other => panic!("{other:?}"),
        }
    }

    fn put(&mut self, key: &str, value: &str, lease: Option<LeaseId>) -> Outcome {
        self.ok(Command::Put {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            lease,
        })
    }
}

#[test]
fn put_stamps_revisions_and_versions() {
    let mut sm = Sm::new();
    sm.put("a", "1", None);
    sm.put("b", "x", None);
    let Outcome::Put(r) = sm.put("a", "2", None) else {
        panic!()
    };
    assert_eq!(r.revision, Revision(3));
    assert_eq!(r.prev.as_ref().map(|p| p.version), Some(1));
    let kv = sm.m.get("a").unwrap();
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (Revision(1), Revision(3), 2)
    );
    assert_eq!(sm.m.revision(), Revision(3));
    sm.m.skip(7);
    assert_eq!(sm.m.revision(), Revision(7));
}

#[test]
fn stale_index_is_rejected_without_change() {
    let mut sm = Sm::new();
    sm.put("a", "1", None);
    let before = sm.m.clone();
    let (out, events) = sm.m.apply(1, &Command::Delete { key: "a".into() });
    assert!(matches!(
        out,
        Outcome::Rejected(CoordError::InvalidArgument { .. })
    ));
    assert!(events.is_empty());
    assert_eq!(sm.m, before);
}

#[test]
fn bad_input_is_rejected_with_the_right_error() {
    let mut sm = Sm::new();
    let put = |key: &str, len: usize| Command::Put {
        key: key.into(),
        value: vec![0; len],
        lease: None,
    };
    assert_eq!(
        sm.rejected(put("a", 17)),
        CoordError::ValueTooLarge { len: 17, max: 16 }
    );
    assert_eq!(
        sm.rejected(put(&"k".repeat(65), 1)),
        CoordError::KeyTooLarge { len: 65, max: 64 }
    );
    assert!(matches!(
        sm.rejected(put("", 1)),
        CoordError::InvalidArgument { .. }
    ));
    assert!(matches!(
        sm.rejected(put("__quorate/lock/x/0000000000000001", 1)),
        CoordError::InvalidArgument { .. }
    ));
    assert!(matches!(
        sm.rejected(Command::LeaseGrant {
            id: None,
            ttl_ms: 999
        }),
        CoordError::InvalidArgument { .. }
    ));
    assert!(matches!(
        sm.rejected(Command::LeaseGrant {
            id: Some(LeaseId(0)),
            ttl_ms: 2_000
        }),
        CoordError::InvalidArgument { .. }
    ));
    assert_eq!(
        sm.rejected(Command::LeaseKeepAlive { id: LeaseId(9) }),
        CoordError::LeaseNotFound { id: LeaseId(9) }
    );
    assert!(matches!(
        sm.rejected(Command::Proclaim {
            key: "a".into(),
            create_revision: Revision(1),
            value: vec![],
        }),
        CoordError::InvalidArgument { .. }
    ));
    assert_eq!(sm.m.key_count(), 0);
}

#[test]
fn capacities_are_enforced() {
    let mut sm = Sm::new();
    for i in 0..12 {
        sm.put(&format!("k{i}"), "v", None);
    }
    assert!(matches!(
        sm.rejected(Command::Put {
            key: "one-more".into(),
            value: vec![],
            lease: None
        }),
        CoordError::ResourceExhausted { .. }
    ));
    // Overwriting an existing key needs no room.
    sm.put("k0", "w", None);
    for i in 1..=4 {
        sm.grant(i);
    }
    assert!(matches!(
        sm.rejected(Command::LeaseGrant {
            id: None,
            ttl_ms: 2_000
        }),
        CoordError::ResourceExhausted { .. }
    ));
}

#[test]
fn leases_delete_their_keys_and_remember_expiry() {
    let mut sm = Sm::new();
    let a = sm.grant(1);
    let b = sm.grant(2);
    sm.put("x", "1", Some(a));
    sm.put("y", "1", Some(a));
    sm.put("z", "1", Some(b));
    sm.put("y", "2", None); // y leaves lease a
    let renewed = sm.m.lease(a).unwrap().renewed_at;
    let index = sm.next;
    let (out, events) = sm.m.apply(
        index,
        &Command::LeaseExpire {
            leases: vec![(a, renewed), (b, 0)],
        },
    );
    sm.next += 1;
    assert_eq!(
        out,
        Outcome::LeasesEnded {
            ids: vec![a],
            keys_deleted: 1
        }
    );
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, EventKind::Delete);
    assert!(sm.m.get("x").is_none() && sm.m.get("y").is_some() && sm.m.get("z").is_some());
    assert_eq!(
        sm.rejected(Command::LeaseKeepAlive { id: a }),
        CoordError::LeaseExpired { id: a }
    );
    sm.ok(Command::LeaseRevoke { id: b });
    assert!(sm.m.get("z").is_none());
    assert_eq!(
        sm.rejected(Command::LeaseRevoke { id: b }),
        CoordError::LeaseNotFound { id: b }
    );
}

#[test]
fn granted_ids_default_to_the_index_and_skip_taken_ones() {
    let mut sm = Sm::new();
    sm.grant(2);
    // Index 2: id 2 is taken, so 3.
    let Outcome::Lease { id, .. } = sm.ok(Command::LeaseGrant {
        id: None,
        ttl_ms: 2_000,
    }) else {
        panic!()
    };
    assert_eq!(id, LeaseId(3));
    assert!(matches!(
        sm.rejected(Command::LeaseGrant {
            id: Some(LeaseId(2)),
            ttl_ms: 2_000
        }),
        CoordError::InvalidArgument { .. }
    ));
}

#[test]
fn lock_queue_is_fifo_and_tokens_are_grant_revisions() {
    let mut sm = Sm::new();
    let (a, b, c) = (sm.grant(1), sm.grant(2), sm.grant(3));
    let pa = sm.lock("job", a);
    assert_eq!(pa.token, Some(FencingToken(4)));
    assert_eq!(
        sm.lock("job", a),
        pa,
        "re-locking with the same lease is idempotent"
    );
    let pb = sm.lock("job", b);
    let pc = sm.lock("job", c);
    assert_eq!(
        (pb.token, pb.ahead.as_deref()),
        (None, Some(pa.key.as_str()))
    );
    assert_eq!(pc.ahead.as_deref(), Some(pb.key.as_str()));
    // Unlock with a wrong create revision changes nothing.
    let out = sm.ok(Command::Unlock {
        key: pa.key.clone(),
        create_revision: Revision(99),
    });
    assert!(matches!(out, Outcome::Done { changed: false, .. }));
    // b's lease ends first: c now waits directly behind a.
    sm.ok(Command::LeaseRevoke { id: b });
    assert_eq!(
        sm.m.position(&pc.key).unwrap().ahead.as_deref(),
        Some(pa.key.as_str())
    );
    let out = sm.ok(Command::Unlock {
        key: pa.key.clone(),
        create_revision: pa.create_revision,
    });
    let Outcome::Done { revision, changed } = out else {
        panic!()
    };
    assert!(changed);
    let holder = sm.m.lock_holder("job").unwrap();
    assert_eq!(holder.key, pc.key);
    assert_eq!(holder.token, Some(FencingToken(revision.0)));
    assert!(holder.token > pa.token);
    // Another name, and a nested name, are separate queues.
    let other = sm.lock("job/sub", a);
    assert!(other.token.is_some());
    assert_eq!(sm.m.lock_holder("job").unwrap().key, pc.key);
}

#[test]
fn elections_proclaim_only_by_the_leader() {
    let mut sm = Sm::new();
    let (a, b) = (sm.grant(1), sm.grant(2));
    let campaign = |lease: LeaseId, v: &str| Command::Campaign {
        election: "primary".into(),
        value: v.as_bytes().to_vec(),
        lease,
    };
    let Outcome::Queued(pa) = sm.ok(campaign(a, "a")) else {
        panic!()
    };
    let Outcome::Queued(pb) = sm.ok(campaign(b, "b")) else {
        panic!()
    };
    assert!(pa.token.is_some() && pb.token.is_none());
    let e = sm.rejected(Command::Proclaim {
        key: pb.key.clone(),
        create_revision: pb.create_revision,
        value: b"x".to_vec(),
    });
    assert!(matches!(e, CoordError::NotHolder { .. }));
    sm.ok(campaign(a, "a2"));
    let (pos, kv) = sm.m.election_leader("primary").unwrap();
    assert_eq!(
        (pos.key.as_str(), kv.value.as_slice()),
        (pa.key.as_str(), &b"a2"[..])
    );
    sm.ok(Command::Resign {
        key: pa.key.clone(),
        create_revision: pa.create_revision,
    });
    let (pos, kv) = sm.m.election_leader("primary").unwrap();
    assert_eq!((pos.key, kv.value.clone()), (pb.key.clone(), b"b".to_vec()));
    sm.ok(Command::Proclaim {
        key: pb.key,
        create_revision: pb.create_revision,
        value: b"b2".to_vec(),
    });
}

#[test]
fn txn_is_all_or_nothing() {
    let mut sm = Sm::new();
    sm.put("a", "1", None);
    let txn = Txn {
        compares: vec![Compare::value_eq("a", b"1".to_vec())],
        success: vec![
            TxnOp::Put {
                key: "b".into(),
                value: b"2".to_vec(),
                lease: None,
            },
            TxnOp::Put {
                key: "c".into(),
                value: b"3".to_vec(),
                lease: Some(LeaseId(42)),
            },
        ],
        failure: vec![],
    };
    assert_eq!(
        sm.rejected(Command::Txn(txn)),
        CoordError::LeaseNotFound { id: LeaseId(42) }
    );
    assert!(sm.m.get("b").is_none());
    let Outcome::Txn(t) = sm.ok(Command::Txn(Txn {
        compares: vec![Compare {
            key: "a".into(),
            op: CompareOp::Greater,
            target: CompareTarget::Version(0),
        }],
        success: vec![
            TxnOp::Delete { key: "a".into() },
            TxnOp::Get { key: "a".into() },
        ],
        failure: vec![],
    })) else {
        panic!()
    };
    assert!(t.succeeded);
    assert_eq!(t.results[1], quorate_coord_api::TxnOpResult::Get(None));
}

#[test]
fn range_pages_and_caps() {
    let mut sm = Sm::new();
    for k in ["p/1", "p/2", "p/3", "p/4", "q"] {
        sm.put(k, "v", None);
    }
    let (kvs, more) = sm.m.range("p/", None, None);
    assert_eq!(kvs.len(), 3, "capped by range_keys_max");
    assert!(more);
    let (kvs, more) = sm.m.range("p/", Some("p/3"), Some(10));
    assert_eq!(
        kvs.iter().map(|k| k.key.as_str()).collect::<Vec<_>>(),
        ["p/4"]
    );
    assert!(!more);
    let (kvs, _) = sm.m.range("p/", Some("a"), Some(1));
    assert_eq!(kvs[0].key, "p/1");
}

#[test]
fn history_is_bounded_and_compaction_is_whole_revisions() {
    let mut sm = Sm::new();
    for i in 0..6 {
        sm.put(&format!("h{i}"), "v", None);
    }
    assert_eq!(sm.m.history_since("", Revision(1)).unwrap().len(), 6);
    // A txn of 3 puts at revision 7, then 2 more single puts: 11 events > 8.
    let put = |k: &str| TxnOp::Put {
        key: k.into(),
        value: vec![],
        lease: None,
    };
    sm.ok(Command::Txn(Txn {
        success: vec![put("t1"), put("t2"), put("t3")],
        ..Txn::default()
    }));
    sm.put("h8", "v", None);
    sm.put("h9", "v", None);
    assert!(sm.m.history.len() <= 8);
    let compacted = sm.m.compacted();
    assert_eq!(compacted, Revision(3));
    assert!(matches!(
        sm.m.history_since("", Revision(3)),
        Err(CoordError::Compacted { .. })
    ));
    let all = sm.m.history_since("", Revision(4)).unwrap();
    assert_eq!(all.first().map(|e| e.revision()), Some(Revision(4)));
    assert_eq!(sm.m.history_since("t", Revision(4)).unwrap().len(), 3);
}

#[test]
fn history_pages_resume_inside_a_revision_and_respect_their_bounds() {
    let mut sm = Sm::new();
    sm.put("x", "v", None); // revision 1, outside the prefix
    let put = |k: &str| TxnOp::Put {
        key: k.into(),
        value: b"0123456789".to_vec(),
        lease: None,
    };
    sm.ok(Command::Txn(Txn {
        success: vec![put("p/1"), put("p/2"), put("p/3")],
        ..Txn::default()
    })); // revision 2
    sm.put("p/4", "v", None); // revision 3
    let keys = |evs: Vec<WatchEvent>| evs.into_iter().map(|e| e.kv.key).collect::<Vec<_>>();
    let page = |from: u64, skip: u32, max: usize, bytes: usize| {
        keys(
            sm.m.history_page("p/", Revision(from), skip, max, bytes)
                .unwrap(),
        )
    };
    assert_eq!(page(1, 0, 10, usize::MAX), ["p/1", "p/2", "p/3", "p/4"]);
    // Two per page: the second page starts inside revision 2 after the two delivered.
    assert_eq!(page(2, 0, 2, usize::MAX), ["p/1", "p/2"]);
    assert_eq!(page(2, 2, 2, usize::MAX), ["p/3", "p/4"]);
    assert_eq!(page(3, 1, 2, usize::MAX), Vec::<String>::new());
    // A byte budget below one event still returns one, so a poll always progresses.
    assert_eq!(page(2, 0, 10, 1), ["p/1"]);
    assert_eq!(page(9, 0, 10, usize::MAX), Vec::<String>::new());
}

#[test]
fn snapshot_round_trips_and_garbage_is_an_error() {
    let mut sm = Sm::new();
    let a = sm.grant(1);
    sm.put("a", "1", Some(a));
    sm.lock("l", a);
    let bytes = sm.m.snapshot();
    assert_eq!(Machine::restore(&bytes).unwrap(), sm.m);
    assert!(matches!(
        Machine::restore(&bytes[..bytes.len() / 2]),
        Err(CoordError::Internal { .. })
    ));
}

#[test]
fn a_full_store_refuses_growth_with_nospace_but_reads_deletes_and_locks_work() {
    let mut sm = Sm::new();
    // 12 keys of 1 + 9 bytes: 120 bytes, the quota.
    for i in 0..12u8 {
        let key = ((b'a' + i) as char).to_string();
        sm.put(&key, "123456789", None);
    }
    assert_eq!(sm.m.stored_bytes(), 120);
    let e = sm.rejected(Command::Put {
        key: "b".into(),
        value: b"1234567890".to_vec(),
        lease: None,
    });
    assert!(
        matches!(&e, CoordError::ResourceExhausted { max: 120, .. })
            && e.to_string().contains("NOSPACE"),
        "{e}"
    );
    // The same in a transaction (counted net: -10 + 7 + 7); nothing of it is applied.
    let txn = Txn {
        compares: vec![],
        success: vec![
            TxnOp::Delete { key: "c".into() },
            TxnOp::Put {
                key: "b".into(),
                value: b"1234567890123456".to_vec(),
                lease: None,
            },
            TxnOp::Put {
                key: "a".into(),
                value: b"1234567890123456".to_vec(),
                lease: None,
            },
        ],
        failure: vec![],
    };
    let e = sm.rejected(Command::Txn(txn));
    assert!(matches!(e, CoordError::ResourceExhausted { .. }), "{e}");
    assert!(sm.m.get("c").is_some());
    // Reads work; an overwrite that does not grow the store works; a delete frees room.
    assert_eq!(sm.m.get("b").map(|kv| kv.value.len()), Some(9));
    sm.put("b", "1", None);
    sm.put("c", "12345678901", None);
    assert_eq!(sm.m.stored_bytes(), 114);
    // The store's own keys are not refused: a full store never blocks a lock or an election
    // (a delete makes room under keys_max, not under the byte quota).
    sm.ok(Command::Delete { key: "d".into() });
    sm.put("e", "1234567890123456", None);
    sm.put("f", "1234567890123456", None);
    sm.put("g", "12345678901", None);
    assert_eq!(sm.m.stored_bytes(), 120);
    assert!(sm.m.get("d").is_none());
    let l = sm.grant(1);
    sm.lock("l", l);
    assert!(sm.m.stored_bytes() > 120);
    sm.put("e", "", None);
    let e = sm.rejected(Command::Put {
        key: "d".into(),
        value: b"1".to_vec(),
        lease: None,
    });
    assert!(matches!(e, CoordError::ResourceExhausted { .. }), "{e}");
}

/// A node's own quota (`Machine::admit`, checked by the leader before proposing) refuses
/// growth past it, counting a transaction by the branch that would run, and passes shrinking
/// writes, deletes and the store's own commands.
#[test]
fn a_nodes_quota_admits_only_writes_that_fit() {
    let mut sm = Sm::new();
    sm.put("a", "123456789", None); // 10 bytes
    let put = |k: &str, v: &str| Command::Put {
        key: k.into(),
        value: v.as_bytes().to_vec(),
        lease: None,
    };
    assert!(sm.m.admit(&put("b", "123456789"), 20).is_ok());
    let e = sm.m.admit(&put("b", "1234567890"), 20).unwrap_err();
    assert!(
        matches!(&e, CoordError::ResourceExhausted { max: 20, .. })
            && e.to_string().contains("NOSPACE"),
        "{e}"
    );
    assert!(sm.m.admit(&put("a", "1"), 5).is_ok(), "shrinking");
    assert!(sm.m.admit(&Command::Delete { key: "a".into() }, 0).is_ok());
    assert!(
        sm.m.admit(
            &Command::Lock {
                name: "l".into(),
                lease: LeaseId(1)
            },
            0
        )
        .is_ok()
    );
    // A transaction counts the branch that would run now.
    let txn = |compare_holds: bool| {
        Command::Txn(Txn {
            compares: vec![Compare {
                key: "a".into(),
                target: CompareTarget::Version(if compare_holds { 1 } else { 7 }),
                op: CompareOp::Equal,
            }],
            success: vec![TxnOp::Put {
                key: "big".into(),
                value: vec![0; 100],
                lease: None,
            }],
            failure: vec![TxnOp::Delete { key: "a".into() }],
        })
    };
    assert!(sm.m.admit(&txn(true), 50).is_err());
    assert!(sm.m.admit(&txn(false), 50).is_ok());
}

#[test]
fn a_snapshot_from_before_the_quota_still_restores() {
    #[derive(Serialize)]
    struct OldLimits {
        key_bytes_max: usize,
        value_bytes_max: usize,
        keys_max: u64,
        leases_max: u64,
        txn_ops_max: usize,
        range_keys_max: usize,
        history_events_max: u64,
        lease_ttl_min_ms: u64,
        lease_ttl_max_ms: u64,
    }
    #[derive(Serialize)]
    struct Old<'a> {
        limits: OldLimits,
        revision: u64,
        kv: &'a BTreeMap<String, KeyValue>,
        leases: &'a BTreeMap<LeaseId, LeaseState>,
        grants: &'a BTreeMap<String, u64>,
        ended: &'a VecDeque<(LeaseId, bool)>,
        history: &'a VecDeque<WatchEvent>,
        compacted: u64,
    }
    let mut sm = Sm::new();
    let a = sm.grant(1);
    sm.put("a", "1", Some(a));
    sm.lock("l", a);
    let l = small_limits();
    let old = Old {
        limits: OldLimits {
            key_bytes_max: l.key_bytes_max,
            value_bytes_max: l.value_bytes_max,
            keys_max: l.keys_max,
            leases_max: l.leases_max,
            txn_ops_max: l.txn_ops_max,
            range_keys_max: l.range_keys_max,
            history_events_max: l.history_events_max,
            lease_ttl_min_ms: l.lease_ttl_min_ms,
            lease_ttl_max_ms: l.lease_ttl_max_ms,
        },
        revision: sm.m.revision,
        kv: &sm.m.kv,
        leases: &sm.m.leases,
        grants: &sm.m.grants,
        ended: &sm.m.ended,
        history: &sm.m.history,
        compacted: sm.m.compacted,
    };
    let bytes = postcard::to_allocvec(&old).unwrap();
    let restored = Machine::restore(&bytes).unwrap();
    assert_eq!(restored.kv, sm.m.kv);
    assert_eq!(restored.stored_bytes(), sm.m.stored_bytes());
    assert_eq!(
        restored.limits.store_bytes_max,
        MachineLimits::lan().store_bytes_max
    );
}

// ---- properties ----

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_owned()),
        Just("b".to_owned()),
        Just("p/1".to_owned()),
        Just("p/2".to_owned()),
        Just(String::new()),
        Just("__quorate/lock/l/0000000000000001".to_owned()),
        "[a-z/_]{0,70}",
    ]
}

fn lease() -> impl Strategy<Value = LeaseId> {
    (0u64..6).prop_map(LeaseId)
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..20)
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("l".to_owned()),
        Just("l/x".to_owned()),
        Just(String::new()),
        "[a-z/\\x00]{0,4}",
    ]
}

fn queue_key_any() -> impl Strategy<Value = String> {
    prop_oneof![
        (name(), lease()).prop_map(|(n, l)| queue_key(LOCK_PREFIX, &n, l)),
        (name(), lease()).prop_map(|(n, l)| queue_key(ELECTION_PREFIX, &n, l)),
        key(),
    ]
}

fn txn_op() -> impl Strategy<Value = TxnOp> {
    prop_oneof![
        (key(), value(), prop::option::of(lease())).prop_map(|(key, value, lease)| TxnOp::Put {
            key,
            value,
            lease
        }),
        key().prop_map(|key| TxnOp::Get { key }),
        key().prop_map(|key| TxnOp::Delete { key }),
        (key(), prop::option::of(0u32..5))
            .prop_map(|(prefix, limit)| TxnOp::Range { prefix, limit }),
    ]
}

fn compare() -> impl Strategy<Value = Compare> {
    let op = prop_oneof![
        Just(CompareOp::Equal),
        Just(CompareOp::NotEqual),
        Just(CompareOp::Less),
        Just(CompareOp::Greater)
    ];
    let target = prop_oneof![
        value().prop_map(CompareTarget::Value),
        (0u64..40).prop_map(|r| CompareTarget::ModRevision(Revision(r))),
        (0u64..40).prop_map(|r| CompareTarget::CreateRevision(Revision(r))),
        (0u64..4).prop_map(CompareTarget::Version),
        prop::option::of(lease()).prop_map(CompareTarget::Lease),
    ];
    (key(), op, target).prop_map(|(key, op, target)| Compare { key, op, target })
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        3 => (key(), value(), prop::option::of(lease()))
            .prop_map(|(key, value, lease)| Command::Put { key, value, lease }),
        1 => key().prop_map(|key| Command::Delete { key }),
        1 => (
            prop::collection::vec(compare(), 0..3),
            prop::collection::vec(txn_op(), 0..4),
            prop::collection::vec(txn_op(), 0..4)
        )
            .prop_map(|(compares, success, failure)| Command::Txn(Txn { compares, success, failure })),
        2 => (prop::option::of(lease()), prop_oneof![Just(0u64), Just(1_000), Just(5_000), Just(u64::MAX)])
            .prop_map(|(id, ttl_ms)| Command::LeaseGrant { id, ttl_ms }),
        1 => lease().prop_map(|id| Command::LeaseKeepAlive { id }),
        1 => lease().prop_map(|id| Command::LeaseRevoke { id }),
        1 => prop::collection::vec((lease(), 0u64..40), 0..4)
            .prop_map(|leases| Command::LeaseExpire { leases }),
        3 => (name(), lease()).prop_map(|(name, lease)| Command::Lock { name, lease }),
        1 => (queue_key_any(), 0u64..40)
            .prop_map(|(key, r)| Command::Unlock { key, create_revision: Revision(r) }),
        2 => (name(), value(), lease())
            .prop_map(|(election, value, lease)| Command::Campaign { election, value, lease }),
        1 => (queue_key_any(), 0u64..40, value())
            .prop_map(|(key, r, value)| Command::Proclaim { key, create_revision: Revision(r), value }),
        1 => (queue_key_any(), 0u64..40)
            .prop_map(|(key, r)| Command::Resign { key, create_revision: Revision(r) }),
    ]
}

/// Structural invariants of a machine.
fn check_invariants(m: &Machine) -> Result<(), TestCaseError> {
    let limits = &m.limits;
    let counted: u64 =
        m.kv.values()
            .map(|kv| stored_bytes(&kv.key, &kv.value))
            .sum();
    prop_assert_eq!(
        m.bytes,
        counted,
        "stored bytes drifted from the keys and values"
    );
    prop_assert!(m.kv.len() as u64 <= limits.keys_max);
    prop_assert!(m.leases.len() as u64 <= limits.leases_max);
    prop_assert!(m.history.len() as u64 <= limits.history_events_max);
    for (key, kv) in &m.kv {
        prop_assert_eq!(key, &kv.key);
        prop_assert!(!key.is_empty() && key.len() <= limits.key_bytes_max);
        prop_assert!(kv.value.len() <= limits.value_bytes_max);
        prop_assert!(kv.create_revision <= kv.mod_revision && kv.mod_revision.0 <= m.revision);
        prop_assert!(kv.version >= 1);
        if let Some(l) = kv.lease {
            let lease = m.leases.get(&l);
            prop_assert!(
                lease.is_some_and(|s| s.keys.contains(key)),
                "{key} on missing {l}"
            );
        }
    }
    for (id, lease) in &m.leases {
        for key in &lease.keys {
            prop_assert_eq!(m.kv.get(key).and_then(|kv| kv.lease), Some(*id));
        }
    }
    // One grant per queue, held by the queue's head; every non-empty queue has one.
    let mut queues = BTreeSet::new();
    for key in m.kv.keys() {
        if let Some(q) = queue_of(key) {
            queues.insert(q.to_owned());
            prop_assert!(m.kv[key].lease.is_some(), "queue key {key} without a lease");
        }
    }
    for q in &queues {
        let members = m.queue_members(q);
        if let Some(head) = members.first() {
            prop_assert!(
                m.grants.contains_key(&head.key),
                "head {} of {q} not granted",
                head.key
            );
            for other in &members[1..] {
                prop_assert!(
                    !m.grants.contains_key(&other.key),
                    "waiter {} granted",
                    other.key
                );
            }
        }
    }
    for key in m.grants.keys() {
        prop_assert!(m.kv.contains_key(key), "grant for missing key {key}");
    }
    let revs: Vec<Revision> = m.history.iter().map(|e| e.revision()).collect();
    prop_assert!(revs.windows(2).all(|w| w[0] <= w[1]));
    prop_assert!(revs.first().is_none_or(|r| r.0 > m.compacted));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x5eed_c00d),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Apply never panics, rejected commands change nothing but the revision, invariants
    /// hold after every command, and every grant of a queue has a higher token than the one
    /// before it.
    #[test]
    fn apply_is_total_and_keeps_invariants(cmds in prop::collection::vec(command(), 1..60)) {
        let mut m = Machine::new(small_limits());
        let mut last_token: BTreeMap<String, u64> = BTreeMap::new();
        for (i, cmd) in cmds.iter().enumerate() {
            let index = i as u64 + 1;
            let before = m.clone();
            let (outcome, events) = m.apply(index, cmd);
            prop_assert_eq!(m.revision, index);
            if let Outcome::Rejected(_) = outcome {
                let mut expected = before.clone();
                expected.revision = index;
                prop_assert_eq!(&m, &expected, "a rejected {:?} changed state", cmd);
                prop_assert!(events.is_empty());
            }
            prop_assert!(events.iter().all(|e| e.revision() == Revision(index)));
            check_invariants(&m)?;
            for (key, token) in &m.grants {
                if before.grants.get(key) != Some(token) {
                    // A new grant: at this index, above every earlier grant of its queue.
                    prop_assert_eq!(*token, index);
                    let q = queue_of(key).unwrap_or_default().to_owned();
                    if let Some(prev) = last_token.insert(q, *token) {
                        prop_assert!(prev < *token);
                    }
                }
            }
        }
    }

    /// Two replicas applying the same entries are identical, also when one of them restarts
    /// from a snapshot half way.
    #[test]
    fn replicas_and_snapshots_agree(cmds in prop::collection::vec(command(), 1..40), cut in 0usize..40) {
        let mut a = Machine::new(small_limits());
        let mut b = Machine::new(small_limits());
        for (i, cmd) in cmds.iter().enumerate() {
            let index = i as u64 + 1;
            if i == cut {
                b = Machine::restore(&b.snapshot()).map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            let ra = a.apply(index, cmd);
            let rb = b.apply(index, cmd);
            prop_assert_eq!(ra, rb);
        }
        prop_assert_eq!(a, b);
    }

    /// Restoring arbitrary bytes never panics.
    #[test]
    fn restore_of_random_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = Machine::restore(&bytes);
    }
}

/// Runs `f` and returns its panic message ("" when it did not panic).
fn panic_message(f: impl FnOnce()) -> String {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(()) => String::new(),
        Err(p) => p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default(),
    }
}

/// The machine checks its own invariants after every apply (debug builds: tests and
/// simulations): a machine whose state was broken behind its back stops at the next entry
/// that touches the damage, naming it. Outside input cannot get there: a snapshot that
/// breaks an invariant is refused by `restore` with an error.
#[test]
fn debug_invariants_fire_on_a_broken_machine() {
    if !cfg!(debug_assertions) {
        return;
    }
    let mut sm = Sm::new();
    sm.put("k", "1", None);
    // Broken: a create revision in the future.
    sm.m.kv.get_mut("k").unwrap().create_revision = Revision(1_000);
    let msg = panic_message(|| {
        sm.m.apply(
            sm.next,
            &Command::Put {
                key: "k".into(),
                value: b"2".to_vec(),
                lease: None,
            },
        );
    });
    assert!(
        msg.contains("raft state machine invariant broken after applying index")
            && msg.contains("create revision 1000"),
        "{msg}"
    );

    // Broken: more keys than the limit.
    let mut m = Machine::new(small_limits());
    for i in 0..20 {
        let key = format!("x{i}");
        m.kv.insert(
            key.clone(),
            KeyValue {
                key,
                value: Vec::new(),
                create_revision: Revision(0),
                mod_revision: Revision(0),
                version: 1,
                lease: None,
            },
        );
    }
    let msg = panic_message(|| {
        m.apply(1, &Command::Delete { key: "x0".into() });
    });
    assert!(msg.contains("keys 19 exceed the limit 12"), "{msg}");
}

/// A snapshot that decodes but breaks an invariant is an error, not a panic.
#[test]
fn restore_refuses_a_snapshot_that_breaks_an_invariant() {
    let mut sm = Sm::new();
    sm.put("k", "1", None);
    assert!(Machine::restore(&sm.m.snapshot()).is_ok());
    sm.m.kv.get_mut("k").unwrap().mod_revision = Revision(9_999);
    let err = Machine::restore(&sm.m.snapshot()).expect_err("corrupt snapshot");
    assert!(
        err.to_string().contains("snapshot breaks an invariant"),
        "{err}"
    );
}
