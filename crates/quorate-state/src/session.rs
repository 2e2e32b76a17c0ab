//! Sessions: one lease kept alive at TTL/3 with jitter by a background task, which ends the
//! session locally at the holder-side deadline (`last renew sent + ttl*(1-drift) - margin`) or
//! on a renewal error it cannot retry in time. [`Session::lost`] fires then: before the lease
//! can expire anywhere else, as long as clock rates stay within the drift bound.

use std::fmt;
use std::sync::Arc;
use std::sync::Mutex as StdMutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use quorate_clock::{Clock, SharedClock, SystemClock};
use quorate_coord_api::{Coord, CoordError, LeaseId, LockGrant};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::StateError;
use crate::lease_math::{self, AfterFailure, HolderClock, Timing};

/// How many dropped guards may wait for their background release at once; beyond it a dropped
/// guard's lock stays held until the session ends.
const RELEASES_QUEUED_MAX: usize = 64;

/// Why a session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LostReason {
    /// Closed by its owner ([`Session::close`] or the last handle dropped).
    Closed,
    /// No renew was acknowledged in time: the holder-side deadline passed.
    DeadlinePassed {
        /// Renew attempts that failed or timed out since the last acknowledged one.
        missed: u64,
    },
    /// The backend says the lease is gone (revoked or expired).
    Revoked,
    /// A renew failed with an error that cannot be retried.
    RenewFailed {
        /// The error.
        error: CoordError,
    },
}

impl fmt::Display for LostReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LostReason::Closed => write!(f, "closed by its owner"),
            LostReason::DeadlinePassed { missed } => write!(
                f,
                "no renew acknowledged before the holder-side deadline ({missed} renew attempts failed)"
            ),
            LostReason::Revoked => write!(f, "the lease was revoked or expired on the backend"),
            LostReason::RenewFailed { error } => write!(f, "a renew failed for good: {error}"),
        }
    }
}

/// Timing of a session. Build with [`SessionConfig::new`] and adjust fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// The TTL asked for (the backend may round it up; the granted TTL is used).
    pub ttl: Duration,
    /// Safety margin subtracted from the validity window: time to stop acting after `lost()`.
    pub margin: Duration,
    /// Bound on the clock-rate difference between any two nodes (default 1 %).
    pub drift: lease_math::Drift,
    /// Renews are sent up to this fraction (ppm) of TTL/3 early, at random, so that many
    /// sessions started together do not renew in lockstep.
    pub jitter_ppm: u32,
    /// Wait between a failed renew and the next attempt.
    pub retry_interval: Duration,
    /// One renew request is given up after this long (then retried if time remains).
    pub renew_timeout: Duration,
    /// Seed of the jitter RNG; `None` draws one from the OS.
    pub seed: Option<u64>,
    /// Register the session under this label (a key attached to its lease, under
    /// [`SESSIONS_PREFIX`](crate::SESSIONS_PREFIX)) so operators can list it with
    /// [`Admin::sessions`](crate::Admin::sessions). `None`: no registration, no extra write.
    pub label: Option<String>,
}

impl SessionConfig {
    /// `ttl` with: margin `ttl/20`, drift 1 %, jitter 10 %, retry every `ttl/30` (at least
    /// 10 ms), renew timeout `ttl/6`.
    pub fn new(ttl: Duration) -> SessionConfig {
        SessionConfig {
            ttl,
            margin: ttl / 20,
            drift: lease_math::Drift::DEFAULT,
            jitter_ppm: 100_000,
            retry_interval: (ttl / 30).max(Duration::from_millis(10)),
            renew_timeout: ttl / 6,
            seed: None,
            label: None,
        }
    }

    /// Checks that the validity window exists and that one lost renew is survived:
    /// `ttl/3 + renew_timeout < ttl*(1-drift) - margin`.
    pub fn validate(&self) -> Result<(), StateError> {
        let mut problems = Vec::new();
        if self.ttl.is_zero() {
            problems.push("session.ttl = 0: it must be positive".to_owned());
        }
        if self.jitter_ppm > lease_math::JITTER_PPM_MAX {
            problems.push(format!(
                "session.jitter_ppm = {} is above the maximum {}",
                self.jitter_ppm,
                lease_math::JITTER_PPM_MAX
            ));
        }
        if self.retry_interval.is_zero() || self.renew_timeout.is_zero() {
            problems.push("session.retry_interval and renew_timeout must be positive".to_owned());
        }
        let window = lease_math::holder_window(self.ttl, self.drift, self.margin);
        let needed = self.ttl / 3 + self.renew_timeout;
        if !self.ttl.is_zero() && needed >= window {
            problems.push(format!(
                "session: ttl/3 + renew_timeout = {} ms does not fit in the validity window ttl*(1-drift) - margin = {} ms, so one slow renew would end the session; raise session.ttl or lower margin/renew_timeout",
                needed.as_millis(),
                window.as_millis()
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(StateError::Config {
                reason: problems.join("; "),
            })
        }
    }

    fn timing(&self) -> Timing {
        Timing {
            margin: self.margin,
            drift: self.drift,
            retry_interval: self.retry_interval,
            renew_timeout: self.renew_timeout,
        }
    }
}

/// Counters of a session's renewals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Renews sent.
    pub renewals_sent: u64,
    /// Renews acknowledged.
    pub renewals_ok: u64,
    /// Renews that failed or timed out.
    pub renewals_missed: u64,
    /// Latency of the last acknowledged renew.
    pub last_renew_latency: Duration,
    /// Highest renew latency seen.
    pub max_renew_latency: Duration,
}

#[derive(Default)]
struct Stats {
    sent: AtomicU64,
    ok: AtomicU64,
    missed: AtomicU64,
    last_latency_ns: AtomicU64,
    max_latency_ns: AtomicU64,
}

impl Stats {
    fn snapshot(&self) -> SessionStats {
        SessionStats {
            renewals_sent: self.sent.load(Ordering::Relaxed),
            renewals_ok: self.ok.load(Ordering::Relaxed),
            renewals_missed: self.missed.load(Ordering::Relaxed),
            last_renew_latency: Duration::from_nanos(self.last_latency_ns.load(Ordering::Relaxed)),
            max_renew_latency: Duration::from_nanos(self.max_latency_ns.load(Ordering::Relaxed)),
        }
    }

    fn latency(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.last_latency_ns.store(ns, Ordering::Relaxed);
        self.max_latency_ns.fetch_max(ns, Ordering::Relaxed);
    }
}

/// State shared by the handles and the keeper task.
struct Shared {
    coord: Arc<dyn Coord>,
    lease: LeaseId,
    clock: SharedClock,
    stats: Stats,
    /// The instant (on `clock`) at which the session must be considered lost; updated on
    /// every acknowledged renew.
    deadline: StdMutex<Duration>,
    lost: watch::Receiver<Option<LostReason>>,
    /// Turns true when the keeper has finished (after its revoke attempt).
    finished: watch::Receiver<bool>,
    /// When `lost` was set, on `clock`.
    lost_at: StdMutex<Option<Duration>>,
}

/// Ends the keeper (and revokes the lease) when the last handle goes.
struct Owner {
    shared: Arc<Shared>,
    cancel: CancellationToken,
    releases: mpsc::Sender<LockGrant>,
    /// Runs the keeper; [`Session::close`] waits on it, so the task has ended (not just
    /// announced that it will) when `close` returns.
    tracker: TaskTracker,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// A lease kept alive in the background. Cheap to clone; the lease is revoked when
/// [`close`](Session::close) is called or the last clone is dropped.
///
/// ```no_run
/// # async fn demo(coord: std::sync::Arc<dyn quorate_coord_api::Coord>) -> Result<(), quorate_state::StateError> {
/// use std::time::Duration;
/// use quorate_state::{Session, SessionConfig};
/// let session = Session::start(coord, SessionConfig::new(Duration::from_secs(3))).await?;
/// let lost = session.lost();
/// tokio::select! {
///     reason = lost => eprintln!("stop acting: {reason}"),
///     _ = tokio::time::sleep(Duration::from_secs(1)) => session.close().await,
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Session {
    owner: Arc<Owner>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("lease", &self.lease())
            .field("lost", &*self.owner.shared.lost.borrow())
            .finish()
    }
}

impl Session {
    /// Grants a lease and starts keeping it alive (a tokio task, ended by `close` or drop), on
    /// the system's monotonic clock (tokio time).
    pub async fn start(
        coord: Arc<dyn Coord>,
        config: SessionConfig,
    ) -> Result<Session, StateError> {
        Session::start_with_clock(coord, config, SystemClock::shared()).await
    }

    /// [`start`](Session::start) with every time read and timer on `clock` (a simulation runs
    /// one holder's clock at another rate).
    pub async fn start_with_clock(
        coord: Arc<dyn Coord>,
        config: SessionConfig,
        clock: SharedClock,
    ) -> Result<Session, StateError> {
        config.validate()?;
        let origin = clock.now();
        let grant = coord
            .lease_grant(config.ttl)
            .await
            .map_err(StateError::coord("grant session lease"))?;
        if let Some(label) = &config.label {
            let record = postcard::to_stdvec(&crate::admin::SessionRecord {
                label: label.clone(),
            })
            .map_err(|e| StateError::Codec {
                what: "encode session registration".into(),
                reason: e.to_string(),
            })?;
            let registered = coord
                .put(&crate::admin::session_key(grant.id), record, Some(grant.id))
                .await;
            if let Err(e) = registered {
                let _ = coord.lease_revoke(grant.id).await;
                return Err(StateError::coord("register session")(e));
            }
        }
        let holder = HolderClock::granted(config.timing(), grant.ttl, origin);
        let (lost_tx, lost_rx) = watch::channel(None);
        let (finished_tx, finished_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            coord,
            lease: grant.id,
            clock,
            stats: Stats::default(),
            deadline: StdMutex::new(holder.deadline()),
            lost: lost_rx,
            finished: finished_rx,
            lost_at: StdMutex::new(None),
        });
        let cancel = CancellationToken::new();
        let (releases, releases_rx) = mpsc::channel(RELEASES_QUEUED_MAX);
        let rng = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        let keeper = Keeper {
            shared: Arc::clone(&shared),
            clock: holder,
            jitter_ppm: config.jitter_ppm,
            rng,
            cancel: cancel.clone(),
            releases: releases_rx,
            unlocking: FuturesUnordered::new(),
            lost: lost_tx,
            finished: finished_tx,
        };
        let tracker = TaskTracker::new();
        tracker.spawn(keeper.run());
        tracker.close();
        Ok(Session {
            owner: Arc::new(Owner {
                shared,
                cancel,
                releases,
                tracker,
            }),
        })
    }

    fn shared(&self) -> &Shared {
        &self.owner.shared
    }

    /// The session's lease.
    pub fn lease(&self) -> LeaseId {
        self.shared().lease
    }

    /// The coordination backend.
    pub fn coord(&self) -> &Arc<dyn Coord> {
        &self.shared().coord
    }

    /// Resolves when the session ends, with the reason. Fires at the holder-side deadline at the
    /// latest, i.e. before the backend can expire the lease (within the drift bound).
    pub fn lost(&self) -> impl Future<Output = LostReason> + Send + 'static {
        let mut rx = self.shared().lost.clone();
        async move {
            match rx.wait_for(Option::is_some).await {
                Ok(r) => r.clone().unwrap_or(LostReason::Closed),
                // The keeper is gone without a reason: it can only have been dropped.
                Err(_) => LostReason::Closed,
            }
        }
    }

    /// A watch of the session's end: `None` while alive, then the reason.
    pub fn lost_watch(&self) -> watch::Receiver<Option<LostReason>> {
        self.shared().lost.clone()
    }

    /// Whether the session is still valid now (not lost and before its deadline).
    pub fn is_alive(&self) -> bool {
        self.lost_reason().is_none() && self.remaining() > Duration::ZERO
    }

    /// Why the session ended, if it did.
    pub fn lost_reason(&self) -> Option<LostReason> {
        self.shared().lost.borrow().clone()
    }

    /// The session's clock.
    pub fn clock(&self) -> &SharedClock {
        &self.shared().clock
    }

    /// When `lost` fired, on the session's [`clock`](Session::clock).
    pub fn lost_at(&self) -> Option<Duration> {
        *lock(&self.shared().lost_at)
    }

    /// Time left before the holder-side deadline (zero once lost).
    pub fn remaining(&self) -> Duration {
        let deadline = *lock(&self.shared().deadline);
        deadline.saturating_sub(self.shared().clock.now())
    }

    /// Renewal counters and latencies.
    pub fn stats(&self) -> SessionStats {
        self.shared().stats.snapshot()
    }

    /// Fails with [`StateError::SessionLost`] unless the session is alive.
    pub fn check_alive(&self) -> Result<(), StateError> {
        if let Some(reason) = self.lost_reason() {
            return Err(StateError::SessionLost {
                lease: self.lease(),
                reason,
            });
        }
        if self.remaining() == Duration::ZERO {
            return Err(StateError::SessionLost {
                lease: self.lease(),
                reason: LostReason::DeadlinePassed {
                    missed: self.stats().renewals_missed,
                },
            });
        }
        Ok(())
    }

    /// The error for "this session is lost", with its reason.
    pub(crate) fn lost_error(&self, reason: LostReason) -> StateError {
        StateError::SessionLost {
            lease: self.lease(),
            reason,
        }
    }

    /// Hands a lock to the keeper to release in the background (a dropped guard). Returns
    /// false if the queue is full or the session is gone (the lock then ends with the lease).
    pub(crate) fn release_later(&self, grant: LockGrant) -> bool {
        self.owner.releases.try_send(grant).is_ok()
    }

    /// Ends the session now: stops renewing, fires `lost()` with [`LostReason::Closed`] and
    /// revokes the lease (releasing everything held under it). Returns once the revoke was
    /// answered or gave up (bounded by the TTL); the backend expires the lease otherwise.
    pub async fn close(&self) {
        self.owner.cancel.cancel();
        let mut finished = self.shared().finished.clone();
        let _ = finished.wait_for(|done| *done).await;
        self.owner.tracker.wait().await;
    }
}

fn lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The keeper task: renews, decides with [`HolderClock`], announces the end.
struct Keeper {
    shared: Arc<Shared>,
    clock: HolderClock,
    jitter_ppm: u32,
    rng: StdRng,
    cancel: CancellationToken,
    releases: mpsc::Receiver<LockGrant>,
    /// Releases under way (at most `RELEASES_QUEUED_MAX` are ever queued), run beside the
    /// renewals so a slow unlock never delays a renew.
    unlocking: FuturesUnordered<BoxFuture<'static, ()>>,
    lost: watch::Sender<Option<LostReason>>,
    finished: watch::Sender<bool>,
}

/// How one wait of the keeper ended.
enum Wake {
    Cancelled,
    Deadline,
    Release(LockGrant),
    Released,
    Renew,
}

impl Keeper {
    fn now(&self) -> Duration {
        self.shared.clock.now()
    }

    async fn run(mut self) {
        let reason = self.keep().await;
        *lock(&self.shared.lost_at) = Some(self.now());
        *lock(&self.shared.deadline) = Duration::ZERO;
        let _ = self.lost.send(Some(reason.clone()));
        tracing::debug!(lease = %self.shared.lease, %reason, "session ended");
        // Revoke (also after an involuntary end: queued waiters and keys should go now, not at
        // the backend's expiry). One attempt, bounded; the backend expires it otherwise.
        if reason != LostReason::Revoked {
            let bound = self.clock.ttl().max(Duration::from_millis(100));
            tokio::select! {
                _ = self.shared.coord.lease_revoke(self.shared.lease) => {}
                () = self.shared.clock.sleep(bound) => {}
            }
        }
        let _ = self.finished.send(true);
    }

    async fn keep(&mut self) -> LostReason {
        let mut missed: u64 = 0;
        let j = self.jitter();
        let mut next = self.clock.next_renew(j);
        loop {
            match self.wait(next).await {
                Wake::Cancelled => return LostReason::Closed,
                Wake::Deadline => return LostReason::DeadlinePassed { missed },
                Wake::Release(grant) => {
                    let coord = Arc::clone(&self.shared.coord);
                    let give_up = self.shared.clock.sleep(self.clock.ttl());
                    self.unlocking.push(Box::pin(async move {
                        tokio::select! {
                            _ = coord.unlock(&grant) => {}
                            () = give_up => {}
                        }
                    }));
                }
                Wake::Released => {}
                Wake::Renew => {
                    let sent = self.now();
                    self.shared.stats.sent.fetch_add(1, Ordering::Relaxed);
                    let give_up = self
                        .shared
                        .clock
                        .sleep_until(self.clock.renew_gives_up_at(sent));
                    let renew = self.shared.coord.lease_keep_alive(self.shared.lease);
                    let outcome = tokio::select! {
                        biased;
                        () = self.cancel.cancelled() => return LostReason::Closed,
                        () = give_up => Err(()),
                        r = renew => Ok(r),
                    };
                    let now = self.now();
                    match outcome {
                        Ok(Ok(grant)) => {
                            self.shared.stats.ok.fetch_add(1, Ordering::Relaxed);
                            self.shared.stats.latency(now.saturating_sub(sent));
                            self.clock.acknowledged(sent, grant.ttl);
                            *lock(&self.shared.deadline) = self.clock.deadline();
                            missed = 0;
                            let j = self.jitter();
                            next = self.clock.next_renew(j);
                        }
                        Ok(Err(
                            CoordError::LeaseNotFound { .. } | CoordError::LeaseExpired { .. },
                        )) => {
                            return LostReason::Revoked;
                        }
                        Ok(Err(error)) => {
                            self.shared.stats.missed.fetch_add(1, Ordering::Relaxed);
                            missed += 1;
                            match self.clock.failed(now, error.is_retryable()) {
                                AfterFailure::RetryAt(at) => next = at,
                                AfterFailure::Lost if error.is_retryable() => {
                                    return LostReason::DeadlinePassed { missed };
                                }
                                AfterFailure::Lost => return LostReason::RenewFailed { error },
                            }
                        }
                        Err(()) => {
                            self.shared.stats.missed.fetch_add(1, Ordering::Relaxed);
                            missed += 1;
                            match self.clock.failed(now, true) {
                                AfterFailure::RetryAt(_) => next = now,
                                AfterFailure::Lost => return LostReason::DeadlinePassed { missed },
                            }
                        }
                    }
                }
            }
        }
    }

    fn jitter(&mut self) -> u32 {
        if self.jitter_ppm == 0 {
            0
        } else {
            self.rng.random_range(0..=self.jitter_ppm)
        }
    }

    /// Waits for the next event: close, the deadline, a release to run, or the renew time.
    async fn wait(&mut self, next: Duration) -> Wake {
        let deadline = self.shared.clock.sleep_until(self.clock.deadline());
        let renew = self.shared.clock.sleep_until(next);
        tokio::select! {
            biased;
            () = self.cancel.cancelled() => Wake::Cancelled,
            () = deadline => Wake::Deadline,
            Some(()) = self.unlocking.next(), if !self.unlocking.is_empty() => Wake::Released,
            Some(grant) = self.releases.recv(), if self.unlocking.len() < RELEASES_QUEUED_MAX => {
                Wake::Release(grant)
            }
            () = renew => Wake::Renew,
        }
    }
}
