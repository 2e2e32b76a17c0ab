//! Conformance: leases (grant limits, time to live, keep-alive, expiry deleting attached keys,
//! revoke, moving a key off a lease).

use std::sync::Arc;
use std::time::Duration;

use super::{Ctx, Outcome, SuiteConfig, ensure};
use crate::{Consistency, Coord, CoordError, EventKind};

fn lease_gone(e: &CoordError) -> bool {
    matches!(
        e,
        CoordError::LeaseNotFound { .. } | CoordError::LeaseExpired { .. }
    )
}

/// Grant limits, time to live, keep-alive past the TTL, expiry deleting attached keys (with
/// watch events), revoke, and keys moved off a lease.
pub async fn leases(clients: &[Arc<dyn Coord>], config: &SuiteConfig) -> Outcome {
    let mut ctx = Ctx::new(clients, config, "leases")?;
    let c0 = ctx.c(0);
    let c1 = ctx.c(1);
    let ttl = ctx.caps.lease_ttl_min.max(Duration::from_millis(100));
    let expiry_limit = ttl + ctx.caps.lease_expiry_slack + ctx.wait_max;
    ctx.begin("setup");
    ctx.note(format!(
        "leases use the backend's minimum TTL {ttl:?}; expiry is awaited for up to ttl + slack {:?} + {:?}",
        ctx.caps.lease_expiry_slack, ctx.wait_max
    ));

    ctx.begin("grant_limits");
    if ctx.caps.lease_ttl_min > Duration::from_millis(1) {
        ctx.err(
            "TTL below the minimum",
            c0.lease_grant(ctx.caps.lease_ttl_min - Duration::from_millis(1))
                .await,
            |e| matches!(e, CoordError::InvalidArgument { .. }),
        )?;
    }
    ctx.err(
        "TTL above the maximum",
        c0.lease_grant(ctx.caps.lease_ttl_max + Duration::from_secs(1))
            .await,
        |e| matches!(e, CoordError::InvalidArgument { .. }),
    )?;
    ctx.pass();

    ctx.begin("grant_and_time_to_live");
    let g = ctx.ok("grant", c0.lease_grant(ttl).await)?;
    ensure!(
        ctx,
        g.ttl == ttl,
        "granted {:?} for a request of {ttl:?}",
        g.ttl
    );
    let (k1, k2) = (ctx.key("ttl/1"), ctx.key("ttl/2"));
    let p = ctx.ok(
        "put with lease",
        c1.put(&k1, b"1".to_vec(), Some(g.id)).await,
    )?;
    ctx.ok(
        "put with lease",
        c0.put(&k2, b"2".to_vec(), Some(g.id)).await,
    )?;
    let kv = ctx
        .ok("get", c0.get(&k1, Consistency::Linearizable).await)?
        .kv
        .ok_or_else(|| ctx.fail("leased key missing"))?;
    ensure!(
        ctx,
        kv.lease == Some(g.id) && kv.mod_revision == p.revision,
        "leased key {kv:?}"
    );
    let info = ctx.ok("time_to_live", c1.lease_time_to_live(g.id).await)?;
    ensure!(
        ctx,
        info.id == g.id && info.granted_ttl == ttl,
        "lease info {info:?}"
    );
    ensure!(
        ctx,
        info.remaining <= ttl + ctx.caps.lease_expiry_slack,
        "remaining {:?} exceeds ttl {ttl:?} + slack",
        info.remaining
    );
    let mut keys = info.keys.clone();
    keys.sort();
    ensure!(ctx, keys == [k1.clone(), k2.clone()], "lease keys {keys:?}");
    ctx.ok("revoke", c0.lease_revoke(g.id).await)?;
    ctx.pass();

    ctx.begin("keep_alive_outlives_ttl");
    let g = ctx.ok("grant", c0.lease_grant(ttl).await)?;
    let kept = ctx.key("kept");
    ctx.ok("put", c0.put(&kept, b"k".to_vec(), Some(g.id)).await)?;
    for round in 0..9 {
        tokio::time::sleep(ttl / 3).await;
        let k = ctx.ok("keep_alive", ctx.c(round).lease_keep_alive(g.id).await)?;
        ensure!(
            ctx,
            k.id == g.id && k.ttl == ttl,
            "keep-alive answered {k:?}"
        );
        // Right after an acknowledged renew the lease must still hold its keys.
        let got = ctx.ok(
            "get",
            ctx.c(round + 1).get(&kept, Consistency::Linearizable).await,
        )?;
        ensure!(
            ctx,
            got.kv.is_some(),
            "round {round}: a kept-alive lease lost its key"
        );
    }
    ctx.ok("revoke", c0.lease_revoke(g.id).await)?;
    ctx.pass();

    ctx.begin("expiry_deletes_attached_keys");
    let prefix = ctx.key("exp/");
    let mut w = ctx.ok("watch", c1.watch(&prefix, None).await)?;
    let g = ctx.ok("grant", c0.lease_grant(ttl).await)?;
    let (a, b, free) = (
        format!("{prefix}a"),
        format!("{prefix}b"),
        format!("{prefix}free"),
    );
    ctx.ok("put a", c0.put(&a, b"a".to_vec(), Some(g.id)).await)?;
    ctx.ok("put b", c0.put(&b, b"b".to_vec(), Some(g.id)).await)?;
    ctx.ok("put free", c0.put(&free, b"f".to_vec(), None).await)?;
    let c = Arc::clone(&c1);
    let key = a.clone();
    ctx.eventually("the leased key disappears", expiry_limit, ttl / 10, || {
        let c = Arc::clone(&c);
        let key = key.clone();
        let ctx = &ctx;
        async move {
            let g = ctx.ok("get", c.get(&key, Consistency::Linearizable).await)?;
            Ok(g.kv.is_none().then_some(()))
        }
    })
    .await?;
    let gb = ctx.ok("get b", c0.get(&b, Consistency::Linearizable).await)?;
    ensure!(
        ctx,
        gb.kv.is_none(),
        "the second key of the expired lease survived: {:?}",
        gb.kv
    );
    let gf = ctx.ok("get free", c0.get(&free, Consistency::Linearizable).await)?;
    ensure!(ctx, gf.kv.is_some(), "a key without a lease was deleted");
    ctx.err(
        "keep_alive after expiry",
        c0.lease_keep_alive(g.id).await,
        lease_gone,
    )?;
    ctx.err(
        "time_to_live after expiry",
        c1.lease_time_to_live(g.id).await,
        lease_gone,
    )?;
    ctx.err(
        "put with the expired lease",
        c0.put(&format!("{prefix}late"), b"x".to_vec(), Some(g.id))
            .await,
        lease_gone,
    )?;
    let mut deletes = Vec::new();
    while deletes.len() < 2 {
        let ev = ctx.next_event("expiry events", &mut w).await?;
        if ev.kind == EventKind::Delete {
            deletes.push(ev);
        }
    }
    ensure!(
        ctx,
        deletes[0].revision() == deletes[1].revision(),
        "the keys of one lease were deleted at different revisions: {deletes:?}"
    );
    let mut keys: Vec<&str> = deletes.iter().map(|e| e.kv.key.as_str()).collect();
    keys.sort_unstable();
    ensure!(
        ctx,
        keys == [a.as_str(), b.as_str()],
        "expiry deleted {keys:?}"
    );
    ctx.pass();

    ctx.begin("revoke_deletes_at_once");
    let g = ctx.ok("grant", c0.lease_grant(ttl).await)?;
    let (r1, r2) = (ctx.key("rev/1"), ctx.key("rev/2"));
    ctx.ok("put", c0.put(&r1, b"1".to_vec(), Some(g.id)).await)?;
    let last = ctx.ok("put", c0.put(&r2, b"2".to_vec(), Some(g.id)).await)?;
    let rev = ctx.ok("revoke", c1.lease_revoke(g.id).await)?;
    ensure!(
        ctx,
        rev > last.revision,
        "revoke at {rev}, before the put at {}",
        last.revision
    );
    for k in [&r1, &r2] {
        let got = ctx.ok("get", c0.get(k, Consistency::Linearizable).await)?;
        ensure!(ctx, got.kv.is_none(), "{k} survived the revoke");
    }
    ctx.err("second revoke", c0.lease_revoke(g.id).await, lease_gone)?;
    ctx.err(
        "keep_alive after revoke",
        c1.lease_keep_alive(g.id).await,
        lease_gone,
    )?;
    ctx.pass();

    ctx.begin("key_moved_off_a_lease");
    let ga = ctx.ok("grant", c0.lease_grant(ttl).await)?;
    let gb = ctx.ok("grant", c0.lease_grant(ttl).await)?;
    let (m1, m2) = (ctx.key("move/1"), ctx.key("move/2"));
    ctx.ok("put", c0.put(&m1, b"1".to_vec(), Some(ga.id)).await)?;
    ctx.ok("put", c0.put(&m2, b"2".to_vec(), Some(ga.id)).await)?;
    ctx.ok(
        "re-put without lease",
        c0.put(&m1, b"1b".to_vec(), None).await,
    )?;
    ctx.ok(
        "re-put on lease b",
        c0.put(&m2, b"2b".to_vec(), Some(gb.id)).await,
    )?;
    let info = ctx.ok("time_to_live a", c0.lease_time_to_live(ga.id).await)?;
    ensure!(
        ctx,
        info.keys.is_empty(),
        "lease a still lists {:?}",
        info.keys
    );
    ctx.ok("revoke a", c0.lease_revoke(ga.id).await)?;
    for k in [&m1, &m2] {
        let got = ctx.ok("get", c1.get(k, Consistency::Linearizable).await)?;
        ensure!(
            ctx,
            got.kv.is_some(),
            "{k} was deleted with a lease it had left"
        );
    }
    ctx.ok("revoke b", c0.lease_revoke(gb.id).await)?;
    let got = ctx.ok("get", c1.get(&m2, Consistency::Linearizable).await)?;
    ensure!(
        ctx,
        got.kv.is_none(),
        "{m2} survived the revoke of its lease"
    );
    ctx.pass();

    ctx.finish()
}
