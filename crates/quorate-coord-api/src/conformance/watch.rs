//! Conformance: watches (live, resumed from a revision, prefix filtering, compaction, slow
//! watchers).

use std::sync::Arc;

use futures::StreamExt;

use super::{Ctx, Outcome, SuiteConfig, ensure};
use crate::{Coord, CoordError, EventKind, Revision, Txn, TxnOp, WatchEvent, WatchStream};

/// Writes `count` events as puts under `prefix` in transactions of up to `txn_ops_max` puts;
/// returns the (key, revision) of every event in order.
async fn write_events(
    ctx: &Ctx,
    c: &Arc<dyn Coord>,
    prefix: &str,
    count: u64,
) -> Result<Vec<(String, Revision)>, super::Failure> {
    let batch = ctx.caps.txn_ops_max.clamp(1, 128) as u64;
    let mut out = Vec::new();
    let mut written = 0;
    while written < count {
        let n = batch.min(count - written);
        let keys: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
        let t = ctx.ok(
            "batch of puts",
            c.txn(Txn {
                success: keys
                    .iter()
                    .map(|k| TxnOp::Put {
                        key: k.clone(),
                        value: written.to_le_bytes().to_vec(),
                        lease: None,
                    })
                    .collect(),
                ..Txn::default()
            })
            .await,
        )?;
        out.extend(keys.into_iter().map(|k| (k, t.revision)));
        written += n;
    }
    Ok(out)
}

/// Reads `stream` until it has yielded `expected.len()` events or an error; checks that what
/// came is a gap-free prefix of `expected`. Returns (events received, the error if any).
async fn drain(
    ctx: &Ctx,
    stream: &mut WatchStream,
    expected: &[(String, Revision)],
) -> Result<(usize, Option<CoordError>), super::Failure> {
    let mut got = 0;
    while got < expected.len() {
        match tokio::time::timeout(ctx.wait_max, stream.next()).await {
            Ok(Some(Ok(ev))) => {
                let (key, rev) = &expected[got];
                ensure!(
                    ctx,
                    ev.kv.key == *key && ev.revision() == *rev && ev.kind == EventKind::Put,
                    "event {got}: got {} at {}, expected {key} at {rev} (a gap or reordering)",
                    ev.kv.key,
                    ev.revision()
                );
                got += 1;
            }
            Ok(Some(Err(e))) => return Ok((got, Some(e))),
            Ok(None) => {
                return Err(ctx.fail(format!("the watch ended silently after {got} events")));
            }
            Err(_) => {
                return Err(ctx.fail(format!(
                    "no event within {:?} after {got} of {}",
                    ctx.wait_max,
                    expected.len()
                )));
            }
        }
    }
    Ok((got, None))
}

/// Live events in order with the writes' revisions, resume from a revision, prefix filtering,
/// one revision per transaction, the `Compacted` error, and slow watchers.
pub async fn watch(clients: &[Arc<dyn Coord>], config: &SuiteConfig) -> Outcome {
    let mut ctx = Ctx::new(clients, config, "watch")?;
    let c0 = ctx.c(0);
    let c1 = ctx.c(1);

    ctx.begin("live_events_in_order");
    let prefix = ctx.key("live/");
    let mut w = ctx.ok("watch", c1.watch(&prefix, None).await)?;
    let (k1, k2) = (format!("{prefix}1"), format!("{prefix}2"));
    let p1 = ctx.ok("put 1", c0.put(&k1, b"a".to_vec(), None).await)?;
    ctx.ok(
        "put outside",
        c0.put(&ctx.key("other"), b"x".to_vec(), None).await,
    )?;
    let p2 = ctx.ok("put 2", c0.put(&k2, b"b".to_vec(), None).await)?;
    let d1 = ctx.ok("delete 1", c0.delete(&k1).await)?;
    let e1 = ctx.next_event("first event", &mut w).await?;
    ensure!(
        ctx,
        e1.kind == EventKind::Put
            && e1.kv.key == k1
            && e1.kv.value == b"a"
            && e1.revision() == p1.revision
            && e1.kv.create_revision == p1.revision
            && e1.kv.version == 1,
        "first event {e1:?}"
    );
    let e2 = ctx.next_event("second event", &mut w).await?;
    ensure!(
        ctx,
        e2.kind == EventKind::Put && e2.kv.key == k2 && e2.revision() == p2.revision,
        "second event {e2:?} (a key outside the prefix must not be delivered)"
    );
    let e3 = ctx.next_event("third event", &mut w).await?;
    ensure!(
        ctx,
        e3.kind == EventKind::Delete && e3.kv.key == k1 && e3.revision() == d1.revision,
        "third event {e3:?}"
    );
    ctx.pass();

    ctx.begin("resume_from_revision");
    let mut r = ctx.ok(
        "watch from a revision",
        c0.watch(&prefix, Some(p1.revision)).await,
    )?;
    let mut replay: Vec<WatchEvent> = Vec::new();
    for i in 0..3 {
        replay.push(
            ctx.next_event(&format!("replayed event {i}"), &mut r)
                .await?,
        );
    }
    ensure!(
        ctx,
        replay == [e1.clone(), e2.clone(), e3.clone()],
        "replay {replay:?} differs from the live events"
    );
    let p3 = ctx.ok("put 3", c1.put(&k2, b"c".to_vec(), None).await)?;
    let e4 = ctx.next_event("live after replay", &mut r).await?;
    ensure!(
        ctx,
        e4.kv.key == k2 && e4.revision() == p3.revision && e4.kv.version == 2,
        "after the replay the watch delivered {e4:?}"
    );
    let mut mid = ctx.ok(
        "watch from a middle revision",
        c1.watch(&prefix, Some(p2.revision)).await,
    )?;
    let m1 = ctx.next_event("first resumed event", &mut mid).await?;
    ensure!(
        ctx,
        m1 == e2,
        "resuming at {} started with {m1:?}",
        p2.revision
    );
    ctx.pass();

    ctx.begin("txn_events_share_a_revision");
    let t = ctx.ok(
        "txn",
        c0.txn(Txn {
            success: vec![
                TxnOp::Put {
                    key: format!("{prefix}t1"),
                    value: b"1".to_vec(),
                    lease: None,
                },
                TxnOp::Delete { key: k2.clone() },
                TxnOp::Put {
                    key: format!("{prefix}t2"),
                    value: b"2".to_vec(),
                    lease: None,
                },
            ],
            ..Txn::default()
        })
        .await,
    )?;
    let skipped = ctx
        .next_event("the live watch's copy of put 3", &mut w)
        .await?;
    ensure!(
        ctx,
        skipped == e4,
        "the live watch saw {skipped:?} instead of {e4:?}"
    );
    let mut kinds = Vec::new();
    for i in 0..3 {
        let ev = ctx.next_event(&format!("txn event {i}"), &mut w).await?;
        ensure!(
            ctx,
            ev.revision() == t.revision,
            "txn event at {} instead of {}",
            ev.revision(),
            t.revision
        );
        kinds.push((ev.kind, ev.kv.key));
    }
    ensure!(
        ctx,
        kinds
            == [
                (EventKind::Put, format!("{prefix}t1")),
                (EventKind::Delete, k2.clone()),
                (EventKind::Put, format!("{prefix}t2")),
            ],
        "txn events {kinds:?}"
    );
    ctx.pass();

    ctx.begin("compacted_error");
    match ctx.caps.watch_history_events {
        None => ctx.note(
            "this backend's history is not bounded by an event count; the Compacted error is not provoked here",
        ),
        Some(n) => {
            let cp = ctx.key("compact/");
            let first = ctx.ok("put", c0.put(&format!("{cp}first"), b"x".to_vec(), None).await)?;
            write_events(&ctx, &c0, &cp, n + 1).await?;
            let got = match c1.watch(&cp, Some(first.revision)).await {
                Err(e) => Err(e),
                Ok(mut s) => match tokio::time::timeout(ctx.wait_max, s.next()).await {
                    Ok(Some(item)) => item.map(|ev| vec![ev]),
                    Ok(None) => Ok(Vec::new()),
                    Err(_) => Ok(Vec::new()),
                },
            };
            let e = ctx.err("watch from a compacted revision", got, |e| {
                matches!(e, CoordError::Compacted { .. })
            })?;
            if let CoordError::Compacted { requested, compacted } = e {
                ensure!(
                    ctx,
                    requested == first.revision && compacted >= first.revision,
                    "Compacted {{ requested: {requested}, compacted: {compacted} }} for a watch from {}",
                    first.revision
                );
            }
            let now = ctx.ok("put", c0.put(&format!("{cp}after"), b"y".to_vec(), None).await)?;
            let mut ok = ctx.ok("watch from a recent revision", c1.watch(&cp, Some(now.revision)).await)?;
            let ev = ctx.next_event("recent event", &mut ok).await?;
            ensure!(ctx, ev.revision() == now.revision, "recent watch gave {ev:?}");
        }
    }
    ctx.pass();

    ctx.begin("slow_watcher_never_skips_silently");
    if ctx.caps.watch_history_events.is_none() {
        ctx.note("history not bounded by a count: only the within-history case is checked");
    }
    let n = ctx.caps.watch_history_events.unwrap_or(2_000);
    let sp = ctx.key("slow/");
    // Behind by less than the history: everything must arrive.
    let mut slow = ctx.ok("watch", c1.watch(&sp, None).await)?;
    let within = write_events(&ctx, &c0, &sp, (n / 2).max(1)).await?;
    let (got, err) = drain(&ctx, &mut slow, &within).await?;
    ensure!(
        ctx,
        err.is_none() && got == within.len(),
        "a watcher {} events behind (history keeps {n}) got {got} events and {err:?}",
        within.len()
    );
    if ctx.caps.watch_history_events.is_some() {
        // Behind by more than the history: a gap-free prefix, then Compacted (or everything,
        // if the backend buffered it all).
        let mut slower = ctx.ok("watch", c1.watch(&sp, None).await)?;
        let beyond = write_events(&ctx, &c0, &sp, n + 1).await?;
        let (got, err) = drain(&ctx, &mut slower, &beyond).await?;
        match err {
            None => ensure!(ctx, got == beyond.len(), "got {got} of {}", beyond.len()),
            Some(CoordError::Compacted { .. }) => {
                let after = tokio::time::timeout(ctx.wait_max, slower.next()).await;
                ensure!(
                    ctx,
                    matches!(after, Ok(None)),
                    "the watch went on after its Compacted error: {after:?}"
                );
            }
            Some(e) => {
                return Err(ctx.fail(format!(
                    "a slow watcher failed with {e:?}, expected Compacted"
                )));
            }
        }
    }
    ctx.pass();

    ctx.finish()
}
