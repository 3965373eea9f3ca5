//! Benchmarks of the graph's stages on a generated fleet, per record / tag.
//!
//! Input: `ttpflow generate` in memory (20,000 events, 2,000 attackers, seed 7); pack:
//! DECNET's pack when `TTPFLOW_CONFORMANCE_DIR` (or `../shared/conformance`) holds it,
//! else the project's. Benches: `decode` (JSON lines into events and table rows),
//! `evaluate/<source kind>` (the compiled rule set of each kind, per subject), `anchor`
//! (the IP anchoring stage over the tables and the events, in a dataflow), `rollup` (the
//! rollup stage over the stored tags and references of a whole run, in a dataflow) and
//! `graph` (the whole graph over every record, one epoch).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use differential_dataflow::input::Input;
use timely::dataflow::ProbeHandle;
use ttpflow::generate::{self, Options};
use ttpflow::rules::{self, LoadOptions};
use ttpflow_dataflows::decode::{decode, Decoded};
use ttpflow_dataflows::fanout::subjects;
use ttpflow_dataflows::json::Json;
use ttpflow_dataflows::record::{Event, Line, Pos, Subject, TableUpdate, Tag};
use ttpflow_dataflows::rules::RulePack;
use ttpflow_dataflows::types::{Diff, Time};
use ttpflow_dataflows::{anchor, rollup, PackSchedule};

fn pack() -> RulePack {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let conformance = std::env::var_os("TTPFLOW_CONFORMANCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("../shared/conformance"));
    let decnet = conformance.join("decnet/rules");
    let dir = if decnet.is_dir() { decnet } else { root.join("rules") };
    rules::load(&dir, &LoadOptions::default()).expect("pack loads").pack
}

/// The generated fleet's records: tables first, then events, as one input.
fn fleet_lines() -> Vec<Line> {
    let options =
        Options { events: 20_000, attackers: 2_000, identities: 600, campaigns: 20, seed: 7, ..Options::default() };
    let (mut tables, mut events) = (Vec::new(), Vec::new());
    generate::generate(&options, (&mut tables, "tables"), (&mut events, "events")).expect("generates");
    let text = String::from_utf8(tables).unwrap() + &String::from_utf8(events).unwrap();
    text.lines()
        .enumerate()
        .map(|(i, line)| Line {
            pos: Pos { ts: 0, input: 0, offset: i as u64 },
            topic: None,
            text: Ok(line.to_string()),
        })
        .collect()
}

fn decoded(lines: &[Line]) -> (Vec<Event>, Vec<TableUpdate>) {
    let (mut events, mut tables) = (Vec::new(), Vec::new());
    for line in lines.iter().cloned() {
        match decode(line) {
            Decoded::Event(e) => events.push(e),
            Decoded::Table(t) => tables.push(t),
            Decoded::Dead(_) => {}
        }
    }
    (events, tables)
}

fn bench_decode(c: &mut Criterion) {
    let lines = fleet_lines();
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(lines.len() as u64));
    group.bench_function("generated fleet records", |b| {
        b.iter_batched(|| lines.clone(), |lines| lines.into_iter().map(decode).count(), BatchSize::LargeInput)
    });
    group.finish();
}

fn bench_evaluate(c: &mut Criterion) {
    let pack = pack();
    let (events, _) = decoded(&fleet_lines());
    let subjects: Vec<Subject> = events
        .into_iter()
        .map(|mut e| {
            // Rules read anchored events: give every event an attacker, as anchoring would.
            if !e.has_anchor() {
                Arc::make_mut(&mut e.payload).set("attacker_uuid", Json::Str("bench".into()));
            }
            e
        })
        .flat_map(subjects)
        .collect();
    let mut kinds: Vec<&str> = subjects.iter().map(|s| s.source_kind.as_str()).collect();
    kinds.sort_unstable();
    kinds.dedup();
    let mut group = c.benchmark_group("evaluate");
    for kind in kinds {
        let of_kind: Vec<&Subject> = subjects.iter().filter(|s| s.source_kind == kind).collect();
        group.throughput(Throughput::Elements(of_kind.len() as u64));
        group.bench_function(kind, |b| {
            let mut out = Vec::new();
            b.iter(|| {
                out.clear();
                for s in &of_kind {
                    pack.evaluate(s, &mut out);
                }
                out.len()
            })
        });
    }
    group.finish();
}

fn bench_anchor(c: &mut Criterion) {
    let (events, tables) = decoded(&fleet_lines());
    let mut group = c.benchmark_group("anchor");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("events against the attackers table", |b| {
        b.iter_batched(
            || (events.clone(), tables.clone()),
            |(events, tables)| {
                let anchored = Arc::new(Mutex::new(0usize));
                let count = Arc::clone(&anchored);
                timely::execute_directly(move |worker| {
                    let (mut events_in, mut tables_in) = worker.dataflow::<Time, _, _>(|scope| {
                        let (events_in, events) = scope.new_collection::<Event, Diff>();
                        let (tables_in, tables) = scope.new_collection::<TableUpdate, Diff>();
                        anchor::stage(events, tables).events.inspect(move |_| *count.lock().unwrap() += 1);
                        (events_in, tables_in)
                    });
                    tables.into_iter().for_each(|t| tables_in.insert(t));
                    events.into_iter().for_each(|e| events_in.insert(e));
                });
                let n = *anchored.lock().unwrap();
                n
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

/// What the rollup stage reads, captured from a whole run of the graph.
#[derive(Default)]
struct RollupInput {
    tags: Vec<Tag>,
    attacker_identity: Vec<(String, String)>,
    identity_canonical: Vec<(String, String)>,
    identity_campaign: Vec<(String, String)>,
}

fn rollup_input(lines: Vec<Line>, pack: RulePack) -> RollupInput {
    let captured = Arc::new(Mutex::new(RollupInput::default()));
    let sink = Arc::clone(&captured);
    timely::execute_directly(move |worker| {
        let mut input = worker.dataflow::<Time, _, _>(|scope| {
            let (input, records) = scope.new_collection::<Line, Diff>();
            let out = ttpflow_dataflows::build(records, PackSchedule::fixed(Arc::new(pack)), rollup::Emission::Final);
            let s = Arc::clone(&sink);
            out.tags.inspect(move |(tag, _, _)| s.lock().unwrap().tags.push(tag.clone()));
            let s = Arc::clone(&sink);
            out.references
                .attacker_identity
                .inspect(move |(x, _, _)| s.lock().unwrap().attacker_identity.push(x.clone()));
            let s = Arc::clone(&sink);
            out.references
                .identity_canonical
                .inspect(move |(x, _, _)| s.lock().unwrap().identity_canonical.push(x.clone()));
            let s = Arc::clone(&sink);
            out.references
                .identity_campaign
                .inspect(move |(x, _, _)| s.lock().unwrap().identity_campaign.push(x.clone()));
            input
        });
        lines.into_iter().for_each(|l| input.insert(l));
    });
    Arc::try_unwrap(captured).ok().expect("the run is over").into_inner().unwrap()
}

fn bench_rollup(c: &mut Criterion) {
    let input = rollup_input(fleet_lines(), pack());
    let mut group = c.benchmark_group("rollup");
    group.throughput(Throughput::Elements(input.tags.len() as u64));
    group.bench_function("stored tags into every scope", |b| {
        b.iter_batched(
            || {
                (
                    input.tags.clone(),
                    input.attacker_identity.clone(),
                    input.identity_canonical.clone(),
                    input.identity_campaign.clone(),
                )
            },
            |(tags, attacker_identity, identity_canonical, identity_campaign)| {
                let rows = Arc::new(Mutex::new(0usize));
                let count = Arc::clone(&rows);
                timely::execute_directly(move |worker| {
                    let mut inputs = worker.dataflow::<Time, _, _>(|scope| {
                        let (tags_in, tags) = scope.new_collection::<Tag, Diff>();
                        let (a_in, a) = scope.new_collection::<(String, String), Diff>();
                        let (i_in, i) = scope.new_collection::<(String, String), Diff>();
                        let (c_in, c) = scope.new_collection::<(String, String), Diff>();
                        let (_bumps_in, bumps) = scope.new_collection();
                        rollup::rollup(tags, a, i, c, bumps, rollup::SESSION_HORIZON_US, rollup::Emission::EveryEpoch)
                            .rows
                            .inspect(move |_| *count.lock().unwrap() += 1);
                        (tags_in, a_in, i_in, c_in, _bumps_in)
                    });
                    attacker_identity.into_iter().for_each(|x| inputs.1.insert(x));
                    identity_canonical.into_iter().for_each(|x| inputs.2.insert(x));
                    identity_campaign.into_iter().for_each(|x| inputs.3.insert(x));
                    tags.into_iter().for_each(|t| inputs.0.insert(t));
                });
                let n = *rows.lock().unwrap();
                n
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

fn bench_graph(c: &mut Criterion) {
    let lines = fleet_lines();
    let pack = Arc::new(pack());
    let mut group = c.benchmark_group("graph");
    group.sample_size(10);
    group.throughput(Throughput::Elements(lines.len() as u64));
    group.bench_function("every stage, one epoch", |b| {
        b.iter_batched(
            || lines.clone(),
            |lines| {
                let packs = PackSchedule::fixed(Arc::clone(&pack));
                timely::execute_directly(move |worker| {
                    let probe = ProbeHandle::new();
                    let mut input = worker.dataflow::<Time, _, _>(|scope| {
                        let (input, records) = scope.new_collection::<Line, Diff>();
                        ttpflow_dataflows::build(records, packs, rollup::Emission::Final).tags.probe_with(&probe);
                        input
                    });
                    lines.into_iter().for_each(|l| input.insert(l));
                });
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench_decode, bench_evaluate, bench_anchor, bench_rollup, bench_graph);
criterion_main!(benches);
