//! Conformance: locks (acquire, FIFO handover, fencing tokens, release by lease end).

use std::sync::Arc;
use std::time::Duration;

use super::{Ctx, Outcome, SuiteConfig, Task, ensure};
use crate::{Compare, Consistency, Coord, CoordError, LeaseId, LockGrant, Txn, TxnOp};

fn lease_gone(e: &CoordError) -> bool {
    matches!(
        e,
        CoordError::LeaseNotFound { .. } | CoordError::LeaseExpired { .. }
    )
}

fn spawn_lock(
    c: Arc<dyn Coord>,
    name: &str,
    lease: LeaseId,
) -> Task<Result<LockGrant, CoordError>> {
    let name = name.to_owned();
    Task::spawn(async move { c.lock(&name, lease).await })
}

async fn holder(ctx: &Ctx, i: usize, name: &str) -> Result<Option<LockGrant>, super::Failure> {
    ctx.ok(
        "lock_holder",
        ctx.c(i).lock_holder(name, Consistency::Linearizable).await,
    )
}

/// Acquire and idempotent re-acquire, FIFO handover on unlock and on lease end, waiters whose
/// lease ends, fencing with a transaction compare, strictly increasing tokens, independent
/// names, unknown leases.
pub async fn locks(clients: &[Arc<dyn Coord>], config: &SuiteConfig) -> Outcome {
    let mut ctx = Ctx::new(clients, config, "locks")?;
    let name = ctx.key("fifo");
    let mut tokens = Vec::new();

    ctx.begin("acquire_and_reacquire");
    let (l1, _k1) = ctx.session(0).await?;
    let g1 = ctx.ok("lock", ctx.c(0).lock(&name, l1).await)?;
    ensure!(ctx, g1.name == name && g1.lease == l1, "grant {g1:?}");
    tokens.push(g1.token);
    ensure!(
        ctx,
        holder(&ctx, 1, &name).await? == Some(g1.clone()),
        "lock_holder differs from the grant"
    );
    let again = ctx.ok(
        "lock again with the same lease",
        ctx.c(1).lock(&name, l1).await,
    )?;
    ensure!(
        ctx,
        again == g1,
        "re-acquiring with the same lease gave {again:?}, expected {g1:?}"
    );
    ctx.pass();

    ctx.begin("fifo_handover");
    let mut sessions = Vec::new();
    let mut waiters = Vec::new();
    for i in 1..=3 {
        let (lease, keeper) = ctx.session(i).await?;
        waiters.push(spawn_lock(ctx.c(i), &name, lease));
        ctx.wait_queued(lease).await?;
        sessions.push((lease, keeper));
    }
    ensure!(
        ctx,
        waiters.iter().all(|w| !w.is_finished()),
        "a waiter finished while the lock was held"
    );
    let mut waiters = waiters.into_iter();
    let (Some(w2), Some(w3), Some(w4)) = (waiters.next(), waiters.next(), waiters.next()) else {
        return Err(ctx.fail("lost a waiter"));
    };
    ctx.ok("unlock 1", ctx.c(0).unlock(&g1).await)?;
    let g2 = ctx.ok("waiter 2", w2.join(&ctx, "waiter 2").await?)?;
    ensure!(
        ctx,
        g2.lease == sessions[0].0,
        "the first waiter in line was not served first: {g2:?}"
    );
    ensure!(
        ctx,
        holder(&ctx, 2, &name).await? == Some(g2.clone()),
        "holder after the first handover"
    );
    tokens.push(g2.token);
    ctx.ok("unlock 2", ctx.c(1).unlock(&g2).await)?;
    let g3 = ctx.ok("waiter 3", w3.join(&ctx, "waiter 3").await?)?;
    ensure!(
        ctx,
        g3.lease == sessions[1].0,
        "the second waiter was not served second: {g3:?}"
    );
    tokens.push(g3.token);
    ctx.pass();

    ctx.begin("lease_end_hands_over");
    // The holder's session ends involuntarily: its keeper stops and its lease is revoked.
    let (l3, k3) = sessions.remove(1);
    drop(k3);
    ctx.ok("revoke holder lease", ctx.c(0).lease_revoke(l3).await)?;
    let g4 = ctx.ok("waiter 4", w4.join(&ctx, "waiter 4").await?)?;
    ensure!(
        ctx,
        g4.lease == sessions[1].0,
        "the third waiter was not served third: {g4:?}"
    );
    tokens.push(g4.token);
    ctx.pass();

    ctx.begin("waiter_whose_lease_ends");
    let (l5, k5) = ctx.session(0).await?;
    let w5 = spawn_lock(ctx.c(0), &name, l5);
    ctx.wait_queued(l5).await?;
    drop(k5);
    ctx.ok("revoke waiter lease", ctx.c(1).lease_revoke(l5).await)?;
    let r5 = w5.join(&ctx, "waiter 5").await?;
    ctx.err("lock whose lease ended while waiting", r5, lease_gone)?;
    ensure!(
        ctx,
        holder(&ctx, 0, &name).await? == Some(g4.clone()),
        "the holder changed when a waiter left"
    );
    ctx.pass();

    ctx.begin("fencing_in_txn");
    let protected = ctx.key("protected");
    let guarded = |g: &LockGrant, v: &[u8]| Txn {
        compares: vec![Compare::create_revision_eq(&g.key, g.create_revision)],
        success: vec![TxnOp::Put {
            key: protected.clone(),
            value: v.to_vec(),
            lease: None,
        }],
        failure: vec![],
    };
    let t = ctx.ok(
        "guarded write by the holder",
        ctx.c(0).txn(guarded(&g4, b"by 4")).await,
    )?;
    ensure!(ctx, t.succeeded, "the holder's guarded write failed");
    let t = ctx.ok(
        "guarded write by a past holder",
        ctx.c(1).txn(guarded(&g2, b"by 2")).await,
    )?;
    ensure!(ctx, !t.succeeded, "a past holder's guarded write succeeded");
    let rev = ctx.ok("unlock 4", ctx.c(0).unlock(&g4).await)?;
    ensure!(
        ctx,
        rev > t.revision,
        "unlock at {rev} before {}",
        t.revision
    );
    let again = ctx.ok("unlock 4 again", ctx.c(1).unlock(&g4).await);
    ensure!(ctx, again.is_ok(), "a second unlock failed: {again:?}");
    let t = ctx.ok(
        "guarded write after unlock",
        ctx.c(0).txn(guarded(&g4, b"late")).await,
    )?;
    ensure!(ctx, !t.succeeded, "a guarded write after unlock succeeded");
    ensure!(
        ctx,
        holder(&ctx, 0, &name).await?.is_none(),
        "the lock is held after every holder left"
    );
    ctx.pass();

    ctx.begin("expiry_hands_over");
    let ttl = ctx.caps.lease_ttl_min.max(Duration::from_millis(100));
    let short = ctx.ok("grant", ctx.c(0).lease_grant(ttl).await)?;
    let g6 = ctx.ok(
        "lock with an unrenewed lease",
        ctx.c(0).lock(&name, short.id).await,
    )?;
    tokens.push(g6.token);
    let (l7, _k7) = ctx.session(1).await?;
    let w7 = spawn_lock(ctx.c(1), &name, l7);
    ctx.wait_queued(l7).await?;
    let limit = ttl + ctx.caps.lease_expiry_slack + ctx.wait_max;
    let g7 = ctx.ok(
        "waiter behind an expiring holder",
        w7.join_within(&ctx, "waiter 7", limit).await?,
    )?;
    ensure!(ctx, g7.lease == l7, "grant {g7:?}");
    tokens.push(g7.token);
    ctx.err(
        "keep_alive of the expired holder",
        ctx.c(0).lease_keep_alive(short.id).await,
        lease_gone,
    )?;
    ctx.ok("unlock 7", ctx.c(1).unlock(&g7).await)?;
    ctx.pass();

    ctx.begin("tokens_strictly_increase");
    ensure!(
        ctx,
        tokens.windows(2).all(|w| w[0] < w[1]),
        "fencing tokens of successive grants: {tokens:?}"
    );
    ctx.pass();

    ctx.begin("independent_names");
    let (la, _ka) = ctx.session(0).await?;
    let (lb, _kb) = ctx.session(1).await?;
    let a = ctx.ok("lock a", ctx.c(0).lock(&ctx.key("a"), la).await)?;
    let b = ctx.ok("lock b", ctx.c(1).lock(&ctx.key("b"), lb).await)?;
    ensure!(
        ctx,
        a.token != b.token,
        "two grants share token {}",
        a.token
    );
    let nested = ctx.ok("lock a/x", ctx.c(1).lock(&ctx.key("a/x"), lb).await)?;
    ensure!(ctx, nested.lease == lb, "lock a/x: {nested:?}");
    ctx.ok("unlock", ctx.c(0).unlock(&a).await)?;
    ctx.ok("unlock", ctx.c(1).unlock(&b).await)?;
    ctx.ok("unlock", ctx.c(1).unlock(&nested).await)?;
    ctx.pass();

    ctx.begin("bad_requests");
    ctx.err(
        "lock with an unknown lease",
        ctx.c(0)
            .lock(&ctx.key("x"), LeaseId(0x7fff_ffff_ffff_fff5))
            .await,
        lease_gone,
    )?;
    ctx.err(
        "lock with an empty name",
        ctx.c(0).lock("", la).await,
        |e| matches!(e, CoordError::InvalidArgument { .. }),
    )?;
    ctx.pass();

    ctx.finish()
}
