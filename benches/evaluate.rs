//! Benchmarks of decode and rule evaluation, per record / per subject.
//!
//! Input: the bundled example fleet, repeated; pack: DECNET's pack when
//! `TTPFLOW_CONFORMANCE_DIR` (or `../shared/conformance`) holds it, else the project's.

use std::path::{Path, PathBuf};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ttpflow::rules::{self, LoadOptions};
use ttpflow_dataflows::decode::{decode, Decoded};
use ttpflow_dataflows::fanout::subjects;
use ttpflow_dataflows::record::{Line, Pos, Subject};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn pack_dir() -> PathBuf {
    let conformance = std::env::var_os("TTPFLOW_CONFORMANCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared/conformance"));
    let decnet = conformance.join("decnet/rules");
    if decnet.is_dir() {
        decnet
    } else {
        root().join("rules")
    }
}

fn lines(path: &Path, copies: usize) -> Vec<Line> {
    let text = std::fs::read_to_string(path).expect("the bundled example exists");
    let base: Vec<&str> = text.lines().collect();
    (0..copies * base.len())
        .map(|i| Line {
            pos: Pos { ts: 0, input: 0, offset: i as u64 },
            topic: None,
            text: Ok(base[i % base.len()].to_string()),
        })
        .collect()
}

fn bench_decode(c: &mut Criterion) {
    let input = lines(&root().join("examples/fleet.jsonl"), 50);
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(input.len() as u64));
    group.bench_function("fleet example records", |b| {
        b.iter(|| input.iter().cloned().map(decode).filter(|d| matches!(d, Decoded::Event(_))).count())
    });
    group.finish();
}

fn bench_evaluate(c: &mut Criterion) {
    let loaded = rules::load(&pack_dir(), &LoadOptions::default()).expect("pack loads");
    let subjects: Vec<Subject> = lines(&root().join("examples/fleet.jsonl"), 50)
        .into_iter()
        .filter_map(|l| match decode(l) {
            Decoded::Event(mut e) => {
                std::sync::Arc::make_mut(&mut e.payload)
                    .set("attacker_uuid", ttpflow_dataflows::json::Json::Str("bench".into()));
                Some(e)
            }
            _ => None,
        })
        .flat_map(subjects)
        .collect();
    let mut group = c.benchmark_group("evaluate");
    for kind in ["command", "http_request", "session"] {
        let of_kind: Vec<&Subject> = subjects.iter().filter(|s| s.source_kind == kind).collect();
        group.throughput(Throughput::Elements(of_kind.len() as u64));
        group.bench_function(kind, |b| {
            let mut out = Vec::new();
            b.iter(|| {
                out.clear();
                for s in &of_kind {
                    loaded.pack.evaluate(s, &mut out);
                }
                out.len()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_decode, bench_evaluate);
criterion_main!(benches);
