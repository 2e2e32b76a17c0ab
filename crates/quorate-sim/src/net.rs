//! [`TurmoilNet`]: the simulation side of the `quorate_wire::net::Net` sockets seam.
//!
//! Components are generic over `N: Net`; production passes `quorate_wire::net::TokioNet`, the
//! harness passes `TurmoilNet`, whose sockets live in turmoil's simulated network (so
//! partitions, holds, latency and loss apply to them). Host names resolve through turmoil's DNS:
//! `"n2:9000"` reaches host `n2`. Every method must be called inside a turmoil host or client.
//!
//! # Crashes close streams in a fixed order
//!
//! Closing a turmoil stream sends a FIN (or RST) whose latency and loss are drawn from the
//! simulation's one seeded RNG, so the order in which streams close decides which connection
//! gets which draw. A crash drops a host's tokio runtime, and tokio drops the runtime's tasks
//! shard by shard, the shard being the task id modulo 4, and task ids come from a process-wide
//! counter. The order therefore depended on how many tasks the process had spawned before the
//! run, and a seed replayed differently on its second run in one process (the divergence
//! "seeds 3 and 14" of the Raft simulation showed, issue 17). [`SimTcpStream`] removes that
//! dependency: while [`Cluster::crash`](crate::Cluster::crash) drops a host, a stream that is
//! dropped is parked instead of closed, and the host's top-level future (dropped after every
//! task of the runtime) closes the parked streams in the order they were opened.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use quorate_wire::net::{Datagram, Listener, Net};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

thread_local! {
    /// Whether a crash is dropping a host on this thread (turmoil runs every host on one).
    static CRASHING: Cell<bool> = const { Cell::new(false) };
    /// Streams dropped during the crash, with their opening sequence number.
    static PARKED: RefCell<Vec<(u64, turmoil::net::TcpStream)>> = const { RefCell::new(Vec::new()) };
    /// Opening sequence of streams on this thread (only the relative order matters).
    static NEXT_STREAM: Cell<u64> = const { Cell::new(0) };
}

/// Marks the start of a host crash: streams dropped from now on are parked (module docs).
pub(crate) fn begin_crash() {
    CRASHING.with(|c| c.set(true));
}

/// Closes every parked stream in opening order and ends the crash. Called by the crashed
/// host's top-level future while turmoil still has the host entered (so the FINs are sent from
/// it), and again by the cluster after the crash as a backstop.
pub(crate) fn finish_crash() {
    CRASHING.with(|c| c.set(false));
    let mut parked = PARKED.with(|p| std::mem::take(&mut *p.borrow_mut()));
    parked.sort_by_key(|(seq, _)| *seq);
    drop(parked);
}

/// Guard held by a host's top-level future: when a crash drops it (after every task of the
/// host's runtime), it closes the streams those tasks held, in a fixed order.
#[derive(Debug, Default)]
pub(crate) struct CrashCloser;

impl Drop for CrashCloser {
    fn drop(&mut self) {
        if CRASHING.with(Cell::get) {
            finish_crash();
        }
    }
}

/// A host's software with its [`CrashCloser`], which is dropped after the software (fields
/// drop in declaration order).
pub(crate) struct WithCloser<F> {
    software: Pin<Box<F>>,
    _closer: CrashCloser,
}

impl<F> WithCloser<F> {
    pub(crate) fn new(software: F) -> Self {
        Self {
            software: Box::pin(software),
            _closer: CrashCloser,
        }
    }
}

impl<F: std::future::Future> std::future::Future for WithCloser<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.get_mut().software.as_mut().poll(cx)
    }
}

/// A simulated TCP stream (wraps `turmoil::net::TcpStream`); see the module docs for why.
pub struct SimTcpStream {
    inner: Option<turmoil::net::TcpStream>,
    seq: u64,
}

impl SimTcpStream {
    fn new(inner: turmoil::net::TcpStream) -> Self {
        let seq = NEXT_STREAM.with(|n| {
            let v = n.get();
            n.set(v.wrapping_add(1));
            v
        });
        Self {
            inner: Some(inner),
            seq,
        }
    }

    fn inner(&mut self) -> io::Result<&mut turmoil::net::TcpStream> {
        self.inner
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "stream already closed"))
    }
}

impl std::fmt::Debug for SimTcpStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimTcpStream")
            .field("seq", &self.seq)
            .field(
                "peer",
                &self.inner.as_ref().and_then(|s| s.peer_addr().ok()),
            )
            .finish()
    }
}

impl Drop for SimTcpStream {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take()
            && CRASHING.with(Cell::get)
        {
            PARKED.with(|p| p.borrow_mut().push((self.seq, inner)));
        }
    }
}

impl AsyncRead for SimTcpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().inner() {
            Ok(s) => Pin::new(s).poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for SimTcpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().inner() {
            Ok(s) => Pin::new(s).poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().inner() {
            Ok(s) => Pin::new(s).poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().inner() {
            Ok(s) => Pin::new(s).poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

/// Sockets in turmoil's simulated network.
#[derive(Clone, Copy, Debug, Default)]
pub struct TurmoilNet;

/// A simulated TCP listener (wraps `turmoil::net::TcpListener`).
pub struct SimTcpListener(turmoil::net::TcpListener);

impl std::fmt::Debug for SimTcpListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SimTcpListener")
            .field(&self.0.local_addr().ok())
            .finish()
    }
}

/// A simulated UDP socket (wraps `turmoil::net::UdpSocket`).
#[derive(Debug)]
pub struct SimUdpSocket(turmoil::net::UdpSocket);

impl SimUdpSocket {
    /// The turmoil socket inside.
    pub fn inner(&self) -> &turmoil::net::UdpSocket {
        &self.0
    }
}

impl Net for TurmoilNet {
    type TcpStream = SimTcpStream;
    type TcpListener = SimTcpListener;
    type UdpSocket = SimUdpSocket;

    async fn bind_tcp(&self, addr: &str) -> io::Result<Self::TcpListener> {
        turmoil::net::TcpListener::bind(addr)
            .await
            .map(SimTcpListener)
    }

    async fn connect_tcp(&self, addr: &str) -> io::Result<Self::TcpStream> {
        turmoil::net::TcpStream::connect(addr)
            .await
            .map(SimTcpStream::new)
    }

    async fn bind_udp(&self, addr: &str) -> io::Result<Self::UdpSocket> {
        turmoil::net::UdpSocket::bind(addr).await.map(SimUdpSocket)
    }

    async fn resolve(&self, addr: &str) -> io::Result<Vec<SocketAddr>> {
        Ok(turmoil::net::lookup_host(addr).await?.collect())
    }
}

impl Listener for SimTcpListener {
    type Stream = SimTcpStream;

    async fn accept(&self) -> io::Result<(Self::Stream, SocketAddr)> {
        let (s, a) = self.0.accept().await?;
        Ok((SimTcpStream::new(s), a))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

impl Datagram for SimUdpSocket {
    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> io::Result<usize> {
        self.0.send_to(buf, target).await
    }

    async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.0.recv_from(buf).await
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}
