//! Compiled rule packs and their evaluation: rules are data evaluated inside one operator.
//!
//! A [`RulePack`] holds every rule of a pack (regex rules, the project's shell rules and
//! the structured `lifter:*` rules alike) plus, per source kind, the rules that apply to it,
//! compiled and indexed once (a `RegexSet` of the pattern rules, shell rules by program).
//! Evaluating a [`Subject`] runs only the rules of its kind that can fire, in pack order,
//! and builds tags exactly as DECNET's engine does: the match field (the rule's `field`,
//! else the kind's default), evidence = the rule's evidence fields present in the payload,
//! then `uid`/`user`/`src`/`pwd` on commands; confidence clipped by the rule state; tags
//! under the 0.3 floor are dropped (0.3 is kept). A rule whose pattern cannot judge a
//! subject within its budget is reported, not taken as a miss ([`crate::pyregex`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::json::Json;
use crate::predicates::{Extra, Predicate};
use crate::providers::{self as intel, IntelRow, IntelTables};
use crate::pyregex::{PyRegex, Search};
use crate::record::{Confidence, Subject, Tag};
use crate::secret::SecretKey;
use crate::shell::{simple_commands, ShellMatch, SimpleCommand};
use crate::tagid::tag_uuid;

/// Tags below this confidence are never stored (DESIGN §2.2).
pub const CONFIDENCE_FLOOR: f64 = 0.3;

/// The ATT&CK release DECNET stamps on tags.
pub const DEFAULT_ATTACK_RELEASE: &str = "v15.1";

/// Set on the `emit` order of tags the windows stage makes, so that they sort after every
/// stateless tag of the same record.
pub const WINDOWED_EMIT: u32 = 1 << 31;

/// One `emits` entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Emit {
    pub tactic: String,
    pub technique_id: String,
    pub sub_technique_id: Option<String>,
    pub confidence: f64,
}

/// How a rule decides that it fires.
#[derive(Clone, Debug)]
pub enum Matcher {
    /// `match: {field, pattern}`: a Python-semantics regex search on one payload field.
    Regex { field: Option<String>, regex: Box<PyRegex> },
    /// `match: {shell: {program, wrapper, argument, line, writes, assigns}}`: a condition on
    /// the simple commands of one payload field, read as a shell reads the line (see
    /// [`crate::shell`]). Only the project's own rules use it; DECNET's keep raw-line regexes.
    Shell { field: Option<String>, shell: Box<ShellMatch> },
    /// `match: {kind: "lifter:…", …params}`: a structured predicate, with its parameters.
    Structured { kind: String, params: Json, predicate: Predicate },
}

/// Operational state of a rule (DECNET's `RuleState`), resolved when the pack loads.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RuleState {
    pub mode: StateMode,
    /// Ceiling on emitted confidence while `Clipped`.
    pub confidence_max: Option<f64>,
    /// Whether the state's `expires_at` had passed when the pack loaded.
    pub expired: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum StateMode {
    #[default]
    Enabled,
    Disabled,
    Clipped,
}

impl RuleState {
    /// Disabled or expired rules emit nothing (DESIGN §2.2).
    pub fn is_active(&self) -> bool {
        self.mode != StateMode::Disabled && !self.expired
    }

    /// DECNET's `apply_ceiling`: a clip only ever lowers confidence.
    pub fn apply_ceiling(&self, base: f64) -> f64 {
        match (self.mode, self.confidence_max) {
            (StateMode::Clipped, Some(ceiling)) if ceiling < 1.0 => base.min(ceiling),
            _ => base,
        }
    }
}

/// A compiled rule.
#[derive(Clone, Debug)]
pub struct Rule {
    pub rule_id: String,
    pub rule_version: i64,
    pub name: String,
    pub description: String,
    pub applies_to: Vec<String>,
    pub matcher: Matcher,
    pub emits: Vec<Emit>,
    pub evidence_fields: Vec<String>,
    pub state: RuleState,
}

/// A loaded pack: every rule, and the evaluated rules of each source kind.
#[derive(Clone, Debug)]
pub struct RulePack {
    rules: Vec<Rule>,
    attack_release: String,
    by_kind: BTreeMap<String, KindRules>,
    /// Rules judged on intel rows (the provider rules and R0058's bump).
    intel_rules: Vec<usize>,
    /// The intel providers' mapping tables.
    intel: Arc<IntelTables>,
    /// The deployment's key of the hashes computed from secrets.
    secret_key: Arc<SecretKey>,
}

/// DECNET's default match field per source kind for `pattern` rules.
pub fn default_match_field(source_kind: &str) -> Option<&'static str> {
    Some(match source_kind {
        "command" => "command_text",
        "http_request" => "raw_url",
        "email" => "subject",
        "intel" => "verdict",
        "canary_fingerprint" => "ua_signature",
        "auth_attempt" => "username",
        "payload" => "payload_text",
        _ => return None,
    })
}

/// Fields DECNET adds to the evidence of every tag of a kind.
fn aux_evidence_fields(source_kind: &str) -> &'static [&'static str] {
    match source_kind {
        "command" => &["uid", "user", "src", "pwd"],
        _ => &[],
    }
}

impl RulePack {
    pub fn new(rules: Vec<Rule>, attack_release: impl Into<String>) -> RulePack {
        let mut by_kind: BTreeMap<String, KindRules> = BTreeMap::new();
        let mut intel_rules = Vec::new();
        for (idx, rule) in rules.iter().enumerate() {
            if rule.reads_intel_rows() {
                intel_rules.push(idx);
            } else if rule.is_evaluated() {
                let extra = match &rule.matcher {
                    Matcher::Structured { predicate, .. } => predicate.extra_kinds(),
                    Matcher::Regex { .. } | Matcher::Shell { .. } => &[],
                };
                for kind in rule.applies_to.iter().map(String::as_str).chain(extra.iter().copied()) {
                    by_kind.entry(kind.to_string()).or_default().add(kind, idx, rule);
                }
            }
        }
        for kind_rules in by_kind.values_mut() {
            kind_rules.finish();
        }
        RulePack {
            rules,
            attack_release: attack_release.into(),
            by_kind,
            intel_rules,
            intel: Arc::default(),
            secret_key: Arc::default(),
        }
    }

    /// The pack with the intel providers' mapping tables.
    pub fn with_intel_tables(mut self, tables: Arc<IntelTables>) -> RulePack {
        self.intel = tables;
        self
    }

    /// The pack with the deployment's key of the hashes computed from secrets (by default
    /// the all-zero key).
    pub fn with_secret_key(mut self, key: Arc<SecretKey>) -> RulePack {
        self.secret_key = key;
        self
    }

    pub fn secret_key(&self) -> &SecretKey {
        &self.secret_key
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn attack_release(&self) -> &str {
        &self.attack_release
    }

    /// Appends to `out` the tags the pack's rules emit for `subject`.
    pub fn evaluate(&self, subject: &Subject, out: &mut Vec<Tag>) {
        self.evaluate_reporting(subject, out, &mut Vec::new());
    }

    /// [`RulePack::evaluate`], and appends to `over_budget` the rules whose patterns could
    /// not judge `subject` within the backtracking budget (see [`crate::pyregex`]).
    pub fn evaluate_reporting(&self, subject: &Subject, out: &mut Vec<Tag>, over_budget: &mut Vec<usize>) {
        let Some(kind_rules) = self.by_kind.get(&subject.source_kind) else { return };
        let mut shell = ShellCache::default();
        for idx in kind_rules.candidates(subject, &mut shell) {
            let rule = &self.rules[idx];
            if !rule.state.is_active() {
                continue;
            }
            match fires(rule, subject, &mut shell) {
                Ok(Some(extra)) => self.emit(idx, subject, extra, out),
                Ok(None) => {}
                Err(OverBudget) => over_budget.push(idx),
            }
        }
    }

    /// Appends to `out` the intel tags of `attacker`'s latest intel row: source_id = the
    /// attacker (DESIGN §2.4), the other anchors as the row carries them.
    pub fn intel_tags(&self, attacker: &str, row: &IntelRow, out: &mut Vec<Tag>) {
        let payload = &row.payload;
        let text = |f: &str| payload.get(f).filter(|v| **v != Json::Null).and_then(Json::python_str);
        let subject = Subject {
            pos: row.pos,
            part: 0,
            source_kind: "intel".to_string(),
            source_id: attacker.to_string(),
            attacker_uuid: Some(attacker.to_string()),
            identity_uuid: text("identity_uuid"),
            session_id: text("session_id"),
            decky_id: text("decky_id"),
            event_time: row.event_time,
            payload: Arc::clone(payload),
        };
        for &idx in &self.intel_rules {
            let rule = &self.rules[idx];
            if rule.state.is_active() && rule.applies_to.iter().any(|k| k == "intel") {
                self.emit_intel(idx, &subject, out);
            }
        }
    }

    /// R0058's bump for an attacker whose latest intel row is `row`, when it applies.
    pub fn intel_bump(&self, row: &Json) -> Option<intel::Bump> {
        if row.get("aggregate_verdict").and_then(Json::as_str) != Some("malicious") {
            return None;
        }
        self.intel_rules.iter().map(|&idx| &self.rules[idx]).find_map(|rule| match &rule.matcher {
            Matcher::Structured { predicate: Predicate::IntelBump { bump_amount }, .. } if rule.state.is_active() => {
                Some(intel::Bump { rule_id: rule.rule_id.clone(), amount_micros: (bump_amount * 1e6).round() as i64 })
            }
            _ => None,
        })
    }

    /// Whether rule `idx` fires on `payload` for `source_kind` (used by `rules check`
    /// to run a rule's embedded examples).
    pub fn rule_matches(&self, idx: usize, source_kind: &str, payload: &Json) -> bool {
        let subject = Subject {
            pos: Default::default(),
            part: 0,
            source_kind: source_kind.to_string(),
            source_id: String::new(),
            attacker_uuid: None,
            identity_uuid: None,
            session_id: None,
            decky_id: None,
            event_time: None,
            payload: std::sync::Arc::new(payload.clone()),
        };
        match &self.rules[idx].matcher {
            Matcher::Structured { predicate: Predicate::Intel(provider), .. } => {
                !intel::decide(*provider, &self.intel, payload).is_empty()
            }
            Matcher::Structured { predicate: Predicate::IntelBump { .. }, .. } => self.intel_bump(payload).is_some(),
            _ => matches!(fires(&self.rules[idx], &subject, &mut ShellCache::default()), Ok(Some(_))),
        }
    }

    /// What the tags of rule `idx` need of it, for a cross-event detection to make them
    /// after this pack is gone ([`TagRule::emit_windowed`]).
    pub fn tag_rule(&self, idx: usize) -> TagRule {
        let rule = &self.rules[idx];
        let owns_evidence = matches!(&rule.matcher, Matcher::Structured { predicate, .. } if predicate.owns_evidence());
        TagRule {
            idx,
            rule_id: rule.rule_id.clone(),
            rule_version: rule.rule_version,
            emits: rule.emits.clone(),
            state: rule.state.clone(),
            evidence_fields: (!owns_evidence).then(|| rule.evidence_fields.clone()),
            regex: matches!(rule.matcher, Matcher::Regex { .. } | Matcher::Shell { .. }),
            attack_release: self.attack_release.clone(),
        }
    }

    /// One tag per emit of rule `idx`, as DECNET's engine builds them.
    fn emit(&self, idx: usize, subject: &Subject, extra: Extra, out: &mut Vec<Tag>) {
        let evidence = evidence(&self.rules[idx], subject, extra);
        self.push_tags(idx, subject, |_| Some((1.0, evidence.clone())), out);
    }

    /// The tags of intel rule `idx`: only the emits whose technique the provider's
    /// mapping decides, each scaled by its multiplier and with its own evidence.
    fn emit_intel(&self, idx: usize, subject: &Subject, out: &mut Vec<Tag>) {
        let rule = &self.rules[idx];
        let Matcher::Structured { predicate: Predicate::Intel(provider), .. } = &rule.matcher else { return };
        let decisions = intel::decide(*provider, &self.intel, &subject.payload);
        self.push_tags(
            idx,
            subject,
            |emit| {
                let decision = decisions.iter().rev().find(|d| d.technique_id == emit.technique_id)?;
                Some((decision.multiplier, evidence(rule, subject, decision.extra.clone())))
            },
            out,
        );
    }

    /// The tags of rule `idx` for the emits `select` keeps, with its confidence
    /// multiplier and evidence: clipped by the rule state, under the floor dropped.
    fn push_tags(
        &self,
        idx: usize,
        subject: &Subject,
        select: impl Fn(&Emit) -> Option<(f64, Json)>,
        out: &mut Vec<Tag>,
    ) {
        let rule = &self.rules[idx];
        let emitter = Emitter {
            idx,
            rule_id: &rule.rule_id,
            rule_version: rule.rule_version,
            emits: &rule.emits,
            state: &rule.state,
            attack_release: &self.attack_release,
        };
        emitter.push_tags(subject, select, out);
    }
}

/// A rule as its tags name it: a view of a pack's rule or of a [`TagRule`].
struct Emitter<'a> {
    idx: usize,
    rule_id: &'a str,
    rule_version: i64,
    emits: &'a [Emit],
    state: &'a RuleState,
    attack_release: &'a str,
}

impl Emitter<'_> {
    /// The tags for the emits `select` keeps, with its confidence multiplier and evidence:
    /// clipped by the rule state, under the floor dropped.
    fn push_tags(&self, subject: &Subject, select: impl Fn(&Emit) -> Option<(f64, Json)>, out: &mut Vec<Tag>) {
        let rule = self;
        for (e, emit) in rule.emits.iter().enumerate() {
            let Some((multiplier, mut evidence)) = select(emit) else { continue };
            let confidence = rule.state.apply_ceiling(emit.confidence * multiplier);
            if confidence < CONFIDENCE_FLOOR {
                continue;
            }
            crate::privacy::scrub(&mut evidence);
            let uuid = tag_uuid(
                &subject.source_kind,
                &subject.source_id,
                rule.rule_id,
                rule.rule_version,
                &emit.technique_id,
                emit.sub_technique_id.as_deref(),
            );
            out.push(Tag {
                pos: subject.pos,
                part: subject.part,
                emit: (rule.idx as u32) << 8 | e as u32,
                uuid: uuid.into_bytes(),
                source_kind: subject.source_kind.clone(),
                source_id: subject.source_id.clone(),
                attacker_uuid: subject.attacker_uuid.clone(),
                identity_uuid: subject.identity_uuid.clone(),
                session_id: subject.session_id.clone(),
                decky_id: subject.decky_id.clone(),
                tactic: emit.tactic.clone(),
                technique_id: emit.technique_id.clone(),
                sub_technique_id: emit.sub_technique_id.clone(),
                confidence: Confidence(confidence),
                rule_id: rule.rule_id.to_string(),
                rule_version: rule.rule_version,
                evidence,
                attack_release: self.attack_release.to_string(),
                observed_at: subject.event_time,
            });
        }
    }
}

/// What the tags of one rule need of it, as data: the candidates of a window outlive the
/// pack they were made under (see [`crate::schedule`]), so each carries the rule it would
/// fire as, and a swap neither rewrites nor loses the tags of inputs made before it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TagRule {
    /// The rule's index in its pack: the order of its tags within a record.
    idx: usize,
    rule_id: String,
    rule_version: i64,
    emits: Vec<Emit>,
    state: RuleState,
    /// The rule's evidence fields; `None` when its predicate makes the whole evidence.
    evidence_fields: Option<Vec<String>>,
    /// Whether the rule is a pattern or shell rule (which adds the kind's auxiliary fields).
    regex: bool,
    attack_release: String,
}

impl TagRule {
    /// The tags of the rule for a subject that a cross-event detection qualified, with
    /// `extra` evidence: built as [`RulePack::evaluate`] builds them (state, ceiling, floor),
    /// ordered after the stateless tags of the same record ([`WINDOWED_EMIT`]), so that when
    /// both yield one uuid the stateless row is stored. An inactive rule emits nothing.
    pub fn emit_windowed(&self, subject: &Subject, extra: Extra, out: &mut Vec<Tag>) {
        if !self.state.is_active() {
            return;
        }
        let evidence = match &self.evidence_fields {
            None => Json::Obj(extra),
            Some(fields) => {
                let aux = if self.regex { aux_evidence_fields(&subject.source_kind) } else { &[] };
                field_evidence(fields, aux, subject, extra)
            }
        };
        let emitter = Emitter {
            idx: self.idx,
            rule_id: &self.rule_id,
            rule_version: self.rule_version,
            emits: &self.emits,
            state: &self.state,
            attack_release: &self.attack_release,
        };
        let first = out.len();
        emitter.push_tags(subject, |_| Some((1.0, evidence.clone())), out);
        for tag in &mut out[first..] {
            tag.emit |= WINDOWED_EMIT;
        }
    }
}

impl Rule {
    /// Whether this build evaluates the rule (structured kinds without a predicate are only kept).
    pub fn is_evaluated(&self) -> bool {
        match &self.matcher {
            Matcher::Regex { .. } | Matcher::Shell { .. } => true,
            Matcher::Structured { predicate, .. } => predicate.is_evaluated(),
        }
    }

    /// Whether the rule is judged on intel rows rather than on subjects.
    pub fn reads_intel_rows(&self) -> bool {
        matches!(&self.matcher, Matcher::Structured { predicate, .. } if predicate.reads_intel_rows())
    }
}

/// The evaluated rules of one source kind, indexed so that a subject runs only the rules
/// that can fire on it, in pack order:
/// * pattern rules on the kind's default field whose patterns run on the `regex` crate form
///   one `RegexSet` of those same translations, so one pass over the text finds the ones
///   that match (exact for texts without a final `\n`; a text with one runs them all);
/// * shell rules that need one of a list of programs on the default field are found by the
///   programs of the subject's commands (a line's programs are few, a pack's shell rules
///   many);
/// * every other rule runs on every subject.
#[derive(Clone, Debug, Default)]
struct KindRules {
    unindexed: Vec<usize>,
    by_program: HashMap<String, Vec<usize>>,
    /// Whether any rule is indexed by program (then subjects' commands are read).
    indexed: bool,
    patterns: Option<PatternSet>,
    pending_patterns: Vec<(usize, String)>,
}

/// The lazy DFA cache of a kind's pattern set.
const PATTERN_SET_DFA_BYTES: usize = 64 << 20;

/// Pattern rules as one set: set index → rule index.
#[derive(Clone, Debug)]
struct PatternSet {
    set: regex::RegexSet,
    rules: Vec<usize>,
}

impl KindRules {
    fn add(&mut self, kind: &str, idx: usize, rule: &Rule) {
        let on_default = |field: &Option<String>| {
            field.as_deref().filter(|f| !f.is_empty()).is_none_or(|f| Some(f) == default_match_field(kind))
        };
        let translation = match &rule.matcher {
            Matcher::Regex { field, regex } if on_default(field) => regex.plain_translation(),
            _ => None,
        };
        let programs = match &rule.matcher {
            Matcher::Shell { field, shell } if on_default(field) => shell.required_programs(),
            _ => None,
        };
        match (translation, programs) {
            (Some(translation), _) => {
                if !self.pending_patterns.iter().any(|(i, _)| *i == idx) {
                    self.pending_patterns.push((idx, translation.to_string()));
                }
            }
            (None, Some(mut programs)) => {
                self.indexed = true;
                programs.sort_unstable();
                programs.dedup();
                for program in programs {
                    push_once(self.by_program.entry(program.to_string()).or_default(), idx);
                }
            }
            (None, None) => push_once(&mut self.unindexed, idx),
        }
    }

    /// Compiles the pattern set once every rule is added; a set too large to build leaves
    /// its rules to run one by one.
    fn finish(&mut self) {
        let pending = std::mem::take(&mut self.pending_patterns);
        if pending.is_empty() {
            return;
        }
        // The set's lazy DFA needs room for the states of many patterns at once; with the
        // default cache it gives up and falls back to a slower engine.
        let set = regex::RegexSetBuilder::new(pending.iter().map(|(_, t)| t.as_str()))
            .dfa_size_limit(PATTERN_SET_DFA_BYTES)
            .build();
        match set {
            Ok(set) => self.patterns = Some(PatternSet { set, rules: pending.into_iter().map(|(i, _)| i).collect() }),
            Err(_) => {
                self.unindexed.extend(pending.into_iter().map(|(i, _)| i));
                self.unindexed.sort_unstable();
            }
        }
    }

    /// The rules to run on `subject`, in pack order.
    fn candidates(&self, subject: &Subject, shell: &mut ShellCache<'_>) -> Vec<usize> {
        let mut out = self.unindexed.clone();
        if self.patterns.is_none() && !self.indexed {
            return out;
        }
        let Some(field) = default_match_field(&subject.source_kind) else { return out };
        let Some(text) = subject.payload.get(field).and_then(Json::as_str) else { return out };
        if let Some(patterns) = &self.patterns {
            if text.ends_with('\n') {
                out.extend_from_slice(&patterns.rules);
            } else {
                out.extend(patterns.set.matches(text).iter().map(|i| patterns.rules[i]));
            }
        }
        if self.indexed {
            for command in shell.commands(field, text) {
                if let Some(rules) = self.by_program.get(command.program.as_str()) {
                    out.extend_from_slice(rules);
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

fn push_once(list: &mut Vec<usize>, idx: usize) {
    if !list.contains(&idx) {
        list.push(idx);
    }
}

/// The simple commands of one field of a subject, read once for all the shell rules of
/// its kind.
#[derive(Default)]
struct ShellCache<'r> {
    read: Option<(&'r str, Vec<SimpleCommand>)>,
}

impl<'r> ShellCache<'r> {
    fn commands(&mut self, field: &'r str, text: &str) -> &[SimpleCommand] {
        if self.read.as_ref().is_none_or(|(f, _)| *f != field) {
            self.read = Some((field, simple_commands(text)));
        }
        self.read.as_ref().map_or(&[], |(_, commands)| commands.as_slice())
    }
}

/// The payload field a pattern or shell rule reads: its own, else the kind's default.
fn match_field<'r>(field: &'r Option<String>, subject: &Subject) -> Option<&'r str> {
    field.as_deref().filter(|f| !f.is_empty()).or_else(|| default_match_field(&subject.source_kind))
}

/// A rule's patterns could not judge a subject within the backtracking budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OverBudget;

/// The extra evidence when `rule` fires on `subject`, `None` when it does not.
fn fires<'r>(rule: &'r Rule, subject: &Subject, shell_cache: &mut ShellCache<'r>) -> Result<Option<Extra>, OverBudget> {
    let judged = |search: Search| match search {
        Search::Found => Ok(Some(Extra::new())),
        Search::NotFound => Ok(None),
        Search::OverBudget => Err(OverBudget),
    };
    match &rule.matcher {
        Matcher::Regex { field, regex } => {
            let Some(haystack) = match_field(field, subject).and_then(|f| subject.payload.get(f)?.as_str()) else {
                return Ok(None);
            };
            judged(regex.search(haystack))
        }
        Matcher::Shell { field, shell } => {
            let Some(field) = match_field(field, subject) else { return Ok(None) };
            let Some(text) = subject.payload.get(field).and_then(Json::as_str) else { return Ok(None) };
            judged(shell.search(shell_cache.commands(field, text)))
        }
        Matcher::Structured { predicate, .. } => Ok(predicate.fires(&subject.payload)),
    }
}

impl Rule {
    /// The rule's patterns that need the backtracking engine.
    pub fn backtracking_patterns(&self) -> Vec<&PyRegex> {
        let patterns = match &self.matcher {
            Matcher::Regex { regex, .. } => vec![regex.as_ref()],
            Matcher::Shell { shell, .. } => shell.patterns(),
            Matcher::Structured { .. } => Vec::new(),
        };
        patterns.into_iter().filter(|p| p.needs_backtracking()).collect()
    }
}

/// The rule's evidence fields present in the payload, then the kind's auxiliary fields,
/// then what the predicate adds (overriding a payload value of the same name).
fn evidence(rule: &Rule, subject: &Subject, extra: Extra) -> Json {
    if let Matcher::Structured { predicate, .. } = &rule.matcher {
        if predicate.owns_evidence() {
            return Json::Obj(extra);
        }
    }
    // Only DECNET's regex engine adds the auxiliary fields; its lifters do not.
    let aux = match rule.matcher {
        Matcher::Regex { .. } | Matcher::Shell { .. } => aux_evidence_fields(&subject.source_kind),
        Matcher::Structured { .. } => &[],
    };
    field_evidence(&rule.evidence_fields, aux, subject, extra)
}

/// The named fields present in the payload, then the auxiliary ones, then `extra`
/// (overriding a payload value of the same name).
fn field_evidence(evidence_fields: &[String], aux: &[&str], subject: &Subject, extra: Extra) -> Json {
    let mut fields: Vec<(String, Json)> = Vec::new();
    let names = evidence_fields.iter().map(String::as_str).chain(aux.iter().copied());
    for name in names {
        if fields.iter().any(|(k, _)| k == name) {
            continue;
        }
        if let Some(value) = subject.payload.get(name) {
            fields.push((name.to_string(), value.clone()));
        }
    }
    let mut evidence = Json::Obj(fields);
    for (key, value) in extra {
        evidence.set(&key, value);
    }
    evidence
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(pattern: &str, state: RuleState) -> Rule {
        Rule {
            rule_id: "X0001".into(),
            rule_version: 1,
            name: "x".into(),
            description: String::new(),
            applies_to: vec!["command".into()],
            matcher: Matcher::Regex { field: None, regex: Box::new(PyRegex::new(pattern).unwrap()) },
            emits: vec![
                Emit { tactic: "TA0007".into(), technique_id: "T1083".into(), sub_technique_id: None, confidence: 0.9 },
                Emit {
                    tactic: "TA0006".into(),
                    technique_id: "T1003".into(),
                    sub_technique_id: Some("T1003.008".into()),
                    confidence: 0.3,
                },
            ],
            evidence_fields: vec!["command_text".into(), "missing".into(), "user".into()],
            state,
        }
    }

    fn subject(payload: &str) -> Subject {
        Subject {
            pos: Default::default(),
            part: 1,
            source_kind: "command".into(),
            source_id: "s#0".into(),
            attacker_uuid: Some("a".into()),
            identity_uuid: None,
            session_id: Some("s".into()),
            decky_id: None,
            event_time: None,
            payload: std::sync::Arc::new(Json::parse(payload).unwrap()),
        }
    }

    fn run(state: RuleState, payload: &str) -> Vec<Tag> {
        let pack = RulePack::new(vec![rule(r"\bcat\s+/etc/shadow\b", state)], DEFAULT_ATTACK_RELEASE);
        let mut out = Vec::new();
        pack.evaluate(&subject(payload), &mut out);
        out
    }

    #[test]
    fn evidence_is_rule_fields_then_aux_fields() {
        let tags = run(
            RuleState::default(),
            r#"{"command_text":"cat /etc/shadow","user":"root","pwd":"/","uid":"0","id":"x"}"#,
        );
        assert_eq!(tags.len(), 2);
        assert_eq!(
            tags[0].evidence.to_json_string(),
            r#"{"command_text":"cat /etc/shadow","user":"root","uid":"0","pwd":"/"}"#
        );
        assert_eq!(tags[1].confidence, Confidence(0.3), "0.3 is kept");
    }

    #[test]
    fn non_string_fields_never_match() {
        assert!(run(RuleState::default(), r#"{"command_text":null}"#).is_empty());
        assert!(run(RuleState::default(), r#"{"command_text":["cat /etc/shadow"]}"#).is_empty());
    }

    #[test]
    fn clipping_lowers_confidence_and_the_floor_drops() {
        let clipped = RuleState { mode: StateMode::Clipped, confidence_max: Some(0.5), expired: false };
        let tags = run(clipped, r#"{"command_text":"cat /etc/shadow"}"#);
        assert_eq!(tags.len(), 2);
        assert_eq!(tags[0].confidence, Confidence(0.5));
        let low = RuleState { mode: StateMode::Clipped, confidence_max: Some(0.2), expired: false };
        assert!(run(low, r#"{"command_text":"cat /etc/shadow"}"#).is_empty());
    }

    #[test]
    fn disabled_and_expired_rules_emit_nothing() {
        let disabled = RuleState { mode: StateMode::Disabled, ..Default::default() };
        assert!(run(disabled, r#"{"command_text":"cat /etc/shadow"}"#).is_empty());
        let expired = RuleState { expired: true, ..Default::default() };
        assert!(run(expired, r#"{"command_text":"cat /etc/shadow"}"#).is_empty());
    }
}
