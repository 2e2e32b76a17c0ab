//! Admin operations shared by every operator surface (the HTTP API and `quorate ctl`, the
//! Telegram bot, an embedding application): one request type, one authorisation rule, one
//! outcome type with the reasons, and one audit trail.
//!
//! A surface authenticates its caller its own way (a bearer token, an allow-listed chat id)
//! and turns the caller into a [`Principal`] with a [`Permission`]. [`Admin::run`] then checks
//! the permission, runs the operation through the node's failover manager (checked by the
//! policy, published to every node through the coordination store), and writes one audit
//! record: a [`NodeEvent::Admin`] on the node's event stream and a `quorate::audit` log line,
//! for refusals as well as for successes. So the same request gets the same outcome and the
//! same reason on every surface.

use std::fmt;
use std::time::Duration;

use quorate_failover::FailoverError;
use quorate_failover::shell::ManualOp;
use quorate_types::{NodeId, RoleName};
use serde::{Deserialize, Serialize};

use crate::node::NodeContext;
use crate::report::NodeEvent;

/// What a caller may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// Read status, history, explanations.
    Read,
    /// Also change roles: switchover, failover, failback, maintenance.
    Operate,
}

/// An authenticated caller, as its surface identified it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// The surface and the caller, e.g. `http:token ops` or `telegram:chat 12345`.
    pub name: String,
    /// What it may do.
    pub permission: Permission,
}

impl Principal {
    /// A caller named `name` with `permission`.
    pub fn new(name: impl Into<String>, permission: Permission) -> Principal {
        Principal {
            name: name.into(),
            permission,
        }
    }
}

/// An operation on a role.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum AdminRequest {
    /// A planned hand-off from the primary to `to`, or to the best candidate.
    Switchover {
        /// The role.
        role: String,
        /// The successor, or the best candidate.
        to: Option<String>,
    },
    /// A promotion while the role has no primary, of `to` or the best candidate.
    Failover {
        /// The role.
        role: String,
        /// The node to promote, or the best candidate.
        to: Option<String>,
    },
    /// A switchover to the preferred (highest-priority) candidate. With `to`, an approval of
    /// the failback the role waits for (`failback_approval`): refused unless `to` still is the
    /// preferred candidate.
    Failback {
        /// The role.
        role: String,
        /// The node the failback must go to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<String>,
    },
    /// No automatic failback for `ttl_ms` (a failback waiting for approval waits on; one under
    /// way is cancelled). Failovers are not affected.
    PostponeFailback {
        /// The role.
        role: String,
        /// How long, in milliseconds.
        ttl_ms: u64,
    },
    /// Maintenance mode (no automatic moves) for `ttl_ms`.
    Pause {
        /// The role.
        role: String,
        /// How long, in milliseconds; the pause ends by itself after that.
        ttl_ms: u64,
    },
    /// Leave maintenance mode.
    Resume {
        /// The role.
        role: String,
    },
    /// Cancel a hand-off under way.
    Cancel {
        /// The role.
        role: String,
    },
}

impl AdminRequest {
    /// The role it is about.
    pub fn role(&self) -> &str {
        match self {
            AdminRequest::Switchover { role, .. }
            | AdminRequest::Failover { role, .. }
            | AdminRequest::Failback { role, .. }
            | AdminRequest::PostponeFailback { role, .. }
            | AdminRequest::Pause { role, .. }
            | AdminRequest::Resume { role }
            | AdminRequest::Cancel { role } => role,
        }
    }

    /// The permission it needs.
    pub fn permission(&self) -> Permission {
        Permission::Operate
    }

    fn manual_op(&self) -> Result<ManualOp, AdminError> {
        let node = |to: &Option<String>| -> Result<Option<NodeId>, AdminError> {
            to.as_deref()
                .map(|n| {
                    NodeId::new(n).map_err(|e| AdminError::BadRequest {
                        reason: format!("node name {n:?}: {e}"),
                    })
                })
                .transpose()
        };
        Ok(match self {
            AdminRequest::Switchover { to, .. } => ManualOp::Switchover(node(to)?),
            AdminRequest::Failover { to, .. } => ManualOp::Failover(node(to)?),
            AdminRequest::Failback { to, .. } => ManualOp::Failback(node(to)?),
            AdminRequest::PostponeFailback { ttl_ms, .. } => {
                if *ttl_ms == 0 {
                    return Err(AdminError::BadRequest {
                        reason: "a postponement needs a ttl above zero".into(),
                    });
                }
                ManualOp::PostponeFailback(Duration::from_millis(*ttl_ms))
            }
            AdminRequest::Pause { ttl_ms, .. } => {
                if *ttl_ms == 0 {
                    return Err(AdminError::BadRequest {
                        reason: "pause needs a ttl above zero (the pause ends by itself)".into(),
                    });
                }
                ManualOp::Pause(Duration::from_millis(*ttl_ms))
            }
            AdminRequest::Resume { .. } => ManualOp::Resume,
            AdminRequest::Cancel { .. } => ManualOp::Cancel,
        })
    }
}

impl fmt::Display for AdminRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let to = |t: &Option<String>| t.as_deref().map_or(String::new(), |t| format!(" to {t}"));
        match self {
            AdminRequest::Switchover { role, to: t } => write!(f, "switchover of {role}{}", to(t)),
            AdminRequest::Failover { role, to: t } => write!(f, "failover of {role}{}", to(t)),
            AdminRequest::Failback { role, to: t } => write!(f, "failback of {role}{}", to(t)),
            AdminRequest::PostponeFailback { role, ttl_ms } => {
                write!(
                    f,
                    "postponement of {role}'s failback by {}",
                    humantime_ms(*ttl_ms)
                )
            }
            AdminRequest::Pause { role, ttl_ms } => {
                write!(f, "pause of {role} for {}", humantime_ms(*ttl_ms))
            }
            AdminRequest::Resume { role } => write!(f, "resume of {role}"),
            AdminRequest::Cancel { role } => write!(f, "cancel of the hand-off of {role}"),
        }
    }
}

fn humantime_ms(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// What an operation did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminOutcome {
    /// The node chosen (switchover, failover, failback), if any.
    pub chosen: Option<String>,
    /// One readable sentence.
    pub message: String,
}

/// Why an operation was not done. Nothing changed in every case but [`AdminError::Unavailable`],
/// where a write that timed out may or may not have reached the store.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "error", rename_all = "snake_case")]
pub enum AdminError {
    /// The caller lacks the permission.
    #[error("{who} may not run a {what}: it needs the `operate` permission")]
    Forbidden {
        /// The caller.
        who: String,
        /// The operation.
        what: String,
    },
    /// The request is malformed (a bad node name, a zero pause).
    #[error("bad request: {reason}")]
    BadRequest {
        /// What is wrong.
        reason: String,
    },
    /// No role of that name is managed by this node.
    #[error("unknown role {role:?}: this node manages {known}")]
    UnknownRole {
        /// The name asked for.
        role: String,
        /// The roles it manages, comma-separated.
        known: String,
    },
    /// The policy refused it (an unfit candidate, no primary for a switchover, ...): the
    /// reason says why and what to do.
    #[error("refused: {reason}")]
    Refused {
        /// The policy's reason.
        reason: String,
    },
    /// The coordination store or the manager is not available; retry later.
    #[error("unavailable: {reason}")]
    Unavailable {
        /// Why.
        reason: String,
    },
}

impl AdminError {
    /// The HTTP status for it, following Patroni's REST API: 403, 400, 404, 412 (refused by the
    /// policy), 503 (unavailable).
    pub fn http_status(&self) -> u16 {
        match self {
            AdminError::Forbidden { .. } => 403,
            AdminError::BadRequest { .. } => 400,
            AdminError::UnknownRole { .. } => 404,
            AdminError::Refused { .. } => 412,
            AdminError::Unavailable { .. } => 503,
        }
    }
}

/// One audit record: who asked for what, and what came of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminAudit {
    /// The caller.
    pub who: String,
    /// The request.
    pub request: AdminRequest,
    /// The outcome.
    pub result: Result<AdminOutcome, AdminError>,
}

/// Runs admin operations on a node (cheap to clone).
#[derive(Clone)]
pub struct Admin {
    ctx: NodeContext,
}

impl fmt::Debug for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admin")
            .field("node", &self.ctx.config.node_id)
            .finish_non_exhaustive()
    }
}

impl Admin {
    /// Admin operations on the node whose components `ctx` holds.
    pub fn new(ctx: NodeContext) -> Admin {
        Admin { ctx }
    }

    /// Checks `who`'s permission, runs `request`, and writes the audit record (for a refusal
    /// too).
    pub async fn run(
        &self,
        who: &Principal,
        request: AdminRequest,
    ) -> Result<AdminOutcome, AdminError> {
        let result = self.execute(who, &request).await;
        let audit = AdminAudit {
            who: who.name.clone(),
            request,
            result: result.clone(),
        };
        match &audit.result {
            Ok(o) => tracing::info!(
                target: "quorate::audit",
                who = %audit.who,
                request = %audit.request,
                outcome = %o.message,
                "admin operation done"
            ),
            Err(e) => tracing::warn!(
                target: "quorate::audit",
                who = %audit.who,
                request = %audit.request,
                error = %e,
                "admin operation not done"
            ),
        }
        let _ = self.ctx.events.send(NodeEvent::Admin(audit));
        result
    }

    /// The roles this node manages.
    pub fn roles(&self) -> Vec<RoleName> {
        self.ctx.failover.roles().cloned().collect()
    }

    /// The role named `role`, or [`AdminError::UnknownRole`] naming the known ones.
    pub fn role(&self, role: &str) -> Result<RoleName, AdminError> {
        let roles = self.roles();
        roles
            .iter()
            .find(|r| r.as_str() == role)
            .cloned()
            .ok_or_else(|| AdminError::UnknownRole {
                role: role.to_owned(),
                known: if roles.is_empty() {
                    "no roles".to_owned()
                } else {
                    roles
                        .iter()
                        .map(RoleName::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            })
    }

    async fn execute(
        &self,
        who: &Principal,
        request: &AdminRequest,
    ) -> Result<AdminOutcome, AdminError> {
        if who.permission < request.permission() {
            return Err(AdminError::Forbidden {
                who: who.name.clone(),
                what: request.to_string(),
            });
        }
        let role = self.role(request.role())?;
        let op = request.manual_op()?;
        let chosen = self
            .ctx
            .failover
            .manual(&role, op)
            .await
            .map_err(admin_error)?;
        let chosen = chosen.map(|n| n.to_string());
        let message = match &chosen {
            Some(n) => format!("{request}: done, {n} chosen"),
            None => format!("{request}: done"),
        };
        Ok(AdminOutcome { chosen, message })
    }
}

/// Read-only views for the operator surfaces: the candidates of a role with the reasons
/// (`explain`), its history with the measured durations, and the node's status. Reading needs
/// only [`Permission::Read`], which every principal has, so these take no principal.
impl Admin {
    /// Who could take `role`, and why each other member could not (the policy's own reasons).
    pub async fn explain(&self, role: &str) -> Result<RoleExplanation, AdminError> {
        let name = self.role(role)?;
        let e = self
            .ctx
            .failover
            .explain(&name)
            .await
            .map_err(admin_error)?;
        Ok(RoleExplanation::from_policy(role, &e))
    }

    /// The changes of `role` this node recorded, oldest first.
    pub fn history(&self, role: &str) -> Result<Vec<HistoryEntry>, AdminError> {
        let name = self.role(role)?;
        let h = self.ctx.failover.history(&name).map_err(admin_error)?;
        Ok(h.iter().map(HistoryEntry::from_change).collect())
    }

    /// This node's view: coordination, membership, health, roles.
    pub async fn status(&self) -> AdminStatus {
        let m = self.ctx.membership.snapshot();
        let coord = self.ctx.coord.status().await.ok();
        let roles = self
            .roles()
            .iter()
            .filter_map(|r| {
                let s = self.ctx.failover.status(r).ok()?.borrow().clone();
                Some(crate::report::RoleStatus::of(r, s))
            })
            .collect();
        AdminStatus {
            node: self.ctx.config.node_id.to_string(),
            coordination_leader: coord
                .as_ref()
                .and_then(|c| c.leader.as_ref().map(ToString::to_string)),
            term: coord.as_ref().map_or(0, |c| c.term),
            has_majority: m.quorum.has_majority,
            voters_reachable: m.quorum.voters_reachable,
            members_alive: m
                .members
                .iter()
                .filter(|x| x.state == quorate_membership_api::MemberState::Alive)
                .count(),
            members: m.members.len(),
            health: self.ctx.health.snapshot().status.as_str().to_owned(),
            roles,
        }
    }
}

/// A short status of a node, for chat and command-line surfaces.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminStatus {
    /// This node.
    pub node: String,
    /// The coordination (Raft) leader this node knows.
    pub coordination_leader: Option<String>,
    /// The coordination term.
    pub term: u64,
    /// Whether this node sees a majority of voters.
    pub has_majority: bool,
    /// Voters it reaches.
    pub voters_reachable: usize,
    /// Members it sees alive.
    pub members_alive: usize,
    /// Members it knows.
    pub members: usize,
    /// Its aggregated health.
    pub health: String,
    /// Its roles.
    pub roles: Vec<crate::report::RoleStatus>,
}

/// One member in a [`RoleExplanation`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CandidateReport {
    /// The node.
    pub node: String,
    /// Whether it holds the role.
    pub is_primary: bool,
    /// Whether it could be promoted now.
    pub candidate: bool,
    /// Its place among the candidates (1 = best).
    pub rank: Option<usize>,
    /// Its failover priority.
    pub priority: u32,
    /// Its replication lag, when a lag source exists.
    pub lag: Option<u64>,
    /// Whether it leads the coordination store.
    pub coord_leader: bool,
    /// Why it is not a candidate (for the primary: why it could not be re-elected).
    pub reasons: Vec<String>,
}

/// Who could take a role, and why not the others: the policy's explanation, serialisable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleExplanation {
    /// The role.
    pub role: String,
    /// The primary, if any.
    pub primary: Option<String>,
    /// `enabled`, `paused` (maintenance) or `budget_spent` (anti-flap).
    pub automatic: String,
    /// Automatic failovers counted in the anti-flap window.
    pub budget_used: u32,
    /// The anti-flap budget.
    pub budget_max: u32,
    /// A hand-off under way: `(successor, cause)`.
    pub handover: Option<(String, String)>,
    /// Every member.
    pub nodes: Vec<CandidateReport>,
    /// The whole explanation in words (as `quorate ctl explain` prints it).
    pub text: String,
}

impl RoleExplanation {
    /// From the policy's explanation of `role`.
    pub fn from_policy(
        role: &str,
        e: &quorate_failover::policy::Explanation<NodeId>,
    ) -> RoleExplanation {
        use quorate_failover::policy::Automatic;
        RoleExplanation {
            role: role.to_owned(),
            primary: e.primary.as_ref().map(ToString::to_string),
            automatic: match e.automatic {
                Automatic::Enabled => "enabled",
                Automatic::Paused { .. } => "paused",
                Automatic::BudgetSpent { .. } => "budget_spent",
            }
            .to_owned(),
            budget_used: e.budget.used,
            budget_max: e.budget.max,
            handover: e
                .handover
                .as_ref()
                .map(|(n, c)| (n.to_string(), c.to_string())),
            nodes: e
                .nodes
                .iter()
                .map(|n| CandidateReport {
                    node: n.id.to_string(),
                    is_primary: n.is_primary,
                    candidate: n.candidate,
                    rank: n.rank,
                    priority: n.priority,
                    lag: n.lag,
                    coord_leader: n.coord_leader,
                    reasons: n.reasons.iter().map(ToString::to_string).collect(),
                })
                .collect(),
            text: e.to_string(),
        }
    }
}

/// One change of a role, with its measured durations.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The role.
    pub role: String,
    /// When it was recorded, in milliseconds since this node's failover manager started.
    pub at_ms: u64,
    /// The primary before.
    pub old_primary: Option<String>,
    /// The primary after.
    pub new_primary: Option<String>,
    /// Why.
    pub cause: String,
    /// The new term's fencing token, when this node became primary.
    pub token: Option<u64>,
    /// Detection: from when the problem (or request) was first seen to the change.
    pub detection_ms: Option<u64>,
    /// Promotion (this node's promotions): from the campaign to the end of `on_promote`.
    pub promotion_ms: Option<u64>,
    /// Detection plus promotion, when both were measured here.
    pub total_ms: Option<u64>,
    /// The new primary's replication lag before the change, when a lag source exists.
    pub rpo: Option<u64>,
}

impl HistoryEntry {
    /// From a recorded change.
    pub fn from_change(c: &quorate_failover::shell::RoleChange) -> HistoryEntry {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        HistoryEntry {
            role: c.role.to_string(),
            at_ms: ms(c.at),
            old_primary: c.old_primary.as_ref().map(ToString::to_string),
            new_primary: c.new_primary.as_ref().map(ToString::to_string),
            cause: c.cause.to_string(),
            token: c.token.map(|t| t.0),
            detection_ms: c.detection.map(ms),
            promotion_ms: c.promotion.map(ms),
            total_ms: c
                .detection
                .zip(c.promotion)
                .map(|(d, p)| ms(d.saturating_add(p))),
            rpo: c.rpo,
        }
    }
}

/// The admin view of a failover manager's error.
pub fn admin_error(e: FailoverError) -> AdminError {
    match e {
        FailoverError::UnknownRole { role } => AdminError::UnknownRole {
            role,
            known: "other roles".to_owned(),
        },
        FailoverError::Refused { refusal, .. } => AdminError::Refused {
            reason: refusal.to_string(),
        },
        FailoverError::Config(c) => AdminError::BadRequest {
            reason: c.to_string(),
        },
        e => AdminError::Unavailable {
            reason: e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_json_and_read_well() {
        let r = AdminRequest::Switchover {
            role: "app".into(),
            to: Some("n2".into()),
        };
        let json = serde_json::to_string(&r).unwrap_or_default();
        assert_eq!(json, r#"{"op":"switchover","role":"app","to":"n2"}"#);
        assert_eq!(
            serde_json::from_str::<AdminRequest>(&json).ok(),
            Some(r.clone())
        );
        assert_eq!(r.to_string(), "switchover of app to n2");
        let p = AdminRequest::Pause {
            role: "app".into(),
            ttl_ms: 60_000,
        };
        assert_eq!(p.to_string(), "pause of app for 60s");
    }

    #[test]
    fn bad_requests_are_named() {
        let zero = AdminRequest::Pause {
            role: "app".into(),
            ttl_ms: 0,
        };
        assert!(matches!(
            zero.manual_op(),
            Err(AdminError::BadRequest { .. })
        ));
        let bad = AdminRequest::Switchover {
            role: "app".into(),
            to: Some(String::new()),
        };
        assert!(matches!(
            bad.manual_op(),
            Err(AdminError::BadRequest { .. })
        ));
    }

    #[test]
    fn statuses_follow_patroni() {
        let refused = AdminError::Refused {
            reason: "n2 is unfit".into(),
        };
        assert_eq!(refused.http_status(), 412);
        let forbidden = AdminError::Forbidden {
            who: "http:token ro".into(),
            what: "failback of app".into(),
        };
        assert_eq!(forbidden.http_status(), 403);
        assert!(forbidden.to_string().contains("operate"));
    }
}
