//! Anchor: events without an attacker_uuid / identity_uuid join the attackers by IP.
//!
//! Input: decoded [`Event`]s and the table upserts. Output: anchored events (with
//! `attacker_uuid` written into the payload, as DECNET does before deriving the
//! source_id), the collection of events still waiting for their IP, and dead letters
//! (`no_anchor`) for events that have neither an anchor nor an IP to resolve one from.
//!
//! State: the `decnet.attackers` rows (per key the row of the greatest position seen,
//! tombstones included), the IP index (per IP the attackers whose current row claims it;
//! the claim of the greatest position wins) and the events awaiting an anchor, keyed by
//! IP. Epochs are processed whole and in order once both inputs' frontiers have passed
//! them: first the epoch's attacker rows, in position order, then the events waiting for
//! an IP that now resolves, then the epoch's events. So an event whose IP is not known
//! yet waits and is anchored in the epoch its attacker row arrives, whatever the order of
//! the input, and the result is that of a join of the events with the IP index as of
//! their epoch. Anchoring is final: the anchored event is emitted once (insertions only,
//! like the tags it yields, which are never updated); a later change of the attacker row
//! does not move tags already made. `pending` holds exactly the events still waiting: an
//! insertion when one starts to wait, its retraction in the epoch it is anchored.
//!
//! Sharding: the attacker rows (one table, small beside the events) are broadcast, so
//! every worker holds the whole IP index and anchors the events it already has; events
//! are not exchanged.
//!
//! Canary triggers name the attacker's address `src_ip`; `attacker_ip` wins when both
//! are present. The literal IP `Unknown` (DECNET's placeholder) counts as no IP.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use differential_dataflow::AsCollection;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::core::OkErr;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::{Broadcast, Map};
use timely::dataflow::operators::Capability;

use crate::json::Json;
use crate::record::{AttackerRow, DeadLetter, Event, Pos, Reason, Table, TableRow, TableUpdate};
use crate::shapes;
use crate::types::{Coll, Diff, Scope, Time};

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
    let (ready, awaiting) = known.ok_err::<Vec<_>, _, Vec<_>, _, _>(split);
    let rows = tables
        .inner
        .flat_map(|(update, time, diff): (TableUpdate, Time, Diff)| {
            let TableUpdate { pos, table, key, row } = update;
            let row = match row {
                Some(TableRow::Attacker(row)) => Some(row),
                _ => None,
            };
            (table == Table::Attackers && diff > 0).then_some(((key, pos, row), time, diff))
        })
        .broadcast();
    let (resolved, pending) = awaiting
        .binary_frontier::<_, CapacityContainerBuilder<Vec<Routed>>, _, _, _, _>(
            rows,
            Pipeline,
            Pipeline,
            "anchor by ip",
            |_cap, _info| {
                let mut index = IpIndex::default();
                let mut waiting: HashMap<String, Vec<(Event, Diff)>> = HashMap::new();
                let mut stash: BTreeMap<Time, AnchorEpoch> = BTreeMap::new();
                move |(events, events_frontier), (rows, rows_frontier), output| {
                    events.for_each(|cap, data| {
                        for ((ip, event), time, diff) in data.drain(..) {
                            let epoch = stash.entry(time).or_insert_with(|| AnchorEpoch::new(cap.delayed(&time, 0)));
                            epoch.events.push((ip, event, diff));
                        }
                    });
                    rows.for_each(|cap, data| {
                        for (row, time, _) in data.drain(..) {
                            let epoch = stash.entry(time).or_insert_with(|| AnchorEpoch::new(cap.delayed(&time, 0)));
                            epoch.rows.push(row);
                        }
                    });
                    while let Some(entry) = stash.first_entry() {
                        let time = *entry.key();
                        if events_frontier.frontier().less_equal(&time) || rows_frontier.frontier().less_equal(&time) {
                            break;
                        }
                        let AnchorEpoch { cap, mut rows, events } = entry.remove();
                        let mut session = output.session(&cap);
                        rows.sort_by_key(|(_, pos, _)| *pos);
                        for ip in index.apply(rows) {
                            let Some(attacker) = index.winner(&ip) else { continue };
                            for (event, diff) in waiting.remove(&ip).into_iter().flatten() {
                                session.give((Err((ip.clone(), event.clone())), time, -diff));
                                session.give((Ok(anchored(event, attacker)), time, diff));
                            }
                        }
                        for (ip, event, diff) in events {
                            match index.winner(&ip) {
                                Some(attacker) => session.give((Ok(anchored(event, attacker)), time, diff)),
                                None => {
                                    session.give((Err((ip.clone(), event.clone())), time, diff));
                                    waiting.entry(ip).or_default().push((event, diff));
                                }
                            }
                        }
                    }
                }
            },
        )
        .ok_err::<Vec<_>, _, Vec<_>, _, _>(split);
    Anchored {
        events: ready.as_collection().concat(resolved.as_collection()),
        pending: pending.as_collection(),
        dead_letters: dead_letters.as_collection(),
    }
}

/// Anchored events to one side, events waiting for their IP (and changes of them) to the other.
#[allow(clippy::result_large_err)]
fn split((routed, t, r): Routed) -> Result<(Event, Time, Diff), (Waiting, Time, Diff)> {
    match routed {
        Ok(e) => Ok((e, t, r)),
        Err(waiting) => Err((waiting, t, r)),
    }
}

/// `event` with the attacker its IP resolved to.
fn anchored(mut event: Event, attacker: &str) -> Event {
    Arc::make_mut(&mut event.payload).set("attacker_uuid", Json::Str(attacker.to_string()));
    event
}

/// An event waiting for its IP, keyed by the IP.
type Waiting = (String, Event);

/// What the anchoring operator emits: an anchored event, or a change of the waiting ones.
type Routed = (Result<Event, Waiting>, Time, Diff);

/// An attacker row as the anchor reads it: table key, position, row (`None`: tombstone).
type Row = (String, Pos, Option<AttackerRow>);

/// The updates of one epoch not yet complete, with the capability to emit at its time.
struct AnchorEpoch {
    cap: Capability<Time>,
    rows: Vec<Row>,
    events: Vec<(String, Event, Diff)>,
}

impl AnchorEpoch {
    fn new(cap: Capability<Time>) -> AnchorEpoch {
        AnchorEpoch { cap, rows: Vec::new(), events: Vec::new() }
    }
}

/// IP → attacker uuid, from the `decnet.attackers` upserts.
#[derive(Default)]
struct IpIndex {
    /// Per table key, the position and IP claim (`None`: no IP or a tombstone) of the
    /// greatest position seen.
    rows: HashMap<String, (Pos, Option<(String, String)>)>,
    /// Per IP, the claims of the current rows: (position, attacker uuid).
    claims: HashMap<String, BTreeSet<(Pos, String)>>,
}

impl IpIndex {
    /// Applies rows in position order; returns the IPs that gained a claim.
    fn apply(&mut self, rows: Vec<Row>) -> BTreeSet<String> {
        let mut claimed = BTreeSet::new();
        for (key, pos, row) in rows {
            // The latest record wins: one older than what the key holds is dropped.
            if self.rows.get(&key).is_some_and(|(seen, _)| *seen >= pos) {
                continue;
            }
            let claim = row.and_then(|r| r.ip.map(|ip| (ip, r.uuid)));
            if let Some((ip, uuid)) = &claim {
                self.claims.entry(ip.clone()).or_default().insert((pos, uuid.clone()));
                claimed.insert(ip.clone());
            }
            // The key's previous row gives up its claim.
            if let Some((old, Some((ip, uuid)))) = self.rows.insert(key, (pos, claim)) {
                let emptied = self.claims.get_mut(&ip).is_some_and(|set| {
                    set.remove(&(old, uuid));
                    set.is_empty()
                });
                if emptied {
                    self.claims.remove(&ip);
                }
            }
        }
        claimed
    }

    /// The attacker an IP resolves to: the most recent row claiming it.
    fn winner(&self, ip: &str) -> Option<&str> {
        self.claims.get(ip).and_then(|set| set.last()).map(|(_, uuid)| uuid.as_str())
    }
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
