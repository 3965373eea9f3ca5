//! Decode: raw records into typed bus events, table upserts and dead letters.
//!
//! Input: [`Line`]s (a JSONL line or a Kafka value). Output: one [`Decoded`] per line.
//! Keeps no state. Dead letters: invalid UTF-8, text over [`MAX_RECORD_BYTES`], text that
//! is not JSON or not an object, an unknown topic, a missing or wrong-typed field.
//!
//! Record shapes (DESIGN §1.1, §1.2, §1.4): a bus envelope
//! `{"topic","type","ts","payload"}`; a table record `{"topic":"decnet.…","key","value"}`
//! whose value may be a row, `null` (tombstone) or a Debezium `{"before","after","op"}`;
//! on Kafka, where the topic is known from the record, a bare payload object.
//!
//! The `source_kind` derivation is DECNET's: the first fragment of its topic table
//! contained in the topic, else the envelope type (for `attacker.fingerprinted`).
//!
//! Values every sink can store: a NUL character (`\u0000`) in any string or key of a record
//! becomes U+FFFD (PostgreSQL's text cannot hold NUL), so the JSONL and PostgreSQL outputs
//! stay equal; a time (an event time field, the envelope `ts`, a command's `ts`) must be a
//! real instant of years 1–9999 as RFC 3339 text or seconds since the epoch, else the record
//! is a `wrong_type` dead letter (a date that does not exist, an offset of a day or more,
//! milliseconds taken for seconds). The event time is the first time field present. An id
//! longer than [`MAX_ID_BYTES`] (PostgreSQL indexes them) makes its record `oversize`.
//!
//! Types: every payload field that the graph reads (anchors, ids, commands, and what the
//! predicates, windows and intel providers read) has a type in [`FIELD_TYPES`]; present
//! and not null, a value of another type makes the record `wrong_type` instead of being
//! taken as absent. Numbers admit booleans, as Python's `int` does; a number where a
//! predicate wants an integer is no dead letter (the predicate does not fire, as DECNET's).

use std::sync::Arc;

use differential_dataflow::AsCollection;
use timely::dataflow::operators::core::OkErr;

use crate::json::Json;
use crate::record::{AttackerRow, DeadLetter, Event, Line, LineError, Reason, Table, TableRow, TableUpdate};
use crate::time;
use crate::types::{Coll, Diff, Scope, Time};

/// Records larger than this are dead letters (`oversize`) rather than parsed.
pub const MAX_RECORD_BYTES: usize = 4 << 20;

/// The longest id (attacker, identity, campaign, session, decky, table key): ids are index
/// keys in PostgreSQL, whose index rows hold at most 2,704 bytes; a longer id makes its
/// record an `oversize` dead letter.
pub const MAX_ID_BYTES: usize = 1024;

/// Bus topics consumed besides the `canary.<token>.<action>` family.
pub const BUS_TOPICS: &[&str] = &[
    "attacker.session.ended",
    "attacker.observed",
    "attacker.intel.enriched",
    "attacker.fingerprinted",
    "identity.formed",
    "identity.merged",
    "identity.unmerged",
    "identity.observation.linked",
    "identity.campaign.assigned",
    "credential.captured",
    "credential.reuse.detected",
    "email.received",
];

/// DECNET's topic fragment → source_kind table, in its order.
const TOPIC_SOURCE_KIND: &[(&str, &str)] = &[
    ("session.ended", "session"),
    ("observed", "session"),
    ("intel.enriched", "intel"),
    ("identity.formed", "identity"),
    ("identity.merged", "identity"),
    ("reuse.detected", "credential"),
    ("email.received", "email"),
    ("canary.", "canary_fingerprint"),
];

/// Payload fields read as event time, most specific first; the envelope `ts` is the fallback.
const EVENT_TIME_FIELDS: &[&str] =
    &["ended_at", "observed_at", "seen_at", "received_at", "first_seen", "ts", "timestamp"];

/// The JSON types a payload field may have.
#[derive(Clone, Copy, Debug)]
enum Ty {
    Str,
    /// A string id (or address), at most [`MAX_ID_BYTES`].
    StrId,
    /// A string or a number (ids DECNET passes through `str()`), at most [`MAX_ID_BYTES`].
    Id,
    Arr,
    /// A number or a boolean (Python's `isinstance(x, (int, float))`).
    Num,
    /// A string or an array of them (the providers read either).
    StrOrArr,
    Bool,
}

/// Fields the graph reads, with the types they must have when present (null is always allowed).
const FIELD_TYPES: &[(&str, Ty)] = &[
    ("attacker_ip", Ty::StrId),
    ("src_ip", Ty::StrId),
    ("attacker_uuid", Ty::StrId),
    ("identity_uuid", Ty::StrId),
    ("decky_id", Ty::StrId),
    ("session_id", Ty::Id),
    ("source_id", Ty::Id),
    ("token_id", Ty::Id),
    ("trigger_id", Ty::Id),
    ("credential_id", Ty::Id),
    ("uuid", Ty::Id),
    ("commands", Ty::Arr),
    // What the predicates, windows and intel providers read (`crate::predicates`,
    // `crate::windows`, `crate::intel`): a wrong type is a dead letter, not an absent field.
    ("username", Ty::Str),
    ("password", Ty::Str),
    ("result", Ty::Str),
    ("service", Ty::Str),
    ("subject", Ty::Str),
    ("body_text", Ty::Str),
    ("note_text", Ty::Str),
    ("op_text", Ty::Str),
    ("command_text", Ty::Str),
    ("encoding", Ty::Str),
    ("provider", Ty::Str),
    ("addr", Ty::Str),
    ("raw_url", Ty::Str),
    ("request_path", Ty::Str),
    ("matched_path", Ty::Str),
    ("tftp_filename", Ty::Str),
    ("matched_framework", Ty::Str),
    ("aggregate_verdict", Ty::Str),
    ("greynoise_classification", Ty::Str),
    ("feodo_malware_family", Ty::Str),
    ("beacon_interval_s", Ty::Num),
    ("beacon_jitter_pct", Ty::Num),
    ("bytes_out", Ty::Num),
    ("bytes_read", Ty::Num),
    ("abuseipdb_score", Ty::Num),
    ("account_count", Ty::Num),
    ("body_base64_bytes", Ty::Num),
    ("fail_count", Ty::Num),
    ("llmnr_poison_count", Ty::Num),
    ("password_count", Ty::Num),
    ("rcpt_count", Ty::Num),
    ("request_count", Ty::Num),
    ("reuse_count", Ty::Num),
    ("rows_read", Ty::Num),
    ("tz_mismatch_zones", Ty::Num),
    ("dkim_signed", Ty::Bool),
    ("spf_pass", Ty::Bool),
    ("feodo_listed", Ty::Bool),
    ("prior_brute", Ty::Bool),
    ("xmailer_kit_match", Ty::Bool),
    ("llmnr_poisoned", Ty::Bool),
    ("attachment_macros", Ty::Bool),
    ("attachment_password_protected", Ty::Bool),
    ("html_smuggling", Ty::Bool),
    ("mal_hash_match", Ty::Bool),
    ("lang_country_mismatch", Ty::Bool),
    ("navigator_webdriver", Ty::Bool),
    ("platform_ua_inconsistent", Ty::Bool),
    ("ua_webgl_mismatch", Ty::Bool),
    ("webrtc_geo_mismatch", Ty::Bool),
    ("attachment_extensions", Ty::Arr),
    ("attachment_sha256s", Ty::Arr),
    ("rcpt_domains", Ty::Arr),
    ("urls", Ty::Arr),
    ("providers", Ty::Arr),
    ("abuseipdb_categories", Ty::Arr),
    ("greynoise_tags", Ty::Arr),
    ("threatfox_ioc_types", Ty::StrOrArr),
    ("threatfox_threat_types", Ty::StrOrArr),
    ("threatfox_malware_families", Ty::StrOrArr),
];

/// Command object fields and their types.
const COMMAND_FIELD_TYPES: &[(&str, Ty)] =
    &[("command_text", Ty::Str), ("text", Ty::Str), ("id", Ty::Id), ("uuid", Ty::Id), ("command_id", Ty::Id)];

/// The result of decoding one record.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Decoded {
    Event(Event),
    Table(TableUpdate),
    Dead(DeadLetter),
}

/// Whether `topic` is a consumed bus topic.
pub fn is_bus_topic(topic: &str) -> bool {
    BUS_TOPICS.contains(&topic) || is_canary_topic(topic)
}

fn is_canary_topic(topic: &str) -> bool {
    match topic.strip_prefix("canary.").and_then(|rest| rest.rsplit_once('.')) {
        Some((token, action)) => !token.is_empty() && matches!(action, "triggered" | "placed" | "revoked"),
        None => false,
    }
}

/// DECNET's `source_kind` for an event; `None` when DECNET tags nothing for it.
pub fn source_kind(topic: &str, event_type: &str) -> Option<String> {
    TOPIC_SOURCE_KIND
        .iter()
        .find(|(fragment, _)| topic.contains(fragment))
        .map(|(_, kind)| kind.to_string())
        .or_else(|| (topic == "attacker.fingerprinted" && !event_type.is_empty()).then(|| event_type.to_string()))
}

/// The stage's outputs.
pub struct Decodes<'s> {
    pub events: Coll<'s, Event>,
    pub tables: Coll<'s, TableUpdate>,
    pub dead_letters: Coll<'s, DeadLetter>,
}

impl<'s> Decodes<'s> {
    /// The outputs, moved out of the stage's region into `outer`.
    pub fn leave<'o>(self, outer: Scope<'o>) -> Decodes<'o> {
        Decodes {
            events: self.events.leave_region(outer),
            tables: self.tables.leave_region(outer),
            dead_letters: self.dead_letters.leave_region(outer),
        }
    }
}

/// The stage: each record decoded once, then split three ways without copies.
// The `Result`s below only route records to two outputs; they are not errors.
#[allow(clippy::result_large_err)]
pub fn stage<'s>(lines: Coll<'s, Line>) -> Decodes<'s> {
    let (oks, dead_letters) =
        lines.inner.ok_err::<Vec<_>, _, Vec<_>, _, _>(|(line, time, diff): (Line, Time, Diff)| match decode(line) {
            Decoded::Dead(dead) => Err((dead, time, diff)),
            Decoded::Event(event) => Ok((Ok(event), time, diff)),
            Decoded::Table(update) => Ok((Err(update), time, diff)),
        });
    let (events, tables) =
        oks.ok_err::<Vec<_>, _, Vec<_>, _, _>(|(routed, time, diff): (Result<Event, TableUpdate>, Time, Diff)| {
            match routed {
                Ok(event) => Ok((event, time, diff)),
                Err(update) => Err((update, time, diff)),
            }
        });
    Decodes {
        events: events.as_collection(),
        tables: tables.as_collection(),
        dead_letters: dead_letters.as_collection(),
    }
}

/// The detail of an `oversize` dead letter.
pub fn oversize_detail(bytes: u64) -> String {
    format!("record of {bytes} bytes exceeds {MAX_RECORD_BYTES}")
}

/// Decodes one record.
pub fn decode(line: Line) -> Decoded {
    let pos = line.pos;
    let dead = |topic: Option<String>, reason: Reason, detail: String| {
        Decoded::Dead(DeadLetter { pos, topic, reason, detail })
    };
    let text = match line.text {
        Ok(text) => text,
        Err(LineError::InvalidUtf8(detail)) => return dead(line.topic, Reason::InvalidUtf8, detail),
        Err(LineError::Oversize { bytes }) => return dead(line.topic, Reason::Oversize, oversize_detail(bytes)),
    };
    if text.len() > MAX_RECORD_BYTES {
        return dead(line.topic, Reason::Oversize, oversize_detail(text.len() as u64));
    }
    let mut value = match Json::parse(&text) {
        Ok(v) => v,
        Err(e) => return dead(line.topic, Reason::InvalidJson, e.0),
    };
    // JSON text can hold a NUL only as an escape.
    if text.contains("u0000") {
        replace_nul(&mut value);
    }
    if !matches!(value, Json::Obj(_)) {
        return dead(line.topic, Reason::NotAnObject, format!("record is a JSON {}", value.type_name()));
    }
    let topic = match (line.topic, value.get("topic")) {
        (Some(t), _) => t,
        (None, Some(Json::Str(t))) => t.clone(),
        (None, Some(other)) => {
            return dead(None, Reason::WrongType, format!("field \"topic\" is {}, expected string", other.type_name()))
        }
        (None, None) => return dead(None, Reason::MissingField, "record has no \"topic\"".to_string()),
    };
    let result = if let Some(table) = Table::from_topic(&topic) {
        decode_table(pos, table, &value).map(Decoded::Table)
    } else if is_bus_topic(&topic) {
        decode_event(pos, &topic, value).map(Decoded::Event)
    } else {
        Err((Reason::UnknownTopic, format!("topic \"{topic}\" is not consumed")))
    };
    result.unwrap_or_else(|(reason, detail)| dead(Some(topic), reason, detail))
}

/// Replaces NUL characters in every string and key of `value` with U+FFFD.
fn replace_nul(value: &mut Json) {
    let fix = |s: &mut String| {
        if s.contains('\0') {
            *s = s.replace('\0', "\u{FFFD}");
        }
    };
    match value {
        Json::Str(s) => fix(s),
        Json::Arr(items) => items.iter_mut().for_each(replace_nul),
        Json::Obj(fields) => {
            for (key, item) in fields {
                fix(key);
                replace_nul(item);
            }
        }
        _ => {}
    }
}

/// A time field's value: `None` when null, an error when it is not a time in range.
fn time_field(field: &str, value: Option<&Json>) -> DecodeResult<Option<i64>> {
    match value {
        None | Some(Json::Null) => Ok(None),
        Some(v) => time::from_json(v).map(Some).ok_or_else(|| {
            let shown = match v {
                Json::Str(s) => format!("\"{}\"", s.chars().take(40).collect::<String>()),
                Json::Num(n) => n.clone(),
                other => other.type_name().to_string(),
            };
            (
                Reason::WrongType,
                format!("field \"{field}\" is {shown}, expected a time of years 1-9999 (RFC 3339 or seconds since the epoch)"),
            )
        }),
    }
}

type DecodeResult<T> = Result<T, (Reason, String)>;

fn wrong_type(field: &str, value: &Json, expected: &str) -> (Reason, String) {
    (Reason::WrongType, format!("field \"{field}\" is {}, expected {expected}", value.type_name()))
}

fn decode_event(pos: crate::record::Pos, topic: &str, value: Json) -> DecodeResult<Event> {
    let event_type = match value.get("type") {
        None | Some(Json::Null) => String::new(),
        Some(Json::Str(s)) => s.clone(),
        Some(other) => return Err(wrong_type("type", other, "string")),
    };
    let envelope_ts = match value.get("ts") {
        None | Some(Json::Null) => None,
        ts @ Some(Json::Num(_)) => time_field("ts", ts)?,
        Some(other) => return Err(wrong_type("ts", other, "number")),
    };
    let payload = match value.get("payload") {
        Some(p @ Json::Obj(_)) => p.clone(),
        Some(other) => return Err(wrong_type("payload", other, "object")),
        // A bare object (Kafka) is its own payload; a file line must say which topic it is on.
        None if value.has("topic") => return Err((Reason::MissingField, "envelope has no \"payload\"".to_string())),
        None => value,
    };
    check_fields(&payload, payload_fields(), "")?;
    if let Some(Json::Arr(commands)) = payload.get("commands") {
        for (idx, command) in commands.iter().enumerate() {
            match command {
                Json::Str(_) => {}
                Json::Obj(_) => {
                    check_fields(command, command_fields(), &format!("commands[{idx}]."))?;
                    time_field(&format!("commands[{idx}].ts"), command.get("ts"))?;
                }
                other => return Err(wrong_type(&format!("commands[{idx}]"), other, "string or object")),
            }
        }
    }
    if topic == "attacker.fingerprinted" && event_type.is_empty() {
        return Err((Reason::MissingField, "attacker.fingerprinted envelope has no \"type\"".to_string()));
    }
    let mut event_time = None;
    for field in EVENT_TIME_FIELDS {
        if let Some(t) = time_field(field, payload.get(field))? {
            event_time = event_time.or(Some(t));
        }
    }
    let event_time = event_time.or(envelope_ts);
    Ok(Event {
        pos,
        topic: topic.to_string(),
        source_kind: source_kind(topic, &event_type),
        event_type,
        event_time,
        payload: Arc::new(payload),
    })
}

/// A string id no longer than [`MAX_ID_BYTES`].
fn check_id(field: &str, value: &str) -> DecodeResult<()> {
    if value.len() > MAX_ID_BYTES {
        return Err((Reason::Oversize, format!("field \"{field}\" is {} bytes, at most {MAX_ID_BYTES}", value.len())));
    }
    Ok(())
}

/// `fields` sorted by name, for lookups.
fn sorted(fields: &'static [(&'static str, Ty)]) -> Vec<(&'static str, Ty)> {
    let mut sorted = fields.to_vec();
    sorted.sort_by_key(|(name, _)| *name);
    sorted
}

fn payload_fields() -> &'static [(&'static str, Ty)] {
    static SORTED: std::sync::OnceLock<Vec<(&'static str, Ty)>> = std::sync::OnceLock::new();
    SORTED.get_or_init(|| sorted(FIELD_TYPES))
}

fn command_fields() -> &'static [(&'static str, Ty)] {
    static SORTED: std::sync::OnceLock<Vec<(&'static str, Ty)>> = std::sync::OnceLock::new();
    SORTED.get_or_init(|| sorted(COMMAND_FIELD_TYPES))
}

/// Checks every field of `object` that `fields` (sorted by name) types: one pass over the
/// object, whatever the length of the list.
fn check_fields(object: &Json, fields: &[(&str, Ty)], prefix: &str) -> DecodeResult<()> {
    let Json::Obj(members) = object else { return Ok(()) };
    for (field, value) in members {
        let Ok(at) = fields.binary_search_by(|(name, _)| (*name).cmp(field.as_str())) else { continue };
        let ty = fields[at].1;
        if let Json::Str(text) | Json::Num(text) = value {
            if matches!(ty, Ty::Id | Ty::StrId) && text.len() > MAX_ID_BYTES {
                check_id(&format!("{prefix}{field}"), text)?;
            }
        }
        let ok = matches!(
            (ty, value),
            (_, Json::Null)
                | (Ty::Str | Ty::StrId, Json::Str(_))
                | (Ty::Id, Json::Str(_) | Json::Num(_))
                | (Ty::Arr, Json::Arr(_))
                | (Ty::StrOrArr, Json::Str(_) | Json::Arr(_))
                | (Ty::Num, Json::Bool(_) | Json::Num(_))
                | (Ty::Bool, Json::Bool(_))
        );
        if !ok {
            let expected = match ty {
                Ty::Str | Ty::StrId => "string",
                Ty::Id => "string or number",
                Ty::Arr => "array",
                Ty::Num => "number",
                Ty::StrOrArr => "string or array",
                Ty::Bool => "boolean",
            };
            return Err(wrong_type(&format!("{prefix}{field}"), value, expected));
        }
    }
    Ok(())
}

fn decode_table(pos: crate::record::Pos, table: Table, record: &Json) -> DecodeResult<TableUpdate> {
    let key = match record.get("key") {
        Some(Json::Str(k)) => k.clone(),
        Some(Json::Num(n)) => n.clone(),
        Some(other) => return Err(wrong_type("key", other, "string")),
        None => return Err((Reason::MissingField, "table record has no \"key\"".to_string())),
    };
    check_id("key", &key)?;
    let value = match record.get("value") {
        None => return Err((Reason::MissingField, "table record has no \"value\"".to_string())),
        Some(v) => v,
    };
    // A Debezium change envelope carries the row in `after` (null on delete).
    let row = match value {
        Json::Obj(_) if value.has("op") && (value.has("after") || value.has("before")) => {
            value.get("after").unwrap_or(&Json::Null)
        }
        _ => value,
    };
    let row = match row {
        Json::Null => None,
        Json::Obj(_) => Some(decode_row(table, &key, row)?),
        other => return Err(wrong_type("value", other, "object or null")),
    };
    Ok(TableUpdate { pos, table, key, row })
}

fn decode_row(table: Table, key: &str, row: &Json) -> DecodeResult<TableRow> {
    let opt_str = |field: &str| -> DecodeResult<Option<String>> {
        match row.get(field) {
            None | Some(Json::Null) => Ok(None),
            Some(Json::Str(s)) => check_id(field, s).map(|()| Some(s.clone())),
            Some(other) => Err(wrong_type(field, other, "string")),
        }
    };
    match table {
        Table::Attackers => Ok(TableRow::Attacker(AttackerRow {
            uuid: opt_str("uuid")?.unwrap_or_else(|| key.to_string()),
            ip: opt_str("ip")?,
            identity_id: opt_str("identity_id")?,
        })),
        Table::Identities | Table::Campaigns => {
            opt_str("uuid")?;
            opt_str("merged_into_uuid")?;
            opt_str("campaign_id")?;
            Ok(TableRow::Other(row.clone()))
        }
        Table::Intel => {
            check_fields(row, payload_fields(), "")?;
            Ok(TableRow::Other(row.clone()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Pos;

    fn line(text: &str) -> Line {
        Line { pos: Pos { ts: 0, input: 0, offset: 7 }, topic: None, text: Ok(text.to_string()) }
    }

    fn reason(text: &str) -> Reason {
        match decode(line(text)) {
            Decoded::Dead(d) => d.reason,
            other => panic!("expected a dead letter, got {other:?}"),
        }
    }

    #[test]
    fn nul_characters_become_replacement_characters_everywhere() {
        let text = r#"{"topic":"attacker.session.ended","payload":{"session_id":"s\u0000","decky_id":"\u0000d","commands":["cat /etc/os-release; echo \u0000"],"k\u0000":"\\u0000 stays"}}"#;
        let Decoded::Event(e) = decode(line(text)) else { panic!("decodes") };
        let p = &e.payload;
        assert_eq!(p.get("session_id").and_then(Json::as_str), Some("s\u{FFFD}"));
        assert_eq!(p.get("decky_id").and_then(Json::as_str), Some("\u{FFFD}d"));
        let Some(Json::Arr(commands)) = p.get("commands") else { panic!("commands") };
        assert_eq!(commands[0].as_str(), Some("cat /etc/os-release; echo \u{FFFD}"));
        assert_eq!(p.get("k\u{FFFD}").and_then(Json::as_str), Some("\\u0000 stays"), "an escaped backslash is no NUL");
    }

    #[test]
    fn a_time_field_that_is_no_time_in_range_is_a_wrong_type() {
        for payload in [
            r#"{"ended_at":-220000000000}"#,
            r#"{"ended_at":"2026-02-31T00:00:00Z"}"#,
            r#"{"ended_at":"2026-01-01T00:00:00+99:99"}"#,
            r#"{"ended_at":"9999-12-31T23:59:60Z"}"#,
            r#"{"ts":1714630000123}"#,
            r#"{"ended_at":"2026-01-01T00:00:00Z","timestamp":"yesterday"}"#,
            r#"{"commands":[{"command_text":"id","ts":"2026-13-01T00:00:00Z"}]}"#,
        ] {
            let text = format!(r#"{{"topic":"attacker.session.ended","payload":{payload}}}"#);
            assert_eq!(reason(&text), Reason::WrongType, "{payload}");
        }
        let envelope = r#"{"topic":"attacker.session.ended","ts":-1e13,"payload":{}}"#;
        assert_eq!(reason(envelope), Reason::WrongType);
        let fine = r#"{"topic":"attacker.session.ended","ts":1714630000.5,"payload":{"ended_at":null,"ts":"2026-01-01T00:00:00Z"}}"#;
        let Decoded::Event(e) = decode(line(fine)) else { panic!("decodes") };
        assert_eq!(e.event_time, Some(1_767_225_600_000_000), "the first time field present");
    }

    #[test]
    fn source_kinds_follow_decnet() {
        assert_eq!(source_kind("attacker.session.ended", ""), Some("session".into()));
        assert_eq!(source_kind("attacker.observed", ""), Some("session".into()));
        assert_eq!(source_kind("canary.tok-1.triggered", ""), Some("canary_fingerprint".into()));
        assert_eq!(source_kind("attacker.fingerprinted", "http_request"), Some("http_request".into()));
        assert_eq!(source_kind("identity.unmerged", ""), None);
        assert_eq!(source_kind("credential.captured", ""), None);
    }

    #[test]
    fn decodes_an_envelope() {
        let d = decode(line(
            r#"{"topic":"attacker.session.ended","type":"session.ended","payload":{"attacker_ip":"1.2.3.4","ended_at":"2026-01-01T00:00:00Z"}}"#,
        ));
        let Decoded::Event(e) = d else { panic!("{d:?}") };
        assert_eq!(e.source_kind.as_deref(), Some("session"));
        assert_eq!(e.event_time, Some(1_767_225_600_000_000));
        assert_eq!(e.str_field("attacker_ip"), Some("1.2.3.4"));
    }

    #[test]
    fn decodes_table_records_and_debezium() {
        let d = decode(line(
            r#"{"topic":"decnet.attackers","key":"a1","value":{"uuid":"a1","ip":"1.2.3.4","identity_id":null}}"#,
        ));
        assert!(matches!(d, Decoded::Table(TableUpdate { row: Some(TableRow::Attacker(AttackerRow { .. })), .. })));
        let d = decode(line(
            r#"{"topic":"decnet.attackers","key":"a1","value":{"before":{"uuid":"a1"},"after":null,"op":"d"}}"#,
        ));
        assert!(matches!(d, Decoded::Table(TableUpdate { row: None, .. })));
    }

    #[test]
    fn bad_records_are_dead_letters() {
        assert_eq!(reason("not json"), Reason::InvalidJson);
        assert_eq!(reason("[1,2]"), Reason::NotAnObject);
        assert_eq!(reason(r#"{"payload":{}}"#), Reason::MissingField);
        assert_eq!(reason(r#"{"topic":"system.ttp.health","payload":{}}"#), Reason::UnknownTopic);
        assert_eq!(reason(r#"{"topic":"attacker.observed","payload":{"attacker_ip":5}}"#), Reason::WrongType);
        assert_eq!(reason(r#"{"topic":"attacker.session.ended","payload":{"commands":[1]}}"#), Reason::WrongType);
        assert_eq!(
            reason(r#"{"topic":"attacker.session.ended","payload":{"commands":[{"command_text":["x"]}]}}"#),
            Reason::WrongType
        );
        assert_eq!(reason(r#"{"topic":"attacker.session.ended","payload":[]}"#), Reason::WrongType);
        assert_eq!(reason(r#"{"topic":"decnet.attackers","key":"a","value":{"ip":7}}"#), Reason::WrongType);
        assert_eq!(reason(r#"{"topic":"attacker.fingerprinted","payload":{}}"#), Reason::MissingField);
        let bad_utf8 = Line {
            pos: Pos::default(),
            topic: None,
            text: Err(LineError::InvalidUtf8("invalid utf-8 at byte 3".into())),
        };
        assert!(matches!(decode(bad_utf8), Decoded::Dead(DeadLetter { reason: Reason::InvalidUtf8, .. })));
    }

    #[test]
    fn fields_the_rules_read_must_have_their_types() {
        let event = |payload: &str| {
            format!(r#"{{"topic":"attacker.fingerprinted","type":"auth_attempt","payload":{payload}}}"#)
        };
        for bad in [
            r#"{"fail_count":"6"}"#,
            r#"{"password":["x"]}"#,
            r#"{"spf_pass":"false"}"#,
            r#"{"rcpt_domains":"a.example"}"#,
            r#"{"beacon_interval_s":"60"}"#,
        ] {
            assert_eq!(reason(&event(bad)), Reason::WrongType, "{bad}");
        }
        for good in
            [r#"{"fail_count":6}"#, r#"{"fail_count":true}"#, r#"{"beacon_interval_s":60.5}"#, r#"{"spf_pass":null}"#]
        {
            assert!(matches!(decode(line(&event(good))), Decoded::Event(_)), "{good}");
        }
        let Decoded::Dead(letter) = decode(line(&event(r#"{"username":"u","fail_count":"6"}"#))) else { panic!() };
        assert_eq!(letter.detail, "field \"fail_count\" is string, expected number");
        // The lists are sorted for lookups once, and hold each field once.
        for list in [payload_fields(), command_fields()] {
            assert!(list.windows(2).all(|w| w[0].0 < w[1].0), "{list:?}");
        }
    }

    #[test]
    fn ids_longer_than_an_index_key_holds_are_oversize() {
        let long = "s".repeat(MAX_ID_BYTES + 1);
        let ok = "s".repeat(MAX_ID_BYTES);
        let session = |id: &str| format!(r#"{{"topic":"attacker.session.ended","payload":{{"session_id":"{id}"}}}}"#);
        assert_eq!(reason(&session(&long)), Reason::Oversize);
        assert!(matches!(decode(line(&session(&ok))), Decoded::Event(_)));
        let table = |key: &str, id: &str| {
            format!(
                r#"{{"topic":"decnet.attacker_identities","key":"{key}","value":{{"uuid":"i","merged_into_uuid":"{id}"}}}}"#
            )
        };
        assert_eq!(reason(&table(&long, "i")), Reason::Oversize);
        assert_eq!(reason(&table("i", &long)), Reason::Oversize);
        let command = format!(r#"{{"topic":"attacker.session.ended","payload":{{"commands":["{long}"]}}}}"#);
        assert!(matches!(decode(line(&command)), Decoded::Event(_)), "commands are no ids");
    }
}
