//! Policy and role configuration, named profiles and their validation.

// tidy:pure-core

use std::num::NonZeroU32;
use std::time::Duration;

use super::lease::LeaseConfig;
use crate::error::{ConfigErrors, FailoverError};

/// Automatic failback to a preferred (higher-priority) node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailbackConfig {
    /// Off by default: a running healthy primary is left alone.
    pub enabled: bool,
    /// The preferred node must have been an eligible candidate continuously for this long, and
    /// the current primary must have held the role for this long, before failback happens.
    pub hold_down: Duration,
    /// Catch-up guard: when replication lag is tracked, the preferred node's lag must be at most
    /// this (e.g. 0: fully caught up). `None`: the ordinary `max_lag` limit applies.
    pub max_lag: Option<u64>,
    /// Approval flow: a failback that is due (hold-down over, caught up) waits for an
    /// operator's approval (a manual failback, e.g. the Telegram bot's Approve button) instead
    /// of happening by itself; the role's status names the node it waits for. Off by default.
    pub approval: bool,
}

/// Anti-flap budget: at most `max_failovers` automatic failovers within any `window`; after that
/// only manual operations move the role, until the oldest counted failover leaves the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AntiFlapConfig {
    /// K: automatic failovers allowed per window.
    pub max_failovers: NonZeroU32,
    /// The sliding window.
    pub window: Duration,
}

/// Knobs of the failover policy of one role (timing of the lease itself is [`LeaseConfig`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyConfig {
    /// How long the primary may report itself unhealthy before it is replaced (when a candidate
    /// exists). Health damping happens upstream; this is the failover-level grace.
    pub unhealthy_grace: Duration,
    /// Replication lag limit for candidates, in the lag source's unit (bytes, ops). Only used
    /// when the observations say a lag source exists.
    pub max_lag: Option<u64>,
    /// Automatic failback.
    pub failback: FailbackConfig,
    /// Anti-flap budget.
    pub anti_flap: AntiFlapConfig,
    /// After a node's `before_promote` hook vetoes, it is not a candidate for this long.
    pub veto_backoff: Duration,
    /// How long a handover (switchover, failback, unhealthy primary) waits for the old primary
    /// to step down and the chosen successor to be promoted before it is given up.
    pub handover_timeout: Duration,
    /// Longest maintenance (pause) that may be requested at once; every pause expires.
    pub maintenance_max: Duration,
    /// Among candidates of the same priority, one that has been a candidate for at least this
    /// long is preferred to one that became a candidate more recently: a node that has just
    /// restarted or rejoined is still warming up (connections, catch-up), and handing it the
    /// role makes the hand-off slower. A preference only: a lone fresh candidate is still
    /// chosen at once.
    pub settle: Duration,
}

impl PolicyConfig {
    /// LAN profile: react within a second, three automatic failovers per 30 minutes, failback
    /// off (hold-down 5 minutes when turned on), pauses of at most a day.
    pub fn lan() -> Self {
        PolicyConfig {
            unhealthy_grace: Duration::from_secs(1),
            max_lag: None,
            failback: FailbackConfig {
                enabled: false,
                hold_down: Duration::from_secs(300),
                max_lag: None,
                approval: false,
            },
            anti_flap: AntiFlapConfig {
                max_failovers: NonZeroU32::new(3).unwrap_or(NonZeroU32::MIN),
                window: Duration::from_secs(30 * 60),
            },
            veto_backoff: Duration::from_secs(10),
            handover_timeout: Duration::from_secs(5),
            maintenance_max: Duration::from_secs(24 * 3600),
            settle: Duration::from_secs(2),
        }
    }

    /// WAN profile: slower to judge a primary unhealthy (5 s), longer handovers (30 s).
    pub fn wan() -> Self {
        PolicyConfig {
            unhealthy_grace: Duration::from_secs(5),
            veto_backoff: Duration::from_secs(30),
            handover_timeout: Duration::from_secs(30),
            settle: Duration::from_secs(10),
            ..Self::lan()
        }
    }

    /// Checks the policy knobs; reports every problem at once.
    pub fn validate(&self) -> Result<(), FailoverError> {
        let mut errors = ConfigErrors::default();
        self.collect_errors("policy", &mut errors);
        errors.into_result()
    }

    pub(crate) fn collect_errors(&self, section: &str, errors: &mut ConfigErrors) {
        let mut positive = |name: &str, value: Duration| {
            if value.is_zero() {
                errors.push(
                    format!("{section}.{name}"),
                    format!("{section}.{name} = 0 ms; it must be positive"),
                );
            }
        };
        positive("anti_flap.window", self.anti_flap.window);
        positive("handover_timeout", self.handover_timeout);
        positive("maintenance_max", self.maintenance_max);
        if self.failback.enabled {
            positive("failback.hold_down", self.failback.hold_down);
        }
        if self.failback.approval && !self.failback.enabled {
            errors.push(
                format!("{section}.failback.approval"),
                format!(
                    "{section}.failback.approval is on but failback is off: no failback would \
                     ever wait for approval; turn failback on, or approval off"
                ),
            );
        }
        if self.failback.enabled && self.failback.hold_down < self.unhealthy_grace {
            errors.push(
                format!("{section}.failback.hold_down"),
                format!(
                    "{section}.failback.hold_down = {} ms is below unhealthy_grace = {} ms: a node \
                     that just recovered could take the role back before its health is trusted; \
                     raise failback.hold_down",
                    self.failback.hold_down.as_millis(),
                    self.unhealthy_grace.as_millis()
                ),
            );
        }
        if let (Some(fb), Some(max)) = (self.failback.max_lag, self.max_lag)
            && fb > max
        {
            errors.push(
                format!("{section}.failback.max_lag"),
                format!(
                    "{section}.failback.max_lag = {fb} is above max_lag = {max}; the failback \
                     catch-up guard must be at least as strict as the candidate lag limit"
                ),
            );
        }
    }
}

/// Everything that configures one role: lease timing and policy, validated together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoleConfig {
    /// Timing of the primary lease.
    pub lease: LeaseConfig,
    /// Failover policy.
    pub policy: PolicyConfig,
}

impl RoleConfig {
    /// LAN profile for lease and policy.
    pub fn lan() -> Self {
        RoleConfig {
            lease: LeaseConfig::lan(),
            policy: PolicyConfig::lan(),
        }
    }

    /// WAN profile for lease and policy.
    pub fn wan() -> Self {
        RoleConfig {
            lease: LeaseConfig::wan(),
            policy: PolicyConfig::wan(),
        }
    }

    /// Checks lease and policy and how they fit together; reports every problem at once.
    ///
    /// Cross-checks: `handover_timeout` must cover at least one lease `ttl x (1 + drift)` (an old
    /// primary that does not step down on request loses its lease within that time, and a
    /// handover given up earlier would be abandoned while still possible).
    pub fn validate(&self) -> Result<(), FailoverError> {
        let mut errors = ConfigErrors::default();
        self.lease.collect_errors("lease", &mut errors);
        self.policy.collect_errors("policy", &mut errors);
        if self.policy.handover_timeout < self.lease.ttl_fast() {
            errors.push(
                "policy.handover_timeout".to_owned(),
                format!(
                    "policy.handover_timeout = {} ms is below lease ttl x (1 + drift) = {} ms: a \
                     handover would be given up before the old primary's lease could run out; \
                     raise policy.handover_timeout",
                    self.policy.handover_timeout.as_millis(),
                    self.lease.ttl_fast().as_millis()
                ),
            );
        }
        errors.into_result()
    }
}
