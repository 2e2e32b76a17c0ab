//! quorate-failover: one primary per named role, decided by a pure policy core.
//!
//! The [`policy`] module is the pure core: [`policy::RolePolicy`] turns observations of a
//! role's members (health, majority, tags, lag, the current lease holder) and the current time
//! into a decision (hold, promote, demote), remembers what it must (grace timers, failback
//! hold-down, the anti-flap budget, maintenance, `before_promote` vetoes, a handover under
//! way), answers manual operations (switchover, failover, failback, pause) with an action or a
//! reasoned refusal, and explains for every node why it is or is not a candidate.
//! [`policy::lease`] holds the holder-side lease arithmetic: a primary stops acting at
//! `sent + ttl * (1 - drift) - margin`, before the coordination leader can expire its lease.
//!
//! The [`shell`] module is the async part: [`shell::FailoverManager`] runs one task per role on
//! top of `quorate-coord-api` (election + lease + fencing token), `HealthView` and
//! `Membership`, calls the hooks, offers `run_while_primary`, manual operations, history and
//! `explain`.
//!
//! ```
//! use std::time::Duration;
//! use quorate_failover::policy::{Action, NodeView, Observations, RolePolicy, config::PolicyConfig};
//!
//! let mut policy = RolePolicy::new(PolicyConfig::lan());
//! let mut b = NodeView::new("b");
//! b.priority = 2;
//! let obs = Observations::new(None, vec![NodeView::new("a"), b]);
//! let decision = policy.step(&obs, Duration::ZERO);
//! assert_eq!(decision.action.to_string(), "promote b: initial election");
//! ```

mod error;
pub mod policy;
pub mod shell;

pub use error::{ConfigErrors, ConfigProblem, FailoverError};
