//! Durability: every acknowledged write is still there after heal and recovery.
//!
//! - [`check_durability`]: for a key-value register history plus the values read from every key
//!   after recovery (the "final read"), an acknowledged write, CAS or delete is lost when the final
//!   value can only come from operations that completed before it was invoked (so it was
//!   overwritten by the lost operation, whose effect then vanished).
//! - [`check_all_present`]: for set-like workloads, every acknowledged element is present.
// tidy:pure-core

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use crate::SimError;
use crate::check::linearizability::{OpRec, pair_ops};
use crate::history::{KvHistory, KvOp, KvRet, ProcessId, opt};

/// An acknowledged operation whose effect is gone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LostWrite {
    /// The key (or element, for [`check_all_present`]).
    pub key: String,
    /// The lost operation (`None` for a set element).
    pub op: Option<KvOp>,
    /// Who ran it.
    pub process: Option<ProcessId>,
    /// When it was acknowledged.
    pub acked_at: Option<Duration>,
    /// What the final read saw.
    pub final_value: Option<u64>,
}

impl fmt::Display for LostWrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.op, self.process, self.acked_at) {
            (Some(op), Some(p), Some(at)) => write!(
                f,
                "{op} by {p} acknowledged at {}ms, but the final read of `{}` saw {}",
                at.as_millis(),
                self.key,
                opt(self.final_value)
            ),
            _ => write!(f, "acknowledged element `{}` is missing", self.key),
        }
    }
}

/// Checks that no acknowledged write is lost. `final_reads` holds the value of each key read
/// after recovery; a key missing from it counts as absent.
///
/// # Errors
/// [`SimError::LostWrites`] listing the lost operations; [`SimError::MalformedHistory`] when the
/// history does not pair up.
pub fn check_durability(
    history: &KvHistory,
    final_reads: &BTreeMap<String, Option<u64>>,
) -> Result<(), SimError> {
    let by_key = pair_ops(history)?;
    let mut lost = Vec::new();
    for (key, ops) in &by_key {
        let fin = final_reads.get(key).copied().flatten();
        for a in ops.iter().filter(|a| acked_change(a)) {
            // Explained if `a` produced the final value, or if some operation that may have
            // produced it (acknowledged or unknown) was still running when `a` was invoked, so
            // it may be ordered after `a`. The initial absent state explains nothing: it
            // precedes every operation.
            let explained = produces(a, fin)
                || ops
                    .iter()
                    .any(|p| produces(p, fin) && p.ret_index() > a.call);
            if !explained {
                lost.push(LostWrite {
                    key: key.clone(),
                    op: Some(a.op.clone()),
                    process: Some(a.process),
                    acked_at: a.ret_at,
                    final_value: fin,
                });
            }
        }
    }
    if lost.is_empty() {
        Ok(())
    } else {
        Err(SimError::LostWrites(lost))
    }
}

/// An acknowledged write, delete or successful CAS.
fn acked_change(o: &OpRec) -> bool {
    matches!(
        (&o.op, &o.result),
        (KvOp::Write { .. } | KvOp::Delete { .. }, Some(KvRet::Done))
            | (KvOp::Cas { .. }, Some(KvRet::Cas(true)))
    )
}

/// Whether `o` (if it took effect) leaves the register at `fin`.
fn produces(o: &OpRec, fin: Option<u64>) -> bool {
    if matches!(o.result, Some(KvRet::Cas(false))) {
        return false;
    }
    match o.op {
        KvOp::Write { value, .. } => fin == Some(value),
        KvOp::Cas { new, .. } => fin == Some(new),
        KvOp::Delete { .. } => fin.is_none(),
        KvOp::Read { .. } => false,
    }
}

/// Checks that every acknowledged element is present (set-like workloads).
///
/// # Errors
/// [`SimError::LostWrites`] naming each missing element.
pub fn check_all_present<T: Ord + fmt::Display>(
    acknowledged: &BTreeSet<T>,
    present: &BTreeSet<T>,
) -> Result<(), SimError> {
    let lost: Vec<LostWrite> = acknowledged
        .difference(present)
        .map(|e| LostWrite {
            key: e.to_string(),
            op: None,
            process: None,
            acked_at: None,
            final_value: None,
        })
        .collect();
    if lost.is_empty() {
        Ok(())
    } else {
        Err(SimError::LostWrites(lost))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Event, EventKind, History};

    fn h(ops: &[(u64, KvOp, Option<KvRet>)]) -> KvHistory {
        let mut events = Vec::new();
        for (i, (p, op, ret)) in ops.iter().enumerate() {
            let at = Duration::from_millis(i as u64);
            let process = ProcessId(*p);
            events.push(Event {
                at,
                process,
                kind: EventKind::Invoke(op.clone()),
            });
            events.push(Event {
                at,
                process,
                kind: match ret {
                    Some(r) => EventKind::Ok(r.clone()),
                    None => EventKind::Info("timeout".into()),
                },
            });
        }
        History { events }
    }

    fn w(v: u64) -> KvOp {
        KvOp::Write {
            key: "k".into(),
            value: v,
        }
    }

    fn fin(v: Option<u64>) -> BTreeMap<String, Option<u64>> {
        BTreeMap::from([("k".to_owned(), v)])
    }

    #[test]
    fn overwritten_writes_are_not_lost() {
        let hist = h(&[(0, w(1), Some(KvRet::Done)), (0, w(2), Some(KvRet::Done))]);
        assert!(check_durability(&hist, &fin(Some(2))).is_ok());
        // An unknown write invoked later may have overwritten the acknowledged one.
        let hist = h(&[(0, w(1), Some(KvRet::Done)), (1, w(5), None)]);
        assert!(check_durability(&hist, &fin(Some(5))).is_ok());
    }

    #[test]
    fn rolled_back_write_is_lost() {
        let hist = h(&[(0, w(1), Some(KvRet::Done)), (0, w(2), Some(KvRet::Done))]);
        match check_durability(&hist, &fin(Some(1))) {
            Err(SimError::LostWrites(l)) => {
                assert_eq!(l.len(), 1);
                assert_eq!(l[0].op, Some(w(2)));
                assert!(l[0].to_string().contains("final read of `k` saw 1"));
            }
            other => panic!("expected lost writes, got {other:?}"),
        }
        let hist = h(&[(0, w(1), Some(KvRet::Done))]);
        assert!(matches!(
            check_durability(&hist, &BTreeMap::new()),
            Err(SimError::LostWrites(_))
        ));
    }

    #[test]
    fn set_elements() {
        let acked = BTreeSet::from([1, 2, 3]);
        assert!(check_all_present(&acked, &BTreeSet::from([1, 2, 3, 4])).is_ok());
        assert!(matches!(
            check_all_present(&acked, &BTreeSet::from([1, 3])),
            Err(SimError::LostWrites(l)) if l.len() == 1 && l[0].key == "2"
        ));
    }
}
