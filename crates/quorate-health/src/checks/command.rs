//! External command check (Consul's script check): exit 0 passing, 1 warning, anything else
//! critical; output captured and truncated; on timeout the whole process group is killed.

use std::ffi::OsString;
use std::process::Stdio;

use quorate_health_api::{CheckFuture, CheckResult, HealthCheck, HealthStatus, truncate_message};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

use crate::HealthError;

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

/// Sends SIGKILL to a process group when dropped, unless disarmed.
struct KillGroupOnDrop(Option<rustix::process::Pid>);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.take() {
            // The group may be gone already; nothing else to do then.
            let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
        }
    }
}

/// Read everything from `reader`, keeping the first `max` bytes.
async fn read_bounded<R: AsyncRead + Unpin>(reader: Option<R>, max: usize) -> Vec<u8> {
    let Some(mut reader) = reader else {
        return Vec::new();
    };
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = max.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
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
            let mut child = match Command::new(&self.program)
                .args(&self.args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0)
                .kill_on_drop(true)
                .spawn()
            {
                Ok(child) => child,
                Err(e) => {
                    return CheckResult::critical(format!("cannot start {}: {e}", self.name()));
                }
            };
            let mut guard = KillGroupOnDrop(
                child
                    .id()
                    .and_then(|id| i32::try_from(id).ok())
                    .and_then(rustix::process::Pid::from_raw),
            );
            // Keep one byte more than the limit so truncation can be seen and marked.
            let keep = self.output_bytes_max + 1;
            let stdout = read_bounded(child.stdout.take(), keep);
            let stderr = read_bounded(child.stderr.take(), keep);
            let (status, stdout, stderr) = tokio::join!(child.wait(), stdout, stderr);
            // Exited and reaped: its pid (the group id) may be reused now, so never signal it.
            guard.0 = None;
            let status = match status {
                Ok(status) => status,
                Err(e) => {
                    return CheckResult::critical(format!(
                        "waiting for {} failed: {e}",
                        self.name()
                    ));
                }
            };
            let mut output = String::from_utf8_lossy(&stdout).trim_end().to_owned();
            let stderr = String::from_utf8_lossy(&stderr);
            let stderr = stderr.trim_end();
            if !stderr.is_empty() {
                if !output.is_empty() {
                    output.push('\n');
                }
                output.push_str(stderr);
            }
            truncate_message(&mut output, self.output_bytes_max);
            let code = status.code();
            let mut result = CheckResult::new(
                status_for_exit(code),
                match code {
                    Some(c) if output.is_empty() => format!("{} exited with {c}", self.name()),
                    Some(_) => output,
                    None => format!("{} was killed by a signal ({status}) {output}", self.name()),
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
