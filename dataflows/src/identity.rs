//! Identity: attackers → canonical identities → canonical campaigns (DESIGN §1.2, §2.5).
//!
//! Input: the table upserts and the bus events (after anchoring). Output ([`References`]),
//! as collections that follow every change of their inputs, retractions included:
//! * `identity_canonical` — (identity, canonical identity) for every identity that
//!   exists (below); an identity merged into nothing maps to itself.
//! * `attacker_identity` — (attacker, canonical identity of the attacker's identity).
//! * `campaign_canonical` — (campaign, canonical campaign), like identities.
//! * `identity_campaign` — (canonical identity, canonical campaign of its own campaign).
//! * `dead_letters` — one `merge_cycle` letter per cycle of `merged_into`, naming its
//!   members in pointer order; it is retracted when the cycle breaks.
//!
//! Sources, each an upsert per key where the latest record wins: the greatest position,
//! whatever the epochs the records come in ([`crate::latest`]), as in the anchor stage:
//! * attacker → identity: `decnet.attackers` rows (`identity_id`; a tombstone detaches),
//!   `identity.observation.linked` (`attacker_uuid` + `identity_uuid`), and
//!   `identity.unmerged` naming an `attacker_uuid`, which detaches that attacker from its
//!   identity (DECNET's shape: `{"attacker_ip","attacker_uuid"}`).
//! * identity → merged_into: `decnet.attacker_identities` rows (`merged_into_uuid`; null
//!   stands alone, a tombstone deletes the row), `identity.merged` (`loser_uuid` into
//!   `winner_uuid`, else into `identity_uuid`, which DECNET sets to the winner), and
//!   `identity.unmerged` naming a `loser_uuid` (or only an `identity_uuid`), which makes
//!   that identity stand alone again whatever it was merged into.
//! * identity → campaign: `campaign_id` of identity rows (a tombstone unassigns),
//!   `identity.campaign.assigned` (`identity_uuid` + `campaign_uuid`, else `campaign_id`),
//!   and `identity.formed` when it carries a `campaign_uuid` (DECNET's formed events do).
//! * campaign → merged_into: `decnet.campaigns` rows, like identity rows.
//!
//! Shapes, from DECNET's corpus: `identity.formed` names `observation_uuids`, which are
//! observation ids (`obs-…`), not attackers, so it links no attacker; it declares the
//! identity (and its campaign). An `identity.unmerged` naming only an `attacker_ip` is
//! not resolved here (the anchor stage passes identity events through unanchored): it
//! is a dead letter (`missing_field`), as are identity events missing the uuids they
//! need and uuid fields that are not strings (`wrong_type`).
//!
//! Which identities exist: those named by any identity event (from then on), the keys of
//! live identity rows and of merge and unmerge records, the targets of current pointers,
//! the current identities of attackers and the identities with a current campaign.
//! Campaigns: those named by events, live campaign rows, pointer targets and current
//! campaigns of identities. A canonical identity's campaign is its own assignment; a
//! merged identity's assignment is kept but reaches the rollups only through its
//! canonical identity.
//!
//! Closure: three structural iterations in nested scopes, each terminating whatever the
//! pointers, because every identity has at most one pointer: (1) trim — repeatedly keep
//! the identities that some kept identity points to; what remains are exactly the
//! identities on cycles; (2) each cycle's least uuid, propagated around the cycle, is its
//! representative; (3) labels flow from the roots (identities with no pointer) and the
//! representatives down the reversed pointers, so every identity gets exactly one. An
//! identity leading into a cycle maps to the cycle's representative; nothing is lost.
//!
//! Arrangements: the four upserts (`attacker identities`, `identity links`,
//! `identity campaigns`, `campaign links`; one record per key, tombstones kept as values
//! so that a later delete beats an earlier insert of the same epoch); per closure the
//! node set, the pointers by node and by target, the nodes on cycles and their pointers,
//! and the labels inside the iterations; `canonical identities`, `canonical campaigns`,
//! `attackers by identity`, `canonical identities by campaign`. State: the latest record
//! of every key of the four upserts, the identities and campaigns named by events, and
//! the closures (one label per node).
//!
//! Dead letters: `merge_cycle` (position and topic of the cycle's latest pointer record),
//! `missing_field` and `wrong_type` for unusable identity events. A cycle's letter is
//! retracted when the cycle breaks. The file run writes the cycles of the final state (so
//! its report does not depend on the epochs); a sink that only appends as epochs commit
//! (the Kafka job's dead-letter topic) keeps every cycle reported at an epoch's end.

use differential_dataflow::operators::arrange::upsert::arrange_from_upsert;
use differential_dataflow::operators::iterate::Iterate;
use differential_dataflow::trace::implementations::{ValBuilder, ValSpine};
use differential_dataflow::AsCollection;
use serde::{Deserialize, Serialize};
use timely::dataflow::operators::core::Concat;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::StreamVec;

use crate::json::Json;
use crate::record::{DeadLetter, Event, Pos, Reason, Table, TableRow, TableUpdate};
use crate::types::{ArrangedByKey, Coll, Diff, Scope, Time};

const IDENTITIES_TOPIC: &str = "decnet.attacker_identities";
const CAMPAIGNS_TOPIC: &str = "decnet.campaigns";

/// The stage's outputs.
pub struct References<'s> {
    /// (attacker, canonical identity).
    pub attacker_identity: Coll<'s, (String, String)>,
    /// (identity, canonical identity), for every identity.
    pub identity_canonical: Coll<'s, (String, String)>,
    /// (canonical identity, canonical campaign).
    pub identity_campaign: Coll<'s, (String, String)>,
    /// (campaign, canonical campaign), for every campaign.
    pub campaign_canonical: Coll<'s, (String, String)>,
    pub dead_letters: Coll<'s, DeadLetter>,
}

impl<'s> References<'s> {
    /// The outputs, brought into the region `inner`.
    pub fn enter_region<'i>(&self, inner: Scope<'i>) -> References<'i> {
        References {
            attacker_identity: self.attacker_identity.clone().enter_region(inner),
            identity_canonical: self.identity_canonical.clone().enter_region(inner),
            identity_campaign: self.identity_campaign.clone().enter_region(inner),
            campaign_canonical: self.campaign_canonical.clone().enter_region(inner),
            dead_letters: self.dead_letters.clone().enter_region(inner),
        }
    }

    /// The outputs, moved out of the stage's region into `outer`.
    pub fn leave<'o>(self, outer: Scope<'o>) -> References<'o> {
        References {
            attacker_identity: self.attacker_identity.leave_region(outer),
            identity_canonical: self.identity_canonical.leave_region(outer),
            identity_campaign: self.identity_campaign.leave_region(outer),
            campaign_canonical: self.campaign_canonical.leave_region(outer),
            dead_letters: self.dead_letters.leave_region(outer),
        }
    }
}

/// What the latest record of an identity or campaign says about where it points.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum Link {
    /// The row was deleted (a tombstone).
    Deleted,
    /// Merged into nothing: a row with a null `merged_into_uuid`, or an unmerge.
    Standalone,
    /// Merged into `into` by a record on `topic`.
    MergedInto { into: String, topic: String },
}

/// One pointer of a closure: merged into `into` by the record at `pos` on `topic`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Pointer {
    into: String,
    pos: Pos,
    topic: String,
}

/// One thing a record says.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Fact {
    /// The attacker's identity (`None`: detached, or its row deleted).
    Attacker {
        attacker: String,
        pos: Pos,
        identity: Option<String>,
    },
    IdentityLink {
        identity: String,
        pos: Pos,
        link: Link,
    },
    /// The identity's campaign (`None`: its row deleted, or no campaign).
    IdentityCampaign {
        identity: String,
        pos: Pos,
        campaign: Option<String>,
    },
    CampaignLink {
        campaign: String,
        pos: Pos,
        link: Link,
    },
    /// An identity named by an event, which exists from then on.
    NamedIdentity(String),
    /// A campaign named by an event, which exists from then on.
    NamedCampaign(String),
    Dead(DeadLetter),
}

/// The facts of a table upsert.
fn table_facts(update: TableUpdate) -> Vec<Fact> {
    let TableUpdate { pos, table, key, row } = update;
    let field = |name: &str| match &row {
        Some(TableRow::Other(row)) => row.get(name).and_then(Json::as_str).filter(|s| !s.is_empty()).map(String::from),
        _ => None,
    };
    let link = |topic: &str| match (&row, field("merged_into_uuid")) {
        (None, _) => Link::Deleted,
        (Some(_), None) => Link::Standalone,
        (Some(_), Some(into)) => Link::MergedInto { into, topic: topic.to_string() },
    };
    match table {
        Table::Attackers => {
            let identity = match &row {
                Some(TableRow::Attacker(row)) => row.identity_id.clone().filter(|i| !i.is_empty()),
                _ => None,
            };
            vec![Fact::Attacker { attacker: key, pos, identity }]
        }
        Table::Identities => vec![
            Fact::IdentityLink { identity: key.clone(), pos, link: link(IDENTITIES_TOPIC) },
            Fact::IdentityCampaign { identity: key, pos, campaign: field("campaign_id") },
        ],
        Table::Campaigns => vec![Fact::CampaignLink { campaign: key, pos, link: link(CAMPAIGNS_TOPIC) }],
        Table::Intel => Vec::new(),
    }
}

/// A uuid field of an event's payload: absent, null and empty are `None`.
fn uuid_field(event: &Event, key: &str) -> Result<Option<String>, (Reason, String)> {
    match event.payload.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Str(s)) => Ok(Some(s.clone()).filter(|s| !s.is_empty())),
        Some(other) => Err((Reason::WrongType, format!("field \"{key}\" is {}, expected string", other.type_name()))),
    }
}

/// The facts of a bus event (none for topics other than `identity.*`).
fn event_facts(event: &Event) -> Vec<Fact> {
    match identity_event_facts(event) {
        Ok(facts) => facts,
        Err((reason, detail)) => {
            vec![Fact::Dead(DeadLetter { pos: event.pos, topic: Some(event.topic.clone()), reason, detail })]
        }
    }
}

fn identity_event_facts(event: &Event) -> Result<Vec<Fact>, (Reason, String)> {
    let pos = event.pos;
    let field = |key: &str| uuid_field(event, key);
    let missing = |what: &str| (Reason::MissingField, format!("{} names no {what}", event.topic));
    let mut facts = Vec::new();
    match event.topic.as_str() {
        "identity.formed" => {
            let identity = field("identity_uuid")?.ok_or_else(|| missing("identity_uuid"))?;
            if let Some(campaign) = field("campaign_uuid")? {
                facts.push(Fact::NamedCampaign(campaign.clone()));
                facts.push(Fact::IdentityCampaign { identity: identity.clone(), pos, campaign: Some(campaign) });
            }
            facts.push(Fact::NamedIdentity(identity));
        }
        "identity.merged" => {
            let loser = field("loser_uuid")?.ok_or_else(|| missing("loser_uuid"))?;
            let winner = match field("winner_uuid")? {
                Some(winner) => winner,
                None => field("identity_uuid")?.ok_or_else(|| missing("winner_uuid or identity_uuid"))?,
            };
            facts.push(Fact::NamedIdentity(loser.clone()));
            facts.push(Fact::NamedIdentity(winner.clone()));
            let link = Link::MergedInto { into: winner, topic: event.topic.clone() };
            facts.push(Fact::IdentityLink { identity: loser, pos, link });
        }
        "identity.unmerged" => {
            let attacker = field("attacker_uuid")?;
            let loser = match (field("loser_uuid")?, &attacker) {
                (Some(loser), _) => Some(loser),
                (None, None) => field("identity_uuid")?,
                (None, Some(_)) => None,
            };
            if attacker.is_none() && loser.is_none() {
                return Err(missing("attacker_uuid, loser_uuid or identity_uuid"));
            }
            if let Some(attacker) = attacker {
                facts.push(Fact::Attacker { attacker, pos, identity: None });
            }
            if let Some(loser) = loser {
                facts.push(Fact::NamedIdentity(loser.clone()));
                facts.push(Fact::IdentityLink { identity: loser, pos, link: Link::Standalone });
            }
        }
        "identity.observation.linked" => {
            let identity = field("identity_uuid")?.ok_or_else(|| missing("identity_uuid"))?;
            if let Some(attacker) = field("attacker_uuid")? {
                facts.push(Fact::Attacker { attacker, pos, identity: Some(identity.clone()) });
            }
            facts.push(Fact::NamedIdentity(identity));
        }
        "identity.campaign.assigned" => {
            let identity = field("identity_uuid")?.ok_or_else(|| missing("identity_uuid"))?;
            let campaign = match field("campaign_uuid")? {
                Some(campaign) => campaign,
                None => field("campaign_id")?.ok_or_else(|| missing("campaign_uuid or campaign_id"))?,
            };
            facts.push(Fact::NamedIdentity(identity.clone()));
            facts.push(Fact::NamedCampaign(campaign.clone()));
            facts.push(Fact::IdentityCampaign { identity, pos, campaign: Some(campaign) });
        }
        _ => {}
    }
    Ok(facts)
}

/// Which closure: names operators and dead letters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Identity,
    Campaign,
}

impl Kind {
    fn plural(self) -> &'static str {
        match self {
            Kind::Identity => "identities",
            Kind::Campaign => "campaigns",
        }
    }
}

/// The detail of a cycle's dead letter: its members in pointer order from the
/// representative, back to it.
fn cycle_detail(kind: Kind, cycle: &[String]) -> String {
    let mut path = cycle.join(" -> ");
    path.push_str(" -> ");
    path.push_str(&cycle[0]);
    format!("merged_into of {} forms a cycle: {path}; all of them map to {}", kind.plural(), cycle[0])
}

type Upserts<'s, V> = StreamVec<'s, Time, (String, Option<(Pos, V)>, Time)>;

/// The latest assignment per key (an attacker's identity, an identity's campaign).
fn latest_assignments<'s>(
    upserts: Upserts<'s, Option<String>>,
    name: &str,
) -> ArrangedByKey<'s, String, (Pos, Option<String>)> {
    let upserts = crate::latest::newer_only(upserts, name);
    arrange_from_upsert::<ValBuilder<_, _, _, _>, ValSpine<String, (Pos, Option<String>), Time, Diff>, _, _>(
        upserts, name,
    )
}

/// The latest link per key (an identity's or campaign's `merged_into`).
fn latest_links<'s>(upserts: Upserts<'s, Link>, name: &str) -> ArrangedByKey<'s, String, (Pos, Link)> {
    let upserts = crate::latest::newer_only(upserts, name);
    arrange_from_upsert::<ValBuilder<_, _, _, _>, ValSpine<String, (Pos, Link), Time, Diff>, _, _>(upserts, name)
}

/// The stage.
pub fn stage<'s>(tables: Coll<'s, TableUpdate>, events: Coll<'s, Event>) -> References<'s> {
    // Upserts take insertions only, as in the anchor stage; positions lead every value so
    // that the greatest value of an epoch is its latest record.
    let from_tables = tables.inner.flat_map(|(update, time, diff): (TableUpdate, Time, Diff)| {
        let facts = if diff > 0 { table_facts(update) } else { Vec::new() };
        facts.into_iter().map(move |fact| (fact, time, diff))
    });
    let from_events = events.inner.flat_map(|(event, time, diff): (Event, Time, Diff)| {
        let facts = if diff > 0 { event_facts(&event) } else { Vec::new() };
        facts.into_iter().map(move |fact| (fact, time, diff))
    });
    let facts = from_tables.concat(from_events);

    let attackers = latest_assignments(
        facts.clone().flat_map(|(fact, time, _)| match fact {
            Fact::Attacker { attacker, pos, identity } => Some((attacker, Some((pos, identity)), time)),
            _ => None,
        }),
        "attacker identities",
    );
    let campaigns_of = latest_assignments(
        facts.clone().flat_map(|(fact, time, _)| match fact {
            Fact::IdentityCampaign { identity, pos, campaign } => Some((identity, Some((pos, campaign)), time)),
            _ => None,
        }),
        "identity campaigns",
    );
    let identity_links = latest_links(
        facts.clone().flat_map(|(fact, time, _)| match fact {
            Fact::IdentityLink { identity, pos, link } => Some((identity, Some((pos, link)), time)),
            _ => None,
        }),
        "identity links",
    );
    let campaign_links = latest_links(
        facts.clone().flat_map(|(fact, time, _)| match fact {
            Fact::CampaignLink { campaign, pos, link } => Some((campaign, Some((pos, link)), time)),
            _ => None,
        }),
        "campaign links",
    );
    let named_identities = facts
        .clone()
        .flat_map(|(fact, time, diff)| match fact {
            Fact::NamedIdentity(identity) => Some((identity, time, diff)),
            _ => None,
        })
        .as_collection();
    let named_campaigns = facts
        .clone()
        .flat_map(|(fact, time, diff)| match fact {
            Fact::NamedCampaign(campaign) => Some((campaign, time, diff)),
            _ => None,
        })
        .as_collection();
    let invalid = facts
        .flat_map(|(fact, time, diff)| match fact {
            Fact::Dead(dead) => Some((dead, time, diff)),
            _ => None,
        })
        .as_collection();

    let identities = named_identities
        .concat(attackers.clone().flat_map_ref(|_, (_, identity)| identity.clone()))
        .concat(
            campaigns_of.clone().flat_map_ref(|identity, (_, campaign)| campaign.as_ref().map(|_| identity.clone())),
        )
        .concat(live_keys(identity_links.clone()));
    let campaigns = named_campaigns
        .concat(campaigns_of.clone().flat_map_ref(|_, (_, campaign)| campaign.clone()))
        .concat(live_keys(campaign_links.clone()));
    let (identity_canonical, identity_cycles) = closure(Kind::Identity, pointers(identity_links), identities);
    let (campaign_canonical, campaign_cycles) = closure(Kind::Campaign, pointers(campaign_links), campaigns);

    let canonical_identities = identity_canonical.clone().arrange_by_key_named("canonical identities");
    let canonical_campaigns = campaign_canonical.clone().arrange_by_key_named("canonical campaigns");
    let attacker_identity = attackers
        .flat_map_ref(|attacker, (_, identity)| identity.clone().map(|identity| (identity, attacker.clone())))
        .arrange_by_key_named("attackers by identity")
        .join_core(canonical_identities.clone(), |_, attacker, canonical| Some((attacker.clone(), canonical.clone())));
    let identity_campaign = campaigns_of
        .join_core(canonical_identities, |identity, (_, campaign), canonical| {
            campaign.clone().filter(|_| identity == canonical).map(|campaign| (campaign, identity.clone()))
        })
        .arrange_by_key_named("canonical identities by campaign")
        .join_core(canonical_campaigns, |_, identity, canonical| Some((identity.clone(), canonical.clone())));
    References {
        attacker_identity,
        identity_canonical,
        identity_campaign,
        campaign_canonical,
        dead_letters: invalid.concat(identity_cycles).concat(campaign_cycles),
    }
}

/// The keys whose latest record is not a tombstone.
fn live_keys<'s>(links: ArrangedByKey<'s, String, (Pos, Link)>) -> Coll<'s, String> {
    links.flat_map_ref(|key, (_, link)| (*link != Link::Deleted).then(|| key.clone()))
}

/// The current pointers: (key, where it is merged into).
fn pointers<'s>(links: ArrangedByKey<'s, String, (Pos, Link)>) -> Coll<'s, (String, Pointer)> {
    links.flat_map_ref(|key, (pos, link)| match link {
        Link::MergedInto { into, topic } => {
            Some((key.clone(), Pointer { into: into.clone(), pos: *pos, topic: topic.clone() }))
        }
        _ => None,
    })
}

/// The closure of `pointers` over `named` and the pointers' ends: every node with its
/// canonical node, and a dead letter per cycle.
fn closure<'s>(
    kind: Kind,
    pointers: Coll<'s, (String, Pointer)>,
    named: Coll<'s, String>,
) -> (Coll<'s, (String, String)>, Coll<'s, DeadLetter>) {
    let what = kind.plural();
    let nodes = named
        .concat(pointers.clone().flat_map(|(node, pointer)| [node, pointer.into]))
        .threshold_named(&format!("{what}: nodes"), |_, _| 1);
    let by_node = pointers.clone().arrange_by_key_named(&format!("{what}: pointers by node"));
    let by_target = pointers
        .map(|(node, pointer)| (pointer.into, node))
        .arrange_by_key_named(&format!("{what}: pointers by target"));
    let merged = nodes
        .clone()
        .map(|node| (node, ()))
        .arrange_by_key_named(&format!("{what}: node set"))
        .join_core(by_node.clone(), |node, _, _| Some(node.clone()));
    let roots = nodes.concat(merged.clone().negate());

    // (1) What some remaining node points to remains: in the end, exactly the cycles.
    let trim = by_node.clone();
    let trim_name = format!("{what}: cycle trim");
    let on_cycles = merged.iterate(move |scope, remaining| {
        let remaining = remaining.map(|node| (node, ())).arrange_by_key_named(&trim_name);
        remaining
            .clone()
            .join_core(trim.enter(scope), |_, _, pointer| Some((pointer.into.clone(), ())))
            .arrange_by_key_named(&trim_name)
            .join_core(remaining, |node, _, _| Some(node.clone()))
            .threshold_named(&trim_name, |_, _| 1)
    });

    // (2) The least member of a cycle goes round it.
    let cycle_links = on_cycles
        .clone()
        .map(|node| (node, ()))
        .arrange_by_key_named(&format!("{what}: on cycles"))
        .join_core(by_node.clone(), |node, _, pointer| Some((pointer.into.clone(), node.clone())))
        .arrange_by_key_named(&format!("{what}: cycle pointers by target"));
    let least_name = format!("{what}: cycle representative");
    let representatives = on_cycles.map(|node| (node.clone(), node)).iterate(move |scope, least| {
        least
            .clone()
            .arrange_by_key_named(&least_name)
            .join_core(cycle_links.enter(scope), |_, label, node| Some((node.clone(), label.clone())))
            .concat(least)
            .reduce_named(&least_name, |_, labels, out| out.push((labels[0].0.clone(), 1)))
    });

    // (3) Labels flow from roots and representatives against the pointers.
    let seeds = roots.map(|root| (root.clone(), root)).concat(representatives.clone());
    let label_name = format!("{what}: canonical");
    let canonical = seeds.clone().iterate(move |scope, labels| {
        labels
            .arrange_by_key_named(&label_name)
            .join_core(by_target.enter(scope), |_, label, node| Some((node.clone(), label.clone())))
            .concat(seeds.enter(scope))
            .threshold_named(&label_name, |_, _| 1)
    });

    let cycles = representatives
        .arrange_by_key_named(&format!("{what}: cycle members"))
        .join_core(by_node, |node, representative, pointer| {
            Some((representative.clone(), (node.clone(), pointer.clone())))
        })
        .reduce_named(&format!("{what}: merge cycles"), move |representative, members, out| {
            out.push((cycle_letter(kind, representative, members), 1))
        })
        .map(|(_, letter)| letter);
    (canonical, cycles)
}

/// The dead letter of one cycle, from its members and their pointers.
fn cycle_letter(kind: Kind, representative: &str, members: &[(&(String, Pointer), Diff)]) -> DeadLetter {
    let into: std::collections::BTreeMap<&str, &str> =
        members.iter().map(|((node, pointer), _)| (node.as_str(), pointer.into.as_str())).collect();
    let mut cycle = vec![representative.to_string()];
    let mut at = representative;
    while let Some(&next) = into.get(at) {
        if next == representative || cycle.len() > members.len() {
            break;
        }
        cycle.push(next.to_string());
        at = next;
    }
    // The record that closed the cycle is its latest pointer.
    let latest = members.iter().map(|((_, p), _)| p).max_by_key(|p| p.pos).expect("a cycle has members");
    DeadLetter {
        pos: latest.pos,
        topic: Some(latest.topic.clone()),
        reason: Reason::MergeCycle,
        detail: cycle_detail(kind, &cycle),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::{Arc, Mutex};

    use differential_dataflow::input::{Input as _, InputSession};

    use super::*;
    use crate::record::AttackerRow;

    type Captured<D> = Arc<Mutex<Vec<(D, Time, Diff)>>>;
    type Pairs = BTreeSet<(String, String)>;

    /// One input record.
    #[derive(Clone, Debug)]
    enum Record {
        Table(TableUpdate),
        Event(Event),
    }

    fn obj(fields: &[(&str, Option<&str>)]) -> Json {
        Json::Obj(
            fields.iter().map(|(k, v)| (k.to_string(), v.map_or(Json::Null, |v| Json::Str(v.to_string())))).collect(),
        )
    }

    fn pos(input: u32, offset: u64) -> Pos {
        Pos { ts: 0, input, offset }
    }

    /// A record's position as inserted at `epoch`: timestamped with it.
    fn at_epoch(pos: Pos, epoch: Time) -> Pos {
        Pos { ts: epoch as i64, ..pos }
    }

    fn identity_row(pos: Pos, uuid: &str, campaign: Option<&str>, merged_into: Option<&str>) -> Record {
        let row = obj(&[("uuid", Some(uuid)), ("campaign_id", campaign), ("merged_into_uuid", merged_into)]);
        Record::Table(TableUpdate { pos, table: Table::Identities, key: uuid.into(), row: Some(TableRow::Other(row)) })
    }

    fn campaign_row(pos: Pos, uuid: &str, merged_into: Option<&str>) -> Record {
        let row = obj(&[("uuid", Some(uuid)), ("merged_into_uuid", merged_into)]);
        Record::Table(TableUpdate { pos, table: Table::Campaigns, key: uuid.into(), row: Some(TableRow::Other(row)) })
    }

    fn attacker_row(pos: Pos, uuid: &str, identity: Option<&str>) -> Record {
        let row =
            AttackerRow { uuid: uuid.into(), ip: Some("192.0.2.1".into()), identity_id: identity.map(String::from) };
        Record::Table(TableUpdate {
            pos,
            table: Table::Attackers,
            key: uuid.into(),
            row: Some(TableRow::Attacker(row)),
        })
    }

    fn tombstone(pos: Pos, table: Table, key: &str) -> Record {
        Record::Table(TableUpdate { pos, table, key: key.into(), row: None })
    }

    fn event(pos: Pos, topic: &str, fields: &[(&str, Option<&str>)]) -> Record {
        Record::Event(Event {
            pos,
            topic: topic.into(),
            event_type: String::new(),
            source_kind: None,
            event_time: None,
            payload: Arc::new(obj(fields)),
        })
    }

    fn merged(pos: Pos, winner: &str, loser: &str) -> Record {
        event(pos, "identity.merged", &[("winner_uuid", Some(winner)), ("loser_uuid", Some(loser))])
    }

    /// What the stage produced, every update with its time.
    #[derive(Default)]
    struct Captures {
        attacker_identity: Captured<(String, String)>,
        identity_canonical: Captured<(String, String)>,
        identity_campaign: Captured<(String, String)>,
        campaign_canonical: Captured<(String, String)>,
        dead_letters: Captured<DeadLetter>,
    }

    /// Runs the stage over `batches`, each record inserted at its epoch.
    fn run(batches: Vec<(Time, Vec<Record>)>) -> Captures {
        let captures = Captures::default();
        let c = (
            Arc::clone(&captures.attacker_identity),
            Arc::clone(&captures.identity_canonical),
            Arc::clone(&captures.identity_campaign),
            Arc::clone(&captures.campaign_canonical),
            Arc::clone(&captures.dead_letters),
        );
        timely::execute_directly(move |worker| {
            let (mut tables, mut events): (InputSession<Time, TableUpdate, Diff>, InputSession<Time, Event, Diff>) =
                worker.dataflow::<Time, _, _>(|scope| {
                    let (tables_in, tables) = scope.new_collection::<TableUpdate, Diff>();
                    let (events_in, events) = scope.new_collection::<Event, Diff>();
                    let out = stage(tables, events);
                    let (a, i, ic, cc, d) = c.clone();
                    out.attacker_identity.inspect(move |x| a.lock().unwrap().push(x.clone()));
                    out.identity_canonical.inspect(move |x| i.lock().unwrap().push(x.clone()));
                    out.identity_campaign.inspect(move |x| ic.lock().unwrap().push(x.clone()));
                    out.campaign_canonical.inspect(move |x| cc.lock().unwrap().push(x.clone()));
                    out.dead_letters.inspect(move |x| d.lock().unwrap().push(x.clone()));
                    (tables_in, events_in)
                });
            for (epoch, records) in batches.clone() {
                tables.advance_to(epoch);
                events.advance_to(epoch);
                // Records come in the order of their positions, as they do from files and,
                // by their timestamps, from Kafka: a record of a later epoch is a later one.
                for record in records {
                    match record {
                        Record::Table(update) => {
                            tables.insert(TableUpdate { pos: at_epoch(update.pos, epoch), ..update })
                        }
                        Record::Event(event) => events.insert(Event { pos: at_epoch(event.pos, epoch), ..event }),
                    }
                }
            }
        });
        captures
    }

    fn consolidated<D: Ord + Clone>(captured: &Captured<D>) -> Vec<(D, Time, Diff)> {
        let mut updates = captured.lock().unwrap().clone();
        differential_dataflow::consolidation::consolidate_updates(&mut updates);
        updates
    }

    /// The collection at `epoch`; every record must be there once or not at all.
    fn at<D: Ord + Clone + std::fmt::Debug>(captured: &Captured<D>, epoch: Time) -> BTreeSet<D> {
        let mut counts: BTreeMap<D, Diff> = BTreeMap::new();
        for (d, t, r) in captured.lock().unwrap().iter() {
            if *t <= epoch {
                *counts.entry(d.clone()).or_default() += r;
            }
        }
        counts.retain(|_, r| *r != 0);
        assert!(counts.values().all(|r| *r == 1), "multiplicities at {epoch}: {counts:?}");
        counts.into_keys().collect()
    }

    fn pairs(pairs: &[(&str, &str)]) -> Pairs {
        pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    fn updates(updates: &[(&str, &str, Time, Diff)]) -> Vec<((String, String), Time, Diff)> {
        let mut updates: Vec<_> = updates.iter().map(|(a, b, t, r)| ((a.to_string(), b.to_string()), *t, *r)).collect();
        updates.sort();
        updates
    }

    #[test]
    fn chains_of_merges_resolve_to_the_last_winner() {
        let out = run(vec![(
            0,
            vec![
                identity_row(pos(1, 0), "a", None, Some("b")),
                identity_row(pos(1, 1), "b", None, Some("c")),
                identity_row(pos(1, 2), "c", None, None),
                attacker_row(pos(1, 3), "x", Some("a")),
            ],
        )]);
        assert_eq!(
            consolidated(&out.identity_canonical),
            updates(&[("a", "c", 0, 1), ("b", "c", 0, 1), ("c", "c", 0, 1)])
        );
        assert_eq!(consolidated(&out.attacker_identity), updates(&[("x", "c", 0, 1)]));
        assert!(consolidated(&out.dead_letters).is_empty());
    }

    /// Epoch 1 merges a into b, epoch 2 unmerges a, epoch 3 detaches y (DECNET's shape),
    /// epoch 4 merges a into b by its row, epoch 5 deletes a's row.
    #[test]
    fn an_unmerge_moves_the_loser_and_its_attackers_back() {
        let out = run(vec![
            (
                0,
                vec![
                    identity_row(pos(1, 0), "a", None, None),
                    identity_row(pos(1, 1), "b", None, None),
                    attacker_row(pos(1, 2), "x", Some("a")),
                    attacker_row(pos(1, 3), "y", Some("b")),
                ],
            ),
            (1, vec![merged(pos(0, 4), "b", "a")]),
            (2, vec![event(pos(0, 5), "identity.unmerged", &[("loser_uuid", Some("a")), ("winner_uuid", Some("b"))])]),
            (
                3,
                vec![event(
                    pos(0, 6),
                    "identity.unmerged",
                    &[("attacker_ip", Some("192.0.2.1")), ("attacker_uuid", Some("y"))],
                )],
            ),
            (4, vec![identity_row(pos(1, 7), "a", None, Some("b"))]),
            (5, vec![tombstone(pos(1, 8), Table::Identities, "a")]),
        ]);
        assert_eq!(
            consolidated(&out.attacker_identity),
            updates(&[
                ("x", "a", 0, 1),
                ("y", "b", 0, 1),
                ("x", "a", 1, -1),
                ("x", "b", 1, 1),
                ("x", "b", 2, -1),
                ("x", "a", 2, 1),
                ("y", "b", 3, -1),
                ("x", "a", 4, -1),
                ("x", "b", 4, 1),
                ("x", "b", 5, -1),
                ("x", "a", 5, 1),
            ])
        );
        assert_eq!(
            consolidated(&out.identity_canonical),
            updates(&[
                ("a", "a", 0, 1),
                ("b", "b", 0, 1),
                ("a", "a", 1, -1),
                ("a", "b", 1, 1),
                ("a", "b", 2, -1),
                ("a", "a", 2, 1),
                ("a", "a", 4, -1),
                ("a", "b", 4, 1),
                ("a", "b", 5, -1),
                ("a", "a", 5, 1),
            ])
        );
    }

    /// The merge names the winner as `identity_uuid` only, and comes before every row.
    #[test]
    fn a_merge_arriving_before_the_rows_applies_to_them() {
        let out = run(vec![
            (0, vec![event(pos(0, 0), "identity.merged", &[("identity_uuid", Some("w")), ("loser_uuid", Some("l"))])]),
            (
                1,
                vec![
                    attacker_row(pos(1, 1), "x", Some("l")),
                    identity_row(pos(1, 2), "w", Some("c2"), None),
                    campaign_row(pos(1, 3), "c1", None),
                    campaign_row(pos(1, 4), "c2", None),
                ],
            ),
        ]);
        assert_eq!(consolidated(&out.identity_canonical), updates(&[("l", "w", 0, 1), ("w", "w", 0, 1)]));
        assert_eq!(consolidated(&out.attacker_identity), updates(&[("x", "w", 1, 1)]));
        assert_eq!(consolidated(&out.identity_campaign), updates(&[("w", "c2", 1, 1)]));
        assert_eq!(consolidated(&out.campaign_canonical), updates(&[("c1", "c1", 1, 1), ("c2", "c2", 1, 1)]));
    }

    /// A loser's own campaign does not reach the rollups while it is merged.
    #[test]
    fn campaign_reassignment_and_campaign_merges() {
        let assigned = |offset, campaign| {
            event(
                pos(0, offset),
                "identity.campaign.assigned",
                &[("identity_uuid", Some("i")), ("campaign_uuid", Some(campaign))],
            )
        };
        let out = run(vec![
            (
                0,
                vec![
                    identity_row(pos(1, 0), "i", Some("c1"), None),
                    identity_row(pos(1, 1), "j", Some("c1"), Some("i")),
                    campaign_row(pos(1, 2), "c1", None),
                    campaign_row(pos(1, 3), "c2", None),
                ],
            ),
            (1, vec![assigned(4, "c2")]),
            (2, vec![campaign_row(pos(1, 5), "c2", Some("c3"))]),
            (
                3,
                vec![event(
                    pos(0, 6),
                    "identity.formed",
                    &[("identity_uuid", Some("i")), ("campaign_uuid", Some("c1"))],
                )],
            ),
            (4, vec![campaign_row(pos(1, 7), "c1", Some("c3"))]),
        ]);
        assert_eq!(
            consolidated(&out.identity_campaign),
            updates(&[
                ("i", "c1", 0, 1),
                ("i", "c1", 1, -1),
                ("i", "c2", 1, 1),
                ("i", "c2", 2, -1),
                ("i", "c3", 2, 1),
                ("i", "c3", 3, -1),
                ("i", "c1", 3, 1),
                ("i", "c1", 4, -1),
                ("i", "c3", 4, 1),
            ])
        );
        assert_eq!(at(&out.campaign_canonical, 4), pairs(&[("c1", "c3"), ("c2", "c3"), ("c3", "c3")]));
    }

    /// A 2-cycle by rows with a tail p, and a 3-cycle by events; epoch 1 breaks the 2-cycle.
    #[test]
    fn merge_cycles_are_dead_letters_with_a_stable_representative() {
        let out = run(vec![
            (
                0,
                vec![
                    identity_row(pos(1, 0), "b", None, Some("a")),
                    identity_row(pos(1, 1), "a", None, Some("b")),
                    identity_row(pos(1, 2), "p", None, Some("b")),
                    attacker_row(pos(1, 3), "x", Some("p")),
                    merged(pos(0, 4), "y", "x"),
                    merged(pos(0, 5), "z", "y"),
                    merged(pos(0, 6), "x", "z"),
                ],
            ),
            (1, vec![event(pos(0, 7), "identity.unmerged", &[("loser_uuid", Some("b"))])]),
        ]);
        assert_eq!(
            at(&out.identity_canonical, 0),
            pairs(&[("a", "a"), ("b", "a"), ("p", "a"), ("x", "x"), ("y", "x"), ("z", "x")])
        );
        assert_eq!(at(&out.attacker_identity, 0), pairs(&[("x", "a")]));
        let letter = |pos, topic: &str, detail: &str| DeadLetter {
            pos,
            topic: Some(topic.to_string()),
            reason: Reason::MergeCycle,
            detail: detail.to_string(),
        };
        let two = letter(
            pos(1, 1),
            IDENTITIES_TOPIC,
            "merged_into of identities forms a cycle: a -> b -> a; all of them map to a",
        );
        let three = letter(
            pos(0, 6),
            "identity.merged",
            "merged_into of identities forms a cycle: x -> y -> z -> x; all of them map to x",
        );
        assert_eq!(consolidated(&out.dead_letters), vec![(three.clone(), 0, 1), (two.clone(), 0, 1), (two, 1, -1)]);
        assert_eq!(at(&out.dead_letters, 1), BTreeSet::from([three]));
        assert_eq!(
            at(&out.identity_canonical, 1),
            pairs(&[("a", "b"), ("b", "b"), ("p", "b"), ("x", "x"), ("y", "x"), ("z", "x")])
        );
    }

    #[test]
    fn identity_events_missing_their_uuids_are_dead_letters() {
        let reason = |record: Record| match record {
            Record::Event(e) => match event_facts(&e).as_slice() {
                [Fact::Dead(dead)] => Some(dead.reason),
                _ => None,
            },
            Record::Table(_) => None,
        };
        assert_eq!(
            reason(event(pos(0, 0), "identity.merged", &[("winner_uuid", Some("w"))])),
            Some(Reason::MissingField)
        );
        let ip_only = event(pos(0, 1), "identity.unmerged", &[("attacker_ip", Some("192.0.2.1"))]);
        assert_eq!(reason(ip_only), Some(Reason::MissingField));
        assert_eq!(
            reason(event(pos(0, 2), "identity.campaign.assigned", &[("identity_uuid", Some("i"))])),
            Some(Reason::MissingField)
        );
        let Record::Event(mut numeric) = merged(pos(0, 3), "w", "l") else { unreachable!() };
        Arc::make_mut(&mut numeric.payload).set("loser_uuid", Json::Num("7".into()));
        assert!(matches!(event_facts(&numeric).as_slice(), [Fact::Dead(DeadLetter { reason: Reason::WrongType, .. })]));
        assert!(event_facts(&match event(pos(0, 4), "attacker.observed", &[]) {
            Record::Event(e) => e,
            Record::Table(_) => unreachable!(),
        })
        .is_empty());
    }

    use crate::testing::Rng;

    const IDENTITIES: &[&str] = &["i0", "i1", "i2", "i3"];
    const CAMPAIGNS: &[&str] = &["c0", "c1", "c2"];
    const ATTACKERS: &[&str] = &["a0", "a1", "a2"];

    /// What an operation means, as a plain model of the latest rows.
    #[derive(Default)]
    struct Model {
        attackers: BTreeMap<String, Option<String>>,
        links: BTreeMap<String, (Pos, Link)>,
        campaigns_of: BTreeMap<String, Option<String>>,
        campaign_links: BTreeMap<String, (Pos, Link)>,
        named: BTreeSet<String>,
        named_campaigns: BTreeSet<String>,
    }

    fn link(topic: &str, into: Option<&str>) -> Link {
        into.map_or(Link::Standalone, |into| Link::MergedInto { into: into.into(), topic: topic.into() })
    }

    type Effect = Box<dyn Fn(&mut Model)>;

    /// A random operation: its record, and its effect on the model.
    fn random_op(rng: &mut Rng, offset: u64) -> (Record, Effect) {
        let (t, e) = (pos(1, offset), pos(0, offset));
        let s = String::from;
        match rng.below(12) {
            0 | 1 => {
                let (i, c, m) = (rng.pick(IDENTITIES), rng.maybe(CAMPAIGNS), rng.maybe(IDENTITIES));
                let effect = move |model: &mut Model| {
                    model.links.insert(s(i), (t, link(IDENTITIES_TOPIC, m)));
                    model.campaigns_of.insert(s(i), c.map(s));
                };
                (identity_row(t, i, c, m), Box::new(effect))
            }
            2 => {
                let i = rng.pick(IDENTITIES);
                let effect = move |model: &mut Model| {
                    model.links.insert(s(i), (t, Link::Deleted));
                    model.campaigns_of.insert(s(i), None);
                };
                (tombstone(t, Table::Identities, i), Box::new(effect))
            }
            3 => {
                let (c, m) = (rng.pick(CAMPAIGNS), rng.maybe(CAMPAIGNS));
                let effect = move |model: &mut Model| {
                    model.campaign_links.insert(s(c), (t, link(CAMPAIGNS_TOPIC, m)));
                };
                (campaign_row(t, c, m), Box::new(effect))
            }
            4 => {
                let c = rng.pick(CAMPAIGNS);
                let effect = move |model: &mut Model| {
                    model.campaign_links.insert(s(c), (t, Link::Deleted));
                };
                (tombstone(t, Table::Campaigns, c), Box::new(effect))
            }
            5 => {
                let (a, i) = (rng.pick(ATTACKERS), rng.maybe(IDENTITIES));
                let effect = move |model: &mut Model| {
                    model.attackers.insert(s(a), i.map(s));
                };
                (attacker_row(t, a, i), Box::new(effect))
            }
            6 => {
                let a = rng.pick(ATTACKERS);
                let effect = move |model: &mut Model| {
                    model.attackers.insert(s(a), None);
                };
                (tombstone(t, Table::Attackers, a), Box::new(effect))
            }
            7 | 8 => {
                let (w, l, as_identity) = (rng.pick(IDENTITIES), rng.pick(IDENTITIES), rng.below(2) == 0);
                let effect = move |model: &mut Model| {
                    model.named.extend([s(w), s(l)]);
                    model.links.insert(s(l), (e, link("identity.merged", Some(w))));
                };
                let winner_field = if as_identity { "identity_uuid" } else { "winner_uuid" };
                (event(e, "identity.merged", &[(winner_field, Some(w)), ("loser_uuid", Some(l))]), Box::new(effect))
            }
            9 if rng.below(2) == 0 => {
                let l = rng.pick(IDENTITIES);
                let effect = move |model: &mut Model| {
                    model.named.insert(s(l));
                    model.links.insert(s(l), (e, Link::Standalone));
                };
                (event(e, "identity.unmerged", &[("loser_uuid", Some(l))]), Box::new(effect))
            }
            9 => {
                let a = rng.pick(ATTACKERS);
                let effect = move |model: &mut Model| {
                    model.attackers.insert(s(a), None);
                };
                let fields = [("attacker_ip", Some("192.0.2.1")), ("attacker_uuid", Some(a))];
                (event(e, "identity.unmerged", &fields), Box::new(effect))
            }
            10 => {
                let (a, i) = (rng.pick(ATTACKERS), rng.pick(IDENTITIES));
                let effect = move |model: &mut Model| {
                    model.named.insert(s(i));
                    model.attackers.insert(s(a), Some(s(i)));
                };
                let fields = [("identity_uuid", Some(i)), ("attacker_uuid", Some(a))];
                (event(e, "identity.observation.linked", &fields), Box::new(effect))
            }
            _ => {
                let (i, c) = (rng.pick(IDENTITIES), rng.maybe(CAMPAIGNS));
                // A campaign assignment always names its campaign; a formed event may not.
                let topic =
                    if c.is_none() || rng.below(2) == 0 { "identity.formed" } else { "identity.campaign.assigned" };
                let effect = move |model: &mut Model| {
                    model.named.insert(s(i));
                    if let Some(c) = c {
                        model.named_campaigns.insert(s(c));
                        model.campaigns_of.insert(s(i), Some(s(c)));
                    }
                };
                (event(e, topic, &[("identity_uuid", Some(i)), ("campaign_uuid", c)]), Box::new(effect))
            }
        }
    }

    /// Follows pointers from `node`: its canonical node, and the cycle it ends in (from
    /// its least member, in pointer order) when it ends in one.
    fn follow(links: &BTreeMap<String, (Pos, Link)>, node: &str) -> (String, Option<Vec<String>>) {
        let mut path = vec![node.to_string()];
        loop {
            let Some((_, Link::MergedInto { into, .. })) = links.get(path.last().unwrap()) else {
                return (path.pop().unwrap(), None);
            };
            if let Some(start) = path.iter().position(|n| n == into) {
                let mut cycle = path.split_off(start);
                let least = (0..cycle.len()).min_by_key(|&k| &cycle[k]).unwrap();
                cycle.rotate_left(least);
                return (cycle[0].clone(), Some(cycle));
            }
            path.push(into.clone());
        }
    }

    /// Every node with its canonical node, and the cycles' dead letters.
    fn resolve(
        kind: Kind,
        links: &BTreeMap<String, (Pos, Link)>,
        mut nodes: BTreeSet<String>,
    ) -> (BTreeMap<String, String>, BTreeSet<DeadLetter>) {
        for (key, (_, link)) in links {
            match link {
                Link::Deleted => {}
                Link::Standalone => {
                    nodes.insert(key.clone());
                }
                Link::MergedInto { into, .. } => nodes.extend([key.clone(), into.clone()]),
            }
        }
        let mut canonical = BTreeMap::new();
        let mut letters = BTreeSet::new();
        for node in nodes {
            let (canon, cycle) = follow(links, &node);
            if let Some(cycle) = cycle {
                let latest = cycle.iter().map(|n| &links[n]).max_by_key(|(pos, _)| *pos).unwrap();
                let Link::MergedInto { topic, .. } = &latest.1 else { unreachable!() };
                letters.insert(DeadLetter {
                    pos: latest.0,
                    topic: Some(topic.clone()),
                    reason: Reason::MergeCycle,
                    detail: cycle_detail(kind, &cycle),
                });
            }
            canonical.insert(node, canon);
        }
        (canonical, letters)
    }

    /// The expected outputs of the model: attacker_identity, identity_canonical,
    /// identity_campaign, campaign_canonical, dead letters.
    fn expected(model: &Model) -> (Pairs, Pairs, Pairs, Pairs, BTreeSet<DeadLetter>) {
        let mut identities = model.named.clone();
        identities.extend(model.attackers.values().flatten().cloned());
        identities.extend(model.campaigns_of.iter().filter(|(_, c)| c.is_some()).map(|(i, _)| i.clone()));
        let mut campaigns = model.named_campaigns.clone();
        campaigns.extend(model.campaigns_of.values().flatten().cloned());
        let (identity, mut letters) = resolve(Kind::Identity, &model.links, identities);
        let (campaign, campaign_letters) = resolve(Kind::Campaign, &model.campaign_links, campaigns);
        letters.extend(campaign_letters);
        let attacker_identity =
            model.attackers.iter().filter_map(|(a, i)| i.as_ref().map(|i| (a.clone(), identity[i].clone()))).collect();
        let identity_campaign = model
            .campaigns_of
            .iter()
            .filter_map(|(i, c)| c.as_ref().map(|c| (i, c)))
            .filter(|(i, _)| identity[*i] == **i)
            .map(|(i, c)| (i.clone(), campaign[c].clone()))
            .collect();
        (attacker_identity, identity.into_iter().collect(), identity_campaign, campaign.into_iter().collect(), letters)
    }

    /// Random merges, unmerges, row upserts and tombstones in random epochs: after every
    /// epoch the stage's collections equal a recomputation from the latest rows.
    #[test]
    fn matches_a_recomputation_after_every_epoch() {
        const EPOCHS: Time = 5;
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        // How many epochs saw a merge, a cycle and a retraction: the cases must exercise them.
        let (mut merges, mut cycles, mut retractions) = (0, 0, 0);
        for case in 0..100 {
            let count = 6 + rng.below(20) as u64;
            let mut ops: Vec<(Time, Pos, Record, Effect)> = (0..count)
                .map(|offset| {
                    let epoch = rng.next() % EPOCHS;
                    let (record, effect) = random_op(&mut rng, offset);
                    let record = match record {
                        Record::Table(update) => {
                            Record::Table(TableUpdate { pos: at_epoch(update.pos, epoch), ..update })
                        }
                        Record::Event(event) => Record::Event(Event { pos: at_epoch(event.pos, epoch), ..event }),
                    };
                    let pos = match &record {
                        Record::Table(update) => update.pos,
                        Record::Event(event) => event.pos,
                    };
                    (epoch, pos, record, effect)
                })
                .collect();
            let batches = (0..EPOCHS)
                .map(|epoch| (epoch, ops.iter().filter(|op| op.0 == epoch).map(|op| op.2.clone()).collect()))
                .collect();
            let out = run(batches);
            // The latest record wins: a later epoch, then a later position.
            ops.sort_by_key(|op| (op.0, op.1));
            let mut model = Model::default();
            let mut applied = ops.iter().peekable();
            for epoch in 0..EPOCHS {
                while let Some((_, _, _, effect)) = applied.next_if(|op| op.0 == epoch) {
                    effect(&mut model);
                }
                let records: Vec<_> = ops.iter().filter(|op| op.0 <= epoch).map(|op| &op.2).collect();
                let (attackers, identities, campaigns_of, campaigns, letters) = expected(&model);
                let context = format!("case {case}, epoch {epoch}, records {records:#?}");
                assert_eq!(at(&out.identity_canonical, epoch), identities, "identity_canonical, {context}");
                assert_eq!(at(&out.attacker_identity, epoch), attackers, "attacker_identity, {context}");
                assert_eq!(at(&out.campaign_canonical, epoch), campaigns, "campaign_canonical, {context}");
                assert_eq!(at(&out.identity_campaign, epoch), campaigns_of, "identity_campaign, {context}");
                // The model names a cycle's latest pointer record by its position before the
                // epoch stamped it, and when a table row and a merge event of one epoch close
                // the cycle together it may name the other one: letters are compared by what
                // they report (the cycle and where it maps), not by the record carrying them.
                let report = |d: DeadLetter| (d.reason, d.detail);
                let got: BTreeSet<_> = at(&out.dead_letters, epoch).into_iter().map(report).collect();
                let want: BTreeSet<_> = letters.iter().cloned().map(report).collect();
                assert_eq!(got, want, "dead_letters, {context}");
                merges += usize::from(identities.iter().any(|(i, c)| i != c));
                cycles += usize::from(!letters.is_empty());
            }
            retractions += usize::from(out.identity_canonical.lock().unwrap().iter().any(|(_, _, r)| *r < 0));
        }
        assert!(merges > 50 && cycles > 20 && retractions > 20, "{merges} {cycles} {retractions}");
    }
}
