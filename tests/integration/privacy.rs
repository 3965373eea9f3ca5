//! Privacy: addresses, passwords, message bodies and credential headers planted in every
//! shape of a generated fleet reach no output and no log line, even at trace level; the
//! hashes the stream computes from secrets are keyed.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use crate::common::{self, root};

fn ttpflow(args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ttpflow"));
    cmd.current_dir(root()).args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let output = cmd.output().expect("ttpflow runs");
    assert!(output.status.success(), "ttpflow {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    output
}

/// A generated fleet: (tables, events).
fn fleet(dir: &Path) -> (String, String) {
    let fleet = dir.join("fleet");
    ttpflow(&["generate", "--events", "3000", "--seed", "11", "--out", fleet.to_str().unwrap()], &[]);
    let path = |name: &str| fleet.join(name).display().to_string();
    (path("tables.jsonl"), path("events.jsonl"))
}

/// Appends an address to every command of a payload.
fn plant_in_commands(payload: &mut Value, i: usize) {
    let Some(Value::Array(commands)) = payload.get_mut("commands") else { return };
    for command in commands {
        let text = match command {
            Value::String(text) => text,
            Value::Object(fields) => match fields.get_mut("command_text") {
                Some(Value::String(text)) => text,
                _ => continue,
            },
            _ => continue,
        };
        text.push_str(&format!(" # planted{i}.cmd@victim.example"));
    }
}

/// Every event's payload gets secrets in the fields that hold them, an address in its
/// commands and subject, and credential headers.
fn plant(events: &str, planted: &Path) -> usize {
    let (_, records) = common::read_jsonl(Path::new(events));
    let mut lines = Vec::new();
    let mut payloads = 0;
    for (i, mut record) in records.into_iter().enumerate() {
        if let Some(payload) = record.get_mut("payload").and_then(Value::as_object_mut) {
            payloads += 1;
            for (field, value) in [
                ("password", json!(format!("PLANTpw{i}x"))),
                ("secret", json!(format!("PLANTsecret{i}"))),
                ("body_text", json!(format!("PLANTbody{i} please wire the money today"))),
                ("note_text", json!(format!("PLANTnote{i}"))),
                ("mail_from", json!(format!("planted{i}.sender@victim.example"))),
                ("rcpt_to", json!([format!("planted{i}.rcpt@victim.example")])),
                ("rcpt_domains", json!([format!("planted{i}.dom@victim.example")])),
            ] {
                payload.insert(field.to_string(), value);
            }
            let headers = payload.entry("headers").or_insert_with(|| json!({}));
            if let Some(headers) = headers.as_object_mut() {
                headers.insert("Authorization".into(), json!(format!("Basic PLANTauth{i}")));
                headers.insert("Cookie".into(), json!(format!("sid=PLANTcookie{i}")));
            }
            if let Some(Value::String(subject)) = payload.get_mut("subject") {
                subject.push_str(&format!(" planted{i}.subj@victim.example"));
            }
            let mut value = Value::Object(std::mem::take(payload));
            plant_in_commands(&mut value, i);
            record["payload"] = value;
        }
        lines.push(record.to_string());
    }
    std::fs::write(planted, lines.join("\n") + "\n").unwrap();
    payloads
}

/// The project's pack and a rule that names every secret field as evidence, on every kind
/// the planted fields reach.
fn pack(dir: &Path) -> std::path::PathBuf {
    let rules = dir.join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    for entry in std::fs::read_dir(root().join("rules")).unwrap().flatten() {
        if entry.path().extension().is_some_and(|e| e == "yaml") {
            std::fs::copy(entry.path(), rules.join(entry.file_name())).unwrap();
        }
    }
    std::fs::create_dir_all(rules.join("intel")).ok();
    std::fs::write(
        rules.join("TF9999.yaml"),
        "rule_id: TF9999\nrule_version: 1\nname: every_secret_as_evidence\n\
         applies_to: [command, email, auth_attempt, http_request]\nmatch: {pattern: '.'}\n\
         emits:\n  - {tactic: TA0007, technique_id: T1082, confidence: 0.5}\n\
         evidence_fields: [password, secret, body_text, note_text, mail_from, rcpt_to, rcpt_domains, headers, \
         command_text, subject, username, raw_url]\n",
    )
    .unwrap();
    rules
}

#[test]
fn planted_secrets_reach_no_output_and_no_log_line() {
    let dir = tempfile::tempdir().unwrap();
    let (tables, events) = fleet(dir.path());
    let planted = dir.path().join("events-with-secrets.jsonl");
    let payloads = plant(&events, &planted);
    assert!(payloads > 2000, "{payloads}");
    let rules = pack(dir.path());
    let out = dir.path().join("out");
    let run = ttpflow(
        &[
            "run",
            "--rules",
            rules.to_str().unwrap(),
            "--input",
            &tables,
            "--input",
            planted.to_str().unwrap(),
            "-w",
            "2",
            "--epoch-records",
            "500",
            "--out",
            out.to_str().unwrap(),
        ],
        &[("TTPFLOW_LOG", "trace")],
    );
    let log = String::from_utf8_lossy(&run.stderr).into_owned() + &String::from_utf8_lossy(&run.stdout);
    assert!(log.contains("loaded rule pack"), "the log is written: {log}");
    let mut texts = vec![("the log", log)];
    for file in ["tags.jsonl", "rollups.jsonl", "dead_letters.jsonl"] {
        texts.push((file, std::fs::read_to_string(out.join(file)).unwrap()));
    }
    for (what, text) in &texts {
        for marker in ["PLANTpw", "PLANTsecret", "PLANTbody", "PLANTnote", "PLANTauth", "PLANTcookie", "planted"] {
            if let Some(at) = text.find(marker) {
                let start = text[..at].char_indices().rev().nth(200).map_or(0, |(i, _)| i);
                panic!("{what} carries {marker}: …{}…", &text[start..(at + 100).min(text.len())]);
            }
        }
    }

    // Not vacuous: the planted fields were tagged, with domains where addresses were.
    let (_, tags) = common::read_jsonl(&out.join("tags.jsonl"));
    let own: Vec<&Value> = tags.iter().filter(|t| t["rule_id"] == "TF9999").collect();
    let kinds: BTreeSet<&str> = own.iter().filter_map(|t| t["source_kind"].as_str()).collect();
    assert_eq!(kinds, BTreeSet::from(["auth_attempt", "command", "email", "http_request"]));
    let scrubbed =
        |field: &str| own.iter().filter(|t| t["evidence"][field].to_string().contains("*@victim.example")).count();
    assert!(scrubbed("command_text") > 100 && scrubbed("mail_from") > 100 && scrubbed("rcpt_to") > 100);
    assert!(own.iter().all(|t| !t["evidence"].as_object().unwrap().contains_key("password")));
    let headers = own.iter().find_map(|t| t["evidence"]["headers"].as_object()).expect("headers as evidence");
    assert_eq!((&headers["Authorization"], &headers["Cookie"]), (&json!("*"), &json!("*")));
    let domains = tags.iter().find_map(|t| t["evidence"]["rcpt_domain_set"].as_array()).expect("email evidence");
    assert!(domains.contains(&json!("victim.example")), "{domains:?}");
}

/// The credential hashes of a run over generated attempts (TF0034, credential reuse).
fn credential_hashes(dir: &Path, tables: &str, events: &str, key: &str) -> BTreeSet<String> {
    let out = dir.join(format!("out-{}", &key[..4]));
    ttpflow(
        &["run", "--rules", "rules", "--input", tables, "--input", events, "--out", out.to_str().unwrap()],
        &[("TTPFLOW_HASH_KEY", key)],
    );
    let (_, tags) = common::read_jsonl(&out.join("tags.jsonl"));
    // The hashes the stream computed: those no payload carried.
    let (_, records) = common::read_jsonl(Path::new(events));
    let given: BTreeSet<&str> = records.iter().filter_map(|r| r["payload"]["credential_hash"].as_str()).collect();
    tags.iter()
        .filter_map(|t| t["evidence"]["credential_hash"].as_str())
        .filter(|h| !given.contains(h))
        .map(str::to_string)
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn hashes_of_secrets_are_keyed_by_the_deployment() {
    let dir = tempfile::tempdir().unwrap();
    let (tables, events) = fleet(dir.path());
    let (a, b) = ("a1".repeat(32), "b2".repeat(32));
    let first = credential_hashes(dir.path(), &tables, &events, &a);
    assert!(!first.is_empty(), "credential reuse is tagged in the stream");
    assert_eq!(credential_hashes(dir.path(), &tables, &events, &a), first, "one key, one hash");
    assert!(first.is_disjoint(&credential_hashes(dir.path(), &tables, &events, &b)), "another key, other hashes");

    // No plain SHA-256 of the run's own usernames and passwords gives them.
    let (_, records) = common::read_jsonl(Path::new(&events));
    let mut guesses = BTreeSet::new();
    for record in &records {
        let p = &record["payload"];
        if let (Some(user), Some(password)) = (p["username"].as_str(), p["password"].as_str()) {
            for text in [format!("{user}:{password}"), format!("{user}{password}"), password.to_string()] {
                guesses.insert(hex(&Sha256::digest(text.as_bytes())));
            }
            let mut framed = (user.len() as u64).to_be_bytes().to_vec();
            framed.extend_from_slice(user.as_bytes());
            framed.extend_from_slice(password.as_bytes());
            guesses.insert(hex(&Sha256::digest(&framed)));
        }
    }
    assert!(guesses.len() > 10);
    assert!(first.is_disjoint(&guesses), "the stream's hashes are not plain SHA-256");

    // A key of the wrong shape is refused, with the variable's name.
    let output = Command::new(env!("CARGO_BIN_EXE_ttpflow"))
        .current_dir(root())
        .args(["run", "--out"])
        .arg(dir.path().join("bad"))
        .env("TTPFLOW_HASH_KEY", "short")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("TTPFLOW_HASH_KEY must be 64 hexadecimal digits"));
}
