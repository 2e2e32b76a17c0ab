//! The async shell: [`HealthMonitor`] (the handle) and the one scheduler task that owns the
//! run grid, starts runs within the concurrency limit, applies results to the pure core and
//! publishes snapshots and transitions.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::FutureExt;
use quorate_health_api::{
    CheckId, CheckResult, CheckSnapshot, ComponentType, HealthCheck, HealthSnapshot, HealthStatus,
    HealthView, Transition,
};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use tokio::sync::{Notify, broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

use crate::config::{CheckConfig, MonitorConfig};
use crate::core::{CheckCore, Histogram, StatusChange, first_due, next_due};
use crate::error::{HealthError, fmt_duration};
use crate::recovery::{Recovery, RecoveryCounters, run_hook, run_recovery};

/// One completed (or cancelled) run of a check, as kept in its history.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    /// When the run completed (offset from the monitor's start).
    pub at: Duration,
    /// The raw status the run returned.
    pub status: HealthStatus,
    /// The check's visible status after applying it.
    pub damped: HealthStatus,
    /// The run's message (truncated).
    pub message: String,
    /// How long the run took.
    pub duration: Duration,
}

/// Counters and scheduling lateness of a monitor since it started.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MonitorStats {
    /// Registered checks.
    pub checks: usize,
    /// Runs in flight now.
    pub running: usize,
    /// Runs started.
    pub runs_started: u64,
    /// Runs whose result was applied.
    pub runs_completed: u64,
    /// Runs that hit their timeout.
    pub timeouts: u64,
    /// Runs that panicked.
    pub panics: u64,
    /// Runs cancelled (check disabled or deregistered while running) or whose result was dropped.
    pub cancelled: u64,
    /// Grid slots skipped because the previous run of the same check was still running or queued.
    pub skipped_slots: u64,
    /// Lateness (start - due) samples recorded.
    pub lateness_samples: u64,
    /// Median lateness.
    pub lateness_p50: Duration,
    /// 99th percentile lateness.
    pub lateness_p99: Duration,
    /// Largest lateness.
    pub lateness_max: Duration,
    /// Status transitions published.
    pub transitions: u64,
    /// Recovery episodes started (one per transition to critical with an action).
    pub recoveries_started: u64,
    /// Recovery attempts made.
    pub recovery_attempts: u64,
    /// Recovery episodes that ended with a successful attempt.
    pub recoveries_succeeded: u64,
    /// Recovery episodes that used every attempt and failed.
    pub recoveries_gave_up: u64,
    /// Recovered hooks called.
    pub recovered_hooks: u64,
}

/// The health monitor: runs registered checks in the background on one scheduler task and
/// publishes their damped, aggregated health. Cheap to clone; the scheduler stops when
/// [`HealthMonitor::shutdown`] is called or the last clone is dropped.
#[derive(Clone)]
pub struct HealthMonitor {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for HealthMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthMonitor")
            .field("config", &self.handle.shared.config)
            .finish_non_exhaustive()
    }
}

struct Handle {
    shared: Arc<Shared>,
    _stop_on_drop: DropGuard,
}

struct Shared {
    config: MonitorConfig,
    state: Mutex<State>,
    wake: Notify,
    snapshot_tx: watch::Sender<HealthSnapshot>,
    transitions_tx: broadcast::Sender<Transition>,
    results_tx: mpsc::Sender<RunDone>,
    epoch: Instant,
    cancel: CancellationToken,
    tracker: TaskTracker,
    recovery: Arc<RecoveryCounters>,
}

type Waiter = oneshot::Sender<Result<CheckSnapshot, HealthError>>;

struct Entry {
    check: Arc<dyn HealthCheck>,
    config: CheckConfig,
    core: CheckCore,
    /// Results of runs started under another epoch are dropped.
    epoch: u64,
    /// Epoch of the run in flight.
    running: Option<u64>,
    run_cancel: Option<CancellationToken>,
    queued: bool,
    history: VecDeque<RunRecord>,
    waiters: Vec<Waiter>,
    recovery: Option<Recovery>,
    recovery_cancel: Option<CancellationToken>,
}

struct State {
    entries: BTreeMap<u64, Entry>,
    ids: BTreeMap<CheckId, u64>,
    /// (due, key, epoch); stale items are skipped when popped.
    heap: BinaryHeap<Reverse<(Duration, u64, u64)>>,
    /// (key, epoch, due) waiting for a free run slot; one per check.
    pending: VecDeque<(u64, u64, Duration)>,
    running: usize,
    enabled: bool,
    stopped: bool,
    rng: StdRng,
    next_key: u64,
    next_epoch: u64,
    transition_seq: u64,
    generation: u64,
    dirty: bool,
    publish_now: bool,
    last_publish: Duration,
    /// Lower bound of the earliest staleness deadline.
    stale_sweep_at: Duration,
    lateness: Histogram,
    stats: MonitorStats,
}

struct Job {
    key: u64,
    epoch: u64,
    due: Duration,
    check: Arc<dyn HealthCheck>,
    timeout: Duration,
    token: CancellationToken,
}

enum RunOutcome {
    Done(CheckResult, RunKind),
    Cancelled,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum RunKind {
    Normal,
    TimedOut,
    Panicked,
}

struct RunDone {
    key: u64,
    epoch: u64,
    outcome: RunOutcome,
    lateness: Duration,
    finished_at: Duration,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl HealthMonitor {
    /// Start a monitor (and its scheduler task) on the current tokio runtime.
    ///
    /// Errors: an invalid `config`, or no tokio runtime (`HealthError::InvalidConfig` naming
    /// the runtime).
    pub fn start(config: MonitorConfig) -> Result<HealthMonitor, HealthError> {
        config.validate()?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(HealthError::config(
                "monitor",
                "runtime",
                "none",
                "HealthMonitor::start must be called inside a tokio runtime",
            ));
        }
        let (snapshot_tx, _) = watch::channel(HealthSnapshot::empty());
        let (transitions_tx, _) = broadcast::channel(config.transitions_capacity.get());
        // Every run in flight sends exactly one message and at most `concurrent_runs_max` are in
        // flight, so this capacity never makes a sender wait.
        let (results_tx, results_rx) = mpsc::channel(config.concurrent_runs_max.get());
        let cancel = CancellationToken::new();
        let state = State {
            entries: BTreeMap::new(),
            ids: BTreeMap::new(),
            heap: BinaryHeap::new(),
            pending: VecDeque::new(),
            running: 0,
            enabled: true,
            stopped: false,
            rng: StdRng::seed_from_u64(config.seed),
            next_key: 0,
            next_epoch: 0,
            transition_seq: 0,
            generation: 0,
            dirty: false,
            publish_now: false,
            last_publish: Duration::ZERO,
            stale_sweep_at: Duration::MAX,
            lateness: Histogram::new(),
            stats: MonitorStats::default(),
        };
        let shared = Arc::new(Shared {
            config,
            state: Mutex::new(state),
            wake: Notify::new(),
            snapshot_tx,
            transitions_tx,
            results_tx,
            epoch: Instant::now(),
            cancel: cancel.clone(),
            tracker: TaskTracker::new(),
            recovery: Arc::new(RecoveryCounters::default()),
        });
        shared
            .tracker
            .spawn(scheduler(Arc::clone(&shared), results_rx));
        Ok(HealthMonitor {
            handle: Arc::new(Handle {
                shared,
                _stop_on_drop: cancel.drop_guard(),
            }),
        })
    }

    fn shared(&self) -> &Shared {
        &self.handle.shared
    }

    /// Time since the monitor started: the clock of every `at`/`taken_at` it reports.
    #[must_use]
    pub fn elapsed(&self) -> Duration {
        self.shared().now()
    }

    /// Register a check. It starts in `config.initial_status` and first runs after a random
    /// delay within `config.jitter`.
    ///
    /// Errors: invalid id or config, a duplicate id, an external component in the liveness
    /// group, the `checks_max` limit, a stopped monitor.
    pub fn register(
        &self,
        check_id: &str,
        component_type: ComponentType,
        component_name: impl Into<String>,
        check: impl HealthCheck,
        config: CheckConfig,
    ) -> Result<(), HealthError> {
        self.register_arc(
            check_id,
            component_type,
            component_name,
            Arc::new(check),
            config,
        )
    }

    /// [`HealthMonitor::register`] for a check already behind an `Arc`.
    pub fn register_arc(
        &self,
        check_id: &str,
        component_type: ComponentType,
        component_name: impl Into<String>,
        check: Arc<dyn HealthCheck>,
        config: CheckConfig,
    ) -> Result<(), HealthError> {
        let id = CheckId::new(check_id)?;
        config.validate(id.as_str())?;
        if config.groups.liveness && component_type.is_external() {
            return Err(HealthError::LivenessDependsOnExternal { id, component_type });
        }
        let shared = self.shared();
        {
            let mut st = lock(&shared.state);
            if st.stopped {
                return Err(HealthError::Stopped);
            }
            if st.ids.contains_key(&id) {
                return Err(HealthError::DuplicateCheck { id });
            }
            if st.ids.len() >= shared.config.checks_max.get() {
                return Err(HealthError::TooManyChecks {
                    id,
                    max: shared.config.checks_max.get(),
                });
            }
            let now = shared.now();
            let key = st.next_key;
            st.next_key += 1;
            let epoch = st.new_epoch();
            let core = CheckCore::new(
                id.clone(),
                component_type,
                component_name.into(),
                &config,
                now,
            );
            let enabled = st.enabled;
            if enabled {
                let due = first_due(now, config.jitter, st.rng.next_u64());
                st.heap.push(Reverse((due, key, epoch)));
                st.stale_sweep_at = st.stale_sweep_at.min(core.stale_deadline());
            }
            st.entries.insert(
                key,
                Entry {
                    check,
                    config,
                    core,
                    epoch,
                    running: None,
                    run_cancel: None,
                    queued: false,
                    history: VecDeque::new(),
                    waiters: Vec::new(),
                    recovery: None,
                    recovery_cancel: None,
                },
            );
            st.ids.insert(id, key);
            st.stats.checks = st.ids.len();
            st.publish_now = true;
        }
        shared.wake.notify_one();
        Ok(())
    }

    /// Remove a check. A run in flight is cancelled, a recovery in progress stops, `run_now`
    /// callers waiting on it get `RunAbandoned`.
    pub fn deregister(&self, check_id: &str) -> Result<(), HealthError> {
        let shared = self.shared();
        {
            let mut st = lock(&shared.state);
            let key = st.key(check_id)?;
            st.ids.remove(check_id);
            if let Some(mut entry) = st.entries.remove(&key) {
                entry.stop_activity();
            }
            st.pending.retain(|p| p.0 != key);
            st.stats.checks = st.ids.len();
            st.publish_now = true;
        }
        shared.wake.notify_one();
        Ok(())
    }

    /// Stop running a check (idempotent). It stays registered and visible (`enabled = false`)
    /// but no longer counts in any aggregate; a run in flight is cancelled and its result dropped.
    pub fn disable(&self, check_id: &str) -> Result<(), HealthError> {
        let shared = self.shared();
        {
            let mut st = lock(&shared.state);
            let key = st.key(check_id)?;
            let epoch = st.new_epoch();
            let Some(entry) = st.entries.get_mut(&key) else {
                return Ok(());
            };
            if !entry.core.snapshot().enabled {
                return Ok(());
            }
            entry.core.set_enabled(false);
            entry.epoch = epoch;
            entry.stop_activity();
            st.pending.retain(|p| p.0 != key);
            st.publish_now = true;
        }
        shared.wake.notify_one();
        Ok(())
    }

    /// Start running a disabled check again (idempotent). It restarts from its initial status,
    /// as if new.
    pub fn enable(&self, check_id: &str) -> Result<(), HealthError> {
        let shared = self.shared();
        {
            let mut st = lock(&shared.state);
            let key = st.key(check_id)?;
            if st
                .entries
                .get(&key)
                .is_none_or(|e| e.core.snapshot().enabled)
            {
                return Ok(());
            }
            let now = shared.now();
            if let Some(entry) = st.entries.get_mut(&key) {
                entry.core.set_enabled(true);
            }
            st.restart_check(shared, key, now);
            st.publish_now = true;
        }
        shared.wake.notify_one();
        Ok(())
    }

    /// Pause the whole monitor (maintenance): no check runs, runs in flight are cancelled,
    /// recoveries stop, staleness is not evaluated; statuses freeze as they are.
    pub fn disable_monitor(&self) {
        let shared = self.shared();
        {
            let mut st = lock(&shared.state);
            if !st.enabled {
                return;
            }
            st.enabled = false;
            let keys: Vec<u64> = st.entries.keys().copied().collect();
            for key in keys {
                let epoch = st.new_epoch();
                if let Some(entry) = st.entries.get_mut(&key) {
                    entry.epoch = epoch;
                    entry.stop_activity();
                }
            }
            st.pending.clear();
            st.heap.clear();
            st.publish_now = true;
        }
        shared.wake.notify_one();
    }

    /// Resume after [`HealthMonitor::disable_monitor`]: every enabled check restarts from its
    /// initial status (old results prove nothing about now).
    pub fn enable_monitor(&self) {
        let shared = self.shared();
        {
            let mut st = lock(&shared.state);
            if st.enabled {
                return;
            }
            st.enabled = true;
            let now = shared.now();
            let keys: Vec<u64> = st
                .entries
                .iter()
                .filter(|(_, e)| e.core.snapshot().enabled)
                .map(|(k, _)| *k)
                .collect();
            for key in keys {
                st.restart_check(shared, key, now);
            }
            st.publish_now = true;
        }
        shared.wake.notify_one();
    }

    /// Whether the monitor is enabled (see [`HealthMonitor::disable_monitor`]).
    #[must_use]
    pub fn is_monitor_enabled(&self) -> bool {
        lock(&self.shared().state).enabled
    }

    /// Run a check now, outside its schedule, and return its snapshot after the result is
    /// applied. If a run is already in flight or queued, waits for that one instead.
    pub async fn run_now(&self, check_id: &str) -> Result<CheckSnapshot, HealthError> {
        let shared = self.shared();
        let rx = {
            let mut st = lock(&shared.state);
            if st.stopped {
                return Err(HealthError::Stopped);
            }
            let key = st.key(check_id)?;
            let monitor_enabled = st.enabled;
            let now = shared.now();
            let max = shared.config.run_now_waiters_max.get();
            let Some(entry) = st.entries.get_mut(&key) else {
                return Err(HealthError::UnknownCheck {
                    id: check_id.to_owned(),
                });
            };
            let id = entry.core.snapshot().id.clone();
            if !monitor_enabled {
                return Err(HealthError::MonitorDisabled);
            }
            if !entry.core.snapshot().enabled {
                return Err(HealthError::CheckDisabled { id });
            }
            if entry.waiters.len() >= max {
                return Err(HealthError::RunNowBusy { id, max });
            }
            let (tx, rx) = oneshot::channel();
            entry.waiters.push(tx);
            // A run of an older epoch (before a disable/enable) is cancelled and its result
            // will be dropped: start a fresh one instead of waiting for it.
            if entry.running != Some(entry.epoch) && !entry.queued {
                entry.queued = true;
                let epoch = entry.epoch;
                st.pending.push_front((key, epoch, now));
            }
            rx
        };
        shared.wake.notify_one();
        rx.await.unwrap_or(Err(HealthError::Stopped))
    }

    /// Set (or replace) the recovery action and recovered hook of a check.
    pub fn set_recovery(&self, check_id: &str, recovery: Recovery) -> Result<(), HealthError> {
        recovery.policy.validate(check_id)?;
        let mut st = lock(&self.shared().state);
        let key = st.key(check_id)?;
        if let Some(entry) = st.entries.get_mut(&key) {
            entry.recovery = Some(recovery);
        }
        Ok(())
    }

    /// The current aggregated health, computed now from every check (not the throttled
    /// published snapshot).
    #[must_use]
    pub fn overall(&self) -> HealthSnapshot {
        let shared = self.shared();
        let st = lock(&shared.state);
        st.build_snapshot(shared.now())
    }

    /// The current snapshot of one check.
    pub fn check(&self, check_id: &str) -> Result<CheckSnapshot, HealthError> {
        let st = lock(&self.shared().state);
        let key = st.key(check_id)?;
        st.entries
            .get(&key)
            .map(|e| e.core.snapshot().clone())
            .ok_or_else(|| HealthError::UnknownCheck {
                id: check_id.to_owned(),
            })
    }

    /// The last `history_len` runs of a check, oldest first.
    pub fn history(&self, check_id: &str) -> Result<Vec<RunRecord>, HealthError> {
        let st = lock(&self.shared().state);
        let key = st.key(check_id)?;
        Ok(st
            .entries
            .get(&key)
            .map(|e| e.history.iter().cloned().collect())
            .unwrap_or_default())
    }

    /// Counters and scheduling lateness.
    #[must_use]
    pub fn stats(&self) -> MonitorStats {
        let shared = self.shared();
        let st = lock(&shared.state);
        let mut stats = st.stats.clone();
        stats.running = st.running;
        stats.lateness_samples = st.lateness.count();
        stats.lateness_p50 = st.lateness.quantile(0.5);
        stats.lateness_p99 = st.lateness.quantile(0.99);
        stats.lateness_max = st.lateness.max();
        let r = &shared.recovery;
        stats.recoveries_started = r.started.load(Ordering::Relaxed);
        stats.recovery_attempts = r.attempts.load(Ordering::Relaxed);
        stats.recoveries_succeeded = r.succeeded.load(Ordering::Relaxed);
        stats.recoveries_gave_up = r.gave_up.load(Ordering::Relaxed);
        stats.recovered_hooks = r.hooks.load(Ordering::Relaxed);
        stats
    }

    /// Stop the scheduler, cancel runs and recoveries, and wait for every task to end.
    /// Later calls on any clone return `Stopped` (or do nothing).
    pub async fn shutdown(&self) {
        let shared = self.shared();
        shared.cancel.cancel();
        shared.tracker.close();
        shared.tracker.wait().await;
        let mut st = lock(&shared.state);
        st.stopped = true;
        // Every run task has ended (the tracker is empty); their results were not applied.
        st.running = 0;
        for entry in st.entries.values_mut() {
            entry.running = None;
            entry.run_cancel = None;
        }
        for entry in st.entries.values_mut() {
            for waiter in entry.waiters.drain(..) {
                let _ = waiter.send(Err(HealthError::Stopped));
            }
        }
    }
}

impl HealthView for HealthMonitor {
    fn snapshot(&self) -> HealthSnapshot {
        self.overall()
    }
    fn watch(&self) -> watch::Receiver<HealthSnapshot> {
        self.shared().snapshot_tx.subscribe()
    }
    fn transitions(&self) -> broadcast::Receiver<Transition> {
        self.shared().transitions_tx.subscribe()
    }
}

impl Shared {
    fn now(&self) -> Duration {
        Instant::now().saturating_duration_since(self.epoch)
    }
}

impl Entry {
    /// Cancel the run in flight and the recovery; fail `run_now` waiters; leave the queue.
    fn stop_activity(&mut self) {
        if let Some(token) = self.run_cancel.take() {
            token.cancel();
        }
        if let Some(token) = self.recovery_cancel.take() {
            token.cancel();
        }
        self.queued = false;
        let id = self.core.snapshot().id.clone();
        for waiter in self.waiters.drain(..) {
            let _ = waiter.send(Err(HealthError::RunAbandoned { id: id.clone() }));
        }
    }
}

impl State {
    fn key(&self, check_id: &str) -> Result<u64, HealthError> {
        self.ids
            .get(check_id)
            .copied()
            .ok_or_else(|| HealthError::UnknownCheck {
                id: check_id.to_owned(),
            })
    }

    fn new_epoch(&mut self) -> u64 {
        self.next_epoch += 1;
        self.next_epoch
    }

    /// (Re)start an enabled check at `now`: new epoch, initial status, fresh grid phase.
    fn restart_check(&mut self, shared: &Shared, key: u64, now: Duration) {
        let epoch = self.new_epoch();
        let sample = self.rng.next_u64();
        let Some(entry) = self.entries.get_mut(&key) else {
            return;
        };
        entry.epoch = epoch;
        let change = entry
            .core
            .reset(now, "restarted: waiting for the first result");
        let due = first_due(now, entry.config.jitter, sample);
        let deadline = entry.core.stale_deadline();
        self.heap.push(Reverse((due, key, epoch)));
        self.stale_sweep_at = self.stale_sweep_at.min(deadline);
        if let Some(change) = change {
            self.on_change(shared, key, change, now);
        }
    }

    fn build_snapshot(&self, now: Duration) -> HealthSnapshot {
        let checks = self
            .entries
            .values()
            .map(|e| (e.core.snapshot().id.clone(), e.core.snapshot().clone()))
            .collect();
        HealthSnapshot::from_checks(checks, self.generation, now)
    }

    fn overall_status(&self) -> HealthStatus {
        HealthStatus::aggregate(
            self.entries
                .values()
                .filter_map(|e| e.core.snapshot().contribution()),
        )
    }

    /// One scheduler step at `now`: queue due checks, start runs within the limit, sweep
    /// staleness, publish. Returns the runs to spawn and when to wake next.
    fn tick(&mut self, shared: &Shared, now: Duration) -> (Vec<Job>, Option<Duration>) {
        let mut jobs = Vec::new();
        if self.enabled {
            while let Some(&Reverse((due, key, epoch))) = self.heap.peek() {
                if due > now {
                    break;
                }
                self.heap.pop();
                let Some(entry) = self.entries.get_mut(&key) else {
                    continue;
                };
                if entry.epoch != epoch {
                    continue;
                }
                let next = next_due(due, entry.config.interval, now);
                self.heap.push(Reverse((next, key, epoch)));
                if entry.running == Some(epoch) || entry.queued {
                    self.stats.skipped_slots += 1;
                    continue;
                }
                entry.queued = true;
                self.pending.push_back((key, epoch, due));
            }
            while self.running < shared.config.concurrent_runs_max.get() {
                let Some((key, epoch, due)) = self.pending.pop_front() else {
                    break;
                };
                let Some(entry) = self.entries.get_mut(&key) else {
                    continue;
                };
                if entry.epoch != epoch {
                    continue;
                }
                entry.queued = false;
                let token = shared.cancel.child_token();
                entry.run_cancel = Some(token.clone());
                entry.running = Some(epoch);
                self.running += 1;
                self.stats.runs_started += 1;
                jobs.push(Job {
                    key,
                    epoch,
                    due,
                    check: Arc::clone(&entry.check),
                    timeout: entry.config.timeout,
                    token,
                });
            }
            if now >= self.stale_sweep_at {
                self.sweep_staleness(shared, now);
            }
        }
        let publish_due = self
            .last_publish
            .saturating_add(shared.config.snapshot_interval_min);
        if self.publish_now || (self.dirty && now >= publish_due) {
            self.publish(shared, now);
        }
        let mut wake = None::<Duration>;
        let mut consider = |t: Duration| wake = Some(wake.map_or(t, |w| w.min(t)));
        if self.enabled {
            if let Some(&Reverse((due, _, _))) = self.heap.peek() {
                consider(due);
            }
            if self.stale_sweep_at != Duration::MAX {
                consider(self.stale_sweep_at);
            }
        }
        if self.dirty {
            consider(
                self.last_publish
                    .saturating_add(shared.config.snapshot_interval_min),
            );
        }
        (jobs, wake)
    }

    fn sweep_staleness(&mut self, shared: &Shared, now: Duration) {
        let mut changes = Vec::new();
        let mut next = Duration::MAX;
        for (key, entry) in &mut self.entries {
            if !entry.core.snapshot().enabled {
                continue;
            }
            if let Some(change) = entry.core.refresh_staleness(now) {
                changes.push((*key, change));
            }
            if !entry.core.snapshot().stale {
                next = next.min(entry.core.stale_deadline());
            }
        }
        self.stale_sweep_at = next;
        for (key, change) in changes {
            self.on_change(shared, key, change, now);
        }
    }

    fn publish(&mut self, shared: &Shared, now: Duration) {
        self.generation += 1;
        let snapshot = self.build_snapshot(now);
        shared.snapshot_tx.send_replace(snapshot);
        self.dirty = false;
        self.publish_now = false;
        self.last_publish = now;
    }

    fn apply_done(&mut self, shared: &Shared, done: RunDone) {
        self.running = self.running.saturating_sub(1);
        self.lateness.record(done.lateness);
        let Some(entry) = self.entries.get_mut(&done.key) else {
            self.stats.cancelled += 1;
            return;
        };
        if entry.running == Some(done.epoch) {
            entry.running = None;
            entry.run_cancel = None;
        }
        let RunOutcome::Done(result, kind) = done.outcome else {
            self.stats.cancelled += 1;
            return;
        };
        if entry.epoch != done.epoch || !self.enabled {
            self.stats.cancelled += 1;
            return;
        }
        match kind {
            RunKind::Normal => {}
            RunKind::TimedOut => self.stats.timeouts += 1,
            RunKind::Panicked => self.stats.panics += 1,
        }
        self.stats.runs_completed += 1;
        let now = done.finished_at;
        let change = entry
            .core
            .apply(&result, now, shared.config.message_bytes_max.get());
        let snapshot = entry.core.snapshot();
        if entry.history.len() >= shared.config.history_len.get() {
            entry.history.pop_front();
        }
        entry.history.push_back(RunRecord {
            at: now,
            status: result.status,
            damped: snapshot.status,
            message: snapshot.message.clone(),
            duration: result.duration,
        });
        for waiter in entry.waiters.drain(..) {
            let _ = waiter.send(Ok(snapshot.clone()));
        }
        let deadline = entry.core.stale_deadline();
        self.stale_sweep_at = self.stale_sweep_at.min(deadline);
        self.dirty = true;
        if let Some(change) = change {
            self.on_change(shared, done.key, change, now);
        }
    }

    /// Publish a transition and start the recovery action or recovered hook it calls for.
    fn on_change(&mut self, shared: &Shared, key: u64, change: StatusChange, now: Duration) {
        let overall = self.overall_status();
        self.transition_seq += 1;
        self.stats.transitions += 1;
        self.publish_now = true;
        let Some(entry) = self.entries.get_mut(&key) else {
            return;
        };
        let check = entry.core.snapshot().id.clone();
        tracing::info!(
            check = %check, from = %change.from, to = %change.to, message = %change.message,
            "health check status changed"
        );
        let transition = Transition {
            seq: self.transition_seq,
            check: check.clone(),
            from: change.from,
            to: change.to,
            at: now,
            message: change.message.clone(),
            overall,
        };
        // No receiver is fine: nobody is listening.
        let _ = shared.transitions_tx.send(transition.clone());
        let Some(recovery) = entry.recovery.clone() else {
            return;
        };
        if change.to == HealthStatus::Critical && change.from != HealthStatus::Critical {
            if let Some(old) = entry.recovery_cancel.take() {
                old.cancel();
            }
            if let Some(action) = recovery.action {
                let token = shared.cancel.child_token();
                entry.recovery_cancel = Some(token.clone());
                shared.tracker.spawn(run_recovery(
                    action,
                    recovery.policy,
                    check,
                    change.message,
                    token,
                    Arc::clone(&shared.recovery),
                ));
            }
        } else if change.from == HealthStatus::Critical && change.to.is_healthy() {
            if let Some(old) = entry.recovery_cancel.take() {
                old.cancel();
            }
            if let Some(hook) = recovery.on_recovered {
                shared.tracker.spawn(run_hook(
                    hook,
                    transition,
                    recovery.policy.attempt_timeout,
                    shared.cancel.child_token(),
                    Arc::clone(&shared.recovery),
                ));
            }
        }
    }
}

async fn scheduler(shared: Arc<Shared>, mut results_rx: mpsc::Receiver<RunDone>) {
    loop {
        let (jobs, wake) = {
            let mut st = lock(&shared.state);
            let now = shared.now();
            st.tick(&shared, now)
        };
        for job in jobs {
            shared
                .tracker
                .spawn(run_job(job, shared.results_tx.clone(), shared.epoch));
        }
        let wake_at = wake.map(|d| shared.epoch + d);
        tokio::select! {
            biased;
            () = shared.cancel.cancelled() => break,
            done = results_rx.recv() => {
                if let Some(done) = done {
                    let mut st = lock(&shared.state);
                    st.apply_done(&shared, done);
                    while let Ok(done) = results_rx.try_recv() {
                        st.apply_done(&shared, done);
                    }
                }
            }
            () = shared.wake.notified() => {}
            () = sleep_until_opt(wake_at) => {}
        }
    }
    let mut st = lock(&shared.state);
    st.stopped = true;
    for entry in st.entries.values_mut() {
        for waiter in entry.waiters.drain(..) {
            let _ = waiter.send(Err(HealthError::Stopped));
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn run_job(job: Job, results_tx: mpsc::Sender<RunDone>, epoch: Instant) {
    let started = Instant::now();
    let lateness = started.saturating_duration_since(epoch + job.due);
    let check = job.check;
    let fut = AssertUnwindSafe(async move { check.check().await }).catch_unwind();
    let outcome = tokio::select! {
        biased;
        () = job.token.cancelled() => RunOutcome::Cancelled,
        r = tokio::time::timeout(job.timeout, fut) => match r {
            Err(_) => RunOutcome::Done(
                CheckResult::critical(format!("timed out after {}", fmt_duration(job.timeout))),
                RunKind::TimedOut,
            ),
            Ok(Err(panic)) => RunOutcome::Done(
                CheckResult::critical(format!("check panicked: {}", panic_message(&panic))),
                RunKind::Panicked,
            ),
            Ok(Ok(result)) => RunOutcome::Done(result, RunKind::Normal),
        },
    };
    let finished = Instant::now();
    let outcome = match outcome {
        RunOutcome::Done(result, kind) => {
            RunOutcome::Done(result.with_duration(finished - started), kind)
        }
        RunOutcome::Cancelled => RunOutcome::Cancelled,
    };
    // The scheduler may have stopped; then nobody needs the result.
    let _ = results_tx
        .send(RunDone {
            key: job.key,
            epoch: job.epoch,
            outcome,
            lateness,
            finished_at: finished.saturating_duration_since(epoch),
        })
        .await;
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
