//! Anchor: events without an attacker_uuid / identity_uuid join the attackers by IP.
//!
//! Input: decoded [`Event`]s and the table upserts. Output: anchored events (with
//! `attacker_uuid` written into the payload, as DECNET does before deriving the
//! source_id), the collection of events still waiting for their IP, and dead letters
//! (`no_anchor`) for events that have neither an anchor nor an IP to resolve one from.
//!
//! Arrangements: `decnet.attackers` as an upsert arrangement keyed by attacker uuid
//! (ties within an epoch go to the later record); the IP index (IP → the attacker whose
//! row most recently claimed it); the events awaiting an anchor, keyed by IP. An event
//! whose IP is not known yet stays in the pending collection and is anchored in the
//! epoch its attacker row arrives, whatever the order of the input.
//!
//! Canary triggers name the attacker's address `src_ip`; `attacker_ip` wins when both
//! are present. The literal IP `Unknown` (DECNET's placeholder) counts as no IP.

use differential_dataflow::operators::arrange::upsert::arrange_from_upsert;
use differential_dataflow::trace::implementations::{ValBuilder, ValSpine};
use timely::dataflow::operators::vec::Map;

use crate::json::Json;
use crate::record::{AttackerRow, DeadLetter, Event, Pos, Reason, Table, TableRow, TableUpdate};
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
    let ip = event.str_field("attacker_ip").or_else(|| {
        event.topic.starts_with("canary.").then(|| event.str_field("src_ip")).flatten()
    });
    match ip {
        Some(ip) if ip != "Unknown" => Need::Ip(ip.to_string()),
        _ => Need::Impossible,
    }
}

/// The stage.
pub fn stage<'s>(events: Coll<'s, Event>, tables: Coll<'s, TableUpdate>) -> Anchored<'s> {
    let by_ip = attackers_by_ip(tables);

    let ready = events.clone().filter(|e| matches!(need(e), Need::Nothing));
    let dead_letters = events.clone().flat_map(|e| match need(&e) {
        Need::Impossible => Some(DeadLetter {
            pos: e.pos,
            topic: Some(e.topic),
            reason: Reason::NoAnchor,
            detail: "no attacker_uuid, identity_uuid or IP to resolve one from".to_string(),
        }),
        _ => None,
    });
    let awaiting = events.flat_map(|e| match need(&e) {
        Need::Ip(ip) => Some((ip, e)),
        _ => None,
    });

    let matched = awaiting
        .clone()
        .arrange_by_key_named("events awaiting an anchor")
        .join_core(by_ip, |ip, event, attacker| Some((ip.clone(), event.clone(), attacker.clone())));
    let pending = awaiting.concat(matched.clone().map(|(ip, event, _)| (ip, event)).negate());
    let resolved = matched.map(|(_, mut event, attacker)| {
        event.payload.set("attacker_uuid", Json::Str(attacker));
        event
    });
    Anchored { events: ready.concat(resolved), pending, dead_letters }
}

/// IP → attacker uuid, from the `decnet.attackers` upserts.
fn attackers_by_ip<'s>(tables: Coll<'s, TableUpdate>) -> ArrangedByKey<'s, String, String> {
    // Upserts keep, per key, the greatest value among those of one epoch; leading with
    // the position makes that the latest record, and a tombstone stays a value (`None`
    // row) so that a later delete beats an earlier insert of the same epoch.
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
    let attackers = arrange_from_upsert::<ValBuilder<_, _, _, _>, ValSpine<String, (Pos, Option<AttackerRow>), Time, Diff>, _, _>(
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
