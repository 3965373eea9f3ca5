//! Real payload shapes that name their anchors differently from DECNET's lifter inputs.
//!
//! * The credential correlator's `credential.reuse.detected` names every attacker that
//!   reused a secret: `attacker_uuids` / `attacker_ips` lists (sometimes JSON-encoded as
//!   strings). DECNET found no single anchor and dropped the event; here it becomes one
//!   event per named attacker, so each is tagged once.
//! * `identity.merged` may carry only `winner_uuid` / `loser_uuid`: the surviving
//!   identity is its anchor.
//!
//! Keeps no state; an event of any other shape passes unchanged.

use std::sync::Arc;

use crate::json::Json;
use crate::record::Event;

/// A list field that may also arrive JSON-encoded in a string.
fn list(payload: &Json, field: &str) -> Vec<Json> {
    match payload.get(field) {
        Some(Json::Arr(items)) => items.clone(),
        Some(Json::Str(text)) => match Json::parse(text) {
            Ok(Json::Arr(items)) => items,
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// The events an event stands for.
pub fn expand(event: Event) -> Vec<Event> {
    let anchored = event.has_anchor();
    if !anchored && event.topic == "identity.merged" {
        if let Some(winner) = event.payload.get("winner_uuid").filter(|w| w.is_truthy()).cloned() {
            let mut event = event;
            Arc::make_mut(&mut event.payload).set("identity_uuid", winner);
            return vec![event];
        }
    }
    let (uuids, ips) = (list(&event.payload, "attacker_uuids"), list(&event.payload, "attacker_ips"));
    if anchored || (uuids.is_empty() && ips.is_empty()) {
        return vec![event];
    }
    let named = uuids.len().max(ips.len());
    (0..named)
        .map(|i| {
            let mut one = event.clone();
            let payload = Arc::make_mut(&mut one.payload);
            if let Some(uuid) = uuids.get(i) {
                payload.set("attacker_uuid", uuid.clone());
            }
            if let Some(ip) = ips.get(i) {
                payload.set("attacker_ip", ip.clone());
            }
            one
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Pos;

    fn event(topic: &str, payload: &str) -> Event {
        Event {
            pos: Pos::default(),
            topic: topic.into(),
            event_type: String::new(),
            source_kind: Some("credential".into()),
            event_time: None,
            payload: Arc::new(Json::parse(payload).unwrap()),
        }
    }

    fn anchors(events: &[Event]) -> Vec<(Option<&str>, Option<&str>)> {
        events.iter().map(|e| (e.str_field("attacker_uuid"), e.str_field("attacker_ip"))).collect()
    }

    #[test]
    fn a_reuse_event_becomes_one_event_per_named_attacker() {
        let e = event(
            "credential.reuse.detected",
            r#"{"id":"cr-1","attacker_uuids":["a","b"],"attacker_ips":["1.1.1.1","2.2.2.2"]}"#,
        );
        assert_eq!(anchors(&expand(e)), [(Some("a"), Some("1.1.1.1")), (Some("b"), Some("2.2.2.2"))]);
        let encoded = event(
            "credential.reuse.detected",
            r#"{"attacker_uuids":"[\"a\"]","attacker_ips":"[\"1.1.1.1\",\"3.3.3.3\"]"}"#,
        );
        assert_eq!(anchors(&expand(encoded)), [(Some("a"), Some("1.1.1.1")), (None, Some("3.3.3.3"))]);
    }

    #[test]
    fn other_shapes_pass_unchanged() {
        let single = event("credential.reuse.detected", r#"{"attacker_ip":"1.1.1.1","attacker_uuid":null}"#);
        assert_eq!(expand(single.clone()), vec![single]);
        let anchored = event("credential.reuse.detected", r#"{"attacker_uuid":"x","attacker_uuids":["a","b"]}"#);
        assert_eq!(expand(anchored.clone()), vec![anchored]);
    }

    #[test]
    fn a_merge_is_anchored_on_its_winner() {
        let merged = expand(event("identity.merged", r#"{"loser_uuid":"l","winner_uuid":"w"}"#));
        assert_eq!(merged[0].str_field("identity_uuid"), Some("w"));
        assert!(merged[0].has_anchor());
    }
}
