//! Process memory check: resident set size from `/proc/<pid>/statm`.

use std::path::PathBuf;

use quorate_health_api::{CheckFuture, CheckResult, HealthCheck, HealthStatus};

use crate::HealthError;

/// Resident memory of this process (or another, via [`MemoryCheck::for_statm_file`]): critical
/// above `critical_above` bytes, warning above `warn_above`, passing otherwise; critical if
/// `statm` cannot be read. Observed value: RSS bytes.
#[derive(Debug, Clone)]
pub struct MemoryCheck {
    statm: PathBuf,
    warn_above: u64,
    critical_above: u64,
}

impl MemoryCheck {
    /// A check of this process's RSS.
    ///
    /// Errors: `warn_above > critical_above`.
    pub fn new(warn_above: u64, critical_above: u64) -> Result<MemoryCheck, HealthError> {
        MemoryCheck::for_statm_file("/proc/self/statm", warn_above, critical_above)
    }

    /// A check reading a `statm`-format file (e.g. `/proc/1234/statm` for another process).
    pub fn for_statm_file(
        statm: impl Into<PathBuf>,
        warn_above: u64,
        critical_above: u64,
    ) -> Result<MemoryCheck, HealthError> {
        if warn_above > critical_above {
            return Err(HealthError::InvalidCheckSetup {
                check: "memory",
                reason: format!(
                    "warn_above = {warn_above} bytes exceeds critical_above = {critical_above} bytes"
                ),
            });
        }
        Ok(MemoryCheck {
            statm: statm.into(),
            warn_above,
            critical_above,
        })
    }
}

/// RSS in bytes from the contents of a `statm` file (second field, in pages).
pub(crate) fn rss_from_statm(contents: &str, page_size: u64) -> Option<u64> {
    let pages: u64 = contents.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages.saturating_mul(page_size))
}

impl HealthCheck for MemoryCheck {
    fn check(&self) -> CheckFuture<'_> {
        Box::pin(async move {
            // /proc files are generated in memory: reading one does not block on a disk.
            let contents = match std::fs::read_to_string(&self.statm) {
                Ok(c) => c,
                Err(e) => {
                    return CheckResult::critical(format!(
                        "cannot read {}: {e}",
                        self.statm.display()
                    ));
                }
            };
            let page_size = rustix::param::page_size() as u64;
            let Some(rss) = rss_from_statm(&contents, page_size) else {
                return CheckResult::critical(format!(
                    "cannot parse {}: {contents:?}",
                    self.statm.display()
                ));
            };
            let (status, detail) = if rss > self.critical_above {
                (
                    HealthStatus::Critical,
                    format!(", above {} bytes", self.critical_above),
                )
            } else if rss > self.warn_above {
                (
                    HealthStatus::Warning,
                    format!(", above {} bytes", self.warn_above),
                )
            } else {
                (HealthStatus::Passing, String::new())
            };
            CheckResult::new(status, format!("RSS {rss} bytes{detail}")).with_observed(rss as f64)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_statm() {
        assert_eq!(
            rss_from_statm("1000 250 30 1 0 100 0\n", 4096),
            Some(250 * 4096)
        );
        assert_eq!(rss_from_statm("1000", 4096), None);
        assert_eq!(rss_from_statm("a b", 4096), None);
    }
}
