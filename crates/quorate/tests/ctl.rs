//! `quorate agent` with an `[api]` section and `quorate ctl` against it, as real processes on
//! loopback: the agent starts the API stage; `ctl list` prints the tables and `--json` the
//! API's JSON; a switchover through `ctl` moves the role; `ctl history` shows it; a call
//! without the token fails with the API's 401; after a kill -9 of the primary, the survivors'
//! history shows the failover with its measured time; and an agent whose `[api]` has no token
//! refuses to start.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "test"
)]

mod common;

use std::path::{Path, PathBuf};

use common::{spawn_agent, until};
use quorate::api::model::{ClusterBody, RoleBody};
use quorate::config::{ApiSection, RoleSection};
use quorate_testkit::agents::{LoopbackPlan, write_config};
use quorate_testkit::process::free_port;
use tokio::process::{Child, Command};

const ROLE: &str = "app";

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn ctl(args: &[&str]) -> Out {
    let o = Command::new(env!("CARGO_BIN_EXE_quorate"))
        .arg("ctl")
        .args(args)
        .env_remove("QUORATE_API_TOKEN")
        .output()
        .await
        .unwrap();
    Out {
        ok: o.status.success(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// The role as node `url` sees it, through `ctl --json list`.
async fn role_via(url: &str, token: &Path) -> Option<RoleBody> {
    let o = ctl(&[
        "--url",
        url,
        "--token-file",
        token.to_str().unwrap(),
        "--json",
        "list",
    ])
    .await;
    if !o.ok {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&o.stdout).ok()?;
    let _: ClusterBody = serde_json::from_value(v["cluster"].clone()).ok()?;
    let roles: Vec<RoleBody> = serde_json::from_value(v["roles"].clone()).ok()?;
    roles.into_iter().find(|r| r.role == ROLE)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_drives_agents_through_their_api() {
    let dir = tempfile::tempdir().unwrap();
    let plan = LoopbackPlan::new("quorate-ctl-test", 3, dir.path()).unwrap();
    let token = dir.path().join("api.token");
    quorate::config::write_new_key_file(&token).unwrap();
    let mut urls = Vec::new();
    let mut configs: Vec<PathBuf> = Vec::new();
    for i in 0..3 {
        let url = format!("127.0.0.1:{}", free_port().unwrap());
        let t = token.clone();
        let u = url.clone();
        configs.push(
            write_config(&plan, i, dir.path(), move |c| {
                c.roles.push(RoleSection::named(ROLE));
                c.api = Some(ApiSection {
                    listen: u,
                    token_file: Some(t),
                    ..ApiSection::default()
                });
            })
            .unwrap(),
        );
        urls.push(url);
    }
    let mut agents: Vec<Option<Child>> = configs.iter().map(|c| Some(spawn_agent(c))).collect();

    let primary = until("a primary every API reports", async || {
        let mut seen = Vec::new();
        for u in &urls {
            seen.push(role_via(u, &token).await?.holder?);
        }
        seen.windows(2)
            .all(|w| w[0] == w[1])
            .then(|| seen[0].clone())
    })
    .await;

    // Tables, reading address and token from the node's config.
    let n1 = configs[0].to_str().unwrap();
    let list = ctl(&["--config", n1, "list"]).await;
    assert!(list.ok, "{}", list.stderr);
    for word in [
        "member",
        "state",
        "primary of",
        "role",
        "token",
        "lease left",
        "n1",
        "n2",
        "n3",
    ] {
        assert!(
            list.stdout.contains(word),
            "{word} missing from:\n{}",
            list.stdout
        );
    }
    let explain = ctl(&["--config", n1, "explain", ROLE]).await;
    assert!(explain.ok, "{}", explain.stderr);
    assert!(
        explain.stdout.contains("candidate #1"),
        "{}",
        explain.stdout
    );

    // Without the token: the API's 401, a non-zero exit.
    let denied = ctl(&["--url", &urls[0], "failback", ROLE]).await;
    assert!(!denied.ok);
    assert!(denied.stderr.contains("401"), "{}", denied.stderr);

    // Cancel with no hand-off under way: done, nothing moves.
    let cancel = ctl(&["--config", n1, "cancel", ROLE]).await;
    assert!(cancel.ok, "{}", cancel.stderr);
    assert_eq!(
        role_via(&urls[0], &token)
            .await
            .and_then(|r| r.holder)
            .as_deref(),
        Some(primary.as_str())
    );

    // A switchover through ctl moves the role.
    let target = if primary == "n1" { "n2" } else { "n1" };
    let sw = ctl(&["--config", n1, "switchover", ROLE, "--candidate", target]).await;
    assert!(sw.ok, "{}", sw.stderr);
    assert!(
        sw.stdout.contains(&format!("{target} chosen")),
        "{}",
        sw.stdout
    );
    until("the switchover seen by every API", async || {
        let mut all = true;
        for u in &urls {
            all &= role_via(u, &token).await?.holder.as_deref() == Some(target);
        }
        all.then_some(())
    })
    .await;
    let t = (target.as_bytes()[1] - b'1') as usize;
    let cfg_t = configs[t].to_str().unwrap().to_owned();
    until("the switchover in the new primary's history", async || {
        let h = ctl(&["--config", &cfg_t, "history", ROLE]).await;
        h.stdout.contains("manual switchover").then_some(())
    })
    .await;

    // kill -9 of the primary: a survivor becomes primary and its history has the failover.
    agents[t].take().unwrap().kill().await.unwrap();
    let survivors: Vec<usize> = (0..3).filter(|&i| i != t).collect();
    let new = until("a new primary after the kill", async || {
        let r = role_via(&urls[survivors[0]], &token).await?;
        r.holder.filter(|h| h != target)
    })
    .await;
    let ni = (new.as_bytes()[1] - b'1') as usize;
    let entry = until("the failover in the new primary's history", async || {
        let h = ctl(&["--url", &urls[ni], "--json", "history", ROLE]).await;
        let v: Vec<quorate::startup::HistoryEntry> = serde_json::from_str(&h.stdout).ok()?;
        v.into_iter()
            .rev()
            .find(|e| e.new_primary.as_deref() == Some(new.as_str()) && e.total_ms.is_some())
    })
    .await;
    assert!(entry.token.is_some(), "{entry:?}");
    println!(
        "failover after kill -9 of {target}: {new} took over, {} ms detection + {} ms promotion",
        entry.detection_ms.unwrap_or(0),
        entry.promotion_ms.unwrap_or(0)
    );
    for a in agents.iter_mut().filter_map(Option::as_mut) {
        let _ = a.kill().await;
    }
}

#[tokio::test]
async fn an_api_without_a_token_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let plan = LoopbackPlan::new("quorate-ctl-notoken", 1, dir.path()).unwrap();
    let config = write_config(&plan, 0, dir.path(), |c| {
        c.api = Some(ApiSection {
            listen: "0.0.0.0:0".into(),
            ..ApiSection::default()
        });
    })
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_quorate"))
        .arg("agent")
        .arg("--config")
        .arg(&config)
        .output()
        .await
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("api.token_file"), "{err}");
    assert!(err.contains("quorate keygen"), "{err}");
}
