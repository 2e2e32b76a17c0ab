//! The sans-IO membership core: foca plus everything quorate adds around it.
//!
//! Inputs: datagram payloads (already authenticated by the shell), timer firings and commands,
//! each with `now`. Outputs: datagrams to send, timers to arm, events. Randomness comes from a
//! seeded RNG given at construction. The async shell (`node.rs`) and the discrete-event
//! simulator (`simulation.rs`) drive the very same core.
//!
//! Added around foca:
//! - **join** through seed addresses (foca needs an identity to announce to; we only know an
//!   address), done as a push/pull exchange with each seed, retried with backoff;
//! - **push/pull** full-state sync (member list and records, in as many datagrams as needed)
//!   with a random member every `push_pull_interval`, and with a random *down* member every
//!   `reconnect_interval` so that both sides of a healed partition find each other;
//! - **local health** (Lifeguard): foca's probe, indirect-probe and suspicion timers are
//!   stretched by the local health multiplier, also when the multiplier rises while they run;
//! - **buddy refutation**: when a probe fails, the suspector tells the suspect directly; a live
//!   suspect refutes at once by answering the suspector (Lifeguard's buddy system);
//! - **records**: metadata, voter views and leave intents, as foca custom broadcasts;
//! - **events**: the member table is reconciled with foca's state after each step.

// tidy:pure-core

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroUsize};
use std::time::Duration;

use foca::{
    AccumulatingRuntime, Config as FocaConfig, Foca, Member as FocaMember, Message,
    OwnedNotification, PeriodicParams, PostcardCodec, State, Timer as FocaTimer,
};
use quorate_membership_api::{
    Member, MemberMeta, MemberState, MembershipEvent, MembershipSnapshot,
};
use quorate_types::NodeId;
use rand010::rngs::StdRng;
use rand010::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::config::MembershipConfig;
use crate::error::MembershipError;
use crate::ident::Ident;
use crate::local_health::LocalHealth;
use crate::profile::Profile;
use crate::quorum::QuorumTracker;
use crate::records::{self, Book, Handler, Record, SharedBook, Version, WireMeta};

/// Message kind of a foca (SWIM) datagram.
pub const KIND_SWIM: u16 = 0x0101;
/// Message kind of a push/pull sync datagram (also used to leave and refute).
pub const KIND_SYNC: u16 = 0x0102;
/// Message kind of a join request to a seed address. It is the only datagram sealed for any
/// recipient (the joiner does not know the seed's node id yet), so the core takes from it only
/// the sender's own identity and its own records.
pub const KIND_JOIN: u16 = 0x0103;

/// How many authenticated datagrams claiming our node id from one other address, within
/// [`DUPLICATE_EVIDENCE_WINDOW`], make a duplicate node id (one is never enough: it may be a
/// copy of one of our own).
pub const DUPLICATE_EVIDENCE_MIN: u32 = 3;
/// The window over which duplicate-id evidence is counted.
pub const DUPLICATE_EVIDENCE_WINDOW: Duration = Duration::from_secs(30);
/// Most addresses whose duplicate-id evidence is tracked at once.
const DUPLICATE_SUSPECTS_MAX: usize = 16;
/// How far a gossiped generation (or identity incarnation) may run ahead of this node's own
/// clock of incarnations: a sender's generation is the incarnation it started with (by
/// default its start time in microseconds), which cannot be later than now plus the clock
/// skew the wire layer lets through. Anything beyond is forged and refused.
pub const GENERATION_AHEAD_MAX: Duration = Duration::from_secs(600);

const FLAG_REPLY: u8 = 1;
const FLAG_REFUTE: u8 = 2;
const FLAG_JOIN: u8 = 4;

/// How long foca keeps a down member before forgetting it.
const REMOVE_DOWN_AFTER: Duration = Duration::from_secs(24 * 3600);

/// A full-state sync datagram.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SyncMsg {
    from: Ident,
    flags: u8,
    members: Vec<FocaMember<Ident>>,
    records: Vec<Record>,
}

/// The core's settings, resolved from a [`MembershipConfig`].
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// This node's identity at start.
    pub ident: Ident,
    /// Seed of the RNG.
    pub rng_seed: u64,
    /// Timings.
    pub profile: Profile,
    /// Expected cluster size.
    pub cluster_size_hint: u32,
    /// Voters.
    pub voters: BTreeSet<NodeId>,
    /// Initial metadata.
    pub meta: MemberMeta,
    /// foca's packet budget (datagram minus wire overhead).
    pub packet_bytes: usize,
    /// Largest encoded metadata.
    pub meta_bytes_max: usize,
    /// Most members kept.
    pub members_max: usize,
    /// Most datagrams per sync.
    pub sync_chunks_max: usize,
    /// May start alone.
    pub bootstrap: bool,
    /// Has seeds to join through.
    pub has_seeds: bool,
    /// Join attempts before giving up.
    pub join_attempts_max: Option<u32>,
}

impl CoreConfig {
    /// Resolves `config` for a node advertising `addr` with `incarnation`.
    pub fn from_config(config: &MembershipConfig, addr: SocketAddr, incarnation: u64) -> Self {
        let rng_seed = config.rng_seed.unwrap_or_else(|| {
            // FNV-1a over the id, mixed with the incarnation.
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for b in config.node_id.as_str().bytes() {
                h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
            h ^ incarnation
        });
        Self {
            ident: Ident {
                id: config.node_id.clone(),
                addr,
                incarnation,
            },
            rng_seed,
            profile: config.profile.clone(),
            cluster_size_hint: config.cluster_size_hint.get(),
            voters: config.voters.clone(),
            meta: config.meta.clone(),
            packet_bytes: config.foca_packet_bytes(),
            meta_bytes_max: config.meta_bytes_max.get(),
            members_max: config.members_max.get(),
            sync_chunks_max: config.sync_chunks_max.get(),
            bootstrap: config.bootstrap,
            has_seeds: !config.seeds.is_empty(),
            join_attempts_max: config.join_attempts_max.map(|n| n.get()),
        }
    }
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Destination.
    pub to: SocketAddr,
    /// The destination's node id, bound into the sealed datagram; `None` only for a join
    /// request to a seed address (sealed for any recipient).
    pub to_id: Option<NodeId>,
    /// Message kind ([`KIND_SWIM`] or [`KIND_SYNC`]).
    pub kind: u16,
    /// Payload to seal.
    pub payload: Vec<u8>,
}

/// A timer the driver must hand back to [`Core::handle_timer`] at [`Timer::due`].
#[derive(Debug, Clone)]
pub struct Timer {
    due: Instant,
    kind: TimerKind,
}

impl Timer {
    /// When it is due.
    pub fn due(&self) -> Instant {
        self.due
    }
}

#[derive(Debug, Clone)]
enum TimerKind {
    Foca {
        timer: FocaTimer<Ident>,
        base: Duration,
        set_at: Instant,
        stretch: bool,
    },
    PushPull,
    Reconnect,
    Join,
    ConflictCheck,
}

/// Counters of the core (the shell adds wire-level ones).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoreCounters {
    /// SWIM datagrams handled.
    pub swim_in: u64,
    /// SWIM datagrams produced.
    pub swim_out: u64,
    /// Sync datagrams handled.
    pub sync_in: u64,
    /// Sync datagrams produced.
    pub sync_out: u64,
    /// Datagrams foca rejected (malformed, not for us, ...).
    pub foca_errors: u64,
    /// Sync datagrams that did not decode.
    pub sync_decode_errors: u64,
    /// Datagrams of an unknown kind.
    pub unknown_kind: u64,
    /// Probes that failed.
    pub probes_failed: u64,
    /// Buddy notices sent to suspects.
    pub buddy_sent: u64,
    /// Members or records refused because `members_max` was reached.
    pub refused_full: u64,
    /// Timers stretched by local health.
    pub timers_stretched: u64,
    /// Join attempts.
    pub join_attempts: u64,
    /// Authenticated datagrams that claimed our node id from another address (each one is
    /// evidence of a duplicate id; [`DUPLICATE_EVIDENCE_MIN`] within the window is fatal).
    pub duplicate_claims: u64,
    /// Records and identities refused because their generation or incarnation is beyond
    /// what any sender can have ([`GENERATION_AHEAD_MAX`]).
    pub refused_generation: u64,
    /// Forged records about this node (newer than its own) that it overrode.
    pub refuted_records: u64,
}

#[derive(Debug, Clone)]
struct Entry {
    ident: Ident,
    state: MemberState,
    since: Instant,
    meta: MemberMeta,
    mark: u64,
}

impl Entry {
    fn member(&self) -> Member {
        Member {
            id: self.ident.id.clone(),
            address: self.ident.addr,
            state: self.state,
            incarnation: self.ident.incarnation,
            meta: self.meta.clone(),
            since: self.since,
        }
    }
}

type FocaCore = Foca<Ident, PostcardCodec, StdRng, Handler>;

/// The membership state machine of one node.
pub struct Core {
    foca: FocaCore,
    rt: AccumulatingRuntime<Ident>,
    rng: StdRng,
    local: Ident,
    generation: u64,
    profile: Profile,
    push_pull_interval: Duration,
    packet_bytes: usize,
    meta_bytes_max: usize,
    members_max: usize,
    sync_chunks_max: usize,
    has_seeds: bool,
    join_attempts_max: Option<u32>,
    book: SharedBook,
    meta: MemberMeta,
    meta_seq: u64,
    view_seq: u64,
    published_view: Option<(BTreeSet<NodeId>, bool)>,
    voters: BTreeSet<NodeId>,
    table: BTreeMap<NodeId, Entry>,
    mark: u64,
    health: LocalHealth,
    quorum: QuorumTracker,
    out: Vec<Outgoing>,
    timers: Vec<Timer>,
    events: Vec<MembershipEvent>,
    joined: bool,
    connected: bool,
    join_wanted: bool,
    join_backoff: Duration,
    join_attempts: u32,
    join_timer_armed: bool,
    conflict_timer_armed: bool,
    recheck_quorum: bool,
    leaving: bool,
    left: bool,
    fatal: Option<MembershipError>,
    counters: CoreCounters,
    dirty: bool,
    last_ping: Option<(NodeId, u8, Instant)>,
    pinged_this_round: bool,
    probe_failed_this_call: bool,
    own_swim_incarnation: u16,
    started: Instant,
    first_generation: u64,
    wall_micros: Option<u64>,
    duplicate_evidence: BTreeMap<SocketAddr, (Instant, u32)>,
}

impl Core {
    /// A core for `cfg`, started at `now`.
    pub fn new(cfg: CoreConfig, now: Instant) -> Result<Self, MembershipError> {
        let n = cfg.cluster_size_hint.max(1);
        let profile = cfg.profile.clone();
        let nz = |v: usize| NonZeroUsize::new(v).unwrap_or(NonZeroUsize::MIN);
        let foca_cfg = FocaConfig {
            probe_period: profile.probe_interval,
            probe_rtt: profile.probe_timeout,
            num_indirect_probes: nz(usize::from(profile.indirect_probes)),
            max_transmissions: NonZeroU8::new(Profile::max_transmissions(n))
                .unwrap_or(NonZeroU8::MIN),
            suspect_to_down_after: profile.suspicion_timeout(n),
            remove_down_after: Some(REMOVE_DOWN_AFTER),
            max_packet_size: nz(cfg.packet_bytes),
            notify_down_members: true,
            periodic_announce: None,
            periodic_announce_to_down_members: None,
            periodic_gossip: Some(PeriodicParams {
                frequency: profile.gossip_interval,
                num_members: nz(usize::from(profile.gossip_fanout)),
            }),
        };
        let book: SharedBook =
            std::sync::Arc::new(std::sync::Mutex::new(Book::new(cfg.members_max)));
        let foca = Foca::with_custom_broadcast(
            cfg.ident.clone(),
            foca_cfg,
            StdRng::seed_from_u64(cfg.rng_seed),
            PostcardCodec,
            Handler::new(book.clone()),
        );
        let health = LocalHealth::new(
            profile.local_health_max_multiplier,
            profile.probe_interval * 8,
            (profile.probe_timeout / 2).max(Duration::from_millis(20)),
            profile.probe_interval,
        );
        let quorum = QuorumTracker::new(cfg.voters.clone(), profile.conflict_grace, now);
        let mut core = Self {
            foca,
            rt: AccumulatingRuntime::new(),
            rng: StdRng::seed_from_u64(cfg.rng_seed ^ 0x9e37_79b9_7f4a_7c15),
            local: cfg.ident.clone(),
            generation: cfg.ident.incarnation,
            join_backoff: profile.join_backoff_initial,
            push_pull_interval: profile.push_pull_interval_for(n),
            profile,
            packet_bytes: cfg.packet_bytes,
            meta_bytes_max: cfg.meta_bytes_max,
            members_max: cfg.members_max,
            sync_chunks_max: cfg.sync_chunks_max,
            has_seeds: cfg.has_seeds,
            join_attempts_max: cfg.join_attempts_max,
            book,
            meta: MemberMeta::default(),
            meta_seq: 0,
            view_seq: 0,
            published_view: None,
            voters: cfg.voters,
            table: BTreeMap::new(),
            mark: 0,
            health,
            quorum,
            out: Vec::new(),
            timers: Vec::new(),
            events: Vec::new(),
            joined: cfg.bootstrap,
            connected: false,
            join_wanted: false,
            join_attempts: 0,
            join_timer_armed: false,
            conflict_timer_armed: false,
            recheck_quorum: true,
            leaving: false,
            left: false,
            fatal: None,
            counters: CoreCounters::default(),
            dirty: true,
            last_ping: None,
            pinged_this_round: false,
            probe_failed_this_call: false,
            own_swim_incarnation: 0,
            started: now,
            first_generation: cfg.ident.incarnation,
            wall_micros: None,
            duplicate_evidence: BTreeMap::new(),
        };
        core.set_meta(cfg.meta, now)?;
        let pp = core.jittered(core.push_pull_interval);
        core.arm(now + pp, TimerKind::PushPull);
        let rc = core.jittered(core.profile.reconnect_interval);
        core.arm(now + rc, TimerKind::Reconnect);
        if core.has_seeds {
            core.join_wanted = true;
            core.arm_join(now);
        }
        core.step_end(now);
        Ok(core)
    }

    /// Up to `gossip_fanout` members in `state`, picked at random without repeats.
    fn random_members(&mut self, state: MemberState) -> Vec<Ident> {
        let mut all: Vec<Ident> = self
            .table
            .values()
            .filter(|e| e.state == state)
            .map(|e| e.ident.clone())
            .collect();
        let mut picked = Vec::new();
        for _ in 0..usize::from(self.profile.gossip_fanout) {
            if all.is_empty() {
                break;
            }
            let pick = self.rng.random_range(0..all.len());
            picked.push(all.swap_remove(pick));
        }
        picked
    }

    fn jittered(&mut self, d: Duration) -> Duration {
        d.mul_f64(self.rng.random_range(0.5..1.5))
    }

    fn arm(&mut self, due: Instant, kind: TimerKind) {
        self.timers.push(Timer { due, kind });
    }

    fn arm_join(&mut self, now: Instant) {
        if !self.join_timer_armed {
            self.join_timer_armed = true;
            let d = self.join_backoff;
            self.arm(now + d, TimerKind::Join);
        }
    }

    // ---------------------------------------------------------------- inputs

    /// Tells the core the wall clock, as microseconds since the Unix epoch, when incarnations
    /// come from it (the default): gossiped generations are then bounded by it as well as by
    /// the core's own start incarnation plus the time since.
    pub fn set_wall_clock_micros(&mut self, micros: u64) {
        self.wall_micros = Some(micros);
    }

    /// The highest generation or incarnation a sender can legitimately have at `now`.
    fn generation_max(&self, now: Instant) -> u64 {
        let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let own = self
            .first_generation
            .saturating_add(micros(now.saturating_duration_since(self.started)));
        own.max(self.wall_micros.unwrap_or(0))
            .saturating_add(micros(GENERATION_AHEAD_MAX))
    }

    /// Counts one authenticated datagram claiming our id from `other`; after
    /// [`DUPLICATE_EVIDENCE_MIN`] of them within [`DUPLICATE_EVIDENCE_WINDOW`], the id is
    /// declared duplicate (fatal: reported as an event and as the core's fatal error).
    fn duplicate_evidence(&mut self, other: SocketAddr, now: Instant) {
        self.counters.duplicate_claims += 1;
        self.duplicate_evidence.retain(|_, (first, _)| {
            now.saturating_duration_since(*first) <= DUPLICATE_EVIDENCE_WINDOW
        });
        if !self.duplicate_evidence.contains_key(&other)
            && self.duplicate_evidence.len() >= DUPLICATE_SUSPECTS_MAX
        {
            return;
        }
        let entry = self.duplicate_evidence.entry(other).or_insert((now, 0));
        entry.1 += 1;
        let confirmed = entry.1 >= DUPLICATE_EVIDENCE_MIN;
        // Ask the other side who it is (also when confirmed, so that it learns too): a small
        // sync sealed for our own id. A real duplicate opens it, counts it as evidence in turn
        // and asks back, so both sides collect the evidence they need within a few round
        // trips; a key-less replay gets no answer.
        if !self.leaving {
            self.send_sync(other, Some(self.local.id.clone()), 0, Some(Vec::new()));
        }
        if confirmed {
            self.fatal = Some(MembershipError::DuplicateNodeId {
                id: self.local.id.clone(),
                other,
            });
            self.events
                .push(MembershipEvent::DuplicateNodeId { address: other });
        }
    }

    /// Handles one authenticated datagram payload of `kind` from `from`.
    pub fn handle_packet(&mut self, from: SocketAddr, kind: u16, payload: &[u8], now: Instant) {
        if self.left || self.fatal.is_some() {
            return;
        }
        let generation_max = self.generation_max(now);
        records::lock(&self.book).generation_max = generation_max;
        match kind {
            KIND_SWIM => {
                self.counters.swim_in += 1;
                let r = self.foca.handle_data(payload, &mut self.rt);
                match r {
                    Ok(()) => {}
                    Err(foca::Error::DataFromOurselves) if from != self.local.addr => {
                        self.duplicate_evidence(from, now);
                    }
                    Err(_) => self.counters.foca_errors += 1,
                }
            }
            KIND_SYNC | KIND_JOIN => {
                self.counters.sync_in += 1;
                match postcard::from_bytes::<SyncMsg>(payload) {
                    Ok(mut msg) => {
                        if kind == KIND_JOIN {
                            // Sealed for anyone: take only what the sender says about itself.
                            let me = msg.from.id.clone();
                            msg.members.retain(|m| m.id().id == me);
                            msg.records.retain(|r| *r.node() == me);
                            msg.flags = FLAG_REPLY | FLAG_JOIN;
                        }
                        self.handle_sync(msg, generation_max, now);
                    }
                    Err(_) => self.counters.sync_decode_errors += 1,
                }
            }
            _ => self.counters.unknown_kind += 1,
        }
        self.after_foca(now);
        self.step_end(now);
    }

    fn handle_sync(&mut self, msg: SyncMsg, generation_max: u64, now: Instant) {
        if msg.from.id == self.local.id {
            if msg.from.addr != self.local.addr {
                self.duplicate_evidence(msg.from.addr, now);
            }
            return;
        }
        let mut members = msg.members;
        members.truncate(self.members_max);
        let before = members.len();
        members.retain(|m| m.id().incarnation <= generation_max);
        self.counters.refused_generation += (before - members.len()) as u64;
        {
            let mut book = records::lock(&self.book);
            for r in &msg.records {
                book.accept(r);
            }
        }
        if self.leaving {
            // Only learn; never rejoin while leaving.
            members.retain(|m| m.id().id != self.local.id);
        }
        if self
            .foca
            .apply_many(members.into_iter(), true, &mut self.rt)
            .is_err()
        {
            self.counters.foca_errors += 1;
        }
        self.dirty = true;
        if msg.flags & FLAG_REFUTE != 0 && !self.leaving {
            // The sender suspects us: answer it directly (our incarnation was bumped above).
            if self.foca.announce(msg.from.clone(), &mut self.rt).is_err() {
                self.counters.foca_errors += 1;
            }
        }
        if msg.flags & FLAG_REPLY != 0 && !self.leaving {
            self.send_sync(msg.from.addr, Some(msg.from.id.clone()), 0, None);
        }
    }

    /// Handles a timer returned earlier by [`Core::drain_timers`].
    pub fn handle_timer(&mut self, timer: Timer, now: Instant) {
        if self.left || self.fatal.is_some() {
            return;
        }
        let lateness = now.saturating_duration_since(timer.due);
        if self.health.timer_fired_late(lateness) {
            self.dirty = true;
        }
        match timer.kind {
            TimerKind::Foca {
                timer,
                base,
                set_at,
                stretch,
            } => {
                if stretch {
                    let required = base * self.health.multiplier();
                    let elapsed = now.saturating_duration_since(set_at);
                    if elapsed < required {
                        self.counters.timers_stretched += 1;
                        self.arm(
                            now + (required - elapsed),
                            TimerKind::Foca {
                                timer,
                                base,
                                set_at,
                                stretch,
                            },
                        );
                        return;
                    }
                }
                let is_probe_round = matches!(timer, FocaTimer::ProbeRandomMember(_));
                let reconcile = matches!(
                    timer,
                    FocaTimer::ProbeRandomMember(_) | FocaTimer::ChangeSuspectToDown { .. }
                );
                let pinged = is_probe_round && std::mem::take(&mut self.pinged_this_round);
                self.probe_failed_this_call = false;
                if self.foca.handle_timer(timer, &mut self.rt).is_err() {
                    self.counters.foca_errors += 1;
                }
                self.after_foca(now);
                if is_probe_round && pinged && !self.probe_failed_this_call {
                    self.health.probe_succeeded();
                }
                if reconcile {
                    self.dirty = true;
                }
            }
            TimerKind::PushPull => {
                let d = self.jittered(self.push_pull_interval);
                self.arm(now + d, TimerKind::PushPull);
                if self.connected && !self.leaving {
                    let n = self.foca.num_members();
                    if n > 0 {
                        let pick = self.rng.random_range(0..n);
                        let to = self
                            .foca
                            .iter_members()
                            .nth(pick)
                            .map(|m| (m.id().addr, m.id().id.clone()));
                        if let Some((to, id)) = to {
                            self.send_sync(to, Some(id), FLAG_REPLY, None);
                        }
                    }
                }
            }
            TimerKind::Reconnect => {
                let d = self.jittered(self.profile.reconnect_interval);
                self.arm(now + d, TimerKind::Reconnect);
                if !self.leaving {
                    // Down members include crashed ones that will never answer: contact a few
                    // at random so that a partitioned one is found quickly anyway.
                    // The datagram is small: us, and the member as we hold it (down), so that a
                    // live one renews at once; its reply carries its full state.
                    for ident in self.random_members(MemberState::Down) {
                        let held = self
                            .foca
                            .iter_membership_state()
                            .find(|m| *m.id() == ident)
                            .cloned();
                        self.send_sync(
                            ident.addr,
                            Some(ident.id.clone()),
                            FLAG_REPLY,
                            Some(held.into_iter().collect()),
                        );
                    }
                    // Suspected members are told again (the buddy message): the one sent when
                    // the suspicion began is lost when a partition caused it, and nothing
                    // else makes a member refute; after a heal a suspicion would otherwise
                    // linger until it turns to down (stretched up to 8x by local health).
                    for ident in self.random_members(MemberState::Suspect) {
                        self.send_buddy(&ident);
                    }
                }
            }
            TimerKind::Join => {
                self.join_timer_armed = false;
                if !self.connected && !self.leaving && self.has_seeds {
                    if let Some(max) = self.join_attempts_max
                        && self.join_attempts >= max
                        && !self.joined
                    {
                        self.fatal = Some(MembershipError::Config(format!(
                            "could not join through any seed after {max} attempts (join_attempts_max): check seeds, cluster name and key"
                        )));
                        return;
                    }
                    self.join_wanted = true;
                    self.join_backoff = (self.join_backoff * 2).min(self.profile.join_backoff_max);
                    self.arm_join(now);
                }
            }
            TimerKind::ConflictCheck => {
                self.conflict_timer_armed = false;
                self.recheck_quorum = true;
                self.dirty = true;
            }
        }
        self.step_end(now);
    }

    /// Whether the driver should resolve the seeds and call [`Core::join`] now (clears it).
    pub fn take_join_request(&mut self) -> bool {
        std::mem::take(&mut self.join_wanted)
    }

    /// Sends a join request (a sync asking for a reply) to each seed address.
    pub fn join(&mut self, seeds: &[SocketAddr], now: Instant) {
        if self.left || self.fatal.is_some() || self.leaving {
            return;
        }
        self.join_attempts = self.join_attempts.saturating_add(1);
        self.counters.join_attempts += 1;
        for addr in seeds {
            if *addr != self.local.addr {
                self.send_sync(*addr, None, FLAG_REPLY | FLAG_JOIN, Some(Vec::new()));
            }
        }
        self.step_end(now);
    }

    /// Publishes new metadata (gossiped to every member).
    pub fn set_meta(&mut self, meta: MemberMeta, now: Instant) -> Result<(), MembershipError> {
        meta.node.validate()?;
        let wire = WireMeta::from(&meta);
        let len = postcard::to_allocvec(&wire)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if len > self.meta_bytes_max {
            return Err(MembershipError::MetaTooLarge {
                len,
                max: self.meta_bytes_max,
            });
        }
        if self.meta_seq > 0 && meta == self.meta {
            return Ok(());
        }
        self.meta = meta;
        self.meta_seq += 1;
        let record = Record::Meta {
            node: self.local.id.clone(),
            version: Version {
                generation: self.generation,
                seq: self.meta_seq,
            },
            meta: wire,
        };
        self.publish(&record);
        if self.meta_seq > 1 {
            // A change (not the first publication, which the join carries): also tell every
            // live member directly; gossip and push/pull cover the ones this misses.
            self.send_to_all(record);
        }
        // Our own metadata is not an event for ourselves.
        records::lock(&self.book)
            .meta_changed
            .remove(&self.local.id);
        self.after_foca(now);
        self.step_end(now);
        Ok(())
    }

    /// Starts a graceful leave: spreads the leave intent (gossip and a direct datagram to every
    /// live member). Call [`Core::finish_leave`] after `leave_propagate_delay`.
    pub fn begin_leave(&mut self, now: Instant) {
        if self.leaving || self.left {
            return;
        }
        self.leaving = true;
        let record = Record::Leave {
            node: self.local.id.clone(),
            incarnation: self.local.incarnation,
        };
        self.publish(&record);
        self.send_to_all(record);
        if self.foca.gossip(&mut self.rt).is_err() {
            self.counters.foca_errors += 1;
        }
        self.after_foca(now);
        self.step_end(now);
    }

    /// Completes a graceful leave: declares this identity down to the cluster. The core then
    /// ignores every input.
    pub fn finish_leave(&mut self, now: Instant) {
        if self.left {
            return;
        }
        if !self.leaving {
            self.begin_leave(now);
        }
        if self.foca.leave_cluster(&mut self.rt).is_err() {
            self.counters.foca_errors += 1;
        }
        self.after_foca(now);
        self.left = true;
    }

    // ---------------------------------------------------------------- outputs

    /// Datagrams to send, in order.
    pub fn drain_outgoing(&mut self) -> Vec<Outgoing> {
        std::mem::take(&mut self.out)
    }

    /// Timers to arm.
    pub fn drain_timers(&mut self) -> Vec<Timer> {
        std::mem::take(&mut self.timers)
    }

    /// Events, in order.
    pub fn drain_events(&mut self) -> Vec<MembershipEvent> {
        std::mem::take(&mut self.events)
    }

    /// The fatal error that stopped the core, if any.
    pub fn fatal(&self) -> Option<&MembershipError> {
        self.fatal.as_ref()
    }

    /// Takes the fatal error out.
    pub fn take_fatal(&mut self) -> Option<MembershipError> {
        self.fatal.take()
    }

    /// Counters.
    pub fn counters(&self) -> CoreCounters {
        let mut c = self.counters;
        let book = records::lock(&self.book);
        c.refused_full += book.refused_full;
        c.refused_generation += book.refused_generation;
        c
    }

    /// The current identity.
    pub fn local(&self) -> &Ident {
        &self.local
    }

    /// The local health score.
    pub fn local_health_score(&self) -> u8 {
        self.health.score()
    }

    /// Whether this node has joined (or bootstrapped).
    pub fn is_joined(&self) -> bool {
        self.joined
    }

    /// Whether the leave is complete.
    pub fn is_left(&self) -> bool {
        self.left
    }

    /// When the core started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The state this node holds for `id` (`None` if unknown; itself is always `Alive`).
    pub fn state_of(&self, id: &NodeId) -> Option<MemberState> {
        if *id == self.local.id {
            return Some(MemberState::Alive);
        }
        self.table.get(id).map(|e| e.state)
    }

    /// How many members (itself excluded) this node holds in `state`.
    pub fn count_in_state(&self, state: MemberState) -> usize {
        self.table.values().filter(|e| e.state == state).count()
    }

    /// The full view.
    pub fn snapshot(&self) -> MembershipSnapshot {
        let mut members: Vec<Member> = Vec::with_capacity(self.table.len() + 1);
        let mut me = Some(Member {
            id: self.local.id.clone(),
            address: self.local.addr,
            state: MemberState::Alive,
            incarnation: self.local.incarnation,
            meta: self.meta.clone(),
            since: self.started,
        });
        for e in self.table.values() {
            if me.as_ref().is_some_and(|m| m.id < e.ident.id) {
                members.extend(me.take());
            }
            members.push(e.member());
        }
        members.extend(me);
        MembershipSnapshot {
            local: self.local.id.clone(),
            members,
            quorum: self.quorum.status().clone(),
            split_brain: self.quorum.split_brain().clone(),
            local_health_score: self.health.score(),
            joined: self.joined,
            stopped: None,
        }
    }

    // ---------------------------------------------------------------- internals

    fn publish(&mut self, record: &Record) {
        match postcard::to_allocvec(record) {
            Ok(bytes) => {
                if self.foca.add_broadcast(&bytes).is_err() {
                    self.counters.foca_errors += 1;
                }
            }
            Err(_) => self.counters.foca_errors += 1,
        }
    }

    /// Sends `record` in one sync datagram to every live member (at most `members_max`).
    fn send_to_all(&mut self, record: Record) {
        let targets: Vec<(SocketAddr, NodeId)> = self
            .foca
            .iter_members()
            .map(|m| (m.id().addr, m.id().id.clone()))
            .take(self.members_max)
            .collect();
        let msg = SyncMsg {
            from: self.local.clone(),
            flags: 0,
            members: Vec::new(),
            records: vec![record],
        };
        if let Ok(payload) = postcard::to_allocvec(&msg) {
            for (to, id) in targets {
                self.counters.sync_out += 1;
                self.out.push(Outgoing {
                    to,
                    to_id: Some(id),
                    kind: KIND_SYNC,
                    payload: payload.clone(),
                });
            }
        }
    }

    /// Sends our state to `to` in as many datagrams as needed (at most `sync_chunks_max`).
    /// `small`: send just our own member and records plus `extra` (a join request, or a
    /// reconnect that tells a down member what we think of it); the reply brings the rest.
    /// `to_id`: the recipient's node id; `None` for a join request to a seed address, sent
    /// as a [`KIND_JOIN`] datagram sealed for any recipient.
    fn send_sync(
        &mut self,
        to: SocketAddr,
        to_id: Option<NodeId>,
        flags: u8,
        small: Option<Vec<FocaMember<Ident>>>,
    ) {
        let kind = if to_id.is_none() {
            KIND_JOIN
        } else {
            KIND_SYNC
        };
        let me = FocaMember::new(self.local.clone(), self.own_swim_incarnation, State::Alive);
        let mut members = vec![me];
        let only_self = small.is_some();
        members.extend(small.into_iter().flatten());
        let records: Vec<Record> = {
            let book = records::lock(&self.book);
            if only_self {
                book.records_of(&self.local.id)
            } else {
                book.records()
            }
        };
        if !only_self {
            members.extend(
                self.foca
                    .iter_membership_state()
                    .filter(|m| m.id().id != self.local.id)
                    .take(self.members_max)
                    .cloned(),
            );
        }
        let from_len = postcard::to_allocvec(&self.local).map_or(128, |v| v.len());
        let budget = self.packet_bytes.saturating_sub(from_len + 16);
        let mut chunk = SyncMsg {
            from: self.local.clone(),
            flags,
            members: Vec::new(),
            records: Vec::new(),
        };
        let mut used = 0usize;
        let mut chunks = 0usize;
        let mut items = members
            .into_iter()
            .map(SyncItem::Member)
            .chain(records.into_iter().map(SyncItem::Record));
        loop {
            let next = items.next();
            let size = match &next {
                Some(SyncItem::Member(m)) => {
                    postcard::to_allocvec(m).map_or(usize::MAX, |v| v.len())
                }
                Some(SyncItem::Record(r)) => {
                    postcard::to_allocvec(r).map_or(usize::MAX, |v| v.len())
                }
                None => 0,
            };
            if size > budget {
                // An item that can never fit is skipped (cannot happen with validated limits).
                continue;
            }
            let flush = next.is_none() || used + size > budget;
            if flush && (!chunk.members.is_empty() || !chunk.records.is_empty()) {
                if chunks >= self.sync_chunks_max {
                    break;
                }
                if let Ok(payload) = postcard::to_allocvec(&chunk) {
                    self.counters.sync_out += 1;
                    self.out.push(Outgoing {
                        to,
                        to_id: to_id.clone(),
                        kind,
                        payload,
                    });
                }
                chunks += 1;
                chunk.members.clear();
                chunk.records.clear();
                // Only the first datagram asks for a reply.
                chunk.flags &= !FLAG_REPLY;
                used = 0;
            }
            match next {
                Some(SyncItem::Member(m)) => chunk.members.push(m),
                Some(SyncItem::Record(r)) => chunk.records.push(r),
                None => break,
            }
            used += size;
        }
    }

    /// Drains foca's runtime into our outputs and reacts to its notifications.
    fn after_foca(&mut self, now: Instant) {
        while let Some((to, data)) = self.rt.to_send() {
            self.counters.swim_out += 1;
            self.out.push(Outgoing {
                to: to.addr,
                to_id: Some(to.id),
                kind: KIND_SWIM,
                payload: data.to_vec(),
            });
        }
        let mult = self.health.multiplier();
        while let Some((after, timer)) = self.rt.to_schedule() {
            let stretch = matches!(
                timer,
                FocaTimer::ProbeRandomMember(_)
                    | FocaTimer::SendIndirectProbe { .. }
                    | FocaTimer::ChangeSuspectToDown { .. }
            );
            let delay = if stretch { after * mult } else { after };
            self.arm(
                now + delay,
                TimerKind::Foca {
                    timer,
                    base: after,
                    set_at: now,
                    stretch,
                },
            );
        }
        let mut buddies: Vec<Ident> = Vec::new();
        while let Some(n) = self.rt.to_notify() {
            match n {
                OwnedNotification::MemberUp(_)
                | OwnedNotification::MemberDown(_)
                | OwnedNotification::Rename(_, _) => self.dirty = true,
                OwnedNotification::Active => {
                    self.connected = true;
                    self.joined = true;
                    self.dirty = true;
                }
                OwnedNotification::Idle => {
                    self.connected = false;
                    self.dirty = true;
                    if self.has_seeds && !self.leaving {
                        self.join_backoff = self.profile.join_backoff_initial;
                        self.join_wanted = true;
                        self.arm_join(now);
                    }
                }
                OwnedNotification::Defunct => {
                    self.connected = false;
                    self.dirty = true;
                }
                OwnedNotification::Rejoin(id) => {
                    self.local = id;
                    self.health.refuted();
                    self.dirty = true;
                }
                OwnedNotification::DataSent(h) => {
                    if let Message::Ping(pn) = h.message {
                        self.last_ping = Some((h.dst.id.clone(), pn, now));
                        self.pinged_this_round = true;
                    }
                    if h.src_incarnation > self.own_swim_incarnation {
                        self.own_swim_incarnation = h.src_incarnation;
                        self.health.refuted();
                    }
                }
                OwnedNotification::DataReceived(h) => {
                    if let Message::Ack(pn) = h.message
                        && let Some((id, want, at)) = &self.last_ping
                        && *id == h.src.id
                        && *want == pn
                        && now.saturating_duration_since(*at)
                            > self.profile.probe_timeout * self.health.multiplier()
                    {
                        self.health.late_ack();
                    }
                }
                OwnedNotification::ProbeFailed(_, id) => {
                    self.counters.probes_failed += 1;
                    self.probe_failed_this_call = true;
                    self.health.probe_failed(&id.id, now);
                    buddies.push(id);
                }
            }
        }
        for suspect in buddies {
            self.send_buddy(&suspect);
        }
    }

    /// Tells `suspect` directly that we suspect it, so that it can refute at once.
    fn send_buddy(&mut self, suspect: &Ident) {
        let Some(incarnation) = self
            .foca
            .iter_membership_state()
            .find(|m| m.id() == suspect)
            .map(FocaMember::incarnation)
        else {
            return;
        };
        let msg = SyncMsg {
            from: self.local.clone(),
            flags: FLAG_REFUTE,
            members: vec![FocaMember::new(
                suspect.clone(),
                incarnation,
                State::Suspect,
            )],
            records: Vec::new(),
        };
        if let Ok(payload) = postcard::to_allocvec(&msg) {
            self.counters.buddy_sent += 1;
            self.counters.sync_out += 1;
            self.out.push(Outgoing {
                to: suspect.addr,
                to_id: Some(suspect.id.clone()),
                kind: KIND_SYNC,
                payload,
            });
        }
    }

    /// Ends every input: reconciles the member table with foca when something changed.
    fn step_end(&mut self, now: Instant) {
        self.refute_forged_records();
        let book_changed = {
            let book = records::lock(&self.book);
            book.other_changed || !book.meta_changed.is_empty()
        };
        if self.dirty || book_changed {
            self.dirty = false;
            self.reconcile(now);
        }
        #[cfg(debug_assertions)]
        {
            let v = self.invariant_violation();
            debug_assert!(
                v.is_none(),
                "membership core invariant broken after an input: {}",
                v.unwrap_or_default()
            );
        }
    }

    /// The first broken invariant of the member table, if any: it never holds this node, each
    /// entry is keyed by its own id, and it is bounded by `members_max`.
    #[cfg_attr(
        not(debug_assertions),
        allow(dead_code, reason = "only the debug_assert! invariant checks call it")
    )]
    fn invariant_violation(&self) -> Option<String> {
        if self.table.contains_key(&self.local.id) {
            return Some(format!(
                "the member table holds this node ({}) itself",
                self.local.id
            ));
        }
        if let Some((k, e)) = self.table.iter().find(|(k, e)| **k != e.ident.id) {
            return Some(format!(
                "member table key {k} holds the entry of {}",
                e.ident.id
            ));
        }
        (self.table.len() > self.members_max).then(|| {
            format!(
                "{} members exceed members_max {}",
                self.table.len(),
                self.members_max
            )
        })
    }

    /// A record about this node newer than the newest it published can only be forged (by a
    /// holder of the cluster key): publish ours again with a higher version, so that it wins
    /// everywhere, as SWIM refutes a false suspicion with a higher incarnation.
    fn refute_forged_records(&mut self) {
        let (meta, view) = {
            let book = records::lock(&self.book);
            (
                book.meta.get(&self.local.id).map(|(v, _)| *v),
                book.views.get(&self.local.id).map(|v| v.version),
            )
        };
        let above = |v: Version| {
            if v.seq == u64::MAX {
                (v.generation.saturating_add(1), 0)
            } else {
                (v.generation, v.seq)
            }
        };
        let ours = |g, seq| Version { generation: g, seq };
        if let Some(v) = meta
            && self.meta_seq > 0
            && v > ours(self.generation, self.meta_seq)
        {
            self.counters.refuted_records += 1;
            let (g, seq) = above(v);
            self.generation = self.generation.max(g);
            self.meta_seq = seq + 1;
            let record = Record::Meta {
                node: self.local.id.clone(),
                version: ours(self.generation, self.meta_seq),
                meta: WireMeta::from(&self.meta),
            };
            self.publish(&record);
            records::lock(&self.book)
                .meta_changed
                .remove(&self.local.id);
        }
        if let Some(v) = view
            && v > ours(self.generation, self.view_seq)
        {
            self.counters.refuted_records += 1;
            let (g, seq) = above(v);
            self.generation = self.generation.max(g);
            // reconcile publishes the view again with view_seq + 1.
            self.view_seq = seq;
            self.published_view = None;
            self.recheck_quorum = true;
            self.dirty = true;
        }
    }

    fn reconcile(&mut self, now: Instant) {
        self.mark = self.mark.wrapping_add(1);
        let mark = self.mark;
        let mut events = Vec::new();
        let mut book = records::lock(&self.book);
        let mut changed = std::mem::take(&mut book.other_changed) || self.recheck_quorum;
        self.recheck_quorum = false;
        let meta_changed = std::mem::take(&mut book.meta_changed);
        let mut refused = 0u64;
        let mut seen = 0usize;
        let mut inserted = false;
        for m in self.foca.iter_membership_state() {
            let ident = m.id();
            if ident.id == self.local.id {
                continue;
            }
            seen += 1;
            let state = match m.state() {
                State::Alive => MemberState::Alive,
                State::Suspect => MemberState::Suspect,
                State::Down if book.has_left(ident) => MemberState::Left,
                State::Down => MemberState::Down,
            };
            match self.table.get_mut(&ident.id) {
                None => {
                    if self.table.len() >= self.members_max {
                        refused += 1;
                        continue;
                    }
                    changed = true;
                    inserted = true;
                    let meta = book
                        .meta
                        .get(&ident.id)
                        .map(|(_, w)| MemberMeta::from(w))
                        .unwrap_or_default();
                    let e = Entry {
                        ident: ident.clone(),
                        state,
                        since: now,
                        meta,
                        mark,
                    };
                    if state.is_reachable() {
                        events.push(MembershipEvent::MemberUp(e.member()));
                    }
                    self.table.insert(ident.id.clone(), e);
                }
                Some(e) => {
                    e.mark = mark;
                    if e.ident != *ident {
                        changed = true;
                        e.ident = ident.clone();
                        e.state = state;
                        e.since = now;
                        events.push(match state {
                            MemberState::Alive | MemberState::Suspect => {
                                MembershipEvent::MemberUp(e.member())
                            }
                            MemberState::Down => MembershipEvent::MemberDown(e.member()),
                            MemberState::Left => MembershipEvent::MemberLeft(e.member()),
                        });
                    } else if e.state != state {
                        changed = true;
                        let was = e.state;
                        e.state = state;
                        e.since = now;
                        let m = e.member();
                        events.push(match (was, state) {
                            (MemberState::Alive, MemberState::Suspect) => {
                                MembershipEvent::MemberSuspect(m)
                            }
                            (MemberState::Suspect, MemberState::Alive) => {
                                MembershipEvent::MemberAlive(m)
                            }
                            (_, MemberState::Down) => MembershipEvent::MemberDown(m),
                            (_, MemberState::Left) => MembershipEvent::MemberLeft(m),
                            (_, MemberState::Alive | MemberState::Suspect) => {
                                MembershipEvent::MemberUp(m)
                            }
                        });
                    }
                }
            }
        }
        if seen != self.table.len() || inserted {
            // Some member may be gone from foca (forgotten after remove_down_after).
            let before = self.table.len();
            self.table.retain(|_, e| e.mark == mark);
            changed |= before != self.table.len();
        }
        for id in meta_changed {
            if let (Some(e), Some((_, w))) = (self.table.get_mut(&id), book.meta.get(&id)) {
                let meta = MemberMeta::from(w);
                if e.meta != meta {
                    e.meta = meta;
                    events.push(MembershipEvent::MetadataChanged(e.member()));
                }
            }
        }
        if changed {
            // Only voters matter to the quorum view.
            let mut reachable: BTreeSet<NodeId> = self
                .voters
                .iter()
                .filter(|v| {
                    if **v == self.local.id {
                        !self.left
                    } else {
                        self.table.get(*v).is_some_and(|e| e.state.is_reachable())
                    }
                })
                .cloned()
                .collect();
            if !self.left {
                reachable.insert(self.local.id.clone());
            }
            events.extend(
                self.quorum
                    .update(&self.local.id, &reachable, &book.views, now),
            );
        }
        drop(book);
        self.counters.refused_full += refused;
        self.events.extend(events);
        if !changed {
            return;
        }
        if self.quorum.has_pending_conflict() && !self.conflict_timer_armed {
            self.conflict_timer_armed = true;
            let due = now + self.profile.conflict_grace;
            self.arm(due, TimerKind::ConflictCheck);
        }
        if self.voters.contains(&self.local.id) && !self.leaving {
            let view = (
                self.quorum.own_view().clone(),
                self.quorum.status().has_majority,
            );
            if self.published_view.as_ref() != Some(&view) {
                self.view_seq += 1;
                let record = Record::View {
                    node: self.local.id.clone(),
                    version: Version {
                        generation: self.generation,
                        seq: self.view_seq,
                    },
                    reachable: view.0.clone(),
                    has_majority: view.1,
                };
                self.published_view = Some(view);
                self.publish(&record);
                // Our own view is not a change to react to.
                records::lock(&self.book).other_changed = false;
            }
        }
    }
}

enum SyncItem {
    Member(FocaMember<Ident>),
    Record(Record),
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test")]
mod tests {
    use super::*;

    fn core(i: u8, bootstrap: bool, now: Instant) -> Core {
        let id = NodeId::new(format!("n{i}")).unwrap();
        let mut c = MembershipConfig::new(id, "test");
        c.bootstrap = bootstrap;
        if !bootstrap {
            c.seeds = vec!["n0".into()];
        }
        c.rng_seed = Some(u64::from(i));
        let addr = SocketAddr::from(([10, 0, 0, i], 7946));
        Core::new(CoreConfig::from_config(&c, addr, 100), now).unwrap()
    }

    /// Delivers every datagram between the two cores until both are quiet (no timers run).
    fn exchange(a: &mut Core, b: &mut Core, now: Instant) -> Vec<Outgoing> {
        let mut seen = Vec::new();
        for _ in 0..10 {
            let from_a = a.drain_outgoing();
            let from_b = b.drain_outgoing();
            if from_a.is_empty() && from_b.is_empty() {
                break;
            }
            for o in from_a {
                b.handle_packet(a.local().addr, o.kind, &o.payload, now);
                seen.push(o);
            }
            for o in from_b {
                a.handle_packet(b.local().addr, o.kind, &o.payload, now);
                seen.push(o);
            }
        }
        seen
    }

    /// The core checks its member table after every input (debug builds: tests and
    /// simulations): a table broken behind its back stops the next input, naming the damage.
    #[test]
    fn debug_invariants_fire_on_a_broken_table() {
        if !cfg!(debug_assertions) {
            return;
        }
        let t0 = tokio::time::Instant::now();
        let mut a = core(0, true, t0);
        let b = core(1, false, t0);
        let mut entry = Entry {
            ident: b.local().clone(),
            state: MemberState::Alive,
            since: t0,
            meta: a.meta.clone(),
            mark: 0,
        };
        // Broken: the local node in its own table.
        a.table.insert(a.local.id.clone(), entry.clone());
        let msg = panic_message(|| a.join(&[], t0));
        assert!(
            msg.contains("membership core invariant broken after an input")
                && msg.contains("holds this node (n0) itself"),
            "{msg}"
        );
        // Broken: an entry filed under another node's id.
        let mut a = core(0, true, t0);
        entry.ident.id = NodeId::new("n9").unwrap();
        a.table.insert(b.local().id.clone(), entry);
        let msg = panic_message(|| a.join(&[], t0));
        assert!(
            msg.contains("member table key n1 holds the entry of n9"),
            "{msg}"
        );
    }

    fn panic_message(f: impl FnOnce()) -> String {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            Ok(()) => String::new(),
            Err(p) => p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default(),
        }
    }

    /// Runs both cores' due timers and their traffic for `span` of virtual time, in 10 ms
    /// steps.
    fn run_for(a: &mut Core, b: &mut Core, from: Instant, span: Duration) -> Instant {
        let mut timers: Vec<(bool, Timer)> = Vec::new();
        let mut now = from;
        let end = from + span;
        while now < end {
            now += Duration::from_millis(10);
            timers.extend(a.drain_timers().into_iter().map(|t| (true, t)));
            timers.extend(b.drain_timers().into_iter().map(|t| (false, t)));
            let (due, later): (Vec<_>, Vec<_>) =
                timers.into_iter().partition(|(_, t)| t.due() <= now);
            timers = later;
            for (on_a, t) in due {
                if on_a {
                    a.handle_timer(t, now);
                } else {
                    b.handle_timer(t, now);
                }
            }
            exchange(a, b, now);
        }
        now
    }

    /// Issue 14, "bounded incarnations": foca's SWIM incarnation is a u16, and a forged update
    /// (only a key holder can send one) may claim its maximum. A suspicion at `u16::MAX`
    /// cannot be refuted by a higher incarnation, and a `Down` not at all: the victim renews
    /// its identity instead (foca's `Rejoin`; our `Ident::renew` bumps the start incarnation),
    /// stays a member under it, and its peer, which took the forgery, sees it alive again.
    #[test]
    fn a_forged_maximum_swim_incarnation_is_outlived_by_a_renewed_identity() {
        let t0 = tokio::time::Instant::now();
        let mut a = core(0, true, t0);
        let mut b = core(1, false, t0);
        b.join(&[a.local().addr], t0);
        exchange(&mut a, &mut b, t0);
        let now = run_for(&mut a, &mut b, t0, Duration::from_secs(2));
        let old = b.local().clone();
        assert_eq!(a.state_of(&old.id), Some(MemberState::Alive));
        let forger = core(2, false, t0).local().clone();
        for state in [State::Suspect, State::Down] {
            let forged = SyncMsg {
                from: forger.clone(),
                flags: 0,
                members: vec![FocaMember::new(b.local().clone(), u16::MAX, state)],
                records: Vec::new(),
            };
            let bytes = postcard::to_allocvec(&forged).unwrap();
            // To the victim and to its peer.
            b.handle_packet(forger.addr, KIND_SYNC, &bytes, now);
            a.handle_packet(forger.addr, KIND_SYNC, &bytes, now);
        }
        assert!(b.fatal().is_none(), "{:?}", b.fatal());
        assert_eq!(b.local().id, old.id);
        assert!(
            b.local().incarnation > old.incarnation,
            "the victim did not renew its identity: {:?}",
            b.local()
        );
        let renewed = b.local().clone();
        run_for(&mut a, &mut b, now, Duration::from_secs(5));
        assert!(b.fatal().is_none() && a.fatal().is_none());
        assert_eq!(b.local(), &renewed, "renewed once, then stable");
        assert_eq!(a.state_of(&renewed.id), Some(MemberState::Alive));
        assert_eq!(b.state_of(&a.local().id), Some(MemberState::Alive));
    }

    #[test]
    fn join_through_a_seed_address_is_a_sync_exchange() {
        let t0 = tokio::time::Instant::now();
        let mut a = core(0, true, t0);
        let mut b = core(1, false, t0);
        assert!(b.take_join_request());
        b.join(&[a.local().addr], t0);
        exchange(&mut a, &mut b, t0);
        assert!(b.is_joined());
        assert_eq!(a.state_of(&b.local().id), Some(MemberState::Alive));
        assert_eq!(b.state_of(&a.local().id), Some(MemberState::Alive));
        let ev = a.drain_events();
        assert!(
            ev.iter()
                .any(|e| matches!(e, MembershipEvent::MemberUp(m) if m.id.as_str() == "n1"))
        );
    }

    #[test]
    fn garbage_never_panics_and_is_counted() {
        let t0 = tokio::time::Instant::now();
        let mut a = core(0, true, t0);
        let mut b = core(1, false, t0);
        b.join(&[a.local().addr], t0);
        let real = exchange(&mut a, &mut b, t0);
        let mut rng = StdRng::seed_from_u64(42);
        let from = SocketAddr::from(([10, 0, 0, 9], 7946));
        let mut rejected = 0;
        for round in 0..3000 {
            let kind = match round % 3 {
                0 => KIND_SWIM,
                1 => KIND_SYNC,
                _ => rng.random(),
            };
            let payload: Vec<u8> = if round % 2 == 0 && !real.is_empty() {
                // A real datagram with a few bytes flipped or cut.
                let pick = rng.random_range(0..real.len());
                let mut p = real
                    .get(pick)
                    .map(|o| o.payload.clone())
                    .unwrap_or_default();
                if !p.is_empty() {
                    for _ in 0..rng.random_range(1..4) {
                        let at = rng.random_range(0..p.len());
                        if let Some(b) = p.get_mut(at) {
                            *b ^= rng.random::<u8>() | 1;
                        }
                    }
                    let keep = rng.random_range(0..=p.len());
                    p.truncate(keep);
                }
                p
            } else {
                let len = rng.random_range(0..200);
                (0..len).map(|_| rng.random()).collect()
            };
            a.handle_packet(from, kind, &payload, t0);
            // A mutated sync may name our own id at another address: an (authenticated)
            // duplicate, which stops the core by design. Count and start over.
            if let Some(e) = a.take_fatal() {
                assert!(matches!(e, MembershipError::DuplicateNodeId { .. }), "{e}");
                rejected += a.counters().foca_errors
                    + a.counters().sync_decode_errors
                    + a.counters().unknown_kind;
                a = core(0, true, t0);
            }
        }
        let c = a.counters();
        rejected += c.foca_errors + c.sync_decode_errors + c.unknown_kind;
        assert!(rejected > 1000, "{rejected} {c:?}");
        assert_eq!(a.snapshot().local.as_str(), "n0");
    }

    #[test]
    fn repeated_syncs_from_another_process_with_our_id_are_a_duplicate() {
        let t0 = tokio::time::Instant::now();
        let mut a = core(1, true, t0);
        let mut imposter = core(1, true, t0);
        imposter.local.addr = SocketAddr::from(([10, 0, 0, 77], 7946));
        for round in 0..DUPLICATE_EVIDENCE_MIN {
            assert!(a.fatal().is_none(), "fatal after {round} datagrams");
            let now = t0 + Duration::from_secs(u64::from(round));
            imposter.join(&[a.local().addr], now);
            for o in imposter.drain_outgoing() {
                a.handle_packet(imposter.local().addr, o.kind, &o.payload, now);
            }
        }
        assert!(matches!(
            a.fatal(),
            Some(MembershipError::DuplicateNodeId { .. })
        ));
        assert!(
            a.drain_events()
                .iter()
                .any(|e| matches!(e, MembershipEvent::DuplicateNodeId { .. }))
        );
        assert_eq!(
            a.counters().duplicate_claims,
            u64::from(DUPLICATE_EVIDENCE_MIN)
        );
    }

    /// A real duplicate is found from one datagram: each side asks the other who it is, and
    /// the answers are the repeated evidence both need.
    #[test]
    fn a_real_duplicate_is_confirmed_by_asking_back() {
        let t0 = tokio::time::Instant::now();
        let mut a = core(1, true, t0);
        let mut imposter = core(1, true, t0);
        imposter.local.addr = SocketAddr::from(([10, 0, 0, 77], 7946));
        imposter.join(&[a.local().addr], t0);
        for o in imposter.drain_outgoing() {
            a.handle_packet(imposter.local().addr, o.kind, &o.payload, t0);
        }
        assert!(a.fatal().is_none(), "one datagram is not enough");
        exchange(&mut a, &mut imposter, t0);
        for c in [&a, &imposter] {
            assert!(
                matches!(c.fatal(), Some(MembershipError::DuplicateNodeId { .. })),
                "{:?}",
                c.fatal()
            );
        }
    }

    #[test]
    fn duplicate_evidence_expires_after_the_window() {
        let t0 = tokio::time::Instant::now();
        let mut a = core(1, true, t0);
        let mut imposter = core(1, true, t0);
        imposter.local.addr = SocketAddr::from(([10, 0, 0, 77], 7946));
        for round in 0..u64::from(DUPLICATE_EVIDENCE_MIN) * 2 {
            let now = t0 + (DUPLICATE_EVIDENCE_WINDOW + Duration::from_secs(1)) * (round as u32);
            imposter.join(&[a.local().addr], now);
            for o in imposter.drain_outgoing() {
                a.handle_packet(imposter.local().addr, o.kind, &o.payload, now);
            }
        }
        assert!(a.fatal().is_none());
    }

    /// Issue 14: one datagram naming our id (here our own SWIM datagram, reflected from
    /// another address) must not stop the core.
    #[test]
    fn own_swim_datagram_from_another_address_once_is_not_fatal() {
        let t0 = tokio::time::Instant::now();
        let mut a = core(0, true, t0);
        let mut b = core(1, false, t0);
        b.join(&[a.local().addr], t0);
        exchange(&mut a, &mut b, t0);
        // Run a's timers until it sends a SWIM datagram (a probe of b).
        let mut now = t0;
        let mut own = None;
        for _ in 0..50 {
            own = a.drain_outgoing().into_iter().find(|o| o.kind == KIND_SWIM);
            if own.is_some() {
                break;
            }
            let mut timers = a.drain_timers();
            timers.sort_by_key(Timer::due);
            for t in timers {
                now = now.max(t.due);
                a.handle_timer(t, now);
            }
        }
        let own = own.expect("a SWIM datagram of a");
        let elsewhere = SocketAddr::from(([10, 0, 0, 66], 7946));
        a.handle_packet(elsewhere, KIND_SWIM, &own.payload, now);
        assert!(a.fatal().is_none(), "{:?}", a.fatal());
        assert_eq!(a.state_of(&b.local().id), Some(MemberState::Alive));
    }

    /// Issue 14: a gossiped record with a generation no sender can have (u64::MAX) must not
    /// stick: the real node's later records still win.
    #[test]
    fn forged_record_generation_is_refused() {
        let t0 = tokio::time::Instant::now();
        let mut a = core(0, true, t0);
        let mut b = core(1, false, t0);
        b.join(&[a.local().addr], t0);
        exchange(&mut a, &mut b, t0);
        let mut forged_meta = MemberMeta::default();
        forged_meta.node.version = "forged".to_owned();
        let forger = Ident {
            id: NodeId::new("n9").unwrap(),
            addr: SocketAddr::from(([10, 0, 0, 9], 7946)),
            incarnation: 100,
        };
        let msg = SyncMsg {
            from: forger.clone(),
            flags: 0,
            members: Vec::new(),
            records: vec![Record::Meta {
                node: b.local().id.clone(),
                version: Version {
                    generation: u64::MAX,
                    seq: 1,
                },
                meta: WireMeta::from(&forged_meta),
            }],
        };
        a.handle_packet(
            forger.addr,
            KIND_SYNC,
            &postcard::to_allocvec(&msg).unwrap(),
            t0,
        );
        let mut real = MemberMeta::default();
        real.node.version = "real".to_owned();
        b.set_meta(real.clone(), t0).unwrap();
        exchange(&mut a, &mut b, t0);
        let snap = a.snapshot();
        let held = &snap.member(&b.local().id).unwrap().meta;
        assert_eq!(held.node.version, "real", "forged record stuck: {held:?}");
    }

    /// A forged record about b within the generation bound (one above b's own) is refuted by
    /// b as soon as b sees it: b's later metadata wins everywhere again.
    #[test]
    fn forged_record_about_a_node_is_refuted_by_it() {
        let t0 = tokio::time::Instant::now();
        let mut a = core(0, true, t0);
        let mut b = core(1, false, t0);
        b.join(&[a.local().addr], t0);
        exchange(&mut a, &mut b, t0);
        let mut forged_meta = MemberMeta::default();
        forged_meta.node.version = "forged".to_owned();
        let forger = SocketAddr::from(([10, 0, 0, 9], 7946));
        let msg = SyncMsg {
            from: Ident {
                id: NodeId::new("n9").unwrap(),
                addr: forger,
                incarnation: 100,
            },
            flags: 0,
            members: Vec::new(),
            records: vec![Record::Meta {
                node: b.local().id.clone(),
                version: Version {
                    generation: b.local().incarnation + 1,
                    seq: 1,
                },
                meta: WireMeta::from(&forged_meta),
            }],
        };
        let bytes = postcard::to_allocvec(&msg).unwrap();
        a.handle_packet(forger, KIND_SYNC, &bytes, t0);
        b.handle_packet(forger, KIND_SYNC, &bytes, t0);
        assert_eq!(b.counters().refuted_records, 1);
        let mut real = MemberMeta::default();
        real.node.version = "real".to_owned();
        b.set_meta(real, t0).unwrap();
        exchange(&mut a, &mut b, t0);
        let snap = a.snapshot();
        assert_eq!(
            snap.member(&b.local().id).unwrap().meta.node.version,
            "real"
        );
    }

    #[test]
    fn oversize_metadata_is_refused_and_nothing_changes() {
        let t0 = tokio::time::Instant::now();
        let mut a = core(0, true, t0);
        let mut meta = MemberMeta::default();
        meta.node.version = "x".repeat(120);
        meta.node.tags = (0..8)
            .map(|i| (format!("tag{i}"), "y".repeat(100)))
            .collect();
        let err = a.set_meta(meta, t0).unwrap_err();
        assert!(matches!(err, MembershipError::MetaTooLarge { .. }), "{err}");
        assert_eq!(a.snapshot().members[0].meta, MemberMeta::default());
    }
}
