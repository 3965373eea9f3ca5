//! Anchor: events without an attacker_uuid / identity_uuid join the attackers by IP.
//!
//! Input: decoded [`Event`]s and the table upserts. Output: anchored events (with
//! `attacker_uuid` written into the payload, as DECNET does before deriving the
//! source_id), the collection of events still waiting for their IP, and dead letters
//! (`no_anchor`) for events that have neither an anchor nor an IP to resolve one from.
//!
//! Arrangements: `decnet.attackers` as an upsert arrangement keyed by attacker uuid
//! (ties within an epoch go to the later record); the IP index (IP → the attacker whose
//! row most recently claimed it); the events awaiting an anchor, keyed by IP.
//!
//! An event whose IP is not known yet waits and is anchored in the epoch its attacker
//! row arrives, whatever the order of the input. Anchoring is final: the anchored event
//! is emitted once (insertions only, like the tags it yields, which are never updated),
//! and it is retired from the awaiting arrangement one epoch later through a feedback
//! loop, so that state holds only the events still waiting. A later change of the
//! attacker row does not move tags already made.
//!
//! Canary triggers name the attacker's address `src_ip`; `attacker_ip` wins when both
//! are present. The literal IP `Unknown` (DECNET's placeholder) counts as no IP.

use std::sync::Arc;

use differential_dataflow::operators::arrange::upsert::arrange_from_upsert;
use differential_dataflow::operators::iterate::VecVariable;
use differential_dataflow::trace::implementations::{KeyBatcher, KeySpine, ValBuilder, ValSpine};
use differential_dataflow::AsCollection;
use timely::dataflow::operators::core::OkErr;
use timely::dataflow::operators::vec::{Filter, Map};

use crate::json::Json;
use crate::record::{AttackerRow, DeadLetter, Event, Pos, Reason, Table, TableRow, TableUpdate};
use crate::shapes;
use crate::types::{ArrangedByKey, Coll, Diff, Scope, Time};

/// The stage's outputs.
pub struct Anchored<'s> {
    /// Events with an anchor, ready for fan-out.
    pub events: Coll<'s, Event>,
    /// Events whose IP has no attacker (yet), keyed by IP.
    pub pending: Coll<'s, (String, Event)>,
    pub dead_letters: Coll<'s, DeadLetter>,
}

impl<'s> Anchored<'s> {
    /// The outputs, moved out of the stage's region into `outer`.
    pub fn leave<'o>(self, outer: Scope<'o>) -> Anchored<'o> {
        Anchored {
            events: self.events.leave_region(outer),
            pending: self.pending.leave_region(outer),
            dead_letters: self.dead_letters.leave_region(outer),
        }
    }
}

/// What anchoring needs from an event.
enum Need {
    Nothing,
    Ip(String),
    Impossible,
}

fn need(event: &Event) -> Need {
    if event.source_kind.is_none() || event.has_anchor() {
        return Need::Nothing;
    }
    let ip = event
        .str_field("attacker_ip")
        .or_else(|| event.topic.starts_with("canary.").then(|| event.str_field("src_ip")).flatten());
    match ip {
        Some(ip) if ip != "Unknown" => Need::Ip(ip.to_string()),
        _ => Need::Impossible,
    }
}

/// The stage.
// The `Result`s below only route records to outputs; they are not errors.
#[allow(clippy::result_large_err)]
pub fn stage<'s>(events: Coll<'s, Event>, tables: Coll<'s, TableUpdate>) -> Anchored<'s> {
    let by_ip = attackers_by_ip(tables);

    // One pass routes every event: ready as it is, waiting for its IP, or a dead letter.
    let (known, dead_letters) = events
        .inner
        .flat_map(|(e, t, r): (Event, Time, Diff)| shapes::expand(e).into_iter().map(move |e| (e, t, r)))
        .ok_err::<Vec<_>, _, Vec<_>, _, _>(|(e, t, r): (Event, Time, Diff)| match need(&e) {
            Need::Nothing => Ok((Ok(e), t, r)),
            Need::Ip(ip) => Ok((Err((ip, e)), t, r)),
            Need::Impossible => Err((
                DeadLetter {
                    pos: e.pos,
                    topic: Some(e.topic),
                    reason: Reason::NoAnchor,
                    detail: "no attacker_uuid, identity_uuid or IP to resolve one from".to_string(),
                },
                t,
                r,
            )),
        });
    let (ready, awaiting) =
        known.ok_err::<Vec<_>, _, Vec<_>, _, _>(|(routed, t, r): (Result<Event, (String, Event)>, Time, Diff)| {
            match routed {
                Ok(e) => Ok((e, t, r)),
                Err(waiting) => Err((waiting, t, r)),
            }
        });
    let (ready, awaiting, dead_letters) =
        (ready.as_collection(), awaiting.as_collection(), dead_letters.as_collection());

    // Events anchored in an epoch leave the awaiting collection in the next one.
    let (retire, retired) = VecVariable::new(awaiting.scope(), 1);
    let awaiting = awaiting.concat(retired.clone().negate());
    let matched = awaiting
        .clone()
        .arrange_by_key_named("events awaiting an anchor")
        .join_core(by_ip, |ip, event, attacker| Some((ip.clone(), event.clone(), attacker.clone())));
    // Only the first match of an event counts; its retraction (once retired) is not news.
    // The join may split one time's output into pieces of both signs, so consolidate
    // per time (an arrangement, which compacts away once the retraction arrives) first.
    let first_matches = matched
        .consolidate_named::<_, KeySpine<_, _, _>, _>("first anchors", KeyBatcher::new, |key, &()| key.clone())
        .inner
        .filter(|(_, _, diff)| *diff > 0)
        .as_collection();
    let anchored_pairs = first_matches.clone().map(|(ip, event, _)| (ip, event));
    retire.set(anchored_pairs.clone());
    // Still waiting: what awaits, less what was anchored and not retired yet.
    let pending = awaiting.concat(anchored_pairs.negate()).concat(retired);
    let resolved = first_matches.map(|(_, mut event, attacker)| {
        Arc::make_mut(&mut event.payload).set("attacker_uuid", Json::Str(attacker));
        event
    });
    Anchored { events: ready.concat(resolved), pending, dead_letters }
}

/// IP → attacker uuid, from the `decnet.attackers` upserts.
fn attackers_by_ip<'s>(tables: Coll<'s, TableUpdate>) -> ArrangedByKey<'s, String, String> {
    // Upserts keep, per key, the greatest value among those of one epoch; leading with
    // the position makes that the latest record, and a tombstone stays a value (`None`
    // row) so that a later delete beats an earlier insert of the same epoch. Records that
    // an earlier epoch's greater position beats are dropped first (`latest`).
    let upserts = tables.inner.flat_map(|(update, time, diff): (TableUpdate, Time, Diff)| {
        let TableUpdate { pos, table, key, row } = update;
        if table != Table::Attackers {
            return None;
        }
        let row = match row {
            Some(TableRow::Attacker(row)) => Some(row),
            _ => None,
        };
        (diff > 0).then_some((key, Some((pos, row)), time))
    });
    let upserts = crate::latest::newer_only(upserts, "decnet.attackers");
    let attackers =
        arrange_from_upsert::<ValBuilder<_, _, _, _>, ValSpine<String, (Pos, Option<AttackerRow>), Time, Diff>, _, _>(
            upserts,
            "decnet.attackers",
        );
    attackers
        .as_collection(|_, (pos, row)| row.as_ref().and_then(|r| r.ip.clone().map(|ip| (ip, (*pos, r.uuid.clone())))))
        .flat_map(|x| x)
        .reduce_named("ip index", |_ip, claims, out| {
            // `claims` are sorted; the last is the most recent row claiming the IP.
            if let Some(((_, uuid), _)) = claims.last() {
                out.push((uuid.clone(), 1));
            }
        })
        .arrange_by_key_named("attackers by ip")
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use differential_dataflow::input::Input;

    use super::*;
    use crate::record::AttackerRow;

    type Captured<D> = Arc<Mutex<Vec<(D, Time, Diff)>>>;

    fn event(offset: u64, payload: &str) -> Event {
        Event {
            pos: Pos { ts: 0, input: 0, offset },
            topic: "attacker.observed".into(),
            event_type: String::new(),
            source_kind: Some("session".into()),
            event_time: None,
            payload: Arc::new(Json::parse(payload).unwrap()),
        }
    }

    fn attacker(offset: u64, uuid: &str, ip: Option<&str>) -> TableUpdate {
        TableUpdate {
            pos: Pos { ts: 0, input: 0, offset },
            table: Table::Attackers,
            key: uuid.into(),
            row: ip.map(|ip| {
                TableRow::Attacker(AttackerRow { uuid: uuid.into(), ip: Some(ip.into()), identity_id: None })
            }),
        }
    }

    fn consolidated<D: Ord + Clone>(captured: &Captured<D>) -> Vec<(D, Time, Diff)> {
        let mut updates = captured.lock().unwrap().clone();
        differential_dataflow::consolidation::consolidate_updates(&mut updates);
        updates
    }

    /// Epoch 0: an event whose IP is unknown. Epoch 1: its attacker arrives. Epoch 2: the
    /// attacker is deleted. Epoch 3: the IP moves to another attacker. Epoch 4: a second
    /// event from the IP.
    #[test]
    fn events_wait_for_their_attacker_and_are_anchored_once() {
        let anchored: Captured<Event> = Arc::default();
        let pending: Captured<(String, Event)> = Arc::default();
        let dead: Captured<DeadLetter> = Arc::default();
        let (a, p, d) = (Arc::clone(&anchored), Arc::clone(&pending), Arc::clone(&dead));
        timely::execute_directly(move |worker| {
            let (mut events, mut tables) = worker.dataflow::<Time, _, _>(|scope| {
                let (events_in, events) = scope.new_collection::<Event, Diff>();
                let (tables_in, tables) = scope.new_collection::<TableUpdate, Diff>();
                let out = stage(events, tables);
                out.events.inspect(move |x| a.lock().unwrap().push(x.clone()));
                out.pending.inspect(move |x| p.lock().unwrap().push(x.clone()));
                out.dead_letters.inspect(move |x| d.lock().unwrap().push(x.clone()));
                (events_in, tables_in)
            });
            let step = |events: &mut differential_dataflow::input::InputSession<Time, Event, Diff>,
                        tables: &mut differential_dataflow::input::InputSession<Time, TableUpdate, Diff>,
                        t: Time| {
                events.advance_to(t);
                tables.advance_to(t);
            };
            events.insert(event(0, r#"{"attacker_ip":"192.0.2.1"}"#));
            events.insert(event(1, r#"{"attacker_uuid":"known"}"#));
            events.insert(event(2, r#"{"attacker_ip":"Unknown"}"#));
            step(&mut events, &mut tables, 1);
            tables.insert(attacker(3, "a-1", Some("192.0.2.1")));
            step(&mut events, &mut tables, 2);
            tables.insert(attacker(4, "a-1", None));
            step(&mut events, &mut tables, 3);
            tables.insert(attacker(5, "a-2", Some("192.0.2.1")));
            step(&mut events, &mut tables, 4);
            events.insert(event(6, r#"{"attacker_ip":"192.0.2.1"}"#));
        });
        let waiting = event(0, r#"{"attacker_ip":"192.0.2.1"}"#);
        let resolved = |offset: u64, uuid: &str| {
            event(offset, &format!(r#"{{"attacker_ip":"192.0.2.1","attacker_uuid":"{uuid}"}}"#))
        };
        let mut want_anchored = vec![
            (event(1, r#"{"attacker_uuid":"known"}"#), 0, 1),
            (resolved(0, "a-1"), 1, 1),
            (resolved(6, "a-2"), 4, 1),
        ];
        want_anchored.sort();
        assert_eq!(consolidated(&anchored), want_anchored, "anchored once, never retracted");
        let key = |e: &Event| ("192.0.2.1".to_string(), e.clone());
        assert_eq!(consolidated(&pending), vec![(key(&waiting), 0, 1), (key(&waiting), 1, -1)]);
        let dead = consolidated(&dead);
        assert_eq!(dead.len(), 1);
        assert_eq!((dead[0].0.reason, dead[0].0.pos.offset, dead[0].1), (Reason::NoAnchor, 2, 0));
    }
}
