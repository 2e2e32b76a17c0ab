//! A real process holding a lock is stopped (SIGSTOP) past its TTL on a real etcd, another
//! holder is granted, then the stopped one continues (SIGCONT). The holder is this test binary
//! run again as a child (`QUORATE_STATE_HOLDER_ETCD` set); it prints what it does with
//! CLOCK_MONOTONIC timestamps (one clock for both processes), and every write it attempts is
//! sent to the resource, a `Fenced<T>` in the parent.
//!
//! Checked: the holder's validity (its last computed holder-side deadline) ended before the
//! other holder's grant; after SIGCONT its `lost()` reports the passed deadline, its
//! `put_if_owner` is refused and its fenced write is rejected, while the new holder's writes
//! are accepted. (A stopped process cannot fire anything while stopped: `lost()` itself fires
//! on resume, which is why the resource must check tokens.)
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "test; the child reports on stdout, the summary goes to stderr"
)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use quorate_coord_api::{Coord, FencingToken};
use quorate_etcd::{EtcdConfig, EtcdCoord};
use quorate_state::{Fenced, Mutex, Session, SessionConfig, StateError};
use quorate_testkit::etcd::{EtcdCluster, EtcdClusterConfig};

const ENV: &str = "QUORATE_STATE_HOLDER_ETCD";
const LOCK: &str = "sigstop";
const TTL: Duration = Duration::from_secs(2);

/// Kills (SIGKILL) and reaps the holder if the test ends early, so no stopped process is left.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The holder's next line (30 s at most).
async fn next(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("a line from the holder in time")
        .expect("the holder is running")
}

/// CLOCK_MONOTONIC in nanoseconds: the same clock in every process of this machine.
fn mono_ns() -> u128 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u128::try_from(t.tv_sec).unwrap() * 1_000_000_000 + u128::try_from(t.tv_nsec).unwrap()
}

/// The child: hold the lock, report the deadline every 10 ms, and after each pause-able sleep
/// attempt one guarded write and one fenced write (as an action already past its check would).
async fn holder(urls: String) {
    let config =
        EtcdConfig::etcd_defaults(urls.split(',').map(str::to_owned).collect::<Vec<String>>());
    let coord: Arc<dyn Coord> = Arc::new(EtcdCoord::new(config).unwrap());
    let mut cfg = SessionConfig::new(TTL);
    cfg.seed = Some(1);
    let s = Session::start(coord, cfg).await.unwrap();
    let g = Mutex::new(s.clone(), LOCK).lock().await.unwrap();
    println!("HOLDER granted {} {}", g.fencing_token().0, mono_ns());
    let mut lost = Box::pin(g.lost());
    loop {
        if g.is_held() {
            println!("HOLDER deadline {}", mono_ns() + s.remaining().as_nanos());
        }
        // A stop lands here most of the time; after it the write below is "in flight".
        tokio::time::sleep(Duration::from_millis(10)).await;
        println!("HOLDER fenced {} {}", g.fencing_token().0, mono_ns());
        let put = g.put_if_owner("sigstop/data", b"a".to_vec()).await;
        let verdict = match put {
            Ok(_) => "accepted",
            Err(StateError::SessionLost { .. } | StateError::NotHolder { .. }) => "refused",
            Err(_) => "error",
        };
        println!("HOLDER put {verdict} {}", mono_ns());
        if let Some(reason) = futures::FutureExt::now_or_never(&mut lost) {
            println!("HOLDER lost {} {reason}", mono_ns());
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstopped_holder_is_fenced_after_it_resumes() {
    if let Ok(urls) = std::env::var(ENV) {
        holder(urls).await;
        return;
    }
    let cluster = EtcdCluster::start(EtcdClusterConfig::members(1))
        .await
        .unwrap();
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "sigstopped_holder_is_fenced_after_it_resumes",
            "--exact",
            "--nocapture",
        ])
        .env(ENV, cluster.client_urls().join(","))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Reap(child);
    let pid = child.0.id().to_string();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let stdout = child.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(l) = line.strip_prefix("HOLDER ") {
                let _ = tx.send(l.to_owned());
            }
        }
    });
    // The resource: every fenced request goes through it, in arrival order.
    let resource = Fenced::new(Vec::<u64>::new());
    let granted = next(&mut rx).await;
    let a_token: u64 = granted.split(' ').nth(1).unwrap().parse().unwrap();
    let mut last_deadline = 0u128;
    let mut seen = 0;
    while seen < 5 {
        let l = next(&mut rx).await;
        if let Some(d) = l.strip_prefix("deadline ") {
            last_deadline = d.parse().unwrap();
            seen += 1;
        } else if l.starts_with("fenced ") {
            resource
                .apply(FencingToken(a_token), |v| v.push(a_token))
                .unwrap();
        }
    }

    // The waiter.
    let coord: Arc<dyn Coord> = Arc::new(cluster.coord(0).unwrap());
    let mut cfg = SessionConfig::new(TTL);
    cfg.seed = Some(2);
    let b = Session::start(coord, cfg).await.unwrap();
    let mb = Mutex::new(b.clone(), LOCK);
    let waiter = tokio::spawn(async move {
        let g = mb.lock().await;
        (g, mono_ns())
    });
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let stopped_at = mono_ns();
    // Drain what the holder printed before it stopped.
    while let Ok(l) = rx.try_recv() {
        if let Some(d) = l.strip_prefix("deadline ") {
            last_deadline = d.parse().unwrap();
        } else if l.starts_with("fenced ") {
            resource
                .apply(FencingToken(a_token), |v| v.push(a_token))
                .unwrap();
        }
    }
    let (gb, granted_b) = tokio::time::timeout(Duration::from_secs(30), waiter)
        .await
        .expect("the waiter is granted while the holder is stopped")
        .unwrap();
    let gb = gb.unwrap();
    assert!(
        last_deadline < granted_b,
        "the stopped holder's validity (until {last_deadline}) outlasted the next grant ({granted_b})"
    );
    let b_token = gb.fencing_token().0;
    assert!(b_token > a_token);
    resource
        .apply(gb.fencing_token(), |v| v.push(b_token))
        .unwrap();
    gb.put_if_owner("sigstop/data", b"b".to_vec())
        .await
        .unwrap();

    assert!(
        Command::new("kill")
            .args(["-CONT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut stale_rejected = 0;
    let mut puts = Vec::new();
    let lost_line = loop {
        let l = next(&mut rx).await;
        if l.starts_with("fenced ") {
            let r = resource.apply(FencingToken(a_token), |v| v.push(a_token));
            assert!(r.is_err(), "the resumed holder's fenced write was accepted");
            stale_rejected += 1;
        } else if let Some(p) = l.strip_prefix("put ") {
            puts.push(p.split(' ').next().unwrap().to_owned());
        } else if l.starts_with("lost ") {
            break l;
        }
    };
    assert!(stale_rejected >= 1, "the resumed holder attempted no write");
    assert!(
        puts.iter().all(|p| p == "refused"),
        "the resumed holder's guarded writes: {puts:?}"
    );
    assert!(lost_line.contains("deadline"), "{lost_line}");
    let lost_at: u128 = lost_line.split(' ').nth(1).unwrap().parse().unwrap();
    assert!(lost_at > stopped_at);
    assert_eq!(resource.into_inner().last(), Some(&b_token));
    eprintln!(
        "holder valid until {last_deadline}, stopped at {stopped_at}, next grant at {granted_b} (monotonic ns); after SIGCONT: {stale_rejected} fenced write(s) rejected, guarded writes {puts:?}, lost at {lost_at}"
    );
    let _ = child.0.wait();
    gb.unlock().await.unwrap();
    b.close().await;
}
