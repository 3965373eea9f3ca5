//! Detection: the project's pack on labelled attack procedures (recall) and on DECNET's labelled precision corpus.
//!
//! The figures are regression floors: the pack must keep detecting at least as many
//! procedures as it does today, and tag no more of them only with other techniques.
//! `benches/recall.py` prints the same figures by technique.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_json::{json, Value};

use crate::common::{conformance, root, run};

/// Tests of `atomic-linux-dev.json` whose labelled technique the pack finds, at least.
const RECALL_FLOOR: usize = 182;
/// Tests tagged only with techniques other than their label, at most.
const OTHER_ONLY_CEILING: usize = 25;
/// Positive rows of DECNET's precision corpus whose technique the pack finds, at least.
const PRECISION_POSITIVES_FLOOR: usize = 78;

/// The labelled procedures (`TTPFLOW_DETECTION_DIR`, else `../shared/detection`), or `None`
/// after printing why the caller skips.
fn detection_file() -> Option<PathBuf> {
    let dir = std::env::var_os("TTPFLOW_DETECTION_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared/detection"));
    let file = dir.join("atomic-linux-dev.json");
    if file.is_file() {
        Some(file)
    } else {
        crate::common::missing("the recall check", &file)
    }
}

fn parent(technique: &str) -> &str {
    technique.split('.').next().unwrap_or(technique)
}

/// Each test as one session of an anchored attacker of its own, its lines as commands.
fn procedure_records(tests: &[Value]) -> Vec<String> {
    let mut lines = Vec::new();
    for i in 0..tests.len() {
        let attacker = format!("atomic-{i}");
        let row = json!({"uuid": attacker, "ip": format!("10.77.{}.{}", i / 250, i % 250)});
        lines.push(json!({"topic": "decnet.attackers", "key": attacker, "value": row}).to_string());
    }
    for (i, test) in tests.iter().enumerate() {
        let commands: Vec<Value> = test["commands"]
            .as_array()
            .expect("commands")
            .iter()
            .enumerate()
            .map(|(j, c)| json!({"command_text": c, "id": format!("atomic-{i}-cmd{j}")}))
            .collect();
        let payload =
            json!({"attacker_uuid": format!("atomic-{i}"), "session_id": format!("atomic-{i}"), "commands": commands});
        lines.push(json!({"topic": "attacker.session.ended", "type": "session.ended", "payload": payload}).to_string());
    }
    lines
}

fn write_lines(dir: &std::path::Path, lines: &[String]) -> PathBuf {
    let path = dir.join("input.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").expect("write input");
    path
}

#[test]
fn the_project_pack_detects_labelled_procedures() {
    let Some(file) = detection_file() else { return };
    let tests: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    assert!(tests.len() > 100, "{} labelled tests", tests.len());
    let dir = tempfile::tempdir().unwrap();
    let input = write_lines(dir.path(), &procedure_records(&tests));
    let out = run(&root().join("rules"), &[input], 1, 16_384);
    let mut by_session: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for tag in &out.tags {
        if let Some(session) = tag["session_id"].as_str() {
            by_session.entry(session).or_default().insert(parent(tag["technique_id"].as_str().unwrap()));
        }
    }
    let (mut found, mut other_only) = (0, 0);
    let mut missed = Vec::new();
    for (i, test) in tests.iter().enumerate() {
        let label = parent(test["technique"].as_str().unwrap());
        let got = by_session.get(format!("atomic-{i}").as_str());
        match got {
            Some(got) if got.contains(label) => found += 1,
            Some(_) => other_only += 1,
            None => missed.push(test["technique"].as_str().unwrap()),
        }
    }
    println!("recall {found}/{} other_only {other_only}", tests.len());
    assert!(
        found >= RECALL_FLOOR,
        "recall fell to {found}/{} (floor {RECALL_FLOOR}); untagged: {missed:?}",
        tests.len()
    );
    assert!(other_only <= OTHER_ONLY_CEILING, "{other_only} tests tagged only with other techniques");
}

#[test]
fn the_project_pack_finds_decnets_precision_rows_and_spares_the_negative_ones() {
    let Some(conf) = conformance("the precision corpus check") else { return };
    let (_, tables) = crate::common::read_jsonl(&conf.join("corpus/precision_tables.jsonl"));
    let (_, rows) = crate::common::read_jsonl(&conf.join("corpus/precision_events.jsonl"));
    // The techniques each of DECNET's rules emits: what a labelled row expects.
    let decnet = ttpflow::rules::load(&conf.join("decnet/rules"), &Default::default()).unwrap();
    let techniques: BTreeMap<&str, BTreeSet<&str>> = decnet
        .pack
        .rules()
        .iter()
        .map(|r| (r.rule_id.as_str(), r.emits.iter().map(|e| e.technique_id.as_str()).collect()))
        .collect();
    // Every row has an attacker of its own: by uuid in its payload, or by IP through the tables.
    let by_ip: BTreeMap<&str, &str> = tables
        .iter()
        .filter(|t| t["topic"] == "decnet.attackers")
        .filter_map(|t| Some((t["value"]["ip"].as_str()?, t["value"]["uuid"].as_str()?)))
        .collect();
    let attacker_of = |row: &Value| {
        let p = &row["payload"];
        p["attacker_uuid"]
            .as_str()
            .or_else(|| p["attacker_ip"].as_str().or(p["src_ip"].as_str()).and_then(|ip| by_ip.get(ip).copied()))
            .map(str::to_string)
    };
    let mut lines: Vec<String> = tables.iter().map(Value::to_string).collect();
    for row in &rows {
        lines.push(json!({"topic": row["topic"], "type": row["type"], "payload": row["payload"]}).to_string());
    }
    let dir = tempfile::tempdir().unwrap();
    let out = run(&root().join("rules"), &[write_lines(dir.path(), &lines)], 1, 16_384);
    let mut by_attacker: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for tag in &out.tags {
        if let Some(a) = tag["attacker_uuid"].as_str() {
            by_attacker.entry(a).or_default().insert(tag["technique_id"].as_str().unwrap());
        }
    }
    let (mut positives, mut found, mut missed, mut negatives_tagged) = (0, 0, Vec::new(), Vec::new());
    for row in &rows {
        let attacker = attacker_of(row).expect("every row is anchored");
        let got = by_attacker.get(attacker.as_str()).cloned().unwrap_or_default();
        let expected = row["expected_rule_ids"].as_array().unwrap();
        if expected.is_empty() {
            if !got.is_empty() {
                negatives_tagged.push((row["label"].as_str().unwrap(), got));
            }
            continue;
        }
        positives += 1;
        let want: BTreeSet<&str> =
            expected.iter().flat_map(|r| techniques.get(r.as_str().unwrap()).cloned().unwrap_or_default()).collect();
        if got.intersection(&want).next().is_some() {
            found += 1;
        } else {
            missed.push(row["label"].as_str().unwrap());
        }
    }
    println!("precision corpus: {found}/{positives} positive rows found");
    assert!(found >= PRECISION_POSITIVES_FLOOR, "{found}/{positives} positive rows found; missed: {missed:?}");
    assert!(negatives_tagged.is_empty(), "negative rows tagged: {negatives_tagged:?}");
}
