//! The sockets seam: every TCP and UDP socket of quorate is opened through [`Net`].
//!
//! Production code uses [`TokioNet`] (tokio's sockets). Simulation uses `TurmoilNet` from
//! `quorate-sim`, whose sockets live in turmoil's simulated network, so the same component code
//! runs in both. Addresses are strings, so that turmoil host names (`"n2:9000"`) and real
//! addresses (`"127.0.0.1:7000"`) both work.

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};

/// A way to open sockets: real ([`TokioNet`]) or simulated (`quorate_sim::TurmoilNet`).
pub trait Net: Clone + Send + Sync + 'static {
    /// A connected TCP stream.
    type TcpStream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// A bound TCP listener.
    type TcpListener: Listener<Stream = Self::TcpStream>;
    /// A bound UDP socket.
    type UdpSocket: Datagram;

    /// Binds a TCP listener to `addr` (`host:port`).
    fn bind_tcp(&self, addr: &str) -> impl Future<Output = io::Result<Self::TcpListener>> + Send;
    /// Connects to `addr` (`host:port`).
    fn connect_tcp(&self, addr: &str) -> impl Future<Output = io::Result<Self::TcpStream>> + Send;
    /// Binds a UDP socket to `addr` (`host:port`).
    fn bind_udp(&self, addr: &str) -> impl Future<Output = io::Result<Self::UdpSocket>> + Send;
    /// Resolves `addr` (`host:port`) to socket addresses; called again on every retry so that a
    /// changed DNS name is followed.
    fn resolve(&self, addr: &str) -> impl Future<Output = io::Result<Vec<SocketAddr>>> + Send;
}

/// A bound TCP listener.
pub trait Listener: Send + Sync + 'static {
    /// The stream type accepted connections have.
    type Stream;
    /// Waits for the next connection.
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Stream, SocketAddr)>> + Send;
    /// The address the listener is bound to.
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

/// A bound UDP socket.
pub trait Datagram: Send + Sync + 'static {
    /// Sends one datagram to `target`.
    fn send_to(
        &self,
        buf: &[u8],
        target: SocketAddr,
    ) -> impl Future<Output = io::Result<usize>> + Send;
    /// Receives one datagram into `buf`; a datagram longer than `buf` is truncated.
    fn recv_from(
        &self,
        buf: &mut [u8],
    ) -> impl Future<Output = io::Result<(usize, SocketAddr)>> + Send;
    /// The address the socket is bound to.
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

/// Real sockets from tokio.
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioNet;

impl Net for TokioNet {
    type TcpStream = tokio::net::TcpStream;
    type TcpListener = tokio::net::TcpListener;
    type UdpSocket = tokio::net::UdpSocket;

    async fn bind_tcp(&self, addr: &str) -> io::Result<Self::TcpListener> {
        tokio::net::TcpListener::bind(addr).await
    }

    async fn connect_tcp(&self, addr: &str) -> io::Result<Self::TcpStream> {
        let s = tokio::net::TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(s)
    }

    async fn bind_udp(&self, addr: &str) -> io::Result<Self::UdpSocket> {
        tokio::net::UdpSocket::bind(addr).await
    }

    async fn resolve(&self, addr: &str) -> io::Result<Vec<SocketAddr>> {
        Ok(tokio::net::lookup_host(addr).await?.collect())
    }
}

impl Listener for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;

    async fn accept(&self) -> io::Result<(Self::Stream, SocketAddr)> {
        let (s, a) = tokio::net::TcpListener::accept(self).await?;
        s.set_nodelay(true)?;
        Ok((s, a))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        tokio::net::TcpListener::local_addr(self)
    }
}

impl Datagram for tokio::net::UdpSocket {
    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> io::Result<usize> {
        tokio::net::UdpSocket::send_to(self, buf, target).await
    }

    async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        tokio::net::UdpSocket::recv_from(self, buf).await
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        tokio::net::UdpSocket::local_addr(self)
    }
}
