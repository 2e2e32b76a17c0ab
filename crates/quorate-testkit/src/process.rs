//! Processes and ports: free loopback ports, peak RSS, the built `quorate` binary, and
//! [`poll_until`].

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use crate::TestkitError;

/// The environment variable naming the `quorate` binary that tests and benchmarks run.
pub const QUORATE_BIN_ENV: &str = "QUORATE_BIN";

/// A loopback port free for both TCP and UDP, reserved for the rest of this process: see
/// [`quorate_testports::free_port`].
pub fn free_port() -> Result<u16, TestkitError> {
    quorate_testports::free_port().map_err(|e| TestkitError::io("finding a free loopback port", &e))
}

/// Peak resident memory of process `pid` in KiB (`VmHWM` of `/proc/PID/status`).
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Finds the `quorate` binary: env `QUORATE_BIN`, else a file named `quorate` next to the
/// running executable or one directory up (bench binaries live in `target/<profile>/`, test
/// binaries in `target/<profile>/deps/`, examples in `target/<profile>/examples/`).
pub fn locate_quorate_binary() -> Result<PathBuf, TestkitError> {
    if let Some(p) = std::env::var_os(QUORATE_BIN_ENV) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(TestkitError::io(
                format!("{QUORATE_BIN_ENV}={}", p.display()),
                &"not a file: point it at a built `quorate` binary",
            ))
        };
    }
    let exe = std::env::current_exe()
        .map_err(|e| TestkitError::io("finding the running executable", &e))?;
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|d| d.join("quorate"))
        .collect();
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            TestkitError::io(
                format!("finding the quorate binary (looked at {candidates:?})"),
                &format!(
                    "not built: run `cargo build -p quorate --bin quorate` (add --release for benchmarks) first, or set {QUORATE_BIN_ENV}"
                ),
            )
        })
}

/// Polls `probe` every `every` until it returns `Some`, or `deadline` passes (then `None`).
/// Waiting on a condition with a deadline, never a bare sleep as synchronisation; the deadline
/// bounds a hang, it is not a timing assertion.
pub async fn poll_until<T, F, Fut>(deadline: Duration, every: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(v) = probe().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= end {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_peak_rss_is_readable() {
        assert!(peak_rss_kib(std::process::id()).is_some_and(|k| k > 0));
    }

    #[test]
    fn a_free_port_binds_tcp_and_udp() {
        let p = free_port().expect("port");
        assert!(std::net::TcpListener::bind(("127.0.0.1", p)).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn poll_until_returns_the_value_or_none_at_the_deadline() {
        let mut n = 0;
        let got = poll_until(Duration::from_secs(5), Duration::from_millis(10), || {
            n += 1;
            let v = (n == 3).then_some(n);
            async move { v }
        })
        .await;
        assert_eq!(got, Some(3));
        let never: Option<()> = poll_until(
            Duration::from_secs(1),
            Duration::from_millis(100),
            || async { None },
        )
        .await;
        assert_eq!(never, None);
    }
}
