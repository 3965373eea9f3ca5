//! Fan-out: anchored events into the subjects rules look at (DECNET's TaggerEvents).
//!
//! Input: anchored [`Event`]s. Output: [`Subject`]s: the event itself when DECNET gives
//! its topic a source_kind, plus, for `session` events, one `command` subject per
//! element of `commands`. Keeps no state; sends nothing to dead letters (decode has
//! already checked the types this stage reads).
//!
//! Identities are DECNET's: the event's source_id is the first truthy of `source_id`,
//! `session_id`, `token_id`, `identity_uuid`, `credential_id`, `attacker_uuid`, `uuid`,
//! else the topic (except that a canary trigger is its `trigger_id`, DESIGN §2.1); a
//! command's is its `id`/`uuid`/`command_id`, else `<event source_id>#cmd<index>`. A bare-string command becomes `{"command_text": s}`;
//! an object command without a string `command_text`/`text` is not a subject.

use std::sync::Arc;

use crate::json::Json;
use crate::record::{Event, Subject};
use crate::time;
use crate::types::Coll;

const SOURCE_ID_FIELDS: &[&str] =
    &["source_id", "session_id", "token_id", "identity_uuid", "credential_id", "attacker_uuid", "uuid"];
const COMMAND_ID_FIELDS: &[&str] = &["id", "uuid", "command_id"];

/// The stage: every anchored event becomes its subjects.
pub fn stage<'s>(events: Coll<'s, Event>) -> Coll<'s, Subject> {
    events.flat_map(subjects)
}

/// The first truthy field of `fields` in `object`, through Python's `str()`.
fn first_truthy(object: &Json, fields: &[&str]) -> Option<String> {
    fields.iter().filter_map(|f| object.get(f)).find(|v| v.is_truthy()).and_then(Json::python_str)
}

/// DECNET's `_str_or_none` of a payload field.
fn str_or_none(payload: &Json, field: &str) -> Option<String> {
    match payload.get(field) {
        None | Some(Json::Null) => None,
        Some(value) => value.python_str(),
    }
}

/// A canary trigger is identified by its `trigger_id` (DESIGN §2.1): DECNET's
/// `token_id` would collapse every trigger of a token, and every attacker on it, into one tag.
fn canary_trigger(event: &Event) -> Option<String> {
    if event.topic.starts_with("canary.") && event.topic.ends_with(".triggered") {
        first_truthy(&event.payload, &["trigger_id"])
    } else {
        None
    }
}

/// The subjects of one event.
pub fn subjects(event: Event) -> Vec<Subject> {
    let Some(source_kind) = event.source_kind.clone() else { return Vec::new() };
    let payload = &event.payload;
    let base = Subject {
        pos: event.pos,
        part: 0,
        source_id: canary_trigger(&event)
            .or_else(|| first_truthy(payload, SOURCE_ID_FIELDS))
            .unwrap_or_else(|| event.topic.clone()),
        attacker_uuid: str_or_none(payload, "attacker_uuid"),
        identity_uuid: str_or_none(payload, "identity_uuid"),
        session_id: str_or_none(payload, "session_id"),
        decky_id: str_or_none(payload, "decky_id"),
        event_time: event.event_time,
        source_kind,
        payload: Arc::new(Json::Null),
    };
    let commands = match (base.source_kind.as_str(), payload.get("commands")) {
        ("session", Some(Json::Arr(commands))) => commands.as_slice(),
        _ => &[],
    };
    let mut out = Vec::with_capacity(1 + commands.len());
    for (idx, command) in commands.iter().enumerate() {
        if let Some(subject) = command_subject(&base, idx, command) {
            out.push(subject);
        }
    }
    out.push(Subject { payload: event.payload, ..base });
    out
}

fn command_subject(base: &Subject, idx: usize, command: &Json) -> Option<Subject> {
    let fallback_id = || format!("{}#cmd{idx}", base.source_id);
    let (source_id, payload) = match command {
        Json::Str(text) => {
            (fallback_id(), Arc::new(Json::Obj(vec![("command_text".to_string(), Json::Str(text.clone()))])))
        }
        Json::Obj(_) => {
            // Python: `cmd.get("command_text") or cmd.get("text")`, then it must be a str.
            let text = [command.get("command_text"), command.get("text")]
                .into_iter()
                .flatten()
                .find(|v| v.is_truthy())
                .or(command.get("text"))?;
            let text = text.as_str()?.to_string();
            let mut payload = command.clone();
            payload.set("command_text", Json::Str(text));
            (first_truthy(command, COMMAND_ID_FIELDS).unwrap_or_else(fallback_id), Arc::new(payload))
        }
        _ => return None,
    };
    Some(Subject {
        part: idx as u32 + 1,
        source_kind: "command".to_string(),
        source_id,
        event_time: command.get("ts").and_then(time::from_json).or(base.event_time),
        payload,
        ..base.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Pos;

    fn event(topic: &str, kind: Option<&str>, payload: &str) -> Event {
        Event {
            pos: Pos::default(),
            topic: topic.into(),
            event_type: String::new(),
            source_kind: kind.map(str::to_string),
            event_time: None,
            payload: Arc::new(Json::parse(payload).unwrap()),
        }
    }

    #[test]
    fn source_id_priority_and_python_truthiness() {
        let s = subjects(event(
            "attacker.observed",
            Some("session"),
            r#"{"source_id":"","session_id":null,"token_id":0,"attacker_uuid":"a","uuid":"u"}"#,
        ));
        assert_eq!(s[0].source_id, "a");
        let s = subjects(event("attacker.observed", Some("session"), r#"{"session_id":42}"#));
        assert_eq!(s[0].source_id, "42");
        let s = subjects(event("attacker.observed", Some("session"), r#"{}"#));
        assert_eq!(s[0].source_id, "attacker.observed");
    }

    #[test]
    fn canary_triggers_are_identified_by_trigger() {
        let payload = r#"{"token_id":"tok-1","trigger_id":"trig-9","attacker_uuid":"a"}"#;
        let s = subjects(event("canary.tok-1.triggered", Some("canary_fingerprint"), payload));
        assert_eq!(s[0].source_id, "trig-9");
        let s = subjects(event("canary.tok-1.placed", Some("canary_fingerprint"), payload));
        assert_eq!(s[0].source_id, "tok-1");
        let s = subjects(event("canary.tok-1.triggered", Some("canary_fingerprint"), r#"{"token_id":"tok-1"}"#));
        assert_eq!(s[0].source_id, "tok-1", "without a trigger id DECNET's priority applies");
    }

    #[test]
    fn sessions_fan_out_per_command() {
        let s = subjects(event(
            "attacker.session.ended",
            Some("session"),
            r#"{"session_id":"s1","attacker_uuid":"a","commands":["id",{"command_text":"w","id":"c9","user":"root"},{"text":"ls"},{"command_text":""},{"command_text":5},{"command_text":"","text":""}]}"#,
        ));
        let ids: Vec<_> = s.iter().map(|x| (x.source_kind.as_str(), x.source_id.as_str())).collect();
        assert_eq!(
            ids,
            [
                ("command", "s1#cmd0"),
                ("command", "c9"),
                ("command", "s1#cmd2"),
                ("command", "s1#cmd5"),
                ("session", "s1")
            ]
        );
        assert_eq!(s[0].payload.to_json_string(), r#"{"command_text":"id"}"#);
        assert_eq!(s[1].payload.get("user").and_then(Json::as_str), Some("root"));
        assert_eq!(s[2].payload.get("command_text").and_then(Json::as_str), Some("ls"));
        assert!(s.iter().all(|x| x.session_id.as_deref() == Some("s1") && x.attacker_uuid.as_deref() == Some("a")));
    }

    #[test]
    fn commands_only_fan_out_of_sessions() {
        let s = subjects(event("email.received", Some("email"), r#"{"commands":["id"]}"#));
        assert_eq!(s.len(), 1);
        assert!(subjects(event("identity.unmerged", None, "{}")).is_empty());
    }
}
