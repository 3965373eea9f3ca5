//! Aliases for differential's generic types, so a version bump touches this file.

use differential_dataflow::operators::arrange::{Arranged, TraceAgent};
use differential_dataflow::trace::implementations::ValSpine;

/// Timely timestamps are epochs: one per source batch.
pub type Time = u64;
/// Multiplicities.
pub type Diff = isize;
/// A collection of `D` in a scope of the graph.
pub type Coll<'s, D> = differential_dataflow::VecCollection<'s, Time, D, Diff>;
/// A dataflow scope.
pub type Scope<'s> = timely::dataflow::Scope<'s, Time>;
/// An arrangement of `(K, V)` pairs by `K`.
pub type ArrangedByKey<'s, K, V> = Arranged<'s, TraceAgent<ValSpine<K, V, Time, Diff>>>;
