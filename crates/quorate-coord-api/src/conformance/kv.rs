//! Conformance: key-value operations, revisions, limits.

use std::sync::Arc;
use std::time::Duration;

use super::{Ctx, Outcome, SuiteConfig, ensure};
use crate::{Consistency, Coord, CoordError, LeaseId, RangeRequest, Revision};

/// Put, get (both consistencies), range by prefix with paging, delete, revisions and versions,
/// size limits, leases that do not exist.
pub async fn kv(clients: &[Arc<dyn Coord>], config: &SuiteConfig) -> Outcome {
    let mut ctx = Ctx::new(clients, config, "kv")?;
    let c0 = ctx.c(0);
    let c1 = ctx.c(1);

    ctx.begin("put_get_revisions");
    let k = ctx.key("a");
    let r1 = ctx.ok("put a=1", c0.put(&k, b"1".to_vec(), None).await)?;
    ensure!(
        ctx,
        r1.prev.is_none(),
        "first put returned prev {:?}",
        r1.prev
    );
    ensure!(
        ctx,
        r1.revision > Revision(0),
        "put returned {}",
        r1.revision
    );
    let g = ctx.ok("get a", c1.get(&k, Consistency::Linearizable).await)?;
    let kv =
        g.kv.ok_or_else(|| ctx.fail("linearizable get after put found nothing"))?;
    ensure!(ctx, kv.value == b"1", "get returned {:?}", kv.value);
    ensure!(
        ctx,
        kv.create_revision == r1.revision && kv.mod_revision == r1.revision,
        "create/mod revision {}/{} after put at {}",
        kv.create_revision,
        kv.mod_revision,
        r1.revision
    );
    ensure!(
        ctx,
        kv.version == 1 && kv.lease.is_none(),
        "kv after first put: {kv:?}"
    );
    ensure!(
        ctx,
        g.revision >= r1.revision,
        "get saw {} before the put's {}",
        g.revision,
        r1.revision
    );
    let r2 = ctx.ok("put a=2", c1.put(&k, b"2".to_vec(), None).await)?;
    ensure!(
        ctx,
        r2.revision > r1.revision,
        "second put at {} after {}",
        r2.revision,
        r1.revision
    );
    ensure!(
        ctx,
        r2.prev.as_ref() == Some(&kv),
        "second put prev {:?}, expected {kv:?}",
        r2.prev
    );
    let kv2 = ctx
        .ok("get a", c0.get(&k, Consistency::Linearizable).await)?
        .kv
        .ok_or_else(|| ctx.fail("key vanished"))?;
    ensure!(
        ctx,
        kv2.value == b"2"
            && kv2.version == 2
            && kv2.create_revision == r1.revision
            && kv2.mod_revision == r2.revision,
        "after second put: {kv2:?}"
    );
    ctx.pass();

    ctx.begin("local_read_catches_up");
    let last = ctx.clients().saturating_sub(1);
    let cl = ctx.c(last);
    let key = k.clone();
    ctx.eventually(
        "local get sees the write",
        ctx.wait_max,
        Duration::from_millis(20),
        || {
            let cl = Arc::clone(&cl);
            let key = key.clone();
            let ctx = &ctx;
            async move {
                let g = ctx.ok("local get", cl.get(&key, Consistency::Local).await)?;
                Ok(g.kv.filter(|kv| kv.mod_revision >= r2.revision).map(|_| ()))
            }
        },
    )
    .await?;
    ctx.pass();

    ctx.begin("missing_key");
    let g = ctx.ok(
        "get missing",
        c0.get(&ctx.key("missing"), Consistency::Linearizable).await,
    )?;
    ensure!(ctx, g.kv.is_none(), "missing key returned {:?}", g.kv);
    ensure!(
        ctx,
        g.revision >= r2.revision,
        "read revision {} went back before {}",
        g.revision,
        r2.revision
    );
    ctx.pass();

    ctx.begin("range_prefix_paging");
    for name in ["r/3", "r/1", "r/2", "rx", "q/1"] {
        ctx.ok(
            "put",
            c0.put(&ctx.key(name), name.as_bytes().to_vec(), None).await,
        )?;
    }
    let all = ctx.ok(
        "range r/",
        c1.range(RangeRequest::prefix(ctx.key("r/"))).await,
    )?;
    let keys: Vec<&str> = all.kvs.iter().map(|kv| kv.key.as_str()).collect();
    let want = [ctx.key("r/1"), ctx.key("r/2"), ctx.key("r/3")];
    ensure!(
        ctx,
        keys == want.iter().map(String::as_str).collect::<Vec<_>>(),
        "range r/ gave {keys:?}"
    );
    ensure!(ctx, !all.more, "range of 3 keys said more");
    let mut page = RangeRequest::prefix(ctx.key("r/"));
    page.limit = Some(2);
    let p1 = ctx.ok("range limit 2", c1.range(page.clone()).await)?;
    ensure!(
        ctx,
        p1.kvs.len() == 2 && p1.more,
        "first page: {} keys, more={}",
        p1.kvs.len(),
        p1.more
    );
    page.start_after = p1.kvs.last().map(|kv| kv.key.clone());
    let p2 = ctx.ok("range page 2", c1.range(page).await)?;
    ensure!(
        ctx,
        p2.kvs.len() == 1 && p2.kvs[0].key == want[2] && !p2.more,
        "second page: {:?}",
        p2.kvs.iter().map(|kv| &kv.key).collect::<Vec<_>>()
    );
    let mut local = RangeRequest::prefix(ctx.key("r/"));
    local.consistency = Consistency::Local;
    ctx.ok("local range", c0.range(local).await)?;
    ctx.pass();

    ctx.begin("delete_and_recreate");
    let d = ctx.ok("delete a", c0.delete(&k).await)?;
    ensure!(
        ctx,
        d.prev.as_ref().is_some_and(|p| p.value == b"2"),
        "delete prev {:?}",
        d.prev
    );
    ensure!(
        ctx,
        d.revision > r2.revision,
        "delete at {} after {}",
        d.revision,
        r2.revision
    );
    let g = ctx.ok("get deleted", c1.get(&k, Consistency::Linearizable).await)?;
    ensure!(ctx, g.kv.is_none(), "deleted key still there: {:?}", g.kv);
    let d2 = ctx.ok("delete again", c1.delete(&k).await)?;
    ensure!(ctx, d2.prev.is_none(), "second delete found {:?}", d2.prev);
    let r3 = ctx.ok("recreate", c0.put(&k, b"3".to_vec(), None).await)?;
    ensure!(ctx, r3.prev.is_none(), "recreate prev {:?}", r3.prev);
    let kv3 = ctx
        .ok("get", c0.get(&k, Consistency::Linearizable).await)?
        .kv
        .ok_or_else(|| ctx.fail("recreated key missing"))?;
    ensure!(
        ctx,
        kv3.version == 1 && kv3.create_revision == r3.revision && r3.revision > d.revision,
        "recreated key {kv3:?} (delete was at {})",
        d.revision
    );
    ctx.pass();

    ctx.begin("revisions_increase_across_clients");
    let mut last = r3.revision;
    for i in 0..6 {
        let r = ctx.ok(
            "put",
            ctx.c(i).put(&ctx.key("seq"), vec![i as u8], None).await,
        )?;
        ensure!(
            ctx,
            r.revision > last,
            "write {i} got {} after {last}",
            r.revision
        );
        last = r.revision;
    }
    ctx.pass();

    ctx.begin("size_limits");
    let max_v = ctx.caps.value_bytes_max;
    let e = ctx.err(
        "oversized value",
        c0.put(&ctx.key("big"), vec![0; max_v + 1], None).await,
        |e| matches!(e, CoordError::ValueTooLarge { .. }),
    )?;
    ensure!(
        ctx,
        e == CoordError::ValueTooLarge {
            len: max_v + 1,
            max: max_v
        },
        "wrong sizes in {e:?}"
    );
    let long_key = format!("{}{}", ctx.key("k"), "x".repeat(ctx.caps.key_bytes_max));
    ctx.err(
        "oversized key",
        c0.put(&long_key, b"v".to_vec(), None).await,
        |e| matches!(e, CoordError::KeyTooLarge { .. }),
    )?;
    ctx.err("empty key", c0.put("", b"v".to_vec(), None).await, |e| {
        matches!(e, CoordError::InvalidArgument { .. })
    })?;
    let g = ctx.ok(
        "get big",
        c0.get(&ctx.key("big"), Consistency::Linearizable).await,
    )?;
    ensure!(ctx, g.kv.is_none(), "a rejected put left {:?}", g.kv);
    let fits = max_v.min(64 * 1024);
    ctx.ok(
        "put a value within the limit",
        c1.put(&ctx.key("big"), vec![7; fits], None).await,
    )?;
    ctx.pass();

    ctx.begin("put_with_unknown_lease");
    ctx.err(
        "put with a lease never granted",
        c0.put(
            &ctx.key("l"),
            b"v".to_vec(),
            Some(LeaseId(0x7fff_ffff_ffff_fff1)),
        )
        .await,
        |e| {
            matches!(
                e,
                CoordError::LeaseNotFound { .. } | CoordError::LeaseExpired { .. }
            )
        },
    )?;
    ctx.pass();

    ctx.finish()
}
