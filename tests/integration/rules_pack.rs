//! Rule packs: the project's own pack and its examples, and `rules check` on a broken pack.

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

#[test]
fn the_project_pack_covers_every_technique_of_decnets_regex_rules() {
    let Some(conf) = conformance("the technique coverage check") else { return };
    let techniques = |dir: &std::path::Path, regex_only: bool| -> BTreeSet<(String, Option<String>)> {
        let loaded = rules::load(dir, &LoadOptions::default()).unwrap();
        loaded
            .pack
            .rules()
            .iter()
            .filter(|r| !regex_only || matches!(r.matcher, Matcher::Regex { .. }))
            .flat_map(|r| r.emits.iter().map(|e| (e.technique_id.clone(), e.sub_technique_id.clone())))
            .collect()
    };
    let decnet = techniques(&conf.join("decnet/rules"), true);
    let ours = techniques(&root().join("rules"), false);
    let uncovered: Vec<_> = decnet.difference(&ours).collect();
    assert!(uncovered.is_empty(), "techniques of DECNET's regex rules without a rule here: {uncovered:?}");
}

#[test]
fn rules_check_reports_every_problem_by_file_rule_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write("A0001.yaml", "rule_id: A0001\nrule_version: one\nname: a\napplies_to: [command]\nmatch: {pattern: '(unclosed'}\nemits:\n  - {tactic: TA0007, technique_id: T1083, confidence: 1.5}\n");
    write("A0002.yaml", "rule_id: A0002\nrule_version: 1\nname: b\napplies_to: [command]\nmatch: {kind: 'lifter:behavioral_beaconing', min_interval_s: soon}\nemits: []\nevidence_feilds: [x]\n");
    write("A0003.yaml", "- not\n- a mapping\n");
    write("A0004.yaml", "rule_id: A0004\nrule_version: 1\nname: d\napplies_to: [command]\nmatch: {pattern: 'wget'}\nemits:\n  - {tactic: TA0011, technique_id: T1105, confidence: 0.8}\ntests:\n  match: [{command_text: 'curl x'}]\n  no_match: [{command_text: 'wget x'}]\n");
    write(".A0005.yaml.swp", "ignored: true\n");
    let output = Command::new(env!("CARGO_BIN_EXE_ttpflow")).args(["rules", "check"]).arg(dir.path()).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let expected = [
        "error: A0001.yaml: rule \"A0001\": field \"rule_version\": must be an integer, got one",
        "error: A0001.yaml: rule \"A0001\": field \"match.pattern\": pattern does not compile: ",
        "error: A0001.yaml: rule \"A0001\": field \"emits[0].confidence\": must be between 0 and 1, got 1.5",
        "error: A0002.yaml: rule \"A0002\": field \"evidence_feilds\": unknown key",
        "error: A0002.yaml: rule \"A0002\": field \"match\": parameter \"min_interval_s\" must be a number, got string",
        "error: A0002.yaml: rule \"A0002\": field \"emits\": must be a non-empty list, got a list",
        "error: A0003.yaml: top level must be a mapping, got a list",
        "7 problem(s); the pack does not load",
    ];
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), expected.len(), "{stdout}");
    for (line, want) in lines.iter().zip(expected) {
        assert!(line.starts_with(want), "got:  {line}\nwant: {want}…\nall:\n{stdout}");
    }

    // Once the pack loads, the examples decide the exit code.
    for name in ["A0001.yaml", "A0002.yaml", "A0003.yaml"] {
        std::fs::remove_file(dir.path().join(name)).unwrap();
    }
    let output = Command::new(env!("CARGO_BIN_EXE_ttpflow")).args(["rules", "check"]).arg(dir.path()).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(
            "fail: A0004.yaml: rule \"A0004\": example should match but does not: {\"command_text\":\"curl x\"}"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "fail: A0004.yaml: rule \"A0004\": example should not match but does: {\"command_text\":\"wget x\"}"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("1 rules loaded; 0 examples passed, 2 failed"), "{stdout}");
}
