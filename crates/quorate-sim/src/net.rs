//! [`TurmoilNet`]: the simulation side of the `quorate_wire::net::Net` sockets seam.
//!
//! Components are generic over `N: Net`; production passes `quorate_wire::net::TokioNet`, the
//! harness passes `TurmoilNet`, whose sockets live in turmoil's simulated network (so
//! partitions, holds, latency and loss apply to them). Host names resolve through turmoil's DNS:
//! `"n2:9000"` reaches host `n2`. Every method must be called inside a turmoil host or client.

use std::io;
use std::net::SocketAddr;

use quorate_wire::net::{Datagram, Listener, Net};

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
    type TcpStream = turmoil::net::TcpStream;
    type TcpListener = SimTcpListener;
    type UdpSocket = SimUdpSocket;

    async fn bind_tcp(&self, addr: &str) -> io::Result<Self::TcpListener> {
        turmoil::net::TcpListener::bind(addr)
            .await
            .map(SimTcpListener)
    }

    async fn connect_tcp(&self, addr: &str) -> io::Result<Self::TcpStream> {
        turmoil::net::TcpStream::connect(addr).await
    }

    async fn bind_udp(&self, addr: &str) -> io::Result<Self::UdpSocket> {
        turmoil::net::UdpSocket::bind(addr).await.map(SimUdpSocket)
    }

    async fn resolve(&self, addr: &str) -> io::Result<Vec<SocketAddr>> {
        Ok(turmoil::net::lookup_host(addr).await?.collect())
    }
}

impl Listener for SimTcpListener {
    type Stream = turmoil::net::TcpStream;

    async fn accept(&self) -> io::Result<(Self::Stream, SocketAddr)> {
        self.0.accept().await
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
