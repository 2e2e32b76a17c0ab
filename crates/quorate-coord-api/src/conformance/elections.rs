//! Conformance: elections (campaign, leader, proclaim, resign, observe, handover).

use std::sync::Arc;

use futures::StreamExt;

use super::{Ctx, Failure, Outcome, SuiteConfig, Task, ensure};
use crate::{Coord, CoordError, ElectionLeader, LeaderKey, LeaseId, ObserveStream, Revision};

fn spawn_campaign(
    c: Arc<dyn Coord>,
    election: &str,
    value: &[u8],
    lease: LeaseId,
) -> Task<Result<LeaderKey, CoordError>> {
    let election = election.to_owned();
    let value = value.to_vec();
    Task::spawn(async move { c.campaign(&election, value, lease).await })
}

/// Reads `stream` until an item satisfies `want` (intermediate states may be coalesced by the
/// backend, so earlier items are skipped).
async fn observe_until(
    ctx: &Ctx,
    what: &str,
    stream: &mut ObserveStream,
    want: impl Fn(&Option<ElectionLeader>) -> bool,
) -> Result<Option<ElectionLeader>, Failure> {
    loop {
        match tokio::time::timeout(ctx.wait_max, stream.next()).await {
            Ok(Some(Ok(item))) if want(&item) => return Ok(item),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => return Err(ctx.fail(format!("{what}: observe failed: {e:?}"))),
            Ok(None) => return Err(ctx.fail(format!("{what}: observe ended"))),
            Err(_) => {
                return Err(ctx.fail(format!("{what}: not observed within {:?}", ctx.wait_max)));
            }
        }
    }
}

fn leads(lease: LeaseId, value: &'static [u8]) -> impl Fn(&Option<ElectionLeader>) -> bool {
    move |l| {
        l.as_ref()
            .is_some_and(|l| l.key.lease == lease && l.value == value)
    }
}

/// Campaign (blocking until elected, idempotent per lease), leader, proclaim (only by the
/// leader), resign and FIFO handover, leadership ending with the lease, observe.
pub async fn elections(clients: &[Arc<dyn Coord>], config: &SuiteConfig) -> Outcome {
    let mut ctx = Ctx::new(clients, config, "elections")?;
    let e = ctx.key("primary");

    ctx.begin("campaign_and_leader");
    let none = ctx.ok("leader of an empty election", ctx.c(0).leader(&e).await)?;
    ensure!(ctx, none.is_none(), "an empty election has leader {none:?}");
    let mut obs = ctx.ok("observe", ctx.c(1).observe(&e).await)?;
    observe_until(&ctx, "no leader at first", &mut obs, Option::is_none).await?;
    let (l1, _k1) = ctx.session(0).await?;
    let ld1 = ctx.ok("campaign", ctx.c(0).campaign(&e, b"v1".to_vec(), l1).await)?;
    ensure!(
        ctx,
        ld1.election == e && ld1.lease == l1,
        "leader key {ld1:?}"
    );
    let now = ctx.ok("leader", ctx.c(1).leader(&e).await)?;
    ensure!(
        ctx,
        now.as_ref()
            .is_some_and(|l| l.key == ld1 && l.value == b"v1"),
        "leader {now:?}, expected {ld1:?} with v1"
    );
    observe_until(&ctx, "first leader", &mut obs, leads(l1, b"v1")).await?;
    ctx.pass();

    ctx.begin("campaign_again_resumes");
    let again = ctx.ok(
        "campaign again",
        ctx.c(1).campaign(&e, b"v1b".to_vec(), l1).await,
    )?;
    ensure!(
        ctx,
        again == ld1,
        "campaigning again with the same lease gave {again:?}, expected {ld1:?}"
    );
    observe_until(&ctx, "new value", &mut obs, leads(l1, b"v1b")).await?;
    ctx.pass();

    ctx.begin("proclaim");
    let (l2, _k2) = ctx.session(1).await?;
    let w2 = spawn_campaign(ctx.c(1), &e, b"v2", l2);
    ctx.wait_queued(l2).await?;
    ensure!(
        ctx,
        !w2.is_finished(),
        "a second candidate was elected while the first leads"
    );
    let rev = ctx.ok("proclaim", ctx.c(0).proclaim(&ld1, b"p1".to_vec()).await)?;
    let now = ctx.ok("leader", ctx.c(1).leader(&e).await)?;
    ensure!(
        ctx,
        now.as_ref()
            .is_some_and(|l| l.key == ld1 && l.value == b"p1" && l.mod_revision == rev),
        "after proclaim at {rev}: {now:?}"
    );
    observe_until(&ctx, "proclaimed value", &mut obs, leads(l1, b"p1")).await?;
    let mut forged = ld1.clone();
    forged.create_revision = Revision(ld1.create_revision.0 + 1);
    ctx.err(
        "proclaim with a wrong key revision",
        ctx.c(0).proclaim(&forged, b"x".to_vec()).await,
        |e| matches!(e, CoordError::NotHolder { .. }),
    )?;
    ctx.pass();

    ctx.begin("resign_hands_over");
    ctx.ok("resign", ctx.c(0).resign(&ld1).await)?;
    let ld2 = ctx.ok("second candidate", w2.join(&ctx, "campaign 2").await?)?;
    ensure!(
        ctx,
        ld2.lease == l2 && ld2.token > ld1.token,
        "second leader {ld2:?} after {ld1:?}"
    );
    let now = ctx.ok("leader", ctx.c(0).leader(&e).await)?;
    ensure!(
        ctx,
        now.as_ref()
            .is_some_and(|l| l.key == ld2 && l.value == b"v2"),
        "leader {now:?}"
    );
    observe_until(&ctx, "handover", &mut obs, leads(l2, b"v2")).await?;
    ctx.err(
        "proclaim after resign",
        ctx.c(0).proclaim(&ld1, b"late".to_vec()).await,
        |e| matches!(e, CoordError::NotHolder { .. }),
    )?;
    let r = ctx.ok("resign twice", ctx.c(1).resign(&ld1).await);
    ensure!(ctx, r.is_ok(), "a second resign failed: {r:?}");
    ctx.pass();

    ctx.begin("lease_end_ends_leadership");
    ctx.ok("revoke the leader's lease", ctx.c(0).lease_revoke(l2).await)?;
    let now = ctx.ok("leader", ctx.c(1).leader(&e).await)?;
    ensure!(
        ctx,
        now.is_none(),
        "leader {now:?} after its lease was revoked"
    );
    observe_until(&ctx, "no leader", &mut obs, Option::is_none).await?;
    ctx.err(
        "proclaim with an ended lease",
        ctx.c(1).proclaim(&ld2, b"x".to_vec()).await,
        |e| matches!(e, CoordError::NotHolder { .. }),
    )?;
    ctx.pass();

    ctx.begin("bad_requests");
    ctx.err(
        "campaign with an unknown lease",
        ctx.c(0)
            .campaign(&e, b"x".to_vec(), LeaseId(0x7fff_ffff_ffff_fff7))
            .await,
        |e| {
            matches!(
                e,
                CoordError::LeaseNotFound { .. } | CoordError::LeaseExpired { .. }
            )
        },
    )?;
    let big = vec![0; ctx.caps.value_bytes_max + 1];
    ctx.err(
        "campaign with an oversized value",
        ctx.c(0).campaign(&e, big, l1).await,
        |e| matches!(e, CoordError::ValueTooLarge { .. }),
    )?;
    ctx.pass();

    ctx.finish()
}
