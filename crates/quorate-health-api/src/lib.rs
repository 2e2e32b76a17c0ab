//! Health vocabulary shared by every quorate component: statuses, check results, the
//! [`HealthCheck`] trait and the read-only [`HealthView`] that consumers (membership, failover,
//! the HTTP API) read without depending on the monitor that produces it.
//!
//! # Model
//!
//! A *check* probes one component (a database, a cache, the local disk, ...) and returns a
//! [`CheckResult`]. A monitor (crate `quorate-health`) runs checks in the background, damps their
//! results and publishes a [`HealthSnapshot`]: one [`CheckSnapshot`] per check, plus the
//! aggregated `status`, `liveness` and `readiness`.
//!
//! **Aggregation order** (worst wins, see [`HealthStatus::aggregate`]):
//! `Critical` > `Unknown` > `Warning` > `Passing`. `Unknown` ranks worse than `Warning` because a
//! check that has not proven itself (just registered, stale, hung) must not let a node look ready;
//! it ranks better than `Critical` because nothing has been seen to fail. The order is the
//! declaration order of [`HealthStatus`], so `Ord`/`max` implement it.
//!
//! **Criticality**: a [`Criticality::NonCritical`] check caps its contribution at `Warning`
//! ("degraded"), whatever its own status; its own status stays visible in its [`CheckSnapshot`].
//!
//! **Groups**: every check belongs to the liveness and/or readiness group ([`ProbeGroups`]);
//! `liveness` and `readiness` aggregate only their members, `status` aggregates all enabled checks.
//! An empty group is `Passing`. Disabled checks are shown but never aggregated.
//!
//! # Example: writing a check and reading health
//!
//! ```
//! use quorate_health_api::{check_fn, CheckResult, HealthCheck, HealthStatus};
//!
//! // Any `Fn() -> impl Future<Output = CheckResult>` is a check.
//! let queue_depth = check_fn(|| async {
//!     let depth = 12.0; // measure something
//!     if depth < 100.0 {
//!         CheckResult::passing("queue drains").with_observed(depth)
//!     } else {
//!         CheckResult::warning(format!("queue depth {depth} >= 100"))
//!     }
//! });
//! # tokio::runtime::Builder::new_current_thread().build().expect("runtime").block_on(async {
//! let result = queue_depth.check().await;
//! assert_eq!(result.status, HealthStatus::Passing);
//! # });
//!
//! // Aggregation: worst wins.
//! assert_eq!(
//!     HealthStatus::aggregate([HealthStatus::Passing, HealthStatus::Unknown, HealthStatus::Warning]),
//!     HealthStatus::Unknown
//! );
//! ```
//!
//! A consumer takes any [`HealthView`] (the monitor, or [`ManualHealthView`] in tests):
//!
//! ```
//! use quorate_health_api::{HealthStatus, HealthView};
//!
//! fn may_take_primary(health: &dyn HealthView) -> bool {
//!     health.snapshot().readiness == HealthStatus::Passing
//! }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

/// Errors of the health vocabulary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HealthApiError {
    /// A check id failed validation; nothing was created.
    #[error(
        "check id {id:?} is invalid: {reason}; use 1..={max} characters of [A-Za-z0-9_.:/-]",
        max = CheckId::LEN_MAX
    )]
    InvalidCheckId {
        /// The rejected id.
        id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// The status of one check or of an aggregate.
///
/// Declaration order is the aggregation order, best to worst: `Passing < Warning < Unknown <
/// Critical`. Serialized in lowercase (`"passing"`, ...).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// The component works.
    Passing,
    /// The component works with a problem (degraded); still serves traffic.
    Warning,
    /// Nothing is known: not checked yet, stale, or the check could not decide.
    #[default]
    Unknown,
    /// The component does not work.
    Critical,
}

impl HealthStatus {
    /// All statuses, best to worst.
    pub const ALL: [HealthStatus; 4] = [
        HealthStatus::Passing,
        HealthStatus::Warning,
        HealthStatus::Unknown,
        HealthStatus::Critical,
    ];

    /// The worse of two statuses.
    #[must_use]
    pub fn worst(self, other: HealthStatus) -> HealthStatus {
        self.max(other)
    }

    /// The worst status of `statuses`; `Passing` for an empty set (nothing is failing).
    #[must_use]
    pub fn aggregate<I: IntoIterator<Item = HealthStatus>>(statuses: I) -> HealthStatus {
        statuses
            .into_iter()
            .fold(HealthStatus::Passing, HealthStatus::worst)
    }

    /// `true` for `Passing` and `Warning`: the component serves (HTTP 200 for a probe).
    #[must_use]
    pub const fn is_healthy(self) -> bool {
        matches!(self, HealthStatus::Passing | HealthStatus::Warning)
    }

    /// The lowercase name (`"passing"`, `"warning"`, `"unknown"`, `"critical"`).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Passing => "passing",
            HealthStatus::Warning => "warning",
            HealthStatus::Unknown => "unknown",
            HealthStatus::Critical => "critical",
        }
    }
}

impl fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What kind of component a check watches.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComponentType {
    /// A database (PostgreSQL, MongoDB, ...).
    Database,
    /// A cache (Redis, memcached, ...).
    Cache,
    /// A message queue or broker.
    Queue,
    /// A remote HTTP/RPC API.
    ExternalApi,
    /// Something inside this process (a worker loop, a channel).
    Internal,
    /// A resource of this node (disk, memory, CPU).
    NodeResource,
    /// Anything else, named by the user.
    Custom(String),
}

impl ComponentType {
    /// `true` for components outside this node (database, cache, queue, external API).
    /// Such checks must not be in the liveness group: an outage of a shared database would
    /// otherwise restart every instance at once.
    #[must_use]
    pub const fn is_external(&self) -> bool {
        matches!(
            self,
            ComponentType::Database
                | ComponentType::Cache
                | ComponentType::Queue
                | ComponentType::ExternalApi
        )
    }
}

impl fmt::Display for ComponentType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ComponentType::Database => f.write_str("database"),
            ComponentType::Cache => f.write_str("cache"),
            ComponentType::Queue => f.write_str("queue"),
            ComponentType::ExternalApi => f.write_str("external_api"),
            ComponentType::Internal => f.write_str("internal"),
            ComponentType::NodeResource => f.write_str("node_resource"),
            ComponentType::Custom(name) => write!(f, "custom:{name}"),
        }
    }
}

/// How much a failing check matters to the aggregate.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "snake_case")]
pub enum Criticality {
    /// The check's status counts as is (a critical check makes the node critical).
    #[default]
    Critical,
    /// The check's contribution is capped at `Warning`: its failure degrades, never fails, the node.
    NonCritical,
}

impl Criticality {
    /// The status this check contributes to an aggregate.
    #[must_use]
    pub fn contribution(self, status: HealthStatus) -> HealthStatus {
        match self {
            Criticality::Critical => status,
            Criticality::NonCritical => status.min(HealthStatus::Warning),
        }
    }
}

/// Which probe groups a check belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProbeGroups {
    /// Counts for liveness ("restart me if failing"). Must not contain external components.
    pub liveness: bool,
    /// Counts for readiness ("send me traffic / let me be primary").
    pub readiness: bool,
}

impl ProbeGroups {
    /// Readiness only (the default).
    pub const READINESS: ProbeGroups = ProbeGroups {
        liveness: false,
        readiness: true,
    };
    /// Liveness only.
    pub const LIVENESS: ProbeGroups = ProbeGroups {
        liveness: true,
        readiness: false,
    };
    /// Both groups.
    pub const BOTH: ProbeGroups = ProbeGroups {
        liveness: true,
        readiness: true,
    };
}

impl Default for ProbeGroups {
    fn default() -> Self {
        ProbeGroups::READINESS
    }
}

/// A validated check id: 1..=128 characters of `[A-Za-z0-9_.:/-]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CheckId(String);

impl CheckId {
    /// Longest accepted id, in characters.
    pub const LEN_MAX: usize = 128;

    /// Validate and wrap an id.
    pub fn new(id: impl Into<String>) -> Result<CheckId, HealthApiError> {
        let id = id.into();
        let reason = if id.is_empty() {
            Some("it is empty")
        } else if id.len() > Self::LEN_MAX {
            Some("it is too long")
        } else if !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '/' | '-'))
        {
            Some("it contains a character outside the allowed set")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(HealthApiError::InvalidCheckId { id, reason }),
            None => Ok(CheckId(id)),
        }
    }

    /// The id as a string.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CheckId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for CheckId {
    type Err = HealthApiError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CheckId::new(s)
    }
}

impl TryFrom<String> for CheckId {
    type Error = HealthApiError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        CheckId::new(s)
    }
}

impl TryFrom<&str> for CheckId {
    type Error = HealthApiError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        CheckId::new(s)
    }
}

impl From<CheckId> for String {
    fn from(id: CheckId) -> String {
        id.0
    }
}

impl std::borrow::Borrow<str> for CheckId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// The outcome of one run of a check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    /// What the check found.
    pub status: HealthStatus,
    /// A short human-readable explanation (the monitor truncates it to its configured limit).
    pub message: String,
    /// How long the run took. Checks may leave it zero: the monitor measures and overwrites it.
    pub duration: Duration,
    /// A measured value, if the check measures one (free bytes, RSS bytes, latency ms, ...).
    pub observed_value: Option<f64>,
}

impl CheckResult {
    /// A result with `status` and `message`, zero duration, no observed value.
    #[must_use]
    pub fn new(status: HealthStatus, message: impl Into<String>) -> CheckResult {
        CheckResult {
            status,
            message: message.into(),
            duration: Duration::ZERO,
            observed_value: None,
        }
    }

    /// A `Passing` result.
    #[must_use]
    pub fn passing(message: impl Into<String>) -> CheckResult {
        CheckResult::new(HealthStatus::Passing, message)
    }

    /// A `Warning` result.
    #[must_use]
    pub fn warning(message: impl Into<String>) -> CheckResult {
        CheckResult::new(HealthStatus::Warning, message)
    }

    /// A `Critical` result.
    #[must_use]
    pub fn critical(message: impl Into<String>) -> CheckResult {
        CheckResult::new(HealthStatus::Critical, message)
    }

    /// An `Unknown` result.
    #[must_use]
    pub fn unknown(message: impl Into<String>) -> CheckResult {
        CheckResult::new(HealthStatus::Unknown, message)
    }

    /// Attach an observed value.
    #[must_use]
    pub fn with_observed(mut self, value: f64) -> CheckResult {
        self.observed_value = Some(value);
        self
    }

    /// Set the duration.
    #[must_use]
    pub fn with_duration(mut self, duration: Duration) -> CheckResult {
        self.duration = duration;
        self
    }

    /// Truncate the message to at most `bytes_max` bytes (on a character boundary), marking the
    /// cut with `...` when there is room for it.
    #[must_use]
    pub fn truncated(mut self, bytes_max: usize) -> CheckResult {
        truncate_message(&mut self.message, bytes_max);
        self
    }
}

/// Truncate `message` in place to at most `bytes_max` bytes on a character boundary, ending in
/// `...` if it was cut and `bytes_max >= 3`.
pub fn truncate_message(message: &mut String, bytes_max: usize) {
    if message.len() <= bytes_max {
        return;
    }
    let marker = if bytes_max >= 3 { "..." } else { "" };
    let mut cut = bytes_max - marker.len();
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    message.truncate(cut);
    message.push_str(marker);
}

/// The boxed future a [`HealthCheck`] returns.
pub type CheckFuture<'a> = Pin<Box<dyn Future<Output = CheckResult> + Send + 'a>>;

/// An async health check.
///
/// Implement it for a type, or pass a closure `Fn() -> impl Future<Output = CheckResult>` (there
/// is a blanket impl; [`check_fn`] helps type inference). A check should not sleep or loop
/// forever, but it may: the monitor runs it under a timeout and reports `Critical` ("timed out
/// after X") when it hangs. A check reports its own failures as results; it should not panic
/// (the monitor turns a panic into `Critical` too). It must not block its thread: a timeout
/// cannot interrupt synchronous work, so put blocking calls in `tokio::task::spawn_blocking`.
///
/// ```
/// use quorate_health_api::{CheckFuture, CheckResult, HealthCheck};
///
/// struct AlwaysUp;
/// impl HealthCheck for AlwaysUp {
///     fn check(&self) -> CheckFuture<'_> {
///         Box::pin(async { CheckResult::passing("up") })
///     }
/// }
/// ```
pub trait HealthCheck: Send + Sync + 'static {
    /// Run the check once.
    fn check(&self) -> CheckFuture<'_>;
}

impl<F, Fut> HealthCheck for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = CheckResult> + Send + 'static,
{
    fn check(&self) -> CheckFuture<'_> {
        Box::pin(self())
    }
}

/// Turn a closure into a [`HealthCheck`] (the identity, with the bounds spelled out so closures
/// infer cleanly).
pub fn check_fn<F, Fut>(f: F) -> F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = CheckResult> + Send + 'static,
{
    f
}

/// What a consumer sees of one check.
///
/// Times (`last_run_at`, `last_change_at`) are monotonic offsets from the producing monitor's
/// start, on the same clock as [`HealthSnapshot::taken_at`]; `taken_at - last_change_at` is the
/// age of the current status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckSnapshot {
    /// The check's id.
    pub id: CheckId,
    /// What kind of component it checks.
    pub component_type: ComponentType,
    /// The component's name (e.g. `"orders-db"`).
    pub component_name: String,
    /// The damped status (staleness applied); what aggregates see, before criticality.
    pub status: HealthStatus,
    /// How much this check matters.
    pub criticality: Criticality,
    /// Which probe groups it belongs to.
    pub groups: ProbeGroups,
    /// Whether the check is being run and aggregated.
    pub enabled: bool,
    /// Its last result is older than the staleness limit (status shows the stale status).
    pub stale: bool,
    /// The raw (undamped) status of the last run, if it has run.
    pub last_result: Option<HealthStatus>,
    /// The message of the last run (or why it has no result).
    pub message: String,
    /// How long the last run took.
    pub last_duration: Option<Duration>,
    /// The value the last run observed, if any.
    pub observed_value: Option<f64>,
    /// Consecutive successes (passing or warning) up to the last run.
    pub consecutive_successes: u32,
    /// Consecutive failures (critical or unknown) up to the last run.
    pub consecutive_failures: u32,
    /// Completed runs since registration.
    pub runs: u64,
    /// When the last run completed.
    pub last_run_at: Option<Duration>,
    /// When the damped status last changed (registration counts as a change).
    pub last_change_at: Option<Duration>,
}

impl CheckSnapshot {
    /// A fresh snapshot of a check that has not run yet: `status`, enabled, not stale.
    #[must_use]
    pub fn new(
        id: CheckId,
        component_type: ComponentType,
        component_name: impl Into<String>,
        status: HealthStatus,
    ) -> CheckSnapshot {
        CheckSnapshot {
            id,
            component_type,
            component_name: component_name.into(),
            status,
            criticality: Criticality::Critical,
            groups: ProbeGroups::READINESS,
            enabled: true,
            stale: false,
            last_result: None,
            message: "not run yet".to_owned(),
            last_duration: None,
            observed_value: None,
            consecutive_successes: 0,
            consecutive_failures: 0,
            runs: 0,
            last_run_at: None,
            last_change_at: None,
        }
    }

    /// What this check contributes to an aggregate: `None` if disabled, otherwise its status
    /// capped by its criticality.
    #[must_use]
    pub fn contribution(&self) -> Option<HealthStatus> {
        self.enabled
            .then(|| self.criticality.contribution(self.status))
    }
}

/// The aggregated health of a node at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthSnapshot {
    /// Aggregate of every enabled check (criticality applied).
    pub status: HealthStatus,
    /// Aggregate of the enabled liveness checks.
    pub liveness: HealthStatus,
    /// Aggregate of the enabled readiness checks.
    pub readiness: HealthStatus,
    /// Enabled checks whose own status is `Passing`.
    pub healthy: usize,
    /// Enabled checks.
    pub total: usize,
    /// Every registered check (enabled or not), by id.
    pub checks: BTreeMap<CheckId, CheckSnapshot>,
    /// Increases by one with every published snapshot.
    pub generation: u64,
    /// When the snapshot was taken (monotonic offset from the monitor's start).
    pub taken_at: Duration,
}

impl HealthSnapshot {
    /// A snapshot with no checks (all aggregates `Passing`).
    #[must_use]
    pub fn empty() -> HealthSnapshot {
        HealthSnapshot::from_checks(BTreeMap::new(), 0, Duration::ZERO)
    }

    /// Build a snapshot from per-check state, computing the aggregates with the documented rules.
    #[must_use]
    pub fn from_checks(
        checks: BTreeMap<CheckId, CheckSnapshot>,
        generation: u64,
        taken_at: Duration,
    ) -> HealthSnapshot {
        let mut status = HealthStatus::Passing;
        let mut liveness = HealthStatus::Passing;
        let mut readiness = HealthStatus::Passing;
        let mut healthy = 0;
        let mut total = 0;
        for check in checks.values() {
            let Some(contribution) = check.contribution() else {
                continue;
            };
            total += 1;
            if check.status == HealthStatus::Passing {
                healthy += 1;
            }
            status = status.worst(contribution);
            if check.groups.liveness {
                liveness = liveness.worst(contribution);
            }
            if check.groups.readiness {
                readiness = readiness.worst(contribution);
            }
        }
        HealthSnapshot {
            status,
            liveness,
            readiness,
            healthy,
            total,
            checks,
            generation,
            taken_at,
        }
    }

    /// The snapshot of one check.
    #[must_use]
    pub fn check(&self, id: &str) -> Option<&CheckSnapshot> {
        self.checks.get(id)
    }

    /// Enabled checks whose own status is not `Passing`.
    pub fn failing(&self) -> impl Iterator<Item = &CheckSnapshot> {
        self.checks
            .values()
            .filter(|c| c.enabled && c.status != HealthStatus::Passing)
    }
}

impl Default for HealthSnapshot {
    fn default() -> Self {
        HealthSnapshot::empty()
    }
}

/// A change of one check's damped status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// Increases by one with every transition of the producer (gaps mean a lagging receiver).
    pub seq: u64,
    /// The check that changed.
    pub check: CheckId,
    /// Status before.
    pub from: HealthStatus,
    /// Status after.
    pub to: HealthStatus,
    /// When (monotonic offset from the monitor's start).
    pub at: Duration,
    /// The message of the result that caused it (or the reason: stale, disabled, ...).
    pub message: String,
    /// The overall status right after this transition.
    pub overall: HealthStatus,
}

/// Read-only access to aggregated health. Implemented by `quorate_health::HealthMonitor` and by
/// [`ManualHealthView`] for tests.
///
/// Two subscriptions, both bounded:
/// - [`HealthView::watch`]: the latest snapshot (intermediate snapshots may be skipped);
/// - [`HealthView::transitions`]: every damped status change in order, on a broadcast channel of
///   the producer's configured capacity; a receiver that falls further behind gets
///   `RecvError::Lagged(n)` and can resynchronise from [`HealthView::snapshot`].
pub trait HealthView: Send + Sync {
    /// The current snapshot.
    fn snapshot(&self) -> HealthSnapshot;
    /// A receiver of the latest snapshot.
    fn watch(&self) -> watch::Receiver<HealthSnapshot>;
    /// A receiver of every status transition from now on.
    fn transitions(&self) -> broadcast::Receiver<Transition>;
}

impl<T: HealthView + ?Sized> HealthView for Arc<T> {
    fn snapshot(&self) -> HealthSnapshot {
        (**self).snapshot()
    }
    fn watch(&self) -> watch::Receiver<HealthSnapshot> {
        (**self).watch()
    }
    fn transitions(&self) -> broadcast::Receiver<Transition> {
        (**self).transitions()
    }
}

impl<T: HealthView + ?Sized> HealthView for &T {
    fn snapshot(&self) -> HealthSnapshot {
        (**self).snapshot()
    }
    fn watch(&self) -> watch::Receiver<HealthSnapshot> {
        (**self).watch()
    }
    fn transitions(&self) -> broadcast::Receiver<Transition> {
        (**self).transitions()
    }
}

/// A [`HealthView`] whose checks are set by hand: the fake for consumers' tests.
///
/// ```
/// use quorate_health_api::{CheckId, ComponentType, HealthStatus, HealthView, ManualHealthView};
/// use std::num::NonZeroUsize;
///
/// let view = ManualHealthView::new(NonZeroUsize::new(16).expect("nonzero"));
/// let mut events = view.transitions();
/// let db = CheckId::new("db").expect("valid id");
/// view.set(db.clone(), ComponentType::Database, HealthStatus::Passing, "ok");
/// view.set(db, ComponentType::Database, HealthStatus::Critical, "connection refused");
/// assert_eq!(view.snapshot().readiness, HealthStatus::Critical);
/// assert_eq!(events.try_recv().expect("first").to, HealthStatus::Passing);
/// assert_eq!(events.try_recv().expect("second").to, HealthStatus::Critical);
/// ```
#[derive(Debug)]
pub struct ManualHealthView {
    state: Mutex<ManualState>,
    snapshot_tx: watch::Sender<HealthSnapshot>,
    transitions_tx: broadcast::Sender<Transition>,
}

#[derive(Debug, Default)]
struct ManualState {
    checks: BTreeMap<CheckId, CheckSnapshot>,
    generation: u64,
    seq: u64,
    clock: Duration,
}

impl ManualHealthView {
    /// An empty view whose transition channel holds `transitions_capacity` events.
    #[must_use]
    pub fn new(transitions_capacity: NonZeroUsize) -> ManualHealthView {
        let (snapshot_tx, _) = watch::channel(HealthSnapshot::empty());
        let (transitions_tx, _) = broadcast::channel(transitions_capacity.get());
        ManualHealthView {
            state: Mutex::new(ManualState::default()),
            snapshot_tx,
            transitions_tx,
        }
    }

    /// Set (or add) a check with default criticality and groups, publish the new snapshot and,
    /// if its status changed (a new check changes from `Unknown`), a transition.
    pub fn set(
        &self,
        id: CheckId,
        component_type: ComponentType,
        status: HealthStatus,
        message: &str,
    ) {
        let mut check = CheckSnapshot::new(
            id,
            component_type.clone(),
            component_type.to_string(),
            status,
        );
        check.message = message.to_owned();
        self.set_check(check);
    }

    /// Set (or add) a whole check snapshot; publishes like [`ManualHealthView::set`].
    pub fn set_check(&self, mut check: CheckSnapshot) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.clock += Duration::from_millis(1);
        let now = state.clock;
        let from = state
            .checks
            .get(&check.id)
            .map_or(HealthStatus::Unknown, |c| c.status);
        let changed = from != check.status || !state.checks.contains_key(&check.id);
        if changed {
            check.last_change_at = Some(now);
        }
        let id = check.id.clone();
        let to = check.status;
        let message = check.message.clone();
        state.checks.insert(id.clone(), check);
        state.generation += 1;
        let snapshot = HealthSnapshot::from_checks(state.checks.clone(), state.generation, now);
        let overall = snapshot.status;
        self.snapshot_tx.send_replace(snapshot);
        if changed {
            state.seq += 1;
            // No receivers is fine: nobody listens.
            let _ = self.transitions_tx.send(Transition {
                seq: state.seq,
                check: id,
                from,
                to,
                at: now,
                message,
                overall,
            });
        }
    }

    /// Remove a check (publishes a snapshot, no transition).
    pub fn remove(&self, id: &str) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.checks.remove(id).is_some() {
            state.clock += Duration::from_millis(1);
            state.generation += 1;
            let snapshot =
                HealthSnapshot::from_checks(state.checks.clone(), state.generation, state.clock);
            self.snapshot_tx.send_replace(snapshot);
        }
    }
}

impl HealthView for ManualHealthView {
    fn snapshot(&self) -> HealthSnapshot {
        self.snapshot_tx.borrow().clone()
    }
    fn watch(&self) -> watch::Receiver<HealthSnapshot> {
        self.snapshot_tx.subscribe()
    }
    fn transitions(&self) -> broadcast::Receiver<Transition> {
        self.transitions_tx.subscribe()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test")]
mod tests {
    use super::*;

    fn id(s: &str) -> CheckId {
        CheckId::new(s).unwrap()
    }

    #[test]
    fn aggregation_order_is_critical_unknown_warning_passing() {
        use HealthStatus::*;
        assert!(Passing < Warning && Warning < Unknown && Unknown < Critical);
        assert_eq!(HealthStatus::aggregate([]), Passing);
        assert_eq!(HealthStatus::aggregate([Passing, Warning]), Warning);
        assert_eq!(
            HealthStatus::aggregate([Warning, Unknown, Passing]),
            Unknown
        );
        assert_eq!(
            HealthStatus::aggregate([Unknown, Critical, Warning]),
            Critical
        );
        assert!(Passing.is_healthy() && Warning.is_healthy());
        assert!(!Unknown.is_healthy() && !Critical.is_healthy());
    }

    #[test]
    fn non_critical_caps_at_warning() {
        for s in HealthStatus::ALL {
            assert_eq!(Criticality::Critical.contribution(s), s);
            assert!(Criticality::NonCritical.contribution(s) <= HealthStatus::Warning);
        }
        assert_eq!(
            Criticality::NonCritical.contribution(HealthStatus::Critical),
            HealthStatus::Warning
        );
    }

    #[test]
    fn check_id_validation() {
        assert!(CheckId::new("redis:ping/main-1.a_b").is_ok());
        for bad in ["", "a b", "é", &"x".repeat(129)] {
            assert!(
                matches!(
                    CheckId::new(bad),
                    Err(HealthApiError::InvalidCheckId { .. })
                ),
                "{bad:?} accepted"
            );
        }
        let err = CheckId::new("a b").unwrap_err().to_string();
        assert!(
            err.contains("\"a b\"") && err.contains("A-Za-z0-9"),
            "{err}"
        );
        assert!(serde_json::from_str::<CheckId>("\"bad id\"").is_err());
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        let mut m = "ééééé".to_owned(); // 10 bytes
        truncate_message(&mut m, 6);
        assert_eq!(m, "é...");
        let mut m = "abcdef".to_owned();
        truncate_message(&mut m, 2);
        assert_eq!(m, "ab");
        let mut m = "short".to_owned();
        truncate_message(&mut m, 10);
        assert_eq!(m, "short");
    }

    #[test]
    fn snapshot_aggregates_groups_criticality_and_disabled() {
        let mut checks = BTreeMap::new();
        let mut live = CheckSnapshot::new(
            id("proc"),
            ComponentType::Internal,
            "proc",
            HealthStatus::Passing,
        );
        live.groups = ProbeGroups::BOTH;
        let mut db = CheckSnapshot::new(
            id("db"),
            ComponentType::Database,
            "db",
            HealthStatus::Critical,
        );
        db.criticality = Criticality::NonCritical;
        let mut off =
            CheckSnapshot::new(id("off"), ComponentType::Cache, "c", HealthStatus::Critical);
        off.enabled = false;
        for c in [live, db, off] {
            checks.insert(c.id.clone(), c);
        }
        let s = HealthSnapshot::from_checks(checks, 7, Duration::from_secs(1));
        assert_eq!(s.status, HealthStatus::Warning);
        assert_eq!(s.readiness, HealthStatus::Warning);
        assert_eq!(s.liveness, HealthStatus::Passing);
        assert_eq!((s.healthy, s.total), (1, 2));
        assert_eq!(s.failing().count(), 1);
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains("\"status\":\"warning\""), "{json}");
        let back: HealthSnapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
    }

    #[tokio::test]
    async fn closure_and_manual_view() {
        let c = check_fn(|| async { CheckResult::warning("slow").with_observed(3.0) });
        let boxed: Box<dyn HealthCheck> = Box::new(c);
        let r = boxed.check().await;
        assert_eq!(
            (r.status, r.observed_value),
            (HealthStatus::Warning, Some(3.0))
        );

        let view = Arc::new(ManualHealthView::new(NonZeroUsize::new(8).unwrap()));
        let mut rx = view.transitions();
        let mut w = view.watch();
        view.set(id("a"), ComponentType::Cache, HealthStatus::Passing, "ok");
        view.set(
            id("a"),
            ComponentType::Cache,
            HealthStatus::Passing,
            "still ok",
        );
        view.set(
            id("a"),
            ComponentType::Cache,
            HealthStatus::Critical,
            "down",
        );
        let t1 = rx.recv().await.unwrap();
        let t2 = rx.recv().await.unwrap();
        assert_eq!(
            (t1.seq, t1.from, t1.to),
            (1, HealthStatus::Unknown, HealthStatus::Passing)
        );
        assert_eq!(
            (t2.seq, t2.from, t2.to),
            (2, HealthStatus::Passing, HealthStatus::Critical)
        );
        assert_eq!(t2.overall, HealthStatus::Critical);
        assert!(rx.try_recv().is_err());
        assert!(w.has_changed().unwrap());
        assert_eq!(w.borrow_and_update().generation, 3);
        let dynview: &dyn HealthView = &view;
        assert_eq!(dynview.snapshot().status, HealthStatus::Critical);
        view.remove("a");
        assert_eq!(view.snapshot().total, 0);
    }
}
