//! Conformance: cluster status and membership administration.

use std::sync::Arc;

use quorate_types::NodeId;

use super::{Ctx, Outcome, SuiteConfig, ensure};
use crate::{Coord, CoordError};

/// Status fields are coherent on every client; admin calls on unknown nodes fail cleanly
/// (or, without admin support, with `Unsupported`).
pub async fn cluster(clients: &[Arc<dyn Coord>], config: &SuiteConfig) -> Outcome {
    let mut ctx = Ctx::new(clients, config, "cluster")?;

    ctx.begin("status");
    let w = ctx.ok(
        "put",
        ctx.c(0).put(&ctx.key("s"), b"s".to_vec(), None).await,
    )?;
    for i in 0..ctx.clients() {
        // A follower that has not heard from the leader yet (it may lag behind the majority
        // that committed the put) legitimately reports no leader for a moment: wait for it,
        // within a bound, before checking.
        let mut s = ctx.ok("status", ctx.c(i).status().await)?;
        for _ in 0..200 {
            if s.leader.is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            s = ctx.ok("status", ctx.c(i).status().await)?;
        }
        ensure!(
            ctx,
            s.leader.is_some(),
            "client {i}: no leader within 10 s: {s:?}"
        );
        ensure!(ctx, !s.voters.is_empty(), "client {i}: no voters in {s:?}");
        ensure!(
            ctx,
            s.voters.contains(&s.node) || s.learners.contains(&s.node),
            "client {i}: node {} is neither voter nor learner",
            s.node
        );
        ensure!(
            ctx,
            s.leader.as_ref().is_some_and(|l| s.voters.contains(l)),
            "client {i}: leader {:?} is not a voter",
            s.leader
        );
        ensure!(
            ctx,
            s.applied_index <= s.commit_index,
            "client {i}: applied beyond committed: {s:?}"
        );
        if s.is_leader() {
            ensure!(
                ctx,
                s.quorum_contact_age.is_some(),
                "the leader reports no quorum contact age"
            );
            ensure!(
                ctx,
                s.commit_index >= w.revision.0,
                "the leader's commit index {} is behind a write at {}",
                s.commit_index,
                w.revision
            );
        }
    }
    ctx.pass();

    ctx.begin("admin_unknown_node");
    let ghost =
        NodeId::new("conformance-ghost-node").map_err(|e| ctx.fail(format!("node id: {e}")))?;
    if ctx.caps.admin {
        ctx.err(
            "promote an unknown node",
            ctx.c(0).promote_voter(ghost.clone()).await,
            |e| matches!(e, CoordError::UnknownNode { .. }),
        )?;
        ctx.err(
            "remove an unknown node",
            ctx.c(0).remove_node(ghost).await,
            |e| matches!(e, CoordError::UnknownNode { .. }),
        )?;
    } else {
        ctx.note("the backend has no membership administration; admin calls must say Unsupported");
        for r in [
            ctx.c(0)
                .add_learner(ghost.clone(), "127.0.0.1:1".into())
                .await,
            ctx.c(0).promote_voter(ghost.clone()).await,
            ctx.c(0).remove_node(ghost).await,
        ] {
            ctx.err("admin call", r, |e| {
                matches!(e, CoordError::Unsupported { .. })
            })?;
        }
    }
    ctx.pass();

    ctx.finish()
}
