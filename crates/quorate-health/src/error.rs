//! The one error type of `quorate-health`.

use std::time::Duration;

use quorate_health_api::{CheckId, ComponentType, HealthApiError};

/// Everything the monitor and the built-in checks can refuse.
///
/// Every variant leaves the monitor unchanged (nothing registered, enabled or run) unless its
/// doc says otherwise.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HealthError {
    /// A check id failed validation.
    #[error(transparent)]
    InvalidCheckId(#[from] HealthApiError),
    /// `register` was called with an id that is already registered.
    #[error("check {id:?} is already registered; deregister it first or pick another id")]
    DuplicateCheck {
        /// The id.
        id: CheckId,
    },
    /// The id names no registered check.
    #[error("no check {id:?} is registered; register it first (see HealthMonitor::register)")]
    UnknownCheck {
        /// The id as given.
        id: String,
    },
    /// A field of a check's or the monitor's configuration is out of range.
    #[error("health config: {what}.{field} = {value} is invalid: {reason}")]
    InvalidConfig {
        /// The check id, or `"monitor"` for `MonitorConfig`.
        what: String,
        /// The field name.
        field: &'static str,
        /// The rejected value, formatted.
        value: String,
        /// What the value must be.
        reason: String,
    },
    /// A check of an external component was put in the liveness group.
    #[error(
        "check {id:?} watches a {component_type} (external) and cannot be in the liveness group: \
         an outage of a shared dependency would make every instance restart; put it in readiness only"
    )]
    LivenessDependsOnExternal {
        /// The check id.
        id: CheckId,
        /// Its component type.
        component_type: ComponentType,
    },
    /// The monitor holds `max` checks already.
    #[error(
        "cannot register check {id:?}: the monitor already holds checks_max = {max} checks; raise MonitorConfig::checks_max or deregister some"
    )]
    TooManyChecks {
        /// The rejected id.
        id: CheckId,
        /// The configured limit.
        max: usize,
    },
    /// `run_now` on a disabled check.
    #[error("check {id:?} is disabled; enable it before running it")]
    CheckDisabled {
        /// The check id.
        id: CheckId,
    },
    /// `run_now` while the whole monitor is disabled.
    #[error("the health monitor is disabled; call enable_monitor() first")]
    MonitorDisabled,
    /// Too many `run_now` callers are already waiting for this check.
    #[error("check {id:?} already has {max} run_now callers waiting; retry after they finish")]
    RunNowBusy {
        /// The check id.
        id: CheckId,
        /// The configured limit (`MonitorConfig::run_now_waiters_max`).
        max: usize,
    },
    /// The check was deregistered or disabled while a `run_now` waited for it; no result.
    #[error("check {id:?} was deregistered or disabled before its run completed")]
    RunAbandoned {
        /// The check id.
        id: CheckId,
    },
    /// The monitor has shut down (or every handle was dropped).
    #[error("the health monitor has stopped; start a new one")]
    Stopped,
    /// A built-in check could not be set up from its arguments.
    #[error("{check} check: {reason}")]
    InvalidCheckSetup {
        /// Which built-in check (`"http"`, `"redis"`, ...).
        check: &'static str,
        /// What is wrong and how to fix it.
        reason: String,
    },
}

impl HealthError {
    pub(crate) fn config(
        what: impl Into<String>,
        field: &'static str,
        value: impl std::fmt::Debug,
        reason: impl Into<String>,
    ) -> HealthError {
        HealthError::InvalidConfig {
            what: what.into(),
            field,
            value: format!("{value:?}"),
            reason: reason.into(),
        }
    }
}

/// Format a duration for messages (`1.5s`, `250ms`).
pub(crate) fn fmt_duration(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        let secs = d.as_secs_f64();
        if secs.fract() == 0.0 {
            format!("{}s", d.as_secs())
        } else {
            format!("{secs:.3}s")
        }
    } else if d >= Duration::from_millis(1) && d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}us", d.as_micros())
    }
}
