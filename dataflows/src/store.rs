//! Store: tags distinct by uuid, insert-only, the earliest record's row winning.
//!
//! Input: the tags detect produced (a collection; a retraction can appear when an
//! anchor changes). Output: the stored tags, each uuid exactly once, as insertions only:
//! a stored tag row is never updated or deleted (DECNET's `INSERT OR IGNORE`, DESIGN
//! §2.8). Epochs are processed whole and in order once the input frontier has passed
//! them; within an epoch the tag of the earliest record (input position, then command
//! index, then rule order) wins. So the output depends only on the input and its epoch
//! boundaries, never on the number of workers.
//!
//! State: the set of stored uuids (16 bytes each), sharded by uuid across workers, and
//! the updates of epochs not yet complete.

use std::collections::{BTreeMap, HashSet};

use differential_dataflow::AsCollection;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;

use crate::record::Tag;
use crate::types::{Coll, Diff, Time};

/// The updates of one epoch not yet complete, with the capability to emit at its time.
type Pending = (Capability<Time>, Vec<(Tag, Diff)>);

/// The stage.
pub fn stage<'s>(tags: Coll<'s, Tag>) -> Coll<'s, Tag> {
    let exchange = Exchange::new(|(tag, _, _): &(Tag, Time, Diff)| {
        u64::from_le_bytes(tag.uuid[..8].try_into().unwrap_or_default())
    });
    tags.inner
        .unary_frontier(exchange, "store tags", |_cap, _info| {
            let mut stored: HashSet<[u8; 16]> = HashSet::new();
            let mut stash: BTreeMap<Time, Pending> = BTreeMap::new();
            move |(input, frontier), output| {
                input.for_each(|cap, data| {
                    for (tag, time, diff) in data.drain(..) {
                        let entry = stash.entry(time).or_insert_with(|| (cap.delayed(&time, 0), Vec::new()));
                        entry.1.push((tag, diff));
                    }
                });
                while let Some(entry) = stash.first_entry() {
                    if frontier.frontier().less_equal(entry.key()) {
                        break;
                    }
                    let (cap, updates) = entry.remove();
                    let mut session = output.session(&cap);
                    for tag in first_insertions(updates, &mut stored) {
                        session.give((tag, *cap.time(), 1));
                    }
                }
            }
        })
        .as_collection()
}

/// The tags of one complete epoch that insert a uuid not yet stored, in record order.
fn first_insertions(mut updates: Vec<(Tag, Diff)>, stored: &mut HashSet<[u8; 16]>) -> Vec<Tag> {
    differential_dataflow::consolidation::consolidate(&mut updates);
    updates
        .into_iter()
        .filter(|(_, diff)| *diff > 0)
        .filter_map(|(tag, _)| stored.insert(tag.uuid).then_some(tag))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::Json;
    use crate::record::{Confidence, Pos};

    fn tag(offset: u64, uuid: u8) -> Tag {
        Tag {
            pos: Pos { ts: 0, input: 0, offset },
            part: 0,
            emit: 0,
            uuid: [uuid; 16],
            source_kind: "command".into(),
            source_id: "s".into(),
            attacker_uuid: None,
            identity_uuid: None,
            session_id: None,
            decky_id: None,
            tactic: "TA0007".into(),
            technique_id: "T1083".into(),
            sub_technique_id: None,
            confidence: Confidence(0.5),
            rule_id: "R".into(),
            rule_version: 1,
            evidence: Json::Obj(vec![]),
            attack_release: "v15.1".into(),
            observed_at: None,
        }
    }

    #[test]
    fn earliest_record_wins_and_uuids_are_stored_once() {
        let mut stored = HashSet::new();
        let first =
            first_insertions(vec![(tag(9, 1), 1), (tag(3, 1), 1), (tag(5, 2), 1), (tag(5, 2), -1)], &mut stored);
        assert_eq!(first, vec![tag(3, 1)]);
        let second = first_insertions(vec![(tag(1, 1), 1), (tag(7, 3), 1)], &mut stored);
        assert_eq!(second, vec![tag(7, 3)], "uuid 1 was stored in an earlier epoch");
    }

    #[test]
    fn the_stage_emits_insertions_only() {
        use differential_dataflow::input::Input;
        use std::sync::{Arc, Mutex};
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        timely::execute_directly(move |worker| {
            let mut input = worker.dataflow::<Time, _, _>(|scope| {
                let (input, tags) = scope.new_collection::<Tag, Diff>();
                stage(tags).inspect(move |x| sink.lock().unwrap().push(x.clone()));
                input
            });
            input.insert(tag(4, 1));
            input.advance_to(1);
            input.remove(tag(4, 1));
            input.insert(tag(2, 1));
            input.insert(tag(2, 2));
        });
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen, vec![(tag(4, 1), 0, 1), (tag(2, 2), 1, 1)]);
    }
}
