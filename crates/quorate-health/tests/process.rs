//! The process runner (`quorate_health::process::run`) against real programs: exit codes,
//! environment, bounded output, and no survivor of its process group after a timeout or a
//! cancel.
//!
//! Real time (real programs); waits poll with a generous deadline; no duration is asserted.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test")]

use std::path::Path;
use std::time::Duration;

use quorate_health::process::{ProcessEnd, run};

const NO_ENV: [(&str, &str); 0] = [];

fn sh(script: &str) -> [&str; 2] {
    ["-c", script]
}

/// State and process group of `pid`, from /proc/PID/stat.
fn stat(pid: u32) -> Option<(char, u32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let mut f = rest.split(' ');
    let state = f.next()?.chars().next()?;
    let _ppid = f.next()?;
    let pgid = f.next()?.parse().ok()?;
    Some((state, pgid))
}

/// Live (not zombie) processes in process group `pgid`.
fn live_in_group(pgid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .filter(|pid| matches!(stat(*pid), Some((s, g)) if g == pgid && s != 'Z'))
        .collect()
}

/// Polls until group `pgid` has no live member; panics naming the survivors after 10 s.
async fn assert_group_gone(pgid: u32) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = live_in_group(pgid);
        if left.is_empty() {
            return;
        }
        if std::time::Instant::now() > deadline {
            for pid in &left {
                let _ = std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status();
            }
            panic!("process group {pgid} still has live members: {left:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn read_pid(path: &Path) -> u32 {
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn vm_hwm_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn exit_codes_signals_env_and_start_failures() {
    let out = run(
        "sh",
        sh("echo \"$A-$B\"; echo err >&2; exit 3"),
        [("A", "x"), ("B", "y")],
        None,
        100,
    )
    .await;
    assert_eq!(out.end, ProcessEnd::Exited(3));
    assert_eq!(out.code(), Some(3));
    assert!(!out.success());
    assert_eq!(out.stdout, b"x-y\n");
    assert_eq!(out.stderr, b"err\n");
    assert_eq!(out.output_text(), "x-y\nerr");
    assert_eq!(out.output_bytes_dropped, 0);

    let out = run("sh", sh("true"), NO_ENV, Some(Duration::from_secs(60)), 100).await;
    assert!(out.success(), "{out:?}");

    let out = run("sh", sh("kill -9 $$"), NO_ENV, None, 100).await;
    assert_eq!(out.end, ProcessEnd::Signaled(9));

    let out = run(
        "/nonexistent/quorate-x",
        NO_ENV.map(|(k, _)| k),
        NO_ENV,
        None,
        100,
    )
    .await;
    assert!(
        matches!(&out.end, ProcessEnd::NotStarted(e) if e.contains("No such file")),
        "{out:?}"
    );
}

#[tokio::test]
async fn timeout_kills_the_whole_group_and_keeps_the_output_so_far() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("sh.pid");
    let script = format!(
        "echo $$ > {}; echo started; sleep 100 & sleep 100",
        pidfile.display()
    );
    let out = run(
        "sh",
        sh(&script),
        NO_ENV,
        Some(Duration::from_millis(300)),
        100,
    )
    .await;
    assert_eq!(out.end, ProcessEnd::TimedOut(Duration::from_millis(300)));
    assert_eq!(out.stdout, b"started\n");
    let pgid = read_pid(&pidfile);
    assert_group_gone(pgid).await;
}

#[tokio::test]
async fn a_dropped_run_kills_the_whole_group() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("sh.pid");
    let script = format!("echo $$ > {}; sleep 100 & sleep 100", pidfile.display());
    let running = run("sh", sh(&script), NO_ENV, None, 100);
    // The caller's own timeout (as the health monitor or the failover manager applies one).
    let r = tokio::time::timeout(Duration::from_millis(300), running).await;
    assert!(r.is_err(), "the run should still be going: {r:?}");
    let pgid = read_pid(&pidfile);
    assert_group_gone(pgid).await;
}

#[tokio::test]
async fn a_background_daemon_of_a_finished_program_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("daemon.pid");
    // A hook that starts a service in the background, its output redirected, and exits.
    let script = format!(
        "sleep 100 >/dev/null 2>&1 & echo $! > {}",
        pidfile.display()
    );
    let out = run(
        "sh",
        sh(&script),
        NO_ENV,
        Some(Duration::from_secs(60)),
        100,
    )
    .await;
    assert!(out.success(), "{out:?}");
    let daemon = read_pid(&pidfile);
    let alive = matches!(stat(daemon), Some((s, _)) if s != 'Z');
    let _ = std::process::Command::new("kill")
        .args(["-9", &daemon.to_string()])
        .status();
    assert!(alive, "the background process {daemon} was killed");
}

#[tokio::test]
async fn printing_1_gb_keeps_the_bound_and_the_rss_flat() {
    let before = vm_hwm_kib();
    let out = run(
        "sh",
        sh("yes | head -c 1000000000; yes | head -c 1000000 >&2"),
        NO_ENV,
        Some(Duration::from_secs(120)),
        4096,
    )
    .await;
    let after = vm_hwm_kib();
    assert_eq!(out.end, ProcessEnd::Exited(0));
    assert_eq!(out.stdout.len(), 4096);
    assert_eq!(out.stderr.len(), 4096);
    assert!(out.stdout.starts_with(b"y\ny\n"));
    assert_eq!(
        out.output_bytes_dropped,
        1_000_000_000 + 1_000_000 - 2 * 4096
    );
    let grown_mib = after.saturating_sub(before) / 1024;
    assert!(
        grown_mib < 64,
        "peak RSS grew by {grown_mib} MiB ({before} kB -> {after} kB) while a program printed 1 GB"
    );
}
