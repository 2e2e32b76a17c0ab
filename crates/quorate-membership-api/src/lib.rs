//! Membership vocabulary of quorate: who is in the cluster, in which state, what each member
//! says about itself, and whether this node sits in a majority of the voters.
//!
//! This crate is narrow on purpose: types, one view trait ([`Membership`]), a bounded event
//! subscription ([`MembershipEvents`]), an in-memory implementation for other crates' tests
//! ([`StaticMembership`]) and a conformance check every implementation runs
//! ([`conformance::check_snapshot`]). The gossip implementation lives in `quorate-membership`.
//!
//! # Example: a consumer (e.g. failover) reading the view
//!
//! ```
//! use quorate_membership_api::{Membership, MemberState, SplitBrainStatus};
//!
//! fn may_act_as_primary(view: &dyn Membership) -> bool {
//!     let snap = view.snapshot();
//!     // A minority never acts.
//!     snap.quorum.has_majority && matches!(snap.split_brain, SplitBrainStatus::Healthy)
//! }
//!
//! fn alive_peers(view: &dyn Membership) -> usize {
//!     let snap = view.snapshot();
//!     snap.members
//!         .iter()
//!         .filter(|m| m.id != snap.local && m.state == MemberState::Alive)
//!         .count()
//! }
//! # let view = quorate_membership_api::StaticMembership::for_tests("n1", &["n1", "n2", "n3"]);
//! # assert!(may_act_as_primary(&view));
//! # assert_eq!(alive_peers(&view), 2);
//! ```

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, PoisonError};

use quorate_health_api::HealthStatus;
use quorate_types::{NodeId, NodeMeta};
use tokio::sync::broadcast;
use tokio::time::Instant;

/// The state of a member as seen by this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MemberState {
    /// Answers probes (or has spoken recently).
    Alive,
    /// Missed a probe; declared down unless it refutes in time.
    Suspect,
    /// Declared failed by the failure detector.
    Down,
    /// Left the cluster on purpose (graceful shutdown); not a failure.
    Left,
}

impl MemberState {
    /// `true` for `Alive` and `Suspect`: the member still counts as reachable.
    #[must_use]
    pub const fn is_reachable(self) -> bool {
        matches!(self, MemberState::Alive | MemberState::Suspect)
    }

    /// The lowercase name (`"alive"`, `"suspect"`, `"down"`, `"left"`).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Down => "down",
            MemberState::Left => "left",
        }
    }
}

impl fmt::Display for MemberState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A member's own health summary, as it last published it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HealthSummary {
    /// Its overall aggregated status (`Unknown` until it publishes one).
    pub status: HealthStatus,
    /// Its enabled checks that pass.
    pub healthy: u16,
    /// Its enabled checks.
    pub total: u16,
}

/// What a member says about itself (gossiped, updated when it changes).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MemberMeta {
    /// API address, version, roles it can take, tags.
    pub node: NodeMeta,
    /// Its own health summary.
    pub health: HealthSummary,
}

/// One member of the cluster as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The stable node id.
    pub id: NodeId,
    /// The gossip (UDP) address it advertises.
    pub address: SocketAddr,
    /// Its state.
    pub state: MemberState,
    /// The incarnation of its identity: increases when the process restarts, and when it
    /// rejoins after having been declared down. A higher incarnation replaces a lower one.
    pub incarnation: u64,
    /// What it publishes about itself; the default value until its metadata arrives.
    pub meta: MemberMeta,
    /// When this node last saw the state (or incarnation) change.
    pub since: Instant,
}

/// Whether this node sees a majority of the configured voters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumStatus {
    /// The configured voters (empty: quorum is not evaluated and `has_majority` is false).
    pub voters: BTreeSet<NodeId>,
    /// How many voters are configured.
    pub voters_known: usize,
    /// How many voters this node sees as reachable (itself included when it is a voter).
    pub voters_reachable: usize,
    /// `voters_reachable > voters_known / 2`.
    pub has_majority: bool,
    /// When `has_majority` last changed (or when the node started).
    pub since: Instant,
}

impl QuorumStatus {
    /// The majority size for `voters` voters (`voters / 2 + 1`).
    #[must_use]
    pub const fn majority_of(voters: usize) -> usize {
        voters / 2 + 1
    }
}

/// Split-brain status: a node that is not `Healthy` must not act (no writes, no primary roles).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SplitBrainStatus {
    /// No voters are configured: nothing can be said.
    NotConfigured,
    /// This node sees a majority and no conflicting claims.
    Healthy,
    /// This node sees only a minority of the voters.
    InMinority {
        /// Voters it sees.
        reachable: usize,
        /// Voters it would need.
        needed: usize,
        /// Since when.
        since: Instant,
    },
    /// Two voters (possibly this node) both claim a majority while one of them counts the
    /// other as unreachable: a partial partition, or views that do not agree.
    ConflictingViews {
        /// One claimant.
        a: NodeId,
        /// The other claimant.
        b: NodeId,
        /// Since when the conflict has been seen.
        since: Instant,
    },
}

impl SplitBrainStatus {
    /// `true` unless the status is `Healthy` or `NotConfigured`.
    #[must_use]
    pub const fn is_split(&self) -> bool {
        matches!(
            self,
            SplitBrainStatus::InMinority { .. } | SplitBrainStatus::ConflictingViews { .. }
        )
    }
}

/// Everything this node knows at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipSnapshot {
    /// This node's id.
    pub local: NodeId,
    /// Every member this node knows (itself included), sorted by id, one entry per id.
    pub members: Vec<Member>,
    /// The quorum view.
    pub quorum: QuorumStatus,
    /// The split-brain status.
    pub split_brain: SplitBrainStatus,
    /// This node's Lifeguard-style local health score: 0 when healthy; while above 0 its own
    /// probe and suspicion timeouts are stretched by `score + 1`.
    pub local_health_score: u8,
    /// `true` once this node has joined a cluster (or bootstrapped one).
    pub joined: bool,
    /// `Some` once the membership behind this view has stopped: the view is frozen and must
    /// not be acted on. A stopped view reports no reachable voter, no majority and (with
    /// voters) `InMinority`, so a consumer that only reads the quorum gives up its roles.
    pub stopped: Option<StopReason>,
}

/// Why a membership stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopReason {
    /// Shut down on purpose (shutdown called, or every handle dropped).
    Shutdown,
    /// Left the cluster gracefully.
    Left,
    /// Stopped by a fatal error; the text is the error's message, naming the cause and fix.
    Failed(String),
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::Shutdown => f.write_str("shut down"),
            StopReason::Left => f.write_str("left the cluster"),
            StopReason::Failed(why) => write!(f, "failed: {why}"),
        }
    }
}

impl MembershipSnapshot {
    /// The member with `id`, if known.
    #[must_use]
    pub fn member(&self, id: &NodeId) -> Option<&Member> {
        self.members
            .binary_search_by(|m| m.id.cmp(id))
            .ok()
            .and_then(|i| self.members.get(i))
    }

    /// `false` once the membership behind this view has stopped ([`Self::stopped`]).
    #[must_use]
    pub fn is_running(&self) -> bool {
        self.stopped.is_none()
    }

    /// Turns this snapshot into the final one of a stopped membership: `reason` recorded, no
    /// voter reachable, no majority, `InMinority` when voters are configured. Members keep
    /// their last seen states (the view is frozen; [`Self::stopped`] says so).
    pub fn mark_stopped(&mut self, reason: StopReason, now: Instant) {
        self.stopped = Some(reason);
        if self.quorum.has_majority {
            self.quorum.since = now;
        }
        self.quorum.voters_reachable = 0;
        self.quorum.has_majority = false;
        self.split_brain = if self.quorum.voters.is_empty() {
            SplitBrainStatus::NotConfigured
        } else {
            SplitBrainStatus::InMinority {
                reachable: 0,
                needed: QuorumStatus::majority_of(self.quorum.voters_known),
                since: now,
            }
        };
    }

    /// Members in state `state`.
    pub fn in_state(&self, state: MemberState) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(move |m| m.state == state)
    }
}

/// A change seen by this node, in the order it saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipEvent {
    /// A member appeared, or came back with a new incarnation (restart, rejoin).
    MemberUp(Member),
    /// A member missed a probe and is under suspicion.
    MemberSuspect(Member),
    /// A suspect member refuted the suspicion.
    MemberAlive(Member),
    /// A member was declared failed.
    MemberDown(Member),
    /// A member left on purpose.
    MemberLeft(Member),
    /// A member published new metadata.
    MetadataChanged(Member),
    /// This node's quorum view changed (`has_majority` or the reachable voter count).
    QuorumChanged(QuorumStatus),
    /// The split-brain status changed.
    SplitBrainChanged(SplitBrainStatus),
    /// Another process uses this node's id at `address` (seen repeatedly in authenticated
    /// datagrams): a configuration error; the local membership stops (see
    /// [`MembershipEvent::Stopped`]).
    DuplicateNodeId {
        /// Where the other process is.
        address: SocketAddr,
    },
    /// The membership stopped; the last event. The snapshot says the same
    /// ([`MembershipSnapshot::stopped`]).
    Stopped(StopReason),
}

/// A subscription could not deliver the next event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventsError {
    /// The subscriber fell more than the channel capacity behind; this many events were lost.
    /// Resynchronise from [`Membership::snapshot`]; the subscription keeps working.
    Lagged(u64),
    /// The membership stopped; no more events will come.
    Closed,
}

impl fmt::Display for EventsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventsError::Lagged(n) => write!(
                f,
                "membership subscriber lagged and lost {n} events: read faster, raise events_capacity, or resync from snapshot()"
            ),
            EventsError::Closed => f.write_str("membership stopped: no more events"),
        }
    }
}

impl std::error::Error for EventsError {}

/// A bounded subscription to [`MembershipEvent`]s (a broadcast channel of the producer's
/// configured capacity).
#[derive(Debug)]
pub struct MembershipEvents {
    rx: broadcast::Receiver<MembershipEvent>,
}

impl MembershipEvents {
    /// Wraps a broadcast receiver (for implementations of [`Membership`]).
    #[must_use]
    pub fn new(rx: broadcast::Receiver<MembershipEvent>) -> Self {
        Self { rx }
    }

    /// Waits for the next event.
    pub async fn recv(&mut self) -> Result<MembershipEvent, EventsError> {
        self.rx.recv().await.map_err(|e| match e {
            broadcast::error::RecvError::Lagged(n) => EventsError::Lagged(n),
            broadcast::error::RecvError::Closed => EventsError::Closed,
        })
    }

    /// The next event if one is queued; `Ok(None)` if none is.
    pub fn try_recv(&mut self) -> Result<Option<MembershipEvent>, EventsError> {
        match self.rx.try_recv() {
            Ok(e) => Ok(Some(e)),
            Err(broadcast::error::TryRecvError::Empty) => Ok(None),
            Err(broadcast::error::TryRecvError::Lagged(n)) => Err(EventsError::Lagged(n)),
            Err(broadcast::error::TryRecvError::Closed) => Err(EventsError::Closed),
        }
    }
}

/// A read-only view of cluster membership.
///
/// Implemented by `quorate_membership::MembershipHandle` (SWIM gossip) and by
/// [`StaticMembership`] (in memory, for tests).
///
/// ```
/// use quorate_membership_api::{Membership, MembershipEvent, StaticMembership};
///
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let view = StaticMembership::for_tests("n1", &["n1", "n2", "n3"]);
/// let mut events = view.subscribe();
/// view.set_state("n2", quorate_membership_api::MemberState::Down);
/// match events.recv().await.unwrap() {
///     MembershipEvent::MemberDown(m) => assert_eq!(m.id.as_str(), "n2"),
///     other => panic!("unexpected {other:?}"),
/// }
/// assert_eq!(view.snapshot().quorum.voters_reachable, 2);
/// # });
/// ```
pub trait Membership: Send + Sync {
    /// The current view.
    fn snapshot(&self) -> MembershipSnapshot;
    /// Events from now on (bounded; see [`EventsError::Lagged`]).
    fn subscribe(&self) -> MembershipEvents;
}

impl<T: Membership + ?Sized> Membership for Arc<T> {
    fn snapshot(&self) -> MembershipSnapshot {
        (**self).snapshot()
    }
    fn subscribe(&self) -> MembershipEvents {
        (**self).subscribe()
    }
}

impl<T: Membership + ?Sized> Membership for &T {
    fn snapshot(&self) -> MembershipSnapshot {
        (**self).snapshot()
    }
    fn subscribe(&self) -> MembershipEvents {
        (**self).subscribe()
    }
}

/// Counts the voters among `reachable` and decides majority; shared by every implementation so
/// the arithmetic is written once.
///
/// ```
/// use std::collections::BTreeSet;
/// use quorate_membership_api::majority;
/// let voters: BTreeSet<&str> = ["a", "b", "c", "d", "e"].into();
/// assert_eq!(majority(&voters, ["a", "b"].iter()), (2, false));
/// assert_eq!(majority(&voters, ["c", "d", "e", "x"].iter()), (3, true));
/// let none: BTreeSet<&str> = BTreeSet::new();
/// assert_eq!(majority(&none, ["a"].iter()), (0, false));
/// ```
pub fn majority<'a, T: Ord + 'a>(
    voters: &BTreeSet<T>,
    reachable: impl Iterator<Item = &'a T>,
) -> (usize, bool) {
    let seen: BTreeSet<&T> = reachable.filter(|r| voters.contains(*r)).collect();
    let n = seen.len();
    (
        n,
        !voters.is_empty() && n >= QuorumStatus::majority_of(voters.len()),
    )
}

/// An in-memory [`Membership`] whose state the test sets by hand. Quorum and split-brain
/// (minority only) are recomputed on every change.
#[derive(Debug, Clone)]
pub struct StaticMembership {
    inner: Arc<Mutex<MembershipSnapshot>>,
    tx: broadcast::Sender<MembershipEvent>,
}

impl StaticMembership {
    /// A view of `members` (all alive, incarnation 1, address `127.0.0.1:7946 + i`) seen by
    /// `local`, with every member a voter, and an event channel of `events_capacity`.
    pub fn new(
        local: NodeId,
        members: Vec<NodeId>,
        voters: BTreeSet<NodeId>,
        events_capacity: NonZeroUsize,
    ) -> Self {
        let now = Instant::now();
        let mut list: Vec<Member> = members
            .into_iter()
            .enumerate()
            .map(|(i, id)| Member {
                id,
                address: SocketAddr::from(([127, 0, 0, 1], 7946u16.saturating_add(i as u16))),
                state: MemberState::Alive,
                incarnation: 1,
                meta: MemberMeta::default(),
                since: now,
            })
            .collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        list.dedup_by(|a, b| a.id == b.id);
        let voters_known = voters.len();
        let snap = MembershipSnapshot {
            local,
            members: list,
            quorum: QuorumStatus {
                voters,
                voters_known,
                voters_reachable: 0,
                has_majority: false,
                since: now,
            },
            split_brain: SplitBrainStatus::NotConfigured,
            local_health_score: 0,
            joined: true,
            stopped: None,
        };
        let (tx, _) = broadcast::channel(events_capacity.get());
        let this = Self {
            inner: Arc::new(Mutex::new(snap)),
            tx,
        };
        this.update(|_| Vec::new());
        this
    }

    /// Convenience for tests: ids from strings, every member a voter, capacity 1024.
    ///
    /// # Panics
    /// If an id is not a valid [`NodeId`] (test input only).
    #[must_use]
    pub fn for_tests(local: &str, members: &[&str]) -> Self {
        #[allow(clippy::expect_used, reason = "test helper with literal ids")]
        let ids: Vec<NodeId> = members
            .iter()
            .map(|m| NodeId::new(*m).expect("valid node id"))
            .collect();
        #[allow(clippy::expect_used, reason = "test helper with literal ids")]
        let local = NodeId::new(local).expect("valid node id");
        let voters = ids.iter().cloned().collect();
        Self::new(local, ids, voters, NonZeroUsize::MIN.saturating_add(1023))
    }

    /// Sets the state of member `id` (ignored if unknown) and emits the matching event.
    pub fn set_state(&self, id: &str, state: MemberState) {
        self.update(|snap| {
            let now = Instant::now();
            let Some(m) = snap.members.iter_mut().find(|m| m.id.as_str() == id) else {
                return Vec::new();
            };
            if m.state == state {
                return Vec::new();
            }
            let was = m.state;
            m.state = state;
            m.since = now;
            let m = m.clone();
            vec![match state {
                MemberState::Alive if was == MemberState::Suspect => {
                    MembershipEvent::MemberAlive(m)
                }
                MemberState::Alive => MembershipEvent::MemberUp(m),
                MemberState::Suspect => MembershipEvent::MemberSuspect(m),
                MemberState::Down => MembershipEvent::MemberDown(m),
                MemberState::Left => MembershipEvent::MemberLeft(m),
            }]
        });
    }

    /// Marks the view stopped (as a membership whose task ended) and emits
    /// [`MembershipEvent::Stopped`]; later changes are ignored.
    pub fn stop(&self, reason: StopReason) {
        let mut snap = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if snap.stopped.is_some() {
            return;
        }
        snap.mark_stopped(reason.clone(), Instant::now());
        drop(snap);
        // No subscriber is fine.
        let _ = self.tx.send(MembershipEvent::Stopped(reason));
    }

    /// Sets the metadata of member `id` (ignored if unknown) and emits `MetadataChanged`.
    pub fn set_meta(&self, id: &str, meta: MemberMeta) {
        self.update(|snap| {
            let Some(m) = snap.members.iter_mut().find(|m| m.id.as_str() == id) else {
                return Vec::new();
            };
            if m.meta == meta {
                return Vec::new();
            }
            m.meta = meta;
            vec![MembershipEvent::MetadataChanged(m.clone())]
        });
    }

    fn update(&self, f: impl FnOnce(&mut MembershipSnapshot) -> Vec<MembershipEvent>) {
        let mut snap = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if snap.stopped.is_some() {
            return;
        }
        let mut events = f(&mut snap);
        let now = Instant::now();
        let reachable: Vec<&NodeId> = snap
            .members
            .iter()
            .filter(|m| m.state.is_reachable())
            .map(|m| &m.id)
            .collect();
        let (n, has) = majority(&snap.quorum.voters, reachable.into_iter());
        let quorum_changed = n != snap.quorum.voters_reachable || has != snap.quorum.has_majority;
        if quorum_changed {
            if has != snap.quorum.has_majority {
                snap.quorum.since = now;
            }
            snap.quorum.voters_reachable = n;
            snap.quorum.has_majority = has;
            events.push(MembershipEvent::QuorumChanged(snap.quorum.clone()));
        }
        let split = if snap.quorum.voters.is_empty() {
            SplitBrainStatus::NotConfigured
        } else if has {
            SplitBrainStatus::Healthy
        } else {
            SplitBrainStatus::InMinority {
                reachable: n,
                needed: QuorumStatus::majority_of(snap.quorum.voters_known),
                since: now,
            }
        };
        if std::mem::discriminant(&split) != std::mem::discriminant(&snap.split_brain) {
            snap.split_brain = split.clone();
            events.push(MembershipEvent::SplitBrainChanged(split));
        }
        drop(snap);
        for e in events {
            // No subscriber is fine.
            let _ = self.tx.send(e);
        }
    }
}

impl Membership for StaticMembership {
    fn snapshot(&self) -> MembershipSnapshot {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn subscribe(&self) -> MembershipEvents {
        MembershipEvents::new(self.tx.subscribe())
    }
}

pub mod conformance {
    //! Checks every [`Membership`](crate::Membership) implementation runs against itself.

    use super::{MemberState, MembershipSnapshot, QuorumStatus, SplitBrainStatus, majority};

    /// Checks the invariants of one snapshot; returns the first broken one, named.
    ///
    /// - members sorted by id, one entry per id, the local node present and `Alive`;
    /// - quorum counts agree with the member states and the voter set;
    /// - split-brain status agrees with the quorum (`NotConfigured` iff no voters; `InMinority`
    ///   iff no majority);
    /// - a stopped view reports no reachable voter and no majority.
    pub fn check_snapshot(snap: &MembershipSnapshot) -> Result<(), String> {
        for w in snap.members.windows(2) {
            if let [a, b] = w
                && a.id >= b.id
            {
                return Err(format!("members not sorted/unique at {} / {}", a.id, b.id));
            }
        }
        let Some(me) = snap.member(&snap.local) else {
            return Err(format!("local node {} missing from members", snap.local));
        };
        if me.state != MemberState::Alive {
            return Err(format!(
                "local node {} is {} in its own view",
                me.id, me.state
            ));
        }
        let q = &snap.quorum;
        if q.voters_known != q.voters.len() {
            return Err(format!(
                "voters_known {} != {} configured voters",
                q.voters_known,
                q.voters.len()
            ));
        }
        if snap.stopped.is_some() {
            return match (&snap.split_brain, q.voters.is_empty()) {
                _ if q.has_majority || q.voters_reachable != 0 => Err(format!(
                    "stopped view still reports {} reachable voters (majority {})",
                    q.voters_reachable, q.has_majority
                )),
                (SplitBrainStatus::NotConfigured, true)
                | (SplitBrainStatus::InMinority { .. }, false) => Ok(()),
                (s, _) => Err(format!("stopped view has split-brain status {s:?}")),
            };
        }
        let reachable = snap
            .members
            .iter()
            .filter(|m| m.state.is_reachable())
            .map(|m| &m.id);
        let (n, has) = majority(&q.voters, reachable);
        if (n, has) != (q.voters_reachable, q.has_majority) {
            return Err(format!(
                "quorum says {} reachable (majority {}), members say {n} (majority {has})",
                q.voters_reachable, q.has_majority
            ));
        }
        if has && q.voters_reachable < QuorumStatus::majority_of(q.voters_known) {
            return Err("has_majority with fewer than a majority reachable".to_owned());
        }
        match (&snap.split_brain, q.voters.is_empty(), has) {
            (SplitBrainStatus::NotConfigured, true, _) => Ok(()),
            (SplitBrainStatus::InMinority { .. }, false, false) => Ok(()),
            (
                SplitBrainStatus::Healthy | SplitBrainStatus::ConflictingViews { .. },
                false,
                true,
            ) => Ok(()),
            (s, no_voters, has) => Err(format!(
                "split-brain status {s:?} disagrees with quorum (no voters: {no_voters}, majority: {has})"
            )),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test")]
mod tests {
    use super::*;

    #[tokio::test]
    async fn static_membership_tracks_quorum_and_split_brain() {
        let view = StaticMembership::for_tests("a", &["a", "b", "c", "d", "e"]);
        conformance::check_snapshot(&view.snapshot()).unwrap();
        assert!(view.snapshot().quorum.has_majority);
        let mut events = view.subscribe();
        view.set_state("c", MemberState::Down);
        view.set_state("d", MemberState::Suspect);
        assert!(view.snapshot().quorum.has_majority, "suspect still counts");
        view.set_state("e", MemberState::Left);
        let snap = view.snapshot();
        conformance::check_snapshot(&snap).unwrap();
        assert_eq!(snap.quorum.voters_reachable, 3);
        view.set_state("d", MemberState::Down);
        let snap = view.snapshot();
        conformance::check_snapshot(&snap).unwrap();
        assert!(!snap.quorum.has_majority);
        assert!(snap.split_brain.is_split());
        let mut seen = Vec::new();
        while let Some(e) = events.try_recv().unwrap() {
            seen.push(e);
        }
        assert!(matches!(seen[0], MembershipEvent::MemberDown(ref m) if m.id.as_str() == "c"));
        assert!(seen.iter().any(|e| matches!(
            e,
            MembershipEvent::SplitBrainChanged(SplitBrainStatus::InMinority {
                reachable: 2,
                needed: 3,
                ..
            })
        )));
    }

    #[test]
    fn conformance_rejects_broken_snapshots() {
        let view = StaticMembership::for_tests("a", &["a", "b", "c"]);
        let mut snap = view.snapshot();
        snap.quorum.voters_reachable = 1;
        assert!(
            conformance::check_snapshot(&snap)
                .unwrap_err()
                .contains("quorum")
        );
        let mut snap = view.snapshot();
        snap.members.swap(0, 1);
        assert!(
            conformance::check_snapshot(&snap)
                .unwrap_err()
                .contains("sorted")
        );
        let mut snap = view.snapshot();
        snap.members[0].state = MemberState::Down;
        assert!(conformance::check_snapshot(&snap).is_err());
        let mut snap = view.snapshot();
        snap.stopped = Some(StopReason::Shutdown);
        assert!(
            conformance::check_snapshot(&snap)
                .unwrap_err()
                .contains("stopped")
        );
    }

    #[tokio::test]
    async fn stopped_view_gives_up_majority_and_says_so() {
        let view = StaticMembership::for_tests("a", &["a", "b", "c"]);
        let mut events = view.subscribe();
        view.stop(StopReason::Failed("boom".to_owned()));
        let snap = view.snapshot();
        conformance::check_snapshot(&snap).unwrap();
        assert!(!snap.is_running());
        assert!(!snap.quorum.has_majority);
        assert!(snap.split_brain.is_split());
        assert_eq!(
            events.try_recv().unwrap(),
            Some(MembershipEvent::Stopped(StopReason::Failed(
                "boom".to_owned()
            )))
        );
        view.set_state("b", MemberState::Down);
        assert_eq!(events.try_recv().unwrap(), None, "frozen after stop");
    }

    #[test]
    fn events_lag_is_reported_not_fatal() {
        let view = StaticMembership::new(
            NodeId::new("a").unwrap(),
            vec![NodeId::new("a").unwrap(), NodeId::new("b").unwrap()],
            BTreeSet::new(),
            NonZeroUsize::new(2).unwrap(),
        );
        let mut events = view.subscribe();
        for _ in 0..3 {
            view.set_state("b", MemberState::Suspect);
            view.set_state("b", MemberState::Alive);
        }
        assert_eq!(events.try_recv(), Err(EventsError::Lagged(4)));
        assert!(events.try_recv().unwrap().is_some());
        assert_eq!(view.snapshot().split_brain, SplitBrainStatus::NotConfigured);
    }
}
