//! Artifacts: email bodies read from stored messages with `--artifacts-dir`; missing ones are counted, never fatal.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{run, run_with_artifacts, write_input, write_pack};

/// A one-rule pack: business email compromise, which needs the body.
fn bec_pack(dir: &Path) -> PathBuf {
    write_pack(
        dir,
        &[(
            "T0047",
            "rule_id: T0047\nrule_version: 1\nname: bec\napplies_to: [email]\nmatch:\n  kind: lifter:email_bec\n  subject_keywords: [urgent, wire]\n  body_action_keywords: [transfer, send]\nemits:\n  - {tactic: TA0001, technique_id: T1566, sub_technique_id: T1566.003, confidence: 0.85}\nevidence_fields: [subject, matched_subject_kw, matched_body_kw]\n",
        )],
    )
}

const ATTACKER: &str =
    r#"{"topic":"decnet.attackers","key":"a-1","value":{"uuid":"a-1","ip":"192.0.2.7","identity_id":null}}"#;

/// An email event without `body_text`, naming its stored message.
fn email(source_id: &str, decky_id: &str, stored_as: &str) -> String {
    format!(
        r#"{{"topic":"email.received","type":"email.received","payload":{{"attacker_ip":"192.0.2.7","attacker_uuid":null,"source_id":"{source_id}","decky_id":"{decky_id}","stored_as":"{stored_as}","subject":"Urgent wire request","rcpt_count":1}}}}"#
    )
}

/// A stored message whose text body asks for a transfer (quoted-printable, beside an HTML part).
const MESSAGE: &str = "From: ceo@victim.example\r\nSubject: Urgent wire request\r\nMIME-Version: 1.0\r\nContent-Type: multipart/alternative;\r\n boundary=\"b-1\"\r\n\r\n--b-1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nPlease transfer the funds to the new account =\r\ntoday.\r\n--b-1\r\nContent-Type: text/html\r\n\r\n<p>Please transfer the funds</p>\r\n--b-1--\r\n";

/// An artifacts directory holding `MESSAGE` as `decky-3/smtp/m-1.eml`.
fn artifacts(dir: &Path) -> PathBuf {
    let artifacts = dir.join("artifacts");
    std::fs::create_dir_all(artifacts.join("decky-3/smtp")).unwrap();
    std::fs::write(artifacts.join("decky-3/smtp/m-1.eml"), MESSAGE).unwrap();
    artifacts
}

#[test]
fn a_body_rule_fires_on_the_stored_body_only_with_the_artifacts_dir() {
    let dir = tempfile::tempdir().unwrap();
    let rules = bec_pack(dir.path());
    let artifacts = artifacts(dir.path());
    let input = write_input(dir.path(), "in.jsonl", &[ATTACKER, &email("msg-1", "decky-3", "m-1.eml")]);

    let without = run(&rules, std::slice::from_ref(&input), 1, 1024);
    assert!(without.tags.is_empty(), "no body, no BEC: {}", without.tags_text);
    assert_eq!(without.summary.artifacts_missing, 0);

    let with = run_with_artifacts(&rules, &[input], 1, 1024, Some(&artifacts));
    assert_eq!(with.tags.len(), 1, "{}", with.tags_text);
    let tag = &with.tags[0];
    assert_eq!((tag["rule_id"].as_str(), tag["source_id"].as_str()), (Some("T0047"), Some("msg-1")));
    assert_eq!(tag["attacker_uuid"], "a-1");
    assert_eq!(tag["evidence"]["matched_body_kw"], "transfer");
    assert!(!with.tags_text.contains("funds"), "tags never carry the body: {}", with.tags_text);
    assert_eq!(with.summary.artifacts_missing, 0);
    assert!(with.dead_letters.is_empty(), "{}", with.dead_letters_text);
}

#[test]
fn a_missing_or_unsafe_stored_message_is_counted_and_the_run_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let rules = bec_pack(dir.path());
    let artifacts = artifacts(dir.path());
    let own_body = r#"{"topic":"email.received","payload":{"attacker_ip":"192.0.2.7","source_id":"msg-4","decky_id":"decky-3","stored_as":"gone.eml","subject":"wire","body_text":"send it"}}"#;
    let lines = [
        ATTACKER.to_string(),
        email("msg-1", "decky-3", "m-1.eml"),
        email("msg-2", "decky-3", "gone.eml"),
        email("msg-3", "..", "m-1.eml"),
        own_body.to_string(),
    ];
    let input = write_input(dir.path(), "in.jsonl", &lines.iter().map(String::as_str).collect::<Vec<_>>());
    let out = run_with_artifacts(&rules, &[input], 2, 1, Some(&artifacts));
    assert_eq!(out.summary.records, 5);
    assert_eq!(out.summary.artifacts_missing, 2, "the missing file and the unsafe name");
    let sources: Vec<_> = out.tags.iter().map(|t| t["source_id"].as_str().unwrap()).collect();
    assert_eq!(sources, ["msg-1", "msg-4"], "a payload's own body is used as it is");
    assert!(out.dead_letters.is_empty(), "{}", out.dead_letters_text);
}

#[test]
fn the_summary_line_counts_missing_bodies_only_with_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let rules = bec_pack(dir.path());
    let artifacts = artifacts(dir.path());
    let input = write_input(dir.path(), "in.jsonl", &[ATTACKER, &email("msg-2", "decky-3", "gone.eml")]);
    let summary_line = |flag: Option<&str>, env: Option<&Path>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ttpflow"));
        command
            .arg("run")
            .arg("--rules")
            .arg(&rules)
            .arg("--input")
            .arg(&input)
            .arg("--out")
            .arg(dir.path().join("out"));
        command.env_remove("TTPFLOW_ARTIFACTS_DIR").env("TTPFLOW_LOG", "warn");
        if let Some(flag) = flag {
            command.arg(flag).arg(&artifacts);
        }
        if let Some(env) = env {
            command.env("TTPFLOW_ARTIFACTS_DIR", env);
        }
        let output = command.output().expect("ttpflow runs");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        (String::from_utf8(output.stdout).unwrap(), String::from_utf8(output.stderr).unwrap())
    };
    let (stdout, stderr) = summary_line(None, None);
    assert!(stdout.starts_with("records=2 tags=0 rollups=0 dead_letters=0 elapsed_s="), "{stdout}");
    assert!(!stderr.contains("artifacts"), "{stderr}");
    let (stdout, stderr) = summary_line(Some("--artifacts-dir"), None);
    assert!(stdout.starts_with("records=2 tags=0 rollups=0 dead_letters=0 artifacts_missing=1 elapsed_s="), "{stdout}");
    assert_eq!(stderr.matches("email bodies not read").count(), 1, "one warning at the end: {stderr}");
    let (stdout, _) = summary_line(None, Some(&artifacts));
    assert!(stdout.contains(" artifacts_missing=1 "), "from TTPFLOW_ARTIFACTS_DIR: {stdout}");
}
