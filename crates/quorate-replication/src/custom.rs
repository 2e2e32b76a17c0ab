//! The custom-merge hook: an application-defined join wrapped as a [`Crdt`].
// tidy:pure-core

use std::fmt;
use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::conflict::CrdtKind;
use crate::crdt::Crdt;

/// An application's merge function. It must be a join (commutative, associative,
/// idempotent, with [`CustomMerge::bottom`] as identity); check it with
/// [`crate::check_laws`] in a property test, as this crate does for its own types.
///
/// ```
/// use quorate_replication::{Crdt, Custom, CustomMerge};
///
/// /// Keeps the highest score seen.
/// struct MaxScore;
/// impl CustomMerge for MaxScore {
///     type Value = u64;
///     fn bottom() -> u64 { 0 }
///     fn merge(ours: &u64, theirs: &u64) -> u64 { *ours.max(theirs) }
/// }
///
/// let mut a = Custom::<MaxScore>::new(3);
/// a.merge(&Custom::new(9));
/// assert_eq!(*a.value(), 9);
/// ```
pub trait CustomMerge: 'static {
    /// The replicated value.
    type Value: Clone + PartialEq + fmt::Debug + Serialize + DeserializeOwned;
    /// The empty value, identity of `merge`.
    fn bottom() -> Self::Value;
    /// The join of two values.
    fn merge(ours: &Self::Value, theirs: &Self::Value) -> Self::Value;
    /// The number of entries the value holds, for the limits. One by default.
    fn size(value: &Self::Value) -> usize {
        let _ = value;
        1
    }
}

/// A value merged by the application's [`CustomMerge`]. A write is a delta holding the new
/// value: `Custom::new(v)`, merged locally and pushed.
pub struct Custom<M: CustomMerge> {
    value: M::Value,
    merge: PhantomData<fn() -> M>,
}

impl<M: CustomMerge> Custom<M> {
    /// A state (or delta) holding `value`.
    pub fn new(value: M::Value) -> Self {
        Self {
            value,
            merge: PhantomData,
        }
    }

    /// The current value.
    pub fn value(&self) -> &M::Value {
        &self.value
    }
}

impl<M: CustomMerge> Clone for Custom<M> {
    fn clone(&self) -> Self {
        Self::new(self.value.clone())
    }
}

impl<M: CustomMerge> PartialEq for Custom<M> {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl<M: CustomMerge> fmt::Debug for Custom<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Custom").field(&self.value).finish()
    }
}

impl<M: CustomMerge> Serialize for Custom<M> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(s)
    }
}

impl<'de, M: CustomMerge> Deserialize<'de> for Custom<M> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        M::Value::deserialize(d).map(Self::new)
    }
}

impl<M: CustomMerge> Crdt for Custom<M> {
    const KIND: CrdtKind = CrdtKind::Custom;

    fn bottom() -> Self {
        Self::new(M::bottom())
    }

    fn merge(&mut self, other: &Self) {
        self.value = M::merge(&self.value, &other.value);
    }

    fn size(&self) -> usize {
        M::size(&self.value)
    }
}
