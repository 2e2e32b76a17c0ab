//! The checker benchmark: a seeded generator of linearizable key-value histories and a timed run
//! of the linearizability checker over one. `examples/check_bench.rs` prints it; a tiny run is a
//! unit test so it cannot rot. Timings are reported, never asserted.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::SimError;
use crate::check::linearizability::{CheckConfig, check_kv};
use crate::history::{Event, EventKind, History, KvHistory, KvOp, KvRet, ProcessId};

/// Generates a linearizable history of `ops` operations over `keys` keys by `processes`
/// concurrent processes: each operation takes effect at its completion, invocations and
/// completions interleave at random, and about 1 % of operations time out (`Info`; half of
/// those took effect).
pub fn linearizable_kv_history(seed: u64, ops: usize, keys: usize, processes: usize) -> KvHistory {
    let mut rng = StdRng::seed_from_u64(seed);
    let keys = keys.max(1);
    let processes = processes.max(1);
    let mut state: BTreeMap<String, Option<u64>> = BTreeMap::new();
    let mut pending: Vec<Option<KvOp>> = vec![None; processes];
    let mut ids: Vec<u64> = (0..processes as u64).collect();
    let mut next_id = processes as u64;
    let mut events = Vec::with_capacity(ops * 2);
    let (mut invoked, mut next_value) = (0usize, 1u64);
    let push = |events: &mut Vec<Event<KvOp, KvRet>>, p: u64, kind| {
        let at = Duration::from_millis(events.len() as u64);
        events.push(Event {
            at,
            process: ProcessId(p),
            kind,
        });
    };
    while invoked < ops || pending.iter().any(Option::is_some) {
        let p = rng.random_range(0..processes);
        match pending[p].take() {
            None if invoked < ops => {
                let key = format!("k{}", rng.random_range(0..keys));
                let op = match rng.random_range(0..10) {
                    0..=4 => KvOp::Read { key },
                    5..=7 => {
                        next_value += 1;
                        KvOp::Write {
                            key,
                            value: next_value,
                        }
                    }
                    8 => {
                        next_value += 1;
                        let expect = state.get(&key).copied().flatten();
                        let expect = if rng.random_bool(0.7) {
                            expect
                        } else {
                            Some(0)
                        };
                        KvOp::Cas {
                            key,
                            expect,
                            new: next_value,
                        }
                    }
                    _ => KvOp::Delete { key },
                };
                push(&mut events, ids[p], EventKind::Invoke(op.clone()));
                pending[p] = Some(op);
                invoked += 1;
            }
            None => {}
            Some(op) => {
                let timeout = rng.random_bool(0.01);
                let apply = !timeout || rng.random_bool(0.5);
                let cur = state.entry(op.key().to_owned()).or_default();
                let ret = match &op {
                    KvOp::Read { .. } => KvRet::Read(*cur),
                    KvOp::Write { value, .. } => {
                        if apply {
                            *cur = Some(*value);
                        }
                        KvRet::Done
                    }
                    KvOp::Cas { expect, new, .. } => {
                        let hit = *cur == *expect;
                        if hit && apply {
                            *cur = Some(*new);
                        }
                        KvRet::Cas(hit)
                    }
                    KvOp::Delete { .. } => {
                        if apply {
                            *cur = None;
                        }
                        KvRet::Done
                    }
                };
                if timeout {
                    push(&mut events, ids[p], EventKind::Info("timeout".into()));
                    ids[p] = next_id;
                    next_id += 1;
                } else {
                    push(&mut events, ids[p], EventKind::Ok(ret));
                }
            }
        }
    }
    History { events }
}

/// The result of one timed check.
#[derive(Clone, Debug)]
pub struct BenchReport {
    /// Operations in the history.
    pub ops: usize,
    /// Keys.
    pub keys: usize,
    /// Concurrent processes.
    pub processes: usize,
    /// Time to check the linearizable history.
    pub check_ok: Duration,
    /// Search steps for it.
    pub steps: u64,
    /// Time to check the same history with one stale read injected (including shrinking the
    /// failing window).
    pub check_violation: Duration,
    /// Length of the reported window.
    pub window_len: usize,
}

/// Generates a history and times the checker on it, and on a copy with one read made stale.
///
/// # Errors
/// [`SimError::Config`] if the checker does not behave (accepts the corrupted history or rejects
/// the clean one): the benchmark doubles as a smoke test.
pub fn check_bench(
    seed: u64,
    ops: usize,
    keys: usize,
    processes: usize,
) -> Result<BenchReport, SimError> {
    let h = linearizable_kv_history(seed, ops, keys, processes);
    let cfg = CheckConfig::default();
    let t = Instant::now();
    let summary = check_kv(&h, &cfg)?;
    let check_ok = t.elapsed();
    let bad = corrupt_one_read(&h).ok_or_else(|| {
        SimError::Config("bench: the history has no read that can be made stale".into())
    })?;
    let t = Instant::now();
    let res = check_kv(&bad, &cfg);
    let check_violation = t.elapsed();
    let window_len = match res {
        Err(SimError::NotLinearizable(v)) => v.window.len(),
        other => {
            return Err(SimError::Config(format!(
                "bench: corrupted history not rejected: {other:?}"
            )));
        }
    };
    Ok(BenchReport {
        ops,
        keys,
        processes,
        check_ok,
        steps: summary.steps,
        check_violation,
        window_len,
    })
}

/// Makes the last read that saw a value return a value no one wrote.
fn corrupt_one_read(h: &KvHistory) -> Option<KvHistory> {
    let mut bad = h.clone();
    let ev = bad
        .events
        .iter_mut()
        .rev()
        .find(|e| matches!(e.kind, EventKind::Ok(KvRet::Read(Some(_)))))?;
    ev.kind = EventKind::Ok(KvRet::Read(Some(u64::MAX)));
    Some(bad)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test")]
mod tests {
    use super::*;

    #[test]
    fn tiny_bench_runs() {
        let r = check_bench(1, 300, 5, 4).unwrap();
        assert_eq!(r.ops, 300);
        assert!(r.window_len >= 1);
    }

    #[test]
    fn generated_histories_are_deterministic_and_linearizable() {
        let a = linearizable_kv_history(9, 500, 3, 6);
        assert_eq!(a, linearizable_kv_history(9, 500, 3, 6));
        assert!(check_kv(&a, &CheckConfig::default()).is_ok());
    }
}
