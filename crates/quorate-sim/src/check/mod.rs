//! History checkers: linearizability of key-value histories, mutual exclusion and fencing of
//! locks and roles, durability of acknowledged writes. All are pure functions of their input.

pub mod durability;
pub mod linearizability;
pub mod mutex;

pub use durability::{LostWrite, check_all_present, check_durability};
pub use linearizability::{CheckConfig, CheckSummary, Violation, WindowOp, check_kv};
pub use mutex::{Action, Grant, MutexViolation, check_fencing, check_mutual_exclusion};
