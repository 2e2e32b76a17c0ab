//! Configuration of checks, the monitor and recovery actions, with named profiles and
//! validation that names the field and the fix.

use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use quorate_health_api::{Criticality, HealthStatus, ProbeGroups};

use crate::error::{HealthError, fmt_duration};

/// Longest accepted check interval (keeps `interval x stale_after_intervals` far from overflow).
pub const INTERVAL_MAX: Duration = Duration::from_secs(24 * 60 * 60);

/// How one check is run and damped.
///
/// Start from a profile ([`CheckConfig::fast`], [`CheckConfig::standard`]) and override fields
/// with struct-update syntax:
///
/// ```
/// use quorate_health::CheckConfig;
/// use std::time::Duration;
/// let config = CheckConfig { interval: Duration::from_secs(2), ..CheckConfig::fast() };
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct CheckConfig {
    /// Time between the starts of two runs (runs sit on a fixed grid: no drift).
    pub interval: Duration,
    /// Longest a run may take; a slower run is cancelled and reports `Critical` "timed out after X".
    /// Must be `<= interval`.
    pub timeout: Duration,
    /// Consecutive failures (critical or unknown results) before the status follows them.
    pub failure_threshold: NonZeroU32,
    /// Consecutive successes (passing or warning results) before the status follows them.
    pub success_threshold: NonZeroU32,
    /// Status of a new (or re-enabled) check until the thresholds say otherwise.
    pub initial_status: HealthStatus,
    /// Whether a failure of this check fails the node (`Critical`) or only degrades it.
    pub criticality: Criticality,
    /// The first run starts after a random delay in `[0, jitter]` (drawn from the monitor's seeded
    /// RNG); later runs keep that phase. Spreads checks so they do not all fire together.
    /// Must be `<= interval`.
    pub jitter: Duration,
    /// Liveness and/or readiness membership.
    pub groups: ProbeGroups,
    /// A check whose last result is older than `stale_after_intervals x interval` is stale.
    pub stale_after_intervals: NonZeroU32,
    /// The status a stale check reports (`Unknown` or `Critical`).
    pub stale_status: HealthStatus,
}

const fn nz32(n: u32) -> NonZeroU32 {
    match NonZeroU32::new(n) {
        Some(n) => n,
        None => NonZeroU32::MIN,
    }
}

const fn nzu(n: usize) -> NonZeroUsize {
    match NonZeroUsize::new(n) {
        Some(n) => n,
        None => NonZeroUsize::MIN,
    }
}

impl CheckConfig {
    /// For failover decisions: 1 s interval, 500 ms timeout, critical after 3 failures (a dead
    /// dependency is noticed in ~3 s), passing after 2 successes (one lucky probe does not
    /// end an outage), starts `Unknown`, 200 ms jitter, readiness only, stale after 3 intervals.
    #[must_use]
    pub const fn fast() -> CheckConfig {
        CheckConfig {
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            failure_threshold: nz32(3),
            success_threshold: nz32(2),
            initial_status: HealthStatus::Unknown,
            criticality: Criticality::Critical,
            jitter: Duration::from_millis(200),
            groups: ProbeGroups::READINESS,
            stale_after_intervals: nz32(3),
            stale_status: HealthStatus::Unknown,
        }
    }

    /// Kubernetes probe defaults: 10 s period, 1 s timeout, failure threshold 3, success
    /// threshold 1; starts `Unknown` (Consul starts critical, k8s readiness starts failed: both
    /// "not passing until proven"), 1 s jitter, readiness only, stale after 3 intervals.
    #[must_use]
    pub const fn standard() -> CheckConfig {
        CheckConfig {
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
            failure_threshold: nz32(3),
            success_threshold: nz32(1),
            initial_status: HealthStatus::Unknown,
            criticality: Criticality::Critical,
            jitter: Duration::from_secs(1),
            groups: ProbeGroups::READINESS,
            stale_after_intervals: nz32(3),
            stale_status: HealthStatus::Unknown,
        }
    }

    /// `interval x stale_after_intervals`.
    #[must_use]
    pub fn stale_after(&self) -> Duration {
        self.interval
            .saturating_mul(self.stale_after_intervals.get())
    }

    /// Check every field; `what` names the check in the error.
    pub fn validate(&self, what: &str) -> Result<(), HealthError> {
        if self.interval.is_zero() {
            return Err(HealthError::config(
                what,
                "interval",
                self.interval,
                "must be greater than zero (e.g. 1s)",
            ));
        }
        if self.interval > INTERVAL_MAX {
            return Err(HealthError::config(
                what,
                "interval",
                self.interval,
                format!("must be at most {}", fmt_duration(INTERVAL_MAX)),
            ));
        }
        if self.timeout.is_zero() {
            return Err(HealthError::config(
                what,
                "timeout",
                self.timeout,
                "must be greater than zero",
            ));
        }
        if self.timeout > self.interval {
            return Err(HealthError::config(
                what,
                "timeout",
                self.timeout,
                format!(
                    "must not exceed interval = {}: a run would overlap the next one",
                    fmt_duration(self.interval)
                ),
            ));
        }
        if self.jitter > self.interval {
            return Err(HealthError::config(
                what,
                "jitter",
                self.jitter,
                format!("must not exceed interval = {}", fmt_duration(self.interval)),
            ));
        }
        if !matches!(
            self.stale_status,
            HealthStatus::Unknown | HealthStatus::Critical
        ) {
            return Err(HealthError::config(
                what,
                "stale_status",
                self.stale_status,
                "must be Unknown or Critical: an old result proves nothing",
            ));
        }
        Ok(())
    }
}

/// Limits and knobs of one [`crate::HealthMonitor`].
#[derive(Debug, Clone, PartialEq)]
pub struct MonitorConfig {
    /// Most checks registered at once.
    pub checks_max: NonZeroUsize,
    /// Most check runs in flight at once; due checks beyond it wait in a FIFO (one slot each).
    pub concurrent_runs_max: NonZeroUsize,
    /// Capacity of the transition broadcast channel (a slower receiver sees `Lagged`).
    pub transitions_capacity: NonZeroUsize,
    /// Run records kept per check.
    pub history_len: NonZeroUsize,
    /// Longest kept result message, in bytes (longer ones are cut and end in `...`).
    pub message_bytes_max: NonZeroUsize,
    /// Least time between two snapshot publications caused only by routine results; a status
    /// transition publishes at once.
    pub snapshot_interval_min: Duration,
    /// Most `run_now` callers waiting on one check.
    pub run_now_waiters_max: NonZeroUsize,
    /// Seed of the jitter RNG (same seed, same schedule).
    pub seed: u64,
}

impl MonitorConfig {
    /// 10,000 checks, 64 concurrent runs, 1,024 buffered transitions, 32 run records per check,
    /// 1 KiB messages, routine snapshots at most every 1 s (a transition publishes at once, and
    /// `overall()` is always fresh: the throttle only bounds the cost of copying every check's
    /// detail, which dominated the monitor's CPU at 100 ms), 16 `run_now` waiters, seed 0.
    #[must_use]
    pub const fn standard() -> MonitorConfig {
        MonitorConfig {
            checks_max: nzu(10_000),
            concurrent_runs_max: nzu(64),
            transitions_capacity: nzu(1024),
            history_len: nzu(32),
            message_bytes_max: nzu(1024),
            snapshot_interval_min: Duration::from_secs(1),
            run_now_waiters_max: nzu(16),
            seed: 0,
        }
    }

    /// Check every field.
    pub fn validate(&self) -> Result<(), HealthError> {
        if self.snapshot_interval_min > Duration::from_secs(60) {
            return Err(HealthError::config(
                "monitor",
                "snapshot_interval_min",
                self.snapshot_interval_min,
                "must be at most 60s or snapshots go stale",
            ));
        }
        if self.message_bytes_max.get() < 16 {
            return Err(HealthError::config(
                "monitor",
                "message_bytes_max",
                self.message_bytes_max,
                "must be at least 16 bytes to say anything useful",
            ));
        }
        Ok(())
    }
}

/// Retries of a recovery action after its check turned critical.
#[derive(Debug, Clone, PartialEq)]
pub struct RecoveryPolicy {
    /// Most attempts per transition to critical (the first one included).
    pub attempts_max: NonZeroU32,
    /// Wait after the first failed attempt; doubles after each further one.
    pub backoff_initial: Duration,
    /// Longest wait between attempts.
    pub backoff_max: Duration,
    /// Longest one attempt may take; a slower attempt counts as failed.
    pub attempt_timeout: Duration,
}

/// Largest accepted `RecoveryPolicy::attempts_max`.
pub const RECOVERY_ATTEMPTS_MAX: u32 = 100;

impl RecoveryPolicy {
    /// 3 attempts, 1 s then 2 s backoff (capped at 30 s), 10 s per attempt.
    #[must_use]
    pub const fn standard() -> RecoveryPolicy {
        RecoveryPolicy {
            attempts_max: nz32(3),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            attempt_timeout: Duration::from_secs(10),
        }
    }

    /// Check every field; `what` names the check in the error.
    pub fn validate(&self, what: &str) -> Result<(), HealthError> {
        if self.attempts_max.get() > RECOVERY_ATTEMPTS_MAX {
            return Err(HealthError::config(
                what,
                "recovery.attempts_max",
                self.attempts_max,
                format!("must be at most {RECOVERY_ATTEMPTS_MAX}"),
            ));
        }
        if self.backoff_max < self.backoff_initial {
            return Err(HealthError::config(
                what,
                "recovery.backoff_max",
                self.backoff_max,
                format!(
                    "must be at least backoff_initial = {}",
                    fmt_duration(self.backoff_initial)
                ),
            ));
        }
        if self.attempt_timeout.is_zero() {
            return Err(HealthError::config(
                what,
                "recovery.attempt_timeout",
                self.attempt_timeout,
                "must be greater than zero",
            ));
        }
        Ok(())
    }
}
