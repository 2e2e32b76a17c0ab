//! Attacks on gossip over real sockets on 127.0.0.1 (issue 14): a replayed own datagram, a
//! datagram replayed to another node, a dead membership task, a mis-keyed sender.
//!
//! A relay socket stands in front of node `c` (c advertises the relay's address), so the test
//! sees every sealed datagram sent to c, as an attacker on the path would, and can send any of
//! them anywhere from an address that is not the original sender's.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quorate_membership::{MembershipConfig, MembershipHandle, Profile, start};
use quorate_membership_api::{MemberState, Membership, MembershipSnapshot};
use quorate_types::NodeId;
use quorate_wire::net::TokioNet;
use quorate_wire::{ClusterKey, KeyRing, MessageKind, Sealer, WireConfig};
use tokio::net::UdpSocket;

const KIND_SWIM: u16 = 0x0101;

fn wire() -> WireConfig {
    WireConfig::new(
        "attack-test",
        KeyRing::new(ClusterKey::from_bytes([5; 32]), vec![]),
    )
    .unwrap()
}

fn config(id: &str) -> MembershipConfig {
    let mut c = MembershipConfig::new(NodeId::new(id).unwrap(), "127.0.0.1:0");
    c.profile = Profile::fast_lan();
    c.voters = ["a", "b", "c"]
        .iter()
        .map(|v| NodeId::new(*v).unwrap())
        .collect();
    c
}

/// Waits (bounded) until `cond` holds on `h`'s snapshot; the bound is a failure limit only.
async fn until(h: &MembershipHandle, what: &str, cond: impl FnMut(&MembershipSnapshot) -> bool) {
    tokio::time::timeout(Duration::from_secs(20), h.wait_for(cond))
        .await
        .unwrap_or_else(|_| panic!("{what}: not reached within 20 s"))
        .unwrap();
}

/// Polls `cond` (bounded) while the nodes run; the bound is a failure limit only.
async fn poll(what: &str, mut cond: impl FnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(20), async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: not reached within 20 s"));
}

fn sees(snap: &MembershipSnapshot, id: &str, state: MemberState) -> bool {
    snap.member(&NodeId::new(id).unwrap())
        .is_some_and(|m| m.state == state)
}

fn kind_of(frame: &[u8]) -> u16 {
    u16::from_be_bytes([frame[5], frame[6]])
}

type Captured = Arc<Mutex<Vec<(SocketAddr, Vec<u8>)>>>;

/// A UDP relay in front of one node: forwards every datagram to it and keeps a copy.
struct Relay {
    socket: Arc<UdpSocket>,
    captured: Captured,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Self {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let captured: Captured = Arc::default();
        let (s, c) = (socket.clone(), captured.clone());
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            while let Ok((n, from)) = s.recv_from(&mut buf).await {
                c.lock().unwrap().push((from, buf[..n].to_vec()));
                let _ = s.send_to(&buf[..n], target).await;
            }
        });
        Self {
            socket,
            captured,
            task,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.socket.local_addr().unwrap()
    }

    /// The newest captured datagram sent by `from` of message kind `kind`.
    fn newest_from(&self, from: SocketAddr, kind: u16) -> Option<Vec<u8>> {
        self.captured
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(f, d)| *f == from && d.len() > 40 && kind_of(d) == kind)
            .map(|(_, d)| d.clone())
    }
}

/// A free UDP port on loopback (bound and released at once).
fn free_port() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Three nodes a (bootstrap), b, c; c sits behind a relay. b joins through the relay, so its
/// join request is captured too.
async fn cluster() -> (MembershipHandle, MembershipHandle, MembershipHandle, Relay) {
    let c_real = free_port();
    let relay = Relay::start(c_real).await;
    let mut ca = config("a");
    ca.bootstrap = true;
    let a = start(TokioNet, ca, wire(), None).await.unwrap();
    let mut cc = config("c");
    cc.bind_addr = c_real.to_string();
    cc.advertise_addr = Some(relay.addr().to_string());
    cc.seeds = vec![a.advertised_addr().to_string()];
    let c = start(TokioNet, cc, wire(), None).await.unwrap();
    until(&a, "a sees c", |s| sees(s, "c", MemberState::Alive)).await;
    let mut cb = config("b");
    cb.seeds = vec![relay.addr().to_string()];
    let b = start(TokioNet, cb, wire(), None).await.unwrap();
    for h in [&a, &b, &c] {
        until(h, "all three alive", |s| {
            ["a", "b", "c"]
                .iter()
                .all(|id| sees(s, id, MemberState::Alive))
        })
        .await;
    }
    (a, b, c, relay)
}

/// Issue 14: "One replayed datagram stops a node's gossip for good, with no key." A node's own
/// SWIM datagram, captured on the path and sent back to it from another address, must leave
/// its membership working: it still detects a crash afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_own_datagram_leaves_membership_working() {
    let (a, b, c, relay) = cluster().await;
    let a_addr = a.advertised_addr();
    let mut own = None;
    poll("a SWIM datagram to c captured", || {
        own = relay.newest_from(a_addr, KIND_SWIM);
        own.is_some()
    })
    .await;
    let own = own.unwrap();
    let before = a.metrics();
    // Sent back to a from the relay's address, twice.
    relay.socket.send_to(&own, a_addr).await.unwrap();
    relay.socket.send_to(&own, a_addr).await.unwrap();
    // b's own join request (sealed for anyone), sent back to b: dropped as our own session.
    let b_addr = b.advertised_addr();
    let join = relay
        .newest_from(b_addr, 0x0103)
        .expect("b's join request went through the relay");
    relay.socket.send_to(&join, b_addr).await.unwrap();
    poll("b drops its own join", || {
        b.metrics().dropped_own_session >= 1
    })
    .await;
    // a still works: it detects b's crash.
    b.shutdown();
    until(&a, "a detects b down after the replay", |s| {
        sees(s, "b", MemberState::Down)
    })
    .await;
    let snap = a.snapshot();
    assert!(snap.quorum.has_majority, "a and c are 2 of 3 voters");
    poll("a has dropped the two replays", || {
        let m = a.metrics();
        m.dropped_auth + m.dropped_replay + m.dropped_own_session
            >= before.dropped_auth + before.dropped_replay + before.dropped_own_session + 2
    })
    .await;

    a.shutdown();
    c.shutdown();
    relay.task.abort();
}

/// Issue 14: "Frames can be replayed across nodes." A datagram a sealed for c, captured on the
/// path and sent to b, is rejected by b.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagram_sealed_for_one_node_is_rejected_by_another() {
    let (a, b, c, relay) = cluster().await;
    let a_addr = a.advertised_addr();
    let mut frame = None;
    poll("a SWIM datagram to c captured", || {
        frame = relay.newest_from(a_addr, KIND_SWIM);
        frame.is_some()
    })
    .await;
    let before = b.metrics().dropped_auth;
    relay
        .socket
        .send_to(&frame.unwrap(), b.advertised_addr())
        .await
        .unwrap();
    poll("b rejects a's datagram for c", || {
        b.metrics().dropped_auth > before
    })
    .await;
    a.shutdown();
    b.shutdown();
    c.shutdown();
    relay.task.abort();
}

/// Issue 14: "A component that dies makes the node Critical and gives up its roles, never a
/// frozen view." Once the membership task has stopped, its snapshot says so and no longer
/// claims a majority.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_membership_reports_stopped_and_no_majority() {
    let (a, b, c, relay) = cluster().await;
    assert!(a.snapshot().quorum.has_majority);
    let mut events = a.subscribe();
    a.shutdown();
    a.stopped().await.unwrap();
    let snap = a.snapshot();
    assert!(
        !snap.quorum.has_majority,
        "a stopped membership still claims a majority: {:?}",
        snap.quorum
    );
    assert!(snap.split_brain.is_split(), "{:?}", snap.split_brain);
    assert_eq!(
        snap.stopped,
        Some(quorate_membership_api::StopReason::Shutdown)
    );
    let mut saw_stopped = false;
    while let Ok(Some(e)) = events.try_recv() {
        saw_stopped |= matches!(e, quorate_membership_api::MembershipEvent::Stopped(_));
    }
    assert!(saw_stopped, "no Stopped event");
    b.shutdown();
    c.shutdown();
    relay.task.abort();
}

/// A fatal error (here: no seed answers within `join_attempts_max`) also ends in a snapshot
/// that says the membership failed, and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_membership_reports_the_error() {
    let mut c = config("a");
    c.seeds = vec![free_port().to_string()];
    c.join_attempts_max = std::num::NonZeroU32::new(1);
    let a = start(TokioNet, c, wire(), None).await.unwrap();
    let err = a.stopped().await.unwrap_err();
    let snap = a.snapshot();
    match snap.stopped {
        Some(quorate_membership_api::StopReason::Failed(why)) => {
            assert_eq!(why, err.to_string());
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    assert!(!snap.quorum.has_majority);
}

/// Captures formatted log lines of the current thread.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

/// Issue 14: "A mis-keyed node fails silently: gossip rejections are counters only." Datagrams
/// under another key are logged at WARN, naming the likely cause, at most once per sender
/// address per 10 s.
#[tokio::test(flavor = "current_thread")]
async fn miskeyed_gossip_is_logged_once_per_sender() {
    let logs = Logs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let mut ca = config("a");
    ca.bootstrap = true;
    let a = start(TokioNet, ca, wire(), None).await.unwrap();
    let other = WireConfig::new(
        "attack-test",
        KeyRing::new(ClusterKey::from_bytes([6; 32]), vec![]),
    )
    .unwrap();
    let sealer = Sealer::new(&other);
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for _ in 0..5 {
        let f = sealer.seal_bytes(MessageKind(KIND_SWIM), b"hello").unwrap();
        sock.send_to(&f, a.advertised_addr()).await.unwrap();
    }
    poll("a rejects the five datagrams", || {
        a.metrics().dropped_auth >= 5
    })
    .await;
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert!(lines[0].contains("cluster key"), "{text}");
    assert!(
        lines[0].contains(&sock.local_addr().unwrap().to_string()),
        "{text}"
    );
    a.shutdown();
}
