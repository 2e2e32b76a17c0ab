//! A single-node, in-memory [`Proposer`]: applies commands directly under a mutex and expires
//! leases on a tokio timer. Proves the coordination semantics without consensus (the
//! conformance suite runs on it under paused time) and serves tests of components above.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use quorate_coord_api::{ClusterStatus, Consistency, CoordError, LeaseId, WatchEvent};
use quorate_types::NodeId;
use quorate_types::lease::Drift;
use tokio::sync::{Notify, broadcast};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Proposer, ReadFn};
use crate::lease_clock::LeaseClock;
use crate::machine::{Command, Machine, MachineLimits, Outcome};

/// Configuration of a [`LocalProposer`].
#[derive(Clone, Debug)]
pub struct LocalConfig {
    /// The id this node reports in its status.
    pub node: NodeId,
    /// Limits of the state machine.
    pub limits: MachineLimits,
    /// Clock-rate drift bound for lease expiry.
    pub drift: Drift,
    /// Capacity of the watch event channel (a slower watcher recovers from the history).
    pub events_capacity: usize,
}

impl LocalConfig {
    /// LAN limits, 1% drift, 1024 buffered events.
    pub fn new(node: NodeId) -> LocalConfig {
        LocalConfig {
            node,
            limits: MachineLimits::lan(),
            drift: Drift::DEFAULT,
            events_capacity: 1024,
        }
    }
}

struct State {
    machine: Machine,
    clock: LeaseClock,
    index: u64,
}

struct Inner {
    node: NodeId,
    origin: Instant,
    state: Mutex<State>,
    events: broadcast::Sender<WatchEvent>,
    /// Wakes the expiry task when a lease is granted (its deadline may come first).
    wake: Notify,
}

impl Inner {
    fn now(&self) -> Duration {
        Instant::now().saturating_duration_since(self.origin)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is only mutated by `Machine::apply`, which never panics.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn apply(&self, state: &mut State, cmd: &Command) -> (u64, Outcome) {
        state.index += 1;
        let index = state.index;
        let (outcome, events) = state.machine.apply(index, cmd);
        state.clock.observe(index, cmd, &outcome, self.now());
        for ev in events {
            // No receiver is fine: nobody watches.
            let _ = self.events.send(ev);
        }
        if matches!(cmd, Command::LeaseGrant { .. }) {
            self.wake.notify_one();
        }
        (index, outcome)
    }
}

/// Single-node, in-memory [`Proposer`]. Must be created inside a tokio runtime (it starts its
/// lease expiry task, stopped when the proposer is dropped).
pub struct LocalProposer {
    inner: Arc<Inner>,
    expiry: JoinHandle<()>,
}

impl LocalProposer {
    /// Starts an empty single-node machine.
    pub fn new(config: LocalConfig) -> LocalProposer {
        let (events, _) = broadcast::channel(config.events_capacity.max(1));
        let inner = Arc::new(Inner {
            node: config.node,
            origin: Instant::now(),
            state: Mutex::new(State {
                machine: Machine::new(config.limits),
                clock: LeaseClock::new(config.drift),
                index: 0,
            }),
            events,
            wake: Notify::new(),
        });
        let expiry = tokio::spawn(expire_leases(Arc::clone(&inner)));
        LocalProposer { inner, expiry }
    }
}

impl Drop for LocalProposer {
    fn drop(&mut self) {
        self.expiry.abort();
    }
}

/// The leader's expiry loop: sleep until the earliest lease deadline (or a new grant), then
/// propose `LeaseExpire` for every lease whose time ran out.
async fn expire_leases(inner: Arc<Inner>) {
    loop {
        let next = {
            let mut state = inner.lock();
            let state = &mut *state;
            let now = inner.now();
            if let Some(cmd) = state.clock.expire_command(&state.machine, now) {
                inner.apply(state, &cmd);
            }
            state.clock.next_deadline()
        };
        match next {
            Some(deadline) => {
                tokio::select! {
                    biased;
                    () = inner.wake.notified() => {}
                    () = tokio::time::sleep_until(inner.origin + deadline) => {}
                }
            }
            None => inner.wake.notified().await,
        }
    }
}

impl Proposer for LocalProposer {
    async fn propose(&self, cmd: Command) -> Result<(u64, Outcome), CoordError> {
        let mut state = self.inner.lock();
        Ok(self.inner.apply(&mut state, &cmd))
    }

    async fn read<R: Send + 'static>(
        &self,
        _consistency: Consistency,
        f: ReadFn<R>,
    ) -> Result<R, CoordError> {
        let state = self.inner.lock();
        Ok(f(&state.machine))
    }

    fn events(&self) -> broadcast::Receiver<WatchEvent> {
        self.inner.events.subscribe()
    }

    async fn lease_remaining(&self, id: LeaseId) -> Result<Option<Duration>, CoordError> {
        let state = self.inner.lock();
        if state.machine.lease(id).is_none() {
            return Ok(None);
        }
        Ok(state.clock.remaining(id, self.inner.now()))
    }

    async fn status(&self) -> Result<ClusterStatus, CoordError> {
        let index = self.inner.lock().index;
        Ok(ClusterStatus {
            node: self.inner.node.clone(),
            leader: Some(self.inner.node.clone()),
            term: 1,
            commit_index: index,
            applied_index: index,
            voters: vec![self.inner.node.clone()],
            learners: Vec::new(),
            quorum_contact_age: Some(Duration::ZERO),
        })
    }

    async fn add_learner(&self, _node: NodeId, _addr: String) -> Result<(), CoordError> {
        Err(CoordError::Unsupported {
            what: "add_learner on the single-node in-memory backend".into(),
        })
    }

    async fn promote_voter(&self, _node: NodeId) -> Result<(), CoordError> {
        Err(CoordError::Unsupported {
            what: "promote_voter on the single-node in-memory backend".into(),
        })
    }

    async fn remove_node(&self, _node: NodeId) -> Result<(), CoordError> {
        Err(CoordError::Unsupported {
            what: "remove_node on the single-node in-memory backend".into(),
        })
    }
}
