//! Pipeline: anchoring in any input order, dead letters for every kind of bad input, workers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::common::{self, root, run, write_input};

/// A two-rule pack written for these tests.
fn tiny_pack(dir: &Path) -> PathBuf {
    common::write_pack(dir, &[
        (
            "T0001",
            "rule_id: T0001\nrule_version: 1\nname: shadow_read\napplies_to: [command]\nmatch:\n  field: command_text\n  pattern: '/etc/shadow\\b'\nemits:\n  - {tactic: TA0006, technique_id: T1003, sub_technique_id: T1003.008, confidence: 0.9}\nevidence_fields: [command_text]\n",
        ),
        (
            "T0002",
            "rule_id: T0002\nrule_version: 3\nname: scanner_ua\napplies_to: [http_request]\nmatch:\n  field: user_agent\n  pattern: '(?i)nikto'\nemits:\n  - {tactic: TA0043, technique_id: T1595, confidence: 0.5}\nevidence_fields: [user_agent]\n",
        ),
    ])
}

const ATTACKER: &str =
    r#"{"topic":"decnet.attackers","key":"a-1","value":{"uuid":"a-1","ip":"192.0.2.1","identity_id":null}}"#;
const SESSION: &str = r#"{"topic":"attacker.session.ended","type":"session.ended","payload":{"attacker_ip":"192.0.2.1","attacker_uuid":null,"session_id":"s-1","decky_id":"d-1","commands":["cat /etc/shadow",{"command_text":"sudo cat /etc/shadow","id":"c-9","user":"root","ts":"2026-01-01T00:00:01Z"}]}}"#;
const HTTP: &str = r#"{"topic":"attacker.fingerprinted","type":"http_request","payload":{"attacker_ip":"192.0.2.1","raw_url":"/","user_agent":"Nikto/2.5"}}"#;

fn by_uuid(tags: &[Value]) -> BTreeMap<String, Value> {
    tags.iter().map(|t| (t["uuid"].as_str().unwrap().to_string(), t.clone())).collect()
}

#[test]
fn anchoring_does_not_depend_on_input_order() {
    let dir = tempfile::tempdir().unwrap();
    let rules = tiny_pack(dir.path());
    let table_first = write_input(dir.path(), "a.jsonl", &[ATTACKER, SESSION, HTTP]);
    let table_last = write_input(dir.path(), "b.jsonl", &[SESSION, HTTP, ATTACKER]);
    // One record per epoch: the events really are processed before their attacker row.
    let before = run(&rules, &[table_first], 1, 1);
    let after = run(&rules, &[table_last], 1, 1);
    assert_eq!(before.tags.len(), 3, "{}", before.tags_text);
    assert!(after.dead_letters.is_empty(), "late anchoring must not dead-letter: {}", after.dead_letters_text);
    let (b, a) = (by_uuid(&before.tags), by_uuid(&after.tags));
    assert_eq!(b.keys().collect::<Vec<_>>(), a.keys().collect::<Vec<_>>());
    for (uuid, tag) in &b {
        assert_eq!(tag["attacker_uuid"], "a-1");
        assert_eq!(tag, &a[uuid], "same row whatever the order");
    }
    let ids: Vec<_> = before.tags.iter().map(|t| t["source_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["s-1#cmd0", "c-9", "a-1"], "command ids, then the http_request's attacker uuid");
    assert_eq!(before.tags[1]["evidence"], serde_json::json!({"command_text": "sudo cat /etc/shadow", "user": "root"}));
    assert_eq!(before.tags[1]["observed_at"], "2026-01-01T00:00:01.000000Z");
}

#[test]
fn an_attacker_tombstone_leaves_later_events_unanchored() {
    let dir = tempfile::tempdir().unwrap();
    let rules = tiny_pack(dir.path());
    let tombstone = r#"{"topic":"decnet.attackers","key":"a-1","value":null}"#;
    let input = write_input(dir.path(), "in.jsonl", &[ATTACKER, tombstone, SESSION]);
    let out = run(&rules, &[input], 1, 1);
    assert!(out.tags.is_empty(), "{}", out.tags_text);
    assert_eq!(out.dead_letters.len(), 1);
    assert_eq!(out.dead_letters[0]["reason"], "unanchored");
    assert_eq!(out.dead_letters[0]["line"], 3);
}

#[test]
fn every_kind_of_bad_input_is_a_dead_letter_and_the_job_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let rules = tiny_pack(dir.path());
    let oversize = format!(r#"{{"topic":"attacker.observed","payload":{{"x":"{}"}}}}"#, "a".repeat(5 << 20));
    let lines: Vec<&str> = vec![
        ATTACKER,
        "{not json",                                                                              // 2
        "[1,2,3]",                                                                                // 3
        r#"{"payload":{}}"#,                                                                      // 4
        r#"{"topic":"attacker.teleported","payload":{}}"#,                                        // 5
        r#"{"topic":"attacker.session.ended","payload":{"attacker_ip":["192.0.2.1"]}}"#,          // 6
        r#"{"topic":"attacker.session.ended","payload":{"commands":[{"command_text":1}]}}"#,      // 7
        &oversize,                                                                                // 8
        r#"{"topic":"attacker.session.ended","payload":{"session_id":"s-9","commands":["id"]}}"#, // 9
        r#"{"topic":"attacker.session.ended","payload":{"attacker_ip":"203.0.113.7"}}"#,          // 10
        "PLACEHOLDER",                                                                            // 11
        SESSION,                                                                                  // 12
    ];
    let path = dir.path().join("bad.jsonl");
    let mut bytes = Vec::new();
    for line in &lines {
        if *line == "PLACEHOLDER" {
            bytes.extend_from_slice(b"{\"topic\":\"attacker.observed\",\"payload\":{\"x\":\"\xff\xfe\"}}");
        } else {
            bytes.extend_from_slice(line.as_bytes());
        }
        bytes.push(b'\n');
    }
    std::fs::write(&path, bytes).unwrap();
    let out = run(&rules, &[path], 1, 4);
    let reasons: Vec<(u64, &str)> =
        out.dead_letters.iter().map(|d| (d["line"].as_u64().unwrap(), d["reason"].as_str().unwrap())).collect();
    assert_eq!(
        reasons,
        [
            (2, "invalid_json"),
            (3, "not_an_object"),
            (4, "missing_field"),
            (5, "unknown_topic"),
            (6, "wrong_type"),
            (7, "wrong_type"),
            (8, "oversize"),
            (9, "no_anchor"),
            (11, "invalid_utf8"),
            (10, "unanchored"),
        ],
        "{}",
        out.dead_letters_text
    );
    assert!(out.dead_letters.iter().all(|d| d["detail"].as_str().is_some_and(|s| !s.is_empty())));
    assert_eq!(out.tags.len(), 2, "the good session after the bad lines is still tagged");
    assert_eq!(out.summary.records, 12);
}

#[test]
fn workers_do_not_change_the_output() {
    let mut cases: Vec<(PathBuf, Vec<PathBuf>)> =
        vec![(root().join("rules"), vec![root().join("examples/fleet.jsonl")])];
    if let Some(conf) = common::conformance("the dev corpus part of the worker test") {
        let dir = tempfile::tempdir().unwrap().keep();
        let events =
            crate::regression::gunzip_to(&conf.join("corpus/dev_events.jsonl.gz"), &dir.join("dev_events.jsonl"));
        cases.push((conf.join("decnet/rules"), vec![conf.join("corpus/dev_tables.jsonl"), events]));
    }
    for (rules, inputs) in cases {
        let one = run(&rules, &inputs, 1, 997);
        let two = run(&rules, &inputs, 2, 997);
        assert!(!one.tags.is_empty());
        assert!(one.tags_text == two.tags_text, "tags.jsonl differs between -w 1 and -w 2 for {inputs:?}");
        assert!(one.dead_letters_text == two.dead_letters_text, "dead_letters.jsonl differs between -w 1 and -w 2");
        assert!(!one.rollups_text.is_empty());
        assert!(one.rollups_text == two.rollups_text, "rollups.jsonl differs between -w 1 and -w 2");
    }
}

#[test]
fn a_line_far_over_the_limit_on_standard_input_is_skipped_to_its_end() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let rules = tiny_pack(dir.path());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ttpflow"))
        .args(["run", "--rules"])
        .arg(&rules)
        .args(["--input", "-", "--out"])
        .arg(dir.path().join("out"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("ttpflow runs");
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        writeln!(stdin, "{ATTACKER}").unwrap();
        // 64 MiB of one line, written in pieces: the reader never holds more than the limit.
        let piece = vec![b'a'; 1 << 20];
        for _ in 0..64 {
            stdin.write_all(&piece).unwrap();
        }
        writeln!(stdin).unwrap();
        writeln!(stdin, "{SESSION}").unwrap();
    });
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(output.status.success(), "{output:?}");
    let (_, dead) = common::read_jsonl(&dir.path().join("out/dead_letters.jsonl"));
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!((dead[0]["line"].as_u64(), dead[0]["reason"].as_str()), (Some(2), Some("oversize")));
    assert_eq!(dead[0]["detail"], format!("record of {} bytes exceeds {}", (64 << 20) + 1, 4 << 20));
    let (_, tags) = common::read_jsonl(&dir.path().join("out/tags.jsonl"));
    assert_eq!(tags.len(), 2, "the session after the long line is tagged");
}

/// Two rules whose patterns need the backtracking engine: one look-ahead that is quadratic
/// on runs of `a`, one backreference with a linear alternative.
fn backtracking_pack(dir: &Path) -> PathBuf {
    common::write_pack(dir, &[
        (
            "X0001",
            "rule_id: X0001\nrule_version: 1\nname: lookahead\napplies_to: [command]\nmatch: {pattern: '(?=(a+)+b)'}\nemits:\n  - {tactic: TA0002, technique_id: T1059, confidence: 0.8}\n",
        ),
        (
            "X0002",
            "rule_id: X0002\nrule_version: 1\nname: wget\napplies_to: [command]\nmatch: {pattern: '(a|a)*\\1x|wget'}\nemits:\n  - {tactic: TA0011, technique_id: T1105, confidence: 0.8}\n",
        ),
    ])
}

#[test]
fn a_pattern_over_its_budget_is_a_dead_letter_and_never_a_silent_miss() {
    let dir = tempfile::tempdir().unwrap();
    let rules = backtracking_pack(dir.path());
    let session = serde_json::json!({"topic": "attacker.session.ended", "type": "session.ended", "payload": {
        "attacker_uuid": "a-1", "session_id": "s-1",
        "commands": [format!("{} wget", "a".repeat(18)), "a".repeat(1_000_000), "aaab"],
    }})
    .to_string();
    let input = write_input(dir.path(), "in.jsonl", &[ATTACKER, &session]);
    for workers in [1, 2] {
        let out = run(&rules, std::slice::from_ref(&input), workers, 1);
        let tagged: Vec<(&str, &str)> = out
            .tags
            .iter()
            .map(|t| (t["source_id"].as_str().unwrap(), t["rule_id"].as_str().unwrap()))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        // Python's re.search finds `wget` on the first command; the linear alternative decides.
        assert_eq!(tagged, [("s-1#cmd0", "X0002"), ("s-1#cmd2", "X0001")], "{}", out.tags_text);
        let unjudged: Vec<(u64, &str, &str)> = out
            .dead_letters
            .iter()
            .map(|d| {
                let detail = d["detail"].as_str().unwrap();
                (d["line"].as_u64().unwrap(), d["reason"].as_str().unwrap(), detail.split(':').next().unwrap())
            })
            .collect();
        assert_eq!(
            unjudged,
            [(2, "rule_budget_exceeded", "X0001"), (2, "rule_budget_exceeded", "X0002")],
            "{}",
            out.dead_letters_text
        );
        assert!(out.dead_letters_text.contains("its command 1 within its budget"), "{}", out.dead_letters_text);
    }
}

#[test]
fn rules_check_names_backtracking_patterns_and_the_probes_they_fail() {
    let dir = tempfile::tempdir().unwrap();
    let rules = backtracking_pack(dir.path());
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ttpflow"))
        .args(["rules", "check"])
        .arg(&rules)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    for rule in ["X0001", "X0002"] {
        assert!(
            stdout.contains(&format!("note: {rule}.yaml: rule \"{rule}\": pattern"))
                && stdout.contains("needs the backtracking engine"),
            "{stdout}"
        );
    }
    assert!(
        stdout.contains(
            r#"warn: X0002.yaml: rule "X0002": pattern "(a|a)*\\1x|wget" runs out of its budget on a probe of"#
        ),
        "{stdout}"
    );
}

#[test]
fn the_command_line_keeps_its_habits() {
    let ttpflow = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_ttpflow"))
            .current_dir(root())
            .args(args)
            .env_remove("NO_COLOR")
            .output()
            .expect("ttpflow runs");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, stdout, _) = ttpflow(&["run", "-h"]);
    assert_eq!(code, Some(0), "-h is help");
    assert!(stdout.contains("--hostfile") && stdout.contains("--workers"), "{stdout}");
    for (args, says) in [
        (&["run", "-w", "0"][..], "must be at least 1"),
        (&["run", "-n", "0"][..], "must be at least 1"),
        (&["run", "--attack-release", "banana"][..], "an ATT&CK release is v<major>.<minor>"),
    ] {
        let (code, _, stderr) = ttpflow(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    let out = tempfile::tempdir().unwrap();
    let out_dir = out.path().to_str().unwrap();
    let (code, _, stderr) = ttpflow(&["run", "--attack-release", "v18.1", "--out", out_dir]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("loaded rule pack") && !stderr.contains('\x1b'), "no colour into a pipe: {stderr:?}");
    let (_, tags) = common::read_jsonl(&out.path().join("tags.jsonl"));
    assert!(tags.iter().all(|t| t["attack_release"] == "v18.1"));
}

#[test]
fn the_bundled_example_runs_from_the_command_line() {
    let out_dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ttpflow"))
        .current_dir(root())
        .args(["run", "--out"])
        .arg(out_dir.path())
        .output()
        .expect("ttpflow runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.starts_with("records=19 tags="), "{stdout}");
    let (_, tags) = common::read_jsonl(&out_dir.path().join("tags.jsonl"));
    let techniques: std::collections::BTreeSet<_> =
        tags.iter().map(|t| t["technique_id"].as_str().unwrap().to_string()).collect();
    for t in ["T1003", "T1059", "T1105", "T1190", "T1595"] {
        assert!(techniques.contains(t), "example should show {t}: {techniques:?}");
    }
    // The summary counts the dead letters by reason, as dead_letters.jsonl has them.
    let (_, letters) = common::read_jsonl(&out_dir.path().join("dead_letters.jsonl"));
    let mut by_reason: BTreeMap<String, usize> = BTreeMap::new();
    for letter in &letters {
        *by_reason.entry(letter["reason"].as_str().unwrap().to_string()).or_default() += 1;
    }
    assert!(!by_reason.is_empty(), "the example holds bad lines on purpose");
    let expected: Vec<String> = by_reason.iter().map(|(r, n)| format!("{r}:{n}")).collect();
    assert!(stdout.contains(&format!(" dead_letter_reasons={} ", expected.join(","))), "{stdout}");
}

#[test]
fn rule_state_disables_clips_and_expires_rules() {
    let dir = tempfile::tempdir().unwrap();
    let rules = tiny_pack(dir.path());
    let input = write_input(dir.path(), "in.jsonl", &[ATTACKER, SESSION, HTTP]);
    let run_with_state = |state: &str| {
        let state_file = dir.path().join("state.yaml");
        std::fs::write(&state_file, state).unwrap();
        let out = dir.path().join("out");
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_ttpflow"))
            .arg("run")
            .arg("--rules")
            .arg(&rules)
            .arg("--input")
            .arg(&input)
            .arg("--out")
            .arg(&out)
            .arg("--rule-state")
            .arg(&state_file)
            .output()
            .unwrap();
        assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
        common::read_jsonl(&out.join("tags.jsonl")).1
    };
    let rules_of = |tags: &[Value]| tags.iter().map(|t| t["rule_id"].as_str().unwrap().to_string()).collect::<Vec<_>>();

    assert_eq!(rules_of(&run_with_state("{}")), ["T0001", "T0001", "T0002"]);
    assert_eq!(rules_of(&run_with_state("T0001: {state: disabled, reason: noisy}")), ["T0002"]);
    let clipped =
        run_with_state("T0001: {state: clipped, confidence_max: 0.6}\nT0002: {state: clipped, confidence_max: 0.2}");
    assert_eq!(rules_of(&clipped), ["T0001", "T0001"], "clipped under the 0.3 floor stores nothing");
    assert!(clipped.iter().all(|t| t["confidence"] == 0.6));
    assert_eq!(
        rules_of(&run_with_state("T0002: {state: clipped, confidence_max: 0.9, expires_at: '2001-01-01T00:00:00Z'}")),
        ["T0001", "T0001"]
    );
    assert_eq!(
        rules_of(&run_with_state("T0002: {state: disabled, expires_at: '2999-01-01T00:00:00Z'}")),
        ["T0001", "T0001"]
    );
}
