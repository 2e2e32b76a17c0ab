//! Linearizability of a key-value history: one register per key (read, write, compare-and-set,
//! delete), checked key by key (P-compositionality) with the Wing-Gong-Lowe search and
//! memoisation of (linearized set, state), as in Porcupine (the set memoised by a 128-bit Zobrist
//! hash).
//!
//! Why not `todc-utils` (0.1.1, the WGL checker the research notes measured): it returns a bare
//! bool (no failing window), panics on an unmatched call instead of handling unknown outcomes,
//! has no step budget, and is a single-maintainer 0.1. The algorithm is ~150 lines, so it lives
//! here with its own tests.
//!
//! Outcomes: `Fail` operations are dropped (they did not happen); `Info` operations may have
//! happened at any point after their invocation, so their return moves to the end of the history
//! and any result is accepted; reads with an unknown result constrain nothing and are dropped.
//! The event index is the real-time order (the recorder appends in order), so operations
//! completed in the same simulated millisecond are still ordered correctly.
//!
//! On a violation the checker shrinks it to a minimal failing window: the shortest prefix that is
//! already non-linearizable (operations still pending at its end become unknown), then the latest
//! start at which no completed operation is in flight such that the window fails from *every*
//! possible starting state (searched once, from an "any state" that the first dependent
//! operation pins down). Both steps only relax the history, so the window is itself a proof of
//! the violation; it may be a little longer than the shortest one, never wrong.
// tidy:pure-core

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::time::Duration;

use crate::SimError;
use crate::history::{EventKind, KvHistory, KvOp, KvRet, ProcessId};

/// Limits of the search.
#[derive(Clone, Copy, Debug)]
pub struct CheckConfig {
    /// Search steps allowed per key (and per window search) before giving up with
    /// [`SimError::SearchBudget`].
    pub steps_max: u64,
}

impl Default for CheckConfig {
    fn default() -> Self {
        Self {
            steps_max: 20_000_000,
        }
    }
}

/// What a successful check covered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckSummary {
    /// Keys checked.
    pub keys: usize,
    /// Operations checked (after dropping failed ones and reads with unknown results).
    pub ops: usize,
    /// Search steps taken over all keys.
    pub steps: u64,
}

/// One operation of a failing window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowOp {
    /// The process that ran it.
    pub process: ProcessId,
    /// The operation.
    pub op: KvOp,
    /// Its result; `None` when unknown (an `Info`, or still pending at the window's end).
    pub result: Option<KvRet>,
    /// Simulated time of the invocation.
    pub invoked_at: Duration,
    /// Simulated time of the completion, if it completed within the window.
    pub completed_at: Option<Duration>,
}

/// A minimal non-linearizable window of one key's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The key.
    pub key: String,
    /// The operations of the window, by invocation order.
    pub window: Vec<WindowOp>,
    /// `true` when the window starts at the beginning of the history (initial state: absent);
    /// `false` when it fails from every possible starting state.
    pub from_start: bool,
    /// Operations on the key in the whole history.
    pub ops_on_key: usize,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let from = if self.from_start {
            "from the initial (absent) state"
        } else {
            "from any starting state"
        };
        writeln!(
            f,
            "key `{}`: no linearization of these {} operations (of {} on the key), {from}:",
            self.key,
            self.window.len(),
            self.ops_on_key
        )?;
        for w in &self.window {
            let end = w.completed_at.map_or_else(
                || "       ?".to_owned(),
                |d| format!("{:>6}ms", d.as_millis()),
            );
            let res = w
                .result
                .as_ref()
                .map_or_else(|| "? (unknown)".to_owned(), ToString::to_string);
            writeln!(
                f,
                "    {:<5} [{:>6}ms .. {end}] {} -> {res}",
                w.process.to_string(),
                w.invoked_at.as_millis(),
                w.op
            )?;
        }
        Ok(())
    }
}

/// An operation paired with its completion.
#[derive(Clone, Debug)]
pub(crate) struct OpRec {
    pub(crate) process: ProcessId,
    pub(crate) op: KvOp,
    /// `None`: unknown outcome.
    pub(crate) result: Option<KvRet>,
    pub(crate) call: usize,
    /// Event index of the completion; `None`: unknown (treated as after everything).
    pub(crate) ret: Option<usize>,
    pub(crate) call_at: Duration,
    pub(crate) ret_at: Option<Duration>,
}

impl OpRec {
    pub(crate) fn ret_index(&self) -> usize {
        self.ret.unwrap_or(usize::MAX)
    }
}

/// Checks that `history` is linearizable, key by key.
///
/// # Errors
/// [`SimError::NotLinearizable`] with a minimal failing window, [`SimError::SearchBudget`] when
/// a key's search exceeds `cfg.steps_max`, [`SimError::MalformedHistory`] when events do not pair
/// up or a result does not fit its operation.
pub fn check_kv(history: &KvHistory, cfg: &CheckConfig) -> Result<CheckSummary, SimError> {
    let by_key = pair_ops(history)?;
    let mut summary = CheckSummary {
        keys: by_key.len(),
        ops: 0,
        steps: 0,
    };
    for (key, ops) in &by_key {
        let ops = &drop_unobserved_unknowns(ops, &BTreeSet::new());
        summary.ops += ops.len();
        let mut steps = 0;
        let ok = search(
            ops,
            Reg::Val(None),
            &BTreeSet::new(),
            cfg.steps_max,
            &mut steps,
        )
        .map_err(|steps| SimError::SearchBudget {
            key: key.clone(),
            steps,
        })?;
        summary.steps += steps;
        if !ok {
            return Err(SimError::NotLinearizable(Box::new(minimal_window(
                key, ops, cfg,
            )?)));
        }
    }
    Ok(summary)
}

/// Drops unknown-outcome writes, deletes and CASes whose effect no one could have observed.
///
/// Each unknown operation doubles the search space (it may or may not have happened, anywhere
/// after its invocation). Dropping one (choosing "it did not happen") is exact when the value `x`
/// it would leave is unobserved: no read returned `x`, no CAS expected `x`, and no failed CAS
/// still running at or after its invocation expected a state the register can actually hold.
/// Proof sketch: in any linearization, the operations between it and the next state change see
/// `x`; by the conditions those are only CASes that do nothing at `x` (unknown ones can move to
/// the end) and failed CASes whose `expect` is impossible, so removing it keeps every step legal.
/// `possible` adds states the register may hold before `ops` start (for windows).
fn drop_unobserved_unknowns(ops: &[OpRec], possible: &BTreeSet<Option<u64>>) -> Vec<OpRec> {
    let effect = |o: &OpRec| match o.op {
        KvOp::Write { value, .. } => Some(Some(value)),
        KvOp::Cas { new, .. } => Some(Some(new)),
        KvOp::Delete { .. } => Some(None),
        KvOp::Read { .. } => None,
    };
    let mut observed: BTreeSet<Option<u64>> = BTreeSet::new();
    let mut possible = possible.clone();
    possible.insert(None);
    for o in ops {
        match (&o.op, &o.result) {
            (KvOp::Read { .. }, Some(KvRet::Read(v))) => {
                observed.insert(*v);
            }
            (KvOp::Cas { expect, .. }, _) => {
                observed.insert(*expect);
            }
            _ => {}
        }
        if let Some(x) = effect(o) {
            possible.insert(x);
        }
    }
    // Latest completion of a failed CAS whose expected value the register can hold.
    let risky_cas_until = ops
        .iter()
        .filter(|o| {
            matches!(o.result, Some(KvRet::Cas(false)))
                && matches!(o.op, KvOp::Cas { expect, .. } if possible.contains(&expect))
        })
        .map(OpRec::ret_index)
        .max();
    ops.iter()
        .filter(|o| {
            let droppable = o.result.is_none()
                && effect(o).is_some_and(|x| !observed.contains(&x))
                && risky_cas_until.is_none_or(|r| r < o.call);
            !droppable
        })
        .cloned()
        .collect()
}

/// Pairs invocations with completions and groups them by key, sorted by invocation.
pub(crate) fn pair_ops(history: &KvHistory) -> Result<BTreeMap<String, Vec<OpRec>>, SimError> {
    let mut pending: BTreeMap<ProcessId, (usize, KvOp, Duration)> = BTreeMap::new();
    let mut done: Vec<OpRec> = Vec::new();
    let malformed = |index: usize, reason: String| SimError::MalformedHistory { index, reason };
    for (i, ev) in history.events.iter().enumerate() {
        let p = ev.process;
        match &ev.kind {
            EventKind::Invoke(op) => {
                if pending.insert(p, (i, op.clone(), ev.at)).is_some() {
                    return Err(malformed(
                        i,
                        format!("{p} invoked {op} while its previous operation is pending"),
                    ));
                }
            }
            EventKind::Ok(ret) => {
                let (call, op, call_at) = pending
                    .remove(&p)
                    .ok_or_else(|| malformed(i, format!("{p} completed with nothing pending")))?;
                let fits = matches!(
                    (&op, ret),
                    (KvOp::Read { .. }, KvRet::Read(_))
                        | (KvOp::Write { .. } | KvOp::Delete { .. }, KvRet::Done)
                        | (KvOp::Cas { .. }, KvRet::Cas(_))
                );
                if !fits {
                    return Err(malformed(i, format!("result {ret:?} does not fit {op}")));
                }
                done.push(OpRec {
                    process: p,
                    op,
                    result: Some(ret.clone()),
                    call,
                    ret: Some(i),
                    call_at,
                    ret_at: Some(ev.at),
                });
            }
            EventKind::Fail(_) => {
                pending
                    .remove(&p)
                    .ok_or_else(|| malformed(i, format!("{p} failed with nothing pending")))?;
            }
            EventKind::Info(_) => {
                let (call, op, call_at) = pending
                    .remove(&p)
                    .ok_or_else(|| malformed(i, format!("{p} info with nothing pending")))?;
                done.push(unknown(p, op, call, call_at));
            }
        }
    }
    for (p, (call, op, call_at)) in pending {
        done.push(unknown(p, op, call, call_at));
    }
    let mut by_key: BTreeMap<String, Vec<OpRec>> = BTreeMap::new();
    for o in done {
        // A read with an unknown result constrains nothing.
        if matches!(o.op, KvOp::Read { .. }) && o.result.is_none() {
            continue;
        }
        by_key.entry(o.op.key().to_owned()).or_default().push(o);
    }
    for ops in by_key.values_mut() {
        ops.sort_by_key(|o| o.call);
    }
    Ok(by_key)
}

fn unknown(process: ProcessId, op: KvOp, call: usize, call_at: Duration) -> OpRec {
    OpRec {
        process,
        op,
        result: None,
        call,
        ret: None,
        call_at,
        ret_at: None,
    }
}

/// The register's state during the search. `Any` stands for "some state we do not know" (the
/// start of a window cut out of the middle of a history); the first operation that depends on it
/// pins it down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Reg {
    Any,
    Val(Option<u64>),
}

/// The register's sequential specification: the state after `o`, or `None` if `o` cannot
/// happen in `state` with the result it returned. From `Any` the step is permissive (a failed
/// CAS leaves `Any`, forgetting that the state differs from its `expect`), so a window that fails
/// from `Any` fails from every concrete starting state.
/// `possible` lists the states `Any` can stand for (absent, and every value written on the key).
fn step(state: Reg, o: &OpRec, possible: &BTreeSet<Option<u64>>) -> Option<Reg> {
    let Reg::Val(v) = state else {
        return match (&o.op, &o.result) {
            (KvOp::Read { .. }, Some(KvRet::Read(v))) => {
                possible.contains(v).then_some(Reg::Val(*v))
            }
            (KvOp::Write { value, .. }, _) => Some(Reg::Val(Some(*value))),
            (KvOp::Cas { expect, new, .. }, Some(KvRet::Cas(true))) => {
                possible.contains(expect).then_some(Reg::Val(Some(*new)))
            }
            (KvOp::Delete { .. }, _) => Some(Reg::Val(None)),
            _ => Some(Reg::Any),
        };
    };
    let next = match (&o.op, &o.result) {
        (KvOp::Read { .. }, Some(KvRet::Read(r))) => (*r == v).then_some(v),
        (KvOp::Read { .. }, _) => Some(v),
        (KvOp::Write { value, .. }, _) => Some(Some(*value)),
        (KvOp::Cas { expect, new, .. }, Some(KvRet::Cas(true))) => {
            (v == *expect).then_some(Some(*new))
        }
        (KvOp::Cas { expect, .. }, Some(KvRet::Cas(false))) => (v != *expect).then_some(v),
        (KvOp::Cas { expect, new, .. }, _) => Some(if v == *expect { Some(*new) } else { v }),
        (KvOp::Delete { .. }, _) => Some(None),
    };
    next.map(Reg::Val)
}

/// Wing-Gong-Lowe search with memoisation. `Ok(true)`: linearizable from `init`;
/// `Err(steps)`: budget exhausted.
fn search(
    ops: &[OpRec],
    init: Reg,
    possible: &BTreeSet<Option<u64>>,
    steps_max: u64,
    steps: &mut u64,
) -> Result<bool, u64> {
    let n = ops.len();
    if n == 0 {
        return Ok(true);
    }
    // Entries: (time, is_return, op). Node 0 is the head, node 2n+1 the tail.
    let mut entries: Vec<(usize, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, o) in ops.iter().enumerate() {
        entries.push((o.call, false, i));
        entries.push((o.ret_index(), true, i));
    }
    entries.sort_unstable();
    let tail = 2 * n + 1;
    let mut next: Vec<usize> = (1..=tail + 1).collect();
    let mut prev: Vec<usize> = (0..=tail).map(|i| i.saturating_sub(1)).collect();
    next[tail] = tail;
    let mut node_op = vec![0usize; tail + 1];
    let mut is_call = vec![false; tail + 1];
    let mut ret_node = vec![0usize; n];
    let mut call_node = vec![0usize; n];
    for (k, &(_, is_ret, op)) in entries.iter().enumerate() {
        let node = k + 1;
        node_op[node] = op;
        is_call[node] = !is_ret;
        if is_ret {
            ret_node[op] = node;
        } else {
            call_node[op] = node;
        }
    }
    // The linearized set is memoised by two independent 64-bit Zobrist hashes (XOR of per-op
    // keys, updated in O(1)): storing the set itself cost ~2 us and ~150 bytes per step. A false
    // "already explored" needs a 128-bit collision, about n^2 / 2^128 for n explored states.
    let zobrist: Vec<(u64, u64)> = (0..n as u64)
        .map(|i| (splitmix(i.wrapping_mul(2)), splitmix(i.wrapping_mul(2) | 1)))
        .collect();
    let mut linearized: (u64, u64) = (0, 0);
    let mut cache: HashSet<(u64, u64, Reg)> = HashSet::new();
    let mut stack: Vec<(usize, Reg)> = Vec::new();
    let mut state = init;
    let mut entry = next[0];

    let lift = |next: &mut [usize], prev: &mut [usize], e: usize, m: usize| {
        next[prev[e]] = next[e];
        prev[next[e]] = prev[e];
        next[prev[m]] = next[m];
        prev[next[m]] = prev[m];
    };
    let unlift = |next: &mut [usize], prev: &mut [usize], e: usize, m: usize| {
        next[prev[m]] = m;
        prev[next[m]] = m;
        next[prev[e]] = e;
        prev[next[e]] = e;
    };

    while next[0] != tail {
        *steps += 1;
        if *steps > steps_max {
            return Err(*steps);
        }
        let op = node_op[entry];
        if is_call[entry] {
            let mut advanced = false;
            if let Some(new_state) = step(state, &ops[op], possible) {
                let with = (linearized.0 ^ zobrist[op].0, linearized.1 ^ zobrist[op].1);
                if cache.insert((with.0, with.1, new_state)) {
                    linearized = with;
                    stack.push((entry, state));
                    state = new_state;
                    lift(&mut next, &mut prev, entry, ret_node[op]);
                    entry = next[0];
                    advanced = true;
                }
            }
            if !advanced {
                entry = next[entry];
            }
        } else {
            // The earliest pending return: some operation must be linearized before it.
            let Some((e, s)) = stack.pop() else {
                return Ok(false);
            };
            let op = node_op[e];
            state = s;
            linearized = (linearized.0 ^ zobrist[op].0, linearized.1 ^ zobrist[op].1);
            unlift(&mut next, &mut prev, e, ret_node[op]);
            debug_assert_eq!(call_node[op], e);
            entry = next[e];
        }
    }
    Ok(true)
}

/// SplitMix64, for the Zobrist keys.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Ops invoked before `cut`, with those not completed by `cut` made unknown.
fn prefix(ops: &[OpRec], cut: usize) -> Vec<OpRec> {
    ops.iter()
        .filter(|o| o.call < cut)
        .filter_map(|o| {
            let mut o = o.clone();
            if o.ret.is_some_and(|r| r > cut) {
                o.ret = None;
                o.result = None;
                o.ret_at = None;
                if matches!(o.op, KvOp::Read { .. }) {
                    return None;
                }
            }
            Some(o)
        })
        .collect()
}

fn fails(
    ops: &[OpRec],
    init: Reg,
    possible: &BTreeSet<Option<u64>>,
    cfg: &CheckConfig,
) -> Result<bool, u64> {
    let mut steps = 0;
    Ok(!search(ops, init, possible, cfg.steps_max, &mut steps)?)
}

fn minimal_window(key: &str, ops: &[OpRec], cfg: &CheckConfig) -> Result<Violation, SimError> {
    let budget = |steps| SimError::SearchBudget {
        key: key.to_owned(),
        steps,
    };
    // 1. The shortest failing prefix (failure is monotone in the cut).
    let mut cuts: Vec<usize> = ops.iter().filter_map(|o| o.ret).collect();
    cuts.sort_unstable();
    cuts.push(usize::MAX);
    let (mut lo, mut hi) = (0, cuts.len() - 1);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if fails(
            &prefix(ops, cuts[mid]),
            Reg::Val(None),
            &BTreeSet::new(),
            cfg,
        )
        .map_err(budget)?
        {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let pre = drop_unobserved_unknowns(&prefix(ops, cuts[lo]), &BTreeSet::new());
    // 2. The latest quiescent start (no completed op in flight across it) that still fails from
    //    every possible starting state.
    let mut possible: BTreeSet<Option<u64>> = BTreeSet::from([None]);
    for o in &pre {
        match o.op {
            KvOp::Write { value, .. } => {
                possible.insert(Some(value));
            }
            KvOp::Cas { new, .. } => {
                possible.insert(Some(new));
            }
            _ => {}
        }
    }
    let mut starts: Vec<usize> = pre
        .iter()
        .map(|o| o.call)
        .filter(|&s| {
            !pre.iter()
                .any(|o| o.ret.is_some() && o.call < s && o.ret_index() > s)
        })
        .collect();
    starts.sort_unstable();
    starts.dedup();
    let mut chosen: (Vec<OpRec>, bool) = (pre.clone(), true);
    for &s in starts.iter().rev() {
        let window: Vec<OpRec> = pre
            .iter()
            .filter(|o| o.call >= s || o.ret.is_none())
            .cloned()
            .collect();
        let window = drop_unobserved_unknowns(&window, &possible);
        let from_start = s <= pre.first().map_or(0, |o| o.call);
        let init = if from_start { Reg::Val(None) } else { Reg::Any };
        if fails(&window, init, &possible, cfg).map_err(budget)? {
            chosen = (window, from_start);
            break;
        }
    }
    Ok(Violation {
        key: key.to_owned(),
        window: chosen
            .0
            .into_iter()
            .map(|o| WindowOp {
                process: o.process,
                op: o.op,
                result: o.result,
                invoked_at: o.call_at,
                completed_at: o.ret_at,
            })
            .collect(),
        from_start: chosen.1,
        ops_on_key: ops.len(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test")]
mod tests {
    use super::*;
    use crate::history::{Event, History};

    /// A tiny DSL: `(process, 'i' | 'o' | 'f' | 'x', op-or-ret)`; times are event indices.
    enum E {
        I(u64, KvOp),
        O(u64, KvRet),
        F(u64),
        X(u64),
    }

    fn w(v: u64) -> KvOp {
        KvOp::Write {
            key: "k".into(),
            value: v,
        }
    }
    fn r() -> KvOp {
        KvOp::Read { key: "k".into() }
    }
    fn cas(e: Option<u64>, n: u64) -> KvOp {
        KvOp::Cas {
            key: "k".into(),
            expect: e,
            new: n,
        }
    }
    fn del() -> KvOp {
        KvOp::Delete { key: "k".into() }
    }
    fn rv(v: Option<u64>) -> KvRet {
        KvRet::Read(v)
    }

    fn hist(events: Vec<E>) -> KvHistory {
        History {
            events: events
                .into_iter()
                .enumerate()
                .map(|(i, e)| {
                    let at = Duration::from_millis(i as u64);
                    let (p, kind) = match e {
                        E::I(p, op) => (p, EventKind::Invoke(op)),
                        E::O(p, ret) => (p, EventKind::Ok(ret)),
                        E::F(p) => (p, EventKind::Fail("refused".into())),
                        E::X(p) => (p, EventKind::Info("timeout".into())),
                    };
                    Event {
                        at,
                        process: ProcessId(p),
                        kind,
                    }
                })
                .collect(),
        }
    }

    #[track_caller]
    fn ok(events: Vec<E>) {
        let h = hist(events);
        if let Err(e) = check_kv(&h, &CheckConfig::default()) {
            panic!("expected linearizable, got {e}");
        }
    }

    #[track_caller]
    fn bad(events: Vec<E>, window_len: usize) -> Violation {
        let h = hist(events);
        match check_kv(&h, &CheckConfig::default()) {
            Err(SimError::NotLinearizable(v)) => {
                assert_eq!(v.window.len(), window_len, "window:\n{v}");
                *v
            }
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    use E::{F, I, O, X};

    #[test]
    fn sequential_and_concurrent_histories_pass() {
        ok(vec![
            I(0, w(1)),
            O(0, KvRet::Done),
            I(1, r()),
            O(1, rv(Some(1))),
        ]);
        // Two concurrent writes; readers see them in either order, consistently.
        ok(vec![
            I(0, w(1)),
            I(1, w(2)),
            I(2, r()),
            O(2, rv(Some(2))),
            I(3, r()),
            O(3, rv(Some(1))),
            O(0, KvRet::Done),
            O(1, KvRet::Done),
        ]);
        // A read concurrent with a write may see either value.
        ok(vec![
            I(0, w(1)),
            O(0, KvRet::Done),
            I(0, w(2)),
            I(1, r()),
            O(1, rv(Some(1))),
            O(0, KvRet::Done),
        ]);
        // CAS, delete, read-absent.
        ok(vec![
            I(0, cas(None, 1)),
            O(0, KvRet::Cas(true)),
            I(1, cas(None, 2)),
            O(1, KvRet::Cas(false)),
            I(0, del()),
            O(0, KvRet::Done),
            I(1, r()),
            O(1, rv(None)),
        ]);
    }

    #[test]
    fn unknown_and_failed_outcomes() {
        // A timed-out write may take effect later: a later read may see it ...
        ok(vec![
            I(0, w(1)),
            X(0),
            I(1, r()),
            O(1, rv(None)),
            I(1, r()),
            O(1, rv(Some(1))),
        ]);
        // ... or never.
        ok(vec![I(0, w(1)), X(0), I(1, r()), O(1, rv(None))]);
        // A failed write never happened.
        bad(vec![I(0, w(1)), F(0), I(1, r()), O(1, rv(Some(1)))], 1);
        // An unknown write no one read may still be what made a later CAS fail.
        ok(vec![
            I(0, w(1)),
            O(0, KvRet::Done),
            I(1, w(2)),
            X(1),
            I(0, cas(Some(1), 3)),
            O(0, KvRet::Cas(false)),
        ]);
        // Unobserved unknown writes are pruned, the violation around them is still found.
        bad(
            vec![
                I(0, w(1)),
                O(0, KvRet::Done),
                I(1, w(2)),
                X(1),
                I(2, w(3)),
                X(2),
                I(0, r()),
                O(0, rv(None)),
            ],
            2,
        );
        // A write left pending at the end of the history is unknown.
        ok(vec![I(0, w(1)), I(1, r()), O(1, rv(Some(1)))]);
    }

    #[test]
    fn stale_read_after_write_is_rejected() {
        let v = bad(
            vec![
                I(0, w(1)),
                O(0, KvRet::Done),
                I(0, w(2)),
                O(0, KvRet::Done),
                I(1, r()),
                O(1, rv(Some(1))),
            ],
            2,
        );
        assert!(!v.from_start);
        assert_eq!(v.window[0].op, w(2));
        assert_eq!(v.window[1].result, Some(rv(Some(1))));
        assert!(v.to_string().contains("read(k) -> 1"), "{v}");
    }

    #[test]
    fn lost_write_is_rejected() {
        bad(
            vec![I(0, w(1)), O(0, KvRet::Done), I(1, r()), O(1, rv(None))],
            2,
        );
    }

    #[test]
    fn read_of_a_value_never_written_is_rejected() {
        // The window is the read alone: no starting state explains a value never written.
        let v = bad(
            vec![I(0, w(1)), O(0, KvRet::Done), I(1, r()), O(1, rv(Some(9)))],
            1,
        );
        assert_eq!(v.window[0].result, Some(rv(Some(9))));
    }

    #[test]
    fn cas_that_succeeds_twice_is_rejected() {
        bad(
            vec![
                I(0, w(0)),
                O(0, KvRet::Done),
                I(1, cas(Some(0), 1)),
                I(2, cas(Some(0), 2)),
                O(1, KvRet::Cas(true)),
                O(2, KvRet::Cas(true)),
            ],
            2,
        );
    }

    #[test]
    fn window_is_local_to_the_violation() {
        // A long clean history, then a stale read: the window holds only the last ops.
        let mut ev = Vec::new();
        for v in 0..50 {
            ev.push(I(0, w(v)));
            ev.push(I(1, r()));
            ev.push(O(0, KvRet::Done));
            ev.push(O(1, rv(Some(v))));
        }
        ev.push(I(0, w(100)));
        ev.push(O(0, KvRet::Done));
        ev.push(I(1, r()));
        ev.push(O(1, rv(Some(49))));
        ev.push(I(1, r()));
        ev.push(O(1, rv(Some(100))));
        let v = bad(ev, 2);
        assert_eq!(v.ops_on_key, 103);
    }

    #[test]
    fn keys_are_independent_and_malformed_histories_are_errors() {
        let mut h = hist(vec![I(0, w(1)), O(0, KvRet::Done)]);
        h.events.push(Event {
            at: Duration::ZERO,
            process: ProcessId(1),
            kind: EventKind::Invoke(KvOp::Read {
                key: "other".into(),
            }),
        });
        h.events.push(Event {
            at: Duration::ZERO,
            process: ProcessId(1),
            kind: EventKind::Ok(rv(None)),
        });
        let s = check_kv(&h, &CheckConfig::default()).unwrap();
        assert_eq!((s.keys, s.ops), (2, 2));
        let h = hist(vec![O(0, KvRet::Done)]);
        assert!(matches!(
            check_kv(&h, &CheckConfig::default()),
            Err(SimError::MalformedHistory { index: 0, .. })
        ));
        let h = hist(vec![I(0, r()), O(0, KvRet::Done)]);
        assert!(matches!(
            check_kv(&h, &CheckConfig::default()),
            Err(SimError::MalformedHistory { index: 1, .. })
        ));
    }

    #[test]
    fn budget_is_reported() {
        let h = hist(vec![
            I(0, w(1)),
            I(1, w(2)),
            O(0, KvRet::Done),
            O(1, KvRet::Done),
        ]);
        let cfg = CheckConfig { steps_max: 1 };
        assert!(matches!(
            check_kv(&h, &cfg),
            Err(SimError::SearchBudget { steps: 2, .. })
        ));
    }
}
