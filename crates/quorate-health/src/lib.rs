//! quorate's health monitor: runs registered checks in the background and publishes the
//! node's damped, aggregated health as a [`quorate_health_api::HealthView`].
//!
//! # Model
//!
//! - **Checks** ([`quorate_health_api::HealthCheck`], closures included) are registered with a
//!   [`CheckConfig`]: interval, timeout, failure/success thresholds, initial status,
//!   criticality, jitter, probe groups and staleness. Built-ins live in [`checks`]: TCP, disk
//!   space, process RSS and external command always; HTTP, Redis, PostgreSQL and MongoDB behind
//!   the features `http`, `redis`, `postgres` and `mongodb` (all off by default: turn on the
//!   drivers you use). External programs run through one runner, [`process`].
//! - **One scheduler task** keeps every check on a fixed grid (`phase + k x interval`, the phase
//!   drawn from a seeded RNG within `jitter`: no drift, missed slots skipped, never bunched),
//!   starts at most `concurrent_runs_max` runs at once (the rest queue, one slot per check), and
//!   runs each under its timeout: a hung check becomes `Critical` "timed out after X" and blocks
//!   nothing else; a panicking one becomes `Critical` too. All tasks are tracked and cancellable.
//! - **Damping** (Consul's counters): N consecutive failures before the status follows a
//!   failure, M consecutive successes before it follows a success; each result resets the
//!   opposite counter. A check starts in its initial status (default `Unknown`: not passing
//!   until proven).
//! - **Staleness**: a check with no result for `stale_after_intervals x interval` reports its
//!   `stale_status` (`Unknown` by default).
//! - **Aggregation** (rules in `quorate-health-api`): worst wins, `Critical > Unknown > Warning >
//!   Passing`; a non-critical check contributes at most `Warning` (degraded); `liveness` and
//!   `readiness` aggregate their groups; external components may not join liveness.
//! - **Transitions** of a check's visible status go, in order, to a bounded broadcast channel;
//!   snapshots go to a `watch` channel (throttled to `snapshot_interval_min`, immediate on a
//!   transition). Each check keeps its last `history_len` runs.
//! - **Recovery**: on a transition to `Critical` the check's [`Recovery`] action runs with
//!   bounded retries and exponential backoff (one episode per transition, stopped when the check
//!   recovers); on `Critical -> Passing/Warning` its recovered hook runs once.
//!
//! The decisions (damping, staleness, grid, backoff) live in a pure core that takes time as an
//! argument; the shell reads tokio's clock, so tests run under paused time.
//!
//! # Example
//!
//! ```
//! use quorate_health::{CheckConfig, HealthMonitor, MonitorConfig};
//! use quorate_health_api::{CheckResult, ComponentType, Criticality, HealthStatus, HealthView};
//! use std::num::NonZeroU32;
//! use std::time::Duration;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(async {
//! let monitor = HealthMonitor::start(MonitorConfig::standard())?;
//! let config = CheckConfig {
//!     interval: Duration::from_secs(5),
//!     success_threshold: NonZeroU32::MIN, // pass on the first success
//!     ..CheckConfig::fast()
//! };
//! monitor.register("queue", ComponentType::Queue, "jobs", || async {
//!     CheckResult::passing("3 jobs waiting").with_observed(3.0)
//! }, config.clone())?;
//! // A cache we can live without: its failure only degrades the node.
//! monitor.register("cache", ComponentType::Cache, "redis", || async {
//!     CheckResult::critical("connection refused")
//! }, CheckConfig { criticality: Criticality::NonCritical, failure_threshold: NonZeroU32::MIN, ..config })?;
//!
//! // Checks run in the background; run_now runs one at once and waits for its result.
//! monitor.run_now("queue").await?;
//! monitor.run_now("cache").await?;
//! let health = monitor.snapshot();
//! assert_eq!(health.status, HealthStatus::Warning); // degraded, still serving
//! assert_eq!((health.healthy, health.total), (1, 2));
//! assert_eq!(health.check("queue").map(|c| c.observed_value), Some(Some(3.0)));
//! monitor.shutdown().await;
//! # Ok::<(), quorate_health::HealthError>(())
//! # }).expect("example");
//! ```

pub mod checks;
mod config;
mod core;
mod error;
mod monitor;
pub mod process;
mod recovery;

pub use config::{CheckConfig, INTERVAL_MAX, MonitorConfig, RECOVERY_ATTEMPTS_MAX, RecoveryPolicy};
pub use error::HealthError;
pub use monitor::{HealthMonitor, MonitorStats, RunRecord};
pub use recovery::{
    HookFuture, RecoveredHook, Recovery, RecoveryAction, RecoveryContext, RecoveryFuture,
};
