//! The crate's error type, [`FailoverError`], and the list of config problems it can carry.

use std::fmt;

use quorate_coord_api::CoordError;
use quorate_types::{NodeId, RoleName};

use crate::policy::Refusal;

/// Everything that can go wrong in quorate-failover.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailoverError {
    /// A configuration was rejected; nothing was started or changed. Every problem found is
    /// listed, each naming the field and the fix.
    #[error("invalid failover config: {0}")]
    Config(ConfigErrors),
    /// No role of that name is managed here. Nothing changed.
    #[error("unknown role {role}: it is not managed by this node; check the role name")]
    UnknownRole {
        /// The name asked for.
        role: String,
    },
    /// A manual operation was refused by the policy. Nothing changed.
    #[error("{role}: refused: {refusal}")]
    Refused {
        /// The role.
        role: RoleName,
        /// Why.
        refusal: Refusal<NodeId>,
    },
    /// The coordination store could not be read or written, so the operation was not done.
    /// Nothing changed locally; a write that timed out may or may not have reached the store.
    /// Retry later.
    #[error("{role}: {what} failed: {source}")]
    Coord {
        /// The role.
        role: RoleName,
        /// What was attempted.
        what: &'static str,
        /// The store's error.
        source: CoordError,
    },
    /// The manager (or this role's task) has stopped. Nothing changed; start a new manager.
    #[error("{role}: the failover manager has stopped")]
    Stopped {
        /// The role.
        role: String,
    },
}

/// One problem found while validating a configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Dotted path of the offending field, e.g. `lease.margin`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// Every problem found in one configuration (never empty inside a [`FailoverError::Config`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigErrors {
    /// The problems, in the order they were found.
    pub problems: Vec<ConfigProblem>,
}

impl ConfigErrors {
    /// Records one problem.
    pub(crate) fn push(&mut self, field: String, message: String) {
        self.problems.push(ConfigProblem { field, message });
    }

    /// `Ok` when no problem was recorded, else the error carrying all of them.
    pub(crate) fn into_result(self) -> Result<(), FailoverError> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(FailoverError::Config(self))
        }
    }

    /// Whether the field named `field` has a problem.
    pub fn mentions(&self, field: &str) -> bool {
        self.problems.iter().any(|p| p.field == field)
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            f.write_str(&p.message)?;
        }
        Ok(())
    }
}
