//! What the API must watch between requests: when each role's decision loop last stepped (for
//! `/liveness`), and coordination leader changes and committed entries (for `/metrics`). One
//! task samples them every [`SAMPLE_INTERVAL`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quorate_startup::NodeContext;
use quorate_types::RoleName;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;

/// How often the tracker samples.
pub(crate) const SAMPLE_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Default)]
struct State {
    /// Per role: the last step count seen, and when it was first seen.
    steps: BTreeMap<RoleName, (u64, Instant)>,
    leader: Option<String>,
    commit_index: Option<u64>,
}

/// The sampled state.
pub(crate) struct Tracker {
    state: Mutex<State>,
}

impl Tracker {
    /// Starts sampling `ctx` on `tasks` until `cancel`.
    pub(crate) fn start(
        ctx: NodeContext,
        metrics: Arc<Metrics>,
        tasks: &TaskTracker,
        cancel: &CancellationToken,
    ) -> Arc<Tracker> {
        let t = Arc::new(Tracker {
            state: Mutex::new(State::default()),
        });
        let (me, cancel) = (Arc::clone(&t), cancel.clone());
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => break,
                    _ = tick.tick() => me.sample(&ctx, &metrics).await,
                }
            }
        });
        t
    }

    async fn sample(&self, ctx: &NodeContext, metrics: &Metrics) {
        let now = Instant::now();
        let coord = ctx.coord.status().await.ok();
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for role in ctx.failover.roles() {
            let Ok(rx) = ctx.failover.status(role) else {
                continue;
            };
            let steps = rx.borrow().steps;
            let entry = s.steps.entry(role.clone()).or_insert((steps, now));
            if entry.0 != steps {
                *entry = (steps, now);
            }
        }
        if let Some(c) = coord {
            let leader = c.leader.as_ref().map(ToString::to_string);
            if leader.is_some() && leader != s.leader {
                metrics.leader_changes.inc();
            }
            if leader.is_some() {
                s.leader = leader;
            }
            if let Some(prev) = s.commit_index
                && c.commit_index > prev
            {
                metrics.committed.inc_by(c.commit_index - prev);
            }
            s.commit_index = Some(c.commit_index.max(s.commit_index.unwrap_or(0)));
        }
    }

    /// How long ago `role`'s decision loop last stepped, as sampled (`None` before the first
    /// sample).
    pub(crate) fn step_age(&self, role: &RoleName) -> Option<Duration> {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.steps.get(role).map(|(_, at)| at.elapsed())
    }
}
