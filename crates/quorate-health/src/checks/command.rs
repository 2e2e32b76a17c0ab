//! External command check (Consul's script check): exit 0 passing, 1 warning, anything else
//! critical; output captured and truncated; on timeout the whole process group is killed. The
//! program runs through [`crate::process::run`], the runner the agent's role hooks use too.

use std::ffi::OsString;

use quorate_health_api::{CheckFuture, CheckResult, HealthCheck, HealthStatus, truncate_message};

use crate::HealthError;
use crate::process::{self, ProcessEnd};

/// Output kept by default, in bytes.
pub const OUTPUT_BYTES_MAX_DEFAULT: usize = 4096;

/// Runs a program (no shell) with stdin closed: exit code 0 passing, 1 warning, any other code
/// or a signal critical. Message: stdout then stderr, lossily decoded, cut to
/// `output_bytes_max` (the rest is read and discarded so the program never blocks on a full
/// pipe). The program runs in its own process group; if the run is dropped (the monitor's
/// timeout, a disable), the group is sent SIGKILL, children included. Observed value: the exit
/// code.
#[derive(Debug, Clone)]
pub struct CommandCheck {
    program: OsString,
    args: Vec<OsString>,
    output_bytes_max: usize,
}

impl CommandCheck {
    /// A check running `program` with `args`.
    pub fn new<I, S>(program: impl Into<OsString>, args: I) -> Result<CommandCheck, HealthError>
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let program = program.into();
        if program.is_empty() {
            return Err(HealthError::InvalidCheckSetup {
                check: "command",
                reason: "the program is empty; give a path or a name on PATH".to_owned(),
            });
        }
        Ok(CommandCheck {
            program,
            args: args.into_iter().map(Into::into).collect(),
            output_bytes_max: OUTPUT_BYTES_MAX_DEFAULT,
        })
    }

    /// Keep at most `bytes` of output (at least 16).
    #[must_use]
    pub fn with_output_bytes_max(mut self, bytes: usize) -> CommandCheck {
        self.output_bytes_max = bytes.max(16);
        self
    }

    fn name(&self) -> String {
        self.program.to_string_lossy().into_owned()
    }
}

pub(crate) fn status_for_exit(code: Option<i32>) -> HealthStatus {
    match code {
        Some(0) => HealthStatus::Passing,
        Some(1) => HealthStatus::Warning,
        _ => HealthStatus::Critical,
    }
}

impl HealthCheck for CommandCheck {
    fn check(&self) -> CheckFuture<'_> {
        Box::pin(async move {
            // Keep one byte more than the limit so truncation can be seen and marked. No
            // timeout of its own: the monitor drops this future at its timeout, which kills
            // the process group.
            let outcome = process::run(
                &self.program,
                &self.args,
                std::iter::empty::<(&str, &str)>(),
                None,
                self.output_bytes_max + 1,
            )
            .await;
            let mut output = outcome.output_text();
            truncate_message(&mut output, self.output_bytes_max);
            let name = self.name();
            let code = outcome.code();
            let mut result = CheckResult::new(
                status_for_exit(code),
                match outcome.end {
                    ProcessEnd::NotStarted(e) => format!("cannot start {name}: {e}"),
                    ProcessEnd::WaitFailed(e) => format!("waiting for {name} failed: {e}"),
                    ProcessEnd::TimedOut(after) => {
                        format!("{name} timed out after {after:?} {output}")
                    }
                    ProcessEnd::Signaled(sig) => {
                        format!("{name} was killed by a signal ({sig}) {output}")
                    }
                    ProcessEnd::Exited(c) if output.is_empty() => {
                        format!("{name} exited with {c}")
                    }
                    ProcessEnd::Exited(_) => output,
                },
            );
            if let Some(c) = code {
                result = result.with_observed(f64::from(c));
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_map_like_consul() {
        assert_eq!(status_for_exit(Some(0)), HealthStatus::Passing);
        assert_eq!(status_for_exit(Some(1)), HealthStatus::Warning);
        assert_eq!(status_for_exit(Some(2)), HealthStatus::Critical);
        assert_eq!(status_for_exit(Some(-1)), HealthStatus::Critical);
        assert_eq!(status_for_exit(None), HealthStatus::Critical);
    }
}
