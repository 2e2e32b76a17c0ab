//! The crate's one error type.

use std::time::Duration;

use crate::check::durability::LostWrite;
use crate::check::linearizability::Violation;
use crate::check::mutex::MutexViolation;

/// Everything that can go wrong in the harness, including a checker finding a violation.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A history is not linearizable; the report names the key and a minimal failing window.
    #[error("history is not linearizable:\n{0}")]
    NotLinearizable(Box<Violation>),
    /// The linearizability search gave up on a key after its step budget; raise
    /// `CheckConfig::steps_max` or shorten the per-key history.
    #[error(
        "linearizability search for key `{key}` gave up after {steps} steps \
         (raise CheckConfig::steps_max or use more keys)"
    )]
    SearchBudget {
        /// The key whose search was cut off.
        key: String,
        /// Steps taken.
        steps: u64,
    },
    /// Two holders of a lock or role overlapped, or fencing tokens did not increase.
    #[error("mutual exclusion violated:\n{}", display_list(.0))]
    MutualExclusion(Vec<MutexViolation>),
    /// Acknowledged writes are missing after recovery.
    #[error("{} acknowledged write(s) lost:\n{}", .0.len(), display_list(.0))]
    LostWrites(Vec<LostWrite>),
    /// A history is malformed (completion without invocation, wrong result kind, ...).
    #[error("malformed history at event {index}: {reason}")]
    MalformedHistory {
        /// Index of the offending event.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// A configuration value is out of range.
    #[error("config: {0}")]
    Config(String),
    /// A name given to the cluster is not a registered node.
    #[error("unknown node `{0}`: add it with Cluster::add_node before faulting it")]
    UnknownNode(String),
    /// A host or client future returned an error or the simulation ran past its duration.
    #[error("simulation failed at {at:?}: {reason}")]
    Simulation {
        /// Simulated time of the failure.
        at: Duration,
        /// turmoil's error text.
        reason: String,
    },
    /// Writing or reading a history or state directory failed.
    #[error("i/o on {path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A history could not be (de)serialised.
    #[error("history json: {0}")]
    Json(#[from] serde_json::Error),
}

fn display_list<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| format!("  - {i}"))
        .collect::<Vec<_>>()
        .join("\n")
}
