//! The one error type of quorate-state.

use quorate_coord_api::{CoordError, LeaseId, Revision};
use quorate_types::StaleToken;

use crate::session::LostReason;

/// Why a state operation failed. Each variant says whether state may have changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The coordination backend failed. Whether state changed is
    /// [`CoordError::outcome_unknown`]; whether to retry is [`CoordError::is_retryable`].
    #[error("{what}: {source}")]
    Coord {
        /// What was being done.
        what: &'static str,
        /// The backend's error.
        source: CoordError,
    },
    /// The session ended (see [`LostReason`]); whatever it held (locks, leadership, permits) is
    /// no longer held by this process. Nothing changed. Start a new session.
    #[error("session {lease} is lost ({reason}): start a new session")]
    SessionLost {
        /// The session's lease.
        lease: LeaseId,
        /// Why it ended.
        reason: LostReason,
    },
    /// A wait (`lock_timeout`, `acquire_timeout`) ran out. This process left the queue; nothing
    /// is held.
    #[error("timed out waiting for {what}: nothing is held; retry later")]
    Timeout {
        /// What was waited for.
        what: String,
    },
    /// `try_lock`/`try_acquire` found the lock or every permit taken. Nothing changed.
    #[error("{what} is held by someone else: wait with lock/lock_timeout or try later")]
    WouldBlock {
        /// The lock or semaphore.
        what: String,
    },
    /// A guarded write found that this holder no longer holds the lock or leadership. Nothing
    /// changed.
    #[error("{key} is no longer the holder: nothing was written; acquire again")]
    NotHolder {
        /// The holder key that is gone.
        key: String,
    },
    /// A fenced action carried a token lower than one already seen. Nothing changed.
    #[error(transparent)]
    Stale(#[from] StaleToken),
    /// The configuration is invalid. Nothing changed.
    #[error("config: {reason}")]
    Config {
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// A value could not be encoded or decoded with postcard, or is too large. Nothing changed.
    #[error("{what}: {reason}")]
    Codec {
        /// What was being encoded or decoded.
        what: String,
        /// Why it failed.
        reason: String,
    },
    /// A bounded map is full. Nothing changed. Delete entries or raise `entries_max`.
    #[error(
        "state map {prefix:?} holds its maximum of {max} entries: delete some or raise entries_max"
    )]
    Full {
        /// The map's prefix.
        prefix: String,
        /// Its bound.
        max: u64,
    },
    /// A compare-and-set loop lost the race `attempts` times in a row. Nothing changed. Retry.
    #[error("{what}: {attempts} compare-and-set attempts lost to concurrent writers; retry")]
    Contention {
        /// The operation.
        what: String,
        /// How many attempts were made.
        attempts: u32,
    },
    /// A watch cannot resume without a gap: the backend compacted the revisions it missed.
    /// Nothing changed. Read the current state and watch from its revision.
    #[error(
        "watch of {prefix:?} cannot resume from {from}: history compacted up to {compacted}; re-read the state and watch again"
    )]
    WatchGap {
        /// The watched prefix.
        prefix: String,
        /// The revision it wanted to resume from.
        from: Revision,
        /// The backend's compaction point.
        compacted: Revision,
    },
}

impl StateError {
    /// Wraps a backend error with what was being done.
    pub(crate) fn coord(what: &'static str) -> impl FnOnce(CoordError) -> StateError {
        move |source| StateError::Coord { what, source }
    }

    /// Whether the same request may succeed later.
    pub fn is_retryable(&self) -> bool {
        match self {
            StateError::Coord { source, .. } => source.is_retryable(),
            StateError::Timeout { .. }
            | StateError::WouldBlock { .. }
            | StateError::Contention { .. } => true,
            _ => false,
        }
    }
}
