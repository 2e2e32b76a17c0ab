//! Disk free space check (`statvfs` through `rustix`).

use std::path::PathBuf;

use quorate_health_api::{CheckFuture, CheckResult, HealthCheck, HealthStatus};

use crate::HealthError;

/// A free-space limit: below it the check warns or fails.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SpaceThreshold {
    /// Free bytes available to unprivileged users.
    Bytes(u64),
    /// Percent (0..=100) of the filesystem's size available to unprivileged users.
    Percent(f64),
}

impl SpaceThreshold {
    fn is_below(self, free: u64, total: u64) -> bool {
        match self {
            SpaceThreshold::Bytes(b) => free < b,
            SpaceThreshold::Percent(p) => percent(free, total) < p,
        }
    }
}

impl std::fmt::Display for SpaceThreshold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpaceThreshold::Bytes(b) => write!(f, "{b} bytes"),
            SpaceThreshold::Percent(p) => write!(f, "{p}%"),
        }
    }
}

fn percent(free: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        free as f64 * 100.0 / total as f64
    }
}

/// Free space on the filesystem holding `path`: critical below `critical_below`, warning below
/// `warn_below`, passing otherwise; critical if `statvfs` fails. Observed value: free bytes.
/// `statvfs` runs on tokio's blocking pool, so a hung mount cannot stall the runtime (the
/// monitor's timeout reports it).
#[derive(Debug, Clone)]
pub struct DiskSpaceCheck {
    path: PathBuf,
    warn_below: SpaceThreshold,
    critical_below: SpaceThreshold,
}

impl DiskSpaceCheck {
    /// A check of the filesystem holding `path`.
    ///
    /// Errors: a percentage outside 0..=100 (or NaN), or `critical_below` above `warn_below`
    /// when both use the same unit.
    pub fn new(
        path: impl Into<PathBuf>,
        warn_below: SpaceThreshold,
        critical_below: SpaceThreshold,
    ) -> Result<DiskSpaceCheck, HealthError> {
        for (name, t) in [
            ("warn_below", warn_below),
            ("critical_below", critical_below),
        ] {
            if let SpaceThreshold::Percent(p) = t
                && !(0.0..=100.0).contains(&p)
            {
                return Err(HealthError::InvalidCheckSetup {
                    check: "disk",
                    reason: format!("{name} = {p}% must be within 0..=100"),
                });
            }
        }
        let inverted = match (warn_below, critical_below) {
            (SpaceThreshold::Bytes(w), SpaceThreshold::Bytes(c)) => c > w,
            (SpaceThreshold::Percent(w), SpaceThreshold::Percent(c)) => c > w,
            _ => false,
        };
        if inverted {
            return Err(HealthError::InvalidCheckSetup {
                check: "disk",
                reason: format!(
                    "critical_below = {critical_below} is above warn_below = {warn_below}; \
                     the critical limit must be the smaller amount of free space"
                ),
            });
        }
        Ok(DiskSpaceCheck {
            path: path.into(),
            warn_below,
            critical_below,
        })
    }
}

impl HealthCheck for DiskSpaceCheck {
    fn check(&self) -> CheckFuture<'_> {
        Box::pin(async move {
            let path = self.path.clone();
            let stat = tokio::task::spawn_blocking(move || rustix::fs::statvfs(&path)).await;
            let stat = match stat {
                Ok(Ok(stat)) => stat,
                Ok(Err(e)) => {
                    return CheckResult::critical(format!(
                        "statvfs {} failed: {e}",
                        self.path.display()
                    ));
                }
                Err(e) => {
                    return CheckResult::critical(format!(
                        "statvfs {} did not complete: {e}",
                        self.path.display()
                    ));
                }
            };
            let free = stat.f_bavail.saturating_mul(stat.f_frsize);
            let total = stat.f_blocks.saturating_mul(stat.f_frsize);
            let (status, limit) = if self.critical_below.is_below(free, total) {
                (HealthStatus::Critical, Some(self.critical_below))
            } else if self.warn_below.is_below(free, total) {
                (HealthStatus::Warning, Some(self.warn_below))
            } else {
                (HealthStatus::Passing, None)
            };
            let mut message = format!(
                "{} free of {} bytes ({:.1}%) on {}",
                free,
                total,
                percent(free, total),
                self.path.display()
            );
            if let Some(limit) = limit {
                message.push_str(&format!(", below {limit}"));
            }
            CheckResult::new(status, message).with_observed(free as f64)
        })
    }
}
