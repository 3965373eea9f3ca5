//! Windows: cross-event credential detections over event time, end to end from JSONL.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::common::{run, write_input};

/// A pack of the credential rules the windows stage evaluates.
fn credential_pack(dir: &Path) -> PathBuf {
    let rules = dir.join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    let write = |id: &str, body: &str| {
        std::fs::write(rules.join(format!("{id}.yaml")), format!("rule_id: {id}\nrule_version: 1\n{body}")).unwrap()
    };
    write(
        "W0001",
        "name: failed_logins_burst\napplies_to: [auth_attempt]\nmatch:\n  kind: lifter:credential_auth_brute_generic\n  fail_threshold: 4\n  window_minutes: 2\nemits:\n  - {tactic: TA0006, technique_id: T1110, confidence: 0.8}\nevidence_fields: [fail_count, service]\n",
    );
    write(
        "W0002",
        "name: passwords_against_one_account\napplies_to: [auth_attempt]\nmatch:\n  kind: lifter:credential_password_guessing\n  pw_threshold: 4\nemits:\n  - {tactic: TA0006, technique_id: T1110, sub_technique_id: T1110.001, confidence: 0.8}\nevidence_fields: [username, password_count]\n",
    );
    write(
        "W0004",
        "name: one_secret_many_attackers\napplies_to: [credential]\nmatch:\n  kind: lifter:credential_reuse\nemits:\n  - {tactic: TA0006, technique_id: T1110, sub_technique_id: T1110.004, confidence: 0.9}\nevidence_fields: [credential_hash, reuse_count]\n",
    );
    write(
        "W0005",
        "name: login_after_burst\napplies_to: [auth_attempt]\nmatch:\n  kind: lifter:credential_valid_account_use\n  require_prior_brute: true\nemits:\n  - {tactic: TA0001, technique_id: T1078, confidence: 0.7}\nevidence_fields: [username, service]\n",
    );
    rules
}

/// 2026-01-01T00:00:00Z in seconds.
const T0: i64 = 1_767_225_600;

fn attempt(attacker: &str, username: &str, password: &str, result: &str, ts: Value) -> String {
    json!({
        "topic": "attacker.fingerprinted",
        "type": "auth_attempt",
        "payload": {
            "attacker_uuid": attacker,
            "username": username,
            "password": password,
            "result": result,
            "service": "ssh",
            "ts": ts,
        }
    })
    .to_string()
}

/// An hour earlier, four failures of a-3 that are a few seconds too slow for a burst; then
/// a burst of four failures and a login by a-1, whose credential a-2 reuses ten minutes later.
fn events() -> Vec<String> {
    let mut lines: Vec<String> =
        (0..4).map(|i| attempt("a-3", "admin", "admin", "fail", json!(T0 - 3600 + 41 * i))).collect();
    lines.extend((0..4).map(|i| attempt("a-1", "root", &format!("guess-{i}"), "fail", json!(T0 + 20 * i))));
    lines.push(attempt("a-1", "root", "Tr0ub4dor&3", "success", json!("2026-01-01T00:01:10Z")));
    lines.push(attempt("a-2", "root", "Tr0ub4dor&3", "fail", json!(T0 + 10 * 60)));
    lines
}

/// The stored tags as (observed_at, rule, source, evidence), sorted.
fn summary(tags: &[Value]) -> Vec<(String, String, String, Value)> {
    let text = |t: &Value, f: &str| t[f].as_str().unwrap_or_default().to_string();
    let mut rows: Vec<_> = tags
        .iter()
        .map(|t| {
            let source = format!("{}/{}", text(t, "source_kind"), text(t, "source_id"));
            (text(t, "observed_at"), text(t, "rule_id"), source, t["evidence"].clone())
        })
        .collect();
    rows.sort_by(|a, b| (&a.0, &a.1, &a.2).cmp(&(&b.0, &b.1, &b.2)));
    rows
}

#[test]
fn bursts_guessing_reuse_and_the_login_after_them_are_tagged_in_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let rules = credential_pack(dir.path());
    let lines = events();
    let input = write_input(dir.path(), "auth.jsonl", &lines.iter().map(String::as_str).collect::<Vec<_>>());
    let out = run(&rules, std::slice::from_ref(&input), 1, 1);
    assert!(out.dead_letters.is_empty(), "{}", out.dead_letters_text);

    let hash = out
        .tags
        .iter()
        .find_map(|t| t["evidence"]["credential_hash"].as_str())
        .unwrap_or_else(|| panic!("no reuse tag: {}", out.tags_text))
        .to_string();
    let short = &hash[..16];
    let at = |s: &str| format!("2026-01-01T00:{s}.000000Z");
    let expected = vec![
        (
            at("01:00"),
            "W0001".to_string(),
            "auth_attempt/a-1".to_string(),
            json!({"service": "ssh", "fail_count": 4, "window_minutes": 2}),
        ),
        (at("01:00"), "W0002".into(), "auth_attempt/a-1".into(), json!({"username": "root", "password_count": 4})),
        (
            at("01:10"),
            "W0004".into(),
            format!("credential/a-1#cred:{short}"),
            json!({"credential_hash": hash, "reuse_count": 2}),
        ),
        (
            at("01:10"),
            "W0005".into(),
            "auth_attempt/a-1".into(),
            json!({"username": "root", "service": "ssh", "prior_fail_count": 4}),
        ),
        (
            at("10:00"),
            "W0004".into(),
            format!("credential/a-2#cred:{short}"),
            json!({"credential_hash": hash, "reuse_count": 2}),
        ),
    ];
    assert_eq!(summary(&out.tags), expected, "{}", out.tags_text);
    let a2 = out.tags.iter().find(|t| t["source_id"] == format!("a-2#cred:{short}")).unwrap();
    assert_eq!(
        (&a2["attacker_uuid"], &a2["technique_id"], &a2["confidence"]),
        (&json!("a-2"), &json!("T1110"), &json!(0.9))
    );
    for secret in ["guess-", "Tr0ub4dor"] {
        assert!(!out.tags_text.contains(secret), "no password in stored tags: {secret}");
    }

    // Other epoch cuts and two workers store the same rows.
    for (workers, epoch_records) in [(1, 4), (2, 3), (2, 100)] {
        let other = run(&rules, std::slice::from_ref(&input), workers, epoch_records);
        assert_eq!(summary(&other.tags), expected, "{workers} workers, {epoch_records} records per epoch");
    }
}

#[test]
fn auth_attempts_without_event_time_take_no_part() {
    let dir = tempfile::tempdir().unwrap();
    let rules = credential_pack(dir.path());
    let lines: Vec<String> = (0..6)
        .map(|i| {
            let payload =
                json!({"attacker_uuid": "a-1", "username": "root", "password": format!("p{i}"), "result": "fail"});
            json!({"topic": "attacker.fingerprinted", "type": "auth_attempt", "payload": payload}).to_string()
        })
        .collect();
    let input = write_input(dir.path(), "auth.jsonl", &lines.iter().map(String::as_str).collect::<Vec<_>>());
    let out = run(&rules, &[input], 1, 1);
    assert!(out.tags.is_empty(), "{}", out.tags_text);
}
