//! Attacks on the Raft port's connection handling, over real loopback sockets on paused tokio
//! time: silent connections (slowloris), a stalled header, a client that never reads, many
//! connections from one address, a replayed frame used to lift the first-frame limit, and a
//! peer that refuses every connection (reconnect storm).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test")]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use quorate_coord_api::KeyValue;
use quorate_raft::network::{Handler, Request, Response, Transport, TransportConfig, serve};
use quorate_wire::net::TokioNet;
use quorate_wire::{Challenge, ClusterKey, KeyRing, Sealer, WireConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

fn wire() -> WireConfig {
    WireConfig::new(
        "inbound-test",
        KeyRing::new(ClusterKey::from_bytes([5; 32]), vec![]),
    )
    .unwrap()
}

fn config() -> TransportConfig {
    TransportConfig {
        frame_bytes_max: std::num::NonZeroU32::new(16 << 20).unwrap(),
        connect_timeout: Duration::from_secs(1),
        rpc_timeout: Duration::from_secs(5),
        idle_per_peer_max: 4,
        inbound_connections_max: 256,
        inbound_idle_timeout: Duration::from_secs(300),
        ..TransportConfig::from_limits(wire(), &quorate_raft::Limits::default())
    }
}

/// Answers `ReadIndex` with 7 and everything else with a 1 MiB value (so that replies fill
/// socket buffers quickly).
struct Answer;

impl Handler for Answer {
    async fn handle(&self, req: Request) -> Response {
        match req {
            Request::ReadIndex => Response::ReadIndex(Ok(7)),
            _ => Response::Get(Ok((
                1,
                Some(KeyValue {
                    key: "big".into(),
                    value: vec![1u8; 1 << 20],
                    create_revision: quorate_coord_api::Revision(1),
                    mod_revision: quorate_coord_api::Revision(1),
                    version: 1,
                    lease: None,
                }),
            ))),
        }
    }
}

struct Server {
    addr: SocketAddr,
    transport: Arc<Transport<TokioNet>>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Server {
    async fn start(cfg: TransportConfig) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let transport = Arc::new(Transport::new(TokioNet, cfg));
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        tracker.spawn(serve(
            listener,
            transport.clone(),
            Arc::new(Answer),
            cancel.clone(),
            tracker.clone(),
        ));
        Server {
            addr,
            transport,
            cancel,
            tracker,
        }
    }

    async fn stop(self) {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// A connection from source address `127.0.x.y` (Linux routes all of 127/8 to loopback).
async fn connect_from(src: [u8; 4], to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::from((src, 0))).unwrap();
    s.connect(to).await.unwrap()
}

/// Waits (in paused time) until the server closes `s`, reading and discarding whatever it
/// sends; returns how long that took, or `None` if it is still open after `limit`.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()?;
    Some(start.elapsed())
}

#[tokio::test(start_paused = true)]
async fn silent_connections_do_not_keep_out_a_real_peer() {
    let server = Server::start(config()).await;
    // 256 silent connections (every slot), from 256 different addresses.
    let mut silent = Vec::new();
    for i in 0..256u32 {
        let [_, _, x, y] = i.to_be_bytes();
        silent.push(connect_from([127, 1, x, y], server.addr).await);
    }
    tokio::task::yield_now().await;
    let client = Transport::new(TokioNet, config());
    let started = Instant::now();
    let r = client
        .call(&server.addr.to_string(), &Request::ReadIndex, None)
        .await;
    assert!(
        matches!(r, Ok(Response::ReadIndex(Ok(7)))),
        "a real peer is kept out by 256 silent connections: {r:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    let stats = server.transport.inbound_stats();
    assert!(stats.evicted.load(Ordering::Relaxed) >= 1);
    // One warning line per source address at most (here none: eviction is routine).
    assert!(stats.warn_lines.load(Ordering::Relaxed) <= 257);
    drop(silent);
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn stalled_header_is_dropped_within_seconds() {
    let server = Server::start(config()).await;
    let mut s = connect_from([127, 0, 0, 1], server.addr).await;
    // Ten bytes of a header, then nothing.
    s.write_all(b"QRTW\x01\x03\x01\0\0\0").await.unwrap();
    let took = closed_within(&mut s, Duration::from_secs(600)).await;
    assert!(
        took.is_some_and(|t| t <= Duration::from_secs(10)),
        "a stalled header holds its slot for {took:?}"
    );
    let stats = server.transport.inbound_stats();
    assert_eq!(stats.pre_auth_timeouts.load(Ordering::Relaxed), 1);
    server.stop().await;
}

/// Seals `req` for a raw connection.
fn seal(sealer: &Sealer, req: &Request) -> Vec<u8> {
    sealer.seal(req.kind(), req).unwrap()
}

#[tokio::test(start_paused = true)]
async fn never_reading_client_is_dropped_within_seconds() {
    let server = Server::start(config()).await;
    let s = TcpSocket::new_v4().unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    let mut s = s.connect(server.addr).await.unwrap();
    let challenge = Challenge::read_from(&mut s).await.unwrap();
    let sealer = Sealer::bound(&wire(), &challenge);
    // Eight requests, each answered with 1 MiB, and we never read: the server's writes block.
    for _ in 0..8 {
        let get = Request::Get("big".into());
        s.write_all(&seal(&sealer, &get)).await.unwrap();
    }
    // Let the server block on its write, for longer than any sane write timeout.
    tokio::time::sleep(Duration::from_secs(30)).await;
    // Then read: a server that gave up on us has closed the connection, so draining ends at
    // EOF; one that is still serving us waits for our next request.
    let took = closed_within(&mut s, Duration::from_secs(60)).await;
    assert!(
        took.is_some(),
        "a client that never reads keeps its connection (and slot) for good"
    );
    let stats = server.transport.inbound_stats();
    assert_eq!(stats.send_timeouts.load(Ordering::Relaxed), 1);
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn one_address_cannot_take_every_slot() {
    let server = Server::start(config()).await;
    let mut held = Vec::new();
    for _ in 0..200 {
        held.push(connect_from([127, 0, 0, 9], server.addr).await);
    }
    tokio::task::yield_now().await;
    let mut open = 0;
    for s in &mut held {
        if is_open(s).await {
            open += 1;
        }
    }
    assert!(
        open <= 64,
        "one source address holds {open} of 256 inbound slots"
    );
    server.stop().await;
}

/// Whether the server still holds `s` open: reads what it sent (a challenge) until the read
/// would block (open) or ends (closed).
async fn is_open(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    loop {
        match tokio::time::timeout(Duration::from_millis(1), s.read(&mut b)).await {
            Err(_) => return true,
            Ok(Ok(0) | Err(_)) => return false,
            Ok(Ok(_)) => {}
        }
    }
}

/// A header (valid magic and version) announcing `len` ciphertext bytes.
fn header_claiming(len: u32) -> Vec<u8> {
    let mut h = Vec::from(*b"QRTW");
    h.push(1);
    h.extend_from_slice(&[0x03, 0x01, 0, 0, 0, 0, 0]);
    h.extend_from_slice(&[0u8; 24]);
    h.extend_from_slice(&len.to_be_bytes());
    h
}

#[tokio::test(start_paused = true)]
async fn replayed_frame_does_not_lift_the_first_frame_limit() {
    let server = Server::start(config()).await;
    // A genuine frame this node has never seen: one captured on its way to another node (or
    // on another connection).
    let captured = seal(&Sealer::new(&wire()), &Request::ReadIndex);
    let mut s = connect_from([127, 0, 0, 1], server.addr).await;
    let _ = s.write_all(&captured).await;
    // Then a header announcing 8 MiB, which the server must not wait for (nor allocate).
    let _ = s.write_all(&header_claiming(8 << 20)).await;
    let took = closed_within(&mut s, Duration::from_secs(60)).await;
    assert!(
        took.is_some_and(|t| t < Duration::from_secs(1)),
        "a replayed frame lifted the 64 KiB first-frame limit (connection open after {took:?})"
    );
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_refusing_peer_gets_reconnects_with_backoff() {
    // A peer that closes every connection at once, as a node does whose clock is beyond
    // clock_skew_max from ours (it refuses our first frame).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let accepts = Arc::new(AtomicUsize::new(0));
    let a = accepts.clone();
    let task = tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            a.fetch_add(1, Ordering::Relaxed);
            drop(s);
        }
    });
    let client = Transport::new(TokioNet, config());
    // Ten seconds of a replication loop that retries every 10 ms.
    let end = Instant::now() + Duration::from_secs(10);
    let mut calls = 0;
    while Instant::now() < end {
        let _ = client.call(&addr, &Request::ReadIndex, None).await;
        calls += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let n = accepts.load(Ordering::Relaxed);
    assert!(
        n <= 20,
        "{n} connections in 10 s to a peer that refuses every one ({calls} calls)"
    );
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn clock_skewed_peer_gets_backoff_and_bounded_logs() {
    // The server's wall clock is 10 s behind ours: every frame we send is "from the future"
    // beyond clock_skew_max (2 s), and it closes the connection.
    let mut behind = config();
    behind.wire.wall_clock = Arc::new(|| 1_700_000_000_000);
    let server = Server::start(behind).await;
    let mut ahead = config();
    ahead.wire.wall_clock = Arc::new(|| 1_700_000_010_000);
    let client = Transport::new(TokioNet, ahead);
    let addr = server.addr.to_string();
    // One minute of a replication loop retrying every 10 ms.
    let end = Instant::now() + Duration::from_secs(60);
    let mut calls = 0u32;
    while Instant::now() < end {
        let r = client.call(&addr, &Request::ReadIndex, None).await;
        assert!(r.is_err(), "{r:?}");
        calls += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stats = server.transport.inbound_stats();
    let accepted = stats.accepted.load(Ordering::Relaxed);
    let rejected = stats.rejected_frames.load(Ordering::Relaxed);
    let lines = stats.warn_lines.load(Ordering::Relaxed);
    // Backoff: 100 ms doubling to 5 s is about 17 attempts in a minute.
    assert!(
        accepted <= 25,
        "{accepted} connections in 60 s from a skewed peer ({calls} calls)"
    );
    assert_eq!(
        rejected, accepted,
        "each connection is refused at its frame"
    );
    // Logs: at most one line per 10 s from that one source address.
    assert!(lines <= 7, "{lines} warning lines in 60 s");
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_frame_from_one_connection_is_refused_on_another_node() {
    let a = Server::start(config()).await;
    let b = Server::start(config()).await;
    // A genuine request on a connection to A, answered there.
    let mut to_a = connect_from([127, 0, 0, 1], a.addr).await;
    let challenge = Challenge::read_from(&mut to_a).await.unwrap();
    let frame = seal(&Sealer::bound(&wire(), &challenge), &Request::ReadIndex);
    to_a.write_all(&frame).await.unwrap();
    let mut opener =
        quorate_wire::StreamOpener::bound(&quorate_wire::Opener::new(&wire()), &challenge);
    let (_, resp): (_, Response) = quorate_wire::read_frame(&mut to_a, &mut opener)
        .await
        .unwrap();
    assert!(matches!(resp, Response::ReadIndex(Ok(7))), "{resp:?}");
    // The same bytes replayed to B (which never saw them): refused, no answer.
    let mut to_b = connect_from([127, 0, 0, 1], b.addr).await;
    Challenge::read_from(&mut to_b).await.unwrap();
    to_b.write_all(&frame).await.unwrap();
    let mut rest = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(10), to_b.read_to_end(&mut rest)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "a frame replayed to another node was answered: {r:?} {} bytes",
        rest.len()
    );
    let stats = b.transport.inbound_stats();
    assert_eq!(stats.rejected_frames.load(Ordering::Relaxed), 1);
    a.stop().await;
    b.stop().await;
}

/// A pooled connection that the server closed while it sat idle (here its idle timeout; a
/// restarted peer is the same) is not used for the next call: the call opens a fresh one and
/// is answered, instead of failing with an "early eof" whose outcome the caller cannot know.
#[tokio::test(start_paused = true)]
async fn a_pooled_connection_the_server_closed_is_not_reused() {
    let server = Server::start(TransportConfig {
        inbound_idle_timeout: Duration::from_secs(1),
        ..config()
    })
    .await;
    let client = Transport::new(TokioNet, config());
    let addr = server.addr.to_string();
    let r = client.call(&addr, &Request::ReadIndex, None).await;
    assert!(matches!(r, Ok(Response::ReadIndex(Ok(7)))), "{r:?}");
    // The server drops the idle connection; its end of stream reaches the client's socket.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = client.call(&addr, &Request::ReadIndex, None).await;
    assert!(
        matches!(r, Ok(Response::ReadIndex(Ok(7)))),
        "a call on a connection the server had closed: {r:?}"
    );
    server.stop().await;
}
