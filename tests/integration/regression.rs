//! Regression: DECNET's pack, corpora and stored tags; ttpflow must reproduce them.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;
use ttpflow::rules::{self, LoadOptions};

use crate::common::{conformance, read_jsonl, run};

/// The fields compare.py checks.
const FIELDS: &[&str] = &[
    "source_kind",
    "source_id",
    "attacker_uuid",
    "identity_uuid",
    "session_id",
    "decky_id",
    "tactic",
    "technique_id",
    "sub_technique_id",
    "confidence",
    "rule_id",
    "rule_version",
    "evidence",
    "attack_release",
];

/// Whether ttpflow must reproduce a DECNET tag exactly: every one but those DESIGN §2
/// changes on purpose (per-session intel catch-up copies, canary tags keyed by token).
fn owned(row: &Value) -> bool {
    let source_id = row["source_id"].as_str().unwrap_or_default();
    !source_id.starts_with("intel-catchup:") && row["source_kind"] != "canary_fingerprint"
}
/// Kinds where DECNET is right about every event, so an extra tag is a wrong match.
const NO_EXTRAS: &[&str] = &["command", "http_request", "ipv6_leak", "auth_attempt", "identity"];

pub fn gunzip_to(source: &Path, target: &Path) -> PathBuf {
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(source).unwrap()).read_to_string(&mut text).unwrap();
    std::fs::write(target, text).unwrap();
    target.to_path_buf()
}

fn golden(conf: &Path, corpus: &str, dir: &Path) -> Vec<Value> {
    let plain = conf.join(format!("golden/{corpus}_inserted.jsonl"));
    let path = if plain.exists() {
        plain
    } else {
        gunzip_to(&conf.join(format!("golden/{corpus}_inserted.jsonl.gz")), &dir.join("golden.jsonl"))
    };
    read_jsonl(&path).1
}

fn differing_fields(want: &Value, got: &Value) -> Vec<&'static str> {
    FIELDS
        .iter()
        .copied()
        .filter(|f| match (want[*f].as_f64(), got[*f].as_f64(), *f) {
            (Some(x), Some(y), "confidence") => (x - y).abs() > 1e-9,
            _ => want[*f] != got[*f],
        })
        .collect()
}

/// A corpus's events file, unzipped into `dir` when it is stored compressed.
fn corpus_events(conf: &Path, corpus: &str, dir: &Path) -> PathBuf {
    let plain = conf.join(format!("corpus/{corpus}_events.jsonl"));
    if plain.exists() {
        plain
    } else {
        gunzip_to(&conf.join(format!("corpus/{corpus}_events.jsonl.gz")), &dir.join("events.jsonl"))
    }
}

fn check_corpus(corpus: &str) {
    let Some(conf) = conformance(&format!("the {corpus} corpus parity check")) else { return };
    let dir = tempfile::tempdir().unwrap();
    let events = corpus_events(&conf, corpus, dir.path());
    let out = run(&conf.join("decnet/rules"), &[conf.join(format!("corpus/{corpus}_tables.jsonl")), events], 1, 4096);

    let ours: BTreeMap<&str, &Value> = out.tags.iter().map(|t| (t["uuid"].as_str().unwrap(), t)).collect();
    let gold = golden(&conf, corpus, dir.path());
    let mut expected = 0;
    let mut problems = Vec::new();
    for want in gold.iter().filter(|row| owned(row)) {
        expected += 1;
        let uuid = want["uuid"].as_str().unwrap();
        match ours.get(uuid) {
            None => problems.push(format!("missing {want}")),
            Some(got) => {
                let bad = differing_fields(want, got);
                if !bad.is_empty() {
                    problems.push(format!("{uuid}: {bad:?} differ: decnet {want} ours {got}"));
                }
            }
        }
    }
    let golden_uuids: std::collections::BTreeSet<&str> = gold.iter().map(|g| g["uuid"].as_str().unwrap()).collect();
    for (uuid, got) in &ours {
        let kind = got["source_kind"].as_str().unwrap_or_default();
        if NO_EXTRAS.contains(&kind) && !golden_uuids.contains(uuid) {
            problems.push(format!("suspicious extra {got}"));
        }
    }
    assert!(expected > 0);
    assert!(
        problems.is_empty(),
        "{corpus}: {} of {expected} rows wrong; first ones:\n{}",
        problems.len(),
        problems[..problems.len().min(10)].join("\n")
    );
}

#[test]
fn precision_corpus_matches_decnet_for_every_owned_kind() {
    check_corpus("precision");
}

#[test]
fn dev_corpus_matches_decnet_for_every_owned_kind() {
    check_corpus("dev");
}

#[test]
fn decnet_pack_loads_every_rule() {
    let Some(conf) = conformance("loading DECNET's pack") else { return };
    let loaded = rules::load(&conf.join("decnet/rules"), &LoadOptions::default()).expect("DECNET's pack loads");
    assert_eq!(loaded.pack.rules().len(), 59);
    let vectors: Value =
        serde_json::from_str(&std::fs::read_to_string(conf.join("golden/engine_vectors.json")).unwrap()).unwrap();
    for (rule, want) in loaded.pack.rules().iter().zip(vectors["rules"].as_array().unwrap()) {
        assert_eq!(rule.rule_id, want["rule_id"]);
        assert_eq!(rule.rule_version, want["rule_version"].as_i64().unwrap());
        assert_eq!(
            rule.applies_to,
            want["applies_to"].as_array().unwrap().iter().map(|k| k.as_str().unwrap()).collect::<Vec<_>>()
        );
        assert_eq!(rule.emits.len(), want["emits"].as_array().unwrap().len(), "{}", rule.rule_id);
        for (emit, w) in rule.emits.iter().zip(want["emits"].as_array().unwrap()) {
            assert_eq!(emit.technique_id, w["technique_id"]);
            assert_eq!(emit.sub_technique_id.as_deref(), w["sub_technique_id"].as_str());
            assert_eq!(emit.tactic, w["tactic"]);
            assert!((emit.confidence - w["confidence"].as_f64().unwrap()).abs() < 1e-12);
        }
        assert_eq!(
            rule.evidence_fields,
            want["evidence_fields"].as_array().unwrap().iter().map(|k| k.as_str().unwrap()).collect::<Vec<_>>()
        );
    }
}

/// What a canary tag says, apart from where it sits (DECNET keys it by token, ttpflow by trigger).
fn canary_key(tag: &Value) -> String {
    let fields = ["rule_id", "technique_id", "sub_technique_id", "attacker_uuid", "confidence", "evidence"];
    fields.iter().map(|f| tag[*f].to_string()).collect::<Vec<_>>().join("|")
}

/// Every canary tag DECNET stores for a token is a ttpflow tag on one of that token's triggers.
fn check_canary_tags_by_token(corpus: &str) {
    let Some(conf) = conformance(&format!("the {corpus} corpus canary check")) else { return };
    let dir = tempfile::tempdir().unwrap();
    let events = corpus_events(&conf, corpus, dir.path());
    // The token of every trigger, and of itself (a trigger without a trigger_id is keyed by token).
    let mut token_of: BTreeMap<String, String> = BTreeMap::new();
    for record in read_jsonl(&events).1 {
        let (topic, payload) = (record["topic"].as_str().unwrap_or_default(), &record["payload"]);
        let Some(token) = payload["token_id"].as_str().filter(|_| topic.starts_with("canary.")) else { continue };
        if let Some(trigger) = payload["trigger_id"].as_str() {
            token_of.insert(trigger.to_string(), token.to_string());
        }
        token_of.insert(token.to_string(), token.to_string());
    }
    let out = run(&conf.join("decnet/rules"), &[conf.join(format!("corpus/{corpus}_tables.jsonl")), events], 1, 4096);
    let is_canary = |t: &&Value| t["source_kind"] == "canary_fingerprint";
    let mut ours: BTreeMap<&str, std::collections::BTreeSet<String>> = BTreeMap::new();
    for tag in out.tags.iter().filter(is_canary) {
        let token = token_of.get(tag["source_id"].as_str().unwrap()).expect("a canary tag sits on a known trigger");
        ours.entry(token.as_str()).or_default().insert(canary_key(tag));
    }
    let gold = golden(&conf, corpus, dir.path());
    let wanted: Vec<&Value> = gold.iter().filter(is_canary).collect();
    assert!(!wanted.is_empty());
    let missing: Vec<String> = wanted
        .iter()
        .filter(|g| !ours.get(g["source_id"].as_str().unwrap()).is_some_and(|keys| keys.contains(&canary_key(g))))
        .map(|g| g.to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "{corpus}: {} of {} DECNET canary tags not found: {missing:#?}",
        missing.len(),
        wanted.len()
    );
}

#[test]
fn precision_corpus_canary_tags_match_decnet_by_token() {
    check_canary_tags_by_token("precision");
}

#[test]
fn dev_corpus_canary_tags_match_decnet_by_token() {
    check_canary_tags_by_token("dev");
}

#[test]
fn the_bundled_intel_tables_map_every_signal_as_decnets_do() {
    let Some(conf) = conformance("the intel table comparison") else { return };
    let decnet = ttpflow::intel_tables::load(&conf.join("decnet/intel")).expect("DECNET's tables load");
    let ours = ttpflow::intel_tables::bundled();
    for (provider, theirs) in &decnet.providers {
        let mine = &ours.providers[provider];
        let view =
            |m: &ttpflow_dataflows::intel::ProviderMapping| -> BTreeMap<String, Vec<(String, Option<f64>, f64)>> {
                m.signals
                    .iter()
                    .map(|(signal, emissions)| {
                        let mut e: Vec<_> = emissions
                            .iter()
                            .map(|e| (e.technique_id.clone(), e.high_score_threshold, e.multiplier))
                            .collect();
                        e.sort_by(|a, b| a.0.cmp(&b.0));
                        (signal.clone(), e)
                    })
                    .collect()
            };
        assert_eq!(view(mine), view(theirs), "{}", provider.name());
    }
}
