//! The async shell: one tokio task owns the [`Core`], one UDP socket (from a
//! [`quorate_wire::net::Net`]), the timers and the health subscription; every datagram is sealed
//! and opened with `quorate-wire`, so all gossip is authenticated. Datagrams that are oversize,
//! of another cluster, unauthentic, replayed or malformed are dropped and counted in
//! [`Metrics`]; authentication failures are also logged at WARN, at most once per sender
//! address per [`AUTH_LOG_INTERVAL`], since they usually mean a mis-keyed node.
//!
//! Every datagram is sealed for its recipient's node id (a join request to a seed address,
//! whose id is unknown, for any recipient), and the opener knows this node's own sealer
//! session, so neither a copy of one of our own datagrams nor one sealed for another node is
//! accepted. When the task ends, for whatever reason, it publishes a final snapshot that says
//! so ([`MembershipSnapshot::stopped`], no majority) and a [`MembershipEvent::Stopped`] event.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use quorate_health_api::{HealthSnapshot, HealthView};
use quorate_membership_api::{
    HealthSummary, Membership, MembershipEvent, MembershipEvents, MembershipSnapshot, StopReason,
};
use quorate_types::NodeMeta;
use quorate_wire::net::{Datagram, Net};
use quorate_wire::{
    MessageKind, Opener, RECIPIENT_ANYONE, Sealer, WallClock, WireConfig, WireError, peek_kind,
};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::MembershipConfig;
use crate::engine::{Core, CoreConfig, CoreCounters, KIND_JOIN, Timer};
use crate::error::MembershipError;

/// How long one seed name may take to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);
/// At most one WARN line per sender address per this interval for datagrams that fail
/// authentication; the next line says how many were not logged.
pub const AUTH_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Most sender addresses the authentication log limiter remembers; beyond, the oldest is
/// forgotten (its next failure is logged again).
const AUTH_LOG_SENDERS_MAX: usize = 256;

/// Counters of one node's membership (wire level and protocol level).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Metrics {
    /// Datagrams received (before authentication).
    pub packets_in: u64,
    /// Datagrams sent.
    pub packets_out: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Dropped: larger than `packet_bytes_max`.
    pub dropped_oversize: u64,
    /// Dropped: of another cluster (cluster name tag differs).
    pub dropped_wrong_cluster: u64,
    /// Dropped: failed authentication (wrong key, tampered).
    pub dropped_auth: u64,
    /// Dropped: replayed or too old.
    pub dropped_replay: u64,
    /// Dropped: an authentic copy of one of this node's own datagrams, sent back to it.
    pub dropped_own_session: u64,
    /// Dropped: not a quorate frame, bad version, truncated or undecodable.
    pub dropped_malformed: u64,
    /// Sends that failed (socket errors, sealing errors).
    pub send_errors: u64,
    /// Seed names that failed to resolve.
    pub resolve_errors: u64,
    /// Protocol counters of the core.
    pub core: CoreCounters,
}

#[derive(Default)]
struct Counters {
    packets_in: AtomicU64,
    packets_out: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    dropped_oversize: AtomicU64,
    dropped_wrong_cluster: AtomicU64,
    dropped_auth: AtomicU64,
    dropped_replay: AtomicU64,
    dropped_own_session: AtomicU64,
    dropped_malformed: AtomicU64,
    send_errors: AtomicU64,
    resolve_errors: AtomicU64,
    core: Mutex<CoreCounters>,
}

fn bump(c: &AtomicU64, by: u64) {
    c.fetch_add(by, Ordering::Relaxed);
}

enum Command {
    SetMeta(NodeMeta, oneshot::Sender<Result<(), MembershipError>>),
    Leave(oneshot::Sender<()>),
}

struct Inner {
    snapshot: watch::Receiver<MembershipSnapshot>,
    events: broadcast::Sender<MembershipEvent>,
    commands: mpsc::Sender<Command>,
    counters: Arc<Counters>,
    cancel: CancellationToken,
    task: Mutex<Option<JoinHandle<Result<(), MembershipError>>>>,
    advertised: SocketAddr,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// A running membership. Cheap to clone; the task stops when the last clone is dropped, on
/// [`MembershipHandle::shutdown`], after [`MembershipHandle::leave`], or on a fatal error
/// (see [`MembershipHandle::stopped`]).
#[derive(Clone)]
pub struct MembershipHandle {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MembershipHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MembershipHandle")
            .field("advertised", &self.inner.advertised)
            .finish_non_exhaustive()
    }
}

impl MembershipHandle {
    /// The gossip address this node advertises.
    pub fn advertised_addr(&self) -> SocketAddr {
        self.inner.advertised
    }

    /// Counters.
    pub fn metrics(&self) -> Metrics {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Metrics {
            packets_in: get(&c.packets_in),
            packets_out: get(&c.packets_out),
            bytes_in: get(&c.bytes_in),
            bytes_out: get(&c.bytes_out),
            dropped_oversize: get(&c.dropped_oversize),
            dropped_wrong_cluster: get(&c.dropped_wrong_cluster),
            dropped_auth: get(&c.dropped_auth),
            dropped_replay: get(&c.dropped_replay),
            dropped_own_session: get(&c.dropped_own_session),
            dropped_malformed: get(&c.dropped_malformed),
            send_errors: get(&c.send_errors),
            resolve_errors: get(&c.resolve_errors),
            core: *c.core.lock().unwrap_or_else(PoisonError::into_inner),
        }
    }

    /// Publishes new metadata (API address, version, roles, tags); the health summary is
    /// filled in from the `HealthView` given at start.
    pub async fn set_meta(&self, meta: NodeMeta) -> Result<(), MembershipError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .commands
            .send(Command::SetMeta(meta, tx))
            .await
            .map_err(|_| MembershipError::Stopped)?;
        rx.await.map_err(|_| MembershipError::Stopped)?
    }

    /// Leaves the cluster gracefully (peers report `Left`, not a failure) and stops. Returns
    /// once the leave has been sent.
    pub async fn leave(&self) -> Result<(), MembershipError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .commands
            .send(Command::Leave(tx))
            .await
            .map_err(|_| MembershipError::Stopped)?;
        rx.await.map_err(|_| MembershipError::Stopped)
    }

    /// Stops without leaving (peers will detect this node as failed).
    pub fn shutdown(&self) {
        self.inner.cancel.cancel();
    }

    /// Waits until the task has stopped; returns the fatal error that stopped it, if any.
    pub async fn stopped(&self) -> Result<(), MembershipError> {
        let task = self
            .inner
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match task {
            Some(t) => t.await.unwrap_or(Err(MembershipError::Stopped)),
            None => Err(MembershipError::Stopped),
        }
    }

    /// Waits until `cond` holds for the published snapshot.
    pub async fn wait_for(
        &self,
        mut cond: impl FnMut(&MembershipSnapshot) -> bool,
    ) -> Result<MembershipSnapshot, MembershipError> {
        let mut rx = self.inner.snapshot.clone();
        let snap = rx
            .wait_for(|s| cond(s))
            .await
            .map_err(|_| MembershipError::Stopped)?;
        Ok(snap.clone())
    }
}

impl Membership for MembershipHandle {
    fn snapshot(&self) -> MembershipSnapshot {
        self.inner.snapshot.borrow().clone()
    }

    fn subscribe(&self) -> MembershipEvents {
        MembershipEvents::new(self.inner.events.subscribe())
    }
}

fn summary(h: &HealthSnapshot) -> HealthSummary {
    HealthSummary {
        status: h.status,
        healthy: u16::try_from(h.healthy).unwrap_or(u16::MAX),
        total: u16::try_from(h.total).unwrap_or(u16::MAX),
    }
}

/// Binds the gossip socket, starts the membership task and returns its handle.
///
/// Errors (nothing is left running): [`MembershipError::NoSeeds`] and other config errors,
/// [`MembershipError::Bind`] when the address cannot be bound, [`MembershipError::Advertise`]
/// when the address to advertise is unknown, [`MembershipError::Wire`] for a bad wire config.
pub async fn start<N: Net>(
    net: N,
    config: MembershipConfig,
    wire: WireConfig,
    health: Option<Arc<dyn HealthView>>,
) -> Result<MembershipHandle, MembershipError> {
    config.validate()?;
    wire.validate()?;
    let socket = net
        .bind_udp(&config.bind_addr)
        .await
        .map_err(|source| MembershipError::Bind {
            addr: config.bind_addr.clone(),
            source,
        })?;
    let advertised = match &config.advertise_addr {
        Some(a) => net
            .resolve(a)
            .await
            .ok()
            .and_then(|v| v.into_iter().next())
            .ok_or_else(|| MembershipError::Advertise(format!("{a} does not resolve")))?,
        None => {
            let a = socket.local_addr().map_err(|e| {
                MembershipError::Advertise(format!("cannot read the bound address: {e}"))
            })?;
            if a.ip().is_unspecified() {
                return Err(MembershipError::Advertise(format!(
                    "bind_addr {} is unspecified: set advertise_addr to an address peers can reach",
                    config.bind_addr
                )));
            }
            a
        }
    };
    let incarnation = config.incarnation.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
            .unwrap_or(1)
    });
    let mut meta = config.meta.clone();
    if let Some(h) = &health {
        meta.health = summary(&h.snapshot());
    }
    let mut core_cfg = CoreConfig::from_config(&config, advertised, incarnation);
    core_cfg.meta = meta;
    let sealer = match config.rng_seed {
        Some(seed) => Sealer::with_session(&wire, seed ^ incarnation.rotate_left(17)),
        None => Sealer::new(&wire),
    };
    let opener = Opener::new(&wire);
    opener.add_own_session(sealer.session());
    let now = Instant::now();
    let core = Core::new(core_cfg, now)?;
    let snapshot = core.snapshot();
    let (snap_tx, snap_rx) = watch::channel(snapshot);
    let (events_tx, _) = broadcast::channel(config.events_capacity.get());
    let (cmd_tx, cmd_rx) = mpsc::channel(config.commands_capacity.get());
    let counters = Arc::new(Counters::default());
    let cancel = CancellationToken::new();
    let task = Task {
        net,
        socket,
        core,
        sealer,
        opener,
        seeds: config.seeds.clone(),
        timers: BinaryHeap::new(),
        seq: 0,
        snap_tx,
        events_tx: events_tx.clone(),
        counters: counters.clone(),
        packet_bytes_max: config.packet_bytes_max.get(),
        leave_delay: config.profile.leave_propagate_delay,
        meta_node: config.meta.node.clone(),
        last_score: 0,
        last_joined: false,
        own_id: config.node_id.as_str().as_bytes().to_vec(),
        wall_clock: config
            .incarnation
            .is_none()
            .then(|| wire.wall_clock.clone()),
        auth_log: AuthLog::default(),
    };
    let handle = tokio::spawn(task.run(cmd_rx, cancel.clone(), health));
    Ok(MembershipHandle {
        inner: Arc::new(Inner {
            snapshot: snap_rx,
            events: events_tx,
            commands: cmd_tx,
            counters,
            cancel,
            task: Mutex::new(Some(handle)),
            advertised,
        }),
    })
}

struct Queued {
    due: Instant,
    seq: u64,
    timer: Timer,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

struct Task<N: Net> {
    net: N,
    socket: N::UdpSocket,
    core: Core,
    sealer: Sealer,
    opener: Opener,
    seeds: Vec<String>,
    timers: BinaryHeap<Reverse<Queued>>,
    seq: u64,
    snap_tx: watch::Sender<MembershipSnapshot>,
    events_tx: broadcast::Sender<MembershipEvent>,
    counters: Arc<Counters>,
    packet_bytes_max: usize,
    leave_delay: Duration,
    meta_node: NodeMeta,
    last_score: u8,
    last_joined: bool,
    /// This node's id: the recipient its datagrams are sealed for.
    own_id: Vec<u8>,
    /// The wall clock, when incarnations come from it (no configured incarnation).
    wall_clock: Option<WallClock>,
    auth_log: AuthLog,
}

/// Rate limit of the WARN lines for unauthentic datagrams: one per sender address per
/// [`AUTH_LOG_INTERVAL`], with the number not logged since.
#[derive(Default)]
struct AuthLog {
    /// Per sender: when its last line was written, and failures not logged since.
    senders: BTreeMap<SocketAddr, (Instant, u64)>,
}

impl AuthLog {
    /// Records one failure from `from` at `now`; returns `Some(suppressed)` when a line is due
    /// (with how many earlier failures from `from` were not logged).
    fn note(&mut self, from: SocketAddr, now: Instant) -> Option<u64> {
        match self.senders.get_mut(&from) {
            Some((last, suppressed)) => {
                if now.saturating_duration_since(*last) >= AUTH_LOG_INTERVAL {
                    let n = std::mem::take(suppressed);
                    *last = now;
                    Some(n)
                } else {
                    *suppressed += 1;
                    None
                }
            }
            None => {
                if self.senders.len() >= AUTH_LOG_SENDERS_MAX {
                    let oldest = self
                        .senders
                        .iter()
                        .min_by_key(|(_, (last, _))| *last)
                        .map(|(a, _)| *a);
                    if let Some(a) = oldest {
                        self.senders.remove(&a);
                    }
                }
                self.senders.insert(from, (now, 0));
                Some(0)
            }
        }
    }
}

impl<N: Net> Task<N> {
    /// Runs until stopped, then publishes the final, stopped snapshot and event, so that no
    /// consumer goes on reading a frozen view.
    async fn run(
        mut self,
        commands: mpsc::Receiver<Command>,
        cancel: CancellationToken,
        health: Option<Arc<dyn HealthView>>,
    ) -> Result<(), MembershipError> {
        let (reason, result) = match self.run_loop(commands, cancel, health).await {
            Ok(reason) => (reason, Ok(())),
            Err(e) => (StopReason::Failed(e.to_string()), Err(e)),
        };
        match &result {
            Err(e) => tracing::error!(
                node = %self.core.local().id,
                error = %e,
                "membership stopped by a fatal error; this node no longer claims a majority"
            ),
            Ok(()) => {
                tracing::info!(node = %self.core.local().id, reason = %reason, "membership stopped")
            }
        }
        let mut snap = self.core.snapshot();
        snap.mark_stopped(reason.clone(), Instant::now());
        self.snap_tx.send_replace(snap);
        // No subscriber is fine.
        let _ = self.events_tx.send(MembershipEvent::Stopped(reason));
        result
    }

    async fn run_loop(
        &mut self,
        mut commands: mpsc::Receiver<Command>,
        cancel: CancellationToken,
        health: Option<Arc<dyn HealthView>>,
    ) -> Result<StopReason, MembershipError> {
        let mut health_rx = health.as_ref().map(|h| h.watch());
        let mut buf = vec![0u8; self.packet_bytes_max + 1];
        let mut leaving: Option<(Instant, oneshot::Sender<()>)> = None;
        self.flush(true).await?;
        loop {
            let next_due = self.timers.peek().map(|Reverse(q)| q.due);
            let leave_due = leaving.as_ref().map(|(at, _)| *at);
            let far = Instant::now() + Duration::from_secs(3600);
            let mut publish = false;
            tokio::select! {
                biased;
                () = cancel.cancelled() => return Ok(StopReason::Shutdown),
                cmd = commands.recv(), if leaving.is_none() => match cmd {
                    None => return Ok(StopReason::Shutdown),
                    Some(Command::SetMeta(node, reply)) => {
                        let mut meta = self.core.snapshot().member(&self.core.local().id)
                            .map(|m| m.meta.clone()).unwrap_or_default();
                        meta.node = node.clone();
                        let r = self.core.set_meta(meta, Instant::now());
                        if r.is_ok() {
                            self.meta_node = node;
                        }
                        // The caller may have gone away; nothing to do then.
                        let _ = reply.send(r);
                        publish = true;
                    }
                    Some(Command::Leave(reply)) => {
                        let now = Instant::now();
                        self.core.begin_leave(now);
                        leaving = Some((now + self.leave_delay, reply));
                    }
                },
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok((n, from)) => self.receive(buf.get(..n).unwrap_or_default(), from),
                    Err(_) => bump(&self.counters.dropped_malformed, 1),
                },
                () = tokio::time::sleep_until(leave_due.unwrap_or(far)), if leave_due.is_some() => {
                    self.core.finish_leave(Instant::now());
                    self.flush(true).await?;
                    if let Some((_, reply)) = leaving.take() {
                        let _ = reply.send(());
                    }
                    return Ok(StopReason::Left);
                }
                () = tokio::time::sleep_until(next_due.unwrap_or(far)), if next_due.is_some() => {}
                changed = async {
                    match health_rx.as_mut() {
                        Some(rx) => rx.changed().await.is_ok(),
                        None => std::future::pending().await,
                    }
                } => {
                    if changed {
                        if let Some(rx) = health_rx.as_mut() {
                            let summary = summary(&rx.borrow_and_update());
                            let mut meta = self.core.snapshot().member(&self.core.local().id)
                                .map(|m| m.meta.clone()).unwrap_or_default();
                            meta.node = self.meta_node.clone();
                            meta.health = summary;
                            let _ = self.core.set_meta(meta, Instant::now());
                            publish = true;
                        }
                    } else {
                        health_rx = None;
                    }
                }
            }
            self.fire_due_timers();
            self.flush(publish).await?;
        }
    }

    fn receive(&mut self, data: &[u8], from: SocketAddr) {
        let c = &self.counters;
        bump(&c.packets_in, 1);
        bump(&c.bytes_in, data.len() as u64);
        if data.len() > self.packet_bytes_max {
            bump(&c.dropped_oversize, 1);
            return;
        }
        // Only a join request is sealed for anyone; everything else must be sealed for us.
        let recipient = match peek_kind(data) {
            Some(MessageKind(KIND_JOIN)) => RECIPIENT_ANYONE,
            _ => &self.own_id,
        };
        match self.opener.open_datagram(data, recipient) {
            Ok(frame) => {
                if let Some(clock) = &self.wall_clock {
                    self.core
                        .set_wall_clock_micros(clock().saturating_mul(1000));
                }
                self.core
                    .handle_packet(from, frame.kind.0, &frame.payload, Instant::now());
            }
            Err(WireError::Oversize { .. }) => bump(&c.dropped_oversize, 1),
            Err(WireError::WrongCluster { .. }) => bump(&c.dropped_wrong_cluster, 1),
            Err(WireError::AuthFailed) => {
                bump(&c.dropped_auth, 1);
                if let Some(suppressed) = self.auth_log.note(from, Instant::now()) {
                    tracing::warn!(
                        node = %self.core.local().id,
                        from = %from,
                        not_logged_since = suppressed,
                        "gossip datagram from {from} failed authentication: the sender most likely has another cluster key or cluster name (check both on every node); or it is a datagram sealed for another node, or tampered with"
                    );
                }
            }
            Err(WireError::Replay(_)) => bump(&c.dropped_replay, 1),
            Err(WireError::OwnSession(_)) => bump(&c.dropped_own_session, 1),
            Err(_) => bump(&c.dropped_malformed, 1),
        }
    }

    fn fire_due_timers(&mut self) {
        let now = Instant::now();
        while self.timers.peek().is_some_and(|Reverse(q)| q.due <= now) {
            if let Some(Reverse(q)) = self.timers.pop() {
                self.core.handle_timer(q.timer, now);
                // Re-arm what the timer produced before looking at the heap again.
                for t in self.core.drain_timers() {
                    self.queue(t);
                }
            }
        }
    }

    fn queue(&mut self, timer: Timer) {
        self.seq += 1;
        self.timers.push(Reverse(Queued {
            due: timer.due(),
            seq: self.seq,
            timer,
        }));
    }

    async fn flush(&mut self, mut publish: bool) -> Result<(), MembershipError> {
        if self.core.take_join_request() {
            let mut addrs = Vec::new();
            for seed in &self.seeds {
                match tokio::time::timeout(RESOLVE_TIMEOUT, self.net.resolve(seed)).await {
                    Ok(Ok(v)) => addrs.extend(v),
                    _ => bump(&self.counters.resolve_errors, 1),
                }
            }
            self.core.join(&addrs, Instant::now());
        }
        for t in self.core.drain_timers() {
            self.queue(t);
        }
        for o in self.core.drain_outgoing() {
            let recipient = o
                .to_id
                .as_ref()
                .map_or(RECIPIENT_ANYONE, |id| id.as_str().as_bytes());
            match self
                .sealer
                .seal_datagram_bytes(MessageKind(o.kind), &o.payload, recipient)
            {
                Ok(frame) => match self.socket.send_to(&frame, o.to).await {
                    Ok(_) => {
                        bump(&self.counters.packets_out, 1);
                        bump(&self.counters.bytes_out, frame.len() as u64);
                    }
                    Err(_) => bump(&self.counters.send_errors, 1),
                },
                Err(_) => bump(&self.counters.send_errors, 1),
            }
        }
        let events = self.core.drain_events();
        let score = self.core.local_health_score();
        let joined = self.core.is_joined();
        publish |= !events.is_empty() || score != self.last_score || joined != self.last_joined;
        // Events go out before the snapshot that reflects them, so whoever sees the new
        // snapshot can also receive its events.
        for e in events {
            if let MembershipEvent::DuplicateNodeId { address } = &e {
                tracing::error!(
                    node = %self.core.local().id,
                    other = %address,
                    "another process at {address} uses this node's id (seen repeatedly in authenticated gossip): give every node a unique node_id"
                );
            }
            // No subscriber is fine.
            let _ = self.events_tx.send(e);
        }
        if publish {
            self.last_score = score;
            self.last_joined = joined;
            self.snap_tx.send_replace(self.core.snapshot());
            *self
                .counters
                .core
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = self.core.counters();
        }
        if let Some(e) = self.core.take_fatal() {
            return Err(e);
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test")]
mod tests {
    use super::*;

    #[test]
    fn auth_log_is_one_line_per_sender_per_interval_with_the_suppressed_count() {
        let t0 = tokio::time::Instant::now();
        let mut log = AuthLog::default();
        let a = SocketAddr::from(([10, 0, 0, 1], 7946));
        let b = SocketAddr::from(([10, 0, 0, 2], 7946));
        assert_eq!(log.note(a, t0), Some(0));
        assert_eq!(log.note(b, t0), Some(0), "another sender gets its own line");
        for i in 1..=4 {
            assert_eq!(log.note(a, t0 + Duration::from_secs(i)), None);
        }
        assert_eq!(log.note(a, t0 + AUTH_LOG_INTERVAL), Some(4));
        assert_eq!(log.note(a, t0 + AUTH_LOG_INTERVAL), None);
        // Bounded: many senders never grow the map beyond its limit.
        for i in 0..(AUTH_LOG_SENDERS_MAX as u16 + 10) {
            log.note(SocketAddr::from(([10, 1, 0, 1], i)), t0);
        }
        assert!(log.senders.len() <= AUTH_LOG_SENDERS_MAX);
    }
}
