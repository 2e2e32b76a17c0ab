//! Property tests of the CRDT laws for every merge type: merge is commutative, associative and
//! idempotent with bottom as identity; merging the deltas (in any order, duplicated) gives the
//! same state as merging the replicas' full states; and the add-wins OR-set loses no add
//! that no remove had observed.
#![allow(clippy::unwrap_used, reason = "test")]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::num::NonZeroU64;

use proptest::prelude::*;
use quorate_replication::{
    Crdt, Custom, CustomMerge, Dot, Hlc, HlcConfig, LwwMap, LwwRegister, MvRegister, OrMap, OrSet,
    PnCounter, check_laws,
};
use quorate_types::NodeId;

const REPLICAS: usize = 3;

/// A merge type with the operations a history may apply to it.
trait Model: Crdt {
    type Op: Debug + Clone;
    fn op() -> BoxedStrategy<Self::Op>;
    /// Applies `op` at a replica and returns the delta.
    fn apply(&mut self, node: &NodeId, clock: &mut Hlc, now_ms: u64, op: &Self::Op) -> Self;
}

#[derive(Debug, Clone)]
enum Step<O> {
    Write { at: usize, op: O },
    Sync { from: usize, to: usize },
}

fn steps<M: Model>() -> impl Strategy<Value = Vec<Step<M::Op>>> {
    let step = prop_oneof![
        3 => (0..REPLICAS, M::op()).prop_map(|(at, op)| Step::Write { at, op }),
        1 => (0..REPLICAS, 0..REPLICAS).prop_map(|(from, to)| Step::Sync { from, to }),
    ];
    proptest::collection::vec(step, 0..40)
}

fn node(i: usize) -> NodeId {
    NodeId::new(format!("n{i}")).unwrap()
}

/// Runs a history on three replicas; returns their states and every delta produced.
fn run<M: Model>(history: &[Step<M::Op>]) -> (Vec<M>, Vec<M>) {
    let cfg = HlcConfig {
        max_offset_ms: NonZeroU64::new(10_000).unwrap(),
    };
    let mut states: Vec<M> = (0..REPLICAS).map(|_| M::bottom()).collect();
    let mut clocks: Vec<Hlc> = (0..REPLICAS).map(|i| Hlc::new(node(i), cfg)).collect();
    let mut deltas = Vec::new();
    for (t, step) in history.iter().enumerate() {
        let now = 1_000 + t as u64;
        match step {
            Step::Write { at, op } => {
                let d = states[*at].apply(&node(*at), &mut clocks[*at], now, op);
                deltas.push(d);
            }
            Step::Sync { from, to } => {
                let s = states[*from].clone();
                states[*to].merge(&s);
                let seen = clocks[*from].last();
                clocks[*to].observe(&seen, now).unwrap();
            }
        }
    }
    (states, deltas)
}

fn fold<M: Crdt>(ds: impl IntoIterator<Item = M>) -> M {
    let mut s = M::bottom();
    for d in ds {
        s.merge(&d);
    }
    s
}

fn check_model<M: Model>(history: &[Step<M::Op>]) -> Result<(), TestCaseError> {
    let (states, deltas) = run::<M>(history);
    let (a, b, c) = (&states[0], &states[1], &states[2]);
    prop_assert_eq!(check_laws(a, b, c), Ok(()));
    prop_assert_eq!(check_laws(c, a, b), Ok(()));
    if let Some(d) = deltas.first() {
        prop_assert_eq!(check_laws(d, a, &deltas[deltas.len() - 1]), Ok(()));
    }
    let full = fold(states.iter().cloned());
    prop_assert_eq!(&fold(deltas.iter().cloned()), &full, "deltas in order");
    prop_assert_eq!(
        &fold(deltas.iter().rev().cloned()),
        &full,
        "deltas reversed"
    );
    let (even, odd): (Vec<_>, Vec<_>) = deltas
        .iter()
        .cloned()
        .enumerate()
        .partition(|(i, _)| i % 2 == 0);
    let interleaved = odd
        .into_iter()
        .chain(even)
        .chain(deltas.iter().cloned().enumerate())
        .map(|(_, d)| d);
    prop_assert_eq!(&fold(interleaved), &full, "deltas reordered and duplicated");
    Ok(())
}

// ---- the models ----

impl Model for LwwRegister<u8> {
    type Op = u8;
    fn op() -> BoxedStrategy<u8> {
        (0u8..4).boxed()
    }
    fn apply(&mut self, _: &NodeId, clock: &mut Hlc, now: u64, v: &u8) -> Self {
        self.set(*v, clock.now(now))
    }
}

#[derive(Debug, Clone)]
enum MvOp {
    Set(u8),
    Resolve,
}

impl Model for MvRegister<u8> {
    type Op = MvOp;
    fn op() -> BoxedStrategy<MvOp> {
        prop_oneof![3 => (0u8..4).prop_map(MvOp::Set), 1 => Just(MvOp::Resolve)].boxed()
    }
    fn apply(&mut self, n: &NodeId, _: &mut Hlc, _: u64, op: &MvOp) -> Self {
        match op {
            MvOp::Set(v) => self.set(n, *v),
            MvOp::Resolve => {
                match self.resolve(n, 1, |vs| vs.iter().copied().copied().max().unwrap_or(0)) {
                    Some((d, _)) => d,
                    None => Self::bottom(),
                }
            }
        }
    }
}

#[derive(Debug, Clone)]
enum CounterOp {
    Inc(u64),
    Dec(u64),
}

fn counter_op() -> BoxedStrategy<CounterOp> {
    prop_oneof![
        (0u64..5).prop_map(CounterOp::Inc),
        (0u64..5).prop_map(CounterOp::Dec)
    ]
    .boxed()
}

fn apply_counter(c: &mut PnCounter, n: &NodeId, op: &CounterOp) -> PnCounter {
    match op {
        CounterOp::Inc(by) => c.increment(n, *by).unwrap(),
        CounterOp::Dec(by) => c.decrement(n, *by).unwrap(),
    }
}

impl Model for PnCounter {
    type Op = CounterOp;
    fn op() -> BoxedStrategy<CounterOp> {
        counter_op()
    }
    fn apply(&mut self, n: &NodeId, _: &mut Hlc, _: u64, op: &CounterOp) -> Self {
        apply_counter(self, n, op)
    }
}

#[derive(Debug, Clone)]
enum SetOp {
    Add(u8),
    Remove(u8),
}

impl Model for OrSet<u8> {
    type Op = SetOp;
    fn op() -> BoxedStrategy<SetOp> {
        prop_oneof![2 => (0u8..5).prop_map(SetOp::Add), 1 => (0u8..5).prop_map(SetOp::Remove)]
            .boxed()
    }
    fn apply(&mut self, n: &NodeId, _: &mut Hlc, _: u64, op: &SetOp) -> Self {
        match op {
            SetOp::Add(e) => self.add(n, *e, 64).unwrap(),
            SetOp::Remove(e) => self.remove(e),
        }
    }
}

#[derive(Debug, Clone)]
enum LwwMapOp {
    Set(u8, u8),
    Remove(u8),
}

impl Model for LwwMap<u8, u8> {
    type Op = LwwMapOp;
    fn op() -> BoxedStrategy<LwwMapOp> {
        prop_oneof![
            2 => (0u8..4, 0u8..4).prop_map(|(k, v)| LwwMapOp::Set(k, v)),
            1 => (0u8..4).prop_map(LwwMapOp::Remove)
        ]
        .boxed()
    }
    fn apply(&mut self, _: &NodeId, clock: &mut Hlc, now: u64, op: &LwwMapOp) -> Self {
        match op {
            LwwMapOp::Set(k, v) => self.set(*k, *v, clock.now(now), 64).unwrap(),
            LwwMapOp::Remove(k) => self.remove(*k, clock.now(now), 64).unwrap(),
        }
    }
}

#[derive(Debug, Clone)]
enum OrMapOp {
    Update(u8, CounterOp),
    Remove(u8),
}

impl Model for OrMap<u8, PnCounter> {
    type Op = OrMapOp;
    fn op() -> BoxedStrategy<OrMapOp> {
        prop_oneof![
            2 => (0u8..4, counter_op()).prop_map(|(k, op)| OrMapOp::Update(k, op)),
            1 => (0u8..4).prop_map(OrMapOp::Remove)
        ]
        .boxed()
    }
    fn apply(&mut self, n: &NodeId, _: &mut Hlc, _: u64, op: &OrMapOp) -> Self {
        match op {
            OrMapOp::Update(k, op) => self
                .update(n, *k, 64, |c| Ok(apply_counter(c, n, op)))
                .unwrap(),
            OrMapOp::Remove(k) => self.remove(k),
        }
    }
}

/// A custom join: the set union of tags (a grow-only set), as an application would write it.
struct TagUnion;

impl CustomMerge for TagUnion {
    type Value = BTreeSet<u8>;
    fn bottom() -> BTreeSet<u8> {
        BTreeSet::new()
    }
    fn merge(a: &BTreeSet<u8>, b: &BTreeSet<u8>) -> BTreeSet<u8> {
        a.union(b).copied().collect()
    }
}

impl Model for Custom<TagUnion> {
    type Op = u8;
    fn op() -> BoxedStrategy<u8> {
        (0u8..8).boxed()
    }
    fn apply(&mut self, _: &NodeId, _: &mut Hlc, _: u64, tag: &u8) -> Self {
        let d = Custom::new(BTreeSet::from([*tag]));
        self.merge(&d);
        d
    }
}

proptest! {
    #[test]
    fn lww_register_laws(h in steps::<LwwRegister<u8>>()) { check_model::<LwwRegister<u8>>(&h)?; }

    #[test]
    fn mv_register_laws(h in steps::<MvRegister<u8>>()) { check_model::<MvRegister<u8>>(&h)?; }

    #[test]
    fn pn_counter_laws(h in steps::<PnCounter>()) { check_model::<PnCounter>(&h)?; }

    #[test]
    fn or_set_laws(h in steps::<OrSet<u8>>()) { check_model::<OrSet<u8>>(&h)?; }

    #[test]
    fn lww_map_laws(h in steps::<LwwMap<u8, u8>>()) { check_model::<LwwMap<u8, u8>>(&h)?; }

    #[test]
    fn or_map_laws(h in steps::<OrMap<u8, PnCounter>>()) { check_model::<OrMap<u8, PnCounter>>(&h)?; }

    #[test]
    fn custom_merge_laws(h in steps::<Custom<TagUnion>>()) { check_model::<Custom<TagUnion>>(&h)?; }

    /// After every replica has merged everything, an element is present exactly when some add
    /// of it was retired by nothing (neither observed by a remove, nor superseded by a later
    /// add of the same element at a replica that had seen it): no acknowledged add is lost
    /// unless a replica that had seen it removed the element afterwards, and nothing removed
    /// comes back.
    #[test]
    fn or_set_keeps_every_add_no_remove_observed(h in steps::<OrSet<u8>>()) {
        let cfg = HlcConfig { max_offset_ms: NonZeroU64::new(1).unwrap() };
        let mut states: Vec<OrSet<u8>> = (0..REPLICAS).map(|_| OrSet::bottom()).collect();
        let mut clocks: Vec<Hlc> = (0..REPLICAS).map(|i| Hlc::new(node(i), cfg)).collect();
        let mut adds: BTreeMap<u8, BTreeSet<Dot>> = BTreeMap::new();
        let mut retired: BTreeSet<Dot> = BTreeSet::new();
        for step in &h {
            match step {
                Step::Write { at, op } => {
                    // A remove retires the adds it observed; so does a re-add of the same
                    // element (its new dot stands for them from then on).
                    let (SetOp::Remove(e) | SetOp::Add(e)) = op;
                    retired.extend(states[*at].dots_of(e));
                    let d = states[*at].apply(&node(*at), &mut clocks[*at], 0, op);
                    if let SetOp::Add(e) = op {
                        adds.entry(*e).or_default().extend(d.dots_of(e));
                    }
                }
                Step::Sync { from, to } => {
                    let s = states[*from].clone();
                    states[*to].merge(&s);
                }
            }
        }
        let all = fold(states);
        for e in 0u8..5 {
            let survives = adds.get(&e).is_some_and(|ds| ds.iter().any(|d| !retired.contains(d)));
            prop_assert_eq!(all.contains(&e), survives, "element {}", e);
        }
    }
}
