//! Conformance: compare-and-set transactions, including races between clients.

use std::sync::Arc;

use futures::future::join_all;

use super::{Ctx, Outcome, SuiteConfig, ensure};
use crate::{
    Compare, CompareOp, CompareTarget, Consistency, Coord, CoordError, LeaseId, Revision, Txn,
    TxnOp, TxnOpResult,
};

fn put(key: &str, value: &[u8]) -> TxnOp {
    TxnOp::Put {
        key: key.to_owned(),
        value: value.to_vec(),
        lease: None,
    }
}

/// Create-if-absent, every compare target and operator, then/else branches and their results,
/// atomicity of a rejected branch, the operation limit, and CAS races between clients.
pub async fn txn(clients: &[Arc<dyn Coord>], config: &SuiteConfig) -> Outcome {
    let mut ctx = Ctx::new(clients, config, "txn")?;
    let c0 = ctx.c(0);

    ctx.begin("create_if_absent");
    let k = ctx.key("once");
    let create = |v: &[u8]| Txn {
        compares: vec![Compare::absent(&k)],
        success: vec![put(&k, v)],
        failure: vec![TxnOp::Get { key: k.clone() }],
    };
    let t1 = ctx.ok("first create", c0.txn(create(b"first")).await)?;
    ensure!(
        ctx,
        t1.succeeded,
        "create-if-absent on a new key failed: {t1:?}"
    );
    ensure!(
        ctx,
        matches!(t1.results.as_slice(), [TxnOpResult::Put { prev: None }]),
        "results {:?}",
        t1.results
    );
    let t2 = ctx.ok("second create", ctx.c(1).txn(create(b"second")).await)?;
    ensure!(
        ctx,
        !t2.succeeded,
        "create-if-absent on an existing key succeeded"
    );
    let seen = match t2.results.as_slice() {
        [TxnOpResult::Get(Some(kv))] => kv.clone(),
        other => return Err(ctx.fail(format!("failure branch results {other:?}"))),
    };
    ensure!(
        ctx,
        seen.value == b"first" && seen.mod_revision == t1.revision,
        "failure branch read {seen:?}"
    );
    ctx.pass();

    ctx.begin("compare_targets");
    let kv = seen;
    let check = |target: CompareTarget, op: CompareOp| Compare {
        key: k.clone(),
        op,
        target,
    };
    let cases: Vec<(Compare, bool)> = vec![
        (Compare::value_eq(&k, b"first".to_vec()), true),
        (Compare::value_eq(&k, b"other".to_vec()), false),
        (
            check(CompareTarget::Value(b"other".to_vec()), CompareOp::NotEqual),
            true,
        ),
        (
            check(CompareTarget::Value(b"g".to_vec()), CompareOp::Less),
            true,
        ),
        (
            check(CompareTarget::Value(b"a".to_vec()), CompareOp::Greater),
            true,
        ),
        (Compare::mod_revision_eq(&k, kv.mod_revision), true),
        (Compare::mod_revision_eq(&k, kv.mod_revision.next()), false),
        (
            check(
                CompareTarget::ModRevision(kv.mod_revision.next()),
                CompareOp::Less,
            ),
            true,
        ),
        (Compare::create_revision_eq(&k, kv.create_revision), true),
        (
            check(
                CompareTarget::CreateRevision(Revision(0)),
                CompareOp::Greater,
            ),
            true,
        ),
        (check(CompareTarget::Version(1), CompareOp::Equal), true),
        (check(CompareTarget::Version(1), CompareOp::Greater), false),
        (Compare::lease_eq(&k, None), true),
        (Compare::lease_eq(&k, Some(LeaseId(1))), false),
    ];
    for (i, (cmp, want)) in cases.into_iter().enumerate() {
        let t = ctx.ok(
            "compare txn",
            c0.txn(Txn {
                compares: vec![cmp.clone()],
                ..Txn::default()
            })
            .await,
        )?;
        ensure!(
            ctx,
            t.succeeded == want,
            "case {i}: {cmp:?} evaluated to {}",
            t.succeeded
        );
    }
    ctx.pass();

    ctx.begin("missing_key_compares");
    let missing = ctx.key("missing");
    for (cmp, want) in [
        (Compare::value_eq(&missing, Vec::new()), false),
        (
            Compare {
                key: missing.clone(),
                op: CompareOp::NotEqual,
                target: CompareTarget::Value(b"x".to_vec()),
            },
            false,
        ),
        (Compare::absent(&missing), true),
        (Compare::mod_revision_eq(&missing, Revision(0)), true),
        (
            Compare {
                key: missing.clone(),
                op: CompareOp::Equal,
                target: CompareTarget::Version(0),
            },
            true,
        ),
        (Compare::lease_eq(&missing, None), true),
    ] {
        let t = ctx.ok(
            "compare missing",
            c0.txn(Txn {
                compares: vec![cmp.clone()],
                ..Txn::default()
            })
            .await,
        )?;
        ensure!(
            ctx,
            t.succeeded == want,
            "{cmp:?} on a missing key evaluated to {}",
            t.succeeded
        );
    }
    ctx.pass();

    ctx.begin("multi_op_branch");
    let (a, b, gone) = (ctx.key("m/a"), ctx.key("m/b"), ctx.key("m/gone"));
    ctx.ok("put gone", c0.put(&gone, b"x".to_vec(), None).await)?;
    let t = ctx.ok(
        "multi-op txn",
        c0.txn(Txn {
            compares: vec![Compare::absent(&a), Compare::absent(&b)],
            success: vec![
                put(&a, b"1"),
                put(&b, b"2"),
                TxnOp::Delete { key: gone.clone() },
                TxnOp::Range {
                    prefix: ctx.key("m/"),
                    limit: None,
                },
            ],
            failure: vec![],
        })
        .await,
    )?;
    ensure!(
        ctx,
        t.succeeded && t.results.len() == 4,
        "multi-op txn: {t:?}"
    );
    match &t.results[2] {
        TxnOpResult::Delete { prev: Some(p) } if p.key == gone => {}
        other => return Err(ctx.fail(format!("delete result {other:?}"))),
    }
    match &t.results[3] {
        TxnOpResult::Range { kvs, more: false } => {
            let keys: Vec<&str> = kvs.iter().map(|kv| kv.key.as_str()).collect();
            ensure!(
                ctx,
                keys == [a.as_str(), b.as_str()],
                "range inside txn saw {keys:?}"
            );
            ensure!(
                ctx,
                kvs.iter().all(|kv| kv.mod_revision == t.revision),
                "puts of one txn at different revisions: {kvs:?}"
            );
        }
        other => return Err(ctx.fail(format!("range result {other:?}"))),
    }
    ctx.pass();

    ctx.begin("rejected_txn_changes_nothing");
    let partial = ctx.key("atomic");
    let r = c0
        .txn(Txn {
            compares: vec![],
            success: vec![
                put(&partial, b"should not exist"),
                TxnOp::Put {
                    key: ctx.key("atomic2"),
                    value: b"x".to_vec(),
                    lease: Some(LeaseId(0x7fff_ffff_ffff_fff3)),
                },
            ],
            failure: vec![],
        })
        .await;
    ctx.err("txn with a put on an unknown lease", r, |e| {
        matches!(
            e,
            CoordError::LeaseNotFound { .. } | CoordError::LeaseExpired { .. }
        )
    })?;
    let g = ctx.ok("get", c0.get(&partial, Consistency::Linearizable).await)?;
    ensure!(
        ctx,
        g.kv.is_none(),
        "half of a rejected txn was applied: {:?}",
        g.kv
    );
    let big = ctx.caps.value_bytes_max + 1;
    let r = c0
        .txn(Txn {
            success: vec![put(&partial, b"x"), put(&ctx.key("atomic3"), &vec![0; big])],
            ..Txn::default()
        })
        .await;
    ctx.err("txn with an oversized value", r, |e| {
        matches!(e, CoordError::ValueTooLarge { .. })
    })?;
    let ops = ctx.caps.txn_ops_max + 1;
    let r = c0
        .txn(Txn {
            success: (0..ops)
                .map(|_| TxnOp::Get {
                    key: partial.clone(),
                })
                .collect(),
            ..Txn::default()
        })
        .await;
    ctx.err("txn over txn_ops_max", r, |e| {
        matches!(e, CoordError::InvalidArgument { .. })
    })?;
    let g = ctx.ok("get", c0.get(&partial, Consistency::Linearizable).await)?;
    ensure!(ctx, g.kv.is_none(), "a rejected txn wrote {:?}", g.kv);
    ctx.pass();

    ctx.begin("cas_race_one_winner");
    let race = ctx.key("race");
    let base = ctx.ok("put race", c0.put(&race, b"0".to_vec(), None).await)?;
    let attempts = (0..8).map(|i| {
        let c = ctx.c(i);
        let race = race.clone();
        async move {
            tokio::task::yield_now().await;
            c.txn(Txn {
                compares: vec![Compare::mod_revision_eq(&race, base.revision)],
                success: vec![put(&race, format!("winner {i}").as_bytes())],
                failure: vec![],
            })
            .await
        }
    });
    let results = join_all(attempts).await;
    let mut winners = 0;
    for r in results {
        if ctx.ok("racing txn", r)?.succeeded {
            winners += 1;
        }
    }
    ensure!(
        ctx,
        winners == 1,
        "{winners} of 8 racing CAS writes on one revision succeeded"
    );
    ctx.pass();

    ctx.begin("cas_counter_no_lost_update");
    let counter = ctx.key("counter");
    ctx.ok("put counter", c0.put(&counter, b"0".to_vec(), None).await)?;
    let (workers, per_worker) = (4usize, 5u64);
    let runs = (0..workers).map(|w| {
        let c = ctx.c(w);
        let counter = counter.clone();
        async move {
            let mut done = 0u64;
            let mut tries = 0u32;
            while done < per_worker {
                tries += 1;
                if tries > 1000 {
                    return Err(format!("worker {w}: 1000 CAS attempts without finishing"));
                }
                let g = c
                    .get(&counter, Consistency::Linearizable)
                    .await
                    .map_err(|e| e.to_string())?;
                let Some(kv) = g.kv else {
                    return Err("counter vanished".into());
                };
                let n: u64 = std::str::from_utf8(&kv.value)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or("counter is not a number")?;
                tokio::task::yield_now().await;
                let t = c
                    .txn(Txn {
                        compares: vec![Compare::mod_revision_eq(&counter, kv.mod_revision)],
                        success: vec![put(&counter, (n + 1).to_string().as_bytes())],
                        failure: vec![],
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                if t.succeeded {
                    done += 1;
                }
            }
            Ok::<(), String>(())
        }
    });
    for r in join_all(runs).await {
        r.map_err(|e| ctx.fail(e))?;
    }
    let g = ctx.ok(
        "get counter",
        c0.get(&counter, Consistency::Linearizable).await,
    )?;
    let want = (workers as u64 * per_worker).to_string();
    ensure!(
        ctx,
        g.kv.as_ref().is_some_and(|kv| kv.value == want.as_bytes()),
        "counter is {:?}, expected {want}: an update was lost",
        g.kv.map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
    );
    ctx.pass();

    ctx.finish()
}
