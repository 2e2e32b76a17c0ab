//! Raft and client RPC over TCP, one authenticated `quorate-wire` frame per request and per
//! response, through the [`Net`] seam (tokio sockets in production, turmoil in simulation).
//!
//! - **Connections are reused.** A call takes an idle connection to the peer out of the pool
//!   (or connects, with `connect_timeout`), writes one request, reads one response and puts the
//!   connection back only after a complete response. A call cancelled by openraft's own
//!   timeouts therefore drops its connection instead of leaving an unread response on it.
//! - **Every call has a timeout** (`rpc_timeout`, or openraft's shorter hard TTL).
//! - **Frames are bounded** (`Limits::frame_bytes_max`). An AppendEntries batch that does not
//!   fit is answered with openraft's `PayloadTooLarge` hint, so openraft sends fewer entries.
//! - **Authentication**: every frame is sealed with the cluster key; the server closes a
//!   connection at the first frame that fails to open (wrong key, wrong cluster, replay,
//!   corruption, oversize), so an unauthenticated peer gets no answer at all.
//! - **Connection binding**: on accept the server sends a random `quorate_wire::Challenge`;
//!   every frame of the connection, both ways, carries it in its associated data. A frame
//!   captured on another connection or sent to another node does not authenticate here, so
//!   a replayed frame can neither run twice nor lift the first-frame limit
//!   ([`PRE_AUTH_FRAME_BYTES_MAX`]).
//! - **Inbound limits** (no key needed to attack them, so all bounded): a connection must
//!   deliver an authentic frame within `pre_auth_timeout`; at most `inbound_per_ip_max`
//!   connections per source address; at most `inbound_unauthenticated_max` connections not
//!   yet authenticated, and when the table is full the oldest unauthenticated connection is
//!   closed to admit a new one (authenticated peers are never evicted); every reply must be
//!   written within `send_timeout`; warnings about bad connections are rate-limited to one
//!   line per source address per `warn_interval`, with the count of suppressed ones.
//! - **Reconnect backoff**: a peer that accepts our connections but closes them before
//!   answering (wrong key, clock skew beyond `clock_skew_max`, full) gets fresh connections
//!   only after an exponential, jittered delay (`reconnect_backoff_min` doubling up to
//!   `reconnect_backoff_max`); calls in between fail at once as unreachable.
//!
//! Message kinds: `0x0201` Raft request / `0x0202` Raft response; `0x0501`/`0x0502` peer
//! forwards (a follower's proposal or read-index to the leader); `0x0401`/`0x0402` admin
//! (forwarded membership changes); `0x0301`/`0x0302` remote client requests
//! ([`Request::Client`] with a [`ClientRequest`], and the legacy [`Request::Get`]). A client
//! request is answered by [`crate::node`]'s client handler only: it never reaches openraft's
//! RPC handling, and its writes are a closed set ([`ClientWrite`]) that cannot name a
//! Raft-internal command such as a lease expiry.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError as OpenraftError,
    RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use quorate_coord_api::{
    Capabilities, ClusterStatus, Consistency, CoordError, ElectionLeader, GetResponse, KeyValue,
    LeaseId, LeaseInfo, LockGrant, RangeRequest, RangeResponse, Revision, Txn, WatchEvent,
};
use quorate_wire::inbound::{Admission, InboundSlot};
use quorate_wire::net::{Listener, Net};
use quorate_wire::{
    Challenge, ClientKey, MessageKind, Opener, Sealer, StreamOpener, WireConfig, WireError,
};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Limits;
use crate::machine::{Command, Outcome, QueuePosition};
use crate::types::{PeerNode, TypeConfig};

/// Raft RPC request frames.
pub const KIND_RAFT_REQ: MessageKind = MessageKind(0x0201);
/// Raft RPC response frames.
pub const KIND_RAFT_RESP: MessageKind = MessageKind(0x0202);
/// Remote client request frames ([`Request::Client`], legacy [`Request::Get`]).
pub const KIND_CLIENT_REQ: MessageKind = MessageKind(0x0301);
/// Remote client response frames.
pub const KIND_CLIENT_RESP: MessageKind = MessageKind(0x0302);
/// Peer forward request frames (a follower's [`Request::Propose`] or [`Request::ReadIndex`]).
pub const KIND_FORWARD_REQ: MessageKind = MessageKind(0x0501);
/// Peer forward response frames.
pub const KIND_FORWARD_RESP: MessageKind = MessageKind(0x0502);
/// Admin request frames (forwarded membership changes).
pub const KIND_ADMIN_REQ: MessageKind = MessageKind(0x0401);
/// Admin response frames.
pub const KIND_ADMIN_RESP: MessageKind = MessageKind(0x0402);
/// A one-way "hello" frame (empty payload, no answer): a client sends it first on a new
/// connection whose first request is larger than [`PRE_AUTH_FRAME_BYTES_MAX`], so that the
/// connection proves the cluster key with a small frame before the server accepts a large one.
pub const KIND_HELLO: MessageKind = MessageKind(0x0203);
/// The largest frame (header included) a server accepts on a connection that has not yet
/// delivered an authentic frame: 64 KiB. Until then a peer without the key can make the
/// server allocate at most this much per connection (at most `inbound_connections_max` of
/// them), instead of `frame_bytes_max` (16 MiB) each.
pub const PRE_AUTH_FRAME_BYTES_MAX: u32 = 64 * 1024;

/// A membership change forwarded to the leader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminRequest {
    /// Add a learner.
    AddLearner {
        /// Its quorate name.
        node: String,
        /// Its Raft address.
        addr: String,
    },
    /// Promote a learner to voter.
    Promote {
        /// Its quorate name.
        node: String,
    },
    /// Remove a member.
    Remove {
        /// Its quorate name.
        node: String,
    },
}

/// A write a remote client may propose: the client-facing subset of [`Command`]. It has no
/// variant for Raft-internal commands (lease expiry) and lets the machine pick lease ids.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientWrite {
    /// `Coord::put`.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
        /// The lease to attach it to.
        lease: Option<LeaseId>,
    },
    /// `Coord::delete`.
    Delete {
        /// The key.
        key: String,
    },
    /// `Coord::txn`.
    Txn(Txn),
    /// `Coord::lease_grant` (the machine picks the id).
    LeaseGrant {
        /// Time to live, in milliseconds.
        ttl_ms: u64,
    },
    /// `Coord::lease_keep_alive`.
    LeaseKeepAlive {
        /// The lease.
        id: LeaseId,
    },
    /// `Coord::lease_revoke`.
    LeaseRevoke {
        /// The lease.
        id: LeaseId,
    },
    /// Join (or re-join) lock `name`'s queue; answered at once with the place in the queue
    /// (the client waits by watching the key ahead).
    Lock {
        /// The lock name.
        name: String,
        /// The lease holding the place.
        lease: LeaseId,
    },
    /// `Coord::unlock`.
    Unlock {
        /// The lock key.
        key: String,
        /// Its create revision.
        create_revision: Revision,
    },
    /// Join (or re-join) election `election`'s queue; answered at once with the place.
    Campaign {
        /// The election name.
        election: String,
        /// The candidate's value.
        value: Vec<u8>,
        /// The lease holding the place.
        lease: LeaseId,
    },
    /// `Coord::proclaim`.
    Proclaim {
        /// The leader key.
        key: String,
        /// Its create revision.
        create_revision: Revision,
        /// The new value.
        value: Vec<u8>,
    },
    /// `Coord::resign`.
    Resign {
        /// The candidate key.
        key: String,
        /// Its create revision.
        create_revision: Revision,
    },
}

impl ClientWrite {
    /// The state machine command this write proposes.
    pub fn into_command(self) -> Command {
        match self {
            ClientWrite::Put { key, value, lease } => Command::Put { key, value, lease },
            ClientWrite::Delete { key } => Command::Delete { key },
            ClientWrite::Txn(t) => Command::Txn(t),
            ClientWrite::LeaseGrant { ttl_ms } => Command::LeaseGrant { id: None, ttl_ms },
            ClientWrite::LeaseKeepAlive { id } => Command::LeaseKeepAlive { id },
            ClientWrite::LeaseRevoke { id } => Command::LeaseRevoke { id },
            ClientWrite::Lock { name, lease } => Command::Lock { name, lease },
            ClientWrite::Unlock {
                key,
                create_revision,
            } => Command::Unlock {
                key,
                create_revision,
            },
            ClientWrite::Campaign {
                election,
                value,
                lease,
            } => Command::Campaign {
                election,
                value,
                lease,
            },
            ClientWrite::Proclaim {
                key,
                create_revision,
                value,
            } => Command::Proclaim {
                key,
                create_revision,
                value,
            },
            ClientWrite::Resign {
                key,
                create_revision,
            } => Command::Resign {
                key,
                create_revision,
            },
        }
    }
}

impl TryFrom<Command> for ClientWrite {
    type Error = CoordError;

    /// The client write of `cmd`; `InvalidArgument` for commands a client may not propose
    /// (lease expiry, a lease grant naming its id).
    fn try_from(cmd: Command) -> Result<ClientWrite, CoordError> {
        Ok(match cmd {
            Command::Put { key, value, lease } => ClientWrite::Put { key, value, lease },
            Command::Delete { key } => ClientWrite::Delete { key },
            Command::Txn(t) => ClientWrite::Txn(t),
            Command::LeaseGrant { id: None, ttl_ms } => ClientWrite::LeaseGrant { ttl_ms },
            Command::LeaseKeepAlive { id } => ClientWrite::LeaseKeepAlive { id },
            Command::LeaseRevoke { id } => ClientWrite::LeaseRevoke { id },
            Command::Lock { name, lease } => ClientWrite::Lock { name, lease },
            Command::Unlock {
                key,
                create_revision,
            } => ClientWrite::Unlock {
                key,
                create_revision,
            },
            Command::Campaign {
                election,
                value,
                lease,
            } => ClientWrite::Campaign {
                election,
                value,
                lease,
            },
            Command::Proclaim {
                key,
                create_revision,
                value,
            } => ClientWrite::Proclaim {
                key,
                create_revision,
                value,
            },
            Command::Resign {
                key,
                create_revision,
            } => ClientWrite::Resign {
                key,
                create_revision,
            },
            Command::LeaseGrant { id: Some(_), .. } | Command::LeaseExpire { .. } => {
                return Err(CoordError::invalid(
                    "a remote client may not propose lease expiries or choose lease ids: use lease_grant / lease_revoke",
                ));
            }
        })
    }
}

/// A resumable long-poll of a watch: "every event under `prefix` from `from_revision` on,
/// except the first `skip` events at `from_revision` (already delivered)". The node answers at
/// once when it has such events, else holds the request up to `wait` (at most the node's
/// `Limits::watch_wait_max`) for one to be applied. Bounded: `1 <= max_events <=
/// Limits::watch_events_max`, `prefix` at most `key_bytes_max` bytes, and the answer fits one
/// frame (fewer events come back when they are large).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchPoll {
    /// Keys starting with this prefix.
    pub prefix: String,
    /// The first revision wanted.
    pub from_revision: Revision,
    /// How many events at `from_revision` the client already has (they are skipped).
    pub skip: u32,
    /// The most events in the answer.
    pub max_events: u32,
    /// The longest the node may hold the request when it has nothing to send.
    pub wait: Duration,
}

/// The answer to a [`WatchPoll`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchBatch {
    /// Events in revision order (possibly none, when the hold ran out).
    pub events: Vec<WatchEvent>,
    /// The node's applied revision when it answered.
    pub revision: Revision,
}

/// A remote client request: one per `quorate_coord_api::Coord` operation that is not a wait
/// (lock and campaign waits are client-side watches of the key ahead, `watch` and `observe`
/// are [`WatchPoll`]s). Writes go to the leader (`NotLeader` names it); reads and polls are
/// answered by any node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientRequest {
    /// A write, proposed on this node if it leads (never forwarded).
    Write(ClientWrite),
    /// `Coord::get`.
    Get {
        /// The key.
        key: String,
        /// How fresh.
        consistency: Consistency,
    },
    /// `Coord::range` (the node may return fewer keys than asked, with `more`, so the answer
    /// fits a frame).
    Range(RangeRequest),
    /// `Coord::lease_time_to_live`.
    LeaseTimeToLive {
        /// The lease.
        id: LeaseId,
    },
    /// A lock or election waiter's current place, read linearizably; `lease`'s error
    /// (`LeaseExpired` / `LeaseNotFound`) if the key is gone.
    Position {
        /// The queue key.
        key: String,
        /// Its lease.
        lease: LeaseId,
    },
    /// `Coord::lock_holder`.
    LockHolder {
        /// The lock name.
        name: String,
        /// How fresh.
        consistency: Consistency,
    },
    /// `Coord::leader` (linearizable).
    Leader {
        /// The election name.
        election: String,
    },
    /// A watch long-poll.
    WatchPoll(WatchPoll),
    /// `Coord::status` of the answering node.
    Status,
    /// The answering node's `Coord::capabilities`.
    Capabilities,
    /// `Coord::add_learner` / `promote_voter` / `remove_node` (on the leader; not forwarded).
    Admin(AdminRequest),
}

/// The answer to a [`ClientRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientResponse {
    /// To a write: its log index and the machine's outcome (`Outcome::Rejected` when the
    /// machine refused it; nothing changed then).
    Written(u64, Outcome),
    /// To `Get`.
    Get(GetResponse),
    /// To `Range`.
    Range(RangeResponse),
    /// To `LeaseTimeToLive`.
    LeaseInfo(LeaseInfo),
    /// To `Position`: the revision read at and the place.
    Position(Revision, QueuePosition),
    /// To `LockHolder`.
    LockHolder(Option<LockGrant>),
    /// To `Leader`: the revision read at and the leader.
    Leader(Revision, Option<ElectionLeader>),
    /// To `WatchPoll`.
    Watch(WatchBatch),
    /// To `Status`.
    Status(ClusterStatus),
    /// To `Capabilities`.
    Capabilities(Capabilities),
    /// To `Admin`.
    Admin,
}

/// Every request a node answers.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// Raft AppendEntries.
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    /// Raft Vote.
    Vote(VoteRequest<u64>),
    /// Raft InstallSnapshot (one chunk).
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A command forwarded by a follower to the leader (peer only; a remote client writes
    /// with [`ClientRequest::Write`]). `Command::LeaseExpire` is refused: only the leader's
    /// own expiry loop proposes it, never through the network.
    Propose(Command),
    /// A follower asks the leader for a linearizable read index.
    ReadIndex,
    /// A membership change forwarded to the leader.
    Admin(AdminRequest),
    /// A remote client's linearizable read of one key (answered by any node: a follower
    /// uses a read index from the leader). Legacy: [`ClientRequest::Get`] does the same.
    Get(String),
    /// A remote client request (see [`ClientRequest`]).
    Client(ClientRequest),
    /// Pre-vote: may the sender start an election? (`node/elector.rs`; appended last so the
    /// older variants keep their wire tags.)
    PreVote(PreVoteRequest),
}

/// A pre-vote: a voter that has not heard from a leader asks its peers whether they would
/// vote for it, before it raises its term.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreVoteRequest {
    /// The sender's current term (its election would run at a higher one).
    pub term: u64,
    /// The sender's last log id.
    pub last_log: Option<crate::types::LogId>,
}

/// The answer to a [`PreVoteRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreVoteResponse {
    /// Whether this node would vote for the sender now.
    pub granted: bool,
    /// This node's current term.
    pub term: u64,
}

impl Request {
    /// The message kind this request is sent under.
    pub fn kind(&self) -> MessageKind {
        match self {
            Request::AppendEntries(_)
            | Request::Vote(_)
            | Request::InstallSnapshot(_)
            | Request::PreVote(_) => KIND_RAFT_REQ,
            Request::Propose(_) | Request::ReadIndex => KIND_FORWARD_REQ,
            Request::Get(_) | Request::Client(_) => KIND_CLIENT_REQ,
            Request::Admin(_) => KIND_ADMIN_REQ,
        }
    }
}

/// Every response a node sends.
#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    /// To [`Request::AppendEntries`].
    AppendEntries(Result<AppendEntriesResponse<u64>, OpenraftError<u64>>),
    /// To [`Request::Vote`].
    Vote(Result<VoteResponse<u64>, OpenraftError<u64>>),
    /// To [`Request::InstallSnapshot`].
    InstallSnapshot(Result<InstallSnapshotResponse<u64>, OpenraftError<u64, InstallSnapshotError>>),
    /// To [`Request::Propose`]: the log index and outcome.
    Propose(Result<(u64, Outcome), CoordError>),
    /// To [`Request::ReadIndex`]: the index the follower must have applied before reading.
    ReadIndex(Result<u64, CoordError>),
    /// To [`Request::Admin`].
    Admin(Result<(), CoordError>),
    /// To [`Request::Get`]: the revision read at and the key, if present.
    Get(Result<(u64, Option<KeyValue>), CoordError>),
    /// To [`Request::Client`].
    Client(Result<ClientResponse, CoordError>),
    /// To [`Request::PreVote`].
    PreVote(PreVoteResponse),
}

impl Response {
    fn kind(&self) -> MessageKind {
        match self {
            Response::AppendEntries(_)
            | Response::Vote(_)
            | Response::InstallSnapshot(_)
            | Response::PreVote(_) => KIND_RAFT_RESP,
            Response::Propose(_) | Response::ReadIndex(_) => KIND_FORWARD_RESP,
            Response::Get(_) | Response::Client(_) => KIND_CLIENT_RESP,
            Response::Admin(_) => KIND_ADMIN_RESP,
        }
    }
}

/// Why a call to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No connection could be made (refused, unresolvable, connect timeout).
    #[error("cannot connect to {addr}: {reason}")]
    Unreachable {
        /// The peer address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The request does not fit one frame.
    #[error("request to {addr} does not fit a frame: {source}")]
    TooLarge {
        /// The peer address.
        addr: String,
        /// The wire error.
        source: WireError,
    },
    /// Sending or receiving failed, or the answer was invalid; the request may have been
    /// processed.
    #[error("call to {addr} failed: {reason}")]
    Failed {
        /// The peer address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// No answer within the timeout; the request may have been processed.
    #[error("call to {addr} timed out after {after:?}")]
    Timeout {
        /// The peer address.
        addr: String,
        /// The timeout.
        after: Duration,
    },
}

/// Transport settings.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// Cluster name, keys, replay window; `frame_bytes_max` is replaced by `frame_bytes_max`
    /// below.
    pub wire: WireConfig,
    /// The largest frame sent or accepted by the Raft transport.
    pub frame_bytes_max: std::num::NonZeroU32,
    /// How long a connect may take.
    pub connect_timeout: Duration,
    /// The default timeout of a call.
    pub rpc_timeout: Duration,
    /// Idle connections kept per peer.
    pub idle_per_peer_max: usize,
    /// Inbound connections served at once; more are closed at accept (after closing the
    /// oldest unauthenticated one, if any).
    pub inbound_connections_max: usize,
    /// An inbound connection with no request for this long is closed.
    pub inbound_idle_timeout: Duration,
    /// An inbound connection that has not delivered an authentic frame this long after
    /// accept is closed.
    pub pre_auth_timeout: Duration,
    /// Inbound connections from one source IP address at once; more are closed at accept.
    pub inbound_per_ip_max: usize,
    /// Inbound connections not yet authenticated at once; a new one closes the oldest.
    pub inbound_unauthenticated_max: usize,
    /// How long writing one reply (or the challenge) may take before the connection is
    /// closed (a client that never reads).
    pub send_timeout: Duration,
    /// At most one warning about bad inbound connections per source address per interval.
    pub warn_interval: Duration,
    /// First delay before reconnecting to a peer that closed our connection unanswered.
    pub reconnect_backoff_min: Duration,
    /// Largest such delay.
    pub reconnect_backoff_max: Duration,
    /// The largest snapshot accepted: an InstallSnapshot chunk ending past this is refused.
    pub snapshot_bytes_max: u64,
}

impl TransportConfig {
    /// The transport settings of a node with `limits` (the node's `Limits` carry every field).
    pub fn from_limits(wire: WireConfig, limits: &Limits) -> Self {
        Self {
            wire,
            frame_bytes_max: limits.frame_bytes_max,
            connect_timeout: limits.connect_timeout,
            rpc_timeout: limits.rpc_timeout,
            idle_per_peer_max: limits.idle_connections_per_peer,
            inbound_connections_max: limits.inbound_connections_max.get(),
            inbound_idle_timeout: limits.inbound_idle_timeout,
            pre_auth_timeout: limits.pre_auth_timeout,
            inbound_per_ip_max: limits.inbound_per_ip_max.get(),
            inbound_unauthenticated_max: limits.inbound_unauthenticated_max.get(),
            send_timeout: limits.send_timeout,
            warn_interval: limits.warn_interval,
            reconnect_backoff_min: limits.reconnect_backoff_min,
            reconnect_backoff_max: limits.reconnect_backoff_max,
            snapshot_bytes_max: limits.snapshot_bytes_max.get(),
        }
    }
}

/// Counters of the inbound side (for tests and metrics); all only grow.
#[derive(Debug, Default)]
pub struct InboundStats {
    /// Connections accepted and served.
    pub accepted: AtomicU64,
    /// Connections closed at accept because their address had `inbound_per_ip_max`.
    pub refused_per_ip: AtomicU64,
    /// Connections closed at accept because every slot held an authenticated connection.
    pub refused_full: AtomicU64,
    /// Unauthenticated connections closed to make room for a new one.
    pub evicted: AtomicU64,
    /// Connections closed for sending no authentic frame within `pre_auth_timeout`.
    pub pre_auth_timeouts: AtomicU64,
    /// Connections closed because a reply could not be written within `send_timeout`.
    pub send_timeouts: AtomicU64,
    /// Connections closed at a frame that failed to open or decode.
    pub rejected_frames: AtomicU64,
    /// Connections closed because a client key sent something other than a client request.
    pub client_key_refusals: AtomicU64,
    /// Warning lines written about bad inbound connections.
    pub warn_lines: AtomicU64,
    /// Warnings suppressed by the rate limit.
    pub warn_suppressed: AtomicU64,
    /// Client requests answered (under a client key or the cluster key).
    pub client_requests: AtomicU64,
}

impl InboundStats {
    /// Every counter with a short name (`accepted`, `refused_per_ip`, ...), in a fixed order.
    pub fn counts(&self) -> [(&'static str, u64); 11] {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            ("accepted", l(&self.accepted)),
            ("refused_per_ip", l(&self.refused_per_ip)),
            ("refused_full", l(&self.refused_full)),
            ("evicted", l(&self.evicted)),
            ("pre_auth_timeout", l(&self.pre_auth_timeouts)),
            ("send_timeout", l(&self.send_timeouts)),
            ("rejected_frame", l(&self.rejected_frames)),
            ("client_key_refused", l(&self.client_key_refusals)),
            ("warn_line", l(&self.warn_lines)),
            ("warn_suppressed", l(&self.warn_suppressed)),
            ("client_request", l(&self.client_requests)),
        ]
    }
}

/// One warning line per source address per interval; counts what it suppresses.
#[derive(Debug)]
struct WarnLimiter {
    interval: Duration,
    /// Per source: when the last line was written, and how many were suppressed since.
    sources: Mutex<BTreeMap<IpAddr, (Instant, u64)>>,
}

/// Sources the limiter remembers; past this, the stalest are forgotten.
const WARN_SOURCES_MAX: usize = 1024;

impl WarnLimiter {
    /// `Some(suppressed since the last line)` if a line may be written now for `ip`.
    fn allow(&self, ip: IpAddr, now: Instant) -> Option<u64> {
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((last, suppressed)) = sources.get_mut(&ip) {
            if now.duration_since(*last) < self.interval {
                *suppressed += 1;
                return None;
            }
            let n = *suppressed;
            *last = now;
            *suppressed = 0;
            return Some(n);
        }
        if sources.len() >= WARN_SOURCES_MAX {
            let interval = self.interval;
            sources.retain(|_, (last, _)| now.duration_since(*last) < interval);
            if sources.len() >= WARN_SOURCES_MAX {
                // Every remembered source is recent: a flood from many addresses. Write no
                // line for a new one until some age out.
                return None;
            }
        }
        sources.insert(ip, (now, 0));
        Some(0)
    }
}

/// Reconnect backoff state of one peer address.
#[derive(Clone, Copy, Debug)]
struct PeerBackoff {
    failures: u32,
    until: Instant,
}

struct Conn<S> {
    stream: S,
    sealer: Sealer,
    opener: StreamOpener,
}

/// The client side of the transport: a pool of authenticated connections per peer address.
pub struct Transport<N: Net> {
    net: N,
    wire: WireConfig,
    opener: Opener,
    config: TransportConfig,
    idle: Mutex<BTreeMap<String, Vec<Conn<N::TcpStream>>>>,
    backoff: Mutex<BTreeMap<String, PeerBackoff>>,
    /// Salt of the backoff jitter (so that nodes do not retry in step).
    jitter_salt: u64,
    warn: WarnLimiter,
    stats: Arc<InboundStats>,
}

impl<N: Net> std::fmt::Debug for Transport<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("cluster", &self.wire.cluster_name)
            .finish_non_exhaustive()
    }
}

impl<N: Net> Transport<N> {
    /// A transport on `net`; `opener` must be the node's one opener (shared replay guard).
    pub fn new(net: N, config: TransportConfig) -> Self {
        let mut wire = config.wire.clone();
        wire.frame_bytes_max = config.frame_bytes_max;
        let opener = Opener::new(&wire);
        let jitter_salt = (wire.wall_clock)() ^ fnv64(wire.cluster_name.as_bytes());
        let warn = WarnLimiter {
            interval: config.warn_interval,
            sources: Mutex::new(BTreeMap::new()),
        };
        Self {
            net,
            wire,
            opener,
            config,
            idle: Mutex::new(BTreeMap::new()),
            backoff: Mutex::new(BTreeMap::new()),
            jitter_salt,
            warn,
            stats: Arc::default(),
        }
    }

    /// Counters of the inbound side.
    pub fn inbound_stats(&self) -> &InboundStats {
        &self.stats
    }

    /// The same counters, shared (for a metrics exporter).
    pub fn inbound_stats_shared(&self) -> Arc<InboundStats> {
        Arc::clone(&self.stats)
    }

    /// Writes one rate-limited warning about the inbound connection from `peer`.
    fn warn_inbound(&self, peer: SocketAddr, what: &str, detail: &dyn std::fmt::Display) {
        match self.warn.allow(peer.ip(), Instant::now()) {
            Some(suppressed) => {
                self.stats.warn_lines.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%peer, suppressed, detail = %detail, "raft inbound: {what}");
            }
            None => {
                self.stats.warn_suppressed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// `Some(wait)` if fresh connections to `addr` are backing off.
    fn backing_off(&self, addr: &str) -> Option<(u32, Duration)> {
        let b = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        b.get(addr)
            .filter(|p| p.until > now)
            .map(|p| (p.failures, p.until - now))
    }

    /// Records that a fresh connection to `addr` was closed unanswered: the next fresh
    /// connection waits `min * 2^(failures-1)` (at most `max`), jittered down by up to half.
    fn connection_rejected(&self, addr: &str, reason: &str) {
        let mut b = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
        let entry = b.entry(addr.to_owned()).or_insert(PeerBackoff {
            failures: 0,
            until: Instant::now(),
        });
        entry.failures = entry.failures.saturating_add(1);
        let exp = entry.failures.saturating_sub(1).min(30);
        let base = self
            .config
            .reconnect_backoff_min
            .saturating_mul(1u32 << exp)
            .min(self.config.reconnect_backoff_max);
        let h = fnv64(addr.as_bytes()) ^ self.jitter_salt ^ u64::from(entry.failures);
        let frac = (h.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11) as f64 / (1u64 << 53) as f64;
        let delay = base.mul_f64(0.5 + 0.5 * frac);
        entry.until = Instant::now() + delay;
        if entry.failures == 1 {
            tracing::warn!(%addr, %reason, ?delay,
                "raft: peer closed our connection without answering; backing off reconnects");
        }
    }

    /// Records an answered call on a fresh connection: the peer is reachable again.
    fn connection_answered(&self, addr: &str) {
        let mut b = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = b.remove(addr)
            && p.failures > 1
        {
            tracing::info!(%addr, failures = p.failures, "raft: peer answers again");
        }
    }

    /// The wire settings in use (with the Raft frame limit).
    pub fn wire(&self) -> &WireConfig {
        &self.wire
    }

    /// The node's opener (one replay guard for everything it receives).
    pub fn opener(&self) -> &Opener {
        &self.opener
    }

    /// The socket seam.
    pub fn net(&self) -> &N {
        &self.net
    }

    /// An idle connection to `addr` that is still open. One the peer closed while it sat in
    /// the pool (the peer restarted, or its idle timeout ran out) is dropped here, before a
    /// request is written to it: a request sent on it would fail with an "early eof" whose
    /// outcome the caller could not know.
    fn take_idle(&self, addr: &str) -> Option<Conn<N::TcpStream>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let pool = idle.get_mut(addr)?;
        while let Some(mut conn) = pool.pop() {
            if still_open(&mut conn.stream) {
                return Some(conn);
            }
        }
        None
    }

    fn put_idle(&self, addr: &str, conn: Conn<N::TcpStream>) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let slot = idle.entry(addr.to_owned()).or_default();
        if slot.len() < self.config.idle_per_peer_max {
            slot.push(conn);
        }
    }

    /// Drops every idle connection to `addr` (after a peer restart or a failed call).
    pub fn forget(&self, addr: &str) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.remove(addr);
    }

    async fn connect(&self, addr: &str) -> Result<N::TcpStream, CallError> {
        let unreachable = |reason: String| CallError::Unreachable {
            addr: addr.to_owned(),
            reason,
        };
        let stream = tokio::time::timeout(self.config.connect_timeout, self.net.connect_tcp(addr))
            .await
            .map_err(|_| {
                unreachable(format!(
                    "connect timed out after {:?}",
                    self.config.connect_timeout
                ))
            })?
            .map_err(|e| unreachable(e.to_string()))?;
        Ok(stream)
    }

    /// Reads the server's challenge on a fresh connection (within `connect_timeout`).
    async fn handshake(
        &self,
        addr: &str,
        mut stream: N::TcpStream,
    ) -> Result<Conn<N::TcpStream>, CallError> {
        let challenge = tokio::time::timeout(
            self.config.connect_timeout,
            Challenge::read_from(&mut stream),
        )
        .await
        .map_err(|_| CallError::Failed {
            addr: addr.to_owned(),
            reason: format!(
                "no challenge from the server within {:?}",
                self.config.connect_timeout
            ),
        })?
        .map_err(|e| CallError::Failed {
            addr: addr.to_owned(),
            reason: format!("reading the server's challenge: {e}"),
        })?;
        Ok(Conn {
            stream,
            sealer: Sealer::bound(&self.wire, &challenge),
            opener: StreamOpener::bound(&self.opener, &challenge),
        })
    }

    /// Sends `req` to `addr` and waits for the response, within `timeout` (or the default;
    /// never longer than `rpc_timeout`).
    pub async fn call(
        &self,
        addr: &str,
        req: &Request,
        timeout: Option<Duration>,
    ) -> Result<Response, CallError> {
        let timeout = timeout.map_or(self.config.rpc_timeout, |t| t.min(self.config.rpc_timeout));
        self.call_within(addr, req, timeout).await
    }

    /// Sends `req` to `addr` and waits for the response for exactly `timeout` (a watch poll
    /// the node may hold needs longer than `rpc_timeout`).
    pub async fn call_within(
        &self,
        addr: &str,
        req: &Request,
        timeout: Duration,
    ) -> Result<Response, CallError> {
        let probe = (self.wire.frame_bytes_max.get() as usize)
            .saturating_sub(quorate_wire::HEADER_BYTES + quorate_wire::TAG_BYTES);
        let plain = postcard::to_allocvec(req).map_err(|e| CallError::Failed {
            addr: addr.to_owned(),
            reason: format!("encode: {e}"),
        })?;
        if plain.len() > probe {
            return Err(CallError::TooLarge {
                addr: addr.to_owned(),
                source: WireError::Oversize {
                    len: plain.len() as u64,
                    max: self.wire.frame_bytes_max.get(),
                },
            });
        }
        // Set once a fresh connection is established: a failure after that, before an answer,
        // means the peer closed (or ignored) us, which starts the reconnect backoff.
        let connected_fresh = AtomicBool::new(false);
        let fut = async {
            let (mut conn, fresh) = match self.take_idle(addr) {
                Some(c) => (c, false),
                None => {
                    if let Some((failures, wait)) = self.backing_off(addr) {
                        return Err(CallError::Unreachable {
                            addr: addr.to_owned(),
                            reason: format!(
                                "backing off for {wait:?} after {failures} connections \
                                 closed unanswered"
                            ),
                        });
                    }
                    let stream = self.connect(addr).await?;
                    connected_fresh.store(true, Ordering::Relaxed);
                    (self.handshake(addr, stream).await?, true)
                }
            };
            let failed = |reason: String| CallError::Failed {
                addr: addr.to_owned(),
                reason,
            };
            let framed = plain.len() + quorate_wire::HEADER_BYTES + quorate_wire::TAG_BYTES;
            if fresh && framed > PRE_AUTH_FRAME_BYTES_MAX as usize {
                // Authenticate the connection with a small frame first (sealed first: the
                // server checks that sequence numbers increase).
                let hello = conn
                    .sealer
                    .seal_bytes(KIND_HELLO, &[])
                    .map_err(|e| failed(e.to_string()))?;
                tokio::io::AsyncWriteExt::write_all(&mut conn.stream, &hello)
                    .await
                    .map_err(|e| failed(e.to_string()))?;
            }
            let sealed = conn
                .sealer
                .seal_bytes(req.kind(), &plain)
                .map_err(|e| failed(e.to_string()))?;
            tokio::io::AsyncWriteExt::write_all(&mut conn.stream, &sealed)
                .await
                .map_err(|e| failed(e.to_string()))?;
            tokio::io::AsyncWriteExt::flush(&mut conn.stream)
                .await
                .map_err(|e| failed(e.to_string()))?;
            let (kind, resp): (MessageKind, Response) =
                quorate_wire::read_frame(&mut conn.stream, &mut conn.opener)
                    .await
                    .map_err(|e| failed(e.to_string()))?;
            if kind != resp.kind() {
                return Err(failed(format!(
                    "response kind {:#06x} does not match its body",
                    kind.0
                )));
            }
            self.put_idle(addr, conn);
            Ok(resp)
        };
        let r = match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(CallError::Timeout {
                addr: addr.to_owned(),
                after: timeout,
            }),
        };
        if connected_fresh.load(Ordering::Relaxed) {
            match &r {
                Ok(_) => self.connection_answered(addr),
                Err(CallError::Failed { reason, .. }) => self.connection_rejected(addr, reason),
                Err(_) => {}
            }
        }
        r
    }
}

/// Whether an idle connection is still open. The server sends nothing unasked, so a stream
/// that is readable now (end of stream, an error, or stray bytes) was closed by the peer or
/// is out of step; one with nothing to read is open. Never waits.
fn still_open<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> bool {
    let mut byte = [0u8; 1];
    let mut buf = tokio::io::ReadBuf::new(&mut byte);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    std::pin::Pin::new(stream)
        .poll_read(&mut cx, &mut buf)
        .is_pending()
}

/// Answers requests; implemented by the node.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request sealed under a cluster key (a peer, or a client holding the
    /// cluster key).
    fn handle(&self, req: Request) -> impl std::future::Future<Output = Response> + Send;

    /// Answers one client request sealed under a client key (`quorate_wire::ClientKey`):
    /// the handler decides what such a client may do. By default nothing.
    fn handle_as_client(
        &self,
        req: ClientRequest,
    ) -> impl std::future::Future<Output = Response> + Send {
        let _ = req;
        std::future::ready(Response::Client(Err(CoordError::PermissionDenied {
            reason: "this service answers no client keys".to_owned(),
        })))
    }
}

/// Serves inbound connections on `listener` until `cancel` fires: per connection, send a
/// challenge, then read a frame, answer it, repeat; close at the first bad frame, when no
/// authentic frame came within `pre_auth_timeout`, after the idle timeout, or when a reply
/// cannot be written within `send_timeout`. See the module docs for the admission rules.
pub async fn serve<N: Net, H: Handler>(
    listener: N::TcpListener,
    transport: Arc<Transport<N>>,
    handler: Arc<H>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let table = quorate_wire::inbound::Inbound::default();
    let limits = quorate_wire::inbound::InboundLimits {
        connections_max: transport.config.inbound_connections_max,
        per_ip_max: transport.config.inbound_per_ip_max,
        unauthenticated_max: transport.config.inbound_unauthenticated_max,
    };
    loop {
        let accepted = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: one line per interval, then pause.
                let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
                transport.warn_inbound(unspecified, "listener accept failed", &e);
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let (slot, evict) = match table.admit(peer.ip(), &limits) {
            Admission::Admitted {
                slot,
                evict,
                evicted,
            } => {
                if evicted {
                    transport.stats.evicted.fetch_add(1, Ordering::Relaxed);
                }
                (slot, evict)
            }
            Admission::PerIpFull => {
                transport
                    .stats
                    .refused_per_ip
                    .fetch_add(1, Ordering::Relaxed);
                let max = transport.config.inbound_per_ip_max;
                transport.warn_inbound(
                    peer,
                    "too many connections from this address; closing the new one",
                    &format_args!("inbound_per_ip_max = {max}"),
                );
                continue;
            }
            Admission::Full => {
                transport.stats.refused_full.fetch_add(1, Ordering::Relaxed);
                let max = transport.config.inbound_connections_max;
                transport.warn_inbound(
                    peer,
                    "every inbound slot holds an authenticated connection; closing the new one",
                    &format_args!("inbound_connections_max = {max}: raise it"),
                );
                continue;
            }
        };
        transport.stats.accepted.fetch_add(1, Ordering::Relaxed);
        let transport = transport.clone();
        let handler = handler.clone();
        let cancel = cancel.clone();
        tracker.spawn(async move {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {}
                _ = evict.cancelled() => {}
                () = serve_conn(stream, peer, &transport, &*handler, &slot) => {}
            }
        });
    }
}

async fn serve_conn<N: Net, H: Handler>(
    mut stream: N::TcpStream,
    peer: SocketAddr,
    transport: &Transport<N>,
    handler: &H,
    slot: &InboundSlot,
) {
    let config = &transport.config;
    let challenge = match Challenge::generate_from(&transport.wire.random) {
        Ok(c) => c,
        Err(e) => {
            transport.warn_inbound(peer, "cannot make a challenge; closing", &e);
            return;
        }
    };
    match tokio::time::timeout(config.send_timeout, challenge.write_to(&mut stream)).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return,
        Err(_) => {
            transport
                .stats
                .send_timeouts
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
    let mut opener = StreamOpener::bound(&transport.opener, &challenge).accepting_clients();
    let mut sealer = Sealer::bound(&transport.wire, &challenge);
    let pre_auth_deadline = Instant::now() + config.pre_auth_timeout;
    let mut authenticated = false;
    loop {
        let deadline = if authenticated {
            Instant::now() + config.inbound_idle_timeout
        } else {
            pre_auth_deadline
        };
        let read = tokio::time::timeout_at(
            deadline,
            read_request(&mut stream, &mut opener, authenticated),
        )
        .await;
        let (kind, req, client) = match read {
            Err(_) if authenticated => return, // idle
            Err(_) => {
                transport
                    .stats
                    .pre_auth_timeouts
                    .fetch_add(1, Ordering::Relaxed);
                transport.warn_inbound(
                    peer,
                    "no authentic frame in time; closing",
                    &format_args!("pre_auth_timeout = {:?}", config.pre_auth_timeout),
                );
                return;
            }
            Ok(Err(WireError::Io(e))) if e.kind() == std::io::ErrorKind::UnexpectedEof => return,
            Ok(Err(e)) => {
                transport
                    .stats
                    .rejected_frames
                    .fetch_add(1, Ordering::Relaxed);
                transport.warn_inbound(peer, "rejected an inbound frame; closing", &e);
                return;
            }
            Ok(Ok(x)) => x,
        };
        if !authenticated {
            authenticated = true;
            slot.authenticated();
        }
        let Some(req) = req else {
            continue; // a hello: authenticated, nothing to answer
        };
        if kind != req.kind() {
            transport
                .stats
                .rejected_frames
                .fetch_add(1, Ordering::Relaxed);
            transport.warn_inbound(
                peer,
                "frame kind does not match its body; closing",
                &format_args!("kind {:#06x}", kind.0),
            );
            return;
        }
        // A client key gets client requests only (see `Handler::handle_as_client`), and its
        // answers are sealed under the same key.
        if kind == KIND_CLIENT_REQ {
            transport
                .stats
                .client_requests
                .fetch_add(1, Ordering::Relaxed);
        }
        let resp = match (&client, req) {
            (None, req) => match refuse_snapshot_chunk(&req, config.snapshot_bytes_max) {
                Some(refusal) => {
                    transport.warn_inbound(peer, "refused an InstallSnapshot chunk", &refusal);
                    Response::InstallSnapshot(Err(refusal))
                }
                None => handler.handle(req).await,
            },
            (Some(_), Request::Client(c)) => handler.handle_as_client(c).await,
            (Some(_), Request::Get(key)) => {
                handler
                    .handle_as_client(ClientRequest::Get {
                        key,
                        consistency: Consistency::Linearizable,
                    })
                    .await
            }
            (Some(_), _) => {
                transport
                    .stats
                    .client_key_refusals
                    .fetch_add(1, Ordering::Relaxed);
                transport.warn_inbound(
                    peer,
                    "a client key sent a cluster-internal message; closing",
                    &format_args!("kind {:#06x}", kind.0),
                );
                return;
            }
        };
        sealer.reply_under(client.as_ref());
        let write = quorate_wire::write_frame(&mut stream, &sealer, resp.kind(), &resp);
        match tokio::time::timeout(config.send_timeout, write).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                transport.warn_inbound(peer, "could not send a response; closing", &e);
                return;
            }
            Err(_) => {
                transport
                    .stats
                    .send_timeouts
                    .fetch_add(1, Ordering::Relaxed);
                transport.warn_inbound(
                    peer,
                    "the peer does not read its response; closing",
                    &format_args!("send_timeout = {:?}", config.send_timeout),
                );
                return;
            }
        }
    }
}

/// An InstallSnapshot chunk that would end past `snapshot_bytes_max` is refused before it
/// reaches openraft, which would otherwise grow the in-memory snapshot to its offset (one
/// frame could make the node allocate terabytes and abort).
fn refuse_snapshot_chunk(
    req: &Request,
    snapshot_bytes_max: u64,
) -> Option<OpenraftError<u64, InstallSnapshotError>> {
    let Request::InstallSnapshot(r) = req else {
        return None;
    };
    let end = r.offset.checked_add(r.data.len() as u64);
    if end.is_some_and(|end| end <= snapshot_bytes_max) {
        return None;
    }
    let reason = format!(
        "InstallSnapshot chunk at offset {} with {} bytes ends past snapshot_bytes_max = {}: \
         refused (raise snapshot_bytes_max on this node if the snapshot is genuine)",
        r.offset,
        r.data.len(),
        snapshot_bytes_max
    );
    let err = openraft::StorageError::from(openraft::StorageIOError::write_snapshot(
        Some(r.meta.signature()),
        openraft::AnyError::error(reason),
    ));
    Some(OpenraftError::Fatal(openraft::error::Fatal::StorageError(
        err,
    )))
}

fn fnv64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

// `read_request` reads the length from the header's last four bytes.
const _: () = assert!(quorate_wire::HEADER_BYTES == 40);

/// Reads one request frame; `None` for a hello. Before the connection has delivered an
/// authentic frame (`authenticated`), a frame longer than [`PRE_AUTH_FRAME_BYTES_MAX`] is
/// refused on its header alone, before its body is allocated or read.
async fn read_request<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    opener: &mut StreamOpener,
    authenticated: bool,
) -> Result<(MessageKind, Option<Request>, Option<ClientKey>), WireError> {
    use tokio::io::AsyncReadExt;
    let mut header = [0u8; quorate_wire::HEADER_BYTES];
    stream.read_exact(&mut header).await?;
    if !authenticated {
        // The ciphertext length is the header's last four bytes (big endian); quorate-wire
        // checks magic, version and the full limit when it parses the header below.
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
    if f.kind == KIND_HELLO {
        return Ok((f.kind, None, f.client));
    }
    let req = postcard::from_bytes(&f.payload).map_err(WireError::Decode)?;
    Ok((f.kind, Some(req), f.client))
}

/// openraft's network factory over a [`Transport`].
pub struct NetworkFactory<N: Net> {
    transport: Arc<Transport<N>>,
}

impl<N: Net> NetworkFactory<N> {
    /// A factory sharing `transport`.
    pub fn new(transport: Arc<Transport<N>>) -> Self {
        Self { transport }
    }
}

/// openraft's client for one peer.
pub struct PeerClient<N: Net> {
    transport: Arc<Transport<N>>,
    target: u64,
    addr: String,
}

impl<N: Net> RaftNetworkFactory<TypeConfig> for NetworkFactory<N> {
    type Network = PeerClient<N>;

    async fn new_client(&mut self, target: u64, node: &PeerNode) -> Self::Network {
        PeerClient {
            transport: self.transport.clone(),
            target,
            addr: node.addr.clone(),
        }
    }
}

type RpcErr<E = openraft::error::Infallible> = RPCError<u64, PeerNode, OpenraftError<u64, E>>;

impl<N: Net> PeerClient<N> {
    async fn rpc<E: std::error::Error>(
        &self,
        req: Request,
        option: &RPCOption,
    ) -> Result<Response, RpcErr<E>> {
        let entries = match &req {
            Request::AppendEntries(a) => a.entries.len() as u64,
            _ => 0,
        };
        match self
            .transport
            .call(&self.addr, &req, Some(option.hard_ttl()))
            .await
        {
            Ok(r) => Ok(r),
            Err(e @ CallError::Unreachable { .. }) => {
                Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Err(CallError::TooLarge { .. }) if entries > 1 => Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(entries / 2),
            )),
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }

    fn unexpected<E: std::error::Error>(&self) -> RpcErr<E> {
        let e = CallError::Failed {
            addr: self.addr.clone(),
            reason: "unexpected response type".to_owned(),
        };
        RPCError::Network(NetworkError::new(&e))
    }
}

/// openraft's pause before retrying a peer it could not reach: 25, 50, then every 100 ms
/// until an RPC succeeds. openraft's default is a constant 500 ms, so a follower that had
/// just restarted heard nothing from the leader for up to half a second after it was back:
/// its linearizable reads (and a role hand-off to it) waited that long. A connect to a
/// closed port fails at once, so retrying every 100 ms costs nothing worth saving.
pub const UNREACHABLE_RETRY: [Duration; 3] = [
    Duration::from_millis(25),
    Duration::from_millis(50),
    Duration::from_millis(100),
];

fn unreachable_backoff() -> openraft::network::Backoff {
    let last = UNREACHABLE_RETRY[UNREACHABLE_RETRY.len() - 1];
    openraft::network::Backoff::new(UNREACHABLE_RETRY.into_iter().chain(std::iter::repeat(last)))
}

impl<N: Net> RaftNetwork<TypeConfig> for PeerClient<N> {
    fn backoff(&self) -> openraft::network::Backoff {
        unreachable_backoff()
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RpcErr> {
        match self.rpc(Request::AppendEntries(rpc), &option).await? {
            Response::AppendEntries(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(self.unexpected()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RpcErr<InstallSnapshotError>> {
        match self.rpc(Request::InstallSnapshot(rpc), &option).await? {
            Response::InstallSnapshot(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(self.unexpected()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RpcErr> {
        match self.rpc(Request::Vote(rpc), &option).await? {
            Response::Vote(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(self.unexpected()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// openraft's own default (500 ms between retries) kept a restarted follower without
    /// entries for up to half a second; ours retries within 100 ms, for ever.
    #[test]
    fn an_unreachable_peer_is_retried_within_100_ms() {
        let steps: Vec<Duration> = unreachable_backoff().take(6).collect();
        let ms = |m| Duration::from_millis(m);
        assert_eq!(
            steps,
            vec![ms(25), ms(50), ms(100), ms(100), ms(100), ms(100)]
        );
    }
}
