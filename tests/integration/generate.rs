//! Generate: a synthetic fleet runs through the job and the project's pack without dead letters.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use crate::common::{self, root};

fn ttpflow(args: &[&str], dir: &Path) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_ttpflow")).current_dir(root()).args(args).arg(dir).output();
    let output = output.expect("ttpflow runs");
    assert!(output.status.success(), "ttpflow {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    output
}

const FLEET: &[&str] =
    &["generate", "--events", "4000", "--attackers", "200", "--identities", "40", "--campaigns", "5", "--seed", "7"];

/// How many events name an address before the attacker row that claims it.
fn events_before_their_attacker(events: &Path) -> usize {
    let (_, records) = common::read_jsonl(events);
    let ip = |r: &serde_json::Value| {
        let p = &r["payload"];
        p["attacker_ip"].as_str().or(p["src_ip"].as_str()).map(str::to_string)
    };
    let late: BTreeMap<String, usize> = records
        .iter()
        .enumerate()
        .filter(|(_, r)| r["topic"] == "decnet.attackers")
        .map(|(n, r)| (r["value"]["ip"].as_str().unwrap().to_string(), n))
        .collect();
    records.iter().enumerate().filter(|(n, r)| ip(r).and_then(|ip| late.get(&ip)).is_some_and(|at| n < at)).count()
}

#[test]
fn a_generated_fleet_is_tagged_by_every_kind_of_source_without_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = dir.path().join("fleet");
    let generated = ttpflow(&[FLEET, &["--orphan-permille", "0", "--late-permille", "150", "--out"]].concat(), &fleet);
    let stderr = String::from_utf8_lossy(&generated.stderr);
    assert!(stderr.contains(" events=4000 ") && stderr.contains(" orphans=0 "), "{stderr}");
    let (tables, events) = (fleet.join("tables.jsonl"), fleet.join("events.jsonl"));
    assert!(events_before_their_attacker(&events) > 20, "some events wait for a late attacker row");
    let out = dir.path().join("out");
    let args = ["run", "--rules", "rules", "--input", tables.to_str().unwrap(), "--input", events.to_str().unwrap()];
    let ran = ttpflow(&[&args[..], &["--out"]].concat(), &out);
    let (_, dead_letters) = common::read_jsonl(&out.join("dead_letters.jsonl"));
    assert!(dead_letters.is_empty(), "late attackers anchor, nothing else fails: {dead_letters:?}");
    let (_, tags) = common::read_jsonl(&out.join("tags.jsonl"));
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for tag in &tags {
        *kinds.entry(tag["source_kind"].as_str().unwrap().to_string()).or_default() += 1;
    }
    for kind in [
        "command",
        "session",
        "auth_attempt",
        "credential",
        "identity",
        "email",
        "intel",
        "canary_fingerprint",
        "http_request",
        "ipv6_leak",
    ] {
        assert!(kinds.contains_key(kind), "tags of {kind}: {kinds:?}\n{}", String::from_utf8_lossy(&ran.stdout));
    }
    // Windowed rules fire on the bursts (brute force, guessing, spraying, reuse).
    let rules: std::collections::BTreeSet<&str> = tags.iter().map(|t| t["rule_id"].as_str().unwrap()).collect();
    for rule in ["TF0031", "TF0032", "TF0033", "TF0034"] {
        assert!(rules.contains(rule), "{rule} fires: {rules:?}");
    }
}

#[test]
fn standard_output_carries_the_tables_then_the_events_and_orphans_stay_unanchored() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = dir.path().join("fleet");
    ttpflow(&[FLEET, &["--orphan-permille", "10", "--out"]].concat(), &fleet);
    let piped = Command::new(env!("CARGO_BIN_EXE_ttpflow")).args(FLEET).args(["--orphan-permille", "10"]).output();
    let piped = piped.expect("ttpflow runs");
    assert!(piped.status.success());
    let mut files = std::fs::read(fleet.join("tables.jsonl")).unwrap();
    files.extend(std::fs::read(fleet.join("events.jsonl")).unwrap());
    assert!(piped.stdout == files, "standard output differs from tables.jsonl + events.jsonl");
    let stderr = String::from_utf8_lossy(&piped.stderr);
    let orphans: usize = stderr
        .split_whitespace()
        .find_map(|f| f.strip_prefix("orphans="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("summary names the orphans: {stderr}"));
    assert!(orphans > 10, "{stderr}");
    let out = common::run(&root().join("rules"), &[fleet.join("tables.jsonl"), fleet.join("events.jsonl")], 1, 512);
    assert!(out.dead_letters.iter().all(|d| d["reason"] == "unanchored"), "{}", out.dead_letters_text);
    assert_eq!(out.dead_letters.len(), orphans, "each orphan event, and only those, ends unanchored");
}
