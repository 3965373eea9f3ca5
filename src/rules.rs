//! The rule loader: a directory of YAML rules (DECNET's format) into a [`RulePack`].
//!
//! Files are taken in name order; only names matching `[A-Za-z0-9_]+\.ya?ml` are rules
//! (editor swap files and backups are ignored, as DECNET ignores them). Every key of a
//! rule is checked; every problem is reported with its file, rule and field, and a pack
//! with any problem does not load, so a running job keeps its last good pack.
//!
//! Keys: `rule_id`, `rule_version`, `name`, `description`, `applies_to`, `match`
//! (`{field?, pattern}` or `{kind: "lifter:…", params…}`), `emits` (`tactic`,
//! `technique_id`, `sub_technique_id?`, `confidence`), `evidence_fields`, the review
//! dates DECNET carries (`last_reviewed`, `next_review`, `owner`), and this project's
//! `tests: {match: [payload…], no_match: [payload…]}`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_yaml::Value;
use ttpflow_dataflows::intel::IntelTables;
use ttpflow_dataflows::json::Json;
use ttpflow_dataflows::pyregex::PyRegex;
use ttpflow_dataflows::rules::{Emit, Matcher, Rule, RulePack, RuleState, StateMode};
use ttpflow_dataflows::secret::SecretKey;
use ttpflow_dataflows::time;

/// One problem in a pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    pub rule: Option<String>,
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(rule) = &self.rule {
            write!(f, ": rule \"{rule}\"")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": field \"{field}\"")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Why a pack did not load.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("failed to read rules directory \"{}\"", dir.display())]
    ReadDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("rule pack \"{}\" has {} problem(s):\n  {}", dir.display(), problems.len(), problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n  "))]
    Invalid { dir: PathBuf, problems: Vec<Problem> },
    #[error("failed to load rule state file \"{}\": {message}", file.display())]
    State { file: PathBuf, message: String },
}

/// A rule's embedded examples.
#[derive(Debug, Clone, Default)]
pub struct Examples {
    pub must_match: Vec<Json>,
    pub must_not_match: Vec<Json>,
}

/// A loaded pack with the examples of each rule (by rule index).
#[derive(Debug, Clone)]
pub struct LoadedPack {
    pub pack: RulePack,
    pub files: Vec<String>,
    pub examples: Vec<Examples>,
}

/// Options of [`load`].
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub attack_release: String,
    /// Rule states by rule id (from a state file or the database).
    pub states: BTreeMap<String, RuleState>,
    /// The intel providers' mapping tables (the project's bundled ones by default).
    pub intel: Arc<IntelTables>,
    /// The deployment's key of the hashes computed from secrets (the all-zero key by
    /// default; the binary loads the deployment's, [`crate::secret_key`]).
    pub secret_key: Arc<SecretKey>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            attack_release: ttpflow_dataflows::rules::DEFAULT_ATTACK_RELEASE.to_string(),
            states: BTreeMap::new(),
            intel: Arc::new(crate::intel_tables::bundled()),
            secret_key: Arc::default(),
        }
    }
}

/// Whether a file name is a rule file.
pub fn is_rule_file_name(name: &str) -> bool {
    let stem = name.strip_suffix(".yaml").or_else(|| name.strip_suffix(".yml"));
    stem.is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
}

/// Whether a file name looks like a rule file (YAML, not hidden) that the loader would not read.
fn is_misnamed_rule_file(name: &str) -> bool {
    !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml")) && !is_rule_file_name(name)
}

/// Loads and validates every rule file of `dir`.
pub fn load(dir: &Path, options: &LoadOptions) -> Result<LoadedPack, LoadError> {
    let (loaded, problems) = load_valid(dir, options)?;
    if !problems.is_empty() {
        return Err(LoadError::Invalid { dir: dir.to_path_buf(), problems });
    }
    Ok(loaded)
}

/// Loads the valid rule files of `dir` and lists the problems of the others, so that
/// `rules check` reports every problem and runs the examples of every valid rule at once.
pub fn load_valid(dir: &Path, options: &LoadOptions) -> Result<(LoadedPack, Vec<Problem>), LoadError> {
    let read_dir = |source| LoadError::ReadDir { dir: dir.to_path_buf(), source };
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read_dir)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(read_dir)?;
    paths.sort();
    let mut problems = Vec::new();
    // A YAML file the pack would not read is an error rather than a silent gap in it;
    // hidden files (editors' locks and swaps) and other names are not the pack's.
    for path in &paths {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        if path.is_file() && is_misnamed_rule_file(name) {
            problems.push(Problem {
                file: name.to_string(),
                rule: None,
                field: None,
                message: "file name must be letters, digits and _ before .yaml or .yml (e.g. TF0100.yaml)".to_string(),
            });
        }
    }
    paths.retain(|p| p.is_file() && p.file_name().and_then(|n| n.to_str()).is_some_and(is_rule_file_name));

    let mut rules = Vec::new();
    let mut files = Vec::new();
    let mut examples = Vec::new();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for path in paths {
        let file = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) => {
                problems.push(Problem { file, rule: None, field: None, message: format!("failed to read: {e}") });
                continue;
            }
        };
        let mut checker = Checker { file: file.clone(), rule: None, problems: &mut problems };
        if let Some((mut rule, ex)) = checker.rule(&text) {
            if let Some(first) = seen.insert(rule.rule_id.clone(), file.clone()) {
                checker.problem(None, format!("rule_id also defined in {first}"));
                continue;
            }
            if let Some(state) = options.states.get(&rule.rule_id) {
                rule.state = state.clone();
            }
            rules.push(rule);
            files.push(file);
            examples.push(ex);
        }
    }
    let pack = RulePack::new(rules, options.attack_release.clone())
        .with_intel_tables(Arc::clone(&options.intel))
        .with_secret_key(Arc::clone(&options.secret_key));
    Ok((LoadedPack { pack, files, examples }, problems))
}

/// Collects the problems of one file.
struct Checker<'a> {
    file: String,
    rule: Option<String>,
    problems: &'a mut Vec<Problem>,
}

const KNOWN_KEYS: &[&str] = &[
    "rule_id",
    "rule_version",
    "name",
    "description",
    "applies_to",
    "match",
    "emits",
    "evidence_fields",
    "last_reviewed",
    "next_review",
    "owner",
    "tests",
];

impl Checker<'_> {
    fn problem(&mut self, field: Option<&str>, message: String) {
        self.problems.push(Problem {
            file: self.file.clone(),
            rule: self.rule.clone(),
            field: field.map(str::to_string),
            message,
        });
    }

    fn rule(&mut self, text: &str) -> Option<(Rule, Examples)> {
        let doc: Value = match serde_yaml::from_str(text) {
            Ok(doc) => doc,
            Err(e) => {
                self.problem(None, format!("not valid YAML: {e}"));
                return None;
            }
        };
        let Value::Mapping(map) = doc else {
            self.problem(None, format!("top level must be a mapping, got {}", yaml_type(&doc)));
            return None;
        };
        let get = |key: &str| map.get(key);
        let before = self.problems.len();
        self.rule = self.string(get("rule_id"), "rule_id", true);
        for key in map.keys() {
            match key.as_str() {
                Some(k) if KNOWN_KEYS.contains(&k) => {}
                Some(k) => self.problem(Some(k), "unknown key".to_string()),
                None => self.problem(None, format!("key {} is not a string", yaml_text(key))),
            }
        }
        let rule_version = match get("rule_version") {
            Some(Value::Number(n)) if n.as_i64().is_some() => n.as_i64(),
            Some(other) => {
                self.problem(Some("rule_version"), format!("must be an integer, got {}", yaml_text(other)));
                None
            }
            None => {
                self.problem(Some("rule_version"), "is required".to_string());
                None
            }
        };
        let name = self.string(get("name"), "name", true);
        let description = self.string(get("description"), "description", false).unwrap_or_default();
        let applies_to = self.strings(get("applies_to"), "applies_to", true);
        if applies_to.as_ref().is_some_and(|a| a.is_empty()) {
            self.problem(Some("applies_to"), "must name at least one source kind".to_string());
        }
        let evidence_fields = self.strings(get("evidence_fields"), "evidence_fields", false).unwrap_or_default();
        let matcher = self.matcher(get("match"));
        let emits = self.emits(get("emits"));
        let examples = self.examples(get("tests"));
        for key in ["last_reviewed", "next_review", "owner"] {
            if let Some(v) = get(key) {
                if !matches!(v, Value::String(_) | Value::Null) {
                    self.problem(Some(key), format!("must be a string, got {}", yaml_text(v)));
                }
            }
        }
        if self.problems.len() > before {
            return None;
        }
        let rule = Rule {
            rule_id: self.rule.clone()?,
            rule_version: rule_version?,
            name: name?,
            description,
            applies_to: applies_to?,
            matcher: matcher?,
            emits: emits?,
            evidence_fields,
            state: RuleState::default(),
        };
        if let Some(stem) = self.file.rsplit_once('.').map(|(s, _)| s) {
            if stem != rule.rule_id {
                // DECNET keys rule state by file stem and rules by rule_id: keep them equal.
                self.problem(Some("rule_id"), format!("must equal the file name stem \"{stem}\""));
                return None;
            }
        }
        Some((rule, examples))
    }

    fn string(&mut self, value: Option<&Value>, field: &str, required: bool) -> Option<String> {
        match value {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(Value::String(_)) if !required => Some(String::new()),
            Some(Value::Null) | None if !required => None,
            None => {
                self.problem(Some(field), "is required".to_string());
                None
            }
            Some(other) => {
                self.problem(Some(field), format!("must be a non-empty string, got {}", yaml_text(other)));
                None
            }
        }
    }

    fn strings(&mut self, value: Option<&Value>, field: &str, required: bool) -> Option<Vec<String>> {
        match value {
            None | Some(Value::Null) if !required => None,
            None => {
                self.problem(Some(field), "is required".to_string());
                None
            }
            Some(Value::Sequence(items)) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::String(s) if !s.is_empty() => out.push(s.clone()),
                        other => self.problem(
                            Some(&format!("{field}[{i}]")),
                            format!("must be a non-empty string, got {}", yaml_text(other)),
                        ),
                    }
                }
                Some(out)
            }
            Some(other) => {
                self.problem(Some(field), format!("must be a list of strings, got {}", yaml_text(other)));
                None
            }
        }
    }

    fn matcher(&mut self, value: Option<&Value>) -> Option<Matcher> {
        let map = match value {
            Some(Value::Mapping(map)) => map,
            None => {
                self.problem(Some("match"), "is required".to_string());
                return None;
            }
            Some(other) => {
                self.problem(Some("match"), format!("must be a mapping, got {}", yaml_text(other)));
                return None;
            }
        };
        if let Some(kind) = map.get("kind") {
            let Value::String(kind) = kind else {
                self.problem(Some("match.kind"), format!("must be a string, got {}", yaml_text(kind)));
                return None;
            };
            if !kind.starts_with("lifter:") || kind.len() == "lifter:".len() {
                self.problem(Some("match.kind"), format!("must be \"lifter:<name>\", got \"{kind}\""));
                return None;
            }
            if map.contains_key("pattern") {
                self.problem(Some("match"), "has both kind and pattern".to_string());
                return None;
            }
            let params = match to_json(&Value::Mapping(map.clone())) {
                Ok(params) => params,
                Err(e) => {
                    self.problem(Some("match"), e);
                    return None;
                }
            };
            return match ttpflow_dataflows::predicates::compile(kind, &params) {
                Ok(predicate) => Some(Matcher::Structured { kind: kind.clone(), params, predicate }),
                Err(e) => {
                    self.problem(Some("match"), e);
                    None
                }
            };
        }
        if let Some(spec) = map.get("shell") {
            for key in map.keys() {
                if !matches!(key.as_str(), Some("field" | "shell")) {
                    self.problem(
                        Some(&format!("match.{}", yaml_text(key))),
                        "unknown key (a shell rule has shell and an optional field)".to_string(),
                    );
                    return None;
                }
            }
            let field = self.string(map.get("field"), "match.field", false);
            let compiled = to_json(spec).and_then(|spec| ttpflow_dataflows::shell::ShellMatch::compile(&spec));
            return match compiled {
                Ok(shell) => Some(Matcher::Shell { field: field.filter(|f| !f.is_empty()), shell: Box::new(shell) }),
                Err(e) => {
                    self.problem(Some("match"), e);
                    None
                }
            };
        }
        for key in map.keys() {
            if !matches!(key.as_str(), Some("field" | "pattern")) {
                self.problem(
                    Some(&format!("match.{}", yaml_text(key))),
                    "unknown key (a pattern rule has field and pattern)".to_string(),
                );
            }
        }
        let field = self.string(map.get("field"), "match.field", false);
        let pattern = match map.get("pattern") {
            Some(Value::String(p)) => p,
            Some(other) => {
                self.problem(Some("match.pattern"), format!("must be a string, got {}", yaml_text(other)));
                return None;
            }
            None => {
                self.problem(
                    Some("match"),
                    "needs a pattern (with an optional field), a shell condition or a lifter kind".to_string(),
                );
                return None;
            }
        };
        match PyRegex::new(pattern) {
            Ok(regex) => Some(Matcher::Regex { field: field.filter(|f| !f.is_empty()), regex: Box::new(regex) }),
            Err(e) => {
                self.problem(Some("match.pattern"), format!("pattern does not compile: {}", e.message));
                None
            }
        }
    }

    fn emits(&mut self, value: Option<&Value>) -> Option<Vec<Emit>> {
        let items = match value {
            Some(Value::Sequence(items)) if !items.is_empty() => items,
            None => {
                self.problem(Some("emits"), "is required".to_string());
                return None;
            }
            Some(other) => {
                self.problem(Some("emits"), format!("must be a non-empty list, got {}", yaml_text(other)));
                return None;
            }
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let at = |key: &str| format!("emits[{i}].{key}");
            let Value::Mapping(map) = item else {
                self.problem(Some(&format!("emits[{i}]")), format!("must be a mapping, got {}", yaml_text(item)));
                continue;
            };
            for key in map.keys() {
                if !matches!(key.as_str(), Some("tactic" | "technique_id" | "sub_technique_id" | "confidence")) {
                    self.problem(Some(&at(&yaml_text(key))), "unknown key".to_string());
                }
            }
            let tactic = self.string(map.get("tactic"), &at("tactic"), true);
            let technique_id = self.string(map.get("technique_id"), &at("technique_id"), true);
            let sub_technique_id =
                self.string(map.get("sub_technique_id"), &at("sub_technique_id"), false).filter(|s| !s.is_empty());
            let confidence = match map.get("confidence") {
                Some(Value::Number(n)) => match n.as_f64() {
                    Some(c) if (0.0..=1.0).contains(&c) => Some(c),
                    _ => {
                        self.problem(Some(&at("confidence")), format!("must be between 0 and 1, got {n}"));
                        None
                    }
                },
                Some(other) => {
                    self.problem(Some(&at("confidence")), format!("must be a number, got {}", yaml_text(other)));
                    None
                }
                None => {
                    self.problem(Some(&at("confidence")), "is required".to_string());
                    None
                }
            };
            if let (Some(tactic), Some(technique_id), Some(confidence)) = (tactic, technique_id, confidence) {
                out.push(Emit { tactic, technique_id, sub_technique_id, confidence });
            }
        }
        (out.len() == items.len()).then_some(out)
    }

    fn examples(&mut self, value: Option<&Value>) -> Examples {
        let mut examples = Examples::default();
        let map = match value {
            None | Some(Value::Null) => return examples,
            Some(Value::Mapping(map)) => map,
            Some(other) => {
                self.problem(
                    Some("tests"),
                    format!("must be a mapping of match / no_match lists, got {}", yaml_text(other)),
                );
                return examples;
            }
        };
        for (key, list) in map {
            let target = match key.as_str() {
                Some("match") => &mut examples.must_match,
                Some("no_match") => &mut examples.must_not_match,
                _ => {
                    self.problem(
                        Some(&format!("tests.{}", yaml_text(key))),
                        "unknown key (expected match or no_match)".to_string(),
                    );
                    continue;
                }
            };
            let field = format!("tests.{}", yaml_text(key));
            let Value::Sequence(items) = list else {
                self.problem(Some(&field), format!("must be a list of payloads, got {}", yaml_text(list)));
                continue;
            };
            for (i, item) in items.iter().enumerate() {
                match to_json(item) {
                    Ok(payload @ Json::Obj(_)) => target.push(payload),
                    Ok(other) => self.problem(
                        Some(&format!("{field}[{i}]")),
                        format!("must be a payload object, got {}", other.type_name()),
                    ),
                    Err(e) => self.problem(Some(&format!("{field}[{i}]")), e),
                }
            }
        }
        examples
    }
}

fn yaml_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// A short rendering of a YAML value for messages.
fn yaml_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => yaml_type(other).to_string(),
    }
}

/// A YAML value as JSON (payload examples and structured-rule parameters).
pub fn to_json(value: &Value) -> Result<Json, String> {
    Ok(match value {
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Number(n) => Json::Num(n.to_string()),
        Value::String(s) => Json::Str(s.clone()),
        Value::Sequence(items) => Json::Arr(items.iter().map(to_json).collect::<Result<_, _>>()?),
        Value::Mapping(map) => Json::Obj(
            map.iter()
                .map(|(k, v)| match k {
                    Value::String(k) => Ok((k.clone(), to_json(v)?)),
                    other => Err(format!("mapping key {} is not a string", yaml_text(other))),
                })
                .collect::<Result<_, _>>()?,
        ),
        Value::Tagged(t) => return Err(format!("tagged value !{} is not supported", t.tag)),
    })
}

/// Reads a rule state file: a mapping of rule id to `{state, confidence_max, expires_at,
/// reason, set_by}` (DECNET's `RuleState`). `now` decides which states have expired.
pub fn load_states(file: &Path, now_micros: i64) -> Result<BTreeMap<String, RuleState>, LoadError> {
    let fail = |message: String| LoadError::State { file: file.to_path_buf(), message };
    let text = std::fs::read_to_string(file).map_err(|e| fail(e.to_string()))?;
    let doc: Value = serde_yaml::from_str(&text).map_err(|e| fail(format!("not valid YAML: {e}")))?;
    let Value::Mapping(map) = doc else {
        return Err(fail("top level must be a mapping of rule id to state".to_string()));
    };
    let mut states = BTreeMap::new();
    for (rule_id, entry) in map {
        let rule_id =
            rule_id.as_str().ok_or_else(|| fail(format!("key {} is not a rule id", yaml_text(&rule_id))))?.to_string();
        let at = |m: &str| fail(format!("rule \"{rule_id}\": {m}"));
        let Value::Mapping(entry) = entry else { return Err(at("state must be a mapping")) };
        for key in entry.keys() {
            if !matches!(key.as_str(), Some("state" | "confidence_max" | "expires_at" | "reason" | "set_by" | "set_at"))
            {
                return Err(at(&format!("unknown key \"{}\"", yaml_text(key))));
            }
        }
        let mode = state_mode(entry.get("state").and_then(Value::as_str)).map_err(|m| at(&m))?;
        let confidence_max = match entry.get("confidence_max") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => n.as_f64(),
            Some(other) => return Err(at(&format!("confidence_max must be a number, got {}", yaml_text(other)))),
        };
        let expires_at = match entry.get("expires_at") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => {
                Some(time::parse_iso8601(s).ok_or_else(|| at(&format!("expires_at \"{s}\" is not an ISO-8601 time")))?)
            }
            Some(other) => return Err(at(&format!("expires_at must be a string, got {}", yaml_text(other)))),
        };
        states.insert(rule_id, resolve_state(mode, confidence_max, expires_at, now_micros));
    }
    Ok(states)
}

/// The mode of a rule state's `state` text (`enabled` when absent).
pub fn state_mode(state: Option<&str>) -> Result<StateMode, String> {
    match state {
        Some("enabled") | None => Ok(StateMode::Enabled),
        Some("disabled") => Ok(StateMode::Disabled),
        Some("clipped") => Ok(StateMode::Clipped),
        Some(other) => Err(format!("state must be enabled, disabled or clipped, got \"{other}\"")),
    }
}

/// A rule state as it stands at `now_micros`, from a state file's entry or a `ttp_rule_state`
/// row alike: expired once `expires_at` (microseconds since the Unix epoch) is before now, and
/// an expired rule emits nothing (DESIGN §2.2), whatever its mode.
pub fn resolve_state(
    mode: StateMode,
    confidence_max: Option<f64>,
    expires_at_micros: Option<i64>,
    now_micros: i64,
) -> RuleState {
    RuleState { mode, confidence_max, expired: expires_at_micros.is_some_and(|at| at < now_micros) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_file_names_follow_the_allowlist() {
        for ok in ["R0001.yaml", "a_b.yml"] {
            assert!(is_rule_file_name(ok), "{ok}");
        }
        for bad in [".R0001.yaml.swp", "R0001.yaml~", "4913", "R-1.yaml", ".yaml"] {
            assert!(!is_rule_file_name(bad), "{bad}");
        }
        for misnamed in ["TF-0100.yaml", "R 1.yml", "r.1.yaml"] {
            assert!(is_misnamed_rule_file(misnamed), "{misnamed}");
        }
        for other in [".R0001.yaml", ".#R0001.yaml", "R0001.yaml~", "README.md", "R0001.yaml"] {
            assert!(!is_misnamed_rule_file(other), "{other}");
        }
    }
}
