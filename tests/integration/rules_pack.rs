//! Rule packs: the project's own pack, its examples and its coverage of DECNET's, and `rules check`.

use std::collections::BTreeSet;
use std::process::Command;

use ttpflow::cli::run_examples;
use ttpflow::rules::{self, LoadOptions};
use ttpflow_dataflows::rules::Matcher;

use crate::common::{conformance, root};

#[test]
fn the_project_pack_loads_and_every_example_passes() {
    let loaded = rules::load(&root().join("rules"), &LoadOptions::default()).expect("the project's pack loads");
    assert!(loaded.pack.rules().len() >= 20);
    for (rule, examples) in loaded.pack.rules().iter().zip(&loaded.examples) {
        assert!(examples.must_match.len() >= 3, "{} needs at least 3 matching examples", rule.rule_id);
        assert!(examples.must_not_match.len() >= 3, "{} needs at least 3 non-matching examples", rule.rule_id);
    }
    let report = run_examples(&loaded);
    assert!(report.failures.is_empty(), "{:#?}", report.failures);
    assert!(report.passed >= 6 * loaded.pack.rules().len());
}

/// A technique and sub-technique, as rules emit them.
type Technique = (String, Option<String>);

/// The techniques each rule of a pack emits, with the rule's id and match kind (`pattern`
/// for regex rules).
fn techniques_by_rule(dir: &std::path::Path) -> Vec<(String, String, Technique)> {
    let loaded = rules::load(dir, &LoadOptions::default()).unwrap();
    let mut out = Vec::new();
    for rule in loaded.pack.rules() {
        let kind = match &rule.matcher {
            Matcher::Regex { .. } => "pattern".to_string(),
            Matcher::Shell { .. } => "shell".to_string(),
            Matcher::Structured { kind, .. } => kind.clone(),
        };
        for emit in &rule.emits {
            out.push((rule.rule_id.clone(), kind.clone(), (emit.technique_id.clone(), emit.sub_technique_id.clone())));
        }
    }
    out
}

#[test]
fn the_project_pack_covers_every_technique_of_decnets_pack() {
    let Some(conf) = conformance("the technique coverage check") else { return };
    let decnet = techniques_by_rule(&conf.join("decnet/rules"));
    assert!(decnet.len() > 50, "DECNET's pack emits {} techniques", decnet.len());
    let ours = techniques_by_rule(&root().join("rules"));
    let ours_any: BTreeSet<&Technique> = ours.iter().map(|(_, _, t)| t).collect();
    let uncovered: Vec<_> = decnet.iter().filter(|(_, _, t)| !ours_any.contains(t)).collect();
    assert!(uncovered.is_empty(), "techniques of DECNET's rules without a rule here: {uncovered:#?}");
    // A structured technique is covered by a rule reading the same signal (the same kind).
    let ours_by_kind: BTreeSet<(&str, &Technique)> = ours.iter().map(|(_, k, t)| (k.as_str(), t)).collect();
    let other_signal: Vec<_> =
        decnet.iter().filter(|(_, kind, t)| kind != "pattern" && !ours_by_kind.contains(&(kind.as_str(), t))).collect();
    assert!(other_signal.is_empty(), "structured techniques not covered by a rule of the same kind: {other_signal:#?}");
}

fn rules_check(dir: &std::path::Path) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_ttpflow")).args(["rules", "check"]).arg(dir).output().unwrap();
    (output.status.code(), String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Compares output with a snapshot line by line, showing both in full on a difference.
fn assert_snapshot(got: &str, want: &str) {
    let (got_lines, want_lines): (Vec<&str>, Vec<&str>) = (got.lines().collect(), want.lines().collect());
    for (n, (g, w)) in got_lines.iter().zip(&want_lines).enumerate() {
        assert_eq!(g, w, "line {} differs\n--- got:\n{got}--- want:\n{want}", n + 1);
    }
    assert_eq!(got_lines.len(), want_lines.len(), "line counts differ\n--- got:\n{got}--- want:\n{want}");
}

/// A broken pack: problems in six files, failing examples of a regex and a lifter rule,
/// and the examples of a kind this build does not evaluate.
const BROKEN_PACK: &[(&str, &str)] = &[
    ("A0001.yaml", "rule_id: A0001\nname: [unclosed\n"),
    (
        "A0002.yaml",
        "rule_id: A0002\nrule_version: 1\nname: b\napplies_to: [command]\nmatch: {pattern: 'wget'}\nemits:\n  - {tactic: TA0011, technique_id: T1105, confidence: 0.8}\nevidence_feilds: [command_text]\n",
    ),
    (
        "A0003.yaml",
        "rule_id: A0003\nrule_version: 1\nname: c\napplies_to: [canary_fingerprint]\nmatch: {kind: 'lifter:canary_automation_hash', catalogues: puppeteer}\nemits:\n  - {tactic: TA0002, technique_id: T1059, confidence: 0.8}\n",
    ),
    (
        "A0004.yaml",
        "rule_id: A0004\nrule_version: 1\nname: d\napplies_to: [command]\nmatch: {pattern: '(unclosed'}\nemits:\n  - {tactic: TA0007, technique_id: T1083, confidence: 0.5}\n",
    ),
    (
        "A0005.yaml",
        "rule_id: A0005\nrule_version: 1\nname: e\napplies_to: [command]\nmatch: {pattern: 'whoami'}\nemits:\n  - {tactic: TA0007, technique_id: T1033, confidence: 0.5}\ntests:\n  match: [{command_text: whoami}]\n",
    ),
    (
        "A0005.yml",
        "rule_id: A0005\nrule_version: 2\nname: e2\napplies_to: [command]\nmatch: {pattern: 'id'}\nemits:\n  - {tactic: TA0007, technique_id: T1033, confidence: 0.5}\n",
    ),
    (
        "A0006.yaml",
        "rule_id: A0006\nrule_version: 1\nname: f\napplies_to: [command]\nmatch: {pattern: 'uname'}\nemits:\n  - {tactic: TA0007, technique_id: T1082, confidence: 1.5}\n",
    ),
    (
        "A0007.yaml",
        "rule_id: A0007\nrule_version: 1\nname: g\napplies_to: [command]\nmatch: {pattern: '\\bwget\\s'}\nemits:\n  - {tactic: TA0011, technique_id: T1105, confidence: 0.8}\ntests:\n  match: [{command_text: 'wget http://x/a.sh'}, {command_text: 'curl -O http://x/a.sh'}]\n  no_match: [{command_text: 'ls'}, {command_text: 'wget -q http://x/b'}]\n",
    ),
    (
        "A0008.yaml",
        "rule_id: A0008\nrule_version: 1\nname: h\napplies_to: [canary_fingerprint]\nmatch: {kind: 'lifter:canary_webdriver'}\nemits:\n  - {tactic: TA0002, technique_id: T1059, confidence: 0.7}\ntests:\n  match: [{navigator_webdriver: true}, {navigator_webdriver: 'yes'}]\n  no_match: [{navigator_webdriver: false}, {navigator_webdriver: true, ua_signature: HeadlessChrome}]\n",
    ),
    (
        "A0009.yaml",
        "rule_id: A0009\nrule_version: 1\nname: i\napplies_to: [session]\nmatch: {kind: 'lifter:not_in_this_build', threshold: 3}\nemits:\n  - {tactic: TA0011, technique_id: T1071, confidence: 0.7}\ntests:\n  match: [{x: 1}]\n  no_match: [{x: 0}]\n",
    ),
    (".A0010.yaml.swp", "ignored: true\n"),
    ("A-0012.yaml", "rule_id: A0012\n"),
    (
        "A0013.yaml",
        "rule_id: A0013\nrule_version: 1\nname: m\napplies_to: [command]\nmatch: {shell: {programm: [cat]}}\nemits:\n  - {tactic: TA0007, technique_id: T1082, confidence: 0.5}\n",
    ),
];

const BROKEN_PACK_REPORT: &str = r#"error: A-0012.yaml: file name must be letters, digits and _ before .yaml or .yml (e.g. TF0100.yaml)
error: A0001.yaml: not valid YAML: did not find expected ',' or ']' at line 3 column 1, while parsing a flow sequence at line 2 column 7
error: A0002.yaml: rule "A0002": field "evidence_feilds": unknown key
error: A0003.yaml: rule "A0003": field "match": parameter "catalogues" must be a list of strings, got string
error: A0004.yaml: rule "A0004": field "match.pattern": pattern does not compile: regex parse error: (unclosed error: unclosed group
error: A0005.yml: rule "A0005": rule_id also defined in A0005.yaml
error: A0006.yaml: rule "A0006": field "emits[0].confidence": must be between 0 and 1, got 1.5
fail: A0007.yaml: rule "A0007": example should match but does not: {"command_text":"curl -O http://x/a.sh"}
fail: A0007.yaml: rule "A0007": example should not match but does: {"command_text":"wget -q http://x/b"}
fail: A0008.yaml: rule "A0008": example should match but does not: {"navigator_webdriver":"yes"}
fail: A0008.yaml: rule "A0008": example should not match but does: {"navigator_webdriver":true,"ua_signature":"HeadlessChrome"}
error: A0013.yaml: rule "A0013": field "match": shell.programm: unknown key (expected one of program, wrapper, argument, line, writes, assigns, not)
4 valid rules; 5 examples passed, 4 failed, 2 not evaluated (lifter kinds this build does not evaluate)
8 problem(s); the pack does not load
"#;

#[test]
fn rules_check_reports_every_problem_and_failing_example_file_by_file() {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in BROKEN_PACK {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let (code, stdout) = rules_check(dir.path());
    assert_snapshot(&stdout, BROKEN_PACK_REPORT);
    assert_eq!(code, Some(1));
}

#[test]
fn rules_check_passes_a_clean_pack() {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in BROKEN_PACK.iter().filter(|(name, _)| ["A0005.yaml", "A0009.yaml"].contains(name)) {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    std::fs::write(
        dir.path().join("A0011.yaml"),
        "rule_id: A0011\nrule_version: 1\nname: k\napplies_to: [canary_fingerprint]\nmatch: {kind: 'lifter:canary_tz_lang_mismatch'}\nemits:\n  - {tactic: TA0011, technique_id: T1090, confidence: 0.6}\ntests:\n  match: [{tz_mismatch_zones: 4}, {lang_country_mismatch: true}]\n  no_match: [{tz_mismatch_zones: 1}]\n",
    )
    .unwrap();
    let (code, stdout) = rules_check(dir.path());
    assert_snapshot(
        &stdout,
        "3 rules loaded; 4 examples passed, 0 failed, 2 not evaluated (lifter kinds this build does not evaluate)\n",
    );
    assert_eq!(code, Some(0));

    let (code, stdout) = rules_check(&root().join("rules"));
    assert!(stdout.contains(" examples passed, 0 failed, 0 not evaluated"), "{stdout}");
    assert_eq!(code, Some(0), "{stdout}");
}
