//! Histories of client operations: the [`Recorder`] appends invoke / ok / fail / info events in
//! real (simulated) time order; a [`History`] serialises to JSON for replay and the checkers.
//!
//! Jepsen's model: every operation is an `Invoke` followed by one completion:
//! - `Ok(ret)`: it happened, with this result;
//! - `Fail`: it certainly did not happen (the checkers drop it);
//! - `Info`: unknown (a timeout, a reset connection): it may or may not have happened, at any
//!   time after its invocation. The process that saw it is retired and the client continues
//!   under a fresh [`ProcessId`], since its old operation may still be in flight.
//!
//! The order of `events` is the real-time order (one recorder per run, appended in order), so the
//! checkers order by event index, not by timestamp; `at` is kept for reports.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{SimError, lock};

/// A logical client process; a client gets a new one after an `Info` completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProcessId(pub u64);

impl fmt::Display for ProcessId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p{}", self.0)
    }
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind<Op, Ret> {
    /// The client sent the operation.
    Invoke(Op),
    /// The operation happened and returned this.
    Ok(Ret),
    /// The operation certainly did not happen.
    Fail(String),
    /// Unknown whether the operation happened (timeout, connection lost).
    Info(String),
}

/// One event of a history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event<Op, Ret> {
    /// Simulated time of the event (global, not any node's clock).
    pub at: Duration,
    /// The process it belongs to.
    pub process: ProcessId,
    /// What happened.
    pub kind: EventKind<Op, Ret>,
}

/// A recorded history: events in real-time order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct History<Op, Ret> {
    /// The events, in the order they happened.
    pub events: Vec<Event<Op, Ret>>,
}

impl<Op, Ret> Default for History<Op, Ret> {
    fn default() -> Self {
        Self { events: Vec::new() }
    }
}

impl<Op: Serialize + DeserializeOwned, Ret: Serialize + DeserializeOwned> History<Op, Ret> {
    /// The history as pretty JSON (one event per line group; stable for byte comparison).
    ///
    /// # Errors
    /// [`SimError::Json`] if an operation fails to serialise.
    pub fn to_json(&self) -> Result<String, SimError> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    /// Parses a history written by [`History::to_json`].
    ///
    /// # Errors
    /// [`SimError::Json`] on malformed input.
    pub fn from_json(s: &str) -> Result<Self, SimError> {
        Ok(serde_json::from_str(s)?)
    }

    /// Writes the history to `path` as JSON.
    ///
    /// # Errors
    /// [`SimError::Io`] or [`SimError::Json`].
    pub fn save(&self, path: &Path) -> Result<(), SimError> {
        std::fs::write(path, self.to_json()?).map_err(|source| SimError::Io {
            path: path.display().to_string(),
            source,
        })
    }

    /// Reads a history from a JSON file.
    ///
    /// # Errors
    /// [`SimError::Io`] or [`SimError::Json`].
    pub fn load(path: &Path) -> Result<Self, SimError> {
        let s = std::fs::read_to_string(path).map_err(|source| SimError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json(&s)
    }
}

/// A key-value operation on a register per key (values are `u64`; use unique values per write so
/// that reads identify the write they saw).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KvOp {
    /// Read the key.
    Read {
        /// The key.
        key: String,
    },
    /// Write `value` to the key.
    Write {
        /// The key.
        key: String,
        /// The value.
        value: u64,
    },
    /// Set the key to `new` if it currently holds `expect` (`None`: absent).
    Cas {
        /// The key.
        key: String,
        /// The expected current value (`None`: the key is absent).
        expect: Option<u64>,
        /// The value to set.
        new: u64,
    },
    /// Delete the key.
    Delete {
        /// The key.
        key: String,
    },
}

impl KvOp {
    /// The key the operation touches.
    pub fn key(&self) -> &str {
        match self {
            KvOp::Read { key }
            | KvOp::Write { key, .. }
            | KvOp::Cas { key, .. }
            | KvOp::Delete { key } => key,
        }
    }
}

impl fmt::Display for KvOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvOp::Read { key } => write!(f, "read({key})"),
            KvOp::Write { key, value } => write!(f, "write({key}, {value})"),
            KvOp::Cas { key, expect, new } => write!(f, "cas({key}, {}, {new})", opt(*expect)),
            KvOp::Delete { key } => write!(f, "delete({key})"),
        }
    }
}

/// The result of a [`KvOp`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KvRet {
    /// A read saw this value (`None`: absent).
    Read(Option<u64>),
    /// A write or delete took effect.
    Done,
    /// A compare-and-set succeeded (`true`) or found another value (`false`).
    Cas(bool),
}

impl fmt::Display for KvRet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvRet::Read(v) => write!(f, "{}", opt(*v)),
            KvRet::Done => write!(f, "ok"),
            KvRet::Cas(b) => write!(f, "{b}"),
        }
    }
}

pub(crate) fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "absent".to_owned(), |v| v.to_string())
}

/// A key-value history.
pub type KvHistory = History<KvOp, KvRet>;

type TimeFn = Arc<dyn Fn() -> Option<Duration> + Send + Sync>;

struct RecorderInner<Op, Ret> {
    history: History<Op, Ret>,
    next_process: u64,
    last_at: Duration,
}

/// Records events from all clients of one run, in order. Clones share the same history.
///
/// ```
/// use std::time::Duration;
/// use quorate_sim::{KvOp, KvRet, Recorder};
///
/// let rec = Recorder::<KvOp, KvRet>::with_time(|| Some(Duration::ZERO));
/// let mut client = rec.process();
/// client.invoke(KvOp::Write { key: "k".into(), value: 1 });
/// client.ok(KvRet::Done);
/// client.invoke(KvOp::Read { key: "k".into() });
/// client.info("timeout"); // the client now has a new process id
/// assert_eq!(rec.history().events.len(), 4);
/// ```
pub struct Recorder<Op, Ret> {
    inner: Arc<Mutex<RecorderInner<Op, Ret>>>,
    time: TimeFn,
}

impl<Op, Ret> Clone for Recorder<Op, Ret> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            time: Arc::clone(&self.time),
        }
    }
}

impl<Op, Ret> fmt::Debug for Recorder<Op, Ret> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recorder")
            .field("events", &lock(&self.inner).history.events.len())
            .finish()
    }
}

impl<Op: Clone, Ret: Clone> Recorder<Op, Ret> {
    /// A recorder stamping events with turmoil's global simulated time.
    pub fn turmoil() -> Self {
        Self::with_time(turmoil::sim_elapsed)
    }

    /// A recorder stamping events with `time` (`None`: reuse the last stamp).
    pub fn with_time(time: impl Fn() -> Option<Duration> + Send + Sync + 'static) -> Self {
        Self {
            inner: Arc::new(Mutex::new(RecorderInner {
                history: History::default(),
                next_process: 0,
                last_at: Duration::ZERO,
            })),
            time: Arc::new(time),
        }
    }

    /// A new client process with a fresh id.
    pub fn process(&self) -> Process<Op, Ret> {
        let id = self.fresh_id();
        Process {
            recorder: self.clone(),
            id,
            pending: false,
        }
    }

    fn fresh_id(&self) -> ProcessId {
        let mut st = lock(&self.inner);
        let id = ProcessId(st.next_process);
        st.next_process += 1;
        id
    }

    fn push(&self, process: ProcessId, kind: EventKind<Op, Ret>) {
        let now = (self.time)();
        let mut st = lock(&self.inner);
        let at = now.unwrap_or(st.last_at).max(st.last_at);
        st.last_at = at;
        st.history.events.push(Event { at, process, kind });
    }

    /// A copy of the history so far.
    pub fn history(&self) -> History<Op, Ret> {
        lock(&self.inner).history.clone()
    }
}

/// One client process of a [`Recorder`]: at most one operation in flight.
#[derive(Debug)]
pub struct Process<Op, Ret> {
    recorder: Recorder<Op, Ret>,
    id: ProcessId,
    pending: bool,
}

impl<Op: Clone, Ret: Clone> Process<Op, Ret> {
    /// The current process id.
    pub fn id(&self) -> ProcessId {
        self.id
    }

    /// Records the invocation of `op`. An operation still pending is first completed as `Info`
    /// ("abandoned"), which keeps the history well formed.
    pub fn invoke(&mut self, op: Op) {
        if self.pending {
            self.info("abandoned: next operation invoked");
        }
        self.recorder.push(self.id, EventKind::Invoke(op));
        self.pending = true;
    }

    /// Records that the pending operation happened and returned `ret`.
    pub fn ok(&mut self, ret: Ret) {
        self.complete(EventKind::Ok(ret));
    }

    /// Records that the pending operation certainly did not happen.
    pub fn fail(&mut self, reason: impl Into<String>) {
        self.complete(EventKind::Fail(reason.into()));
    }

    /// Records that the outcome of the pending operation is unknown; the client continues under a
    /// new process id.
    pub fn info(&mut self, reason: impl Into<String>) {
        if self.complete(EventKind::Info(reason.into())) {
            self.id = self.recorder.fresh_id();
        }
    }

    fn complete(&mut self, kind: EventKind<Op, Ret>) -> bool {
        if !self.pending {
            return false;
        }
        self.recorder.push(self.id, kind);
        self.pending = false;
        true
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test")]
mod tests {
    use super::*;

    #[test]
    fn info_retires_the_process_and_json_round_trips() {
        let rec = Recorder::<KvOp, KvRet>::with_time(|| Some(Duration::from_millis(3)));
        let mut p = rec.process();
        let first = p.id();
        p.invoke(KvOp::Write {
            key: "k".into(),
            value: 7,
        });
        p.info("timeout");
        assert_ne!(p.id(), first);
        p.invoke(KvOp::Read { key: "k".into() });
        p.ok(KvRet::Read(Some(7)));
        p.ok(KvRet::Read(Some(8))); // nothing pending: ignored
        let h = rec.history();
        assert_eq!(h.events.len(), 4);
        let json = h.to_json().unwrap();
        assert_eq!(KvHistory::from_json(&json).unwrap(), h);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.json");
        h.save(&path).unwrap();
        assert_eq!(KvHistory::load(&path).unwrap(), h);
    }
}
