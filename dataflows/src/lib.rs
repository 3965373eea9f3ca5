//! The ttpflow graph: honeypot bus records in, stored ATT&CK technique tags and their
//! rollups out.
//!
//! ```text
//! records ─ decode ─┬─ events ── anchor (real shapes; ⋈ attackers by ip) ── fan-out (session → commands)
//!                   │                                                          │
//!                   └─ table updates → attackers arrangement        detect: one compiled rule set per
//!                          │                                        source kind (regex + structured
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

pub mod anchor;
pub mod decode;
pub mod email;
pub mod fanout;
pub mod identity;
pub mod intel;
pub mod json;
pub mod predicates;
pub mod pyregex;
pub mod record;
pub mod rollup;
pub mod rules;
pub mod shapes;
pub mod store;
pub mod tagid;
#[cfg(test)]
mod testing;
pub mod time;
pub mod types;
pub mod windows;

use std::sync::Arc;

use record::{DeadLetter, Event, Line, Tag};
use rules::RulePack;
use types::Coll;

/// What the graph hands to the sinks.
pub struct Outputs<'s> {
    /// Stored tags: each uuid once, insertions only.
    pub tags: Coll<'s, Tag>,
    /// Records that could not be used, as soon as that is known.
    pub dead_letters: Coll<'s, DeadLetter>,
    /// Events still waiting for their IP to resolve to an attacker.
    pub pending: Coll<'s, (String, Event)>,
    /// The rollup rows: one per scope and technique, changing as their numbers change.
    pub rollups: Coll<'s, rollup::RollupRow>,
    /// The live reference maps the rollups follow (attacker → canonical identity, …).
    pub references: identity::References<'s>,
    /// R0058's bump state: attackers whose latest intel verdict is malicious.
    pub intel_bumps: Coll<'s, (String, intel::Bump)>,
}

/// Builds the graph over a collection of raw records.
pub fn build<'s>(records: Coll<'s, Line>, pack: Arc<RulePack>) -> Outputs<'s> {
    let scope = records.scope();
    let decoded = scope.region_named("decode", |r| decode::stage(records.enter_region(r)).leave(scope));
    let anchored = scope.region_named("anchor", |r| {
        anchor::stage(decoded.events.enter_region(r), decoded.tables.clone().enter_region(r)).leave(scope)
    });
    let intel = scope.region_named("intel", |r| {
        let (events, tables) = (anchored.events.clone().enter_region(r), decoded.tables.clone().enter_region(r));
        intel::stage(events, tables, Arc::clone(&pack)).leave(scope)
    });
    let subjects =
        scope.region_named("fan-out", |r| fanout::stage(anchored.events.clone().enter_region(r)).leave_region(scope));
    let windowed = scope.region_named("windows", |r| {
        let (subjects, tables) = (subjects.clone().enter_region(r), decoded.tables.clone().enter_region(r));
        windows::stage(subjects, tables, Arc::clone(&pack)).leave_region(scope)
    });
    let tags = scope.region_named("detect", |r| detect(subjects.enter_region(r), pack).leave_region(scope));
    let tags = tags.concat(intel.tags).concat(windowed);
    let stored = scope.region_named("store", |r| store::stage(tags.enter_region(r)).leave_region(scope));
    let references = scope.region_named("identity", |r| {
        let (tables, events) = (decoded.tables.enter_region(r), anchored.events.enter_region(r));
        identity::stage(tables, events).leave(scope)
    });
    let rollups = scope.region_named("rollup", |r| {
        let refs = references.enter_region(r);
        rollup::stage(stored.clone().enter_region(r), &refs, intel.bumps.clone().enter_region(r)).leave_region(scope)
    });
    Outputs {
        tags: stored,
        dead_letters: decoded.dead_letters.concat(anchored.dead_letters).concat(references.dead_letters.clone()),
        pending: anchored.pending,
        rollups,
        references,
        intel_bumps: intel.bumps,
    }
}

/// Detect: every subject through the rule set of its source kind, in one operator.
fn detect<'s>(subjects: Coll<'s, record::Subject>, pack: Arc<RulePack>) -> Coll<'s, Tag> {
    subjects.flat_map(move |subject| {
        let mut tags = Vec::new();
        pack.evaluate(&subject, &mut tags);
        tags
    })
}
