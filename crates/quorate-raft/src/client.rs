//! The remote client of a quorate-raft cluster: [`CoordClient`] implements
//! `quorate_coord_api::Coord` completely over the authenticated client transport
//! ([`Request::Client`] with a [`ClientRequest`]), shared by any number of concurrent callers.
//!
//! - **Finding the leader.** One current node is shared by all callers. Writes go to it; a
//!   `NotLeader` answer moves it to the hinted leader, a refused connect marks the node down
//!   for `down_for` (its hints are ignored meanwhile) and moves on, and while no node names a
//!   leader (an election) the client pauses `retry_pause` between attempts. At most `attempts`
//!   nodes are tried per call. Only errors that prove nothing happened are retried for writes;
//!   a write that timed out returns `Timeout` (unknown outcome), and the next call starts at
//!   another node.
//! - **Watches** are resumable long-polls ([`WatchPoll`]): the client asks any node for the
//!   events from the revision after the last one it delivered (skipping the ones of that
//!   revision it already has), and the node answers at once or holds the poll up to
//!   `watch_wait`. After a reconnect or a node change the next poll resumes at the same point,
//!   so the stream has no gap; a point the history no longer holds ends the stream with
//!   `Compacted`.
//! - **Lock and campaign waiters watch** the queue of their lock (election) from the revision
//!   after their place was read, and re-read their place only when the key ahead of them (or
//!   their own) is deleted: etcd's recipe, no polling timer.
//! - [`RemoteClient`] is the older `&mut self` API (raw commands, per-call attempts) kept as a
//!   thin layer for the simulation tests and the benchmark.

use std::collections::VecDeque;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use quorate_coord_api::{
    Capabilities, ClusterStatus, Consistency, Coord, CoordError, DeleteResponse, ElectionLeader,
    EventKind, GetResponse, KeyValue, LeaderKey, LeaseGrant, LeaseId, LeaseInfo, LockGrant,
    ObserveStream, PutResponse, RangeRequest, RangeResponse, Revision, Txn, TxnResponse,
    WatchEvent, WatchStream,
};
use quorate_types::{FencingToken, NodeId};
use quorate_wire::WireConfig;
use quorate_wire::net::Net;
use tokio::time::Instant;

use crate::backend::{leader_key, lock_grant, unexpected};
use crate::machine::{Command, ELECTION_PREFIX, MachineLimits, Outcome, QueuePosition};
use crate::network::{
    AdminRequest, CallError, ClientRequest, ClientResponse, ClientWrite, Request, Response,
    Transport, TransportConfig, WatchBatch, WatchPoll,
};

/// Settings of a [`CoordClient`]. Build one with [`ClientConfig::lan`] and adjust.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Cluster name and keys (the cluster's, or a key it accepts).
    pub wire: WireConfig,
    /// The largest frame sent or accepted (the nodes' `Limits::frame_bytes_max`).
    pub frame_bytes_max: NonZeroU32,
    /// How long a connect to a node may take.
    pub connect_timeout: Duration,
    /// How long one call may take, not counting a watch poll's hold (above the nodes'
    /// `write_timeout`, so a slow commit is not reported as a lost answer).
    pub rpc_timeout: Duration,
    /// Nodes tried per operation before its last error is returned.
    pub attempts: NonZeroUsize,
    /// Pause before the next attempt when no node knows a live leader (election running).
    pub retry_pause: Duration,
    /// A node whose connect was refused is skipped (its leader hints ignored) for this long.
    pub down_for: Duration,
    /// Idle connections kept per node (at least the number of concurrent callers, watches
    /// and lock waiters included, or calls reconnect).
    pub idle_connections_per_node: usize,
    /// The most calls in flight to one node at once, watch polls not counted (each call
    /// holds one connection); more wait
    /// for a free slot (at most `rpc_timeout`, then `Unavailable`: nothing was sent). Keep it
    /// below the nodes' `inbound_per_ip_max` (64) with room for the peers' own connections
    /// when clients and nodes share an address: a node closes connections beyond that limit
    /// at accept, and a refused connection is an error for the caller.
    pub calls_in_flight_per_node_max: NonZeroUsize,
    /// The most events one watch poll asks for (at most the nodes' `watch_events_max`).
    pub watch_events_max: NonZeroU32,
    /// How long a node may hold a watch poll that has nothing to send (at most the nodes'
    /// `watch_wait_max`). Also bounds how late a lock waiter notices `lock_wait_max`.
    pub watch_wait: Duration,
    /// Longest wait for a lock or a campaign before `Timeout`; `None` waits as long as the
    /// lease lives (the `Coord` contract).
    pub lock_wait_max: Option<Duration>,
    /// What the client reports as the cluster's capabilities until [`CoordClient::connect`]
    /// (or [`CoordClient::refresh_capabilities`]) reads them from a node.
    pub capabilities: Capabilities,
}

impl ClientConfig {
    /// A client of a cluster on one LAN: 300 ms connects, 6 s calls (above the nodes' 5 s
    /// `write_timeout`), 8 attempts, 10 ms election pauses, a refused node skipped for 500 ms,
    /// 128 idle connections per node, at most 32 calls in flight per node, watch polls of up to 1024 events held up to 5 s (half
    /// the nodes' default `watch_wait_max`), no lock wait limit, and the capabilities of the
    /// default `lan` machine limits until read from a node.
    pub fn lan(wire: WireConfig) -> ClientConfig {
        let limits = crate::Limits::default();
        let timing = crate::Timing::lan();
        let slack = timing.heartbeat + timing.election_max * 2 + Duration::from_millis(100);
        ClientConfig {
            wire,
            frame_bytes_max: limits.frame_bytes_max,
            connect_timeout: Duration::from_millis(300),
            rpc_timeout: Duration::from_secs(6),
            attempts: NonZeroUsize::new(8).unwrap_or(NonZeroUsize::MIN),
            retry_pause: Duration::from_millis(10),
            down_for: Duration::from_millis(500),
            idle_connections_per_node: 128,
            calls_in_flight_per_node_max: NonZeroUsize::new(32).unwrap_or(NonZeroUsize::MIN),
            watch_events_max: NonZeroU32::new(1024).unwrap_or(NonZeroU32::MIN),
            watch_wait: Duration::from_secs(5),
            lock_wait_max: None,
            capabilities: crate::backend::capabilities(
                "quorate-raft (remote)",
                &MachineLimits::lan(),
                slack,
                true,
            ),
        }
    }
}

/// The shared state of a client and of its watch streams.
struct Inner<N: Net> {
    transport: Transport<N>,
    addrs: Vec<String>,
    current: AtomicUsize,
    down_until: Mutex<Vec<Option<Instant>>>,
    config: ClientConfig,
    capabilities: Mutex<Capabilities>,
    /// Calls sent (every attempt), for tests and reports.
    calls: AtomicU64,
    /// Per node: slots for calls in flight (`calls_in_flight_per_node_max`).
    slots: Vec<Arc<tokio::sync::Semaphore>>,
}

/// A `Coord` client of a quorate-raft cluster from outside. See the module docs. Cheap to
/// clone (clones share the learned leader and the connection pool).
pub struct CoordClient<N: Net> {
    inner: Arc<Inner<N>>,
}

impl<N: Net> Clone for CoordClient<N> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<N: Net> std::fmt::Debug for CoordClient<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoordClient")
            .field("addrs", &self.inner.addrs)
            .field("current", &self.inner.current.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// How a request may be retried on another node.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A write: a lost answer (`Timeout`) is an unknown outcome and is not retried.
    Write,
    /// A read or poll: safe to send again anywhere.
    Read,
}

impl<N: Net> CoordClient<N> {
    /// A client of the nodes whose Raft listeners are at `addrs` (tried first in this
    /// order). No connection is made until the first call.
    pub fn new(net: N, config: ClientConfig, addrs: Vec<String>) -> CoordClient<N> {
        let transport = Transport::new(
            net,
            TransportConfig {
                wire: config.wire.clone(),
                frame_bytes_max: config.frame_bytes_max,
                connect_timeout: config.connect_timeout,
                rpc_timeout: config.rpc_timeout,
                idle_per_peer_max: config.idle_connections_per_node,
                inbound_connections_max: 1,
                inbound_idle_timeout: Duration::from_secs(1),
                ..TransportConfig::from_limits(
                    config.wire.clone(),
                    &crate::config::Limits::default(),
                )
            },
        );
        CoordClient {
            inner: Arc::new(Inner {
                transport,
                down_until: Mutex::new(vec![None; addrs.len()]),
                slots: addrs
                    .iter()
                    .map(|_| {
                        Arc::new(tokio::sync::Semaphore::new(
                            config.calls_in_flight_per_node_max.get(),
                        ))
                    })
                    .collect(),
                addrs,
                current: AtomicUsize::new(0),
                capabilities: Mutex::new(config.capabilities.clone()),
                config,
                calls: AtomicU64::new(0),
            }),
        }
    }

    /// A client whose capabilities are read from a node of the cluster.
    pub async fn connect(
        net: N,
        config: ClientConfig,
        addrs: Vec<String>,
    ) -> Result<CoordClient<N>, CoordError> {
        let c = CoordClient::new(net, config, addrs);
        c.refresh_capabilities().await?;
        Ok(c)
    }

    /// Reads the cluster's capabilities from a node; [`Coord::capabilities`] reports them
    /// from now on.
    pub async fn refresh_capabilities(&self) -> Result<Capabilities, CoordError> {
        match self
            .inner
            .request(ClientRequest::Capabilities, Kind::Read)
            .await?
        {
            ClientResponse::Capabilities(mut caps) => {
                caps.backend = format!("{} (remote)", caps.backend);
                *self
                    .inner
                    .capabilities
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = caps.clone();
                Ok(caps)
            }
            _ => Err(wrong_response()),
        }
    }

    /// The node addresses, in index order.
    pub fn addrs(&self) -> &[String] {
        &self.inner.addrs
    }

    /// The node tried first (the last one that answered, or the hinted leader).
    pub fn current(&self) -> Option<&str> {
        let i = self.inner.current.load(Ordering::Relaxed);
        self.inner.addrs.get(i).map(String::as_str)
    }

    /// How many calls this client (and its clones and streams) sent so far, every attempt
    /// counted.
    pub fn calls_sent(&self) -> u64 {
        self.inner.calls.load(Ordering::Relaxed)
    }

    /// Proposes a write, trying up to `attempts` nodes (see the module docs); returns its log
    /// index and the machine's outcome (`Outcome::Rejected` is an `Ok` here).
    pub async fn write(
        &self,
        w: ClientWrite,
        attempts: usize,
    ) -> Result<(u64, Outcome), CoordError> {
        match self
            .inner
            .request_with(ClientRequest::Write(w), Kind::Write, attempts)
            .await?
        {
            ClientResponse::Written(index, outcome) => Ok((index, outcome)),
            _ => Err(wrong_response()),
        }
    }

    /// Sends one request to node `i` (no retry, no leader following): for tests and tools
    /// that must talk to a particular node.
    pub async fn call_node(
        &self,
        i: usize,
        req: ClientRequest,
    ) -> Result<ClientResponse, CoordError> {
        self.inner.call_node(i, &req).await
    }

    async fn propose(&self, w: ClientWrite) -> Result<(u64, Outcome), CoordError> {
        match self.inner.write(w).await? {
            (_, Outcome::Rejected(e)) => Err(e),
            ok => Ok(ok),
        }
    }

    async fn done(&self, w: ClientWrite) -> Result<Revision, CoordError> {
        match self.propose(w).await? {
            (_, Outcome::Done { revision, .. }) => Ok(revision),
            (_, other) => Err(unexpected(&other)),
        }
    }

    /// Joins a lock or election queue and waits (watching) until at its head.
    async fn queue_wait(
        &self,
        w: ClientWrite,
    ) -> Result<(QueuePosition, FencingToken), CoordError> {
        let deadline = self.inner.config.lock_wait_max.map(|d| Instant::now() + d);
        let (index, outcome) = self.propose(w).await?;
        let mut pos = match outcome {
            Outcome::Queued(pos) => pos,
            other => return Err(unexpected(&other)),
        };
        // The place was computed at `index`: the key ahead existed then, so its delete
        // comes later.
        let mut from = Revision(index).next();
        let queue = match pos.key.rfind('/') {
            Some(i) => pos.key[..=i].to_owned(),
            None => {
                return Err(CoordError::Internal {
                    reason: format!("queue key {} has no queue prefix", pos.key),
                });
            }
        };
        loop {
            if let Some(token) = pos.token {
                return Ok((pos, token));
            }
            let Some(ahead) = pos.ahead.clone() else {
                return Err(CoordError::Internal {
                    reason: format!("queue key {} neither holds nor waits", pos.key),
                });
            };
            let mut cursor = Cursor::new(queue.clone(), from);
            'wait: loop {
                if let Some(d) = deadline
                    && Instant::now() >= d
                {
                    return Err(CoordError::Timeout {
                        what: format!(
                            "{} within lock_wait_max = {:?}",
                            pos.key, self.inner.config.lock_wait_max
                        ),
                    });
                }
                let batch = self.inner.poll(&cursor).await?;
                for ev in &batch.events {
                    cursor.advance(ev);
                    if ev.kind == EventKind::Delete && (ev.kv.key == ahead || ev.kv.key == pos.key)
                    {
                        break 'wait;
                    }
                }
            }
            let (rev, p) = match self
                .inner
                .request(
                    ClientRequest::Position {
                        key: pos.key.clone(),
                        lease: pos.lease,
                    },
                    Kind::Read,
                )
                .await?
            {
                ClientResponse::Position(rev, p) => (rev, p),
                _ => return Err(wrong_response()),
            };
            pos = p;
            from = rev.next();
        }
    }

    async fn leader_at(
        &self,
        election: &str,
    ) -> Result<(Revision, Option<ElectionLeader>), CoordError> {
        self.inner.leader_at(election).await
    }

    async fn admin(&self, req: AdminRequest) -> Result<(), CoordError> {
        match self
            .inner
            .request(ClientRequest::Admin(req), Kind::Write)
            .await?
        {
            ClientResponse::Admin => Ok(()),
            _ => Err(wrong_response()),
        }
    }
}

fn wrong_response() -> CoordError {
    CoordError::Internal {
        reason: "the node answered with the wrong response type (version mismatch?)".to_owned(),
    }
}

impl<N: Net> Inner<N> {
    /// One call to node `i`. A call that certainly did not reach it is `Unavailable`; one
    /// that may have is `Timeout` (unknown outcome).
    async fn call_node(&self, i: usize, req: &ClientRequest) -> Result<ClientResponse, CoordError> {
        let addr = self.addrs.get(i).ok_or_else(|| {
            if self.addrs.is_empty() {
                CoordError::invalid("the client has no node addresses: give it at least one")
            } else {
                CoordError::invalid(format!("no node with index {i}"))
            }
        })?;
        let hold = match req {
            ClientRequest::WatchPoll(p) => p.wait,
            _ => Duration::ZERO,
        };
        let req = Request::Client(req.clone());
        // A free slot first (nothing is sent while waiting for one). Watch polls, held by
        // the node for up to `watch_wait`, take none: they would block the short calls.
        let slot = match req {
            Request::Client(ClientRequest::WatchPoll(_)) => None,
            _ => self.slots.get(i).cloned(),
        };
        let _permit = match slot {
            Some(s) => Some(
                tokio::time::timeout(self.config.rpc_timeout, s.acquire_owned())
                    .await
                    .map_err(|_| CoordError::Unavailable {
                        reason: format!(
                            "{addr}: no free call slot within {:?} (calls_in_flight_per_node_max = {})",
                            self.config.rpc_timeout, self.config.calls_in_flight_per_node_max
                        ),
                    })?
                    .map_err(|_| CoordError::Unavailable {
                        reason: format!("{addr}: the client is closing"),
                    })?,
            ),
            None => None,
        };
        self.calls.fetch_add(1, Ordering::Relaxed);
        match self
            .transport
            .call_within(addr, &req, self.config.rpc_timeout + hold)
            .await
        {
            Ok(Response::Client(r)) => {
                self.set_down(i, None);
                r
            }
            Ok(_) => Err(wrong_response()),
            Err(e) => {
                // Pooled connections to a node that failed are likely dead too.
                self.transport.forget(addr);
                Err(match e {
                    CallError::Unreachable { reason, .. } => {
                        self.set_down(i, Some(Instant::now() + self.config.down_for));
                        CoordError::Unavailable {
                            reason: format!("{addr}: {reason}"),
                        }
                    }
                    CallError::TooLarge { source, .. } => CoordError::invalid(format!(
                        "request does not fit a frame ({source}): write less per request"
                    )),
                    other => CoordError::Timeout {
                        what: other.to_string(),
                    },
                })
            }
        }
    }

    fn set_down(&self, i: usize, until: Option<Instant>) {
        let mut d = self.down_until.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = d.get_mut(i) {
            *slot = until;
        }
    }

    fn is_down(&self, i: usize, now: Instant) -> bool {
        let d = self.down_until.lock().unwrap_or_else(|p| p.into_inner());
        d.get(i).copied().flatten().is_some_and(|t| t > now)
    }

    /// After `e` from node `from`: moves the shared current node to the hinted leader (unless
    /// it is known down) or to the next node not known down. Returns whether a usable hint
    /// was followed.
    fn follow(&self, from: usize, e: &CoordError) -> bool {
        let n = self.addrs.len().max(1);
        let now = Instant::now();
        let hinted = match e {
            CoordError::NotLeader {
                leader_addr: Some(a),
                ..
            } => self
                .addrs
                .iter()
                .position(|x| x == a)
                .filter(|&i| i != from && !self.is_down(i, now)),
            _ => None,
        };
        let next = hinted.unwrap_or_else(|| {
            (1..=n)
                .map(|k| (from + k) % n)
                .find(|&i| !self.is_down(i, now))
                .unwrap_or((from + 1) % n)
        });
        let _ = self
            .current
            .compare_exchange(from, next, Ordering::Relaxed, Ordering::Relaxed);
        hinted.is_some()
    }

    async fn request(&self, req: ClientRequest, kind: Kind) -> Result<ClientResponse, CoordError> {
        self.request_with(req, kind, self.config.attempts.get())
            .await
    }

    /// Sends `req` to the current node, following hints over at most `attempts` nodes.
    async fn request_with(
        &self,
        req: ClientRequest,
        kind: Kind,
        attempts: usize,
    ) -> Result<ClientResponse, CoordError> {
        let mut last = CoordError::Unavailable {
            reason: "no attempt made".to_owned(),
        };
        for _ in 0..attempts.max(1) {
            let i = self.current.load(Ordering::Relaxed) % self.addrs.len().max(1);
            let err = match self.call_node(i, &req).await {
                Ok(r) => return Ok(r),
                Err(e) => e,
            };
            let unknown = err.outcome_unknown() && kind == Kind::Write;
            if !err.is_retryable() || unknown {
                if matches!(err, CoordError::Timeout { .. }) {
                    // Not retried (the outcome is unknown), but the next call goes elsewhere:
                    // a node that hangs must not cost every later call a full `rpc_timeout`.
                    self.follow(i, &err);
                }
                return Err(err);
            }
            let followed = self.follow(i, &err);
            if !followed
                && !matches!(
                    err,
                    CoordError::Unavailable { .. } | CoordError::Timeout { .. }
                )
            {
                // No node named a live leader: an election is running.
                tokio::time::sleep(self.config.retry_pause).await;
            }
            last = err;
        }
        Err(last)
    }

    async fn write(&self, w: ClientWrite) -> Result<(u64, Outcome), CoordError> {
        match self.request(ClientRequest::Write(w), Kind::Write).await? {
            ClientResponse::Written(index, outcome) => Ok((index, outcome)),
            _ => Err(wrong_response()),
        }
    }

    /// One watch poll from `cursor`'s point.
    async fn poll(&self, cursor: &Cursor) -> Result<WatchBatch, CoordError> {
        self.poll_within(cursor, self.config.watch_wait).await
    }

    async fn poll_within(&self, cursor: &Cursor, wait: Duration) -> Result<WatchBatch, CoordError> {
        let req = ClientRequest::WatchPoll(WatchPoll {
            prefix: cursor.prefix.clone(),
            from_revision: cursor.next,
            skip: cursor.skip,
            max_events: self.config.watch_events_max.get(),
            wait,
        });
        match self.request(req, Kind::Read).await? {
            ClientResponse::Watch(b) => Ok(b),
            _ => Err(wrong_response()),
        }
    }

    async fn leader_at(
        &self,
        election: &str,
    ) -> Result<(Revision, Option<ElectionLeader>), CoordError> {
        let req = ClientRequest::Leader {
            election: election.to_owned(),
        };
        match self.request(req, Kind::Read).await? {
            ClientResponse::Leader(rev, leader) => Ok((rev, leader)),
            _ => Err(wrong_response()),
        }
    }
}

/// Where a watch resumes: the first revision wanted, and how many events of it were
/// delivered already.
#[derive(Clone, Debug)]
struct Cursor {
    prefix: String,
    next: Revision,
    skip: u32,
}

impl Cursor {
    fn new(prefix: String, from: Revision) -> Cursor {
        Cursor {
            prefix,
            next: from,
            skip: 0,
        }
    }

    /// Records that `ev` was delivered.
    fn advance(&mut self, ev: &WatchEvent) {
        if ev.revision() == self.next {
            self.skip = self.skip.saturating_add(1);
        } else {
            self.next = ev.revision();
            self.skip = 1;
        }
    }
}

/// State of one watch stream.
struct WatchState<N: Net> {
    inner: Arc<Inner<N>>,
    cursor: Cursor,
    buffered: VecDeque<WatchEvent>,
    done: bool,
}

impl<N: Net> WatchState<N> {
    async fn next(&mut self) -> Option<Result<WatchEvent, CoordError>> {
        if self.done {
            return None;
        }
        loop {
            if let Some(ev) = self.buffered.pop_front() {
                self.cursor.advance(&ev);
                return Some(Ok(ev));
            }
            match self.inner.poll(&self.cursor).await {
                Ok(batch) => self.buffered.extend(batch.events),
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// State of one observe stream.
struct ObserveState<N: Net> {
    inner: Arc<Inner<N>>,
    election: String,
    cursor: Cursor,
    first: Option<Option<ElectionLeader>>,
    last: Option<ElectionLeader>,
    done: bool,
}

impl<N: Net> ObserveState<N> {
    async fn next(&mut self) -> Option<Result<Option<ElectionLeader>, CoordError>> {
        if self.done {
            return None;
        }
        if let Some(first) = self.first.take() {
            self.last.clone_from(&first);
            return Some(Ok(first));
        }
        loop {
            let batch = match self.inner.poll(&self.cursor).await {
                Ok(b) => b,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            };
            if batch.events.is_empty() {
                continue;
            }
            for ev in &batch.events {
                self.cursor.advance(ev);
            }
            match self.inner.leader_at(&self.election).await {
                Ok((_, now)) if now != self.last => {
                    self.last.clone_from(&now);
                    return Some(Ok(now));
                }
                Ok(_) => {}
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

fn lease_grant(outcome: Outcome) -> Result<LeaseGrant, CoordError> {
    match outcome {
        Outcome::Lease { id, ttl_ms } => Ok(LeaseGrant {
            id,
            ttl: Duration::from_millis(ttl_ms),
        }),
        other => Err(unexpected(&other)),
    }
}

#[async_trait]
impl<N: Net> Coord for CoordClient<N> {
    fn capabilities(&self) -> Capabilities {
        self.inner
            .capabilities
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<PutResponse, CoordError> {
        let w = ClientWrite::Put {
            key: key.to_owned(),
            value,
            lease,
        };
        match self.propose(w).await? {
            (_, Outcome::Put(r)) => Ok(r),
            (_, other) => Err(unexpected(&other)),
        }
    }

    async fn get(&self, key: &str, consistency: Consistency) -> Result<GetResponse, CoordError> {
        let req = ClientRequest::Get {
            key: key.to_owned(),
            consistency,
        };
        match self.inner.request(req, Kind::Read).await? {
            ClientResponse::Get(r) => Ok(r),
            _ => Err(wrong_response()),
        }
    }

    async fn range(&self, req: RangeRequest) -> Result<RangeResponse, CoordError> {
        match self
            .inner
            .request(ClientRequest::Range(req), Kind::Read)
            .await?
        {
            ClientResponse::Range(r) => Ok(r),
            _ => Err(wrong_response()),
        }
    }

    async fn delete(&self, key: &str) -> Result<DeleteResponse, CoordError> {
        let w = ClientWrite::Delete {
            key: key.to_owned(),
        };
        match self.propose(w).await? {
            (_, Outcome::Delete(r)) => Ok(r),
            (_, other) => Err(unexpected(&other)),
        }
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, CoordError> {
        match self.propose(ClientWrite::Txn(txn)).await? {
            (_, Outcome::Txn(r)) => Ok(r),
            (_, other) => Err(unexpected(&other)),
        }
    }

    async fn watch(&self, prefix: &str, from: Option<Revision>) -> Result<WatchStream, CoordError> {
        let (cursor, buffered) = match from {
            // Checks the prefix and the history now, and keeps what came.
            Some(from) => {
                let cursor = Cursor::new(prefix.to_owned(), from.max(Revision(1)));
                let batch = self.inner.poll_within(&cursor, Duration::ZERO).await?;
                (cursor, batch.events.into())
            }
            // "Changes after the call": after a linearizable read's revision.
            None => {
                let read = self.get(prefix, Consistency::Linearizable).await?;
                (
                    Cursor::new(prefix.to_owned(), read.revision.next()),
                    VecDeque::new(),
                )
            }
        };
        let state = WatchState {
            inner: Arc::clone(&self.inner),
            cursor,
            buffered,
            done: false,
        };
        Ok(futures::stream::unfold(state, |mut st| async move {
            let item = st.next().await?;
            Some((item, st))
        })
        .boxed())
    }

    async fn lease_grant(&self, ttl: Duration) -> Result<LeaseGrant, CoordError> {
        // Whole milliseconds, rounded up (as the embedded backend does).
        let ttl_ms = u64::try_from(ttl.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
        let (_, outcome) = self.propose(ClientWrite::LeaseGrant { ttl_ms }).await?;
        lease_grant(outcome)
    }

    async fn lease_keep_alive(&self, id: LeaseId) -> Result<LeaseGrant, CoordError> {
        let (_, outcome) = self.propose(ClientWrite::LeaseKeepAlive { id }).await?;
        lease_grant(outcome)
    }

    async fn lease_revoke(&self, id: LeaseId) -> Result<Revision, CoordError> {
        match self.propose(ClientWrite::LeaseRevoke { id }).await? {
            (index, Outcome::LeasesEnded { .. }) => Ok(Revision(index)),
            (_, other) => Err(unexpected(&other)),
        }
    }

    async fn lease_time_to_live(&self, id: LeaseId) -> Result<LeaseInfo, CoordError> {
        match self
            .inner
            .request(ClientRequest::LeaseTimeToLive { id }, Kind::Read)
            .await?
        {
            ClientResponse::LeaseInfo(i) => Ok(i),
            _ => Err(wrong_response()),
        }
    }

    async fn lock(&self, name: &str, lease: LeaseId) -> Result<LockGrant, CoordError> {
        let w = ClientWrite::Lock {
            name: name.to_owned(),
            lease,
        };
        let (pos, token) = self.queue_wait(w).await?;
        Ok(lock_grant(name, pos, token))
    }

    async fn unlock(&self, lock: &LockGrant) -> Result<Revision, CoordError> {
        self.done(ClientWrite::Unlock {
            key: lock.key.clone(),
            create_revision: lock.create_revision,
        })
        .await
    }

    async fn lock_holder(
        &self,
        name: &str,
        consistency: Consistency,
    ) -> Result<Option<LockGrant>, CoordError> {
        let req = ClientRequest::LockHolder {
            name: name.to_owned(),
            consistency,
        };
        match self.inner.request(req, Kind::Read).await? {
            ClientResponse::LockHolder(h) => Ok(h),
            _ => Err(wrong_response()),
        }
    }

    async fn campaign(
        &self,
        election: &str,
        value: Vec<u8>,
        lease: LeaseId,
    ) -> Result<LeaderKey, CoordError> {
        let w = ClientWrite::Campaign {
            election: election.to_owned(),
            value,
            lease,
        };
        let (pos, token) = self.queue_wait(w).await?;
        Ok(leader_key(election, pos, token))
    }

    async fn proclaim(&self, leader: &LeaderKey, value: Vec<u8>) -> Result<Revision, CoordError> {
        self.done(ClientWrite::Proclaim {
            key: leader.key.clone(),
            create_revision: leader.create_revision,
            value,
        })
        .await
    }

    async fn resign(&self, leader: &LeaderKey) -> Result<Revision, CoordError> {
        self.done(ClientWrite::Resign {
            key: leader.key.clone(),
            create_revision: leader.create_revision,
        })
        .await
    }

    async fn leader(&self, election: &str) -> Result<Option<ElectionLeader>, CoordError> {
        Ok(self.leader_at(election).await?.1)
    }

    async fn observe(&self, election: &str) -> Result<ObserveStream, CoordError> {
        let (rev, first) = self.leader_at(election).await?;
        let state = ObserveState {
            inner: Arc::clone(&self.inner),
            election: election.to_owned(),
            cursor: Cursor::new(format!("{ELECTION_PREFIX}{election}/"), rev.next()),
            first: Some(first),
            last: None,
            done: false,
        };
        Ok(futures::stream::unfold(state, |mut st| async move {
            let item = st.next().await?;
            Some((item, st))
        })
        .boxed())
    }

    async fn status(&self) -> Result<ClusterStatus, CoordError> {
        // A node in an election knows no leader; ask again (bounded) before answering so.
        let mut last = None;
        for _ in 0..self.inner.config.attempts.get() {
            match self
                .inner
                .request(ClientRequest::Status, Kind::Read)
                .await?
            {
                ClientResponse::Status(s) if s.leader.is_some() => return Ok(s),
                ClientResponse::Status(s) => last = Some(s),
                _ => return Err(wrong_response()),
            }
            tokio::time::sleep(self.inner.config.retry_pause).await;
        }
        last.ok_or_else(wrong_response)
    }

    async fn add_learner(&self, node: NodeId, addr: String) -> Result<(), CoordError> {
        self.admin(AdminRequest::AddLearner {
            node: node.to_string(),
            addr,
        })
        .await
    }

    async fn promote_voter(&self, node: NodeId) -> Result<(), CoordError> {
        self.admin(AdminRequest::Promote {
            node: node.to_string(),
        })
        .await
    }

    async fn remove_node(&self, node: NodeId) -> Result<(), CoordError> {
        self.admin(AdminRequest::Remove {
            node: node.to_string(),
        })
        .await
    }
}

/// The older client API: raw [`Command`]s and per-call attempts, `&mut self`. A thin layer
/// over [`CoordClient`] (same leader following, same protocol), kept for the simulation
/// tests and the benchmark.
pub struct RemoteClient<N: Net> {
    client: CoordClient<N>,
}

impl<N: Net> std::fmt::Debug for RemoteClient<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteClient")
            .field("client", &self.client)
            .finish()
    }
}

impl<N: Net> RemoteClient<N> {
    /// A client of the nodes at `addrs`, each call bounded by `config.rpc_timeout`.
    pub fn new(net: N, config: TransportConfig, addrs: Vec<String>) -> Self {
        let mut c = ClientConfig::lan(config.wire);
        c.frame_bytes_max = config.frame_bytes_max;
        c.connect_timeout = config.connect_timeout;
        c.rpc_timeout = config.rpc_timeout;
        c.idle_connections_per_node = config.idle_per_peer_max;
        Self {
            client: CoordClient::new(net, c, addrs),
        }
    }

    /// The full client underneath.
    pub fn client(&self) -> &CoordClient<N> {
        &self.client
    }

    /// The node tried first (the last one that answered).
    pub fn current(&self) -> Option<&str> {
        self.client.current()
    }

    /// Proposes `cmd`, trying up to `attempts` nodes. Only errors that prove nothing happened
    /// (`NotLeader`, `NoQuorum`, `Unavailable`) move on to another node; a `Timeout` is
    /// returned at once, since the command may have been applied, but the next call starts at
    /// another node. Commands a client may not propose (lease expiry) fail with
    /// `InvalidArgument`.
    pub async fn propose(
        &mut self,
        cmd: &Command,
        attempts: usize,
    ) -> Result<(u64, Outcome), CoordError> {
        let w = ClientWrite::try_from(cmd.clone())?;
        self.client.write(w, attempts).await
    }

    /// Reads `key` linearizably (any node; followers use a read index), trying up to
    /// `attempts` nodes. Returns the revision read at and the key.
    pub async fn get(
        &mut self,
        key: &str,
        attempts: usize,
    ) -> Result<(u64, Option<KeyValue>), CoordError> {
        let req = ClientRequest::Get {
            key: key.to_owned(),
            consistency: Consistency::Linearizable,
        };
        match self
            .client
            .inner
            .request_with(req, Kind::Read, attempts)
            .await?
        {
            ClientResponse::Get(r) => Ok((r.revision.0, r.kv)),
            _ => Err(wrong_response()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test")]
mod tests {
    use quorate_wire::net::TokioNet;
    use quorate_wire::{ClusterKey, KeyRing};

    use super::*;

    fn config() -> ClientConfig {
        let key = ClusterKey::from_bytes([3; 32]);
        ClientConfig::lan(WireConfig::new("client-test", KeyRing::new(key, vec![])).unwrap())
    }

    #[tokio::test]
    async fn a_client_without_nodes_fails_with_a_clear_error() {
        let c = CoordClient::new(TokioNet, config(), vec![]);
        let err = c.put("k", b"v".to_vec(), None).await.unwrap_err();
        assert!(matches!(err, CoordError::InvalidArgument { .. }), "{err}");
        assert!(err.to_string().contains("no node addresses"), "{err}");
        let err = c.watch("", None).await.err().unwrap();
        assert!(matches!(err, CoordError::InvalidArgument { .. }), "{err}");
        let err = c.status().await.unwrap_err();
        assert!(matches!(err, CoordError::InvalidArgument { .. }), "{err}");
        assert_eq!(c.calls_sent(), 0);
    }

    #[test]
    fn a_cursor_counts_the_events_of_its_revision() {
        let ev = |rev: u64| WatchEvent {
            kind: EventKind::Put,
            kv: KeyValue {
                key: "k".into(),
                value: Vec::new(),
                create_revision: Revision(rev),
                mod_revision: Revision(rev),
                version: 1,
                lease: None,
            },
        };
        let mut c = Cursor::new("k".into(), Revision(5));
        c.advance(&ev(5));
        c.advance(&ev(5));
        assert_eq!((c.next, c.skip), (Revision(5), 2));
        c.advance(&ev(7));
        assert_eq!((c.next, c.skip), (Revision(7), 1));
    }

    #[test]
    fn clients_may_not_propose_raft_internal_commands() {
        let expire = Command::LeaseExpire {
            leases: vec![(LeaseId(1), 1)],
        };
        assert!(matches!(
            ClientWrite::try_from(expire),
            Err(CoordError::InvalidArgument { .. })
        ));
        let chosen = Command::LeaseGrant {
            id: Some(LeaseId(9)),
            ttl_ms: 5_000,
        };
        assert!(ClientWrite::try_from(chosen).is_err());
        let put = Command::Put {
            key: "k".into(),
            value: b"v".to_vec(),
            lease: None,
        };
        assert_eq!(
            ClientWrite::try_from(put.clone()).unwrap().into_command(),
            put
        );
    }
}
