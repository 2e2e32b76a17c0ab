//! End-to-end: `quorate demo --chaos 2` starts three real agent processes on loopback, kills
//! the primary with SIGKILL twice, and must see a new primary each time. The hook log written
//! by the agents' `on_promote` commands must show fencing tokens that strictly increase in the
//! order of promotions (a stale primary can never outrank a newer one).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test")]

use std::process::Command;

#[test]
fn demo_fails_over_twice_with_increasing_tokens() {
    let out = Command::new(env!("CARGO_BIN_EXE_quorate"))
        .args(["demo", "--chaos", "2", "--keep", "--wait-secs", "60"])
        .output()
        .expect("running quorate demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert_eq!(
        stdout.matches("] failover ").count(),
        2,
        "two failovers expected:\n{stdout}"
    );
    let kept = stdout
        .lines()
        .find_map(|l| l.strip_prefix("kept "))
        .expect("demo prints the kept directory");
    let log =
        std::fs::read_to_string(std::path::Path::new(kept).join("actions.log")).expect("hook log");
    let tokens: Vec<u64> = log
        .lines()
        .filter(|l| l.contains(" promote "))
        .map(|l| {
            l.rsplit("token=")
                .next()
                .and_then(|t| t.trim().parse().ok())
                .expect("token in hook log line")
        })
        .collect();
    assert!(
        tokens.len() >= 3,
        "initial promotion plus two failovers:\n{log}"
    );
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "fencing tokens must strictly increase across promotions:\n{log}"
    );
    let _ = std::fs::remove_dir_all(kept);
}

#[test]
fn bad_config_reports_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "cluster_name = \"x\"\nnode_id = \"Bad Id\"\ndata_dir = \"/tmp/x\"\n\
         [raft]\nlisten = \"nowhere\"\nvoters = {}\n[gossip]\nlisten = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_quorate"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for field in [
        "node_id",
        "cluster_key",
        "raft.voters",
        "raft.listen",
        "gossip.seeds",
    ] {
        assert!(err.contains(field), "{field} not reported:\n{err}");
    }
}
