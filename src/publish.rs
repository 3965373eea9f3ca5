//! What the job publishes after an epoch commits (DESIGN §1.5, §2.9), as messages.
//!
//! * `ttp.tagged` — one DECNET envelope per source record with new tags: its attacker,
//!   identity and session, the uuids of its new tags and their techniques. Tags already
//!   stored are never listed, so a replayed record publishes nothing.
//! * `ttp.rule.fired.<technique_id>` — per source record and technique: the technique's new
//!   tags and their sub-techniques.
//! * `<rollup_prefix><scope_kind>` — compacted: one message per rollup row that changed,
//!   keyed by the row's key (scope id first), the row as value, a tombstone when it went
//!   away.
//! * the dead-letter topic — the record's topic, partition, offset and the reason.
//!
//! Keys and envelope ids are functions of the content (uuid v5 over the tag uuids), so a
//! consumer can drop the duplicates that at-least-once delivery brings after a crash.

use ttpflow_dataflows::record::{DeadLetter, Tag};
use ttpflow_dataflows::rollup::RollupRow;

use crate::config::PublishConfig;
use crate::files::rollup_json;
use crate::kafka::Partition;
use crate::postgres::{Message, RollupChange};

/// Namespace of the envelope ids of published messages.
fn namespace() -> uuid::Uuid {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, b"ttpflow:published:v1")
}

fn uuid_text(bytes: [u8; 16]) -> String {
    uuid::Uuid::from_bytes(bytes).hyphenated().to_string()
}

/// A DECNET bus envelope around `payload`.
fn envelope(topic: &str, event_type: &str, payload: serde_json::Value, now_secs: f64) -> Vec<u8> {
    let id = uuid::Uuid::new_v5(&namespace(), format!("{topic}|{payload}").as_bytes());
    serde_json::json!({
        "v": 1,
        "id": id.hyphenated().to_string(),
        "topic": topic,
        "type": event_type,
        "ts": now_secs,
        "payload": payload,
    })
    .to_string()
    .into_bytes()
}

/// The `ttp.tagged` and `ttp.rule.fired.*` messages of an epoch's newly stored tags, in
/// record order (the tags come sorted by record).
pub fn tag_messages(config: &PublishConfig, new_tags: &[&Tag], now_secs: f64) -> Vec<Message> {
    let mut messages = Vec::new();
    for group in new_tags.chunk_by(|a, b| (&a.source_kind, &a.source_id) == (&b.source_kind, &b.source_id)) {
        let first = group[0];
        let key = format!("{}:{}", first.source_kind, first.source_id);
        let mut techniques: Vec<&str> = group.iter().map(|t| t.technique_id.as_str()).collect();
        techniques.sort_unstable();
        techniques.dedup();
        let uuids = |tags: &mut dyn Iterator<Item = &&Tag>| tags.map(|t| uuid_text(t.uuid)).collect::<Vec<_>>();
        let payload = serde_json::json!({
            "attacker_uuid": first.attacker_uuid,
            "identity_uuid": first.identity_uuid,
            "session_id": first.session_id,
            "tag_uuids": uuids(&mut group.iter()),
            "techniques_added": techniques,
        });
        messages.push(Message {
            topic: config.tagged.clone(),
            key: key.clone(),
            value: Some(envelope(&config.tagged, "tagged", payload, now_secs)),
        });
        for technique in techniques {
            let tags: Vec<&&Tag> = group.iter().filter(|t| t.technique_id == technique).collect();
            let mut subs: Vec<&str> = tags.iter().filter_map(|t| t.sub_technique_id.as_deref()).collect();
            subs.sort_unstable();
            subs.dedup();
            let topic = format!("{}{technique}", config.rule_fired_prefix);
            let payload = serde_json::json!({
                "technique_id": technique,
                "sub_technique_ids": subs,
                "tag_uuids": uuids(&mut tags.into_iter()),
                "attacker_uuid": first.attacker_uuid,
                "identity_uuid": first.identity_uuid,
                "session_id": first.session_id,
            });
            let value = envelope(&topic, "rule.fired", payload, now_secs);
            messages.push(Message { topic, key: key.clone(), value: Some(value) });
        }
    }
    messages
}

/// The key of a rollup row on its compacted topic.
pub fn rollup_key(row: &RollupRow) -> String {
    format!("{}|{}|{}|{}", row.scope_id, row.technique_id, row.sub_technique_id, row.tactic)
}

/// One message per changed rollup row: the row, or a tombstone.
pub fn rollup_messages(config: &PublishConfig, changes: &[RollupChange]) -> Vec<Message> {
    changes
        .iter()
        .map(|change| {
            let (row, value) = match change {
                RollupChange::Upsert(row) => {
                    let mut json = String::new();
                    rollup_json(row, &mut json);
                    (row, Some(json.into_bytes()))
                }
                RollupChange::Delete(row) => (row, None),
            };
            Message {
                topic: format!("{}{}", config.rollup_prefix, row.scope_kind.as_str()),
                key: rollup_key(row),
                value,
            }
        })
        .collect()
}

/// A dead letter on the dead-letter topic, keyed by where its record is.
pub fn dead_letter_message(config: &PublishConfig, dead: &DeadLetter, partitions: &[Partition]) -> Message {
    let (topic, partition) = partitions
        .get(dead.pos.input as usize)
        .map_or((dead.topic.clone().unwrap_or_default(), -1), |p| (p.topic.clone(), p.partition));
    let value = serde_json::json!({
        "topic": topic,
        "partition": partition,
        "offset": dead.pos.offset,
        "reason": dead.reason.as_str(),
        "detail": dead.detail,
    });
    Message {
        topic: config.dead_letter.clone(),
        key: format!("{topic}/{partition}/{}", dead.pos.offset),
        value: Some(value.to_string().into_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use ttpflow_dataflows::json::Json;
    use ttpflow_dataflows::record::{Confidence, Pos, Reason};

    use super::*;

    fn tag(source_id: &str, technique: &str, sub: Option<&str>, n: u8) -> Tag {
        Tag {
            pos: Pos { ts: 0, input: 0, offset: n as u64 },
            part: 0,
            emit: 0,
            uuid: [n; 16],
            source_kind: "session".into(),
            source_id: source_id.into(),
            attacker_uuid: Some("a1".into()),
            identity_uuid: None,
            session_id: Some(source_id.into()),
            decky_id: None,
            tactic: "TA0007".into(),
            technique_id: technique.into(),
            sub_technique_id: sub.map(str::to_string),
            confidence: Confidence(0.5),
            rule_id: "R1".into(),
            rule_version: 1,
            evidence: Json::Null,
            attack_release: "v15.1".into(),
            observed_at: None,
        }
    }

    fn payload(message: &Message) -> serde_json::Value {
        let value: serde_json::Value = serde_json::from_slice(message.value.as_ref().unwrap()).unwrap();
        value["payload"].clone()
    }

    #[test]
    fn one_tagged_message_per_source_and_one_firing_per_technique() {
        let tags = [
            tag("s1", "T1059", Some("T1059.004"), 1),
            tag("s1", "T1082", None, 2),
            tag("s1", "T1059", None, 3),
            tag("s2", "T1082", None, 4),
        ];
        let refs: Vec<&Tag> = tags.iter().collect();
        let messages = tag_messages(&PublishConfig::default(), &refs, 1.0);
        let topics: Vec<&str> = messages.iter().map(|m| m.topic.as_str()).collect();
        assert_eq!(
            topics,
            ["ttp.tagged", "ttp.rule.fired.T1059", "ttp.rule.fired.T1082", "ttp.tagged", "ttp.rule.fired.T1082"]
        );
        assert_eq!(messages[0].key, "session:s1");
        let tagged = payload(&messages[0]);
        assert_eq!(tagged["techniques_added"], serde_json::json!(["T1059", "T1082"]));
        assert_eq!(tagged["tag_uuids"].as_array().unwrap().len(), 3);
        let fired = payload(&messages[1]);
        assert_eq!(fired["sub_technique_ids"], serde_json::json!(["T1059.004"]));
        assert_eq!(fired["tag_uuids"].as_array().unwrap().len(), 2);
        // The same content gives the same envelope id.
        let again = tag_messages(&PublishConfig::default(), &refs, 1.0);
        assert_eq!(again, messages);
    }

    #[test]
    fn dead_letters_name_their_partition() {
        let partitions = [Partition { topic: "attacker.observed".into(), partition: 2 }];
        let dead = DeadLetter {
            pos: Pos { ts: 0, input: 0, offset: 41 },
            topic: Some("attacker.observed".into()),
            reason: Reason::InvalidJson,
            detail: "expected value".into(),
        };
        let message = dead_letter_message(&PublishConfig::default(), &dead, &partitions);
        assert_eq!(message.key, "attacker.observed/2/41");
        let value: serde_json::Value = serde_json::from_slice(message.value.as_ref().unwrap()).unwrap();
        assert_eq!(value["reason"], "invalid_json");
        assert_eq!(value["partition"], 2);
    }
}
