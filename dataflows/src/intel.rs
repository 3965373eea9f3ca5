//! Intel: each attacker's latest intel row, joined into technique tags (DESIGN §2.4, §2.7).
//!
//! Input: anchored events and the table upserts. An intel row is a `decnet.attacker_intel`
//! record (key = attacker uuid, a tombstone deletes it) or an `attacker.intel.enriched`
//! event (the attacker's latest row, by its `attacker_uuid`). Output: the intel tags of
//! every row, as it arrives (insertions only), and the R0058 bump state of every attacker
//! whose latest row (by input position) has an aggregate verdict of `malicious`.
//!
//! "The tags of the attacker's latest row" (DESIGN §2.4) is read on record order: every row
//! is the latest at its own position, so every row yields its tags, whether or not a later
//! row replaces it in the same epoch (a row that said `malicious` for a minute was seen, as
//! DECNET's worker tags each enriched event it reads), and which rows yield tags does not
//! depend on how the input is cut into epochs. The store keeps the earliest row's tag of
//! each uuid.
//!
//! Arrangements: the intel rows, judged, as an upsert arrangement keyed by attacker uuid
//! (ties within an epoch go to the later record), for the bumps. State: per attacker, the
//! judgement of its latest row.
//!
//! Swaps ([`crate::schedule`]): a row is judged by the pack in effect at the epoch in which
//! it arrives, once, and the arrangement keeps the judgement, so its tags and bump retract
//! exactly as they were made when a later row replaces it. A swap does not re-evaluate the
//! rows already judged: the new pack applies to the intel rows that arrive after it loads
//! (DESIGN §1.3), and a rule it drops takes back no tag already stored; a bump it drops
//! stays until the attacker's row changes.
//!
//! Intel tags are a function of the row alone: `source_kind` `intel`, `source_id` the
//! attacker uuid (DECNET's `attacker.intel.enriched` path), so the same tags come out
//! whether the row, the enriched event or the attacker's sessions arrive first, and
//! there are no per-session copies (DECNET's `intel-catchup:<session>` rows).
//!
//! The providers' judgement of a row is [`crate::providers`]'s.

use std::sync::Arc;

use differential_dataflow::operators::arrange::upsert::arrange_from_upsert;
use differential_dataflow::trace::implementations::{ValBuilder, ValSpine};
use differential_dataflow::AsCollection;
use timely::dataflow::operators::core::Concat;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::StreamVec;

pub use crate::providers::{decide, Bump, Decision, Emission, IntelRow, IntelTables, Provider, ProviderMapping};
use crate::record::{Event, Pos, Table, TableRow, TableUpdate, Tag};
use crate::rules::RulePack;
use crate::schedule::PackSchedule;
use crate::types::{Coll, Diff, Scope, Time};

/// The topic whose events are intel rows.
pub const ENRICHED_TOPIC: &str = "attacker.intel.enriched";

/// The stage's outputs.
pub struct Intel<'s> {
    pub tags: Coll<'s, Tag>,
    /// (attacker uuid, bump) for every attacker whose latest row is malicious.
    pub bumps: Coll<'s, (String, Bump)>,
}

impl<'s> Intel<'s> {
    /// The outputs, moved out of the stage's region into `outer`.
    pub fn leave<'o>(self, outer: Scope<'o>) -> Intel<'o> {
        Intel { tags: self.tags.leave_region(outer), bumps: self.bumps.leave_region(outer) }
    }
}

/// The stage.
pub fn stage<'s>(events: Coll<'s, Event>, tables: Coll<'s, TableUpdate>, packs: PackSchedule) -> Intel<'s> {
    let upserts = judged_upserts(events, tables, packs);
    // Every row yields its own tags as it arrives, and they are never taken back: which
    // rows yield tags must not depend on which of them share an epoch.
    let tags = upserts
        .clone()
        .flat_map(|(_, value, time): Upsert| {
            let tags = value.and_then(|(_, judged)| judged).map(|judged| judged.tags).unwrap_or_default();
            tags.into_iter().map(move |tag| (tag, time, 1))
        })
        .as_collection();
    let latest = latest_judged(upserts);
    let bumps = latest.flat_map(|(attacker, judged)| judged.bump.map(|bump| (attacker, bump)));
    Intel { tags, bumps }
}

/// An intel row as the pack of its epoch judged it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
struct Judged {
    tags: Vec<Tag>,
    bump: Option<Bump>,
}

impl Judged {
    fn of(pack: &RulePack, attacker: &str, row: &IntelRow) -> Judged {
        let mut tags = Vec::new();
        pack.intel_tags(attacker, row, &mut tags);
        Judged { tags, bump: pack.intel_bump(&row.payload) }
    }
}

/// An upsert of an attacker's intel row: its position and row, `None` for a tombstone.
type RowUpsert = (String, (Pos, Option<IntelRow>), Time);
/// The upsert of the row's judgement, as the arrangement takes it.
type Upsert = (String, Option<(Pos, Option<Judged>)>, Time);

/// Every intel row (and tombstone) as an upsert, judged once by the pack of its epoch.
fn judged_upserts<'s>(
    events: Coll<'s, Event>,
    tables: Coll<'s, TableUpdate>,
    packs: PackSchedule,
) -> StreamVec<'s, Time, Upsert> {
    let from_tables =
        tables.inner.flat_map(|(update, time, diff): (TableUpdate, Time, Diff)| table_upsert(update, time, diff));
    let from_events = events.inner.flat_map(|(event, time, diff): (Event, Time, Diff)| event_upsert(event, time, diff));
    let mut packs = packs.packs();
    from_tables.concat(from_events).map(move |upsert: RowUpsert| judge(packs.pack(upsert.2), upsert))
}

/// Attacker uuid → the judgement of its latest intel row.
fn latest_judged<'s>(upserts: StreamVec<'s, Time, Upsert>) -> Coll<'s, (String, Judged)> {
    // As for the attackers table: leading with the position makes the greatest value of
    // an epoch its latest record, and a tombstone stays a value.
    let upserts = crate::latest::newer_only(upserts, "intel rows");
    arrange_from_upsert::<ValBuilder<_, _, _, _>, ValSpine<String, (Pos, Option<Judged>), Time, Diff>, _, _>(
        upserts,
        "intel rows",
    )
    .as_collection(|attacker, (_, judged)| judged.clone().map(|judged| (attacker.clone(), judged)))
    .flat_map(|x| x)
}

/// The upsert of an intel row, with the row judged by `pack`.
fn judge(pack: &RulePack, (attacker, (pos, row), time): RowUpsert) -> Upsert {
    let judged = row.map(|row| Judged::of(pack, &attacker, &row));
    (attacker, Some((pos, judged)), time)
}

/// The upsert of a `decnet.attacker_intel` record.
fn table_upsert(update: TableUpdate, time: Time, diff: Diff) -> Option<RowUpsert> {
    let TableUpdate { pos, table, key, row } = update;
    if table != Table::Intel || diff <= 0 {
        return None;
    }
    let row = match row {
        Some(TableRow::Other(payload)) => Some(IntelRow { pos, event_time: None, payload: Arc::new(payload) }),
        _ => None,
    };
    Some((key, (pos, row), time))
}

/// The upsert of an `attacker.intel.enriched` event.
fn event_upsert(event: Event, time: Time, diff: Diff) -> Option<RowUpsert> {
    if event.topic != ENRICHED_TOPIC || diff <= 0 {
        return None;
    }
    let attacker = event.str_field("attacker_uuid")?.to_string();
    let row = IntelRow { pos: event.pos, event_time: event.event_time, payload: event.payload };
    Some((attacker, (row.pos, Some(row)), time))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::Json;
    use std::collections::BTreeMap;

    fn tables() -> IntelTables {
        let emission = |t: &str, gate: Option<f64>| Emission {
            technique_id: t.into(),
            high_score_threshold: gate,
            multiplier: 1.0,
        };
        let mapping = |signals: Vec<(&str, Vec<Emission>)>| ProviderMapping {
            mapping_version: "1".into(),
            signals: signals.into_iter().map(|(s, e)| (s.to_string(), e)).collect(),
        };
        let mut providers = BTreeMap::new();
        providers.insert(
            Provider::AbuseIpdb,
            mapping(vec![
                ("cat_11", vec![emission("T1496", None), emission("T1566", Some(80.0))]),
                ("cat_18", vec![emission("T1110", None)]),
                ("cat_22", vec![emission("T1110", None)]),
            ]),
        );
        providers.insert(
            Provider::GreyNoise,
            mapping(vec![
                ("cobalt_strike", vec![emission("T1071", None), emission("T1588", None)]),
                ("tor_exit_node", vec![emission("T1090", None)]),
            ]),
        );
        providers.insert(Provider::Feodo, mapping(vec![("feodo_listed", vec![emission("T1071", None)])]));
        providers.insert(
            Provider::ThreatFox,
            mapping(vec![("payload_delivery", vec![emission("T1105", None), emission("T1588", None)])]),
        );
        IntelTables { providers }
    }

    fn decisions(provider: Provider, row: &str) -> Vec<(String, f64, String)> {
        decide(provider, &tables(), &Json::parse(row).unwrap())
            .into_iter()
            .map(|d| (d.technique_id, d.multiplier, Json::Obj(d.extra).to_json_string()))
            .collect()
    }

    fn pack() -> RulePack {
        use crate::predicates::Predicate;
        use crate::rules::{Emit, Matcher, Rule, RuleState};
        let rule = |id: &str, predicate: Predicate, emits: Vec<(&str, &str, f64)>| Rule {
            rule_id: id.into(),
            rule_version: 1,
            name: id.into(),
            description: String::new(),
            applies_to: vec!["intel".into()],
            matcher: Matcher::Structured { kind: String::new(), params: Json::Obj(vec![]), predicate },
            emits: emits
                .into_iter()
                .map(|(tactic, technique, confidence)| Emit {
                    tactic: tactic.into(),
                    technique_id: technique.into(),
                    sub_technique_id: None,
                    confidence,
                })
                .collect(),
            evidence_fields: vec!["abuseipdb_score".into()],
            state: RuleState::default(),
        };
        let rules = vec![
            rule(
                "X0054",
                Predicate::Intel(Provider::AbuseIpdb),
                vec![("TA0006", "T1110", 0.7), ("TA0040", "T1496", 0.6)],
            ),
            rule("X0058", Predicate::IntelBump { bump_amount: 0.05 }, vec![("TA0042", "T1588", 0.0)]),
        ];
        RulePack::new(rules, "v15.1").with_intel_tables(Arc::new(tables()))
    }

    /// Epoch 0: a table row for attacker `a`. Epoch 1: an enriched event for `a` with
    /// another verdict, and one for `b` (no table row yet). Epoch 2: `a`'s row is deleted;
    /// `b`'s table row arrives with the same content as its event.
    #[test]
    fn every_row_yields_its_tags_and_bumps_follow_the_latest_row() {
        use differential_dataflow::input::Input;
        use std::sync::Mutex;
        type Captured<D> = Arc<Mutex<Vec<(D, Time, Diff)>>>;
        let tags: Captured<(String, String, String, String)> = Arc::default();
        let bumps: Captured<(String, Bump)> = Arc::default();
        let (t, b) = (Arc::clone(&tags), Arc::clone(&bumps));
        // Positions follow the epochs, as records from files and Kafka do (`ts` = epoch).
        let row = |ts: i64, offset: u64, key: &str, value: &str| TableUpdate {
            pos: Pos { ts, input: 0, offset },
            table: Table::Intel,
            key: key.into(),
            row: (value != "null").then(|| TableRow::Other(Json::parse(value).unwrap())),
        };
        let event = |ts: i64, offset: u64, payload: &str| Event {
            pos: Pos { ts, input: 1, offset },
            topic: ENRICHED_TOPIC.into(),
            event_type: "intel.enriched".into(),
            source_kind: Some("intel".into()),
            event_time: Some(5),
            payload: Arc::new(Json::parse(payload).unwrap()),
        };
        timely::execute_directly(move |worker| {
            let (mut events, mut rows) = worker.dataflow::<Time, _, _>(|scope| {
                let (events_in, events) = scope.new_collection::<Event, Diff>();
                let (rows_in, rows) = scope.new_collection::<TableUpdate, Diff>();
                let out = stage(events, rows, PackSchedule::fixed(Arc::new(pack())));
                out.tags.inspect(move |(tag, time, diff)| {
                    let confidence = format!("{:?}", tag.confidence.0);
                    let row =
                        (tag.source_id.clone(), tag.technique_id.clone(), confidence, tag.evidence.to_json_string());
                    t.lock().unwrap().push((row, *time, *diff))
                });
                out.bumps.inspect(move |x| b.lock().unwrap().push(x.clone()));
                (events_in, rows_in)
            });
            rows.insert(row(
                0,
                0,
                "a",
                r#"{"abuseipdb_score":90,"abuseipdb_categories":[18],"aggregate_verdict":"malicious"}"#,
            ));
            rows.advance_to(1);
            events.advance_to(1);
            events.insert(event(1, 0, r#"{"attacker_uuid":"a","abuseipdb_score":50,"abuseipdb_categories":[11]}"#));
            events.insert(event(1, 1, r#"{"attacker_uuid":"b","abuseipdb_score":100,"abuseipdb_categories":[18]}"#));
            rows.advance_to(2);
            events.advance_to(2);
            rows.insert(row(2, 1, "a", "null"));
            rows.insert(row(2, 2, "b", r#"{"abuseipdb_score":100,"abuseipdb_categories":[18]}"#));
        });
        let mut tags = tags.lock().unwrap().clone();
        differential_dataflow::consolidation::consolidate_updates(&mut tags);
        let tag = |source: &str, technique: &str, confidence: &str, evidence: &str| {
            (source.to_string(), technique.to_string(), confidence.to_string(), evidence.to_string())
        };
        let a0 = tag(
            "a",
            "T1110",
            "0.63",
            r#"{"abuseipdb_score":90,"abuseipdb_categories":[18],"abuse_confidence_score":90}"#,
        );
        let a1 = tag(
            "a",
            "T1496",
            "0.3",
            r#"{"abuseipdb_score":50,"abuseipdb_categories":[11],"abuse_confidence_score":50}"#,
        );
        let b1 = tag(
            "b",
            "T1110",
            "0.7",
            r#"{"abuseipdb_score":100,"abuseipdb_categories":[18],"abuse_confidence_score":100}"#,
        );
        // Every row yields its tags and none is taken back when a later row replaces it;
        // `b`'s table row repeats its event's content, and so its tag (the store keeps the
        // first).
        let mut want = vec![(a0, 0, 1), (a1, 1, 1), (b1.clone(), 1, 1), (b1, 2, 1)];
        want.sort();
        assert_eq!(tags, want);
        let mut bumps = bumps.lock().unwrap().clone();
        differential_dataflow::consolidation::consolidate_updates(&mut bumps);
        let bump = ("a".to_string(), Bump { rule_id: "X0058".into(), amount_micros: 50_000 });
        assert_eq!(bumps, vec![(bump.clone(), 0, 1), (bump, 1, -1)], "the bump lasts while the verdict is malicious");
    }

    /// Pack A from epoch 0 (the provider rule and the bump); pack B from epoch 1: the
    /// provider rule at another confidence, no bump rule. `a`'s row of epoch 0 is judged
    /// by A (and its bump lasts until `a`'s next row, epoch 2), that next row by B; `b`'s
    /// row of epoch 1 by B.
    #[test]
    fn a_row_keeps_the_judgement_of_its_epoch_until_it_changes() {
        use differential_dataflow::input::Input;
        use std::sync::Mutex;
        type Captured<D> = Arc<Mutex<Vec<(D, Time, Diff)>>>;
        let tags: Captured<(String, String, String)> = Arc::default();
        let bumps: Captured<String> = Arc::default();
        let (t, b) = (Arc::clone(&tags), Arc::clone(&bumps));
        let mut provider_rule = pack().rules()[0].clone();
        provider_rule.emits[0].confidence = 0.5;
        let later = RulePack::new(vec![provider_rule], "v15.1").with_intel_tables(Arc::new(tables()));
        let packs = PackSchedule::fixed(Arc::new(pack()));
        packs.install(1, Arc::new(later)).unwrap();
        let row = |offset: u64, key: &str, score: u32| TableUpdate {
            pos: Pos { ts: 0, input: 0, offset },
            table: Table::Intel,
            key: key.into(),
            row: Some(TableRow::Other(
                Json::parse(&format!(
                    r#"{{"abuseipdb_score":{score},"abuseipdb_categories":[18],"aggregate_verdict":"malicious"}}"#
                ))
                .unwrap(),
            )),
        };
        timely::execute_directly(move |worker| {
            let (mut events, mut rows) = worker.dataflow::<Time, _, _>(|scope| {
                let (events_in, events) = scope.new_collection::<Event, Diff>();
                let (rows_in, rows) = scope.new_collection::<TableUpdate, Diff>();
                let out = stage(events, rows, packs);
                out.tags.inspect(move |(tag, time, diff)| {
                    let row = (tag.source_id.clone(), tag.technique_id.clone(), format!("{:?}", tag.confidence.0));
                    t.lock().unwrap().push((row, *time, *diff))
                });
                out.bumps.inspect(move |((attacker, _), time, diff)| {
                    b.lock().unwrap().push((attacker.clone(), *time, *diff))
                });
                (events_in, rows_in)
            });
            rows.insert(row(0, "a", 100));
            rows.advance_to(1);
            events.advance_to(1);
            rows.insert(row(1, "b", 100));
            rows.advance_to(2);
            events.advance_to(2);
            rows.insert(row(2, "a", 80));
        });
        let mut tags = tags.lock().unwrap().clone();
        differential_dataflow::consolidation::consolidate_updates(&mut tags);
        let tag = |source: &str, confidence: &str| (source.to_string(), "T1110".to_string(), confidence.to_string());
        let mut want = vec![(tag("a", "0.7"), 0, 1), (tag("a", "0.4"), 2, 1), (tag("b", "0.5"), 1, 1)];
        want.sort();
        assert_eq!(tags, want, "each row is judged by the pack of its epoch");
        let mut bumps = bumps.lock().unwrap().clone();
        differential_dataflow::consolidation::consolidate_updates(&mut bumps);
        assert_eq!(bumps, [("a".to_string(), 0, 1), ("a".to_string(), 2, -1)], "B has no bump rule");
    }

    #[test]
    fn abuseipdb_maps_categories_gated_by_score() {
        assert_eq!(
            decisions(Provider::AbuseIpdb, r#"{"abuseipdb_score":95,"abuseipdb_categories":[18,22,11]}"#),
            [
                ("T1110".into(), 0.95, r#"{"abuseipdb_categories":[18,22],"abuse_confidence_score":95}"#.into()),
                ("T1496".into(), 0.95, r#"{"abuseipdb_categories":[11],"abuse_confidence_score":95}"#.into()),
                ("T1566".into(), 0.95, r#"{"abuseipdb_categories":[11],"abuse_confidence_score":95}"#.into()),
            ]
        );
        let low = decisions(Provider::AbuseIpdb, r#"{"abuseipdb_score":79.5,"abuseipdb_categories":[11]}"#);
        assert_eq!(low.iter().map(|d| d.0.as_str()).collect::<Vec<_>>(), ["T1496"], "T1566 is gated at 80");
        assert!(low[0].2.contains(r#""abuse_confidence_score":79"#));
        assert!(decisions(Provider::AbuseIpdb, r#"{"abuseipdb_score":null,"abuseipdb_categories":[18]}"#).is_empty());
        assert!(decisions(Provider::AbuseIpdb, r#"{"abuseipdb_score":90,"abuseipdb_categories":[]}"#).is_empty());
        assert!(
            decisions(Provider::AbuseIpdb, r#"{"abuseipdb_score":90,"abuseipdb_categories":[18.0,"18"]}"#).is_empty()
        );
        assert_eq!(decisions(Provider::AbuseIpdb, r#"{"abuseipdb_score":90,"categories":[18]}"#).len(), 1);
    }

    #[test]
    fn greynoise_scanner_tags_and_bare_malicious() {
        assert_eq!(
            decisions(Provider::GreyNoise, r#"{"greynoise_classification":"scanner"}"#),
            [("T1595".into(), 1.0, r#"{"greynoise_classification":"scanner","greynoise_tags":["scanner"]}"#.into())]
        );
        let c2 = decisions(
            Provider::GreyNoise,
            r#"{"greynoise_classification":"malicious","greynoise_tags":["cobalt_strike","mirai"]}"#,
        );
        assert_eq!(c2.iter().map(|d| (d.0.as_str(), d.1)).collect::<Vec<_>>(), [("T1071", 1.0), ("T1588", 1.0)]);
        assert_eq!(
            decisions(Provider::GreyNoise, r#"{"greynoise_classification":"malicious","greynoise_tags":[]}"#),
            [(
                "T1071".into(),
                0.5,
                r#"{"greynoise_classification":"malicious","greynoise_tags":["malicious"]}"#.into()
            )]
        );
        assert!(
            decisions(Provider::GreyNoise, r#"{"greynoise_classification":"benign","greynoise_tags":[]}"#).is_empty()
        );
    }

    #[test]
    fn feodo_and_threatfox() {
        assert_eq!(
            decisions(
                Provider::Feodo,
                r#"{"feodo_listed":true,"feodo_malware_family":null,"malware_family":"Emotet"}"#
            ),
            [("T1071".into(), 1.0, r#"{"feodo_listed":true,"malware_family":"Emotet"}"#.into())]
        );
        assert!(decisions(Provider::Feodo, r#"{"feodo_listed":1}"#).is_empty());
        assert_eq!(
            decisions(
                Provider::ThreatFox,
                r#"{"threatfox_threat_types":["payload_delivery","unknown"],"threatfox_malware_families":[],"threatfox_ioc_types":["url"]}"#
            )[0],
            ("T1105".into(), 1.0, r#"{"threat_types":["payload_delivery"],"ioc_types":["url"]}"#.into())
        );
        assert_eq!(decisions(Provider::ThreatFox, r#"{"threat_type":"payload_delivery"}"#).len(), 2);
        assert!(
            decisions(Provider::ThreatFox, r#"{"ioc_type":"payload_delivery"}"#).is_empty(),
            "ioc types name formats"
        );
    }
}
