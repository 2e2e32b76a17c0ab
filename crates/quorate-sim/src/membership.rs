//! A deterministic discrete-event simulator of many membership cores.
//!
//! It drives [`Core`]s directly (no sockets, no tokio runtime): datagrams get a latency drawn
//! from a seeded RNG, may be lost, and are dropped across partitions; nodes can crash, restart
//! (new incarnation), pause (every input waits until the pause ends, as under SIGSTOP), be slow
//! (inbound datagrams processed late while timers fire on time: Lifeguard's model), leave, and
//! change metadata. Sizes are counted as they would be on the wire (payload + frame overhead).
//! The same seed gives the same run. Used by the `sim` tests and by `quorate_bench::membership`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::num::NonZeroU32;
use std::time::Duration;

use quorate_membership_api::{MemberMeta, MemberState, MembershipEvent, MembershipSnapshot};
use quorate_types::NodeId;
use rand010::rngs::StdRng;
use rand010::{RngExt, SeedableRng};
use tokio::time::Instant;

use quorate_membership::MembershipConfig;
use quorate_membership::Profile;
use quorate_membership::engine::{Core, CoreConfig, Outgoing, Timer};

/// Bytes the wire frame adds to every datagram (header and AEAD tag).
pub const FRAME_OVERHEAD_BYTES: usize = quorate_wire::HEADER_BYTES + quorate_wire::TAG_BYTES;

/// Settings of one simulated cluster.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Number of nodes (`n0` .. `n{N-1}`); `n0` bootstraps, the others join through it.
    pub nodes: usize,
    /// Timing profile of every node.
    pub profile: Profile,
    /// Seed of the run.
    pub seed: u64,
    /// Smallest one-way latency.
    pub latency_min: Duration,
    /// Largest one-way latency.
    pub latency_max: Duration,
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// How many nodes (the first ones) are voters.
    pub voters: usize,
    /// Delay between two nodes' start (spreads the joins).
    pub start_stagger: Duration,
}

impl SimConfig {
    /// `nodes` nodes with `profile`, LAN latency (0.1 to 0.5 ms), no loss, first
    /// `min(nodes, 5)` nodes voters.
    pub fn new(nodes: usize, profile: Profile, seed: u64) -> Self {
        Self {
            nodes,
            profile,
            seed,
            latency_min: Duration::from_micros(100),
            latency_max: Duration::from_micros(500),
            loss: 0.0,
            voters: nodes.min(5),
            start_stagger: Duration::from_millis(10),
        }
    }
}

/// What a node reported, in compact form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// `MemberUp`.
    Up,
    /// `MemberSuspect`.
    Suspect,
    /// `MemberAlive` (refuted).
    Alive,
    /// `MemberDown`.
    Down,
    /// `MemberLeft`.
    Left,
    /// `MetadataChanged`.
    Meta,
}

/// One recorded event: at `at` (since the start), node `observer` saw `subject` change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimEvent {
    /// Simulated time since the start.
    pub at: Duration,
    /// Index of the reporting node.
    pub observer: usize,
    /// Index of the node it is about.
    pub subject: usize,
    /// What.
    pub seen: Seen,
}

/// Datagrams and bytes one node sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Datagrams.
    pub msgs: u64,
    /// Bytes, frame overhead included.
    pub bytes: u64,
}

enum Ev {
    Deliver {
        to: usize,
        life: u64,
        from: SocketAddr,
        kind: u16,
        payload: Vec<u8>,
    },
    Timer {
        node: usize,
        life: u64,
        timer: Timer,
    },
    Start {
        node: usize,
        life: u64,
    },
    FinishLeave {
        node: usize,
        life: u64,
    },
}

struct Scheduled {
    at: Instant,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

struct Node {
    id: NodeId,
    addr: SocketAddr,
    core: Option<Core>,
    life: u64,
    incarnation: u64,
    paused_until: Option<Instant>,
    slow: Duration,
    meta: MemberMeta,
}

/// A simulated cluster.
pub struct Sim {
    cfg: SimConfig,
    base: Instant,
    now: Instant,
    seq: u64,
    rng: StdRng,
    queue: BinaryHeap<Reverse<Scheduled>>,
    nodes: Vec<Node>,
    by_addr: BTreeMap<SocketAddr, usize>,
    by_id: BTreeMap<NodeId, usize>,
    groups: Option<Vec<u8>>,
    events: Vec<SimEvent>,
    traffic: Vec<Traffic>,
    voters: BTreeSet<NodeId>,
}

/// A starting instant for simulations and tests of the pure modules (only differences between
/// instants matter to the core).
pub fn epoch() -> Instant {
    Instant::now()
}

/// The address of node `i`.
pub fn addr_of(i: usize) -> SocketAddr {
    let i = u32::try_from(i).unwrap_or(u32::MAX);
    SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::from(0x0a00_0000u32.wrapping_add(i + 1)),
        7946,
    ))
}

/// The id of node `i` (`n{i}`).
pub fn id_of(i: usize) -> NodeId {
    #[allow(clippy::expect_used, reason = "n{i} is always a valid node id")]
    NodeId::new(format!("n{i}")).expect("valid id")
}

impl Sim {
    /// A cluster of `cfg.nodes` nodes, none started yet (see [`Sim::start_all`]).
    pub fn new(cfg: SimConfig) -> Self {
        let base = epoch();
        let nodes: Vec<Node> = (0..cfg.nodes)
            .map(|i| Node {
                id: id_of(i),
                addr: addr_of(i),
                core: None,
                life: 0,
                incarnation: 1_000,
                paused_until: None,
                slow: Duration::ZERO,
                meta: MemberMeta::default(),
            })
            .collect();
        let by_addr = nodes.iter().enumerate().map(|(i, n)| (n.addr, i)).collect();
        let by_id = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.clone(), i))
            .collect();
        let voters = (0..cfg.voters.min(cfg.nodes)).map(id_of).collect();
        Self {
            rng: StdRng::seed_from_u64(cfg.seed),
            traffic: vec![Traffic::default(); cfg.nodes],
            cfg,
            base,
            now: base,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes,
            by_addr,
            by_id,
            groups: None,
            events: Vec::new(),
            voters,
        }
    }

    /// Simulated time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now.duration_since(self.base)
    }

    /// The configuration.
    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    fn push(&mut self, at: Instant, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at,
            seq: self.seq,
            ev,
        }));
    }

    /// Starts every node, `start_stagger` apart (node 0 bootstraps).
    pub fn start_all(&mut self) {
        for i in 0..self.nodes.len() {
            let at = self.now + self.cfg.start_stagger * u32::try_from(i).unwrap_or(u32::MAX);
            let life = self.nodes.get(i).map_or(0, |n| n.life);
            self.push(at, Ev::Start { node: i, life });
        }
    }

    fn membership_config(&self, i: usize) -> MembershipConfig {
        let mut c = MembershipConfig::new(id_of(i), "sim");
        c.profile = self.cfg.profile.clone();
        c.cluster_size_hint = NonZeroU32::new(u32::try_from(self.cfg.nodes).unwrap_or(u32::MAX))
            .unwrap_or(NonZeroU32::MIN);
        c.voters = self.voters.clone();
        if i == 0 {
            c.bootstrap = true;
        } else {
            c.seeds = vec!["n0".to_owned()];
        }
        c
    }

    fn start_node(&mut self, i: usize) {
        let mut cfg = self.membership_config(i);
        let Some(node) = self.nodes.get_mut(i) else {
            return;
        };
        node.incarnation += 1_000;
        cfg.meta = node.meta.clone();
        cfg.rng_seed = Some(
            self.cfg
                .seed
                .wrapping_mul(1_000_003)
                .wrapping_add(node.incarnation * 7 + i as u64),
        );
        let core_cfg = CoreConfig::from_config(&cfg, node.addr, node.incarnation);
        match Core::new(core_cfg, self.now) {
            Ok(core) => node.core = Some(core),
            Err(_) => node.core = None,
        }
        self.flush(i);
    }

    /// Crashes node `i`: it stops at once; its pending datagrams and timers vanish.
    pub fn crash(&mut self, i: usize) {
        if let Some(n) = self.nodes.get_mut(i) {
            n.core = None;
            n.life += 1;
            n.paused_until = None;
        }
    }

    /// Restarts node `i` with a new, higher incarnation (it joins through node 0, or
    /// bootstraps if it is node 0 and alone).
    pub fn restart(&mut self, i: usize) {
        self.crash(i);
        self.start_node(i);
    }

    /// Pauses node `i` for `d`: whatever reaches it meanwhile waits until the pause ends.
    pub fn pause(&mut self, i: usize, d: Duration) {
        let until = self.now + d;
        if let Some(n) = self.nodes.get_mut(i) {
            n.paused_until = Some(until);
        }
    }

    /// Makes node `i` process inbound datagrams `d` late (its timers stay on time).
    pub fn set_slow(&mut self, i: usize, d: Duration) {
        if let Some(n) = self.nodes.get_mut(i) {
            n.slow = d;
        }
    }

    /// Sets the loss probability.
    pub fn set_loss(&mut self, p: f64) {
        self.cfg.loss = p;
    }

    /// Splits the network: `group[i]` is node i's side; datagrams between sides are lost.
    pub fn partition(&mut self, groups: Vec<u8>) {
        self.groups = Some(groups);
    }

    /// Heals every partition.
    pub fn heal(&mut self) {
        self.groups = None;
    }

    /// Node `i` leaves gracefully (finishes after the profile's leave delay).
    pub fn leave(&mut self, i: usize) {
        let now = self.now;
        let delay = self.cfg.profile.leave_propagate_delay;
        let life = self.nodes.get(i).map_or(0, |n| n.life);
        if let Some(core) = self.nodes.get_mut(i).and_then(|n| n.core.as_mut()) {
            core.begin_leave(now);
        }
        self.flush(i);
        self.push(now + delay, Ev::FinishLeave { node: i, life });
    }

    /// Node `i` publishes new metadata.
    pub fn set_meta(&mut self, i: usize, meta: MemberMeta) {
        let now = self.now;
        if let Some(n) = self.nodes.get_mut(i) {
            n.meta = meta.clone();
            if let Some(core) = n.core.as_mut() {
                // Sizes are validated by the caller's tests; an error leaves the old metadata.
                let _ = core.set_meta(meta, now);
            }
        }
        self.flush(i);
    }

    /// Whether node `i` is running (started, not crashed, not left).
    pub fn is_running(&self, i: usize) -> bool {
        self.nodes
            .get(i)
            .and_then(|n| n.core.as_ref())
            .is_some_and(|c| !c.is_left() && c.fatal().is_none())
    }

    /// What node `observer` holds about node `subject`.
    pub fn state(&self, observer: usize, subject: usize) -> Option<MemberState> {
        let core = self.nodes.get(observer)?.core.as_ref()?;
        core.state_of(&self.nodes.get(subject)?.id)
    }

    /// The snapshot of node `i`.
    pub fn snapshot(&self, i: usize) -> Option<MembershipSnapshot> {
        Some(self.nodes.get(i)?.core.as_ref()?.snapshot())
    }

    /// The core of node `i`.
    pub fn core(&self, i: usize) -> Option<&Core> {
        self.nodes.get(i)?.core.as_ref()
    }

    /// Whether every node in `observers` runs and holds `state` for every node in `subjects`
    /// (itself excluded).
    pub fn all_see(&self, observers: &[usize], subjects: &[usize], state: MemberState) -> bool {
        observers.iter().all(|o| {
            self.is_running(*o)
                && subjects
                    .iter()
                    .filter(|s| *s != o)
                    .all(|s| self.state(*o, *s) == Some(state))
        })
    }

    /// Every event recorded so far.
    pub fn events(&self) -> &[SimEvent] {
        &self.events
    }

    /// Forgets the recorded events.
    pub fn clear_events(&mut self) {
        self.events.clear();
    }

    /// Traffic per node so far.
    pub fn traffic(&self) -> &[Traffic] {
        &self.traffic
    }

    /// Resets the traffic counters.
    pub fn reset_traffic(&mut self) {
        for t in &mut self.traffic {
            *t = Traffic::default();
        }
    }

    /// Runs for `d` of simulated time.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        self.run_until_time(end);
    }

    /// Runs until `cond` holds (checked every `check_every`) or `max` has passed; returns the
    /// time it took, or `None` on timeout.
    pub fn run_until(
        &mut self,
        max: Duration,
        check_every: Duration,
        mut cond: impl FnMut(&Sim) -> bool,
    ) -> Option<Duration> {
        let start = self.now;
        let end = self.now + max;
        loop {
            if cond(self) {
                return Some(self.now.duration_since(start));
            }
            if self.now >= end {
                return None;
            }
            let next = (self.now + check_every).min(end);
            self.run_until_time(next);
        }
    }

    fn run_until_time(&mut self, end: Instant) {
        while let Some(Reverse(head)) = self.queue.peek() {
            if head.at > end {
                break;
            }
            let Some(Reverse(s)) = self.queue.pop() else {
                break;
            };
            self.now = self.now.max(s.at);
            self.dispatch(s.ev);
        }
        self.now = self.now.max(end);
    }

    fn dispatch(&mut self, ev: Ev) {
        let (node, life) = match &ev {
            Ev::Deliver { to, life, .. } => (*to, *life),
            Ev::Timer { node, life, .. }
            | Ev::Start { node, life }
            | Ev::FinishLeave { node, life } => (*node, *life),
        };
        let Some(n) = self.nodes.get(node) else {
            return;
        };
        if n.life != life {
            return;
        }
        if let Some(until) = n.paused_until {
            if self.now < until {
                self.push(until, ev);
                return;
            }
            if let Some(n) = self.nodes.get_mut(node) {
                n.paused_until = None;
            }
        }
        let now = self.now;
        match ev {
            Ev::Start { node, .. } => self.start_node(node),
            Ev::Deliver {
                to,
                from,
                kind,
                payload,
                ..
            } => {
                if let Some(core) = self.nodes.get_mut(to).and_then(|n| n.core.as_mut()) {
                    core.handle_packet(from, kind, &payload, now);
                }
                self.flush(to);
            }
            Ev::Timer { node, timer, .. } => {
                if let Some(core) = self.nodes.get_mut(node).and_then(|n| n.core.as_mut()) {
                    core.handle_timer(timer, now);
                }
                self.flush(node);
            }
            Ev::FinishLeave { node, .. } => {
                if let Some(core) = self.nodes.get_mut(node).and_then(|n| n.core.as_mut()) {
                    core.finish_leave(now);
                }
                self.flush(node);
                self.crash(node);
            }
        }
    }

    /// Moves node `i`'s outputs into the network and the queue.
    fn flush(&mut self, i: usize) {
        let now = self.now;
        let Some(n) = self.nodes.get_mut(i) else {
            return;
        };
        let life = n.life;
        let from = n.addr;
        let Some(core) = n.core.as_mut() else {
            return;
        };
        if core.take_join_request() {
            core.join(&[addr_of(0)], now);
        }
        let out = core.drain_outgoing();
        let timers = core.drain_timers();
        let events = core.drain_events();
        for t in timers {
            let at = t.due();
            self.push(
                at,
                Ev::Timer {
                    node: i,
                    life,
                    timer: t,
                },
            );
        }
        for e in events {
            self.record(i, e);
        }
        for o in out {
            self.send(i, from, o);
        }
    }

    fn send(&mut self, i: usize, from: SocketAddr, o: Outgoing) {
        if let Some(t) = self.traffic.get_mut(i) {
            t.msgs += 1;
            t.bytes += (o.payload.len() + FRAME_OVERHEAD_BYTES) as u64;
        }
        let Some(&to) = self.by_addr.get(&o.to) else {
            return;
        };
        if let Some(g) = &self.groups
            && g.get(i) != g.get(to)
        {
            return;
        }
        if self.cfg.loss > 0.0 && self.rng.random_bool(self.cfg.loss.clamp(0.0, 1.0)) {
            return;
        }
        let lat = if self.cfg.latency_max > self.cfg.latency_min {
            self.rng
                .random_range(self.cfg.latency_min..=self.cfg.latency_max)
        } else {
            self.cfg.latency_min
        };
        let Some(target) = self.nodes.get(to) else {
            return;
        };
        let at = self.now + lat + target.slow;
        let life = target.life;
        self.push(
            at,
            Ev::Deliver {
                to,
                life,
                from,
                kind: o.kind,
                payload: o.payload,
            },
        );
    }

    fn record(&mut self, observer: usize, e: MembershipEvent) {
        let (m, seen) = match e {
            MembershipEvent::MemberUp(m) => (m, Seen::Up),
            MembershipEvent::MemberSuspect(m) => (m, Seen::Suspect),
            MembershipEvent::MemberAlive(m) => (m, Seen::Alive),
            MembershipEvent::MemberDown(m) => (m, Seen::Down),
            MembershipEvent::MemberLeft(m) => (m, Seen::Left),
            MembershipEvent::MetadataChanged(m) => (m, Seen::Meta),
            _ => return,
        };
        if let Some(&subject) = self.by_id.get(&m.id) {
            self.events.push(SimEvent {
                at: self.elapsed(),
                observer,
                subject,
                seen,
            });
        }
    }
}
