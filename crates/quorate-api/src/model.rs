//! The JSON bodies of the API: what the server writes and [`crate::client`] reads back, one
//! serde type per body (nobody formats or parses them by hand).

use quorate_startup::admin::{AdminOutcome, CandidateReport};
use serde::{Deserialize, Serialize};

/// The header that carries the fencing token on a 200 from a primary probe.
pub const TOKEN_HEADER: &str = "x-quorate-fencing-token";
/// The header with the primary's lease time left (milliseconds) on a 200 from a primary probe.
pub const LEASE_HEADER: &str = "x-quorate-lease-remaining-ms";

/// An error: the status, a short kind and a sentence saying what is wrong and what to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The HTTP status.
    pub status: u16,
    /// A short kind: `unauthenticated`, `forbidden`, `bad_request`, `unknown_role`,
    /// `refused`, `unavailable`, `payload_too_large`, `not_found`.
    pub error: String,
    /// What is wrong, and how to fix it.
    pub message: String,
}

/// The body of a probe (`/role/{role}/primary`, `/replica`, `/read-only`) on GET.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeBody {
    /// The role.
    pub role: String,
    /// This node.
    pub node: String,
    /// `primary` (acting, lease valid) or `replica`.
    pub state: String,
    /// The primary this node sees.
    pub primary: Option<String>,
    /// The fencing token, when this node acts as primary.
    pub token: Option<u64>,
    /// The lease time left on this node's clock, when it acts as primary.
    pub lease_remaining_ms: Option<u64>,
    /// This node's aggregated health.
    pub health: String,
    /// Whether this node sees a majority of voters.
    pub has_majority: bool,
    /// Why the probe answered 503, if it did.
    pub reason: Option<String>,
}

/// One check in a `/health` body (IETF draft "Health Check Response Format for HTTP APIs").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckEntry {
    /// The check's id.
    pub component_id: String,
    /// Database, cache, ...
    pub component_type: String,
    /// `pass`, `warn` or `fail`.
    pub status: String,
    /// The check's own status word (`passing`, `warning`, `unknown`, `critical`).
    pub quorate_status: String,
    /// Whether a critical status of this check makes the node unhealthy.
    pub critical: bool,
    /// The last message.
    pub output: String,
    /// The value the last run observed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_value: Option<f64>,
    /// How long the last run took, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

/// The `/health` body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HealthBody {
    /// `pass`, `warn` or `fail`.
    pub status: String,
    /// This node.
    pub node: String,
    /// Checks keyed `component:status`, as the draft does.
    pub checks: std::collections::BTreeMap<String, Vec<CheckEntry>>,
}

/// The coordination part of `/cluster`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoordinationView {
    /// The leader this node knows.
    pub leader: Option<String>,
    /// The term.
    pub term: u64,
    /// Whether this node leads.
    pub is_leader: bool,
    /// The committed index.
    pub commit_index: u64,
    /// The applied index.
    pub applied_index: u64,
    /// The voters.
    pub voters: Vec<String>,
}

/// One member in `/cluster`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    /// Its id.
    pub id: String,
    /// Its gossip address.
    pub address: String,
    /// `alive`, `suspect`, `down`, `left`.
    pub state: String,
    /// Its gossiped health.
    pub health: String,
    /// Its API address, when it has one.
    pub api: Option<String>,
    /// Its version.
    pub version: String,
}

/// The `/cluster` body: this node's view of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterBody {
    /// This node.
    pub node: String,
    /// Whether every startup stage is ready.
    pub ready: bool,
    /// Coordination (Raft); `None` when the store did not answer.
    pub coordination: Option<CoordinationView>,
    /// Whether this node sees a majority of voters.
    pub has_majority: bool,
    /// Voters it reaches.
    pub voters_reachable: usize,
    /// Voters configured.
    pub voters: usize,
    /// `healthy`, `not-configured`, `in-minority (...)`, `conflicting-views (...)`.
    pub split_brain: String,
    /// Every member it knows.
    pub members: Vec<MemberView>,
}

/// One role in `/roles`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleBody {
    /// The role.
    pub role: String,
    /// The lease holder per the coordination store.
    pub holder: Option<String>,
    /// The holder's fencing token (the revision of its grant).
    pub token: Option<u64>,
    /// The holder's lease time left, as the store's leader estimates it.
    pub lease_remaining_ms: Option<u64>,
    /// The role's lease TTL.
    pub lease_ttl_ms: u64,
    /// Whether this node acts as primary.
    pub acting_here: bool,
    /// This node's policy's last decision.
    pub last_action: String,
    /// A due failback waiting for an operator's approval (`failback_approval`): the node it
    /// would move the role to. Approve with `POST /role/{role}/failback {"candidate": node}`,
    /// postpone with `POST /role/{role}/failback/postpone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub awaiting_approval: Option<String>,
    /// `enabled`, `paused`, `budget_spent`; `None` when the explanation failed.
    pub automatic: Option<String>,
    /// Every member, with why it is or is not a candidate.
    pub candidates: Vec<CandidateReport>,
    /// The explanation in words.
    pub explain: Option<String>,
}

/// The reply of an admin call that was done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminReply {
    /// 200 (done and confirmed) or 202 (accepted, still under way).
    pub status: u16,
    /// The outcome.
    pub outcome: AdminOutcome,
    /// For a switchover, failover or failback: whether the chosen node was seen as primary
    /// before the reply.
    pub confirmed: bool,
}

/// The body of `POST /role/{role}/switchover` and `/failover` (all optional).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoveBody {
    /// The node to promote; the best candidate when absent.
    #[serde(default)]
    pub candidate: Option<String>,
    /// Patroni's check: the primary the caller expects (412 when it is another one).
    #[serde(default)]
    pub leader: Option<String>,
}

/// The body of `POST /role/{role}/failback/postpone`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostponeBody {
    /// How long no automatic failback happens (`"30m"`, `"1h"`; default 1 h, at most 7 days).
    #[serde(default)]
    pub ttl: Option<String>,
}

/// The body of `POST /role/{role}/maintenance`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceBody {
    /// On (pause automatic moves) or off (resume).
    pub on: bool,
    /// How long the pause lasts (`"30m"`, `"1h"`; default 1 h, at most 7 days).
    #[serde(default)]
    pub ttl: Option<String>,
}
