//! The conformance suite every [`Coord`] backend runs against itself.
//!
//! Each area ([`kv`], [`txn`], [`watch`], [`leases`], [`locks`], [`elections`], [`cluster`])
//! is a pub async function; [`run_all`] runs them in order. Every function takes one or more
//! clients of the same cluster (for a multi-node backend, give one client per node: the suite
//! spreads its calls over them) and a [`SuiteConfig`] whose `prefix` keeps the suite's keys
//! apart from anything else in the store.
//!
//! The suite works under paused tokio time (in-memory backends) and real time (real
//! clusters): lease TTLs come from [`Capabilities`], waits poll with a deadline rather than
//! assert timings, and every lease the suite needs alive is kept alive by a keeper task every
//! ttl/3, as a real session does. Backend differences (a minimum TTL, unbounded history, no
//! admin) are stated in the [`Report`] notes instead of skipped silently.
//!
//! ```no_run
//! # async fn demo(coord: std::sync::Arc<dyn quorate_coord_api::Coord>) {
//! use quorate_coord_api::conformance::{run_all, SuiteConfig};
//! let report = run_all(&[coord], &SuiteConfig::new("conformance/run-1/")).await;
//! match report {
//!     Ok(report) => assert!(!report.passed.is_empty()),
//!     Err(failure) => panic!("{failure}"),
//! }
//! # }
//! ```

mod cluster;
mod elections;
mod kv;
mod leases;
mod locks;
mod txn;
mod watch;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::task::JoinHandle;

use crate::{Capabilities, Coord, CoordError, LeaseId, WatchEvent, WatchStream};

pub use cluster::cluster;
pub use elections::elections;
pub use kv::kv;
pub use leases::leases;
pub use locks::locks;
pub use txn::txn;
pub use watch::watch;

/// How the suite runs.
#[derive(Clone, Debug)]
pub struct SuiteConfig {
    /// Prefix of every key, lock and election name the suite uses. Use a fresh one per run on
    /// a shared, persistent cluster.
    pub prefix: String,
    /// The longest the suite waits for anything that should happen (a watch event, a lock
    /// handover, a lease expiry beyond `ttl + lease_expiry_slack`).
    pub wait_max: Duration,
}

impl SuiteConfig {
    /// `prefix`, waiting at most 30 s for anything.
    pub fn new(prefix: impl Into<String>) -> SuiteConfig {
        SuiteConfig {
            prefix: prefix.into(),
            wait_max: Duration::from_secs(30),
        }
    }
}

/// What a suite run checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// The backend's name (from its capabilities).
    pub backend: String,
    /// Every check that passed, as `area/check`.
    pub passed: Vec<String>,
    /// Stated backend differences (checks adapted or not applicable, and why).
    pub notes: Vec<String>,
}

impl Report {
    fn merge(&mut self, other: Report) {
        if self.backend.is_empty() {
            self.backend = other.backend;
        }
        self.passed.extend(other.passed);
        self.notes.extend(other.notes);
    }
}

/// A failed check: which one and what was observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// `area/check`.
    pub check: String,
    /// What went wrong.
    pub detail: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "conformance check {} failed: {}",
            self.check, self.detail
        )
    }
}

impl std::error::Error for Failure {}

/// The result of one suite area.
pub type Outcome = Result<Report, Failure>;

/// Runs every area in order; stops at the first failure.
pub async fn run_all(clients: &[Arc<dyn Coord>], config: &SuiteConfig) -> Outcome {
    let mut report = Report::default();
    report.merge(kv(clients, config).await?);
    report.merge(txn(clients, config).await?);
    report.merge(watch(clients, config).await?);
    report.merge(leases(clients, config).await?);
    report.merge(locks(clients, config).await?);
    report.merge(elections(clients, config).await?);
    report.merge(cluster(clients, config).await?);
    Ok(report)
}

/// Fails the current check with a formatted detail unless the condition holds.
macro_rules! ensure {
    ($ctx:expr, $cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err($ctx.fail(format!($($fmt)+)));
        }
    };
}
pub(crate) use ensure;

/// Shared state of one area run.
pub(crate) struct Ctx {
    clients: Vec<Arc<dyn Coord>>,
    pub(crate) caps: Capabilities,
    prefix: String,
    area: &'static str,
    check: &'static str,
    pub(crate) wait_max: Duration,
    report: Report,
}

impl Ctx {
    pub(crate) fn new(
        clients: &[Arc<dyn Coord>],
        config: &SuiteConfig,
        area: &'static str,
    ) -> Result<Ctx, Failure> {
        let Some(first) = clients.first() else {
            return Err(Failure {
                check: format!("{area}/setup"),
                detail: "no clients given: pass at least one Coord".into(),
            });
        };
        let caps = first.capabilities();
        Ok(Ctx {
            clients: clients.to_vec(),
            prefix: format!("{}{area}/", config.prefix),
            area,
            check: "setup",
            wait_max: config.wait_max,
            report: Report {
                backend: caps.backend.clone(),
                ..Report::default()
            },
            caps,
        })
    }

    /// Client `i`, round robin over the given clients.
    pub(crate) fn c(&self, i: usize) -> Arc<dyn Coord> {
        Arc::clone(&self.clients[i % self.clients.len()])
    }

    pub(crate) fn clients(&self) -> usize {
        self.clients.len()
    }

    /// A key (or lock / election name) private to this area.
    pub(crate) fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    pub(crate) fn begin(&mut self, check: &'static str) {
        self.check = check;
    }

    pub(crate) fn pass(&mut self) {
        let name = format!("{}/{}", self.area, self.check);
        self.report.passed.push(name);
    }

    pub(crate) fn note(&mut self, note: impl Into<String>) {
        let note = format!("{}/{}: {}", self.area, self.check, note.into());
        self.report.notes.push(note);
    }

    pub(crate) fn fail(&self, detail: impl Into<String>) -> Failure {
        Failure {
            check: format!("{}/{}", self.area, self.check),
            detail: detail.into(),
        }
    }

    pub(crate) fn finish(self) -> Outcome {
        Ok(self.report)
    }

    /// Unwraps a call result, failing the check with `what` and the error.
    pub(crate) fn ok<T>(&self, what: &str, r: Result<T, CoordError>) -> Result<T, Failure> {
        r.map_err(|e| self.fail(format!("{what}: unexpected error: {e} ({e:?})")))
    }

    /// Expects an error matching `pred`.
    pub(crate) fn err<T: fmt::Debug>(
        &self,
        what: &str,
        r: Result<T, CoordError>,
        pred: impl FnOnce(&CoordError) -> bool,
    ) -> Result<CoordError, Failure> {
        match r {
            Err(e) if pred(&e) => Ok(e),
            Err(e) => Err(self.fail(format!("{what}: wrong error {e:?}"))),
            Ok(v) => Err(self.fail(format!("{what}: succeeded with {v:?}, expected an error"))),
        }
    }

    /// Waits for `f` to return `Some`, polling every `every`, for at most `limit`.
    pub(crate) async fn eventually<T, F, Fut>(
        &self,
        what: &str,
        limit: Duration,
        every: Duration,
        mut f: F,
    ) -> Result<T, Failure>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Option<T>, Failure>>,
    {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(v) = f().await? {
                return Ok(v);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(self.fail(format!("{what}: did not happen within {limit:?}")));
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Waits (at most `wait_max`) for the next item of a watch.
    pub(crate) async fn next_event(
        &self,
        what: &str,
        stream: &mut WatchStream,
    ) -> Result<WatchEvent, Failure> {
        match tokio::time::timeout(self.wait_max, stream.next()).await {
            Ok(Some(Ok(ev))) => Ok(ev),
            Ok(Some(Err(e))) => Err(self.fail(format!("{what}: the watch failed: {e:?}"))),
            Ok(None) => Err(self.fail(format!("{what}: the watch ended"))),
            Err(_) => Err(self.fail(format!("{what}: no event within {:?}", self.wait_max))),
        }
    }

    /// The TTL for leases that are kept alive during a check.
    pub(crate) fn session_ttl(&self) -> Duration {
        self.caps.lease_ttl_min.max(Duration::from_secs(2))
    }

    /// Waits until lease `id` has at least one attached key (e.g. a lock waiter's queue key):
    /// proof that a spawned `lock`/`campaign` has joined its queue.
    pub(crate) async fn wait_queued(&self, id: LeaseId) -> Result<(), Failure> {
        let c = self.c(0);
        self.eventually(
            "the waiter joins the queue",
            self.wait_max,
            Duration::from_millis(5),
            || {
                let c = Arc::clone(&c);
                async move {
                    let info = self.ok("time_to_live", c.lease_time_to_live(id).await)?;
                    Ok((!info.keys.is_empty()).then_some(()))
                }
            },
        )
        .await
    }

    /// Grants a lease of [`Ctx::session_ttl`] and keeps it alive until the keeper drops.
    pub(crate) async fn session(&self, client: usize) -> Result<(LeaseId, Keeper), Failure> {
        let c = self.c(client);
        let ttl = self.session_ttl();
        let lease = self.ok("lease_grant", c.lease_grant(ttl).await)?;
        let keeper = Keeper::start(c, lease.id, ttl / 3);
        Ok((lease.id, keeper))
    }
}

/// A task that aborts when dropped, so a failed check leaves nothing running.
pub(crate) struct Task<T>(JoinHandle<T>);

impl<T: Send + 'static> Task<T> {
    pub(crate) fn spawn(fut: impl Future<Output = T> + Send + 'static) -> Task<T> {
        Task(tokio::spawn(fut))
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.0.is_finished()
    }

    /// Waits for the task, at most `wait_max`.
    pub(crate) async fn join(self, ctx: &Ctx, what: &str) -> Result<T, Failure> {
        self.join_within(ctx, what, ctx.wait_max).await
    }

    /// Waits for the task, at most `limit`.
    pub(crate) async fn join_within(
        mut self,
        ctx: &Ctx,
        what: &str,
        limit: Duration,
    ) -> Result<T, Failure> {
        match tokio::time::timeout(limit, &mut self.0).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(ctx.fail(format!("{what}: the task failed: {e}"))),
            Err(_) => Err(ctx.fail(format!("{what}: did not finish within {limit:?}"))),
        }
    }
}

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keeps a lease alive (one `lease_keep_alive` every `every`) until dropped.
pub(crate) struct Keeper {
    _task: Task<()>,
}

impl Keeper {
    pub(crate) fn start(c: Arc<dyn Coord>, id: LeaseId, every: Duration) -> Keeper {
        Keeper {
            _task: Task::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    // A failed renew is retried at the next tick; a check that needs the lease
                    // notices when it is gone.
                    let _ = c.lease_keep_alive(id).await;
                }
            }),
        }
    }
}
