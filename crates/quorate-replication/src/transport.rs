//! Replication traffic over TCP: one authenticated `quorate-wire` frame per request and per
//! response, through the [`Net`] seam (tokio sockets in production, turmoil in simulation).
//!
//! - **Authentication and binding**: on accept the server sends a random
//!   [`quorate_wire::Challenge`]; every frame of the connection, both ways, is sealed with the
//!   cluster key and the challenge in its associated data, so a frame captured elsewhere does
//!   not open here. The server closes a connection at the first frame that fails to open.
//! - **Bounded**: frames by `frame_bytes_max` (and [`PRE_AUTH_FRAME_BYTES_MAX`] until a
//!   connection has delivered an authentic frame, which it must do within `pre_auth_timeout`);
//!   inbound connections by `inbound_connections_max`, per source address by
//!   `inbound_per_ip_max`, and unauthenticated ones by `inbound_unauthenticated_max`, with the
//!   oldest unauthenticated connection closed to make room (`quorate_wire::inbound`, the Raft
//!   transport's admission), so a flood that never authenticates cannot lock peers out; idle
//!   pooled connections per peer by `idle_per_peer_max`; every call by `call_timeout`, every
//!   connect by `connect_timeout`, every reply by `send_timeout`.
//! - **Connections are reused**: a call takes an idle connection (or connects), writes one
//!   request, reads one response, and pools the connection only after a complete response.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quorate_wire::inbound::{Admission, Inbound, InboundLimits, InboundSlot};
use quorate_wire::net::{Listener, Net};
use quorate_wire::{Challenge, MessageKind, Opener, Sealer, StreamOpener, WireConfig, WireError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::ReplicationError;
use crate::msg::{
    KIND_REPL_HELLO, KIND_REPL_REQ, KIND_REPL_RESP, PRE_AUTH_FRAME_BYTES_MAX, Request, Response,
};

/// Limits and timeouts of the replication transport.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// Cluster name, keys and `frame_bytes_max`.
    pub wire: WireConfig,
    /// Timeout of one TCP connect and challenge read.
    pub connect_timeout: Duration,
    /// Timeout of one call (request written, response read).
    pub call_timeout: Duration,
    /// Idle connections kept per peer address.
    pub idle_per_peer_max: NonZeroUsize,
    /// Inbound connections served at once; more are closed at accept.
    pub inbound_connections_max: NonZeroUsize,
    /// Inbound connections served at once from one source address.
    pub inbound_per_ip_max: NonZeroUsize,
    /// Inbound connections that have not authenticated yet; beyond it the oldest such one is
    /// closed to make room.
    pub inbound_unauthenticated_max: NonZeroUsize,
    /// How long a new inbound connection may take to deliver its first authentic frame.
    pub pre_auth_timeout: Duration,
    /// How long an authenticated inbound connection may stay silent before it is closed.
    pub inbound_idle_timeout: Duration,
    /// How long writing the challenge or one reply may take.
    pub send_timeout: Duration,
}

impl TransportConfig {
    /// LAN defaults: connect 500 ms, call 2 s, 4 idle connections per peer, 256 inbound
    /// connections (64 per address, 128 unauthenticated), 2 s to authenticate, 60 s idle, 2 s
    /// per reply.
    pub fn lan(wire: WireConfig) -> Self {
        Self {
            wire,
            connect_timeout: Duration::from_millis(500),
            call_timeout: Duration::from_secs(2),
            idle_per_peer_max: NonZeroUsize::new(4).unwrap_or(NonZeroUsize::MIN),
            inbound_connections_max: NonZeroUsize::new(256).unwrap_or(NonZeroUsize::MIN),
            inbound_per_ip_max: NonZeroUsize::new(64).unwrap_or(NonZeroUsize::MIN),
            inbound_unauthenticated_max: NonZeroUsize::new(128).unwrap_or(NonZeroUsize::MIN),
            pre_auth_timeout: Duration::from_secs(2),
            inbound_idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(2),
        }
    }

    /// The largest request or response payload (postcard bytes) that fits one frame.
    pub fn payload_bytes_max(&self) -> usize {
        (self.wire.frame_bytes_max.get() as usize)
            .saturating_sub(quorate_wire::HEADER_BYTES + quorate_wire::TAG_BYTES)
    }
}

/// Counters of the inbound side; all only grow.
#[derive(Debug, Default)]
pub struct InboundStats {
    /// Connections served.
    pub accepted: AtomicU64,
    /// Connections closed at accept because every slot held an authenticated connection.
    pub refused_full: AtomicU64,
    /// Connections closed at accept because their address had `inbound_per_ip_max`.
    pub refused_per_ip: AtomicU64,
    /// Unauthenticated connections closed to make room for a new one.
    pub evicted: AtomicU64,
    /// Connections closed for delivering no authentic frame within `pre_auth_timeout`.
    pub pre_auth_timeouts: AtomicU64,
    /// Connections closed at a frame that failed to open or decode.
    pub rejected_frames: AtomicU64,
}

struct Conn<S> {
    stream: S,
    sealer: Sealer,
    opener: StreamOpener,
}

/// The client and server side of replication traffic on one node.
pub struct Transport<N: Net> {
    net: N,
    config: TransportConfig,
    opener: Opener,
    idle: Mutex<BTreeMap<String, Vec<Conn<N::TcpStream>>>>,
    stats: InboundStats,
}

impl<N: Net> std::fmt::Debug for Transport<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("cluster", &self.config.wire.cluster_name)
            .finish_non_exhaustive()
    }
}

/// Answers one request (the node's router).
pub trait Handler: Send + Sync + 'static {
    /// The response to `req`.
    fn handle(&self, req: Request) -> impl std::future::Future<Output = Response> + Send;
}

impl<N: Net> Transport<N> {
    /// A transport on `net` with one shared opener (one replay guard per node).
    pub fn new(net: N, config: TransportConfig) -> Self {
        let opener = Opener::new(&config.wire);
        Self {
            net,
            config,
            opener,
            idle: Mutex::new(BTreeMap::new()),
            stats: InboundStats::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &TransportConfig {
        &self.config
    }

    /// Counters of the inbound side.
    pub fn inbound_stats(&self) -> &InboundStats {
        &self.stats
    }

    /// The socket seam.
    pub fn net(&self) -> &N {
        &self.net
    }

    fn take_idle(&self, addr: &str) -> Option<Conn<N::TcpStream>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(addr)?;
        while let Some(mut c) = list.pop() {
            if still_open(&mut c.stream) {
                return Some(c);
            }
        }
        None
    }

    fn put_idle(&self, addr: &str, conn: Conn<N::TcpStream>) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(addr.to_owned()).or_default();
        if list.len() < self.config.idle_per_peer_max.get() {
            list.push(conn);
        }
    }

    /// Drops every pooled connection (e.g. after a peer restarted).
    pub fn forget_idle(&self) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    async fn connect(&self, addr: &str) -> Result<Conn<N::TcpStream>, String> {
        let t = self.config.connect_timeout;
        let mut stream = tokio::time::timeout(t, self.net.connect_tcp(addr))
            .await
            .map_err(|_| format!("connect timed out after {t:?}"))?
            .map_err(|e| format!("connect: {e}"))?;
        let challenge = tokio::time::timeout(t, Challenge::read_from(&mut stream))
            .await
            .map_err(|_| format!("no challenge from the server within {t:?}"))?
            .map_err(|e| format!("reading the server's challenge: {e}"))?;
        Ok(Conn {
            stream,
            sealer: Sealer::bound(&self.config.wire, &challenge),
            opener: StreamOpener::bound(&self.opener, &challenge),
        })
    }

    /// Sends `req` to `addr` and waits for its response, within `call_timeout`.
    ///
    /// # Errors
    /// [`ReplicationError::TooLarge`] when the request does not fit one frame (nothing was
    /// sent); [`ReplicationError::Peer`] when the connection, the call or the response failed
    /// or timed out (the outcome at the peer is unknown).
    pub async fn call(&self, addr: &str, req: &Request) -> Result<Response, ReplicationError> {
        let plain =
            postcard::to_allocvec(req).map_err(|e| ReplicationError::Encode(e.to_string()))?;
        let max = self.config.payload_bytes_max();
        if plain.len() > max {
            return Err(ReplicationError::TooLarge {
                what: "replication request bytes",
                len: plain.len(),
                max,
            });
        }
        let peer = |reason: String| ReplicationError::Peer {
            peer: addr.to_owned(),
            reason,
        };
        let fut = async {
            let (mut conn, fresh) = match self.take_idle(addr) {
                Some(c) => (c, false),
                None => (self.connect(addr).await.map_err(peer)?, true),
            };
            let framed = plain.len() + quorate_wire::HEADER_BYTES + quorate_wire::TAG_BYTES;
            if fresh && framed > PRE_AUTH_FRAME_BYTES_MAX as usize {
                let hello = conn
                    .sealer
                    .seal_bytes(KIND_REPL_HELLO, &[])
                    .map_err(|e| peer(e.to_string()))?;
                conn.stream
                    .write_all(&hello)
                    .await
                    .map_err(|e| peer(e.to_string()))?;
            }
            let sealed = conn
                .sealer
                .seal_bytes(KIND_REPL_REQ, &plain)
                .map_err(|e| peer(e.to_string()))?;
            conn.stream
                .write_all(&sealed)
                .await
                .map_err(|e| peer(e.to_string()))?;
            conn.stream.flush().await.map_err(|e| peer(e.to_string()))?;
            let (kind, resp): (MessageKind, Response) =
                quorate_wire::read_frame(&mut conn.stream, &mut conn.opener)
                    .await
                    .map_err(|e| peer(format!("reading the response: {e}")))?;
            if kind != KIND_REPL_RESP {
                return Err(peer(format!("unexpected response kind {:#06x}", kind.0)));
            }
            self.put_idle(addr, conn);
            Ok(resp)
        };
        let t = self.config.call_timeout;
        tokio::time::timeout(t, fut)
            .await
            .map_err(|_| peer(format!("call timed out after {t:?}")))?
    }

    /// Serves `listener` until `cancel`, answering each request with `handler`. Every
    /// connection task is tracked by `tracker`.
    pub async fn serve<H: Handler>(
        self: Arc<Self>,
        listener: N::TcpListener,
        handler: Arc<H>,
        tracker: TaskTracker,
        cancel: CancellationToken,
    ) {
        let table = Inbound::default();
        let limits = InboundLimits {
            connections_max: self.config.inbound_connections_max.get(),
            per_ip_max: self.config.inbound_per_ip_max.get(),
            unauthenticated_max: self.config.inbound_unauthenticated_max.get(),
        };
        loop {
            let accepted = tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                a = listener.accept() => a,
            };
            let Ok((stream, peer)) = accepted else {
                // A failed accept (e.g. too many open files): keep serving the others.
                tokio::task::yield_now().await;
                continue;
            };
            let (slot, evict) = match table.admit(peer.ip(), &limits) {
                Admission::Admitted {
                    slot,
                    evict,
                    evicted,
                } => {
                    if evicted {
                        self.stats.evicted.fetch_add(1, Ordering::Relaxed);
                    }
                    (slot, evict)
                }
                Admission::PerIpFull => {
                    self.stats.refused_per_ip.fetch_add(1, Ordering::Relaxed);
                    drop(stream);
                    continue;
                }
                Admission::Full => {
                    self.stats.refused_full.fetch_add(1, Ordering::Relaxed);
                    drop(stream);
                    continue;
                }
            };
            self.stats.accepted.fetch_add(1, Ordering::Relaxed);
            let (this, handler, cancel) = (self.clone(), handler.clone(), cancel.clone());
            tracker.spawn(async move {
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => {}
                    () = evict.cancelled() => {}
                    () = this.serve_conn(stream, peer, &*handler, &slot) => {}
                }
            });
        }
    }

    async fn serve_conn<H: Handler>(
        &self,
        mut stream: N::TcpStream,
        peer: SocketAddr,
        handler: &H,
        slot: &InboundSlot,
    ) {
        let config = &self.config;
        let Ok(challenge) = Challenge::generate() else {
            return;
        };
        match tokio::time::timeout(config.send_timeout, challenge.write_to(&mut stream)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
        let mut opener = StreamOpener::bound(&self.opener, &challenge);
        let sealer = Sealer::bound(&config.wire, &challenge);
        let mut authenticated = false;
        loop {
            let wait = if authenticated {
                config.inbound_idle_timeout
            } else {
                config.pre_auth_timeout
            };
            let read =
                tokio::time::timeout(wait, read_request(&mut stream, &mut opener, authenticated))
                    .await;
            let req = match read {
                Err(_) if authenticated => return,
                Err(_) => {
                    self.stats.pre_auth_timeouts.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Ok(Err(WireError::Io(e))) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return;
                }
                Ok(Err(e)) => {
                    self.stats.rejected_frames.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%peer, error = %e, "replication: rejected an inbound frame; closing");
                    return;
                }
                Ok(Ok(r)) => r,
            };
            if !authenticated {
                authenticated = true;
                slot.authenticated();
            }
            let Some(req) = req else {
                continue;
            };
            let resp = handler.handle(req).await;
            let write = quorate_wire::write_frame(&mut stream, &sealer, KIND_REPL_RESP, &resp);
            match tokio::time::timeout(config.send_timeout, write).await {
                Ok(Ok(())) => {}
                _ => return,
            }
        }
    }
}

/// Whether an idle connection is still open (nothing to read now). Never waits.
fn still_open<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> bool {
    let mut byte = [0u8; 1];
    let mut buf = tokio::io::ReadBuf::new(&mut byte);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    matches!(
        std::pin::Pin::new(stream).poll_read(&mut cx, &mut buf),
        std::task::Poll::Pending
    )
}

const _: () = assert!(quorate_wire::HEADER_BYTES == 40);

/// Reads one request frame; `None` for a hello. Before the connection is authenticated, a
/// frame over [`PRE_AUTH_FRAME_BYTES_MAX`] is refused on its header alone.
async fn read_request<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    opener: &mut StreamOpener,
    authenticated: bool,
) -> Result<Option<Request>, WireError> {
    let mut header = [0u8; quorate_wire::HEADER_BYTES];
    stream.read_exact(&mut header).await?;
    if !authenticated {
        let len = u32::from_be_bytes([header[36], header[37], header[38], header[39]]);
        let total = quorate_wire::HEADER_BYTES as u64 + u64::from(len);
        if total > u64::from(PRE_AUTH_FRAME_BYTES_MAX) {
            return Err(WireError::Oversize {
                len: total,
                max: PRE_AUTH_FRAME_BYTES_MAX,
            });
        }
    }
    let mut chained = (&header[..]).chain(stream);
    let f = opener.read_raw(&mut chained).await?;
    if f.kind == KIND_REPL_HELLO {
        return Ok(None);
    }
    if f.kind != KIND_REPL_REQ {
        return Err(WireError::Decode(postcard::Error::DeserializeBadEncoding));
    }
    postcard::from_bytes(&f.payload)
        .map(Some)
        .map_err(WireError::Decode)
}
