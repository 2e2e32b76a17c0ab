//! The `Crdt` trait every merge type implements, and the law checker used by the property
//! tests (public, so that a custom merge can be checked the same way).
// tidy:pure-core

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::conflict::{CrdtKind, Resolution, Version};

/// A state-based CRDT whose deltas are states of the same type (delta-state CRDTs).
///
/// Every mutator of an implementation returns the *delta*: a small value of `Self` that holds
/// just the change. Merging the delta into any replica has the same effect as merging the
/// writer's full state would have for that change, so deltas are what is pushed on write, and
/// full states are what anti-entropy exchanges for keys whose digests differ.
///
/// `merge` is a join: commutative, associative and idempotent (checked for every type in this
/// crate by property tests, see [`check_laws`]). Both forms are serde types, so the transport
/// can encode them with postcard.
///
/// ```
/// use quorate_replication::{Crdt, PnCounter};
/// use quorate_types::NodeId;
///
/// let a = NodeId::new("a").unwrap();
/// let b = NodeId::new("b").unwrap();
/// let mut at_a = PnCounter::bottom();
/// let mut at_b = PnCounter::bottom();
/// let d1 = at_a.increment(&a, 3).unwrap();   // local write, returns the delta
/// let d2 = at_b.decrement(&b, 1).unwrap();
/// at_a.merge(&d2);                            // deltas cross in any order
/// at_b.merge(&d1);
/// assert_eq!(at_a, at_b);
/// assert_eq!(at_a.value(), 2);
/// ```
pub trait Crdt: Clone + PartialEq + fmt::Debug + Serialize + DeserializeOwned {
    /// Which merge type this is (for the conflict log and the metrics).
    const KIND: CrdtKind;

    /// The empty state, the identity of `merge`.
    fn bottom() -> Self;

    /// Joins `other` (a full state or a delta) into `self`.
    fn merge(&mut self, other: &Self);

    /// The number of entries this value holds (elements, siblings, map entries, per-node
    /// counters, tombstones included): the quantity the limits bound.
    fn size(&self) -> usize;

    /// Whether merging `other` into `self` resolves a conflict, and how. Called before
    /// [`Crdt::merge`] by the store, which records the answer in the conflict log.
    fn conflict(&self, other: &Self) -> Option<Resolution> {
        let _ = other;
        None
    }

    /// The versions this state holds, as named in a conflict record (a timestamp, sibling
    /// dots). Empty for types whose merges never discard or keep concurrent versions.
    fn versions(&self) -> Vec<Version> {
        Vec::new()
    }
}

/// A CRDT law that does not hold for a given triple of states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LawViolation {
    /// `a ⊔ b != b ⊔ a`.
    NotCommutative,
    /// `(a ⊔ b) ⊔ c != a ⊔ (b ⊔ c)`.
    NotAssociative,
    /// `a ⊔ a != a`.
    NotIdempotent,
    /// `a ⊔ ⊥ != a`.
    BottomIsNotIdentity,
}

fn join<C: Crdt>(a: &C, b: &C) -> C {
    let mut x = a.clone();
    x.merge(b);
    x
}

/// Checks the join laws on three states: commutativity, associativity, idempotence, and that
/// [`Crdt::bottom`] is the identity.
///
/// # Errors
/// The first law that fails.
pub fn check_laws<C: Crdt>(a: &C, b: &C, c: &C) -> Result<(), LawViolation> {
    if join(a, b) != join(b, a) {
        return Err(LawViolation::NotCommutative);
    }
    if join(&join(a, b), c) != join(a, &join(b, c)) {
        return Err(LawViolation::NotAssociative);
    }
    if join(a, a) != *a {
        return Err(LawViolation::NotIdempotent);
    }
    if join(a, &C::bottom()) != *a {
        return Err(LawViolation::BottomIsNotIdentity);
    }
    Ok(())
}
