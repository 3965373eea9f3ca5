//! Schemas: the files under `schemas/` are well-formed, and the bundled and conformance records satisfy them.
//!
//! The validator here knows a subset of JSON Schema 2020-12 (the keywords in [`KEYWORDS`]);
//! a schema using any other keyword fails the check instead of being half-validated. Records
//! are checked against their envelope (or table record) schema and their payload (or row)
//! schema, and the verdict must agree with the decoder's: a record the schemas reject is one
//! the job turns into a dead letter for its shape, and no other.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use ttpflow_dataflows::decode::{decode, Decoded};
use ttpflow_dataflows::record::{Line, Pos, Reason};

use crate::common::{self, root};

/// The schema of each consumed payload or table row: (topic, envelope type, file). The first
/// matching row wins; a type of `None` matches any type, the topic `canary.*` any canary topic.
const PAYLOAD_SCHEMAS: &[(&str, Option<&str>, &str)] = &[
    ("attacker.session.ended", None, "session.schema.json"),
    ("attacker.observed", None, "session.schema.json"),
    ("attacker.intel.enriched", None, "attacker-intel.schema.json"),
    ("attacker.fingerprinted", Some("auth_attempt"), "fingerprint-auth-attempt.schema.json"),
    ("attacker.fingerprinted", Some("http_request"), "fingerprint-http-request.schema.json"),
    ("attacker.fingerprinted", Some("jarm"), "fingerprint-jarm.schema.json"),
    ("attacker.fingerprinted", Some("hassh"), "fingerprint-hassh.schema.json"),
    ("attacker.fingerprinted", Some("ipv6_leak"), "fingerprint-ipv6-leak.schema.json"),
    ("attacker.fingerprinted", Some("http_fingerprint"), "fingerprint-http-fingerprint.schema.json"),
    ("attacker.fingerprinted", Some("tcpfp"), "fingerprint-tcpfp.schema.json"),
    ("attacker.fingerprinted", Some("tls_cert"), "fingerprint-tls-cert.schema.json"),
    ("attacker.fingerprinted", None, "fingerprint.schema.json"),
    ("identity.formed", None, "identity-formed.schema.json"),
    ("identity.merged", None, "identity-merged.schema.json"),
    ("identity.unmerged", None, "identity-unmerged.schema.json"),
    ("identity.observation.linked", None, "identity-observation-linked.schema.json"),
    ("identity.campaign.assigned", None, "identity-campaign-assigned.schema.json"),
    ("credential.captured", None, "credential-captured.schema.json"),
    ("credential.reuse.detected", None, "credential-reuse-detected.schema.json"),
    ("email.received", None, "email.schema.json"),
    ("canary.*", None, "canary.schema.json"),
    ("decnet.attackers", None, "table-attackers.schema.json"),
    ("decnet.attacker_identities", None, "table-attacker-identities.schema.json"),
    ("decnet.campaigns", None, "table-campaigns.schema.json"),
    ("decnet.attacker_intel", None, "attacker-intel.schema.json"),
];

const ENVELOPE: &str = "envelope.schema.json";
const TABLE_RECORD: &str = "table-record.schema.json";

/// The keywords the validator implements; annotations (title, description, …) are accepted and ignored.
const KEYWORDS: &[&str] = &[
    "$schema",
    "$id",
    "$comment",
    "$defs",
    "$ref",
    "title",
    "description",
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "const",
    "anyOf",
    "oneOf",
    "allOf",
    "not",
    "minimum",
    "minLength",
    "pattern",
];

const TYPES: &[&str] = &["null", "boolean", "integer", "number", "string", "array", "object"];

/// A loaded schema file: its root, against which `#/$defs/…` references resolve.
struct Schema {
    name: String,
    root: Value,
    /// Compiled `pattern`s, by source.
    patterns: RefCell<BTreeMap<String, regex::Regex>>,
}

fn schemas_dir() -> PathBuf {
    root().join("schemas")
}

fn load_all() -> BTreeMap<String, Schema> {
    let mut all = BTreeMap::new();
    for entry in std::fs::read_dir(schemas_dir()).expect("schemas/ exists") {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.ends_with(".schema.json") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let root: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name} is not JSON: {e}"));
        all.insert(name.clone(), Schema::new(name, root));
    }
    all
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn has_type(value: &Value, ty: &str) -> bool {
    match (ty, value) {
        // As in JSON Schema, 3.0 is an integer.
        ("integer", Value::Number(n)) => n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0),
        _ => type_name(value) == ty,
    }
}

/// "a", "a or b", "a, b or c".
fn one_of_words(words: &[&str]) -> String {
    match words {
        [] => String::new(),
        [one] => one.to_string(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn shown(path: &str) -> &str {
    if path.is_empty() {
        "record"
    } else {
        path
    }
}

impl Schema {
    fn new(name: String, root: Value) -> Schema {
        Schema { name, root, patterns: RefCell::default() }
    }

    fn matches(&self, pattern: &str, text: &str) -> bool {
        let mut patterns = self.patterns.borrow_mut();
        let re = patterns
            .entry(pattern.to_string())
            .or_insert_with(|| regex::Regex::new(pattern).expect("patterns are checked when schemas load"));
        re.is_match(text)
    }

    fn resolve(&self, reference: &str) -> Option<&Value> {
        let name = reference.strip_prefix("#/$defs/")?;
        self.root.get("$defs")?.get(name)
    }

    /// Problems of the schema itself: unknown keywords or type names, unresolved references,
    /// patterns that do not compile, properties without a description.
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        self.check(&self.root, "#", true, &mut problems);
        problems
    }

    fn check(&self, schema: &Value, at: &str, described: bool, problems: &mut Vec<String>) {
        let Some(object) = schema.as_object() else {
            problems.push(format!("{at}: a schema must be an object"));
            return;
        };
        for (keyword, value) in object {
            let here = format!("{at}/{keyword}");
            match keyword.as_str() {
                k if !KEYWORDS.contains(&k) => problems.push(format!("{here}: unknown keyword")),
                "type" => {
                    let names: Vec<&Value> =
                        value.as_array().map(|a| a.iter().collect()).unwrap_or_else(|| vec![value]);
                    for name in names {
                        if !name.as_str().is_some_and(|n| TYPES.contains(&n)) {
                            problems.push(format!("{here}: unknown type {name}"));
                        }
                    }
                }
                "$ref" if value.as_str().and_then(|r| self.resolve(r)).is_none() => {
                    problems.push(format!("{here}: {value} does not resolve to a local $defs entry"))
                }
                "pattern" => {
                    if let Err(e) = regex::Regex::new(value.as_str().unwrap_or("(")) {
                        problems.push(format!("{here}: pattern does not compile: {e}"));
                    }
                }
                "required" | "enum" if !value.is_array() => problems.push(format!("{here}: must be an array")),
                "properties" | "$defs" => {
                    let Some(entries) = value.as_object() else {
                        problems.push(format!("{here}: must be an object"));
                        continue;
                    };
                    for (name, sub) in entries {
                        let property = keyword == "properties";
                        if property && described && sub.get("description").is_none() {
                            problems.push(format!("{here}/{name}: property has no description"));
                        }
                        self.check(sub, &format!("{here}/{name}"), described || !property, problems);
                    }
                }
                "items" | "additionalProperties" if value.is_boolean() => {}
                "items" | "additionalProperties" => self.check(value, &here, described, problems),
                "not" => self.check(value, &here, false, problems),
                "anyOf" | "oneOf" | "allOf" => match value.as_array() {
                    Some(alternatives) if !alternatives.is_empty() => {
                        for (i, sub) in alternatives.iter().enumerate() {
                            self.check(sub, &format!("{here}/{i}"), false, problems);
                        }
                    }
                    _ => problems.push(format!("{here}: must be a non-empty array")),
                },
                _ => {}
            }
        }
    }

    /// Validates `value` (found at `path` in its record); every violation is one message.
    fn validate(&self, value: &Value, path: &str) -> Vec<String> {
        let mut errors = Vec::new();
        self.validate_at(&self.root, value, path, &mut errors);
        errors
    }

    fn validate_at(&self, schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
        let Some(schema) = schema.as_object() else { return };
        if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
            match self.resolve(reference) {
                Some(target) => self.validate_at(target, value, path, errors),
                None => errors.push(format!("{}: unresolved reference {reference}", shown(path))),
            }
        }
        if let Some(ty) = schema.get("type") {
            let names: Vec<&str> = match ty {
                Value::Array(names) => names.iter().filter_map(Value::as_str).collect(),
                other => other.as_str().into_iter().collect(),
            };
            if !names.iter().any(|n| has_type(value, n)) {
                errors.push(format!("{}: expected {}, got {}", shown(path), one_of_words(&names), type_name(value)));
                return;
            }
        }
        if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
            if !allowed.contains(value) {
                errors.push(format!("{}: {value} is not one of {}", shown(path), Value::Array(allowed.clone())));
            }
        }
        if let Some(expected) = schema.get("const") {
            if expected != value {
                errors.push(format!("{}: expected {expected}, got {value}", shown(path)));
            }
        }
        match value {
            Value::Object(fields) => {
                for name in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
                    if let Some(name) = name.as_str().filter(|n| !fields.contains_key(*n)) {
                        errors.push(format!("{}: missing required field \"{name}\"", shown(path)));
                    }
                }
                let properties = schema.get("properties").and_then(Value::as_object);
                for (name, field) in fields {
                    match properties.and_then(|p| p.get(name)) {
                        Some(sub) => self.validate_at(sub, field, &child(path, name), errors),
                        None => match schema.get("additionalProperties") {
                            Some(Value::Bool(false)) => errors.push(format!("{}: unexpected field", child(path, name))),
                            Some(sub @ Value::Object(_)) => self.validate_at(sub, field, &child(path, name), errors),
                            _ => {}
                        },
                    }
                }
            }
            Value::Array(items) => {
                if let Some(sub) = schema.get("items") {
                    for (i, item) in items.iter().enumerate() {
                        self.validate_at(sub, item, &format!("{path}[{i}]"), errors);
                    }
                }
            }
            Value::String(text) => {
                if let Some(min) = schema.get("minLength").and_then(Value::as_u64) {
                    if (text.chars().count() as u64) < min {
                        errors.push(format!("{}: shorter than {min} characters", shown(path)));
                    }
                }
                if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
                    if !self.matches(pattern, text) {
                        errors.push(format!("{}: {value} does not match {pattern}", shown(path)));
                    }
                }
            }
            Value::Number(n) => {
                if let (Some(min), Some(x)) = (schema.get("minimum").and_then(Value::as_f64), n.as_f64()) {
                    if x < min {
                        errors.push(format!("{}: {n} is less than {min}", shown(path)));
                    }
                }
            }
            _ => {}
        }
        for sub in schema.get("allOf").and_then(Value::as_array).into_iter().flatten() {
            self.validate_at(sub, value, path, errors);
        }
        for keyword in ["anyOf", "oneOf"] {
            let Some(alternatives) = schema.get(keyword).and_then(Value::as_array) else { continue };
            let outcomes: Vec<Vec<String>> = alternatives
                .iter()
                .map(|sub| {
                    let mut errs = Vec::new();
                    self.validate_at(sub, value, path, &mut errs);
                    errs
                })
                .collect();
            let passing = outcomes.iter().filter(|e| e.is_empty()).count();
            if passing == 0 {
                let why: Vec<String> =
                    outcomes.iter().enumerate().map(|(i, e)| format!("({}) {}", i + 1, e.join("; "))).collect();
                errors.push(format!("{}: matches none of the alternatives: {}", shown(path), why.join(" ")));
            } else if keyword == "oneOf" && passing > 1 {
                errors.push(format!("{}: matches {passing} alternatives of oneOf, expected exactly one", shown(path)));
            }
        }
        if let Some(sub) = schema.get("not") {
            let mut errs = Vec::new();
            self.validate_at(sub, value, path, &mut errs);
            if errs.is_empty() {
                let what = sub.get("description").cloned().unwrap_or_else(|| sub.clone());
                errors.push(format!("{}: must not match {what}", shown(path)));
            }
        }
    }
}

/// The payload (or row) schema of a record on `topic` with envelope `type`.
fn payload_schema(topic: &str, event_type: Option<&str>) -> Option<&'static str> {
    let canary = topic.starts_with("canary.");
    PAYLOAD_SCHEMAS
        .iter()
        .find(|(t, ty, _)| (*t == topic || (*t == "canary.*" && canary)) && (ty.is_none() || *ty == event_type))
        .map(|(_, _, file)| *file)
}

/// Validates one record against its envelope or table-record schema and its payload or row schema.
fn check_record(schemas: &BTreeMap<String, Schema>, record: &Value) -> Result<(), Vec<String>> {
    let topic = record.get("topic").and_then(Value::as_str).unwrap_or_default();
    let table = topic.starts_with("decnet.");
    let mut errors = schemas[if table { TABLE_RECORD } else { ENVELOPE }].validate(record, "");
    let (inner, path) = if table {
        // A Debezium change envelope carries the row in `after`.
        match record.get("value") {
            Some(v @ Value::Object(o))
                if o.contains_key("op") && (o.contains_key("after") || o.contains_key("before")) =>
            {
                (v.get("after"), "value.after")
            }
            v => (v, "value"),
        }
    } else {
        (record.get("payload"), "payload")
    };
    let event_type = record.get("type").and_then(Value::as_str);
    if let (Some(inner @ Value::Object(_)), Some(file)) = (inner, payload_schema(topic, event_type)) {
        errors.extend(schemas[file].validate(inner, path));
    }
    // The envelope types some payload fields too: report a fault once.
    let mut seen = std::collections::BTreeSet::new();
    errors.retain(|e| seen.insert(e.clone()));
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// The reason the decoder turns a record into a dead letter, if it does.
fn dead_letter_reason(text: &str) -> Option<Reason> {
    let line = Line { pos: Pos::default(), topic: None, text: Ok(text.to_string()) };
    match decode(line) {
        Decoded::Dead(dead) => Some(dead.reason),
        _ => None,
    }
}

/// What checking one file found.
#[derive(Debug, Default)]
struct Counts {
    valid: usize,
    /// Rejected by the schemas and dead-lettered by the decoder, by reason.
    rejected: BTreeMap<&'static str, usize>,
    not_json: usize,
    /// Records where the schemas and the decoder disagree, with the schema errors.
    disagreements: Vec<String>,
}

fn check_file(schemas: &BTreeMap<String, Schema>, path: &Path) -> Counts {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let reader: Box<dyn BufRead> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(BufReader::new(flate2::read::GzDecoder::new(file)))
    } else {
        Box::new(BufReader::new(file))
    };
    let mut counts = Counts::default();
    for (n, line) in reader.lines().enumerate() {
        let line = line.unwrap();
        if line.trim().is_empty() {
            continue;
        }
        let decoded = dead_letter_reason(&line);
        let Ok(record) = serde_json::from_str::<Value>(&line) else {
            assert_eq!(decoded, Some(Reason::InvalidJson), "{}:{}: the decoder parsed it", path.display(), n + 1);
            counts.not_json += 1;
            continue;
        };
        let shape = matches!(
            decoded,
            Some(Reason::WrongType | Reason::MissingField | Reason::NotAnObject | Reason::UnknownTopic)
        );
        match (check_record(schemas, &record), shape) {
            (Ok(()), false) => counts.valid += 1,
            (Err(_), true) => *counts.rejected.entry(decoded.unwrap().as_str()).or_default() += 1,
            (Ok(()), true) => counts.disagreements.push(format!(
                "{}:{}: valid, but the decoder rejects it ({decoded:?})",
                path.display(),
                n + 1
            )),
            (Err(errors), false) => counts.disagreements.push(format!(
                "{}:{}: the decoder accepts it, the schemas do not: {}",
                path.display(),
                n + 1,
                errors.join("; ")
            )),
        }
    }
    let total = counts.valid + counts.rejected.values().sum::<usize>() + counts.not_json;
    println!(
        "{}: {total} records, {} valid, rejected as the decoder does: {:?}, not JSON: {}",
        path.display(),
        counts.valid,
        counts.rejected,
        counts.not_json
    );
    counts
}

fn assert_agrees(counts: &Counts) {
    assert!(
        counts.disagreements.is_empty(),
        "{} record(s) where schemas and decoder disagree:\n{}",
        counts.disagreements.len(),
        counts.disagreements.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn every_schema_is_well_formed_and_in_the_topic_table() {
    let schemas = load_all();
    let mut problems: Vec<String> =
        schemas.values().flat_map(|s| s.problems().into_iter().map(|p| format!("{}: {p}", s.name))).collect();
    let mapped: Vec<&str> = PAYLOAD_SCHEMAS.iter().map(|(_, _, file)| *file).chain([ENVELOPE, TABLE_RECORD]).collect();
    for name in schemas.keys().filter(|n| !mapped.contains(&n.as_str())) {
        problems.push(format!("{name}: no topic maps to it"));
    }
    for file in mapped.iter().filter(|f| !schemas.contains_key(**f)) {
        problems.push(format!("{file}: mapped, but there is no such file"));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(schemas.len() >= 25, "{} schema files", schemas.len());
    println!("{} schema files checked", schemas.len());

    // The check itself: an unknown keyword or an undescribed property is reported, not skipped.
    let sloppy = Schema::new(
        "sloppy".into(),
        json!({"type": "object", "properties": {"a": {"type": "strnig"}}, "propertees": {}, "$ref": "#/$defs/x"}),
    );
    let found = sloppy.problems().join("\n");
    for expected in ["#/propertees: unknown keyword", "property has no description", "unknown type", "does not resolve"]
    {
        assert!(found.contains(expected), "{expected:?} not reported in:\n{found}");
    }
}

#[test]
fn the_bundled_example_satisfies_its_schemas() {
    let schemas = load_all();
    let counts = check_file(&schemas, &root().join("examples/fleet.jsonl"));
    assert_agrees(&counts);
    assert!(counts.valid >= 15, "{counts:?}");
    assert_eq!(counts.rejected.values().sum::<usize>(), 2, "the example's wrong-typed and unknown-topic lines");
    assert_eq!(counts.not_json, 1);
}

#[test]
fn the_conformance_corpora_satisfy_their_schemas() {
    let Some(dir) = common::conformance("schema check of the corpora") else { return };
    let schemas = load_all();
    let mut valid = 0;
    for name in ["precision_events.jsonl", "precision_tables.jsonl", "dev_tables.jsonl", "dev_events.jsonl.gz"] {
        let counts = check_file(&schemas, &dir.join("corpus").join(name));
        assert_agrees(&counts);
        valid += counts.valid;
    }
    assert!(valid > 20_000, "only {valid} records validated");
}

#[test]
fn wrong_records_are_rejected_with_the_path_of_the_fault() {
    let schemas = load_all();
    let cases = [
        (
            json!({"topic": "attacker.session.ended", "payload": {"commands": ["id", {"command_text": "w"}, 5]}}),
            "payload.commands[2]: expected string or object, got number",
        ),
        (
            json!({"topic": "attacker.session.ended", "payload": {"commands": [{"command_text": ["x"]}]}}),
            "payload.commands[0].command_text: expected string or null, got array",
        ),
        (json!({"topic": "attacker.observed", "type": "observed"}), "record: missing required field \"payload\""),
        (json!({"topic": "attacker.fingerprinted", "payload": {}}), "missing required field \"type\""),
        (json!({"topic": "attacker.scored", "payload": {}}), "topic: matches none of the alternatives"),
        (
            json!({"topic": "attacker.fingerprinted", "type": "auth_attempt", "payload": {"fail_count": "9"}}),
            "payload.fail_count: expected integer or null, got string",
        ),
        (
            json!({"topic": "email.received", "payload": {"rcpt_count": 3, "rcpt_domains": ["a.example", 7]}}),
            "payload.rcpt_domains[1]: expected string, got number",
        ),
        (
            json!({"topic": "credential.reuse.detected", "payload": {"attacker_uuids": 7}}),
            "payload.attacker_uuids: expected array or string, got number",
        ),
        (
            json!({"topic": "canary.tok-1.triggered", "payload": {"trigger_id": ["t"]}}),
            "payload.trigger_id: expected string, number or null, got array",
        ),
        (json!({"topic": "decnet.attackers", "key": "a-1", "value": {"ip": 7}}), "value.ip: expected string or null"),
        (json!({"topic": "decnet.attackers", "key": "a-1"}), "record: missing required field \"value\""),
        (
            json!({"topic": "decnet.attackers", "key": "a-1", "value": {"op": "c", "after": 5}}),
            "value: matches none of the alternatives",
        ),
        (
            json!({"topic": "decnet.campaigns", "key": "c-1", "value": {"op": "u", "after": {"merged_into_uuid": 3}}}),
            "value.after.merged_into_uuid: expected string or null, got number",
        ),
        (
            json!({"topic": "attacker.intel.enriched", "payload": {"abuseipdb_categories": ["ssh"]}}),
            "payload.abuseipdb_categories[0]: expected integer, got string",
        ),
    ];
    for (record, expected) in cases {
        let errors = check_record(&schemas, &record).err().unwrap_or_else(|| panic!("accepted: {record}"));
        let message = errors.join("\n");
        println!("{message}");
        assert!(message.contains(expected), "{record}\nexpected {expected:?} in:\n{message}");
    }
}
