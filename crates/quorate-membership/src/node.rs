//! The async shell: one tokio task owns the [`Core`], one UDP socket (from a
//! [`quorate_wire::net::Net`]), the timers and the health subscription; every datagram is sealed
//! and opened with `quorate-wire`, so all gossip is authenticated. Datagrams that are oversize,
//! of another cluster, unauthentic, replayed or malformed are dropped and counted in
//! [`Metrics`].

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use quorate_health_api::{HealthSnapshot, HealthView};
use quorate_membership_api::{
    HealthSummary, Membership, MembershipEvent, MembershipEvents, MembershipSnapshot,
};
use quorate_types::NodeMeta;
use quorate_wire::net::{Datagram, Net};
use quorate_wire::{MessageKind, Opener, Sealer, WireConfig, WireError};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::MembershipConfig;
use crate::engine::{Core, CoreConfig, CoreCounters, Timer};
use crate::error::MembershipError;

/// How long one seed name may take to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

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
}

impl<N: Net> Task<N> {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        cancel: CancellationToken,
        health: Option<Arc<dyn HealthView>>,
    ) -> Result<(), MembershipError> {
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
                () = cancel.cancelled() => return Ok(()),
                cmd = commands.recv(), if leaving.is_none() => match cmd {
                    None => return Ok(()),
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
                    return Ok(());
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
        match self.opener.open_raw(data) {
            Ok(frame) => {
                self.core
                    .handle_packet(from, frame.kind.0, &frame.payload, Instant::now());
            }
            Err(WireError::Oversize { .. }) => bump(&c.dropped_oversize, 1),
            Err(WireError::WrongCluster { .. }) => bump(&c.dropped_wrong_cluster, 1),
            Err(WireError::AuthFailed) => bump(&c.dropped_auth, 1),
            Err(WireError::Replay(_)) => bump(&c.dropped_replay, 1),
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
            match self.sealer.seal_bytes(MessageKind(o.kind), &o.payload) {
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
