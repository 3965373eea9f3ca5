//! Rollups over a whole corpus: after every epoch they equal a recomputation from the stored tags and the reference state.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use differential_dataflow::input::Input;
use ttpflow::files::LineSource;
use ttpflow::rules::{self, LoadOptions};
use ttpflow_dataflows::record::{Line, Tag};
use ttpflow_dataflows::rollup::{recompute, Emission, ReferenceState, RollupRow};
use ttpflow_dataflows::types::{Diff, Time};

use crate::common;

/// Everything the graph emitted that the check needs, with times and multiplicities.
#[derive(Default)]
struct Captured {
    tags: Vec<(Tag, Time, Diff)>,
    rollups: Vec<(RollupRow, Time, Diff)>,
    /// (map, key, value): 0 attacker → identity, 1 identity → canonical, 2 identity → campaign.
    maps: Vec<((u8, String, String), Time, Diff)>,
    bumps: Vec<((String, i64), Time, Diff)>,
}

/// Runs the graph in-process over `inputs` on `workers` workers, `epoch_records` per epoch;
/// returns the captured outputs and the number of epochs.
fn capture(
    rules_dir: &std::path::Path,
    inputs: Vec<PathBuf>,
    workers: usize,
    epoch_records: u64,
    emission: Emission,
) -> (Captured, Time) {
    let pack = Arc::new(rules::load(rules_dir, &LoadOptions::default()).expect("pack loads").pack);
    let captured = Arc::new(Mutex::new(Captured::default()));
    let epochs = Arc::new(Mutex::new(0));
    let (sink, last) = (Arc::clone(&captured), Arc::clone(&epochs));
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let sink = Arc::clone(&sink);
        let mut input = worker.dataflow::<Time, _, _>(|scope| {
            let (input, records) = scope.new_collection::<Line, Diff>();
            let out =
                ttpflow_dataflows::build(records, ttpflow_dataflows::PackSchedule::fixed(Arc::clone(&pack)), emission);
            let s = Arc::clone(&sink);
            out.tags.inspect(move |x| s.lock().unwrap().tags.push(x.clone()));
            let s = Arc::clone(&sink);
            out.rollups.inspect(move |x| s.lock().unwrap().rollups.push(x.clone()));
            let refs = out.references;
            for (map, collection) in
                [(0u8, refs.attacker_identity), (1, refs.identity_canonical), (2, refs.identity_campaign)]
            {
                let s = Arc::clone(&sink);
                collection
                    .inspect(move |((k, v), t, r)| s.lock().unwrap().maps.push(((map, k.clone(), v.clone()), *t, *r)));
            }
            let s = Arc::clone(&sink);
            out.intel_bumps.inspect(move |((a, bump), t, r)| {
                s.lock().unwrap().bumps.push(((a.clone(), bump.amount_micros), *t, *r))
            });
            input
        });
        if worker.index() == 0 {
            let mut source = LineSource::new(inputs.clone());
            let mut records = 0u64;
            while let Some(line) = source.next_line().expect("inputs read") {
                input.insert(line);
                records += 1;
                if records % epoch_records == 0 {
                    let next = *input.time() + 1;
                    input.advance_to(next);
                }
            }
            *last.lock().unwrap() = *input.time();
        }
    })
    .expect("timely starts");
    for result in guards.join() {
        result.expect("a worker finishes");
    }
    let epochs = *epochs.lock().unwrap();
    let captured = Arc::try_unwrap(captured).ok().expect("workers are done").into_inner().unwrap();
    (captured, epochs)
}

/// The accumulated collection at `epoch`: each element with its count, which must be 1.
fn at<D: Ord + Clone + std::fmt::Debug>(updates: &[(D, Time, Diff)], epoch: Time, what: &str) -> Vec<D> {
    let mut counts: BTreeMap<D, Diff> = BTreeMap::new();
    for (d, _, r) in updates.iter().filter(|(_, t, _)| *t <= epoch) {
        *counts.entry(d.clone()).or_default() += r;
    }
    counts.retain(|_, r| *r != 0);
    assert!(counts.values().all(|r| *r == 1), "{what} at epoch {epoch}: multiplicities other than 1");
    counts.into_keys().collect()
}

fn references_at(captured: &Captured, epoch: Time) -> ReferenceState {
    let mut refs = ReferenceState::default();
    for (map, key, value) in at(&captured.maps, epoch, "reference maps") {
        let map = match map {
            0 => &mut refs.attacker_identity,
            1 => &mut refs.identity_canonical,
            _ => &mut refs.identity_campaign,
        };
        assert!(map.insert(key.clone(), value).is_none(), "a reference map holds two values for {key}");
    }
    for (attacker, micros) in at(&captured.bumps, epoch, "bumps") {
        let bump = refs.bumps.entry(attacker).or_insert(micros);
        *bump = (*bump).max(micros);
    }
    refs
}

#[test]
fn the_dev_corpus_rollups_equal_a_recomputation_after_every_epoch() {
    let Some(conf) = common::conformance("the corpus rollup check") else { return };
    let dir = tempfile::tempdir().unwrap();
    let events = crate::regression::gunzip_to(&conf.join("corpus/dev_events.jsonl.gz"), &dir.path().join("dev.jsonl"));
    let inputs = vec![conf.join("corpus/dev_tables.jsonl"), events];
    let rules_dir = conf.join("decnet/rules");
    let (one, epochs) = capture(&rules_dir, inputs.clone(), 1, 1024, Emission::EveryEpoch);
    assert!(epochs > 10, "the corpus spans many epochs: {epochs}");

    let mut tags: Vec<(Tag, Time, Diff)> = one.tags.clone();
    tags.sort_by_key(|(_, t, _)| *t);
    assert!(tags.iter().all(|(_, _, r)| *r == 1), "stored tags are insertions");
    let (mut moved, mut merged_identities) = (0, 0);
    let mut previous: BTreeSet<(String, String)> = BTreeSet::new();
    for epoch in 0..=epochs {
        let stored: Vec<Tag> = tags.iter().filter(|(_, t, _)| *t <= epoch).map(|(tag, _, _)| tag.clone()).collect();
        let refs = references_at(&one, epoch);
        let want = recompute(&stored, &refs);
        let got: BTreeSet<RollupRow> = at(&one.rollups, epoch, "rollups").into_iter().collect();
        if got != want {
            let missing: Vec<_> = want.difference(&got).take(3).collect();
            let extra: Vec<_> = got.difference(&want).take(3).collect();
            panic!(
                "epoch {epoch}: {} rows wanted, {} got; missing {missing:#?}; extra {extra:#?}",
                want.len(),
                got.len()
            );
        }
        let now: BTreeSet<(String, String)> =
            refs.attacker_identity.iter().map(|(a, i)| (a.clone(), i.clone())).collect();
        moved += previous.difference(&now).count();
        merged_identities = refs.identity_canonical.iter().filter(|(i, c)| i != c).count();
        previous = now;
    }
    // The corpus exercises what the rollups follow: attackers leaving their identity
    // (merges and unmerges) and identities merged into others.
    assert!(moved > 0 && merged_identities > 0, "moves {moved}, merged identities {merged_identities}");

    // Two workers, each row emitted once at the end (or as its session closes): the rows
    // end the same.
    let (two, _) = capture(&rules_dir, inputs, 2, 1024, Emission::Final);
    assert!(two.rollups.iter().all(|(_, _, r)| *r == 1), "final emission retracts nothing");
    assert_eq!(at(&two.rollups, epochs, "rollups on two workers"), at(&one.rollups, epochs, "rollups"));
}
