//! The one process runner of quorate: runs an external program in its own process group with
//! bounded output and an optional timeout, and never leaves the group behind. The command
//! check ([`crate::checks::CommandCheck`]) and the agent's role hooks both use it.
//!
//! What it guarantees:
//! - **Own process group.** The program is the leader of a new process group; everything it
//!   starts stays in that group unless it leaves on purpose (`setsid`).
//! - **No survivors on timeout or cancel.** When the timeout fires, or when the future of
//!   [`run`] is dropped (a caller's own timeout, a shutdown), the whole group gets SIGKILL,
//!   background children included. A program that exits normally is not touched: what it left
//!   running in the background (a daemon it started) keeps running.
//! - **Bounded memory.** At most `output_bytes_max` bytes of stdout and as many of stderr are
//!   kept; the rest is read and dropped (counted), so the program never blocks on a full pipe
//!   and a program printing gigabytes costs the caller a fixed buffer.
//!
//! A background child that keeps the program's stdout or stderr open keeps the run going until
//! it closes them (or the timeout kills it): redirect a daemon's output (`app >/dev/null 2>&1 &`).

use std::ffi::OsStr;
use std::os::unix::process::ExitStatusExt as _;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

/// How long [`run`] waits for the killed program to be reaped after a timeout. SIGKILL cannot
/// be ignored, so this is only reached if the kernel is stuck (e.g. a process in `D` state).
pub const REAP_AFTER_KILL_MAX: Duration = Duration::from_secs(1);

/// Size of one read from a pipe (one pipe buffer on Linux).
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProcessEnd {
    /// The program exited with this code.
    Exited(i32),
    /// The program was killed by this signal (not by the runner).
    Signaled(i32),
    /// The timeout passed; the process group was sent SIGKILL.
    TimedOut(Duration),
    /// The program could not be started (not found, not executable, ...); the reason.
    NotStarted(String),
    /// Waiting for the program failed; the reason. The process group was sent SIGKILL.
    WaitFailed(String),
}

/// The result of [`run`]: how the program ended and its output, bounded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessOutcome {
    /// How it ended.
    pub end: ProcessEnd,
    /// The first `output_bytes_max` bytes of stdout.
    pub stdout: Vec<u8>,
    /// The first `output_bytes_max` bytes of stderr.
    pub stderr: Vec<u8>,
    /// Bytes of output (stdout and stderr) read and dropped beyond the bound.
    pub output_bytes_dropped: u64,
}

impl ProcessOutcome {
    /// Whether the program exited with code 0.
    pub fn success(&self) -> bool {
        self.end == ProcessEnd::Exited(0)
    }

    /// The exit code, if the program exited.
    pub fn code(&self) -> Option<i32> {
        match self.end {
            ProcessEnd::Exited(c) => Some(c),
            _ => None,
        }
    }

    /// Stdout then stderr (on a new line when both are present), lossily decoded, trailing
    /// whitespace trimmed. Bounded by twice `output_bytes_max`.
    pub fn output_text(&self) -> String {
        let mut text = String::from_utf8_lossy(&self.stdout).trim_end().to_owned();
        let stderr = String::from_utf8_lossy(&self.stderr);
        let stderr = stderr.trim_end();
        if !stderr.is_empty() {
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(stderr);
        }
        text
    }
}

/// Sends SIGKILL to a process group when dropped, unless disarmed.
struct KillGroupOnDrop(Option<rustix::process::Pid>);

impl KillGroupOnDrop {
    fn kill_now(&mut self) {
        if let Some(pgid) = self.0.take() {
            // The group may be gone already; nothing else to do then.
            let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
        }
    }
}

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        self.kill_now();
    }
}

/// The kept head of one output stream and the count of bytes dropped after it.
#[derive(Default)]
struct Bounded {
    kept: Vec<u8>,
    dropped: u64,
}

impl Bounded {
    /// Reads `reader` to its end (or an error), keeping the first `max` bytes.
    async fn read_all<R: AsyncRead + Unpin>(&mut self, reader: Option<R>, max: usize) {
        let Some(mut reader) = reader else { return };
        let mut buf = vec![0u8; READ_CHUNK_BYTES];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let take = n.min(max.saturating_sub(self.kept.len()));
                    self.kept.extend_from_slice(&buf[..take]);
                    self.dropped = self.dropped.saturating_add((n - take) as u64);
                }
            }
        }
    }
}

/// Runs `program` (no shell: give `sh` and `["-c", script]` for one) with `args`, `env` added to
/// the inherited environment, stdin closed, in its own process group.
///
/// - Keeps at most `output_bytes_max` bytes of each of stdout and stderr (see
///   [`ProcessOutcome::output_bytes_dropped`] for the rest).
/// - With `Some(timeout)`: when it passes, the whole group gets SIGKILL and the outcome is
///   [`ProcessEnd::TimedOut`] with the output read so far. With `None` the caller bounds the
///   run by dropping the future, which also kills the group.
/// - Never panics; a program that cannot be started is [`ProcessEnd::NotStarted`].
///
/// ```
/// use quorate_health::process::{run, ProcessEnd};
/// use std::time::Duration;
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(async {
/// let out = run("sh", ["-c", "echo hi $WHO; sleep 5 & sleep 5"], [("WHO", "there")],
///               Some(Duration::from_millis(200)), 1024).await;
/// assert_eq!(out.stdout, b"hi there\n");
/// // Both sleeps (the shell's background child too) were killed.
/// assert_eq!(out.end, ProcessEnd::TimedOut(Duration::from_millis(200)));
/// # });
/// ```
pub async fn run<A, E, K, V>(
    program: impl AsRef<OsStr>,
    args: A,
    env: E,
    timeout: Option<Duration>,
    output_bytes_max: usize,
) -> ProcessOutcome
where
    A: IntoIterator,
    A::Item: AsRef<OsStr>,
    E: IntoIterator<Item = (K, V)>,
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
{
    let mut out = Bounded::default();
    let mut err = Bounded::default();
    let end = run_inner(
        program.as_ref(),
        args,
        env,
        timeout,
        output_bytes_max,
        &mut out,
        &mut err,
    )
    .await;
    ProcessOutcome {
        end,
        stdout: out.kept,
        stderr: err.kept,
        output_bytes_dropped: out.dropped.saturating_add(err.dropped),
    }
}

async fn run_inner<A, E, K, V>(
    program: &OsStr,
    args: A,
    env: E,
    timeout: Option<Duration>,
    output_bytes_max: usize,
    out: &mut Bounded,
    err: &mut Bounded,
) -> ProcessEnd
where
    A: IntoIterator,
    A::Item: AsRef<OsStr>,
    E: IntoIterator<Item = (K, V)>,
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
{
    let mut child = match Command::new(program)
        .args(args)
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
    {
        Ok(child) => child,
        Err(e) => return ProcessEnd::NotStarted(e.to_string()),
    };
    // The child leads its own group: the group id is its pid.
    let mut group = KillGroupOnDrop(
        child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .and_then(rustix::process::Pid::from_raw),
    );
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let mut exited = None;
    let work = async {
        let wait = async { exited = Some(child.wait().await) };
        tokio::join!(
            wait,
            out.read_all(stdout, output_bytes_max),
            err.read_all(stderr, output_bytes_max),
        );
    };
    let finished = match timeout {
        None => {
            work.await;
            true
        }
        Some(limit) => tokio::time::timeout(limit, work).await.is_ok(),
    };
    match (finished, exited) {
        (true, Some(Ok(status))) => {
            // Exited and reaped: its pid (the group id) may be reused now, so never signal it.
            group.0 = None;
            match (status.code(), status.signal()) {
                (Some(code), _) => ProcessEnd::Exited(code),
                (None, Some(signal)) => ProcessEnd::Signaled(signal),
                (None, None) => ProcessEnd::WaitFailed(format!("unknown exit status {status}")),
            }
        }
        (true, Some(Err(e))) => {
            group.kill_now();
            ProcessEnd::WaitFailed(e.to_string())
        }
        (true, None) => {
            group.kill_now();
            ProcessEnd::WaitFailed("the program was not waited for".to_owned())
        }
        (false, leader) => {
            // Timed out. If the leader has exited and was reaped, whoever still holds its
            // output pipes is most likely in its group, which keeps the group id from being
            // reused (Linux frees a pid number only when no process uses it as a pid, group
            // or session id), so the group kill below cannot hit a stranger in practice.
            group.kill_now();
            if leader.is_none() {
                // Reap the leader (a zombie otherwise until tokio's orphan reaper gets to it).
                let _ = tokio::time::timeout(REAP_AFTER_KILL_MAX, child.wait()).await;
            }
            ProcessEnd::TimedOut(timeout.unwrap_or_default())
        }
    }
}
