//! `quorate-sim`: the deterministic simulation harness that proves quorate's claims.
//!
//! A test builds a [`Cluster`] on turmoil from a seed (every node is a restartable factory that
//! gets a [`NodeCtx`] with its [`TurmoilNet`], [`SimClock`] and persistent [`MemStore`]),
//! drives it with a seeded nemesis [`Schedule`], records client operations with a [`Recorder`]
//! into a [`History`], and checks the history with the checkers in [`check`]:
//! linearizability of a key-value store ([`check::linearizability`]), mutual exclusion and fencing
//! of locks and roles ([`check::mutex`]), and durability of acknowledged writes
//! ([`check::durability`]). [`runner`] runs a scenario over a range of seeds
//! (`QUORATE_SIM_SEEDS`, `QUORATE_SIM_SEED`) and prints how to replay a failing one;
//! [`replay`] checks that a seed replays byte for byte (two runs, identical traces).
//! [`membership`] is a separate discrete-event simulator of many SWIM cores
//! (`quorate_membership::engine::Core`), for membership's `sim` tests and benchmark.
//!
//! Everything that decides (checkers, schedule generation) is a pure function of its inputs and
//! a seed; everything that runs goes through turmoil's simulated network and tokio's paused time.

pub mod bench;
pub mod check;
pub mod clock;
pub mod cluster;
mod error;
pub mod history;
pub mod membership;
pub mod nemesis;
pub mod net;
pub mod replay;
pub mod runner;
pub mod store;

pub use clock::{Clock, ClockRate, SharedClock, SimClock, SystemClock};
pub use cluster::{ClientCtx, Cluster, ClusterBuilder, NodeCtx};
pub use error::SimError;
pub use history::{Event, EventKind, History, KvHistory, KvOp, KvRet, ProcessId, Recorder};
pub use nemesis::{Fault, FaultKind, NemesisConfig, Schedule, ScheduledFault};
pub use net::{SimTcpStream, TurmoilNet};
pub use runner::{Runner, ScenarioFailure};
pub use store::MemStore;

/// Locks a std mutex, recovering the data if a panicking thread poisoned it (the harness keeps
/// going so that the failure that caused the panic is the one reported).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
