//! Latest: "the latest record wins" decided by the records' positions, not their epochs.
//!
//! Input: upserts `(key, Some((pos, value)), time)` as `arrange_from_upsert` takes them
//! (a tombstone is a value too). Output: the same upserts less those that can no longer
//! win, because a record of the same key with a greater position was seen in this or an
//! earlier epoch. Downstream, the upsert arrangement keeps per key the greatest value of
//! the latest epoch; with only ever-greater positions reaching it, that is the record with
//! the greatest position among all seen up to the epoch, whichever epochs they came in.
//! On files positions follow the epochs and nothing is dropped; on Kafka the records of
//! different partitions arrive in an order that depends on timing, and this makes the
//! tables, identities and intel rows after an epoch a function of the records up to it, so
//! a job that rebuilds its state by reading them again (in other epochs) reaches the
//! state it had committed.
//!
//! Epochs are taken whole and in order once the input frontier has passed them. State: the
//! greatest position per key, sharded by key.

use std::collections::{BTreeMap, HashMap};

use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;
use timely::ExchangeData;

use crate::record::Pos;
use crate::types::Time;

/// One upsert: key, (position, value) or nothing, time.
pub type Upsert<V> = (String, Option<(Pos, V)>, Time);

/// The upserts that can still win.
pub fn newer_only<'s, V: ExchangeData>(
    upserts: StreamVec<'s, Time, Upsert<V>>,
    name: &str,
) -> StreamVec<'s, Time, Upsert<V>> {
    let exchange = Exchange::new(|(key, _, _): &Upsert<V>| fnv(key.as_bytes()));
    upserts.unary_frontier(exchange, &format!("{name}: newer only"), |_cap, _info| {
        let mut latest: HashMap<String, Pos> = HashMap::new();
        let mut stash: BTreeMap<Time, (Capability<Time>, Vec<Upsert<V>>)> = BTreeMap::new();
        move |(input, frontier), output| {
            input.for_each(|cap, data| {
                for upsert in data.drain(..) {
                    let time = upsert.2;
                    stash.entry(time).or_insert_with(|| (cap.delayed(&time, 0), Vec::new())).1.push(upsert);
                }
            });
            while let Some(entry) = stash.first_entry() {
                if frontier.frontier().less_equal(entry.key()) {
                    break;
                }
                let (cap, upserts) = entry.remove();
                let kept = keep_newer(upserts, &mut latest);
                output.session(&cap).give_iterator(kept.into_iter());
            }
        }
    })
}

/// One epoch's upserts against the greatest positions seen before it: those above, and
/// the positions raised to the greatest of them.
fn keep_newer<V>(upserts: Vec<Upsert<V>>, latest: &mut HashMap<String, Pos>) -> Vec<Upsert<V>> {
    let before: Vec<Option<Pos>> = upserts.iter().map(|(key, _, _)| latest.get(key).copied()).collect();
    let mut kept = Vec::with_capacity(upserts.len());
    for (upsert, before) in upserts.into_iter().zip(before) {
        let newer = match (&upsert.1, before) {
            (Some((pos, _)), Some(seen)) => *pos > seen,
            _ => true,
        };
        if newer {
            if let Some((pos, _)) = &upsert.1 {
                let at = latest.entry(upsert.0.clone()).or_insert(*pos);
                *at = (*at).max(*pos);
            }
            kept.push(upsert);
        }
    }
    kept
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x100000001b3))
}

#[cfg(test)]
mod tests {
    use differential_dataflow::operators::arrange::upsert::arrange_from_upsert;
    use differential_dataflow::trace::implementations::{ValBuilder, ValSpine};
    use timely::dataflow::operators::capture::Extract;
    use timely::dataflow::operators::{Capture, Input};

    use super::*;
    use crate::types::Diff;

    fn pos(ts: i64, offset: u64) -> Pos {
        Pos { ts, input: 0, offset }
    }

    #[test]
    fn within_an_epoch_every_newer_upsert_passes_and_older_ones_do_not() {
        let mut latest = HashMap::new();
        let first = keep_newer(vec![("k".to_string(), Some((pos(5, 0), "a")), 0)], &mut latest);
        assert_eq!(first.len(), 1);
        let second = keep_newer(
            vec![
                ("k".to_string(), Some((pos(3, 1), "old")), 1),
                ("k".to_string(), Some((pos(7, 2), "new")), 1),
                ("j".to_string(), Some((pos(1, 3), "other key")), 1),
            ],
            &mut latest,
        );
        let values: Vec<&str> = second.iter().map(|(_, v, _)| v.as_ref().unwrap().1).collect();
        assert_eq!(values, ["new", "other key"]);
        assert_eq!(latest["k"], pos(7, 2));
    }

    /// The row of the greatest position wins, in whatever epochs the records come.
    #[test]
    fn the_arrangement_holds_the_greatest_position_whatever_the_epochs() {
        let orders: [&[(i64, &str, Time)]; 3] = [
            &[(1, "a", 0), (2, "b", 1), (3, "c", 2)],
            &[(3, "c", 0), (1, "a", 1), (2, "b", 2)],
            &[(2, "b", 0), (3, "c", 0), (1, "a", 2)],
        ];
        for records in orders {
            let sent = records.to_vec();
            let captured = timely::example(move |scope| {
                let (mut input, stream) = scope.new_input::<Vec<Upsert<String>>>();
                let upserts = newer_only(stream, "test");
                let arranged =
                    arrange_from_upsert::<ValBuilder<_, _, _, _>, ValSpine<String, (Pos, String), Time, Diff>, _, _>(
                        upserts,
                        "test rows",
                    );
                let out = arranged.as_collection(|k, (_, v)| (k.clone(), v.clone())).inner.capture();
                for epoch in 0..3 {
                    for (ts, value, _) in sent.iter().filter(|r| r.2 == epoch) {
                        input.send(("k".to_string(), Some((pos(*ts, 0), value.to_string())), epoch));
                    }
                    input.advance_to(epoch + 1);
                }
                out
            });
            let mut at_end: BTreeMap<(String, String), Diff> = BTreeMap::new();
            for (_, batch) in captured.extract() {
                for (row, _, diff) in batch {
                    *at_end.entry(row).or_insert(0) += diff;
                }
            }
            at_end.retain(|_, n| *n != 0);
            assert_eq!(at_end, BTreeMap::from([(("k".to_string(), "c".to_string()), 1)]), "{records:?}");
        }
    }
}
