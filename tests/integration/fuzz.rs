//! Fuzz: generated hostile inputs through decode, the graph and both sinks (JSONL and
//! PostgreSQL) — records of every shape with fields set to arbitrary JSON values, bytes
//! flipped, lines cut short, raw bytes and deep or huge values.
//!
//! Bounded: `TTPFLOW_FUZZ_CASES` cases (default 40) of up to 40 lines each, run in-process;
//! then every case's lines together through a PostgreSQL run. Each case asserts that the
//! run finishes (no worker panics), that every line that is not a JSON object is exactly
//! one dead letter with a reason of its own, that no line gets two decode letters, and that
//! the PostgreSQL tables equal the JSONL outputs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use serde_json::Value;
use ttpflow::rules::{self, LoadOptions};
use ttpflow::runtime::{self, RunOptions};
use ttpflow_dataflows::rules::RulePack;

use crate::common::{self, root};

/// Up to three lines of every shape of a generated fleet and of the bundled example.
fn templates() -> &'static [Value] {
    static TEMPLATES: OnceLock<Vec<Value>> = OnceLock::new();
    TEMPLATES.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_ttpflow"))
            .args(["generate", "--events", "2000", "--seed", "3", "--out"])
            .arg(dir.path())
            .output()
            .expect("ttpflow generate");
        assert!(status.status.success());
        let mut per_shape: BTreeMap<String, usize> = BTreeMap::new();
        let mut out = Vec::new();
        for file in
            [dir.path().join("tables.jsonl"), dir.path().join("events.jsonl"), root().join("examples/fleet.jsonl")]
        {
            let text = std::fs::read_to_string(&file).unwrap();
            // The example holds bad lines on purpose: only records are templates.
            for record in text.lines().filter_map(|line| serde_json::from_str::<Value>(line).ok()) {
                let shape = format!("{}|{}", record["topic"], record["type"]);
                let seen = per_shape.entry(shape).or_default();
                if *seen < 3 {
                    *seen += 1;
                    out.push(record);
                }
            }
        }
        out
    })
}

/// Arbitrary JSON, hostile leaves included.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |x| serde_json::Number::from_f64(x).map(Value::Number)),
        any::<String>().prop_map(Value::String),
        Just(Value::String("\u{0}".into())),
        Just(Value::String("a".repeat(5000))),
        Just(Value::String("-220000000000".into())),
        Just(Value::String("2026-02-31T00:00:00Z".into())),
        Just(Value::String("9999-12-31T23:59:60Z".into())),
        Just(Value::from(-220_000_000_000i64)),
        Just(Value::from(u64::MAX)),
        "[a-z./ ;|&$()'\"-]{0,60}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(("[a-z_]{1,12}", inner), 0..6)
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

/// Payload (or row) fields worth hitting besides the template's own.
const FIELDS: &[&str] = &[
    "attacker_uuid",
    "attacker_ip",
    "src_ip",
    "identity_uuid",
    "session_id",
    "decky_id",
    "commands",
    "ended_at",
    "ts",
    "observed_at",
    "first_seen",
    "username",
    "password",
    "result",
    "rcpt_count",
    "rcpt_domains",
    "body_text",
    "subject",
    "fail_count",
    "credential_hash",
    "attackers",
    "merged_into_uuid",
    "identity_id",
    "ip",
    "uuid",
    "aggregate_verdict",
    "providers",
    "headers",
    "raw_url",
    "token_id",
    "tz_mismatch_zones",
];

#[derive(Debug, Clone)]
enum Mutation {
    Keep,
    /// Sets a field of the payload (or table row) to a value.
    Set(usize, Value),
    /// Sets a top-level field of the envelope.
    Envelope(usize, Value),
    /// Flips a byte of the serialised line.
    Flip(usize, u8),
    /// Cuts the serialised line short.
    Cut(usize),
    /// Raw bytes instead of the line.
    Bytes(Vec<u8>),
    /// The line nested in arrays, deeper than a parser allows.
    Deep(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        2 => Just(Mutation::Keep),
        6 => (0..FIELDS.len() + 8, json()).prop_map(|(f, v)| Mutation::Set(f, v)),
        1 => (0..5usize, json()).prop_map(|(f, v)| Mutation::Envelope(f, v)),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Mutation::Flip(at, b)),
        1 => any::<usize>().prop_map(Mutation::Cut),
        1 => prop::collection::vec(any::<u8>(), 0..80).prop_map(Mutation::Bytes),
        1 => (100..300usize).prop_map(Mutation::Deep),
    ]
}

fn apply(template: &Value, mutation: &Mutation) -> Vec<u8> {
    let mut record = template.clone();
    let body = if record.get("payload").is_some() { "payload" } else { "value" };
    match mutation {
        Mutation::Set(field, value) => {
            if let Some(object) = record.get_mut(body).and_then(Value::as_object_mut) {
                let name = match FIELDS.get(*field) {
                    Some(name) => name.to_string(),
                    None => object.keys().nth(field - FIELDS.len()).cloned().unwrap_or_else(|| "extra".into()),
                };
                object.insert(name, value.clone());
            }
        }
        Mutation::Envelope(field, value) => {
            let name = ["topic", "type", "ts", "payload", "key"][*field];
            record[name] = value.clone();
        }
        Mutation::Deep(depth) => return format!("{}{}{}", "[".repeat(*depth), record, "]".repeat(*depth)).into_bytes(),
        Mutation::Bytes(bytes) => return bytes.iter().map(|&b| if b == b'\n' { b' ' } else { b }).collect(),
        Mutation::Keep | Mutation::Flip(..) | Mutation::Cut(_) => {}
    }
    let mut line = record.to_string().into_bytes();
    match mutation {
        Mutation::Flip(at, byte) if !line.is_empty() => {
            let at = at % line.len();
            line[at] = if *byte == b'\n' { b'\r' } else { *byte };
        }
        Mutation::Cut(at) if !line.is_empty() => line.truncate(at % line.len()),
        _ => {}
    }
    line
}

fn case() -> impl Strategy<Value = Vec<(usize, Mutation)>> {
    prop::collection::vec((any::<usize>(), mutation()), 1..40)
}

/// The reasons decode gives.
const DECODE_REASONS: &[&str] =
    &["invalid_utf8", "invalid_json", "not_an_object", "missing_field", "wrong_type", "unknown_topic", "oversize"];

/// Runs `lines` in-process and checks what the module doc says; returns the lines.
fn check(dir: &Path, pack: &Arc<RulePack>, n: usize, lines: &[Vec<u8>]) -> Result<(), TestCaseError> {
    let input = dir.join(format!("case-{n}.jsonl"));
    std::fs::write(&input, lines.join(&b"\n"[..])).unwrap();
    let out = dir.join(format!("out-{n}"));
    let summary = runtime::run_files(RunOptions {
        inputs: vec![input.clone()],
        out: out.clone(),
        workers: 1 + n % 2,
        epoch_records: 1 + (n as u64 * 7) % 23,
        pack: Arc::clone(pack),
        artifacts_dir: None,
        postgres: None,
        sink_timeout: None,
        stage_times: None,
    });
    let summary = summary.map_err(|e| TestCaseError::fail(format!("the run fails: {e}")))?;
    let (_, letters) = common::read_jsonl(&out.join("dead_letters.jsonl"));
    let mut decode_letters: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for letter in &letters {
        let reason = letter["reason"].as_str().unwrap_or_default().to_string();
        if DECODE_REASONS.contains(&reason.as_str()) {
            decode_letters.entry(letter["line"].as_i64().unwrap()).or_default().push(reason);
        }
    }
    for (number, line) in lines.iter().enumerate() {
        let number = number as i64 + 1;
        let got = decode_letters.get(&number).map(Vec::as_slice).unwrap_or_default();
        prop_assert!(got.len() <= 1, "line {number} has {got:?}");
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if !matches!(serde_json::from_slice::<Value>(line), Ok(Value::Object(_))) {
            let reason = got.first().map(String::as_str);
            prop_assert!(
                matches!(reason, Some("invalid_utf8" | "invalid_json" | "not_an_object" | "oversize")),
                "line {number} is no JSON object but got {reason:?}: {}",
                String::from_utf8_lossy(&line[..line.len().min(200)])
            );
        }
    }
    prop_assert!(summary.records as usize <= lines.len());
    Ok(())
}

#[test]
fn hostile_inputs_end_as_outputs_or_dead_letters_in_both_sinks() {
    let dir = tempfile::tempdir().unwrap();
    let loaded = rules::load(&root().join("rules"), &LoadOptions::default()).expect("pack loads");
    let pack = Arc::new(loaded.pack);
    let cases: u32 = std::env::var("TTPFLOW_FUZZ_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(40);
    let templates = templates();
    // A seed of its own each run (TTPFLOW_FUZZ_SEED repeats one), printed so that a failure
    // can be run again.
    let seed: u64 = std::env::var("TTPFLOW_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    println!("fuzz: seed {seed} (TTPFLOW_FUZZ_SEED={seed} repeats this run)");
    let mut bytes = [0u8; 32];
    for (i, chunk) in bytes.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(i as u64).to_le_bytes());
    }
    let config = Config { cases, failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes));
    let all: std::cell::RefCell<Vec<Vec<u8>>> = Default::default();
    let count = std::cell::Cell::new(0usize);
    runner
        .run(&case(), |picks| {
            let lines: Vec<Vec<u8>> = picks.iter().map(|(t, m)| apply(&templates[t % templates.len()], m)).collect();
            let n = count.get();
            count.set(n + 1);
            check(dir.path(), &pack, n, &lines)?;
            all.borrow_mut().extend(lines);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    let all = all.into_inner();
    println!("fuzz: {} cases, {} lines", count.get(), all.len());

    // Every case's lines at once through PostgreSQL: the run commits every record and the
    // tables equal the JSONL outputs.
    let input: PathBuf = dir.path().join("all.jsonl");
    std::fs::write(&input, all.join(&b"\n"[..])).unwrap();
    let url = crate::postgres::database("fuzz_all");
    let out = dir.path().join("out-pg");
    runtime::run_files(RunOptions {
        inputs: vec![input.clone()],
        out: out.clone(),
        workers: 2,
        epoch_records: 64,
        pack,
        artifacts_dir: None,
        postgres: Some(url.clone()),
        sink_timeout: None,
        stage_times: None,
    })
    .unwrap_or_else(|e| panic!("the PostgreSQL run fails: {e}"));
    let (_, tags) = common::read_jsonl(&out.join("tags.jsonl"));
    let stored = crate::postgres::stored_tags(&url);
    assert_eq!(stored.len(), tags.len(), "ttp_tag holds every tag of tags.jsonl");
    for tag in &tags {
        let uuid = tag["uuid"].as_str().unwrap();
        let row = stored.get(uuid).unwrap_or_else(|| panic!("tag {uuid} is not stored"));
        assert_eq!(row["evidence"], tag["evidence"], "{uuid}");
        assert_eq!(row["source_id"], tag["source_id"], "{uuid}");
    }
    let (_, letters) = common::read_jsonl(&out.join("dead_letters.jsonl"));
    assert!(letters.iter().all(|l| l["reason"] != "sink_rejected"), "nothing the decoder lets through is refused");
}
