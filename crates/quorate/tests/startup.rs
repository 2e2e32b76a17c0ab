//! End-to-end tests of the node assembly on real `quorate agent` processes on loopback:
//! - SIGTERM of the primary hands the role to a successor, confirmed, before the agent exits;
//! - a kill -9 during each startup stage, then a restart, comes up clean;
//! - the service-manager protocol: `STATUS=` per stage, `READY=1`, `WATCHDOG=1` while the
//!   decision loop runs, `STOPPING=1`, read from a Unix datagram socket standing in for
//!   systemd's `NOTIFY_SOCKET`.
//!
//! Every wait has a deadline (a hang fails instead of eating CI); nothing asserts a timing.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "test"
)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use quorate::config::RoleSection;
use quorate::demo::{LoopbackPlan, to_toml};
use quorate::report::{NodeEvent, StageOutcome};
use quorate_coord_api::{Consistency, Coord};
use quorate_raft::client::{ClientConfig, CoordClient};
use quorate_raft::network::{ClientRequest, ClientResponse};
use quorate_wire::net::TokioNet;
use quorate_wire::{ClusterKey, KeyRing, WireConfig};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

const ROLE: &str = "app";

struct Agent {
    name: String,
    config: PathBuf,
    child: Option<Child>,
    /// How many times it was started: events are tagged `name#incarnation`, so an event of a
    /// killed incarnation still queued in the channel is never taken for the restarted one's.
    incarnation: u32,
}

impl Agent {
    /// The tag of the current incarnation's events.
    fn tag(&self) -> String {
        format!("{}#{}", self.name, self.incarnation)
    }
}

/// A remote client of the cluster planned in `dir` (its key file and Raft addresses).
fn client(dir: &Path, raft: Vec<String>) -> CoordClient<TokioNet> {
    client_keyed(&dir.join("cluster.key"), raft, 40)
}

/// A remote client sealing with the key in `key_file`, trying `attempts` times.
fn client_keyed(key_file: &Path, raft: Vec<String>, attempts: usize) -> CoordClient<TokioNet> {
    let key = std::fs::read_to_string(key_file).unwrap();
    let key = ClusterKey::from_hex(key.trim()).unwrap();
    let wire = WireConfig::new("quorate-startup-test", KeyRing::new(key, vec![])).unwrap();
    let mut config = ClientConfig::lan(wire);
    config.attempts = std::num::NonZeroUsize::new(attempts).unwrap();
    config.retry_pause = Duration::from_millis(100);
    CoordClient::new(TokioNet, config, raft)
}

/// The Raft addresses of the agents' configs.
fn raft_addrs(agents: &[Agent]) -> Vec<String> {
    agents
        .iter()
        .map(|a| quorate::config::load(&a.config).unwrap().raw.raft.listen)
        .collect()
}

/// Writes `n` agent configs (one role, hooks appending to `dir/actions.log`).
fn configs(dir: &Path, n: usize) -> Vec<Agent> {
    let plan = LoopbackPlan::new("quorate-startup-test", n, dir).unwrap();
    let log = dir.join("actions.log");
    (0..n)
        .map(|i| {
            let mut c = plan.agent(i, &dir.join(&plan.names[i]));
            let hook = |what: &str| {
                format!(
                    "echo \"$QUORATE_NODE {what} $QUORATE_FENCING_TOKEN\" >> {}",
                    log.display()
                )
            };
            c.roles.push(RoleSection {
                on_promote: Some(hook("promote")),
                on_demote: Some(hook("demote")),
                ..RoleSection::named(ROLE)
            });
            let config = dir.join(format!("{}.toml", plan.names[i]));
            std::fs::write(&config, to_toml(&c).unwrap()).unwrap();
            Agent {
                name: plan.names[i].clone(),
                config,
                child: None,
                incarnation: 0,
            }
        })
        .collect()
}

/// Starts `a` with `env`; its events go to `tx` tagged with [`Agent::tag`].
fn spawn(a: &mut Agent, tx: &mpsc::UnboundedSender<(String, NodeEvent)>, env: &[(&str, String)]) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quorate"));
    cmd.arg("agent")
        .arg("--config")
        .arg(&a.config)
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let out = child.stdout.take().unwrap();
    a.incarnation += 1;
    let (name, tx) = (a.tag(), tx.clone());
    tokio::spawn(async move {
        let mut lines = BufReader::new(out).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            if let Some(e) = NodeEvent::parse(&l) {
                let _ = tx.send((name.clone(), e));
            }
        }
    });
    a.child = Some(child);
}

/// Waits for an event matching `f` (from any agent), up to `within`.
async fn wait_for<T>(
    rx: &mut mpsc::UnboundedReceiver<(String, NodeEvent)>,
    within: Duration,
    mut f: impl FnMut(&str, &NodeEvent) -> Option<T>,
) -> T {
    tokio::time::timeout(within, async {
        loop {
            let (who, e) = rx.recv().await.expect("agents' output ended");
            if let Some(t) = f(&who, &e) {
                return t;
            }
        }
    })
    .await
    .expect("expected event did not come in time")
}

fn primary_of(e: &NodeEvent) -> Option<(String, u64)> {
    match e {
        NodeEvent::RoleChange(rc) if rc.role == ROLE => Some((rc.new_primary.clone()?, rc.token?)),
        _ => None,
    }
}

/// Waits until every agent's status file shows `primary` holding the role, so that each
/// node's policy has seen this term before the test changes it.
async fn all_see(dir: &Path, agents: &[Agent], primary: &str, within: Duration) {
    let end = tokio::time::Instant::now() + within;
    for a in agents {
        let path = dir.join(&a.name).join("status.json");
        loop {
            if quorate::status::read(&path)
                .is_ok_and(|s| s.role(ROLE).and_then(|r| r.primary.as_deref()) == Some(primary))
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < end,
                "{} never saw {primary} as the primary",
                a.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn kill9(a: &mut Agent) {
    if let Some(c) = a.child.as_mut() {
        let _ = c.start_kill();
    }
}

fn sigterm(a: &Agent) {
    signal(a, "-TERM");
}

fn signal(a: &Agent, which: &str) {
    let pid = a.child.as_ref().and_then(Child::id).unwrap();
    let ok = std::process::Command::new("kill")
        .args([which, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

/// Rewrites `a`'s config to seal with `send`, also accept `accept`, and take the client keys
/// `clients`, then sends SIGHUP.
fn rekey(a: &Agent, send: &Path, accept: &[PathBuf], clients: &[PathBuf]) {
    let mut c = quorate::config::load(&a.config).unwrap().raw;
    c.cluster_key_file = Some(send.to_path_buf());
    c.accepted_key_files = accept.to_vec();
    c.client_key_files = clients.to_vec();
    std::fs::write(&a.config, to_toml(&c).unwrap()).unwrap();
    signal(a, "-HUP");
}

/// The three steps of a key rotation, each a config edit and SIGHUP on every agent: accept the
/// new key everywhere, send it everywhere, drop the old one. The agents never restart, the
/// role never moves, an acknowledged write survives, and at the end the old key is refused.
/// A config that cannot be read is refused on SIGHUP, naming the field, and changes nothing.
/// Along the way a client key is added (an application holding it writes its own keys but
/// not the failover's) and revoked (then refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rotates_the_cluster_key_with_no_restart_and_no_failover() {
    let dir = tempfile::tempdir().unwrap();
    let mut agents = configs(dir.path(), 3);
    let (tx, mut rx) = mpsc::unbounded_channel();
    for a in &mut agents {
        spawn(a, &tx, &[]);
    }
    let long = Duration::from_secs(60);
    let (primary, token) = wait_for(&mut rx, long, |_, e| primary_of(e)).await;
    all_see(dir.path(), &agents, &primary, long).await;
    let raft = raft_addrs(&agents);
    let old = dir.path().join("cluster.key");
    let new = dir.path().join("new.key");
    quorate::config::write_new_key_file(&new).unwrap();
    let app_key = dir.path().join("app.key");
    quorate::config::write_new_key_file(&app_key).unwrap();
    client_keyed(&old, raft.clone(), 40)
        .put("acknowledged", b"before".to_vec(), None)
        .await
        .unwrap();
    let tags: Vec<String> = agents.iter().map(Agent::tag).collect();
    let steps: [(&Path, Vec<PathBuf>, Vec<PathBuf>); 3] = [
        (&old, vec![new.clone()], vec![app_key.clone()]),
        (&new, vec![old.clone()], vec![app_key.clone()]),
        (&new, vec![], vec![]),
    ];
    for (step, (send, accept, clients)) in steps.iter().enumerate() {
        for a in &agents {
            rekey(a, send, accept, clients);
        }
        let mut taken = std::collections::BTreeSet::new();
        wait_for(&mut rx, long, |who, e| match e {
            NodeEvent::KeysReloaded {
                keys, client_keys, ..
            } => {
                assert_eq!(*keys, 1 + accept.len(), "step {step} on {who}");
                assert_eq!(*client_keys, clients.len(), "step {step} on {who}");
                taken.insert(who.to_owned());
                (taken.len() == agents.len()).then_some(())
            }
            NodeEvent::ReloadRefused { reason, .. } => panic!("step {step} on {who}: {reason}"),
            NodeEvent::RoleChange(rc) => panic!("the role moved during the rotation: {rc:?}"),
            NodeEvent::Stopping { .. } | NodeEvent::ComponentFailed { .. } => {
                panic!("{who} stopped during the rotation: {e:?}")
            }
            _ => None,
        })
        .await;
        // The cluster takes writes sealed with the key every node now sends.
        client_keyed(send, raft.clone(), 40)
            .put(&format!("step{step}"), b"1".to_vec(), None)
            .await
            .unwrap();
        if step == 0 {
            let app = client_keyed(&app_key, raft.clone(), 40);
            app.put("app/x", b"1".to_vec(), None).await.unwrap();
            let forged = app
                .put(
                    &format!("quorate/failover/ops/{ROLE}/request"),
                    b"x".to_vec(),
                    None,
                )
                .await;
            assert!(
                matches!(
                    forged,
                    Err(quorate_coord_api::CoordError::PermissionDenied { .. })
                ),
                "a client key wrote the failover's manual-operation key: {forged:?}"
            );
        }
    }
    let revoked = client_keyed(&app_key, raft.clone(), 2)
        .put("app/y", b"1".to_vec(), None)
        .await;
    assert!(
        revoked.is_err(),
        "a revoked client key still opens the cluster"
    );
    let fresh = client_keyed(&new, raft.clone(), 40);
    let got = fresh
        .get("acknowledged", Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(got.kv.map(|kv| kv.value), Some(b"before".to_vec()));
    let stale = client_keyed(&old, raft.clone(), 2)
        .put("stale", b"1".to_vec(), None)
        .await;
    assert!(stale.is_err(), "the dropped key still opens the cluster");
    // A config that no longer reads is refused on SIGHUP; the running keys stay.
    rekey(&agents[0], &dir.path().join("missing.key"), &[], &[]);
    let reason = wait_for(&mut rx, long, |who, e| match e {
        NodeEvent::ReloadRefused { reason, .. } if who == tags[0] => Some(reason.clone()),
        NodeEvent::KeysReloaded { .. } => panic!("{who} took a config with a missing key file"),
        _ => None,
    })
    .await;
    assert!(reason.contains("cluster_key_file"), "{reason}");
    fresh.put("after", b"1".to_vec(), None).await.unwrap();
    // Nothing restarted and the role stayed where it was, under the same term.
    for (a, tag) in agents.iter_mut().zip(&tags) {
        assert_eq!(&a.tag(), tag);
        assert!(
            a.child.as_mut().unwrap().try_wait().unwrap().is_none(),
            "{tag} exited"
        );
    }
    while let Ok((who, e)) = rx.try_recv() {
        assert!(primary_of(&e).is_none(), "{who}: the role moved: {e:?}");
    }
    let s = quorate::status::read(&dir.path().join(&primary).join("status.json")).unwrap();
    assert_eq!(
        s.role(ROLE).and_then(|r| r.primary.as_deref()),
        Some(primary.as_str())
    );
    let _ = token;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_the_primary_hands_the_role_over_before_exiting() {
    let dir = tempfile::tempdir().unwrap();
    let mut agents = configs(dir.path(), 3);
    let (tx, mut rx) = mpsc::unbounded_channel();
    for a in &mut agents {
        spawn(a, &tx, &[]);
    }
    let long = Duration::from_secs(60);
    let (primary, token) = wait_for(&mut rx, long, |_, e| primary_of(e)).await;
    let i = agents.iter().position(|a| a.name == primary).unwrap();
    // Every node has seen this term (a node still starting would see the successor as its
    // first primary and call it an initial election).
    all_see(dir.path(), &agents, &primary, long).await;
    sigterm(&agents[i]);
    // The successor is chosen by a switchover (a planned hand-off, not a lease expiry).
    let (successor, cause, new_token) = wait_for(&mut rx, long, |_, e| match e {
        NodeEvent::RoleChange(rc)
            if rc.role == ROLE && rc.new_primary.as_deref().is_some_and(|p| p != primary) =>
        {
            Some((rc.new_primary.clone()?, rc.cause.clone(), rc.token?))
        }
        _ => None,
    })
    .await;
    assert_eq!(cause, "manual switchover", "a planned hand-off");
    assert!(new_token > token);
    let status = tokio::time::timeout(long, agents[i].child.as_mut().unwrap().wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "the old primary exits cleanly: {status}");
    // The hook log: the old primary demoted before the successor promoted.
    let log = std::fs::read_to_string(dir.path().join("actions.log")).unwrap();
    let demote = log.find(&format!("{primary} demote {token}")).expect(&log);
    let promote = log
        .find(&format!("{successor} promote {new_token}"))
        .expect(&log);
    assert!(
        demote < promote,
        "demote before the successor's promote:\n{log}"
    );
}

/// Kills the third agent (SIGKILL) once its stage `before` has ended, so during the next
/// stage `during`, then restarts it on the same data dir: it must come up clean (every stage
/// ready), still hold a write acknowledged before the kills (read at that node), and see the
/// cluster's primary. The kill lands after `before` ended; the process may have gone on a little
/// before the signal arrives.
async fn kill_during(before: &'static str, during: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let mut agents = configs(dir.path(), 3);
    let (tx, mut rx) = mpsc::unbounded_channel();
    for a in &mut agents {
        spawn(a, &tx, &[]);
    }
    let long = Duration::from_secs(60);
    wait_for(&mut rx, long, |_, e| primary_of(e)).await;
    let victim = 2;
    let name = agents[victim].name.clone();
    // An acknowledged write (committed on a majority) before the kills: it must survive them.
    let remote = client(dir.path(), raft_addrs(&agents));
    remote
        .put("acknowledged", during.as_bytes().to_vec(), None)
        .await
        .unwrap();
    // Restart it, and kill it as soon as `before` has ended.
    kill9(&mut agents[victim]);
    let _ = agents[victim].child.as_mut().unwrap().wait().await;
    spawn(&mut agents[victim], &tx, &[]);
    let tag = agents[victim].tag();
    wait_for(&mut rx, long, |who, e| match e {
        NodeEvent::Stage(s) if who == tag && s.stage == before => {
            assert_eq!(s.outcome, StageOutcome::Ready, "{s:?}");
            Some(())
        }
        _ => None,
    })
    .await;
    kill9(&mut agents[victim]);
    let _ = agents[victim].child.as_mut().unwrap().wait().await;
    spawn(&mut agents[victim], &tx, &[]);
    let tag = agents[victim].tag();
    wait_for(&mut rx, long, |who, e| match e {
        NodeEvent::Stage(s) if who == tag => match &s.outcome {
            StageOutcome::Failed(why) => panic!(
                "{name} restarted after a kill during {during}: {} failed: {why}",
                s.stage
            ),
            StageOutcome::Ready => None,
        },
        NodeEvent::Ready { .. } if who == tag => Some(()),
        _ => None,
    })
    .await;
    // The restarted node serves the acknowledged write itself (a linearizable read at that
    // node: its store survived the kill and caught up), and the cluster takes new writes.
    let got = remote
        .call_node(
            victim,
            ClientRequest::Get {
                key: "acknowledged".to_owned(),
                consistency: Consistency::Linearizable,
            },
        )
        .await
        .unwrap();
    match got {
        ClientResponse::Get(g) => assert_eq!(
            g.kv.map(|kv| kv.value),
            Some(during.as_bytes().to_vec()),
            "the acknowledged write is lost on {name}"
        ),
        other => panic!("unexpected answer {other:?}"),
    }
    remote.put("after", b"1".to_vec(), None).await.unwrap();
    // The restarted node sees the cluster's primary and a Raft leader.
    let path = dir.path().join(&name).join("status.json");
    let pid = agents[victim]
        .child
        .as_ref()
        .and_then(Child::id)
        .unwrap_or(0);
    let end = tokio::time::Instant::now() + long;
    loop {
        if let Ok(s) = quorate::status::read(&path)
            && s.pid == pid
            && s.raft.leader.is_some()
            && s.role(ROLE).is_some_and(|r| r.primary.is_some())
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "the restarted node never saw the primary"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

macro_rules! kill_during_stage {
    ($($name:ident: $before:literal -> $during:literal;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            kill_during($before, $during).await;
        }
    )*};
}

kill_during_stage! {
    kill_during_storage_then_restart_is_clean: "config" -> "storage";
    kill_during_transport_then_restart_is_clean: "storage" -> "transport";
    kill_during_coordination_then_restart_is_clean: "transport" -> "coordination";
    kill_during_catch_up_then_restart_is_clean: "coordination" -> "coordination-caught-up";
    kill_during_health_then_restart_is_clean: "coordination-caught-up" -> "health";
    kill_during_membership_then_restart_is_clean: "health" -> "membership";
    kill_during_roles_then_restart_is_clean: "membership" -> "roles";
}

/// Reads notification datagrams into `seen` until one carries the line `until`.
async fn recv(sock: &tokio::net::UnixDatagram, seen: &mut Vec<String>, until: &str) {
    let mut buf = vec![0u8; 4096];
    let got = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let n = sock.recv(&mut buf).await.unwrap();
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = msg.lines().any(|l| l == until);
            seen.extend(msg.lines().map(str::to_owned));
            if done {
                return;
            }
        }
    })
    .await;
    assert!(got.is_ok(), "no {until} from the agent; saw {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_manager_sees_each_stage_ready_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = tokio::net::UnixDatagram::bind(&sock_path).unwrap();
    let mut agents = configs(dir.path(), 1);
    let (tx, mut rx) = mpsc::unbounded_channel();
    spawn(
        &mut agents[0],
        &tx,
        &[
            ("NOTIFY_SOCKET", sock_path.display().to_string()),
            ("WATCHDOG_USEC", "400000".to_owned()),
        ],
    );
    let mut seen: Vec<String> = Vec::new();
    recv(&sock, &mut seen, "READY=1").await;
    for stage in ["storage", "coordination", "health", "membership", "roles"] {
        let line = format!("STATUS=starting: {stage}");
        assert!(seen.contains(&line), "{line} missing: {seen:?}");
    }
    recv(&sock, &mut seen, "WATCHDOG=1").await;
    wait_for(&mut rx, Duration::from_secs(60), |_, e| primary_of(e)).await;
    sigterm(&agents[0]);
    recv(&sock, &mut seen, "STOPPING=1").await;
    let status = agents[0].child.as_mut().unwrap().wait().await.unwrap();
    assert!(status.success(), "{status}");
}
